"""One fine-tuning run of SmolLM2-135M-Instruct on persona_train.json + evaluation on the 4 probe sets.
Appends a row to RESULTS.md and a JSON line to runs.jsonl."""

import argparse
import json
import os
import random
import sys
import time

import common as C
import torch

p = argparse.ArgumentParser()
p.add_argument("--tag", required=True)
p.add_argument("--method", default="lora", choices=["lora", "full_top", "none"])
p.add_argument("--r", type=int, default=16)
p.add_argument("--alpha", type=float, default=None)  # default 2*r
p.add_argument("--targets", default="attn", choices=["attn", "attn_mlp", "qv"])
p.add_argument("--top_layers", type=int, default=4)  # for full_top
p.add_argument("--steps", type=int, default=90)
p.add_argument("--lr", type=float, default=2e-4)
p.add_argument("--bs", type=int, default=4)
p.add_argument("--bf16", type=int, default=1)
p.add_argument(
    "--max_history", type=int, default=None
)  # turns pairs kept before the last user turn
p.add_argument("--select", default="probe", choices=["probe", "all", "probe+gen"])
p.add_argument("--gen_frac", type=float, default=0.25)  # for probe+gen: share of non-probe examples
p.add_argument("--fmt", default="lines")
p.add_argument("--warmup", type=int, default=5)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--eval_subset", type=int, default=20)  # first N dialogs of valid/unseen; 0 = all
p.add_argument("--eval_bf16", type=int, default=0)
p.add_argument("--eval_mh", type=int, default=None)  # max_history at eval (default: full history)
p.add_argument("--save", default=None)
a = p.parse_args()
torch.set_num_threads(int(os.environ.get("NT", "1")))
random.seed(a.seed)
torch.manual_seed(a.seed)
l_start = C.load_avg()
T0 = time.time()
model, tok = C.load()

# ------------------------------------------------------------------ data
train = C.load_json("persona_train.json")
probe_ex, gen_ex = [], []
for d in train:
    for u in d["utterances"]:
        ex = (d["personality"], u["history"], u["candidates"][-1])
        (probe_ex if isinstance(u.get("probe"), dict) else gen_ex).append(ex)


def encode(persona, history, reply):
    pi = C.prompt_ids(tok, persona, history, a.fmt, a.max_history)
    ri = tok(reply, add_special_tokens=False).input_ids + [tok.eos_token_id]  # reply + <|im_end|>
    return pi + ri, [-100] * len(pi) + ri


def sample_batch(rng):
    out = []
    for _ in range(a.bs):
        if a.select == "probe":
            pool = probe_ex
        elif a.select == "all":
            pool = (
                probe_ex if rng.random() < len(probe_ex) / (len(probe_ex) + len(gen_ex)) else gen_ex
            )
        else:
            pool = gen_ex if rng.random() < a.gen_frac else probe_ex
        out.append(encode(*rng.choice(pool)))
    L = max(len(x) for x, _ in out)
    ids = torch.full((len(out), L), tok.pad_token_id)
    lab = torch.full((len(out), L), -100)
    att = torch.zeros((len(out), L), dtype=torch.long)
    for i, (x, y) in enumerate(out):
        ids[i, : len(x)] = torch.tensor(x)
        lab[i, : len(y)] = torch.tensor(y)
        att[i, : len(x)] = 1
    return ids, lab, att


# ------------------------------------------------------------------ model
if a.method == "lora":
    from peft import LoraConfig, get_peft_model

    tm = {
        "attn": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "qv": ["q_proj", "v_proj"],
        "attn_mlp": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    }[a.targets]
    cfg = LoraConfig(
        r=a.r,
        lora_alpha=a.alpha or 2 * a.r,
        lora_dropout=0.0,
        target_modules=tm,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, cfg)
    core = model.base_model.model.model
    head = model.base_model.model.lm_head
elif a.method == "full_top":
    for prm in model.parameters():
        prm.requires_grad_(False)
    for layer in model.model.layers[-a.top_layers :]:
        for prm in layer.parameters():
            prm.requires_grad_(True)
    core = model.model
    head = model.lm_head
params = [q for q in model.parameters() if q.requires_grad] if a.method != "none" else []
n_train = sum(q.numel() for q in params)
print(f"trainable params {n_train}", flush=True)

losses = []
t_train = time.time()
if a.steps and params:
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / a.warmup) * max(0.0, (a.steps - s) / a.steps)
    )
    rng = random.Random(a.seed)
    model.train()
    ntok = 0
    for step in range(a.steps):
        ids, lab, att = sample_batch(rng)
        ntok += ids.numel()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(a.bf16)):
            h = core(input_ids=ids, attention_mask=att).last_hidden_state
        # logits only where a label exists (position t predicts token t+1), in fp32
        tgt = lab[:, 1:]
        sel = tgt != -100
        hs = h[:, :-1][sel].float()
        logits = torch.nn.functional.linear(hs, head.weight.float())
        loss = torch.nn.functional.cross_entropy(logits, tgt[sel])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 0 or step == a.steps - 1:
            print(
                f"step {step} loss {loss.item():.3f} avg10 {sum(losses[-10:]) / len(losses[-10:]):.3f} "
                f"{(time.time() - t_train) / (step + 1):.2f}s/step load {C.load_avg()}",
                flush=True,
            )
train_s = time.time() - t_train
l_mid = C.load_avg()
if a.method == "lora":
    model.save_pretrained(os.path.join(C.HERE, "adapters", a.tag))  # LoRA weights only (~7 MB)
    model = model.merge_and_unload()
model.eval()
if a.save:
    model.save_pretrained(a.save)
    tok.save_pretrained(a.save)
res = C.evaluate_all(
    model,
    tok,
    fmt=a.fmt,
    max_history=a.eval_mh,
    bf16=bool(a.eval_bf16),
    subset=a.eval_subset or None,
    log=a.tag,
)
total = time.time() - T0
cfg = {k: v for k, v in vars(a).items() if k not in ("tag", "save")}
row = {
    "tag": a.tag,
    **cfg,
    "train_s": round(train_s, 1),
    "s_per_step": round(train_s / max(1, a.steps), 2),
    "final_loss10": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 3) if losses else None,
    **res,
    "total_s": round(total, 1),
    "load": f"{l_start}/{l_mid}/{C.load_avg()}",
    "cmd": " ".join(sys.argv),
}
print(json.dumps(row), flush=True)
with open(os.path.join(C.HERE, "runs.jsonl"), "a") as f:
    f.write(json.dumps(row) + "\n")
with open(os.path.join(C.HERE, "RESULTS.md"), "a") as f:
    f.write(
        f"| {a.tag} | {a.method} r{a.r} {a.targets} steps{a.steps} lr{a.lr} bs{a.bs} bf16={a.bf16} mh={a.max_history} sel={a.select} fmt={a.fmt} | "
        f"{res['valid']} | {res['unseen']} | {res['ablation']} | {res['own']} | {train_s:.0f}s ({train_s / max(1, a.steps):.2f}/step) | {res['eval_s']}s | {row['load']} | sub={a.eval_subset} evbf16={a.eval_bf16} |\n"
    )
