"""``jobmesh demo``: a 3-node local mesh with sample consumers, a mixed workload and a crash.

Three ``jobmesh node`` processes with different capacities; one of them lacks some
topics. Jobs are added mostly at the smallest node, so offloading has work to do:
jobs move to where there is capacity and to where their consumers are. Midway one
node is killed (kill -9) and restarted: its jobs come back and nothing is lost. The
screen shows, live, every node's slots, running and queued jobs and rate; a summary
follows, built from the job records at their origins. Ends by itself (about a minute
at most) and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from .ports import free_port, free_port_pair

STATES = ("QUEUED", "ACTIVE", "SUCCEEDED", "GIVEN_UP", "ERROR", "STOPPED", "DROPPED")
FINAL = STATES[2:]

# -- sample consumers (each node loads the ones it has, from a module written for it) ------------

HEADER = '''
import asyncio, hashlib, random
import jobmesh
'''

CONSUMERS = {
    "demo/fast": '''
@jobmesh.consumer("demo/fast")
async def fast(job):
    """A no-op-ish job: most real jobs are this small."""
    await asyncio.sleep(random.random() * 0.002)
''',
    "demo/slow": '''
@jobmesh.consumer("demo/slow")
async def slow(job, ctx):
    await asyncio.sleep(job.properties.get("seconds", 0.5))
    return ctx.result().message("slept").succeeded()
''',
    "demo/flaky": '''
@jobmesh.consumer("demo/flaky")
async def flaky(job, ctx):
    """Fails ``fails`` times (an exception or a failed result), then succeeds."""
    await asyncio.sleep(0.02)
    if job.retry_count < job.properties.get("fails", 1):
        if job.retry_count % 2:
            return ctx.result().message("upstream busy").failed()
        raise ConnectionError("upstream not reachable (demo)")
    ctx.log("succeeded after %d retries", job.retry_count)
''',
    "demo/report/*": '''
@jobmesh.consumer("demo/report/*")
async def report(job, ctx):
    steps = job.properties.get("steps", 5)
    ctx.init_progress(steps, eta=steps * 0.15)
    for i in range(steps):
        if ctx.is_stopped():
            return ctx.result().cancelled()
        await asyncio.sleep(0.15)
        ctx.increment_progress()
        ctx.log("section %d of %d done", i + 1, steps)
    return ctx.result().message(f"{steps} sections").succeeded()
''',
    "demo/hash": '''
@jobmesh.consumer("demo/hash")
def hash_blob(job):
    """A sync consumer: runs in the node's thread pool, not on the event loop."""
    data = random.randbytes(job.properties.get("size", 100_000))
    for _ in range(5):
        data = hashlib.sha256(data).digest() * 1000
