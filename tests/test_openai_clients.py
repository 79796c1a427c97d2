"""The OpenAI surface as real clients use it, against a real uvicorn server on 127.0.0.1
with a tiny GPT-2: the official ``openai`` client (``max_tokens`` 300, ``/v1/completions``
plain and streamed, the penalties, ``logit_bias``), LangChain's ``ChatOpenAI``, and a request
body shaped like the one SillyTavern sends."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from personachat.generation.generate import DecodingOptions, next_token, penalize_counts_

pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx", reason="the test extra: pip install -e '.[test]'")
openai = pytest.importorskip("openai", reason="the test extra: pip install -e '.[test]'")

from .long_context import build_long_context  # noqa: E402
from .serve_helpers import AUTH, KEY, SETTINGS, ThreadServer, model_with_personas  # noqa: E402

SYSTEM = "i work as a nurse .\ni have a cat ."
SAID = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi , any pets ?"}]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from personachat import ConvAIModel

    built = build_long_context(tmp_path_factory.mktemp("tiny") / "gpt2-2048")
    folder = model_with_personas(built, tmp_path_factory.mktemp("clients") / "tiny-bot")
    return ConvAIModel("gpt2", folder, args={"max_length": 12}, use_cuda=False)


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    settings = replace(SETTINGS, max_reply_tokens=16, max_body_bytes=64 * 1024)
    with ThreadServer(model, tmp_path_factory.mktemp("db") / "s.sqlite3", settings) as s:
        yield s


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


# ---------------------------------------------------------------------- max_tokens
def test_max_tokens_is_an_upper_bound_up_to_the_models_context(client):
    """Clients send 256-300 by default: accepted; the reply ends at its turn's end, at the
    latest after the server's max_reply_tokens (16 here: finish_reason "length")."""
    reply = client.chat.completions.create(
        model="tiny-bot", messages=SAID, max_tokens=300, temperature=0
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 16
    forced = client.chat.completions.create(
        model="tiny-bot",
        messages=SAID,
        max_tokens=128,
        temperature=0,
        extra_body={"min_tokens": 16},
    )
    assert forced.usage.completion_tokens == 16 and forced.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as caught:  # beyond the context: refused
        client.chat.completions.create(model="tiny-bot", messages=SAID, max_tokens=2049)
    assert caught.value.body["param"] == "max_tokens"
    assert "[1, 2048] (the upper bound is the model's context)" in caught.value.body["message"]


# ---------------------------------------------------------------------- penalties, bias
def test_frequency_and_presence_penalties_lower_the_logits_of_used_tokens():
    logits = torch.zeros(6)
    penalize_counts_(logits, [2, 2, 3], frequency=0.5, presence=1.0)
    assert logits.tolist() == [0, 0, -2.0, -1.5, 0, 0]
    options = DecodingOptions.from_args(do_sample=False, presence_penalty=2.0)
    scores = torch.tensor([0.0, 1.0, 2.5])
    assert next_token(scores, [2], [], options) == 1  # 2.5 - 2 < 1: the new token wins
    assert next_token(scores, [], [], options) == 2


def test_penalties_are_applied_and_out_of_range_ones_refused(client):
    def ask(**kwargs) -> str:
        reply = client.chat.completions.create(
            model="tiny-bot",
            messages=SAID,
            temperature=0,
            max_tokens=16,
            extra_body={"min_tokens": 16},
            **kwargs,
        )
        return reply.choices[0].message.content

    plain = ask()
    assert ask(frequency_penalty=0, presence_penalty=0) == plain
    assert (
        ask(frequency_penalty=2.0, presence_penalty=2.0) != plain
    )  # 16 tokens of a tiny model repeat
    with pytest.raises(openai.BadRequestError) as caught:
        ask(presence_penalty=2.5)
    assert caught.value.body["param"] == "presence_penalty"


def test_logit_bias_is_refused_unless_empty(client):
    empty = client.chat.completions.create(
        model="tiny-bot", messages=SAID, temperature=0, logit_bias={}
    )
    assert empty.choices[0].message.content is not None
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny-bot", messages=SAID, logit_bias={"50": -100})
    assert caught.value.body["param"] == "logit_bias"
    assert "not supported" in caught.value.body["message"]


# ---------------------------------------------------------------------- /v1/completions
def test_text_completion_continues_the_prompt_plain_and_streamed(client, model):
    prompt = "i work as a nurse . i have"
    done = client.completions.create(model="tiny-bot", prompt=prompt, max_tokens=8, temperature=0)
    assert done.object == "text_completion" and done.id.startswith("cmpl-")
    (choice,) = done.choices
    assert choice.finish_reason in ("stop", "length") and done.usage.completion_tokens <= 8
    assert done.usage.prompt_tokens == len(model.tokenizer(prompt)["input_ids"])
    # The prompt is continued as given: greedy, the model's own argmax continuation.
    assert choice.text == greedy_continuation(model, prompt, 8)
    chunks = list(
        client.completions.create(
            model="tiny-bot",
            prompt=[prompt],
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed == choice.text
    assert chunks[-1].usage.completion_tokens == done.usage.completion_tokens
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == choice.finish_reason and set(finish[:-1]) <= {None}
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny-bot", prompt="hi " * 3000, max_tokens=8)
    assert caught.value.body["param"] == "prompt"
    assert "context" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny-bot", prompt="hi", echo=True)
    assert caught.value.body["param"] == "echo"


def greedy_continuation(model, prompt: str, steps: int) -> str:
    """The argmax continuation of ``prompt`` by plain forward passes (no cache, no batch)."""
    tokenizer, out = model.tokenizer, []
    ids = tokenizer(prompt)["input_ids"]
    for _ in range(steps):
        x = torch.tensor([ids + out])
        with torch.no_grad():
            logits = model.model(
                input_ids=x, token_type_ids=torch.full_like(x, model.special.reply_type)
            ).logits
        token = int(logits[0, -1].argmax())
        if token == tokenizer.eos_token_id:
            break
        out.append(token)
    return tokenizer.decode(out, skip_special_tokens=True)


# ---------------------------------------------------------------------- real clients
def test_langchain_chat_openai_talks_to_the_server(server):
    chat_openai = pytest.importorskip(
        "langchain_openai", reason="optional: pip install langchain-openai"
    )
    llm = chat_openai.ChatOpenAI(
        base_url=server.url + "/v1",
        api_key=KEY,
        model="tiny-bot",
        max_tokens=300,
        temperature=0,
        max_retries=0,
        timeout=60,
    )
    answer = llm.invoke([("system", SYSTEM), ("human", "hi , any pets ?")])
    assert isinstance(answer.content, str)
    streamed = "".join(chunk.content for chunk in llm.stream([("human", "hi , any pets ?")]))
    assert isinstance(streamed, str)


SILLYTAVERN_BODY = {  # what SillyTavern's chat completion (custom source) sends, shape kept
    "messages": [
        {
            "role": "system",
            "content": "Write Ada's next reply in a fictional chat between "
            "Ada and User.\nAda works as a baker. She has a dog.\n[Start a new Chat]",
        },
        {"role": "assistant", "content": "hello User , i am Ada ."},
        {"role": "user", "content": "hi , any pets ?"},
    ],
    "model": "tiny-bot",
    "temperature": 1,
    "frequency_penalty": 0.7,
    "presence_penalty": 0.7,
    "top_p": 1,
    "max_tokens": 300,
    "stream": True,
    "logit_bias": {},
    "seed": 5,
    "stop": ["\nUser:"],
    "n": 1,
    "user_name": "User",
    "char_name": "Ada",
    "include_reasoning": False,
}


def test_a_sillytavern_request_body_is_answered_as_a_stream(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as api:
        with api.stream("POST", "/v1/chat/completions", json=SILLYTAVERN_BODY) as response:
            assert response.status_code == 200, response.read()
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert "\nUser:" not in text
