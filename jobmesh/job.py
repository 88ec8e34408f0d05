"""The job model and its state machine (DESIGN §1), pure: no I/O, no clock of its own.

Every transition a job can take is listed in ``TRANSITIONS``; ``check_transition``
refuses anything else, so a bug shows up as an error instead of a job in a state
Sling users would not recognise. The engine (``jobmesh.engine.core``) moves every job,
on every path (local runs, copies, recovery, retry), through ``Story.transition``: the
check, the change of state and a line of the job's recent story in one place; a refused
transition raises ``InvalidTransition`` with that story.
"""

from __future__ import annotations

import enum
import json
import threading
import time
from . import clock as _clock
from . import rng as _rng
from .errors import ValidationError
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


class JobState(str, enum.Enum):
    """Sling's job states, with exactly Sling's names."""

    QUEUED = "QUEUED"
    ACTIVE = "ACTIVE"
    SUCCEEDED = "SUCCEEDED"
    STOPPED = "STOPPED"
    GIVEN_UP = "GIVEN_UP"
    ERROR = "ERROR"
    DROPPED = "DROPPED"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES

    def __str__(self) -> str:  # so f"{state}" prints QUEUED, not JobState.QUEUED
        return self.value


FINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.STOPPED, JobState.GIVEN_UP, JobState.ERROR, JobState.DROPPED}
)

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset(
        {JobState.ACTIVE, JobState.STOPPED, JobState.DROPPED}
    ),
    JobState.ACTIVE: frozenset(
        {
            JobState.SUCCEEDED,
            JobState.QUEUED,  # failed with retries left, or node restarted mid-run
            JobState.GIVEN_UP,
            JobState.ERROR,
            JobState.STOPPED,
            JobState.DROPPED,  # removed while running
        }
    ),
    # `retry` on a final job that did not succeed puts it back to QUEUED (same id).
    JobState.STOPPED: frozenset({JobState.QUEUED}),
    JobState.GIVEN_UP: frozenset({JobState.QUEUED}),
    JobState.ERROR: frozenset({JobState.QUEUED}),
    JobState.DROPPED: frozenset({JobState.QUEUED}),
    JobState.SUCCEEDED: frozenset(),
}


class InvalidTransition(ValueError):
    """A job was asked to move to a state it cannot reach from where it is.

    ``story`` is what happened to the job lately (``Story.of``), oldest first: the
    transitions it took and why, so that the bug that asked for this one can be found.
    """

    def __init__(self, old: JobState, new: JobState, job_id: str | None = None,
                 story: tuple[tuple[Any, ...], ...] = ()) -> None:
        self.old, self.new, self.job_id, self.story = old, new, job_id, story
        who = f"job {job_id}" if job_id else "job"
        text = f"{who} cannot go from {old.value} to {new.value}"
        if story:
            text += "; its recent story:\n  " + "\n  ".join(
                f"{t:.3f} {o} -> {n} ({why})" for _, t, o, n, why in story)
        super().__init__(text)


def check_transition(old: JobState, new: JobState) -> None:
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(old, new)


class Story:
    """The recent transitions of all jobs, newest last, bounded (dask's worker ``story``).

    One shared ring, not a list per job: a million queued jobs must not each carry a list.
    ``transition`` (``move`` and ``line`` for a batch) is the only way the engine changes a
    job's state. A line names one job id, or a tuple of the ids of a batch that went the same
    way at once (the jobs of one add, one reservation, one batch of runs that ended OK): one
    line per batch, not per job, on the hot path. ``of`` gives a job's lines one by one.
    """

    def __init__(self, size: int = 20_000) -> None:
        from collections import deque

        self.lines: "deque[tuple[Any, float, str, str, str]]" = deque(maxlen=size)

    def transition(self, job: "Job", new: JobState, why: str, now: float) -> JobState:
        """Check ``job.state -> new`` against ``TRANSITIONS``, record it, set it; returns the old state."""
        old = self.move(job, new)
        self.lines.append((job.id, now, old._value_, new._value_, why))
        return old

    def move(self, job: "Job", new: JobState) -> JobState:
        """``transition`` without its line: the caller writes one ``line`` for its batch."""
        old = job.state
        if new not in TRANSITIONS[old]:
            raise InvalidTransition(old, new, job.id, self.of(job.id))
        job.state = new
        return old

    def line(self, ids: tuple[str, ...], now: float, old: JobState, new: JobState, why: str) -> None:
        """One line for the jobs ``ids`` that all went ``old -> new`` (``move``) for one reason."""
        if ids:
            self.lines.append((ids if len(ids) > 1 else ids[0], now, old._value_, new._value_, why))

    def note(self, job_id: str, state: JobState, why: str, now: float) -> None:
        """A line that is not a change of state (added, handed off, restored ...)."""
        self.lines.append((job_id, now, state._value_, state._value_, why))

    def of(self, job_id: str, limit: int = 20) -> tuple[tuple[str, float, str, str, str], ...]:
        found = [line if who == job_id else (job_id, *line[1:]) for line in self.lines
                 if (who := line[0]) == job_id or (type(who) is tuple and job_id in who)]
        return tuple(found[-limit:])


