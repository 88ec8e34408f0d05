"""Per-node offloading settings (AEM's Offloading Browser): which topics this node runs.

Three modes per topic, as ``PUT /api/v1/offloading/{node}/{topic}`` sets them:
``enabled`` (the node runs the topic's jobs, its own and others'), ``disabled``
(it runs none of them; its own go elsewhere) and ``exclusive`` (it runs only this
topic). The settings start from ``[offloading]`` in the configuration; a change at
runtime is written to ``offloading.json`` in the data directory and wins over the
configuration from then on, so it survives a restart.

Pure apart from ``load``/``save`` (a small JSON file, written atomically).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import structlog

from .errors import ValidationError
from .topics import TopicError, matches, validate_pattern

log = structlog.get_logger("jobmesh.offloading")

MODES = ("enabled", "disabled", "exclusive")
SETTINGS_FILE = "offloading.json"


def _check_pattern(topic: str) -> str:
    if not isinstance(topic, str) or not topic:
        raise ValidationError("topic must be a non-empty string")
    try:
        validate_pattern(topic)
    except TopicError as e:
        raise ValidationError(str(e)) from None
    return topic


@dataclass
class OffloadSettings:
    """Enabled and disabled topic patterns, and an optional exclusive topic."""

    enabled: list[str] = field(default_factory=lambda: ["**"])
    disabled: list[str] = field(default_factory=list)
    exclusive: str | None = None
    _cache: dict[str, bool] = field(default_factory=dict, repr=False, compare=False)

    # -- decisions -------------------------------------------------------------------
    def allows(self, topic: str) -> bool:
        """Whether this node may run jobs of ``topic`` (its own or another node's)."""
        hit = self._cache.get(topic)
        if hit is None:
            if self.exclusive is not None:
                hit = matches(self.exclusive, topic)
            else:
                hit = any(matches(p, topic) for p in self.enabled) and not any(
                    matches(p, topic) for p in self.disabled)
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[topic] = hit
        return hit

    def enabled_patterns(self) -> list[str]:
        """What the heartbeat's ``offload_topics`` is built from (exclusive: just that topic)."""
        return [self.exclusive] if self.exclusive is not None else list(self.enabled)

    def offload_topics(self, consumer_topics: Iterable[str]) -> list[str]:
        """The heartbeat's ``offload_topics``: the consumer patterns enabled here, plus enabled
        patterns narrower than a consumer pattern (exclusive: just that topic)."""
        if self.exclusive is not None:
            return [self.exclusive]
        topics = list(consumer_topics)
        out = []
        for t in topics:
            probe = probe_topic(t)
            if any(p == t or matches(p, probe) for p in self.enabled) and not any(
                    p == t or matches(p, probe) for p in self.disabled):
                out.append(t)
        for p in self.enabled:
            if p not in out and any(matches(t, probe_topic(p)) for t in topics):
                out.append(p)
        return sorted(out)

    def disabled_patterns(self) -> list[str]:
        return [] if self.exclusive is not None else list(self.disabled)

    def mode_of(self, topic: str) -> str:
        if self.exclusive is not None:
            return "exclusive" if self.exclusive == topic else "disabled"
        return "enabled" if self.allows(topic) else "disabled"

    # -- changes ---------------------------------------------------------------------
    def apply(self, topic: str, mode: str) -> None:
        """Set ``topic`` to ``mode``; ``ValidationError`` for an unknown mode or a bad pattern."""
        _check_pattern(topic)
        if mode not in MODES:
            raise ValidationError(f"unknown offloading mode {mode!r}; one of {', '.join(MODES)}")
        if mode == "exclusive":
            self.exclusive = topic
        elif mode == "enabled":
            if self.exclusive == topic:
                self.exclusive = None  # exclusive -> plainly enabled
            elif self.exclusive is not None:
                # leaving exclusive mode for another topic: the exclusive one stays enabled
                self.enabled = _add(self.enabled, self.exclusive)
                self.exclusive = None
            self.disabled = [p for p in self.disabled if p != topic]
            if not any(matches(p, topic) or p == topic for p in self.enabled):
                self.enabled = _add(self.enabled, topic)
        else:  # disabled
            if self.exclusive == topic:
                self.exclusive = None
            self.enabled = [p for p in self.enabled if p != topic] or self.enabled
            self.disabled = _add(self.disabled, topic)
        self._cache.clear()

    # -- JSON and persistence -----------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"enabled": list(self.enabled), "disabled": list(self.disabled), "exclusive": self.exclusive}

    @classmethod
    def from_json(cls, data: Any) -> "OffloadSettings":
        if not isinstance(data, dict):
            raise ValidationError("offloading settings must be a JSON object")
        enabled = data.get("enabled", ["**"])
        disabled = data.get("disabled", [])
        exclusive = data.get("exclusive")
        if not isinstance(enabled, list) or not isinstance(disabled, list):
            raise ValidationError("offloading settings: enabled/disabled must be lists")
        for p in [*enabled, *disabled]:
            _check_pattern(p)
        if exclusive is not None:
            _check_pattern(exclusive)
        return cls(list(enabled), list(disabled), exclusive)

    @classmethod
    def load(cls, data_dir: str | os.PathLike[str] | None, enabled: Iterable[str],
             disabled: Iterable[str]) -> "OffloadSettings":
        """The persisted settings if a runtime change was saved, else the configured ones."""
        default = cls(list(enabled) or [], list(disabled))
        if data_dir is None:
            return default
        path = Path(data_dir) / SETTINGS_FILE
        try:
            raw = path.read_text()
        except FileNotFoundError:
            return default
        except OSError as e:
            log.warning("offloading settings unreadable; using the configuration", path=str(path), error=str(e))
            return default
        try:
            return cls.from_json(json.loads(raw))
        except (ValueError, ValidationError) as e:
            log.warning("offloading settings invalid; using the configuration", path=str(path), error=str(e))
            return default

    def save(self, data_dir: str | os.PathLike[str] | None) -> None:
        """Write atomically (temp file + rename), so a crash never leaves half a file."""
        if data_dir is None:
            return
        d = Path(data_dir)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / (SETTINGS_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self.to_json(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, d / SETTINGS_FILE)


def probe_topic(pattern: str) -> str:
    """A topic a pattern matches (its wildcards filled in), to compare patterns with patterns."""
    if pattern in ("*", "**"):
        return "x"
    return pattern.replace("/**", "/x").replace("/*", "/x")


def _add(patterns: list[str], p: str) -> list[str]:
    return patterns if p in patterns else [*patterns, p]


__all__ = ["MODES", "OffloadSettings"]
