"""Settings of a CLI run: a YAML config file, then the flags over it.

A config (``--config configs/NAME.yaml``) names the model and data files and overrides
``ConvAIArgs`` defaults under ``args:``; ``--set key=value`` and the other flags override the
config. Unknown keys are errors naming the closest valid one.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import yaml

from personachat.args import ArgsError, ConvAIArgs, make_args, unknown_key_message
from personachat.fs import file_kind
from personachat.json_limits import MAX_NUMBER_CHARS
from personachat.option_checks import shown
from personachat.text import unicode_problem

# Each top-level key of a config: the types it takes and, for errors, the rule in words.
CONFIG_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "model_type": ((str,), "must be a model type such as auto, gpt2 or llama"),
    "model_name": ((str,), "must be a model folder or hub id, or null (built from scratch)"),
    "train_file": ((str,), "must be a data file"),
    "eval_file": ((str,), "must be a data file"),
    "args": ((dict,), "must be a mapping of options, e.g. {num_train_epochs: 2}"),
    "scratch": ((dict,), "must be a mapping of the scratch model's sizes, e.g. {n_layer: 2}"),
    "zero_shot": ((bool,), "must be true or false"),
    "persona_only": ((bool,), "must be true or false"),
    "extra_eval_files": ((dict,), "must map labels to files, e.g. {unseen: data/unseen.json}"),
    "ablation_eval": ((bool,), "must be true or false"),
    "train_mix": (
        (dict,),
        "must map data files to how many dialogs to draw from each (null: all), e.g. "
        "{data/persona_train.json: 200, data/synthetic-persona-chat/train.csv: 120}",
    ),
    "conversation_eval": (
        (dict,),
        "must be a mapping {file: a dialog file, dialogs: how many, candidates: how many}",
    ),
}
# A config is a page of settings: larger files, or documents that aliases expand to more
# values than this, are refused before they are built (a "billion laughs" file of a few
# lines would otherwise expand to gigabytes wherever it is copied, compared or printed).
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 10_000
INT_TAG, FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"


def load_config(path: str | None) -> dict:
    """Read a YAML config: a regular file of at most MAX_CONFIG_BYTES, aliases bounded, each
    top-level key known (else an error naming the closest one) and of its type."""
    if path is None:
        return {}
    config = load_yaml(read_config_text(path), path)
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ArgsError(f"{path}: a config must be a mapping of keys to values")
    check_config_keys(config, path)
    return config


def read_config_text(path: str) -> str:
    """The text of the config file ``path``, refused unless it is a regular UTF-8 file of at
    most MAX_CONFIG_BYTES (a pipe would block the read, a huge file is the wrong file)."""
    file = Path(path)
    kind = file_kind(file)
    if kind is not None:
        raise ArgsError(f"config file {path!r} is {kind}, not a regular file")
    if not file.is_file():
        raise ArgsError(f"config file {path!r} does not exist (see the configs/ folder)")
    if file.stat().st_size > MAX_CONFIG_BYTES:
        raise ArgsError(
            f"config file {path!r} is {file.stat().st_size / 2**20:.0f} MB; a config is a page "
            "of settings (this looks like the wrong file)"
        )
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ArgsError(f"{path}: cannot be read as UTF-8 text ({err})") from err


def check_config_keys(config: dict, path: str) -> None:
    """Each top-level key of ``config`` known (else the closest one is named) and of its
    type (null: the key's default)."""
    for key, value in config.items():
        if key not in CONFIG_KEYS:
            raise ArgsError(f"{path}: {unknown_key_message(str(key), sorted(CONFIG_KEYS))}")
        types, rule = CONFIG_KEYS[key]
        if value is not None and not isinstance(value, types):
            raise ArgsError(f"{path}: {key} {rule}, got {shown(value)}")


def load_yaml(text: str, where: str) -> object:
    """A YAML document as Python values (YAML's safe subset), refused when aliases expand it
    past MAX_CONFIG_VALUES values, when it refers to itself, and when a string in it is not
    valid Unicode; checked on the document's nodes, before any value is built."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}, set(), where) > MAX_CONFIG_VALUES:
            raise ArgsError(
                f"{where}: the YAML holds more than {MAX_CONFIG_VALUES} values once its "
                "aliases (*name) are expanded; write the settings out, with fewer aliases"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ArgsError(f"{where}: not valid YAML: {_one_line(err)}") from err
    except RecursionError:
        raise ArgsError(f"{where}: the YAML is nested too deeply to be settings") from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict, open_nodes: set, where: str) -> int:
    """How many values ``node`` stands for with every alias expanded (stops counting past
    MAX_CONFIG_VALUES); an alias inside its own anchor is an ArgsError."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise ArgsError(f"{where}: the YAML refers to itself (an alias inside its own anchor)")
    if isinstance(node, yaml.ScalarNode):
        problem = unicode_problem(node.value) or number_problem(node)
        if problem:
            raise ArgsError(f"{where}: line {node.start_mark.line + 1}: {problem}")
        return 1
    open_nodes.add(id(node))
    children = (
        node.value
        if isinstance(node, yaml.SequenceNode)
        else [part for pair in node.value for part in pair]
    )
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, open_nodes, where)
        if total > MAX_CONFIG_VALUES:
            break
    open_nodes.discard(id(node))
    sizes[id(node)] = total
    return total


