"""What a training run shows besides TensorBoard: curves, samples and a report, in output_dir.

- ``training_curves.png``: training loss (with its LM and MC parts), evaluation metrics,
  learning rate and gradient norm against the step; redrawn at each evaluation and epoch.
- ``samples.md``: the model's replies to a few fixed probe conversations (persona + the
  partner's message) before training and after every epoch. Loss alone misleads: a model can
  look bad on its curves and chat fine, or the reverse; reading it learn tells.
- ``report.md``: at the end, the configuration, data counts, time, final metrics, the curves.

Everything here is plain files written atomically (temporary file, then rename), so a run
killed mid-write leaves the previous version, never half a file.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path

import torch

from personachat.fs import write_file_atomic
from personachat.model.conventions import (
    EVAL_RESULTS_FILE,
    meaningful_metrics,
    refresh_model_card,
)
from personachat.model.device import autocast_dtype
from personachat.train.errors import TrainingError

CURVES_FILE = "training_curves.png"
SAMPLES_FILE = "samples.md"
REPORT_FILE = "report.md"
NUM_PROBES = 4


# ----------------------------------------------------------------------------- curves
def ema(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average (as TensorBoard's smoothing slider), started unbiased."""
    smoothed, average, norm = [], 0.0, 0.0
    for value in values:
        average = weight * average + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        smoothed.append(average / norm)
    return smoothed


EVAL_LOSSES = ("eval_language_model_loss", "eval_mc_loss")
EVAL_SCORES = (
    "eval_hits@1",
    "eval_f1_score",
    "eval_persona_accuracy",
    "eval_persona_contradiction_rate",
    "eval_persona_hits@1",
    "eval_generation_f1",
)


def plot_curves(
    curves: dict[str, list], history: dict[str, list], path: str | os.PathLike
) -> Path | None:
    """Draw the run so far into ``path`` (PNG), panels sharing the step axis: training
    losses and learning rate / gradient norm, plus evaluation losses and scores if any.

    ``curves`` holds per-step training values (``step``, ``loss``, ``lm_loss``, ``mc_loss``,
    ``lr``, ``grad_norm``); ``history`` the evaluation results (``eval_global_step`` and
    ``eval_*`` lists). Returns None when there is nothing to draw yet.
    """
    if not curves.get("step"):
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    evaluated = bool(history.get("eval_global_step"))
    if evaluated:
        fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
        (ax_loss, ax_eval), (ax_score, ax_lr) = axes
        bottom = axes[1]
    else:  # no evaluation during training: two panels, no empty ones
        fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(11, 3.8), sharex=True)
        bottom = (ax_loss, ax_lr)
    try:
        draw_training_losses(ax_loss, curves, evaluated)
        if evaluated:
            draw_evaluation(ax_eval, history, EVAL_LOSSES, "evaluation loss")
            draw_evaluation(ax_score, history, EVAL_SCORES, "evaluation scores")
        draw_learning_rate(ax_lr, curves)
        for ax in bottom:
            ax.set_xlabel("optimizer step")
        # Fixed margins: tight_layout measures every label and would double the drawing time.
        fig.subplots_adjust(
            left=0.07,
            right=0.93,
            bottom=0.08 if evaluated else 0.14,
            top=0.95 if evaluated else 0.91,
            wspace=0.28,
            hspace=0.22,
        )
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=90)
    finally:
        plt.close(fig)
    return write_file_atomic(path, png.getvalue())


def draw_training_losses(ax, curves: dict[str, list], evaluated: bool) -> None:
    """Each training loss, faint as measured and solid smoothed."""
    steps = curves["step"]
    for key, color in (("loss", "tab:blue"), ("lm_loss", "tab:orange"), ("mc_loss", "tab:green")):
        values = curves.get(key) or []
        if len(values) == len(steps):
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(steps, ema(values), color=color, label=f"{key} (smoothed)")
    ax.set_title("training loss" + ("" if evaluated else " (no evaluation during training)"))
    ax.legend(fontsize=8)


def draw_evaluation(ax, history: dict[str, list], keys: tuple[str, ...], title: str) -> None:
    """The evaluation results among ``keys`` that every evaluation has, against the step."""
    eval_steps = history["eval_global_step"]
    drawn = [k for k in keys if len(history.get(k) or []) == len(eval_steps)]
    for key in drawn:
        ax.plot(eval_steps, history[key], marker="o", label=key.removeprefix("eval_"))
    ax.set_title(title)
    if drawn:
        ax.legend(fontsize=8)


