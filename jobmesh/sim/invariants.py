"""The simulation's invariants: what is checked while the mesh runs and after it healed.

The part of ``Simulation`` that watches every node (its notifications, topology events and
consumer runs, a periodic look at leaders and responsibility) and, after healing, waits for
the mesh to converge, stay stable and fire its schedule; each broken rule is a ``Violation``
(the list is in ``harness``'s docstring).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

from ..discovery.view import TopologyEventType as TE
from .loop import NodeRun
from .records import EPOCH, FINAL_NAMES
from .state import SimState


class Invariants(SimState):
    """The checks, during the run and after healing (a part of ``Simulation``)."""

    # -- invariants ----------------------------------------------------------------------------
    def _on_note(self, name: str, n: Any) -> None:
        if n.topic in ("job/finished", "job/cancelled", "job/stopped", "job/removed") and n.job_id in self.accepted \
                and self.accepted[n.job_id] == name:
            count = self.finals.get(n.job_id, 0) + 1
            self.finals[n.job_id] = count
            self.trace.add(name, "final", f"{n.job_id[-8:]} {n.state}")
            if count > 1 + self.retries.get(n.job_id, 0) and n.topic != "job/removed":
                self._fail("final-once", f"job {n.job_id} became final {count} times "
                                         f"(retries asked: {self.retries.get(n.job_id, 0)}), now {n.state}")

    def _on_topology(self, key: tuple[str, int], event: Any) -> None:
        events = self.events.setdefault(key, [])
        kinds = [e.type for e in events]
        t = event.type
        bad = None
        if not kinds and t is not TE.TOPOLOGY_INIT:
            bad = f"first event {t.value}, not TOPOLOGY_INIT"
        elif kinds and t is TE.TOPOLOGY_INIT:
            bad = "TOPOLOGY_INIT twice"
        elif t is TE.TOPOLOGY_CHANGING and kinds and kinds[-1] is TE.TOPOLOGY_CHANGING:
            bad = "two TOPOLOGY_CHANGING in a row"
        elif t is TE.TOPOLOGY_CHANGED and (not kinds or kinds[-1] is not TE.TOPOLOGY_CHANGING):
            bad = "TOPOLOGY_CHANGED without TOPOLOGY_CHANGING"
        elif t is TE.PROPERTIES_CHANGED and kinds and kinds[-1] is TE.TOPOLOGY_CHANGING:
            bad = "PROPERTIES_CHANGED during a change"
        events.append(event)
        if t in (TE.TOPOLOGY_INIT, TE.TOPOLOGY_CHANGED):
            self.trace.add(key[0], t.value, f"{event.new_view.names} leader={event.new_view.leader}")
        if bad:
            self._fail("topology-events", f"node {key[0]} (incarnation {key[1]}): {bad}")

    def _on_run(self, name: str, job: Any) -> None:
        run = self.runs.get(name)
        if run is None:
            return
        marked = self.superseded.get((name, run.incarnation), {})
        if job.id in marked and job.origin != name:
            node = self.nodes.get(name)
            attempt = None
            if node is not None:
                row = node.store.reader.execute("SELECT attempt FROM jobs WHERE id=? AND origin!=?",
                                                (job.id, name)).fetchone()
                attempt = row[0] if row else None
            if attempt is None or attempt == marked[job.id]:
                self._fail("superseded-never-runs",
                           f"node {name} runs its restored copy of {job.id} (attempt {marked[job.id]}), "
                           f"which its origin {job.origin} had already let go of")

    def _snapshot_superseded(self, name: str, run: NodeRun, node: Any) -> None:
        """At a restart: which restored copies had their origin already given up on?"""
        if run.incarnation == 1:
            return
        marked: dict[str, int] = {}
        for job_id, origin, attempt in node.store.reader.execute(
                "SELECT id, origin, attempt FROM jobs WHERE origin!=? AND outbox IS NULL",
                (name,)):  # the copies it holds (not the results waiting in their rows: they never run)
            o = self.nodes.get(origin)
            if o is None or o.transfer is None:
                continue
            st = o.transfer.protocol.origin.job_state(job_id)
            if st is None or st[0] != name or st[1] != attempt:
                marked[job_id] = attempt
        if marked:
            self.superseded[(name, run.incarnation)] = marked
            self.trace.add(name, "restored-superseded", len(marked))

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self._check_leaders()
            self._check_responsibility()
            self._raise_pending()

    def _live(self) -> list[tuple[str, Any]]:
        return [(n, self.nodes[n]) for n in self.names
                if n in self.nodes and self.runs[n].alive and not self.runs[n].paused]

    def _check_leaders(self) -> None:
        for name, node in self._live():
            core = getattr(node.discovery, "_core", None)
            if core is None or not core.established or core.changing:
                continue
            view = core.view
            if not view.current:
                continue
            oldest = min(core._ordered(), key=lambda i: (i.rank, i.name)).name
            if view.leader != oldest:
                self._fail("leader-oldest", f"node {name}: leader {view.leader}, oldest member {oldest} "
                                            f"(members {view.names})")

    def _check_responsibility(self) -> None:
        from ..transfer.protocol import OriginJobState

        for name, node in self._live():
            if node.transfer is None:
                continue
            origin = node.transfer.protocol.origin
            for job_id, job in list(origin._jobs.items()):
                if job.state is OriginJobState.OFFERED:
                    continue
                target = self.nodes.get(job.peer)
                if target is None or not self.runs[job.peer].alive:
                    continue
                try:
                    r = target.store.reader
                    held = r.execute("SELECT 1 FROM jobs WHERE id=? AND attempt=? AND origin!=? UNION ALL "
                                     "SELECT 1 FROM transfer_outbox WHERE job_id=? AND attempt=?",
                                     (job_id, job.spec.attempt, job.peer, job_id, job.spec.attempt)).fetchone()
                except (sqlite3.Error, RuntimeError):
                    continue
                if held is None:
                    self._fail("responsibility", f"{name} believes {job.peer} holds {job_id} attempt "
                                                 f"{job.spec.attempt} ({job.state.value}); {job.peer} has neither "
                                                 f"the copy nor its result")

    async def _converge(self) -> None:
        assert self.loop is not None and self.healed_at is not None
        cfg = self.cfg
        deadline = self.healed_at + cfg.settle
        topo_deadline = self.healed_at + cfg.topology_bound
        topo_done = False
        while True:
            await asyncio.sleep(0.25)
            now = self.loop.time()
            if not topo_done:
                problem = self._topology_problem()
                if problem is None:
                    topo_done = True
                    self.converged_s = round(now - self.healed_at, 2)
                    self.trace.add("sim", "one-topology", f"after {self.converged_s}s")
                elif now > topo_deadline:
                    self._fail("one-topology", f"{cfg.topology_bound:g}s after healing: {problem}")
            if topo_done:
                problem = self._jobs_problem()
                if problem is None:
                    return
                if now > deadline:
                    self._fail("all-final", f"{cfg.settle:g}s after healing: {problem}")
                if now - self.healed_at - (self.converged_s or 0) > cfg.queued_bound:
                    self._check_stuck_queued()

    async def _stay_stable(self) -> None:
        """Healed and settled, the mesh stays so: one topology for ``stable`` more seconds, no
        member changes, no repair (a repair now would mean a belief still drifting)."""
        assert self.loop is not None
        # the views may still reorder for a moment (a rejoin moves a node back): let them settle
        # for two heartbeat timeouts without a change, then nothing may change any more
        quiet_since = self.loop.time()
        limit = quiet_since + self.cfg.settle

        def member_changes() -> dict[tuple[str, int], int]:  # properties (a schedule's last fire) may change
            return {k: sum(1 for e in v if e.type is TE.TOPOLOGY_CHANGED) for k, v in self.events.items()}

        changes = member_changes()
        while self.loop.time() - quiet_since < 2 * self.cfg.timeout:
            await asyncio.sleep(0.25)
            now_changes = member_changes()
            if now_changes != changes:
                changes, quiet_since = now_changes, self.loop.time()
            if self.loop.time() > limit:
                self._fail("one-topology", "the views never stopped changing after healing")
        repairs = self._repairs()
        changes = {k: len(v) for k, v in self.events.items()}
        end = self.loop.time() + self.cfg.stable
        while self.loop.time() < end:
            await asyncio.sleep(0.5)
            problem = self._topology_problem()
            if problem is not None:
                self._fail("one-topology", f"after settling, the mesh split again: {problem}")
        moved = [k for k, v in self.events.items() if k in changes and any(
            e.type is TE.TOPOLOGY_CHANGING for e in v[changes[k]:])]
        if moved:
            self._fail("one-topology", f"membership changed after settling, seen by {sorted(moved)}")
        after = self._repairs()
        if any(after.get(k, 0) > repairs.get(k, 0) for k in after):
            self._fail("no-late-repair", f"repairs after settling: {repairs} -> {after}")

    def _check_stuck_queued(self) -> None:
        """A job QUEUED (ready, not handed off) at its origin while a node that may run its topic
        has free slots, long after the mesh became one topology: nobody is dispatching it."""
        free: dict[str, bool] = {}
        for name, node in self._live():
            if node.pool.free_slots() > 0:
                for t in self.topics[name]:
                    if (name, t) not in self._disabled:
                        free[t] = True
        now = None
        for origin, node in self._live():
            now = node.clock()
            for job_id, topic, not_before, target in node.store.reader.execute(
                    "SELECT id, topic, not_before, target FROM jobs WHERE state='QUEUED' AND origin=? "
                    "AND (target IS NULL OR target=?) LIMIT 50", (origin, origin)):
                if job_id in self.accepted and not_before <= now and free.get(topic):
                    self._fail("stuck-queued", f"job {job_id} ({topic}) is QUEUED at {origin} {self.cfg.queued_bound:g}s "
                                               f"after the mesh healed, while a node that runs {topic} has free slots")

    def _topology_problem(self) -> str | None:
        views = {}
        for name in self.names:
            node = self.nodes.get(name)
            if node is None:
                return f"{name} is not running yet"
            v = node.topology
            views[name] = (sorted(v.names), v.leader, v.current)
        want = sorted(self.names)
        for name, (names, leader, current) in views.items():
            if names != want or not current:
                return f"{name} sees {names} (current={current})"
        leaders = {v[1] for v in views.values()}
        if len(leaders) != 1:
            return f"leaders {sorted(leaders)}"
        return None

    def _jobs_problem(self) -> str | None:
        open_: list[str] = []
        by_origin: dict[str, list[str]] = {}
        for job_id, origin in self.accepted.items():
            if job_id not in self._seen_final:
                by_origin.setdefault(origin, []).append(job_id)
        for origin, ids in sorted(by_origin.items()):
            node = self.nodes.get(origin)
            if node is None:
                return f"{origin} is not running"
            rows: dict[str, tuple[str, str | None, str | None]] = {}
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                q = f"SELECT id, state, target, result_message FROM jobs WHERE id IN ({','.join('?' * len(chunk))})"
                rows.update({r[0]: r[1:] for r in node.store.reader.execute(q, chunk)})
            for job_id in ids:
                row = rows.get(job_id)
                if row is None:
                    if self.finals.get(job_id):
                        # final, then purged with the history (a clock jumped past history_ttl)
                        self._seen_final.add(job_id)
                        continue
                    return f"job {job_id} is missing at its origin {origin} (never final)"
                state, target, message = row
                if state not in FINAL_NAMES:
                    open_.append(f"{job_id} {state} at {origin} (target {target})")
                    continue
                if state != "SUCCEEDED" and job_id not in self.stop_asked:
                    return f"job {job_id} ended {state}: {message}"
                self._seen_final.add(job_id)
        if open_:
            return f"{len(open_)} jobs not final, e.g. {open_[:3]}"
        for inst_id, origin in self.flows.items():
            node = self.nodes.get(origin)
            if node is None:
                return f"{origin} is not running"
            row = node.workflows._store.get(inst_id) if node.workflows is not None else None
            state = getattr(row, "state", None)
            if state is None or getattr(state, "value", state) != "COMPLETED":
                cur = row.current() if row is not None else None
                job = node.store.get(cur.job_id) if cur is not None and getattr(cur, "job_id", None) else None
                return (f"workflow {inst_id} at {origin} is {getattr(state, 'value', state)}: step "
                        f"{getattr(row, 'current_step', None)} {cur!r}; its job "
                        f"{None if job is None else (job.id, job.state.value, job.target)}")
        return None

    def _check_schedules(self) -> None:
        if self.schedule_id is None or self.healed_at is None:
            return
        fired: dict[str, int] = {}
        for name in self.names:
            node = self.nodes.get(name)
            if node is None:
                continue
            for (props,) in node.store.reader.execute(
                    "SELECT properties FROM jobs WHERE origin=? AND properties LIKE ?", (name, f"%{self.schedule_id}%")):
                slot = json.loads(props).get("scheduled_time")
                if slot:
                    fired[slot] = fired.get(slot, 0) + 1
        from ..job import parse_iso

        for slot, n in sorted(fired.items()):
            t = parse_iso(slot) - EPOCH
            near_fault = self.clock_jumped or any(s - 10.0 <= t <= e + 5.0 for s, e in self.fault_log)
            if n > 1 and not near_fault:
                self._fail("schedule-once", f"slot {slot} fired {n} times with no fault near it")
        assert self.loop is not None
        # Slots are the leader's idea of time. A node that was ever X s ahead may have fired the
        # next X s of slots early while it led (the missed ones among them coalesced into one
        # fire), and keeps them fired even when a jump back took its clock to 0 (seed 283): the
        # check starts X s later. A node behind by Y now fires Y s late: it ends Y s earlier.
        start = self.healed_at + (self.converged_s or 0) + 3 * self.cfg.timeout + 5 + self.max_lead
        end = self.loop.time() - 5 + min(0.0, *self.offsets.values())
        t = (int(start) // 5 + 1) * 5
        while t <= end:
            slot = _iso(EPOCH + t)
            if slot not in fired:
                self._fail("schedule-fires", f"slot {slot} after healing never fired")
            t += 5

    def _repairs(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for node in self.nodes.values():
            try:
                for k, v in node.repairs().items():
                    out[k] = out.get(k, 0) + v
            except Exception:
                pass
        return {k: v for k, v in out.items() if v}


def _iso(t: float) -> str:
    from ..job import iso

    return iso(t)
