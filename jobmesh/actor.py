"""A small asyncio actor core (in the spirit of pykka's ``_actor.py``).

An actor owns its state and a mailbox, and handles one message at a time in
``receive``. The only ways in are ``tell`` (fire and forget) and ``ask``
(request/reply with a timeout). Lifecycle hooks: ``on_start`` (load durable
state), ``on_stop`` (release resources), ``on_failure`` (log what broke), and
``on_idle`` (the mailbox is empty: work coalesced over a burst of messages runs here).

Supervision: an exception that is a ``JobmeshError`` is an answer (it goes back to
the asker, the actor carries on). Any other exception escaping ``receive`` or a
task started with ``spawn`` is a crash: the actor is logged, stopped and
restarted with exponential backoff, its mailbox kept, its state reloaded by
``on_start``. More than ``max_restarts`` crashes within ``restart_window``
seconds escalate to the ``ActorSystem``'s ``on_escalate`` (the node shuts down
cleanly) instead of looping forever.
"""

from __future__ import annotations

import asyncio
from . import clock as _clock
from collections import deque
from typing import Any, Awaitable, Callable, Coroutine

import structlog

from .errors import ActorCrashed, ActorStopped, JobmeshError

log = structlog.get_logger("jobmesh.actor")

_STOP = object()


class _Envelope:
    __slots__ = ("msg", "reply")

    def __init__(self, msg: Any, reply: asyncio.Future[Any] | None) -> None:
        self.msg = msg
        self.reply = reply


