"""The transfer actor: the async shell around ``TransferProtocol`` (DESIGN §2 transfer, §3).

It receives the protocol's messages on the node's ROUTER (``node.discovery.endpoint``,
one handler per message type), sends through one DEALER per peer (a sender task per
peer, so a dead peer never blocks the others), feeds topology changes to the
protocol (a member that left, or came back as a new incarnation, is a failed peer),
and carries out the protocol's instructions against the node's store and actors:

- origin side: jobs handed off keep their record here (``target`` = the peer; QUEUED
  until the target starts them, then ACTIVE with progress flowing back); a result is
  applied through the same retry decision as a local one (``queues.core.decide``)
  and acknowledged only after its commit; jobs of a failed peer come back QUEUED
  with a new attempt;
- target side: accepted copies are committed (a jobs row with ``origin`` = the origin,
  plus its attempt in ``transfer_copies``) BEFORE the acknowledgement; they run
  through the normal queues and pool; a final outcome goes to the durable outbox
  (``transfer_outbox``, same transaction that deletes the copy) before it is sent,
  and stays there until the origin acknowledges it.

The actor also serves remote offloading-settings changes (``offload_set``) and
remote submissions, and counts moves for the metrics.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sqlite3
from .. import clock as _clock
from .. import rng as _rng
from collections import deque
from typing import Any, Iterable

import structlog

from ..actor import Actor
from ..errors import Conflict, JobmeshError, NotFound, ValidationError
from ..job import FINAL_STATES, Job, JobState, ResultKind, check_transition
from ..consumers.context import append_log
from ..queues.core import Outcome, decide
from ..store.sqlite import COPY_COLUMNS, JOB_COLUMNS, row_to_job
from .. import wire
from ..blobs.transfer import output_specs, payload_specs, record_copy_payload, record_outputs
from .protocol import (
    MESSAGE_TYPES,
    CommitAccepted,
    CommitResult,
    CommitSubmitted,
    ForgetJob,
    JobRef,
    JobSpec,
    Log,
    MarkAccepted,
    MarkStarted,
    Message,
    Progress,
    ProtocolConfig,
    ReleaseCopies,
    Repaired,
    RequeueLocal,
    ResultItem,
    ScheduleTimer,
    Send,
    StealRequested,
    StopLocal,
    SubmitDone,
    TargetJobState,
    TransferProtocol,
    UpdateProgress,
    VerifyQueued,
)

log = structlog.get_logger("jobmesh.transfer")

SETTINGS_REQUEST = "offload_set"
SETTINGS_REPLY = "offload_set_ack"
SEND_TIMEOUT = 1.0
PER_PEER_QUEUE = 100_000  # messages waiting for one peer's DEALER at most (bounded memory)
PROGRESS_MIN_INTERVAL = 0.05
# Jobs handed to one peer and not resulted yet, at most. Enough to keep a fast peer busy for
# a while; small enough that results come back within the resend delay even when the origin
# applies them slower than the target produces them (beyond, resends only add work).
IN_FLIGHT_PER_PEER = 4096
STARTED_DELAY = 0.05  # s a copy must run before its start is announced (the result repeats it)  # s between two progress messages of one job (log lines are kept)

_KIND_OF_OUTCOME = {"OK": ResultKind.OK, "FAILED": ResultKind.FAILED, "CANCEL": ResultKind.CANCEL,
                    "STOPPED": ResultKind.CANCEL}


class _PeerLink:
    """One peer's DEALER and the task that sends its messages in order."""

    def __init__(self, actor: "TransferActor", name: str, endpoint: str) -> None:
        self.name = name
        self.endpoint = endpoint
        self.queue: deque[Message] = deque()
        self.wakeup = asyncio.Event()
        self.dealer: Any = None
        self._drop_log_at = 0.0
        self.actor = actor
        self.task = asyncio.get_running_loop().create_task(self._send_loop(), name=f"transfer:{actor.node.name}->{name}")

    def put(self, msg: Message) -> None:
        if len(self.queue) >= PER_PEER_QUEUE:
            self.queue.popleft()  # the protocol resends what matters
            self.actor.dropped += 1
        self.queue.append(msg)
        self.wakeup.set()

    async def _send_loop(self) -> None:
        from ..transport import Dealer, PeerUnreachable

        actor = self.actor
        while True:
            if not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            transport = actor.transport()
            if transport is None:
                await asyncio.sleep(0.1)
                continue
            if self.dealer is None:
                self.dealer = Dealer(transport, self.endpoint)
            msg = self.queue.popleft()
            body = msg.to_wire()
            body["from"] = actor.node.name
            body["inc"] = actor.node.started_at
            member = actor._members.get(self.name)
            if member is not None:
                # fencing: a message meant for this incarnation is dropped by a later one (a
                # DEALER delivers what it queued to whichever process binds the endpoint next)
                body["to_inc"] = member[0]
            try:
                await self.dealer.send(msg.TYPE, body, timeout=SEND_TIMEOUT)
                actor.sent += 1
            except PeerUnreachable as e:
                actor.dropped += 1  # the protocol's resend timers cover it
                now = _clock.monotonic()
                if now - self._drop_log_at > 1.0:  # a dead peer must not flood the log
                    self._drop_log_at = now
                    actor.log.info("transfer message not delivered", peer=self.name, type=msg.TYPE,
                                   dropped_total=actor.dropped, error=str(e))
            except wire.WireError as e:
                actor.log.error("transfer message cannot be encoded", type=msg.TYPE, error=e.reason)
            except Exception as e:  # a closed context at shutdown, or a socket error: next message
                if actor.stopping:
                    return
                actor.log.warning("transfer send failed", peer=self.name, error=repr(e))
                await asyncio.sleep(0.05)

    def close(self) -> None:
        self.task.cancel()
        if self.dealer is not None:
            try:
                self.dealer.close()
            except Exception:
                pass
            self.dealer = None


