"""Reading, validating and downloading Persona-Chat dialogs (personachat.data.dialogs, .files
and .download).

Every test writes its own small files under tmp_path; nothing here touches the internet
(download tests use loopback addresses only).
"""

from __future__ import annotations

import json
import pickle
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personachat.data import download, files
from personachat.data.dialogs import DataError, personalities, validate_dialogs
from personachat.data.download import (
    PERSONACHAT_URL,
    download_personachat,
    load_personachat_or_file,
)
from personachat.data.files import load_dialogs

# An unused loopback port: connecting fails at once, so "offline" is simulated without delay.
OFFLINE_URL = "http://127.0.0.1:9/personachat.json"


def dialog(persona=("i like cats.", "i am a nurse."), turns=2, **extra) -> dict:
    """A small valid dialog: each utterance's gold reply is its last candidate."""
    utterances = []
    history: list[str] = []
    for t in range(turns):
        history = [*history, f"hello {t}"]
        utterances.append({"history": list(history), "candidates": ["nope.", f"reply {t}"]})
        history = [*history, f"reply {t}"]
    return {"personality": list(persona), "utterances": utterances, **extra}


def write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- valid files


def test_load_list_of_dialogs(tmp_path):
    dialogs = [dialog(), dialog(persona=["i hate cats."], turns=1)]
    path = write_json(tmp_path / "data.json", dialogs)

    loaded = load_dialogs(path)

    assert loaded == dialogs
    assert loaded[0]["utterances"][1]["candidates"][-1] == "reply 1"  # gold reply is last


def test_list_file_ignores_split_and_accepts_str_path(tmp_path):
    path = write_json(tmp_path / "data.json", [dialog()])
    assert load_dialogs(str(path), split="valid") == [dialog()]


def test_first_utterance_may_have_empty_history(tmp_path):
    first = {"personality": ["i like tea."], "utterances": [{"history": [], "candidates": ["hi"]}]}
    path = write_json(tmp_path / "data.json", [first])
    assert load_dialogs(path) == [first]


def test_dict_of_splits_picks_the_requested_split(tmp_path):
    train, valid = [dialog(turns=1)], [dialog(persona=["i am valid."])]
    path = write_json(tmp_path / "personachat.json", {"train": train, "valid": valid})

    assert load_dialogs(path) == train  # "train" is the default
    assert load_dialogs(path, split="valid") == valid


def test_missing_split_names_the_splits_that_exist(tmp_path):
    path = write_json(tmp_path / "personachat.json", {"train": [dialog()], "valid": [dialog()]})

    with pytest.raises(DataError) as info:
        load_dialogs(path, split="validation")

    message = str(info.value)
    assert '"validation"' in message
    assert '"train"' in message and '"valid"' in message
    assert 'did you mean split="valid"' in message


def test_extra_keys_are_kept(tmp_path):
    d = dialog(probe={"kind": "persona", "id": 7})
    d["utterances"][0]["probe"] = {"expected": "reply 0"}
    path = write_json(tmp_path / "data.json", [d])

    loaded = load_dialogs(path)

    assert loaded[0]["probe"] == {"kind": "persona", "id": 7}
    assert loaded[0]["utterances"][0]["probe"] == {"expected": "reply 0"}


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "data.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([dialog()]).encode())
    assert load_dialogs(path) == [dialog()]


# --------------------------------------------------------------------------- unusable files


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(DataError) as info:
        load_dialogs(path)
    assert str(path) in str(info.value)
    assert "does not exist" in str(info.value)


def test_missing_file_suggests_a_close_name(tmp_path):
    write_json(tmp_path / "train.json", [dialog()])
    with pytest.raises(DataError, match=r"did you mean .*train\.json"):
        load_dialogs(tmp_path / "trian.json")


def test_data_error_is_a_value_error(tmp_path):
    with pytest.raises(ValueError):
        load_dialogs(tmp_path / "nope.json")


def test_directory_instead_of_file(tmp_path):
    write_json(tmp_path / "train.json", [dialog()])
    with pytest.raises(DataError) as info:
        load_dialogs(tmp_path)
    assert "is a directory" in str(info.value)
    assert "train.json" in str(info.value)  # says what to pass instead


def test_empty_path_is_not_taken_as_current_directory():
    with pytest.raises(DataError, match="empty path"):
        load_dialogs("")


