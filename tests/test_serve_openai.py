"""``personachat serve``'s OpenAI-compatible chat, used through the official ``openai`` client
against a real uvicorn server on 127.0.0.1 with a tiny GPT-2.

``temperature: 0`` is greedy decoding, so a reply is compared with ``interact_single``'s
greedy reply (a model loaded with ``do_sample: False``) for the same persona and history.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from personachat import ConvAIModel
from personachat.serve.settings import ServeSettings

pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[test]'")
pytest.importorskip("uvicorn", reason="the serve extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx", reason="the test extra: pip install -e '.[test]'")
openai = pytest.importorskip("openai", reason="the test extra: pip install -e '.[test]'")

from .serve_helpers import AUTH, KEY, SETTINGS, ThreadServer, model_with_personas  # noqa: E402
from .tiny_models import build_tiny_chat_model  # noqa: E402

MAX = 12  # the model's max_length: replies of at most 12 tokens
PERSONA = ["i work as a nurse .", "i have a cat ."]
SYSTEM = "\n".join(PERSONA)  # the persona, one sentence per line
HISTORY = ["hi , what do you do ?", "i am a pilot .", "any pets ?"]
CARD = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        "name": "Ada",
        "description": "{{char}} works as a baker.\nShe has a dog.",
        "personality": "",
        "first_mes": "hello {{user}} , i am {{char}} .",
    },
}


def messages(persona: list[str] | None = PERSONA, history: list[str] = HISTORY) -> list[dict]:
    """The persona as a system message, then the history, alternating from the user."""
    roles = ["user", "assistant"] * len(history)
    start = [{"role": "system", "content": "\n".join(persona)}] if persona else []
    return start + [{"role": r, "content": t} for r, t in zip(roles, history, strict=False)]


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    return model_with_personas(tiny_checkpoint, tmp_path_factory.mktemp("openai") / "tiny-bot")


@pytest.fixture(scope="module")
def model(model_dir) -> ConvAIModel:
    """The served model: it samples by default, as a trained model's args say."""
    return ConvAIModel("gpt2", model_dir, args={"max_length": MAX}, use_cuda=False)


@pytest.fixture(scope="module")
def greedy(model_dir) -> ConvAIModel:
    """The same weights, decoding greedily in ``interact_single``."""
    args = {"max_length": MAX, "do_sample": False}
    return ConvAIModel("gpt2", model_dir, args=args, use_cuda=False)


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    with ThreadServer(model, tmp_path_factory.mktemp("db") / "s.sqlite3", SETTINGS) as s:
        yield s


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=30)


def ask(client: openai.OpenAI, **kwargs):
    kwargs.setdefault("model", "tiny-bot")
    kwargs.setdefault("messages", messages())
    return client.chat.completions.create(**kwargs)


