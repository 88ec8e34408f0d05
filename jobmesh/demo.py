"""``jobmesh demo``: a node with sample consumers and a mixed workload, shown live.

Fast jobs, slow jobs, jobs that fail a few times before they succeed, jobs that
never succeed (to show GIVEN_UP), progress-reporting jobs and a sync (threaded)
consumer, spread over queues of each type. The screen shows counts by state, the
rate and the running progress bars; a summary follows. Ends by itself (well within
a minute) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

import jobmesh
from jobmesh import JobResult, QueueConfig
from jobmesh.log import configure_logging

STATES = ("QUEUED", "ACTIVE", "SUCCEEDED", "GIVEN_UP", "ERROR", "STOPPED", "DROPPED")


# -- sample consumers ----------------------------------------------------------------

@jobmesh.consumer("demo/fast")
async def fast(job: jobmesh.Job) -> None:
    """A no-op-ish job: most real jobs are this small."""
    await asyncio.sleep(random.random() * 0.002)


@jobmesh.consumer("demo/slow")
async def slow(job: jobmesh.Job, ctx: jobmesh.ExecutionContext) -> Any:
    await asyncio.sleep(job.properties.get("seconds", 0.5))
    return ctx.result().message("slept").succeeded()


@jobmesh.consumer("demo/flaky")
async def flaky(job: jobmesh.Job, ctx: jobmesh.ExecutionContext) -> Any:
    """Fails ``fails`` times (as an exception or a failed result), then succeeds."""
    await asyncio.sleep(0.02)
    if job.retry_count < job.properties.get("fails", 1):
        if job.retry_count % 2:
            return ctx.result().message("upstream busy").failed()
        raise ConnectionError("upstream not reachable (demo)")
    ctx.log("succeeded after %d retries", job.retry_count)
    return None


@jobmesh.consumer("demo/doomed")
async def doomed(job: jobmesh.Job) -> Any:
    return JobResult.FAILED


@jobmesh.consumer("demo/report/*")
async def report(job: jobmesh.Job, ctx: jobmesh.ExecutionContext) -> Any:
    steps = job.properties.get("steps", 5)
    ctx.init_progress(steps, eta=steps * 0.15)
    for i in range(steps):
        if ctx.is_stopped():
            return ctx.result().cancelled()
        await asyncio.sleep(0.15)
        ctx.increment_progress()
        ctx.log("section %d of %d done", i + 1, steps)
    return ctx.result().message(f"{steps} sections").succeeded()


@jobmesh.consumer("demo/hash")
def hash_blob(job: jobmesh.Job) -> None:
    """A sync consumer: runs in the node's thread pool, not on the event loop."""
    data = random.randbytes(job.properties.get("size", 200_000))
    for _ in range(5):
        data = hashlib.sha256(data).digest() * 1000


QUEUES = [
    QueueConfig(name="main", max_parallel=8, retry_delay=0.3),
    QueueConfig(name="bulk", topics=["demo/fast"], max_parallel=8, priority=0),
    QueueConfig(name="slow", topics=["demo/slow", "demo/hash"], max_parallel=4, priority=5),
    QueueConfig(name="retrying", topics=["demo/flaky", "demo/doomed"], retries=3, retry_delay=0.3,
                retry_backoff=1.5, max_parallel=4),
    QueueConfig(name="reports", topics=["demo/report/*"], type="topic_round_robin", max_parallel=3),
]


# -- workload ------------------------------------------------------------------------

async def workload(node: jobmesh.Node, seconds: float, rng: random.Random) -> list[str]:
    """Add a mix of jobs for ``seconds``: a steady trickle plus bursts of fast jobs."""
    ids: list[str] = []
    end = time.monotonic() + seconds
    tick = 0
    while time.monotonic() < end:
        items: list[tuple[str, dict[str, Any] | None]] = []
        items += [("demo/fast", None)] * rng.randint(20, 60)
        if tick % 5 == 0:
            items += [("demo/fast", None)] * 400  # a burst
        if rng.random() < 0.5:
            items.append(("demo/slow", {"seconds": round(rng.uniform(0.2, 1.0), 2)}))
        if rng.random() < 0.4:
            items.append(("demo/flaky", {"fails": rng.randint(1, 3)}))
        if rng.random() < 0.05:
            items.append(("demo/doomed", None))
        if rng.random() < 0.25:
            items.append((f"demo/report/{rng.choice(['sales', 'ops', 'hr'])}", {"steps": rng.randint(3, 8)}))
        if rng.random() < 0.3:
            items.append(("demo/hash", {"size": 100_000}))
        ids += [j.id for j in await node.jobs.add_many(items)]
        tick += 1
        await asyncio.sleep(0.2)
    return ids


# -- the screen ----------------------------------------------------------------------

class Screen:
    """Redraws in place on a terminal; prints a line per second otherwise."""

    def __init__(self, out: TextIO, live: bool) -> None:
        self.out = out
        self.live = live
        self.lines = 0

    def show(self, text: str) -> None:
        if self.live:
            if self.lines:
                self.out.write(f"\x1b[{self.lines}F\x1b[J")
            self.out.write(text + "\n")
            self.lines = text.count("\n") + 1
        else:
            self.out.write(text.splitlines()[0] + "\n")
        self.out.flush()


