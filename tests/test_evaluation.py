"""Evaluation metrics (personachat.evaluation) and the TransferTransfo loss they report
(personachat.model.heads.double_heads_loss)."""

from __future__ import annotations

import math

import pytest
import torch

from personachat.encoding.dataset import collate, dataset_from_dialogs
from personachat.encoding.inputs import SpecialIds
from personachat.evaluation import metrics as evaluation
from personachat.evaluation.metrics import (
    evaluate_batches,
    evaluation_sums,
    format_results,
    macro_f1,
    merge_sums,
    metrics_from_sums,
    normalize_answer,
    word_f1,
)
from personachat.evaluation.replies import generation_f1
from personachat.model.heads import LossOutput, double_heads_loss
from personachat.model.loading import load_model_and_tokenizer

from .conftest import make_dialogs

# --- macro_f1: simpletransformers' f1_score on the multiple-choice predictions ---------------


def test_macro_f1_of_perfect_predictions_is_1():
    assert macro_f1([1, 1, 0, 1], [1, 1, 0, 1]) == 1.0
    assert macro_f1([1, 1, 1], [1, 1, 1]) == 1.0


def test_macro_f1_averages_over_every_class_seen_in_labels_or_predictions():
    # Class 1: tp=3, fp=0, fn=1 -> F1 = 6/7. Class 0 is only predicted, never right -> 0.
    assert macro_f1([1, 1, 1, 1], [1, 0, 1, 1]) == pytest.approx(3 / 7)


def test_macro_f1_by_hand_with_three_classes():
    labels = [0, 0, 1, 2, 2, 2]
    preds = [0, 1, 1, 2, 2, 0]
    # class 0: tp=1 fp=1 fn=1 -> 2/4; class 1: tp=1 fp=1 fn=0 -> 2/3; class 2: tp=2 fp=0 fn=1
    # -> 4/5.
    assert macro_f1(labels, preds) == pytest.approx((1 / 2 + 2 / 3 + 4 / 5) / 3)


def test_macro_f1_of_nothing_is_0_and_of_all_wrong_is_0():
    assert macro_f1([], []) == 0.0
    assert macro_f1([1, 1], [0, 0]) == 0.0


# --- word_f1: the ConvAI2 F1 of a generated reply --------------------------------------------


def test_word_f1_ignores_case_punctuation_and_articles():
    assert normalize_answer("The  cat, an apple!") == "cat apple"
    assert word_f1("The cat!", "a cat") == 1.0


def test_word_f1_splits_words_at_punctuation_like_parlai():
    assert normalize_answer("i'm a nurse,and you?") == "i m nurse and you"
    # ParlAI: [i, m, nurse] vs [i, am, nurse] -> 2 common, P = R = 2/3, F1 = 2/3.
    assert word_f1("i'm a nurse", "i am a nurse") == pytest.approx(2 / 3)


def test_word_f1_of_disjoint_replies_is_0():
    assert word_f1("i like dogs", "she hates cats") == 0.0
    assert word_f1("the a an", "the") == 0.0  # nothing left after normalisation


def test_word_f1_by_hand():
    # prediction {i, love, my, cat}, gold {i, love, pizza}: 2 common.
    # precision 2/4, recall 2/3 -> F1 = 2 * (1/2) * (2/3) / (1/2 + 2/3) = 4/7.
    assert word_f1("I love my cat.", "i love pizza") == pytest.approx(4 / 7)


def test_word_f1_counts_repeated_words_only_as_often_as_the_gold_has_them():
    # common = min(3, 1) = 1: precision 1/3, recall 1/1 -> F1 = 1/2.
    assert word_f1("cat cat cat", "cat") == pytest.approx(0.5)


def test_generation_f1_is_the_mean_over_utterances():
    dialogs = [
        {
            "personality": ["p"],
            "utterances": [
                {"history": ["h1"], "candidates": ["x", "i like cats"]},
                {"history": ["h2"], "candidates": ["x", "dogs"]},
            ],
        }
    ]
    asked = []

    def replies_fn(conversations):
        asked.extend(conversations)
        return ["i like cats"] * len(conversations)

    score = generation_f1(replies_fn, dialogs, silent=True)

    assert score == pytest.approx((1.0 + 0.0) / 2)
    assert asked == [(["p"], ["h1"]), (["p"], ["h2"])]
    assert generation_f1(replies_fn, dialogs, limit=1, silent=True) == 1.0


