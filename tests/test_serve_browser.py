"""The chat page in headless Chromium: type a message, see the reply, reload, see the history.

Debian's ``chromium`` driven by Playwright's Python package (no Playwright browser download);
skipped where /usr/bin/chromium is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from personachat import ConvAIModel
from personachat.serve.settings import ServeSettings

pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[test]'")
pytest.importorskip("uvicorn", reason="the serve extra: pip install -e '.[test]'")

from .serve_helpers import ThreadServer, model_with_personas  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)"
)


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    folder = model_with_personas(tiny_checkpoint, tmp_path_factory.mktemp("page") / "model")
    model = ConvAIModel("gpt2", folder, use_cuda=False)
    db = tmp_path_factory.mktemp("db") / "page.sqlite3"
    with ThreadServer(model, db, ServeSettings(batch_window_ms=5)) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


def test_chat_reply_and_history_after_reload(server, browser):
    page = browser.new_page()
    page.set_default_timeout(15_000)
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(server.url + "/")
    # A new session with a persona drawn from the model's data is shown.
    page.wait_for_function("document.getElementById('persona').value.length > 0")
    session_id = page.evaluate("localStorage.getItem('personachat.session')")
    assert session_id

    page.fill("#persona", "i work as a nurse .\ni have a cat .")
    page.click("#save-persona")
    page.wait_for_selector("#status:has-text('Persona saved')")

    page.click("summary")  # the decoding options
    page.fill("#max-length", "6")
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    # Record what the reply bubble shows while the reply is still coming in.
    page.evaluate("""() => {
        window.shown = [];
        new MutationObserver(() => {
            const li = document.querySelector('#log li.msg.bot.pending');
            if (li && li.textContent) window.shown.push(li.textContent);
        }).observe(document.getElementById('log'),
                   {childList: true, subtree: true, characterData: true});
    }""")
    page.fill("#message", "hi , what do you do ?")
    page.press("#message", "Enter")
    page.wait_for_selector("#log li.msg.bot:not(.pending)")
    assert any(url.endswith("/messages/stream") for url in requests)
    assert page.evaluate("window.shown.length") >= 1  # text arrived before the end
    assert page.inner_text("#log li.msg.user") == "hi , what do you do ?"
    reply = page.inner_text("#log li.msg.bot")
    assert "failed" not in page.get_attribute("#log li.msg.bot", "class")

    page.fill("#message", "any pets ?")
    page.click("#send")
    page.wait_for_function("document.querySelectorAll('#log li.msg.bot:not(.pending)').length == 2")

    page.reload()
    page.wait_for_function("document.querySelectorAll('#log li.msg').length == 4")
    texts = page.locator("#log li.msg").all_inner_texts()
    assert texts[0] == "hi , what do you do ?" and texts[1] == reply
    assert texts[2] == "any pets ?"
    assert page.input_value("#persona") == "i work as a nurse .\ni have a cat ."
    assert page.evaluate("localStorage.getItem('personachat.session')") == session_id

    # "New chat" starts another session; the old one is still on the server.
    page.click("#new-chat")
    page.wait_for_function("document.querySelectorAll('#log li.msg').length == 0")
    assert page.evaluate("localStorage.getItem('personachat.session')") != session_id
    assert errors == []
    page.close()


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def card_server(tmp_path_factory):
    """A model that reads 2,048 tokens: the card's persona fits (the tiny one's 128 do not)."""
    from dataclasses import replace

    from .long_context import build_long_context
    from .serve_helpers import SETTINGS

    built = build_long_context(tmp_path_factory.mktemp("tiny") / "gpt2-2048")
    folder = model_with_personas(built, tmp_path_factory.mktemp("page") / "card-model")
    model = ConvAIModel("gpt2", folder, use_cuda=False, args={"max_length": 6})
    settings = replace(SETTINGS, api_key=None, max_body_bytes=64 * 1024, max_card_chars=32_000)
    with ThreadServer(model, tmp_path_factory.mktemp("db") / "card.sqlite3", settings) as s:
        yield s


@pytest.mark.parametrize("name", ["elowen.png", "elowen.json"])
def test_a_card_is_loaded_by_file_picker_and_by_drop(card_server, browser, name):
    page = browser.new_page()
    page.set_default_timeout(30_000)
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(card_server.url + "/")
    page.wait_for_function("document.getElementById('persona').value.length > 0")
    page.click("summary")  # the server's decoding defaults are shown
    page.wait_for_function(
        "document.getElementById('defaults').textContent.includes('max_length=6')"
    )

    page.set_input_files("#card-file", str(FIXTURES / name))
    page.wait_for_selector("#character-name:has-text('Elowen')")
    first = page.inner_text("#log li.msg.bot")
    assert first.startswith("*The smell of chamomile fills the little room.")
    assert page.input_value("#persona").startswith("Elowen is the guardian of the Hollowmere")
    page.fill("#message", "thank you")
    page.press("#message", "Enter")
    page.wait_for_function("document.querySelectorAll('#log li.msg.bot:not(.pending)').length == 2")
    page.reload()  # the character's name stays with its session
    page.wait_for_selector("#character-name:has-text('Elowen')")
    # Regenerate: the last reply is taken back and asked for again; Edit: the last message
    # comes back to the message box.
    page.click("#regenerate")  # the send button stays disabled until the new reply is in
    page.wait_for_function(
        "!document.getElementById('send').disabled"
        " && document.querySelectorAll('#log li.msg.bot:not(.pending)').length == 2"
        " && document.querySelectorAll('#log li.msg.user').length == 1"
    )
    assert page.inner_text("#log li.msg.user") == "thank you"
    page.click("#edit-last")
    page.wait_for_function("document.querySelectorAll('#log li.msg').length == 1")
    assert page.input_value("#message") == "thank you"

    # Drag and drop: a DataTransfer holding the file, dropped on the page.
    data = (FIXTURES / name).read_bytes()
    page.evaluate(
        """([bytes, name]) => {
            const file = new File([new Uint8Array(bytes)], name);
            const transfer = new DataTransfer();
            transfer.items.add(file);
            document.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true}));
        }""",
        [list(data), name],
    )
    page.wait_for_function("document.querySelectorAll('#log li.msg').length == 1")
    assert page.inner_text("#log li.msg.bot").startswith("*The smell of chamomile")
    assert errors == []
    page.close()
