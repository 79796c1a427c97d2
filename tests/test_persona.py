"""Persona use: the probe metrics, the ablation, and decoding that stays in character."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from personachat import ConvAIModel
from personachat.data.synthetic import generate_dialogs
from personachat.data.synthetic_slots import SLOTS
from personachat.encoding.inputs import SpecialIds
from personachat.evaluation.metrics import unigram_baseline_loss
from personachat.evaluation.persona import (
    contradicts,
    mentions,
    persona_accuracy,
    persona_hits_at_1,
    persona_scores,
    probe_items,
    stated_values,
    without_persona,
)
from personachat.evaluation.replies import decoding_label, repetition_rate
from personachat.generation.generate import (
    DecodingOptions,
    banned_ngram_tokens,
    copied_continuations,
    generate_reply,
    next_token,
    penalize_repeats_,
)
from personachat.generation.rerank import respond, score_replies
from personachat.model.loading import load_model_and_tokenizer

from .conftest import SYNTHETIC_PERSONA_CHAT

PROBED = [
    {
        "personality": ["i work as a nurse .", "i drink tea ."],
        "utterances": [
            {"history": ["hi"], "candidates": ["hello", "hey"]},
            {
                "history": ["hi", "hey", "what is your job ?"],
                "candidates": ["i am a pilot .", "i am a nurse ."],
                "probe": {"slot": "job", "value": "nurse"},
            },
            {
                "history": ["hi", "hey", "what is your job ?", "i am a nurse .", "and to drink ?"],
                "candidates": ["coffee .", "tea ."],
                "probe": {"slot": "drink", "value": "tea"},
            },
        ],
    }
]


def test_a_value_counts_only_as_whole_words():
    assert mentions("i am a Nurse .", "nurse")
    assert mentions("i live in new york !", "new york")
    assert not mentions("i am a teacher .", "tea")


def test_persona_accuracy_counts_probes_whose_reply_states_the_value():
    def copies_persona(conversations):
        return [p[0] if "job" in h[-1] else "i like coffee ." for p, h in conversations]

    assert probe_items(PROBED) == [(0, 1, "nurse"), (0, 2, "tea")]
    assert persona_accuracy(copies_persona, PROBED, silent=True) == 0.5
    assert (
        persona_accuracy(
            copies_persona, [{**PROBED[0], "utterances": PROBED[0]["utterances"][:1]}], silent=True
        )
        is None
    )


def test_persona_hits_counts_only_probe_utterances():
    index = [(0, 0, ()), (0, 1, ()), (0, 2, ())]
    assert persona_hits_at_1(PROBED, index, labels=[1, 1, 1], preds=[0, 1, 0]) == 0.5


def test_the_ablation_removes_every_persona_and_nothing_else():
    ablated = without_persona(PROBED)
    assert ablated[0]["personality"] == []
    assert ablated[0]["utterances"] == PROBED[0]["utterances"]
    assert PROBED[0]["personality"], "the input is not modified"


def test_the_ablation_does_not_probe_a_value_the_history_already_states():
    """Asked again for its job, the bot may answer from what it said: that is history, not
    persona, so without the persona such an utterance is no longer a probe."""
    asked_again = {
        "history": ["what is your job ?", "i am a nurse .", "sorry , what is your job ?"],
        "candidates": ["i am a pilot .", "i am a nurse ."],
        "probe": {"slot": "job", "value": "nurse"},
    }
    dialogs = [{**PROBED[0], "utterances": [*PROBED[0]["utterances"], asked_again]}]

    ablated = without_persona(dialogs)

    assert probe_items(dialogs) == [(0, 1, "nurse"), (0, 2, "tea"), (0, 3, "nurse")]
    assert probe_items(ablated) == [(0, 1, "nurse"), (0, 2, "tea")]
    assert ablated[0]["utterances"][3]["history"] == asked_again["history"]


def test_repetition_rate_is_the_share_of_replies_said_before():
    def same(conversations):
        return ["same thing ."] * len(conversations)

    def counting(conversations):
        return [f"reply {len(h)}" for _, h in conversations]

    assert repetition_rate(same, PROBED, silent=True) == pytest.approx(2 / 3)
    assert repetition_rate(counting, PROBED, silent=True) == 0.0


def test_banned_ngrams_are_those_already_said():
    said = [[1, 2, 3], [7, 2, 5]]
    assert banned_ngram_tokens(said, reply=[9, 2], n=2) == {3, 5}
    assert banned_ngram_tokens(said, reply=[1, 2], n=3) == {3}
    assert banned_ngram_tokens(said, reply=[], n=3) == set()


def test_repetition_penalty_lowers_only_tokens_the_bot_used():
    logits = torch.tensor([2.0, -2.0, 2.0, -2.0])
    penalize_repeats_(logits, own_turns=[[0]], reply=[1], penalty=2.0)
    assert logits.tolist() == [1.0, -4.0, 2.0, -2.0]


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    model, tokenizer = load_model_and_tokenizer("gpt2", tiny_checkpoint)
    return model, tokenizer, SpecialIds.from_tokenizer(tokenizer)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_size_means_no_ngram_appears_twice(tiny, n):
    model, tokenizer, special = tiny
    persona = [tokenizer.encode("i have a cat named tom .")]
    earlier_bot_turn = tokenizer.encode("i am a nurse , i love pizza .")
    history = [tokenizer.encode("hi"), earlier_bot_turn, tokenizer.encode("and you ?")]
    options = DecodingOptions.from_args(
        max_length=25, min_length=25, temperature=2.0, top_p=1.0, no_repeat_ngram_size=n
    )
    for seed in range(5):
        torch.manual_seed(seed)
        reply = generate_reply(model, persona, history, special, options)

        def grams(tokens):
            return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]

        new = grams(reply)
        assert len(new) == len(set(new)), f"seed {seed}: {n}-gram repeated within {reply}"
        assert not set(new) & set(grams(earlier_bot_turn)), f"seed {seed}: said before"


def test_reranking_returns_the_best_scored_of_the_samples(tiny):
    model, tokenizer, special = tiny
    persona = [tokenizer.encode("i work as a nurse .")]
    history = [tokenizer.encode("what is your job ?")]
    replies = [tokenizer.encode("i am a nurse ."), tokenizer.encode("i like cats .")]
    scores = score_replies(model, persona, history, replies, special, max_history=2)
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores)

    options = DecodingOptions.from_args(max_length=8, rerank_samples=4, temperature=1.5)
    torch.manual_seed(0)
    best = respond(model, persona, history, special, options)
    torch.manual_seed(0)
    samples = [
        tuple(
            generate_reply(
                model,
                persona,
                history,
                special,
                DecodingOptions.from_args(max_length=8, temperature=1.5),
            )
        )
        for _ in range(4)
    ]
    unique = list(dict.fromkeys(samples))
    expected = unique[
        max(
            range(len(unique)),
            key=score_replies(model, persona, history, unique, special, 2).__getitem__,
        )
    ]
    assert tuple(best) == expected


def test_eval_model_reports_persona_metrics_and_the_ablation(tiny_checkpoint, tmp_path):
    data = tmp_path / "probes.json"
    import json

    data.write_text(json.dumps(generate_dialogs(6, split="valid", num_candidates=2, seed=3)))
    model = ConvAIModel(
        "gpt2", tiny_checkpoint, use_cuda=False, args={"output_dir": str(tmp_path), "max_length": 8}
    )
    results = model.eval_model(data, verbose=False, repetition_rate=True)
    ablated = model.eval_model(data, verbose=False, ablate_persona=True)
    for key in ("persona_accuracy", "persona_hits@1", "repetition_rate"):
        assert 0.0 <= results[key] <= 1.0
    assert ablated["language_model_loss"] != results["language_model_loss"]


def test_batched_replies_equal_replies_decoded_one_at_a_time(tiny):
    model, tokenizer, special = tiny
    conversations = [
        ([tokenizer.encode("i have a cat .")], [tokenizer.encode("hi")]),
        (
            [tokenizer.encode("i work as a nurse ."), tokenizer.encode("i love pizza .")],
            [
                tokenizer.encode("hi , what do you do ?"),
                tokenizer.encode("i am a nurse ."),
                tokenizer.encode("any pets ?"),
            ],
        ),
        ([tokenizer.encode("i drink tea .")], [tokenizer.encode("what do you drink ?")]),
    ]
    from personachat.generation.generate import generate_replies

    options = DecodingOptions.from_args(max_length=12, do_sample=False, no_repeat_ngram_size=2)
    batched = generate_replies(model, conversations, special, options)
    alone = [generate_reply(model, p, h, special, options) for p, h in conversations]
    assert batched == alone


def test_unigram_baseline_is_the_smoothed_cross_entropy_of_gold_reply_tokens():
    """Train gold tokens [1, 1, 2, <eos>=9] x2; eval gold [1, 9]; add-one over 10 types."""

    def example(tokens):
        return {
            "candidates": [
                {"lm_labels": [-100, 5]},  # a distractor's labels never count
                {"lm_labels": [-100, -100, *tokens]},
            ]
        }

    train = [example([1, 1, 2, 9]), example([1, 1, 2, 9])]
    total = 8 + 10
    expected = -(math.log((4 + 1) / total) + math.log((2 + 1) / total)) / 2
    assert unigram_baseline_loss(train, [example([1, 9])], vocab_size=10) == pytest.approx(expected)


@pytest.mark.skipif(not SYNTHETIC_PERSONA_CHAT.is_file(), reason="../shared/data is absent")
def test_on_real_dialogs_a_small_model_beats_the_unigram_baseline(tmp_path):
    """Synthetic-Persona-Chat (real conversations): a tiny model trained briefly from scratch
    must beat the context-free unigram LM loss on held-out conversations (the bigger run with
    hits@1 against chance is benchmarks/real_data_check.py)."""
    import json

    from personachat.data.candidates import add_distractors
    from personachat.data.readers import read_dialogs
    from personachat.model.scratch import ScratchConfig, build_scratch_checkpoint, dialog_texts

    dialogs = read_dialogs(SYNTHETIC_PERSONA_CHAT)
    train, _ = add_distractors(dialogs[:120], 2, seed=0)
    valid, _ = add_distractors(dialogs[1800:1840], 2, seed=1)
    for name, data in (("train", train), ("valid", valid)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data), encoding="utf-8")
    folder = build_scratch_checkpoint(
        tmp_path / "m",
        dialog_texts(train),
        ScratchConfig(vocab_size=600, n_layer=2, n_embd=64, n_head=2, n_positions=256),
    )
    bot = ConvAIModel(
        "gpt2",
        folder,
        use_cuda=False,
        args={
            "output_dir": str(tmp_path / "out"),
            "num_train_epochs": 1,
            "train_batch_size": 16,
            "num_candidates": 2,
            "learning_rate": 3e-3,
            "silent": True,
            "save_steps": 0,
            "save_model_every_epoch": False,
            "cache_dir": str(tmp_path / "cache"),
        },
    )
    bot.train_model(str(tmp_path / "train.json"), show_running_loss=False)
    results = bot.eval_model(
        str(tmp_path / "valid.json"), output_dir=str(tmp_path / "ev"), verbose=False, silent=True
    )
    baseline = unigram_baseline_loss(
        bot._dataset(train, "train"), bot._dataset(valid, "valid"), len(bot.tokenizer)
    )
    assert results["language_model_loss"] < baseline - 0.5


# --- contradiction: a reply that states another value of the probed slot -------------------


def test_a_reply_naming_another_value_of_the_slot_contradicts_the_persona():
    jobs = SLOTS["job"].values
    assert contradicts("i am a pilot , i love my job .", "nurse", jobs)
    assert not contradicts("i am a nurse , i love my job .", "nurse", jobs)
    assert not contradicts("i like pizza .", "nurse", jobs)  # dodging is not contradicting
    family = SLOTS["family"].values
    assert contradicts("i have two older brothers .", "two brothers", family)
    assert not contradicts("i have two older brothers .", "two older brothers", family)
    # A value inside a longer stated one is not stated on its own, either way round.
    drinks = ["orange", "orange juice", "tea"]
    assert stated_values("i drink orange juice .", drinks) == {"orange juice"}
    assert not contradicts("i drink orange juice .", "orange juice", drinks)
    assert contradicts("i drink orange juice .", "orange", drinks)


def test_contradiction_rate_counts_probe_replies_stating_another_value():
    def copies_job_but_says_coffee(conversations):
        return [p[0] if "job" in h[-1] else "i like coffee ." for p, h in conversations]

    # Job probe: "i work as a nurse ." states the value; drink probe: coffee, not tea.
    assert persona_scores(copies_job_but_says_coffee, PROBED, silent=True) == {
        "persona_accuracy": 0.5,
        "persona_contradiction_rate": 0.5,
    }
    unknown_slot = [
        {
            **PROBED[0],
            "utterances": [
                {**u, "probe": {"slot": "mood", "value": "happy"}} if "probe" in u else u
                for u in PROBED[0]["utterances"]
            ],
        }
    ]
    scores = persona_scores(copies_job_but_says_coffee, unknown_slot, silent=True)
    assert scores["persona_contradiction_rate"] is None  # no slot table to compare with
    assert persona_scores(copies_job_but_says_coffee, without_probes(PROBED), silent=True) == {
        "persona_accuracy": None,
        "persona_contradiction_rate": None,
    }


def without_probes(dialogs):
    return [
        {**d, "utterances": [{k: v for k, v in u.items() if k != "probe"} for u in d["utterances"]]}
        for d in dialogs
    ]


def test_decoding_label_names_greedy_or_the_sampling_settings():
    assert decoding_label(DecodingOptions.from_args(do_sample=False)) == "greedy"
    assert (
        decoding_label(
            DecodingOptions.from_args(do_sample=True, top_k=0, top_p=0.9, temperature=0.7)
        )
        == "top_k=0,top_p=0.9,temperature=0.7"
    )
    assert (
        decoding_label(DecodingOptions.from_args(do_sample=False, repetition_penalty=1.2))
        == "greedy,repetition_penalty=1.2"
    )
    # best of 4 samples: sampled replies, whatever do_sample says
    assert (
        decoding_label(
            DecodingOptions.from_args(
                do_sample=False, rerank_samples=4, top_k=0, top_p=0.9, temperature=0.7
            )
        )
        == "top_k=0,top_p=0.9,temperature=0.7,rerank_samples=4"
    )


def test_a_reply_copying_an_earlier_one_from_its_start_is_what_gets_penalised():
    earlier = [[5, 6, 7], [5, 9]]
    assert copied_continuations(earlier, reply=[5], enders={0}) == set()  # one token: free
    assert copied_continuations(earlier, reply=[5, 6], enders={0}) == {7}
    assert copied_continuations(earlier, reply=[5, 9], enders={0}) == {0}  # a whole copy
    assert copied_continuations(earlier, reply=[6, 7], enders={0}) == set()  # not its start


def test_repeat_reply_penalty_steers_off_a_copy_of_an_earlier_reply():
    options = DecodingOptions.from_args(do_sample=False, repeat_reply_penalty=2.0)
    plain = replace(options, repeat_reply_penalty=1.0)
    earlier = [[5, 6, 7]]
    logits = torch.zeros(10)
    logits[7], logits[8] = 10.0, 9.0  # going on copying [5, 6, 7] is the favourite
    assert next_token(logits, [5, 6], earlier, plain) == 7
    assert next_token(logits, [5, 6], earlier, options) == 8
    assert next_token(logits, [4, 6], earlier, options) == 7  # not a copy: untouched
    ending = torch.zeros(10)
    ending[0], ending[3] = 10.0, 9.0  # 0 ends the reply: [5, 6, 7] would be said again
    assert next_token(ending, [5, 6, 7], earlier, options, enders={0}) == 3


def test_repeat_reply_penalty_leaves_other_replies_alone(tiny):
    model, tokenizer, special = tiny
    persona = [tokenizer.encode("i have a cat named tom .")]
    history = [tokenizer.encode("hi"), tokenizer.encode("zebra quartz ."), tokenizer.encode("ok")]
    options = DecodingOptions.from_args(do_sample=False, max_length=8, min_length=8)
    controlled = replace(options, repeat_reply_penalty=1e6)
    reply = generate_reply(model, persona, history, special, options)
    assert reply[:2] != history[1][:2]
    assert generate_reply(model, persona, history, special, controlled) == reply
