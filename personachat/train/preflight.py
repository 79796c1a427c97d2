"""Before any data is read or step taken: the checks that fail fast.

A checkpoint named for resuming that does not exist, a non-empty output_dir, a folder that
cannot be written, a disk that cannot hold one checkpoint, evaluation during training
without evaluation data: each is found here, in a second, with a message saying what to do.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from personachat.args import ArgsError, ConvAIArgs
from personachat.fs import UnwritableFolderError, check_writable_folder
from personachat.train import checkpoints, distributed
from personachat.train.errors import TrainingError
from personachat.train.lock import lock_output_dir


def check_before_training(
    output_dir: str | Path, resume_from_checkpoint, model, args: ConvAIArgs, eval_file
) -> Path | None:
    """The checks that fail fast, before any data is read; returns the checkpoint that
    ``resume_from_checkpoint`` means (None: a fresh run, into an empty or overwritten
    output_dir)."""
    try:
        resume = checkpoints.resolve_resume(resume_from_checkpoint, output_dir, warn)
    except checkpoints.CheckpointError as err:
        raise TrainingError(str(err)) from err
    if not args.no_save and distributed.is_main_process():
        check_output_writable(output_dir)
        lock_output_dir(output_dir)  # before anything looks at what is in the folder
    if resume is None:
        check_output_dir(output_dir, args.overwrite_output_dir)
    preflight(output_dir, model, args)
    if args.evaluate_during_training and eval_file is None:
        raise ArgsError(
            "evaluate_during_training is enabled but eval_file is not given: pass "
            "eval_file=... (--eval-file), or set evaluate_during_training=False"
        )
    return resume


def warn(line: str) -> None:
    """A warning the user must see even with silent=True (a damaged checkpoint skipped), from
    the main process only."""
    if distributed.is_main_process():
        print(line, file=sys.stderr)


def check_output_dir(output_dir: str | Path, overwrite: bool) -> None:
    """Refuse a non-empty output folder (hidden files such as .gitkeep do not count)."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise TrainingError(f"output_dir {str(path)!r} is a file, not a folder")
    if path.is_dir() and any(not p.name.startswith(".") for p in path.iterdir()) and not overwrite:
        raise TrainingError(
            f"Output directory ({path}) already exists and is not empty. "
            "Set overwrite_output_dir=True (--overwrite-output-dir) to overwrite it, "
            "or choose another output_dir."
        )


def preflight(
    output_dir: str | Path, model, args: ConvAIArgs, free: Callable[[str | Path], int] | None = None
) -> None:
    """Before any data is read or step taken: output_dir must be writable, and its disk must
    hold one checkpoint (``free`` gives the free bytes; ``free_bytes`` by default). Only the
    main process writes there, so only it checks: two torchrun ranks testing one new folder
    at once would remove it from under each other.
    """
    if not distributed.is_main_process():
        return
    check_output_writable(output_dir)
    check_other_folders(args)
    if not args.no_save:
        needed = checkpoint_bytes(model, args.save_optimizer_and_scheduler)
        available = (free or free_bytes)(output_dir)
        if available < needed:
            raise TrainingError(
                f"only {available / 2**20:.0f} MB free on the disk of {output_dir}, but one "
                f"checkpoint needs about {needed / 2**20:.0f} MB; free some space, choose "
                "another output_dir, or set no_save=True. Nothing was trained."
            )


def free_bytes(path: str | Path) -> int:
    """Free disk space where ``path`` is (or would be created). Tests replace this."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def checkpoint_bytes(model, with_optimizer: bool) -> int:
    """About how many bytes one checkpoint takes: the weights, plus two float32 moments per
    parameter for AdamW, plus a few MB for tokenizer and state files."""
    params = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    moments = 2 * 4 * sum(p.numel() for p in params) if with_optimizer else 0
    return weights + moments + 8 * 2**20


def check_output_writable(output_dir: str | Path) -> None:
    """Write a file in output_dir, or raise TrainingError saying why. Folders created for the
    test are removed again: a run that then fails on its data leaves nothing behind."""
    try:
        check_writable_folder(output_dir, "output_dir", " (--output-dir). Nothing was trained.")
    except UnwritableFolderError as err:
        raise TrainingError(str(err)) from err


def check_other_folders(args: ConvAIArgs) -> None:
    """The other folders the run will write, checked like output_dir: best_model_dir (where
    the best model is saved at an evaluation, possibly hours in) and tensorboard_dir."""
    folders = []
    if args.save_best_model and args.evaluate_during_training and not args.no_save:
        folders.append((args.best_model_dir, "best_model_dir", " (or set save_best_model=False)"))
    if args.tensorboard_dir:
        folders.append((args.tensorboard_dir, "tensorboard_dir", ""))
    for folder, option, fix in folders:
        try:
            check_writable_folder(folder, option, f"{fix}. Nothing was trained.")
        except UnwritableFolderError as err:
            raise TrainingError(str(err)) from err
