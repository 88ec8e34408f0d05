"""The state one simulation run keeps, shared by the modules that make up ``Simulation``.

``Simulation`` is put together from parts that each live in a module of their own (node
wiring, workload, nemesis, invariants); they all read and write the same run: its seeded
random streams, its nodes and their runs, what the workload was acknowledged, what the
invariants saw. ``SimState`` holds that state and the helpers every part uses (``_fail``,
``_raise_pending`` and ``_spawn``), so each part can subclass it.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import random
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .loop import NodeRun, SimLoop
from .records import SimConfig, Trace, Violation
from .transport import SimNet


class SimState:
    """One run's state: the scenario's random streams, the nodes, and what the checks saw."""

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
        self.clock_jumped = False  # a node's wall clock jumped at some point (it may be back at 0 now)
        self.max_lead = 0.0  # the furthest any node's clock has been ahead of true time (s)
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

    def _fail(self, invariant: str, detail: str) -> None:
        if self.violation is None:
            self.violation = Violation(invariant, detail)
            self.trace.add("sim", "VIOLATION", f"{invariant}: {detail}")
        raise self.violation

    def _raise_pending(self) -> None:
        if self.violation is not None:
            raise self.violation
        if self.loop is not None and self.loop.errors:
            ctx = self.loop.errors[0]
            self._fail("no-crash", f"{ctx.get('message')}: {ctx.get('exception')!r}")

    def _spawn(self, name: str, coro: Any) -> None:
        """Run ``coro`` as node ``name``'s code (its clock, its fate): a client of that node."""
        assert self.loop is not None
        self.loop.create_task(coro, context=self.ctxs[name])

    if TYPE_CHECKING:  # what one part calls of another's (``Simulation`` has them all)
        def _start(self, name: str) -> None: ...
        def _kill(self, name: str) -> None: ...
        def _restart_later(self, name: str, delay: float) -> None: ...
        async def _terminate(self, name: str, restart_after: float) -> None: ...
        async def _toggle(self, name: str, topic: str, mode: str, wait: bool = False) -> None: ...
        async def _resume_queues(self, name: str, queues: list[str]) -> None: ...
        def _on_note(self, name: str, n: Any) -> None: ...
        def _on_topology(self, key: tuple[str, int], event: Any) -> None: ...
        def _on_run(self, name: str, job: Any) -> None: ...
        def _snapshot_superseded(self, name: str, run: NodeRun, node: Any) -> None: ...


def _scratch() -> str | None:
    """Where the simulated nodes' SQLite files go: memory-backed if the machine has it (the
    files are thrown away with the run; a disk only makes each commit slower)."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
