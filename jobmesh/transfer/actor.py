"""The transfer actor: the async shell around ``TransferProtocol`` (DESIGN §2 transfer, §3).

Everything it decides, ``protocol.py`` decides; everything that happens to a job's row, the
engine does (``engine.core``). What is left here is I/O:

- in: protocol messages from the node's ROUTER (one mailbox signal per loop turn for all
  that arrived: their commits share a transaction), fenced and decoded by the protocol;
  topology changes (a member that left or came back as a new incarnation failed); the
  engine's messages (``engine.instructions.TO_TRANSFER``) and the offloader's
  (``RoomsRequested``, ``PlanMove``, ``SendSteal``);
- out: the protocol's instructions, carried out through one table (``DISPATCH``; an unknown
  instruction raises): ``Send`` through the peer links (``links.py``); what concerns job
  rows as engine events (``CopiesAccepted``, ``RemoteResults``, ``HandoffReturned`` ...);
  the held flags of restored copies through ``store.transfer.TransferStore``;
- job payload (``blobs.transfer``): a handoff's inputs and a result's outputs go to the peer
  before the message naming them (``PayloadSender``), a copy is admitted only with its inputs
  here, a result is committed only with its outputs here (else they are fetched first);
- remote submission; the restore of both protocol sides from the store after a restart
  (``restore.py``) and the remote-settings RPC (``offload_set``, ``settings.py``) are
  modules of their own that the actor calls.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import structlog

from .. import clock as _clock
from .. import rng as _rng
from .. import wire
from ..actor import Actor
from ..blobs.transfer import PayloadSender, with_payload
from ..engine import events as ev
from ..engine import instructions as ei
from ..errors import Conflict, JobmeshError
from ..store.transfer import TransferStore
from .links import PeerLinks
from .requests import (AbsentCheck, HandoffNotDelivered, PlanMove, ResultAgain, RoomsRequested, SendSteal,
                       SubmitAdded, SubmitRequested, TimerDue, TopologyChanged, WireArrived)
from .protocol import (MESSAGE_TYPES, CommitAccepted, CommitResult, CommitSubmitted, ForgetJob, JobRef, JobSpec, Log,
                       MarkAccepted, MarkStarted, Message, Progress, ProtocolConfig, Result, ReleaseCopies, Repaired,
                       RequeueLocal, RoomFreed, ScheduleTimer, Send, StealRequested, StopLocal, SubmitDone,
                       TransferProtocol, UpdateProgress, VerifyQueued)
from .restore import restore_protocol
from .settings import SETTINGS_REPLY, SETTINGS_REQUEST, RemoteSettings

log = structlog.get_logger("jobmesh.transfer")

# Jobs handed to one peer and not resulted yet, at most. Enough to keep a fast peer busy for
# a while; small enough that results come back within the resend delay even when the origin
# applies them slower than the target produces them (beyond, resends only add work).
IN_FLIGHT_PER_PEER = 4096


class TransferHost(Protocol):
    """What the transfer actor needs from its node (given at construction)."""

    name: str
    config: Any
    started_at: float  # this process's incarnation
    discovery: Any  # .endpoint (the ROUTER), .transport, .add_listener; None before it starts
    engine: Actor
    offloader: Any
    jobs: Any  # the API facade: remote submissions are added through it
    store: Any
    blobs: Any  # the BlobActor (job payload): ``store``, ``ensure``, ``fetch``

    def admits(self, topic: str) -> str | None: ...  # why a copy of a job of ``topic`` is refused here

    async def set_offloading(self, node_name: str, topic: str, mode: str) -> dict[str, Any]: ...


@dataclass
class _Batch:
    """The engine messages one round of protocol instructions makes, in the protocol's order;
    results and forgotten copies gather into one message each (where the first one stood)."""

    out: list[Any] = field(default_factory=list)
    results: ev.RemoteResults | None = None
    forget: ev.CopiesForgotten | None = None
    stops: list[StopLocal] = field(default_factory=list)


class TransferActor(Actor):
    """Jobs between nodes. Built by the node, started after discovery."""

    def __init__(self, host: TransferHost, config: ProtocolConfig | None = None) -> None:
        super().__init__("transfer")
        self.host = host
        self.log = log.bind(node=host.name)
        # resends only matter for messages lost on the way (a peer's failure is detected by
        # discovery), so the first resend waits a little longer than the protocol's default:
        # under load an ack that is merely late must not double the work
        cfg = config or ProtocolConfig(resend_initial=2.0, max_in_flight_per_peer=IN_FLIGHT_PER_PEER)
        self.protocol = TransferProtocol(host.name, _clock.monotonic, cfg, admission=self._admission,
                                         incarnation=host.started_at)
        self.links = PeerLinks(host.name, lambda: host.started_at, self._transport, self.log)
        self.transfer_store = TransferStore(host.name)
        self.settings = RemoteSettings(host, self._transport)
        self._submits: dict[str, asyncio.Future[Any]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._inbox: list[tuple[str, Any]] = []
        self._inbox_scheduled = False
        self._inbox_signaled = False
        self._restored = False
        self._listening = False
        self._restored_peers: set[str] = set()
        self._topics: dict[str, str] = {}  # held copies' topics (restored): for the statistics when they go
        self.stopping = False
        blobs = getattr(host, "blobs", None)
        self.payload = None if blobs is None else PayloadSender(blobs, self.links.send, self.tell, self.spawn,
                                                                self.log, lambda: self.stopping)
        # counters (metrics)
        self.offloaded_out = 0  # jobs accepted by a peer
        self.offloaded_in = 0  # copies accepted here
        self.results_in = 0
        self.results_out = 0
        self.stale_results = 0
        self.requeued = 0
        self.repairs: dict[str, int] = {}  # kind -> count (reconcile repairs; each is a bug found)
        self.copies_released = 0  # restored copies confirmed by their origin

    # -- for the node and the metrics (reads) ---------------------------------------------------
    @property
    def sent(self) -> int:
        return self.links.sent

    @property
    def dropped(self) -> int:
        return self.links.dropped

    @property
    def received(self) -> int:
        return self.protocol.received

    @property
    def fenced(self) -> int:
        return self.protocol.fenced

    def foreign_copies(self) -> int:
        return self.protocol.target.copies()

    def stats(self) -> dict[str, Any]:
        origin = self.protocol.origin
        # every peer we may have handed jobs to: live members, links, peers restored from disk
        peers = (self.links.names() | self._restored_peers) - {self.host.name}
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
            "queue_depth": self.mailbox_size + self.links.queued(),
            "messages_sent": self.sent,
            "messages_dropped": self.dropped,
            "messages_received": self.received,
            "reconcile_rounds": origin.rounds,
            "copies_held": self.protocol.target.held(),
            "copies_released": self.copies_released,
            "repairs": dict(self.repairs),
        }

    def _transport(self) -> Any:
        d = self.host.discovery
        return None if d is None else getattr(d, "transport", None)

    # -- lifecycle --------------------------------------------------------------------------------
    async def on_start(self) -> None:
        self.protocol.incarnation = self.host.started_at  # this start's (the node sets it as it starts)
        self.stopping = False
        self.links.stopping = False
        d = self.host.discovery
        if d is not None:
            for t in MESSAGE_TYPES:
                d.endpoint.register(t, self._on_wire)
            self.settings.register(d.endpoint)
        if not self._restored:
            self._restored = True
            self._restore()
        if d is not None and not self._listening:
            self._listening = True  # once: an actor restart after a crash keeps the listener
            d.add_listener(self._on_topology)
            # peers we had jobs with before a restart and that never show up: failed
            wait = 2 * float(self.host.config.discovery.heartbeat_timeout) + 1.0
            self.tell_later(wait, AbsentCheck())

    async def on_stop(self) -> None:
        self.stopping = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None
        self.links.close()

    def _admission(self, spec: JobSpec) -> str | None:
        if self.stopping:
            return "node is shutting down"
        why = self.host.admits(spec.topic)
        if why is None and spec.payload:  # the origin pushes the payload before the handoff: it must be here
            missing = self.host.blobs.store.missing(r["id"] for r in spec.payload.values())
            if missing:
                return f"payload not here: {missing[0]}"
        return why

    # -- the mailbox (one handler per message type) ------------------------------------------------
    def receive(self, msg: Any) -> Any:
        handler = _MAILBOX.get(type(msg))
        if handler is None:
            raise TypeError(f"transfer: unknown message {type(msg).__name__}")
        return handler(self, msg)

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
        if self._inbox and not self._inbox_signaled and not self.stopping:
            self._inbox_signaled = True  # the handler takes all that arrived until it runs
            self.tell(WireArrived())

    def _wire_arrived(self, msg: WireArrived) -> None:
        self._inbox_signaled = False
        batch, self._inbox = self._inbox, []
        out: list[Any] = []
        receive = self.protocol.receive_envelope
        for msg_type, body in batch:
            out += receive(msg_type, body)
        self._exec(out)

    def _timer_due(self, msg: TimerDue) -> None:
        self._timer = None
        self._timer_at = None
        self._exec(self.protocol.on_timer())

    def _on_topology(self, event: Any) -> None:
        if not self.stopping:
            self.tell(TopologyChanged(event.new_view))

    def _topology_changed(self, msg: TopologyChanged) -> None:
        if msg.view is None:
            return
        down, up = self.links.update(msg.view)
        out: list[Any] = []
        for name in down:
            out += self.protocol.peer_down(name)
        for name, inc in up:
            out += self.protocol.peer_up(name, inc)
        self._exec(out)

    def _absent_check(self, msg: AbsentCheck) -> None:
        out: list[Any] = []
        for peer in sorted(p for p in self._restored_peers if p not in self.links.members):
            self.log.warning("peer from before the restart is not in the topology", peer=peer)
            out += self.protocol.origin.peer_down(peer)
        self._restored_peers.clear()
        self._exec(out)

    # -- from the offloader ---------------------------------------------------------------------------
    def _rooms(self, msg: RoomsRequested) -> dict[str, int]:
        room = self.protocol.origin.room
        return {p: room(p) for p in sorted(self.links.members)}

    def _plan_move(self, msg: PlanMove) -> None:
        granted = self.protocol.origin.pledge(msg.peer, msg.count)
        if granted > 0:
            self.host.engine.tell(ev.TakeForOffload(msg.queue, msg.topic, granted, msg.peer, msg.ids[:granted],
                                                    msg.keep))

    def _send_steal(self, msg: SendSteal) -> None:
        self.links.send(msg.peer, msg.message)

    # -- from the engine --------------------------------------------------------------------------------
    def _offer(self, msg: ei.OfferJobs) -> None:
        jobs = msg.jobs
        if jobs and self.payload is not None:
            jobs = with_payload(self.host.blobs.store, jobs)  # the handoff names the jobs' input payload
        self._exec(self.protocol.origin.offer(msg.peer, jobs, msg.pledged))

    def _handoff_not_delivered(self, msg: HandoffNotDelivered) -> None:
        self._exec(self.protocol.origin.receive(msg.peer, msg.ack))

    def _result_again(self, msg: ResultAgain) -> None:
        self._exec(self.protocol.origin.receive(msg.peer, Result((msg.item,))))

    def _stop_remote(self, msg: ei.StopRemote) -> None:
        origin = self.protocol.origin
        self._exec(origin.withdraw(msg.job_id) if msg.withdraw else origin.stop(msg.job_id))

    def _check_away(self, msg: ei.CheckAway) -> None:
        self._exec(self.protocol.origin.check_records(msg.records))

    def _results_recorded(self, msg: ei.ResultsRecorded) -> None:
        self.stale_results += msg.stale
        self.results_in += len(msg.refs) - msg.stale
        self._exec(self.protocol.origin.result_committed(msg.refs))

    def _results_not_recorded(self, msg: ei.ResultsNotRecorded) -> None:
        out: list[Any] = []
        for ref in msg.refs:
            out += self.protocol.origin.result_commit_failed(ref, msg.error)
        self._exec(out)

    def _copies_recorded(self, msg: ei.CopiesRecorded) -> None:
        self.offloaded_in += len(msg.refs)
        self._exec(self.protocol.target.committed(msg.origin, msg.refs))
        if self.host.offloader is not None:
            self.host.offloader.received(msg.origin, len(msg.refs))

    def _copies_not_recorded(self, msg: ei.CopiesNotRecorded) -> None:
        self._exec(self.protocol.target.commit_failed(msg.origin, msg.refs, f"store error: {msg.error}"))

    def _copies_started(self, msg: ei.CopiesStarted) -> None:
        self._exec(self.protocol.target.copies_started(msg.items))

    def _copy_progress(self, msg: ei.CopyProgress) -> None:
        self._exec(self.protocol.target.progress(Progress(msg.job_id, msg.attempt, msg.steps, msg.step, msg.eta,
                                                          msg.log)))

    def _copies_ended(self, msg: ei.CopiesEnded) -> None:
        self._exec(self.protocol.target.copies_ended(msg.refs))

    def _copy_results(self, msg: ei.CopyResults) -> None:
        target = self.protocol.target
        taken = target.results_taken
        progress = [Progress(p.job_id, p.attempt, p.steps, p.step, p.eta, ()) for p in msg.progress]
        instructions = target.results_ready(msg.results, progress)
        self.results_out += target.results_taken - taken  # a result handed over again counts once
        self._exec(instructions)

    # -- the protocol's instructions ----------------------------------------------------------------------
    def _exec(self, instructions: list[Any]) -> None:
        batch = _Batch()
        for ins in instructions:
            handler = DISPATCH.get(type(ins))
            if handler is None:
                raise TypeError(f"transfer: no handler for instruction {type(ins).__name__}")
            handler(self, ins, batch)
        gone = set(batch.forget.refs) if batch.forget is not None else set()
        for stop in batch.stops:  # a copy that goes is stopped with it: no second word for it
            if (stop.id, stop.attempt) not in gone:
                batch.out.append(ev.CopyStopRequested(stop.id, stop.attempt, stop.reason))
        tell = self.host.engine.tell
        for msg in batch.out:
            tell(msg)

    def _send(self, ins: Send, batch: _Batch) -> None:
        if self.payload is not None:
            self.payload.send(ins.peer, ins.message)  # after the blobs it names, if any
        else:
            self.links.send(ins.peer, ins.message)

    def _arm(self, ins: ScheduleTimer, batch: _Batch) -> None:
        if self._timer_at is not None and self._timer_at <= ins.at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = ins.at
        self._timer = self.tell_later(max(0.0, ins.at - _clock.monotonic()) + 0.001, TimerDue())

    def _log(self, ins: Log, batch: _Batch) -> None:
        getattr(self.log, ins.level if ins.level in ("debug", "info", "warning", "error") else "info")(
            ins.event, **ins.fields)
        if ins.event == "stale_result_ignored":
            self.stale_results += int(ins.fields.get("count", 1))

    def _commit_accepted(self, ins: CommitAccepted, batch: _Batch) -> None:
        batch.out.append(ev.CopiesAccepted(ins.origin, list(ins.jobs)))

    def _mark_accepted(self, ins: MarkAccepted, batch: _Batch) -> None:
        self.offloaded_out += len(ins.jobs)

    def _mark_started(self, ins: MarkStarted, batch: _Batch) -> None:
        batch.out.append(ev.RemoteStarted(ins.peer, ins.id, ins.attempt, ins.at))

    def _update_progress(self, ins: UpdateProgress, batch: _Batch) -> None:
        p = ins.progress
        batch.out.append(ev.RemoteProgress(ins.peer, p.id, p.attempt, p.steps, p.step, p.eta, p.log))

    def _commit_result(self, ins: CommitResult, batch: _Batch) -> None:
        r = ins.result
        if self.payload is not None and self.payload.missing_outputs(ins.peer, r):
            # not committed without its outputs: they are fetched, then it comes back (ResultAgain)
            for i in self.protocol.origin.result_commit_failed((r.id, r.attempt), "output payload not here yet"):
                DISPATCH[type(i)](self, i, batch)
            return
        if batch.results is None:
            batch.results = ev.RemoteResults([])
            batch.out.append(batch.results)
        batch.results.results.append(ev.RemoteResult(ins.peer, r.id, r.attempt, r.kind.value, r.message,
                                                     r.retry_delay, r.started, r.finished, r.log, r.result,
                                                     r.output_payload))

    def _requeue(self, ins: RequeueLocal, batch: _Batch) -> None:
        self.requeued += len(ins.jobs)
        batch.out.append(ev.HandoffReturned([(r.id, r.attempt) for r in ins.jobs], ins.reason, ins.peer))

    def _forget(self, ins: ForgetJob, batch: _Batch) -> None:
        if batch.forget is None:
            batch.forget = ev.CopiesForgotten([], "its origin has done with it")
            batch.out.append(batch.forget)
        batch.forget.refs.append((ins.id, ins.attempt))
        if ins.held:
            batch.forget.held.append((ins.id, self._topics.pop(ins.id, "-")))

    def _stop_local(self, ins: StopLocal, batch: _Batch) -> None:
        batch.stops.append(ins)

    def _commit_submitted(self, ins: CommitSubmitted, batch: _Batch) -> None:
        self.spawn(self._add_submitted(ins), name="transfer:submit")

    async def _add_submitted(self, ins: CommitSubmitted) -> None:
        """A remote submission is added through this node's API (it becomes the job's origin)."""
        try:
            job = await self.host.jobs.add(ins.topic, ins.properties)
        except JobmeshError as e:
            self.tell(SubmitAdded(ins.peer, ins.request_id, None, str(e)))
            return
        self.tell(SubmitAdded(ins.peer, ins.request_id, job.id, None))

    def _submit_added(self, msg: SubmitAdded) -> None:
        target = self.protocol.target
        if msg.job_id is not None:
            self._exec(target.submit_committed(msg.peer, msg.request_id, msg.job_id))
        else:
            self._exec(target.submit_failed(msg.peer, msg.request_id, msg.error or "refused"))

    def _submit_done(self, ins: SubmitDone, batch: _Batch) -> None:
        fut = self._submits.pop(ins.request_id, None)
        if fut is not None and not fut.done():
            fut.set_result((ins.job_id, ins.error))

    def _steal_requested(self, ins: StealRequested, batch: _Batch) -> None:
        if self.host.offloader is not None:
            self.host.offloader.steal(ins.peer, ins.count, ins.topics)

    def _room_freed(self, ins: RoomFreed, batch: _Batch) -> None:
        if self.host.offloader is not None:
            self.host.offloader.kick()  # room for a good batch at that peer: no need to wait for the tick

    def _release(self, ins: ReleaseCopies, batch: _Batch) -> None:
        """Restored copies their origin confirmed: no longer held; the engine takes them in."""
        refs = [(r.id, r.attempt) for r in ins.jobs]
        for job_id, _ in refs:
            self._topics.pop(job_id, None)
        fut = self.host.store.call(lambda conn: TransferStore.release(conn, refs))
        fut.add_done_callback(lambda f: self._released(ins.origin, refs, f))

    def _released(self, origin: str, refs: list[tuple[str, int]], fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:  # they stay held on disk; the next round retries
            self.log.error("could not release confirmed copies", origin=origin, jobs=len(refs),
                           error=repr(None if fut.cancelled() else fut.exception()))
            return
        self.copies_released += len(refs)
        self.host.engine.tell(ev.CopiesReleased(origin, refs))
        self.log.info("restored copies confirmed by their origin; they may run", origin=origin, count=len(refs))

    def _verify(self, ins: VerifyQueued, batch: _Batch) -> None:
        batch.out.append(ev.VerifyCopies([job_id for job_id, _ in ins.jobs]))

    def _repaired(self, ins: Repaired, batch: _Batch) -> None:
        self.repairs[ins.kind] = self.repairs.get(ins.kind, 0) + ins.count

    # -- remote submission ---------------------------------------------------------------------------
    async def submit(self, peer: str, topic: str, properties: dict[str, Any] | None,
                     timeout: float = 30.0) -> str:
        """Add a job on ``peer`` (it becomes the job's origin); returns the job id."""
        rid = _rng.token_hex(16)
        fut = asyncio.get_running_loop().create_future()
        self._submits[rid] = fut
        self.tell(SubmitRequested(peer, rid, topic, properties or {}))
        try:
            job_id, error = await asyncio.wait_for(fut, timeout)
        finally:
            self._submits.pop(rid, None)
        if error is not None:
            raise Conflict(error)
        return job_id

    def _submit_requested(self, msg: SubmitRequested) -> None:
        self._exec(self.protocol.origin.submit(msg.peer, msg.request_id, msg.topic, msg.properties))

    # -- remote settings ---------------------------------------------------------------------------------
    async def forward_settings(self, node_name: str, topic: str, mode: str, timeout: float = 5.0) -> dict[str, Any]:
        """Ask node ``node_name`` to change its offloading settings (``settings.RemoteSettings``)."""
        return await self.settings.forward(node_name, topic, mode, timeout)

    # -- restart ------------------------------------------------------------------------------------------
    def _restore(self) -> None:
        """Rebuild both sides from the store: jobs handed off, copies held, the outbox (``restore.py``)."""
        payload_store = self.host.blobs.store if self.payload is not None else None
        out, self._restored_peers, topics = restore_protocol(self.protocol, self.host.store, payload_store, self.log)
        self._topics.update(topics)
        self._exec(out)


_MAILBOX: dict[type, Callable[[TransferActor, Any], Any]] = {
    WireArrived: TransferActor._wire_arrived,
    TimerDue: TransferActor._timer_due,
    TopologyChanged: TransferActor._topology_changed,
    AbsentCheck: TransferActor._absent_check,
    SubmitRequested: TransferActor._submit_requested,
    SubmitAdded: TransferActor._submit_added,
    HandoffNotDelivered: TransferActor._handoff_not_delivered,
    ResultAgain: TransferActor._result_again,
    RoomsRequested: TransferActor._rooms,
    PlanMove: TransferActor._plan_move,
    SendSteal: TransferActor._send_steal,
    ei.OfferJobs: TransferActor._offer,
    ei.StopRemote: TransferActor._stop_remote,
    ei.CheckAway: TransferActor._check_away,
    ei.ResultsRecorded: TransferActor._results_recorded,
    ei.ResultsNotRecorded: TransferActor._results_not_recorded,
    ei.CopiesRecorded: TransferActor._copies_recorded,
    ei.CopiesNotRecorded: TransferActor._copies_not_recorded,
    ei.CopiesStarted: TransferActor._copies_started,
    ei.CopyProgress: TransferActor._copy_progress,
    ei.CopiesEnded: TransferActor._copies_ended,
    ei.CopyResults: TransferActor._copy_results,
}

DISPATCH: dict[type, Callable[[TransferActor, Any, _Batch], None]] = {
    Send: TransferActor._send,
    ScheduleTimer: TransferActor._arm,
    Log: TransferActor._log,
    CommitAccepted: TransferActor._commit_accepted,
    MarkAccepted: TransferActor._mark_accepted,
    MarkStarted: TransferActor._mark_started,
    UpdateProgress: TransferActor._update_progress,
    CommitResult: TransferActor._commit_result,
    RequeueLocal: TransferActor._requeue,
    ForgetJob: TransferActor._forget,
    StopLocal: TransferActor._stop_local,
    CommitSubmitted: TransferActor._commit_submitted,
    SubmitDone: TransferActor._submit_done,
    StealRequested: TransferActor._steal_requested,
    RoomFreed: TransferActor._room_freed,
    ReleaseCopies: TransferActor._release,
    VerifyQueued: TransferActor._verify,
    Repaired: TransferActor._repaired,
}

assert set(_MAILBOX) >= set(ei.TO_TRANSFER), "every engine message for the transfer has a handler"

__all__ = ["TransferActor", "TransferHost", "RoomsRequested", "PlanMove", "SendSteal", "SETTINGS_REQUEST",
           "SETTINGS_REPLY", "JobRef"]