def test_format_results_is_simpletransformers_eval_results_txt():
    assert format_results({"f1_score": 0.5, "eval_loss": 1.25}) == (
        "eval_loss = 1.25\nf1_score = 0.5\n"
    )


# --- the loss: same numbers as transformers' GPT2DoubleHeadsModel ----------------------------


@pytest.fixture(scope="module")
def model_and_examples(tiny_checkpoint):
    model, tokenizer = load_model_and_tokenizer("gpt2", tiny_checkpoint)
    model.eval()
    special = SpecialIds.from_tokenizer(tokenizer)
    dataset = dataset_from_dialogs(
        make_dialogs(4), tokenizer, special, num_candidates=2, max_history=2, max_tokens=128
    )
    return model, special, [dataset[i] for i in range(len(dataset))]


def test_double_heads_loss_equals_the_full_gpt2_double_heads_computation(model_and_examples):
    model, special, examples = model_and_examples
    batch = collate(examples, special.pad)

    with torch.no_grad():
        ours = double_heads_loss(model, batch, lm_coef=2.0, mc_coef=1.0)
        full = model(
            batch["input_ids"],
            token_type_ids=batch["token_type_ids"],
            mc_token_ids=batch["mc_token_ids"],
            labels=batch["lm_labels"],
            mc_labels=batch["mc_labels"],
        )

    torch.testing.assert_close(ours.lm_loss, full.loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.mc_loss, full.mc_loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.loss, 2.0 * full.loss + full.mc_loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.mc_logits, full.mc_logits, atol=1e-5, rtol=0)
    assert ours.lm_tokens == int((batch["lm_labels"] != -100).sum())
    torch.testing.assert_close(ours.lm_loss_sum, full.loss * ours.lm_tokens, atol=1e-3, rtol=0)


def test_double_heads_loss_backpropagates_into_both_heads(model_and_examples):
    model, special, examples = model_and_examples
    model.zero_grad()

    double_heads_loss(model, collate(examples[:2], special.pad), 2.0, 1.0).loss.backward()

    assert model.multiple_choice_head.summary.weight.grad.abs().sum() > 0
    assert model.transformer.wte.weight.grad.abs().sum() > 0  # tied with the LM head
    model.zero_grad()


# --- evaluate_batches: whole-set metrics, not averages of per-batch values -------------------


def test_evaluate_batches_weights_lm_loss_by_tokens_not_batches(model_and_examples):
    model, special, examples = model_and_examples
    # Batches of 1 and 7 examples: different label counts, so a plain mean of the two
    # per-batch losses would give the single example far too much weight.
    small, large = collate(examples[:1], special.pad), collate(examples[1:], special.pad)
    assert int((small["lm_labels"] != -100).sum()) < int((large["lm_labels"] != -100).sum())

    results = evaluate_batches(
        model, [small, large], lm_coef=2.0, mc_coef=1.0, device=torch.device("cpu"), silent=True
    )

    with torch.no_grad():
        everything = double_heads_loss(model, collate(examples, special.pad), 2.0, 1.0)
        per_batch = [double_heads_loss(model, b, 2.0, 1.0) for b in (small, large)]
    mean_of_batches = sum(float(out.lm_loss) for out in per_batch) / 2
    assert abs(mean_of_batches - float(everything.lm_loss)) > 1e-4  # the test can tell them apart
    assert results["language_model_loss"] == pytest.approx(float(everything.lm_loss), abs=1e-5)
    assert results["mc_loss"] == pytest.approx(float(everything.mc_loss), abs=1e-5)
    assert results["perplexity"] == pytest.approx(math.exp(results["language_model_loss"]))
    assert results["eval_loss"] == pytest.approx(
        2.0 * results["language_model_loss"] + results["mc_loss"]
    )
    assert results["num_examples"] == len(examples)


def test_evaluate_batches_pools_predictions_before_scoring(model_and_examples):
    model, special, examples = model_and_examples
    batches = [collate(examples[i : i + 3], special.pad) for i in range(0, len(examples), 3)]

    results = evaluate_batches(model, batches, 2.0, 1.0, torch.device("cpu"), silent=True)

    with torch.no_grad():
        everything = double_heads_loss(model, collate(examples, special.pad), 2.0, 1.0)
    preds = everything.mc_logits.argmax(dim=-1).tolist()
    labels = [ex["mc_label"] for ex in examples]
    assert results["_labels"] == labels
    assert results["_preds"] == preds
    assert results["f1_score"] == pytest.approx(macro_f1(labels, preds))
    assert results["hits@1"] == pytest.approx(
        sum(y == p for y, p in zip(labels, preds, strict=True)) / len(examples)
    )


