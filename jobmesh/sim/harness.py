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
- ``harness-alive``: the run's own workload, nemesis and checker tasks did not die of an error
  (a dead nemesis draws no more faults: the run would pass while testing little).

``delays`` > 0 delays that share of the workload's adds by 0.2 to 10 s, with a queue horizon of
``defer_after`` s (jobs due later wait on disk and are read back by the due scan) and queue
windows of ``window`` jobs, so the on-disk and full-window paths run under every fault.

The run is put together from modules of its own: ``records`` (``SimConfig``, ``Trace``,
``SimClock``, ``Violation``, ``SimResult``), ``state`` (the run's shared state), ``nodes``
(the scenario and each node's wiring and lifecycle), ``workload``, ``nemesis`` (faults and
healing) and ``invariants``; this module holds the run loop and its setup and teardown.
"""

from __future__ import annotations

import asyncio
import gc
import random
import shutil
import sys
import time
import warnings
from typing import Any

import structlog

from ..plants import PLANTS
from .invariants import Invariants
from .loop import SimLoop, SimulationStuck
from .nemesis import Nemesis
from .network import LinkSpec, SimNetwork
from .nodes import NodeWiring
from .records import EPOCH, FINAL_NAMES, FLOW, TOPICS, SimClock, SimConfig, SimResult, Trace, Violation
from .transport import SimNet
from .workload import Workload

__all__ = ["EPOCH", "FINAL_NAMES", "FLOW", "TOPICS", "SimClock", "SimConfig", "SimResult", "Simulation", "Trace",
           "Violation", "run_seed"]


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


class Simulation(NodeWiring, Workload, Nemesis, Invariants):
    """One seed's run: whole nodes, a workload, a nemesis and the invariants (see the module)."""

    # -- running ---------------------------------------------------------------------------
    def run(self) -> SimResult:
        t0 = time.perf_counter()
        old_loop = None
        try:
            with warnings.catch_warnings():  # 3.12+: "no current event loop" when there is none (then one is made)
                warnings.simplefilter("ignore", DeprecationWarning)
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
        self._check_parts_alive({"workload": load, "nemesis": nemesis, "checker": checker})
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
        self._check_parts_alive({"checker": checker})

    def _check_parts_alive(self, parts: dict[str, asyncio.Future[Any] | None]) -> None:
        """The harness's own tasks ran all along: one that died of an error (not a violation it
        found) stopped testing what the run claims, and no node would have noticed (a nemesis
        that raised at its first lossy-link fault drew no fault after it, for 100s of seeds)."""
        for part, task in parts.items():
            if task is None or not task.done() or task.cancelled():
                continue
            exc = task.exception()
            if exc is not None and not isinstance(exc, Violation):
                self._fail("harness-alive", f"the simulation's {part} died: {exc!r}")


def run_seed(seed: int, plant: str | None = None, **kw: Any) -> SimResult:
    return Simulation(SimConfig(seed=seed, plant=plant, **kw)).run()
