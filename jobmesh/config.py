"""Node configuration (DESIGN §5.4): TOML, every field optional, Sling's defaults.

``load_config`` reads a TOML file; ``NodeConfig.from_dict`` validates a dict with
clear errors; command-line flags override file values (see ``cli``).
"""

from __future__ import annotations

import difflib
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
    timeout: float | None = None  # time limit of a run in seconds (a consumer's or job's own beats it); None: none
    # spread retries: each backed-off delay is drawn from [delay/2, delay] (None: on when retry_backoff > 1)
    retry_jitter: bool | None = None

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
        if self.timeout is not None and (isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float))
                                         or not self.timeout > 0):
            raise ConfigError(f"queue {self.name}: timeout must be a number of seconds above 0")
        if self.retry_jitter is not None and not isinstance(self.retry_jitter, bool):
            raise ConfigError(f"queue {self.name}: retry_jitter must be true or false")
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
    # what peers are told to connect to (a 0.0.0.0 bind, containers, NAT); default: bind / pub
    advertise: str | None = None
    advertise_pub: str | None = None
    seeds: list[str] = field(default_factory=list)
    http: str | None = "127.0.0.1:8471"
    capacity: int = 16  # consumer slots
    durability: str = "normal"  # "normal" (survives kill -9) or "full" (fsync every commit)
    shutdown_grace: float = 10.0  # seconds running jobs get on SIGTERM
    stop_grace: float = 5.0  # seconds a stopped async consumer gets before it is cancelled
    history_ttl: float = 3600.0  # SUCCEEDED jobs kept this long
    failed_history_ttl: float = 48 * 3600.0  # other final states kept this long
    log_format: str = "console"
    # job payload (blobs): the largest upload, the store's quota (0: the disk), how long an
    # unreferenced blob is kept (s)
    max_blob_size: int = 1 << 30
    blob_quota: int = 0
    blob_gc_grace: float = 600.0
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    queues: list[QueueConfig] = field(default_factory=list)
    offloading: OffloadingConfig = field(default_factory=OffloadingConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)

    @property
    def pub_endpoint(self) -> str:
        if self.pub:
            return self.pub
        return next_port_endpoint(self.bind)

    @property
    def advertise_endpoint(self) -> str:
        """The ROUTER endpoint peers connect to: ``advertise`` (its port defaults to bind's), else ``bind``."""
        if not self.advertise:
            return self.bind
        return _with_port(self.advertise, _port_of(self.bind))

    @property
    def advertise_pub_endpoint(self) -> str:
        """The heartbeat endpoint peers subscribe to: ``advertise_pub``, else the advertised host
        with the PUB port, else ``pub_endpoint``."""
        if self.advertise_pub:
            return self.advertise_pub
        if not self.advertise:
            return self.pub_endpoint
        host = self.advertise.rpartition(":")[0] if _has_port(self.advertise) else self.advertise
        return f"{host}:{_port_of(self.pub_endpoint)}"

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
        unknown = sorted(set(raw) - known)
        if unknown:
            hint = did_you_mean(unknown[0], known) if len(unknown) == 1 else ""
            raise ConfigError(f"unknown section(s): {', '.join(unknown)}{hint}; "
                              f"the sections are {', '.join(sorted(known))}")
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
        if self.max_blob_size < 0 or self.blob_quota < 0 or self.blob_gc_grace < 0:
            raise ConfigError("node: max_blob_size, blob_quota and blob_gc_grace must be >= 0")
        if self.log_format not in ("console", "json"):
            raise ConfigError("node: log_format must be 'console' or 'json'")
        if self.discovery.heartbeat_interval <= 0 or (
            self.discovery.heartbeat_timeout <= self.discovery.heartbeat_interval
        ):
            raise ConfigError("discovery: need 0 < heartbeat_interval < heartbeat_timeout")
        if self.discovery.protocol not in DISCOVERY_PROTOCOLS:
            raise ConfigError(f"discovery: protocol must be one of {', '.join(DISCOVERY_PROTOCOLS)}")
        self._validate_endpoints()
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

    def _validate_endpoints(self) -> None:
        """bind/pub/seeds/advertise must be ``tcp://HOST:PORT``; http is normalized (a bare port is
        accepted). Runs before anything binds: a typo is one sentence, not a traceback."""
        if self.bind:
            self.bind = check_endpoint(self.bind, "bind", need_next=not self.pub)
        if self.pub:
            self.pub = check_endpoint(self.pub, "pub", example_port=5702)
        if not isinstance(self.seeds, list):
            raise ConfigError("seeds must be a list of endpoints like tcp://127.0.0.1:5701")
        self.seeds = [check_endpoint(s, "seed") for s in self.seeds]
        if self.advertise:
            self.advertise = check_endpoint(self.advertise, "advertise", port_optional=True)
        if self.advertise_pub:
            self.advertise_pub = check_endpoint(self.advertise_pub, "advertise_pub", example_port=5702)
        if self.http:
            self.http = normalize_http(self.http)