def bar(done: int, total: int | None, width: int = 20) -> str:
    if not total:
        return "[" + " " * width + "]"
    filled = int(width * min(done, total) / total)
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


async def render(node: jobmesh.Node, finals: Counter, started: float, rate: float) -> str:
    stats = await node.jobs.statistics()
    o = stats["overall"]
    counts = {"QUEUED": o["queued"], "ACTIVE": o["active"], **{s: finals.get(s, 0) for s in STATES[2:]}}
    elapsed = time.monotonic() - started
    lines = [
        f"jobmesh demo — node {node.name} — {elapsed:5.1f}s — {rate:8.0f} jobs/s — "
        + "  ".join(f"{s} {counts[s]}" for s in STATES),
        "",
        f"  {'queue':<10} {'type':<18} {'queued':>7} {'active':>6} {'done':>7} {'retried':>7} {'cancelled':>9}",
    ]
    for q in QUEUES:
        s = stats["queues"].get(q.name, {})
        lines.append(f"  {q.name:<10} {q.type:<18} {s.get('queued', 0):>7} {s.get('active', 0):>6} "
                     f"{s.get('finished', 0):>7} {s.get('failed', 0):>7} {s.get('cancelled', 0):>9}")
    active_reports = [j for j in await node.jobs.find(state="ACTIVE", limit=50) if j.topic.startswith("demo/report/")]
    lines.append("")
    for j in active_reports[:3]:
        lines.append(f"  {j.topic:<18} {bar(j.progress.step, j.progress.steps)}")
    for _ in range(3 - len(active_reports[:3])):
        lines.append("")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------

async def run(args: argparse.Namespace, data: Path, out: TextIO) -> int:
    rng = random.Random(args.seed)
    random.seed(args.seed)
    finals: Counter = Counter()
    retries = 0

    def count(n: Any) -> None:
        nonlocal retries
        if n.topic == "job/failed":
            retries += 1
        elif n.topic != "job/added" and n.topic != "job/started":
            finals[n.state] += 1

    node = jobmesh.Node(name=args.name, data_dir=data, capacity=16, queues=QUEUES, http=args.http,
                        history_ttl=3600)
    for c in (fast, slow, flaky, doomed, report, hash_blob):
        node.add_consumer(c)
    screen = Screen(out, live=out.isatty() and not args.plain)
    async with node:
        node.events.add_listener(count)
        if node.http_url:
            out.write(f"HTTP API and console: {node.http_url}\n")
        started = time.monotonic()
        producer = asyncio.ensure_future(workload(node, args.seconds, rng))
        last_done, last_t, rate = 0, time.monotonic(), 0.0
        deadline = started + args.seconds + args.drain
        while True:
            await asyncio.sleep(0.25 if screen.live else 1.0)
            now = time.monotonic()
            done = sum(finals.values())
            rate = 0.7 * rate + 0.3 * ((done - last_done) / max(now - last_t, 1e-6))
            last_done, last_t = done, now
            screen.show(await render(node, finals, started, rate))
            o = (await node.jobs.statistics())["overall"]
            if producer.done() and o["queued"] == 0 and o["active"] == 0:
                break
            if now > deadline:
                out.write("demo time is up; stopping with jobs still queued\n")
                break
        ids = await producer if producer.done() else []
        if not producer.done():
            producer.cancel()
        elapsed = time.monotonic() - started
        stats = (await node.jobs.statistics())["overall"]
    total = sum(finals.values())
    out.write("\nsummary\n")
    out.write(f"  jobs added      {len(ids)}\n")
    for s in STATES[2:]:
        if finals.get(s):
            out.write(f"  {s:<15} {finals[s]}\n")
    out.write(f"  retries         {retries}\n")
    out.write(f"  still queued    {stats['queued']}\n")
    out.write(f"  elapsed         {elapsed:.1f} s   ({total / max(elapsed, 1e-6):.0f} jobs/s on average)\n")
    out.write(f"  avg waiting     {stats['average_waiting_time']:.1f} ms   "
              f"avg processing {stats['average_processing_time']:.1f} ms\n")
    out.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jobmesh demo", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=15.0, help="how long the workload adds jobs (default 15)")
    p.add_argument("--drain", type=float, default=25.0, help="max seconds to let the rest finish (default 25)")
    p.add_argument("--data", help="data directory (default: a temporary one, removed at the end)")
    p.add_argument("--http", help="also serve the HTTP API and console on HOST:PORT")
    p.add_argument("--name", default="demo", help="node name")
    p.add_argument("--seed", type=int, default=7, help="random seed of the workload")
    p.add_argument("--plain", action="store_true", help="no live redraw: one status line per second")
    args = p.parse_args(argv)
    configure_logging("console", "WARNING")
    tmp = None
    if args.data:
        data = Path(args.data)
    else:
        tmp = tempfile.mkdtemp(prefix="jobmesh-demo-")
        data = Path(tmp) / args.name
    try:
        return asyncio.run(run(args, data, sys.stdout))
    except KeyboardInterrupt:
        return 130
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