def ask_streamed(client: openai.OpenAI, **kwargs) -> tuple[str, list]:
    """The streamed reply's text and all its chunks."""
    chunks = list(ask(client, stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


# ---------------------------------------------------------------------- replies
def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list()] == ["tiny-bot"]
    assert client.models.retrieve("tiny-bot").owned_by == "personachat"
    with pytest.raises(openai.NotFoundError) as caught:
        ask(client, model="gpt-4o")
    assert caught.value.body["code"] == "model_not_found"
    assert caught.value.body["param"] == "model"


def test_greedy_reply_plain_and_streamed_equal_interact_single(client, greedy):
    expected, _ = greedy.interact_single(HISTORY[-1], HISTORY[:-1], PERSONA)
    reply = ask(client, temperature=0)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == "tiny-bot" and len(reply.choices) == 1
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected

    text, chunks = ask_streamed(client, temperature=0, stream_options={"include_usage": True})
    assert text == expected
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == reply.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == reply.usage
    assert all(c.usage is None for c in chunks[:-1])

    # The persona written on one line, sentence after sentence, is the same persona.
    one_line = [{"role": "system", "content": " ".join(PERSONA)}] + messages(None)
    assert ask(client, messages=one_line, temperature=0).choices[0].message.content == expected


def test_usage_counts_the_prompt_and_the_reply(client, greedy):
    tokens = greedy.tokenizer
    forced = ask(client, temperature=0, max_tokens=8, extra_body={"min_tokens": 8})
    # <bos> + persona, a speaker token before each utterance, the reply's speaker token.
    prompt = 1 + sum(len(tokens.encode(s)) for s in PERSONA) + 1
    prompt += sum(1 + len(tokens.encode(u)) for u in HISTORY)
    assert forced.usage.prompt_tokens == prompt
    assert forced.usage.completion_tokens == 8
    assert forced.usage.total_tokens == prompt + 8
    assert forced.choices[0].finish_reason == "length"

    free = ask(client, temperature=0)
    ended = "length" if free.usage.completion_tokens == MAX else "stop"
    assert 1 <= free.usage.completion_tokens <= MAX
    assert free.choices[0].finish_reason == ended


def test_seed_reproduces_a_sampled_reply(client):
    def sampled(seed: int) -> str:
        return ask(client, temperature=1.0, seed=seed, max_tokens=MAX).choices[0].message.content

    assert sampled(7) == sampled(7)
    text, _ = ask_streamed(client, temperature=1.0, seed=7, max_tokens=MAX)
    assert text == sampled(7)
    assert len({sampled(seed) for seed in range(6)}) > 1  # the seed does change the draws


def test_stop_strings_end_the_reply(client):
    forced = {"temperature": 0, "max_tokens": MAX, "extra_body": {"min_tokens": MAX}}
    full = ask(client, **forced).choices[0].message.content
    assert len(full) >= 6, full
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = ask(client, stop=[stop, "never said ~~"], **forced)
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < MAX
    text, chunks = ask_streamed(client, stop=stop, **forced)
    assert text == full[: full.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_text_parts_developer_messages_and_consecutive_turns_read_as_plain_ones(client):
    plain = ask(client, temperature=0)
    parts = [
        {"role": "developer", "content": [{"type": "text", "text": SYSTEM}]},
        {"role": "user", "content": [{"type": "text", "text": HISTORY[0]}]},
        {"role": "assistant", "content": HISTORY[1]},
        {"role": "user", "content": [{"type": "text", "text": HISTORY[2]}]},
    ]
    assert ask(client, messages=parts, temperature=0).usage == plain.usage
    # Two user messages in a row are one utterance: one speaker token less than apart.
    split = [*messages(history=HISTORY[:2]), {"role": "user", "content": "any"}]
    split.append({"role": "user", "content": "pets ?"})
    joined = messages(history=[*HISTORY[:2], "any pets ?"])
    assert (
        ask(client, messages=split, temperature=0).usage
        == ask(client, messages=joined, temperature=0).usage
    )


def test_a_persona_card_comes_before_the_system_message(client):
    """The card's persona first, then the system message's; the card's first message opens
    the conversation when the client's does not begin with the bot."""
    with_card = ask(client, temperature=0, extra_body={"persona_card": CARD})
    card_persona = ["Ada works as a baker.", "She has a dog."]
    spelled_out = [
        {"role": "system", "content": "\n".join(card_persona + PERSONA)},
        {"role": "assistant", "content": "hello User , i am Ada ."},
        *messages(None),
    ]
    same = ask(client, temperature=0, messages=spelled_out)
    assert with_card.choices[0].message.content == same.choices[0].message.content
    assert with_card.usage == same.usage
    assert with_card.usage.prompt_tokens > ask(client, temperature=0).usage.prompt_tokens


def test_a_session_takes_a_card_and_opens_with_its_first_message(server, client):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as api:
        created = api.post("/v1/sessions", json={"card": CARD})
        assert created.status_code == 201, created.text
        session = created.json()
        assert session["personality"] == ["Ada works as a baker.", "She has a dog."]
        opening = [(m["seq"], m["role"], m["text"]) for m in session["messages"]]
        assert opening == [(1, "bot", "hello User , i am Ada .")]
        turn = api.post(
            f"/v1/sessions/{session['id']}/messages",
            json={"text": "hi", "options": {"do_sample": False}},
        ).json()
        assert [m["seq"] for m in turn["messages"]] == [2, 3]
        # The same card through the chat route: the same conversation, the same reply.
        chat = ask(
            client,
            temperature=0,
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"persona_card": CARD},
        )
        assert turn["reply"] == chat.choices[0].message.content

        changed = api.put(
            f"/v1/sessions/{session['id']}",
            json={
                "card": {**CARD, "data": {**CARD["data"], "description": "{{char}} is a pilot."}}
            },
        )
        assert changed.json()["personality"] == ["Ada is a pilot."]
        assert len(changed.json()["messages"]) == 3  # the history stays

        broken = api.post("/v1/sessions", json={"card": {"spec": "chara_card_v2", "data": {}}})
        assert broken.status_code == 422
        assert broken.json()["error"]["code"] == "invalid_card"
        assert broken.json()["error"]["field"] == "card"
        both = api.post("/v1/sessions", json={"card": CARD, "personality": ["i am ."]})
        assert both.status_code == 422 and both.json()["error"]["field"] == "card"


# ---------------------------------------------------------------------- keys and errors
def test_the_api_key_goes_as_bearer_or_x_api_key(server):
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.models.list()
    assert caught.value.body["code"] == "invalid_api_key"
    assert set(caught.value.body) == {"message", "type", "param", "code"}
    with httpx.Client(base_url=server.url, timeout=30) as api:
        assert api.get("/v1/models", headers=AUTH).status_code == 200
        assert api.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).is_success
        assert api.get("/v1/models").status_code == 401
        # The session routes keep their own error shape.
        assert api.get("/v1/sessions/x").json()["error"]["code"] == "unauthorized"


