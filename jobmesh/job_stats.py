"""``Stats``, Sling's job statistics for one scope (overall, a queue or a topic): counters and
running averages that the job manager keeps from the engine's messages and the HTTP API shows
(``GET /api/v1/stats``, a queue's ``statistics``). Apart from ``jobmesh/manager.py`` so that the
statistics can change without touching the manager's API.
"""

from __future__ import annotations

from typing import Any

from .job import iso


class Stats:
    """Sling's statistics for one scope (overall, a queue, a topic)."""

    __slots__ = ("start_time", "last_activated", "last_finished", "queued", "active", "finished",
                 "failed", "cancelled", "waiting_total", "waiting_n", "processing_total", "processing_n")

    def __init__(self, start_time: float) -> None:
        self.start_time = start_time
        self.last_activated: float | None = None
        self.last_finished: float | None = None
        self.queued = self.active = self.finished = self.failed = self.cancelled = 0
        self.waiting_total = self.processing_total = 0.0
        self.waiting_n = self.processing_n = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "start_time": iso(self.start_time),
            "last_activated": iso(self.last_activated),
            "last_finished": iso(self.last_finished),
            "queued": self.queued,
            "active": self.active,
            "finished": self.finished,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "processed": self.finished + self.cancelled,
            "average_waiting_time": round(self.waiting_total / self.waiting_n, 3) if self.waiting_n else 0.0,
            "average_processing_time": round(self.processing_total / self.processing_n, 3) if self.processing_n else 0.0,
        }
