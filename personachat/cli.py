"""``personachat train | eval | interact | serve | telegram``: the command line over ConvAIModel.

A YAML config (``--config configs/NAME.yaml``) names the model and data files and overrides
``ConvAIArgs`` defaults under ``args:``; flags override the config (``personachat.config``).
With ``model_name: null``
(the offline quick config) ``train`` first builds a small GPT-2-architecture model from the
``scratch:`` section and a tokenizer trained on the training file, then fine-tunes it; ``eval``
and ``interact`` then default to the trained model in ``output_dir`` — with any config: its
``model_name`` is where training starts, and once ``output_dir`` holds the trained model,
``eval`` / ``interact`` / ``serve`` load that one (``--model`` names another).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

import torch

from personachat import __version__
from personachat.args import ArgsError, ConvAIArgs
from personachat.cli_reports import (
    conversation_figures,
    demo_conversation,
    print_results,
    report_conversations,
    report_persona_use,
    zero_shot,
)
from personachat.config import args_for_model, resolve
from personachat.data.cards import read_card
from personachat.data.commands import DATA_COMMANDS, add_data_commands, run_data_command
from personachat.data.readers import FORMATS
from personachat.errors import PersonachatError
from personachat.evaluation.ranking import RANKINGS
from personachat.fs import check_writable_folder
from personachat.model.export import add_export_command, run_export_command
from personachat.model.loading import resolve_device
from personachat.model.scratch import cached_scratch_checkpoint
from personachat.repl import terminal_loading
from personachat.serve.command import add_serve_arguments, run_serve
from personachat.telegram.command import add_telegram_arguments, check_telegram, run_telegram
from personachat.train import distributed
from personachat.train.errors import CheckpointWriteError, TrainingInterrupted
from personachat.train.reporting import append_evaluation

COMMANDS = {
    "train": "fine-tune a model (and evaluate it if an eval file is set)",
    "eval": "evaluate a trained model",
    "interact": "chat with a model in the terminal",
    "serve": "chat with a model over HTTP and in the browser",
    "telegram": "chat with a model in Telegram (token in TELEGRAM_BOT_TOKEN)",
}


def build_parser() -> argparse.ArgumentParser:
    """Every command and flag: the model commands, then ``convert`` and ``validate``."""
    parser = argparse.ArgumentParser(prog="personachat", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        add_model_arguments(p)
        if name == "train":
            add_train_arguments(p)
        if name in ("train", "eval"):
            add_data_arguments(p)
        if name == "eval":
            add_eval_arguments(p)
        if name == "interact":
            persona = p.add_mutually_exclusive_group()
            persona.add_argument(
                "--persona",
                action="append",
                default=[],
                metavar="SENTENCE",
                help="a persona sentence (repeat); default: a random persona",
            )
            persona.add_argument(
                "--persona-card",
                metavar="FILE",
                help="a character card (Character Card V2 .json, or .png with the card "
                "inside): its persona, and its first message as the bot's opening line",
            )
            p.add_argument(
                "--threads",
                type=int,
                help="CPU threads for replies (default: the cores less one, at most 4; more "
                "threads than free cores make each reply many times slower)",
            )
        if name == "serve":
            add_serve_arguments(p)
        if name == "telegram":
            add_telegram_arguments(p)
    add_data_commands(sub)
    add_export_command(sub)
    return parser


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """What every model command takes: config, model, output folder, device, options."""
    p.add_argument("--config", help="YAML config, e.g. configs/quick.yaml")
    p.add_argument("--model", help="model folder or hub id (overrides model_name)")
    p.add_argument(
        "--model-type",
        help="gpt2, gpt (OpenAI GPT), a causal-LM type such as llama or qwen2, or auto "
        "(default: read from the checkpoint's config.json)",
    )
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


def add_train_arguments(p: argparse.ArgumentParser) -> None:
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


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The evaluation file and how data files are read (train and eval)."""
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


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """``eval``'s flags: what to measure beyond the losses, and on how much data. Results go
    to --output-dir when given, else OUTPUT_DIR/eval/EVAL_FILE_NAME/."""
    p.add_argument(
        "--generation-f1",
        action="store_true",
        help="also report word F1 of greedy replies (slower)",
    )
    p.add_argument(
        "--repetition",
        action="store_true",
        help="also report how often self-play replies repeat an earlier reply and the "
        "previous one (repetition_rate, repeat_previous_rate)",
    )
    p.add_argument(
        "--ranking",
        choices=list(RANKINGS),
        help="how hits@1 ranks the candidates: the multiple-choice head (mc), the language "
        "model's likelihood (lm), the same less 0.75 times each reply's likelihood without persona "
        "and history (pmi: generic replies stop winning), or auto: the head if the model was "
        "trained with one, else lm",
    )
    p.add_argument(
        "--candidates",
        type=int,
        metavar="N",
        help="rank the gold reply among N candidates (eval_num_candidates; default: every "
        "candidate the file has, or 20 for a file of conversations such as a "
        "Synthetic-Persona-Chat CSV, the others sampled from its other dialogs)",
    )
    p.add_argument(
        "--max-eval-examples",
        type=int,
        metavar="N",
        help="evaluate the first N dialogs of the file only (max_eval_examples)",
    )
    p.add_argument(
        "--ablate-persona",
        action="store_true",
        help="evaluate with every persona removed from the input (does the model use it?)",
    )


