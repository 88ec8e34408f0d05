"""Tasks (``@jobmesh.task``): a consumer whose parameters are the job's properties.

What a Celery, Dramatiq or arq user reaches for first::

    @jobmesh.task("mail/send", retries=3, timeout=30, throws=(ValueError,))
    async def send_mail(to: str, subject: str, body: str = "") -> dict:
        ...
        return {"message_id": "m-1"}        # the job's result

    handle = await send_mail.send("a@b.c", "hi")     # the default producer (below)
    print(await handle.result(timeout=30))

A task is a consumer: ``node.add_consumer(send_mail)`` or ``--consumers MODULE`` registers
it. Sending binds the arguments to the function's signature *in the producer* (a wrong
call is a ``TypeError`` there, not a retry loop at a consumer) and stores them as
properties by parameter name; the consumer binds the properties back to the parameters.
The return value (JSON-compatible) is the job's ``result``, read with ``handle.result()``.

Calling the task (``await send_mail("a@b.c", "hi")``) runs the function itself, here and
now, with no node: that is how a task is unit-tested in isolation (``jobmesh.testing``
has the rest).

The default producer of ``send``: the ``Node`` running in this process (the one started
last, when there are several), else a ``Client`` for ``$JOBMESH_URL``.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
import os
import weakref
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Generic, ParamSpec, TypeVar, overload

from .consumers.registry import MARK, ConsumerSpec, check_options
from .errors import ValidationError
from .topics import TopicError, validate_topic

if TYPE_CHECKING:
    from .client import JobHandle
    from .consumers.context import ExecutionContext
    from .node import Node

P = ParamSpec("P")
R = TypeVar("R")

RESERVED_PREFIX = "jobmesh:"  # runtime properties (workflow steps, local pinning): never arguments

_context: contextvars.ContextVar["ExecutionContext | None"] = contextvars.ContextVar("jobmesh_task_ctx",
                                                                                       default=None)


def current_context() -> "ExecutionContext":
    """The ``ExecutionContext`` of the task running now (progress, log, ``is_stopped()``).
    RuntimeError outside a task's run (in a unit test that calls the task directly, say)."""
    ctx = _context.get()
    if ctx is None:
        raise RuntimeError("jobmesh.current_context() is only available while a task runs on a node")
    return ctx


class PropertiesMismatch(TypeError):
    """A job's properties do not fit its task's parameters (a job added by hand, or a task whose
    signature changed). Ends the job ERROR: running it again would fail the same way."""


