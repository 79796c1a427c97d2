"""SmolLM2-135M decode step: prefill, per-token decode time and tok/s, old code against new.

What a reply costs split into its parts: ``make_decoder`` + ``prefill`` of a ~150-token
chat-template prompt, then ``--reply-tokens`` greedy steps (LM head + argmax + one
``decoder.step``), one reply at a time, at fp32 and with int8 weight-only layers
(``decoding_copy(model, "int8")``: a bf16 copy whose linear layers are int8, the cpu_quantize
path; forced here on any CPU, so on one without hardware bf16 the label says so).

Two versions of the package can be compared on the same machine: ``--against DIR`` runs
this script's worker alternately with ``PYTHONPATH=DIR`` (e.g. an older tree unpacked with
``git archive OLD personachat | tar -x -C DIR``) and with the installed package, round after
round, so a shared machine's load falls on both alike; the table gives medians and ratios.
Each worker also prints a digest of its greedy tokens: equal digests, equal replies.
``--clock cpu`` times with the process's CPU time instead of the wall clock: on a machine
whose cores other jobs hold, what one thread spent on the work, not how long it waited.

    python benchmarks/decode_step.py --rounds 3
    python benchmarks/decode_step.py --rounds 3 --against /tmp/personachat-old
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

import torch

# The same persona and conversation as the latency benchmark beside this file.
from smollm2_latency import HISTORY, PERSONA  # noqa: E402

PRECISIONS = ("fp32", "int8")


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def one_reply(net, prompt: dict, n: int) -> tuple[float, list[float], list[int]]:
    """Prefill seconds, each step's seconds and the greedy tokens of one reply."""
    from personachat.generation.decoders import make_decoder
    from personachat.model.families import lm_head

    ids = torch.tensor([prompt["input_ids"]])
    types = torch.tensor([prompt["token_type_ids"]])
    mask = torch.ones_like(ids)
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    head = lm_head(net)
    with torch.inference_mode():
        start = clock()
        decoder = make_decoder(net, ids.shape[1] + n)
        hidden = decoder.prefill(ids, types, mask, positions)
        prefill = clock() - start
        steps, tokens = [], []
        for _ in range(n):
            start = clock()
            token = head(hidden).float().argmax(-1)
            tokens.append(int(token))
            positions = positions[:, -1:] + 1
            hidden = decoder.step(token.view(1, 1), types[:, -1:], positions)
            steps.append(clock() - start)
    return prefill, steps, tokens


def worker(n: int, repeats: int) -> dict:
    """Medians of ``repeats`` replies per precision (after one warm-up reply)."""
    from personachat import ConvAIModel
    from personachat.generation.precision import decoding_copy

    model = ConvAIModel("auto", "smollm2", use_cuda=False, args={"silent": True})
    model.model.eval()
    persona = [model._encode(s) for s in PERSONA]
    prompt = model.special.build(persona, [model._encode(h) for h in HISTORY], [], False, False)
    results = {}
    for precision in PRECISIONS:
        net = model.model if precision == "fp32" else decoding_copy(model.model, "int8")
        one_reply(net, prompt, n)  # warm-up
        prefills, steps, replies = [], [], []
        for _ in range(repeats):
            prefill, step_times, tokens = one_reply(net, prompt, n)
            prefills.append(prefill)
            steps.append(statistics.median(step_times))
            replies.append(prefill + sum(step_times))
        results[precision] = {
            "prefill_ms": 1e3 * statistics.median(prefills),
            "token_ms": 1e3 * statistics.median(steps),
            "reply_s": statistics.median(replies),
            "tokens": hashlib.sha1(str(tokens).encode()).hexdigest()[:8],
        }
    results["prompt_tokens"] = len(prompt["input_ids"])
    return results


def run_worker(pythonpath: str | None, options: argparse.Namespace) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, __file__, "--worker", "--clock", options.clock]
        + ["--reply-tokens", str(options.reply_tokens), "--repeats", str(options.repeats)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reply-tokens", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3, help="replies per worker")
    parser.add_argument("--rounds", type=int, default=3, help="workers per version")
    parser.add_argument("--against", help="a folder holding another personachat package")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        global clock
        clock = CLOCKS[options.clock]
        print(json.dumps(worker(options.reply_tokens, options.repeats)))
        return
    versions = {"installed": None} | ({"against": options.against} if options.against else {})
    runs: dict[str, list[dict]] = {name: [] for name in versions}
    for _ in range(options.rounds):
        for name, path in versions.items():
            runs[name].append(run_worker(path, options))
    print(
        f"SmolLM2-135M-Instruct, {torch.get_num_threads()} threads, prompt "
        f"{runs['installed'][0]['prompt_tokens']} tokens, reply {options.reply_tokens} tokens; "
        f"median of {options.rounds} rounds x {options.repeats} replies, {options.clock} clock; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'version':10s} {'precision':9s} {'prefill ms':>10s} {'ms/token':>9s} "
        f"{'tok/s':>6s} {'s/reply':>8s} {'tokens':>8s} {'vs against':>10s}"
    )
    for precision in PRECISIONS:
        medians = {
            name: {
                key: statistics.median(run[precision][key] for run in runs[name])
                for key in ("prefill_ms", "token_ms", "reply_s")
            }
            for name in versions
        }
        for name, m in medians.items():
            digests = ",".join(sorted({run[precision]["tokens"] for run in runs[name]}))
            ratio = (
                f"{medians['against']['token_ms'] / m['token_ms']:9.2f}x"
                if name == "installed" and "against" in medians
                else ""
            )
            print(
                f"{name:10s} {precision:9s} {m['prefill_ms']:10.1f} {m['token_ms']:9.2f} "
                f"{1e3 / m['token_ms']:6.1f} {m['reply_s']:8.2f} {digests:>8s} {ratio}"
            )


if __name__ == "__main__":
    main()
