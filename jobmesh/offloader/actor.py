"""The offloader actor: runs the rebalancing policy and applies its moves (DESIGN §2 offloader).

A thin loop around ``offloader.policy``: on a short tick, on topology events and
when asked (``kick``: settings changed, jobs added), it reads the topology view
(the local instance replaced by this node's fresh capacity), asks every queue actor
for a summary of its movable jobs, lets ``plan_moves`` decide, takes the chosen jobs
out of the queue windows (newest first) and gives them to the transfer actor. An
idle node asks the busiest one for work (``plan_steal``); a steal request is
answered with the thief's part of the same balance. Every move made or received is
recorded (``MoveRecord``) for the policy's no-ping-pong rules and counted for the
metrics.

Payload (issue 14): the jobs taken for one (queue, topic) are placed by
``policy.assign_payload`` — each to the planned target that needs the fewest of its bytes (the
blob actor knows what each peer holds), or kept home when its bytes would take longer to send
than the wait the move saves; kept jobs go back to their queue and are left out of the next
takes for ``PAYLOAD_KEEP`` seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
from .. import clock as _clock
from collections import deque
from typing import Any

import structlog

from ..actor import Actor
from ..discovery.view import TopologyView
from ..transfer.protocol import StealRequest
from .policy import Move, MoveRecord, PolicyConfig, QueueSummary, assign_payload, plan_moves, plan_steal

log = structlog.get_logger("jobmesh.offloader")

MAX_JOBS_PER_ROUND = 4096  # jobs handed off per decision at most (bounded latency per round)
HISTORY = 1000
PAYLOAD_KEEP = 2.0  # s a job kept home for its payload is not taken again (the loads change meanwhile)
KICK_MIN_INTERVAL = 0.02  # s between two rounds asked for by events (results back, jobs added)  # move records kept (the policy looks at the last seconds only)


class OffloaderActor(Actor):
    """Messages: ``("plan",)``/``("kick",)`` (decide now), ``("received", peer, n)`` (jobs pushed
    to us), ``("steal", peer, count, topics)`` (a peer asks us for work)."""

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

    def _on_topology(self, event: Any) -> None:
        self.tell(("kick",))

    async def _ticker(self) -> None:
        """A round every ``interval`` while there is work to place; every heartbeat interval
        while idle (new local jobs, topology events and freed room kick a round at once, and
        peers' figures change only with their heartbeats anyway)."""
        idle_interval = max(self.interval, self.node.config.discovery.heartbeat_interval)
        while True:
            await asyncio.sleep(idle_interval if self._idle() else self.interval)
            if self.mailbox_size < 2:  # never pile up rounds behind a slow one
                self.tell(("plan",))

    def stats(self) -> dict[str, Any]:
        return {"moves_out": self.moves_out, "moves_in": self.moves_in, "decisions": self.decisions,
                "steal_requests": self.steal_requests, "kept_for_payload": self.kept_for_payload}

    async def receive(self, msg: Any) -> Any:
        kind = msg[0]
        if kind in ("plan", "kick"):
            since = _clock.monotonic() - self._last_plan
            if kind == "plan" and since < self.interval / 2:
                return None
            if kind == "kick" and since < KICK_MIN_INTERVAL:
                # room opened or work arrived just after a round: one more round soon, not one per kick
                if not self._kick_pending:
                    self._kick_pending = True
                    self.tell_later(KICK_MIN_INTERVAL - since, ("kicked",))
                return None
            await self._plan()
        elif kind == "kicked":
            self._kick_pending = False
            await self._plan()
        elif kind == "received":
            _, peer, n = msg
            self.moves_in += n
            self.history.append(MoveRecord(_clock.monotonic(), peer, self.node.name, n, "move"))
        elif kind == "steal":
            _, peer, count, topics = msg
            await self._plan(only_target=peer, limit=count)
        else:
            raise ValueError(f"offloader: unknown message {kind!r}")
        return None

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

    async def _summaries(self) -> list[tuple[Any, QueueSummary]]:
        out = []
        for qc in self.node.config.all_queues():
            qa = self.node.queue_actor(qc.name)
            if qa is None:
                continue
            try:
                rows = await qa.ask(("offload_summary",), timeout=5.0)
            except Exception as e:
                self.log.warning("queue summary failed", queue=qc.name, error=repr(e))
                continue
            for topic, count, age, ordered in rows:
                out.append((qa, QueueSummary(qc.name, topic, count, ordered, age, None)))
        return out

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
        room = sum(transfer.room(i.name) for i in view.instances if i.name != self.node.name)
        budget = min(MAX_JOBS_PER_ROUND, room, limit if limit is not None else MAX_JOBS_PER_ROUND)
        if budget <= 0:
            return
        groups = await self._summaries()
        if not groups:
            if only_target is None:
                self._maybe_steal(view, now)
            return
        durations = await self._durations()
        summaries = [g for _, g in groups]
        plan = plan_moves(view, summaries, now, durations, list(self.history), self.cfg,
                          only_target=only_target, limit=budget, target_free=limit)
        if plan.unassignable and now - self._last_unassignable_log > 10.0:
            self._last_unassignable_log = now
            self.log.info("jobs no node can run stay queued",
                          groups=[(g.queue, g.topic, g.count) for g in plan.unassignable])
        if not plan.moves:
            return
        actors = {g.queue: qa for qa, g in groups}
        if self._kept:
            self._kept = {j: t for j, t in self._kept.items() if t > now}
        by_group: dict[tuple[str, str], list[Move]] = {}
        for m in plan.moves:
            by_group.setdefault((m.queue, m.topic), []).append(m)
        moved = 0
        for (queue, topic), moves in by_group.items():
            qa = actors.get(queue)
            if qa is None or budget <= 0:
                continue
            moves = [dataclasses.replace(m, count=min(m.count, transfer.room(m.target))) for m in moves]
            moves = [m for m in moves if m.count > 0]
            n = min(sum(m.count for m in moves), budget)
            if n <= 0:
                continue
            try:
                jobs = await qa.ask(("take", topic, n, set(self._kept)) if self._kept else ("take", topic, n),
                                    timeout=5.0)
            except Exception as e:
                self.log.warning("could not take jobs to move", queue=queue, error=repr(e))
                continue
            if not jobs:
                continue
            placed = self._place(jobs, moves)
            home = [j for j, t in zip(jobs, placed) if t is None]
            if home:
                qa.tell(("returned", home))
                for j in home:
                    self._kept[j.id] = now + PAYLOAD_KEEP
                self.kept_for_payload += len(home)
                self.log.debug("jobs kept home: their payload takes longer to send than it saves",
                               topic=topic, jobs=len(home))
            reasons = {m.target: m.reason for m in moves}
            for target in dict.fromkeys(t for t in placed if t is not None):
                batch = [j for j, t in zip(jobs, placed) if t == target]
                transfer.offer(target, batch)
                kind = "stolen" if reasons[target] == "steal" else "move"
                self.history.append(MoveRecord(now, self.node.name, target, len(batch), kind))
                self.moves_out += len(batch)
                budget -= len(batch)
                moved += len(batch)
                self.log.debug("jobs moved", target=target, topic=topic, jobs=len(batch), reason=reasons[target])
        if moved:
            self.decisions += 1

    def _place(self, jobs: list[Any], moves: list[Move]) -> list[str | None]:
        """The target of each taken job (None: it stays home), by ``assign_payload`` when some
        carry payload; else in the plan's order, as many to each target as it planned."""
        needs = payload_needs(self.node.blobs, jobs, [m.target for m in moves])
        if needs is not None:
            return assign_payload(needs, moves, self.cfg)
        out: list[str | None] = []
        for m in moves:
            out += [m.target] * m.count
        return (out + [None] * len(jobs))[:len(jobs)]

    def _maybe_steal(self, view: TopologyView, now: float) -> None:
        ask = plan_steal(view, now, list(self.history), self.cfg)
        if ask is None:
            return
        transfer = self.node.transfer
        transfer.tell(("send", ask.victim, StealRequest(ask.count, ask.topics)))
        self.history.append(MoveRecord(now, self.node.name, ask.victim, ask.count, "steal_request"))
        self.steal_requests += 1


def payload_needs(blobs: Any, jobs: list[Any], targets: list[str]) -> list[dict[str, int]] | None:
    """For each job, the bytes of its input payload each target still needs (what the blob actor
    has not seen it confirm holding); None when no job has payload (the common case: one look)."""
    store = getattr(blobs, "store", None)
    if store is None or not getattr(store, "has_refs", False):
        return None
    found = store.payloads([j.id for j in jobs])
    if not any(ins for ins, _ in found.values()):
        return None
    out: list[dict[str, int]] = []
    for j in jobs:
        ins = found.get(j.id, ({}, {}))[0]
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


__all__ = ["OffloaderActor", "payload_needs"]
