"""eval_model reports the figures the field compares: hits@1 over every candidate the data has
(20 on Persona-Chat) whatever training's num_candidates, perplexity per word beside the one
per token, the decoding behind generation F1, and persona contradictions on probe data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from personachat import ConvAIModel
from personachat.args import ArgsError, make_args
from personachat.encoding.inputs import EncodingError

from .conftest import make_dialogs

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture()
def twenty_candidates_file(tmp_path) -> Path:
    dialogs = make_dialogs(4)
    for dialog in dialogs:
        for utterance in dialog["utterances"]:
            distractors = [f"i like number {k} ." for k in range(18)]
            utterance["candidates"] = distractors + utterance["candidates"]
    path = tmp_path / "valid20.json"
    path.write_text(json.dumps(dialogs), encoding="utf-8")
    return path


def _model(checkpoint, tmp_path, **args) -> ConvAIModel:
    options = {"output_dir": str(tmp_path / "out"), "num_candidates": 2, "max_length": 4, **args}
    return ConvAIModel("gpt2", checkpoint, use_cuda=False, args=options)


def test_hits_at_1_ranks_among_every_candidate_the_data_has(
    tiny_checkpoint, twenty_candidates_file, tmp_path
):
    model = _model(tiny_checkpoint, tmp_path)  # trained with 2 candidates

    results = model.eval_model(twenty_candidates_file, verbose=False, silent=True)

    assert results["eval_num_candidates"] == 20
    assert results["num_examples"] == 8
    assert results["word_perplexity"] > 1.0 and results["perplexity"] > 1.0
    assert math.isfinite(results["word_perplexity"])
    four = _model(tiny_checkpoint, tmp_path, eval_num_candidates=4)
    assert four.eval_model(twenty_candidates_file, verbose=False)["eval_num_candidates"] == 4


def test_more_eval_candidates_than_the_data_has_says_how_many_there_are(
    tiny_checkpoint, twenty_candidates_file, tmp_path
):
    model = _model(tiny_checkpoint, tmp_path, eval_num_candidates=25)

    with pytest.raises(EncodingError, match="eval_num_candidates=25 but every utterance has 20"):
        model.eval_model(twenty_candidates_file, verbose=False, silent=True)


def test_probe_data_reports_contradictions_and_generation_f1_its_decoding(
    tiny_checkpoint, tmp_path
):
    model = _model(tiny_checkpoint, tmp_path, max_eval_examples=2)

    results = model.eval_model(
        DATA / "persona_valid.json", verbose=False, silent=True, generation_f1=True
    )

    assert 0.0 <= results["persona_contradiction_rate"] <= 1.0
    assert 0.0 <= results["persona_accuracy"] <= 1.0
    assert results["generation_f1_decoding"] == "greedy"
    assert results["eval_num_candidates"] == 4  # the benchmark's own candidates


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"eval_num_candidates": 0}, "eval_num_candidates must be a positive integer or null"),
        ({"eval_num_candidates": "many"}, "eval_num_candidates must be an integer or null"),
        ({"eval_num_candidates": True}, "eval_num_candidates must be an integer or null"),
        ({"skip_invalid": "sometimes"}, "skip_invalid must be true or false"),
        ({"allow_empty_personality": 2}, "allow_empty_personality must be true or false"),
    ],
)
def test_the_new_options_are_checked_with_one_line_errors(options, message):
    with pytest.raises(ArgsError, match=message) as err:
        make_args(options)
    assert "\n" not in str(err.value)


def test_the_new_options_are_off_by_default():
    args = make_args()
    assert args.eval_num_candidates is None  # every candidate the data has
    assert args.skip_invalid is False and args.allow_empty_personality is False
