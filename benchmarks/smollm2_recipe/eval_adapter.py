"""Evaluate a saved LoRA adapter: python eval_adapter.py TAG SUBSET MH BF16 [sets]"""

import json
import os
import sys

import common as C
import torch
from peft import PeftModel

torch.set_num_threads(int(os.environ.get("NT", "1")))
tag, subset, mh, bf16 = (
    sys.argv[1],
    int(sys.argv[2]) or None,
    (None if sys.argv[3] == "none" else int(sys.argv[3])),
    bool(int(sys.argv[4])),
)
model, tok = C.load()
model = PeftModel.from_pretrained(model, os.path.join(C.HERE, "adapters", tag)).merge_and_unload()
l0 = C.load_avg()
r = C.evaluate_all(
    model,
    tok,
    max_history=mh,
    bf16=bf16,
    subset=subset,
    log=f"{tag}_eval_sub{subset}_mh{mh}_bf{int(bf16)}",
)
row = {
    "tag": tag + "-reeval",
    "subset": subset,
    "eval_mh": mh,
    "eval_bf16": bf16,
    **r,
    "load": f"{l0}/{C.load_avg()}",
    "NT": torch.get_num_threads(),
}
print(json.dumps(row))
with open(os.path.join(C.HERE, "runs.jsonl"), "a") as f:
    f.write(json.dumps(row) + "\n")
with open(os.path.join(C.HERE, "RESULTS.md"), "a") as f:
    f.write(
        f"| {tag} re-eval | eval only: subset={subset} eval max_history={mh} eval bf16={bf16} NT={torch.get_num_threads()} | {r['valid']} | {r['unseen']} | {r['ablation']} | {r['own']} | - | {r['eval_s']}s (v{r['valid_s']}/u{r['unseen_s']}/a{r['ablation_s']}/o{r['own_s']}) | {row['load']} | |\n"
    )
