"""The main job's shape on a tiny model: a config that trains on a *mix* of files and reports
the figures real conversations are judged by, before and after fine-tuning, then a demo chat
that leans on the history."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from personachat.cli_reports import DEMO_MESSAGES

from .conftest import make_dialogs

CONVERSATIONS = [
    (
        ["I work as a nurse.", "I have a cat."],
        ["I love pizza.", "I live in Lisbon."],
        [
            "User 1: Hi! What do you do?",
            "User 2: I teach kids. And you?",
            "User 1: I am a nurse at the city hospital.",
            "User 2: That must be hard work.",
            "User 1: It is, but my cat keeps me sane.",
        ],
    ),
    (
        ["I play the piano.", "I am a baker."],
        ["I have two dogs.", "I like hiking."],
        [
            "User 1: Hello there, how are you?",
            "User 2: Great, just back from a hike with my dogs.",
            "User 1: Nice, I was baking bread all morning.",
            "User 2: What kind of bread?",
            "User 1: Sourdough, my favourite.",
        ],
    ),
    (
        ["I drive a truck.", "I like country music."],
        ["I am a student.", "I drink lots of coffee."],
        [
            "User 1: Morning! Long drive ahead of me today.",
            "User 2: Where are you driving to?",
            "User 1: Texas, with country music all the way.",
            "User 2: I would need a lot of coffee for that.",
        ],
    ),
]


def write_conversations(path: Path) -> Path:
    """A Synthetic-Persona-Chat-shaped CSV of the conversations above."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["user 1 personas", "user 2 personas", "Best Generated Conversation"])
        for one, two, lines in CONVERSATIONS:
            writer.writerow(["\n".join(one), "\n".join(two), "\n".join(lines)])
    return path


@pytest.fixture(scope="module")
def main_job(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("main_job")
    dialogs = root / "dialogs.json"
    dialogs.write_text(json.dumps(make_dialogs()), encoding="utf-8")
    conversations = write_conversations(root / "conversations.csv")
    config = {
        "model_name": str(tiny_checkpoint),
        "train_mix": {str(dialogs): 8, str(conversations): None},
        "eval_file": str(dialogs),
        "zero_shot": True,
        "persona_only": True,
        "conversation_eval": {"file": str(conversations), "dialogs": 4, "candidates": 4},
        "args": {
            "output_dir": str(root / "out"),
            "cache_dir": str(root / "cache"),
            "num_train_epochs": 1,
            "train_batch_size": 4,
            "save_model_every_epoch": False,
            "max_length": 5,
            "max_eval_examples": 4,
        },
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "personachat.cli", "train", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return done, root


def test_the_job_trains_on_the_mix_it_names(main_job):
    done, root = main_job
    mixes = list((root / "cache" / "mixes").glob("mix-*.json"))
    assert len(mixes) == 1
    mix = json.loads(mixes[0].read_text(encoding="utf-8"))
    assert len(mix) == 8 + 2 * len(CONVERSATIONS)  # two dialogs per CSV conversation
    assert f"Training mix: {len(mix)} dialogs from 2 files" in done.stdout


def test_real_conversations_are_reported_zero_shot_and_fine_tuned(main_job):
    done, root = main_job
    table = done.stdout[done.stdout.index("Real conversations") :]
    for figure in ("perplexity per word", "hits@1 among 4", "generation F1", "previous one"):
        row = next(line for line in table.splitlines() if figure in line)
        cells = [c.strip() for c in row.split("|")[2:4]]
        assert all(float(c) >= 0 for c in cells), row  # both columns measured
    saved = json.loads((root / "out" / "eval_conversations" / "eval_results.json").read_text())
    assert saved["eval_num_candidates"] == 4 and "hits@1" in saved


def test_the_demo_chat_keeps_the_whole_conversation(main_job):
    done, _ = main_job
    demo = done.stdout[done.stdout.index("Persona:") :]
    assert demo.count("  bot:  ") == len(DEMO_MESSAGES)
    assert "user: Sorry, what was my dog's name again?" in demo