def scratch_model(settings: dict, args: ConvAIArgs) -> str:
    """The small model the quick config starts from (built once, cached by config and data)."""
    if not settings["train_file"]:
        raise ArgsError(
            "model_name is null, so a model is built from scratch; that needs a "
            "train_file to train its tokenizer on (--train-file)"
        )
    check_writable_folder(args.cache_dir, "cache_dir", keep=True)  # built there
    return str(cached_scratch_checkpoint(settings["train_file"], settings["scratch"], args))


def mix_file(settings: dict, args: ConvAIArgs) -> str | None:
    """The file training reads: ``train_file``, or with ``train_mix`` the mix drawn from its
    files (``data.mix``), written once under ``cache_dir/mixes/`` and named by what it holds
    (the sources, their sizes and times, the seed)."""
    sources = settings["train_mix"]
    if not sources:
        return settings["train_file"]
    from personachat.data.mix import write_mix

    seed = args.manual_seed or 0
    stamp = [(f, n, *file_stamp(f)) for f, n in sorted(sources.items())]
    key = hashlib.sha256(json.dumps([stamp, seed]).encode()).hexdigest()[:16]
    path = Path(args.cache_dir) / "mixes" / f"mix-{key}.json"
    if not path.is_file():
        check_writable_folder(args.cache_dir, "cache_dir", keep=True)
        dialogs = write_mix(path, sources, seed)
        print(f"Training mix: {len(dialogs)} dialogs from {len(sources)} files -> {path}")
    return str(path)


def file_stamp(path: str) -> tuple[int, int]:
    """Size and modification time of ``path`` ((0, 0) when missing: the mix reports it)."""
    try:
        stat = Path(path).stat()
    except OSError:
        return 0, 0
    return stat.st_size, stat.st_mtime_ns


def run(options: argparse.Namespace) -> int:
    """Run one command; returns the exit code."""
    if options.command in DATA_COMMANDS:
        return run_data_command(options)
    if options.command == "export":
        return run_export_command(options)
    settings, args = resolve(options)
    device = resolve_device("auto" if options.device == "auto" else options.device == "cuda")
    if options.command == "train":
        return train_command(options, settings, args, device)
    from personachat.conv_ai_model import ConvAIModel

    if options.command == "telegram":
        check_telegram(options)  # the extra and the token, before the model loads
    # interact: a broken card is refused before the model loads (a minute on a large model).
    interact_card = options.command == "interact" and options.persona_card
    card = read_card(options.persona_card) if interact_card else None
    # eval / interact / serve: the model the config trains, with the options it was saved
    # with under the config's and the flags'.
    model_name = model_to_load(
        getattr(options, "model", None), settings["model_name"], args, options.config
    )
    args = args_for_model(model_name, {**settings["overrides"], **eval_overrides(options)})
    use_cuda = device.type == "cuda"
    chat = options.command == "interact"
    with terminal_loading(model_name, options.threads) if chat else contextlib.nullcontext():
        model = ConvAIModel(settings["model_type"], model_name, args=args, use_cuda=use_cuda)
    if options.command == "eval":
        results = model.eval_model(
            settings["eval_file"],
            output_dir=options.output_dir,
            verbose=False,
            generation_f1=options.generation_f1,
            ablate_persona=options.ablate_persona,
            repetition_rate=options.repetition,
        )
        print_results(results, settings["eval_file"])
    elif options.command == "serve":
        return run_serve(model, options, str(model_name))
    elif options.command == "telegram":
        return run_telegram(model, options, str(model_name))
    else:
        if card is not None:  # read again within the model's card_prompt_tokens
            model.load_persona_card(options.persona_card)
        model.interact(personality=options.persona or None)
    return 0


def eval_overrides(options: argparse.Namespace) -> dict:
    """The options ``eval``'s flags set (none for the other commands)."""
    values = {
        "eval_ranking": getattr(options, "ranking", None),
        "eval_num_candidates": getattr(options, "candidates", None),
        "max_eval_examples": getattr(options, "max_eval_examples", None),
    }
    return {key: value for key, value in values.items() if value is not None}


