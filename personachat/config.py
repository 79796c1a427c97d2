"""Settings of a CLI run: a YAML config file, then the flags over it.

A config (``--config configs/NAME.yaml``) names the model and data files and overrides
``ConvAIArgs`` defaults under ``args:``; ``--set key=value`` and the other flags override the
config. Unknown keys are errors naming the closest valid one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from personachat.args import ArgsError, ConvAIArgs, make_args, unknown_key_message

CONFIG_KEYS = {
    "model_type",
    "model_name",
    "train_file",
    "eval_file",
    "args",
    "scratch",
    "zero_shot",
    "persona_only",
    "extra_eval_files",
    "ablation_eval",
}


def load_config(path: str | None) -> dict:
    """Read a YAML config; unknown top-level keys are errors naming the closest one."""
    if path is None:
        return {}
    file = Path(path)
    if not file.is_file():
        raise ArgsError(f"config file {path!r} does not exist (see the configs/ folder)")
    try:
        config = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ArgsError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(config, dict):
        raise ArgsError(f"{path}: a config must be a mapping of keys to values")
    for key in config:
        if key not in CONFIG_KEYS:
            raise ArgsError(f"{path}: {unknown_key_message(key, sorted(CONFIG_KEYS))}")
    return config


def parse_set(pairs: list[str]) -> dict:
    """``--set key=value`` pairs; values parsed as YAML scalars (numbers, true/false, null)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ArgsError(f"--set expects key=value, got {pair!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def resolve(options: argparse.Namespace) -> tuple[dict, ConvAIArgs]:
    """Config file + flags → (settings, args)."""
    config = load_config(options.config)
    overrides = dict(config.get("args") or {})
    overrides.update(parse_set(options.set))
    if options.output_dir:
        overrides["output_dir"] = options.output_dir
    if getattr(options, "overwrite_output_dir", None):
        overrides["overwrite_output_dir"] = True
    if getattr(options, "data_format", None):
        overrides["data_format"] = options.data_format
    if getattr(options, "skip_invalid", False):
        overrides["skip_invalid"] = True
    args = make_args(overrides)
    settings = {
        "model_type": options.model_type or config.get("model_type") or "auto",
        "model_name": options.model or config.get("model_name"),
        "train_file": getattr(options, "train_file", None) or config.get("train_file"),
        "eval_file": getattr(options, "eval_file", None) or config.get("eval_file"),
        "scratch": config.get("scratch") or {},
        # More held-out files evaluated after training ({label: path}), and whether to also
        # evaluate eval_file with every persona removed (the persona ablation).
        "extra_eval_files": extra_eval_files(config.get("extra_eval_files"), options.config),
        "ablation_eval": bool(config.get("ablation_eval", False)),
        # Evaluate persona use before fine-tuning too (printed beside the fine-tuned figures),
        # and evaluate the extra files and the ablation on their probes' replies only (no
        # losses over every candidate: what keeps a pretrained model's main job in budget).
        "zero_shot": bool(config.get("zero_shot", False)),
        "persona_only": bool(config.get("persona_only", False)),
    }
    return settings, args


def extra_eval_files(value, path: str | None) -> dict[str, str]:
    """The config's ``extra_eval_files``: a mapping of labels to data files."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ArgsError(
            f"{path}: extra_eval_files must map labels to files, e.g. "
            "{unseen: data/persona_unseen.json}"
        )
    return {str(label): file for label, file in value.items()}
