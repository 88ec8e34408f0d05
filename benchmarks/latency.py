"""Add-to-start latency at a steady rate: each job is added on its own with ``node.jobs.add``
(which returns after its commit) and the consumer measures ``now - job.created``.

Prints ONE JSON object with p50/p90/p99/max in milliseconds.

    .venv/bin/python benchmarks/latency.py [--rate 1000] [--seconds 5] [--no-gc-tune]

The node's GC is tuned as ``jobmesh node`` tunes it once its node is up
(``jobmesh.runner.tune_gc``) unless ``--no-gc-tune``. Target (issue 11): p99 <= 2 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from _common import load_average, quiet_logs, run_on_fresh_node  # first: puts the repo on sys.path

import jobmesh
from jobmesh.runner import tune_gc

latencies: list[float] = []


@jobmesh.consumer("bench/latency")
async def measure(job: jobmesh.Job) -> None:
    latencies.append((time.time() - job.created) * 1000.0)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1))))]


async def run(args: argparse.Namespace, data: Path) -> dict:
    async with jobmesh.Node(name="bench", data_dir=data) as node:
        node.add_consumer(measure)
        if not args.no_gc_tune:
            tune_gc()  # as `jobmesh node` does once its node is up (jobmesh/runner.py)
        total = int(args.rate * args.seconds)
        interval = 1.0 / args.rate
        pending: set[asyncio.Task] = set()
        t0 = time.perf_counter()
        sent = 0
        while sent < total:
            # add every job that is due by now, each with its own add() call
            due = min(total, int((time.perf_counter() - t0) / interval) + 1)
            while sent < due:
                task = asyncio.ensure_future(node.jobs.add("bench/latency"))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
            await asyncio.sleep(interval)
        elapsed = time.perf_counter() - t0
        if pending:
            await asyncio.wait(pending, timeout=30)
        deadline = time.monotonic() + 30
        while len(latencies) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    warm = latencies[int(len(latencies) * 0.05):]  # the first 5% warm caches and the loop
    return {
        "benchmark": "latency",
        "rate_per_second": args.rate,
        "achieved_rate": round(total / elapsed, 1),
        "jobs": len(latencies),
        "p50_ms": round(pct(warm, 50), 3),
        "p90_ms": round(pct(warm, 90), 3),
        "p99_ms": round(pct(warm, 99), 3),
        "max_ms": round(max(warm), 3),
        "mean_ms": round(statistics.fmean(warm), 3),
        "target_p99_ms": 2,
        "gc_tuned": not args.no_gc_tune,
        "load_average_1m": load_average(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rate", type=float, default=1000)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--no-gc-tune", action="store_true", help="leave CPython's GC settings as they are")
    args = p.parse_args()
    quiet_logs()
    result = run_on_fresh_node(run, args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
