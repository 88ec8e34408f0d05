"""What goes into the engine core (``EngineCore.handle``): one dataclass per kind of event.

Three sources, one list:

- other actors (the job manager, the transfer actor, the offloader) send these to the
  engine actor (``Actor.tell``); a request that wants an answer carries ``reply`` (an
  ``asyncio.Future`` the requester awaits; opaque to the core, which answers it with a
  ``Reply`` instruction once what was asked is durable);
- the engine shell's own I/O reports back with them: a commit done (the ``done`` event
  of a ``Commit``), rows read from the store, consumers that finished, a timer;
- the node at start-up (``Recovered``, ``Restored``).

Field types stay plain (jobs, ids, states, numbers) so that tests build them by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..job import Job, JobState
from ..queues.core import Outcome

if TYPE_CHECKING:
    from .instructions import JobFacts

# --------------------------------------------------------------------------- the job manager


@dataclass(slots=True)
class JobsAdded:
    """New jobs (validated, ids and queues assigned): commit them, then answer ``reply``."""

    jobs: list[Job]
    texts: list[str]  # their properties as JSON, in the same order
    reply: Any = None


@dataclass(slots=True)
class StopRequested:
    """Stop (``STOPPED``) or remove (``DROPPED``) a job that is not final. ``stored`` is its
    committed row, read by the shell when the core does not hold the job in memory."""

    job_id: str
    state: JobState
    reply: Any = None
    stored: Job | None = None


@dataclass(slots=True)
class RetryRequested:
    """A final job that did not succeed goes back to QUEUED with retry_count 0 (in its queue,
    or the one its topic matches now when that queue is no longer configured)."""

    job_id: str
    reply: Any = None
    stored: Job | None = None


@dataclass(slots=True)
class RemoveRequested:
    """Remove a job: a final one is deleted, any other is stopped as ``DROPPED``."""

    job_id: str
    reply: Any = None
    stored: Job | None = None


@dataclass(slots=True)
class SuspendRequested:
    queue: str
    suspended: bool
    reply: Any = None


@dataclass(slots=True)
class InfoRequested:
    """Every queue's information (``QueueInfo`` dicts, in configuration order)."""

    reply: Any = None


@dataclass(slots=True)
class ConsumersChanged:
    """A consumer was added or a topic's offloading setting changed: parked jobs may run."""


@dataclass(slots=True)
class DrainStarted:
    """Node shutdown: start nothing more; jobs that do not run stay QUEUED."""


@dataclass(slots=True)
class AbortRuns:
    """Shutdown grace is over: every run still going is interrupted (ABORTED: QUEUED again)."""

    force: bool = False  # True: report them ABORTED now, whatever their consumers do later


# --------------------------------------------------------------------------- the offloader


@dataclass(slots=True)
class SummaryRequested:
    """(queue, topic, movable jobs, age of the oldest, ordered) of this node's own jobs."""

    reply: Any = None


@dataclass(slots=True)
class TakeForOffload:
    """Take up to ``count`` movable jobs of ``topic`` (newest first) for ``peer``: the handoff
    is recorded (attempt + 1, target = peer), then the transfer actor offers them."""

    queue: str
    topic: str
    count: int
    peer: str
    ids: tuple[str, ...] = ()  # exactly these (placed by the offloader for their payload), if still movable
    keep: frozenset[str] = frozenset()  # not these (kept home for their payload a moment ago)


@dataclass(slots=True)
class CandidatesRequested:
    """The ids of up to ``count`` movable jobs of ``topic`` a ``TakeForOffload`` would take now
    (newest first, none of ``keep``): the offloader places them one by one (payload)."""

    queue: str
    topic: str
    count: int
    keep: frozenset[str] = frozenset()
    reply: Any = None


# --------------------------------------------------------------------------- the transfer actor, origin side


@dataclass(slots=True)
class RemoteStarted:
    peer: str
    job_id: str
    attempt: int
    at: float


@dataclass(slots=True)
class RemoteProgress:
    peer: str
    job_id: str
    attempt: int
    steps: int | None = None
    step: int | None = None
    eta: float | None = None
    log: tuple[str, ...] = ()


@dataclass(slots=True)
class RemoteResult:
    """One result a target sent (the protocol's ``ResultItem`` fields that matter here)."""

    peer: str
    job_id: str
    attempt: int
    kind: str  # "OK" | "FAILED" | "CANCEL"
    message: str | None = None
    retry_delay: float | None = None
    started: float | None = None
    finished: float | None = None
    log: tuple[str, ...] = ()
    result: Any = None  # OK only: the consumer's return value
    output_payload: dict[str, Any] | None = None  # OK only: {name: {"id", "size"}}, the blobs here already


@dataclass(slots=True)
class RemoteResults:
    """Results to record; ``ResultsRecorded`` goes back to the transfer actor after the commit."""

    results: list[RemoteResult]


@dataclass(slots=True)
class HandoffReturned:
    """These handed-off attempts are in flight nowhere now: the jobs are QUEUED here again."""

    refs: list[tuple[str, int]]
    reason: str
    peer: str | None = None


# --------------------------------------------------------------------------- the transfer actor, target side


@dataclass(slots=True)
class CopiesAccepted:
    """Commit copies of ``origin``'s jobs; ``CopiesRecorded`` goes back once durable."""

    origin: str
    specs: list[Any]  # transfer.messages.JobSpec
    first_seq: int = 0  # sequence numbers reserved for them (the shell fills it in)


@dataclass(slots=True)
class CopiesReleased:
    """Restored copies their origin confirmed may run: ``jobs`` are their rows (read by the shell)."""

    origin: str
    refs: list[tuple[str, int]]
    jobs: list[Job] = field(default_factory=list)


