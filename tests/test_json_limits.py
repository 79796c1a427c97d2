"""JSON from outside, bounded at every entry point: request bodies (a 400 naming the field),
dialog files (one problem line) and config files (one CLI line); never a traceback."""

from __future__ import annotations

import json

import pytest

from personachat import ConvAIModel
from personachat.cli import main
from personachat.json_limits import JSONLimitError, loads_bounded
from personachat.serve.settings import ServeSettings

httpx = pytest.importorskip("httpx", reason="the test extra: pip install -e '.[test]'")

from .serve_helpers import AUTH, KEY, ThreadServer, model_with_personas  # noqa: E402

DEEP = "[" * 100_000 + "]" * 100_000
LONG_NUMBER = "1" * 5000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (DEEP, "more than 64 levels deep"),
        ('{"a": [1, {"b": ' + LONG_NUMBER + "}]}", "a[1].b: a number of 5,000 characters"),
        ('{"t": 1e999}', "t: the number 1e999 is too large for a float"),
        ('{"t": [NaN]}', "t[0]: NaN is not a JSON number"),
        ('{"t": -Infinity}', "t: -Infinity is not a JSON number"),
    ],
)
def test_json_beyond_the_limits_is_refused_naming_the_field(text, message):
    with pytest.raises(JSONLimitError, match=message.replace("[", r"\[").replace("]", r"\]")):
        loads_bounded(text)


def test_json_within_the_limits_reads_as_json_does():
    text = json.dumps({"s": "[[[[ {{{{ " * 40, "n": [1.5e300, -2, 10**99], "deep": [[[[1]]]]})
    assert loads_bounded(text) == json.loads(text)
    assert loads_bounded("[" * 64 + "]" * 64) == json.loads("[" * 64 + "]" * 64)


@pytest.fixture(scope="module")
def api(tiny_checkpoint, tmp_path_factory):
    folder = model_with_personas(tiny_checkpoint, tmp_path_factory.mktemp("json") / "model")
    model = ConvAIModel("gpt2", folder, use_cuda=False)
    settings = ServeSettings(api_key=KEY, max_body_bytes=1 << 20, max_reply_tokens=3)
    with ThreadServer(model, tmp_path_factory.mktemp("db") / "j.sqlite3", settings) as server:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
            yield client


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ('{"text": ' + DEEP + "}", None, "levels deep"),
        (
            '{"text": "hi", "options": {"max_length": ' + LONG_NUMBER + "}}",
            "options.max_length",
            "5,000 characters",
        ),
        (
            '{"text": "hi", "options": {"temperature": 1e999}}',
            "options.temperature",
            "too large for a float",
        ),
        ('{"text": "hi", "options": {"top_p": NaN}}', "options.top_p", "NaN"),
    ],
)
def test_a_hostile_request_body_is_a_400_naming_the_field(api, body, field, words):
    session = api.post("/v1/sessions", json={}).json()["id"]
    response = api.post(
        f"/v1/sessions/{session}/messages",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_json" and words in error["message"]
    assert error.get("field") == field


def test_the_openai_route_names_the_param(api):
    body = '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e999}'
    response = api.post(
        "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "temperature"
    assert api.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (DEEP, "nests lists or objects more than"),
        ('[{"personality": ["a"], "utterances": ' + LONG_NUMBER + "}]", "[0].utterances: a number"),
    ],
)
def test_a_hostile_dialog_file_is_one_line(tmp_path, capsys, text, words):
    path = tmp_path / "dialogs.json"
    path.write_text(text)
    main(["validate", str(path)])
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out and words in out.err + out.out


@pytest.mark.parametrize(
    ("yaml_text", "words"),
    [
        ("model_name: " + LONG_NUMBER + "\n", "line 1: a number of 5,000 characters"),
        ("scratch: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deeply"),
    ],
)
def test_a_hostile_config_is_one_line(tmp_path, capsys, yaml_text, words):
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    assert main(["train", "--config", str(config)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert words in line