BAD_REQUESTS = [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "tool", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"content": "hi"}]}, "messages[0].role"),
    ({"messages": messages(history=HISTORY[:2])}, "messages[2].role"),
    ({"messages": messages(["a b ."] * 101)}, "messages[0].content"),  # > max_card_chars
    ({"messages": [{"role": "system", "content": "***"}, *messages(None)]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "  "}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x" * 201}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ({"n": 2}, "n"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 129}, "max_tokens"),  # more than the model's context
    ({"max_completion_tokens": 1000}, "max_completion_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": ""}, "stop"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"logit_bias": {"5": 1}}, "logit_bias"),
    ({"extra_body": {"top_k": -1}}, "top_k"),
    ({"max_tokens": 4, "extra_body": {"min_tokens": 5}}, "min_tokens"),
    ({"extra_body": {"persona_card": {"spec": "chara_card_v2", "data": {}}}}, "persona_card"),
]


@pytest.mark.parametrize(("request_fields", "param"), BAD_REQUESTS)
def test_bad_requests_get_400_naming_the_field(client, request_fields, param):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, **request_fields)
    body = caught.value.body
    assert set(body) == {"message", "type", "param", "code"}, body
    assert body["param"] == param and body["type"] == "invalid_request_error", body
    assert param.split("[")[0] in body["message"], body  # the message says where, too
    assert ask(client, temperature=0).choices[0].message.content  # still serving


def test_malformed_and_oversized_bodies_get_openai_errors(server, client):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as api:
        broken = api.post(
            "/v1/chat/completions",
            content=b'{"messages": [',
            headers={"Content-Type": "application/json"},
        )
        assert broken.status_code == 400
        assert broken.json()["error"]["code"] == "malformed_json"
        huge = api.post("/v1/chat/completions", content=b"x" * 5000)
        assert huge.status_code == 413 and huge.json()["error"]["type"] == "invalid_request_error"
    assert ask(client, temperature=0).choices[0].message.content


