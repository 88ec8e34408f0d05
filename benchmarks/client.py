"""Producing through the HTTP API from another process: ``jobmesh.Client.add`` at a given
concurrency, and ``add_many`` batches (one POST each).

Prints ONE JSON object. The node runs in this process (HTTP on a free loopback port, a no-op
consumer that runs the jobs as they come, default durability); the producer is a second
process (this script with ``--producer``), so the figures include the client's own cost, JSON
both ways and the loopback.

    .venv/bin/python benchmarks/client.py [--jobs 20000] [--concurrency 64] [--batch-jobs 100000]
                                          [--batch 1000] [--batch-concurrency 2] [--no-consumer]

``add_jobs_per_second``: Client.add calls completed per second (each returns after its job is
committed); ``add_many_jobs_per_second``: jobs per second over ``add_many`` batches of ``--batch``.
Targets (issue 12): 3,000 and 20,000.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import load_average, quiet_logs, run_on_fresh_node  # first: puts the repo on sys.path

import jobmesh


@jobmesh.consumer("bench/noop")
async def noop(job: jobmesh.Job) -> None:
    return None


async def produce(args: argparse.Namespace) -> dict:
    """The producer process: N adds at a concurrency, then add_many batches."""
    out: dict = {}
    cpu0 = time.process_time()
    async with jobmesh.Client(args.url, timeout=60) as client:
        await client.add("bench/warm")  # the connection pool and the node's first request
        if args.jobs:
            todo = iter(range(args.jobs))

            async def worker() -> None:
                for i in todo:
                    await client.add("bench/noop", {"i": i})

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            dt = time.perf_counter() - t0
            out.update(add_jobs=args.jobs, add_seconds=round(dt, 3), add_jobs_per_second=round(args.jobs / dt, 1))
        if args.batch_jobs:
            batches = iter(range(0, args.batch_jobs, args.batch))
            body = [("bench/noop", {"i": i}) for i in range(args.batch)]

            async def batcher() -> None:
                for _ in batches:
                    await client.add_many(body)

            t0 = time.perf_counter()
            await asyncio.gather(*(batcher() for _ in range(args.batch_concurrency)))
            dt = time.perf_counter() - t0
            n = len(range(0, args.batch_jobs, args.batch)) * args.batch
            out.update(add_many_jobs=n, add_many_seconds=round(dt, 3), add_many_jobs_per_second=round(n / dt, 1))
    out["producer_cpu_seconds"] = round(time.process_time() - cpu0, 3)
    return out


async def run(args: argparse.Namespace, data: Path) -> dict:
    queues = [jobmesh.QueueConfig(name="main", max_parallel=64)]
    async with jobmesh.Node(name="bench", data_dir=data, capacity=64, queues=queues, http="127.0.0.1:0") as node:
        if not args.no_consumer:
            node.add_consumer(noop)
        cmd = [sys.executable, __file__, "--producer", "--url", node.http_url, "--jobs", str(args.jobs),
               "--concurrency", str(args.concurrency), "--batch-jobs", str(args.batch_jobs),
               "--batch", str(args.batch), "--batch-concurrency", str(args.batch_concurrency)]
        cpu0 = time.process_time()
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"producer failed with {proc.returncode}")
        result = json.loads(out.decode().strip().splitlines()[-1])
        node_cpu = time.process_time() - cpu0
        total = (await node.jobs.statistics())["overall"]
    return {
        "benchmark": "client",
        **result,
        "concurrency": args.concurrency,
        "batch": args.batch,
        "batch_concurrency": args.batch_concurrency,
        "consumer": not args.no_consumer,
        "node_cpu_seconds": round(node_cpu, 3),
        "jobs_recorded": total["queued"] + total["active"] + total["finished"],
        "target_add_jobs_per_second": 3000,
        "target_add_many_jobs_per_second": 20000,
        "load_average_1m": load_average(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--batch-jobs", type=int, default=100000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--batch-concurrency", type=int, default=2)
    p.add_argument("--no-consumer", action="store_true", help="only record the jobs (no consumer runs them)")
    p.add_argument("--producer", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.producer:
        print(json.dumps(asyncio.run(produce(args))))
        return
    quiet_logs()
    print(json.dumps(run_on_fresh_node(run, args)))


if __name__ == "__main__":
    main()
