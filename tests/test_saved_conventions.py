"""Saved model folders meet the conventions other tools read: a chat template that writes the
training layout (TransferTransfo's speaker tokens too), generation_config.json with the
decoding defaults, and a model card (YAML front matter, the training report as its body)."""

from __future__ import annotations

import json

import pytest
import yaml
from transformers import AutoTokenizer, GenerationConfig

from personachat import ConvAIModel
from personachat.args import ConvAIArgs
from personachat.encoding.inputs import SpecialIds, TextEncoder, build_input_from_segments
from personachat.generation.generate import build_prompt
from personachat.model.conventions import CARD_MARKER, base_model_of, model_card
from personachat.model.export import export_folder
from personachat.model.gguf import SMOLLM2_HUB_ID
from personachat.model.loading import load_model_and_tokenizer, resolve_input_format
from personachat.train.reporting import append_evaluation
from tests.conftest import PERSONA, make_dialogs
from tests.tiny_models import CHATML, build_tiny_chat_model

CONVERSATIONS = [
    (PERSONA, ["hi , what do you do ?"]),
    (PERSONA, ["hello !", "hi , how are you ?", "fine . any pets ?"]),
    (["i love pizza ."], ["i am a nurse .", "cool .", "what do you do ?", "i fly planes !"]),
    ([], ["hi !"]),  # no persona: no system message, <bos> then the history
]


def messages_of(persona: list[str], history: list[str]) -> list[dict]:
    """A conversation as chat messages: the persona one sentence per line, then turns that
    alternate back from the user's last message."""
    system = [{"role": "system", "content": "\n".join(persona)}] if persona else []
    turns = [
        {"role": "user" if (len(history) - 1 - i) % 2 == 0 else "assistant", "content": text}
        for i, text in enumerate(history)
    ]
    return system + turns


def test_the_transfertransfo_template_renders_the_training_token_ids(tiny_checkpoint, tmp_path):
    model = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args={"token_types": "none"})
    model.save_model(tmp_path / "saved")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "saved")
    special = SpecialIds.from_tokenizer(tokenizer)
    encode = TextEncoder(tokenizer)

    for persona, history in CONVERSATIONS:
        persona_ids, history_ids = [encode(s) for s in persona], [encode(h) for h in history]
        prompt = tokenizer.apply_chat_template(
            messages_of(persona, history), add_generation_prompt=True, return_dict=False
        )
        assert prompt == build_prompt(persona_ids, history_ids, special, 10, 10_000)["input_ids"]
        # a whole training input: the reply is the last assistant message, ended by <eos>
        reply = "i have a cat ."
        rendered = tokenizer.apply_chat_template(
            [*messages_of(persona, history), {"role": "assistant", "content": reply}],
            return_dict=False,
        )
        built = build_input_from_segments(persona_ids, history_ids, encode(reply), special)
        assert rendered == built["input_ids"]


def test_a_lowercasing_model_gets_a_lowercasing_template(tiny_checkpoint, tmp_path):
    args = {"token_types": "none", "do_lower_case": True}
    ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args=args).save_model(tmp_path / "s")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "s")
    encode = TextEncoder(tokenizer, lowercase=True)
    persona, history = ["I Work As A Nurse ."], ["Hi , What Do You Do ?"]

    prompt = tokenizer.apply_chat_template(
        messages_of(persona, history), add_generation_prompt=True, return_dict=False
    )

    special = SpecialIds.from_tokenizer(tokenizer)
    expected = build_prompt([encode(persona[0])], [encode(history[0])], special, 2, 10_000)
    assert prompt == expected["input_ids"]


def test_generation_config_holds_the_decoding_defaults(tiny_checkpoint, tmp_path):
    args = {"max_length": 17, "min_length": 2, "temperature": 0.5, "top_p": 0.8, "top_k": 5}
    model = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args=args)
    model.save_model(tmp_path / "saved")
    special = model.special

    config = GenerationConfig.from_pretrained(tmp_path / "saved")

    assert (config.max_new_tokens, config.min_new_tokens, config.do_sample) == (17, 2, True)
    assert (config.temperature, config.top_p, config.top_k) == (0.5, 0.8, 5)
    assert config.eos_token_id == [special.eos, special.speaker2]  # the reply enders
    assert sorted(config.suppress_tokens) == sorted([special.bos, special.pad, special.speaker1])
    assert (config.pad_token_id, config.bos_token_id) == (special.pad, special.bos)


def test_a_chat_template_model_keeps_its_own_template(tmp_path):
    texts = [s for d in make_dialogs() for u in d["utterances"] for s in u["history"]]
    folder = build_tiny_chat_model(tmp_path / "llama", texts + PERSONA)
    model = ConvAIModel("auto", folder, use_cuda=False, args={"do_sample": False})
    model.save_model(tmp_path / "saved")

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "saved")
    config = GenerationConfig.from_pretrained(tmp_path / "saved")

    assert tokenizer.chat_template == CHATML
    assert config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert config.suppress_tokens == [tokenizer.convert_tokens_to_ids("<|im_start|>")]
    assert config.do_sample is False and config.temperature in (None, 1.0)


