"""ConvAIModel end to end, the way simpletransformers users call it (only the import changed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from personachat import ConvAIArgs, ConvAIModel
from personachat.model.loading import ModelLoadError
from personachat.train.errors import TrainingError

from .conftest import PERSONA

QUICK_ARGS = {
    "num_train_epochs": 2,
    "train_batch_size": 4,
    "learning_rate": 5e-3,
    "manual_seed": 7,
    "silent": True,
    "save_model_every_epoch": False,
}


def test_notebook_code_runs_with_only_the_import_changed(
    tiny_checkpoint, dialogs_file, tmp_path, monkeypatch, capsys
):
    # The classic notebook, verbatim but for the import, a local model and use_cuda=False.
    train_args = {
        "overwrite_output_dir": True,
        "num_train_epochs": 1,
        "train_batch_size": 4,
        "output_dir": str(tmp_path / "outputs"),
        "best_model_dir": str(tmp_path / "outputs" / "best_model"),
        "save_model_every_epoch": False,
    }
    model = ConvAIModel("gpt2", str(tiny_checkpoint), use_cuda=False, args=train_args)
    model.train_model(str(dialogs_file))
    result = model.eval_model(str(dialogs_file))
    assert {"language_model_loss", "f1_score"} <= set(result)

    monkeypatch.setattr("builtins.input", _scripted_input(["hi , what do you do ?"]))
    model.interact(personality=["i work as a nurse .", "i have a cat ."])
    printed = capsys.readouterr().out
    assert "Traceback" not in printed


def _scripted_input(lines):
    """input() that answers with lines, then raises EOFError like a closed terminal."""
    queue = list(lines)

    def fake_input(prompt=""):
        if not queue:
            raise EOFError
        return queue.pop(0)

    return fake_input


def test_train_eval_save_reload_reply(tiny_checkpoint, dialogs_file, tmp_path):
    out = tmp_path / "run"
    model = ConvAIModel(
        "gpt2", tiny_checkpoint, use_cuda=False, args={**QUICK_ARGS, "output_dir": str(out)}
    )
    before = model.eval_model(dialogs_file, output_dir=tmp_path / "eval0", verbose=False)
    global_step, details = model.train_model(dialogs_file)
    after = model.eval_model(dialogs_file, verbose=False)

    # 12 dialogs x 2 utterances = 24 examples, batch 4 → 6 steps per epoch, 2 epochs.
    assert global_step == 12
    assert details["train_loss"], "training details record the running loss"
    assert after["language_model_loss"] < before["language_model_loss"]
    assert after["perplexity"] == pytest.approx(
        torch.tensor(after["language_model_loss"]).exp().item(), rel=1e-6
    )
    for key in ("language_model_loss", "perplexity", "f1_score", "hits@1", "mc_loss"):
        assert key in after

    # Saved: safetensors weights, args, tokenizer, persona list; the evaluation's
    # simpletransformers-style results in their own folder, never over the model's.
    names = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "model_args.json",
        "tokenizer.json",
        "personas.json",
    } <= names
    assert not any(name.endswith(".bin") for name in names)
    results = out / "eval" / "dialogs"
    assert {"eval_results.txt", "eval_results.json"} <= {p.name for p in results.iterdir()}
    assert "language_model_loss = " in (results / "eval_results.txt").read_text()

    reloaded = ConvAIModel("gpt2", out, use_cuda=False, args={"do_sample": False})
    assert reloaded.args.learning_rate == QUICK_ARGS["learning_rate"], "model_args.json restored"
    again = reloaded.eval_model(dialogs_file, output_dir=tmp_path / "eval2", verbose=False)
    assert again["language_model_loss"] == pytest.approx(after["language_model_loss"], rel=1e-5)

    reply, history = reloaded.interact_single("hi , what do you do ?", [], personality=PERSONA)
    assert isinstance(reply, str)
    assert history == ["hi , what do you do ?", reply]
    reply2, history2 = reloaded.interact_single("any pets ?", history, personality=PERSONA)
    assert history2 == [*history, "any pets ?", reply2]


def test_interact_single_with_token_history_keeps_last_utterances(tiny_checkpoint):
    model = ConvAIModel(
        "gpt2", tiny_checkpoint, use_cuda=False, args={"max_history": 1, "do_sample": False}
    )
    history: list = []
    for message in ["hi", "what do you do ?", "any pets ?"]:
        reply, history = model.interact_single(message, history, PERSONA, encode_history=False)
    assert len(history) == 3  # 2 * max_history + 1, as token-id lists
    assert all(isinstance(h, list) for h in history)


def test_greedy_replies_are_reproducible_and_seeded_sampling_too(tiny_checkpoint):
    greedy = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args={"do_sample": False})
    assert (
        greedy.interact_single("hi", [], PERSONA)[0] == greedy.interact_single("hi", [], PERSONA)[0]
    )
    replies = []
    for _ in range(2):
        model = ConvAIModel(
            "gpt2",
            tiny_checkpoint,
            use_cuda=False,
            args={"manual_seed": 3, "temperature": 1.5, "top_p": 1.0},
        )
        replies.append(model.interact_single("hi", [], PERSONA)[0])
    assert replies[0] == replies[1]


def test_repl_in_a_real_subprocess(tiny_checkpoint, tmp_path):
    script = (
        "from personachat import ConvAIModel\n"
        f"model = ConvAIModel('gpt2', {str(tiny_checkpoint)!r}, use_cuda=False,"
        " args={'max_length': 5, 'do_sample': False})\n"
        f"model.interact(personality={PERSONA!r})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        input="hello\n\nany pets ?\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stdout.count(">>> ") == 4  # two messages, the empty line's re-prompt, EOF
    assert "Prompt should not be empty!" in done.stdout
    assert "[" not in done.stdout, "no debug print of the history"


def test_interact_without_personality_picks_one_from_the_training_data(
    tiny_checkpoint, dialogs_file, tmp_path, monkeypatch, capsys
):
    model = ConvAIModel(
        "gpt2",
        tiny_checkpoint,
        use_cuda=False,
        args={**QUICK_ARGS, "num_train_epochs": 1, "output_dir": str(tmp_path / "o")},
    )
    model.train_model(dialogs_file)
    reloaded = ConvAIModel("gpt2", tmp_path / "o", use_cuda=False)
    monkeypatch.setattr("builtins.input", _scripted_input(["hi"]))
    reloaded.interact()
    first_line = capsys.readouterr().out.splitlines()[0]
    personas = json.loads((tmp_path / "o" / "personas.json").read_text())
    assert first_line in {"Selected personality: " + " ".join(p) for p in personas}


def test_use_cuda_without_a_gpu_says_what_to_do(tiny_checkpoint):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match="use_cuda=False"):
        ConvAIModel("gpt2", tiny_checkpoint)


def test_non_empty_output_dir_is_refused_unless_overwrite(tiny_checkpoint, dialogs_file, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "something.txt").write_text("keep me")
    model = ConvAIModel(
        "gpt2", tiny_checkpoint, use_cuda=False, args={**QUICK_ARGS, "output_dir": str(out)}
    )
    with pytest.raises(TrainingError, match="overwrite_output_dir"):
        model.train_model(dialogs_file)
    assert (out / "something.txt").read_text() == "keep me"


def test_args_accepts_a_convaiargs_object_and_rejects_typos(tiny_checkpoint):
    args = ConvAIArgs(max_length=7)
    model = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args=args)
    assert model.args.max_length == 7
    with pytest.raises(ValueError, match="num_train_epochs"):
        ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args={"num_train_epoch": 3})


def test_bad_training_data_lists_every_problem(tiny_checkpoint, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            [
                {
                    "personality": ["i like tea ."],
                    "utterances": [{"history": ["hi"], "candidates": []}],
                },
                {"utterances": [{"history": ["hi"], "candidates": ["a", "b"]}]},
            ]
        )
    )
    model = ConvAIModel(
        "gpt2",
        tiny_checkpoint,
        use_cuda=False,
        args={**QUICK_ARGS, "output_dir": str(tmp_path / "o")},
    )
    with pytest.raises(ValueError) as err:
        model.train_model(bad)
    message = str(err.value)
    assert "dialog 0" in message and "candidates" in message
    assert "dialog 1" in message and "personality" in message
    assert not (tmp_path / "o").exists(), "nothing written when the data is bad"


def test_too_few_candidates_for_num_candidates_is_explained(
    tiny_checkpoint, dialogs_file, tmp_path
):
    # Missing candidates are sampled from other dialogs (tests/test_candidates.py); 50 is
    # more than this corpus of 7 distinct replies can give, which is explained.
    model = ConvAIModel(
        "gpt2",
        tiny_checkpoint,
        use_cuda=False,
        args={**QUICK_ARGS, "num_candidates": 50, "output_dir": str(tmp_path / "o")},
    )
    with pytest.raises(ValueError, match="lower num_candidates to at most"):
        model.train_model(dialogs_file)


def test_cyrillic_and_emoji_round_trip_through_training(tmp_path):
    from personachat.model.scratch import ScratchConfig, build_scratch_checkpoint

    persona = ["я работаю врачом .", "у меня есть кот 🐱 ."]
    dialogs = [
        {
            "personality": persona,
            "utterances": [
                {
                    "history": ["привет , кем ты работаешь ?"],
                    "candidates": ["я пилот .", "я работаю врачом 🙂 ."],
                }
            ],
        }
    ] * 8
    data = tmp_path / "ru.json"
    data.write_text(json.dumps(dialogs, ensure_ascii=False), encoding="utf-8")
    texts = persona + ["привет , кем ты работаешь ?", "я пилот .", "я работаю врачом 🙂 ."]
    ckpt = build_scratch_checkpoint(
        tmp_path / "ru-gpt2",
        texts,
        ScratchConfig(vocab_size=320, n_layer=1, n_embd=32, n_head=2, n_positions=64),
    )
    model = ConvAIModel(
        "gpt2",
        ckpt,
        use_cuda=False,
        args={
            **QUICK_ARGS,
            "num_train_epochs": 40,
            "learning_rate": 1e-2,
            "output_dir": str(tmp_path / "o"),
            "do_sample": False,
            "max_length": 12,
        },
    )
    model.train_model(data)
    reply, _ = model.interact_single("привет , кем ты работаешь ?", [], persona)
    assert reply == "я работаю врачом 🙂 ."


@pytest.mark.parametrize("field", ["personality", "history"])
def test_inputs_longer_than_the_context_never_crash(tiny_checkpoint, field):
    model = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args={"max_length": 10})
    long = ["i have a cat named tom and i love pizza very much ."] * 40
    persona = long if field == "personality" else PERSONA
    history = long if field == "history" else []
    reply, _ = model.interact_single("hi", history, persona)
    assert isinstance(reply, str)


def test_eval_results_carry_generation_f1_and_custom_metrics(
    tiny_checkpoint, dialogs_file, tmp_path
):
    model = ConvAIModel(
        "gpt2", tiny_checkpoint, use_cuda=False, args={"output_dir": str(tmp_path), "max_length": 6}
    )

    def accuracy(labels, preds):
        return sum(a == b for a, b in zip(labels, preds, strict=True)) / len(labels)

    results = model.eval_model(dialogs_file, verbose=False, generation_f1=True, acc=accuracy)
    assert 0.0 <= results["generation_f1"] <= 1.0
    assert results["acc"] == pytest.approx(results["hits@1"])
    saved = json.loads((Path(tmp_path) / "eval" / "dialogs" / "eval_results.json").read_text())
    assert saved["acc"] == results["acc"]


def test_generate_replies_streams_each_reply_as_it_grows(tiny_checkpoint):
    """``on_token`` sees every reply grow text by text and ends at the returned reply."""
    bot = ConvAIModel(
        "gpt2",
        tiny_checkpoint,
        use_cuda=False,
        args={"do_sample": False, "max_length": 8, "min_length": 3},
    )
    conversations = [(PERSONA, ["hi , what do you do ?"]), (PERSONA[:1], ["any pets ?"])]
    seen: dict[int, list[str]] = {0: [], 1: []}
    replies = bot.generate_replies(conversations, on_token=lambda i, text: seen[i].append(text))
    for index, reply in enumerate(replies):
        texts = seen[index]
        assert texts, "no streamed text"
        assert texts[-1] == reply
        assert all(
            later.startswith(earlier) for earlier, later in zip(texts, texts[1:], strict=False)
        )
    assert replies == bot.generate_replies(conversations)
    only_second: dict[int, list[str]] = {0: [], 1: []}
    bot.generate_replies(conversations, on_token=lambda i, t: only_second[i].append(t), stream={1})
    assert not only_second[0] and only_second[1] == seen[1]