class TransferActor(Actor):
    """Jobs between nodes. Built by the node (hooks set at once), started after discovery."""

    def __init__(self, node: Any, config: ProtocolConfig | None = None) -> None:
        super().__init__("transfer")
        self.node = node
        self.log = log.bind(node=node.name)
        # resends only matter for messages lost on the way (a peer's failure is detected by
        # discovery), so the first resend waits a little longer than the protocol's default:
        # under load an ack that is merely late must not double the work
        cfg = config or ProtocolConfig(resend_initial=2.0, max_in_flight_per_peer=IN_FLIGHT_PER_PEER)
        self.protocol = TransferProtocol(node.name, _clock.monotonic, cfg,
                                         admission=self._admission)
        self._links: dict[str, _PeerLink] = {}
        self._members: dict[str, tuple[float, str]] = {}  # name -> (incarnation, endpoint), live peers
        self._remote: dict[str, Job] = {}  # origin side: job objects of jobs ACTIVE at a peer
        self._stop_requested: dict[str, JobState] = {}
        self._submits: dict[str, asyncio.Future[Any]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._progress_sent: dict[str, tuple[float, int]] = {}  # target side: job -> (time, log lines sent)
        self._progress_pending: set[str] = set()
        self._foreign_batch: list[tuple[Job, Outcome]] = []
        self._foreign_flush = False
        self._restored = False
        self._listening = False
        self._inbox: list[tuple[str, Any]] = []
        self._inbox_scheduled = False
        self._inbox_signaled = False
        self._foreign_signaled = False
        self._start_pending: dict[str, float] = {}
        # target side: copies that ended here and whose STARTED is not sent yet (their result,
        # on its way to the outbox, carries the start: no STARTED message for them)
        self._ended_copies: set[str] = set()
        # origin side: jobs given to ``offer`` and not yet through the protocol, per peer; the
        # offloader's next round must not count that room again (its extra jobs came back home)
        self._offering: dict[str, int] = {}
        self._start_scheduled = False
        self._out_jobs: dict[str, Job] = {}  # origin side: the job objects handed off (no re-reads)
        # target side: the row (seq) of each copy committed by this process; a run of an older,
        # superseded copy of the same job (another row) must not report for the new one
        self._copy_seq: dict[str, int] = {}
        self._restored_peers: set[str] = set()
        self.stopping = False
        self.started_ok = False
        from ..blobs.transfer import PayloadSender
        self._payload_sender: PayloadSender | None = PayloadSender(self) if getattr(node, "blobs", None) else None
        # counters (metrics)
        self.offloaded_out = 0  # jobs accepted by a peer
        self.offloaded_in = 0  # copies accepted here
        self.results_in = 0
        self.results_out = 0
        self.stale_results = 0
        self.requeued = 0
        self.sent = 0
        self.dropped = 0
        self.received = 0
        self.repairs: dict[str, int] = {}  # kind -> count (reconcile repairs; each is a bug found)
        self.copies_released = 0  # restored copies confirmed by their origin
        self.fenced = 0  # messages addressed to an earlier incarnation of this node, dropped
        self._orphans: dict[str, int] = {}  # handed-off records the protocol did not know, last round

    # -- hooks for the engine (called synchronously by the queue actors and the pool) ------------
    def foreign_finished(self, job: Job, outcome: Outcome) -> None:
        """A copy of another node's job ended here (queue actor): outbox, then send."""
        self._foreign_batch.append((job, outcome))
        if len(self._ended_copies) < 100_000:  # bounded: cleared with every STARTED flush
            self._ended_copies.add(job.id)
        if not self._foreign_flush:
            self._foreign_flush = True
            asyncio.get_running_loop().call_soon(self._flush_foreign)

    def _flush_foreign(self) -> None:
        # one signal in the mailbox at a time: the handler takes everything gathered by then,
        # so under load the outbox writes grow into bigger transactions instead of queueing up
        self._foreign_flush = False
        if self._foreign_batch and not self._foreign_signaled:
            self._foreign_signaled = True
            self.tell(("foreign_done",))

    def foreign_started(self, jobs: list[Job]) -> None:
        self.tell(("foreign_started", [(j.id, j.started or _clock.wall()) for j in jobs]))

    def foreign_progress(self, job: Job) -> None:
        """From ``ExecutionContext`` (maybe in a consumer's thread): progress of a copy changed."""
        loop = self._evloop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._progress_changed, job)
        except RuntimeError:
            pass  # loop closed at shutdown

    def _progress_changed(self, job: Job) -> None:
        if job.id in self._progress_pending:
            return
        self._progress_pending.add(job.id)
        last = self._progress_sent.get(job.id)
        delay = 0.0 if last is None else max(0.0, PROGRESS_MIN_INTERVAL - (_clock.monotonic() - last[0]))
        self.tell_later(delay, ("foreign_progress", job))

    async def remote_stop(self, job: Job, state: JobState) -> Job | None:
        """A stop/remove of a job handed to another node (queue actor ``cancel``): a job not
        started there is recorded stopped now (returned); a running one is asked to stop at
        the target and its result records the stop (None)."""
        return await self.ask(("stop", job.id, state), timeout=10.0)

    # -- for the offloader, the node and the metrics -------------------------------------------------
    def offer(self, peer: str, jobs: list[Job]) -> None:
        self._offering[peer] = self._offering.get(peer, 0) + len(jobs)
        self.tell(("offer", peer, jobs))

    def room(self, peer: str) -> int:
        """Jobs ``peer`` may still be given: its room in the protocol less offers not handled yet."""
        return max(0, self.protocol.origin.room(peer) - self._offering.get(peer, 0))

    def waiting_elsewhere(self) -> int:
        """Own jobs handed to a peer and not started there yet (not this node's backlog)."""
        return max(0, self.protocol.origin.in_flight() - len(self._remote))

    def foreign_copies(self) -> int:
        return self.protocol.target.copies()

    def stats(self) -> dict[str, Any]:
        origin = self.protocol.origin
        # every peer we may have handed jobs to: live members, links, peers restored from disk
        peers = (set(self._members) | set(self._links) | self._restored_peers) - {self.node.name}
        return {
            "offloaded_out": self.offloaded_out,
            "offloaded_in": self.offloaded_in,
            "in_flight_out": origin.in_flight(),
            "in_flight_by_peer": {p: origin.in_flight(p) for p in sorted(peers)},
            "copies_in": self.protocol.target.copies(),
            "outbox": len(self.protocol.target.outbox()),
            "results_in": self.results_in,
            "results_out": self.results_out,
            "stale_results": self.stale_results,
            "requeued": self.requeued,
            "queue_depth": self.mailbox_size + sum(len(l.queue) for l in self._links.values()),
            "messages_sent": self.sent,
            "messages_dropped": self.dropped,
            "messages_received": self.received,
            "reconcile_rounds": origin.rounds,
            "copies_held": self.protocol.target.held(),
            "copies_released": self.copies_released,
            "repairs": dict(self.repairs),
        }

    def transport(self) -> Any:
        d = self.node.discovery
        return None if d is None else getattr(d, "transport", None)

    # -- lifecycle --------------------------------------------------------------------------------
    _evloop: asyncio.AbstractEventLoop | None = None

    async def on_start(self) -> None:
        self._evloop = asyncio.get_running_loop()
        self.stopping = False
        d = self.node.discovery
        if d is not None:
            for t in MESSAGE_TYPES:
                d.endpoint.register(t, self._on_wire)
            d.endpoint.register(SETTINGS_REQUEST, self._on_settings_request)
            wire.register_type(SETTINGS_REPLY)
        if not self._restored:
            self._restored = True
            await self._restore()
        if d is not None and not self._listening:
            self._listening = True  # once: an actor restart after a crash keeps the listener
            d.add_listener(self._on_topology)
            # peers we had jobs with before a restart and that never show up: failed
            wait = 2 * float(self.node.config.discovery.heartbeat_timeout) + 1.0
            self.tell_later(wait, ("absent_check",))
            self.tell_later(self.protocol.cfg.reconcile_interval, ("consistency",))
        self.started_ok = True

    async def _check_handed_off(self) -> None:
        """Level-triggered repair at the origin: every job whose record says it was handed to a
        peer must be in flight there in the protocol under that attempt. One that is not on two
        rounds in a row (a transition that left them apart) comes home, logged and counted."""
        origin = self.protocol.origin
        found: dict[str, int] = {}
        for job_id, job in self._out_jobs.items():
            st = origin.job_state(job_id)
            if job.state in (JobState.QUEUED, JobState.ACTIVE) and (st is None or st[0] != job.target
                                                                      or st[1] != job.attempt):
                found[job_id] = job.attempt
        orphans = [self._out_jobs[i] for i, a in found.items() if self._orphans.get(i) == a]
        self._orphans = {i: a for i, a in found.items() if i not in {j.id for j in orphans}}
        if not orphans:
            return
        self.repairs["handoff_orphaned"] = self.repairs.get("handoff_orphaned", 0) + len(orphans)
        self.log.warning("repaired: jobs recorded as handed off that no peer has come home (a missed "
                         "transition; please report it)", count=len(orphans), job_ids=[j.id for j in orphans[:10]])
        for job in orphans:
            self._remote.pop(job.id, None)
        await self._back_home([(j, None) for j in orphans], "recorded as handed off, in flight nowhere")

    async def _absent_check(self) -> None:
        out: list[Any] = []
        for peer in {j for j in self._restored_peers if j not in self._members}:
            self.log.warning("peer from before the restart is not in the topology", peer=peer)
            out += self.protocol.origin.peer_down(peer)
        self._restored_peers.clear()
        await self._exec(out)

    async def on_stop(self) -> None:
        self.stopping = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None
        for link in self._links.values():
            link.close()
        self._links.clear()

    def _on_wire(self, identity: bytes, msg: wire.Message) -> None:
        """Messages that arrive in one loop iteration are handled together: their commits
        (copies at a target, results at an origin) share one transaction."""
        self._inbox.append((msg.type, msg.body))
        if not self._inbox_scheduled:
            self._inbox_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_inbox)
        return None

    def _flush_inbox(self) -> None:
        self._inbox_scheduled = False
        if self._inbox and not self._inbox_signaled:
            self._inbox_signaled = True  # the handler takes all that arrived until it runs
            self.tell(("wire",))

    # -- messages -------------------------------------------------------------------------------
    async def receive(self, msg: Any) -> Any:
        kind = msg[0]
        if kind == "wire":
            self._inbox_signaled = False
            batch, self._inbox = self._inbox, []
            out = []
            for msg_type, body in batch:
                peer = body.get("from")
                if not isinstance(peer, str) or not peer:
                    self.log.warning("transfer message without sender dropped", type=msg_type)
                    continue
                inc = body.get("inc")
                known = self._members.get(peer)
                if known is not None and isinstance(inc, (int, float)) and inc < known[0]:
                    self.log.info("message from an old incarnation dropped", peer=peer, type=msg_type)
                    continue
                to_inc = body.get("to_inc")
                if isinstance(to_inc, (int, float)) and to_inc != self.node.started_at:
                    self.fenced += 1
                    self.log.info("message for an earlier incarnation of this node dropped", peer=peer,
                                  type=msg_type)
                    continue
                self.received += 1
                out += self.protocol.receive_wire(peer, msg_type, body)
            await self._exec(out)
        elif kind == "timer":
            self._timer = None
            self._timer_at = None
            await self._exec(self.protocol.on_timer())
        elif kind == "topology":
            await self._topology(msg[1])
        elif kind == "offer":
            try:
                await self._offer(msg[1], msg[2])
            finally:
                left = self._offering.get(msg[1], 0) - len(msg[2])
                if left > 0:
                    self._offering[msg[1]] = left
                else:
                    self._offering.pop(msg[1], None)
        elif kind == "foreign_done":
            self._foreign_signaled = False
            batch, self._foreign_batch = self._foreign_batch, []
            if batch:
                await self._foreign_done(batch)
        elif kind == "foreign_started":
            # announced a moment later, and only if still running: a short job's result
            # says it all, and saves the origin a message and a write per job
            pending, ended = self._start_pending, self._ended_copies
            for job_id, at in msg[1]:
                if job_id not in ended:
                    pending[job_id] = at
            if pending and not self._start_scheduled:
                self._start_scheduled = True
                self.tell_later(STARTED_DELAY, ("flush_started",))
        elif kind == "flush_started":
            self._start_scheduled = False
            pending, self._start_pending = self._start_pending, {}
            ended, self._ended_copies = self._ended_copies, set()
            out: list[Any] = []
            for job_id, at in pending.items():
                if job_id in ended:
                    continue  # ended here already: its result says when it started
                st = self.protocol.target.copy_state(job_id)
                if st is not None and st[2] is TargetJobState.COMMITTED:
                    out += self.protocol.target.started(job_id, st[1], at)
            await self._exec(out)
        elif kind == "foreign_progress":
            await self._foreign_progress(msg[1])
        elif kind == "stop":
            _, job_id, state = msg
            return await self._stop_job(job_id, state)
        elif kind == "send":  # a message decided elsewhere (the offloader's steal request)
            self._send(msg[1], msg[2])
        elif kind == "result_again":  # its output payload arrived: commit it now (jobmesh.blobs)
            from .protocol import Result
            await self._exec(self.protocol.origin.receive(msg[1], Result((msg[2],))))
        elif kind == "absent_check":
            await self._absent_check()
        elif kind == "consistency":
            self.tell_later(self.protocol.cfg.reconcile_interval, ("consistency",))
            await self._check_handed_off()
        elif kind == "submit":
            _, peer, request_id, topic, props = msg
            await self._exec(self.protocol.origin.submit(peer, request_id, topic, props))
        else:
            raise ValueError(f"transfer: unknown message {kind!r}")
        return None

    # -- the instruction interpreter -------------------------------------------------------------------
    async def _exec(self, instructions: Iterable[Any]) -> None:
        results: list[tuple[str, ResultItem]] = []
        accepted: dict[str, dict[str, JobSpec]] = {}
        forget: list[tuple[str, int]] = []
        held: list[str] = []
        for ins in instructions:
            if isinstance(ins, CommitResult):
                results.append((ins.peer, ins.result))  # committed together, after the others
                continue
            if isinstance(ins, CommitAccepted):
                # One row per job: a later handoff of a job in this batch superseded the earlier
                # attempt (the protocol forgot it), so the last spec wins. Both in one INSERT
                # failed on UNIQUE jobs.id and refused the whole batch (sim seed 7).
                specs = accepted.setdefault(ins.origin, {})
                for spec in ins.jobs:
                    specs.pop(spec.id, None)
                    specs[spec.id] = spec
                continue
            if isinstance(ins, ForgetJob):
                forget.append((ins.id, ins.attempt))  # one transaction for all of them
                if ins.held:
                    held.append(ins.id)
                continue
            try:
                await self._do(ins)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("transfer instruction failed", instruction=type(ins).__name__)
        if forget:
            await self._forget(forget, held)
        for origin, specs in accepted.items():
            try:
                await self._commit_copies(origin, tuple(specs.values()))
            except Exception:
                self.log.exception("committing copies failed", origin=origin)
        if results:
            await self._commit_results(results)

    async def _do(self, ins: Any) -> None:
        if isinstance(ins, Send):
            self._send(ins.peer, ins.message)
        elif isinstance(ins, ScheduleTimer):
            self._arm(ins.at)
        elif isinstance(ins, Log):
            getattr(self.log, ins.level if ins.level in ("debug", "info", "warning", "error") else "info")(
                ins.event, **ins.fields)
            if ins.event == "stale_result_ignored":
                self.stale_results += int(ins.fields.get("count", 1))
        elif isinstance(ins, CommitAccepted):
            await self._commit_copies(ins.origin, ins.jobs)
        elif isinstance(ins, MarkAccepted):
            self.offloaded_out += len(ins.jobs)
        elif isinstance(ins, MarkStarted):
            await self._mark_started(ins.peer, ins.id, ins.attempt, ins.at)
        elif isinstance(ins, UpdateProgress):
            self._update_progress(ins.peer, ins.progress)
        elif isinstance(ins, RequeueLocal):
            await self._requeue(ins.jobs, ins.reason, ins.peer)
        elif isinstance(ins, ForgetJob):
            await self._forget([(ins.id, ins.attempt)])
        elif isinstance(ins, StopLocal):
            await self._stop_local(ins.id, ins.reason)
        elif isinstance(ins, CommitSubmitted):
            await self._commit_submitted(ins)
        elif isinstance(ins, SubmitDone):
            fut = self._submits.pop(ins.request_id, None)
            if fut is not None and not fut.done():
                fut.set_result((ins.job_id, ins.error))
        elif isinstance(ins, ReleaseCopies):
            await self._release_copies(ins.origin, ins.jobs)
        elif isinstance(ins, VerifyQueued):
            self._verify_queued(ins.jobs)
        elif isinstance(ins, Repaired):
            self.repairs[ins.kind] = self.repairs.get(ins.kind, 0) + ins.count
        elif isinstance(ins, StealRequested):
            off = getattr(self.node, "offloader", None)
            if off is not None:
                off.tell(("steal", ins.peer, ins.count, ins.topics))
        else:
            self.log.warning("unknown transfer instruction", instruction=repr(ins)[:200])

    def _send(self, peer: str, message: Message) -> None:
        member = self._members.get(peer)
        if member is None:
            self.dropped += 1
            return  # not (or no longer) in the topology: the protocol resends when it is back
        link = self._links.get(peer)
        if link is None or link.endpoint != member[1]:
            if link is not None:
                link.close()
            link = self._links[peer] = _PeerLink(self, peer, member[1])
        if self._payload_sender is not None and self._payload_sender.needs(message):
            self._payload_sender.send_after_blobs(peer, message)  # job payload first (jobmesh.blobs)
            return
        link.put(message)

    def _arm(self, at: float) -> None:
        if self._timer_at is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        delay = max(0.0, at - _clock.monotonic())
        self._timer = self.tell_later(delay + 0.001, ("timer",))

    # -- topology ----------------------------------------------------------------------------------------
    def _on_topology(self, event: Any) -> None:
        if not self.stopping:
            self.tell(("topology", event.new_view))

    async def _topology(self, view: Any) -> None:
        if view is None:
            return
        now_members = {i.name: (float(i.incarnation), i.endpoint or "") for i in view.instances
                       if i.name != self.node.name}
        out: list[Any] = []
        for name, (inc, ep) in list(self._members.items()):
            new = now_members.get(name)
            if new is None or new[0] != inc:
                # gone, or back as a new incarnation: the old process failed (DESIGN §3)
                del self._members[name]
                link = self._links.pop(name, None)
                if link is not None:
                    link.close()
                self.log.info("peer down", peer=name, reason="left" if new is None else "new incarnation")
                out += self.protocol.peer_down(name)
        for name, (inc, ep) in now_members.items():
            if name not in self._members and ep:
                self._members[name] = (inc, ep)
                out += self.protocol.peer_up(name)
        await self._exec(out)

    # -- origin side --------------------------------------------------------------------------------------
    async def _offer(self, peer: str, jobs: list[Job]) -> None:
        """Hand ``jobs`` (taken out of a queue window) to ``peer``: the record says so first."""
        store = self.node.store
        specs: list[JobSpec] = []
        payloads = payload_specs(self.node.blobs.store, [j.id for j in jobs])
        for job in jobs:
            job.attempt += 1  # every handoff is a new attempt
            job.target = peer
            specs.append(JobSpec(job.id, job.attempt, job.topic, job.properties, job.queue, job.retry_count,
                                 job.max_retries, job.origin, job.created, job.timeout, job.priority,
                                 payloads.get(job.id)))
        if not jobs:
            return
        for job in jobs:
            self._out_jobs[job.id] = job
        try:
            await store.update_many(jobs)
        except Exception as e:
            self.log.error("could not record the handoff; jobs stay here", jobs=len(jobs), error=repr(e))
            await self._back_home([(j, None) for j in jobs], "handoff not recorded")
            return
        await self._exec(self.protocol.origin.offer(peer, specs))

    async def _stop_job(self, job_id: str, state: JobState) -> Job | None:
        job = self._out_jobs.get(job_id) or self.node.store.get(job_id)
        if job is None or job.state in FINAL_STATES:
            return job
        recorded: Job | None = None
        if job.state is JobState.QUEUED:
            old = job.state
            job.state = state
            job.finished = _clock.wall()
            await self.node.store.update(job)
            self.node.jobs.tell(("transitions", [(job, old, state, None, "STOPPED")]))
            recorded = copy.copy(job)
            self._out_jobs.pop(job_id, None)
            await self._exec(self.protocol.origin.withdraw(job_id))  # final here: the attempt goes
            return recorded
        self._stop_requested[job_id] = state
        await self._exec(self.protocol.origin.stop(job_id))
        return recorded

    async def _mark_started(self, peer: str, job_id: str, attempt: int, at: float) -> None:
        job = self._out_jobs.get(job_id) or self.node.store.get(job_id)
        if job is None or job.state is not JobState.QUEUED or job.target != peer or job.attempt != attempt:
            return
        self._start_remote(job, peer, at)
        await self.node.store.update(job)

    def _start_remote(self, job: Job, peer: str, at: float,
                      started: list[tuple[Job, float]] | None = None) -> None:
        """The job runs at ``peer``; the manager is told at once, or with ``started`` (a batch)."""
        now = _clock.wall()
        job.state = JobState.ACTIVE
        job.started = at if 0 < at <= now + 60 else now
        job.finished = None
        job.target = peer
        self._remote[job.id] = job
        waiting_ms = max(0.0, (job.started - max(job.created, job.not_before)) * 1000.0)
        if started is not None:
            started.append((job, waiting_ms))
        else:
            self.node.jobs.tell(("started", [(job, waiting_ms)]))

    def _update_progress(self, peer: str, p: Progress) -> None:
        job = self._remote.get(p.id)
        if job is None:
            # progress before the (delayed or lost) start message: it proves the start
            job = self._out_jobs.get(p.id)
            if job is None or job.state is not JobState.QUEUED or job.target != peer or job.attempt != p.attempt:
                return
            self._start_remote(job, peer, _clock.wall())
        if p.steps is not None:
            job.progress.steps = p.steps
        if p.step is not None:
            job.progress.step = p.step
        if p.eta is not None:
            job.progress.eta = p.eta
        for line in p.log:
            append_log(job, line)
        self.node.store.update(job)  # group-committed; best effort like the message itself

    async def _commit_results(self, items: list[tuple[str, ResultItem]]) -> None:
        """Apply results through the local retry decision; ack after the commit."""
        store, jobs_actor = self.node.store, self.node.jobs
        now = _clock.wall()
        transitions: list[tuple[Any, ...]] = []
        requeue: list[Job] = []
        refs: list[JobRef] = []
        newly_started: list[tuple[Job, float]] = []  # results proving starts never announced: one message
        if self._payload_sender is not None:
            items = self._payload_sender.outputs_here(items)  # the others wait for their output payload
        for peer, r in items:
            refs.append(JobRef(r.id, r.attempt))
            self._remote.pop(r.id, None)
            job = self._out_jobs.pop(r.id, None) or store.get(r.id)
            if job is None or job.state in FINAL_STATES or job.target != peer or job.attempt != r.attempt:
                self.stale_results += 1
                self.log.info("result not applied", job_id=r.id, attempt=r.attempt, peer=peer,
                              reason="unknown job" if job is None else f"job is {job.state.value}")
                continue
            if job.state is JobState.QUEUED:  # the STARTED message was lost: the result proves the start
                self._start_remote(job, peer, r.started or now, newly_started)
                self._remote.pop(job.id, None)
            stop_state = self._stop_requested.pop(job.id, None)
            if stop_state is not None and r.kind is not ResultKind.OK:
                outcome = Outcome("STOPPED", r.message, stop_state=stop_state)
            else:
                outcome = Outcome(r.kind.value, r.message, r.retry_delay)
            queue = self.node.queue_config(job.queue)
            d = decide(job, outcome, queue, now)
            old = job.state
            check_transition(old, d.state)
            started = job.started
            job.state = d.state
            job.finished = d.finished
            job.retry_count = d.retry_count
            job.not_before = d.not_before
            if d.message is not None or d.state is JobState.SUCCEEDED:
                job.result_message = d.message
            if d.state is JobState.SUCCEEDED:
                job.result = r.result  # the consumer's return value (a workflow step's output), made at the target
                if r.output_payload:
                    record_outputs(self.node.blobs.store, job, r.output_payload)
            if r.log:
                job.progress.log = list(r.log)[-1000:]
            if d.state is JobState.QUEUED:
                job.target = None  # back in this node's windows; the next start is a new attempt
                requeue.append(job)
            self.results_in += 1
            proc_ms = None
            if r.started is not None and r.finished is not None:
                proc_ms = max(0.0, (r.finished - r.started) * 1000.0)
            elif started is not None:
                proc_ms = max(0.0, (now - started) * 1000.0)
            transitions.append((job, old, d.state, proc_ms, outcome.kind))
            store.update(job)
        try:
            await store.flush()
        except Exception as e:
            for ref in refs:
                await self._exec(self.protocol.origin.result_commit_failed(ref, repr(e)))
            return
        if newly_started:
            jobs_actor.tell(("started", newly_started))
        if transitions:
            jobs_actor.tell(("transitions", transitions))
        for job in requeue:
            qa = self.node.queue_actor(job.queue)
            if qa is not None:
                qa.tell(("requeue", job))
        await self._exec(self.protocol.origin.result_committed(refs))
        off = self.node.offloader
        if off is not None and any(self.protocol.origin.room(p) >= self.protocol.cfg.max_in_flight_per_peer // 4
                                   for p in {peer for peer, _ in items}):
            off.tell(("kick",))  # room for a good batch at that peer: no need to wait for the tick

    async def _requeue(self, refs: tuple[JobRef, ...], reason: str, peer: str | None) -> None:
        pairs: list[tuple[Job, JobRef | None]] = []
        for ref in refs:
            self._remote.pop(ref.id, None)
            job = self._out_jobs.pop(ref.id, None) or self.node.store.get(ref.id)
            if job is None:
                continue
            if job.state not in (JobState.QUEUED, JobState.ACTIVE) or (peer is not None and job.target != peer):
                continue
            pairs.append((job, ref))
        if pairs:
            self.log.info("jobs back home", jobs=len(pairs), peer=peer, reason=reason)
        await self._back_home(pairs, reason)

    async def _back_home(self, pairs: list[tuple[Job, JobRef | None]], reason: str) -> None:
        transitions = []
        for job, _ in pairs:
            old = job.state
            job.target = None
            if old is JobState.ACTIVE:
                job.state = JobState.QUEUED
                job.started = None
                transitions.append((job, old, JobState.QUEUED, None, "ABORTED"))
            self._stop_requested.pop(job.id, None)
            self._out_jobs.pop(job.id, None)
        if not pairs:
            return
        self.requeued += len(pairs)
        try:
            await self.node.store.update_many([j for j, _ in pairs])
        except Exception as e:
            self.log.error("could not record jobs coming home; they come back after a restart", error=repr(e))
            return
        if transitions:
            self.node.jobs.tell(("transitions", transitions))
        for job, _ in pairs:
            qa = self.node.queue_actor(job.queue)
            if qa is not None:
                qa.tell(("requeue", job))

    # -- target side --------------------------------------------------------------------------------------
    def _admission(self, spec: JobSpec) -> str | None:
        node = self.node
        if self.stopping or not node.jobs.accepting:
            return "node is shutting down"
        if not node.pool.index.has_consumer(spec.topic):
            return f"no consumer for {spec.topic}"
        if not node.offload_settings.allows(spec.topic):
            return f"topic {spec.topic} is disabled here"
        if spec.payload:  # the origin pushes the payload before the handoff: it must be here
            missing = node.blobs.store.missing(r["id"] for r in spec.payload.values())
            if missing:
                return f"payload not here: {missing[0]}"
        return None

    async def _commit_copies(self, origin: str, specs: tuple[JobSpec, ...]) -> None:
        node, store = self.node, self.node.store
        now = _clock.wall()
        jobs: list[Job] = []
        seq = store.reserve_seqs(len(specs))
        rows, copies = [], []
        for i, s in enumerate(specs):
            q = node.jobs.matcher.match(s.topic)
            job = Job(id=s.id, topic=s.topic, properties=dict(s.properties), queue=q.name, origin=origin,
                      created=s.created or now, retry_count=s.retry_count, max_retries=s.max_retries,
                      attempt=0, seq=seq + i, timeout=s.timeout, priority=s.priority)
            jobs.append(job)
            rows.append((job.seq, job.id, job.topic, job.queue, "QUEUED", json.dumps(job.properties) if job.properties else "{}", origin,
                         None, job.created, None, None, job.retry_count, job.max_retries, 0, 0.0, None, None,
                         job.timeout, job.priority))
            copies.append((s.id, origin, s.attempt))

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM jobs WHERE id=? AND origin!=?", [(c[0], node.name) for c in copies])
            conn.executemany(f"INSERT INTO jobs ({COPY_COLUMNS}) VALUES ({', '.join('?' * 19)})", rows)
            conn.executemany("INSERT OR REPLACE INTO transfer_copies (job_id, origin, attempt) VALUES (?,?,?)",
                             copies)

        refs = [JobRef(s.id, s.attempt) for s in specs]
        try:
            record_copy_payload(node.blobs.store, specs)  # before the copies: a crash leaves only references
            await store.call(write)
        except Exception as e:
            self.log.error("could not commit accepted copies; refused", origin=origin, jobs=len(specs), error=repr(e))
            await self._exec(self.protocol.target.commit_failed(origin, refs, f"store error: {e}"))
            return
        self.offloaded_in += len(jobs)
        for job in jobs:
            self._copy_seq[job.id] = job.seq
        await self._exec(self.protocol.target.committed(origin, refs))
        node.jobs.tell(("foreign_added", jobs))
        if node.offloader is not None:
            node.offloader.tell(("received", origin, len(jobs)))

    async def _release_copies(self, origin: str, refs: tuple[JobRef, ...]) -> None:
        """Restored copies their origin confirmed: no longer held, into their queues' windows."""
        store = self.node.store
        pairs = [(r.id, r.attempt) for r in refs]

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany("UPDATE transfer_copies SET held=0 WHERE job_id=? AND attempt=?", pairs)

        try:
            await store.call(write)
        except Exception as e:  # they stay held on disk; the next round's verify puts them back
            self.log.error("could not release confirmed copies", origin=origin, jobs=len(pairs), error=repr(e))
            return
        by_queue: dict[str, list[Job]] = {}
        for job_id, _ in pairs:
            job = store.get(job_id)
            if job is not None and job.state is JobState.QUEUED and job.origin == origin:
                by_queue.setdefault(job.queue, []).append(job)
        for queue, jobs in by_queue.items():
            qa = self.node.queue_actor(queue)
            if qa is not None:
                qa.tell(("copies", jobs))
        self.copies_released += len(pairs)
        self.log.info("restored copies confirmed by their origin; they may run", origin=origin, count=len(pairs))

    def _verify_queued(self, jobs: tuple[tuple[str, str], ...]) -> None:
        """Copies that should be queued or running here: their queues check (and repair)."""
        by_queue: dict[str, list[str]] = {}
        matcher = self.node.jobs.matcher
        for job_id, topic in jobs:
            by_queue.setdefault(matcher.match(topic).name, []).append(job_id)
        for queue, ids in by_queue.items():
            qa = self.node.queue_actor(queue)
            if qa is not None:
                qa.tell(("verify", ids))

    async def _foreign_done(self, batch: list[tuple[Job, Outcome]]) -> None:
        """Copies that ended here: their results go to the outbox (deleting the copy), then out."""
        items: list[ResultItem] = []
        final_progress: list[Progress] = []
        rows: list[tuple[str, str, int, str]] = []
        done: list[tuple[Job, JobState]] = []
        now = _clock.wall()
        outputs = output_specs(self.node.blobs.store, [j.id for j, o in batch if o.kind == "OK"])
        for job, outcome in batch:
            done.append((job, job.state))
            current = self._copy_seq.get(job.id)
            if current is not None and current != job.seq:
                self.log.info("run of a superseded copy ended; not reported", job_id=job.id)
                continue
            self._copy_seq.pop(job.id, None)
            st = self.protocol.target.copy_state(job.id)
            self._progress_sent.pop(job.id, None)
            if st is None:
                self.log.info("copy ended but the origin no longer wants it", job_id=job.id)
                rows.append((job.id, "", -1, ""))  # just delete the copy
                continue
            origin, attempt, _ = st
            log_lines = tuple([*job.progress.log, *outcome.log][-1000:])
            message = outcome.message
            if outcome.kind == "STOPPED" and message is None:
                message = "stopped"
            item = ResultItem(job.id, attempt, _KIND_OF_OUTCOME.get(outcome.kind, ResultKind.FAILED), message,
                              outcome.retry_delay, job.started, now, log_lines,
                              result=outcome.result if outcome.kind == "OK" else None,
                              output_payload=outputs.get(job.id) if outcome.kind == "OK" else None)
            items.append(item)
            rows.append((job.id, origin, attempt, json.dumps(item.to_wire())))
            p = job.progress
            if p.steps is not None or p.step or p.eta is not None:
                # the final steps go just ahead of the result (same DEALER, in order); the
                # result itself carries only the log
                final_progress.append(Progress(job.id, attempt, p.steps, p.step, p.eta, ()))

        me = self.node.name

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM jobs WHERE id=? AND origin!=?", [(r[0], me) for r in rows])
            conn.executemany("INSERT OR REPLACE INTO transfer_outbox (job_id, origin, attempt, body) "
                             "VALUES (?,?,?,?)", [r for r in rows if r[2] >= 0])
            conn.executemany("DELETE FROM transfer_copies WHERE job_id=?", [(r[0],) for r in rows if r[2] < 0])

        try:
            await self.node.store.call(write)
        except Exception as e:
            self.log.error("could not write results to the outbox; copies run again after a restart",
                           jobs=len(rows), error=repr(e))
            return
        self.node.jobs.tell(("foreign_done", done))
        self.results_out += len(items)
        out: list[Any] = []
        for prog in final_progress:
            out += self.protocol.target.progress(prog)
        await self._exec(out + self.protocol.target.results_ready(items))

    async def _foreign_progress(self, job: Job) -> None:
        self._progress_pending.discard(job.id)
        st = self.protocol.target.copy_state(job.id)
        if st is None:
            return
        last = self._progress_sent.get(job.id)
        sent_lines = last[1] if last is not None else 0
        lines = job.progress.log
        new_lines = tuple(lines[sent_lines:]) if sent_lines <= len(lines) else tuple(lines[-10:])
        self._progress_sent[job.id] = (_clock.monotonic(), len(lines))
        p = job.progress
        msg = Progress(job.id, st[1], p.steps, p.step, p.eta, new_lines)
        await self._exec(self.protocol.target.progress(msg))

    async def _forget(self, refs: list[tuple[str, int]], held: list[str] = ()) -> None:  # type: ignore[assignment]
        """The origin has these results (or no longer wants the copies): delete copy and outbox entry.
        Held copies never entered a queue, so their going is counted here (statistics)."""
        me = self.node.name
        for job_id, _ in refs:
            self._progress_sent.pop(job_id, None)
            self._copy_seq.pop(job_id, None)

        def write(conn: sqlite3.Connection) -> list[Job]:
            gone: list[Job] = []
            for job_id in held:
                row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id=? AND origin!=? AND state='QUEUED'",
                                   (job_id, me)).fetchone()
                if row is not None:
                    gone.append(row_to_job(row))
            conn.executemany("DELETE FROM transfer_outbox WHERE job_id=? AND attempt=?", refs)
            conn.executemany("DELETE FROM transfer_copies WHERE job_id=? AND attempt=?", refs)
            conn.executemany("DELETE FROM jobs WHERE id=? AND origin!=? AND state IN ('QUEUED','STOPPED','DROPPED')",
                             [(job_id, me) for job_id, _ in refs])
            return gone

        try:
            gone = await self.node.store.call(write)
        except Exception as e:
            self.log.warning("could not forget copies", jobs=len(refs), error=repr(e))
            return
        if gone:
            self.node.jobs.tell(("foreign_done", [(j, JobState.QUEUED) for j in gone]))

    async def _stop_local(self, job_id: str, reason: str) -> None:
        job = self.node.store.get(job_id)
        if job is None or job.origin == self.node.name:
            return
        qa = self.node.queue_actor(job.queue)
        if qa is None:
            return
        try:
            await qa.ask(("cancel", job_id, JobState.STOPPED), timeout=5.0)
        except Exception as e:
            self.log.info("local stop of a copy failed", job_id=job_id, reason=reason, error=repr(e))

    async def _commit_submitted(self, ins: CommitSubmitted) -> None:
        try:
            job = await self.node.jobs.add(ins.topic, ins.properties)
        except JobmeshError as e:
            await self._exec(self.protocol.target.submit_failed(ins.peer, ins.request_id, str(e)))
            return
        await self._exec(self.protocol.target.submit_committed(ins.peer, ins.request_id, job.id))

    # -- remote submission ---------------------------------------------------------------------------
    async def submit(self, peer: str, topic: str, properties: dict[str, Any] | None,
                     timeout: float = 30.0) -> str:
        """Add a job on ``peer`` (it becomes the job's origin); returns the job id."""
        rid = _rng.token_hex(16)
        fut = asyncio.get_running_loop().create_future()
        self._submits[rid] = fut
        self.tell(("submit", peer, rid, topic, properties or {}))
        try:
            job_id, error = await asyncio.wait_for(fut, timeout)
        finally:
            self._submits.pop(rid, None)
        if error is not None:
            raise Conflict(error)
        return job_id

    # -- remote settings ---------------------------------------------------------------------------------
    async def _on_settings_request(self, identity: bytes, msg: wire.Message) -> tuple[str, dict[str, Any]]:
        body = msg.body
        topic, mode = body.get("topic"), body.get("mode")
        if not isinstance(topic, str) or not isinstance(mode, str):
            raise ValidationError("offload_set needs topic and mode")
        result = await self.node.set_offloading(self.node.name, topic, mode)
        return SETTINGS_REPLY, {"result": result}

    async def forward_settings(self, node_name: str, topic: str, mode: str, timeout: float = 5.0) -> dict[str, Any]:
        from ..transport import Dealer, PeerUnreachable, RequestTimeout

        inst = self.node.topology.instance(node_name)
        if inst is None or not inst.endpoint:
            raise NotFound(f"node {node_name} is not in the topology")
        transport = self.transport()
        if transport is None:
            raise Conflict("transfer is not running")
        dealer = Dealer(transport, inst.endpoint)
        try:
            reply = await dealer.request(SETTINGS_REQUEST, {"from": self.node.name, "topic": topic, "mode": mode},
                                         timeout)
        except (PeerUnreachable, RequestTimeout) as e:
            raise Conflict(f"node {node_name} did not answer: {e}") from None
        finally:
            dealer.close()
        if reply.type == "error":
            raise ValidationError(str(reply.body.get("error")))
        result = reply.body.get("result")
        return result if isinstance(result, dict) else {"node": node_name, "topic": topic, "mode": mode}

    # -- restart ------------------------------------------------------------------------------------------
    async def _restore(self) -> None:
        """Rebuild both sides from the store: jobs handed off, copies held, the outbox."""
        store, me = self.node.store, self.node.name
        reader = store.reader
        by_peer: dict[str, list[JobSpec]] = {}
        rows = [row_to_job(row) for row in reader.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE origin=? AND target IS NOT NULL AND target!=? "
                "AND state IN ('QUEUED','ACTIVE')", (me, me))]
        payloads = payload_specs(self.node.blobs.store, [j.id for j in rows])
        for job in rows:
            self._out_jobs[job.id] = job
            if job.state is JobState.ACTIVE:
                self._remote[job.id] = job
            by_peer.setdefault(job.target or "", []).append(
                JobSpec(job.id, job.attempt, job.topic, job.properties, job.queue, job.retry_count,
                        job.max_retries, job.origin, job.created, job.timeout, job.priority,
                        payloads.get(job.id)))
        out: list[Any] = []
        self._restored_peers = set(by_peer)
        for peer, specs in by_peer.items():
            # not "accepted": resending the handoff (idempotent) tells us whether the peer still has them
            out += self.protocol.origin.restore(peer, specs, accepted=False)
        copies: dict[str, list[JobSpec]] = {}
        for job_id, origin, attempt, topic, props in reader.execute(
                "SELECT c.job_id, c.origin, c.attempt, j.topic, j.properties FROM transfer_copies c "
                "JOIN jobs j ON j.id=c.job_id WHERE j.state IN ('QUEUED','ACTIVE')"):
            copies.setdefault(origin, []).append(JobSpec(job_id, attempt, topic, json.loads(props), origin=origin))
        outbox: dict[str, list[ResultItem]] = {}
        for job_id, origin, attempt, body in reader.execute(
                "SELECT job_id, origin, attempt, body FROM transfer_outbox"):
            try:
                outbox.setdefault(origin, []).append(ResultItem.from_wire(json.loads(body)))
            except Exception as e:
                self.log.error("unreadable outbox entry dropped", job_id=job_id, error=repr(e))
        for origin in set(copies) | set(outbox):
            out += self.protocol.target.restore(origin, copies.get(origin, []), outbox.get(origin, []))
        # until discovery says they are up, every peer is down (nothing is sent to an unknown endpoint)
        for peer in set(by_peer) | set(copies) | set(outbox):
            self.protocol.target.peer_down(peer)
        n_out = sum(len(v) for v in by_peer.values())
        n_copies = sum(len(v) for v in copies.values())
        n_outbox = sum(len(v) for v in outbox.values())
        if n_out or n_copies or n_outbox:
            self.log.info("transfer state restored", handed_off=n_out, copies=n_copies, outbox=n_outbox)
        await self._exec(out)


__all__ = ["TransferActor", "SETTINGS_REQUEST", "SETTINGS_REPLY"]