def _fake_loss(lm_sum: float, lm_tokens: int, mc_loss: float, mc_preds: list[int]):
    mc_logits = torch.zeros(len(mc_preds), 2)
    mc_logits[range(len(mc_preds)), mc_preds] = 1.0
    return LossOutput(
        loss=torch.tensor(0.0),
        lm_loss=torch.tensor(lm_sum / lm_tokens),
        mc_loss=torch.tensor(mc_loss),
        lm_loss_sum=torch.tensor(lm_sum),
        lm_tokens=lm_tokens,
        mc_logits=mc_logits,
    )


def test_evaluate_batches_arithmetic_with_known_batch_losses(monkeypatch):
    # Batch A: 1 example, 2 labelled tokens, LM loss 1.0 each, MC loss 0.5.
    # Batch B: 3 examples, 8 labelled tokens, LM loss 3.0 each, MC loss 1.5.
    outputs = iter([_fake_loss(2.0, 2, 0.5, [1]), _fake_loss(24.0, 8, 1.5, [1, 0, 1])])
    monkeypatch.setattr(evaluation, "double_heads_loss", lambda *args: next(outputs))
    batches = [{"mc_labels": torch.tensor([1])}, {"mc_labels": torch.tensor([1, 1, 1])}]

    results = evaluate_batches(
        torch.nn.Identity(),
        batches,
        lm_coef=2.0,
        mc_coef=1.0,
        device=torch.device("cpu"),
        silent=True,
    )

    assert results["language_model_loss"] == pytest.approx(26.0 / 10)  # not (1 + 3) / 2
    assert results["mc_loss"] == pytest.approx((0.5 * 1 + 1.5 * 3) / 4)  # not (0.5 + 1.5) / 2
    assert results["eval_loss"] == pytest.approx(2.0 * 2.6 + 1.25)
    assert results["hits@1"] == pytest.approx(3 / 4)
    assert results["f1_score"] == pytest.approx(3 / 7)  # macro_f1([1, 1, 1, 1], [1, 1, 0, 1])


def test_evaluate_batches_refuses_an_empty_set(model_and_examples):
    model, _, _ = model_and_examples

    with pytest.raises(ValueError, match="no utterances"):
        evaluate_batches(model, [], 2.0, 1.0, torch.device("cpu"), silent=True)


def test_shares_evaluated_apart_add_up_to_the_whole_evaluation(model_and_examples):
    # What torchrun ranks do during training: each takes every second example.
    model, special, examples = model_and_examples
    cpu = torch.device("cpu")
    whole = evaluate_batches(model, [collate(examples, special.pad)], 2.0, 1.0, cpu, silent=True)
    shares = []
    for rank in range(2):
        indexes = list(range(rank, len(examples), 2))
        batches = [collate([examples[i] for i in indexes], special.pad)]
        shares.append((indexes, evaluation_sums(model, batches, 2.0, 1.0, cpu, silent=True)))

    merged = metrics_from_sums(merge_sums(shares, len(examples)), 2.0, 1.0)

    assert merged["_labels"] == whole["_labels"] and merged["_preds"] == whole["_preds"]
    assert merged["num_examples"] == len(examples)
    for key in ("language_model_loss", "mc_loss", "eval_loss", "f1_score", "hits@1"):
        assert merged[key] == pytest.approx(whole[key], abs=1e-5), key


# --- figures the field reports: hits@1 over 20 candidates, perplexity per word --------------


def test_word_perplexity_of_two_replies_by_hand():
    # Gold replies "I like the cats." (i like cats: 3 words, "the" is an article) and
    # "Hello, world!" (hello world: 2 words); 10 nats over their 8 tokens in all.
    dialogs = [
        {
            "personality": ["p"],
            "utterances": [
                {"history": ["h"], "candidates": ["x", "I like the cats."]},
                {"history": ["h"], "candidates": ["x", "Hello, world!"]},
            ],
        }
    ]
    index = [(0, 0, ()), (0, 1, ())]
    sums = {
        "lm_sum": 10.0,
        "lm_tokens": 8,
        "mc_sum": 0.0,
        "n_examples": 2,
        "labels": [1, 1],
        "preds": [1, 1],
    }

    words = evaluation.reply_word_count(dialogs, index)
    results = metrics_from_sums(sums, 2.0, 1.0, reply_words=words)

    assert words == 5
    assert results["word_perplexity"] == pytest.approx(math.exp(10.0 / 5))
    assert results["perplexity"] == pytest.approx(math.exp(10.0 / 8))
    # An utterance evaluated twice (two persona orders) counts its words twice.
    assert evaluation.reply_word_count(dialogs, [*index, (0, 1, (1, 0))]) == 7
    assert "word_perplexity" not in metrics_from_sums(sums, 2.0, 1.0)


