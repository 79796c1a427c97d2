"""``personachat train | eval | interact | serve``: the command line over ConvAIModel.

A YAML config (``--config configs/NAME.yaml``) names the model and data files and overrides
``ConvAIArgs`` defaults under ``args:``; flags override the config. With ``model_name: null``
(the offline quick config) ``train`` first builds a small GPT-2-architecture model from the
``scratch:`` section and a tokenizer trained on the training file, then fine-tunes it; ``eval``
and ``interact`` then default to the trained model in ``output_dir``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import time
import traceback
from dataclasses import asdict, fields
from pathlib import Path

import yaml

from personachat import __version__
from personachat.args import ArgsError, ConvAIArgs, make_args, unknown_key_message
from personachat.data.commands import DATA_COMMANDS, add_data_commands, run_data_command
from personachat.data.readers import FORMATS, read_dialogs
from personachat.errors import PersonachatError
from personachat.model.loading import resolve_device
from personachat.model.scratch import ScratchConfig, build_scratch_checkpoint, dialog_texts
from personachat.serve.command import add_serve_arguments, run_serve
from personachat.train import distributed
from personachat.train.reporting import append_evaluation
from personachat.train.setup import TrainingInterrupted

CONFIG_KEYS = {
    "model_type",
    "model_name",
    "train_file",
    "eval_file",
    "args",
    "scratch",
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="personachat", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [
        ("train", "fine-tune a model (and evaluate it if an eval file is set)"),
        ("eval", "evaluate a trained model"),
        ("interact", "chat with a model in the terminal"),
        ("serve", "chat with a model over HTTP and in the browser"),
    ]:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", help="YAML config, e.g. configs/quick.yaml")
        p.add_argument("--model", help="model folder or hub id (overrides model_name)")
        p.add_argument("--model-type", choices=["gpt2", "gpt"], help="default: gpt2")
        p.add_argument("--output-dir", help="where results go (overrides args.output_dir)")
        p.add_argument(
            "--device",
            default="auto",
            choices=["auto", "cpu", "cuda"],
            help="auto: CUDA when available",
        )
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override any ConvAIArgs option, e.g. --set num_train_epochs=2",
        )
        if name == "train":
            p.add_argument("--train-file", help="dialog file, any --format (default: from config)")
            p.add_argument("--overwrite-output-dir", action="store_true", default=None)
            p.add_argument(
                "--resume",
                nargs="?",
                const=True,
                default=None,
                metavar="PATH",
                help="go on from the newest checkpoint in the output folder, or "
                "from the checkpoint folder PATH",
            )
        if name in ("train", "eval"):
            p.add_argument("--eval-file", help="dialog file to evaluate on (any --format)")
            p.add_argument(
                "--format",
                dest="data_format",
                choices=FORMATS,
                help="format of the data files (default: detected)",
            )
            p.add_argument(
                "--skip-invalid",
                action="store_true",
                help="leave out invalid dialogs of the data files (each one printed, with the "
                "counts kept and dropped) instead of refusing the file",
            )
        if name == "eval":
            p.add_argument(
                "--generation-f1",
                action="store_true",
                help="also report word F1 of greedy replies (slower)",
            )
            p.add_argument(
                "--ablate-persona",
                action="store_true",
                help="evaluate with every persona removed from the input (does the model use it?)",
            )
        if name == "interact":
            p.add_argument(
                "--persona",
                action="append",
                default=[],
                metavar="SENTENCE",
                help="a persona sentence (repeat); default: a random persona",
            )
        if name == "serve":
            add_serve_arguments(p)
    add_data_commands(sub)
    return parser


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
        "model_type": options.model_type or config.get("model_type") or "gpt2",
        "model_name": options.model or config.get("model_name"),
        "train_file": getattr(options, "train_file", None) or config.get("train_file"),
        "eval_file": getattr(options, "eval_file", None) or config.get("eval_file"),
        "scratch": config.get("scratch") or {},
        # More held-out files evaluated after training ({label: path}), and whether to also
        # evaluate eval_file with every persona removed (the persona ablation).
        "extra_eval_files": extra_eval_files(config.get("extra_eval_files"), options.config),
        "ablation_eval": bool(config.get("ablation_eval", False)),
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


def scratch_model(settings: dict, args: ConvAIArgs) -> str:
    """Build (once, cached by config and data) the small model the quick config starts from."""
    if not settings["train_file"]:
        raise ArgsError(
            "model_name is null, so a model is built from scratch; that needs a "
            "train_file to train its tokenizer on (--train-file)"
        )
    known = {f.name for f in fields(ScratchConfig)}
    for key in settings["scratch"]:
        if key not in known:
            raise ArgsError(f"scratch: {unknown_key_message(key, sorted(known))}")
    config = ScratchConfig(**settings["scratch"])
    data = (
        Path(settings["train_file"]).read_bytes() if Path(settings["train_file"]).is_file() else b""
    )
    key = hashlib.sha256(json.dumps(asdict(config)).encode() + data).hexdigest()[:16]
    folder = Path(args.cache_dir) / f"scratch-gpt2-{key}"
    if not (folder / "config.json").is_file():
        dialogs = read_dialogs(  # invalid dialogs skipped are reported when training reads
            settings["train_file"],
            format=args.data_format,
            skip_invalid=args.skip_invalid,
            allow_empty_personality=args.allow_empty_personality,
            report=lambda _: None,
        )
        print(
            f"Building a small GPT-2 ({config.n_layer} layers, {config.n_embd} wide, "
            f"vocabulary {config.vocab_size}) with a tokenizer trained on "
            f"{settings['train_file']} → {folder}"
        )
        if config.pretrain_steps:
            print(
                f"Pretraining it as a language model on the training dialogs for "
                f"{config.pretrain_steps} steps (see personachat/pretrain.py)"
            )
        build_scratch_checkpoint(folder, dialog_texts(dialogs), config, dialogs=dialogs)
    return str(folder)


def demo_conversation(model, eval_file: str, turns: int = 4) -> None:
    """Print a short chat: the first eval dialog's persona and its partner's messages."""
    dialog = read_dialogs(  # skipped dialogs were reported by the evaluation
        eval_file,
        format=model.args.data_format,
        split="valid",
        skip_invalid=model.args.skip_invalid,
        allow_empty_personality=model.args.allow_empty_personality,
        report=lambda _: None,
    )[0]
    print("\nPersona:", " ".join(dialog["personality"]))
    history: list[str] = []
    for utterance in dialog["utterances"][:turns]:
        message = utterance["history"][-1]
        reply, history = model.interact_single(message, history, dialog["personality"])
        print(f"  user: {message}\n  bot:  {reply}")


def run(options: argparse.Namespace) -> int:
    if options.command in DATA_COMMANDS:
        return run_data_command(options)
    from personachat.conv_ai_model import ConvAIModel

    settings, args = resolve(options)
    device = resolve_device("auto" if options.device == "auto" else options.device == "cuda")
    use_cuda = device.type == "cuda"
    model_name = settings["model_name"]

    if options.command == "train":
        # Under torchrun: join the process group before the model goes to "cuda" (so each
        # process lands on its own GPU), build the scratch model on rank 0 only (the others
        # then find it cached), and evaluate and print on rank 0 only.
        ctx = distributed.setup(device.type)
        try:
            if model_name is None and ctx.is_main:
                model_name = scratch_model(settings, args)
            distributed.barrier(ctx)
            if model_name is None:
                model_name = scratch_model(settings, args)
            model = ConvAIModel(settings["model_type"], model_name, args=args, use_cuda=use_cuda)
            started = time.perf_counter()
            # The eval file is evaluated after training in any case; during training only
            # with evaluate_during_training (then early stopping and the best model use it).
            during = settings["eval_file"] if args.evaluate_during_training else None
            global_step, _ = model.train_model(
                settings["train_file"],
                eval_file=during,
                verbose=ctx.is_main,
                resume_from_checkpoint=options.resume,
                samples_file=settings["eval_file"],
            )
        finally:
            distributed.teardown(ctx)
        if not ctx.is_main:
            return 0
        print(
            f"Trained {global_step} steps in {time.perf_counter() - started:.0f} s on "
            f"{device}; model saved to {args.output_dir}"
        )
        if settings["eval_file"]:
            results = model.eval_model(settings["eval_file"], verbose=False)
            print_results(results)
            append_evaluation(args.output_dir, settings["eval_file"], results)
            report_persona_use(model, settings, results)
            demo_conversation(model, settings["eval_file"])
        return 0

    # eval / interact: the trained model in output_dir unless a model is named.
    if model_name is None:
        model_name = args.output_dir
    model = ConvAIModel(settings["model_type"], model_name, args=args, use_cuda=use_cuda)
    if options.command == "eval":
        results = model.eval_model(
            settings["eval_file"],
            verbose=False,
            generation_f1=options.generation_f1,
            ablate_persona=options.ablate_persona,
        )
        print_results(results)
    elif options.command == "serve":
        return run_serve(model, options, str(model_name))
    else:
        model.interact(personality=options.persona or None)
    return 0


def report_persona_use(model, settings: dict, results: dict) -> None:
    """Evaluate the extra held-out files and the persona ablation, then print the persona
    metrics of every evaluation side by side (written to OUTPUT_DIR/eval_<label>/ too)."""
    rows = {f"{settings['eval_file']}": results}
    for label, path in settings["extra_eval_files"].items():
        rows[f"{path} ({label})"] = model.eval_model(
            path,
            output_dir=str(Path(model.args.output_dir) / f"eval_{label}"),
            verbose=False,
            silent=True,
        )
    if settings["ablation_eval"]:
        rows[f"{settings['eval_file']} with the persona removed"] = model.eval_model(
            settings["eval_file"],
            output_dir=str(Path(model.args.output_dir) / "eval_ablation"),
            verbose=False,
            silent=True,
            ablate_persona=True,
        )
    columns = [
        "persona_accuracy",
        "persona_contradiction_rate",
        "persona_hits@1",
        "hits@1",
        "language_model_loss",
    ]
    if len(rows) == 1 and "persona_accuracy" not in results:
        return
    width = {c: max(20, len(c) + 2) for c in columns}
    candidates = results.get("eval_num_candidates", model.args.num_candidates)
    print(f"\nPersona use (hits@1 among {candidates} candidates, chance {1 / candidates:.2f}):")
    print(f"  {'evaluation':50s}" + "".join(f"{c:>{width[c]}s}" for c in columns))
    for name, values in rows.items():
        cells = "".join(
            f"{values[c]:>{width[c]}.3f}"
            if isinstance(values.get(c), float)
            else "-".rjust(width[c])
            for c in columns
        )
        print(f"  {name[-50:]:50s}{cells}")


def print_results(results: dict) -> None:
    print("Evaluation:")
    for key, value in results.items():
        print(f"  {key:22s} {value:.4f}" if isinstance(value, float) else f"  {key:22s} {value}")


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    quiet_transformers()
    try:
        return run(options)
    except TrainingInterrupted as err:
        where = (
            f"checkpoint saved to {err.checkpoint}" if err.checkpoint else "nothing saved (no_save)"
        )
        print(
            f"personachat train: stopped by {err.signal_name} after step {err.step}; "
            f"{where}.\nResume with: {resume_command(argv)}",
            file=sys.stderr,
        )
        return 130 if err.signal_name == "SIGINT" else 143
    except PersonachatError as err:  # the user's to fix: one line says what and how
        print(f"personachat {options.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return 130
    except Exception:  # anything else is a bug in personachat: show where it happened
        traceback.print_exc()
        print(bug_report_line(options.command), file=sys.stderr)
        return 1


def bug_report_line(command: str) -> str:
    """What the CLI prints under the traceback of an error that is not the user's."""
    return (
        f"personachat {command}: this is a bug in personachat {__version__}, not a problem "
        "with your data or options; please report it with the traceback above and the "
        "command you ran."
    )