class ResultKind(str, enum.Enum):
    OK = "OK"
    FAILED = "FAILED"
    CANCEL = "CANCEL"


@dataclass(frozen=True)
class JobResult:
    """What a consumer returns. ``None`` from a consumer means ``JobResult.OK``.

    ``JobResult.OK``, ``JobResult.FAILED`` (retry) and ``JobResult.CANCEL`` (no retry)
    are ready-made instances; ``ExecutionContext.result()`` builds one with a message
    and, for a failure, a retry delay.
    """

    kind: ResultKind
    message: str | None = None
    retry_delay: float | None = None  # seconds; only meaningful for FAILED
    output: dict[str, Any] | None = None  # OK only: the job's output properties (workflows merge them)

    OK: "JobResult" = None  # type: ignore[assignment]  # set below
    FAILED: "JobResult" = None  # type: ignore[assignment]
    CANCEL: "JobResult" = None  # type: ignore[assignment]

    @property
    def succeeded(self) -> bool:
        return self.kind is ResultKind.OK


JobResult.OK = JobResult(ResultKind.OK)  # type: ignore[misc]
JobResult.FAILED = JobResult(ResultKind.FAILED)  # type: ignore[misc]
JobResult.CANCEL = JobResult(ResultKind.CANCEL)  # type: ignore[misc]


@dataclass(slots=True)
class Progress:
    steps: int | None = None
    step: int = 0
    eta: float | None = None  # epoch seconds when the job is expected to finish
    log: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "step": self.step,
            "eta": iso(self.eta),
            "log": list(self.log),
        }


