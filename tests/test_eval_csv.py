"""Evaluation on real conversations: ``personachat eval --eval-file conversations.csv`` (a
Synthetic-Persona-Chat CSV, written here) reports ConvAI2's triple beside persona accuracy,
history recall and the repetition rates."""

from __future__ import annotations

import csv
import json

import pytest

from personachat import ConvAIModel
from personachat.cli import main
from personachat.evaluation.persona import history_recall, persona_scores
from personachat.evaluation.ranking import with_candidates_to_rank
from personachat.evaluation.replies import repetition_rates

TOPICS = ["dogs", "jazz", "hiking", "cooking", "chess", "the sea", "trains", "tea"]


def conversation(i: int) -> str:
    a, b = TOPICS[i % len(TOPICS)], TOPICS[(i + 3) % len(TOPICS)]
    lines = [
        f"User 1: Hi! I am number {i} and I like {a}.",
        f"User 2: Hello number {i}, I prefer {b} myself.",
        f"User 1: Why {b} and not {a}, friend {i}?",
        f"User 2: {b.capitalize()} calms me down after work {i}.",
        f"User 1: That makes sense, {a} does the same for me {i}.",
        f"User 2: Nice talking to you, number {i}!",
    ]
    return "\n".join(lines)


@pytest.fixture()
def conversations_csv(tmp_path):
    """Six conversations in Synthetic-Persona-Chat's CSV columns: twelve dialogs."""
    path = tmp_path / "conversations.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["user 1 personas", "user 2 personas", "Best Generated Conversation"])
        for i in range(6):
            writer.writerow(
                [f"I like {TOPICS[i]}.\nI am {20 + i}.", "I work a lot.", conversation(i)]
            )
    return path


def test_a_file_of_conversations_is_ranked_among_20_candidates_sampled_the_same_way_each_time(
    tiny_checkpoint, conversations_csv, tmp_path
):
    bot = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args={"silent": True})

    first = bot.eval_model(conversations_csv, output_dir=tmp_path / "a", verbose=False)
    again = bot.eval_model(conversations_csv, output_dir=tmp_path / "b", verbose=False)

    assert first["eval_num_candidates"] == 20 and first["ranking"] == "lm"
    assert first["hits@1"] == again["hits@1"]  # the same distractors, the same ranking
    assert 0 < first["word_perplexity"] < float("inf")


def test_a_tiny_file_ranks_among_what_it_has_and_a_file_with_candidates_keeps_them():
    dialogs = [
        {"personality": ["p ."], "utterances": [{"history": ["hi"], "candidates": [f"reply {i}"]}]}
        for i in range(4)
    ]
    assert [
        len(u["candidates"])
        for d in with_candidates_to_rank(dialogs, None)
        for u in d["utterances"]
    ] == [4] * 4
    assert with_candidates_to_rank(dialogs, 1) == dialogs
    ranked = [
        {**d, "utterances": [{**u, "candidates": ["x", *u["candidates"]]} for u in d["utterances"]]}
        for d in dialogs
    ]
    assert with_candidates_to_rank(ranked, None) == ranked


def test_personachat_eval_prints_the_convai2_triple_and_writes_it(
    tiny_checkpoint, conversations_csv, tmp_path, capsys
):
    out = tmp_path / "results"
    code = main(
        [
            "eval",
            "--model",
            str(tiny_checkpoint),
            "--model-type",
            "gpt2",
            "--eval-file",
            str(conversations_csv),
            "--output-dir",
            str(out),
            "--generation-f1",
            "--repetition",
            "--candidates",
            "5",
            "--max-eval-examples",
            "4",
            "--set",
            "max_length=6",
        ]
    )

    printed = capsys.readouterr().out
    assert code == 0
    for label in (
        "perplexity per word",
        "hits@1 among 5 (language model)",
        "generation F1 (greedy)",
        "replies repeating an earlier one",
        "replies repeating the previous one",
    ):
        assert label in printed
    saved = json.loads((out / "eval_results.json").read_text(encoding="utf-8"))
    assert saved["eval_num_candidates"] == 5
    assert {"word_perplexity", "hits@1", "generation_f1", "repeat_previous_rate"} <= set(saved)
    # Four dialogs (two conversations): User 1 answers twice (its opening answers nothing),
    # User 2 three times.
    assert saved["num_examples"] == 2 * (2 + 3)


def test_persona_accuracy_counts_persona_probes_and_history_recall_the_others():
    dialogs = [
        {
            "personality": ["i work as a nurse ."],
            "utterances": [
                {
                    "history": ["what do you do ?"],
                    "candidates": ["i am a nurse ."],
                    "probe": {"slot": "job", "value": "nurse"},
                },
                {
                    "history": [
                        "what do you do ?",
                        "i am a nurse .",
                        "my dog is rex .",
                        "ok",
                        "my dog's name ?",
                    ],
                    "candidates": ["rex ."],
                    "probe": {"slot": "pet_name", "value": "rex", "from": "history"},
                },
            ],
        }
    ]

    def always_the_job(conversations):
        return ["i am a nurse ."] * len(conversations)

    def echoes_the_history(conversations):
        return [" ".join(history) for _, history in conversations]

    assert persona_scores(always_the_job, dialogs, silent=True)["persona_accuracy"] == 1.0
    assert history_recall(always_the_job, dialogs, silent=True) == 0.0
    assert history_recall(echoes_the_history, dialogs, silent=True) == 1.0
    assert (
        history_recall(always_the_job, [{**dialogs[0], "utterances": dialogs[0]["utterances"][:1]}])
        is None
    )


def test_repeat_previous_rate_counts_replies_equal_to_the_bot_s_last_one():
    dialog = {
        "personality": ["i like tea ."],
        "utterances": [{"history": [f"message {i}"], "candidates": ["ok"]} for i in range(4)],
    }
    replies = iter(["I like tea.", "i like tea !", "Cats are nice.", "I like tea"])

    def scripted(conversations):
        return [next(replies) for _ in conversations]

    rates = repetition_rates(scripted, [dialog], silent=True)

    assert rates["repetition_rate"] == pytest.approx(2 / 4)  # turns 2 and 4 repeat turn 1
    assert rates["repeat_previous_rate"] == pytest.approx(1 / 3)  # only turn 2 repeats turn 1
