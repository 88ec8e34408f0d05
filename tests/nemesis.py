"""A nemesis for real ``jobmesh node`` processes (issue 9): faults for a while, then healing.

Four nodes (a star: the first seedless, the others seeded with it), jobs added continuously
at random live nodes through HTTP, and for ``duration`` seconds random kill -9, SIGSTOP and
SIGTERM of random nodes, each followed by a restart (or SIGCONT) after a random delay. Then
every node runs again and the checks are those of DESIGN §3: one topology with one leader
within a bound, and every job whose add was acknowledged (201) SUCCEEDED at its origin.

Used by ``tests/test_mesh_heals.py`` for a few fixed seeds; run more from the shell:
``.venv/bin/python tests/nemesis.py --seeds 1-20`` (prints one JSON line per seed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import NodeProcess, http_json  # noqa: E402

FINAL = ("SUCCEEDED", "GIVEN_UP", "ERROR", "STOPPED", "DROPPED")
INTERVAL, TIMEOUT = 0.2, 1.0

CONSUMERS = '''
import asyncio, jobmesh

@jobmesh.consumer("nem/work")
async def work(job):
    await asyncio.sleep(float(job.properties.get("sleep", 0.01)))
'''

CONFIG = """
[node]
capacity = {capacity}
shutdown_grace = 1.0
[discovery]
heartbeat_interval = {interval}
heartbeat_timeout = {timeout}
[[queue]]
name = "main"
retries = 100
retry_delay = 0.1
"""


@dataclass
class Outcome:
    seed: int
    accepted: int = 0
    faults: list[str] = field(default_factory=list)
    converged_s: float | None = None  # one topology, one leader, after the healing started
    final_s: float | None = None  # every accepted job final, after the healing started
    not_succeeded: dict[str, str] = field(default_factory=dict)  # job id -> state (should be empty)
    views: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.converged_s is not None and self.final_s is not None and not self.not_succeeded

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "ok": self.ok, "accepted": self.accepted, "faults": len(self.faults),
                "converged_s": self.converged_s, "final_s": self.final_s,
                "not_succeeded": dict(list(self.not_succeeded.items())[:10]), "views": self.views}


class Mesh:
    def __init__(self, tmp: Path, n: int = 4) -> None:
        self.tmp = tmp
        (tmp / "nem_consumers.py").write_text(CONSUMERS)
        self.nodes: list[NodeProcess] = []
        for i in range(n):
            name = "abcdefgh"[i]
            cfg = tmp / f"{name}.toml"
            cfg.write_text(textwrap.dedent(CONFIG.format(capacity=2 + 2 * i, interval=INTERVAL, timeout=TIMEOUT)))
            seeds = [self.nodes[0].endpoint] if self.nodes else []
            self.nodes.append(NodeProcess(tmp, name, consumers=["nem_consumers"], bind=True, seeds=seeds, config=cfg))
        self.lock = threading.Lock()
        self.stopped: set[str] = set()  # SIGSTOPped now

    def start_all(self) -> None:
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_healthy(30)

    def restart(self, node: NodeProcess, busy: set[str] | None = None) -> None:
        """The same command again (name, data, ports, seeds)."""
        node.close()
        node.start(wait=False)
        if busy is not None:
            busy.discard(node.name)

    def live(self) -> list[NodeProcess]:
        with self.lock:
            return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None and n.name not in self.stopped]

    def views(self) -> dict[str, Any]:
        out = {}
        for node in self.nodes:
            try:
                status, topo = http_json("GET", node.url + "/api/v1/topology", timeout=1.0)
            except (OSError, ValueError):
                status, topo = 0, None
            out[node.name] = ([i["name"] for i in topo["instances"]], topo["leader"]) if status == 200 else None
        return out

    def one_topology(self) -> bool:
        views = self.views()
        names = sorted(n.name for n in self.nodes)
        return all(v is not None and sorted(v[0]) == names for v in views.values()) and \
            len({v[1] for v in views.values() if v}) == 1

    def close(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                try:
                    node.proc.send_signal(signal.SIGCONT)
                except OSError:
                    pass
            node.close()


def run(seed: int, tmp: Path, duration: float = 25.0, settle_limit: float = 60.0) -> Outcome:
    rng = random.Random(seed)
    out = Outcome(seed)
    mesh = Mesh(tmp)
    accepted: dict[str, str] = {}  # job id -> origin node name
    stop_load = threading.Event()

    def load() -> None:
        lrng = random.Random(seed * 7919 + 1)
        while not stop_load.is_set():
            live = mesh.live()
            if live:
                node = lrng.choice(live)
                body = [{"topic": "nem/work", "properties": {"sleep": round(lrng.random() * 0.05, 3)}}
                        for _ in range(lrng.randint(1, 5))]
                try:
                    status, jobs = http_json("POST", node.url + "/api/v1/jobs", body, timeout=2.0)
                except (OSError, ValueError):
                    status, jobs = 0, None
                if status == 201:
                    for j in jobs:
                        accepted[j["id"]] = node.name
            stop_load.wait(0.05)

    pending_restarts: list[threading.Thread] = []
    busy: set[str] = set()  # nodes with a restart or resume still to come
    try:
        mesh.start_all()
        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        t_end = time.monotonic() + duration
        while time.monotonic() < t_end:
            time.sleep(rng.uniform(0.5, 2.0))
            live = mesh.live()
            if len(live) <= 2:  # keep at least two nodes running
                continue
            live = [n for n in live if n.name not in busy]
            if not live:
                continue
            victim = rng.choice(live)
            busy.add(victim.name)
            fault = rng.choice(["kill", "kill", "stop", "term"])
            downtime = rng.uniform(0.2, 3.0)
            out.faults.append(f"{fault} {victim.name} {downtime:.1f}s")
            if fault == "kill":
                victim.kill()
                t = threading.Timer(downtime, mesh.restart, (victim, busy))
                t.start()
                pending_restarts.append(t)
            elif fault == "term":
                assert victim.proc is not None
                victim.proc.send_signal(signal.SIGTERM)

                def restart_after_exit(v: NodeProcess = victim, d: float = downtime) -> None:
                    assert v.proc is not None
                    try:
                        v.proc.wait(15)
                    except Exception:
                        pass
                    time.sleep(d)
                    mesh.restart(v, busy)
                t = threading.Thread(target=restart_after_exit, daemon=True)
                t.start()
                pending_restarts.append(t)
            else:
                assert victim.proc is not None
                victim.proc.send_signal(signal.SIGSTOP)
                with mesh.lock:
                    mesh.stopped.add(victim.name)

                def resume(v: NodeProcess = victim) -> None:
                    with mesh.lock:
                        mesh.stopped.discard(v.name)
                    if v.proc is not None and v.proc.poll() is None:
                        v.proc.send_signal(signal.SIGCONT)
                    busy.discard(v.name)
                t = threading.Timer(downtime, resume)
                t.start()
                pending_restarts.append(t)
        # healing: every restart and resume due has happened, then no fault any more
        for t in pending_restarts:
            t.join(30)
        stop_load.set()
        loader.join(5)
        for node in mesh.nodes:
            if node.proc is None or node.proc.poll() is not None:
                mesh.restart(node)
            elif node.name in mesh.stopped:
                node.proc.send_signal(signal.SIGCONT)
                mesh.stopped.discard(node.name)
        for node in mesh.nodes:
            node.wait_healthy(30)
        t_heal = time.monotonic()
        deadline = t_heal + settle_limit
        while time.monotonic() < deadline:
            if mesh.one_topology():
                out.converged_s = round(time.monotonic() - t_heal, 2)
                break
            time.sleep(0.1)
        out.accepted = len(accepted)
        pending = dict(accepted)
        states: dict[str, str] = {}
        while time.monotonic() < deadline and pending:
            by_origin: dict[str, list[str]] = {}
            for job_id, origin in pending.items():
                by_origin.setdefault(origin, []).append(job_id)
            for node in mesh.nodes:
                ids = by_origin.get(node.name)
                if not ids:
                    continue
                try:
                    status, body = http_json("GET", node.url + "/api/v1/jobs?limit=10000", timeout=10.0)
                except (OSError, ValueError):
                    continue
                if status != 200:
                    continue
                known = {j["id"]: j["state"] for j in body["jobs"]}
                for job_id in ids:
                    st = known.get(job_id, "MISSING")
                    states[job_id] = st
                    if st in FINAL:
                        pending.pop(job_id, None)
            if pending:
                time.sleep(0.3)
        if not pending:
            out.final_s = round(time.monotonic() - t_heal, 2)
        out.not_succeeded = {i: states.get(i, "UNKNOWN") for i in accepted if states.get(i) != "SUCCEEDED"}
        out.views = mesh.views()
        return out
    finally:
        stop_load.set()
        mesh.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default="1-5", help="e.g. 1-20 or 3,7,9")
    ap.add_argument("--duration", type=float, default=25.0)
    args = ap.parse_args()
    seeds: list[int] = []
    for part in args.seeds.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi or lo) + 1))
    failed = 0
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix=f"nemesis-{seed}-") as d:
            res = run(seed, Path(d), args.duration)
            if not res.ok:
                failed += 1
                keep = Path(tempfile.mkdtemp(prefix=f"nemesis-failed-{seed}-"))
                os.system(f"cp -r {d}/*.log {keep}/ 2>/dev/null")
                print(json.dumps({**res.to_json(), "logs": str(keep)}), flush=True)
            else:
                print(json.dumps(res.to_json()), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
