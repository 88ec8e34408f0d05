"""jobmesh: a distributed job runtime for asyncio (Sling job handling, discovery and offloading).

The public names below are plain imports, so editors and type checkers see them (the package
ships ``py.typed``). Neither aiohttp nor ZeroMQ is imported here: the HTTP client imports
aiohttp when it first sends, a node imports ZeroMQ when it binds.
"""

from __future__ import annotations

from .client import Client, JobHandle, SyncClient, SyncJobHandle
from .config import NodeConfig, QueueConfig
from .consumers.context import ExecutionContext
from .consumers.registry import ConsumerActor, consumer
from .errors import (
    Conflict,
    JobFailed,
    JobmeshError,
    NodeUnreachable,
    NotFound,
    TimeLimitExceeded,
    ValidationError,
)
from .job import Job, JobResult, JobState
from .node import Node
from .tasks import PropertiesMismatch, Task, current_context, task

__version__ = "0.1.0"  # setup.cfg reads it from here (attr:), so the two never disagree

__all__ = [
    "Client",
    "Conflict",
    "ConsumerActor",
    "ExecutionContext",
    "Job",
    "JobFailed",
    "JobHandle",
    "JobResult",
    "JobState",
    "JobmeshError",
    "Node",
    "NodeConfig",
    "NodeUnreachable",
    "NotFound",
    "PropertiesMismatch",
    "QueueConfig",
    "SyncClient",
    "SyncJobHandle",
    "Task",
    "TimeLimitExceeded",
    "ValidationError",
    "__version__",
    "consumer",
    "current_context",
    "task",
]
