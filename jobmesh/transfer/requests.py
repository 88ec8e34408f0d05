"""The transfer actor's mailbox: what the offloader sends it (``RoomsRequested`` (ask),
``PlanMove``, ``SendSteal``) and the messages it sends itself. The engine's messages for it
are in ``engine.instructions`` (``TO_TRANSFER``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .messages import Message


@dataclass(slots=True)
class RoomsRequested:
    """(ask) Room per live peer: jobs each may still be handed, less what is pledged."""


@dataclass(slots=True)
class PlanMove:
    """The offloader decided to move ``count`` jobs of ``topic`` (queue ``queue``) to ``peer``: the
    room is pledged, the engine takes and records them, then they are offered. ``ids``: the
    jobs it placed there (payload), else the newest ones; ``keep``: ids not to take."""

    peer: str
    queue: str
    topic: str
    count: int
    ids: tuple[str, ...] = ()
    keep: frozenset[str] = frozenset()


@dataclass(slots=True)
class SendSteal:
    """A message decided elsewhere (the offloader's steal request) for ``peer``."""

    peer: str
    message: Message


@dataclass(slots=True)
class WireArrived:
    pass


@dataclass(slots=True)
class TimerDue:
    pass


@dataclass(slots=True)
class TopologyChanged:
    view: Any


@dataclass(slots=True)
class AbsentCheck:
    pass


@dataclass(slots=True)
class SubmitRequested:
    peer: str
    request_id: str
    topic: str
    properties: dict[str, Any]


@dataclass(slots=True)
class SubmitAdded:
    peer: str
    request_id: str
    job_id: str | None
    error: str | None


@dataclass(slots=True)
class HandoffNotDelivered:
    """The payload of a handoff to ``peer`` could not be delivered: ``ack`` refuses its jobs (they
    come home), as if the target had (``blobs.transfer.PayloadSender``)."""

    peer: str
    ack: Any  # transfer.messages.HandoffAck


@dataclass(slots=True)
class ResultAgain:
    """A result from ``peer`` held back for its output payload: the outputs are here now, so the
    protocol takes it again (and the engine commits it)."""

    peer: str
    item: Any  # transfer.messages.ResultItem
