"""End-to-end throughput of one node: N no-op jobs added through the public API and run.

Prints ONE JSON object. Default durability (WAL, synchronous=NORMAL).

    .venv/bin/python benchmarks/throughput.py [--jobs 20000] [--batch 1000] [--capacity 64] [--max-parallel 64]
                                              [--repeat 3] [--no-gc-tune]

``jobs_per_second`` is the median of ``--repeat`` runs (each on a fresh node and store).
The capacity and max_parallel defaults here (64) suit no-op jobs; the node's own defaults
(capacity 16, max_parallel 15) give fewer jobs per commit: pass them to compare.
The node's GC is tuned as ``jobmesh node`` tunes it once its node is up
(``jobmesh.runner.tune_gc``) unless ``--no-gc-tune``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from _common import load_average, quiet_logs, run_on_fresh_node  # first: puts the repo on sys.path

import jobmesh
from jobmesh.runner import tune_gc


@jobmesh.consumer("bench/noop")
async def noop(job: jobmesh.Job) -> None:
    return None


async def run(args: argparse.Namespace, data: Path) -> dict:
    queues = [jobmesh.QueueConfig(name="main", max_parallel=args.max_parallel)]
    async with jobmesh.Node(name="bench", data_dir=data, capacity=args.capacity, queues=queues) as node:
        node.add_consumer(noop)
        if not args.no_gc_tune:
            tune_gc()  # as `jobmesh node` does once its node is up (jobmesh/runner.py)
        n = args.jobs
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for i in range(0, n, args.batch):
            await node.jobs.add_many([("bench/noop", None)] * min(args.batch, n - i))
        added = time.perf_counter() - wall0
        deadline = time.monotonic() + 300
        while True:
            stats = await node.jobs.statistics()
            if stats["overall"]["finished"] >= n:
                break
            if time.monotonic() > deadline:
                raise SystemExit("benchmark did not finish within 300 s")
            await asyncio.sleep(0.005)
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        commits = node.store.commits
    return {
        "benchmark": "throughput",
        "jobs": n,
        "seconds": round(wall, 3),
        "jobs_per_second": round(n / wall, 1),
        "add_seconds": round(added, 3),
        "cpu_seconds": round(cpu, 3),
        "jobs_per_cpu_second": round(n / cpu, 1),
        "commits": commits,
        "capacity": args.capacity,
        "max_parallel": args.max_parallel,
        "durability": "normal",
        "gc_tuned": not args.no_gc_tune,
        "target_jobs_per_second": 20000,
        "load_average_1m": load_average(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--jobs", type=int, default=20000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--capacity", type=int, default=64)
    p.add_argument("--max-parallel", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3, help="runs; the median is reported, the best too")
    p.add_argument("--no-gc-tune", action="store_true", help="leave CPython's GC settings as they are")
    args = p.parse_args()
    quiet_logs()
    runs = []
    for i in range(args.repeat):  # a fresh node and store each time; the machine is shared, so runs vary
        runs.append(run_on_fresh_node(run, args))
    rates = sorted(r["jobs_per_second"] for r in runs)
    result = dict(max(runs, key=lambda r: r["jobs_per_second"]))  # the best run's details
    result.update({
        "repeat": args.repeat,
        "jobs_per_second": rates[len(rates) // 2],  # median
        "best_jobs_per_second": rates[-1],
        "runs_jobs_per_second": [r["jobs_per_second"] for r in runs],
        "runs_jobs_per_cpu_second": [r["jobs_per_cpu_second"] for r in runs],
    })
    del result["seconds"], result["add_seconds"], result["cpu_seconds"], result["jobs_per_cpu_second"]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