@dataclass(slots=True)
class CopyStopRequested:
    """The origin asked to stop this copy's run; its result (CANCEL) goes back."""

    job_id: str
    attempt: int
    reason: str


@dataclass(slots=True)
class CopiesForgotten:
    """The origin has these results, or wants these copies no more: they go (a run of one is
    stopped and whatever it reports is dropped). ``held``: (id, topic) of restored copies
    among them that never entered a window (only the statistics counted them)."""

    refs: list[tuple[str, int]]
    reason: str = "acknowledged"
    held: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class VerifyCopies:
    """A reconcile round says these copies should be queued or running here: the watchdog checks."""

    job_ids: list[str]


# --------------------------------------------------------------------------- the shell's own I/O


@dataclass(slots=True)
class InsertsCommitted:
    """The add is durable. ``reply`` (the adder's) is answered with the jobs as added: the
    core's own records of those it keeps in a window are copied (it goes on changing them),
    the others it lets go, so they are handed over as they are (no copy for a job that waits
    on disk: a million-job add copies only a window's worth)."""

    jobs: list[Job]
    reply: Any = None


@dataclass(slots=True)
class InsertsNotCommitted:
    """The add's commit failed: ``reply`` learns it."""

    reply: Any
    error: str


@dataclass(slots=True)
class StartsCommitted:
    runs: list[Any]


@dataclass(slots=True)
class StartsFailed:
    runs: list[Any]
    error: str


@dataclass(slots=True)
class WritesFailed:
    """The shell: a commit with these jobs' rows (full, start or success writes) failed (disk full,
    I/O error). Their rows may now differ from the records here in any column, so their next write
    of a start elsewhere or of an end is whole, not narrow (``Commit.successes`` trusts the row to
    be as the start wrote it)."""

    job_ids: list[str]


@dataclass(slots=True)
class CopiesCommitted:
    origin: str
    jobs: list[Job]


@dataclass(slots=True)
class CopiesNotCommitted:
    origin: str
    jobs: list[Job]
    error: str


@dataclass(slots=True)
class HandoffCommitted:
    peer: str
    jobs: list[Job]
    pledged: int


@dataclass(slots=True)
class HandoffNotCommitted:
    peer: str
    jobs: list[Job]
    pledged: int
    error: str


@dataclass(slots=True)
class ResultsNotCommitted:
    """The commit of remote results failed: ``jobs`` are the facts (id, queue, ...) of the records
    it held."""

    jobs: list[JobFacts]
    refs: list[tuple[str, int]]
    error: str


@dataclass(slots=True)
class RunsFinished:
    """Runs that ended, with how (from the consumer runner; one event per loop turn)."""

    items: list[tuple[Any, Outcome]]


@dataclass(slots=True)
class ProgressReported:
    """A running copy's consumer reported progress (its origin wants to see it)."""

    run: Any


@dataclass(slots=True)
class ReadyRead:
    """Rows a ``ReadReady`` asked for: the next QUEUED jobs of ``queue`` after ``after_seq``."""

    queue: str
    after_seq: int
    limit: int
    jobs: list[Job]


@dataclass(slots=True)
class DueRead:
    """Rows a ``ReadDue`` asked for: QUEUED jobs of ``queue`` due after the cursor ``after`` and
    by ``until``, in due order (at most ``limit``)."""

    queue: str
    after: tuple[float, int]
    until: float
    limit: int
    jobs: list[Job]


@dataclass(slots=True)
class Tick:
    """The timer of the last ``SetTimer`` is due (retry delays over)."""


@dataclass(slots=True)
class WatchdogDue:
    """Time for the level-triggered check of the windows against the store (DESIGN §3)."""


@dataclass(slots=True)
class ReadyScanned:
    """For ``ScanReady``: (seq, id, not_before) of the first runnable QUEUED rows per queue that
    are due, and the rows of the ids a reconcile round asked about (None: not in the store)."""

    rows: dict[str, list[tuple[int, str, float]]]
    verified: dict[str, Job | None]


@dataclass(slots=True)
class JobsLoaded:
    """Rows the core asked for with ``LoadJobs`` (the ones that still exist)."""

    purpose: str  # "repair" (the watchdog) | "away" (records to read again after a failed commit)
    jobs: list[Job]


# --------------------------------------------------------------------------- start-up


@dataclass(slots=True)
class Recovered:
    """At start: the rows that were ACTIVE when the node stopped (a crash): the ones it ran
    itself and other nodes' copies. Jobs running at another node are not among them."""

    jobs: list[Job]


@dataclass(slots=True)
class Restored:
    """At start: this node's jobs handed to other nodes and not final (QUEUED or ACTIVE there)."""

    jobs: list[Job]


EVENT_TYPES: tuple[type, ...] = (
    JobsAdded, StopRequested, RetryRequested, RemoveRequested, SuspendRequested, InfoRequested,
    ConsumersChanged, DrainStarted, AbortRuns, SummaryRequested, TakeForOffload, CandidatesRequested, RemoteStarted,
    RemoteProgress, RemoteResults, HandoffReturned, CopiesAccepted, CopiesReleased, CopyStopRequested,
    CopiesForgotten, VerifyCopies, InsertsCommitted, InsertsNotCommitted, StartsCommitted, StartsFailed, WritesFailed,
    CopiesCommitted, CopiesNotCommitted, HandoffCommitted, HandoffNotCommitted, ResultsNotCommitted, RunsFinished,
    ProgressReported, ReadyRead, DueRead, Tick, WatchdogDue, ReadyScanned, JobsLoaded, Recovered, Restored,
)