@dataclass
class Job:
    """A unit of work: a topic and JSON-compatible properties, plus its bookkeeping.

    Times are epoch seconds (float) internally and ISO 8601 UTC in JSON.
    ``attempt`` counts every start (including after restarts) and makes transfer
    messages idempotent; ``not_before`` is when a retried job may start again.
    """

    id: str
    topic: str
    properties: dict[str, Any]
    state: JobState = JobState.QUEUED
    queue: str = "main"
    origin: str = ""
    target: str | None = None
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    retry_count: int = 0
    max_retries: int = 10
    progress: Progress = field(default_factory=Progress)
    result_message: str | None = None
    # The consumer's return value on success (JSON-compatible, any type; None = nothing). A
    # workflow step's output is this same value when it is an object (``output`` below): one
    # field, stored, carried back from a target and shown in the job JSON as ``result``.
    result: Any = None
    attempt: int = 0
    not_before: float = 0.0  # epoch seconds: not started before (a delay, an ``at``, a retry delay)
    seq: int = 0  # store sequence number: the order of arrival, for ordered queues
    key: str | None = None  # a producer's unique key: one open job per key and origin
    timeout: float | None = None  # the job's own time limit in seconds (beats the consumer's and queue's)
    priority: int = 0  # within a queue, higher starts first (ordered queues keep arrival order)
    # job payload (blobs): name -> BlobRef (``id``, ``size``). Kept by the node's blob store (its
    # references), filled in where a job is read for a user or a consumer; see jobmesh.blobs
    payload: dict[str, Any] = field(default_factory=dict)
    output_payload: dict[str, Any] = field(default_factory=dict)

    @property
    def output(self) -> dict[str, Any] | None:
        """The result as a workflow step's output properties: the result when it is an object."""
        return self.result if isinstance(self.result, dict) else None

    @output.setter
    def output(self, value: dict[str, Any] | None) -> None:
        self.result = value

    def snapshot(self) -> "Job":
        """A copy a reader may keep: the engine goes on changing its own record (its
        progress log too), never this copy."""
        j = copy_fields(self)
        p = self.progress
        j.progress = Progress(p.steps, p.step, p.eta, p.log[:])
        return j

    def to_json(self) -> dict[str, Any]:
        """The job as DESIGN §5.2's job JSON."""
        data = {
            "id": self.id,
            "topic": self.topic,
            "properties": self.properties,
            "state": self.state.value,
            "queue": self.queue,
            "origin": self.origin,
            "target": self.target,
            "created": iso(self.created),
            "started": iso(self.started),
            "finished": iso(self.finished),
            "retry_count": self.retry_count,
            "max_retries": self.max_retries,
            "progress": self.progress.to_json(),
            "result_message": self.result_message,
            "result": self.result,
            "not_before": iso(self.not_before) if self.not_before else None,
            "key": self.key,
            "timeout": self.timeout,
            "priority": self.priority,
        }
        data["payload"] = {n: r.to_json() for n, r in sorted(self.payload.items())}
        data["output_payload"] = {n: r.to_json() for n, r in sorted(self.output_payload.items())}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Job":
        """A job from its JSON (what ``to_json`` and the HTTP API give): the client's ``Job``."""
        p = data.get("progress") or {}
        eta = p.get("eta")
        return cls(
            id=data["id"], topic=data["topic"], properties=data.get("properties") or {},
            state=JobState(data["state"]), queue=data.get("queue") or "main", origin=data.get("origin") or "",
            target=data.get("target"), created=_ts(data.get("created")) or 0.0, started=_ts(data.get("started")),
            finished=_ts(data.get("finished")), retry_count=int(data.get("retry_count") or 0),
            max_retries=int(data.get("max_retries", 10)),
            progress=Progress(p.get("steps"), int(p.get("step") or 0), _ts(eta) if isinstance(eta, str) else eta,
                              list(p.get("log") or [])),
            result_message=data.get("result_message"), result=data.get("result"),
            not_before=_ts(data.get("not_before")) or 0.0, key=data.get("key"), timeout=data.get("timeout"),
            priority=int(data.get("priority") or 0),
            payload=_refs(data.get("payload")), output_payload=_refs(data.get("output_payload")),
        )


def _refs(data: Any) -> dict[str, Any]:
    """``{name: {"id", "size"}}`` of a job JSON as ``{name: BlobRef}`` (the client's job)."""
    if not data:
        return {}
    from .blobs.store import BlobRef

    return {n: BlobRef.from_json(r, f"payload {n!r}") for n, r in data.items()}


def _ts(text: str | None) -> float | None:
    return parse_iso(text) if text else None


_iso_texts: dict[float, str] = {}
_ISO_KEPT = 256


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds, or None. Recent ones are remembered (at most
    _ISO_KEPT): the jobs of one add share their ``created`` time, and the statistics' few times
    (start, last activated, last finished of each scope) are asked for on every poll."""
    if ts is None:
        return None
    text = _iso_texts.get(ts)
    if text is None:
        text = datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if len(_iso_texts) >= _ISO_KEPT:
            _iso_texts.clear()
        _iso_texts[ts] = text
    return text


def parse_iso(text: str) -> float:
    """ISO 8601 (``Z`` or offset; naive means UTC) to epoch seconds."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


_new = object.__new__


