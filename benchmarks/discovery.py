"""Discovery benchmark: real ``jobmesh node`` processes on loopback, default heartbeats.

Prints one JSON object:
- ``join``: N nodes started at once (all seeded with the first); seconds from the
  last process launch (and from the last node's discovery start) until every view
  lists all N. Target: < 3 s.
- ``detection``: one node killed with SIGKILL; seconds until every other node has
  dropped it (default interval 0.5 s, timeout 2.5 s). Target: < 3.5 s.
- ``idle_cpu``: CPU used by one idle node (the whole process: discovery, queues,
  scheduler, HTTP) while it has M members, as a percentage of one core. Target: < 2 %.

Times come from the nodes' own JSON log lines (``topology`` / ``member dropped``),
so polling does not disturb what is measured. On a machine shared with other work
the figures are noisy; run it on a quiet machine for numbers to quote.

    python benchmarks/discovery.py [--nodes 10] [--members 20] [--cpu-seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port_pair(taken: set[int]) -> int:
    while True:
        s1 = socket.socket()
        s1.bind(("127.0.0.1", 0))
        p = s1.getsockname()[1]
        s2 = socket.socket()
        try:
            s2.bind(("127.0.0.1", p + 1))
        except OSError:
            continue
        finally:
            s1.close()
            s2.close()
        if not taken & {p - 1, p, p + 1, p + 2}:
            taken.update({p, p + 1})
            return p


class Node:
    def __init__(self, tmp: Path, name: str, port: int, seeds: list[str], config: Path | None) -> None:
        self.name = name
        self.bind = f"tcp://127.0.0.1:{port}"
        self.log_path = tmp / f"{name}.jsonl"
        cmd = [sys.executable, "-m", "jobmesh", "node", "--name", name, "--data", str(tmp / name),
               "--bind", self.bind, "--http", "", "--log-format", "json"]
        if config is not None:
            cmd[4:4] = ["--config", str(config)]
        for s in seeds:
            cmd += ["--seed", s]
        self.cmd = cmd
        self.proc: subprocess.Popen[bytes] | None = None
        self.launched = 0.0

    def start(self) -> "Node":
        with open(self.log_path, "ab") as log:
            self.launched = time.time()
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT)
        return self

    def events(self) -> list[dict[str, Any]]:
        out = []
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "timestamp" in rec:
                rec["t"] = datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp()
                out.append(rec)
        return out

    def first_time_with(self, n: int) -> float | None:
        for r in self.events():
            if r.get("event") == "topology" and len(r.get("members", [])) >= n:
                return r["t"]
        return None

    def discovery_started(self) -> float | None:
        for r in self.events():
            if r.get("event") == "discovery started":
                return r["t"]
        return None

    def dropped_at(self, name: str, after: float) -> float | None:
        for r in self.events():
            if r.get("event") == "member dropped" and r.get("member") == name and r["t"] >= after:
                return r["t"]
        return None

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def reap(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def wait_until(cond: Any, timeout: float) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.1)
    return False


def start_mesh(tmp: Path, count: int, prefix: str) -> list[Node]:
    taken: set[int] = set()
    first = Node(tmp, f"{prefix}0", free_port_pair(taken), [], None).start()
    nodes = [first]
    for i in range(1, count):
        nodes.append(Node(tmp, f"{prefix}{i}", free_port_pair(taken), [first.bind], None).start())
    return nodes


def last_views(nodes: list[Node]) -> dict[str, Any]:
    """Each node's last logged member list and exit code (for a failed run's report)."""
    out: dict[str, Any] = {}
    for n in nodes:
        tops = [r.get("members") for r in n.events() if r.get("event") == "topology"]
        out[n.name] = {"members": tops[-1] if tops else None, "exit": n.proc.poll() if n.proc else None}
    return out


def stop_all(nodes: list[Node]) -> None:
    for n in nodes:
        n.stop()
    for n in nodes:
        n.reap()


def bench_join_and_detection(tmp: Path, count: int) -> dict[str, Any]:
    nodes = start_mesh(tmp, count, "n")
    try:
        last_launch = max(n.launched for n in nodes)
        if not wait_until(lambda: all(n.first_time_with(count) for n in nodes), 60):
            return {"error": "views did not complete within 60 s", "views": last_views(nodes)}
        complete = max(n.first_time_with(count) or 0.0 for n in nodes)
        last_discovery = max(n.discovery_started() or 0.0 for n in nodes)
        join = {
            "nodes": count,
            "seconds_after_last_launch": round(complete - last_launch, 3),
            "seconds_after_last_discovery_start": round(complete - last_discovery, 3),
            "target_seconds": 3.0,
        }
        time.sleep(1.0)
        victim = nodes[count // 2]
        killed_at = time.time()
        assert victim.proc is not None
        victim.proc.kill()
        others = [n for n in nodes if n is not victim]
        if not wait_until(lambda: all(n.dropped_at(victim.name, killed_at) for n in others), 15):
            detection: dict[str, Any] = {"error": "not every node dropped the killed one within 15 s"}
        else:
            times = [(n.dropped_at(victim.name, killed_at) or 0.0) - killed_at for n in others]
            detection = {
                "killed": victim.name,
                "max_seconds": round(max(times), 3),
                "min_seconds": round(min(times), 3),
                "heartbeat_interval": 0.5,
                "heartbeat_timeout": 2.5,
                "target_seconds": 3.5,
            }
        return {"join": join, "detection": detection}
    finally:
        stop_all(nodes)


def bench_idle_cpu(tmp: Path, members: int, seconds: float) -> dict[str, Any]:
    nodes = start_mesh(tmp, members, "m")
    try:
        if not wait_until(lambda: all(n.first_time_with(members) for n in nodes), 90):
            return {"error": f"{members} members did not form within 90 s"}
        time.sleep(3.0)  # let start-up work (imports, first ticks) settle
        probe = nodes[1]
        c0, t0 = probe.cpu_seconds(), time.monotonic()
        time.sleep(seconds)
        c1, t1 = probe.cpu_seconds(), time.monotonic()
        return {
            "members": members,
            "window_seconds": round(t1 - t0, 2),
            "percent_of_one_core": round(100 * (c1 - c0) / (t1 - t0), 2),
            "target_percent": 2.0,
        }
    finally:
        stop_all(nodes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--members", type=int, default=20)
    ap.add_argument("--cpu-seconds", type=float, default=10.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="jobmesh-bench-discovery-") as d:
        tmp = Path(d)
        result: dict[str, Any] = {"benchmark": "discovery", "cpus": os.cpu_count()}
        (tmp / "join").mkdir()
        (tmp / "idle").mkdir()
        result.update(bench_join_and_detection(tmp / "join", args.nodes))
        result["idle_cpu"] = bench_idle_cpu(tmp / "idle", args.members, args.cpu_seconds)
        result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
