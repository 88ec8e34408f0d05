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
    "RoomFreed",
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


from .messages import _build
from .messages import (  # noqa: F401 - the protocol's messages, named here too
    MESSAGE_TYPES,
    AckItem,
    Handoff,
    HandoffAck,
    JobRef,
    JobSpec,
    Message,
    Progress,
    ProtocolError,
    Reconcile,
    ReconcileReply,
    ReconcileRequest,
    Result,
    ResultAck,
    ResultItem,
    Started,
    StealRequest,
    Stop,
    StopAck,
    Submit,
    SubmitAck,
    decode_message,
)

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
class RoomFreed:
    """Origin: results came back and ``peer`` has room for a good batch again (the offloader
    need not wait for its next round)."""

    peer: str


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
               | StealRequested | RoomFreed | ReleaseCopies | VerifyQueued | Repaired | Log | ScheduleTimer)


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
    # a copy's start is announced once it ran this long (a short job's result says it all,
    # and saves the origin a message and a write per job)
    started_delay: float = 0.05
    progress_interval: float = 0.05  # s between two progress messages of one copy (lines are kept)

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
        self._pledged: dict[str, int] = {}  # peer -> room set aside for jobs on their way to ``offer``
        self._orphans: dict[str, int] = {}  # records not in flight here at the last check: id -> attempt

    # -- queries
    def in_flight(self, peer: str | None = None) -> int:
        if peer is None:
            return len(self._jobs)
        return len(self._per_peer.get(peer, ()))

    def room(self, peer: str) -> int:
        """How many more jobs ``peer`` may be handed now (0 while it is down), less the room
        already pledged to jobs on their way (``pledge``)."""
        if peer in self._down:
            return 0
        return max(0, self.cfg.max_in_flight_per_peer - self.in_flight(peer) - self._pledged.get(peer, 0))

    def pledge(self, peer: str, count: int) -> int:
        """Set room aside for ``count`` jobs that will be offered to ``peer`` once their handoff is
        recorded (the offer credit): returns how many may go; ``offer`` gives the room back."""
        granted = max(0, min(count, self.room(peer)))
        if granted:
            self._pledged[peer] = self._pledged.get(peer, 0) + granted
        return granted

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
    def offer(self, peer: str, jobs: Sequence[JobSpec], pledged: int = 0) -> list[Any]:
        """Hand ``jobs`` to ``peer`` (``pledged``: the room ``pledge`` set aside for them, given back
        now). Jobs beyond the peer's room, to a peer that is down, or already in flight under
        another attempt come back as ``RequeueLocal``/``Log``."""
        if peer == self.node:
            raise ValidationError("a node cannot offload a job to itself")
        if pledged:
            left = self._pledged.get(peer, 0) - pledged
            if left > 0:
                self._pledged[peer] = left
            else:
                self._pledged.pop(peer, None)
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

    def check_records(self, records: Sequence[tuple[str, str, int]]) -> list[Any]:
        """Level-triggered repair at the origin: ``records`` are (job id, peer, attempt) of every job
        whose record says it is handed off. One that is not in flight at that peer under that
        attempt on two checks in a row (a transition that left record and protocol apart) comes
        home, logged and counted."""
        found: dict[str, int] = {}
        for job_id, peer, attempt in records:
            job = self._jobs.get(job_id)
            if job is None or job.peer != peer or job.spec.attempt != attempt:
                found[job_id] = attempt
        orphans = sorted((i, a) for i, a in found.items() if self._orphans.get(i) == a)
        gone = {i for i, _ in orphans}
        self._orphans = {i: a for i, a in found.items() if i not in gone}
        if not orphans:
            return []
        return [RequeueLocal(tuple(JobRef(i, a) for i, a in orphans), "recorded as handed off, in flight nowhere"),
                Repaired("handoff_orphaned", len(orphans)),
                Log("warning", "repaired: jobs recorded as handed off that no peer has come home (a missed "
                               "transition; please report it)", {"count": len(orphans),
                                                                 "job_ids": [i for i, _ in orphans[:10]]})]

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
        jobs = self._jobs
        for ref in refs:
            if not isinstance(ref, JobRef):  # one per result: built without the frozen dataclass's __init__
                ref = _build(JobRef, {"id": ref[0], "attempt": ref[1]})
            job = jobs.get(ref.id)
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
            if self.room(peer) >= self.cfg.max_in_flight_per_peer // 4:
                out.append(RoomFreed(peer))
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
            out.append(_build(CommitResult, {"peer": peer, "result": item}))  # one per result
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
        # starts not announced yet: job id -> (attempt, started at, due); in order of due
        self._starts: OrderedDict[str, tuple[int, float, float]] = OrderedDict()
        self._progress_sent: dict[str, float] = {}  # job id -> when its last progress went out
        self._progress_held: dict[str, tuple[Progress, float]] = {}  # job id -> (merged progress, due)
        # results taken into the outbox (``results_ready``), each once: one handed over again (the
        # engine's restart resend) is not counted twice
        self.results_taken = 0

    # -- the copies table (one place keeps the per-origin indexes right)
    def _add_copy(self, c: "_Copy") -> None:
        self._copies[c.spec.id] = c
        self._by_origin.setdefault(c.origin, set()).add(c.spec.id)
        if c.state is TargetJobState.HELD:
            self._held.setdefault(c.origin, set()).add(c.spec.id)

    def _del_copy(self, job_id: str) -> None:
        c = self._copies.pop(job_id, None)
        self._pending.pop(job_id, None)
        self._starts.pop(job_id, None)
        self._progress_sent.pop(job_id, None)
        self._progress_held.pop(job_id, None)
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
        if self._starts:
            dues.append(next(iter(self._starts.values()))[2])
        dues += [due for _, due in self._progress_held.values()]
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
        copies = self._copies
        for ref in refs:
            job_id, attempt = (ref.id, ref.attempt) if isinstance(ref, JobRef) else ref
            c = copies.get(job_id)
            if c is None or c.spec.attempt != attempt or c.origin != origin:
                continue
            if c.state is TargetJobState.COMMITTING:
                c.state = TargetJobState.COMMITTED
            # one per copy: built without the frozen dataclass's __init__ (as the wire's reads are)
            acks.append(_build(AckItem, {"id": job_id, "attempt": attempt, "accepted": True, "reason": None}))
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

    def copies_started(self, items: Iterable[tuple[str, int, float]]) -> list[Any]:
        """Copies' consumers started ((job id, attempt, when)): each is announced ``started_delay``
        later if it still runs then (a job that ends sooner is announced by its result, which
        carries when it started)."""
        due = self.clock() + self.cfg.started_delay
        copies, starts = self._copies, self._starts
        any_ = False
        for job_id, attempt, at in items:
            c = copies.get(job_id)
            if c is None or c.spec.attempt != attempt:
                continue
            starts[job_id] = (attempt, at, due)
            starts.move_to_end(job_id)
            any_ = True
        out: list[Any] = []
        if any_:
            self._timers.maybe(due, out)
        return out

    def copies_ended(self, refs: Iterable[tuple[str, int]]) -> list[Any]:
        """These copies' consumers ended: their results (which say when they started) follow once
        durable, so no start is announced for them, even when that commit takes longer than
        ``started_delay`` (a busy target sent a Started for every job of a slow cycle)."""
        starts = self._starts
        for job_id, attempt in refs:
            s = starts.get(job_id)
            if s is not None and s[0] == attempt:
                del starts[job_id]
        return []

    def progress(self, progress: Progress) -> list[Any]:
        """Forward progress while the origin is reachable (best effort; the result repeats the log),
        at most one message per ``progress_interval`` per job: what comes sooner is merged into
        the next one (its log lines kept)."""
        c = self._copies.get(progress.id)
        if c is None or c.spec.attempt != progress.attempt or c.origin in self._down:
            return []
        now = self.clock()
        held = self._progress_held.get(progress.id)
        last = self._progress_sent.get(progress.id)
        if held is None and (last is None or now - last >= self.cfg.progress_interval):
            self._progress_sent[progress.id] = now
            return [Send(c.origin, progress)]
        if held is not None:
            p0, due = held
            progress = Progress(progress.id, progress.attempt, progress.steps, progress.step, progress.eta,
                                p0.log + progress.log)
        else:
            due = (last or now) + self.cfg.progress_interval
        self._progress_held[progress.id] = (progress, due)
        out: list[Any] = []
        self._timers.maybe(due, out)
        return out

    def results_ready(self, results: Iterable[ResultItem], progress: Iterable[Progress] = ()) -> list[Any]:
        """Final outcomes the actor has already written to the durable outbox: send them, each
        job's final progress (``progress``: steps only, the result has the log) just ahead."""
        now = self.clock()
        by_origin: dict[str, list[ResultItem]] = {}
        out: list[Any] = []
        for p in progress:
            c = self._copies.get(p.id)
            if c is not None and c.spec.attempt == p.attempt and c.origin not in self._down:
                out.append(Send(c.origin, p))
        for r in results:
            self._starts.pop(r.id, None)  # its result says when it started
            self._progress_sent.pop(r.id, None)
            self._progress_held.pop(r.id, None)
            c = self._copies.get(r.id)
            if c is None or c.spec.attempt != r.attempt:
                out.append(Log("warning", "result_for_unknown_copy", {"job_id": r.id, "attempt": r.attempt}))
                continue
            if c.state is TargetJobState.RESULT_PENDING:
                continue
            c.state = TargetJobState.RESULT_PENDING
            self.results_taken += 1
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
            out.append(_build(ForgetJob, {"id": ref.id, "attempt": ref.attempt, "reason": "acknowledged",
                                          "held": False}))  # one per result acknowledged
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
        out: list[Any] = []
        starts = self._starts
        while starts:
            job_id, (attempt, at, due) = next(iter(starts.items()))
            if due > now:
                break
            del starts[job_id]
            c = self._copies.get(job_id)
            if c is not None and c.spec.attempt == attempt and c.state is TargetJobState.COMMITTED:
                out += self.started(job_id, attempt, at)
        for job_id, (p, due) in list(self._progress_held.items()):
            if due <= now:
                del self._progress_held[job_id]
                c = self._copies.get(job_id)
                if c is not None and c.spec.attempt == p.attempt and c.origin not in self._down:
                    self._progress_sent[job_id] = now
                    out.append(Send(c.origin, p))
        by_origin: dict[str, list[ResultItem]] = {}
        for c in self._pending.values():
            if c.resend is None or c.result is None or c.origin in self._down:
                continue
            if c.resend.due <= now:
                c.resend.fire(now, self.cfg)
                by_origin.setdefault(c.origin, []).append(c.result)
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
    """Both roles of one node behind one entry point, which is what the actor drives.

    ``receive_envelope`` takes a body as it arrived (with ``from``, ``inc``: the sender's
    incarnation, ``to_inc``: the incarnation it was meant for) and fences it: a message of a
    peer's earlier incarnation, or one meant for an earlier incarnation of this node (a DEALER
    delivers what it queued to whichever process binds the endpoint next), is dropped."""

    def __init__(self, node: str, clock: Callable[[], float] = _clock.monotonic,
                 config: ProtocolConfig | None = None, admission: Admission = _accept_all,
                 incarnation: float | None = None) -> None:
        self.node = node
        self.clock = clock
        self.cfg = config or ProtocolConfig()
        self.origin = OriginProtocol(node, clock, self.cfg)
        self.target = TargetProtocol(node, clock, self.cfg, admission)
        self.incarnation = incarnation
        self._incarnations: dict[str, float] = {}  # live peers' incarnations (peer_up)
        self.received = 0
        self.fenced = 0  # messages addressed to an earlier incarnation of this node, dropped

    def receive_envelope(self, msg_type: str, body: Any) -> list[Any]:
        peer = body.get("from") if isinstance(body, dict) else None
        if not isinstance(peer, str) or not peer:
            return [Log("warning", "transfer message without sender dropped", {"type": msg_type})]
        inc = body.get("inc")
        known = self._incarnations.get(peer)
        if known is not None and isinstance(inc, (int, float)) and inc < known:
            return [Log("info", "message from an old incarnation dropped", {"peer": peer, "type": msg_type})]
        to_inc = body.get("to_inc")
        if isinstance(to_inc, (int, float)) and self.incarnation is not None and to_inc != self.incarnation:
            self.fenced += 1
            return [Log("info", "message for an earlier incarnation of this node dropped",
                        {"peer": peer, "type": msg_type})]
        self.received += 1
        return self.receive_wire(peer, msg_type, body)

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
        self._incarnations.pop(peer, None)
        return self.origin.peer_down(peer) + self.target.peer_down(peer)

    def peer_up(self, peer: str, incarnation: float | None = None) -> list[Any]:
        if incarnation is not None:
            self._incarnations[peer] = incarnation
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
