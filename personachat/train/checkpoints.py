"""Checkpoints training can resume from: written atomically, rotated, loaded without pickle.

A checkpoint is a folder ``checkpoint-STEP`` (``checkpoint-STEP-epoch-N`` at an epoch's end)
that ``from_pretrained`` can load like any model folder, plus what training needs to go on
exactly where it stopped:

- ``optimizer.safetensors``: every tensor of the optimizer state (AdamW moments, step counts);
- ``rng_state.safetensors``: the torch CPU and CUDA generator states;
- ``training_state.json``: step, epoch and micro-batches done in it, best metric, history,
  the scheduler and grad-scaler state, the optimizer's hyper-parameters, the Python and NumPy
  generator states, and the batch plan the run used;
- ``checkpoint_complete.json``: written last.

No file is a pickle, so loading a checkpoint never runs code from it. Everything is written
into a hidden temporary folder beside the target, flushed to disk, then renamed into place:
a process killed during a save leaves at most a ``.checkpoint-*.tmp-*`` folder (removed by
the next run) and never a folder that looks complete.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from personachat.errors import PersonachatError
from personachat.fs import remove_folder, remove_stale, write_folder_atomic
from personachat.model.loading import unwrap, write_model_files
from personachat.model.lora import (
    LORA_STATE_FILE,
    has_lora,
    load_trainable_state,
    trainable_state,
)
from personachat.model.weights import tied_weight_names
from personachat.train.optim import json_safe, load_optimizer_state, optimizer_state
from personachat.train.rng import capture_rng_state, rank_rng_restorer, restore_rng_state

COMPLETE_MARKER = "checkpoint_complete.json"
STATE_FILE = "training_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng_state.safetensors"
FORMAT_VERSION = 1
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)(?:-epoch-(\d+))?$")
# Test hook: seconds to sleep inside every checkpoint save, after the weights are written and
# before the folder is completed, so a test can kill the process in the middle of a save.
SAVE_PAUSE_ENV = "PERSONACHAT_TEST_SAVE_PAUSE"


class CheckpointError(PersonachatError, RuntimeError):
    """A checkpoint cannot be written, found or resumed from; the message says what to do."""


# ----------------------------------------------------------------------------- writing
def save_checkpoint(
    folder: str | os.PathLike,
    model,
    tokenizer,
    args,
    extra_files: dict[str, str] | None,
    optimizer,
    scheduler,
    scaler,
    training: dict,
    plan: dict,
    rank_rng: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a resumable checkpoint to ``folder`` atomically (see the module docstring).

    ``training`` is the loop's state (must hold ``global_step``, ``epoch``, ``batches_done``);
    ``plan`` the batch plan, compared on resume. ``optimizer=None`` writes the weights only
    (``save_optimizer_and_scheduler=False``): such a checkpoint loads but cannot resume.
    ``rank_rng``: the other torchrun ranks' generators (``distributed.gather_rng_states``),
    saved beside this process's.
    """

    def fill(tmp: Path) -> None:
        write_model_files(tmp, model, tokenizer, args, extra_files)
        pause = float(os.environ.get(SAVE_PAUSE_ENV, "0") or 0)
        if pause > 0:
            time.sleep(pause)
        if optimizer is not None:
            write_training_files(tmp, optimizer, scheduler, scaler, training, plan, rank_rng)
            if has_lora(model):  # the base stays model_name's: these restore the run exactly
                save_file(trainable_state(unwrap(model)), str(tmp / LORA_STATE_FILE))
        marker = {
            "global_step": training["global_step"],
            "epoch": training["epoch"],
            "batches_done": training["batches_done"],
            "resumable": optimizer is not None,
        }
        # Written last: a folder without it is never loaded or resumed from.
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker), encoding="utf-8")

    # The one atomic writer: every file fsynced, then the folder renamed into place.
    return write_folder_atomic(folder, fill)