# ---------------------------------------------------------------------- load
def test_concurrent_chat_requests_and_session_turns_share_the_batcher(model, greedy, tmp_path):
    settings = ServeSettings(batch_window_ms=300, max_batch_size=8, max_reply_tokens=MAX)
    personas = [[f"i am client {i} ."] for i in range(8)]
    with (
        ThreadServer(model, tmp_path / "load.sqlite3", settings) as server,
        httpx.Client(base_url=server.url, timeout=60) as api,
    ):
        chat = openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0, timeout=60)
        session = api.post("/v1/sessions", json={"personality": PERSONA}).json()["id"]

        def chat_reply(persona: list[str]) -> str:
            reply = ask(chat, messages=messages(persona), temperature=0)
            return reply.choices[0].message.content

        def session_turn(_: int) -> int:
            turn = api.post(f"/v1/sessions/{session}/messages", json={"text": "hi"})
            return turn.status_code

        with ThreadPoolExecutor(10) as pool:
            turns = [pool.submit(session_turn, i) for i in range(2)]
            replies = list(pool.map(chat_reply, personas))
        assert [t.result() for t in turns] == [200, 200]
        batching = api.get("/health").json()["batching"]
    assert batching["largest_batch"] >= 2, batching
    for persona, reply in zip(personas, replies, strict=True):
        assert reply == greedy.interact_single(HISTORY[-1], HISTORY[:-1], persona)[0]


def test_excess_requests_get_429_and_a_client_leaving_mid_stream_frees_its_place(model, tmp_path):
    settings = ServeSettings(batch_window_ms=1000, max_in_flight=2, max_reply_tokens=MAX)
    with ThreadServer(model, tmp_path / "busy.sqlite3", settings) as server:
        chat = openai.OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0, timeout=60)

        def attempt(_: int) -> str:
            try:
                return ask(chat, temperature=0).choices[0].message.content
            except openai.RateLimitError as err:
                assert err.body["type"] == "rate_limit_error" and "max_in_flight" in str(err)
                return "429"

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(attempt, range(6)))
        assert results.count("429") >= 1 and len(results) - results.count("429") >= 1
        # A client that reads the first chunk and leaves: its reply is dropped and its place
        # freed (within the second its request waits for others to join).
        with ask(chat, stream=True, temperature=0) as stream:
            assert next(iter(stream)).choices[0].delta.role == "assistant"
        with httpx.Client(base_url=server.url, timeout=30) as api:
            deadline = time.monotonic() + 0.8
            while api.get("/health").json()["in_flight"] and time.monotonic() < deadline:
                time.sleep(0.01)
            assert api.get("/health").json()["in_flight"] == 0
            assert api.get("/health").json()["batching"]["replies"] == 6 - results.count("429")
        with ThreadPoolExecutor(2) as pool:
            assert "429" not in list(pool.map(attempt, range(2)))


def test_a_chat_template_model_reads_the_system_message_as_its_persona(tmp_path):
    """A Llama-family model with a chat template: the request's messages are the template's
    messages (persona sentences one per line in the system message), and the reply is
    ``interact_single``'s."""
    texts = PERSONA + HISTORY
    folder = build_tiny_chat_model(tmp_path / "tiny-llama", texts, "llama")
    served = ConvAIModel("auto", folder, args={"max_length": MAX}, use_cuda=False)
    greedy = ConvAIModel(
        "auto", folder, args={"max_length": MAX, "do_sample": False}, use_cuda=False
    )
    with ThreadServer(served, tmp_path / "llama.sqlite3", SETTINGS) as server:
        chat = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        reply = ask(chat, model="tiny-llama", temperature=0)
    expected, _ = greedy.interact_single(HISTORY[-1], HISTORY[:-1], PERSONA)
    assert reply.choices[0].message.content == expected
    layout = greedy.tokenizer.apply_chat_template(
        messages(), add_generation_prompt=True, tokenize=False
    )
    assert reply.usage.prompt_tokens == len(
        greedy.tokenizer(layout, add_special_tokens=False).input_ids
    )
