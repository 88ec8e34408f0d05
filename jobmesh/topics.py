"""Topic patterns, pure: exact (``a/b``), one level (``a/b/*``), any depth (``a/**``).

Used by consumer registration and queue configuration alike. ``specificity`` ranks
patterns so that, among equally ranked queues, the most specific match wins.
"""

from __future__ import annotations

from functools import lru_cache


class TopicError(ValueError):
    """A topic or pattern that jobmesh cannot accept."""


def validate_topic(topic: str) -> str:
    """A job topic: non-empty slash-separated segments, no wildcards."""
    if not isinstance(topic, str) or not topic:
        raise TopicError("topic must be a non-empty string")
    if len(topic) > 512:
        raise TopicError("topic is longer than 512 characters")
    parts = topic.split("/")
    if any(p == "" for p in parts):
        raise TopicError(f"topic {topic!r} has an empty segment")
    if any(p in ("*", "**") for p in parts):
        raise TopicError(f"topic {topic!r} contains a wildcard; jobs need a concrete topic")
    return topic


def validate_pattern(pattern: str) -> str:
    """A pattern: segments, of which only the last may be ``*`` or ``**``."""
    if not isinstance(pattern, str) or not pattern:
        raise TopicError("topic pattern must be a non-empty string")
    parts = pattern.split("/")
    if any(p == "" for p in parts):
        raise TopicError(f"topic pattern {pattern!r} has an empty segment")
    for p in parts[:-1]:
        if p in ("*", "**"):
            raise TopicError(f"topic pattern {pattern!r}: a wildcard may only be the last segment")
    return pattern


@lru_cache(maxsize=65536)
def matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` matches ``pattern``. ``*`` is one segment, ``**`` one or more."""
    if pattern == topic:
        return True
    if pattern == "**":
        return True
    if pattern.endswith("/**"):
        prefix = pattern[:-2]  # keeps the trailing slash
        return topic.startswith(prefix) and len(topic) > len(prefix)
    if pattern.endswith("/*"):
        prefix = pattern[:-1]
        return topic.startswith(prefix) and "/" not in topic[len(prefix):] and len(topic) > len(prefix)
    if pattern == "*":
        return "/" not in topic
    return False


def specificity(pattern: str) -> tuple[int, int]:
    """Higher is more specific: exact beats ``*`` beats ``**``, deeper beats shallower."""
    parts = pattern.split("/")
    last = parts[-1]
    kind = 0 if last == "**" else 1 if last == "*" else 2
    return (kind, len(parts))


def best_match(patterns: list[str], topic: str) -> str | None:
    """The most specific of ``patterns`` that matches ``topic``, or None."""
    best: str | None = None
    for p in patterns:
        if matches(p, topic) and (best is None or specificity(p) > specificity(best)):
            best = p
    return best
