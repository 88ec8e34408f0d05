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
from .policy import MoveRecord, PolicyConfig, QueueSummary, plan_moves, plan_steal

log = structlog.get_logger("jobmesh.offloader")

MAX_JOBS_PER_ROUND = 4096  # jobs handed off per decision at most (bounded latency per round)
HISTORY = 1000
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
                "steal_requests": self.steal_requests}

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
        moved = 0
        for m in plan.moves:
            n = min(m.count, rooms.get(m.target, 0), budget)
            if n <= 0:
                continue
            rooms[m.target] -= n
            transfer.tell(PlanMove(m.target, m.queue, m.topic, n))  # pledged, taken, recorded, offered
            kind = "stolen" if m.reason == "steal" else "move"
            self.history.append(MoveRecord(now, self.node.name, m.target, n, kind))
            self.moves_out += n
            budget -= n
            moved += n
            self.log.debug("jobs moved", target=m.target, topic=m.topic, jobs=n, reason=m.reason)
        if moved:
            self.decisions += 1

    def _maybe_steal(self, view: TopologyView, now: float) -> None:
        ask = plan_steal(view, now, list(self.history), self.cfg)
        if ask is None:
            return
        transfer = self.node.transfer
        transfer.tell(SendSteal(ask.victim, StealRequest(ask.count, ask.topics)))
        self.history.append(MoveRecord(now, self.node.name, ask.victim, ask.count, "steal_request"))
        self.steal_requests += 1


_MAILBOX: dict[type, Callable[[OffloaderActor, Any], Any]] = {
    Plan: OffloaderActor._on_plan,
    Kick: OffloaderActor._on_kick,
    _Kicked: OffloaderActor._on_kicked,
    Received: OffloaderActor._on_received,
    StealAsked: OffloaderActor._on_steal,
}

__all__ = ["OffloaderActor", "Plan", "Kick", "Received", "StealAsked"]
