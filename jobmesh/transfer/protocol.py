"""The job-handoff protocol between an origin and a target, as a pure state machine.

No sockets, no asyncio, no SQLite: messages and timer ticks go in, plain
instruction objects come out, and the transfer actor is a thin loop that carries
them out (in the spirit of h11, and of dask's ``worker_state_machine``: every
transition is checked, and anything unexpected becomes a ``Log`` instruction,
never an exception that would take the node down).

Who owns what (DESIGN §3): the origin owns a job's record until it is final. It
hands a copy to a target (``HANDOFF``); the target commits the copy and only then
acknowledges (``HANDOFF_ACK``); it runs the job, keeps the final result in a
durable outbox and sends it (``RESULT``) until the origin has committed it and
acknowledged (``RESULT_ACK``); only then does the target forget its copy.

Idempotency is by (job id, attempt): a resent handoff is re-acknowledged without a
second commit, a resent result is acknowledged without a second commit, and a
result of an attempt the origin no longer waits for is acknowledged (so the
target's outbox drains) but never committed.

Each node plays both roles, so ``TransferProtocol`` holds both sides and one
``receive`` entry point; the sides are also usable on their own.
"""

from __future__ import annotations

import enum
from .. import clock as _clock
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Sequence

from ..errors import ValidationError
from ..job import ResultKind
from ..plants import PLANTS

__all__ = [
    "MESSAGE_TYPES",
    "CommitAccepted",
    "CommitResult",
    "CommitSubmitted",
    "ForgetJob",
    "Handoff",
    "HandoffAck",
    "AckItem",
    "Instruction",
    "JobRef",
    "Message",
    "JobSpec",
    "Log",
    "MarkAccepted",
    "MarkStarted",
    "OriginProtocol",
    "OriginJobState",
    "Progress",
    "ProtocolConfig",
    "ProtocolError",
    "Reconcile",
    "ReconcileReply",
    "ReconcileRequest",
    "ReleaseCopies",
    "Repaired",
    "RequeueLocal",
    "Result",
    "ResultAck",
    "ResultItem",
    "ScheduleTimer",
    "Send",
    "StealRequest",
    "StealRequested",
    "Started",
    "Stop",
    "StopAck",
    "StopLocal",
    "Submit",
    "SubmitAck",
    "SubmitDone",
    "TargetJobState",
    "TargetProtocol",
    "TransferProtocol",
    "UpdateProgress",
    "VerifyQueued",
    "decode_message",
]


class ProtocolError(ValidationError):
    """A transfer message body that does not have the expected shape."""


# --------------------------------------------------------------------------- field checks


def _req(body: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(body, dict):
        raise ProtocolError(f"{what}: body must be a map")
    if key not in body:
        raise ProtocolError(f"{what}: missing field {key!r}")
    return _check(body[key], key, kind, what)


def _check(value: Any, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:  # True is an int to Python, not to us
        raise ProtocolError(f"{what}: field {key!r} has the wrong type")
    if not isinstance(value, kinds):
        raise ProtocolError(f"{what}: field {key!r} has the wrong type")
    return value


def _opt(body: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = body.get(key)
    return None if value is None else _check(value, key, kind, what)


def _nonempty_str(body: dict[str, Any], key: str, what: str) -> str:
    value = _req(body, key, str, what)
    if not value:
        raise ProtocolError(f"{what}: field {key!r} must not be empty")
    return value


def _attempt(body: dict[str, Any], what: str) -> int:
    value = _req(body, "attempt", int, what)
    if value < 0:
        raise ProtocolError(f"{what}: attempt must be >= 0")
    return value


def _positive(value: Any, key: str, what: str) -> float | None:
    if value is None:
        return None
    if not value > 0:
        raise ProtocolError(f"{what}: {key} must be > 0")
    return float(value)


def _items(body: dict[str, Any], what: str, limit: int = 100_000) -> list[Any]:
    items = _req(body, "items", list, what)
    if len(items) > limit:
        raise ProtocolError(f"{what}: more than {limit} items")
    return items


def _str_list(body: dict[str, Any], key: str, what: str) -> list[str]:
    value = body.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"{what}: field {key!r} must be a list of strings")
    return value


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class JobSpec:
    """The part of a job a target needs to run it; the origin keeps the record."""

    id: str
    attempt: int
    topic: str
    properties: dict[str, Any]
    queue: str = "main"
    retry_count: int = 0
    max_retries: int = 10
    origin: str = ""
    created: float = 0.0
    timeout: float | None = None  # the job's own time limit (s): the target enforces it
    priority: int = 0  # the job's priority within its queue at the target
    # job payload: {name: {"id": "sha256:...", "size": n}}; the blobs reach the target before
    # the handoff that names them (the transfer actor pushes them first). Absent when None.
    payload: dict[str, Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        body = {
            "id": self.id,
            "attempt": self.attempt,
            "topic": self.topic,
            "properties": self.properties,
            "queue": self.queue,
            "retry_count": self.retry_count,
            "max_retries": self.max_retries,
            "origin": self.origin,
            "created": self.created,
        }
        if self.payload:
            body["payload"] = self.payload
        if self.timeout is not None:  # absent unless set: handoffs without options stay as they were
            body["timeout"] = self.timeout
        if self.priority:
            body["priority"] = self.priority
        return body

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "JobSpec":
        # A handoff carries hundreds of these: a well-formed body (the usual case) is checked
        # in one pass with exact types (bool is not an int here either); anything else takes
        # the field-by-field path, which says what is wrong.
        if type(body) is dict:
            try:
                i, a, t, p = body["id"], body["attempt"], body["topic"], body["properties"]
                q, rc, mr, o = body["queue"], body["retry_count"], body["max_retries"], body["origin"]
            except KeyError:
                pass
            else:
                c = body.get("created")
                to, pr = body.get("timeout"), body.get("priority", 0)
                if (type(i) is str and i and type(a) is int and a >= 0 and type(t) is str and t
                        and type(p) is dict and type(q) is str and type(rc) is int and type(mr) is int
                        and type(o) is str and (c is None or type(c) is float or type(c) is int)
                        and (to is None or ((type(to) is float or type(to) is int) and to > 0))
                        and type(pr) is int):
                    pl = body.get("payload")
                    return cls(i, a, t, p, q, rc, mr, o, float(c or 0.0), None if to is None else float(to), pr,
                               None if pl is None else payload_from_wire(pl, "job"))
        return cls._from_wire_checked(body)

    @classmethod
    def _from_wire_checked(cls, body: dict[str, Any]) -> "JobSpec":
        what = "job"
        return cls(
            id=_nonempty_str(body, "id", what),
            attempt=_attempt(body, what),
            topic=_nonempty_str(body, "topic", what),
            properties=_req(body, "properties", dict, what),
            queue=_req(body, "queue", str, what),
            retry_count=_req(body, "retry_count", int, what),
            max_retries=_req(body, "max_retries", int, what),
            origin=_req(body, "origin", str, what),
            created=float(_opt(body, "created", (int, float), what) or 0.0),
            timeout=_positive(_opt(body, "timeout", (int, float), what), "timeout", what),
            priority=_opt(body, "priority", int, what) or 0,
            payload=None if body.get("payload") is None else payload_from_wire(body["payload"], what),
        )


def payload_from_wire(value: Any, what: str) -> dict[str, Any]:
    """``{name: {"id", "size"}}`` checked (names and ids as the blob store takes them)."""
    from ..blobs.store import check_id, check_name

    if not isinstance(value, dict) or len(value) > 256:
        raise ProtocolError(f"{what}: payload must be a map of at most 256 names")
    out: dict[str, Any] = {}
    try:
        for name, ref in value.items():
            check_name(name)
            if not isinstance(ref, dict):
                raise ProtocolError(f"{what}: payload {name!r} must be {{id, size}}")
            size = ref.get("size")
            if type(size) is not int or size < 0:
                raise ProtocolError(f"{what}: payload {name!r} size must be a whole number >= 0")
            out[name] = {"id": check_id(ref.get("id")), "size": size}
    except ValidationError as e:
        if isinstance(e, ProtocolError):
            raise
        raise ProtocolError(f"{what}: {e}") from None
    return out


@dataclass(frozen=True)
class AckItem:
    """One job of a handoff: accepted (the target committed it) or refused, with why."""

    id: str
    attempt: int
    accepted: bool
    reason: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "attempt": self.attempt, "accepted": self.accepted, "reason": self.reason}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "AckItem":
        what = "handoff_ack item"
        return cls(
            id=_nonempty_str(body, "id", what),
            attempt=_attempt(body, what),
            accepted=_req(body, "accepted", bool, what),
            reason=_opt(body, "reason", str, what),
        )


@dataclass(frozen=True)
class ResultItem:
    """A job's final outcome at the target: kind, message, retry delay, timings, log lines."""

    id: str
    attempt: int
    kind: ResultKind
    message: str | None = None
    retry_delay: float | None = None
    started: float | None = None
    finished: float | None = None
    log: tuple[str, ...] = ()
    result: Any = None  # OK only: the consumer's return value (any JSON; an object is a workflow step's output)
    # OK only: output payload {name: {"id", "size"}}; the blobs reach the origin before this result
    output_payload: dict[str, Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        body = {
            "id": self.id,
            "attempt": self.attempt,
            "kind": self.kind.value,
            "message": self.message,
            "retry_delay": self.retry_delay,
            "started": self.started,
            "finished": self.finished,
            "log": list(self.log),
        }
        if self.result is not None:  # absent when there is none: bodies without one stay as they were
            body["result"] = self.result
        if self.output_payload:
            body["output_payload"] = self.output_payload
        return body

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "ResultItem":
        what = "result item"
        kind_text = _req(body, "kind", str, what)
        try:
            kind = ResultKind(kind_text)
        except ValueError:
            raise ProtocolError(f"{what}: unknown result kind {kind_text!r}") from None
        delay = _opt(body, "retry_delay", (int, float), what)
        if delay is not None and delay < 0:
            raise ProtocolError(f"{what}: retry_delay must be >= 0")
        started = _opt(body, "started", (int, float), what)
        finished = _opt(body, "finished", (int, float), what)
        return cls(
            id=_nonempty_str(body, "id", what),
            attempt=_attempt(body, what),
            kind=kind,
            message=_opt(body, "message", str, what),
            retry_delay=None if delay is None else float(delay),
            started=None if started is None else float(started),
            finished=None if finished is None else float(finished),
            log=tuple(_str_list(body, "log", what)),
            # "output" (an object) is how peers and outbox rows before issue 12 carried a step's output
            result=body["result"] if body.get("result") is not None else _opt(body, "output", dict, what),
            output_payload=None if body.get("output_payload") is None
            else payload_from_wire(body["output_payload"], what),
        )


@dataclass(frozen=True)
class JobRef:
    """(job id, attempt): the idempotency key of every transfer message."""

    id: str
    attempt: int

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "attempt": self.attempt}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "JobRef":
        return cls(id=_nonempty_str(body, "id", "job ref"), attempt=_attempt(body, "job ref"))


class Message:
    """Base of the transfer messages: ``TYPE`` is the wire type frame, ``to_wire`` the body."""

    TYPE: ClassVar[str] = ""

    def to_wire(self) -> dict[str, Any]:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "Message":  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class Handoff(Message):
    """origin -> target: take these jobs (the offer; a refusal comes back in the ack)."""

    TYPE: ClassVar[str] = "handoff"
    items: tuple[JobSpec, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"items": [j.to_wire() for j in self.items]}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "Handoff":
        return cls(tuple(JobSpec.from_wire(i) for i in _items(body, "handoff")))


@dataclass(frozen=True)
class HandoffAck(Message):
    """target -> origin: per job, committed (accepted) or refused with a reason."""

    TYPE: ClassVar[str] = "handoff_ack"
    items: tuple[AckItem, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"items": [i.to_wire() for i in self.items]}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "HandoffAck":
        return cls(tuple(AckItem.from_wire(i) for i in _items(body, "handoff_ack")))


@dataclass(frozen=True)
class Started(Message):
    """target -> origin: the job's consumer started (best effort; the result repeats it)."""

    TYPE: ClassVar[str] = "started"
    id: str
    attempt: int
    at: float

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "attempt": self.attempt, "at": self.at}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "Started":
        what = "started"
        return cls(_nonempty_str(body, "id", what), _attempt(body, what),
                   float(_req(body, "at", (int, float), what)))


@dataclass(frozen=True)
class Progress(Message):
    """target -> origin: progress and new log lines (best effort; no ack)."""

    TYPE: ClassVar[str] = "progress"
    id: str
    attempt: int
    steps: int | None = None
    step: int | None = None
    eta: float | None = None
    log: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "attempt": self.attempt, "steps": self.steps, "step": self.step,
                "eta": self.eta, "log": list(self.log)}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "Progress":
        what = "progress"
        eta = _opt(body, "eta", (int, float), what)
        return cls(
            id=_nonempty_str(body, "id", what),
            attempt=_attempt(body, what),
            steps=_opt(body, "steps", int, what),
            step=_opt(body, "step", int, what),
            eta=None if eta is None else float(eta),
            log=tuple(_str_list(body, "log", what)),
        )


