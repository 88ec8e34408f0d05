"""Daemon threads for sync consumers: a stuck consumer cannot keep a stopped node's process alive.

Why not ``concurrent.futures.ThreadPoolExecutor``: its workers are non-daemon threads
and the module joins every one of them at interpreter exit (``threading._register_atexit``),
even after ``shutdown(wait=False)``. A sync consumer blocked for a minute then holds the
process for a minute after the node said "node stopped". At shutdown the pool gives such
a run up (its job goes back to QUEUED, an interrupted run: at-least-once), so nothing
waits for the thread any more, and a daemon thread is simply not waited for when the
program ends.

Results come back through an asyncio future set on the loop's thread. A future that is
already done (the run was abandoned: its waiter was cancelled) or a loop that is closed
takes nothing: a late return is dropped without a word here (the pool logged the
abandonment when it happened).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, Callable

_IDLE_EXIT = 60.0  # seconds an idle thread waits for work before it ends (started again on demand)

_Item = tuple[Callable[[], Any], asyncio.Future[Any], asyncio.AbstractEventLoop]


class SyncThreads:
    """Runs blocking calls on daemon threads, started on demand and reused while idle.

    ``run(fn)`` (on the loop) returns an asyncio future of ``fn()``; ``shutdown()`` never
    waits: idle threads end at once, busy ones when their call returns. No bound of its
    own: the pool's slots bound the calls in flight (a refused call would fail a job).
    """

    def __init__(self, name: str = "jobmesh-consumer", idle_exit: float = _IDLE_EXIT) -> None:
        self.name = name
        self.idle_exit = idle_exit
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        # threads waiting for work less the items queued (a new thread counts as waiting,
        # its item as queued): a call takes a waiting thread only while this is positive
        self._idle = 0
        self._count = 0
        self._closed = False

    def run(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            if self._closed:
                raise RuntimeError("sync consumer threads are shut down")
            if self._idle > 0:
                self._idle -= 1  # a waiting thread will take it
            else:
                self._count += 1
                t = threading.Thread(target=self._work, name=f"{self.name}-{self._count}", daemon=True)
                self._threads.add(t)
                t.start()
            self._queue.put((fn, fut, loop))
        return fut

    def threads(self) -> int:
        """Threads alive now: idle ones, and busy ones (abandoned calls included)."""
        with self._lock:
            return len(self._threads)

    def shutdown(self) -> None:
        """Stop taking calls; never waits. Threads still in a call end when it returns."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _ in range(len(self._threads)):
                self._queue.put(None)

    def _work(self) -> None:
        me = threading.current_thread()
        try:
            while True:
                try:
                    item = self._queue.get(timeout=self.idle_exit)
                except queue.Empty:
                    with self._lock:
                        if not self._queue.empty():
                            continue  # queued for a waiting thread: maybe this one
                        self._idle -= 1
                        return
                if item is None:
                    return
                fn, fut, loop = item
                try:
                    ok, value = True, fn()
                except BaseException as exc:  # the consumer's exception is its run's outcome
                    ok, value = False, exc
                with self._lock:  # waiting again before the caller hears back: its next call reuses us
                    closed = self._closed
                    if not closed:
                        self._idle += 1
                _deliver(loop, fut, ok, value)
                del fn, fut, loop, item, value  # no reference to the job kept while idle
                if closed:
                    return
        finally:
            with self._lock:
                self._threads.discard(me)


def _deliver(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Hand a call's outcome to the loop; dropped if the loop is gone."""
    try:
        loop.call_soon_threadsafe(_settle, fut, ok, value)
    except RuntimeError:  # the loop is closed: the program is ending and nobody waits
        pass


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():  # abandoned (its waiter was cancelled at shutdown): the result is ignored
        return
    if ok:
        fut.set_result(value)
    elif isinstance(value, StopIteration):  # a future cannot carry StopIteration
        fut.set_exception(RuntimeError(f"consumer raised StopIteration: {value!r}"))
    else:
        fut.set_exception(value)