def _ranking_loss(gold_ranks: list[int], candidates: int = 20):
    """MC logits over ``candidates`` where the gold (last) candidate is ranked as given
    (1: best) and the others score 0, 1, 2, ... in order."""
    logits = torch.zeros(len(gold_ranks), candidates)
    for row, rank in enumerate(gold_ranks):
        others = torch.arange(candidates - 1, dtype=torch.float)  # 0 .. 18
        gold = float(candidates - 1 - rank) + 0.5  # above candidates - rank others
        logits[row, :-1] = others
        logits[row, -1] = gold
    out = _fake_loss(1.0, 1, 0.0, [0] * len(gold_ranks))
    return LossOutput(out.loss, out.lm_loss, out.mc_loss, out.lm_loss_sum, 1, logits)


def test_hits_at_1_over_20_candidates_with_a_known_ranking(monkeypatch):
    # The gold reply (index 19) is ranked 1st, 2nd, 1st, 20th, 3rd: hits@1 = 2/5.
    monkeypatch.setattr(
        evaluation, "double_heads_loss", lambda *args: _ranking_loss([1, 2, 1, 20, 3])
    )
    batch = {"mc_labels": torch.full((5,), 19)}

    results = evaluate_batches(
        torch.nn.Identity(), [batch], 2.0, 1.0, torch.device("cpu"), silent=True
    )

    assert results["_preds"] == [19, 18, 19, 18, 18]
    assert results["hits@1"] == pytest.approx(2 / 5)
    assert evaluation.hits_at_1([19] * 5, results["_preds"]) == pytest.approx(2 / 5)


def test_eval_num_candidates_defaults_to_every_candidate_the_data_has():
    twenty = [{"personality": ["p"], "utterances": [{"history": [], "candidates": ["c"] * 20}]}]

    assert evaluation.eval_num_candidates(twenty, None, "valid.json") == 20
    assert evaluation.eval_num_candidates(twenty, 5, "valid.json") == 5
    with pytest.raises(evaluation.EncodingError) as err:
        evaluation.eval_num_candidates(twenty, 25, "valid.json")
    assert str(err.value).startswith(
        "valid.json: eval_num_candidates=25 but every utterance has 20 candidates"
    )
    assert "\n" not in str(err.value)
    mixed = [
        {
            **twenty[0],
            "utterances": [*twenty[0]["utterances"], {"history": [], "candidates": ["c"] * 4}],
        }
    ]
    assert evaluation.eval_num_candidates(mixed, None, "v") == 4
    with pytest.raises(evaluation.EncodingError, match="4 to 20 candidates .dialog 0, utterance 1"):
        evaluation.eval_num_candidates(mixed, 5, "v")


def test_scoring_candidates_in_chunks_gives_the_same_sums(model_and_examples):
    model, special, examples = model_and_examples
    batch = collate(examples, special.pad)  # 8 examples x 2 candidates
    cpu = torch.device("cpu")

    parts = evaluation.split_batch(batch, max_sequences=5)  # 2 examples (4 inputs) a part
    chunked = evaluation_sums(model, [batch], 2.0, 1.0, cpu, silent=True, max_sequences=5)
    whole = evaluation_sums(model, [batch], 2.0, 1.0, cpu, silent=True, max_sequences=None)

    assert [p["input_ids"].shape[0] for p in parts] == [2, 2, 2, 2]
    assert chunked["preds"] == whole["preds"] and chunked["labels"] == whole["labels"]
    assert chunked["lm_tokens"] == whole["lm_tokens"]
    assert chunked["lm_sum"] == pytest.approx(whole["lm_sum"], rel=1e-5)
    assert chunked["mc_sum"] == pytest.approx(whole["mc_sum"], rel=1e-5)
