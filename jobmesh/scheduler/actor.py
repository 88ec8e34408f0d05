"""The scheduler actor: durable schedules, a timer, leader-only firing, replication.

``SchedulerActor(node)`` is ``node.schedules`` (DESIGN §5.3): ``add``, ``list``,
``get``, ``remove``, ``suspend``, ``resume``. The rules (forms, ids, which slot is
due, missed fires) live in the pure ``schedule`` module; this is the async shell.

- Persistence: ``schedules.sqlite`` in the node's data dir (``ScheduleStore``):
  definitions and last fired slots survive restarts.
- Firing: a timer task asks the actor to ``tick`` at the next due time (at most
  ``max_sleep`` later, and at once when something changes). A tick fires only on the
  leader (``node.topology.leader == node.name``, view current, and only after a settle
  period of one heartbeat timeout since start, so a node that has not yet heard the
  others does not fire as a one-node topology). Each fire adds one job with the
  schedule's properties plus ``schedule_id`` and ``scheduled_time``.
- Replication over discovery's heartbeat properties: every node publishes
  ``schedules = {"digest", "fired", "records" | None, "url"}``. ``fired`` (last slot
  per id, merged by max) tells a new leader what the old one fired, so it neither
  double-fires nor bursts. Definitions are a last-writer-wins map of records
  (tombstones for removals); they ride in the heartbeat when small
  (``inline_limit`` bytes), otherwise a node whose digest differs pulls them from the
  peer's HTTP API (``GET /api/v1/schedules?records=1``).
"""

from __future__ import annotations

import asyncio
import json
from .. import clock as _clock
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import structlog

from ..actor import Actor, ActorSystem
from ..errors import ActorStopped, NotFound, ValidationError
from ..job import iso
from .schedule import (
    KINDS,
    ScheduleRecord,
    due,
    merge_fired,
    merge_records,
    next_wakeup,
    parse_schedule,
    records_digest,
)
from .store import ScheduleStore

log = structlog.get_logger("jobmesh.scheduler")

PROPERTY = "schedules"  # the heartbeat property this actor publishes
DB_FILE = "schedules.sqlite"


class _Tick:
    """Timer message: fire what is due; answers the next wake-up time."""


_TICK = _Tick()


