"""Node configuration (DESIGN §5.4): TOML, every field optional, Sling's defaults.

``load_config`` reads a TOML file; ``NodeConfig.from_dict`` validates a dict with
clear errors; command-line flags override file values (see ``cli``).
"""

from __future__ import annotations

import os
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .topics import TopicError, validate_pattern

QUEUE_TYPES = ("ordered", "unordered", "topic_round_robin")
MAIN_QUEUE = "main"


class ConfigError(ValueError):
    """Configuration that jobmesh cannot run with; the message says which field."""


@dataclass
class QueueConfig:
    """One ``[[queue]]``. Defaults follow Sling's job queue configuration."""

    name: str = MAIN_QUEUE
    topics: list[str] = field(default_factory=list)
    type: str = "unordered"
    ranking: int = 0
    max_parallel: float = 15  # Sling's default; -1 = one per core; 0<x<1 = fraction of cores
    retries: int = 10  # -1 = forever
    retry_delay: float = 2.0  # seconds
    retry_backoff: float = 1.0  # multiplier per retry (1 = constant delay)
    max_retry_delay: float = 3600.0  # cap on the backed-off delay
    priority: int = 0  # higher-priority queues get free consumer slots first
    keep_jobs: bool = False

    def parallelism(self, cores: int | None = None) -> int:
        """``max_parallel`` resolved to a number of concurrent jobs (ordered: always 1)."""
        if self.type == "ordered":
            return 1
        cores = cores or os.cpu_count() or 1
        mp = self.max_parallel
        if mp == -1:
            return cores
        if 0 < mp < 1:
            return max(1, int(cores * mp))
        return max(1, int(mp))

    def validate(self) -> "QueueConfig":
        if not self.name or not isinstance(self.name, str):
            raise ConfigError("queue: name must be a non-empty string")
        if self.type not in QUEUE_TYPES:
            raise ConfigError(f"queue {self.name}: type must be one of {', '.join(QUEUE_TYPES)}")
        for t in self.topics:
            try:
                validate_pattern(t)
            except TopicError as e:
                raise ConfigError(f"queue {self.name}: {e}") from None
        if self.name != MAIN_QUEUE and not self.topics:
            raise ConfigError(f"queue {self.name}: topics must list at least one pattern")
        if self.retries < -1:
            raise ConfigError(f"queue {self.name}: retries must be -1 (forever) or >= 0")
        if self.retry_delay < 0 or self.retry_backoff < 1 or self.max_retry_delay < 0:
            raise ConfigError(
                f"queue {self.name}: retry_delay >= 0, retry_backoff >= 1, max_retry_delay >= 0"
            )
        if not (self.max_parallel == -1 or self.max_parallel > 0):
            raise ConfigError(f"queue {self.name}: max_parallel must be -1, a fraction in (0,1) or >= 1")
        return self


DISCOVERY_PROTOCOLS = ("heartbeat", "swim")


@dataclass
class DiscoveryConfig:
    heartbeat_interval: float = 0.5  # with protocol "swim": the probe period
    heartbeat_timeout: float = 2.5
    # "heartbeat": all-to-all PUB/SUB heartbeats (membership.py); "swim": point-to-point probes
    # with piggybacked gossip, flat per-node cost at any size (swim.py; not wired to the actor yet)
    protocol: str = "heartbeat"


@dataclass
class OffloadingConfig:
    enabled_topics: list[str] = field(default_factory=lambda: ["**"])
    disabled_topics: list[str] = field(default_factory=list)


@dataclass
class SecurityConfig:
    """CURVE keys (z85 text or paths to pyzmq ``zmq.auth`` key files) and an HTTP token."""

    curve_public_key: str | None = None
    curve_secret_key: str | None = None
    curve_server_public_key: str | None = None  # the cluster's shared server key
    curve_server_secret_key: str | None = None
    curve_keys_dir: str | None = None  # directory of `*.key` certificates allowed to connect
    http_token: str | None = None