def draw_learning_rate(ax, curves: dict[str, list]) -> None:
    """The learning rate, and the gradient norm on a second axis."""
    steps = curves["step"]
    lr = curves.get("lr") or []
    if len(lr) == len(steps):
        ax.plot(steps, lr, color="tab:purple", label="learning rate")
    ax.set_title("learning rate and gradient norm")
    ax.set_ylabel("learning rate")
    norm = curves.get("grad_norm") or []
    if len(norm) == len(steps):
        ax_norm = ax.twinx()
        ax_norm.plot(steps, norm, color="tab:red", alpha=0.5, linewidth=0.8)
        ax_norm.set_ylabel("gradient norm (before clipping)", color="tab:red")


# ----------------------------------------------------------------------------- samples
@dataclass(frozen=True)
class Probe:
    """A fixed conversation the model answers after every epoch."""

    personality: list[str]
    history: list[str]
    gold: str = ""


def probes_from_dialogs(dialogs: Sequence[dict], count: int = NUM_PROBES) -> list[Probe]:
    """``count`` probes spread over ``dialogs``: from each, the first turn that asks about the
    persona (``"probe"`` in the bundled persona data), else its second turn, else its first."""
    if not dialogs:
        return []
    picks = sorted({round(k * (len(dialogs) - 1) / max(1, count - 1)) for k in range(count)})
    probes = []
    for index in picks:
        dialog = dialogs[index]
        utterances = dialog.get("utterances") or []
        if not utterances:
            continue
        chosen = next(
            (u for u in utterances if u.get("probe")), utterances[min(1, len(utterances) - 1)]
        )
        probes.append(
            Probe(
                list(dialog["personality"]),
                list(chosen["history"]),
                chosen["candidates"][-1] if chosen.get("candidates") else "",
            )
        )
    return probes


class SampleWriter:
    """Appends the model's replies to the probes to ``samples.md``; call it with a heading.

    ``reply`` answers a list of ``(personality, history)`` pairs (greedy decoding, so the
    same weights always give the same replies).
    """

    def __init__(
        self, path: str | os.PathLike, probes: Sequence[Probe], reply: Callable[[list], list[str]]
    ) -> None:
        self.path = Path(path)
        self.probes = list(probes)
        self.reply = reply

    def __call__(self, heading: str, fresh: bool = False) -> None:
        if not self.probes:
            return
        replies = self.reply([(p.personality, p.history) for p in self.probes])
        lines = [f"## {heading}", ""]
        for number, (probe, reply) in enumerate(zip(self.probes, replies, strict=True), 1):
            lines.append(
                f"{number}. user: {probe.history[-1] if probe.history else ''}  \n"
                f"   **bot: {reply or '(empty reply)'}**"
            )
        text = "\n".join(lines) + "\n\n"
        if fresh or not self.path.is_file():
            text = self.header() + text
        else:
            text = self.path.read_text(encoding="utf-8") + text
        write_file_atomic(self.path, text)

    def header(self) -> str:
        """The probes themselves, once at the top, numbered like the replies below."""
        lines = [
            "# Samples",
            "",
            "Greedy replies to fixed conversations, before training and after every "
            "epoch. The probes:",
            "",
        ]
        for number, probe in enumerate(self.probes, 1):
            lines.append(f"{number}. persona: *{' '.join(probe.personality)}*")
            for turn, text in enumerate(probe.history[-3:]):
                speaker = "user" if (len(probe.history[-3:]) - turn) % 2 else "bot"
                lines.append(f"   - {speaker}: {text}")
            if probe.gold:
                lines.append(f"   - gold reply: {probe.gold}")
        return "\n".join(lines) + "\n\n"


def samples_writer(
    output_dir: str | os.PathLike, probe_dialogs: Sequence[dict], reply: Callable[[list], list[str]]
) -> SampleWriter:
    """What writes ``samples.md`` in ``output_dir``: ``reply``'s answers to the probes taken
    from ``probe_dialogs``."""
    return SampleWriter(Path(output_dir) / SAMPLES_FILE, probes_from_dialogs(probe_dialogs), reply)


# ----------------------------------------------------------------------------- report
def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def metrics_table(results: dict) -> list[str]:
    """The figures of ``results`` that mean something (``meaningful_metrics``), as a table."""
    rows = ["| metric | value |", "|---|---|"]
    rows += [
        f"| {k} | {_cell(v)} |"
        for k, v in meaningful_metrics(results).items()
        if isinstance(v, int | float | str)
    ]
    return rows


