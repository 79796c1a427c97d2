"""Options personachat accepts from simpletransformers but does not use.

``ConvAIArgs`` keeps simpletransformers' option names so that old ``train_args`` dicts and
saved ``model_args.json`` files load unchanged. A few of those options have no effect here;
setting one to anything but its default prints one ``UnusedOptionWarning`` per option (per
process) saying what personachat does instead, rather than silently ignoring it.
"""

from __future__ import annotations

import warnings
from typing import Any

from personachat.option_checks import shown

# Options of ConvAIArgs that personachat accepts (old dicts and saved folders load) but does
# not use, and what it does instead: a value other than the default prints one warning.
UNUSED_OPTIONS = {
    "model_class": "simpletransformers bookkeeping; the model class is always ConvAIModel",
    "tokenizer_name": "the tokenizer is always the one saved with model_name",
    "config": "the model's configuration is model_name's config.json (for a model built "
    "from scratch, the config file's scratch: section)",
    "save_eval_checkpoints": "checkpoints are saved every save_steps and after each epoch "
    "(save_model_every_epoch); the best evaluation is saved to best_model_dir",
    "evaluate_during_training_verbose": "evaluations during training go to report.md, "
    "training_curves.png and TensorBoard",
    "early_stopping_consider_epochs": "early stopping counts every evaluation during training "
    "(use_early_stopping, early_stopping_patience)",
}

# Keys simpletransformers users may still pass that are not ConvAIArgs options, with
# simpletransformers' defaults: accepted so old dicts run; another value prints one warning.
IGNORED_SIMPLETRANSFORMERS_ARGS: dict[str, Any] = {
    "custom_layer_parameters": [],
    "custom_parameter_groups": [],
    "dynamic_quantize": False,
    "encoding": None,
    "local_rank": -1,
    "loss_type": None,
    "loss_args": {},
    "max_seq_length": 128,
    "multiprocessing_chunksize": -1,
    "n_gpu": 1,
    "not_saved_args": [],
    "quantized_model": False,
    "skip_special_tokens": True,
    "thread_count": None,
    "tokenizer_type": None,
    "train_custom_parameters_only": False,
    "use_cached_eval_features": False,
    "use_hf_datasets": False,
    "use_multiprocessing_for_evaluation": True,
    "wandb_kwargs": {},
    "wandb_project": None,
    "no_sample": False,
}


class UnusedOptionWarning(UserWarning):
    """An option accepted for simpletransformers compatibility was set but has no effect."""


_WARNED: set[str] = set()  # options already warned about in this process


def warn_if_unused(key: str, value: Any, default: Any) -> None:
    """Warn once per option when an accepted-but-unused option is set to a value other than
    its ``default`` (the user may expect it to do something); any other option is let be."""
    if key not in UNUSED_OPTIONS and key not in IGNORED_SIMPLETRANSFORMERS_ARGS:
        return
    instead = UNUSED_OPTIONS.get(key, "a simpletransformers option with no counterpart here")
    if isinstance(value, list | tuple) and isinstance(default, tuple):
        value = tuple(value)  # YAML and JSON give lists where simpletransformers had tuples
    if value == default or key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(
        f"{key}={shown(value)} has no effect: {instead}. It is accepted only so simpletransformers "
        "code runs (see 'Options accepted but not used' in the README).",
        UnusedOptionWarning,
        stacklevel=4,
    )
