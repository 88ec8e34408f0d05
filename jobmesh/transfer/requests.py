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
    room is pledged, the engine takes and records them, then they are offered."""

    peer: str
    queue: str
    topic: str
    count: int


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
