"""The transfer protocol's messages: what travels between an origin and a target.

Each is a frozen dataclass with ``TYPE`` (the wire type frame), ``to_wire`` (the msgpack
body) and ``from_wire`` (which checks the body's shape: a malformed body is a
``ProtocolError``, never a crash). ``decode_message`` picks the class by wire type. The
decisions about them are in ``protocol.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ValidationError
from ..job import ResultKind

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


_new = object.__new__


def _build(cls: Any, fields: dict[str, Any]) -> Any:
    """A frozen dataclass instance from all its fields, checked already: its ``__init__`` sets
    each field through ``object.__setattr__``, about three times the cost (hundreds per message)."""
    obj = _new(cls)
    obj.__dict__.update(fields)
    return obj


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
    def of(cls, job: Any, payload: dict[str, Any] | None = None) -> "JobSpec":
        """What a target needs of ``job`` (a ``jobmesh.Job``), for the attempt it has now;
        ``payload``: its input payload as the wire carries it (``blobs.transfer.payload_specs``).
        One per job handed off: built without the frozen dataclass's ``__init__``."""
        return _build(cls, {"id": job.id, "attempt": job.attempt, "topic": job.topic, "properties": job.properties,
                            "queue": job.queue, "retry_count": job.retry_count, "max_retries": job.max_retries,
                            "origin": job.origin, "created": job.created, "timeout": job.timeout,
                            "priority": job.priority, "payload": payload})

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
        # An ack carries one item per job handed over: a well-formed accepted item (the usual
        # case) is checked in one pass and built without the frozen dataclass's __init__.
        if type(body) is dict:
            i, a, acc, r = body.get("id"), body.get("attempt"), body.get("accepted"), body.get("reason")
            if (type(i) is str and i and type(a) is int and a >= 0 and type(acc) is bool
                    and (r is None or type(r) is str)):
                return _build(cls, {"id": i, "attempt": a, "accepted": acc, "reason": r})
        return cls._from_wire_checked(body)

    @classmethod
    def _from_wire_checked(cls, body: dict[str, Any]) -> "AckItem":
        what = "handoff_ack item"
        return cls(
            id=_nonempty_str(body, "id", what),
            attempt=_attempt(body, what),
            accepted=_req(body, "accepted", bool, what),
            reason=_opt(body, "reason", str, what),
        )


_KINDS = {k.value: k for k in ResultKind}


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
    def of_run(cls, id: str, attempt: int, kind: ResultKind, message: str | None, retry_delay: float | None,
               started: float | None, finished: float | None, log: tuple[str, ...], result: Any = None,
               output_payload: dict[str, Any] | None = None) -> "ResultItem":
        """A copy's outcome at its target (the engine makes one per copy that ends): every field
        given, built without the frozen dataclass's ``__init__``."""
        return _build(cls, {"id": id, "attempt": attempt, "kind": kind, "message": message,
                            "retry_delay": retry_delay, "started": started, "finished": finished, "log": log,
                            "result": result, "output_payload": output_payload})

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "ResultItem":
        # Results come in batches of hundreds: a well-formed body (the usual case: no log, no
        # result, a known kind) is checked in one pass; anything else takes the checked path.
        if (type(body) is dict and not body.get("log") and body.get("result") is None
                and body.get("output") is None and body.get("output_payload") is None):
            i, a, k = body.get("id"), body.get("attempt"), _KINDS.get(body.get("kind"))  # type: ignore[arg-type]
            m, d, st, fi = body.get("message"), body.get("retry_delay"), body.get("started"), body.get("finished")
            if (type(i) is str and i and type(a) is int and a >= 0 and k is not None
                    and (m is None or type(m) is str) and (d is None or (type(d) in (int, float) and d >= 0))
                    and (st is None or type(st) in (int, float)) and (fi is None or type(fi) in (int, float))):
                return _build(cls, {"id": i, "attempt": a, "kind": k, "message": m,
                                    "retry_delay": None if d is None else float(d),
                                    "started": None if st is None else float(st),
                                    "finished": None if fi is None else float(fi), "log": (), "result": None,
                                    "output_payload": None})
        return cls._from_wire_checked(body)

    @classmethod
    def _from_wire_checked(cls, body: dict[str, Any]) -> "ResultItem":
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
        # A result ack carries one per result: a well-formed ref is checked in one pass and built
        # without the frozen dataclass's __init__; anything else says what is wrong.
        if type(body) is dict:
            i, a = body.get("id"), body.get("attempt")
            if type(i) is str and i and type(a) is int and a >= 0:
                return _build(cls, {"id": i, "attempt": a})
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


