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


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, tmp_path_factory):
    """A tiny GPT-2 trained two steps with one candidate (each test sets the results it reads)."""
    from tests.conftest import make_dialogs

    root = tmp_path_factory.mktemp("trained")
    data = root / "dialogs.json"
    data.write_text(json.dumps(make_dialogs()), encoding="utf-8")
    out = root / "model"
    args = {**TRAIN, "output_dir": str(out), "eval_num_candidates": 1}
    bot = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args=args)
    bot.train_model(data)
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


# ----------------------------------------------------------------------------- honest outputs
def test_an_evaluation_never_overwrites_the_model_s_own_results(trained, probe_file):
    bot, out = trained
    append_evaluation(out, "after training", {"eval_num_candidates": 1, "perplexity": 7.0})
    own = (out / "eval_results.json").read_text(encoding="utf-8")
    reloaded = ConvAIModel("gpt2", out, use_cuda=False, args={"output_dir": str(out)})

    reloaded.eval_model(probe_file, verbose=False, silent=True)
    reloaded.eval_model(probe_file, output_dir=out, verbose=False, silent=True)

    assert (out / "eval_results.json").read_text(encoding="utf-8") == own
    assert card_metrics(out) == {"perplexity": 7.0}
    written = json.loads((out / "eval" / "probes" / "eval_results.json").read_text())
    assert "language_model_loss" in written


@pytest.fixture()
def saved_llama(tmp_path):
    from tests.conftest import make_dialogs
    from tests.tiny_models import build_tiny_chat_model

    texts = [s for d in make_dialogs() for u in d["utterances"] for s in u["history"]]
    base = build_tiny_chat_model(tmp_path / "base", texts)
    config = json.loads((base / "config.json").read_text())
    config["_model_name_or_path"] = "Smollm2 135M 8k Lc100K Mix1 Ep2"  # as from a GGUF
    (base / "config.json").write_text(json.dumps(config))
    args = {"input_format": "chat_template", "max_length": 5, "do_sample": False}
    bot = ConvAIModel("auto", base, use_cuda=False, args=args)
    bot.save_model(tmp_path / "mybot")
    return tmp_path / "mybot"


def test_the_model_card_shows_how_to_chat_and_its_snippet_runs(saved_llama, capsys):
    card = (saved_llama / "README.md").read_text(encoding="utf-8")
    assert "personachat interact --model path/to/mybot" in card
    code = card.split("```python\n")[1].split("```")[0]

    exec(code.replace("path/to/mybot", str(saved_llama)), {})  # prints the reply

    assert "AutoModelForCausalLM" in code and "apply_chat_template" in code
    assert capsys.readouterr().out.endswith("\n")


def test_saved_and_exported_configs_do_not_carry_the_gguf_file_s_name(saved_llama, tmp_path):
    from personachat.model.export import export_folder

    export_folder(saved_llama, tmp_path / "exported")

    for folder in (saved_llama, tmp_path / "exported"):
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        assert "_model_name_or_path" not in config
        assert "Smollm2 135M" not in (folder / "config.json").read_text(encoding="utf-8")


def test_an_export_records_the_precision_and_when_greedy_replies_are_equal(saved_llama, tmp_path):
    import warnings

    from personachat.args import ConvAIArgs
    from personachat.model.export import export_folder, precision_record

    export_folder(saved_llama, tmp_path / "exported")

    marker = json.loads((tmp_path / "exported" / ".personachat-export.json").read_text())
    assert marker["precision"]["weights"] == "float32"
    assert marker["precision"]["personachat_decodes_here_in"] == "float32"  # cpu_bf16: false
    assert marker["precision"]["greedy_equal_in_float32"] is True
    card = (tmp_path / "exported" / "README.md").read_text(encoding="utf-8")
    assert "## Precision" in card and "Here it does." in card
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # emulated bf16 warns on CPUs without it
        bf16 = precision_record(ConvAIArgs(cpu_bf16=True))
    assert bf16["personachat_decodes_here_in"] == "bfloat16"
    assert bf16["greedy_equal_in_float32"] is False
