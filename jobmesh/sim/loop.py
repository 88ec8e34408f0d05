"""An asyncio event loop on virtual time, where whole nodes can be killed and paused.

The simulator runs the real code of several nodes in one process (DESIGN §4). Three things
make that exact and fast:

- **Virtual time.** ``loop.time()`` is a number the loop advances itself: when nothing is
  ready, it jumps straight to the next timer instead of sleeping. A minute of mesh time
  costs what its callbacks cost.
- **No threads.** ``run_in_executor`` (and so ``asyncio.to_thread``) runs the function
  inline; heartbeats run as tasks (the simulated transport says ``threads = False``) and
  sync consumers inline. Nothing happens behind the loop's back, so the order of every
  callback is fixed by the seed.
- **Node runs.** Each incarnation of a node runs in a ``contextvars`` context holding its
  ``NodeRun``; every callback scheduled from that context (task steps, timers, future
  callbacks) carries it. A killed run's callbacks are dropped — kill -9: no ``finally``
  block, no shutdown hook runs, what was not committed is lost. A paused run's callbacks
  wait until it resumes — SIGSTOP.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import selectors
from dataclasses import dataclass, field
from typing import Any, Callable

CURRENT_RUN: contextvars.ContextVar["NodeRun | None"] = contextvars.ContextVar("jobmesh_sim_run", default=None)


class SimulationStuck(RuntimeError):
    """Nothing is scheduled and nothing is ready: every task waits for something that never comes."""


@dataclass
class NodeRun:
    """One incarnation of a simulated node: alive until killed, possibly paused."""

    name: str
    incarnation: int
    alive: bool = True
    paused: bool = False
    frozen: list[tuple[_HandleRef, Callable[..., Any], tuple[Any, ...], contextvars.Context]] = \
        field(default_factory=list)
    dropped: int = 0  # callbacks dropped after the kill


class _HandleRef:
    """The handle a node's callback was scheduled with. A callback that came due while its node
    was paused waits in ``NodeRun.frozen``; if its handle is cancelled meanwhile (a timeout left
    before the node went on), it must not run, as in a stopped process, where the handle would
    still sit in the loop's ready queue and be skipped. (Python 3.12's ``asyncio.timeout``
    asserts it never fires once left: seeds 150 and 171 of the CI set crashed there.)"""

    __slots__ = ("handle",)

    def __init__(self) -> None:
        self.handle: asyncio.Handle | None = None


class _IdleSelector(selectors.BaseSelector):
    """A selector with no I/O: waiting for ``timeout`` advances the loop's virtual time."""

    def __init__(self) -> None:
        self._map: dict[Any, selectors.SelectorKey] = {}
        self.loop: SimLoop | None = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, fileobj if isinstance(fileobj, int) else fileobj.fileno(), events, data)
        self._map[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._map.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        assert self.loop is not None
        if timeout is None:
            raise SimulationStuck("nothing scheduled: every task waits for something that never comes")
        if timeout > 0:
            self.loop._now += timeout
        return []

    def get_map(self) -> Any:
        return self._map

    def close(self) -> None:
        self._map.clear()


class SimLoop(asyncio.SelectorEventLoop):
    """The simulation's event loop (see the module docstring)."""

    simulated = True

    def __init__(self, start: float = 0.0) -> None:
        selector = _IdleSelector()
        self._now = start
        super().__init__(selector)
        selector.loop = self
        self.set_exception_handler(self._on_exception)
        self.errors: list[dict[str, Any]] = []  # unhandled exceptions of live runs (a bug found)

    def time(self) -> float:
        return self._now

    # -- no threads ---------------------------------------------------------------------
    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        fut = self.create_future()
        try:
            fut.set_result(func(*args))
        except BaseException as e:  # noqa: BLE001 - the caller awaits it
            fut.set_exception(e)
        return fut

    # -- node runs ------------------------------------------------------------------------
    def call_soon(self, callback: Callable[..., Any], *args: Any, context: contextvars.Context | None = None) -> Any:
        run = CURRENT_RUN.get() if context is None else context.get(CURRENT_RUN)
        if run is None:
            return super().call_soon(callback, *args, context=context)
        ref, guarded = _guard(run, callback, context)
        ref.handle = super().call_soon(guarded, *args, context=context)
        return ref.handle

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any,
                context: contextvars.Context | None = None) -> Any:
        run = CURRENT_RUN.get() if context is None else context.get(CURRENT_RUN)
        if run is None:
            return super().call_at(when, callback, *args, context=context)
        ref, guarded = _guard(run, callback, context)
        ref.handle = super().call_at(when, guarded, *args, context=context)
        return ref.handle

    def resume(self, run: NodeRun) -> None:
        """SIGCONT: what the run would have done meanwhile happens now, in order (unless its
        handle was cancelled meanwhile: the same ``ref`` goes with it, ``_guarded`` checks it)."""
        run.paused = False
        frozen, run.frozen = run.frozen, []
        for ref, cb, args, ctx in frozen:
            super().call_soon(functools.partial(_guarded, run, ref, cb, ctx), *args, context=ctx)

    def _on_exception(self, loop: asyncio.AbstractEventLoop, ctx: dict[str, Any]) -> None:
        msg = str(ctx.get("message", ""))
        if msg.startswith("Task was destroyed but it is pending"):
            return  # a killed run's task, never to be stepped again
        run = None
        task = ctx.get("task") or ctx.get("future")
        if task is not None:
            get_ctx = getattr(task, "get_context", None)
            if get_ctx is not None:
                run = get_ctx().get(CURRENT_RUN)
        if run is not None and not run.alive:
            return
        self.errors.append(ctx)


def _guard(run: NodeRun, callback: Callable[..., Any],
           context: contextvars.Context | None) -> tuple[_HandleRef, Callable[..., Any]]:
    """``callback`` as node ``run``'s code, and the reference its handle goes into."""
    ref = _HandleRef()
    return ref, functools.partial(_guarded, run, ref, callback, context or contextvars.copy_context())


def _guarded(run: NodeRun, ref: _HandleRef, callback: Callable[..., Any], context: contextvars.Context,
             *args: Any) -> Any:
    if not run.alive:
        run.dropped += 1
        return None
    if run.paused:
        run.frozen.append((ref, callback, args, context))
        return None
    if ref.handle is not None and ref.handle.cancelled():
        return None  # came due while paused, cancelled before the node went on
    return callback(*args)
