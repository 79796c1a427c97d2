"""hits@1 by the language model (``evaluation.ranking``): scores against a hand computation
(one full forward pass per candidate, log-softmax, mean over the labelled positions), for the
TransferTransfo layout (GPT-2, token types) and a chat template (Llama), and hits@1 through
``eval_model``."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from personachat import ConvAIModel
from personachat.encoding.inputs import IGNORE_INDEX, history_window
from personachat.evaluation.ranking import (
    PMI_WEIGHT,
    candidate_rows,
    choice_head_trained,
    full_scores,
    resolve_ranking,
    shared_context_scores,
)
from personachat.model.families import lm_head, run_body
from tests.conftest import make_dialogs
from tests.tiny_models import build_tiny_chat_model

CANDIDATES = [
    "i am a pilot .",
    "i have a dog named rex and two cats .",
    "hello",
    "i am a nurse and i love pizza .",
]


def hand_score(bot: ConvAIModel, row: dict) -> float:
    """Mean log-probability of the row's labelled tokens from a full forward pass."""
    ids = torch.tensor([row["input_ids"]])
    types = torch.tensor([row["token_type_ids"]])
    with torch.no_grad():
        hidden = run_body(bot.model, ids, types).last_hidden_state[0]
        log_probs = F.log_softmax(lm_head(bot.model)(hidden).float(), dim=-1)
    labelled = [t for t, label in enumerate(row["lm_labels"]) if label != IGNORE_INDEX]
    return sum(log_probs[t - 1, row["input_ids"][t]].item() for t in labelled) / len(labelled)


def utterance_rows(bot: ConvAIModel, history: list[str]) -> list[dict]:
    persona = [bot._encode(s) for s in ["i work as a nurse .", "i have a cat ."]]
    history_ids = [bot._encode(h) for h in history]
    candidates = [bot._encode(c) for c in CANDIDATES]
    return candidate_rows(bot.special, persona, history_ids, candidates, 256)


@pytest.fixture(scope="module")
def gpt2_bot(tiny_checkpoint):
    return ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args={"silent": True})


@pytest.fixture(scope="module")
def llama_bot(tmp_path_factory):
    texts = [s for d in make_dialogs() for u in d["utterances"] for s in u["history"]]
    folder = build_tiny_chat_model(tmp_path_factory.mktemp("llama") / "m", texts + CANDIDATES)
    args = {"input_format": "chat_template", "silent": True}
    return ConvAIModel("auto", folder, use_cuda=False, args=args)


@pytest.mark.parametrize("bot_name", ["gpt2_bot", "llama_bot"])
def test_scores_over_the_shared_context_equal_a_full_pass_per_candidate(bot_name, request):
    bot = request.getfixturevalue(bot_name)
    rows = utterance_rows(bot, ["hi , what do you do ?", "i fly planes .", "any pets ?"])

    shared = shared_context_scores(bot.model, rows, torch.device("cpu"))
    full = full_scores(bot.model, rows, torch.device("cpu"))
    by_hand = [hand_score(bot, row) for row in rows]

    assert shared == pytest.approx(by_hand, abs=1e-5)
    assert full == pytest.approx(by_hand, abs=1e-5)
    assert len(set(map(len, (r["input_ids"] for r in rows)))) > 1, "replies of several lengths"


def test_the_gpt2_score_reads_the_token_types(gpt2_bot):
    rows = utterance_rows(gpt2_bot, ["hi , what do you do ?"])
    other_types = [{**row, "token_type_ids": [0] * len(row["token_type_ids"])} for row in rows]

    scores = shared_context_scores(gpt2_bot.model, rows, torch.device("cpu"))
    without = shared_context_scores(gpt2_bot.model, other_types, torch.device("cpu"))

    assert scores != pytest.approx(without, abs=1e-4)


def test_rows_built_for_different_contexts_are_refused(gpt2_bot):
    rows = utterance_rows(gpt2_bot, ["hi , what do you do ?"])
    rows[1] = utterance_rows(gpt2_bot, ["hello there !"])[1]

    with pytest.raises(ValueError, match="share their context"):
        shared_context_scores(gpt2_bot.model, rows, torch.device("cpu"))


@pytest.mark.parametrize("ranking", ["lm", "pmi"])
@pytest.mark.parametrize("bot_name", ["gpt2_bot", "llama_bot"])
def test_hits_at_1_by_the_lm_counts_the_utterances_whose_gold_reply_scores_best(
    bot_name, ranking, request, tmp_path
):
    """``pmi``: each candidate's score less PMI_WEIGHT times its score with neither persona
    nor history, both computed by hand here."""
    bot = request.getfixturevalue(bot_name)
    dialogs = make_dialogs(4)
    for dialog in dialogs:  # four candidates each, the gold reply last
        for utterance in dialog["utterances"]:
            utterance["candidates"] = CANDIDATES[:2] + utterance["candidates"]
    data = tmp_path / "dialogs.json"
    data.write_text(json.dumps(dialogs), encoding="utf-8")
    bot.args.eval_ranking = ranking

    results = bot.eval_model(data, output_dir=tmp_path / "eval", verbose=False, silent=True)

    hits = []
    for dialog in dialogs:
        persona = [bot._encode(s) for s in dialog["personality"]]
        for utterance in dialog["utterances"]:
            history = [bot._encode(h) for h in history_window(utterance["history"], 2)]
            candidates = [bot._encode(c) for c in utterance["candidates"]]
            rows = candidate_rows(bot.special, persona, history, candidates, 256)
            scores = [hand_score(bot, row) for row in rows]
            if ranking == "pmi":
                alone = candidate_rows(bot.special, [], [], candidates, 256)
                scores = [
                    s - PMI_WEIGHT * hand_score(bot, r) for s, r in zip(scores, alone, strict=True)
                ]
            hits.append(max(range(4), key=scores.__getitem__) == 3)
    assert results["eval_num_candidates"] == 4
    assert results["hits@1"] == pytest.approx(sum(hits) / len(hits))
    assert results["ranking"] == ranking
    assert "f1_score" not in results and "mc_loss" not in results  # no head figures


def test_auto_ranks_with_the_head_only_where_training_gave_the_model_one(tmp_path, tiny_checkpoint):
    trained = tmp_path / "trained"
    trained.mkdir()
    bot = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args={"silent": True})
    bot.save_model(trained)  # the head's weights are in model.safetensors
    (trained / "model_args.json").write_text(json.dumps({"mc_coef": 1.0, "num_candidates": 2}))
    assert choice_head_trained(trained)
    (trained / "model_args.json").write_text(json.dumps({"mc_coef": 0.0, "num_candidates": 2}))
    assert not choice_head_trained(trained)  # saved, but never trained
    (trained / "model_args.json").write_text(json.dumps({"mc_coef": 1.0, "num_candidates": 1}))
    assert not choice_head_trained(trained)  # one candidate: its loss was always 0
    assert not choice_head_trained("smollm2")
    assert not choice_head_trained(tiny_checkpoint)  # a scratch checkpoint, never fine-tuned

    assert resolve_ranking("auto", True) == "mc"
    assert resolve_ranking("auto", False) == "lm"
    assert resolve_ranking("lm", True) == "lm"
