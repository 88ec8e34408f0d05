"""The simulator's records: its configuration, the trace, a node's clock, a violation, a result.

Plain values the rest of ``jobmesh.sim`` shares (the harness, the node wiring, the workload,
the nemesis and the invariants all read ``SimConfig`` and write to the ``Trace``); kept apart
from ``harness`` so that each of those modules can import them without importing the run.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..job import FINAL_STATES

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
