"""The simulation's workload: what clients of the nodes do, through the public Python API.

The part of ``Simulation`` that drives the mesh from one seeded stream: adds (some delayed),
stops, retries, removals, workflows, offloading toggles and queue suspensions, each run as
its node's own code, and records what was acknowledged for the invariants to check.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .records import FLOW, TOPICS
from .state import SimState


class Workload(SimState):
    """The workload and the schedule it defines (a part of ``Simulation``)."""

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
