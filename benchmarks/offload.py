"""Offloading benchmarks (issue 4). Prints ONE JSON object with three parts:

- ``throughput``: N no-op jobs added on node A, which has no consumer for them, and run
  on node B (a ``jobmesh node`` process); both stores durable (WAL, synchronous=NORMAL).
  Jobs/s from the first add to the last result committed at A. Target >= 10,000 (issue 11). Also
  the CPU seconds each node spent meanwhile (A's include this process's adds; B's from /proc), and
  the jobs per CPU second of the busier one: steadier than jobs/s on a shared machine.
- ``makespan``: nodes with 1, 4 and 4 slots, 90 jobs of 0.1 s added at the 1-slot node
  (A, in this process; the others are ``jobmesh node`` processes). Makespan against the
  ideal (total work / total slots = 1.0 s); target <= 1.1x. Also the number of moves.
- ``reassignment``: jobs of 5 s running at B when B is killed (kill -9): seconds until
  they run again at C, against heartbeat_timeout + 1 s.

    .venv/bin/python benchmarks/offload.py [--jobs 20000] [--batch 1000] [--part all|throughput|makespan|reassignment]
                                           [--no-gc-tune]

Node A tunes its GC as ``jobmesh node`` does once its node is up (``jobmesh.runner.tune_gc``), as
the other nodes, which are such processes, do; ``--no-gc-tune`` leaves A's GC settings as they are.

Numbers taken on a shared 2-core machine while other work runs are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import jobmesh  # noqa: E402
from jobmesh.config import NodeConfig  # noqa: E402
from jobmesh.job import JobState  # noqa: E402
from jobmesh.ports import free_port_pair  # noqa: E402
from jobmesh.log import configure_logging  # noqa: E402
from jobmesh.runner import tune_gc  # noqa: E402

INTERVAL, TIMEOUT = 0.2, 1.0
GC_TUNE = True  # node A (this process) tunes its GC as ``jobmesh node`` does (B and C are such processes)

CONSUMERS = '''
import asyncio, jobmesh

@jobmesh.consumer("bench/noop")
async def noop(job):
    return None

@jobmesh.consumer("bench/sleep")
async def sleep(job):
    await asyncio.sleep(float(job.properties.get("s", 0.1)))
'''




class Proc:
    """A ``jobmesh node`` subprocess joined to ``seed``; killed when the benchmark ends."""

    def __init__(self, tmp: Path, name: str, seed: str, capacity: int, max_parallel: int = 15) -> None:
        self.name = name
        self.endpoint = f"tcp://127.0.0.1:{free_port_pair()}"
        conf = tmp / f"{name}.toml"
        conf.write_text(f"[node]\ncapacity = {capacity}\n[discovery]\nheartbeat_interval = {INTERVAL}\n"
                        f"heartbeat_timeout = {TIMEOUT}\n[[queue]]\nname = \"main\"\nmax_parallel = {max_parallel}\n")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp), str(REPO), os.environ.get("PYTHONPATH", "")])}
        logs = Path(os.environ.get("JOBMESH_BENCH_LOGS") or tmp)  # keep the node logs somewhere else
        self.log = open(logs / f"{name}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, *(["-m", "cProfile", "-o", os.environ["JOBMESH_BENCH_PROFILE"] + "." + name]
                               if os.environ.get("JOBMESH_BENCH_PROFILE") else []), "-m", "jobmesh", "node", "--name", name, "--data", str(tmp / name), "--bind",
             self.endpoint, "--seed", seed, "--http", "off", "--config", str(conf), "--consumers", "bench_consumers",
             "--log-format", "json"], cwd=tmp, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def cpu_seconds(self) -> float | None:
        """The process's CPU time so far (user + system, from /proc: Linux), or None."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def close(self) -> None:
        if os.environ.get("JOBMESH_BENCH_PROFILE") and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # a graceful exit writes the profile
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        self.log.close()


def node_config(tmp: Path, name: str, capacity: int, max_parallel: int = 15) -> NodeConfig:
    cfg = NodeConfig()
    cfg.name, cfg.data, cfg.http, cfg.capacity = name, str(tmp / name), None, capacity
    cfg.bind = f"tcp://127.0.0.1:{free_port_pair()}"
    cfg.discovery.heartbeat_interval, cfg.discovery.heartbeat_timeout = INTERVAL, TIMEOUT
    cfg.queues = [jobmesh.QueueConfig(name="main", max_parallel=max_parallel)]
    return cfg