def write_training_files(
    folder: Path, optimizer, scheduler, scaler, training: dict, plan: dict, rank_rng
) -> None:
    """What resuming needs besides the weights: optimizer tensors, generators, and the state."""
    optim_plain, optim_tensors = optimizer_state(optimizer)
    save_file(optim_tensors, str(folder / OPTIMIZER_FILE))
    rng_plain, rng_tensors = capture_rng_state()
    save_file({**(rank_rng or {}), **rng_tensors}, str(folder / RNG_FILE))
    state = {
        "format_version": FORMAT_VERSION,
        "training": training,
        "plan": plan,
        "optimizer": optim_plain,
        "scheduler": json_safe(scheduler.state_dict()),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "rng": rng_plain,
    }
    (folder / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")


# ----------------------------------------------------------------------------- finding
def read_marker(folder: str | os.PathLike) -> dict | None:
    """The completion marker of a checkpoint folder, or None if it is not complete."""
    path = Path(folder) / COMPLETE_MARKER
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and "global_step" in marker else None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete ``checkpoint-*`` folders of output_dir, oldest first (by training progress)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if not (path.is_dir() and CHECKPOINT_NAME.match(path.name)):
            continue
        marker = read_marker(path)
        if marker is not None:
            key = (
                int(marker["global_step"]),
                int(marker.get("epoch", 0)),
                int(marker.get("batches_done", 0)),
            )
            found.append((key, path.name, path))
    return [path for _, _, path in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike, resumable: bool = True) -> Path | None:
    """The most advanced complete checkpoint (that can resume, unless ``resumable=False``)."""
    for path in reversed(list_checkpoints(output_dir)):
        if not resumable or (read_marker(path) or {}).get("resumable"):
            return path
    return None


def resolve_resume(
    resume: bool | str | os.PathLike | None,
    output_dir: str | os.PathLike,
    report: Callable[[str], None] = print,
) -> Path | None:
    """Which checkpoint ``resume_from_checkpoint`` means: None (a fresh run), the newest
    complete, readable and resumable one in output_dir (True, or a folder holding
    checkpoints), or the one named. Newer checkpoints that cannot be read (a truncated or
    damaged file) are skipped, each with one line through ``report``."""
    if resume is None or resume is False:
        return None
    if resume is True:
        found, skipped = newest_readable(output_dir)
        for path, why in skipped:
            report(f"resume: skipping {path} ({why}); trying the one before it")
        if found is None:
            raise CheckpointError(
                f"resume: no complete, resumable checkpoint in {output_dir}. Checkpoints are "
                "written every save_steps steps, every epoch (save_model_every_epoch) and on "
                "Ctrl-C; start without --resume / resume_from_checkpoint to train from the "
                "beginning."
                + (f" ({len(skipped)} damaged checkpoint(s) skipped.)" if skipped else "")
            )
        return found
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(
            f"resume: {path} is not a folder; pass a checkpoint-* folder "
            "or use --resume without a path for the newest one"
        )
    marker = read_marker(path)
    if marker is None:
        inner = latest_checkpoint(path)
        if inner is not None:
            return resolve_resume(True, path, report)
        raise CheckpointError(
            f"resume: {path} is not a complete checkpoint (no {COMPLETE_MARKER}; it may have "
            "been cut off while being written). Pass another checkpoint-* folder, or use "
            "--resume without a path for the newest complete one."
        )
    if not marker.get("resumable"):
        raise CheckpointError(
            f"resume: {path} holds weights only (written with "
            "save_optimizer_and_scheduler=False), so training cannot go on from it exactly; "
            "load it as a model instead (--model / model_name)."
        )
    return path


def newest_readable(output_dir: str | os.PathLike) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest resumable checkpoint of output_dir whose files can all be read, and the
    newer ones skipped, each with why (``unreadable``)."""
    skipped = []
    for path in reversed(list_checkpoints(output_dir)):
        if not (read_marker(path) or {}).get("resumable"):
            continue
        why = unreadable(path)
        if why is None:
            return path, skipped
        skipped.append((path, why))
    return None, skipped


def unreadable(folder: Path) -> str | None:
    """Why ``folder``'s files cannot be resumed from (None: they can): its state file must be
    JSON of this format, and every safetensors file complete (the header's tensors within the
    file; reading the header is cheap, the tensors are not read)."""
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
            return f"{STATE_FILE} is not a training state of format {FORMAT_VERSION}"
    except (OSError, ValueError) as err:
        return f"{STATE_FILE} cannot be read: {err}"
    for name in ("model.safetensors", OPTIMIZER_FILE, RNG_FILE):
        try:
            with safe_open(str(folder / name), "pt") as f:
                f.keys()
        except (OSError, SafetensorError) as err:
            return f"{name} cannot be read: {err}"
    return None


def checkpoints_after(output_dir: str | os.PathLike, checkpoint: Path) -> list[Path]:
    """Complete checkpoints of output_dir further on than ``checkpoint`` (from a run that is
    being resumed from an earlier point, and so abandoned)."""
    mine = read_marker(checkpoint) or {}
    key = (mine.get("global_step", 0), mine.get("epoch", 0), mine.get("batches_done", 0))
    later = []
    for path in list_checkpoints(output_dir):
        marker = read_marker(path) or {}
        if (
            marker.get("global_step", 0),
            marker.get("epoch", 0),
            marker.get("batches_done", 0),
        ) > key and path.resolve() != checkpoint.resolve():
            later.append(path)
    return later


def remove_temp_folders(output_dir: str | os.PathLike) -> None:
    """Delete the ``.checkpoint-*.tmp-*`` folders of saves (and deletes) that were cut off,
    and checkpoints set aside by a replacing save that was: those no live writer holds."""
    root = Path(output_dir)
    if root.is_dir():
        remove_stale(root, ".checkpoint-*.tmp-*")
        remove_stale(root, ".checkpoint-*.old-*")


def rotate_checkpoints(
    output_dir: str | os.PathLike, limit: int | None, keep: Path | None = None
) -> list[Path]:
    """Delete all but the newest ``limit`` complete checkpoints, never ``keep`` (the best
    one). Returns what was deleted."""
    if not limit:
        return []
    checkpoints = list_checkpoints(output_dir)
    doomed = [
        p for p in checkpoints[:-limit] if keep is None or p.resolve() != Path(keep).resolve()
    ]
    for path in doomed:
        remove_checkpoint(path)
    return doomed


def remove_checkpoint(path: str | os.PathLike) -> None:
    """Delete a checkpoint folder. It is renamed to a temporary name first
    (``fs.remove_folder``), so a kill during the delete never leaves a half-deleted folder
    that still looks complete."""
    remove_folder(path)


# ----------------------------------------------------------------------------- loading
def load_checkpoint(
    folder: str | os.PathLike, model, optimizer, scheduler, scaler, rank: int = 0
) -> tuple[dict, dict, Callable[[], None] | None]:
    """Load weights, optimizer, scheduler and scaler state from a resumable checkpoint.

    Returns ``(training, plan, restore_rng)``: the loop's saved state, the batch plan it ran
    with, and a function that restores the random generators (of torchrun rank ``rank``;
    None for a rank the checkpoint holds none for). Call it at the point of the loop
    where they were captured, so that nothing in between consumes random numbers: after the
    epoch's ``iter(loader)`` (which draws a seed) for a checkpoint within an epoch, before it
    for one at an epoch's start (``batches_done == 0``).
    """
    folder = Path(folder)
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unknown {STATE_FILE} format")
        training, plan = state["training"], state["plan"]
        target = unwrap(getattr(model, "_orig_mod", model))
        lora = has_lora(target)
        if lora and not (folder / LORA_STATE_FILE).is_file():
            raise ValueError(f"no {LORA_STATE_FILE}: written by a run without LoRA")
        weights = load_file(str(folder / (LORA_STATE_FILE if lora else "model.safetensors")))
        optim_tensors = load_file(str(folder / OPTIMIZER_FILE))
        rng_tensors = load_file(str(folder / RNG_FILE))
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        raise CheckpointError(
            f"resume: {folder} cannot be read ({err}); pass another checkpoint-* folder with "
            "--resume PATH / resume_from_checkpoint=PATH"
        ) from err
    if lora:
        missing, unexpected = load_trainable_state(target, weights)
    else:
        missing, unexpected = target.load_state_dict(weights, strict=False)
        # Tied weights (lm_head = wte) are saved once; anything else missing is a wrong model.
        missing = [k for k in missing if k not in tied_weight_names(target)]
    if missing or unexpected:
        raise CheckpointError(
            f"resume: {folder} was written for another model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); resume with the model_name the run started from"
        )
    try:
        load_optimizer_state(optimizer, state["optimizer"], optim_tensors)
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(
            f"resume: the optimizer state in {folder} does not fit this model ({err}); "
            "resume with the options the run started with"
        ) from err
    if rank > 0:
        return training, plan, rank_rng_restorer(rng_tensors, rank)
    return training, plan, lambda: restore_rng_state(state["rng"], rng_tensors)
