"""Does one heavy request stall another client? ``/health`` latency while heavy cards arrive.

A 64 KB card whose ``description`` repeats ``<bot>`` under a long name once expanded to a
200-million-character sentence on the server's event loop: every other client's ``/health``
waited 8-12 s. Cards are now bounded before they are expanded and parsed in a worker thread.
This script starts the real ``personachat serve`` (a random-weight GPT-2, or ``--model``),
probes ``/health`` every 50 ms from another client, first with the server idle (the
reference), then while ``--senders`` clients keep posting heavy cards (the macro bomb, and a
~60 KB card of plain sentences that is parsed and tokenized whole), and prints the probes'
latency percentiles for both and their ratio.

    python benchmarks/serve_stall.py                # ~1 min on 2 cores
    python benchmarks/serve_stall.py --seconds 30 --senders 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from serve_load import build_model, start_server, stop_server

KEY = "benchmark-key-0123456789"


def heavy_cards() -> list[dict]:
    """The cards that stalled the loop before: a macro bomb and a long plain card."""
    bomb = {"name": "N" * 190, "description": "<bot> " * 10_000, "first_mes": "hi"}
    sentences = " ".join(f"Sentence {i} says the guardian keeps the wards." for i in range(1200))
    plain = {"name": "Elowen", "description": sentences, "first_mes": "hello"}
    return [{"spec": "chara_card_v2", "spec_version": "2.0", "data": d} for d in (bomb, plain)]


def probe(url: str, stop: threading.Event, interval: float = 0.05) -> list[float]:
    """Seconds each ``/health`` took, probed until ``stop``."""
    waits = []
    with httpx.Client(base_url=url, timeout=120) as client:
        while not stop.is_set():
            started = time.perf_counter()
            client.get("/health").raise_for_status()
            waits.append(time.perf_counter() - started)
            time.sleep(interval)
    return waits


def send_cards(url: str, stop: threading.Event, codes: list[int]) -> None:
    """Post heavy cards as fast as the server answers, until ``stop``."""
    cards = heavy_cards()
    with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=300) as client:
        while not stop.is_set():
            for card in cards:
                codes.append(client.post("/v1/sessions", json={"card": card}).status_code)


def measure(url: str, seconds: float, senders: int) -> tuple[list[float], list[int]]:
    """Probe ``/health`` for ``seconds`` while ``senders`` clients post heavy cards."""
    stop, codes = threading.Event(), []
    threads = [threading.Thread(target=send_cards, args=(url, stop, codes)) for _ in range(senders)]
    for thread in threads:
        thread.start()
    result: list[float] = []
    prober = threading.Thread(target=lambda: result.extend(probe(url, stop)))
    prober.start()
    time.sleep(seconds)
    stop.set()
    prober.join()
    for thread in threads:
        thread.join()
    return result, codes


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def print_table(idle: list[float], loaded: list[float], codes: list[int]) -> None:
    print(f"\n{'/health latency (ms)':<22}{'idle':>10}{'heavy cards':>14}{'ratio':>8}")
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
        a, b = percentile(idle, q) * 1000, percentile(loaded, q) * 1000
        print(f"{name:<22}{a:>10.1f}{b:>14.1f}{b / a:>7.1f}x")
    print(f"{'probes':<22}{len(idle):>10}{len(loaded):>14}")
    answered = {code: codes.count(code) for code in sorted(set(codes))}
    print(f"heavy cards answered: {len(codes)} ({answered}); load average {os.getloadavg()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: a random 4x128 GPT-2)")
    parser.add_argument("--seconds", type=float, default=20.0, help="each phase's length")
    parser.add_argument("--senders", type=int, default=3, help="clients posting heavy cards")
    args = parser.parse_args(argv)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = Path(args.model) if args.model else build_model(work / "model", 4, 128)
        flags = ("--api-key", KEY, "--max-body-bytes", str(1 << 20), "--max-card-chars", "32000")
        process, url = start_server(model, work / "s.sqlite3", *flags, timeout=600)
        try:
            idle, _ = measure(url, args.seconds, 0)
            loaded, codes = measure(url, args.seconds, args.senders)
        finally:
            stop_server(process)
    print_table(idle, loaded, codes)
    print(
        json.dumps(
            {
                "idle_p50_s": percentile(idle, 0.5),
                "loaded_p50_s": percentile(loaded, 0.5),
                "loaded_max_s": max(loaded),
                "probes": len(loaded),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
