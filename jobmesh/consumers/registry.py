"""Declaring consumers: ``@jobmesh.consumer(pattern)`` functions and ``ConsumerActor`` classes.

The decorator only marks the function (it stays callable as before); a node
registers it with ``node.add_consumer(fn)`` or by importing its module with
``--consumers MODULE`` (``consumers_in_module``). ``ConsumerIndex`` answers, for a
topic, which consumer takes it (the most specific pattern wins).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import Any, Callable, ClassVar

from ..actor import Actor
from ..errors import ValidationError
from ..topics import TopicError, specificity, matches, validate_pattern

MARK = "__jobmesh_consumer__"


@dataclass
class ConsumerSpec:
    """A registered consumer, however it was declared."""

    name: str
    patterns: tuple[str, ...]
    fn: Callable[..., Any] | None = None
    takes_context: bool = False
    is_async: bool = True
    actor: "ConsumerActor | None" = None
    semaphore: asyncio.Semaphore | None = None  # a ConsumerActor's concurrency bound
    origin: Any = None  # what was declared (the function, class or instance): the same one twice is one consumer
    # Options of a task (``@jobmesh.task``) or a consumer declared with them; None = the queue decides.
    timeout: float | None = None  # time limit of a run in seconds (a job's own timeout beats it)
    throws: tuple[type[BaseException], ...] = ()  # exceptions that end the job ERROR, with no retry
    retries: int | None = None  # the job's max_retries (read where the job is added)
    retry_delay: float | None = None  # seconds before a failed run is retried
    priority: int = 0  # default priority of its jobs within their queue
    queue: str | None = None  # the queue its jobs go to (must be configured where they are added)


def _patterns(pattern: str | list[str] | tuple[str, ...], more: tuple[str, ...]) -> tuple[str, ...]:
    pats = [pattern] if isinstance(pattern, str) else list(pattern)
    pats.extend(more)
    if not pats:
        raise ValidationError("a consumer needs at least one topic pattern")
    try:
        return tuple(validate_pattern(p) for p in pats)
    except TopicError as e:
        raise ValidationError(str(e)) from None


def _where(fn: Any) -> str:
    code = getattr(fn, "__code__", None)
    if code is None:
        return ""
    return f" ({code.co_filename.rsplit('/', 1)[-1]}:{code.co_firstlineno})"


def _takes_context(fn: Callable[..., Any], what: str | None = None, skip_self: bool = False) -> bool:
    """Whether ``fn`` takes ``(job, ctx)`` rather than ``(job)``. A signature that can take
    neither is a ValidationError now, at declaration, rather than a TypeError on every attempt."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False  # no signature to read (a builtin, a C callable): trust it
    params = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_context = len(params) >= 2
    try:
        sig.bind(*((object(), object()) if takes_context else (object(),)))
    except TypeError as e:
        name = what or getattr(fn, "__qualname__", repr(fn))
        short = name.rsplit(".", 1)[-1]
        kw = "async def" if inspect.iscoroutinefunction(fn) else "def"
        raise ValidationError(
            f"consumer {name}{_where(fn)} cannot take a job: its signature is {short}{sig} ({e}); "
            f"write `{kw} {short}(job)` or `{kw} {short}(job, ctx)`") from None
    return takes_context


def check_options(timeout: float | None = None, throws: Any = (), retries: int | None = None,
                  retry_delay: float | None = None, priority: int = 0, queue: str | None = None,
                  what: str = "consumer") -> tuple[float | None, tuple[type[BaseException], ...]]:
    """The options of ``@consumer``/``@task`` checked at declaration; (timeout, throws) normalized."""
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValidationError(f"{what}: timeout must be a number of seconds above 0, got {timeout!r}")
        timeout = float(timeout)
    if isinstance(throws, type):
        throws = (throws,)
    throws = tuple(throws or ())
    for t in throws:
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            raise ValidationError(f"{what}: throws takes exception classes, got {t!r}")
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int) or retries < -1):
        raise ValidationError(f"{what}: retries must be -1 (forever) or a whole number >= 0, got {retries!r}")
    if retry_delay is not None and (isinstance(retry_delay, bool) or not isinstance(retry_delay, (int, float))
                                    or retry_delay < 0):
        raise ValidationError(f"{what}: retry_delay must be a number of seconds >= 0, got {retry_delay!r}")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValidationError(f"{what}: priority must be a whole number, got {priority!r}")
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise ValidationError(f"{what}: queue must be a queue's name, got {queue!r}")
    return timeout, throws


