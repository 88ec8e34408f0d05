"""The blob actor's mailbox: what other parts ask of it (``PushRequested``, ``FetchRequested``,
sent by ``BlobActor.ensure`` / ``fetch``) and what its own file work and timers report back.
One dataclass per kind, one handler each (``blobs.actor._MAILBOX``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class PushRequested:
    """Offer these blobs ((id, size) pairs) to ``peer``; ``ensure``'s waiters learn the outcome."""

    peer: str
    items: list[tuple[str, int]]


@dataclass(slots=True)
class FetchRequested:
    """Bring these blobs ((id, size) pairs) from ``peer``; ``fetch``'s waiters learn the outcome."""

    peer: str
    items: list[tuple[str, int]]


@dataclass(slots=True)
class PartialOpened:
    """A fetch's partial file is open; ``offset``: what it holds already (a transfer resumes there)."""

    blob_id: str
    offset: int


@dataclass(slots=True)
class WriteFailed:
    blob_id: str
    error: str


@dataclass(slots=True)
class BlobFinished:
    """A fetched blob's file is verified and in place (``ok``), or not (``error`` says why)."""

    blob_id: str
    ok: bool
    error: str | None


@dataclass(slots=True)
class TimerDue:
    """The protocol's resend timer."""


@dataclass(slots=True)
class TopologyChanged:
    view: Any


@dataclass(slots=True)
class GcDue:
    """Time for a garbage collection of unreferenced blobs."""