def test_empty_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("  \n")
    with pytest.raises(DataError, match="empty"):
        load_dialogs(path)


def test_malformed_json_reports_line_and_column(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"personality": ["a."]\n   "utterances": []}\n]\n')

    with pytest.raises(DataError) as info:
        load_dialogs(path)

    message = str(info.value)
    assert str(path) in message
    assert "line 3, column 4" in message
    assert "invalid JSON" in message


def test_truncated_json_says_it_looks_truncated(tmp_path):
    path = tmp_path / "data.json"
    text = json.dumps([dialog(), dialog()], indent=1)
    path.write_text(text[: len(text) // 2])

    with pytest.raises(DataError) as info:
        load_dialogs(path)

    assert "truncated" in str(info.value)
    assert "line " in str(info.value) and "column " in str(info.value)


def test_json_lines_gets_a_hint(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(dialog()) + "\n" + json.dumps(dialog()) + "\n")
    with pytest.raises(DataError, match=r"line 2, column 1: .*JSON Lines"):
        load_dialogs(path)


def test_binary_file(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match="binary"):
        load_dialogs(path)


def test_non_utf8_text(tmp_path):
    path = tmp_path / "data.json"
    path.write_bytes('[{"personality": ["j\'aime le café."]}]'.encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8.*re-save it as UTF-8"):
        load_dialogs(path)


def test_compressed_file(tmp_path):
    import gzip

    path = tmp_path / "data.json.gz"
    path.write_bytes(gzip.compress(json.dumps([dialog()]).encode()))
    with pytest.raises(DataError, match="gzip"):
        load_dialogs(path)


def test_too_large_file_is_refused_before_reading(tmp_path, monkeypatch):
    path = write_json(tmp_path / "data.json", [dialog()] * 10)
    monkeypatch.setattr(files, "MAX_FILE_BYTES", 100)
    with pytest.raises(DataError, match="wrong file"):
        load_dialogs(path)


@pytest.mark.parametrize(
    ("top_level", "expected"),
    [
        ("hello", "string"),
        (42, "number"),
        (None, "null"),
        (dialog(), "single dialog object"),
        ({}, "empty"),
    ],
)
def test_top_level_of_the_wrong_kind(tmp_path, top_level, expected):
    path = write_json(tmp_path / "data.json", top_level)
    with pytest.raises(DataError, match=expected):
        load_dialogs(path)


def test_empty_list_of_dialogs(tmp_path):
    path = write_json(tmp_path / "data.json", [])
    with pytest.raises(DataError, match="no dialogs"):
        load_dialogs(path)


# --------------------------------------------------------------------------- structure problems


def test_every_problem_is_reported_with_dialog_index_and_field(tmp_path):
    good = dialog()
    no_persona = {"utterances": dialog()["utterances"]}
    empty_candidates = dialog()
    empty_candidates["utterances"][1]["candidates"] = []
    no_history = dialog()
    del no_history["utterances"][0]["history"]
    path = write_json(
        tmp_path / "data.json", [good, no_persona, "not a dialog", empty_candidates, no_history]
    )

    with pytest.raises(DataError) as info:
        load_dialogs(path)

    problems = info.value.problems
    assert len(problems) == 4
    assert all(p.startswith(f"{path}: dialog ") for p in problems)
    message = str(info.value)
    assert 'dialog 1: missing field "personality"' in message
    assert "dialog 2: expected an object" in message
    assert 'dialog 3, utterance 1, field "candidates": empty list' in message
    assert "the gold reply last" in message  # says how to fix it
    assert 'dialog 4, utterance 0: missing field "history"' in message
    assert "dialog 0" not in message


def test_problems_in_a_split_name_the_split(tmp_path):
    bad = dialog()
    bad["personality"] = []
    path = write_json(tmp_path / "pc.json", {"train": [dialog()], "valid": [bad]})

    assert load_dialogs(path, "train") == [dialog()]
    with pytest.raises(DataError, match=r'split "valid"\): dialog 0, field "personality": empty'):
        load_dialogs(path, "valid")


def test_non_string_entries_are_reported_one_by_one():
    d = dialog()
    d["personality"] = ["i like cats.", 3, ""]
    d["utterances"][0]["history"] = ["hi", None]
    d["utterances"][1]["candidates"] = ["ok", ["nested"], ""]

    problems = validate_dialogs([d], "data.json")

    assert problems == [
        'data.json: dialog 0, field "personality", item 1: expected a string, got the number 3'
        " — each entry must be text in double quotes",
        'data.json: dialog 0, field "personality", item 2: empty string'
        " — remove it or write the text",
        'data.json: dialog 0, utterance 0, field "history", item 1: expected a string, got null'
        " — each entry must be text in double quotes",
        'data.json: dialog 0, utterance 1, field "candidates", item 1: expected a string, '
        "got a list of 1 item — each entry must be text in double quotes",
        'data.json: dialog 0, utterance 1, field "candidates", item 2: empty string'
        " — remove it or write the text",
    ]


def test_wrong_types_of_fields():
    d = {"personality": "i like cats.", "utterances": {"history": []}}
    u = {"personality": ["a."], "utterances": [[], {"history": "hi", "candidates": "yo"}]}

    problems = validate_dialogs([d, u], "x.json")

    assert problems == [
        'x.json: dialog 0, field "personality": expected a list of strings, got the string '
        '"i like cats." — wrap it in a list: [...]',
        'x.json: dialog 0, field "utterances": expected a list of {"history": [...], '
        '"candidates": [...]} objects, got an object',
        'x.json: dialog 1, utterance 0: expected an object like {"history": [...], '
        '"candidates": [...]}, got an empty list',
        'x.json: dialog 1, utterance 1, field "history": expected a list of strings, got the '
        'string "hi" — wrap it in a list: [...]',
        'x.json: dialog 1, utterance 1, field "candidates": expected a list of strings, got the '
        'string "yo" — wrap it in a list: [...]',
    ]


def test_misspelled_field_gets_a_rename_hint():
    problems = validate_dialogs(
        [{"persona": ["a."], "utterances": [{"history": [], "candidate": ["b"]}]}]
    )
    assert '"persona" — rename it to "personality"?' in problems[0]
    assert '"candidate" — rename it to "candidates"?' in problems[1]


def test_empty_utterances():
    problems = validate_dialogs([{"personality": ["a."], "utterances": []}])
    assert problems == [
        '<data>: dialog 0, field "utterances": empty list — a dialog needs at least one '
        'utterance {"history": [...], "candidates": [...]}; remove the dialog or add its turns'
    ]


def test_valid_dialogs_have_no_problems():
    assert validate_dialogs([dialog(), dialog(turns=5, extra=1)]) == []


def test_listed_problems_are_capped(tmp_path):
    path = write_json(tmp_path / "data.json", [{"personality": ["a."]}] * 120)

    with pytest.raises(DataError) as info:
        load_dialogs(path)

    assert len(info.value.problems) == 120  # all are kept for programs...
    message = str(info.value)  # ...but a person sees a readable amount
    assert "120 problems" in message
    assert "dialog 49:" in message and "dialog 50:" not in message
    assert message.rstrip().endswith("... and 70 more")


def test_data_error_survives_pickling():
    error = DataError(["a", "b"], "two problems:")
    copy = pickle.loads(pickle.dumps(error))
    assert copy.problems == ["a", "b"]
    assert str(copy) == str(error)


def test_data_error_from_a_single_message():
    assert str(DataError("just this")) == "just this"
    assert DataError("just this").problems == ["just this"]


# --------------------------------------------------------------------------- personalities


def test_personalities_are_distinct_in_first_seen_order():
    cats, dogs = ["i like cats.", "i am a nurse."], ["i like dogs."]
    dialogs = [dialog(cats), dialog(dogs), dialog(cats, turns=1), dialog(dogs[::-1])]

    assert personalities(dialogs) == [cats, dogs]
    assert personalities([]) == []


def test_personalities_returns_copies():
    d = dialog(["i like cats."])
    personalities([d])[0].append("mutated")
    assert d["personality"] == ["i like cats."]


# --------------------------------------------------------------------------- download


def test_download_offline_tells_the_user_to_pass_a_file(tmp_path):
    with pytest.raises(DataError) as info:
        download_personachat(tmp_path / "cache", url=OFFLINE_URL, timeout=5)

    message = str(info.value)
    assert OFFLINE_URL in message
    assert "train_file=" in message and "--train-file" in message
    assert str(tmp_path / "cache" / "personachat.json") in message  # where to put it by hand
    assert list((tmp_path / "cache").iterdir()) == []  # no partial file left behind


def test_download_reuses_the_cached_file_without_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the network must not be used when the file is cached")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    cached = write_json(tmp_path / "personachat_self_original.json", {"train": [dialog()]})

    assert download_personachat(tmp_path) == cached
    assert load_personachat_or_file(None, "train", tmp_path) == [dialog()]


def test_load_personachat_or_file_prefers_the_given_file(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "download_personachat", pytest.fail)
    path = write_json(tmp_path / "mine.json", {"valid": [dialog()]})
    assert load_personachat_or_file(path, "valid", tmp_path / "cache") == [dialog()]


def test_a_broken_cached_download_says_to_delete_it(tmp_path):
    cached = tmp_path / "personachat_self_original.json"
    cached.write_text('{"train": [')
    with pytest.raises(DataError, match="delete it to download it again"):
        load_personachat_or_file(None, "train", tmp_path)


class _Server:
    """A loopback HTTP server answering every GET with a fixed status and body."""

    def __init__(self, status: int, body: bytes) -> None:
        outer = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                outer.requests += 1
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/personachat_self_original.json"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers: list[_Server] = []

    def start(status: int, body: bytes) -> _Server:
        servers.append(_Server(status, body))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_download_once_then_reuse(tmp_path, serve):
    payload = json.dumps({"train": [dialog()], "valid": [dialog(["v."])]}).encode()
    server = serve(200, payload)
    cache = tmp_path / "cache"

    path = download_personachat(cache, url=server.url, timeout=10)
    again = download_personachat(cache, url=server.url, timeout=10)

    assert path == again == cache / "personachat_self_original.json"
    assert path.read_bytes() == payload
    assert server.requests == 1
    assert [p.name for p in cache.iterdir()] == [path.name]  # temp file moved into place
    assert load_dialogs(path, "valid") == [dialog(["v."])]


def test_download_http_error(tmp_path, serve):
    server = serve(404, b"not found")
    with pytest.raises(DataError, match=r"HTTP error 404.*--train-file"):
        download_personachat(tmp_path, url=server.url, timeout=10)
    assert list(tmp_path.iterdir()) == []


def test_download_of_a_login_page_is_not_cached(tmp_path, serve):
    server = serve(200, b"<html>please log in to the proxy</html>")
    with pytest.raises(DataError, match="not JSON"):
        download_personachat(tmp_path, url=server.url, timeout=10)
    assert list(tmp_path.iterdir()) == []


def test_default_url_is_the_public_personachat_file():
    assert PERSONACHAT_URL.endswith("/personachat_self_original.json")
    assert download_personachat.__defaults__[:2] == (PERSONACHAT_URL, 60)


# --------------------------------------------------------------------------- properties

json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(["personality", "utterances", "history", "candidates"]) | st.text(),
            children,
            max_size=5,
        )
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(json_like)
def test_validate_never_raises(value):
    problems = validate_dialogs(value, "fuzz.json")
    assert isinstance(problems, list)
    assert all(isinstance(p, str) and p.startswith("fuzz.json: ") for p in problems)
    str(DataError(problems or ["ok"]))


@settings(max_examples=100, deadline=None)
@given(st.lists(json_like, min_size=1, max_size=4))
def test_validate_never_raises_on_lists_of_dialog_like_values(values):
    dialogs = [
        {"personality": v, "utterances": [{"history": v, "candidates": v}, v]} for v in values
    ]
    assert all(isinstance(p, str) for p in validate_dialogs(dialogs))


sentences = st.text(min_size=1, max_size=20)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "personality": st.lists(sentences, min_size=1, max_size=5),
                "utterances": st.lists(
                    st.fixed_dictionaries(
                        {
                            "history": st.lists(st.text(max_size=20), max_size=6),
                            "candidates": st.lists(sentences, min_size=1, max_size=4),
                        }
                    ),
                    min_size=1,
                    max_size=4,
                ),
            }
        ),
        min_size=1,
        max_size=4,
    )
)
def test_well_formed_dialogs_are_valid(dialogs):
    assert validate_dialogs(dialogs) == []