@dataclass(frozen=True)
class Result(Message):
    """target -> origin: final outcomes, resent until acknowledged."""

    TYPE: ClassVar[str] = "result"
    items: tuple[ResultItem, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"items": [i.to_wire() for i in self.items]}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "Result":
        return cls(tuple(ResultItem.from_wire(i) for i in _items(body, "result")))


@dataclass(frozen=True)
class ResultAck(Message):
    """origin -> target: these results are committed (or not wanted): forget them."""

    TYPE: ClassVar[str] = "result_ack"
    items: tuple[JobRef, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"items": [i.to_wire() for i in self.items]}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "ResultAck":
        return cls(tuple(JobRef.from_wire(i) for i in _items(body, "result_ack")))


@dataclass(frozen=True)
class Stop(Message):
    """origin -> target: stop this attempt (resent until STOP_ACK or its result)."""

    TYPE: ClassVar[str] = "stop"
    id: str
    attempt: int

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "attempt": self.attempt}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "Stop":
        return cls(_nonempty_str(body, "id", "stop"), _attempt(body, "stop"))


@dataclass(frozen=True)
class StopAck(Message):
    """target -> origin: the stop reached the target (``known``: it had the job)."""

    TYPE: ClassVar[str] = "stop_ack"
    id: str
    attempt: int
    known: bool = True

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "attempt": self.attempt, "known": self.known}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "StopAck":
        what = "stop_ack"
        return cls(_nonempty_str(body, "id", what), _attempt(body, what), _req(body, "known", bool, what))


@dataclass(frozen=True)
class Submit(Message):
    """any node -> a node: add this new job there (the receiver becomes its origin)."""

    TYPE: ClassVar[str] = "submit"
    request_id: str
    topic: str
    properties: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "topic": self.topic, "properties": self.properties}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "Submit":
        what = "submit"
        return cls(_nonempty_str(body, "request_id", what), _nonempty_str(body, "topic", what),
                   _req(body, "properties", dict, what))


@dataclass(frozen=True)
class SubmitAck(Message):
    """reply to SUBMIT: the committed job's id, or an error (e.g. a bad topic)."""

    TYPE: ClassVar[str] = "submit_ack"
    request_id: str
    job_id: str | None = None
    error: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "job_id": self.job_id, "error": self.error}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "SubmitAck":
        what = "submit_ack"
        ack = cls(_nonempty_str(body, "request_id", what), _opt(body, "job_id", str, what),
                  _opt(body, "error", str, what))
        if (ack.job_id is None) == (ack.error is None):
            raise ProtocolError(f"{what}: exactly one of job_id and error must be set")
        return ack


@dataclass(frozen=True)
class StealRequest(Message):
    """idle node -> busy node: send me up to ``count`` queued jobs of these topics.

    A hint, not a transfer of responsibility: the busy node answers with a normal
    HANDOFF (or nothing), decided by its own rebalancing policy.
    """

    TYPE: ClassVar[str] = "steal_request"
    count: int
    topics: tuple[str, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"count": self.count, "topics": list(self.topics)}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "StealRequest":
        what = "steal_request"
        count = _req(body, "count", int, what)
        if count < 1:
            raise ProtocolError(f"{what}: count must be >= 1")
        return cls(count, tuple(_str_list(body, "topics", what)))


def _refs(body: dict[str, Any], key: str, what: str, limit: int = 100_000) -> tuple[JobRef, ...]:
    """A compact list of [id, attempt] pairs (digests carry thousands of them)."""
    items = _req(body, key, list, what)
    if len(items) > limit:
        raise ProtocolError(f"{what}: more than {limit} items")
    out = []
    for it in items:
        if (not isinstance(it, list) or len(it) != 2 or not isinstance(it[0], str) or not it[0]
                or type(it[1]) is not int or it[1] < 0):
            raise ProtocolError(f"{what}: {key} must be [job id, attempt] pairs")
        out.append(JobRef(it[0], it[1]))
    return tuple(out)


