"""The simulation's nemesis: the fault schedule drawn from the seed, and healing it all.

The part of ``Simulation`` that breaks things the design expects to survive (kill -9, SIGSTOP,
SIGTERM, partitions two-way and one-way, swizzle-clogs, lossy links, clock jumps), logs each
fault's span for the schedule checks, and at the end of the workload heals every one of them.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from .loop import NodeRun
from .state import SimState


class Nemesis(SimState):
    """Faults and healing (a part of ``Simulation``)."""

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
                self.loop.call_later(span, partial(net.network.set_default, loss=0.0, dup=0.0, reorder=0.0))
            else:
                victim = rng.choice(self.names)
                jump = rng.choice([-30.0, -2.0, 2.0, 30.0, 3600.0])
                self.offsets[victim] += jump
                self.clock_jumped = True
                self.max_lead = max(self.max_lead, self.offsets[victim])
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