def _field_copier() -> Any:
    """``copy_fields(job)``: a new ``Job`` with the same field values (shared, not copied), written
    out field by field. Not through ``__dict__``: reading it makes a dict for the source and the
    copy (CPython keeps plain instances' attributes inline until then), two objects more per job
    for the collector to walk, and a window holds thousands of jobs."""
    from dataclasses import fields

    body = "".join(f"    j.{f.name} = job.{f.name}\n" for f in fields(Job))
    ns: dict[str, Any] = {"_new": _new, "Job": Job}
    exec(f"def copy_fields(job):\n    j = _new(Job)\n{body}    return j\n", ns)  # noqa: S102 - our own text
    return ns["copy_fields"]


copy_fields = _field_copier()

_NEW_JOB_ARGS = ("id", "topic", "properties", "queue", "origin", "created", "max_retries", "priority")


def _plain_maker() -> Any:
    """``new_job(id, topic, properties, queue, origin, created, max_retries, priority)``: what
    ``Job(...)`` with those keywords makes (every other field at its default), written out field by
    field in the fields' order (so its instances share their attribute layout with ``Job()``'s):
    ~1 µs less than the dataclass ``__init__`` with keywords, once per added job."""
    from dataclasses import MISSING, fields

    ns: dict[str, Any] = {"_new": _new, "Job": Job}
    lines = []
    for f in fields(Job):
        if f.name in _NEW_JOB_ARGS:
            lines.append(f"    j.{f.name} = {f.name}\n")
        elif f.default_factory is not MISSING:
            ns[f"_make_{f.name}"] = f.default_factory
            lines.append(f"    j.{f.name} = _make_{f.name}()\n")
        else:
            ns[f"_default_{f.name}"] = f.default
            lines.append(f"    j.{f.name} = _default_{f.name}\n")
    exec(f"def new_job({', '.join(_NEW_JOB_ARGS)}):\n    j = _new(Job)\n{''.join(lines)}    return j\n", ns)  # noqa: S102
    return ns["new_job"]


new_job = _plain_maker()

MAX_PROPERTIES_BYTES = 1_000_000

try:
    from json.encoder import c_make_encoder as _c_make_encoder  # type: ignore[attr-defined]
    from json.encoder import encode_basestring_ascii as _ascii  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - an interpreter without the C accelerator
    _c_make_encoder = None
_json_default = json.JSONEncoder().default


def _strict_json(obj: Any) -> str:
    """``json.dumps(obj, allow_nan=False)``, the same text and errors, without ``JSONEncoder``'s
    per-call set-up (half the cost for a small dict; it runs once per added job)."""
    if _c_make_encoder is None:  # pragma: no cover
        return json.dumps(obj, allow_nan=False)
    return "".join(_c_make_encoder({}, _json_default, _ascii, None, ": ", ", ", False, False, False)(obj, 0))


def properties_json(props: Any, what: str = "properties") -> str:
    """``props`` as JSON text when it is a JSON-compatible dict of bounded size (what a job's
    properties, a workflow's input and a step's output must be); ``ValidationError`` otherwise."""
    if props is None:
        return "{}"
    if not isinstance(props, dict):
        raise ValidationError(f"{what} must be a JSON object (a dict)")
    try:
        text = _strict_json(props)
    except (TypeError, ValueError) as e:
        raise ValidationError(f"{what} are not JSON-compatible: {e}") from None
    if len(text) > MAX_PROPERTIES_BYTES:
        raise ValidationError(f"{what} are larger than {MAX_PROPERTIES_BYTES} bytes")
    return text


class JobIdGenerator:
    """Time-ordered, unique job ids: ``<ms since epoch, hex>-<random node part>-<counter>``.

    Sortable by creation time, cheap to make (no uuid call per job), unique across
    nodes thanks to a random per-process prefix.
    """

    def __init__(self, clock: Any = _clock.wall) -> None:
        self._clock = clock
        self._prefix = _rng.token_hex(4)
        self._counter = 0
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            self._counter += 1
            n = self._counter
        return f"{int(self._clock() * 1000):011x}-{self._prefix}-{n:x}"

    def next_many(self, count: int) -> list[str]:
        """``count`` ids at once: one clock read, one lock (an add of many jobs)."""
        with self._lock:
            first = self._counter + 1
            self._counter += count
        head = f"{int(self._clock() * 1000):011x}-{self._prefix}-"
        return [f"{head}{n:x}" for n in range(first, first + count)]