class Task(Generic[P, R]):
    """A function declared with ``@jobmesh.task``; see the module docstring."""

    def __init__(self, fn: Callable[..., Any], topic: str, *, retries: int | None = None,
                 retry_delay: float | None = None, timeout: float | None = None,
                 throws: Any = (), priority: int = 0, queue: str | None = None,
                 name: str | None = None) -> None:
        if not callable(fn):
            raise ValidationError("@jobmesh.task decorates a function")
        try:
            self.topic = validate_topic(topic)
        except TopicError as e:
            raise ValidationError(f"@jobmesh.task({topic!r}): {e} (a task's topic is one topic, not a pattern)") from None
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]
        self.fn = fn
        self.name: str = name or str(getattr(fn, "__qualname__", repr(fn)))
        what = f"task {self.name}"
        self.timeout, self.throws = check_options(timeout, throws, retries, retry_delay, priority, queue, what)
        self.retries = retries
        self.retry_delay = float(retry_delay) if retry_delay is not None else None
        self.priority = priority
        self.queue = queue
        self.signature = inspect.signature(fn)
        self.call_text = self.name.rsplit(".", 1)[-1] + str(self.signature.replace(
            parameters=[p.replace(annotation=p.empty) for p in self.signature.parameters.values()],
            return_annotation=inspect.Signature.empty))  # send_mail(to, subject, body='', *, cc=None)
        self.is_async = inspect.iscoroutinefunction(fn)
        self._var_kw = any(p.kind is p.VAR_KEYWORD for p in self.signature.parameters.values())
        setattr(self, MARK, ConsumerSpec(
            name=self.name, patterns=(self.topic,), fn=self._run_async if self.is_async else self._run_sync,
            takes_context=True, is_async=self.is_async, origin=self, timeout=self.timeout,
            throws=(*self.throws, PropertiesMismatch), retries=retries, retry_delay=self.retry_delay,
            priority=priority, queue=queue,
        ))

    def __repr__(self) -> str:
        return f"<jobmesh.Task {self.name} topic={self.topic!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run the function itself, here and now (no job, no node): a unit test's way in."""
        return self.fn(*args, **kwargs)

    # -- producing -------------------------------------------------------------
    def properties(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The job properties of a call: arguments bound to the signature, by parameter name
        (defaults not filled in: the consumer applies them). TypeError when the call does not fit
        the signature or an argument is not JSON-compatible."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.call_text}: {e}") from None
        props: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            param = self.signature.parameters[name]
            if param.kind is param.VAR_KEYWORD:
                props.update(value)
            elif param.kind is param.VAR_POSITIONAL:
                props[name] = list(value)
            else:
                props[name] = value
        try:
            json.dumps(props, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{self.name}: its arguments become job properties and must be JSON-compatible "
                            f"(str, int, float, bool, None, lists and dicts of them): {e}") from None
        return props

    async def send(self, *args: P.args, **kwargs: P.kwargs) -> "JobHandle[R]":
        """Add a job for this task through the default producer; its handle."""
        return await self.send_with_options(args=args, kwargs=kwargs)

    async def send_with_options(self, *, args: tuple[Any, ...] | list[Any] = (), kwargs: dict[str, Any] | None = None,
                                delay: float | None = None, at: Any = None, key: str | None = None,
                                timeout: float | None = None, priority: int | None = None,
                                payload: dict[str, Any] | None = None, producer: Any = None) -> "JobHandle[R]":
        """``send`` with the job's options (``delay``/``at``, ``key``, ``timeout``, ``priority``,
        ``payload``: ``{name: Path | bytes | blob id}``, read in the task with
        ``current_context().payload(name)``); ``producer`` (a Node, Client or SyncClient's async
        twin) instead of the default one."""
        props = self.properties(*args, **(kwargs or {}))
        p = producer if producer is not None else default_producer()
        from .client import as_producer
        opts: dict[str, Any] = {} if payload is None else {"payload": payload}
        return await as_producer(p).add(self.topic, props, delay=delay, at=at, key=key, timeout=timeout,
                                        priority=priority if priority is not None else (self.priority or None),
                                        **opts)

    # -- consuming -------------------------------------------------------------
    def call_args(self, properties: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """The job's properties as the function's arguments; PropertiesMismatch when they do not fit.
        Properties that name no parameter are left out (``schedule_id`` of a scheduled job, ...),
        unless the function takes ``**kwargs``; ``jobmesh:`` ones always are."""
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        used: set[str] = set()
        for name, param in self.signature.parameters.items():
            if param.kind is param.VAR_KEYWORD:
                continue
            if name not in properties:
                continue
            used.add(name)
            value = properties[name]
            if param.kind is param.POSITIONAL_ONLY:
                args.append(value)
            elif param.kind is param.VAR_POSITIONAL:
                if not isinstance(value, list):
                    raise PropertiesMismatch(f"{self.name}: property {name!r} must be a list (*{name})")
                args.extend(value)
            else:
                kwargs[name] = value
        if self._var_kw:
            for k, v in properties.items():
                if k not in used and not k.startswith(RESERVED_PREFIX):
                    kwargs[k] = v
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise PropertiesMismatch(f"the job's properties do not fit {self.call_text}: {e} "
                                     f"(properties: {', '.join(sorted(properties)) or 'none'})") from None
        return args, kwargs

    async def _run_async(self, job: Any, ctx: Any) -> Any:
        args, kwargs = self.call_args(job.properties)
        token = _context.set(ctx)
        try:
            return await self.fn(*args, **kwargs)
        finally:
            _context.reset(token)

    def _run_sync(self, job: Any, ctx: Any) -> Any:
        args, kwargs = self.call_args(job.properties)
        token = _context.set(ctx)
        try:
            return self.fn(*args, **kwargs)
        finally:
            _context.reset(token)


class _TaskDecorator:
    """What ``@jobmesh.task(...)`` returns: the decorator (typed for async and sync functions)."""

    def __init__(self, topic: str, options: dict[str, Any]) -> None:
        self.topic = topic
        self.options = options

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Task[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Task[P, R]: ...

    def __call__(self, fn: Callable[P, Any]) -> Task[P, Any]:
        return Task(fn, self.topic, **self.options)


def task(topic: str, *, retries: int | None = None, retry_delay: float | None = None, timeout: float | None = None,
         throws: Any = (), priority: int = 0, queue: str | None = None, name: str | None = None) -> _TaskDecorator:
    """Declare a task: ``@jobmesh.task("mail/send", retries=3, timeout=30, throws=(ValueError,))``.

    ``retries``: how often a failed run is retried (default: the queue's); ``retry_delay``: seconds
    before a retry; ``timeout``: the time limit of a run in seconds (a job's own ``timeout`` beats
    it, it beats the queue's); ``throws``: exception types that end the job ``ERROR`` with no retry;
    ``priority``: default priority of its jobs; ``queue``: the queue its jobs go to (configured on
    the node that records them), instead of the one that matches the topic.
    """
    check_options(timeout, throws, retries, retry_delay, priority, queue, f"@jobmesh.task({topic!r})")
    return _TaskDecorator(topic, dict(retries=retries, retry_delay=retry_delay, timeout=timeout, throws=throws,
                                      priority=priority, queue=queue, name=name))


# -- the default producer ------------------------------------------------------------

# this process's running nodes, the last started last. Weak: a node dropped without stop() (the
# simulator's kill -9) must not be kept alive by this list, nor be found here later.
_running_nodes: list["weakref.ref[Node]"] = []


def node_started(node: "Node") -> None:
    node_stopped(node)
    _running_nodes.append(weakref.ref(node))


def node_stopped(node: "Node") -> None:
    _running_nodes[:] = [r for r in _running_nodes if r() is not None and r() is not node]


def running_nodes() -> list["Node"]:
    """The nodes started in this process and not stopped yet, the last started last."""
    return [n for n in (r() for r in _running_nodes) if n is not None and n.running]


def default_producer() -> Any:
    """The Node running in this process (the last started), else a Client for ``$JOBMESH_URL``."""
    for node in reversed(running_nodes()):
        if node.jobs.accepting:
            return node
    url = os.environ.get("JOBMESH_URL")
    if not url:
        raise RuntimeError("nowhere to send the job: no jobmesh Node runs in this process and JOBMESH_URL is not "
                           "set. Start a Node here, set JOBMESH_URL to a node's HTTP address, or use "
                           "jobmesh.Client(url).enqueue(task, ...)")
    from .client import Client
    return Client(url, os.environ.get("JOBMESH_TOKEN"), _per_call=True)


__all__ = ["PropertiesMismatch", "Task", "current_context", "default_producer", "task"]
