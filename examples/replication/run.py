"""Run the replication example: a node with the ordered replication queue, a receiver, an outage.

    python -m examples.replication.run [--items 60] [--outage 2.0]

It starts a receiver (aiohttp, loopback) and a ``jobmesh node`` process with the
queue of ``jobmesh.toml`` and the agent of ``consumers.py``, submits the items one
batch at a time, takes the receiver down after a third of them arrived, keeps
submitting, brings the receiver back after ``--outage`` seconds, and waits until
every item arrived. It then checks what the receiver stored: every item, exactly
once, in submission order. Prints a JSON summary; exit 0 when the check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from .receiver import Receiver

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TOPIC = "replication/push"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval)
    return False


async def start_node(workdir: Path, name: str = "replicator") -> tuple[asyncio.subprocess.Process, str, Path]:
    """A ``jobmesh node`` process with the replication queue and agent; (process, url, log path)."""
    port = _free_port()
    log_path = workdir / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    log_file = open(log_path, "ab")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jobmesh", "node", "--name", name, "--data", str(workdir / name),
            "--http", f"127.0.0.1:{port}", "--bind", "auto",  # never the default port: another node may hold it
            "--config", str(HERE / "jobmesh.toml"),
            "--consumers", "examples.replication.consumers", "--log-format", "json",
            cwd=str(REPO), env=env, stdout=log_file, stderr=subprocess.STDOUT)
    finally:
        log_file.close()  # the child has its own descriptor
    url = f"http://127.0.0.1:{port}"

    async def healthy() -> bool:
        if proc.returncode is not None:
            raise RuntimeError(f"node exited with {proc.returncode}; see {log_path}")
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as s:
                async with s.get(url + "/api/v1/health") as r:
                    return r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    if not await _wait_for(healthy, 30.0):
        proc.kill()
        raise RuntimeError(f"node not healthy after 30 s; see {log_path}")
    return proc, url, log_path


async def stop_node(proc: asyncio.subprocess.Process, timeout: float = 20.0) -> None:
    """SIGTERM (graceful drain), kill -9 if it takes longer than ``timeout``."""
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()


async def run(items: int = 60, outage: float = 2.0, batch: int = 5, workdir: Path | None = None,
              timeout: float = 60.0) -> dict[str, Any]:
    """The whole scenario; returns the summary (``ok`` says whether the check passed)."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="jobmesh-replication-"))
    receiver = await Receiver().start()
    proc, url, log_path = await start_node(workdir)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    outage_at = max(1, items // 3)
    went_down = came_back = None
    started = time.monotonic()
    try:
        seq = 0
        while seq < items:
            bodies = []
            for n in range(seq, min(items, seq + batch)):
                bodies.append({"topic": TOPIC, "properties": {
                    "receiver": receiver.url, "id": f"item-{n:05d}", "seq": n,
                    "path": f"/content/site/page-{n}", "payload": {"title": f"Page {n}", "rev": 1}}})
            async with http.post(url + "/api/v1/jobs", json=bodies) as r:
                if r.status != 201:
                    raise RuntimeError(f"submitting items failed: HTTP {r.status} {await r.text()}")
            seq += len(bodies)
            if went_down is None and len(receiver.state.items) >= outage_at:
                await receiver.stop()  # the outage: connections refused from now on
                went_down = time.monotonic()
            if went_down is not None and came_back is None and time.monotonic() - went_down >= outage:
                await receiver.start()
                came_back = time.monotonic()
            await asyncio.sleep(0.02)
        if went_down is None:  # everything was delivered before a third arrived: go down now
            await receiver.stop()
            went_down = time.monotonic()
        if came_back is None:
            await asyncio.sleep(max(0.0, outage - (time.monotonic() - went_down)))
            await receiver.start()
            came_back = time.monotonic()

        async def all_arrived() -> bool:
            return len(receiver.state.items) >= items

        arrived = await _wait_for(all_arrived, timeout)
        async with http.get(url + "/api/v1/jobs", params={"topic": TOPIC, "limit": str(items + 10)}) as r:
            jobs = (await r.json())["jobs"]
        stored = receiver.state.items
        seqs = [i["seq"] for i in stored]
        in_order = seqs == list(range(items))
        states: dict[str, int] = {}
        for j in jobs:
            states[j["state"]] = states.get(j["state"], 0) + 1
        summary = {
            "ok": bool(arrived and in_order and states.get("SUCCEEDED") == items),
            "items": items,
            "stored": len(stored),
            "in_order": in_order,
            "duplicates_refused": receiver.state.duplicates,
            "requests": receiver.state.requests,
            "failed_attempts": sum(j["retry_count"] for j in jobs),
            "job_states": states,
            "outage_seconds": round((came_back or went_down) - went_down, 2),
            "stored_before_outage": outage_at,
            "seconds": round(time.monotonic() - started, 2),
            "node_log": str(log_path),
        }
        if not in_order:
            summary["first_out_of_order"] = next(
                (i for i, s in enumerate(seqs) if s != i), len(seqs))
        return summary
    finally:
        await http.close()
        await stop_node(proc)
        await receiver.stop()  # the node's log and data stay in workdir for inspection


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="jobmesh replication example: delivery in order through an outage")
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--outage", type=float, default=2.0, help="seconds the receiver stays down")
    parser.add_argument("--workdir", type=Path, help="where the node keeps its data and log (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.items < 1 or args.outage < 0:
        parser.error("--items must be at least 1 and --outage not negative")
    summary = asyncio.run(run(args.items, args.outage, workdir=args.workdir))
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
