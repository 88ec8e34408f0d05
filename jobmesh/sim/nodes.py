"""Per-node wiring of a simulation: the scenario's plan, each node's config, boot, kill and restart.

The part of ``Simulation`` that builds real ``jobmesh.Node`` objects on the simulated
transport, each incarnation in a ``contextvars`` context of its own (its clock, its random
stream, its fate on the ``SimLoop``), and ends them the way a process ends: kill -9 (the OS
releases its sockets, locks and files) or SIGTERM (a graceful stop as its own code).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import random
from typing import Any

from .. import clock as jclock
from .. import rng as jrng
from ..config import DiscoveryConfig, NodeConfig, QueueConfig
from .loop import CURRENT_RUN, NodeRun
from .records import FLOW, TOPICS, SimClock
from .state import SimState


class NodeWiring(SimState):
    """The scenario and each node's lifecycle (a part of ``Simulation``)."""

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