async def joined(node: jobmesh.Node, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not (len(node.topology.instances) == n and node.topology.current):
        if time.monotonic() > deadline:
            raise SystemExit(f"the mesh did not form within {timeout}s: {node.topology.names}")
        await asyncio.sleep(0.05)
    await asyncio.sleep(3 * INTERVAL)  # every capacity advertised at least once


async def wait_finished(node: jobmesh.Node, n: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        o = (await node.jobs.statistics())["overall"]
        if o["finished"] + o["cancelled"] >= n:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"not finished within {timeout}s: {o}")
        await asyncio.sleep(0.005)


async def throughput(tmp: Path, jobs: int, batch: int) -> dict[str, Any]:
    a = jobmesh.Node(config=node_config(tmp, "tp-a", 4))
    await a.start()
    if GC_TUNE:
        tune_gc()  # as the ``jobmesh node`` processes do once their node is up (jobmesh/runner.py)
    b = Proc(tmp, "tp-b", a.config.bind, capacity=64, max_parallel=64)
    try:
        await joined(a, 2)
        t0, a_cpu0, b_cpu0 = time.perf_counter(), time.process_time(), b.cpu_seconds()
        for i in range(0, jobs, batch):
            await a.jobs.add_many([("bench/noop", None)] * min(batch, jobs - i))
        added = time.perf_counter() - t0
        await wait_finished(a, jobs)
        wall = time.perf_counter() - t0
        a_cpu, b_cpu1 = time.process_time() - a_cpu0, b.cpu_seconds()
        b_cpu = None if b_cpu0 is None or b_cpu1 is None else b_cpu1 - b_cpu0
        stats = a.transfer.stats()
        # the machine's speed swings: the CPU each node spent is the steadier measure of the code
        busiest = max(a_cpu, b_cpu or 0.0)
        return {"jobs": jobs, "seconds": round(wall, 3), "jobs_per_second": round(jobs / wall, 1),
                "add_seconds": round(added, 3), "target_jobs_per_second": 10000,
                "cpu_seconds": {"origin_a": round(a_cpu, 2), "target_b": None if b_cpu is None else round(b_cpu, 2)},
                "jobs_per_cpu_second_of_the_busier_node": round(jobs / busiest, 1) if busiest > 0 else None,
                "messages_sent_by_origin": stats["messages_sent"],
                "jobs_per_handoff_message": round(stats["offloaded_out"] / max(1, stats["messages_sent"]), 1),
                "ran_at_target": stats["results_in"]}
    finally:
        await a.stop(grace=1.0)
        b.close()


async def makespan(tmp: Path) -> dict[str, Any]:
    a = jobmesh.Node(config=node_config(tmp, "ms-a", 1))

    @jobmesh.consumer("bench/sleep")
    async def sleep(job: jobmesh.Job) -> None:
        await asyncio.sleep(float(job.properties.get("s", 0.1)))

    a.add_consumer(sleep)
    await a.start()
    if GC_TUNE:
        tune_gc()
    b = Proc(tmp, "ms-b", a.config.bind, capacity=4)
    c = Proc(tmp, "ms-c", a.config.bind, capacity=4)
    try:
        await joined(a, 3)
        n, d = 90, 0.1
        t0 = time.perf_counter()
        added = await a.jobs.add_many([("bench/sleep", {"s": d})] * n)
        await wait_finished(a, n)
        wall = time.perf_counter() - t0
        targets: dict[str, int] = {}
        for j in added:
            got = await a.jobs.get(j.id)
            targets[got.target or "?"] = targets.get(got.target or "?", 0) + 1
        ideal = n * d / 9
        return {"jobs": n, "job_seconds": d, "slots": [1, 4, 4], "makespan": round(wall, 3),
                "ideal": round(ideal, 3), "ratio": round(wall / ideal, 3), "target_ratio": 1.1,
                "moves": a.offloader.moves_out, "decisions": a.offloader.decisions, "ran_at": targets}
    finally:
        await a.stop(grace=1.0)
        b.close()
        c.close()


async def reassignment(tmp: Path) -> dict[str, Any]:
    a = jobmesh.Node(config=node_config(tmp, "ra-a", 1))
    await a.start()
    if GC_TUNE:
        tune_gc()
    b = Proc(tmp, "ra-b", a.config.bind, capacity=4)
    c = Proc(tmp, "ra-c", a.config.bind, capacity=4)
    try:
        await joined(a, 3)
        jobs = await a.jobs.add_many([("bench/sleep", {"s": 5.0})] * 4)
        deadline = time.monotonic() + 20
        at_b: list[str] = []
        while len(at_b) < 1:
            at_b = [j.id for j in [await a.jobs.get(x.id) for x in jobs]
                    if j.state is JobState.ACTIVE and j.target == "ra-b"]
            if time.monotonic() > deadline:
                raise SystemExit("no job started at ra-b")
            await asyncio.sleep(0.01)
        b.kill()
        t0 = time.perf_counter()
        while True:
            got = [await a.jobs.get(i) for i in at_b]
            if all(j.state is JobState.ACTIVE and j.target not in (None, "ra-b") for j in got):
                break
            if time.perf_counter() - t0 > 30:
                raise SystemExit("jobs of the killed target did not run again within 30 s")
            await asyncio.sleep(0.005)
        seconds = time.perf_counter() - t0
        await wait_finished(a, len(jobs), timeout=60)
        return {"jobs_moved_back": len(at_b), "seconds_until_running_elsewhere": round(seconds, 3),
                "heartbeat_timeout": TIMEOUT, "target_seconds": TIMEOUT + 1.0,
                "requeued_by_origin": a.transfer.requeued}
    finally:
        await a.stop(grace=1.0)
        b.close()
        c.close()


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=20000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--part", choices=["all", "throughput", "makespan", "reassignment"], default="all")
    p.add_argument("--no-gc-tune", action="store_true", help="leave node A's GC settings as they are")
    args = p.parse_args()
    global GC_TUNE
    GC_TUNE = not args.no_gc_tune
    configure_logging("console", os.environ.get("JOBMESH_BENCH_LOG", "ERROR"))
    out: dict[str, Any] = {"benchmark": "offload", "cpus": os.cpu_count(),
                           "note": "shared 2-core machine; other work may be running: figures are noisy",
                           "gc_tuned": GC_TUNE}
    with tempfile.TemporaryDirectory(prefix="jobmesh-offload-", dir=os.environ.get("JOBMESH_BENCH_TMP")) as d:
        tmp = Path(d)
        (tmp / "bench_consumers.py").write_text(CONSUMERS)
        if args.part in ("all", "throughput"):
            out["throughput"] = await throughput(tmp, args.jobs, args.batch)
        if args.part in ("all", "makespan"):
            out["makespan"] = await makespan(tmp)
        if args.part in ("all", "reassignment"):
            out["reassignment"] = await reassignment(tmp)
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
