"""Job payload between two real ``jobmesh node`` processes on loopback; prints one JSON object.

- ``raw_zmq_mb_s``: the physical limit here — a DEALER sending 512 KiB messages to a ROUTER
  over tcp loopback in this process (pyzmq, no jobmesh), measured in the same run.
- ``transfer``: a job on A (no consumer for its topic) with a payload of ``--size`` MiB goes to
  B; timed from the job's submission until B's blob store serves the blob (whole, verified,
  renamed: ``HEAD /api/v1/blobs/{id}`` answers 200). The blob was uploaded to A beforehand (not
  timed), streamed from generated data (no source file on disk). ``--rounds`` transfers of
  blobs of their own; ``mb_s`` is the median.
- ``heartbeats``: a SUB of the benchmark's own on both nodes' heartbeat endpoints records
  when each heartbeat arrives; the largest gap per node during the transfer, against the
  interval and the failure-detection timeout.
- ``small_jobs``: jobs/s of 1,000 small offloaded jobs (A -> B), idle and while a
  ``--busy-size`` MiB payload is moving A -> B, ``--rounds`` pairs measured one after the other
  (the machine's load changes alike for both); ``ratio`` = median busy / median idle.
- ``load_average``: the machine's, at the end (the figures above share its 2 cores with
  whatever else runs).

    python benchmarks/payload.py [--size 200] [--busy-size 1024] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack  # noqa: E402
import zmq  # noqa: E402

from jobmesh.ports import free_port, free_port_pair  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20
INTERVAL, TIMEOUT = 0.2, 1.0

CONSUMERS = '''
import jobmesh

@jobmesh.consumer("bench/small")
async def small(job):
    return None

@jobmesh.consumer("bench/big")
def big(job, ctx):
    return None
'''

CONFIG = f"""
[node]
capacity = 16
blob_gc_grace = 3600
max_blob_size = {8 << 30}
[discovery]
heartbeat_interval = {INTERVAL}
heartbeat_timeout = {TIMEOUT}
"""


def raw_zmq(total: int, chunk: int = 512 * 1024) -> float:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    data = os.urandom(chunk)
    n = total // chunk
    dealer.send(b"hi")
    router.recv_multipart()

    def send() -> None:
        for _ in range(n):
            dealer.send(data, copy=False)

    t0 = time.perf_counter()
    th = threading.Thread(target=send)
    th.start()
    for _ in range(n):
        router.recv_multipart(copy=False)
    dt = time.perf_counter() - t0
    th.join()
    dealer.close(0)
    router.close(0)
    ctx.term()
    return n * chunk / dt / 1e6


def generated(size: int, seed: int) -> Iterator[bytes]:
    block = hashlib.sha256(str(seed).encode()).digest() * (MIB // 32)
    left, i = size, 0
    while left > 0:
        piece = (i.to_bytes(8, "big") + block[8:])[:min(left, MIB)]
        yield piece
        left -= len(piece)
        i += 1


def upload(url: str, size: int, seed: int) -> dict[str, Any]:
    req = urllib.request.Request(url + "/api/v1/blobs", data=generated(size, seed), method="POST",
                                 headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def api(url: str, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        raw = r.read()
        return json.loads(raw) if raw else None


def has_blob(url: str, blob_id: str) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url + f"/api/v1/blobs/{blob_id}", method="HEAD"),
                                    timeout=5) as r:
            return r.status == 200
    except Exception:
        return False


class Node:
    def __init__(self, tmp: Path, name: str, seeds: list[str], consumers: bool) -> None:
        self.port = free_port_pair()
        self.http = free_port()
        self.url = f"http://127.0.0.1:{self.http}"
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.pub = f"tcp://127.0.0.1:{self.port + 1}"
        args = [sys.executable, "-m", "jobmesh", "node", "--name", name, "--data", str(tmp / name),
                "--bind", self.endpoint, "--http", f"127.0.0.1:{self.http}", "--config", str(tmp / "node.toml"),
                "--log-format", "json"]
        for s in seeds:
            args += ["--seed", s]
        if consumers:
            args += ["--consumers", "bench_consumers"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp), str(REPO)])}
        self.log = open(tmp / f"{name}.log", "wb")
        self.proc = subprocess.Popen(args, cwd=tmp, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                api(self.url, "GET", "/api/v1/health")
                return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("node did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class HeartbeatWatch(threading.Thread):
    def __init__(self, endpoints: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        for ep in endpoints.values():
            self.sub.connect(ep)
        self.arrivals: dict[str, list[float]] = {n: [] for n in endpoints}
        self.running = True

    def run(self) -> None:
        while self.running:
            if self.sub.poll(50):
                frames = self.sub.recv_multipart()
                try:
                    body = msgpack.unpackb(frames[-1], raw=False)
                    name = body.get("name") or body.get("from")
                except Exception:
                    continue
                if name in self.arrivals:
                    self.arrivals[name].append(time.monotonic())

    def max_gap(self, start: float, end: float) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, ts in self.arrivals.items():
            window = [t for t in ts if start - 1.0 <= t <= end + 0.1]
            gaps = [b - a for a, b in zip(window, window[1:])]
            out[name] = round(max(gaps), 3) if gaps else None
        return out

    def close(self) -> None:
        self.running = False
        self.join(2)
        self.sub.close(0)
        self.ctx.term()


def wait_all(url: str, ids: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    left = set(ids)
    while left and time.monotonic() < deadline:
        data = api(url, "GET", "/api/v1/jobs?state=SUCCEEDED&topic=bench/small&limit=10000")
        left -= {j["id"] for j in data["jobs"]}
        if left:
            time.sleep(0.02)
    if left:
        raise RuntimeError(f"{len(left)} small jobs not done")


def small_jobs(url: str, n: int) -> float:
    t0 = time.monotonic()
    jobs = api(url, "POST", "/api/v1/jobs", [{"topic": "bench/small"} for _ in range(n)])
    wait_all(url, [j["id"] for j in jobs])
    return n / (time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=200, help="MiB of the timed transfer (default 200)")
    ap.add_argument("--busy-size", type=int, default=1024, help="MiB moving while small jobs run (default 1024)")
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3, help="repetitions of each measurement (medians count)")
    ap.add_argument("--quick", action="store_true", help="small sizes (a check of the script)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.busy_size, args.small, args.rounds = 8, 32, 200, 1
    result: dict[str, Any] = {"benchmark": "payload", "size_mib": args.size}
    result["raw_zmq_mb_s"] = round(raw_zmq(args.size * MIB), 1)
    with tempfile.TemporaryDirectory(prefix="jobmesh-payload-") as d:
        tmp = Path(d)
        (tmp / "bench_consumers.py").write_text(textwrap.dedent(CONSUMERS))
        (tmp / "node.toml").write_text(textwrap.dedent(CONFIG))
        a = Node(tmp, "a", [], consumers=False)
        a.wait()
        b = Node(tmp, "b", [a.endpoint], consumers=True)
        b.wait()
        watch = HeartbeatWatch({"a": a.pub, "b": b.pub})
        watch.start()
        try:
            deadline = time.monotonic() + 20
            while len(api(a.url, "GET", "/api/v1/topology")["instances"]) < 2:
                if time.monotonic() > deadline:
                    raise RuntimeError("no mesh")
                time.sleep(0.05)
            small_jobs(a.url, 100)  # warm-up (connections, the offloader's first rounds)
            # the timed transfer (``--rounds`` times, a blob of its own each time: the median counts)
            runs, gaps_all = [], []
            for r in range(args.rounds):
                blob = upload(a.url, args.size * MIB, seed=1 + r)
                t0 = time.monotonic()
                api(a.url, "POST", "/api/v1/jobs", {"topic": "bench/big", "payload": {"in": blob["id"]}})
                while not has_blob(b.url, blob["id"]):
                    time.sleep(0.01)  # each look costs B's loop an HTTP request: not too often
                t1 = time.monotonic()
                runs.append(blob["size"] / (t1 - t0) / 1e6)
                gaps_all.append(watch.max_gap(t0, t1))
            result["transfer"] = {"mb_s": round(statistics.median(runs), 1), "runs_mb_s": [round(x, 1) for x in runs],
                                  "bytes": args.size * MIB}
            gaps = {n: max((g[n] for g in gaps_all if g[n] is not None), default=None) for n in ("a", "b")}
            result["heartbeats"] = {"interval_s": INTERVAL, "timeout_s": TIMEOUT, "max_gap_s_during_transfer": gaps,
                                    "on_time": all(g is not None and g < TIMEOUT for g in gaps.values())}
            members = len(api(b.url, "GET", "/api/v1/topology")["instances"])
            result["heartbeats"]["members_after"] = members
            # small jobs, idle and while a large payload moves: ``--rounds`` pairs, interleaved, so
            # that a change in the machine's load hits both figures alike; the medians count
            idles, busies, overlapped, busy_rates, busy_gaps = [], [], [], [], []
            for r in range(args.rounds):
                idles.append(small_jobs(a.url, args.small))
                busy_blob = upload(a.url, args.busy_size * MIB, seed=100 + r)
                t2 = time.monotonic()
                api(a.url, "POST", "/api/v1/jobs", {"topic": "bench/big", "payload": {"in": busy_blob["id"]}})
                time.sleep(0.05)  # the transfer is under way
                busies.append(small_jobs(a.url, args.small))
                overlapped.append(not has_blob(b.url, busy_blob["id"]))
                while not has_blob(b.url, busy_blob["id"]):
                    time.sleep(0.005)
                t3 = time.monotonic()
                busy_rates.append(busy_blob["size"] / (t3 - t2) / 1e6)
                busy_gaps.append(watch.max_gap(t2, t3))
            idle, busy = statistics.median(idles), statistics.median(busies)
            result["small_jobs"] = {"count": args.small, "idle_jobs_s": round(idle, 1), "busy_jobs_s": round(busy, 1),
                                    "ratio": round(busy / idle, 2),
                                    "runs": [[round(i, 1), round(b_, 1)] for i, b_ in zip(idles, busies)],
                                    "transfer_still_running_at_end": all(overlapped),
                                    "busy_transfer_mb_s": round(statistics.median(busy_rates), 1)}
            gaps = {n: max((g[n] for g in busy_gaps if g[n] is not None), default=None) for n in ("a", "b")}
            result["heartbeats"]["max_gap_s_during_busy_transfer"] = gaps
            result["heartbeats"]["on_time"] = result["heartbeats"]["on_time"] and all(
                g is not None and g < TIMEOUT for g in gaps.values())
        finally:
            watch.close()
            b.stop()
            a.stop()
    result["load_average"] = round(os.getloadavg()[0], 2)
    result["ok"] = (result["transfer"]["mb_s"] >= 300 and result["heartbeats"]["on_time"]
                    and result["small_jobs"]["ratio"] > 0.5)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
