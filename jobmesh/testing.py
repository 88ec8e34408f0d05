"""Testing helpers: what Dramatiq's StubBroker or Celery's ``celery.contrib.pytest`` give their users.

Three ways to test a task, from the smallest up:

1. **The function alone.** Calling a task runs its function here and now, with no node and no
   job: ``assert await send_mail("a@b.c", "hi") == {"message_id": "m-1"}``.
2. **One run through the runtime, in isolation:** ``await jobmesh.testing.run(send_mail, "a@b.c",
   "hi")`` starts a throw-away node (a temp dir, no sockets), sends one job, waits for it and
   returns its result, or raises ``jobmesh.JobFailed`` (``.job`` has the state, message and log).
   The arguments go through the same binding and JSON round trip, the result through the same
   JSON check, and ``timeout``/``throws``/``retries`` apply as on a real node (pass
   ``retries=0`` to see the first failure at once).
3. **A node in your tests** (pytest with pytest-asyncio): put ``pytest_plugins = ["jobmesh.testing"]``
   in ``conftest.py`` and take the ``jobmesh_node`` fixture: a started ``Node`` on ``tmp_path``
   with no sockets (no ``bind``, no ``http``). ``task.send()`` in the test goes to it (it is the
   node running in this process), and ``await jobmesh_node.jobs.join(timeout)`` returns once
   nothing is QUEUED or ACTIVE::

       async def test_signup_sends_mail(jobmesh_node):
           jobmesh_node.add_consumer(send_mail)
           handle = await send_mail.send("a@b.c", "welcome")
           await jobmesh_node.jobs.join(timeout=5)
           assert await handle.result() == {"message_id": "m-1"}

``node(tmp_path, consumers=[...])`` is the same node as an async context manager, for any
test framework.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, TypeVar

from .config import QueueConfig
from .node import Node
from .tasks import Task

R = TypeVar("R")

__all__ = ["jobmesh_node", "node", "run"]


@contextlib.asynccontextmanager
async def node(data_dir: str | Path | None = None, consumers: Iterable[Any] = (), name: str = "test",
               **options: Any) -> AsyncIterator[Node]:
    """A started node with no sockets on ``data_dir`` (a fresh temp dir when None), stopped after."""
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="jobmesh-test-"))
        n = Node(name=name, data_dir=Path(data_dir) / name, bind=None, http=None, **options)
        for c in consumers:
            n.add_consumer(c)
        await n.start()
        try:
            yield n
        finally:
            await n.stop(grace=1.0)


async def run(task: "Task[Any, R]", *args: Any, timeout: float = 30.0, retries: int | None = None,
              **kwargs: Any) -> R:
    """Run one job of ``task`` on a throw-away node and return its result (``JobFailed`` otherwise).
    ``retries`` overrides the task's for this run (0: the first failure ends it)."""
    queues = None
    if retries is not None:
        queues = [QueueConfig(name="main", retries=retries, retry_delay=0.0)]
    async with node(consumers=[task], queues=queues) as n:
        if retries is not None:
            n.pool.index.find(task.topic).retries = None  # type: ignore[union-attr]  # the queue's, set above
        handle = await task.send_with_options(args=args, kwargs=kwargs, producer=n)
        try:
            return await handle.result(timeout=timeout)
        finally:
            if retries is not None:
                n.pool.index.find(task.topic).retries = task.retries  # type: ignore[union-attr]


try:  # the pytest fixture, when pytest and pytest-asyncio are there (``pytest_plugins = ["jobmesh.testing"]``)
    import pytest_asyncio as _pytest_asyncio
except ImportError:  # pragma: no cover - jobmesh without its test extra
    pass
else:
    @_pytest_asyncio.fixture
    async def jobmesh_node(tmp_path: Path) -> AsyncIterator[Node]:
        """A started node on ``tmp_path`` with no sockets; ``task.send()`` goes to it."""
        async with node(tmp_path) as n:
            yield n
