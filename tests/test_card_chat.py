"""A character card shaped like SillyTavern's default one (a forest guardian: a long prose
description, example chats, alternate greetings, a lorebook), as JSON and inside a PNG,
read through every front end (``personachat interact --persona-card``, ``POST /v1/sessions``,
``persona_card`` on chat completions) and chatted with, on a tiny GPT-2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from personachat.data.cards import EXAMPLE_HEADER, CardLimits, read_card
from personachat.serve.chat_completions import conversation
from personachat.serve.openai_api import ChatMessage

from .long_context import build_long_context

FIXTURES = Path(__file__).parent / "fixtures"
ELOWEN_JSON = FIXTURES / "elowen.json"
ELOWEN_PNG = FIXTURES / "elowen.png"  # the same card in a tEXt "chara" chunk, base64
ELOWEN = json.loads(ELOWEN_JSON.read_text(encoding="utf-8"))


def test_the_png_holds_the_same_card_as_the_json():
    assert read_card(ELOWEN_PNG, "Sam") == read_card(ELOWEN_JSON, "Sam")


def test_a_sillytavern_card_becomes_a_persona_not_28_sentences_refused():
    elowen = read_card(ELOWEN_JSON, "Sam")
    sentences = [p for p in elowen.personality if not p.startswith(EXAMPLE_HEADER)]
    assert len(sentences) > 20  # more than the 10 persona sentences that refused it before
    assert "Elowen's personality: gentle, patient" in sentences[-2]
    assert sentences[-1].startswith("Scenario: Sam was hurt by shadow creatures")
    # Example chats: two blocks after the persona, never persona sentences.
    examples = elowen.personality[len(sentences) :]
    assert len(examples) == 2 and all(e.startswith(EXAMPLE_HEADER + "\nSam: ") for e in examples)
    assert not any(s.startswith(("Sam:", "Elowen:", "<START>")) for s in sentences)
    assert elowen.examples[1][0] == ("Sam", "Can you heal my arm?")
    assert elowen.first_message.startswith("*The smell of chamomile fills the little room.")
    assert "Easy now, Sam." in elowen.first_message
    assert len(elowen.alternate_greetings) == 2
    assert [len(e.keys) for e in elowen.lore] == [2, 3]  # the disabled entry is left out


def test_lorebook_entries_join_the_persona_when_their_keys_are_in_recent_messages():
    elowen = read_card(ELOWEN_JSON, "Sam")
    plain = elowen.persona_for(["hello", "how are you?"])
    assert plain == elowen.personality
    owl = elowen.persona_for(["hello", "Who is that OWL up there?"])
    (thistle,) = (p for p in owl if p not in plain)
    assert thistle.startswith("Thistle is a grey owl") and "Elowen's messages" in thistle
    assert owl.index(thistle) == elowen.lore_at  # before the example chats
    both = elowen.persona_for(["the owl", "and the shadow things at the wards?"])
    shadows = next(p for p in both if p.startswith("The shadow creatures"))
    assert both.index(shadows) < both.index(thistle)  # insertion_order 90 before 100
    # scan_depth 2: a key three messages back no longer calls its entry up
    assert elowen.persona_for(["the owl", "ok", "fine", "bye"]) == plain


def test_chat_completion_messages_with_the_card_call_up_its_lorebook():
    card = read_card(ELOWEN_JSON, "User")
    said = [ChatMessage(role="user", content="Is that an owl on the beam?")]
    persona, history = conversation(said, settings(), card, CardLimits())
    assert history[0] == card.first_message and history[1] == "Is that an owl on the beam?"
    assert any(p.startswith("Thistle is a grey owl") for p in persona)


def settings():
    from personachat.serve.settings import ServeSettings

    return ServeSettings()


# ---------------------------------------------------------------------- the CLI
def personachat(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "personachat.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=900,  # a loaded machine: minutes to import torch
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="module")
def long_context(tmp_path_factory) -> Path:
    """A tiny GPT-2 reading 2,048 tokens, its tokenizer trained on the card's words too."""
    texts = [v for v in ELOWEN["data"].values() if isinstance(v, str)]
    return build_long_context(tmp_path_factory.mktemp("tiny") / "gpt2-2048", texts)


@pytest.mark.parametrize("card", [ELOWEN_JSON, ELOWEN_PNG], ids=["json", "png"])
def test_interact_chats_with_the_card(long_context, card):
    model = ["--model", str(long_context), "--set", "max_length=5", "--set", "do_sample=false"]
    stdin = "hello\nis that an owl?\n"
    chat = personachat("interact", *model, "--persona-card", str(card), stdin=stdin)
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.startswith("*The smell of chamomile fills the little room.")
    assert "Easy now, User." in chat.stdout.splitlines()[0]
    assert chat.stdout.count(">>> ") == 3 and "left out" not in chat.stderr
    # A smaller budget leaves the example chats out, and says how to keep them.
    small = personachat(
        "interact",
        *model,
        "--set",
        "card_prompt_tokens=600",
        "--persona-card",
        str(card),
        stdin=stdin,
    )
    assert small.returncode == 0, small.stderr
    assert "pieces of the card left out to fit card_prompt_tokens=600" in small.stderr


def test_a_card_that_cannot_fit_the_model_is_refused_with_the_fix(tiny_checkpoint):
    chat = personachat(
        "interact", "--model", str(tiny_checkpoint), "--persona-card", str(ELOWEN_PNG)
    )
    assert chat.returncode == 2 and "Traceback" not in chat.stderr
    assert 'not even the first line of the card "Elowen" fits in card_prompt_tokens=64' in (
        chat.stderr
    )
    assert "raise card_prompt_tokens" in chat.stderr


