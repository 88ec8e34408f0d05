"""Whole nodes on a simulated network and clock, a workload, a nemesis, and invariants.

``Simulation(SimConfig(seed=...)).run()`` builds N real ``jobmesh.Node`` objects (every
actor: store on SQLite files, queues, pool, manager, discovery, transfer, offloader,
scheduler, workflows) on a ``SimLoop`` (virtual time, no threads) and a ``SimNet``
(``SimNetwork`` underneath), drives a workload through the public Python API and a nemesis
from the seed, then heals everything and checks that the mesh converged. One
``random.Random`` per concern, all derived from the seed: the same seed gives the same run,
event for event (checked by ``Trace.digest``).

Invariants (DESIGN §3), each a ``Violation`` with the seed, its name and the trace's tail:

- ``final-once``: a job's record becomes final at most once per run of it the workload
  asked for (its add, plus each ``retry``); a stale result never changes a record.
- ``all-final``: after healing, every job whose add was acknowledged is final at its origin
  within ``settle`` (SUCCEEDED unless the workload stopped it), every workflow COMPLETED.
- ``stuck-queued``: after that, no runnable job QUEUED for ``queued_bound`` while a capable node
  has free slots.
- ``one-topology``: after healing, within ``topology_bound``, every node sees all nodes, the
  same leader, and a current view.
- ``one-topology`` also holds for ``stable`` seconds after everything settled, with no member
  change; ``no-late-repair``: no repair happens in that time.
- ``topology-events``: Sling's guarantees per listener (INIT first, never two CHANGING in a
  row, CHANGED only after CHANGING, PROPERTIES_CHANGED only between changes).
- ``leader-oldest``: a current view's leader is its member with the lowest rank.
- ``responsibility``: while an origin believes a target accepted a job (its protocol has the
  attempt there, acknowledged), the target's store holds that copy or its result.
- ``superseded-never-runs``: a copy restored at a target's restart whose attempt its origin
  had already let go of never starts.
- ``schedule-once`` / ``schedule-fires``: a schedule's slot fires at most once when no fault
  was near it, and every slot after healing fires.
- ``no-crash``: no unhandled exception in a live node's tasks.
- ``no-repair-without-fault``: with the nemesis off, no repair happens at all (a repair is a
  belief that drifted from the fact; without a fault only a bug makes one drift).
- ``no-error-log``: no node logs an error, faults or not (an error line is a path that
  failed; the faults the nemesis makes are ones the design expects and handles). Seed 7 found
  a batch of accepted copies refused on UNIQUE jobs.id: two attempts of one job in one commit.

``delays`` > 0 delays that share of the workload's adds by 0.2 to 10 s, with a queue horizon of
``defer_after`` s (jobs due later wait on disk and are read back by the due scan) and queue
windows of ``window`` jobs, so the on-disk and full-window paths run under every fault.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import hashlib
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import structlog

from .. import clock as jclock
from .. import rng as jrng
from ..config import DiscoveryConfig, NodeConfig, QueueConfig
from ..discovery.view import TopologyEventType as TE
from ..job import FINAL_STATES
from ..plants import PLANTS
from .loop import CURRENT_RUN, NodeRun, SimLoop, SimulationStuck
from .network import LinkSpec, SimNetwork
from .transport import SimNet

TOPICS = ("sim/a", "sim/b", "sim/c")
FINAL_NAMES = frozenset(s.value for s in FINAL_STATES)
FLOW = "sim-flow"
EPOCH = 1_800_000_000.0  # virtual wall clock at t=0 (2027-01-15)


@dataclass
class SimConfig:
    seed: int = 1
    nodes: int = 4
    duration: float = 40.0  # seconds of workload and faults
    settle: float = 60.0  # after healing: at most this long until every job is final
    interval: float = 0.5  # heartbeat interval (the node's default)
    timeout: float = 2.5  # heartbeat timeout (the node's default)
    faults: bool = True
    plant: str | None = None
    trace_tail: int = 80
    job_rate: float = 2.0  # workload operations per simulated second (the CLI's --rate)

    delays: float = 0.0  # share of add batches delayed (0.2-10 s); drawn from a stream of its own
    defer_after: float = 3.0  # with delays: the queues' horizon (production: 60 s)
    window: int = 8  # with delays: the queues' window size (production: 1024)

    stable: float = 20.0  # after everything settled: this long with nothing changing
    queued_bound: float = 30.0  # after one topology: no runnable job QUEUED this long while slots are free

    @property
    def topology_bound(self) -> float:
        return 3 * self.timeout


class Violation(Exception):
    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


class Trace:
    """The run's events: a bounded tail for reports, a digest of all of them for replay checks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tail: int) -> None:
        self.loop = loop
        self.tail: deque[str] = deque(maxlen=tail)
        self.scrub = ""
        self.closed = False  # teardown: what dead coroutines say while collected is not the run
        self._hash = hashlib.sha256()
        self.count = 0

    def add(self, node: str, kind: str, detail: Any = "") -> None:
        if self.closed:
            return
        line = f"{self.loop.time():10.4f} {node:<6} {kind} {detail}"
        if self.scrub and self.scrub in line:
            line = line.replace(self.scrub, "<data>")  # the temp dir's name is not part of the run
        self.tail.append(line)
        self._hash.update(line.encode())
        self.count += 1

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()


