"""Running an async consumer without a task of its own until it waits.

Why: for fast consumers, creating and scheduling an ``asyncio.Task`` per job costs more
than the job (a no-op consumer finishes in its first step). So the runner steps the
coroutine itself, and only a coroutine that really waits gets a task to drive it.

The contract (what callers may rely on, and what this module relies on):

0. Both are called from one task, the one that runs the consumer from its first step to its
   end (the runner's slot worker): code that looks at its task (``asyncio.timeout``,
   ``asyncio.current_task``, aiohttp's timeouts) sees that task throughout, as with a task
   of its own.
1. ``first_step(coro, cvars)`` runs ``coro`` inside the context ``cvars`` up to its first
   suspension, synchronously, on the loop's thread.
   - It returns ``(True, value)`` when the coroutine finished without waiting: ``value``
     is its return value. No task was made and the loop did not turn.
   - It returns ``(False, yielded)`` when the coroutine suspended: ``yielded`` is what it
     yielded, an asyncio future (anything awaitable on asyncio ends in one) or ``None``
     (a bare ``yield``, e.g. ``asyncio.sleep(0)``).
   - An exception the coroutine raises propagates (the caller makes it the outcome).
2. ``resume(coro, yielded, cvars)`` is a coroutine that drives the rest, awaited by that same
   task. It does what ``asyncio.Task.__step`` does for the coroutine:
   wait for the future it yielded (clearing ``_asyncio_future_blocking`` first, as a task
   does), then send ``None`` into the coroutine; the future's result or exception reaches
   the coroutine through the future itself. A bare yield costs one loop turn. It returns
   the coroutine's return value or raises its exception.
3. Cancellation: cancelling the driving task while the coroutine waits on its future
   cancels that future, so the coroutine sees ``CancelledError`` where it awaits, exactly
   as with a task of its own; if the task is cancelled while it is not waiting on the
   coroutine's future (a bare yield), the ``CancelledError`` is thrown into the coroutine.
   Either way the coroutine may catch it and go on (``resume`` keeps driving it) or end.
4. Every step runs in ``cvars``: a context variable a consumer sets stays in its job's
   context (as with a task per job) and does not leak into the next job.
5. The only asyncio internal touched is ``Future._asyncio_future_blocking`` (the flag every
   awaitable asyncio future carries, which ``Task`` clears the same way). Anything else a
   coroutine yields is a bug in it: ``resume`` throws a ``RuntimeError`` into it, as a
   ``Task`` does.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any, Coroutine


def first_step(coro: Coroutine[Any, Any, Any], cvars: contextvars.Context) -> tuple[bool, Any]:
    """Run ``coro`` up to its first suspension (see the contract, 1)."""
    try:
        yielded = cvars.run(coro.send, None)
    except StopIteration as done:
        return True, done.value
    return False, yielded


async def resume(coro: Coroutine[Any, Any, Any], yielded: Any, cvars: contextvars.Context) -> Any:
    """Drive ``coro`` from its first suspension to its end (see the contract, 2-4)."""
    run = cvars.run
    while True:
        try:
            if yielded is None:  # a bare yield: let the loop run once
                await asyncio.sleep(0)
            elif getattr(yielded, "_asyncio_future_blocking", None) is not None:
                yielded._asyncio_future_blocking = False  # as Task.__step does before waiting on it
                await yielded
            else:
                bad = RuntimeError(f"consumer coroutine yielded {yielded!r}, not an asyncio future")
                yielded = None
                try:
                    yielded = run(coro.throw, bad)
                except StopIteration as done:
                    return done.value
                continue
        except BaseException as exc:
            if yielded is None or not yielded.done():
                try:  # cancelled while not waiting on the coroutine's own future: tell it
                    yielded = run(coro.throw, exc)
                except StopIteration as done:
                    return done.value
                continue
        try:
            yielded = run(coro.send, None)
        except StopIteration as done:
            return done.value
