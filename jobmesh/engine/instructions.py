"""What comes out of the engine core: one dataclass per thing the shell must do.

The engine actor (``engine.actor``) carries each out through one table,
``EngineActor.DISPATCH``, and fails loudly on a type it does not know. Three groups:

- for the shell itself: ``Commit`` (one transaction's writes, then what follows it),
  ``Start`` (run these consumers), ``StopRun``/``CancelRun``, ``Reply``, ``ReadReady``,
  ``ScanReady``, ``LoadJobs``, ``SetTimer``, ``Log``, ``Repaired``;
- messages for the job manager (statistics, ``wait``, notifications): ``JobsStarted``,
  ``JobsTransitioned``, ``CopiesArrived``, ``CopiesLeft``;
- messages for the transfer actor: ``OfferJobs``, ``StopRemote``, ``ResultsRecorded``,
  ``ResultsNotRecorded``, ``CopiesRecorded``, ``CopiesNotRecorded``, ``CopiesStarted``,
  ``CopyProgress``, ``CopiesEnded``, ``CopyResults``.

Jobs in messages to other actors are snapshots (``Job.snapshot``) or their facts
(``JobFacts``): the receiver may keep them; the engine's own records are never shared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..job import Job, JobState


class JobFacts(NamedTuple):
    """What the job manager needs of a job for its statistics and notifications, taken when the
    message was made (cheaper than a snapshot, and as immutable). ``job`` is a snapshot where
    more is needed (a failed run: its log has the failure entry to report)."""

    id: str
    topic: str
    queue: str
    origin: str
    retry_count: int
    result_message: str | None
    job: Job | None = None

    @classmethod
    def of(cls, job: Job, full: bool = False) -> "JobFacts":
        return _tuple_new(cls, (job.id, job.topic, job.queue, job.origin, job.retry_count, job.result_message,
                                job.snapshot() if full else None))


_tuple_new = tuple.__new__  # a NamedTuple's own __new__ is a Python function: one call less per job

# --------------------------------------------------------------------------- for the shell


@dataclass(slots=True)
class Commit:
    """Write these in one transaction (the store's group commit may add other writes to it);
    once durable, carry out ``then`` and feed ``done`` back; if the commit fails, feed
    ``failed`` (with the error) or log.

    ``inserts`` are new rows (``texts`` their properties JSON, or None: from the jobs),
    ``starts`` the narrow write of a run's start (here, or at the peer a job is handed to),
    ``handoffs`` the narrow write of a QUEUED job handed to a peer (its target and attempt),
    ``updates`` full rows, ``successes`` the narrow write of a run that ended OK, here or at a peer
    (its state, start and end, progress, message and result: the rest of its row is as its start, or
    its handoff, wrote it),
    ``deletes`` rows (by their seq). The transfer tables change with the
    job rows they belong to (``store.transfer``): ``copies`` (origin, job) rows of accepted copies
    (replacing an older copy's row), ``outbox`` (job, result) of copies that ended (the copy's row goes),
    ``forget`` (id, attempt) copies and results their origin has done with, ``rehome``
    (old queue, topic, new queue) of QUEUED rows whose queue is no longer configured.
    Job payload (``jobmesh.blobs``): ``inputs`` (copy id, its input payload) and ``outputs``
    (job id, attempt, a result's output payload), each ``{name: {"id", "size"}}``, are the blob
    store's references, written before the rows (a crash in between leaves only references,
    which the blob store's collection drops). ``failed`` events get the error text in their
    ``error`` field."""

    inserts: list[Job] = field(default_factory=list)
    texts: list[str] | None = None
    starts: list[Job] = field(default_factory=list)
    handoffs: list[Job] = field(default_factory=list)
    updates: list[Job] = field(default_factory=list)
    successes: list[Job] = field(default_factory=list)
    deletes: list[Job] = field(default_factory=list)
    copies: list[tuple[str, Job]] = field(default_factory=list)
    outbox: list[tuple[Job, Any]] = field(default_factory=list)  # (copy, transfer ResultItem)
    forget: list[tuple[str, int]] = field(default_factory=list)
    rehome: list[tuple[str, str, str]] = field(default_factory=list)
    inputs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    outputs: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    then: list[Any] = field(default_factory=list)
    done: list[Any] = field(default_factory=list)
    failed: list[Any] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.inserts or self.starts or self.handoffs or self.updates or self.successes or self.deletes
                    or self.copies or self.outbox or self.forget or self.rehome or self.inputs or self.outputs)


@dataclass(slots=True)
class Start:
    """Run these consumers now (their ACTIVE rows are durable)."""

    runs: list[Any]


@dataclass(slots=True)
class StopRun:
    """``run`` was asked to stop (its ``stop_state`` is set): an async consumer still running
    ``grace`` seconds later is cancelled."""

    run: Any


@dataclass(slots=True)
class CancelRun:
    """Interrupt ``run`` now (shutdown): cancel an async consumer, give up on a sync one."""

    run: Any


@dataclass(slots=True)
class Reply:
    """Answer a request: ``reply`` (the requester's future) gets ``value``, or ``error``."""

    reply: Any
    value: Any = None
    error: BaseException | None = None


@dataclass(slots=True)
class ReadReady:
    """Read the next QUEUED rows of ``queue`` after ``after_seq`` (at most ``limit``) and feed
    them back as ``ReadyRead``."""

    queue: str
    after_seq: int
    limit: int
    due_by: float = math.inf  # rows due later wait on disk (``ReadDue`` reads them in time)


@dataclass(slots=True)
class ReadDue:
    """Read the QUEUED rows of ``queue`` due after the (not_before, seq) cursor ``after`` and by
    ``until``, in due order (at most ``limit``); feed them back as ``DueRead``."""

    queue: str
    after: tuple[float, int]
    until: float
    limit: int


@dataclass(slots=True)
class ScanReady:
    """The watchdog: read (seq, id, not_before) of the first ``limit`` runnable QUEUED rows of
    each queue in ``queues`` that are due by ``due_by``, and the rows of ``verify``; feed them
    back as ``ReadyScanned``."""

    queues: list[str]
    limit: int
    verify: list[str]
    due_by: float = math.inf


@dataclass(slots=True)
class LoadJobs:
    """Read these rows and feed them back as ``JobsLoaded(purpose, jobs)``."""

    ids: list[str]
    purpose: str


@dataclass(slots=True)
class SetTimer:
    """Feed ``Tick`` at ``at`` (wall clock) unless an earlier timer is set by then."""

    at: float


@dataclass(slots=True)
class Log:
    level: str  # "debug" | "info" | "warning" | "error"
    event: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Repaired:
    """A level-triggered check fixed a missed transition (counted for /metrics; should stay 0)."""

    kind: str
    count: int


# --------------------------------------------------------------------------- for the job manager


@dataclass(slots=True)
class JobsStarted:
    """Runs started (here or at a peer): (job, waiting time in ms)."""

    items: list[tuple[JobFacts, float]]


@dataclass(slots=True)
class JobsTransitioned:
    """Committed transitions: (job, old state, new state, processing ms or None, how) where
    how is the outcome kind ("OK", "FAILED", "CANCEL", "STOPPED", "ABORTED", "INTERRUPTED",
    "RETRY")."""

    items: list[tuple[JobFacts, JobState, JobState, float | None, str]]


@dataclass(slots=True)
class CopiesArrived:
    """Other nodes' jobs committed here: they queue and count like local jobs while here."""

    jobs: list[JobFacts]


@dataclass(slots=True)
class CopiesLeft:
    """Copies that ended or went here: (job, the state it left from)."""

    items: list[tuple[JobFacts, JobState]]


# --------------------------------------------------------------------------- for the transfer actor


@dataclass(slots=True)
class OfferJobs:
    """Hand these jobs (``transfer.messages.JobSpec``: their handoff is durable, attempt and
    target recorded) to ``peer``; ``pledged`` is the room the transfer set aside for them
    (``TakeForOffload.count``)."""

    peer: str
    jobs: list[Any]
    pledged: int


@dataclass(slots=True)
class StopRemote:
    """Ask the target running (or holding) this handed-off job to stop it; ``withdraw``: the stop is
    recorded here already (it had not started there), so the attempt goes at once."""

    job_id: str
    withdraw: bool = False


@dataclass(slots=True)
class CheckAway:
    """(job id, target, attempt) of every job this engine holds as handed off: the transfer
    compares them with what its protocol has in flight (``OriginProtocol.check_records``)."""

    records: list[tuple[str, str, int]]


@dataclass(slots=True)
class ResultsRecorded:
    """These results (id, attempt) are durable at the origin (``stale`` of them were not
    applied: the job had moved on): acknowledge them all."""

    refs: list[tuple[str, int]]
    stale: int = 0


@dataclass(slots=True)
class ResultsNotRecorded:
    refs: list[tuple[str, int]]
    error: str


@dataclass(slots=True)
class CopiesRecorded:
    """These copies are durable here: acknowledge the handoff."""

    origin: str
    refs: list[tuple[str, int]]


@dataclass(slots=True)
class CopiesNotRecorded:
    origin: str
    refs: list[tuple[str, int]]
    error: str


@dataclass(slots=True)
class CopiesStarted:
    """These copies' consumers started here: (job id, attempt, when), one message per burst."""

    items: list[tuple[str, int, float]]


@dataclass(slots=True)
class CopyProgress:
    """A running copy's progress, and the log lines added since the last one."""

    job_id: str
    attempt: int
    steps: int | None
    step: int
    eta: float | None
    log: tuple[str, ...]


@dataclass(slots=True)
class CopiesEnded:
    """These copies' consumers ended here (their results follow once the outbox has them): no start
    to announce for them any more, however long the commit takes."""

    refs: list[tuple[str, int]]  # (job id, attempt)


@dataclass(slots=True)
class CopyResults:
    """Final outcomes of copies, durable in the outbox: send them (``progress``: the final
    steps of those that reported any, to go just ahead of the results)."""

    results: list[Any]  # transfer.messages.ResultItem
    progress: list[CopyProgress] = field(default_factory=list)


TO_MANAGER: tuple[type, ...] = (JobsStarted, JobsTransitioned, CopiesArrived, CopiesLeft)
TO_TRANSFER: tuple[type, ...] = (OfferJobs, StopRemote, CheckAway, ResultsRecorded, ResultsNotRecorded, CopiesRecorded,
                                 CopiesNotRecorded, CopiesStarted, CopyProgress, CopiesEnded, CopyResults)
