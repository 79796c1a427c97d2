"""The whole 'main job' for the chosen recipe, timed end to end: GGUF load+dequantize, LoRA training,
merge, evaluation on the FULL valid / unseen / ablation sets and own_probes.json."""

import json
import os
import random
import time

import torch

T0 = time.time()
import common as C  # noqa: E402  (after the timer starts: the import is part of the timing)
from peft import LoraConfig, get_peft_model  # noqa: E402

torch.set_num_threads(int(os.environ.get("NT", "2")))
STEPS, BS, LR, R, MH, SEED = (
    int(os.environ.get("STEPS", 90)),
    int(os.environ.get("BS", 8)),
    float(os.environ.get("LR", 5e-4)),
    16,
    1,
    int(os.environ.get("SEED", 0)),
)
EVAL_BF16 = bool(int(os.environ.get("EVAL_BF16", 0)))
loads = [C.load_avg()]
random.seed(SEED)
torch.manual_seed(SEED)
model, tok = C.load(from_gguf=True)
t_load = time.time() - T0
ex = [
    (d["personality"], u["history"], u["candidates"][-1])
    for d in C.load_json("persona_train.json")
    for u in d["utterances"]
    if isinstance(u.get("probe"), dict)
]


def enc(p, h, r):
    pi = C.prompt_ids(tok, p, h, "lines", MH)
    ri = tok(r, add_special_tokens=False).input_ids + [tok.eos_token_id]
    return pi + ri, [-100] * len(pi) + ri


model = get_peft_model(
    model,
    LoraConfig(
        r=R,
        lora_alpha=2 * R,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    ),
)
core, head = model.base_model.model.model, model.base_model.model.lm_head
params = [q for q in model.parameters() if q.requires_grad]
opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
sched = torch.optim.lr_scheduler.LambdaLR(
    opt, lambda s: min(1.0, (s + 1) / 5) * (STEPS - s) / STEPS
)
rng = random.Random(SEED)
model.train()
t1 = time.time()
for step in range(STEPS):
    b = [enc(*rng.choice(ex)) for _ in range(BS)]
    L = max(len(x) for x, _ in b)
    ids = torch.full((BS, L), tok.pad_token_id)
    lab = torch.full((BS, L), -100)
    att = torch.zeros((BS, L), dtype=torch.long)
    for i, (x, y) in enumerate(b):
        ids[i, : len(x)] = torch.tensor(x)
        lab[i, : len(y)] = torch.tensor(y)
        att[i, : len(x)] = 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = core(input_ids=ids, attention_mask=att).last_hidden_state
    tgt = lab[:, 1:]
    sel = tgt != -100
    loss = torch.nn.functional.cross_entropy(
        torch.nn.functional.linear(h[:, :-1][sel].float(), head.weight), tgt[sel]
    )
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    if step % 10 == 0:
        print(
            f"step {step} loss {loss.item():.3f} {(time.time() - t1) / (step + 1):.2f}s/step load {C.load_avg()}",
            flush=True,
        )
t_train = time.time() - t1
loads.append(C.load_avg())
model = model.merge_and_unload()
model.eval()
r = C.evaluate_all(
    model,
    tok,
    max_history=MH,
    bf16=EVAL_BF16,
    subset=None,
    log=f"FINAL_s{STEPS}_bs{BS}_seed{SEED}_ebf{int(EVAL_BF16)}",
)
loads.append(C.load_avg())
row = {
    "tag": f"FINAL steps{STEPS} bs{BS} lr{LR} seed{SEED}",
    "NT": torch.get_num_threads(),
    "load_s": round(t_load, 1),
    "train_s": round(t_train, 1),
    **r,
    "total_s": round(time.time() - T0, 1),
    "load": "/".join(loads),
}
print(json.dumps(row))
with open(os.path.join(C.HERE, "runs.jsonl"), "a") as f:
    f.write(json.dumps(row) + "\n")
with open(os.path.join(C.HERE, "RESULTS.md"), "a") as f:
    f.write(
        f"| FINAL s{STEPS} bs{BS} lr{LR} seed{SEED} | final_run.py (GGUF load {t_load:.0f}s) r16 attn, mh=1, probe-only, bf16 train, eval bf16={EVAL_BF16}, FULL sets, NT={torch.get_num_threads()} | {r['valid']} | {r['unseen']} | {r['ablation']} | {r['own']} | {t_train:.0f}s ({t_train / STEPS:.2f}/step) | {r['eval_s']}s (v{r['valid_s']}/u{r['unseen_s']}/a{r['ablation_s']}/o{r['own_s']}) | {row['load']} | total {row['total_s']}s |\n"
    )
