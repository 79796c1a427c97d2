"""What an evaluation publishes: only figures that mean something (no ranking figure with one
candidate), in its own folder, never over a model's saved results; the model card beside a
saved model (usage, metrics, a clean config)."""

from __future__ import annotations

import json

import pytest
import yaml

from personachat import ConvAIModel
from personachat.model.conventions import meaningful_metrics
from personachat.train.reporting import append_evaluation

RANKING = ("hits@1", "f1_score", "mc_loss", "persona_hits@1")
TRAIN = {
    "num_train_epochs": 1,
    "max_steps": 2,
    "train_batch_size": 4,
    "save_steps": 0,
    "save_model_every_epoch": False,
    "do_sample": False,
    "max_length": 6,
    "silent": True,
}


def card_front(folder) -> dict:
    text = (folder / "README.md").read_text(encoding="utf-8")
    return yaml.safe_load(text.split("---\n")[1])


def card_metrics(folder) -> dict:
    front = card_front(folder)
    return {m["type"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}


@pytest.fixture()
def probe_file(tmp_path):
    """Dialogs with one candidate per utterance (a file of conversations), one a probe."""
    dialogs = [
        {
            "personality": [f"i work as a {job} .", "i have a cat ."],
            "utterances": [
                {"history": ["hi !"], "candidates": ["hello , how are you ?"]},
                {
                    "history": ["hi !", "hello , how are you ?", "what do you do ?"],
                    "candidates": [f"i am a {job} ."],
                    "probe": {"slot": "job", "value": job},
                },
            ],
        }
        for job in ("nurse", "pilot", "baker", "teacher")
    ]
    path = tmp_path / "probes.json"
    path.write_text(json.dumps(dialogs), encoding="utf-8")
    return path


@pytest.fixture()
def trained(tiny_checkpoint, dialogs_file, tmp_path):
    out = tmp_path / "model"
    args = {**TRAIN, "output_dir": str(out), "eval_num_candidates": 1}
    bot = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args=args)
    bot.train_model(dialogs_file)
    return bot, out


def test_one_candidate_reports_no_ranking_figure_anywhere(trained, probe_file, tmp_path):
    bot, out = trained

    results = bot.eval_model(probe_file, output_dir=tmp_path / "ev", verbose=False, silent=True)
    append_evaluation(out, str(probe_file), results)  # as `personachat train` records it

    assert results["eval_num_candidates"] == 1
    assert "persona_accuracy" in results and "language_model_loss" in results
    written = json.loads((tmp_path / "ev" / "eval_results.json").read_text(encoding="utf-8"))
    card = card_metrics(out)
    report = (out / "report.md").read_text(encoding="utf-8")
    for key in RANKING:
        assert key not in results and key not in written and key not in card
        assert f"| {key} |" not in report and f"| eval_{key} |" not in report
    assert card["language_model_loss"] == pytest.approx(results["language_model_loss"])


def test_results_written_before_still_publish_no_one_candidate_figure(trained):
    _, out = trained
    old = {
        "eval_num_candidates": 1,
        "hits@1": 1.0,
        "f1_score": 1.0,
        "mc_loss": 0.0,
        "perplexity": 9.0,
    }
    (out / "eval_results.json").write_text(json.dumps(old), encoding="utf-8")

    append_evaluation(out, "old run", old)

    assert card_metrics(out) == {"perplexity": 9.0}
    assert meaningful_metrics({**old, "eval_num_candidates": 2}) == {
        **old,
        "eval_num_candidates": 2,
    }


def test_two_candidates_keep_simpletransformers_f1_score(tiny_checkpoint, dialogs_file, tmp_path):
    args = {"eval_ranking": "mc", "silent": True}
    bot = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args=args)

    results = bot.eval_model(dialogs_file, output_dir=tmp_path / "ev", verbose=False, silent=True)

    assert results["eval_num_candidates"] == 2 and results["ranking"] == "mc"
    for key in ("hits@1", "f1_score", "mc_loss"):
        assert key in results
