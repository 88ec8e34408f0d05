"""A producer's per-job options (issue 12), pure: what ``add`` takes besides topic and properties.

``delay`` (seconds) or ``at`` (ISO 8601, a datetime or epoch seconds) make the job wait
QUEUED until then (its ``not_before``); ``key`` makes the add idempotent while a job with
that key is open at its origin; ``timeout`` is the job's own time limit in seconds;
``priority`` orders the jobs of one queue (higher first). The Python API, the HTTP API and
the clients share these checks, so a mistake reads the same everywhere.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, NamedTuple

from .errors import ValidationError
from .job import parse_iso

OPTION_FIELDS = ("delay", "at", "key", "timeout", "priority", "payload")
MAX_KEY = 200  # characters
MAX_DELAY = 10 * 365 * 86400.0  # ten years: further is a mistake (milliseconds taken for seconds)
PRIORITY_RANGE = (-1_000_000, 1_000_000)


class JobRequest(NamedTuple):
    """One job to add: topic, properties and the options (None = not given)."""

    topic: str
    properties: dict[str, Any] | None = None
    delay: float | None = None
    at: Any = None  # ISO 8601 text, an aware datetime (naive = UTC) or epoch seconds
    key: str | None = None
    timeout: float | None = None
    priority: int | None = None
    # job payload (issue 14): {name: Path | bytes | blob id}; the manager stores and checks it
    payload: Any = None

    @property
    def plain(self) -> bool:
        """No option given: the add's fast path."""
        return (self.delay is None and self.at is None and self.key is None and self.timeout is None
                and self.priority is None and self.payload is None)


def _number(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"{where}{name} must be a number of seconds, got {kind_of(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValidationError(f"{where}{name} must be a finite number")
    return value


def at_epoch(at: Any, where: str = "") -> float:
    """``at`` as epoch seconds: ISO text (``Z``, an offset, or naive = UTC), a datetime, or a number."""
    if isinstance(at, datetime):
        return (at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)).timestamp()
    if isinstance(at, str):
        try:
            return parse_iso(at.strip())
        except ValueError:
            raise ValidationError(f"{where}at must be an ISO 8601 time such as 2031-12-01T09:00:00Z, "
                                  f"got {at!r}") from None
    if isinstance(at, (int, float)) and not isinstance(at, bool) and math.isfinite(at):
        return float(at)
    raise ValidationError(f"{where}at must be an ISO 8601 time, got {kind_of(at)}")


def check_request(req: JobRequest, where: str = "") -> JobRequest:
    """``req`` with its options checked and normalized (``at`` as epoch seconds); ValidationError
    naming the field otherwise. ``where`` prefixes the message (``jobs[3]: ``)."""
    delay, at, key, timeout, priority = req.delay, req.at, req.key, req.timeout, req.priority
    if delay is not None:
        delay = _number(delay, "delay", where)
        if not 0 <= delay <= MAX_DELAY:
            raise ValidationError(f"{where}delay must be between 0 and {MAX_DELAY:.0f} seconds, got {delay:g}")
    if at is not None:
        if delay is not None:
            raise ValidationError(f"{where}give delay or at, not both")
        at = at_epoch(at, where)
    if key is not None:
        if not isinstance(key, str) or not key:
            raise ValidationError(f"{where}key must be a non-empty string, got {kind_of(key)}")
        if len(key) > MAX_KEY:
            raise ValidationError(f"{where}key is longer than {MAX_KEY} characters")
    if timeout is not None:
        timeout = _number(timeout, "timeout", where)
        if timeout <= 0:
            raise ValidationError(f"{where}timeout must be more than 0 seconds, got {timeout:g}")
    if priority is not None:
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValidationError(f"{where}priority must be a whole number, got {kind_of(priority)}")
        lo, hi = PRIORITY_RANGE
        if not lo <= priority <= hi:
            raise ValidationError(f"{where}priority must be between {lo} and {hi}, got {priority}")
    payload = req.payload
    if payload is not None and not isinstance(payload, dict):
        raise ValidationError(f"{where}payload must be a map of names to files, bytes or blob ids, "
                              f"got {kind_of(payload)}")
    return JobRequest(req.topic, req.properties, delay, at, key, timeout, priority, payload or None)


def not_before(req: JobRequest, now: float) -> float:
    """When a checked request's job may start: 0.0 (now) unless it has a delay or an ``at``."""
    if req.delay:
        return now + req.delay
    if req.at is not None and req.at > now:
        return float(req.at)
    return 0.0


def request_from(item: Any, where: str = "") -> JobRequest:
    """A ``JobRequest`` from what ``add_many`` takes: ``(topic, properties)``, a JobRequest, or a
    dict shaped like the HTTP body (``{"topic", "properties", "delay", ...}``). Not yet checked."""
    if isinstance(item, JobRequest):
        return item
    if isinstance(item, dict):
        unknown = set(item) - {"topic", "properties", *OPTION_FIELDS}
        if unknown:
            raise ValidationError(f"{where}unknown field(s) {', '.join(sorted(map(repr, unknown)))}; allowed: "
                                  f"topic, properties, {', '.join(OPTION_FIELDS)}")
        if "topic" not in item:
            raise ValidationError(f"{where}missing field 'topic'")
        return JobRequest(item["topic"], item.get("properties"), item.get("delay"), item.get("at"),
                          item.get("key"), item.get("timeout"), item.get("priority"), item.get("payload"))
    if type(item) is tuple and len(item) == 3:  # (topic, properties, payload)
        return JobRequest(item[0], item[1], payload=item[2])
    try:
        topic, props = item
    except (TypeError, ValueError):
        raise ValidationError(f"{where}expected (topic, properties) or a dict with a topic") from None
    return JobRequest(topic, props)


def kind_of(value: Any) -> str:
    """What a JSON value is, for messages: 'a string', 'a number', 'null', ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


__all__ = ["JobRequest", "OPTION_FIELDS", "at_epoch", "check_request", "kind_of", "not_before", "request_from"]