@dataclass(frozen=True)
class Reconcile(Message):
    """origin -> target: one batch of a round of the (job id, attempt) pairs the origin believes
    the target holds (DESIGN §3: level-triggered repair). The target answers each batch with what
    it lacks; after the ``last`` batch it drops the copies of this origin that no batch listed."""

    TYPE: ClassVar[str] = "reconcile"
    round: int
    items: tuple[JobRef, ...]
    first: bool = True
    last: bool = True

    def to_wire(self) -> dict[str, Any]:
        return {"round": self.round, "items": [[r.id, r.attempt] for r in self.items],
                "first": self.first, "last": self.last}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "Reconcile":
        what = "reconcile"
        return cls(_req(body, "round", int, what), _refs(body, "items", what),
                   _req(body, "first", bool, what), _req(body, "last", bool, what))


@dataclass(frozen=True)
class ReconcileReply(Message):
    """target -> origin: of one reconcile batch, the pairs the target does not hold."""

    TYPE: ClassVar[str] = "reconcile_reply"
    round: int
    missing: tuple[JobRef, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"round": self.round, "missing": [[r.id, r.attempt] for r in self.missing]}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "ReconcileReply":
        what = "reconcile_reply"
        return cls(_req(body, "round", int, what), _refs(body, "missing", what))


