"""Which values each option takes: checked once, when options are set, in one line each.

Every numeric option has a range (``BOUNDS``): non-finite values and values outside it are
refused with an ``ArgsError`` naming the option, the value and the valid range, so that
``learning_rate=inf`` is refused here rather than training to all-NaN weights, and
``max_train_examples=-1`` rather than silently dropping a dialog. Names (optimizer,
scheduler, input format) must be known, and options that depend on each other must agree.
Values are shown bounded (``shown``): an error never builds the repr of a huge value.

``Bound`` is the one range check of the package: the options' table here, the server's
bounds on what a request may set (``serve.settings.option_bounds``) and the OpenAI routes'
ranges are all ``Bound``s, and every check of a number against a range is ``Bound.holds``.
Each entry point words the refusal its own way (an ``ArgsError`` here, a 422 or a 400 there).
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass
from typing import Any

from personachat.errors import PersonachatError

INPUT_FORMATS = ("auto", "transfertransfo", "chat_template")
TOKEN_TYPES = ("auto", "embed", "none")
CPU_QUANTIZE = ("none", "int8", "int4", "fp16")
EVAL_RANKINGS = ("auto", "mc", "lm", "pmi")  # evaluation.ranking.RANKINGS
OPTIMIZERS = ("AdamW", "Adafactor")
SCHEDULERS = (
    "constant_schedule",
    "constant_schedule_with_warmup",
    "linear_schedule_with_warmup",
    "cosine_schedule_with_warmup",
    "cosine_with_hard_restarts_schedule_with_warmup",
    "polynomial_decay_schedule_with_warmup",
    "reduce_on_plateau",
)
# Options that also take the string "auto" besides their type: a size probed on the GPU;
# bf16 where the CPU has it in hardware.
AUTO_OPTIONS = frozenset({"train_batch_size", "eval_batch_size", "cpu_bf16"})


class ArgsError(PersonachatError, ValueError):
    """An option name or value the user gave cannot be used."""


_SHORT = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_SHORT.maxlevel = 2
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 4
_SHORT.maxstring = _SHORT.maxother = 60
MAX_SHOWN = 120


def shown(value: Any) -> str:
    """``repr(value)`` cut short: a few items of a long list, two levels of a nested one,
    at most MAX_SHOWN characters."""
    text = _SHORT.repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


@dataclass(frozen=True)
class Bound:
    """The values a number takes: ``low`` / ``high`` (None: unbounded; excluded when
    ``open_low`` / ``open_high``), a whole number when ``integer``, None too when
    ``nullable``; ``words`` say so in an option's error, ``upper`` names what sets ``high``
    where a server's limit does ("the server's --max-temperature")."""

    words: str = ""
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    integer: bool = False
    nullable: bool = False
    upper: str | None = None

    def holds(self, value: Any) -> bool:
        """Whether ``value`` is within the range: a finite number (never a bool, which
        Python counts as an int), or None when ``nullable``."""
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if isinstance(value, float) and not (
            math.isfinite(value) and (value.is_integer() or not self.integer)
        ):
            return False  # (an int is always finite and whole, however large)
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or (value < self.high if self.open_high else value <= self.high)

    def interval(self) -> str:
        """The range as an interval, ``[0, 1)``, with what sets its upper end if anything
        does: ``[0.01, 2.0] (the upper bound is the server's --max-temperature)``."""
        low = "-inf" if self.low is None else self.low
        high = "inf" if self.high is None else self.high
        text = f"{'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"
        return text + (f" (the upper bound is {self.upper})" if self.upper else "")


def within(low: float, high: float, upper: str | None = None) -> Bound:
    """The closed range [low, high]; ``upper``: what sets ``high`` (see ``Bound``)."""
    return Bound(f"within [{low}, {high}]", low=low, high=high, upper=upper)


def _count(low: int | None, words: str, nullable: bool = False) -> Bound:
    return Bound(words, low=low, integer=True, nullable=nullable)


def _number(words: str, low: float | None = 0, **bounds: Any) -> Bound:
    return Bound(words, low=low, **bounds)