# ---------------------------------------------------------------------- the server
fastapi = pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[test]'")
openai = pytest.importorskip("openai", reason="the test extra: pip install -e '.[test]'")
httpx = pytest.importorskip("httpx", reason="the test extra: pip install -e '.[test]'")

from .serve_helpers import AUTH, KEY, SETTINGS, ThreadServer, model_with_personas  # noqa: E402

# the card is ~8 KB of JSON, ~6,000 characters of text
ROOMY = replace(SETTINGS, max_body_bytes=64 * 1024, max_card_chars=32_000)


@pytest.fixture(scope="module")
def card_model(long_context, tmp_path_factory):
    from personachat import ConvAIModel

    folder = model_with_personas(long_context, tmp_path_factory.mktemp("cards") / "tiny-bot")
    return ConvAIModel("gpt2", folder, args={"max_length": 8}, use_cuda=False)


@pytest.fixture(scope="module")
def server(card_model, tmp_path_factory):
    with ThreadServer(card_model, tmp_path_factory.mktemp("db") / "s.sqlite3", ROOMY) as s:
        yield s


def test_a_session_takes_the_card_and_chats(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as api:
        created = api.post("/v1/sessions", json={"card": ELOWEN})
        assert created.status_code == 201, created.text
        session = created.json()
        assert session["messages"][0]["role"] == "bot"
        assert session["messages"][0]["text"].startswith("*The smell of chamomile")
        assert session["personality"][0].startswith("Elowen is the guardian of the Hollowmere")
        turn = api.post(f"/v1/sessions/{session['id']}/messages", json={"text": "thank you"})
        assert turn.status_code == 200, turn.text
        assert isinstance(turn.json()["reply"], str)
        # The last turn taken back (the page's regenerate / edit): the opening line stays.
        undone = api.delete(f"/v1/sessions/{session['id']}/messages/last")
        assert undone.status_code == 200, undone.text
        assert undone.json()["text"] == "thank you"
        kept = [(m["role"], m["text"]) for m in undone.json()["session"]["messages"]]
        assert kept == [("bot", session["messages"][0]["text"])]
        again = api.delete(f"/v1/sessions/{session['id']}/messages/last")
        assert again.status_code == 409 and again.json()["error"]["code"] == "nothing_to_undo"


def test_chat_completions_take_the_card_and_chat(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    said = [{"role": "user", "content": "who are you?"}]
    reply = client.chat.completions.create(
        model="tiny-bot", messages=said, temperature=0, extra_body={"persona_card": ELOWEN}
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    alone = client.chat.completions.create(model="tiny-bot", messages=said, temperature=0)
    assert reply.usage.prompt_tokens > alone.usage.prompt_tokens  # the card is in the prompt


def personas_given(model, monkeypatch) -> list[list[str]]:
    """The persona of every conversation the model is asked to answer, in order."""
    given: list[list[str]] = []
    generate = model.complete

    def recorded(conversations, *args, **kwargs):
        given.extend(list(c["personality"] if isinstance(c, dict) else c[0]) for c in conversations)
        return generate(conversations, *args, **kwargs)

    monkeypatch.setattr(model, "complete", recorded)
    return given


THISTLE = "Thistle is a grey owl, older than any owl should be, who carries Elowen's messages"
LORE = ("Thistle is a grey owl", "The shadow creatures are shapes")


def test_a_stored_sessions_lorebook_survives_a_restart_and_keeps_firing(
    card_model, tmp_path, monkeypatch
):
    card = json.loads(json.dumps(ELOWEN))
    card["data"]["first_mes"] = "Good morning, {{user}}."  # no lorebook key in the opening
    given = personas_given(card_model, monkeypatch)
    db = tmp_path / "sessions.sqlite3"

    def say(api, session_id: str, text: str) -> None:
        turn = api.post(f"/v1/sessions/{session_id}/messages", json={"text": text})
        assert turn.status_code == 200, turn.text

    with ThreadServer(card_model, db, ROOMY) as first:
        with httpx.Client(base_url=first.url, headers=AUTH, timeout=120) as api:
            session = api.post("/v1/sessions", json={"card": card}).json()
            say(api, session["id"], "good morning to you too")
    stored = session["personality"]
    at = sum(not p.startswith(EXAMPLE_HEADER) for p in stored)  # before the example chats
    assert given == [stored]  # no key in the last two messages: the card's persona alone

    with ThreadServer(card_model, db, ROOMY) as second:  # a restart on the same database
        with httpx.Client(base_url=second.url, headers=AUTH, timeout=120) as api:
            say(api, session["id"], "Is that an OWL up on the beam?")
            # taking the turn back rebuilds the session: its lorebook stays with it
            assert api.delete(f"/v1/sessions/{session['id']}/messages/last").status_code == 200
            say(api, session["id"], "Is that an OWL up on the beam?")
            # a plain persona replaces the card's: its lorebook goes with it
            plain = {"personality": ["i like owls ."]}
            assert api.put(f"/v1/sessions/{session['id']}", json=plain).status_code == 200
            say(api, session["id"], "tell me about the owl")
    for persona in given[1:3]:
        called_up = persona[at : at + len(persona) - len(stored)]
        assert any(p.startswith(THISTLE) for p in called_up)
        assert all(p.startswith(LORE) for p in called_up)  # the reply read may name the wards
        assert persona[:at] == stored[:at] and persona[at + len(called_up) :] == stored[at:]
    assert given[3] == ["i like owls ."]
