"""Scheduled jobs, the pure core: definitions, validation, fire times, due lists.

No I/O and no clock of its own: every function takes ``now``/``after`` as epoch
seconds, so the rules below are tested with a fake clock.

Forms (Sling's ``ScheduleBuilder`` plus plain cron and intervals), all in UTC:

- ``at``: an ISO 8601 time; fires once, then the schedule is removed.
- ``every``: N seconds. Slots are multiples of N since the Unix epoch (UTC), so
  ``every: 60`` fires on each minute boundary and every node computes the same slots
  — a new leader continues on the same grid instead of restarting the interval.
- ``cron``: a croniter expression (5 fields, or 6 with seconds last), evaluated in UTC.
- ``hourly`` {minute}, ``daily`` {hour, minute}, ``weekly`` {weekday, hour, minute},
  ``monthly`` {day, hour, minute}, ``yearly`` {month, day, hour, minute}: cron in disguise.
- ``tz`` (cron and the calendar forms): an IANA time zone (``Europe/Amsterdam``); the
  expression is then read in that zone's wall-clock time. Across DST every wall-clock slot
  fires once: a slot in a spring-forward gap (02:30 on the night 02:00 jumps to 03:00) fires
  at the instant the clock would have shown it, one hour on (03:30 summer time); a slot in a
  fall-back overlap (02:30 happens twice) fires at its first occurrence only.

Identity: a schedule's id is a hash of its normalised content (topic, properties,
form), so an identical request finds the existing schedule (Sling names schedules
by a hash of their content) and every node derives the same id.

Firing rules (``due``): a schedule fires for the latest slot in
``(last fired, now]``; if several slots were missed (no leader was running), it
fires ONCE for the latest of them — no burst — and a slot at or before the last
fired one never fires again. Slots before the schedule was created never fire.
Suspended schedules do not fire (and do not catch up on resume).

Two parts have modules of their own, whose names this one re-exports: ``cron.py`` (a cron
expression read in a time zone, across DST) and ``records.py`` (the definitions replicated
as a last-writer-wins map: ``ScheduleRecord``, merges, digests).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from ..errors import ValidationError
from ..job import iso, parse_iso
from ..topics import TopicError, validate_topic
from .cron import cron_next_in_zone, cron_prev_in_zone, zone
from .records import ScheduleRecord, merge_fired, merge_records, records_digest

KINDS = ("at", "every", "cron", "hourly", "daily", "weekly", "monthly", "yearly")
RESERVED_PROPERTIES = ("schedule_id", "scheduled_time")
MIN_EVERY = 0.1  # seconds; a tighter loop is a mistake, not a schedule
MAX_EVERY = 366 * 86400.0
AT_PAST_GRACE = 60.0  # an `at` up to this far in the past is accepted and fires at once

WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # cron numbering: 0 = Sunday
_WEEKDAY_NAMES = {
    **{d: d for d in WEEKDAYS},
    "sunday": "sun",
    "monday": "mon",
    "tuesday": "tue",
    "wednesday": "wed",
    "thursday": "thu",
    "friday": "fri",
    "saturday": "sat",
}


@dataclass(frozen=True)
class ScheduleSpec:
    """The content of a schedule: what its id hashes. ``when`` is the normalised form."""

    topic: str
    properties: dict[str, Any]
    kind: str
    when: Any  # at: epoch float; every: float seconds; cron: str; builders: dict
    tz: str | None = None  # cron and builders: the IANA zone their wall-clock times are in (None: UTC)

    @property
    def id(self) -> str:
        return schedule_id(self)

    def cron_expression(self) -> str | None:
        """The cron expression behind cron and the builder forms (None for at/every)."""
        w = self.when
        if self.kind == "cron":
            return str(w)
        if self.kind == "hourly":
            return f"{w['minute']} * * * *"
        if self.kind == "daily":
            return f"{w['minute']} {w['hour']} * * *"
        if self.kind == "weekly":
            return f"{w['minute']} {w['hour']} * * {WEEKDAYS.index(w['weekday'])}"
        if self.kind == "monthly":
            return f"{w['minute']} {w['hour']} {w['day']} * *"
        if self.kind == "yearly":
            return f"{w['minute']} {w['hour']} {w['day']} {w['month']} *"
        return None

    def when_json(self) -> Any:
        if self.kind == "at":
            return iso(self.when)
        if self.kind == "every":
            return _num(self.when)
        if isinstance(self.when, dict):
            return dict(self.when)
        return self.when

    def to_json(self) -> dict[str, Any]:
        """The definition as a POST body: posting it again finds the same schedule."""
        d = {"topic": self.topic, "properties": self.properties, self.kind: self.when_json()}
        if self.tz is not None:
            d["tz"] = self.tz
        return d

    def next_fire(self, after: float) -> float | None:
        """The first slot strictly after ``after`` (epoch seconds), or None if none is left."""
        if self.kind == "at":
            return self.when if self.when > after else None
        if self.kind == "every":
            step = _ms(self.when)
            return (math.floor(_ms_floor(after) / step) + 1) * step / 1000.0
        expr = self.cron_expression()
        assert expr is not None
        try:
            if self.tz is not None:
                return cron_next_in_zone(expr, zone(self.tz), after)
            # cron slots are whole seconds, so "after floor(after)" is "after after"
            return float(croniter(expr, float(math.floor(after))).get_next(float))
        except CroniterBadDateError:
            return None

    def last_slot(self, now: float) -> float | None:
        """The latest slot at or before ``now``, or None if there is none."""
        if self.kind == "at":
            return self.when if self.when <= now else None
        if self.kind == "every":
            step = _ms(self.when)
            return math.floor(_ms_floor(now) / step) * step / 1000.0
        expr = self.cron_expression()
        assert expr is not None
        try:
            if self.tz is not None:
                return cron_prev_in_zone(expr, zone(self.tz), now)
            return float(croniter(expr, float(math.floor(now) + 1)).get_prev(float))
        except CroniterBadDateError:
            return None


@dataclass(frozen=True)
class Schedule:
    """A schedule as the scheduler keeps it: the spec plus its lifecycle fields."""

    spec: ScheduleSpec
    created: float
    suspended: bool = False
    resumed: float = 0.0  # slots before the last resume are not caught up

    @property
    def id(self) -> str:
        return self.spec.id

    def to_json(self, last_fired: float | None = None, now: float | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "kind": self.spec.kind, **self.spec.to_json()}
        d["suspended"] = self.suspended
        d["created"] = iso(self.created)
        d["last_fired"] = iso(last_fired)
        nxt = None
        if not self.suspended and now is not None:
            nxt = next_fire_time(self, last_fired, now)
        d["next_fire"] = iso(nxt)
        return d


@dataclass(frozen=True)
class Fire:
    """One firing decided by ``due``: make a job for ``schedule`` at ``slot``."""

    schedule_id: str
    slot: float  # the scheduled time (epoch seconds) this firing stands for
    missed: int = 0  # slots skipped because they were missed (fired once instead)
    remove_after: bool = False  # an `at` schedule: remove it once this fire is recorded


# -- parsing and validation ---------------------------------------------------------


def parse_schedule(body: Any, now: float | None = None) -> ScheduleSpec:
    """Validate a POST body (DESIGN §5.2) into a spec; ``ValidationError`` says what is wrong.

    ``now`` (epoch seconds), when given, rejects an ``at`` time more than
    ``AT_PAST_GRACE`` seconds in the past and a cron that can never fire again.
    """
    if not isinstance(body, dict):
        raise ValidationError("schedule must be a JSON object")
    allowed = {"topic", "properties", "tz", *KINDS}
    # output fields of a listed schedule are tolerated so a GET result can be re-posted
    ignored = {"id", "kind", "suspended", "created", "last_fired", "next_fire"}
    unknown = set(body) - allowed - ignored
    if unknown:
        raise ValidationError(f"unknown schedule field(s): {', '.join(sorted(unknown))}")
    topic = body.get("topic")
    if not isinstance(topic, str):
        raise ValidationError("schedule needs a 'topic' (string)")
    try:
        validate_topic(topic)
    except TopicError as e:
        raise ValidationError(str(e)) from None
    props = body.get("properties")
    if props is None:
        props = {}
    if not isinstance(props, dict):
        raise ValidationError("'properties' must be a JSON object")
    for key in RESERVED_PROPERTIES:
        if key in props:
            raise ValidationError(f"property {key!r} is set by the scheduler; choose another name")
    try:
        props = json.loads(json.dumps(props, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValidationError(f"'properties' must be JSON-compatible: {e}") from None
    given = [k for k in KINDS if k in body]
    if len(given) != 1:
        raise ValidationError(
            "schedule needs exactly one of 'at', 'every', 'cron', 'hourly', 'daily', 'weekly', "
            f"'monthly', 'yearly' (got {', '.join(given) if given else 'none'})"
        )
    kind = given[0]
    when = _parse_when(kind, body[kind])
    tz = _parse_tz(body.get("tz"), kind)
    spec = ScheduleSpec(topic=topic, properties=props, kind=kind, when=when, tz=tz)
    if kind != "every":
        ref = now if now is not None else 0.0
        if kind == "at":
            if now is not None and when < now - AT_PAST_GRACE:
                raise ValidationError(f"'at' {iso(when)} is in the past")
        elif spec.next_fire(ref) is None:
            raise ValidationError(f"{kind} {spec.when_json()!r} never fires")
    return spec


def _parse_tz(raw: Any, kind: str) -> str | None:
    """``tz``: an IANA zone name for cron and the calendar forms; None (or "UTC") is UTC."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        raise ValidationError("'tz' must be a time zone name such as 'Europe/Amsterdam'")
    if kind in ("at", "every"):
        raise ValidationError(f"'tz' applies to cron and the calendar forms, not to '{kind}' "
                              "('at' takes an offset in its ISO time; 'every' counts seconds)")
    name = raw.strip()
    if name in ("UTC", "Etc/UTC", "Z"):
        return None
    try:
        zone(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValidationError(f"unknown time zone {raw!r}: use an IANA name such as 'Europe/Amsterdam'") from None
    return name


def _parse_when(kind: str, raw: Any) -> Any:
    if kind == "at":
        if not isinstance(raw, str):
            raise ValidationError("'at' must be an ISO 8601 time string, e.g. 2026-12-01T08:00:00Z")
        try:
            ts = parse_iso(raw)
        except ValueError:
            raise ValidationError(f"'at' is not an ISO 8601 time: {raw!r}") from None
        return round(ts, 3)
    if kind == "every":
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
            raise ValidationError("'every' must be a number of seconds")
        if not MIN_EVERY <= raw <= MAX_EVERY:
            raise ValidationError(f"'every' must be between {_num(MIN_EVERY)} and {_num(MAX_EVERY)} seconds")
        return _ms(raw) / 1000.0
    if kind == "cron":
        if not isinstance(raw, str) or not raw.strip():
            raise ValidationError("'cron' must be a cron expression string, e.g. '*/5 * * * *'")
        expr = " ".join(raw.split())
        if len(expr.split(" ")) not in (5, 6):
            raise ValidationError("'cron' needs 5 fields (minute hour day month weekday), or 6 with seconds last")
        try:
            ok = croniter.is_valid(expr)
        except Exception:  # croniter raises more than its own errors on odd input
            ok = False
        if not ok:
            raise ValidationError(f"invalid cron expression: {raw!r}")
        try:
            croniter(expr, 0.0)
        except (CroniterBadCronError, ValueError, KeyError) as e:
            raise ValidationError(f"invalid cron expression {raw!r}: {e}") from None
        return expr
    if kind == "hourly":
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = {"minute": raw}
        d = _fields(kind, raw, ("minute",))
        return {"minute": _int_in(d, "minute", 0, 59, kind)}
    if kind == "daily":
        if isinstance(raw, str):
            raw = _hhmm(kind, raw)
        d = _fields(kind, raw, ("hour", "minute"))
        return {"hour": _int_in(d, "hour", 0, 23, kind), "minute": _int_in(d, "minute", 0, 59, kind)}
    if kind == "weekly":
        d = _fields(kind, raw, ("weekday", "hour", "minute"))
        return {
            "weekday": _weekday(d["weekday"]),
            "hour": _int_in(d, "hour", 0, 23, kind),
            "minute": _int_in(d, "minute", 0, 59, kind),
        }
    if kind == "monthly":
        d = _fields(kind, raw, ("day", "hour", "minute"))
        return {
            "day": _int_in(d, "day", 1, 31, kind),
            "hour": _int_in(d, "hour", 0, 23, kind),
            "minute": _int_in(d, "minute", 0, 59, kind),
        }
    if kind == "yearly":
        d = _fields(kind, raw, ("month", "day", "hour", "minute"))
        return {
            "month": _int_in(d, "month", 1, 12, kind),
            "day": _int_in(d, "day", 1, 31, kind),
            "hour": _int_in(d, "hour", 0, 23, kind),
            "minute": _int_in(d, "minute", 0, 59, kind),
        }
    raise ValidationError(f"unknown schedule kind {kind!r}")  # pragma: no cover - KINDS guards


def _fields(kind: str, raw: Any, names: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValidationError(f"'{kind}' must be an object with {', '.join(names)}")
    missing = [n for n in names if n not in raw]
    extra = sorted(set(raw) - set(names))
    if missing or extra:
        raise ValidationError(
            f"'{kind}' needs exactly {', '.join(names)}"
            + (f" (missing {', '.join(missing)})" if missing else "")
            + (f" (unknown {', '.join(extra)})" if extra else "")
        )
    return raw


def _int_in(d: dict[str, Any], name: str, lo: int, hi: int, kind: str) -> int:
    v = d[name]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValidationError(f"'{kind}.{name}' must be an integer from {lo} to {hi}")
    return v


def _hhmm(kind: str, text: str) -> dict[str, int]:
    h, sep, m = text.partition(":")
    if not sep or not h.strip().isdigit() or not m.strip().isdigit():
        raise ValidationError(f"'{kind}' time must look like HH:MM, got {text!r}")
    return {"hour": int(h), "minute": int(m)}


def _weekday(v: Any) -> str:
    """Weekday as a name (``mon``/``monday``) or a cron/ISO number: 0 or 7 Sunday, 1 Monday."""
    if isinstance(v, str):
        name = _WEEKDAY_NAMES.get(v.strip().lower())
        if name is None:
            raise ValidationError(f"'weekly.weekday' must be a day name (mon..sun) or 0-7, got {v!r}")
        return name
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 7:
        return WEEKDAYS[v % 7]
    raise ValidationError(f"'weekly.weekday' must be a day name (mon..sun) or 0-7 (0 and 7 = Sunday), got {v!r}")


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def _ms_floor(t: float) -> int:
    # slots live on a millisecond grid; round away float noise before flooring
    return math.floor(round(t * 1000, 3))


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def schedule_id(spec: ScheduleSpec) -> str:
    """A stable id from the normalised content: same request, same id, on every node."""
    content = {"topic": spec.topic, "properties": spec.properties, spec.kind: spec.when_json()}
    if spec.tz is not None:  # only then: ids of UTC schedules stay what they were
        content["tz"] = spec.tz
    canonical = json.dumps(
        content,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# -- firing -------------------------------------------------------------------------


def _reference(schedule: Schedule, last_fired: float | None) -> float:
    """Slots at or before this time are done (or predate the schedule)."""
    if schedule.spec.kind == "at":
        # an `at` fires once whenever it is not recorded as fired, even if late
        return last_fired if last_fired is not None else -math.inf
    # a slot exactly at creation (or resume) time counts as before the schedule was active
    ref = max(schedule.created, schedule.resumed)
    return ref if last_fired is None else max(last_fired, ref)


def due(
    schedules: list[Schedule] | tuple[Schedule, ...],
    last_fired: dict[str, float],
    now: float,
) -> list[Fire]:
    """The firings to make at ``now``: at most one per schedule, for its latest due slot."""
    fires: list[Fire] = []
    for s in schedules:
        if s.suspended:
            continue
        lf = last_fired.get(s.id)
        if s.spec.kind == "at" and lf is not None:
            continue  # fired already; waiting to be removed
        ref = _reference(s, lf)
        slot = s.spec.last_slot(now)
        if slot is None or slot <= ref:
            continue
        missed = 0
        if s.spec.kind != "at":
            missed = _count_missed(s.spec, ref, slot)
        fires.append(Fire(s.id, slot, missed=missed, remove_after=s.spec.kind == "at"))
    fires.sort(key=lambda f: (f.slot, f.schedule_id))
    return fires


def _count_missed(spec: ScheduleSpec, ref: float, slot: float, limit: int = 1000) -> int:
    """Slots in (ref, slot) that were skipped, counted up to ``limit`` (for the log only)."""
    if spec.kind == "every":
        step = _ms(spec.when)
        n = _ms_floor(slot) // step - _ms_floor(ref) // step - 1
        return max(0, min(int(n), limit))
    if not math.isfinite(ref):
        return 0
    n = 0
    t = spec.next_fire(ref)
    while t is not None and t < slot and n < limit:
        n += 1
        t = spec.next_fire(t)
    return n


def next_fire_time(schedule: Schedule, last_fired: float | None, now: float) -> float | None:
    """When ``schedule`` fires next, seen from ``now`` (``now`` itself if it is due)."""
    if schedule.suspended:
        return None
    if due([schedule], {schedule.id: last_fired} if last_fired is not None else {}, now):
        return now
    if schedule.spec.kind == "at":
        return None if last_fired is not None else schedule.spec.next_fire(now)
    ref = max(now, _reference(schedule, last_fired))
    return schedule.spec.next_fire(ref)


def next_wakeup(
    schedules: list[Schedule] | tuple[Schedule, ...],
    last_fired: dict[str, float],
    now: float,
) -> float | None:
    """The earliest time any schedule fires next, or None if nothing will fire."""
    best: float | None = None
    for s in schedules:
        t = next_fire_time(s, last_fired.get(s.id), now)
        if t is not None and (best is None or t < best):
            best = t
    return best


def utc(ts: float) -> datetime:
    """Epoch seconds as an aware UTC datetime (for messages and tests)."""
    return datetime.fromtimestamp(ts, tz=timezone.utc)


__all__ = [
    "Fire",
    "KINDS",
    "Schedule",
    "ScheduleRecord",
    "ScheduleSpec",
    "due",
    "merge_fired",
    "merge_records",
    "next_fire_time",
    "next_wakeup",
    "parse_schedule",
    "records_digest",
    "schedule_id",
]