def consumer(pattern: str | list[str], *more: str, name: str | None = None, timeout: float | None = None,
             throws: Any = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark ``fn(job)`` or ``fn(job, ctx)`` (async, or sync: run in a thread pool) as a consumer.
    ``timeout``: the time limit of a run in seconds; ``throws``: exception types that end the job
    ``ERROR`` instead of a retry."""
    patterns = _patterns(pattern, more)
    timeout, throws = check_options(timeout, throws)

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(fn):
            raise ValidationError("@jobmesh.consumer decorates a function")
        setattr(fn, MARK, ConsumerSpec(
            name=name or getattr(fn, "__qualname__", repr(fn)),
            patterns=patterns,
            fn=fn,
            takes_context=_takes_context(fn),
            is_async=inspect.iscoroutinefunction(fn),
            origin=fn,
            timeout=timeout,
            throws=throws,
        ))
        return fn

    return mark


class ConsumerActor(Actor):
    """A consumer with its own state: set ``topics`` and implement ``async process(job, ctx)``.

    It is an actor: the node starts it (``on_start``), stops it (``on_stop``) and
    supervises it, and by default it processes one job at a time, so its state needs
    no locks. Raise ``max_concurrency`` if ``process`` is safe to run concurrently.
    """

    topics: ClassVar[list[str]] = []
    max_concurrency: ClassVar[int] = 1

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name or f"consumer:{type(self).__name__}")

    async def process(self, job: Any, ctx: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.process is not implemented")

    async def receive(self, msg: Any) -> Any:
        raise ValidationError(f"{self.name}: consumers take jobs through process(), not messages")


def _check_actor_class(cls: type) -> tuple[str, ...]:
    """A ConsumerActor class's patterns, once its ``topics`` and ``process(job, ctx)`` are checked."""
    if not cls.topics:
        raise ValidationError(f"{cls.__name__}: set `topics` to the topic patterns it consumes")
    if not inspect.iscoroutinefunction(cls.process):
        raise ValidationError(f"{cls.__name__}.process must be `async def process(self, job, ctx)`")
    try:
        inspect.signature(cls.process).bind(object(), object(), object())
    except TypeError:
        raise ValidationError(f"{cls.__name__}.process{_where(cls.process)} cannot take a job: "
                              f"write `async def process(self, job, ctx)`") from None
    except ValueError:
        pass
    return _patterns(list(cls.topics), ())


def spec_of(obj: Any) -> ConsumerSpec:
    """A ConsumerSpec for a decorated function, a ConsumerActor subclass or instance."""
    if isinstance(obj, ConsumerSpec):
        return obj
    origin = obj
    if inspect.isclass(obj) and issubclass(obj, ConsumerActor):
        _check_actor_class(obj)  # before making one: a bad class is refused without side effects
        obj = obj()
    if isinstance(obj, ConsumerActor):
        patterns = _check_actor_class(type(obj))
        if list(obj.topics) != list(type(obj).topics):  # topics set on the instance
            patterns = _patterns(list(obj.topics), ())
        return ConsumerSpec(
            name=obj.name, patterns=patterns, actor=obj,
            takes_context=True, is_async=True, origin=origin,
        )
    spec = getattr(obj, MARK, None)
    if isinstance(spec, ConsumerSpec):
        return spec
    raise ValidationError(
        f"{obj!r} is not a consumer: decorate it with @jobmesh.consumer(pattern) or subclass ConsumerActor"
    )


def declared_spec(obj: Any) -> ConsumerSpec:
    """Like ``spec_of`` but a ConsumerActor class is not instantiated (checks before a node exists)."""
    if inspect.isclass(obj) and issubclass(obj, ConsumerActor):
        return ConsumerSpec(name=obj.__qualname__, patterns=_check_actor_class(obj), origin=obj)
    return spec_of(obj)


def check_new_consumer(spec: ConsumerSpec, existing: Any) -> ConsumerSpec | None:
    """May ``spec`` join ``existing`` specs? None: yes. A spec: that one is this very consumer
    (the same function, class or instance added twice: nothing to do). ValidationError: another
    consumer declared one of its patterns already, so which one runs would be an accident."""
    existing = list(existing)
    for other in existing:
        if other is spec or (spec.origin is not None and other.origin is spec.origin):
            return other
    for other in existing:
        same = sorted(set(spec.patterns) & set(other.patterns))
        if same:
            raise ValidationError(
                f"topic {same[0]!r} has two consumers, {other.name} and {spec.name}: keep one (or give "
                f"them different topics; a more specific pattern such as 'a/b' beside 'a/*' is fine)")
    return None


def consumers_in_module(module: ModuleType | str) -> list[Any]:
    """Every ``@consumer`` function and ``ConsumerActor`` subclass *defined* in ``module``."""
    if isinstance(module, str):
        module = importlib.import_module(module)
    found: list[Any] = []
    for value in vars(module).values():
        if inspect.isclass(value):
            if (issubclass(value, ConsumerActor) and value is not ConsumerActor
                    and value.__module__ == module.__name__ and value.topics):
                found.append(value)
        elif isinstance(getattr(value, MARK, None), ConsumerSpec) and getattr(value, "__module__", None) == module.__name__:
            found.append(value)
    return found


class ConsumerIndex:
    """Topic -> consumer, pure. The most specific pattern wins; the first registered breaks ties."""

    def __init__(self) -> None:
        self.specs: list[ConsumerSpec] = []
        self._find = lru_cache(maxsize=65536)(self._lookup)

    def add(self, spec: ConsumerSpec) -> None:
        self.specs.append(spec)
        self._find.cache_clear()

    def _lookup(self, topic: str) -> ConsumerSpec | None:
        best: ConsumerSpec | None = None
        best_key: tuple[int, int] | None = None
        for spec in self.specs:
            for p in spec.patterns:
                if matches(p, topic):
                    key = specificity(p)
                    if best_key is None or key > best_key:
                        best, best_key = spec, key
        return best

    def find(self, topic: str) -> ConsumerSpec | None:
        return self._find(topic)

    def has_consumer(self, topic: str) -> bool:
        return self._find(topic) is not None

    def patterns(self) -> list[str]:
        seen: dict[str, None] = {}
        for s in self.specs:
            for p in s.patterns:
                seen[p] = None
        return list(seen)
