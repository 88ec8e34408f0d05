"""Request validation for the HTTP API, pure: parsed JSON / query strings in, clean values out.

Kept apart from the handlers so that every rule (what a job body may contain, which
states a filter accepts, how large a limit may be) is tested without a server, and
so that every refusal is a ``ValidationError`` with a message a person can act on.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from functools import lru_cache

from ..errors import ValidationError
from ..job_options import OPTION_FIELDS, JobRequest, check_request
from ..job_options import kind_of as _kind
from ..job import JobState
from ..topics import TopicError, validate_pattern, validate_topic

JOB_FIELD_ORDER = ("topic", "properties", *OPTION_FIELDS)
JOB_FIELDS = frozenset(JOB_FIELD_ORDER)
_PLAIN_FIELDS = frozenset({"topic", "properties"})
MAX_WAIT = 25.0  # seconds a GET /jobs/{id}?wait= may hold the request (requests time out at 30 s)
MAX_BATCH = 10_000  # jobs in one POST; the body size limit usually bites first
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
OFFLOAD_MODES = ("enabled", "disabled", "exclusive")


def decode_json(raw: bytes) -> Any:
    """The request body as JSON, or a ValidationError that says why it is not."""
    if not raw.strip():
        raise ValidationError("request body is empty; expected JSON")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise ValidationError("request body is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ValidationError(f"invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


def parse_job_spec(item: Any, where: str = "body") -> JobRequest:
    """One ``{"topic": T, "properties": {...}, "delay"|"at", "key", "timeout", "priority"}`` object."""
    if type(item) is dict and item.keys() <= _PLAIN_FIELDS:  # the usual body: checked in a few steps
        topic = item.get("topic")
        props = item.get("properties")
        if type(topic) is str and (props is None or type(props) is dict) and _valid_topic_cached(topic) is None:
            return JobRequest(topic, props)
    if not isinstance(item, dict):
        raise ValidationError(f"{where}: expected a JSON object with a topic, got {_kind(item)}")
    unknown = set(item) - JOB_FIELDS
    if unknown:
        raise ValidationError(
            f"{where}: unknown field(s) {', '.join(sorted(map(repr, unknown)))}; allowed: "
            f"{', '.join(f for f in JOB_FIELD_ORDER)}"
        )
    if "topic" not in item:
        raise ValidationError(f"{where}: missing field 'topic'")
    topic = item["topic"]
    if not isinstance(topic, str):
        raise ValidationError(f"{where}: topic must be a string, got {_kind(topic)}")
    _valid_topic(topic, where)
    props = item.get("properties")
    if props is not None and not isinstance(props, dict):
        raise ValidationError(f"{where}: properties must be a JSON object, got {_kind(props)}")
    if len(item) == 1 or (len(item) == 2 and "properties" in item):
        return JobRequest(topic, props)
    at = item.get("at")
    if at is not None and not isinstance(at, str):
        raise ValidationError(f"{where}: at must be an ISO 8601 time such as 2031-12-01T09:00:00Z, got {_kind(at)}")
    req = JobRequest(topic, props, item.get("delay"), at, item.get("key"), item.get("timeout"), item.get("priority"),
                     parse_payload_field(item, where))
    return check_request(req, f"{where}: ")


@lru_cache(maxsize=16384)
def _valid_topic_cached(topic: str) -> str | None:
    try:
        validate_topic(topic)
    except TopicError as e:
        return str(e)
    return None


def _valid_topic(topic: str, where: str) -> None:
    err = _valid_topic_cached(topic)
    if err is not None:
        raise ValidationError(f"{where}: {err}")


def parse_payload_field(item: Any, where: str = "body") -> dict[str, str] | None:
    """``"payload": {"name": "sha256:<hex>"}`` -> the map (ids and names checked; unknown ids are
    the manager's 400)."""
    from ..blobs.store import check_id, check_name

    if not isinstance(item, dict) or item.get("payload") is None:
        return None
    payload = item["payload"]
    if not isinstance(payload, dict):
        raise ValidationError(f"{where}: payload must be a JSON object of names to blob ids, got {_kind(payload)}")
    for name, blob_id in payload.items():
        check_name(name, f"{where}: payload name")
        check_id(blob_id, f"{where}: payload {name!r}")
    return payload


def parse_job_body(body: Any) -> tuple[list[JobRequest], bool]:
    """A POST /jobs body -> (job requests, whether the body was a list)."""
    if isinstance(body, list):
        if len(body) > MAX_BATCH:
            raise ValidationError(f"too many jobs in one request ({len(body)}); at most {MAX_BATCH}")
        return [parse_job_spec(item, f"jobs[{i}]") for i, item in enumerate(body)], True
    return [parse_job_spec(body)], False


def parse_wait(query: Mapping[str, str]) -> float | None:
    """``?wait=S`` of ``GET /api/v1/jobs/{id}`` (a long poll: answer once the job is final or after
    S seconds, at most ``MAX_WAIT``), or None."""
    text = query.get("wait")
    if text in (None, ""):
        return None
    return parse_float(text, "wait", 0.0, MAX_WAIT)


def parse_find_query(query: Mapping[str, str]) -> dict[str, Any]:
    """``?state=&topic=&queue=&limit=`` -> keyword arguments for ``JobManager.find``."""
    out: dict[str, Any] = {"state": None, "topic": None, "queue": None, "limit": DEFAULT_LIMIT}
    state = query.get("state")
    if state:
        try:
            out["state"] = JobState(state.strip().upper())
        except ValueError:
            names = ", ".join(s.value for s in JobState)
            raise ValidationError(f"unknown state {state!r}; one of {names}") from None
    topic = query.get("topic")
    if topic:
        out["topic"] = topic
    queue = query.get("queue")
    if queue:
        out["queue"] = queue
    limit = query.get("limit")
    if limit not in (None, ""):
        out["limit"] = parse_int(limit, "limit", 1, MAX_LIMIT)
    return out


def parse_int(text: str, name: str, lo: int, hi: int) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ValidationError(f"{name} must be an integer, got {text!r}") from None
    if not lo <= value <= hi:
        raise ValidationError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def parse_float(text: str, name: str, lo: float, hi: float) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValidationError(f"{name} must be a number, got {text!r}") from None
    if not lo <= value <= hi:  # also refuses nan
        raise ValidationError(f"{name} must be between {lo} and {hi}, got {text}")
    return value


def parse_offloading_body(body: Any) -> str:
    """``{"enabled": bool}`` or ``{"exclusive": true}`` -> "enabled" | "disabled" | "exclusive"."""
    if not isinstance(body, dict):
        raise ValidationError(f"expected a JSON object, got {_kind(body)}")
    unknown = set(body) - {"enabled", "exclusive"}
    if unknown:
        raise ValidationError(
            f"unknown field(s) {', '.join(sorted(map(repr, unknown)))}; "
            'send {"enabled": true|false} or {"exclusive": true}'
        )
    if len(body) != 1:
        raise ValidationError('send exactly one of {"enabled": true|false} or {"exclusive": true}')
    if "enabled" in body:
        if not isinstance(body["enabled"], bool):
            raise ValidationError(f"enabled must be true or false, got {_kind(body['enabled'])}")
        return "enabled" if body["enabled"] else "disabled"
    if body["exclusive"] is not True:
        raise ValidationError('exclusive can only be set to true; use {"enabled": ...} to leave it')
    return "exclusive"


def parse_offload_topic(topic: str) -> str:
    """The topic (or pattern) at the end of an offloading path."""
    try:
        return validate_pattern(topic)
    except TopicError as e:
        raise ValidationError(str(e)) from None


def parse_event_topics(text: str | None) -> list[str] | None:
    """``?topics=job/finished,job/failed`` -> a list, or None for every notification."""
    if not text:
        return None
    topics = [t.strip() for t in text.split(",") if t.strip()]
    return topics or None
