"""1,000,000 queued jobs on one node (no consumer running): resident memory, and how fast a
restarted node serves again.

Phase 1 (this process): add N jobs through ``add_many`` in batches, report RSS (current and
peak). Phase 2 (a fresh process, like a real restart): open the same data directory,
register a consumer, and time from process start (imports included) until the first job
has been served; report that process' RSS too. Prints ONE JSON object.

    .venv/bin/python benchmarks/memory.py [--jobs 1000000] [--batch 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T_PROCESS = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jobmesh  # noqa: E402
from jobmesh.log import configure_logging  # noqa: E402


def rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB, from /proc."""
    cur = peak = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return round(cur, 1), round(peak, 1)


async def fill(data: Path, n: int, batch: int) -> dict:
    t0 = time.perf_counter()
    async with jobmesh.Node(name="mem", data_dir=data) as node:
        for i in range(0, n, batch):
            await node.jobs.add_many([("bench/memory", {"i": i + k}) for k in range(min(batch, n - i))])
        added = time.perf_counter() - t0
        stats = await node.jobs.statistics()
        cur, peak = rss_mb()
    return {"queued": stats["overall"]["queued"], "add_seconds": round(added, 1), "rss_mb": cur, "peak_rss_mb": peak}


async def serve(data: Path) -> dict:
    """Phase 2, in a fresh process: open, then serve the first job."""
    first = asyncio.get_running_loop().create_future()

    @jobmesh.consumer("bench/memory")
    async def consume(job: jobmesh.Job) -> None:
        if not first.done():
            first.set_result(time.perf_counter())

    t_open = time.perf_counter()
    node = jobmesh.Node(name="mem", data_dir=data)
    node.add_consumer(consume)
    await node.start()
    opened = time.perf_counter()
    served = await asyncio.wait_for(first, 60)
    cur, peak = rss_mb()
    await node.jobs.suspend_queue("main")
    await node.stop(grace=1)
    return {
        "restart_to_first_job_seconds": round(served - T_PROCESS, 3),
        "open_seconds": round(opened - t_open, 3),
        "restart_rss_mb": cur,
        "restart_peak_rss_mb": peak,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--serve", metavar="DATA", help=argparse.SUPPRESS)  # phase 2 (internal)
    args = p.parse_args()
    configure_logging("console", "WARNING")
    if args.serve:
        print(json.dumps(asyncio.run(serve(Path(args.serve)))))
        return 0
    with tempfile.TemporaryDirectory(prefix="jobmesh-bench-") as d:
        data = Path(d) / "node"
        result = {"benchmark": "memory", "jobs": args.jobs}
        result.update(asyncio.run(fill(data, args.jobs, args.batch)))
        result["db_mb"] = round(sum(f.stat().st_size for f in data.glob("jobs.db*")) / 2**20, 1)
        out = subprocess.run([sys.executable, __file__, "--serve", str(data)], capture_output=True, text=True,
                             timeout=300)
        if out.returncode != 0:
            raise SystemExit(f"restart phase failed:\n{out.stderr[-2000:]}")
        result.update(json.loads(out.stdout.strip().splitlines()[-1]))
    result.update({"target_rss_mb": 300, "target_restart_seconds": 10,
                   "load_average_1m": round(os.getloadavg()[0], 2)})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
