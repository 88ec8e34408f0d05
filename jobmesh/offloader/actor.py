"""The offloader actor: runs the rebalancing policy and applies its moves (DESIGN §2 offloader).

A thin loop around ``offloader.policy``: on a short tick, on topology events and
when asked (``kick``: settings changed, jobs added, room freed at a peer), it reads the
topology view (the local instance replaced by this node's fresh capacity), asks the
transfer actor for each peer's room and the engine for a summary of its movable jobs,
lets ``plan_moves`` decide, and tells the transfer actor each move (``PlanMove``: it
pledges the room, the engine takes the jobs out of their window, newest first, records
the handoff, and the transfer offers them). An idle node asks the busiest one for work
(``plan_steal``); a steal request is answered with the thief's part of the same balance.
Every move made or received is recorded (``MoveRecord``) for the policy's no-ping-pong
rules and counted for the metrics. Nothing here asks an actor that asks back.

Payload (issue 14): while the node's blob store holds references, the moves of one
(queue, topic) are placed job by job: the engine names the jobs it would let go
(``CandidatesRequested``, newest first), ``policy.assign_payload`` gives each to the planned
target that needs the fewest of its bytes (the blob actor knows what each peer holds) or
keeps it home when its bytes would take longer to send than the wait the move saves, and each
``PlanMove`` names its jobs. Kept jobs never leave their window; they are left out of the
next takes for ``PAYLOAD_KEEP`` seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
from .. import clock as _clock
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import structlog

from ..actor import Actor
from ..discovery.view import TopologyView
from ..engine import events as ev
from ..transfer.requests import PlanMove, RoomsRequested, SendSteal
from ..transfer.protocol import StealRequest
from .policy import Move, MoveRecord, PolicyConfig, QueueSummary, assign_payload, plan_moves, plan_steal

log = structlog.get_logger("jobmesh.offloader")

MAX_JOBS_PER_ROUND = 4096  # jobs handed off per decision at most (bounded latency per round)
HISTORY = 1000
PAYLOAD_KEEP = 2.0  # s a job kept home for its payload is not taken again (the loads change meanwhile)
KICK_MIN_INTERVAL = 0.02  # s between two rounds asked for by events (results back, jobs added)
SUMMARY_TIMEOUT = 5.0


@dataclass(slots=True)
class Plan:
    """The ticker: decide now, unless a round ran less than half an interval ago."""


@dataclass(slots=True)
class Kick:
    """Something changed (jobs added, settings, room freed): decide soon."""


@dataclass(slots=True)
class _Kicked:
    pass


@dataclass(slots=True)
class Received:
    """``peer`` pushed ``count`` jobs here."""

    peer: str
    count: int


@dataclass(slots=True)
class StealAsked:
    """``peer`` has room for ``count`` jobs of ``topics`` and asks us for work."""

    peer: str
    count: int
    topics: tuple[str, ...]


class OffloaderActor(Actor):
    """Messages: ``Plan``, ``Kick``, ``Received``, ``StealAsked`` (``kick()``, ``received()`` and
    ``steal()`` send them)."""

    def __init__(self, node: Any, config: PolicyConfig | None = None, interval: float | None = None) -> None:
        super().__init__("offloader")
        self.node = node
        self.cfg = config or PolicyConfig()
        hb = node.config.discovery.heartbeat_interval
        self.interval = interval if interval is not None else max(0.05, min(0.1, hb / 2))
        self.log = log.bind(node=node.name)
        self.history: deque[MoveRecord] = deque(maxlen=HISTORY)
        self.moves_out = 0  # jobs this node decided to move
        self.moves_in = 0  # jobs other nodes pushed here
        self.decisions = 0  # plans with at least one move
        self.steal_requests = 0
        self._last_plan = 0.0
        self._kick_pending = False
        self._listening = False
        self._last_unassignable_log = 0.0
        self._kept: dict[str, float] = {}  # job id -> until when it stays home (its payload)
        self.kept_for_payload = 0  # jobs kept home because their payload would cost more than it saves

    async def on_start(self) -> None:
        self.spawn(self._ticker(), name="offloader:tick")
        d = self.node.discovery
        if d is not None and not self._listening:
            self._listening = True  # once: an actor restart after a crash keeps the listener
            d.add_listener(self._on_topology)

    def kick(self) -> None:
        self.tell(Kick())

    def received(self, peer: str, count: int) -> None:
        self.tell(Received(peer, count))

    def steal(self, peer: str, count: int, topics: tuple[str, ...]) -> None:
        self.tell(StealAsked(peer, count, tuple(topics)))

    def _on_topology(self, event: Any) -> None:
        self.tell(Kick())

    async def _ticker(self) -> None:
        """A round every ``interval`` while there is work to place; every heartbeat interval
        while idle (new local jobs, topology events and freed room kick a round at once, and
        peers' figures change only with their heartbeats anyway)."""
        idle_interval = max(self.interval, self.node.config.discovery.heartbeat_interval)
        while True:
            await asyncio.sleep(idle_interval if self._idle() else self.interval)
            if self.mailbox_size < 2:  # never pile up rounds behind a slow one
                self.tell(Plan())

    def stats(self) -> dict[str, Any]:
        return {"moves_out": self.moves_out, "moves_in": self.moves_in, "decisions": self.decisions,
                "steal_requests": self.steal_requests, "kept_for_payload": self.kept_for_payload}

    def receive(self, msg: Any) -> Any:
        handler = _MAILBOX.get(type(msg))
        if handler is None:
            raise TypeError(f"offloader: unknown message {type(msg).__name__}")
        return handler(self, msg)

    async def _on_plan(self, msg: Plan) -> None:
        if _clock.monotonic() - self._last_plan >= self.interval / 2:
            await self._plan()

    async def _on_kick(self, msg: Kick) -> None:
        since = _clock.monotonic() - self._last_plan
        if since < KICK_MIN_INTERVAL:
            # room opened or work arrived just after a round: one more round soon, not one per kick
            if not self._kick_pending:
                self._kick_pending = True
                self.tell_later(KICK_MIN_INTERVAL - since, _Kicked())
            return
        await self._plan()

    async def _on_kicked(self, msg: _Kicked) -> None:
        self._kick_pending = False
        await self._plan()

    def _on_received(self, msg: Received) -> None:
        self.moves_in += msg.count
        self.history.append(MoveRecord(_clock.monotonic(), msg.peer, self.node.name, msg.count, "move"))

    async def _on_steal(self, msg: StealAsked) -> None:
        await self._plan(only_target=msg.peer, limit=msg.count)

    # -- one decision ------------------------------------------------------------------------
    def _view(self) -> TopologyView | None:
        """The current view, the local instance carrying this node's fresh capacity and settings."""
        node = self.node
        view = node.topology
        if len(view.instances) < 2:
            return None
        local = []
        for inst in view.instances:
            if inst.name == node.name:
                props = dict(inst.properties)
                props["offload_disabled_topics"] = node.offload_settings.disabled_patterns()
                inst = dataclasses.replace(inst, capacity=node.capacity_snapshot(),
                                           topics=tuple(node.consumer_topics()),
                                           offload_topics=tuple(node.offload_topics()),
                                           properties=props, local=True)
            local.append(inst)
        return dataclasses.replace(view, instances=tuple(local))

    async def _summaries(self) -> list[QueueSummary]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.node.engine.tell(ev.SummaryRequested(fut))
        try:
            rows = await asyncio.wait_for(fut, SUMMARY_TIMEOUT)
        except Exception as e:
            self.log.warning("queue summary failed", error=repr(e))
            return []
        return [QueueSummary(queue, topic, count, ordered, age, None) for queue, topic, count, age, ordered in rows]

    async def _durations(self) -> dict[str, float]:
        try:
            return self.node.jobs.processing_times()
        except Exception:
            return {}

    def _idle(self) -> bool:
        """Nothing to decide: nothing of ours can move, and stealing cannot apply (no free
        slot here, or nobody has jobs waiting). Checked from the advertised figures before
        building a view, so an idle node's 10 rounds a second cost next to nothing."""
        topo = self.node.topology
        if len(topo.instances) < 2:
            return True
        snap = self.node.capacity_snapshot()
        if snap.get("movable"):
            return False
        if snap.get("slots", 0) - snap.get("active", 0) - snap.get("queued", 0) <= 0:
            return True
        return not any(i.capacity.get("queued", 0) > 0 for i in topo.instances if i.name != self.node.name)

    async def _plan(self, only_target: str | None = None, limit: int | None = None) -> None:
        self._last_plan = _clock.monotonic()
        if only_target is None and self._idle():
            return
        view = self._view()
        if view is None or not view.current:
            return
        transfer = self.node.transfer
        if transfer is None:
            return
        now = _clock.monotonic()
        local = view.instance(self.node.name)
        if only_target is None and local is not None and not local.capacity.get("movable"):
            self._maybe_steal(view, now)  # nothing of ours waits here: no window to scan
            return
        rooms: dict[str, int] = await transfer.ask(RoomsRequested(), timeout=SUMMARY_TIMEOUT)
        room = sum(rooms.get(i.name, 0) for i in view.instances if i.name != self.node.name)
        budget = min(MAX_JOBS_PER_ROUND, room, limit if limit is not None else MAX_JOBS_PER_ROUND)
        if budget <= 0:
            return
        summaries = await self._summaries()
        if not summaries:
            if only_target is None:
                self._maybe_steal(view, now)
            return
        durations = await self._durations()
        plan = plan_moves(view, summaries, now, durations, list(self.history), self.cfg,
                          only_target=only_target, limit=budget, target_free=limit)
        if plan.unassignable and now - self._last_unassignable_log > 10.0:
            self._last_unassignable_log = now
            self.log.info("jobs no node can run stay queued",
                          groups=[(g.queue, g.topic, g.count) for g in plan.unassignable])
        if not plan.moves:
            return
        if self._kept:
            self._kept = {j: t for j, t in self._kept.items() if t > now}
        keep = frozenset(self._kept)
        by_group: dict[tuple[str, str], list[Move]] = {}
        for m in plan.moves:
            by_group.setdefault((m.queue, m.topic), []).append(m)
        blobs = getattr(self.node, "blobs", None)
        per_job = blobs is not None and blobs.store.has_refs  # some job here may carry payload
        moved = 0
        for (queue, topic), moves in by_group.items():
            if budget <= 0:
                break
            moves = [dataclasses.replace(m, count=min(m.count, rooms.get(m.target, 0))) for m in moves]
            moves = [m for m in moves if m.count > 0]
            n = min(sum(m.count for m in moves), budget)
            if n <= 0:
                continue
            if per_job:
                batches = await self._place_group(queue, topic, n, moves, keep, now)
            else:  # counts only: the engine takes each move's jobs, newest first
                batches = []
                for m in moves:
                    k = min(m.count, n)
                    n -= k
                    if k > 0:
                        batches.append((m.target, k, ()))
            reasons = {m.target: m.reason for m in moves}
            for target, k, ids in batches:
                rooms[target] -= k
                transfer.tell(PlanMove(target, queue, topic, k, ids, keep))  # pledged, taken, recorded, offered
                kind = "stolen" if reasons[target] == "steal" else "move"
                self.history.append(MoveRecord(now, self.node.name, target, k, kind))
                self.moves_out += k
                budget -= k
                moved += k
                self.log.debug("jobs moved", target=target, topic=topic, jobs=k, reason=reasons[target])
        if moved:
            self.decisions += 1

    async def _place_group(self, queue: str, topic: str, count: int, moves: list[Move], keep: frozenset[str],
                           now: float) -> list[tuple[str, int, tuple[str, ...]]]:
        """(target, count, job ids) of one (queue, topic)'s moves, placed job by job (payload):
        the engine names up to ``count`` jobs it would let go, ``_place`` gives each its target;
        the ones it keeps home stay in their window and are not named again for ``PAYLOAD_KEEP`` s."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.node.engine.tell(ev.CandidatesRequested(queue, topic, count, keep, fut))
        try:
            ids: list[str] = await asyncio.wait_for(fut, SUMMARY_TIMEOUT)
        except Exception as e:
            self.log.warning("could not list jobs to move", queue=queue, error=repr(e))
            return []
        placed = self._place(ids, moves)
        home = [i for i, t in zip(ids, placed) if t is None]
        if home:
            for job_id in home:
                self._kept[job_id] = now + PAYLOAD_KEEP
            self.kept_for_payload += len(home)
            self.log.debug("jobs kept home: their payload takes longer to send than it saves",
                           topic=topic, jobs=len(home))
        out = []
        for target in dict.fromkeys(t for t in placed if t is not None):
            batch = tuple(i for i, t in zip(ids, placed) if t == target)
            out.append((target, len(batch), batch))
        return out

    def _place(self, ids: list[str], moves: list[Move]) -> list[str | None]:
        """The target of each job (None: it stays home), by ``assign_payload`` when some carry
        payload; else in the plan's order, as many to each target as it planned."""
        needs = payload_needs(self.node.blobs, ids, [m.target for m in moves])
        if needs is not None:
            return assign_payload(needs, moves, self.cfg)
        out: list[str | None] = []
        for m in moves:
            out += [m.target] * m.count
        return (out + [None] * len(ids))[:len(ids)]

    def _maybe_steal(self, view: TopologyView, now: float) -> None:
        ask = plan_steal(view, now, list(self.history), self.cfg)
        if ask is None:
            return
        transfer = self.node.transfer
        transfer.tell(SendSteal(ask.victim, StealRequest(ask.count, ask.topics)))
        self.history.append(MoveRecord(now, self.node.name, ask.victim, ask.count, "steal_request"))
        self.steal_requests += 1


def payload_needs(blobs: Any, ids: list[str], targets: list[str]) -> list[dict[str, int]] | None:
    """For each job (by id), the bytes of its input payload each target still needs (what the
    blob actor has not seen it confirm holding); None when no job has payload (the common case:
    one look)."""
    store = getattr(blobs, "store", None)
    if store is None or not getattr(store, "has_refs", False):
        return None
    found = store.payloads(ids)
    if not any(ins for ins, _ in found.values()):
        return None
    out: list[dict[str, int]] = []
    for job_id in ids:
        ins = found.get(job_id, ({}, {}))[0]
        if not ins:
            out.append({})
            continue
        refs = {r.id: r.size for r in ins.values()}  # one blob named twice is sent once
        total = sum(refs.values())
        need = {"*": total}
        for t in dict.fromkeys(targets):
            need[t] = max(0, total - blobs.held_by(t, refs))
        out.append(need)
    return out


_MAILBOX: dict[type, Callable[[OffloaderActor, Any], Any]] = {
    Plan: OffloaderActor._on_plan,
    Kick: OffloaderActor._on_kick,
    _Kicked: OffloaderActor._on_kicked,
    Received: OffloaderActor._on_received,
    StealAsked: OffloaderActor._on_steal,
}

__all__ = ["OffloaderActor", "Plan", "Kick", "Received", "StealAsked", "payload_needs"]
