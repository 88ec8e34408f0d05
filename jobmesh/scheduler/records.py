"""Schedule definitions as a replicated last-writer-wins map: records, merges, digests.

The scheduler replicates its definitions to every node (any node may become the leader
that fires them) and merges what peers send: a record per schedule (or a tombstone) with
a version, newer wins, plus the last-fired times (later wins). Kept apart from the
definitions and firing rules (``schedule.py``), which this module builds on; ``schedule``
re-exports its names.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ValidationError

if TYPE_CHECKING:
    from .schedule import Schedule, ScheduleSpec


@dataclass(frozen=True)
class ScheduleRecord:
    """A replicated definition (or tombstone) with its version; merge keeps the newest.

    ``version`` is (epoch seconds of the change, node name) so concurrent changes on
    two nodes resolve the same way everywhere. A removal is a tombstone
    (``removed=True``) so replication does not bring a removed schedule back.
    """

    spec: ScheduleSpec
    created: float
    suspended: bool = False
    resumed: float = 0.0
    removed: bool = False
    version: tuple[float, str] = (0.0, "")

    @property
    def id(self) -> str:
        return self.spec.id

    def schedule(self) -> Schedule:
        from .schedule import Schedule  # that module imports this one

        return Schedule(self.spec, self.created, self.suspended, self.resumed)

    def to_wire(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_json(),
            "created": self.created,
            "suspended": self.suspended,
            "resumed": self.resumed,
            "removed": self.removed,
            "version": [self.version[0], self.version[1]],
        }

    @classmethod
    def from_wire(cls, d: Any) -> "ScheduleRecord":
        """Decode a peer's record; a malformed one raises ``ValidationError``."""
        if not isinstance(d, dict):
            raise ValidationError("schedule record must be an object")
        from .schedule import parse_schedule  # that module imports this one

        spec = parse_schedule(d.get("spec"))
        v = d.get("version")
        created = d.get("created")
        resumed = d.get("resumed", 0.0)
        if (
            not isinstance(v, (list, tuple))
            or len(v) != 2
            or not isinstance(v[0], (int, float))
            or not isinstance(v[1], str)
            or not isinstance(created, (int, float))
            or not isinstance(resumed, (int, float))
        ):
            raise ValidationError("schedule record needs version [time, node] and created")
        return cls(
            spec=spec,
            created=float(created),
            suspended=bool(d.get("suspended", False)),
            resumed=float(resumed),
            removed=bool(d.get("removed", False)),
            version=(float(v[0]), v[1]),
        )


def merge_records(
    mine: dict[str, ScheduleRecord], theirs: list[ScheduleRecord] | tuple[ScheduleRecord, ...]
) -> list[ScheduleRecord]:
    """The records from ``theirs`` that are newer than ours (to store and apply)."""
    newer = []
    for r in theirs:
        cur = mine.get(r.id)
        if cur is None or r.version > cur.version:
            newer.append(r)
    return newer


def records_digest(records: dict[str, ScheduleRecord] | list[ScheduleRecord]) -> str:
    """A short digest of (id, version) pairs: equal digests mean equal definitions."""
    items = records.values() if isinstance(records, dict) else records
    h = hashlib.sha256()
    for r in sorted(items, key=lambda r: r.id):
        h.update(f"{r.id}:{r.version[0]!r}:{r.version[1]};".encode())
    return h.hexdigest()[:16]


def merge_fired(mine: dict[str, float], theirs: Any) -> dict[str, float]:
    """Last-fired entries from a peer that are later than ours (max wins; junk ignored)."""
    out: dict[str, float] = {}
    if not isinstance(theirs, dict):
        return out
    for sid, t in theirs.items():
        if not isinstance(sid, str) or isinstance(t, bool) or not isinstance(t, (int, float)):
            continue
        if not math.isfinite(t):
            continue
        if t > mine.get(sid, -math.inf):
            out[sid] = float(t)
    return out


__all__ = ["ScheduleRecord", "merge_fired", "merge_records", "records_digest"]
