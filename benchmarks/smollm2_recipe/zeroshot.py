import json
import os
import sys

import common as C
import torch

torch.set_num_threads(int(os.environ.get("NT", "1")))
model, tok = C.load()
fmts = sys.argv[1].split(",")
subset = int(sys.argv[2]) or None
mh = None if sys.argv[3] == "none" else int(sys.argv[3])
for fmt in fmts:
    l0 = C.load_avg()
    r = C.evaluate_all(
        model, tok, fmt=fmt, max_history=mh, subset=subset, log=f"zeroshot_{fmt}_{subset}_mh{mh}"
    )
    row = {"fmt": fmt, "subset": subset, "mh": mh, **r, "load": f"{l0}/{C.load_avg()}"}
    print(json.dumps(row), flush=True)
    with open(os.path.join(C.HERE, "runs.jsonl"), "a") as f:
        f.write(json.dumps({"tag": f"zs-{fmt}-mh{mh}", **row}) + "\n")
    with open(os.path.join(C.HERE, "RESULTS.md"), "a") as f:
        f.write(
            f"| zs-{fmt}-mh{mh} | zero-shot, system format '{fmt}', max_history={mh} | {r['valid']} | {r['unseen']} | {r['ablation']} | {r['own']} | - | {r['eval_s']}s | {row['load']} | sub={subset} |\n"
        )