def write_report(
    output_dir: str | os.PathLike,
    *,
    model: str,
    device: str,
    args,
    data: dict,
    details: dict,
    status: str,
    started: float,
) -> Path:
    """Write ``report.md``: what ran, on what, how long, how it ended, and the curves."""
    out = Path(output_dir)
    history = details or {}
    seconds = time.time() - started
    lines = [
        "# Training report",
        "",
        f"- status: **{status}**",
        f"- model: `{model}` on {device}",
        f"- precision: {training_precision(args, device)}",
        f"- finished: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime())}; this run "
        f"{seconds:.0f} s, training {history.get('train_seconds', 0.0):.0f} s in all "
        "(resumed parts included)",
        f"- output: `{out}`",
        "",
        "## Data",
        "",
        *[f"- {key}: {_cell(value)}" for key, value in data.items()],
        "",
        "## Final metrics",
        "",
    ]
    final = final_metrics(history)
    lines += metrics_table(final) if final else ["(no step finished)"]
    if (out / CURVES_FILE).is_file():
        lines += ["", "## Curves", "", f"![training curves]({CURVES_FILE})"]
    if (out / SAMPLES_FILE).is_file():
        lines += [
            "",
            f"Replies to fixed probe conversations, epoch by epoch: [{SAMPLES_FILE}]"
            f"({SAMPLES_FILE}).",
        ]
    lines += configuration_lines(args)
    path = write_file_atomic(out / REPORT_FILE, "\n".join(lines) + "\n")
    refresh_model_card(out)  # the saved model's card (README.md) shows the report
    return path


def training_precision(args, device: str) -> str:
    """What the training computed in on ``device``, in words (``autocast_dtype``)."""
    dtype = autocast_dtype(torch.device(device), args.fp16, args.cpu_bf16)
    if dtype is None:
        return "float32"
    return f"{str(dtype).removeprefix('torch.')} autocast (cpu_bf16: {args.cpu_bf16}, fp16: {args.fp16})"


def train_reported(
    train: Callable[[], tuple[int, dict]],
    output_dir: str | os.PathLike,
    args,
    device,
    data: dict,
    write: bool = True,
) -> tuple[int, dict]:
    """Run ``train`` and write report.md however it ends: finished, stopped early, or stopped
    by an error (with what was done until then). ``data``: what was trained on, for the
    report; ``write=False`` (no_save, or not rank 0) writes nothing."""
    report = partial(
        write_report,
        output_dir,
        model=f"{args.model_type} {args.model_name}",
        device=str(device),
        args=args,
        started=time.time(),
        data=data,
    )
    if not write:
        report = None
    try:
        global_step, details = train()
    except TrainingError as err:
        if report:
            report(details=getattr(err, "details", {}), status=f"stopped: {err}")
        raise
    if report:
        early = " (early stopping)" if details.get("stopped_early") else ""
        report(details=details, status=f"finished{early}")
    return global_step, details


def final_metrics(history: dict) -> dict:
    """The last step, training loss and evaluation results of a run's history."""
    final = {key: history[key][-1] for key in ("global_step", "train_loss") if history.get(key)}
    final.update(
        {
            k: v[-1]
            for k, v in history.items()
            if k.startswith("eval_") and isinstance(v, list) and v
        }
    )
    return final


def configuration_lines(args) -> list[str]:
    """The options that differ from the defaults, as a table (kept last in the report)."""
    defaults = type(args)()
    changed = {
        f.name: getattr(args, f.name)
        for f in fields(args)
        if getattr(args, f.name) != getattr(defaults, f.name)
    }
    return [
        "",
        "## Configuration",
        "",
        "Options that differ from the defaults (all of them: `model_args.json`):",
        "",
        "| option | value |",
        "|---|---|",
        *[f"| {k} | {_cell(v)} |" for k, v in changed.items()],
    ]


def append_evaluation(output_dir: str | os.PathLike, title: str, results: dict) -> Path | None:
    """Record the evaluation done after training as the model's own: its figures that mean
    something (``meaningful_metrics``) become ``eval_results.json`` beside the model (what
    the card publishes) and a section of ``report.md`` (if the run wrote one)."""
    meaningful = meaningful_metrics(results)
    write_file_atomic(Path(output_dir) / EVAL_RESULTS_FILE, json.dumps(meaningful, indent=2))
    path = Path(output_dir) / REPORT_FILE
    if not path.is_file():
        refresh_model_card(output_dir)
        return None
    text = path.read_text(encoding="utf-8").rstrip("\n")
    section = [f"## Evaluation: {title}", "", *metrics_table(meaningful)]
    # Keep the configuration table last.
    head, sep, tail = text.partition("\n## Configuration")
    body = head.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"
    written = write_file_atomic(path, body + (f"\n## Configuration{tail}\n" if sep else ""))
    refresh_model_card(output_dir)  # with eval_results.json's metrics, if written there
    return written


__all__ = [
    "CURVES_FILE",
    "REPORT_FILE",
    "SAMPLES_FILE",
    "Probe",
    "SampleWriter",
    "append_evaluation",
    "plot_curves",
    "probes_from_dialogs",
    "write_report",
]