class Actor:
    """Subclass and implement ``receive``; start it through an ``ActorSystem``."""

    max_restarts: int = 5
    restart_window: float = 30.0
    restart_backoff: float = 0.05  # first restart delay; doubles per crash in the window

    def __init__(self, name: str) -> None:
        self.name = name
        self.log = log.bind(actor=name)
        self._mailbox: deque[_Envelope] = deque()
        self._wakeup = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._running = False
        self._stopping = False
        self._crashes: deque[float] = deque()
        self._system: ActorSystem | None = None
        self._crash: BaseException | None = None

    # -- hooks --------------------------------------------------------------
    async def on_start(self) -> None:
        """Called before the first message and after every restart."""

    async def on_stop(self) -> None:
        """Called when the actor stops or before it restarts after a crash."""

    async def on_failure(self, exc: BaseException) -> None:
        """Called after a crash, before the restart."""

    def on_idle(self) -> None:
        """Called each time the mailbox has been emptied, before waiting for more: an actor that
        coalesces work over many messages (one dispatch for a burst of them) does it here."""

    async def receive(self, msg: Any) -> Any:
        raise NotImplementedError

    # -- the ways in --------------------------------------------------------
    def tell(self, msg: Any) -> None:
        """Queue ``msg``; never blocks, never raises for a live actor."""
        if self._stopping and self._runner is None:
            raise ActorStopped(f"actor {self.name} is stopped")
        self._mailbox.append(_Envelope(msg, None))
        self._wakeup.set()

    async def ask(self, msg: Any, timeout: float | None = 10.0) -> Any:
        """Send ``msg`` and wait for ``receive``'s return value (or its error)."""
        if self._stopping and self._runner is None:
            raise ActorStopped(f"actor {self.name} is stopped")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._mailbox.append(_Envelope(msg, fut))
        self._wakeup.set()
        if timeout is None:
            return await fut
        return await asyncio.wait_for(fut, timeout)

    @property
    def alive(self) -> bool:
        return self._running

    @property
    def mailbox_size(self) -> int:
        return len(self._mailbox)

    # -- helpers for subclasses --------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run a background task owned by this actor; if it raises, the actor crashed."""
        task = asyncio.get_running_loop().create_task(coro, name=name or f"{self.name}:task")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def tell_later(self, delay: float, msg: Any) -> asyncio.TimerHandle:
        """``tell(msg)`` after ``delay`` seconds, unless the actor stopped or crashed by then.

        Timers are the actor's own: they are cancelled with its tasks, so a timer that fires
        during shutdown does not raise ``ActorStopped`` from inside the event loop.
        """
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            if not self._stopping:
                self.tell(msg)

        handle = asyncio.get_running_loop().call_later(max(0.0, delay), fire)
        self._timers.add(handle)
        return handle

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not self._stopping:
            self._crash = exc
            self._wakeup.set()

    # -- lifecycle (driven by ActorSystem) ---------------------------------
    async def _start(self, system: "ActorSystem") -> None:
        self._system = system
        self._stopping = False
        await self.on_start()
        self._running = True
        self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"actor:{self.name}")

    async def _stop(self, timeout: float = 10.0) -> None:
        if self._runner is None:
            return
        self._stopping = True
        self._mailbox.append(_Envelope(_STOP, None))
        self._wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._runner), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._runner.cancel()
        except Exception:  # pragma: no cover - the runner logs its own failures
            pass
        self._runner = None

    async def _cancel_tasks(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        self._tasks.clear()

    async def _run(self) -> None:
        while True:
            try:
                await self._loop()
                break  # clean stop
            except asyncio.CancelledError:
                await self._cancel_tasks()
                self._fail_pending(ActorStopped(f"actor {self.name} is stopped"))
                self._running = False
                raise
            except GeneratorExit:  # the coroutine is closed (its loop is gone): nothing may await now
                self._running = False
                raise
            except BaseException as exc:  # a crash: log, restart with backoff or escalate
                self._running = False
                self.log.error("actor crashed", error=repr(exc), exc_info=exc)
                try:
                    await self.on_failure(exc)
                except Exception:
                    self.log.exception("failure hook of a crashed actor failed", hook="on_failure")
                await self._cancel_tasks()
                try:
                    await self.on_stop()
                except Exception:
                    self.log.exception("stop hook of a crashed actor failed", hook="on_stop")
                now = _clock.monotonic()
                self._crashes.append(now)
                while self._crashes and now - self._crashes[0] > self.restart_window:
                    self._crashes.popleft()
                if len(self._crashes) > self.max_restarts:
                    self.log.critical("actor keeps crashing; escalating", crashes=len(self._crashes))
                    self._fail_pending(ActorCrashed(f"actor {self.name} gave up after repeated crashes"))
                    if self._system is not None:
                        self._system.escalate(self, exc)
                    return
                delay = self.restart_backoff * (2 ** (len(self._crashes) - 1))
                await asyncio.sleep(delay)
                try:
                    await self.on_start()
                except Exception as e:  # a failing restart counts as another crash
                    self.log.error("actor restart failed", error=repr(e))
                    self._crashes.append(_clock.monotonic())
                    if len(self._crashes) > self.max_restarts:
                        self._fail_pending(ActorCrashed(f"actor {self.name} could not restart"))
                        if self._system is not None:
                            self._system.escalate(self, e)
                        return
                    continue
                self._running = True
                self.log.info("actor restarted", crashes=len(self._crashes))
        self._running = False
        await self._cancel_tasks()
        await self.on_stop()

    async def _loop(self) -> None:
        mailbox = self._mailbox
        while True:
            if self._crash is not None:
                exc, self._crash = self._crash, None
                raise exc
            if not mailbox:
                self.on_idle()
                if mailbox:
                    continue
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            env = mailbox.popleft()
            if env.msg is _STOP:
                self._fail_pending(ActorStopped(f"actor {self.name} is stopped"))
                return
            try:
                result = self.receive(env.msg)
                if asyncio.iscoroutine(result):
                    result = await result
            except JobmeshError as e:
                if env.reply is not None and not env.reply.done():
                    env.reply.set_exception(e)
                elif env.reply is None:
                    self.log.warning("message refused", error=str(e))
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if env.reply is not None and not env.reply.done():
                    env.reply.set_exception(ActorCrashed(f"actor {self.name} crashed: {e!r}"))
                raise
            if env.reply is not None and not env.reply.done():
                env.reply.set_result(result)

    def _fail_pending(self, exc: Exception) -> None:
        while self._mailbox:
            env = self._mailbox.popleft()
            if env.reply is not None and not env.reply.done():
                env.reply.set_exception(exc)


class ActorSystem:
    """Starts actors in order, stops them in reverse, and escalates repeated crashes."""

    def __init__(self, on_escalate: Callable[[Actor, BaseException], Awaitable[None] | None] | None = None) -> None:
        self.actors: list[Actor] = []
        self._on_escalate = on_escalate
        self.escalated: BaseException | None = None

    async def start(self, actor: Actor) -> Actor:
        await actor._start(self)
        self.actors.append(actor)
        return actor

    async def stop_all(self, timeout: float = 10.0) -> None:
        for actor in reversed(self.actors):
            try:
                await actor._stop(timeout)
            except Exception:
                log.exception("actor stop failed", actor=actor.name)
        self.actors.clear()

    def escalate(self, actor: Actor, exc: BaseException) -> None:
        self.escalated = exc
        if self._on_escalate is not None:
            res = self._on_escalate(actor, exc)
            if asyncio.iscoroutine(res):
                asyncio.get_running_loop().create_task(res)