def did_you_mean(word: str, choices: Any) -> str:
    """`` (did you mean 'name'?)`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _apply(obj: Any, values: dict[str, Any], section: str, skip: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    if not isinstance(values, dict):
        raise ConfigError(f"{section} must be a table")
    allowed = {f.name: f for f in fields(obj) if f.name not in skip}
    for key, value in values.items():
        if key not in allowed:
            raise ConfigError(f"{section}: unknown field {key!r}{did_you_mean(key, allowed)}")
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
    if not sep or not port.isdigit() or "://" not in host:
        raise ConfigError(f"endpoint {endpoint!r} must look like tcp://HOST:PORT")
    return f"{host}:{int(port) + 1}"


# -- endpoints: checked before anything starts, each mistake one sentence with the fix ----------

MAX_PORT = 65535


def _has_port(endpoint: str) -> bool:
    rest = endpoint.partition("://")[2]
    head, sep, tail = rest.rpartition(":")
    return bool(sep) and not tail.endswith("]") and bool(head)


def _port_of(endpoint: str) -> int:
    return int(endpoint.rpartition(":")[2])


def _with_port(endpoint: str, port: int) -> str:
    return endpoint if _has_port(endpoint) else f"{endpoint}:{port}"


def check_endpoint(text: Any, what: str, example_port: int = 5701, need_next: bool = False,
                   port_optional: bool = False) -> str:
    """``tcp://HOST:PORT`` or a ConfigError that says what is wrong and what to write instead.

    ``what`` names the flag or field (``--seed``, ``bind``); ``need_next``: the port after it
    must exist too (a bind's heartbeats); ``port_optional``: ``tcp://HOST`` is fine (advertise).
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{what} must be an endpoint like tcp://127.0.0.1:{example_port}")
    text = text.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ConfigError(f"{what} {text!r} needs the scheme: write tcp://{text}")
    if scheme != "tcp":
        raise ConfigError(f"{what} {text!r}: only tcp:// endpoints are supported (tcp://{rest})")
    if not _has_port(text):
        if port_optional and rest:
            return text
        host = rest or "127.0.0.1"
        raise ConfigError(f"{what} {text!r} has no port: write tcp://{host}:{example_port}")
    host, _, port_text = rest.rpartition(":")
    if not port_text.isdigit():
        raise ConfigError(f"{what} {text!r}: the port must be a number, like tcp://{host}:{example_port}")
    port = int(port_text)
    if not 1 <= port <= MAX_PORT:
        raise ConfigError(f"{what} {text!r}: port {port} is out of range (1-{MAX_PORT})")
    if need_next and port == MAX_PORT:
        raise ConfigError(f"{what} {text!r}: heartbeats take the next port, and {MAX_PORT} is the last; "
                          f"choose a lower port")
    return text


def normalize_http(text: Any, what: str = "http") -> str:
    """``8472`` and ``:8472`` mean ``127.0.0.1:8472`` (loopback, as the default); ``http://H:P`` is
    ``H:P``; anything else must be ``HOST:PORT`` with a port in 0-65535 (0: the OS picks)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{what} must be HOST:PORT, a port, or 'off'")
    t = text.strip()
    for prefix in ("http://", "https://"):
        if t.startswith(prefix):
            t = t[len(prefix):].rstrip("/")
    if t.isdigit():
        t = "127.0.0.1:" + t
    elif t.startswith(":"):
        t = "127.0.0.1" + t
    host, sep, port_text = t.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{what} {text!r} must look like HOST:PORT, e.g. 127.0.0.1:8471 (or just a port: 8471)")
    if not port_text.isdigit():
        raise ConfigError(f"{what} {text!r}: the port must be a number, e.g. {host}:8471")
    if not 0 <= int(port_text) <= MAX_PORT:
        raise ConfigError(f"{what} {text!r}: port {port_text} is out of range (0-{MAX_PORT})")
    return t
