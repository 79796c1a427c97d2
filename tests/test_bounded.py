"""One huge operation in an untrusted template is refused before it runs: ``'x' * 10**9``,
``'x'|center(10**9)``, a format width of a billion, a join or replace that would explode, a
string doubled in a loop. Each ends in one line naming the template and the operation,
within the render's budget; a sound template renders as before."""

from __future__ import annotations

import time

import pytest

from personachat.bounded import BoundedSandbox, BudgetExceeded, render_bounded

WHAT = "the tokenizer's chat template"
MESSAGES = [{"role": "system", "content": "i like tea ."}, {"role": "user", "content": "hi"}]


def render(source: str, max_chars: int = 100_000) -> str:
    """``source`` rendered in the bounded sandbox under the budget (time: generous, these
    tests are about size; a loaded machine's first traced render took over a minute)."""
    template = BoundedSandbox().from_string(source)
    return render_bounded(lambda: template.render(messages=MESSAGES), WHAT, 900, max_chars)


@pytest.mark.parametrize(
    "source, how, size",
    [
        ("{{ 'x' * 10**9 }}", "'*'", "1,000,000,000"),
        ("{{ [0] * 10**9 }}", "'*'", "1,000,000,000"),
        ("{{ ('x' * 60000) + ('y' * 60000) }}", "'+'", "120,000"),
        ("{{ '%0999999999d' % 1 }}", "'%'", "999,999,999"),
        ("{{ 'x'|center(10**9) }}", "'|center'", "1,000,000,000"),
        ("{{ 'x'.ljust(10**9) }}", "'.ljust()'", "1,000,000,000"),
        ("{{ '{:>999999999}'.format('x') }}", "'.format()'", "999,999,999"),
        ("{{ ['x' * 60000, 'y' * 60000]|join('') }}", "'|join'", "120,000"),
        ("{{ ('a' * 1000)|replace('a', 'b' * 1000) }}", "'|replace'", "1,000,000"),
    ],
)
def test_one_huge_operation_is_refused_before_it_runs(source, how, size):
    started = time.monotonic()
    with pytest.raises(BudgetExceeded) as refused:
        render(source)
    message = str(refused.value)
    assert message == (
        f"{WHAT} would build a value of {size} characters or items with {how}, more than "
        "the 100,000 a render may write"
    )
    assert time.monotonic() - started < 300  # refused, not computed (a loaded machine)


def test_a_string_doubled_in_a_loop_is_stopped_once_it_outgrows_the_budget():
    doubling = (
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"
    )
    with pytest.raises(BudgetExceeded, match="built a value of 131,072 characters or items"):
        render(doubling)


def test_a_sound_template_renders_as_before():
    chatml = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>"
        "{{ '\n' * 1 }}{% endfor %}{{ '-' * (messages|length) }}"
    )
    expected = "<|im_start|>system\ni like tea .<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n--"
    assert render(chatml) == expected
    # the budget is the render's: a larger one lets the same operation through
    assert len(render("{{ 'x' * 200000 }}", max_chars=300_000)) == 200_000


def test_transformers_renders_chat_templates_in_the_bounded_sandbox():
    from personachat.encoding.chat_format import ChatTemplateError, _render
    from tests.tiny_models import chat_tokenizer

    tokenizer = chat_tokenizer(["i like tea .", "hi"])
    assert "<|im_start|>user\nhi" in _render(tokenizer, MESSAGES)
    tokenizer.chat_template = "{{ 'x' * 10**9 }}"
    with pytest.raises(ChatTemplateError) as refused:
        _render(tokenizer, MESSAGES)
    message = str(refused.value)
    assert message.startswith(f"{WHAT} would build a value of 1,000,000,000 characters")
    assert "input_format 'transfertransfo'" in message and "\n" not in message
