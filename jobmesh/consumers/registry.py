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


def _patterns(pattern: str | list[str] | tuple[str, ...], more: tuple[str, ...]) -> tuple[str, ...]:
    pats = [pattern] if isinstance(pattern, str) else list(pattern)
    pats.extend(more)
    if not pats:
        raise ValidationError("a consumer needs at least one topic pattern")
    try:
        return tuple(validate_pattern(p) for p in pats)
    except TopicError as e:
        raise ValidationError(str(e)) from None


def _takes_context(fn: Callable[..., Any]) -> bool:
    try:
        params = [
            p for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return False
    return len(params) >= 2


def consumer(pattern: str | list[str], *more: str, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark ``fn(job)`` or ``fn(job, ctx)`` (async, or sync: run in a thread pool) as a consumer."""
    patterns = _patterns(pattern, more)

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(fn):
            raise ValidationError("@jobmesh.consumer decorates a function")
        setattr(fn, MARK, ConsumerSpec(
            name=name or getattr(fn, "__qualname__", repr(fn)),
            patterns=patterns,
            fn=fn,
            takes_context=_takes_context(fn),
            is_async=inspect.iscoroutinefunction(fn),
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


def spec_of(obj: Any) -> ConsumerSpec:
    """A ConsumerSpec for a decorated function, a ConsumerActor subclass or instance."""
    if isinstance(obj, ConsumerSpec):
        return obj
    if inspect.isclass(obj) and issubclass(obj, ConsumerActor):
        obj = obj()
    if isinstance(obj, ConsumerActor):
        if not obj.topics:
            raise ValidationError(f"{type(obj).__name__}: set `topics` to the topic patterns it consumes")
        if not inspect.iscoroutinefunction(obj.process):
            raise ValidationError(f"{type(obj).__name__}.process must be `async def`")
        return ConsumerSpec(
            name=obj.name, patterns=_patterns(list(obj.topics), ()), actor=obj,
            takes_context=True, is_async=True,
        )
    spec = getattr(obj, MARK, None)
    if isinstance(spec, ConsumerSpec):
        return spec
    raise ValidationError(
        f"{obj!r} is not a consumer: decorate it with @jobmesh.consumer(pattern) or subclass ConsumerActor"
    )


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
