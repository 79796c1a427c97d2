"""Every numeric option has a range: non-finite and out-of-range values are refused when they
are set, in one line naming the option, the value and the valid range (issue 13)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from personachat.args import ArgsError, ConvAIArgs, make_args
from personachat.option_checks import BOUNDS

REFUSED = [
    ("learning_rate", math.inf, "a finite number >= 0"),
    ("learning_rate", math.nan, "a finite number >= 0"),
    ("learning_rate", -1e-4, "a finite number >= 0"),
    ("temperature", math.nan, "a finite number >= 0"),
    ("repetition_penalty", 0, "a finite number > 0 (1: off)"),
    ("repetition_penalty", -1.2, "a finite number > 0 (1: off)"),
    ("top_k", -5, ">= 0 (an integer; 0: off)"),
    ("top_k", 2.5, ">= 0 (an integer; 0: off)"),
    ("min_length", -1, ">= 0 (an integer)"),
    ("warmup_ratio", -0.1, "within [0, 1]"),
    ("warmup_ratio", 1.5, "within [0, 1]"),
    ("weight_decay", -0.01, "a finite number >= 0"),
    ("max_grad_norm", -1.0, "a finite number > 0"),
    ("max_grad_norm", math.inf, "a finite number > 0"),
    ("rerank_samples", -3, ">= 0 (an integer; 0 or 1: off)"),
    ("max_train_examples", -1, "a positive integer or null (every dialog)"),
    ("max_train_examples", 0, "a positive integer or null (every dialog)"),
    ("max_eval_examples", -2, "a positive integer or null (every dialog)"),
    ("adam_epsilon", 0.0, "a finite number > 0"),
    ("lm_coef", math.inf, "a finite number >= 0"),
    ("mc_coef", -1, "a finite number >= 0"),
    ("early_stopping_delta", math.nan, "a finite number >= 0"),
    ("lora_alpha", math.inf, "a finite number > 0"),
    ("lora_dropout", 1.0, "within [0, 1)"),
    ("top_p", math.nan, "within [0, 1]"),
    ("no_repeat_ngram_size", -2, ">= 0 (an integer; 0: off)"),
    ("manual_seed", -1, "an integer within [0, 4294967295] or null"),
    ("warmup_steps", -10, ">= 0 (an integer)"),
    ("cosine_schedule_num_cycles", 0, "a finite number > 0"),
    ("adafactor_decay_rate", 0.8, "a finite number <= 0"),
    ("adafactor_beta1", 1.0, "within [0, 1) or null"),
    ("adafactor_clip_threshold", math.inf, "a finite number > 0"),
    ("polynomial_decay_schedule_power", -1, "a finite number >= 0"),
    (
        "max_steps",
        -2,
        "an integer: a positive step count, or -1 or 0 (off: num_train_epochs decides)",
    ),
]


@pytest.mark.parametrize(("name", "value", "valid"), REFUSED)
def test_a_value_out_of_range_is_refused_naming_option_value_and_range(name, value, valid):
    with pytest.raises(ArgsError) as err:
        make_args({name: value})
    shown = repr(float(value)) if isinstance(ConvAIArgs().__dict__[name], float) else repr(value)
    assert str(err.value) == f"{name} must be {valid}, got {shown}"


def test_every_numeric_option_has_a_range():
    numeric = {
        name
        for name, value in vars(ConvAIArgs()).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    assert numeric <= set(BOUNDS), numeric - set(BOUNDS)
    for name, bound in BOUNDS.items():  # the defaults are within their own ranges
        assert bound.holds(getattr(ConvAIArgs(), name)) or getattr(ConvAIArgs(), name) == "auto"


def test_strings_of_non_finite_numbers_are_refused_as_well():
    with pytest.raises(ArgsError, match="learning_rate must be a finite number >= 0, got inf"):
        make_args({"learning_rate": "inf"})  # what --set learning_rate=inf may give


def test_values_at_the_edges_of_their_ranges_are_accepted():
    args = make_args(
        {
            "learning_rate": 0.0,
            "warmup_ratio": 1.0,
            "top_k": 0,
            "min_length": 0,
            "rerank_samples": 0,
            "max_train_examples": 1,
            "manual_seed": 2**32 - 1,
            "adafactor_beta1": None,
            "temperature": 0.0,
            "do_sample": False,
        }
    )
    assert args.manual_seed == 2**32 - 1 and args.max_train_examples == 1


def test_a_huge_value_is_shown_cut_short():
    with pytest.raises(ArgsError) as err:
        make_args({"learning_rate": [[1.0] * 10_000] * 10_000})
    assert len(str(err.value)) < 200


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("learning_rate=inf", "learning_rate must be a finite number >= 0, got inf"),
        ("repetition_penalty=0", "repetition_penalty must be a finite number > 0 (1: off)"),
        ("temperature=.nan", "temperature must be a finite number >= 0, got nan"),
    ],
)
def test_the_cli_refuses_such_values_in_one_line_before_loading_anything(flag, message, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "personachat.cli", "eval", "--model", str(tmp_path), "--set", flag],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("personachat eval: error: ")
    assert message in lines[0]


def test_cpu_bf16_is_true_false_or_auto():
    from personachat.model.device import autocast_dtype, cpu_has_native_bf16

    assert make_args({"cpu_bf16": "auto"}).cpu_bf16 == "auto"
    with pytest.raises(ArgsError, match="cpu_bf16 must be .* or 'auto', got 'maybe'"):
        make_args({"cpu_bf16": "maybe"})
    # "auto" is bf16 exactly where the CPU computes it in hardware (emulated bf16 is slow).
    cpu = __import__("torch").device("cpu")
    expected = __import__("torch").bfloat16 if cpu_has_native_bf16() else None
    assert autocast_dtype(cpu, fp16=False, cpu_bf16="auto") == expected
    assert autocast_dtype(cpu, fp16=False, cpu_bf16=False) is None
