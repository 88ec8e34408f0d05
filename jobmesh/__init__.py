"""jobmesh: a distributed job runtime for asyncio (Sling job handling, discovery and offloading)."""

from __future__ import annotations

from .config import NodeConfig, QueueConfig
from .errors import Conflict, JobmeshError, NotFound, ValidationError
from .job import Job, JobResult, JobState

__all__ = [
    "Conflict",
    "ConsumerActor",
    "ExecutionContext",
    "Job",
    "JobResult",
    "JobState",
    "JobmeshError",
    "Node",
    "NodeConfig",
    "NotFound",
    "QueueConfig",
    "ValidationError",
    "consumer",
]


def __getattr__(name: str):  # lazy: importing jobmesh stays cheap, and parts land one by one
    if name == "Node":
        from .node import Node

        return Node
    if name in ("consumer", "ConsumerActor"):
        from .consumers import registry

        return getattr(registry, name)
    if name == "ExecutionContext":
        from .consumers.context import ExecutionContext

        return ExecutionContext
    raise AttributeError(f"module 'jobmesh' has no attribute {name!r}")