@dataclass
class NodeConfig:
    name: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    data: str = "data"
    bind: str = "tcp://127.0.0.1:5701"
    pub: str | None = None  # default: the next port after bind
    seeds: list[str] = field(default_factory=list)
    http: str | None = "127.0.0.1:8471"
    capacity: int = 16  # consumer slots
    durability: str = "normal"  # "normal" (survives kill -9) or "full" (fsync every commit)
    shutdown_grace: float = 10.0  # seconds running jobs get on SIGTERM
    stop_grace: float = 5.0  # seconds a stopped async consumer gets before it is cancelled
    history_ttl: float = 3600.0  # SUCCEEDED jobs kept this long
    failed_history_ttl: float = 48 * 3600.0  # other final states kept this long
    log_format: str = "console"
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    queues: list[QueueConfig] = field(default_factory=list)
    offloading: OffloadingConfig = field(default_factory=OffloadingConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)

    @property
    def pub_endpoint(self) -> str:
        if self.pub:
            return self.pub
        return next_port_endpoint(self.bind)

    def main_queue(self) -> QueueConfig:
        for q in self.queues:
            if q.name == MAIN_QUEUE:
                return q
        return QueueConfig(name=MAIN_QUEUE)

    def all_queues(self) -> list[QueueConfig]:
        """Configured queues plus the main queue (configured or default)."""
        qs = [q for q in self.queues if q.name != MAIN_QUEUE]
        return [self.main_queue(), *qs]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "NodeConfig":
        """Validate a TOML-shaped dict: ``[node]``, ``[discovery]``, ``[[queue]]``, ..."""
        known = {"node", "discovery", "queue", "offloading", "security"}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"unknown section(s): {', '.join(sorted(unknown))}")
        cfg = cls()
        _apply(cfg, raw.get("node", {}), "node", skip={"discovery", "queues", "offloading", "security"})
        _apply(cfg.discovery, raw.get("discovery", {}), "discovery")
        _apply(cfg.offloading, raw.get("offloading", {}), "offloading")
        _apply(cfg.security, raw.get("security", {}), "security")
        queues = raw.get("queue", [])
        if not isinstance(queues, list):
            raise ConfigError("queue must be an array of tables: [[queue]]")
        cfg.queues = []
        for q in queues:
            qc = QueueConfig(name="")
            _apply(qc, q, "queue")
            cfg.queues.append(qc)
        return cfg.validate()

    def validate(self) -> "NodeConfig":
        if not self.name:
            raise ConfigError("node: name must not be empty")
        if self.capacity < 1:
            raise ConfigError("node: capacity must be >= 1")
        if self.durability not in ("normal", "full"):
            raise ConfigError("node: durability must be 'normal' or 'full'")
        if self.log_format not in ("console", "json"):
            raise ConfigError("node: log_format must be 'console' or 'json'")
        if self.discovery.heartbeat_interval <= 0 or (
            self.discovery.heartbeat_timeout <= self.discovery.heartbeat_interval
        ):
            raise ConfigError("discovery: need 0 < heartbeat_interval < heartbeat_timeout")
        if self.discovery.protocol not in DISCOVERY_PROTOCOLS:
            raise ConfigError(f"discovery: protocol must be one of {', '.join(DISCOVERY_PROTOCOLS)}")
        names = set()
        for q in self.queues:
            q.validate()
            if q.name in names:
                raise ConfigError(f"queue {q.name}: defined twice")
            names.add(q.name)
        for t in [*self.offloading.enabled_topics, *self.offloading.disabled_topics]:
            try:
                validate_pattern(t)
            except TopicError as e:
                raise ConfigError(f"offloading: {e}") from None
        return self


def _apply(obj: Any, values: dict[str, Any], section: str, skip: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    if not isinstance(values, dict):
        raise ConfigError(f"{section} must be a table")
    allowed = {f.name: f for f in fields(obj) if f.name not in skip}
    for key, value in values.items():
        if key not in allowed:
            raise ConfigError(f"{section}: unknown field {key!r}")
        current = getattr(obj, key)
        if isinstance(current, bool) and not isinstance(value, bool):
            raise ConfigError(f"{section}.{key}: expected true or false")
        if isinstance(current, (int, float)) and not isinstance(current, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{section}.{key}: expected a number")
        if isinstance(current, list) and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise ConfigError(f"{section}.{key}: expected a list of strings")
        setattr(obj, key, value)


def load_config(path: str | os.PathLike[str] | None) -> NodeConfig:
    """Read a TOML file (or return the defaults when ``path`` is None)."""
    if path is None:
        return NodeConfig()
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None
    return NodeConfig.from_dict(raw)


def next_port_endpoint(endpoint: str) -> str:
    """``tcp://host:5701`` -> ``tcp://host:5702`` (the heartbeat PUB default)."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"endpoint {endpoint!r} must look like tcp://HOST:PORT")
    return f"{host}:{int(port) + 1}"
