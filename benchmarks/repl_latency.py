"""Reply latency of ``personachat interact`` as a user sees it: the REPL driven over a pipe,
the time from sending a line to the next ``>>> `` prompt, first and later replies, on an idle
machine and on one loaded by busy loops on every core (issue 22).

    python benchmarks/repl_latency.py --model smollm2 --threads default 2 --load 0 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

MESSAGES = ["hi , what do you do ?", "do you like it ?", "any pets ?", "what do you eat ?"]
BUSY = "while True: pass"


def read_until_prompt(proc: subprocess.Popen, deadline: float) -> str:
    """stdout up to and including the next '>>> ' prompt."""
    seen = b""
    while not seen.endswith(b">>> "):
        byte = proc.stdout.read(1)
        if not byte or time.monotonic() > deadline:
            raise RuntimeError(f"no prompt: {seen[-200:]!r}")
        seen += byte
    return seen.decode(errors="replace")


def one_run(model: str, threads: str, persona: str) -> tuple[float, list[float]]:
    """(seconds to the first prompt, seconds per reply) of one REPL session."""
    command = [sys.executable, "-m", "personachat.cli", "interact", "--model", model]
    command += ["--persona", persona, "--set", "do_sample=false"]
    if threads != "default":
        command += ["--threads", threads]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    try:
        read_until_prompt(proc, start + 600)
        loaded = time.monotonic() - start
        replies = []
        for message in MESSAGES:
            sent = time.monotonic()
            proc.stdin.write((message + "\n").encode())
            proc.stdin.flush()
            read_until_prompt(proc, sent + 300)
            replies.append(time.monotonic() - sent)
        return loaded, replies
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--persona", default="i am a nurse .")
    parser.add_argument("--threads", nargs="+", default=["default"])
    parser.add_argument("--load", nargs="+", type=int, default=[0, 2], help="busy loops")
    options = parser.parse_args()
    print("| busy loops | threads | start to prompt (s) | 1st reply (s) | later replies (s) |")
    print("|---|---|---|---|---|")
    for busy in options.load:
        loops = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
        try:
            for threads in options.threads:
                loaded, replies = one_run(options.model, threads, options.persona)
                later = ", ".join(f"{r:.2f}" for r in replies[1:])
                print(f"| {busy} | {threads} | {loaded:.1f} | {replies[0]:.2f} | {later} |")
                sys.stdout.flush()
        finally:
            for loop in loops:
                loop.kill()
                loop.wait()


if __name__ == "__main__":
    main()