def number_problem(node: yaml.ScalarNode) -> str | None:
    """Why a YAML number cannot be a setting: more than MAX_NUMBER_CHARS characters (Python
    refuses to convert 4,300 digits, with a traceback), or too large for a float."""
    if node.tag not in (INT_TAG, FLOAT_TAG):
        return None
    if len(node.value) > MAX_NUMBER_CHARS:
        return f"a number of {len(node.value):,} characters (at most {MAX_NUMBER_CHARS})"
    if node.tag == FLOAT_TAG and "inf" not in node.value.lower():
        value = yaml.safe_load(node.value)
        if isinstance(value, float) and math.isinf(value):
            return f"the number {node.value} is too large for a float"
    return None


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def parse_set(pairs: list[str]) -> dict:
    """``--set key=value`` pairs; values parsed as YAML scalars (numbers, true/false, null)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ArgsError(f"--set expects key=value, got {shown(pair)}")
        overrides[key.strip()] = load_yaml(value, f"--set {key.strip()}")
    return overrides


def resolve(options: argparse.Namespace) -> tuple[dict, ConvAIArgs]:
    """Config file + flags → (settings, args)."""
    config = load_config(options.config)
    overrides = dict(config.get("args") or {})
    try:
        make_args(overrides)
    except ArgsError as err:  # say where the value came from
        raise ArgsError(f"{options.config}: args: {err}") from err
    overrides.update(parse_set(options.set))
    if options.output_dir:
        overrides["output_dir"] = options.output_dir
    if getattr(options, "overwrite_output_dir", None):
        overrides["overwrite_output_dir"] = True
    if getattr(options, "data_format", None):
        overrides["data_format"] = options.data_format
    if getattr(options, "skip_invalid", False):
        overrides["skip_invalid"] = True
    args = make_args(overrides)  # checked now, before any model or data is read
    settings = {
        "overrides": overrides,
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
        # Training on a mix of files ({file: dialogs drawn, null: all}) instead of train_file,
        # and the real conversations the main job reports the ConvAI2 figures on.
        "train_mix": train_mix(config.get("train_mix"), options.config),
        "conversation_eval": conversation_eval(config.get("conversation_eval"), options.config),
    }
    return settings, args


def args_for_model(model_name: str, overrides: dict) -> ConvAIArgs:
    """The options a saved model runs with: its ``model_args.json`` (as the Python API reads
    it), then the config's ``args:`` and the flags (``overrides``) over it. Where this run
    writes and caches (``RUN_OPTIONS``) is never taken from the model's file: it names
    folders of the run that trained it, perhaps on another machine."""
    args = ConvAIArgs()
    if Path(model_name).is_dir():
        args.load(model_name, exclude=RUN_OPTIONS)
    return args.update_from_dict(overrides)


RUN_OPTIONS = frozenset(
    {"output_dir", "best_model_dir", "cache_dir", "tensorboard_dir", "overwrite_output_dir"}
)


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


def train_mix(value, path: str | None) -> dict[str, int | None]:
    """The config's ``train_mix``: data files and how many dialogs to draw from each."""
    if value is None:
        return {}
    for file, count in value.items():
        if not isinstance(file, str) or not (
            count is None or (isinstance(count, int) and not isinstance(count, bool) and count > 0)
        ):
            raise ArgsError(
                f"{path}: train_mix: {file!r}: {shown(count)} is not a number of dialogs; map "
                "each data file to a positive number of dialogs to draw, or null for all"
            )
    return dict(value)


CONVERSATION_EVAL_KEYS = {"file": str, "dialogs": int, "candidates": int}


def conversation_eval(value, path: str | None) -> dict:
    """The config's ``conversation_eval``: a file of real conversations (any format; the
    Synthetic-Persona-Chat CSV), how many of its dialogs to evaluate and among how many
    candidates to rank the gold reply (distractors drawn from its other dialogs)."""
    if value is None:
        return {}
    for key, item in value.items():
        if key not in CONVERSATION_EVAL_KEYS:
            raise ArgsError(
                f"{path}: conversation_eval: "
                f"{unknown_key_message(str(key), sorted(CONVERSATION_EVAL_KEYS))}"
            )
        kind = CONVERSATION_EVAL_KEYS[key]
        if not isinstance(item, kind) or isinstance(item, bool) or (kind is int and item < 1):
            raise ArgsError(
                f"{path}: conversation_eval: {key} must be "
                + ("a data file" if kind is str else "a positive integer")
                + f", got {shown(item)}"
            )
    if "file" not in value:
        raise ArgsError(f"{path}: conversation_eval needs a file, e.g. {{file: conversations.csv}}")
    return {"dialogs": 10, "candidates": 20, **value}