def model_to_load(
    flag: str | None, config_model: str | None, args: ConvAIArgs, config: str | None = None
) -> str:
    """The model ``eval`` / ``interact`` / ``serve`` / ``telegram`` load: ``--model`` when
    given; else the model the config trains, in ``output_dir``, once it holds one (the
    config's ``model_name`` is where training starts, not what a user wants to talk to after
    ``train``); before any training, the config's ``model_name`` as it is, saying so."""
    if flag:
        return flag
    trained = Path(args.output_dir)
    if (trained / "config.json").is_file():
        return str(trained)
    if not config_model:  # the config builds its model from scratch: nothing to load yet
        command = f"personachat train --config {config}" if config else "personachat train"
        raise ArgsError(
            f"no trained model in {trained} yet: train it first with `{command}` (or pass "
            "--model FOLDER)"
        )
    print(
        f"No trained model in {trained} yet (run `personachat train` with this config): "
        f"using {config_model} as it is.",
        file=sys.stderr,
    )
    return config_model


def train_command(
    options: argparse.Namespace, settings: dict, args: ConvAIArgs, device: torch.device
) -> int:
    """``personachat train``: fine-tune, then evaluate, report persona use and show a chat.

    Under torchrun: join the process group before the model goes to "cuda" (so each process
    lands on its own GPU), build the scratch model on rank 0 only (the others then find it
    cached), and evaluate and print on rank 0 only."""
    from personachat.conv_ai_model import ConvAIModel

    ctx = distributed.setup(device.type)
    try:
        model_name = settings["model_name"]
        if model_name is None and ctx.is_main:
            model_name = scratch_model(settings, args)
        distributed.barrier(ctx)
        model_name = model_name or scratch_model(settings, args)
        use_cuda = device.type == "cuda"
        model = ConvAIModel(settings["model_type"], model_name, args=args, use_cuda=use_cuda)
        before = zero_shot(model, settings) if ctx.is_main else None
        talk_before = None
        if ctx.is_main and settings["zero_shot"]:
            talk_before = conversation_figures(model, settings)
        train_file = mix_file(settings, args) if ctx.is_main else None
        distributed.barrier(ctx)
        train_file = train_file or mix_file(settings, args)
        started = time.perf_counter()
        # The eval file is evaluated after training in any case; during training only with
        # evaluate_during_training (then early stopping and the best model use it).
        during = settings["eval_file"] if args.evaluate_during_training else None
        global_step, _ = model.train_model(
            train_file,
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
        report_persona_use(model, settings, results, before)
    talk = conversation_figures(model, settings, str(Path(args.output_dir) / "eval_conversations"))
    report_conversations(settings, talk, talk_before)
    if settings["eval_file"]:
        demo_conversation(model, settings["eval_file"])
    return 0


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    quiet_transformers()
    with contextlib.suppress(AttributeError, ValueError):  # text from user files always prints
        sys.stdout.reconfigure(errors="backslashreplace")
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
    except CheckpointWriteError as err:  # one line, with the command that goes on
        again = f" Resume with: {resume_command(argv)}" if err.last else ""
        print(f"personachat train: error: {err}{again}", file=sys.stderr)
        return 2
    except PersonachatError as err:  # the user's to fix: one line says what and how
        print(f"personachat {options.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return 130
    except Exception as err:
        line = filesystem_error_line(err)
        if line is not None:  # the filesystem's answer about a path the user gave
            print(f"personachat {options.command}: error: {line}", file=sys.stderr)
            return 2
        traceback.print_exc()  # anything else is a bug in personachat: show where it happened
        print(bug_report_line(options.command), file=sys.stderr)
        return 1


# What to do about the filesystem errors a user can fix, by errno.
FILESYSTEM_HINTS = {
    errno.ENOSPC: "free some disk space, or write elsewhere",
    errno.EDQUOT: "free some space within your quota, or write elsewhere",
    errno.EACCES: "fix its permissions, or use another path",
    errno.EPERM: "fix its permissions, or use another path",
    errno.EROFS: "that filesystem is read-only: use another path",
    errno.ENOTDIR: "a part of that path is a file, not a folder: use another path",
    errno.EISDIR: "that is a folder: name a file",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "use a shorter path",
}


def filesystem_error_line(err: BaseException) -> str | None:
    """One line for an OSError about a path the user can fix (a full disk, permissions, a
    file where a folder should be), naming the path; None for any other error."""
    if not isinstance(err, OSError) or err.errno not in FILESYSTEM_HINTS or not err.filename:
        return None
    return f"{err.filename}: {err.strerror or err} — {FILESYSTEM_HINTS[err.errno]}"


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