def card_parts(path) -> tuple[dict, str]:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, tmp_path_factory):
    """A tiny GPT-2 trained one epoch (token_types none), then evaluated as the CLI does."""
    out = tmp_path_factory.mktemp("trained")
    data = out.parent / "dialogs.json"
    data.write_text(json.dumps(make_dialogs()), encoding="utf-8")
    args = {
        "output_dir": str(out),
        "token_types": "none",
        "num_train_epochs": 1,
        "save_model_every_epoch": False,
        "save_steps": 0,
        "do_sample": False,
        "max_length": 6,
        "silent": True,
    }
    model = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args=args)
    model.train_model(data)
    return model, out, data


def test_the_model_card_has_yaml_front_matter_and_the_report_as_its_body(trained):
    model, out, data = trained
    front, body = card_parts(out / "README.md")
    assert front["library_name"] == "transformers"
    assert "personachat" in front["tags"] and "transfertransfo" in front["tags"]
    assert "base_model" not in front  # a scratch checkpoint has no hub id to name
    assert CARD_MARKER in body
    assert "## Training report" in body and "### Final metrics" in body
    assert "model-index" not in front  # not evaluated yet

    results = model.eval_model(data, output_dir=out, verbose=False)
    append_evaluation(out, str(data), results)

    front, body = card_parts(out / "README.md")
    metrics = {m["type"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
    assert metrics["hits@1"] == pytest.approx(results["hits@1"])
    assert metrics["language_model_loss"] == pytest.approx(results["language_model_loss"])
    assert front["model-index"][0]["results"][0]["dataset"]["name"] == str(data)
    assert "Evaluation: " in body


def test_a_card_the_user_wrote_is_never_replaced(tiny_checkpoint, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("# my own notes\n", encoding="utf-8")
    model = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args={"token_types": "none"})

    model.save_model(out)

    assert (out / "README.md").read_text(encoding="utf-8") == "# my own notes\n"
    assert (out / "generation_config.json").is_file()


def test_base_model_and_license_come_from_the_hub_id_trained_from(tiny_checkpoint, tmp_path):
    model = ConvAIModel("gpt2", tiny_checkpoint, use_cuda=False, args={"token_types": "none"})
    model.args.model_name = "openai-community/gpt2"  # as when fine-tuned from the hub id
    model.save_model(tmp_path / "saved")

    front, _ = card_parts(tmp_path / "saved" / "README.md")

    assert (front["base_model"], front["license"]) == ("openai-community/gpt2", "mit")


def test_the_base_model_is_followed_back_through_personachat_folders(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, source in ((first, "smollm2"), (second, str(first))):
        folder.mkdir()
        (folder / "model_args.json").write_text(json.dumps({"model_name": source}))
    args = ConvAIArgs()
    args.model_name = str(second)  # fine-tuned from a folder fine-tuned from smollm2

    card = model_card("again", args, "chat_template", tmp_path)
    front = yaml.safe_load(card.split("---\n")[1])

    assert base_model_of(str(second)) == front["base_model"] == SMOLLM2_HUB_ID
    assert front["license"] == "apache-2.0"
    assert "Q4_1-quantized" in card  # SmolLM2's packaged weights are named as what they are
    assert base_model_of("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert base_model_of(str(tmp_path / "a-folder-that-is-not-there")) is None


def test_an_export_carries_the_card_with_the_report_and_its_files(trained, tmp_path):
    _, out, _ = trained

    export_folder(out, tmp_path / "exported")

    front, body = card_parts(tmp_path / "exported" / "README.md")
    assert "## Training report" in body and "personachat export" not in body
    for name in ("training_curves.png", "samples.md"):
        assert (tmp_path / "exported" / name).is_file() == (out / name).is_file()
    assert (out / "samples.md").is_file()  # the report links it: it came along


def test_a_llama_trained_with_speaker_tokens_keeps_that_layout_when_reloaded(tmp_path):
    texts = [s for d in make_dialogs() for u in d["utterances"] for s in u["history"]]
    folder = build_tiny_chat_model(tmp_path / "llama", texts + PERSONA)
    args = {"input_format": "transfertransfo", "token_types": "none"}
    ConvAIModel("auto", folder, use_cuda=False, args=args).save_model(tmp_path / "saved")

    model, tokenizer = load_model_and_tokenizer("auto", tmp_path / "saved")

    assert resolve_input_format("auto", model, tokenizer) == "transfertransfo"
    special, encode = SpecialIds.from_tokenizer(tokenizer), TextEncoder(tokenizer)
    persona, history = CONVERSATIONS[1]
    prompt = tokenizer.apply_chat_template(
        messages_of(persona, history), add_generation_prompt=True, return_dict=False
    )
    expected = build_prompt(
        [encode(s) for s in persona], [encode(h) for h in history], special, 10, 10_000
    )
    assert prompt == expected["input_ids"]
