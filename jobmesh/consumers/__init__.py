"""Consumers: declaration (registry), the execution context, and the pool that runs them."""

from .context import ExecutionContext, ResultBuilder
from .registry import ConsumerActor, ConsumerIndex, ConsumerSpec, consumer, consumers_in_module, spec_of

__all__ = [
    "ConsumerActor", "ConsumerIndex", "ConsumerSpec", "ExecutionContext", "ResultBuilder",
    "consumer", "consumers_in_module", "spec_of",
]