def resume_command(argv: list[str] | None, env: dict[str, str] | None = None) -> str:
    """The command line that was run, with ``--resume`` (and no earlier resume path).

    Under torchrun (``WORLD_SIZE`` > 1 in ``env``, default ``os.environ``) it is the torchrun
    command with the same number of processes (and nodes): resuming in one process would
    train on a different global batch."""
    words = list(sys.argv[1:] if argv is None else argv)
    kept = []
    skip_value = False
    for word in words:
        if skip_value:
            skip_value = False
            if not word.startswith("-"):
                continue
        if word == "--resume":
            skip_value = True
            continue
        if word.startswith("--resume="):
            continue
        kept.append(word)
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return shlex.join(["personachat", *kept, "--resume"])
    per_node = int(env.get("LOCAL_WORLD_SIZE", world))
    nodes = ["--nnodes", str(world // per_node)] if world > per_node else []
    command = shlex.join(
        [
            "torchrun",
            *nodes,
            "--nproc_per_node",
            str(per_node),
            "-m",
            "personachat.cli",
            *kept,
            "--resume",
        ]
    )
    return command + (" (on every node, with your rendezvous options)" if nodes else "")


def quiet_transformers() -> None:
    """Hide transformers' weight-loading progress bars and info chatter in the CLI."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