class SimClock:
    """A node's clock in the simulation: wall = epoch + virtual time + its own offset (clock
    jumps move it), monotonic = virtual time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, offsets: dict[str, float], name: str) -> None:
        self.loop = loop
        self.offsets = offsets
        self.name = name

    def time(self) -> float:
        return EPOCH + self.loop.time() + self.offsets.get(self.name, 0.0)

    def monotonic(self) -> float:
        return self.loop.time()


@dataclass
class SimResult:
    seed: int
    ok: bool
    violation: str | None = None
    detail: str | None = None
    simulated_s: float = 0.0
    wall_s: float = 0.0
    accepted: int = 0
    faults: int = 0
    digest: str = ""
    trace: list[str] = field(default_factory=list)
    repairs: dict[str, int] = field(default_factory=dict)
    converged_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "ok": self.ok, "violation": self.violation, "detail": self.detail,
                "simulated_s": round(self.simulated_s, 1), "wall_s": round(self.wall_s, 2),
                "accepted": self.accepted, "faults": self.faults, "repairs": self.repairs,
                "converged_s": self.converged_s, "digest": self.digest[:16]}


class _TraceLogger:
    """structlog's last processor in a simulation: log lines go to the trace, not to a stream."""

    def __init__(self, sim: "Simulation") -> None:
        self.sim = sim

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> Any:
        if method in ("debug",):
            raise structlog.DropEvent
        node = str(event.pop("node", "-"))
        msg = event.pop("event", "")
        event.pop("timestamp", None)
        detail = " ".join(f"{k}={v}" for k, v in sorted(event.items()) if k not in ("exc_info", "exception", "level"))
        self.sim.trace.add(node, f"log.{method}", f"{msg} {detail}"[:400])
        if method in ("error", "critical", "exception"):
            self.sim.log_errors.append(f"{node}: {msg} {detail}"[:400])
        raise structlog.DropEvent


