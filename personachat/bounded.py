"""Work from an untrusted source run under a time and output budget.

A chat template comes with the model file: Jinja's sandbox keeps it from reaching ``os`` but
not from working forever (``{% for i in range(99999) %}{% for j in range(99999) %}``) or
writing gigabytes. ``render_bounded`` runs a render with a trace function on the calling
thread that checks the clock at every line of the compiled template (and at every Python
call beneath it) and counts what the template yields; past either budget it raises
``BudgetExceeded`` inside the render, which unwinds it. The tracing slows the render, so it
is meant for the few renders made when a model loads, not for every request.

A single operation can outrun both checks: ``{{ 'x' * 10**9 }}`` is one allocation of a
gigabyte between two trace events. So templates are compiled in ``BoundedSandbox``, Jinja's
sandbox with its operator hooks on (``*``, ``**``, ``+``, ``%``) and its calls and filters
checked: an operation whose result would exceed the render's character budget is refused
*before* it runs (``BudgetExceeded`` naming the template and the operation). Strings grown
step by step (``{% set ns.s = ns.s ~ ns.s %}`` in a loop) are caught by the trace, which
measures the template's variables at every line. transformers compiles chat templates
itself; ``bound_transformers_templates`` makes it use ``BoundedSandbox`` (outside a bounded
render the budget is ``DEFAULT_MAX_CHARS``).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from functools import wraps
from typing import Any, TypeVar

from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from personachat.errors import PersonachatError

T = TypeVar("T")
TEMPLATE_FILE = "<template>"  # the file name of the code Jinja compiles a template to
DEFAULT_MAX_CHARS = 10_000_000  # any template render outside render_bounded
# (what is rendered, the most characters one value may have) of the render on this thread
_budget: ContextVar[tuple[str, int]] = ContextVar(
    "template_budget", default=("a template", DEFAULT_MAX_CHARS)
)
_WIDTH = re.compile(r"\d{7,}")  # a field width of a million or more in a format string


class BudgetExceeded(PersonachatError, RuntimeError):
    """Work from an untrusted source ran past its time or output budget."""


def render_bounded(render: Callable[[], T], what: str, seconds: float, max_chars: int) -> T:
    """``render()`` (a Jinja template's render, possibly through a library), stopped with
    BudgetExceeded naming ``what`` once it has run ``seconds`` or its template has yielded
    ``max_chars`` characters."""
    deadline = time.monotonic() + seconds
    written = 0

    def check(frame, event: str, arg):
        nonlocal written
        if time.monotonic() > deadline:
            raise BudgetExceeded(
                f"{what} did not finish within {seconds:g} s (a template should render in "
                "milliseconds; this one loops too much)"
            )
        if event == "return" and isinstance(arg, str) and frame.f_code.co_filename == TEMPLATE_FILE:
            written += len(arg)
            if written > max_chars:
                raise BudgetExceeded(
                    f"{what} wrote more than {max_chars:,} characters for a short conversation"
                )
        if event == "line" and frame.f_code.co_filename == TEMPLATE_FILE:
            check_variables(frame.f_locals, what, max_chars)
        return check if frame.f_code.co_filename == TEMPLATE_FILE else None

    bound_transformers_templates()
    before, budget = sys.gettrace(), _budget.set((what, max_chars))
    sys.settrace(check)
    try:
        return render()
    finally:
        sys.settrace(before)
        _budget.reset(budget)


def too_large(size: int, how: str) -> None:
    """Refuse (BudgetExceeded) a value of ``size`` characters or items made by ``how``, when
    it exceeds the current render's budget."""
    what, max_chars = _budget.get()
    if size > max_chars:
        raise BudgetExceeded(
            f"{what} would build a value of {size:,} characters or items with {how}, more "
            f"than the {max_chars:,} a render may write"
        )


def check_variables(variables: dict, what: str, max_chars: int) -> None:
    """Refuse a template whose variables (and namespaces' attributes) hold a string or list
    longer than the render may write: a value grown step by step in a loop."""
    for value in variables.values():
        values = value._Namespace__attrs.values() if isinstance(value, Namespace) else (value,)
        for v in values:
            if isinstance(v, str | list | tuple | dict) and len(v) > max_chars:
                raise BudgetExceeded(
                    f"{what} built a value of {len(v):,} characters or items, more than the "
                    f"{max_chars:,} a render may write"
                )


def sized(value: Any) -> int | None:
    """The length of a string, list or tuple (None for anything else)."""
    return len(value) if isinstance(value, str | list | tuple) else None


def check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse ``left operator right`` before it runs when its result would be too large."""
    if operator == "*":
        for seq, times in ((left, right), (right, left)):
            if sized(seq) is not None and isinstance(times, int):
                too_large(sized(seq) * max(times, 0), f"'{operator}'")
        if isinstance(left, int) and isinstance(right, int):  # digits: bits / 3.3
            too_large((left.bit_length() + right.bit_length()) // 3, f"'{operator}'")
    elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
        too_large(right * max(left.bit_length() - 1, 1) // 3, f"'{operator}'")
    elif operator == "+" and sized(left) is not None and sized(right) is not None:
        too_large(sized(left) + sized(right), f"'{operator}'")
    elif operator == "%" and isinstance(left, str):
        check_arguments(right if isinstance(right, tuple) else (right,), {}, "'%'")
        check_format(left, "'%'")


def check_arguments(args: tuple, kwargs: dict, how: str) -> None:
    """Refuse a call whose numbers (widths, counts) exceed the budget."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool):
            too_large(value, how)


def check_format(text: Any, how: str) -> None:
    """Refuse a format string with a field width beyond the budget (``'%0999999999d'``)."""
    if isinstance(text, str):
        for width in _WIDTH.findall(text):
            too_large(int(width), how)


def check_expansion(name: str, subject: Any, args: tuple, how: str) -> None:
    """Refuse ``format`` / ``join`` / ``replace`` of ``subject`` (the format string, the
    separator, the text) whose result would be too large, before it is built."""
    if name == "format":
        check_format(subject, how)
    elif name == "join" and args and isinstance(args[0], list | tuple) and isinstance(subject, str):
        items = args[0]
        length = sum(sized(i) or len(str(i)) for i in items)
        too_large(length + len(subject) * max(len(items) - 1, 0), how)
    elif name == "replace" and isinstance(subject, str) and len(args) >= 2:
        old, new = args[0], args[1]
        if isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
            hits = subject.count(old) if old else len(subject) + 1
            too_large(len(subject) + hits * (len(new) - len(old)), how)


def checked_result(result: Any, how: str) -> Any:
    """``result``, refused when it is a string or list over the budget."""
    size = sized(result)
    if size is not None:
        too_large(size, how)
    return result


def bounded_filter(name: str, function: Callable) -> Callable:
    """A Jinja filter refused before it builds a value over the render's budget."""
    how = f"'|{name}'"

    @wraps(function)
    def filtered(*args: Any, **kwargs: Any) -> Any:
        values = [a for a in args if not hasattr(a, "environment")]  # not the context
        if values:
            if name == "join":  # value|join(d): d between the items
                separator = kwargs.get("d", values[1] if len(values) > 1 else "")
                check_expansion("join", separator, (values[0],), how)
            else:
                check_expansion(name, values[0], tuple(values[1:]), how)
        check_arguments(tuple(values[1:]), kwargs, how)
        return checked_result(function(*args, **kwargs), how)

    return filtered


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox that refuses an operator, call or filter whose result would
    be larger than the current render may write (see the module doc)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.filters = {name: bounded_filter(name, f) for name, f in self.filters.items()}

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        name = getattr(__obj, "__name__", "a call")
        # the sandbox hands str.format out wrapped; the wrapper keeps the method it wraps
        subject = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        if sized(subject) is not None:  # a method of a string or list: 'x'.center(10**9)
            check_arguments(args, kwargs, f"'.{name}()'")
            check_expansion(name, subject, args, f"'.{name}()'")
        return checked_result(super().call(__context, __obj, *args, **kwargs), f"'{name}()'")


def bound_transformers_templates() -> None:
    """Make transformers compile chat templates in ``BoundedSandbox`` (once; its compiled
    templates are forgotten so none stays unbounded)."""
    try:
        from transformers.utils import chat_template_utils
    except ImportError:  # no transformers: nothing of theirs to bound
        return
    if getattr(chat_template_utils, "ImmutableSandboxedEnvironment", None) is BoundedSandbox:
        return
    chat_template_utils.ImmutableSandboxedEnvironment = BoundedSandbox
    chat_template_utils._compile_jinja_template.cache_clear()