@dataclass(frozen=True)
class ReconcileRequest(Message):
    """target -> origin: send me a round now (I hold copies of yours: restored ones wait for it)."""

    TYPE: ClassVar[str] = "reconcile_request"

    def to_wire(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "ReconcileRequest":
        return cls()


MESSAGE_TYPES: dict[str, type[Message]] = {
    m.TYPE: m
    for m in (Handoff, HandoffAck, Started, Progress, Result, ResultAck, Stop, StopAck, Submit,
              SubmitAck, StealRequest, Reconcile, ReconcileReply, ReconcileRequest)
}


def decode_message(msg_type: str, body: Any) -> Message:
    """A transfer message from its wire type and msgpack body; ``ProtocolError`` if malformed."""
    cls = MESSAGE_TYPES.get(msg_type)
    if cls is None:
        raise ProtocolError(f"unknown transfer message type {msg_type!r}")
    if not isinstance(body, dict):
        raise ProtocolError(f"{msg_type}: body must be a map")
    return cls.from_wire(body)


try:  # make the wire codec accept our types (wire.py belongs to the transport work)
    from .. import wire as _wire

    for _t in MESSAGE_TYPES:
        _wire.register_type(_t)
except ImportError:  # pragma: no cover - the codec is optional for the pure core
    pass


# --------------------------------------------------------------------------- instructions


@dataclass(frozen=True)
class Send:
    """Send ``message`` to ``peer`` (node name)."""

    peer: str
    message: Message


@dataclass(frozen=True)
class CommitAccepted:
    """Target: commit copies of these jobs, then call ``TargetProtocol.committed``."""

    origin: str
    jobs: tuple[JobSpec, ...]


@dataclass(frozen=True)
class MarkAccepted:
    """Origin: the target committed these attempts; record ``target`` on the jobs."""

    peer: str
    jobs: tuple[JobRef, ...]


@dataclass(frozen=True)
class MarkStarted:
    """Origin: the job is ACTIVE at ``peer`` since ``at``."""

    peer: str
    id: str
    attempt: int
    at: float


@dataclass(frozen=True)
class UpdateProgress:
    """Origin: new progress / log lines of a job running at ``peer``."""

    peer: str
    progress: Progress


@dataclass(frozen=True)
class CommitResult:
    """Origin: commit this outcome on the job record, then call ``result_committed``."""

    peer: str
    result: ResultItem


@dataclass(frozen=True)
class RequeueLocal:
    """Origin: these attempts are no longer in flight anywhere; the jobs are QUEUED here
    again and the next start or handoff must use a higher attempt number."""

    jobs: tuple[JobRef, ...]
    reason: str
    peer: str | None = None


@dataclass(frozen=True)
class ForgetJob:
    """Target: the origin has the result; delete the copy and its outbox entry."""

    id: str
    attempt: int
    reason: str = "acknowledged"
    held: bool = False  # a restored copy that never entered a queue (nobody else counts it going)


@dataclass(frozen=True)
class StopLocal:
    """Target: stop the local run of this attempt (origin asked, or a newer attempt came)."""

    id: str
    attempt: int
    reason: str


@dataclass(frozen=True)
class CommitSubmitted:
    """Receiver of SUBMIT: add the job locally, then call ``submit_committed``/``submit_failed``."""

    peer: str
    request_id: str
    topic: str
    properties: dict[str, Any]


@dataclass(frozen=True)
class SubmitDone:
    """Sender of SUBMIT: the remote node answered (job id) or the request failed (error)."""

    peer: str
    request_id: str
    job_id: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class StealRequested:
    """Origin: ``peer`` has room for ``count`` jobs of ``topics``; ask the offloader."""

    peer: str
    count: int
    topics: tuple[str, ...]


@dataclass(frozen=True)
class ReleaseCopies:
    """Target: these restored copies are confirmed by their origin: they may run now."""

    origin: str
    jobs: tuple[JobRef, ...]


@dataclass(frozen=True)
class VerifyQueued:
    """Target: these copies should be queued or running here; make sure their queue has them
    (a copy in neither is a missed transition: put it back, and count the repair)."""

    jobs: tuple[tuple[str, str], ...]  # (job id, topic)


@dataclass(frozen=True)
class Repaired:
    """A reconcile round found a belief that did not match the facts and fixed it (a metric)."""

    kind: str
    count: int


@dataclass(frozen=True)
class Log:
    """Something worth a log line (stale result, duplicate, refusal...)."""

    level: str
    event: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScheduleTimer:
    """Call ``on_timer`` no later than ``at`` (clock seconds). The actor keeps the earliest
    pending wake-up; an early or extra call of ``on_timer`` is harmless."""

    at: float


Instruction = (Send | CommitAccepted | MarkAccepted | MarkStarted | UpdateProgress | CommitResult
               | RequeueLocal | ForgetJob | StopLocal | CommitSubmitted | SubmitDone
               | StealRequested | ReleaseCopies | VerifyQueued | Repaired | Log | ScheduleTimer)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ProtocolConfig:
    """Timers and bounds. Resends back off exponentially from ``resend_initial`` to
    ``resend_max``; ``max_in_flight_per_peer`` caps the jobs handed to one peer and
    not yet resulted (backpressure); ``max_batch`` caps the jobs in one message."""

    resend_initial: float = 1.0
    resend_factor: float = 2.0
    resend_max: float = 15.0
    max_in_flight_per_peer: int = 10_000
    max_batch: int = 256
    submit_timeout: float = 30.0
    submit_cache: int = 10_000  # answered SUBMIT request ids remembered for duplicates
    retired_cache: int = 100_000  # last attempts of finished jobs, to tell stale from unknown
    reconcile_interval: float = 5.0  # s between reconcile rounds with a peer we share jobs with
    reconcile_batch: int = 1024  # (job id, attempt) pairs per reconcile message
    held_retry: float = 1.0  # s between requests for a round while restored copies wait for one

    def __post_init__(self) -> None:
        if self.resend_initial <= 0 or self.resend_factor < 1 or self.resend_max < self.resend_initial:
            raise ValueError("need 0 < resend_initial <= resend_max and resend_factor >= 1")
        if self.max_in_flight_per_peer < 1 or self.max_batch < 1:
            raise ValueError("max_in_flight_per_peer and max_batch must be >= 1")
        if self.submit_timeout <= 0:
            raise ValueError("submit_timeout must be > 0")
        if self.reconcile_interval <= 0 or self.reconcile_batch < 1 or self.held_retry <= 0:
            raise ValueError("reconcile_interval and held_retry must be > 0, reconcile_batch >= 1")


class _Backoff:
    """Resend schedule of one item: first after ``initial``, then ×factor up to ``max``."""

    __slots__ = ("delay", "due")

    def __init__(self, now: float, cfg: ProtocolConfig) -> None:
        self.delay = cfg.resend_initial
        self.due = now + self.delay

    def fire(self, now: float, cfg: ProtocolConfig) -> None:
        self.delay = min(self.delay * cfg.resend_factor, cfg.resend_max)
        self.due = now + self.delay

    def reset(self, now: float, cfg: ProtocolConfig) -> None:
        self.delay = cfg.resend_initial
        self.due = now + self.delay


def _chunks(seq: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


class _Timers:
    """Tracks the earliest deadline announced so a ``ScheduleTimer`` is only emitted when
    the next wake-up moves earlier (or after a tick)."""

    def __init__(self) -> None:
        self.announced: float | None = None

    def maybe(self, deadline: float | None, out: list[Any]) -> None:
        if deadline is None:
            return
        if self.announced is None or deadline < self.announced:
            self.announced = deadline
            out.append(ScheduleTimer(deadline))

    def fired(self) -> None:
        self.announced = None


# --------------------------------------------------------------------------- origin side


class OriginJobState(str, enum.Enum):
    OFFERED = "offered"  # HANDOFF sent, no ack yet: resent with backoff
    ACCEPTED = "accepted"  # target committed its copy
    RUNNING = "running"  # target reported the start
    RESULT_RECEIVED = "result_received"  # CommitResult issued, waiting for the local commit


@dataclass
class _OutJob:
    spec: JobSpec
    peer: str
    state: OriginJobState
    resend: _Backoff | None
    stop: _Backoff | None = None  # set while a STOP is unacknowledged


@dataclass
class _PendingSubmit:
    peer: str
    message: Submit
    resend: _Backoff
    deadline: float


class OriginProtocol:
    """The origin's side: jobs handed off and not yet final, remote submissions sent.

    A job is in flight at exactly one peer under exactly one attempt; anything that
    does not match (peer, attempt) is stale and only logged.
    """

    def __init__(self, node: str, clock: Callable[[], float] = _clock.monotonic,
                 config: ProtocolConfig | None = None) -> None:
        self.node = node
        self.clock = clock
        self.cfg = config or ProtocolConfig()
        self._jobs: dict[str, _OutJob] = {}
        self._per_peer: dict[str, set[str]] = {}
        self._down: set[str] = set()
        self._submits: dict[str, _PendingSubmit] = {}
        self._retired: OrderedDict[str, int] = OrderedDict()  # job id -> last attempt let go
        self._timers = _Timers()
        self._round = 0
        self._reconcile_due: dict[str, float] = {}  # peer -> next periodic round (while jobs are there)
        self.rounds = 0  # reconcile rounds started (metrics)

    # -- queries
    def in_flight(self, peer: str | None = None) -> int:
        if peer is None:
            return len(self._jobs)
        return len(self._per_peer.get(peer, ()))

    def room(self, peer: str) -> int:
        """How many more jobs ``peer`` may be handed now (0 while it is down)."""
        if peer in self._down:
            return 0
        return max(0, self.cfg.max_in_flight_per_peer - self.in_flight(peer))

    def job_state(self, job_id: str) -> tuple[str, int, OriginJobState] | None:
        """(peer, attempt, state) of a job in flight, else None."""
        j = self._jobs.get(job_id)
        return None if j is None else (j.peer, j.spec.attempt, j.state)

    def jobs_at(self, peer: str) -> list[JobRef]:
        return [JobRef(i, self._jobs[i].spec.attempt) for i in sorted(self._per_peer.get(peer, ()))]

    def next_deadline(self) -> float | None:
        dues = [j.resend.due for j in self._jobs.values() if j.resend is not None]
        dues += [j.stop.due for j in self._jobs.values() if j.stop is not None]
        dues += [min(s.resend.due, s.deadline) for s in self._submits.values()]
        dues += [self._reconcile_due.get(p, 0.0) for p in self._per_peer if p not in self._down]
        return min(dues) if dues else None

    # -- reconciliation (DESIGN §3: what we believe a target holds, checked against what it has)
    def reconcile(self, peer: str) -> list[Any]:
        """Start a round with ``peer``: every job in flight there, in batches (an empty round
        too: it tells the target that nothing of ours should be there)."""
        if peer in self._down or peer == self.node:
            return []
        self._round += 1
        self.rounds += 1
        self._reconcile_due[peer] = self.clock() + self.cfg.reconcile_interval
        batches = list(_chunks(self.jobs_at(peer), self.cfg.reconcile_batch)) or [[]]
        last = len(batches) - 1
        return [Send(peer, Reconcile(self._round, tuple(b), first=i == 0, last=i == last))
                for i, b in enumerate(batches)]

    def _on_reconcile_reply(self, peer: str, msg: "ReconcileReply") -> list[Any]:
        refs: list[JobRef] = []
        for ref in msg.missing:
            job = self._match(peer, ref.id, ref.attempt)
            # offered: the handoff's resend covers it; result received: being committed here
            if job is None or job.state not in (OriginJobState.ACCEPTED, OriginJobState.RUNNING):
                continue
            self._release(job)
            refs.append(ref)
        if not refs:
            return []
        return [RequeueLocal(tuple(refs), "the target does not hold it (reconcile)", peer),
                Repaired("handoff_lost", len(refs)),
                Log("warning", "repaired: jobs the target does not hold come back",
                    {"peer": peer, "count": len(refs), "job_ids": [r.id for r in refs[:10]]})]

    # -- commands from the actor
    def offer(self, peer: str, jobs: Sequence[JobSpec]) -> list[Any]:
        """Hand ``jobs`` to ``peer``. Jobs beyond the peer's room, to a peer that is down,
        or already in flight under another attempt come back as ``RequeueLocal``/``Log``."""
        if peer == self.node:
            raise ValidationError("a node cannot offload a job to itself")
        now = self.clock()
        out: list[Any] = []
        sending: list[JobSpec] = []
        deferred: list[JobRef] = []
        stale: list[JobRef] = []
        refused: list[JobRef] = []
        room = self.room(peer)
        for spec in jobs:
            existing = self._jobs.get(spec.id)
            if existing is not None:
                if existing.peer == peer and existing.spec.attempt == spec.attempt:
                    continue  # already offered: the resend timer covers it
                out.append(Log("warning", "offer_refused_in_flight",
                               {"job_id": spec.id, "attempt": spec.attempt, "peer": peer,
                                "in_flight_at": existing.peer, "in_flight_attempt": existing.spec.attempt}))
                refused.append(JobRef(spec.id, spec.attempt))  # its record must not say it went
                continue
            last = self._retired.get(spec.id)
            if last is not None and spec.attempt <= last:
                # the old attempt's copy or result may still be out there: never reuse its number
                stale.append(JobRef(spec.id, spec.attempt))
                continue
            if len(sending) >= room:
                deferred.append(JobRef(spec.id, spec.attempt))
                continue
            job = _OutJob(spec, peer, OriginJobState.OFFERED, _Backoff(now, self.cfg))
            if peer not in self._per_peer:
                self._reconcile_due[peer] = now + self.cfg.reconcile_interval
            self._jobs[spec.id] = job
            self._per_peer.setdefault(peer, set()).add(spec.id)
            sending.append(spec)
        for chunk in _chunks(sending, self.cfg.max_batch):
            out.append(Send(peer, Handoff(tuple(chunk))))
        if deferred:
            reason = "peer down" if peer in self._down else "backpressure"
            out.append(RequeueLocal(tuple(deferred), reason, peer))
        if refused:
            out.append(RequeueLocal(tuple(refused), "another attempt is still in flight", peer))
        if stale:
            out.append(RequeueLocal(tuple(stale), "attempt already used: offer with a higher attempt", peer))
            out.append(Log("error", "offer_with_used_attempt", {"peer": peer, "jobs": [r.id for r in stale]}))
        if sending:
            # the jobs in flight before were covered by the timer announced then: only the new
            # deadline matters (no scan of every job in flight per offer)
            self._timers.maybe(now + self.cfg.resend_initial, out)
        return out

    def stop(self, job_id: str) -> list[Any]:
        """Ask the target to stop the job; resent until STOP_ACK or the result."""
        job = self._jobs.get(job_id)
        if job is None or job.state is OriginJobState.RESULT_RECEIVED:
            return []
        now = self.clock()
        out: list[Any] = []
        if job.stop is None:
            job.stop = _Backoff(now, self.cfg)
        if job.state is not OriginJobState.OFFERED and job.peer not in self._down:
            out.append(Send(job.peer, Stop(job.spec.id, job.spec.attempt)))
        self._timers.maybe(self.next_deadline(), out)
        return out

    def withdraw(self, job_id: str) -> list[Any]:
        """The origin ended the job before it started at the target (a stop or remove recorded at
        home): let the attempt go now and ask the target to drop its copy. A copy it runs anyway
        ends as a stale result, and the next reconcile round drops what is left; keeping the
        attempt in flight instead would block the job's next attempt after a manual retry."""
        job = self._jobs.get(job_id)
        if job is None or job.state is OriginJobState.RESULT_RECEIVED:
            return []
        self._release(job)
        if job.peer in self._down:
            return []
        return [Send(job.peer, Stop(job.spec.id, job.spec.attempt))]

    def submit(self, peer: str, request_id: str, topic: str, properties: dict[str, Any]) -> list[Any]:
        """Add a job on ``peer``; ``SubmitDone`` reports the outcome (or a timeout)."""
        if request_id in self._submits:
            return []
        now = self.clock()
        msg = Submit(request_id, topic, properties)
        if peer in self._down:
            return [SubmitDone(peer, request_id, error=f"node {peer} is not in the topology")]
        self._submits[request_id] = _PendingSubmit(peer, msg, _Backoff(now, self.cfg),
                                                   now + self.cfg.submit_timeout)
        out: list[Any] = [Send(peer, msg)]
        self._timers.maybe(self.next_deadline(), out)
        return out

    def result_committed(self, refs: Iterable[JobRef | tuple[str, int]]) -> list[Any]:
        """The actor committed these results: acknowledge them and let the jobs go."""
        by_peer: dict[str, list[JobRef]] = {}
        out: list[Any] = []
        for ref in refs:
            ref = ref if isinstance(ref, JobRef) else JobRef(*ref)
            job = self._jobs.get(ref.id)
            if job is None or job.spec.attempt != ref.attempt or job.state is not OriginJobState.RESULT_RECEIVED:
                out.append(Log("warning", "result_committed_unknown", {"job_id": ref.id, "attempt": ref.attempt}))
                continue
            self._release(job)
            by_peer.setdefault(job.peer, []).append(ref)
        for peer, refs_ in by_peer.items():
            if peer in self._down:
                continue  # the target re-sends when it is back; we ack then
            for chunk in _chunks(refs_, self.cfg.max_batch):
                out.append(Send(peer, ResultAck(tuple(chunk))))
        return out

    def result_commit_failed(self, ref: JobRef | tuple[str, int], reason: str) -> list[Any]:
        """The local commit failed (e.g. disk full): wait for the target's resend."""
        ref = ref if isinstance(ref, JobRef) else JobRef(*ref)
        job = self._jobs.get(ref.id)
        if job is None or job.spec.attempt != ref.attempt or job.state is not OriginJobState.RESULT_RECEIVED:
            return []
        job.state = OriginJobState.RUNNING
        return [Log("error", "result_commit_failed", {"job_id": ref.id, "attempt": ref.attempt, "reason": reason})]

    def restore(self, peer: str, jobs: Sequence[JobSpec], accepted: bool = True) -> list[Any]:
        """After a restart: jobs the store says are handed to ``peer`` (accepted or not)."""
        now = self.clock()
        out: list[Any] = []
        unacked: list[JobSpec] = []
        for spec in jobs:
            state = OriginJobState.ACCEPTED if accepted else OriginJobState.OFFERED
            resend = None if accepted else _Backoff(now, self.cfg)
            self._jobs[spec.id] = _OutJob(spec, peer, state, resend)
            self._per_peer.setdefault(peer, set()).add(spec.id)
            if not accepted:
                unacked.append(spec)
        if peer not in self._down:
            for chunk in _chunks(unacked, self.cfg.max_batch):
                out.append(Send(peer, Handoff(tuple(chunk))))
        self._timers.maybe(self.next_deadline(), out)
        return out

    # -- topology
    def peer_down(self, peer: str) -> list[Any]:
        """Discovery declared ``peer`` failed: every job in flight there comes home."""
        self._down.add(peer)
        out: list[Any] = []
        refs: list[JobRef] = []
        for job_id in sorted(self._per_peer.get(peer, set())):
            job = self._jobs[job_id]
            if job.state is OriginJobState.RESULT_RECEIVED:
                continue  # its result is being committed; that wins
            self._release(job)
            refs.append(JobRef(job_id, job.spec.attempt))
        if refs:
            out.append(RequeueLocal(tuple(refs), "target left the topology", peer))
            out.append(Log("warning", "target_failed_requeue", {"peer": peer, "jobs": len(refs)}))
        for rid, sub in list(self._submits.items()):
            if sub.peer == peer:
                del self._submits[rid]
                out.append(SubmitDone(peer, rid, error=f"node {peer} left the topology"))
        return out

    def peer_up(self, peer: str) -> list[Any]:
        """A (re)connection: check at once what the peer still holds of ours."""
        self._down.discard(peer)
        return self.reconcile(peer) if self._per_peer.get(peer) else []

    # -- messages
    def receive(self, peer: str, msg: Message) -> list[Any]:
        if isinstance(msg, HandoffAck):
            return self._on_handoff_ack(peer, msg)
        if isinstance(msg, Started):
            return self._on_started(peer, msg)
        if isinstance(msg, Progress):
            return self._on_progress(peer, msg)
        if isinstance(msg, Result):
            return self._on_result(peer, msg)
        if isinstance(msg, StopAck):
            return self._on_stop_ack(peer, msg)
        if isinstance(msg, SubmitAck):
            return self._on_submit_ack(peer, msg)
        if isinstance(msg, StealRequest):
            return [StealRequested(peer, msg.count, msg.topics)]
        if isinstance(msg, ReconcileReply):
            return self._on_reconcile_reply(peer, msg)
        if isinstance(msg, ReconcileRequest):
            return self.reconcile(peer)
        return [Log("warning", "unexpected_message", {"peer": peer, "type": msg.TYPE, "side": "origin"})]

    def _match(self, peer: str, job_id: str, attempt: int) -> _OutJob | None:
        job = self._jobs.get(job_id)
        if job is None or job.peer != peer or job.spec.attempt != attempt:
            return None
        return job

    def _on_handoff_ack(self, peer: str, msg: HandoffAck) -> list[Any]:
        out: list[Any] = []
        accepted: list[JobRef] = []
        refused: dict[str, list[JobRef]] = {}
        stops: list[_OutJob] = []
        for item in msg.items:
            job = self._match(peer, item.id, item.attempt)
            if job is None:
                out.append(Log("info", "stale_handoff_ack", {"peer": peer, "job_id": item.id,
                                                             "attempt": item.attempt, "accepted": item.accepted}))
                if item.accepted:
                    # the target holds a copy we no longer want: ask it to stop that attempt
                    out.append(Send(peer, Stop(item.id, item.attempt)))
                continue
            if job.state is not OriginJobState.OFFERED:
                continue  # duplicate ack
            if item.accepted:
                job.state = OriginJobState.ACCEPTED
                job.resend = None
                accepted.append(JobRef(item.id, item.attempt))
                if job.stop is not None:
                    stops.append(job)
            else:
                self._release(job)
                refused.setdefault(item.reason or "refused", []).append(JobRef(item.id, item.attempt))
        if accepted:
            out.insert(0, MarkAccepted(peer, tuple(accepted)))
        for job in stops:
            out.append(Send(peer, Stop(job.spec.id, job.spec.attempt)))
        for reason, refs in refused.items():
            out.append(RequeueLocal(tuple(refs), f"refused by {peer}: {reason}", peer))
        return out

    def _on_started(self, peer: str, msg: Started) -> list[Any]:
        job = self._match(peer, msg.id, msg.attempt)
        if job is None or job.state is OriginJobState.RESULT_RECEIVED:
            return [Log("debug", "stale_started", {"peer": peer, "job_id": msg.id, "attempt": msg.attempt})]
        if job.state is OriginJobState.RUNNING:
            return []
        out: list[Any] = []
        if job.state is OriginJobState.OFFERED:  # the ack was lost but the start proves the commit
            job.resend = None
            out.append(MarkAccepted(peer, (JobRef(msg.id, msg.attempt),)))
        job.state = OriginJobState.RUNNING
        out.append(MarkStarted(peer, msg.id, msg.attempt, msg.at))
        return out

    def _on_progress(self, peer: str, msg: Progress) -> list[Any]:
        job = self._match(peer, msg.id, msg.attempt)
        if job is None or job.state is OriginJobState.RESULT_RECEIVED:
            return [Log("debug", "stale_progress", {"peer": peer, "job_id": msg.id, "attempt": msg.attempt})]
        return [UpdateProgress(peer, msg)]

    def _on_result(self, peer: str, msg: Result) -> list[Any]:
        out: list[Any] = []
        unwanted: list[JobRef] = []
        stale_log: Log | None = None
        for item in msg.items:
            job = self._match(peer, item.id, item.attempt)
            if job is None:
                unwanted.append(JobRef(item.id, item.attempt))
                if stale_log is not None:  # one line per message, not per job (resends come in batches)
                    stale_log.fields["count"] += 1
                    if len(stale_log.fields["job_ids"]) < 10:
                        stale_log.fields["job_ids"].append(item.id)
                    continue
                current = self._jobs.get(item.id)
                stale_log = Log("warning", "stale_result_ignored", {
                    "peer": peer, "job_id": item.id, "attempt": item.attempt, "kind": item.kind.value,
                    "current_attempt": current.spec.attempt if current else self._retired.get(item.id),
                    "current_peer": current.peer if current else None, "count": 1, "job_ids": [item.id],
                })
                out.append(stale_log)
                continue
            if job.state is OriginJobState.RESULT_RECEIVED:
                continue  # duplicate while committing; acked once the commit is done
            job.state = OriginJobState.RESULT_RECEIVED
            job.resend = None
            job.stop = None
            out.append(CommitResult(peer, item))
        if unwanted:
            # acknowledged so the target's outbox drains; never committed
            out.append(Send(peer, ResultAck(tuple(unwanted))))
        return out

    def _on_stop_ack(self, peer: str, msg: StopAck) -> list[Any]:
        job = self._match(peer, msg.id, msg.attempt)
        if job is not None:
            job.stop = None
        if not msg.known:
            return [Log("warning", "stop_unknown_at_target", {"peer": peer, "job_id": msg.id, "attempt": msg.attempt})]
        return []

    def _on_submit_ack(self, peer: str, msg: SubmitAck) -> list[Any]:
        sub = self._submits.get(msg.request_id)
        if sub is None or sub.peer != peer:
            return [Log("debug", "stale_submit_ack", {"peer": peer, "request_id": msg.request_id})]
        del self._submits[msg.request_id]
        return [SubmitDone(peer, msg.request_id, msg.job_id, msg.error)]

    # -- timers
    def on_timer(self) -> list[Any]:
        now = self.clock()
        self._timers.fired()
        out: list[Any] = []
        resend: dict[str, list[JobSpec]] = {}
        for job in self._jobs.values():
            if job.peer in self._down:
                continue
            if job.resend is not None and job.resend.due <= now:
                job.resend.fire(now, self.cfg)
                if not PLANTS.active("no-handoff-resend"):
                    resend.setdefault(job.peer, []).append(job.spec)
            if job.stop is not None and job.stop.due <= now:
                job.stop.fire(now, self.cfg)
                if job.state is not OriginJobState.OFFERED:
                    out.append(Send(job.peer, Stop(job.spec.id, job.spec.attempt)))
        for peer, specs in resend.items():
            out.append(Log("info", "handoff_resent", {"peer": peer, "jobs": len(specs)}))
            for chunk in _chunks(specs, self.cfg.max_batch):
                out.append(Send(peer, Handoff(tuple(chunk))))
        for peer in sorted(self._per_peer):
            if peer not in self._down and self._reconcile_due.get(peer, 0.0) <= now:
                out += self.reconcile(peer)
        for peer in [p for p in self._reconcile_due if p not in self._per_peer]:
            del self._reconcile_due[peer]
        for rid, sub in list(self._submits.items()):
            if sub.deadline <= now:
                del self._submits[rid]
                out.append(SubmitDone(sub.peer, rid, error=f"no answer from {sub.peer} "
                                      f"within {self.cfg.submit_timeout:g}s"))
            elif sub.resend.due <= now:
                sub.resend.fire(now, self.cfg)
                out.append(Send(sub.peer, sub.message))
        self._timers.maybe(self.next_deadline(), out)
        return out

    # -- internals
    def _release(self, job: _OutJob) -> None:
        del self._jobs[job.spec.id]
        peer_jobs = self._per_peer.get(job.peer)
        if peer_jobs is not None:
            peer_jobs.discard(job.spec.id)
            if not peer_jobs:
                del self._per_peer[job.peer]
        self._retired[job.spec.id] = job.spec.attempt
        self._retired.move_to_end(job.spec.id)
        while len(self._retired) > self.cfg.retired_cache:
            self._retired.popitem(last=False)


# --------------------------------------------------------------------------- target side


class TargetJobState(str, enum.Enum):
    HELD = "held"  # restored after a restart: runs only once its origin confirms it still wants it
    COMMITTING = "committing"  # CommitAccepted issued, waiting for the local commit
    COMMITTED = "committed"  # acknowledged; queued or running here
    RESULT_PENDING = "result_pending"  # final here, in the outbox, RESULT sent until acked


@dataclass
class _Copy:
    spec: JobSpec
    origin: str
    state: TargetJobState
    result: ResultItem | None = None
    resend: _Backoff | None = None


Admission = Callable[[JobSpec], "str | None"]


def _accept_all(spec: JobSpec) -> str | None:
    return None


class TargetProtocol:
    """The target's side: copies of other nodes' jobs, and the durable result outbox.

    ``admission(spec)`` returns a refusal reason (no consumer, topic disabled, full)
    or None; it is a pure function of the node's settings, given by the actor.
    """

    def __init__(self, node: str, clock: Callable[[], float] = _clock.monotonic,
                 config: ProtocolConfig | None = None, admission: Admission = _accept_all) -> None:
        self.node = node
        self.clock = clock
        self.cfg = config or ProtocolConfig()
        self.admission = admission
        self._copies: dict[str, _Copy] = {}
        # the copies with a result in the outbox (resend timers): kept apart so that timers and
        # deadlines cost O(outbox), not O(copies), with thousands of copies queued here
        self._pending: dict[str, _Copy] = {}
        self._down: set[str] = set()
        self._submits: OrderedDict[tuple[str, str], SubmitAck | None] = OrderedDict()
        self._timers = _Timers()
        self._by_origin: dict[str, set[str]] = {}  # origin -> ids of its copies here
        self._held: dict[str, set[str]] = {}  # origin -> ids of restored copies waiting for its word
        self._rounds: dict[str, tuple[int, set[JobRef]]] = {}  # origin -> (round, copies not listed yet)
        # origin -> the last round answered: a batch of it or of an older one arriving again (a
        # duplicated or late message) is stale; taken as a new round, it would drop every copy
        # accepted since the origin listed its jobs (sim seed 100 with --delays 0.3). Cleared when
        # the origin goes down or comes back as a new incarnation (its rounds count from 1 again).
        self._answered: dict[str, int] = {}
        self._request_due: dict[str, float] = {}  # origin -> when to ask it for a round

    # -- the copies table (one place keeps the per-origin indexes right)
    def _add_copy(self, c: "_Copy") -> None:
        self._copies[c.spec.id] = c
        self._by_origin.setdefault(c.origin, set()).add(c.spec.id)
        if c.state is TargetJobState.HELD:
            self._held.setdefault(c.origin, set()).add(c.spec.id)

    def _del_copy(self, job_id: str) -> None:
        c = self._copies.pop(job_id, None)
        self._pending.pop(job_id, None)
        if c is None:
            return
        for index in (self._by_origin, self._held):
            ids = index.get(c.origin)
            if ids is not None:
                ids.discard(job_id)
                if not ids:
                    del index[c.origin]

    def _confirm(self, c: "_Copy") -> None:
        """Its origin still wants this restored copy: it may run."""
        c.state = TargetJobState.COMMITTED
        ids = self._held.get(c.origin)
        if ids is not None:
            ids.discard(c.spec.id)
            if not ids:
                del self._held[c.origin]

    # -- queries
    def copies(self, origin: str | None = None) -> int:
        if origin is None:
            return len(self._copies)  # asked on every capacity snapshot: keep it O(1)
        return sum(1 for c in self._copies.values() if c.origin == origin)

    def copy_state(self, job_id: str) -> tuple[str, int, TargetJobState] | None:
        c = self._copies.get(job_id)
        return None if c is None else (c.origin, c.spec.attempt, c.state)

    def outbox(self, origin: str | None = None) -> list[ResultItem]:
        return [c.result for c in self._pending.values()
                if c.result is not None and (origin is None or c.origin == origin)]

    def next_deadline(self) -> float | None:
        dues = [c.resend.due for c in self._pending.values() if c.resend is not None and c.origin not in self._down]
        dues += [self._request_due.get(o, 0.0) for o in self._by_origin if o not in self._down]
        return min(dues) if dues else None

    def held(self, origin: str | None = None) -> int:
        """Restored copies waiting for their origin's confirmation."""
        if origin is not None:
            return len(self._held.get(origin, ()))
        return sum(len(v) for v in self._held.values())

    # -- commands from the actor
    def committed(self, origin: str, refs: Iterable[JobRef | tuple[str, int]]) -> list[Any]:
        """The copies are durable: acknowledge them to the origin."""
        acks: list[AckItem] = []
        for ref in refs:
            ref = ref if isinstance(ref, JobRef) else JobRef(*ref)
            c = self._copies.get(ref.id)
            if c is None or c.spec.attempt != ref.attempt or c.origin != origin:
                continue
            if c.state is TargetJobState.COMMITTING:
                c.state = TargetJobState.COMMITTED
            acks.append(AckItem(ref.id, ref.attempt, True))
        return [Send(origin, HandoffAck(tuple(chunk))) for chunk in _chunks(acks, self.cfg.max_batch)]

    def commit_failed(self, origin: str, refs: Iterable[JobRef | tuple[str, int]], reason: str) -> list[Any]:
        """The local commit failed: refuse, so the origin runs the jobs elsewhere."""
        acks: list[AckItem] = []
        for ref in refs:
            ref = ref if isinstance(ref, JobRef) else JobRef(*ref)
            c = self._copies.get(ref.id)
            if c is None or c.spec.attempt != ref.attempt or c.state is not TargetJobState.COMMITTING:
                continue
            self._del_copy(ref.id)
            acks.append(AckItem(ref.id, ref.attempt, False, reason))
        return [Send(origin, HandoffAck(tuple(chunk))) for chunk in _chunks(acks, self.cfg.max_batch)]

    def started(self, job_id: str, attempt: int, at: float) -> list[Any]:
        c = self._copies.get(job_id)
        if c is None or c.spec.attempt != attempt or c.origin in self._down:
            return []
        return [Send(c.origin, Started(job_id, attempt, at))]

    def progress(self, progress: Progress) -> list[Any]:
        """Forward progress while the origin is reachable (best effort; the result repeats the log)."""
        c = self._copies.get(progress.id)
        if c is None or c.spec.attempt != progress.attempt or c.origin in self._down:
            return []
        return [Send(c.origin, progress)]

    def results_ready(self, results: Iterable[ResultItem]) -> list[Any]:
        """Final outcomes the actor has already written to the durable outbox: send them."""
        now = self.clock()
        by_origin: dict[str, list[ResultItem]] = {}
        out: list[Any] = []
        for r in results:
            c = self._copies.get(r.id)
            if c is None or c.spec.attempt != r.attempt:
                out.append(Log("warning", "result_for_unknown_copy", {"job_id": r.id, "attempt": r.attempt}))
                continue
            if c.state is TargetJobState.RESULT_PENDING:
                continue
            c.state = TargetJobState.RESULT_PENDING
            c.result = r
            c.resend = _Backoff(now, self.cfg)
            self._pending[r.id] = c
            if c.origin not in self._down:
                by_origin.setdefault(c.origin, []).append(r)
        for origin, items in by_origin.items():
            for chunk in _chunks(items, self.cfg.max_batch):
                out.append(Send(origin, Result(tuple(chunk))))
            if PLANTS.active("forget-before-ack"):  # planted bug: the outbox does not wait for the ack
                for r in items:
                    self._del_copy(r.id)
                    out.append(ForgetJob(r.id, r.attempt, "sent"))
        if by_origin:
            # results already pending were covered by the timer announced then: only the new
            # ones' deadline matters (no scan of the whole outbox per result)
            self._timers.maybe(now + self.cfg.resend_initial, out)
        return out

    def submit_committed(self, peer: str, request_id: str, job_id: str) -> list[Any]:
        return self._answer_submit(peer, SubmitAck(request_id, job_id=job_id))

    def submit_failed(self, peer: str, request_id: str, error: str) -> list[Any]:
        return self._answer_submit(peer, SubmitAck(request_id, error=error))

    def restore(self, origin: str, jobs: Sequence[JobSpec], outbox: Sequence[ResultItem] = ()) -> list[Any]:
        """After a restart: the copies in the store, and the results still in the outbox."""
        now = self.clock()
        out: list[Any] = []
        # a restored copy does not run until its origin says it still wants it: while we were
        # down it may have given the job to another node, or run it itself (DESIGN §3)
        state = TargetJobState.COMMITTED if PLANTS.active("run-superseded-copy") else TargetJobState.HELD
        for spec in jobs:
            self._add_copy(_Copy(spec, origin, state))
        for r in outbox:
            c = self._copies.get(r.id)
            if c is None:
                spec = JobSpec(r.id, r.attempt, topic="-", properties={}, origin=origin)
                c = _Copy(spec, origin, TargetJobState.COMMITTED)
                self._add_copy(c)
            self._confirm(c)
            c.state = TargetJobState.RESULT_PENDING
            c.result = r
            c.resend = _Backoff(now, self.cfg)
            self._pending[r.id] = c
        if outbox and origin not in self._down:
            for chunk in _chunks(list(outbox), self.cfg.max_batch):
                out.append(Send(origin, Result(tuple(chunk))))
        if origin in self._by_origin:
            self._request_due[origin] = now
        self._timers.maybe(self.next_deadline(), out)
        return out

    # -- topology
    def peer_down(self, origin: str) -> list[Any]:
        """The origin left: keep its copies and results, stop sending until it is back."""
        self._down.add(origin)
        self._answered.pop(origin, None)
        pending = len(self.outbox(origin))
        if pending:
            return [Log("info", "origin_unreachable_outbox_kept", {"peer": origin, "results": pending})]
        return []

    def peer_up(self, origin: str) -> list[Any]:
        """The origin is back (or rejoined): flush its outbox now, backoff reset."""
        was_down = origin in self._down
        self._down.discard(origin)
        now = self.clock()
        pending = [c for c in self._pending.values() if c.origin == origin and c.result is not None]
        out: list[Any] = []
        if origin in self._by_origin:
            # a (re)connection: ask the origin what it wants of the copies we hold
            out.append(Send(origin, ReconcileRequest()))
            self._request_due[origin] = now + self._request_period(origin)
            self._timers.maybe(self._request_due[origin], out)
        if not pending:
            return out
        for c in pending:
            assert c.resend is not None
            c.resend.reset(now, self.cfg)
        items = [c.result for c in pending if c.result is not None]
        for chunk in _chunks(items, self.cfg.max_batch):
            out.append(Send(origin, Result(tuple(chunk))))
        out.append(Log("info", "outbox_flushed", {"peer": origin, "results": len(items), "rejoined": was_down}))
        self._timers.maybe(self.next_deadline(), out)
        return out

    # -- messages
    def receive(self, peer: str, msg: Message) -> list[Any]:
        # any message from an origin we thought gone is proof of life: flush its outbox first
        out = self.peer_up(peer) if peer in self._down else []
        if isinstance(msg, Handoff):
            return out + self._on_handoff(peer, msg)
        if isinstance(msg, ResultAck):
            return out + self._on_result_ack(peer, msg)
        if isinstance(msg, Stop):
            return out + self._on_stop(peer, msg)
        if isinstance(msg, Submit):
            return out + self._on_submit(peer, msg)
        if isinstance(msg, Reconcile):
            return out + self._on_reconcile(peer, msg)
        return out + [Log("warning", "unexpected_message", {"peer": peer, "type": msg.TYPE, "side": "target"})]

    def _on_reconcile(self, peer: str, msg: Reconcile) -> list[Any]:
        """Compare the origin's belief with the copies here, one batch at a time; repair both
        ways: what we lack goes back in the reply (the origin re-queues it), what we hold and the
        origin did not list by the round's last batch is dropped, what it confirms may run."""
        answered = self._answered.get(peer)
        if answered is not None and msg.round <= answered:
            return [Log("info", "stale_reconcile_ignored", {"peer": peer, "round": msg.round, "answered": answered})]
        if msg.first:
            candidates = {JobRef(i, self._copies[i].spec.attempt) for i in self._by_origin.get(peer, ())
                          if self._copies[i].state in (TargetJobState.COMMITTED, TargetJobState.HELD)}
            self._rounds[peer] = (msg.round, candidates)
        current = self._rounds.get(peer)
        listed = current[1] if current is not None and current[0] == msg.round else None
        missing: list[JobRef] = []
        released: list[JobRef] = []
        verify: list[tuple[str, str]] = []
        out: list[Any] = []
        for ref in msg.items:
            c = self._copies.get(ref.id)
            if c is not None and c.origin == peer and c.spec.attempt < ref.attempt:
                # the copy we hold was superseded and the newer one never reached us
                if c.state is not TargetJobState.HELD:
                    out.append(StopLocal(ref.id, c.spec.attempt, "superseded (reconcile)"))
                out.append(ForgetJob(ref.id, c.spec.attempt, "superseded", held=c.state is TargetJobState.HELD))
                self._del_copy(ref.id)
                c = None
            if c is None or c.origin != peer or c.spec.attempt != ref.attempt:
                missing.append(ref)
                continue
            if listed is not None:
                listed.discard(ref)
            if c.state is TargetJobState.HELD:
                self._confirm(c)
                released.append(ref)
            elif c.state is TargetJobState.COMMITTED:
                verify.append((ref.id, c.spec.topic))
        if released:
            out.append(ReleaseCopies(peer, tuple(released)))
        if verify:
            out.append(VerifyQueued(tuple(verify)))
        if msg.last:
            self._answered[peer] = msg.round
        if msg.last and listed is not None:
            del self._rounds[peer]
            unwanted = []
            for ref in sorted(listed, key=lambda r: r.id):
                c = self._copies.get(ref.id)
                if c is None or c.origin != peer or c.spec.attempt != ref.attempt:
                    continue
                if c.state not in (TargetJobState.COMMITTED, TargetJobState.HELD):
                    continue
                if c.state is TargetJobState.COMMITTED:
                    out.append(StopLocal(ref.id, ref.attempt, "its origin no longer wants it (reconcile)"))
                out.append(ForgetJob(ref.id, ref.attempt, "not wanted by its origin",
                                     held=c.state is TargetJobState.HELD))
                self._del_copy(ref.id)
                unwanted.append(ref)
            if unwanted:
                out.append(Repaired("copy_unwanted", len(unwanted)))
                out.append(Log("warning", "repaired: copies their origin no longer wants are dropped",
                               {"peer": peer, "count": len(unwanted), "job_ids": [r.id for r in unwanted[:10]]}))
        out.append(Send(peer, ReconcileReply(msg.round, tuple(missing))))
        self._request_due[peer] = self.clock() + self._request_period(peer)
        return out

    def _request_period(self, origin: str) -> float:
        """Restored copies wait for their origin's round: ask often; else only if rounds stop coming."""
        return self.cfg.held_retry if origin in self._held else 2 * self.cfg.reconcile_interval

    def _on_handoff(self, peer: str, msg: Handoff) -> list[Any]:
        out: list[Any] = []
        commit: list[JobSpec] = []
        acks: list[AckItem] = []
        released: list[JobRef] = []
        for spec in msg.items:
            c = self._copies.get(spec.id)
            if c is not None and c.origin != peer:
                acks.append(AckItem(spec.id, spec.attempt, False, f"job belongs to {c.origin}"))
                continue
            if c is not None and c.spec.attempt == spec.attempt:
                if c.state is TargetJobState.HELD:  # a resent handoff confirms a restored copy
                    self._confirm(c)
                    released.append(JobRef(spec.id, spec.attempt))
                if c.state is not TargetJobState.COMMITTING:
                    acks.append(AckItem(spec.id, spec.attempt, True))  # duplicate: re-ack, no commit
                continue
            if c is not None and c.spec.attempt > spec.attempt:
                acks.append(AckItem(spec.id, spec.attempt, False, "stale attempt"))
                continue
            if c is not None:  # a newer attempt supersedes the copy we hold
                if c.state is not TargetJobState.HELD:
                    out.append(StopLocal(spec.id, c.spec.attempt, "superseded by a newer attempt"))
                out.append(ForgetJob(spec.id, c.spec.attempt, "superseded", held=c.state is TargetJobState.HELD))
                self._del_copy(spec.id)
            reason = self.admission(spec)
            if reason is not None:
                acks.append(AckItem(spec.id, spec.attempt, False, reason))
                continue
            self._add_copy(_Copy(spec, peer, TargetJobState.COMMITTING))
            commit.append(spec)
        if released:
            out.append(ReleaseCopies(peer, tuple(released)))
        if commit:
            out.append(CommitAccepted(peer, tuple(commit)))
        for chunk in _chunks(acks, self.cfg.max_batch):
            out.append(Send(peer, HandoffAck(tuple(chunk))))
        return out

    def _on_result_ack(self, peer: str, msg: ResultAck) -> list[Any]:
        out: list[Any] = []
        for ref in msg.items:
            c = self._copies.get(ref.id)
            if c is None or c.origin != peer or c.spec.attempt != ref.attempt:
                continue  # duplicate ack
            if c.state is not TargetJobState.RESULT_PENDING:
                # the origin does not want this attempt any more (it moved on): stop it here
                out.append(StopLocal(ref.id, ref.attempt, "origin no longer wants this attempt"))
            self._del_copy(ref.id)
            out.append(ForgetJob(ref.id, ref.attempt))
        return out

    def _on_stop(self, peer: str, msg: Stop) -> list[Any]:
        c = self._copies.get(msg.id)
        if c is None or c.origin != peer or c.spec.attempt != msg.attempt:
            return [Send(peer, StopAck(msg.id, msg.attempt, known=False))]
        out: list[Any] = []
        if c.state is not TargetJobState.RESULT_PENDING:
            out.append(StopLocal(msg.id, msg.attempt, "stopped by origin"))
        out.append(Send(peer, StopAck(msg.id, msg.attempt, known=True)))
        return out

    def _on_submit(self, peer: str, msg: Submit) -> list[Any]:
        key = (peer, msg.request_id)
        if key in self._submits:
            ack = self._submits[key]
            return [] if ack is None else [Send(peer, ack)]  # in progress, or answered before
        self._submits[key] = None
        while len(self._submits) > self.cfg.submit_cache:
            self._submits.popitem(last=False)
        return [CommitSubmitted(peer, msg.request_id, msg.topic, msg.properties)]

    def _answer_submit(self, peer: str, ack: SubmitAck) -> list[Any]:
        key = (peer, ack.request_id)
        self._submits[key] = ack
        self._submits.move_to_end(key)
        while len(self._submits) > self.cfg.submit_cache:
            self._submits.popitem(last=False)
        return [Send(peer, ack)]

    # -- timers
    def on_timer(self) -> list[Any]:
        now = self.clock()
        self._timers.fired()
        by_origin: dict[str, list[ResultItem]] = {}
        for c in self._pending.values():
            if c.resend is None or c.result is None or c.origin in self._down:
                continue
            if c.resend.due <= now:
                c.resend.fire(now, self.cfg)
                by_origin.setdefault(c.origin, []).append(c.result)
        out: list[Any] = []
        for origin, items in by_origin.items():
            out.append(Log("info", "results_resent", {"peer": origin, "results": len(items)}))
            for chunk in _chunks(items, self.cfg.max_batch):
                out.append(Send(origin, Result(tuple(chunk))))
        for origin in sorted(self._by_origin):
            if origin not in self._down and self._request_due.get(origin, 0.0) <= now:
                out.append(Send(origin, ReconcileRequest()))
                self._request_due[origin] = now + self._request_period(origin)
        for origin in [o for o in self._request_due if o not in self._by_origin]:
            del self._request_due[origin]
        self._timers.maybe(self.next_deadline(), out)
        return out


# --------------------------------------------------------------------------- both sides


_TO_TARGET = (Handoff, ResultAck, Stop, Submit, Reconcile)


class TransferProtocol:
    """Both roles of one node behind one entry point, which is what the actor drives."""

    def __init__(self, node: str, clock: Callable[[], float] = _clock.monotonic,
                 config: ProtocolConfig | None = None, admission: Admission = _accept_all) -> None:
        self.node = node
        self.clock = clock
        self.cfg = config or ProtocolConfig()
        self.origin = OriginProtocol(node, clock, self.cfg)
        self.target = TargetProtocol(node, clock, self.cfg, admission)

    def receive(self, peer: str, msg: Message) -> list[Any]:
        if peer == self.node:
            return [Log("warning", "message_from_self_dropped", {"type": msg.TYPE})]
        if isinstance(msg, _TO_TARGET):
            return self.target.receive(peer, msg)
        return self.origin.receive(peer, msg)

    def receive_wire(self, peer: str, msg_type: str, body: Any) -> list[Any]:
        """Decode and handle; a malformed message becomes a ``Log``, never an exception."""
        try:
            msg = decode_message(msg_type, body)
        except ProtocolError as e:
            return [Log("warning", "malformed_message_dropped", {"peer": peer, "type": msg_type, "reason": str(e)})]
        return self.receive(peer, msg)

    def peer_down(self, peer: str) -> list[Any]:
        return self.origin.peer_down(peer) + self.target.peer_down(peer)

    def peer_up(self, peer: str) -> list[Any]:
        return self.origin.peer_up(peer) + self.target.peer_up(peer)

    def on_timer(self) -> list[Any]:
        out = self.origin.on_timer() + self.target.on_timer()
        # one ScheduleTimer for the combined next deadline
        out = [i for i in out if not isinstance(i, ScheduleTimer)]
        nxt = self.next_deadline()
        if nxt is not None:
            out.append(ScheduleTimer(nxt))
        return out

    def next_deadline(self) -> float | None:
        dues = [d for d in (self.origin.next_deadline(), self.target.next_deadline()) if d is not None]
        return min(dues) if dues else None