class SchedulerActor(Actor):
    """``node.schedules``: the public schedule API and the leader's timer."""

    def __init__(
        self,
        node: Any,
        *,
        clock: Callable[[], float] | None = None,
        path: str | Path | None = None,
        max_sleep: float = 5.0,
        follower_poll: float = 0.5,
        settle: float | None = None,
        inline_limit: int = 16 * 1024,
        tombstone_ttl: float = 7 * 86400.0,
        pull_timeout: float = 5.0,
        pull_interval: float = 10.0,
    ) -> None:
        super().__init__("scheduler")
        self.node = node
        clock = clock or getattr(node, "clock", None) or _clock.wall  # the node's clock by default
        self.clock = clock
        data_dir = getattr(node, "data_dir", None) or node.config.data
        self.path = Path(path) if path is not None else Path(data_dir) / DB_FILE
        self.max_sleep = max_sleep
        self.follower_poll = follower_poll
        if settle is None:
            # a node that just started has not heard its peers yet: its one-node view
            # would make it leader and fire what the real leader fires too
            cfg = getattr(node, "config", None)
            settle = cfg.discovery.heartbeat_timeout if cfg is not None else 0.0
        self.settle = settle
        self.inline_limit = inline_limit
        self.tombstone_ttl = tombstone_ttl
        self.pull_timeout = pull_timeout
        self.pull_interval = pull_interval
        self.log = log.bind(node=node.name)
        self._born = clock()
        self._store: ScheduleStore | None = None
        self._records: dict[str, ScheduleRecord] = {}
        self._fired: dict[str, float] = {}
        self._changed = asyncio.Event()
        self._published: Any = None
        self._inline_cache: tuple[str, list[dict[str, Any]] | None] | None = None  # (digest, records)
        self._pulling: set[str] = set()
        self._pulled: dict[str, tuple[Any, float]] = {}  # peer -> (digest, monotonic time) of the last pull
        self._listening = False
        self._own_system: ActorSystem | None = None
        self.fired_count = 0  # jobs this node made from schedules (for metrics/tests)

    # -- public API (node.schedules) ---------------------------------------------------

    async def add(
        self,
        topic: str,
        properties: dict[str, Any] | None = None,
        *,
        at: str | datetime | None = None,
        every: float | None = None,
        cron: str | None = None,
        hourly: Any = None,
        daily: Any = None,
        weekly: Any = None,
        monthly: Any = None,
        yearly: Any = None,
        tz: str | None = None,
    ) -> dict[str, Any]:
        """Add a schedule (exactly one form); an identical one returns the existing schedule.
        ``tz`` (an IANA zone) reads cron and the calendar forms in that zone's wall-clock time."""
        body: dict[str, Any] = {"topic": topic, "properties": properties or {}}
        if tz is not None:
            body["tz"] = tz
        forms = {"at": at, "every": every, "cron": cron, "hourly": hourly, "daily": daily,
                 "weekly": weekly, "monthly": monthly, "yearly": yearly}
        for k, v in forms.items():
            if v is not None:
                if k == "at" and isinstance(v, datetime):
                    v = (v if v.tzinfo else v.replace(tzinfo=timezone.utc)).isoformat()
                body[k] = v
        schedule, _new = await self.create(body)
        return schedule

    async def create(self, body: Any) -> tuple[dict[str, Any], bool]:
        """Add from a POST body; returns (schedule, True if it is new)."""
        return await self.ask(("add", body))

    async def list(self) -> list[dict[str, Any]]:
        return await self.ask(("list",))

    async def get(self, schedule_id: str) -> dict[str, Any]:
        return await self.ask(("get", schedule_id))

    async def remove(self, schedule_id: str) -> dict[str, Any]:
        """Remove a schedule (everywhere: a tombstone replicates); returns it as it was."""
        return await self.ask(("remove", schedule_id))

    async def suspend(self, schedule_id: str) -> dict[str, Any]:
        return await self.ask(("suspend", schedule_id, True))

    async def resume(self, schedule_id: str) -> dict[str, Any]:
        return await self.ask(("suspend", schedule_id, False))

    async def records(self) -> list[dict[str, Any]]:
        """Every definition and tombstone in wire form (what a peer pulls to replicate)."""
        return await self.ask(("records",))

    # -- lifecycle ---------------------------------------------------------------------

    async def on_start(self) -> None:
        self._store = await asyncio.to_thread(ScheduleStore, self.path)
        self._records, self._fired = await asyncio.to_thread(self._store.load)
        if not self._listening:
            add_listener = getattr(self.node, "add_topology_listener", None)
            if add_listener is not None:
                try:
                    add_listener(self._on_topology_event)
                    self._listening = True
                except Exception as e:  # the timer still polls the topology; only wake-ups are slower
                    self.log.warning("could not listen to topology events", error=repr(e))
        self.spawn(self._timer(), name="scheduler:timer")
        self._publish()
        self.log.info("scheduler started", schedules=len(self._live()), path=str(self.path))

    async def on_stop(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            await asyncio.to_thread(store.close)

    def _on_topology_event(self, event: Any) -> None:
        # peers' properties changed or the leader may have moved: look now
        self._changed.set()

    async def _timer(self) -> None:
        """Ask for a tick at each wake-up; sleep until the next one or until a change."""
        while True:
            self._changed.clear()  # a change during the tick wakes the next wait at once
            try:
                wake = await self.ask(_TICK, timeout=60.0)
            except ActorStopped:
                return
            except asyncio.TimeoutError:
                self.log.warning("scheduler tick timed out")
                wake = None
            now = self.clock()
            delay = self.max_sleep if wake is None else min(max(wake - now, 0.0), self.max_sleep)
            if delay > 0:
                try:
                    await asyncio.wait_for(self._changed.wait(), delay)
                except asyncio.TimeoutError:
                    pass

    # -- messages ----------------------------------------------------------------------

    async def receive(self, msg: Any) -> Any:
        if msg is _TICK:
            return await self._tick()
        kind = msg[0]
        if kind == "add":
            return await self._add(msg[1])
        if kind == "list":
            now = self.clock()
            return [self._json(r, now) for r in sorted(self._live(), key=lambda r: (r.created, r.id))]
        if kind == "get":
            return self._json(self._require(msg[1]), self.clock())
        if kind == "remove":
            return await self._remove(msg[1])
        if kind == "suspend":
            return await self._suspend(msg[1], msg[2])
        if kind == "records":
            return [r.to_wire() for r in self._records.values()]
        if kind == "merge":
            await self._merge(msg[1], msg[2])
            return None
        raise ValidationError(f"scheduler: unknown message {kind!r}")

    def _live(self) -> list[ScheduleRecord]:
        return [r for r in self._records.values() if not r.removed]

    def _require(self, schedule_id: Any) -> ScheduleRecord:
        if not isinstance(schedule_id, str):
            raise ValidationError("schedule id must be a string")
        rec = self._records.get(schedule_id)
        if rec is None or rec.removed:
            raise NotFound(f"no schedule {schedule_id}")
        return rec

    def _json(self, rec: ScheduleRecord, now: float) -> dict[str, Any]:
        return rec.schedule().to_json(last_fired=self._fired.get(rec.id), now=now)

    def _version(self, schedule_id: str, now: float) -> tuple[float, str]:
        """A version newer than the current one even if this clock went backwards."""
        cur = self._records.get(schedule_id)
        t = now if cur is None else max(now, cur.version[0] + 1e-6)
        return (t, self.node.name)

    async def _save(
        self,
        records: list[ScheduleRecord] | None = None,
        fired: dict[str, float] | None = None,
        forget: list[str] | None = None,
    ) -> None:
        if self._store is None:
            raise ActorStopped("scheduler is stopped")
        await asyncio.to_thread(self._store.save, records or [], fired, forget or [])

    async def _add(self, body: Any) -> tuple[dict[str, Any], bool]:
        now = self.clock()
        spec = parse_schedule(body, now=now)
        cur = self._records.get(spec.id)
        if cur is not None and not cur.removed:
            return self._json(cur, now), False
        rec = ScheduleRecord(spec, created=now, version=self._version(spec.id, now))
        await self._save([rec])
        self._records[rec.id] = rec
        self.log.info("schedule added", schedule_id=rec.id, topic=spec.topic, kind=spec.kind,
                      when=spec.when_json())
        self._after_change()
        return self._json(rec, now), True

    async def _remove(self, schedule_id: Any) -> dict[str, Any]:
        rec = self._require(schedule_id)
        now = self.clock()
        shown = self._json(rec, now)
        gone = ScheduleRecord(rec.spec, rec.created, rec.suspended, rec.resumed, removed=True,
                              version=self._version(rec.id, now))
        await self._save([gone])
        self._records[rec.id] = gone
        self.log.info("schedule removed", schedule_id=rec.id, topic=rec.spec.topic)
        self._after_change()
        return shown

    async def _suspend(self, schedule_id: Any, suspended: bool) -> dict[str, Any]:
        rec = self._require(schedule_id)
        now = self.clock()
        if rec.suspended == suspended:
            return self._json(rec, now)
        new = ScheduleRecord(rec.spec, rec.created, suspended,
                             rec.resumed if suspended else now,
                             version=self._version(rec.id, now))
        await self._save([new])
        self._records[rec.id] = new
        self.log.info("schedule suspended" if suspended else "schedule resumed", schedule_id=rec.id)
        self._after_change()
        return self._json(new, now)

    def _after_change(self) -> None:
        self._publish()
        self._changed.set()

    # -- firing ------------------------------------------------------------------------

    def _is_leader(self, now: float) -> bool:
        view = getattr(self.node, "topology", None)
        if view is None:
            return False
        if view.leader != self.node.name or not getattr(view, "current", True):
            return False
        return now - self._born >= self.settle

    async def _tick(self) -> float | None:
        now = self.clock()
        await self._absorb_topology()
        await self._collect_tombstones(now)
        if not self._is_leader(now) or not getattr(self.node.jobs, "accepting", True):
            # a follower, or a node draining for shutdown: the next leader fires what is due
            return now + self.follower_poll
        schedules = [r.schedule() for r in self._live()]
        fires = due(schedules, self._fired, now)
        fired: dict[str, float] = {}
        removed: list[ScheduleRecord] = []
        failed = False
        items = [
            (self._records[f.schedule_id].spec.topic,
             {**self._records[f.schedule_id].spec.properties, "schedule_id": f.schedule_id,
              "scheduled_time": iso(f.slot)})
            for f in fires
        ]
        jobs: list[Any] = []
        if len(items) > 1:
            try:  # many slots at one instant (crons on the minute): one transaction
                jobs = await self.node.jobs.add_many(items)
            except Exception as e:
                self.log.warning("batch add of scheduled jobs failed; adding one by one", error=repr(e))
                jobs = []
        if not jobs:
            for topic, props in items:
                try:
                    jobs.append(await self.node.jobs.add(topic, props))
                except Exception as e:  # the job store refused: try again on the next tick
                    self.log.error("scheduled job could not be added", schedule_id=props["schedule_id"],
                                   topic=topic, error=repr(e))
                    failed = True
                    jobs.append(None)
        for f, job in zip(fires, jobs):
            if job is None:
                continue
            rec = self._records[f.schedule_id]
            self.fired_count += 1
            fired[rec.id] = f.slot
            self._fired[rec.id] = f.slot
            self.log.info("schedule fired", schedule_id=rec.id, topic=rec.spec.topic,
                          scheduled_time=iso(f.slot), job_id=job.id, missed=f.missed)
            if f.missed:
                self.log.warning("missed slots fired once", schedule_id=rec.id, missed=f.missed)
            if f.remove_after:
                removed.append(ScheduleRecord(rec.spec, rec.created, rec.suspended, rec.resumed,
                                              removed=True, version=self._version(rec.id, now)))
        if fired or removed:
            await self._save(removed, fired)
            for r in removed:
                self._records[r.id] = r
        self._publish()  # also catches node.http_url, known only once HTTP serves
        nxt = next_wakeup([r.schedule() for r in self._live()], self._fired, self.clock())
        if failed:
            retry = self.clock() + 1.0
            nxt = retry if nxt is None else min(nxt, retry)
        return nxt

    async def _collect_tombstones(self, now: float) -> None:
        old = [r.id for r in self._records.values() if r.removed and r.version[0] < now - self.tombstone_ttl]
        if old:
            await self._save(forget=old)
            for sid in old:
                self._records.pop(sid, None)
                self._fired.pop(sid, None)
            self._publish()

    # -- replication -------------------------------------------------------------------

    def _property_value(self) -> dict[str, Any]:
        digest = records_digest(self._records)
        if self._inline_cache is None or self._inline_cache[0] != digest:
            wire: list[dict[str, Any]] | None = [r.to_wire() for r in self._records.values()]
            if len(json.dumps(wire, separators=(",", ":"))) > self.inline_limit:
                wire = None  # too large for a heartbeat: peers pull it from `url`
            self._inline_cache = (digest, wire)
        return {
            "digest": digest,
            "fired": dict(self._fired),
            "records": self._inline_cache[1],
            "url": getattr(self.node, "http_url", None),
        }

    def _publish(self) -> None:
        set_property = getattr(self.node, "set_property", None)
        if set_property is None:
            return
        value = self._property_value()
        if value == self._published:
            return
        try:
            set_property(PROPERTY, value)
        except Exception as e:  # discovery refused (e.g. too large): keep running locally
            self.log.error("could not publish schedule state", error=repr(e))
            return
        self._published = value

    async def _absorb_topology(self) -> None:
        """Merge what peers publish: later fired slots, newer definitions (or pull them)."""
        view = getattr(self.node, "topology", None)
        if view is None:
            return
        my_digest = records_digest(self._records)
        for inst in getattr(view, "instances", ()):
            if inst.name == self.node.name:
                continue
            value = (inst.properties or {}).get(PROPERTY)
            if not isinstance(value, dict):
                continue
            newer_fired = merge_fired(self._fired, value.get("fired"))
            records: list[ScheduleRecord] = []
            if value.get("digest") != my_digest:
                inline = value.get("records")
                if isinstance(inline, list):
                    records = self._decode_records(inline, inst.name)
                else:
                    self._pull(inst.name, value.get("url"), value.get("digest"))
            if newer_fired or records:
                await self._merge(records, newer_fired)
                my_digest = records_digest(self._records)

    def _decode_records(self, raw: list[Any], peer: str) -> list[ScheduleRecord]:
        out = []
        for item in raw[:10_000]:
            try:
                out.append(ScheduleRecord.from_wire(item))
            except ValidationError as e:
                self.log.warning("bad schedule record from peer ignored", peer=peer, error=str(e))
        return out

    async def _merge(self, records: list[ScheduleRecord], fired: dict[str, float]) -> None:
        newer = merge_records(self._records, records)
        fired = merge_fired(self._fired, fired)
        if not newer and not fired:
            return
        await self._save(newer, fired)
        for r in newer:
            self._records[r.id] = r
            self.log.info("schedule replicated", schedule_id=r.id, removed=r.removed,
                          suspended=r.suspended, version=r.version)
        self._fired.update(fired)
        self._after_change()

    def _pull(self, peer: str, url: Any, digest: Any) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")) or peer in self._pulling:
            return
        now = _clock.monotonic()
        last = self._pulled.get(peer)
        if last is not None and last[0] == digest and now - last[1] < self.pull_interval:
            return  # pulled this very state lately; a record we cannot use stays unusable
        self._pulled[peer] = (digest, now)
        self._pulling.add(peer)
        self.spawn(self._pull_from(peer, url), name=f"scheduler:pull:{peer}")

    async def _pull_from(self, peer: str, url: str) -> None:
        """Fetch a peer's records over its HTTP API; any failure is logged, never a crash."""
        import aiohttp

        try:
            headers = {}
            token = getattr(getattr(getattr(self.node, "config", None), "security", None), "http_token", None)
            if token:
                headers["Authorization"] = f"Bearer {token}"
            timeout = aiohttp.ClientTimeout(total=self.pull_timeout)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.get(f"{url.rstrip('/')}/api/v1/schedules",
                                       params={"records": "1"}, headers=headers) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"HTTP {resp.status}")
                    body = await resp.json()
            raw = body.get("records") if isinstance(body, dict) else None
            if not isinstance(raw, list):
                raise RuntimeError("answer has no records list")
            records = self._decode_records(raw, peer)
            self.tell(("merge", records, {}))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.log.warning("could not pull schedules from peer", peer=peer, url=url, error=repr(e))
        finally:
            self._pulling.discard(peer)


async def attach(node: Any, system: ActorSystem | None = None, **options: Any) -> SchedulerActor:
    """Start a scheduler for ``node`` and expose it as ``node.schedules``.

    ``system`` is the node's ``ActorSystem`` (stopped with the node); without one the
    scheduler gets its own, stopped by ``detach``.
    """
    actor = SchedulerActor(node, **options)
    if system is None:
        actor._own_system = ActorSystem()
        await actor._own_system.start(actor)
    else:
        await system.start(actor)
    node.schedules = actor
    return actor


async def detach(node: Any) -> None:
    """Stop a scheduler started by ``attach`` without a system."""
    actor = getattr(node, "schedules", None)
    if isinstance(actor, SchedulerActor) and actor._own_system is not None:
        await actor._own_system.stop_all()


__all__ = ["KINDS", "SchedulerActor", "attach", "detach"]
