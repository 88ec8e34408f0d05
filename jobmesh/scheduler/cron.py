"""Cron expressions read in a time zone's wall-clock time, across DST transitions.

croniter walks wall-clock times; a zone's clock skips an hour in spring and shows one twice
in autumn. These functions turn that walk into instants so that every wall-clock slot fires
once (a gap time an hour on, an overlap time at its first occurrence), for ``ScheduleSpec``'s
``tz`` (``schedule.py``). Pure: only ``croniter`` and ``zoneinfo``, times in epoch seconds;
kept apart from the schedule definitions because it is calendar arithmetic, nothing else.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import croniter

_SLACK = timedelta(hours=3)  # more than any DST shift: how far a transition's effect reaches


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _naive(ts: float, z: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ts, z).replace(tzinfo=None)


def _instant(local: datetime, z: ZoneInfo) -> tuple[float, bool]:
    """A wall-clock time of zone ``z`` as epoch seconds (the first occurrence when it happens twice;
    a time in a gap counts with the offset before the gap, so it lands where the clock would have
    shown it), and whether it exists on that zone's clock."""
    ts = local.replace(tzinfo=z, fold=0).timestamp()
    return ts, _naive(ts, z) == local


def _shift_near(ts: float, z: ZoneInfo, sign: int) -> bool:
    """Did the zone's offset change within ``_SLACK`` before (sign -1) or after (+1) ``ts``?"""
    return datetime.fromtimestamp(ts + sign * _SLACK.total_seconds(), z).utcoffset() != \
        datetime.fromtimestamp(ts, z).utcoffset()


def cron_next_in_zone(expr: str, z: ZoneInfo, after: float) -> float | None:
    """The first slot of ``expr`` read in zone ``z`` strictly after ``after`` (epoch seconds).

    Candidates are wall-clock times in order; their instants increase except across a gap,
    where gap times land an hour on (after the gap's first real times). So: the first existing
    candidate past ``after`` is the answer, unless gap candidates before it land earlier.
    Near a transition the walk starts ``_SLACK`` earlier, to see gap times that land past ``after``.
    """
    a = float(math.floor(after))
    start = _naive(a, z) - (_SLACK if _shift_near(a, z, -1) else timedelta(0))
    it = croniter(expr, start)
    best: float | None = None
    for _ in range(100_000):
        c = it.get_next(datetime)
        ts, exists = _instant(c, z)
        if ts <= after:
            continue
        best = ts if best is None else min(best, ts)
        if exists:
            return best
    return best


def cron_prev_in_zone(expr: str, z: ZoneInfo, now: float) -> float | None:
    """The latest slot of ``expr`` read in zone ``z`` at or before ``now`` (mirror of ``cron_next_in_zone``:
    walking back, overlap times of the second hour map to the first, so near a transition the walk
    starts ``_SLACK`` later)."""
    n = float(math.floor(now) + 1)
    start = _naive(n, z) + (_SLACK if _shift_near(n, z, -1) else timedelta(0))
    it = croniter(expr, start)
    best: float | None = None
    for _ in range(100_000):
        c = it.get_prev(datetime)
        ts, exists = _instant(c, z)
        if ts > now:
            continue
        best = ts if best is None else max(best, ts)
        if exists:
            return best
    return best



__all__ = ["cron_next_in_zone", "cron_prev_in_zone", "zone"]
