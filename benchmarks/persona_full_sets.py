"""A trained model's persona figures on every probe of the bundled sets (the main job prints
the first 20 dialogs of each to stay in its budget; the targets are on the full sets).

    python benchmarks/persona_full_sets.py outputs/quick
    python benchmarks/persona_full_sets.py outputs/quick --cpu-quantize int8
    python benchmarks/persona_full_sets.py smollm2          # zero-shot, the shipped weights

Greedy replies (the model's own decoding options otherwise), one row per set: held-out
personas, unseen values, our own kinds of fact, and held-out with the persona removed; each
with the share of probes whose reply states the persona's value, the contradiction rate and
the seconds it took.
"""

from __future__ import annotations

import argparse
import time

from personachat import ConvAIModel

SETS = [
    ("held-out", "data/persona_valid.json", False),
    ("unseen values", "data/persona_unseen.json", False),
    ("own kinds", "data/persona_own_kinds.json", False),
    ("persona removed", "data/persona_valid.json", True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="model folder, or smollm2 / a hub id")
    parser.add_argument("--model-type", default="auto")
    parser.add_argument("--cpu-quantize", default="none", choices=["none", "int8", "int4"])
    options = parser.parse_args()
    args = {"max_eval_examples": None, "silent": True, "cpu_quantize": options.cpu_quantize}
    if options.model == "smollm2":  # zero-shot: the main job's input settings
        args.update(input_format="chat_template", max_history=1, max_length=24, cpu_bf16="auto")
    model = ConvAIModel(options.model_type, options.model, use_cuda=False, args=args)
    print(f"{options.model}, cpu_quantize {options.cpu_quantize}, cpu_bf16 {model.args.cpu_bf16}")
    print(f"{'set':16s} {'persona_accuracy':>17s} {'contradiction':>14s} {'seconds':>8s}")
    for label, path, ablate in SETS:
        started = time.perf_counter()
        result = model.persona_eval(path, ablate_persona=ablate)
        contradiction = result.get("persona_contradiction_rate")
        print(
            f"{label:16s} {result['persona_accuracy']:17.3f} "
            f"{'-' if contradiction is None else f'{contradiction:.3f}':>14s} "
            f"{time.perf_counter() - started:8.0f}"
        )


if __name__ == "__main__":
    main()