POSITIVE = "a positive integer"
AT_LEAST_0 = ">= 0 (an integer)"
BOUNDS: dict[str, Bound] = {
    "train_batch_size": _count(1, POSITIVE + " or 'auto'"),
    "eval_batch_size": _count(1, POSITIVE + " or 'auto'"),
    "gradient_accumulation_steps": _count(1, POSITIVE),
    "num_candidates": _count(1, POSITIVE),
    "personality_permutations": _count(1, POSITIVE),
    "max_length": _count(1, POSITIVE),
    "auto_batch_target": _count(1, POSITIVE),
    "plateau_patience": _count(1, POSITIVE),
    "eval_num_candidates": _count(
        1, POSITIVE + " or null (every candidate the data has)", nullable=True
    ),
    "process_count": _count(1, POSITIVE + " or null (cpu_count() - 2)", nullable=True),
    "save_total_limit": _count(1, POSITIVE + " or null (keep every checkpoint)", nullable=True),
    "max_train_examples": _count(1, POSITIVE + " or null (every dialog)", nullable=True),
    "max_eval_examples": _count(1, POSITIVE + " or null (every dialog)", nullable=True),
    "manual_seed": Bound(
        "an integer within [0, 4294967295] or null", 0, 2**32 - 1, integer=True, nullable=True
    ),
    "num_train_epochs": _count(0, AT_LEAST_0),
    "max_steps": Bound(
        "an integer: a positive step count, or -1 or 0 (off: num_train_epochs decides)",
        low=-1,
        integer=True,
    ),
    "max_history": _count(0, AT_LEAST_0),
    "max_history_tokens": _count(0, ">= 0 (an integer; 0: no token budget)"),
    "warmup_steps": _count(0, AT_LEAST_0),
    "dataloader_num_workers": _count(0, AT_LEAST_0),
    "early_stopping_patience": _count(0, AT_LEAST_0),
    "min_length": _count(0, AT_LEAST_0),
    "top_k": _count(0, ">= 0 (an integer; 0: off)"),
    "no_repeat_ngram_size": _count(0, ">= 0 (an integer; 0: off)"),
    "rerank_samples": _count(0, ">= 0 (an integer; 0 or 1: off)"),
    "card_prompt_tokens": _count(1, POSITIVE),
    "lora_r": _count(0, "an integer >= 0 (0: no LoRA)"),
    "save_steps": _count(None, "an integer (<= 0: no checkpoints by steps)"),
    "evaluate_during_training_steps": _count(None, "an integer (<= 0: no evaluation by steps)"),
    "logging_steps": _count(None, "an integer (<= 0: every step)"),
    "learning_rate": _number("a finite number >= 0"),
    "weight_decay": _number("a finite number >= 0"),
    "lm_coef": _number("a finite number >= 0"),
    "mc_coef": _number("a finite number >= 0"),
    "early_stopping_delta": _number("a finite number >= 0"),
    "polynomial_decay_schedule_lr_end": _number("a finite number >= 0"),
    "polynomial_decay_schedule_power": _number("a finite number >= 0"),
    "temperature": _number("a finite number >= 0"),
    "adam_epsilon": _number("a finite number > 0", open_low=True),
    "max_grad_norm": _number("a finite number > 0", open_low=True),
    "repetition_penalty": _number("a finite number > 0 (1: off)", open_low=True),
    "repeat_reply_penalty": _number("a finite number > 0 (1: off)", open_low=True),
    "lora_alpha": _number("a finite number > 0", open_low=True),
    "cosine_schedule_num_cycles": _number("a finite number > 0", open_low=True),
    "adafactor_clip_threshold": _number("a finite number > 0", open_low=True),
    "adafactor_decay_rate": _number("a finite number <= 0", low=None, high=0),
    "adafactor_beta1": _number("within [0, 1) or null", high=1, open_high=True, nullable=True),
    "warmup_ratio": _number("within [0, 1]", high=1),
    "top_p": _number("within [0, 1]", high=1),
    "frequency_penalty": _number("within [-2, 2]", low=-2, high=2),
    "presence_penalty": _number("within [-2, 2]", low=-2, high=2),
    "lora_dropout": _number("within [0, 1)", high=1, open_high=True),
}


def check_options(args: Any) -> None:
    """Every check of the options in ``args`` (a ``ConvAIArgs``); the first failure raises."""
    check_bounds(args)
    check_names(args)
    check_together(args)
    check_adafactor(args)


def check_bounds(args: Any) -> None:
    """Each numeric option within its range (``BOUNDS``)."""
    for name, bound in BOUNDS.items():
        value = getattr(args, name)
        if name in AUTO_OPTIONS and value == "auto":
            continue
        if not bound.holds(value):
            raise ArgsError(f"{name} must be {bound.words}, got {shown(value)}")


def check_names(args: Any) -> None:
    """Options that name one of a few choices."""
    for name, valid in (("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS)):
        if getattr(args, name) not in valid:
            raise ArgsError(
                f"{name} {shown(getattr(args, name))} is not known; choose one of "
                + ", ".join(valid)
            )
    for name, valid in (
        ("input_format", INPUT_FORMATS),
        ("token_types", TOKEN_TYPES),
        ("cpu_quantize", CPU_QUANTIZE),
        ("eval_ranking", EVAL_RANKINGS),
    ):
        if getattr(args, name) not in valid:
            raise ArgsError(
                f"{name} must be one of {list(valid)}, got {shown(getattr(args, name))}"
            )


def check_together(args: Any) -> None:
    """Options that must agree with each other."""
    if args.min_length > args.max_length:
        raise ArgsError(
            f"min_length ({args.min_length}) is larger than max_length ({args.max_length})"
        )
    if args.temperature <= 0 and args.do_sample:
        raise ArgsError(
            f"temperature must be > 0 when do_sample=True, got {args.temperature} "
            "(use do_sample=False for greedy decoding)"
        )
    if args.input_format == "chat_template" and args.token_types == "embed":
        raise ArgsError(
            "token_types 'embed' needs speaker tokens, which input_format 'chat_template' "
            "does not have; use token_types 'none' (or 'auto'), or input_format "
            "'transfertransfo'"
        )


def check_adafactor(args: Any) -> None:
    """Adafactor's options; ``adafactor_eps`` becomes a tuple of two finite numbers."""
    if (
        args.optimizer == "Adafactor"
        and args.adafactor_warmup_init
        and not args.adafactor_relative_step
    ):
        raise ArgsError(
            "adafactor_warmup_init=True needs adafactor_relative_step=True; set "
            "adafactor_warmup_init=False to use learning_rate and the scheduler"
        )
    try:  # YAML reads 1e-30 (no dot) as a string
        eps = tuple(float(value) for value in args.adafactor_eps)
    except (TypeError, ValueError, OverflowError):
        eps = ()
    if len(eps) != 2 or not all(math.isfinite(e) and e >= 0 for e in eps):
        raise ArgsError(
            "adafactor_eps must be two finite numbers >= 0 (squared-gradient and scale "
            f"epsilons), got {shown(args.adafactor_eps)}"
        )
    args.adafactor_eps = eps
