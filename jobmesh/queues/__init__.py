"""Queues: the pure ordering/retry core and one actor per configured queue."""

from .core import Outcome, QueueMatcher, decide, make_window, retry_delay_for

__all__ = ["Outcome", "QueueMatcher", "decide", "make_window", "retry_delay_for"]