class Simulation:
    def __init__(self, cfg: SimConfig, workdir: str | os.PathLike[str] | None = None) -> None:
        self.cfg = cfg
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(
            prefix=f"jobmesh-sim-{cfg.seed}-", dir=_scratch()))
        seed = cfg.seed
        self.rng = random.Random(f"sim:{seed}")  # the scenario: topology, capacities
        self.load_rng = random.Random(f"load:{seed}")
        self.fault_rng = random.Random(f"faults:{seed}")
        self.delay_rng = random.Random(f"delays:{seed}")  # no draw at all unless delays > 0
        self.names = [chr(ord("a") + i) for i in range(cfg.nodes)]
        self.loop: SimLoop | None = None
        self.net: SimNet | None = None
        self.nodes: dict[str, Any] = {}
        self.runs: dict[str, NodeRun] = {}
        self.ctxs: dict[str, contextvars.Context] = {}
        self.incarnations: dict[str, int] = {n: 0 for n in self.names}
        self.offsets: dict[str, float] = {n: 0.0 for n in self.names}
        self.topics: dict[str, list[str]] = {}
        self.capacity: dict[str, int] = {}
        self.accepted: dict[str, str] = {}  # job id -> origin
        self.stop_asked: set[str] = set()
        self.retries: dict[str, int] = {}
        self.finals: dict[str, int] = {}
        self.flows: dict[str, str] = {}  # workflow instance id -> origin
        self.events: dict[tuple[str, int], list[Any]] = {}  # (node, incarnation) -> topology events
        self.superseded: dict[tuple[str, int], dict[str, int]] = {}  # (target, inc) -> job -> attempt
        self.fault_log: list[tuple[float, float]] = []  # (start, end) of every fault, for schedules
        self.faults = 0
        self.log_errors: list[str] = []
        self.violation: Violation | None = None
        self.trace: Trace = None  # type: ignore[assignment]
        self._restarts: dict[str, asyncio.TimerHandle] = {}
        self._disabled: set[tuple[str, str]] = set()
        self._suspended: set[tuple[str, str]] = set()
        self.healed_at: float | None = None
        self.converged_s: float | None = None
        self.schedule_id: str | None = None
        self._seen_final: set[str] = set()  # jobs found final after healing (no retry comes then)

    # -- running ---------------------------------------------------------------------------
    def run(self) -> SimResult:
        t0 = time.perf_counter()
        old_loop = None
        try:
            old_loop = asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:
            pass
        loop = self.loop = SimLoop(start=0.0)
        self.trace = Trace(loop, self.cfg.trace_tail)
        self.trace.scrub = str(self.dir)
        previous_structlog = structlog.get_config()
        structlog.configure(processors=[structlog.processors.add_log_level, _TraceLogger(self)],
                            wrapper_class=structlog.BoundLogger, cache_logger_on_first_use=False)
        previous_plants = PLANTS.on
        PLANTS.set([self.cfg.plant] if self.cfg.plant else [])
        from ..engine import core as queue_actor  # the queues' horizon lives in the engine core

        horizon = queue_actor.DEFER_AFTER, queue_actor.DUE_SCAN
        if self.cfg.delays > 0:
            queue_actor.DEFER_AFTER, queue_actor.DUE_SCAN = self.cfg.defer_after, self.cfg.defer_after / 2
        asyncio.set_event_loop(loop)
        warn = warnings.catch_warnings()
        warn.__enter__()
        # a task a kill overtook before its first step never runs its coroutine: that is the point
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
        try:
            loop.run_until_complete(asyncio.wait_for(self._main(), self.cfg.duration + self.cfg.settle + 600))
        except Violation as v:
            self.violation = v
        except SimulationStuck as e:
            self.violation = Violation("stuck", str(e))
        except asyncio.TimeoutError:
            self.violation = Violation("all-final", "the run did not end")
        finally:
            simulated = loop.time()
            if self.violation is not None:
                # its traceback holds the frames of the nodes' code: drop it, or they outlive the
                # teardown and their half-run coroutines are collected at some later moment
                self.violation = Violation(self.violation.invariant, self.violation.detail)
            self._teardown(loop)
            warn.__exit__(None, None, None)
            asyncio.set_event_loop(old_loop)
            structlog.configure(**previous_structlog)
            PLANTS.set(previous_plants)
            queue_actor.DEFER_AFTER, queue_actor.DUE_SCAN = horizon
            if self._own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)
        v = self.violation
        return SimResult(
            seed=self.cfg.seed, ok=v is None, violation=v.invariant if v else None, detail=v.detail if v else None,
            simulated_s=simulated, wall_s=time.perf_counter() - t0, accepted=len(self.accepted),
            faults=self.faults, digest=self.trace.digest, trace=list(self.trace.tail), repairs=self._repairs(),
            converged_s=self.converged_s)

    def _teardown(self, loop: SimLoop) -> None:
        """End every node like kill -9, close the loop, and collect what is left *now*, with
        the errors of half-run coroutines silenced: were it collected later, a dead node's
        ``finally`` blocks would run inside the next seed's loop and change it."""
        self.trace.closed = True
        for run in self.runs.values():
            run.alive = False
        for name in list(self.nodes):
            self._release(name, self.nodes.pop(name))
        hook = sys.unraisablehook
        sys.unraisablehook = lambda unraisable: None
        try:
            try:
                loop.close()
            except Exception:
                pass
            self.ctxs.clear()
            self.runs.clear()
            self.net = None
            gc.collect()
        finally:
            sys.unraisablehook = hook

    def _fail(self, invariant: str, detail: str) -> None:
        if self.violation is None:
            self.violation = Violation(invariant, detail)
            self.trace.add("sim", "VIOLATION", f"{invariant}: {detail}")
        raise self.violation

    async def _main(self) -> None:
        assert self.loop is not None
        cfg = self.cfg
        network = SimNetwork(random.Random(f"net:{cfg.seed}"), default=LinkSpec(latency=0.0005, jitter=0.002))
        self.net = SimNet(self.loop, network)
        self._plan()
        for name in self.names:
            self._start(name)
        await asyncio.sleep(max(3.0, 6 * cfg.interval))
        self._spawn(self.names[0], self._define_schedule())
        checker = asyncio.ensure_future(self._check_loop())
        load = asyncio.ensure_future(self._workload())
        nemesis = asyncio.ensure_future(self._nemesis()) if cfg.faults else None
        await asyncio.sleep(cfg.duration)
        if nemesis is not None:
            nemesis.cancel()
        load.cancel()
        self._heal()
        try:
            await self._converge()
            await self._stay_stable()
            self._check_schedules()
            if not cfg.faults and self._repairs():
                self._fail("no-repair-without-fault", f"repairs with the nemesis off: {self._repairs()}")
            if self.log_errors:
                self._fail("no-error-log", f"{len(self.log_errors)} error line(s); the first: {self.log_errors[0]}")
        finally:
            checker.cancel()
        self._raise_pending()

    def _raise_pending(self) -> None:
        if self.violation is not None:
            raise self.violation
        if self.loop is not None and self.loop.errors:
            ctx = self.loop.errors[0]
            self._fail("no-crash", f"{ctx.get('message')}: {ctx.get('exception')!r}")

    # -- the scenario -----------------------------------------------------------------------
    def _plan(self) -> None:
        rng = self.rng
        for name in self.names:
            self.capacity[name] = rng.randint(1, 4)
            topics = sorted(rng.sample(TOPICS, rng.randint(1, len(TOPICS))))
            self.topics[name] = topics
        for t in TOPICS:  # every topic has a consumer somewhere
            if not any(t in ts for ts in self.topics.values()):
                self.topics[rng.choice(self.names)].append(t)
        self.seeds: dict[str, list[str]] = {}
        star = rng.random() < 0.5
        for i, name in enumerate(self.names):
            if i == 0:
                self.seeds[name] = []
            elif star:
                self.seeds[name] = [self._endpoint(self.names[0])]
            else:
                self.seeds[name] = [self._endpoint(n) for n in self.names if n != name]
        self.trace.add("sim", "plan", json.dumps({"topics": self.topics, "capacity": self.capacity, "star": star}))

    @staticmethod
    def _endpoint(name: str) -> str:
        return f"tcp://{name}.sim:5701"

    def _config(self, name: str) -> NodeConfig:
        cfg = self.cfg
        return NodeConfig(
            name=name, data=str(self.dir / name), bind=self._endpoint(name), seeds=list(self.seeds[name]),
            http=None, capacity=self.capacity[name], shutdown_grace=1.0, stop_grace=1.0,
            discovery=DiscoveryConfig(heartbeat_interval=cfg.interval, heartbeat_timeout=cfg.timeout),
            queues=[QueueConfig(name="main", retries=-1, retry_delay=0.2, max_parallel=4),
                    QueueConfig(name="ordered", topics=["sim/c"], type="ordered", retries=-1, retry_delay=0.2)],
        )

    # -- node lifecycle ---------------------------------------------------------------------
    def _start(self, name: str) -> None:
        assert self.loop is not None
        self.incarnations[name] += 1
        inc = self.incarnations[name]
        run = NodeRun(name, inc)
        ctx = contextvars.Context()
        ctx.run(self._enter, run, name, inc)
        self.runs[name] = run
        self.ctxs[name] = ctx
        self.nodes.pop(name, None)
        self.trace.add(name, "start", f"incarnation {inc}")
        self.loop.create_task(self._boot(name, run), context=ctx)

    def _enter(self, run: NodeRun, name: str, inc: int) -> None:
        CURRENT_RUN.set(run)
        assert self.loop is not None
        jclock.use(SimClock(self.loop, self.offsets, name))
        jrng.use(random.Random(f"node:{self.cfg.seed}:{name}:{inc}"))

    async def _boot(self, name: str, run: NodeRun) -> None:
        from ..node import Node
        from ..workflow import Step, Workflow

        assert self.net is not None
        node = Node(config=self._config(name), transport=self.net.factory(name))
        for topic in self.topics[name]:
            node.add_consumer(self._consumer(name, topic))
        node.events.add_listener(lambda n, _name=name: self._on_note(_name, n))
        await node.start()
        if not run.alive:
            return
        if self.cfg.delays > 0:
            for qc in node.config.all_queues():
                qa = node.queue_actor(qc.name)
                if qa is not None:
                    qa.window_size, qa.refill_below = self.cfg.window, max(1, self.cfg.window // 4)
        node.workflows.define(Workflow(FLOW, [Step("sim/a"), Step("sim/b"), Step("sim/a", offloadable=False)]))
        key = (name, run.incarnation)
        self.events[key] = []
        node.add_topology_listener(lambda e, _key=key: self._on_topology(_key, e))
        self._snapshot_superseded(name, run, node)
        self.nodes[name] = node
        self.trace.add(name, "ready", f"incarnation {run.incarnation}")

    def _consumer(self, name: str, topic: str) -> Any:
        from ..consumers.registry import consumer

        sim = self

        if topic == "sim/c":  # a sync consumer: runs inline in the simulation
            @consumer(topic)
            def work_sync(job: Any) -> None:
                sim._on_run(name, job)
                if job.retry_count < int(job.properties.get("fails", 0)):
                    raise RuntimeError("planned failure")
            return work_sync

        @consumer(topic)
        async def work(job: Any) -> None:
            sim._on_run(name, job)
            await asyncio.sleep(float(job.properties.get("ms", 10)) / 1000.0)
            if job.retry_count < int(job.properties.get("fails", 0)):
                raise RuntimeError("planned failure")
        return work

    def _spawn(self, name: str, coro: Any) -> None:
        """Run ``coro`` as node ``name``'s code (its clock, its fate): a client of that node."""
        assert self.loop is not None
        self.loop.create_task(coro, context=self.ctxs[name])

    def _kill(self, name: str) -> None:
        run = self.runs.get(name)
        if run is None or not run.alive:
            return
        run.alive = False
        run.frozen.clear()
        node = self.nodes.pop(name, None)
        assert self.net is not None
        self.net.kill(name)
        self._release(name, node)
        self.trace.add(name, "kill", f"incarnation {run.incarnation}")

    def _release(self, name: str, node: Any) -> None:
        """What the OS does for a dead process: its sockets close, its locks and files go."""
        if node is None:
            return
        d = getattr(node, "discovery", None)
        transport = getattr(d, "_transport", None) if d is not None else None
        if transport is not None:
            transport.close()
        lock = getattr(node, "_data_lock", None)
        fd = getattr(lock, "_fd", None)
        if fd is not None:
            lock._fd = None
            os.close(fd)
        store = getattr(node, "store", None)
        for conn in (getattr(store, "_wconn", None), getattr(store, "_rconn", None),
                     *getattr(store, "_thread_conns", [])):
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass

    def _restart_later(self, name: str, delay: float) -> None:
        assert self.loop is not None
        self._restarts[name] = self.loop.call_later(delay, self._restart, name)

    def _restart(self, name: str) -> None:
        self._restarts.pop(name, None)
        run = self.runs.get(name)
        if run is not None and run.alive:
            return
        self._start(name)

    async def _terminate(self, name: str, restart_after: float) -> None:
        """SIGTERM: a graceful stop as the node's own code, then a restart."""
        node = self.nodes.get(name)
        run = self.runs.get(name)
        if node is None or run is None:
            return
        self.nodes.pop(name, None)
        fut = self.loop.create_task(node.stop(grace=1.0), context=self.ctxs[name])  # type: ignore[union-attr]
        try:
            await asyncio.wait_for(asyncio.shield(fut), 15.0)
        except asyncio.TimeoutError:
            self.trace.add(name, "term-timeout")
        if run.alive:
            run.alive = False  # the process exits
            self._release(name, node)
        self.trace.add(name, "terminated")
        self._restart_later(name, restart_after)

    # -- the workload ----------------------------------------------------------------------
    async def _define_schedule(self) -> None:
        node = self.nodes.get(self.names[0])
        if node is None:
            return
        sched = await node.schedules.add("sim/a", {"ms": 5}, every=5)
        self.schedule_id = sched["id"]
        self.trace.add(self.names[0], "schedule", sched["id"])

    async def _workload(self) -> None:
        rng = self.load_rng
        while True:
            await asyncio.sleep(rng.expovariate(self.cfg.job_rate))
            live = [n for n in self.names if n in self.nodes and self.runs[n].alive and not self.runs[n].paused]
            if not live:
                continue
            name = rng.choice(live)
            op = rng.choices(["add", "stop", "retry", "flow", "toggle", "remove", "suspend"],
                             [70, 6, 6, 6, 4, 3, 2])[0]
            if op == "add":
                items = [(rng.choice(TOPICS), {"ms": rng.choice([1, 5, 20, 100, 400]),
                                               "fails": 1 if rng.random() < 0.1 else 0})
                         for _ in range(rng.randint(1, 4))]
                delay = None
                if self.cfg.delays > 0 and self.delay_rng.random() < self.cfg.delays:
                    delay = round(self.delay_rng.uniform(0.2, 10.0), 3)
                self._spawn(name, self._add(name, items, delay))
            elif op == "stop" and self.accepted:
                job_id = rng.choice(sorted(self.accepted))
                self._spawn(self.accepted[job_id], self._stop(job_id))
            elif op == "retry" and self.accepted:
                job_id = rng.choice(sorted(self.accepted))
                self._spawn(self.accepted[job_id], self._retry(job_id))
            elif op == "flow" and "sim/a" in self.topics[name]:  # its last step runs at its origin
                self._spawn(name, self._flow(name))
            elif op == "remove" and self.accepted:
                job_id = rng.choice(sorted(self.accepted))
                self._spawn(self.accepted[job_id], self._remove(job_id))
            elif op == "suspend":
                queue = rng.choice(["main", "ordered"])
                self._spawn(name, self._suspend(name, queue, rng.uniform(0.2, 3.0)))
            elif op == "toggle":
                topic = rng.choice(self.topics[name])
                key = (name, topic)
                mode = "enabled" if key in self._disabled else "disabled"
                self._spawn(name, self._toggle(name, topic, mode))

    async def _add(self, name: str, items: list[tuple[str, dict[str, Any]]], delay: float | None = None) -> None:
        node = self.nodes.get(name)
        if node is None:
            return
        jobs = await node.jobs.add_many(items, delay=delay)
        for job in jobs:
            self.accepted[job.id] = name
        self.trace.add(name, "added", ",".join(j.id[-8:] for j in jobs) + (f" delay {delay:g}" if delay else ""))

    async def _stop(self, job_id: str) -> None:
        node = self.nodes.get(self.accepted[job_id])
        if node is None:
            return
        self.stop_asked.add(job_id)
        try:
            await node.jobs.stop(job_id)
            self.trace.add(node.name, "stop", job_id[-8:])
        except Exception as e:
            self.trace.add(node.name, "stop-refused", f"{job_id[-8:]} {type(e).__name__}")

    async def _remove(self, job_id: str) -> None:
        node = self.nodes.get(self.accepted[job_id])
        if node is None:
            return
        self.stop_asked.add(job_id)  # DROPPED, or deleted if it was final already
        try:
            await node.jobs.remove(job_id)
            self.trace.add(node.name, "remove", job_id[-8:])
        except Exception as e:
            self.trace.add(node.name, "remove-refused", f"{job_id[-8:]} {type(e).__name__}")

    async def _suspend(self, name: str, queue: str, span: float) -> None:
        """Suspend a queue (running jobs finish, nothing new starts), resume it a while later."""
        node = self.nodes.get(name)
        if node is None:
            return
        self._suspended.add((name, queue))
        await node.jobs.suspend_queue(queue)
        self.trace.add(name, "suspend", queue)
        await asyncio.sleep(span)
        node = self.nodes.get(name)
        if node is not None and (name, queue) in self._suspended:
            await node.jobs.resume_queue(queue)
            self._suspended.discard((name, queue))
            self.trace.add(name, "resume-queue", queue)

    async def _resume_queues(self, name: str, queues: list[str]) -> None:
        node = self.nodes.get(name)
        while node is None:  # healing: the node may still be booting
            await asyncio.sleep(0.1)
            node = self.nodes.get(name)
        for queue in queues:
            await node.jobs.resume_queue(queue)
            self._suspended.discard((name, queue))
            self.trace.add(name, "resume-queue", queue)

    async def _retry(self, job_id: str) -> None:
        node = self.nodes.get(self.accepted[job_id])
        if node is None:
            return
        try:
            await node.jobs.retry(job_id)
        except Exception as e:
            self.trace.add(node.name, "retry-refused", f"{job_id[-8:]} {type(e).__name__}")
            return
        self.retries[job_id] = self.retries.get(job_id, 0) + 1
        self.trace.add(node.name, "retry", job_id[-8:])

    async def _flow(self, name: str) -> None:
        node = self.nodes.get(name)
        if node is None:
            return
        inst = await node.workflows.start(FLOW, {"ms": 5})
        self.flows[inst.id] = name
        self.trace.add(name, "flow", inst.id[-8:])

    async def _toggle(self, name: str, topic: str, mode: str, wait: bool = False) -> None:
        node = self.nodes.get(name)
        while node is None and wait:  # healing: the node may still be booting
            await asyncio.sleep(0.1)
            node = self.nodes.get(name)
        if node is None:
            return
        await node.set_offloading(name, topic, mode)
        if mode == "disabled":
            self._disabled.add((name, topic))
        else:
            self._disabled.discard((name, topic))
        self.trace.add(name, "offloading", f"{topic} {mode}")

    # -- the nemesis ------------------------------------------------------------------------
    async def _nemesis(self) -> None:
        rng = self.fault_rng
        net = self.net
        assert net is not None and self.loop is not None
        while True:
            await asyncio.sleep(rng.uniform(0.5, 3.0))
            up = [n for n in self.names if self.runs[n].alive]
            kind = rng.choices(["kill", "pause", "term", "partition", "one-way", "clog", "lossy", "clock"],
                               [25, 15, 10, 15, 8, 8, 10, 9])[0]
            now = self.loop.time()
            self.faults += 1
            if kind in ("kill", "pause", "term"):
                candidates = [n for n in up if not self.runs[n].paused and n not in self._restarts]
                if len(candidates) <= 1:
                    continue
                victim = rng.choice(candidates)
                down = rng.uniform(0.3, 2 * self.cfg.timeout + 2)
                self.fault_log.append((now, now + down + 3 * self.cfg.timeout))
                if kind == "kill":
                    self._kill(victim)
                    self._restart_later(victim, down)
                elif kind == "pause":
                    self.runs[victim].paused = True
                    self.trace.add(victim, "pause", f"{down:.2f}s")
                    self.loop.call_later(down, self._resume, victim, self.runs[victim])
                else:
                    self.trace.add(victim, "term")
                    asyncio.ensure_future(self._terminate(victim, down))
            elif kind in ("partition", "one-way"):
                names = list(self.names)
                rng.shuffle(names)
                cut = rng.randint(1, len(names) - 1)
                a, b = sorted(names[:cut]), sorted(names[cut:])
                part = net.network.partition(a, b, one_way=kind == "one-way")
                span = rng.uniform(0.5, 4 * self.cfg.timeout)
                self.fault_log.append((now, now + span + 3 * self.cfg.timeout))
                self.trace.add("net", kind, f"{a} | {b} for {span:.2f}s")
                self.loop.call_later(span, self._heal_partition, part)
            elif kind == "clog":
                step = rng.uniform(0.1, self.cfg.timeout)
                plan = net.network.swizzle_clog(self.names, start=now, step=step, fraction=rng.uniform(0.2, 0.8))
                end = plan[-1][0] if plan else now
                self.fault_log.append((now, end + 3 * self.cfg.timeout))
                self.trace.add("net", "swizzle-clog", f"{len(plan) // 2} links, {step:.2f}s apart")
            elif kind == "lossy":
                span = rng.uniform(1.0, 8.0)
                net.network.set_default(loss=rng.choice([0.01, 0.05, 0.2]), dup=rng.choice([0.0, 0.02, 0.1]),
                                        reorder=rng.choice([0.0, 0.05]))
                self.fault_log.append((now, now + span + 3 * self.cfg.timeout))
                self.trace.add("net", "lossy", f"for {span:.2f}s")
                self.loop.call_later(span, net.network.set_default, loss=0.0, dup=0.0, reorder=0.0)
            else:
                victim = rng.choice(self.names)
                jump = rng.choice([-30.0, -2.0, 2.0, 30.0, 3600.0])
                self.offsets[victim] += jump
                self.fault_log.append((now, now + 3 * self.cfg.timeout))
                self.trace.add(victim, "clock-jump", f"{jump:+.0f}s")

    def _resume(self, name: str, run: NodeRun) -> None:
        if run.alive and run.paused:
            assert self.loop is not None
            self.loop.resume(run)
            self.trace.add(name, "resume")

    def _heal_partition(self, part: Any) -> None:
        assert self.net is not None
        self.net.network.heal(part)
        self.trace.add("net", "healed")

    def _heal(self) -> None:
        """Every fault ends: the network whole again, paused nodes resumed, dead ones restarted,
        every topic enabled again where it was disabled."""
        assert self.net is not None and self.loop is not None
        net = self.net.network
        net.heal()
        net.unclog_all()
        net.set_default(loss=0.0, dup=0.0, reorder=0.0)
        for name in self.names:
            run = self.runs[name]
            if run.alive and run.paused:
                self.loop.resume(run)
        for name, handle in list(self._restarts.items()):
            handle.cancel()
            self._restarts.pop(name, None)
        for name in self.names:
            if not self.runs[name].alive:
                self._start(name)
        for name, topic in sorted(self._disabled):
            self._spawn(name, self._toggle(name, topic, "enabled", wait=True))
        for name in self.names:  # suspension is not durable, but a queue suspended in a live node stays so
            queues = sorted(q for n, q in self._suspended if n == name)
            if queues:
                self._spawn(name, self._resume_queues(name, queues))
        self.healed_at = self.loop.time()
        self.trace.add("sim", "healed", f"after {self.faults} faults")

    # -- invariants ----------------------------------------------------------------------------
    def _on_note(self, name: str, n: Any) -> None:
        if n.topic in ("job/finished", "job/cancelled", "job/stopped", "job/removed") and n.job_id in self.accepted \
                and self.accepted[n.job_id] == name:
            count = self.finals.get(n.job_id, 0) + 1
            self.finals[n.job_id] = count
            self.trace.add(name, "final", f"{n.job_id[-8:]} {n.state}")
            if count > 1 + self.retries.get(n.job_id, 0) and n.topic != "job/removed":
                self._fail("final-once", f"job {n.job_id} became final {count} times "
                                         f"(retries asked: {self.retries.get(n.job_id, 0)}), now {n.state}")

    def _on_topology(self, key: tuple[str, int], event: Any) -> None:
        events = self.events.setdefault(key, [])
        kinds = [e.type for e in events]
        t = event.type
        bad = None
        if not kinds and t is not TE.TOPOLOGY_INIT:
            bad = f"first event {t.value}, not TOPOLOGY_INIT"
        elif kinds and t is TE.TOPOLOGY_INIT:
            bad = "TOPOLOGY_INIT twice"
        elif t is TE.TOPOLOGY_CHANGING and kinds and kinds[-1] is TE.TOPOLOGY_CHANGING:
            bad = "two TOPOLOGY_CHANGING in a row"
        elif t is TE.TOPOLOGY_CHANGED and (not kinds or kinds[-1] is not TE.TOPOLOGY_CHANGING):
            bad = "TOPOLOGY_CHANGED without TOPOLOGY_CHANGING"
        elif t is TE.PROPERTIES_CHANGED and kinds and kinds[-1] is TE.TOPOLOGY_CHANGING:
            bad = "PROPERTIES_CHANGED during a change"
        events.append(event)
        if t in (TE.TOPOLOGY_INIT, TE.TOPOLOGY_CHANGED):
            self.trace.add(key[0], t.value, f"{event.new_view.names} leader={event.new_view.leader}")
        if bad:
            self._fail("topology-events", f"node {key[0]} (incarnation {key[1]}): {bad}")

    def _on_run(self, name: str, job: Any) -> None:
        run = self.runs.get(name)
        if run is None:
            return
        marked = self.superseded.get((name, run.incarnation), {})
        if job.id in marked and job.origin != name:
            node = self.nodes.get(name)
            attempt = None
            if node is not None:
                row = node.store.reader.execute("SELECT attempt FROM transfer_copies WHERE job_id=?",
                                                (job.id,)).fetchone()
                attempt = row[0] if row else None
            if attempt is None or attempt == marked[job.id]:
                self._fail("superseded-never-runs",
                           f"node {name} runs its restored copy of {job.id} (attempt {marked[job.id]}), "
                           f"which its origin {job.origin} had already let go of")

    def _snapshot_superseded(self, name: str, run: NodeRun, node: Any) -> None:
        """At a restart: which restored copies had their origin already given up on?"""
        if run.incarnation == 1:
            return
        marked: dict[str, int] = {}
        for job_id, origin, attempt in node.store.reader.execute(
                "SELECT job_id, origin, attempt FROM transfer_copies"):
            o = self.nodes.get(origin)
            if o is None or o.transfer is None:
                continue
            st = o.transfer.protocol.origin.job_state(job_id)
            if st is None or st[0] != name or st[1] != attempt:
                marked[job_id] = attempt
        if marked:
            self.superseded[(name, run.incarnation)] = marked
            self.trace.add(name, "restored-superseded", len(marked))

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self._check_leaders()
            self._check_responsibility()
            self._raise_pending()

    def _live(self) -> list[tuple[str, Any]]:
        return [(n, self.nodes[n]) for n in self.names
                if n in self.nodes and self.runs[n].alive and not self.runs[n].paused]

    def _check_leaders(self) -> None:
        for name, node in self._live():
            core = getattr(node.discovery, "_core", None)
            if core is None or not core.established or core.changing:
                continue
            view = core.view
            if not view.current:
                continue
            oldest = min(core._ordered(), key=lambda i: (i.rank, i.name)).name
            if view.leader != oldest:
                self._fail("leader-oldest", f"node {name}: leader {view.leader}, oldest member {oldest} "
                                            f"(members {view.names})")

    def _check_responsibility(self) -> None:
        from ..transfer.protocol import OriginJobState

        for name, node in self._live():
            if node.transfer is None:
                continue
            origin = node.transfer.protocol.origin
            for job_id, job in list(origin._jobs.items()):
                if job.state is OriginJobState.OFFERED:
                    continue
                target = self.nodes.get(job.peer)
                if target is None or not self.runs[job.peer].alive:
                    continue
                try:
                    r = target.store.reader
                    held = r.execute("SELECT 1 FROM transfer_copies WHERE job_id=? AND attempt=? UNION ALL "
                                     "SELECT 1 FROM transfer_outbox WHERE job_id=? AND attempt=?",
                                     (job_id, job.spec.attempt, job_id, job.spec.attempt)).fetchone()
                except (sqlite3.Error, RuntimeError):
                    continue
                if held is None:
                    self._fail("responsibility", f"{name} believes {job.peer} holds {job_id} attempt "
                                                 f"{job.spec.attempt} ({job.state.value}); {job.peer} has neither "
                                                 f"the copy nor its result")

    async def _converge(self) -> None:
        assert self.loop is not None and self.healed_at is not None
        cfg = self.cfg
        deadline = self.healed_at + cfg.settle
        topo_deadline = self.healed_at + cfg.topology_bound
        topo_done = False
        while True:
            await asyncio.sleep(0.25)
            now = self.loop.time()
            if not topo_done:
                problem = self._topology_problem()
                if problem is None:
                    topo_done = True
                    self.converged_s = round(now - self.healed_at, 2)
                    self.trace.add("sim", "one-topology", f"after {self.converged_s}s")
                elif now > topo_deadline:
                    self._fail("one-topology", f"{cfg.topology_bound:g}s after healing: {problem}")
            if topo_done:
                problem = self._jobs_problem()
                if problem is None:
                    return
                if now > deadline:
                    self._fail("all-final", f"{cfg.settle:g}s after healing: {problem}")
                if now - self.healed_at - (self.converged_s or 0) > cfg.queued_bound:
                    self._check_stuck_queued()

    async def _stay_stable(self) -> None:
        """Healed and settled, the mesh stays so: one topology for ``stable`` more seconds, no
        member changes, no repair (a repair now would mean a belief still drifting)."""
        assert self.loop is not None
        # the views may still reorder for a moment (a rejoin moves a node back): let them settle
        # for two heartbeat timeouts without a change, then nothing may change any more
        quiet_since = self.loop.time()
        limit = quiet_since + self.cfg.settle

        def member_changes() -> dict[tuple[str, int], int]:  # properties (a schedule's last fire) may change
            return {k: sum(1 for e in v if e.type is TE.TOPOLOGY_CHANGED) for k, v in self.events.items()}

        changes = member_changes()
        while self.loop.time() - quiet_since < 2 * self.cfg.timeout:
            await asyncio.sleep(0.25)
            now_changes = member_changes()
            if now_changes != changes:
                changes, quiet_since = now_changes, self.loop.time()
            if self.loop.time() > limit:
                self._fail("one-topology", "the views never stopped changing after healing")
        repairs = self._repairs()
        changes = {k: len(v) for k, v in self.events.items()}
        end = self.loop.time() + self.cfg.stable
        while self.loop.time() < end:
            await asyncio.sleep(0.5)
            problem = self._topology_problem()
            if problem is not None:
                self._fail("one-topology", f"after settling, the mesh split again: {problem}")
        moved = [k for k, v in self.events.items() if k in changes and any(
            e.type is TE.TOPOLOGY_CHANGING for e in v[changes[k]:])]
        if moved:
            self._fail("one-topology", f"membership changed after settling, seen by {sorted(moved)}")
        after = self._repairs()
        if any(after.get(k, 0) > repairs.get(k, 0) for k in after):
            self._fail("no-late-repair", f"repairs after settling: {repairs} -> {after}")

    def _check_stuck_queued(self) -> None:
        """A job QUEUED (ready, not handed off) at its origin while a node that may run its topic
        has free slots, long after the mesh became one topology: nobody is dispatching it."""
        free: dict[str, bool] = {}
        for name, node in self._live():
            if node.pool.free_slots() > 0:
                for t in self.topics[name]:
                    if (name, t) not in self._disabled:
                        free[t] = True
        now = None
        for origin, node in self._live():
            now = node.clock()
            for job_id, topic, not_before, target in node.store.reader.execute(
                    "SELECT id, topic, not_before, target FROM jobs WHERE state='QUEUED' AND origin=? "
                    "AND (target IS NULL OR target=?) LIMIT 50", (origin, origin)):
                if job_id in self.accepted and not_before <= now and free.get(topic):
                    self._fail("stuck-queued", f"job {job_id} ({topic}) is QUEUED at {origin} {self.cfg.queued_bound:g}s "
                                               f"after the mesh healed, while a node that runs {topic} has free slots")

    def _topology_problem(self) -> str | None:
        views = {}
        for name in self.names:
            node = self.nodes.get(name)
            if node is None:
                return f"{name} is not running yet"
            v = node.topology
            views[name] = (sorted(v.names), v.leader, v.current)
        want = sorted(self.names)
        for name, (names, leader, current) in views.items():
            if names != want or not current:
                return f"{name} sees {names} (current={current})"
        leaders = {v[1] for v in views.values()}
        if len(leaders) != 1:
            return f"leaders {sorted(leaders)}"
        return None

    def _jobs_problem(self) -> str | None:
        open_: list[str] = []
        by_origin: dict[str, list[str]] = {}
        for job_id, origin in self.accepted.items():
            if job_id not in self._seen_final:
                by_origin.setdefault(origin, []).append(job_id)
        for origin, ids in sorted(by_origin.items()):
            node = self.nodes.get(origin)
            if node is None:
                return f"{origin} is not running"
            rows: dict[str, tuple[str, str | None, str | None]] = {}
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                q = f"SELECT id, state, target, result_message FROM jobs WHERE id IN ({','.join('?' * len(chunk))})"
                rows.update({r[0]: r[1:] for r in node.store.reader.execute(q, chunk)})
            for job_id in ids:
                row = rows.get(job_id)
                if row is None:
                    if self.finals.get(job_id):
                        # final, then purged with the history (a clock jumped past history_ttl)
                        self._seen_final.add(job_id)
                        continue
                    return f"job {job_id} is missing at its origin {origin} (never final)"
                state, target, message = row
                if state not in FINAL_NAMES:
                    open_.append(f"{job_id} {state} at {origin} (target {target})")
                    continue
                if state != "SUCCEEDED" and job_id not in self.stop_asked:
                    return f"job {job_id} ended {state}: {message}"
                self._seen_final.add(job_id)
        if open_:
            return f"{len(open_)} jobs not final, e.g. {open_[:3]}"
        for inst_id, origin in self.flows.items():
            node = self.nodes.get(origin)
            if node is None:
                return f"{origin} is not running"
            row = node.workflows._store.get(inst_id) if node.workflows is not None else None
            state = getattr(row, "state", None)
            if state is None or getattr(state, "value", state) != "COMPLETED":
                cur = row.current() if row is not None else None
                job = node.store.get(cur.job_id) if cur is not None and getattr(cur, "job_id", None) else None
                return (f"workflow {inst_id} at {origin} is {getattr(state, 'value', state)}: step "
                        f"{getattr(row, 'current_step', None)} {cur!r}; its job "
                        f"{None if job is None else (job.id, job.state.value, job.target)}")
        return None

    def _check_schedules(self) -> None:
        if self.schedule_id is None or self.healed_at is None:
            return
        fired: dict[str, int] = {}
        for name in self.names:
            node = self.nodes.get(name)
            if node is None:
                continue
            for (props,) in node.store.reader.execute(
                    "SELECT properties FROM jobs WHERE origin=? AND properties LIKE ?", (name, f"%{self.schedule_id}%")):
                slot = json.loads(props).get("scheduled_time")
                if slot:
                    fired[slot] = fired.get(slot, 0) + 1
        from ..job import parse_iso

        for slot, n in sorted(fired.items()):
            t = parse_iso(slot) - EPOCH
            near_fault = any(s - 10.0 <= t <= e + 5.0 for s, e in self.fault_log) or any(
                abs(o) > 0 for o in self.offsets.values())
            if n > 1 and not near_fault:
                self._fail("schedule-once", f"slot {slot} fired {n} times with no fault near it")
        assert self.loop is not None
        start = self.healed_at + (self.converged_s or 0) + 3 * self.cfg.timeout + 5
        end = self.loop.time() - 5
        if any(abs(o) > 0 for o in self.offsets.values()):
            return  # a clock jumped: slots are another node's idea of time
        t = (int(start) // 5 + 1) * 5
        while t <= end:
            slot = _iso(EPOCH + t)
            if slot not in fired:
                self._fail("schedule-fires", f"slot {slot} after healing never fired")
            t += 5

    def _repairs(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for node in self.nodes.values():
            try:
                for k, v in node.repairs().items():
                    out[k] = out.get(k, 0) + v
            except Exception:
                pass
        return {k: v for k, v in out.items() if v}


def _iso(t: float) -> str:
    from ..job import iso

    return iso(t)


def run_seed(seed: int, plant: str | None = None, **kw: Any) -> SimResult:
    return Simulation(SimConfig(seed=seed, plant=plant, **kw)).run()


def _scratch() -> str | None:
    """Where the simulated nodes' SQLite files go: memory-backed if the machine has it (the
    files are thrown away with the run; a disk only makes each commit slower)."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
