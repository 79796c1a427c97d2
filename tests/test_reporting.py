"""What a training run shows: TensorBoard scalars, training_curves.png, samples.md and
report.md in the output folder."""

from __future__ import annotations

import json

import pytest

from personachat import ConvAIModel, cli
from personachat.train.reporting import (
    Probe,
    SampleWriter,
    append_evaluation,
    plot_curves,
    probes_from_dialogs,
)

from .conftest import make_dialogs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ARGS = {
    "train_batch_size": 4,
    "gradient_accumulation_steps": 2,
    "num_train_epochs": 2,
    "learning_rate": 5e-3,
    "manual_seed": 1,
    "logging_steps": 1,
    "save_steps": 0,
    "save_model_every_epoch": False,
    "max_length": 5,
    "silent": True,
}


@pytest.fixture(scope="module")
def run(tiny_checkpoint, tmp_path_factory):
    """One training run with evaluation every 2 steps, as a user would start it."""
    root = tmp_path_factory.mktemp("report")
    data = root / "dialogs.json"
    data.write_text(json.dumps(make_dialogs()))
    out = root / "out"
    model = ConvAIModel(
        "gpt2",
        tiny_checkpoint,
        use_cuda=False,
        args={
            **ARGS,
            "output_dir": str(out),
            "best_model_dir": str(root / "best"),
            "evaluate_during_training": True,
            "evaluate_during_training_steps": 2,
        },
    )
    _, details = model.train_model(data, eval_file=data)
    return out, details


def test_curves_png_is_written(run):
    out, _ = run
    png = (out / "training_curves.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000


def test_tensorboard_has_losses_learning_rate_grad_norm_throughput_and_eval_metrics(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = run
    events = EventAccumulator(str(out / "runs"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "loss",
        "lm_loss",
        "mc_loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "eval/language_model_loss",
        "eval/hits@1",
        "eval/perplexity",
    } <= tags
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4, 5, 6]
    # Evaluation every 2 steps, plus the end of each epoch (steps 3 and 6).
    assert [e.step for e in events.Scalars("eval/hits@1")] == [2, 3, 4, 6, 6]


def test_samples_show_the_probe_replies_before_training_and_after_every_epoch(run):
    out, _ = run
    text = (out / "samples.md").read_text()
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Before training (step 0)",
        "## After epoch 1 (step 3)",
        "## After epoch 2 (step 6)",
    ]
    assert text.count("persona: *") == 4  # the probes, listed once at the top
    assert text.count("**bot: ") == 3 * 4  # every probe answered three times


def test_report_has_config_data_counts_time_final_metrics_and_the_curves(run):
    out, details = run
    report = (out / "report.md").read_text()
    assert "- status: **finished**" in report
    assert "- train dialogs: 12" in report and "- train examples (utterances): 24" in report
    assert "s in all (resumed parts included)" in report
    assert f"| train_loss | {details['train_loss'][-1]:.4g} |" in report
    assert "| eval_hits@1 |" in report
    assert "![training curves](training_curves.png)" in report
    assert "| learning_rate | 0.005 |" in report  # options that differ from the defaults
    assert report.index("## Final metrics") < report.index("## Configuration")


def test_the_cli_adds_the_final_evaluation_to_the_report(
    tiny_checkpoint, dialogs_file, tmp_path, capsys
):
    out = tmp_path / "cli"
    sets = [
        arg
        for key, value in {**ARGS, "num_train_epochs": 1}.items()
        for arg in ("--set", f"{key}={value}")
    ]
    assert (
        cli.main(
            [
                "train",
                "--model",
                str(tiny_checkpoint),
                "--train-file",
                str(dialogs_file),
                "--eval-file",
                str(dialogs_file),
                "--output-dir",
                str(out),
                "--device",
                "cpu",
                *sets,
            ]
        )
        == 0
    )
    report = (out / "report.md").read_text()
    assert f"## Evaluation: {dialogs_file}" in report and "| language_model_loss |" in report
    assert report.rstrip().endswith("|")  # the configuration table stays last
    assert (out / "training_curves.png").read_bytes().startswith(PNG_MAGIC)
    # The probes come from the eval file: its first dialog's persona.
    assert "persona: *i work as a nurse . i have a cat .*" in (out / "samples.md").read_text()


def test_probes_prefer_turns_that_ask_about_the_persona():
    dialogs = make_dialogs(9)
    dialogs[4]["utterances"][0]["probe"] = {"slot": "job", "value": "teacher"}
    probes = probes_from_dialogs(dialogs, count=3)
    assert len(probes) == 3
    assert [p.personality[0] for p in probes] == [dialogs[i]["personality"][0] for i in (0, 4, 8)]
    assert probes[1].history == ["hi , what do you do ?"]  # the probe turn
    assert probes[0].history[-1] == "any pets ?" and probes[0].gold == "i have a cat ."


def test_samples_file_grows_by_one_section_per_call(tmp_path):
    path = tmp_path / "samples.md"
    writer = SampleWriter(
        path, [Probe(["i like tea ."], ["hi"], "hello")], lambda pairs: ["reply"] * len(pairs)
    )
    writer("Before training (step 0)", fresh=True)
    writer("After epoch 1 (step 3)")
    text = path.read_text()
    assert text.count("## ") == 2 and text.count("**bot: reply**") == 2
    assert text.startswith("# Samples")


def test_no_curves_before_the_first_step_and_evaluation_sections_keep_config_last(tmp_path):
    assert plot_curves({}, {}, tmp_path / "c.png") is None
    assert append_evaluation(tmp_path, "x", {"a": 1.0}) is None  # no report yet
    (tmp_path / "report.md").write_text("# Training report\n\n## Configuration\n\n| a | b |\n")
    append_evaluation(tmp_path, "valid.json", {"hits@1": 0.5})
    text = (tmp_path / "report.md").read_text()
    assert text.index("## Evaluation: valid.json") < text.index("## Configuration")
    assert "| hits@1 | 0.5 |" in text


def test_a_new_run_over_an_old_output_dir_starts_samples_afresh(tiny_checkpoint, tmp_path):
    data = tmp_path / "dialogs.json"
    data.write_text(json.dumps(make_dialogs()))
    for _ in range(2):
        model = ConvAIModel(
            "gpt2",
            tiny_checkpoint,
            use_cuda=False,
            args={
                **ARGS,
                "num_train_epochs": 1,
                "output_dir": str(tmp_path / "out"),
                "overwrite_output_dir": True,
            },
        )
        model.train_model(data)
    text = (tmp_path / "out" / "samples.md").read_text()
    assert [line for line in text.splitlines() if line.startswith("## ")] == [
        "## Before training (step 0)",
        "## After epoch 1 (step 3)",
    ]