''',
}

# The same consumers, defined here too (``jobmesh.demo.fast`` ...): embedded use and tests import them.
exec(compile(HEADER + "".join(CONSUMERS.values()), __file__, "exec"), globals())

QUEUES = """
[[queue]]
name = "main"
max_parallel = 8
retry_delay = 0.3
[[queue]]
name = "bulk"
topics = ["demo/fast"]
max_parallel = 16
[[queue]]
name = "slow"
topics = ["demo/slow", "demo/hash"]
max_parallel = 8
priority = 5
[[queue]]
name = "retrying"
topics = ["demo/flaky"]
retries = 5
retry_delay = 0.3
retry_backoff = 1.5
[[queue]]
name = "reports"
topics = ["demo/report/*"]
type = "topic_round_robin"
max_parallel = 4
"""

# name -> (capacity, topics): different capacities; "small" adds most jobs, "edge" has no
# demo/slow and no reports (AEM's offloading: not every instance runs every topic)
NODES = {
    "small": (2, ["demo/fast", "demo/slow", "demo/flaky", "demo/report/*"]),
    "big": (8, list(CONSUMERS)),
    "edge": (4, ["demo/fast", "demo/flaky", "demo/hash"]),
}
VICTIM = "big"  # killed and restarted midway


def _http(method: str, url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, None


class DemoNode:
    """One ``jobmesh node`` process of the demo (restartable with the same data and ports)."""

    def __init__(self, tmp: Path, name: str, capacity: int, topics: list[str]) -> None:
        self.name = name
        self.tmp = tmp
        self.http_port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{free_port_pair()}"
        self.url = f"http://127.0.0.1:{self.http_port}"
        module = f"demo_consumers_{name}"
        (tmp / f"{module}.py").write_text(HEADER + "".join(CONSUMERS[t] for t in topics))
        conf = tmp / f"{name}.toml"
        conf.write_text(textwrap.dedent(f"""
            [node]
            capacity = {capacity}
            [discovery]
            heartbeat_interval = 0.25
            heartbeat_timeout = 1.5
        """) + QUEUES)
        self.args = [sys.executable, "-m", "jobmesh", "node", "--name", name, "--data", str(tmp / name),
                     "--bind", self.endpoint, "--http", f"127.0.0.1:{self.http_port}", "--config", str(conf),
                     "--consumers", module, "--log-format", "json"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def seed(self, others: list["DemoNode"]) -> None:
        for o in others:
            if o is not self:
                self.args += ["--seed", o.endpoint]

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(self.tmp), os.environ.get("PYTHONPATH", "")])}
        log = open(self.tmp / f"{self.name}.log", "ab")
        try:
            self.proc = subprocess.Popen(self.args, cwd=self.tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        try:
            return self.alive and _http("GET", self.url + "/api/v1/health", timeout=1.0)[0] == 200
        except OSError:
            return False

    def kill(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def api(self, method: str, path: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
        return _http(method, self.url + path, body, timeout)


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


def bar(n: float, full: float, width: int = 16) -> str:
    filled = 0 if full <= 0 else int(width * min(n, full) / full)
    return "#" * filled + "." * (width - filled)


# -- the run ----------------------------------------------------------------------------

class Demo:
    def __init__(self, args: argparse.Namespace, tmp: Path, out: TextIO) -> None:
        self.args = args
        self.out = out
        self.rng = random.Random(args.seed)
        self.nodes = {name: DemoNode(tmp, name, cap, topics) for name, (cap, topics) in NODES.items()}
        for n in self.nodes.values():
            n.seed(list(self.nodes.values()))
        self.accepted: dict[str, list[str]] = {name: [] for name in self.nodes}
        self.events: list[str] = []
        self.lock = threading.Lock()
        self.workload_done = threading.Event()
        self.started = time.monotonic()

    # workload: a steady trickle plus bursts, mostly at the small node
    def workload(self) -> None:
        rng, end, tick = self.rng, time.monotonic() + self.args.seconds, 0
        while time.monotonic() < end:
            items: list[dict[str, Any]] = [{"topic": "demo/fast", "properties": {}}] * rng.randint(10, 30)
            if tick % 5 == 0:
                items = items + [{"topic": "demo/fast", "properties": {}}] * 150  # a burst
            for _ in range(rng.randint(1, 3)):
                items.append({"topic": "demo/slow", "properties": {"seconds": round(rng.uniform(0.2, 0.8), 2)}})
            if rng.random() < 0.5:
                items.append({"topic": "demo/flaky", "properties": {"fails": rng.randint(1, 2)}})
            if rng.random() < 0.4:
                items.append({"topic": f"demo/report/{rng.choice(['sales', 'ops', 'hr'])}",
                              "properties": {"steps": rng.randint(3, 6)}})
            if rng.random() < 0.3:
                items.append({"topic": "demo/hash", "properties": {"size": 50_000}})
            name = "small" if rng.random() < 0.75 else "edge"
            node = self.nodes[name]
            try:
                status, jobs = node.api("POST", "/api/v1/jobs", items, timeout=5)
            except OSError:
                status, jobs = 0, None
            if status == 201 and jobs:
                with self.lock:
                    self.accepted[name].extend(j["id"] for j in jobs)
            tick += 1
            time.sleep(0.2)
        self.workload_done.set()

    def crash(self) -> None:
        """kill -9 the victim midway; restart it a little later (its store is on its disk)."""
        time.sleep(self.args.seconds * 0.4)
        victim = self.nodes[VICTIM]
        victim.kill()
        self.events.append(f"{time.monotonic() - self.started:5.1f}s  kill -9 {VICTIM}")
        time.sleep(max(2.0, self.args.seconds * 0.15))
        victim.start()
        victim.restarts += 1
        self.events.append(f"{time.monotonic() - self.started:5.1f}s  {VICTIM} restarted")

    def snapshot(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Per node: its advertised capacity (from any live member's topology) and its gauges."""
        caps: dict[str, Any] = {}
        stats: dict[str, dict[str, Any]] = {}
        for n in self.nodes.values():
            if not n.healthy():
                continue
            try:
                _, topo = n.api("GET", "/api/v1/topology", timeout=2)
                _, st = n.api("GET", "/api/v1/stats", timeout=2)
            except OSError:
                continue
            if topo and not caps:
                caps = {i["name"]: i.get("capacity") or {} for i in topo.get("instances", [])}
            if st:
                stats[n.name] = st["overall"]
        return caps, stats

    def render(self, caps: dict[str, Any], stats: dict[str, dict[str, Any]], rate: float) -> str:
        elapsed = time.monotonic() - self.started
        added = sum(len(v) for v in self.accepted.values())
        lines = [f"jobmesh demo — 3 nodes — {elapsed:5.1f}s — {rate:7.0f} jobs/s — added {added}",
                 "",
                 f"  {'node':<6} {'slots':>5} {'running':>16} {'queued':>7} {'rate/s':>7}  topics"]
        for name, node in self.nodes.items():
            cap = caps.get(name)
            topics = ",".join(t.replace("demo/", "") for t in NODES[name][1])
            if cap is None or not node.alive:
                lines.append(f"  {name:<6} {'-':>5} {'(down)':>16} {'-':>7} {'-':>7}  {topics}")
                continue
            slots, active = cap.get("slots", 0), cap.get("active", 0)
            lines.append(f"  {name:<6} {slots:>5} {bar(active, slots, 8):>8} {active:>3}/{slots:<3} "
                         f"{cap.get('queued', 0):>7} {cap.get('throughput', 0):>7.0f}  {topics}")
        lines.append("")
        lines.append("  consoles: " + "  ".join(f"{n.name} {n.url}" for n in self.nodes.values()))
        lines += [f"  {e}" for e in self.events[-3:]]
        return "\n".join(lines)

    def records(self) -> tuple[Counter, Counter, set[str], int]:
        """States of every job at its origin (the record), where each ran, and what is open."""
        states: Counter = Counter()
        ran_at: Counter = Counter()
        seen: set[str] = set()
        offloaded = 0
        for node in self.nodes.values():
            for state in STATES:
                status, body = node.api("GET", f"/api/v1/jobs?state={state}&limit=10000", timeout=30)
                if status != 200 or not body:
                    continue
                for j in body["jobs"]:
                    if j["origin"] != node.name:
                        continue
                    states[j["state"]] += 1
                    seen.add(j["id"])
                    if j["state"] in FINAL and j.get("target"):
                        ran_at[j["target"]] += 1
                        offloaded += j["target"] != node.name
        return states, ran_at, seen, offloaded

    def run(self) -> int:
        out, args = self.out, self.args
        screen = Screen(out, live=out.isatty() and not args.plain)
        for n in self.nodes.values():
            n.start()
        deadline = time.monotonic() + 40
        while not all(n.healthy() for n in self.nodes.values()):
            if time.monotonic() > deadline or any(not n.alive for n in self.nodes.values()):
                out.write("jobmesh demo: the nodes did not start; see the logs in " + str(args.data_dir) + "\n")
                return 1
            time.sleep(0.1)
        while True:  # the mesh formed
            _, topo = self.nodes["small"].api("GET", "/api/v1/topology")
            if topo and len(topo.get("instances", [])) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.started = time.monotonic()
        producer = threading.Thread(target=self.workload, daemon=True)
        chaos = threading.Thread(target=self.crash, daemon=True)
        producer.start()
        chaos.start()
        end = self.started + args.seconds + args.drain
        last_done, last_t, rate = None, time.monotonic(), 0.0
        while True:
            time.sleep(0.5 if screen.live else 1.0)
            caps, stats = self.snapshot()
            done = sum(s.get("finished", 0) + s.get("cancelled", 0) for s in stats.values())
            now = time.monotonic()
            if last_done is not None and done >= last_done:
                rate = 0.6 * rate + 0.4 * (done - last_done) / max(now - last_t, 1e-6)
            last_done, last_t = done, now
            screen.show(self.render(caps, stats, rate))
            open_jobs = sum(s.get("queued", 0) + s.get("active", 0) for s in stats.values())
            if (self.workload_done.is_set() and not chaos.is_alive() and len(stats) == 3 and open_jobs == 0):
                break
            if now > end:
                out.write("demo time is up; stopping with jobs still open\n")
                break
        elapsed = time.monotonic() - self.started
        states, ran_at, seen, offloaded = self.records()
        accepted = {i for v in self.accepted.values() for i in v}
        lost = accepted - seen
        for n in self.nodes.values():
            n.stop()
        out.write("\nsummary\n")
        out.write(f"  jobs added      {len(accepted)}   (at small {len(self.accepted['small'])}, "
                  f"at edge {len(self.accepted['edge'])})\n")
        for s in STATES:
            if states.get(s):
                out.write(f"  {s:<15} {states[s]}\n")
        out.write("  ran at          " + "   ".join(f"{k} {ran_at[k]}" for k in self.nodes) + "\n")
        out.write(f"  offloaded       {offloaded} jobs ran at another node than the one they were added to\n")
        for e in self.events:
            out.write(f"  {e}\n")
        out.write(f"  lost            {len(lost)}\n")
        out.write(f"  elapsed         {elapsed:.1f} s   ({sum(states[s] for s in FINAL) / max(elapsed, 1e-6):.0f}"
                  " jobs/s on average)\n")
        out.flush()
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jobmesh demo", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=15.0, help="how long the workload adds jobs (default 15)")
    p.add_argument("--drain", type=float, default=30.0, help="max seconds to let the rest finish (default 30)")
    p.add_argument("--data", dest="data_dir", help="data directory (default: a temporary one, removed at the end)")
    p.add_argument("--seed", type=int, default=7, help="random seed of the workload")
    p.add_argument("--plain", action="store_true", help="no live redraw: one status line per second")
    args = p.parse_args(argv)
    tmp = None
    if args.data_dir:
        base = Path(args.data_dir)
        base.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="jobmesh-demo-")
        base = Path(tmp)
        args.data_dir = tmp
    demo = Demo(args, base, sys.stdout)
    try:
        return demo.run()
    except KeyboardInterrupt:
        return 130
    finally:
        for n in demo.nodes.values():
            n.kill()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
