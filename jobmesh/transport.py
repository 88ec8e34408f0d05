"""ZeroMQ, kept in one place (DESIGN §4): the only module of jobmesh that imports zmq.

- ``Transport``: one per node. Owns the node's ZeroMQ context and, with CURVE keys
  configured, its ZAP authenticator (a thread, so handshakes do not depend on a
  busy event loop). Makes every socket with the same rules: a maximum message size,
  no linger, CURVE server on bound sockets and CURVE client on connecting ones.
- ``Endpoint``: the node's ROUTER (its ``--bind`` endpoint), a node-level message
  endpoint. Parts register a handler per message type (discovery: ``join``;
  transfer: its job messages). ``ROUTER_MANDATORY`` is set, so sending to a peer
  that is not connected raises ``PeerUnreachable`` instead of vanishing.
- ``Dealer``: a connection to one peer's ROUTER, with ``request`` (reply matched by
  a request id, bounded by a timeout).

The seam (DESIGN §4): the rest of jobmesh sees only ``Endpoint``, ``Dealer`` and the four
socket roles below (``RouterSocket``, ``DealerSocket``, ``PubSocket``, ``SubSocket``), which
a transport makes. ``Transport`` here makes them from ZeroMQ; ``jobmesh.sim.transport`` makes
them from the simulated network. ``Transport.threads`` says whether heartbeats may run in
threads of their own (ZeroMQ) or must run as tasks on the loop (the simulation).

CURVE model: the cluster shares one server key pair, used by every node's bound
sockets (ROUTER, PUB); connecting sockets (DEALER, SUB) authenticate with a client
key pair (by default the same shared pair). A bound socket accepts only client
public keys it knows: its own and those in ``curve_keys_dir``. A node without the
keys can neither complete a handshake with a member nor be heard by one.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol, Union

import structlog
import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from . import clock as _clock
from . import wire
from .config import ConfigError, SecurityConfig
from .errors import JobmeshError

log = structlog.get_logger("jobmesh.transport")

Frames = list[bytes]


class PeerUnreachable(JobmeshError):
    """A message could not be handed to the peer (not connected, or its queue is full)."""

    http_status = 503


class BindError(JobmeshError):
    """An endpoint of this node cannot be bound (port in use, bad address)."""

    http_status = 500


class RequestTimeout(JobmeshError):
    http_status = 504


# -- CURVE keys ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CurveKeys:
    """z85-encoded keys (bytes, as pyzmq wants them)."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes
    allowed_clients: frozenset[bytes] = field(default_factory=frozenset)


def _is_z85_key(text: str) -> bool:
    return len(text) == 40 and not os.path.exists(text)


def _read_key(value: str, what: str, secret: bool) -> tuple[bytes, bytes | None]:
    """A z85 key as text, or a pyzmq certificate file; returns (key, public-if-known)."""
    if _is_z85_key(value):
        return value.encode("ascii"), None
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"security.{what}: neither a 40-character z85 key nor a key file: {value!r}")
    try:
        public, sec = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as e:
        raise ConfigError(f"security.{what}: cannot read {path}: {e}") from None
    if secret:
        if sec is None:
            raise ConfigError(f"security.{what}: {path} holds no secret key")
        return sec, public
    return public, None


def load_curve_keys(security: SecurityConfig) -> CurveKeys | None:
    """The node's CURVE set-up from ``[security]``, or None when no key is configured.

    Minimal configuration: ``curve_server_public_key`` and ``curve_server_secret_key``
    (the cluster's shared pair); every node with them is a member. Optional:
    a per-node client pair (``curve_public_key``/``curve_secret_key``) and
    ``curve_keys_dir`` of allowed client public keys (pyzmq ``*.key`` certificates).
    """
    s = security
    if not any([s.curve_public_key, s.curve_secret_key, s.curve_server_public_key, s.curve_server_secret_key]):
        if s.curve_keys_dir:
            raise ConfigError("security.curve_keys_dir needs curve_server_public_key and curve_server_secret_key")
        return None
    if not s.curve_server_public_key or not s.curve_server_secret_key:
        raise ConfigError("security: CURVE needs curve_server_public_key and curve_server_secret_key")
    server_public, _ = _read_key(s.curve_server_public_key, "curve_server_public_key", secret=False)
    server_secret, _ = _read_key(s.curve_server_secret_key, "curve_server_secret_key", secret=True)
    if s.curve_public_key and not s.curve_secret_key:
        raise ConfigError("security: curve_public_key needs curve_secret_key")
    if s.curve_secret_key:
        client_secret, public_from_file = _read_key(s.curve_secret_key, "curve_secret_key", secret=True)
        if s.curve_public_key:
            client_public, _ = _read_key(s.curve_public_key, "curve_public_key", secret=False)
        elif public_from_file is not None:
            client_public = public_from_file
        else:
            raise ConfigError("security: a z85 curve_secret_key needs curve_public_key")
    else:
        client_public, client_secret = server_public, server_secret
    for key, what in ((server_public, "server public"), (server_secret, "server secret"),
                      (client_public, "public"), (client_secret, "secret")):
        if len(key) != 40:
            raise ConfigError(f"security: the CURVE {what} key must be 40 z85 characters")
    if zmq.curve_public(server_secret) != server_public:
        raise ConfigError("security: curve_server_secret_key does not match curve_server_public_key")
    if zmq.curve_public(client_secret) != client_public:
        raise ConfigError("security: curve_secret_key does not match curve_public_key")
    allowed = {client_public}
    if s.curve_keys_dir:
        d = Path(s.curve_keys_dir)
        if not d.is_dir():
            raise ConfigError(f"security.curve_keys_dir: not a directory: {d}")
        for f in sorted(d.glob("*.key")):
            try:
                pub, _ = zmq.auth.load_certificate(str(f))
            except (ValueError, OSError) as e:
                raise ConfigError(f"security.curve_keys_dir: cannot read {f}: {e}") from None
            allowed.add(pub)
    return CurveKeys(server_public, server_secret, client_public, client_secret, frozenset(allowed))


def generate_keypair() -> tuple[str, str]:
    """A new (public, secret) z85 pair, e.g. for a test or ``[security]``."""
    public, secret = zmq.curve_keypair()
    return public.decode("ascii"), secret.decode("ascii")


class _AllowedKeys:
    """ZAP credentials provider: accept only the cluster's client keys."""

    def __init__(self, allowed: frozenset[bytes], node: str) -> None:
        self.allowed = allowed
        self.log = log.bind(node=node)
        self._last_log = 0.0

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.allowed
        if not ok and time.monotonic() - self._last_log > 1.0:
            self._last_log = time.monotonic()
            self.log.warning("refused a peer without the cluster's CURVE key", key=key[:8].decode("ascii", "replace"))
        return ok


# -- the transport --------------------------------------------------------------------------


class TransportClosed(Exception):
    """The socket or its transport was closed (the node is stopping)."""


class RouterSocket(Protocol):
    """A bound ROUTER: messages from any connected dealer, replies by identity."""

    async def recv(self) -> list[bytes] | None:
        """``[identity, *frames]``; None once the socket is closed. A large frame may be a
        ``memoryview`` rather than ``bytes``."""

    async def send(self, identity: bytes, frames: list[bytes]) -> None:
        """Raises ``PeerUnreachable`` if no peer with that identity is connected."""

    def close(self) -> None: ...


class DealerSocket(Protocol):
    """A connection to one peer's ROUTER."""

    async def send(self, frames: list[bytes], timeout: float) -> None:
        """Raises ``PeerUnreachable`` if it cannot be handed over within ``timeout``."""

    async def recv(self, timeout: float) -> list[bytes]:
        """Raises ``asyncio.TimeoutError`` after ``timeout``."""

    def close(self) -> None: ...


class PubSocket(Protocol):
    """A bound PUB, used by one thread (or task): fire and forget."""

    def send_nowait(self, frames: list[bytes]) -> bool:
        """False if dropped (high-water mark); ``TransportClosed`` once closed."""

    def close(self) -> None: ...


class SubSocket(Protocol):
    """A SUB receiving everything from the PUB endpoints it is connected to."""

    def connect(self, endpoint: str) -> None: ...

    def disconnect(self, endpoint: str) -> None: ...

    def recv_nowait(self) -> list[bytes] | None:
        """The next message, or None if none is waiting; ``TransportClosed`` once closed."""

    def close(self) -> None: ...


ZERO_COPY_FRAME = 64 * 1024  # frames at least this large are sent and received without a copy


class _ZmqRouter:
    def __init__(self, sock: Any) -> None:
        self._sock = sock

    async def recv(self) -> list[bytes] | None:
        try:
            frames = await self._sock.recv_multipart(copy=False)
        except zmq.ZMQError as e:
            if is_socket_closed_error(e):
                return None
            raise
        # small frames as bytes; a large one (a blob chunk's raw frame) as a view of ZeroMQ's own
        # buffer: a megabyte is not copied on the loop (the view keeps the message alive)
        return [f.buffer if len(f) >= ZERO_COPY_FRAME else f.bytes for f in frames]

    async def send(self, identity: bytes, frames: list[bytes]) -> None:
        try:
            await self._sock.send_multipart([identity, *frames], flags=zmq.NOBLOCK)
        except zmq.ZMQError as e:
            if e.errno in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                raise PeerUnreachable(f"peer {identity!r} is not connected") from None
            raise

    def close(self) -> None:
        self._sock.close()


class _ZmqDealer:
    def __init__(self, sock: Any) -> None:
        self._sock = sock

    async def send(self, frames: list[bytes], timeout: float) -> None:
        # a large frame (a blob chunk's data) goes without a copy: pyzmq copies otherwise, about
        # 0.4 ms of the loop per megabyte; small frames are cheaper copied
        copy = all(len(f) < ZERO_COPY_FRAME for f in frames)
        fut = self._sock.send_multipart(frames, copy=copy)  # pyzmq tries a non-blocking send first
        if fut.done():
            fut.result()  # handed over at once (the usual case): no timer, no task
            return
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise PeerUnreachable(f"could not send within {timeout:.1f} s") from None

    async def recv(self, timeout: float) -> list[bytes]:
        return await asyncio.wait_for(self._sock.recv_multipart(), timeout)

    def close(self) -> None:
        self._sock.close()


class _ZmqPub:
    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def send_nowait(self, frames: list[bytes]) -> bool:
        try:
            self._sock.send_multipart(frames, flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False  # PUB drops at the high-water mark; the next heartbeat replaces it
        except zmq.ZMQError as e:
            raise TransportClosed(str(e)) from None

    def close(self) -> None:
        self._sock.close()


class _ZmqSub:
    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def connect(self, endpoint: str) -> None:
        try:
            self._sock.connect(endpoint)
        except zmq.ZMQError as e:
            raise ValueError(str(e)) from None

    def disconnect(self, endpoint: str) -> None:
        try:
            self._sock.disconnect(endpoint)
        except zmq.ZMQError:
            pass

    def recv_nowait(self) -> list[bytes] | None:
        try:
            return self._sock.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            return None
        except zmq.ZMQError as e:
            raise TransportClosed(str(e)) from None

    def close(self) -> None:
        self._sock.close()


class Transport:
    """A node's ZeroMQ context, authenticator and socket factory."""

    threads = True  # heartbeats run in threads of their own (they must not depend on a busy loop)

    def __init__(
        self, node: str, curve: CurveKeys | None = None, max_message_size: int = wire.MAX_MESSAGE_SIZE
    ) -> None:
        self.node = node
        self.curve = curve
        self.max_message_size = max_message_size
        self.ctx = zmq.asyncio.Context()
        # a sync view of the same context, for threads (the heartbeat PUB, the authenticator)
        self.sync_ctx = zmq.Context.shadow(self.ctx.underlying)
        self._auth: ThreadAuthenticator | None = None
        self._closed = False
        if curve is not None:
            self._auth = ThreadAuthenticator(self.sync_ctx, log=None)
            self._auth.start()
            self._auth.configure_curve_callback("*", credentials_provider=_AllowedKeys(curve.allowed_clients, node))

    @property
    def secure(self) -> bool:
        return self.curve is not None

    def _setup(self, sock: Any, server: bool) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_size)
        if self.curve is not None:
            if server:
                sock.curve_server = True
                sock.curve_secretkey = self.curve.server_secret
                sock.curve_publickey = self.curve.server_public
            else:
                sock.curve_serverkey = self.curve.server_public
                sock.curve_publickey = self.curve.client_public
                sock.curve_secretkey = self.curve.client_secret

    def pub_socket(self, endpoint: str) -> zmq.Socket:
        """A bound PUB socket for a thread (sync). Raises ``zmq.ZMQError`` if it cannot bind."""
        sock = self.sync_ctx.socket(zmq.PUB)
        self._setup(sock, server=True)
        sock.setsockopt(zmq.SNDHWM, 100)  # heartbeats are worthless once stale
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as e:
            sock.close(0)
            raise BindError(f"cannot bind the heartbeat endpoint {endpoint}: {e.strerror}") from None
        return sock

    def sub_socket(self) -> zmq.asyncio.Socket:
        """An async SUB socket receiving everything; connect it to each member's PUB."""
        sock = self.ctx.socket(zmq.SUB)
        self._setup(sock, server=False)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.setsockopt(zmq.RCVHWM, 10_000)
        return sock

    def sub_socket_sync(self) -> zmq.Socket:
        """The same as ``sub_socket``, for a thread of its own (sync)."""
        sock = self.sync_ctx.socket(zmq.SUB)
        self._setup(sock, server=False)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.setsockopt(zmq.RCVHWM, 10_000)
        return sock

    # -- the seam: the socket roles the rest of jobmesh uses ----------------------------------
    def router(self, endpoint: str) -> RouterSocket:
        return _ZmqRouter(self.router_socket(endpoint))

    def dealer(self, endpoint: str, identity: bytes | None = None) -> DealerSocket:
        return _ZmqDealer(self.dealer_socket(endpoint, identity))

    def pub(self, endpoint: str) -> PubSocket:
        """For the heartbeat thread. ``BindError`` if the endpoint cannot be bound."""
        return _ZmqPub(self.pub_socket(endpoint))

    def sub(self) -> SubSocket:
        """For the heartbeat receiver thread."""
        return _ZmqSub(self.sub_socket_sync())

    def router_socket(self, endpoint: str) -> zmq.asyncio.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        self._setup(sock, server=True)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unknown identity is an error, not a silent drop
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting peer takes its identity back
        sock.setsockopt(zmq.SNDTIMEO, 0)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as e:
            sock.close(0)
            raise BindError(f"cannot bind the transfer endpoint {endpoint}: {e.strerror}") from None
        return sock

    def dealer_socket(self, endpoint: str, identity: bytes | None = None) -> zmq.asyncio.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        self._setup(sock, server=False)
        if identity:
            sock.setsockopt(zmq.IDENTITY, identity)
        sock.connect(endpoint)
        return sock

    def close(self) -> None:
        """Close every socket of this node and stop the authenticator (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._auth is not None:
            try:
                self._auth.stop()
            except Exception:  # pragma: no cover - best effort at shutdown
                log.exception("authenticator stop failed", node=self.node)
        self.ctx.destroy(linger=0)


def is_socket_closed_error(exc: BaseException) -> bool:
    return isinstance(exc, zmq.ZMQError) and exc.errno in (zmq.ENOTSOCK, zmq.ETERM)


ZMQError = zmq.ZMQError


# -- the ROUTER endpoint --------------------------------------------------------------------------

Reply = Union[tuple[str, dict[str, Any]], None]
Handler = Callable[[bytes, wire.Message], Union[Awaitable[Reply], Reply]]


class Endpoint:
    """The node's ROUTER: receives messages of registered types and routes them to handlers.

    A handler gets ``(peer_identity, message)`` and may return ``(reply_type, body)``,
    sent back to that peer (with the request's ``rid`` copied, so ``Dealer.request``
    can match it). Handlers run one at a time in arrival order; a handler that raises
    a ``JobmeshError`` (or ``ValueError``) answers with an ``error`` message, any other
    exception is logged, and the endpoint carries on either way.
    """

    def __init__(self, node: str) -> None:
        self.node = node
        self.log = log.bind(node=node, part="endpoint")
        self._handlers: dict[str, Handler] = {}
        self._activity: list[Callable[[str, Any], None]] = []
        self._sock: RouterSocket | None = None
        self._dropped_log = 0.0
        self._max_size = wire.MAX_MESSAGE_SIZE
        self.dropped = 0  # messages refused (bad frames, unknown types): a counter for metrics

    def register(self, msg_type: str, handler: Handler, raw: bool = False) -> None:
        """Route ``msg_type`` to ``handler`` (registers the type with the wire codec; ``raw``: its
        messages may carry a raw fourth frame, ``Message.raw``)."""
        wire.register_type(msg_type, raw=raw)
        self._handlers[msg_type] = handler

    def on_activity(self, callback: Callable[[str, Any], None]) -> None:
        """Call ``callback(sender_name, incarnation)`` for every message whose body names its sender
        (``from``); the incarnation is the body's ``inc`` (or a join's ``incarnation``), else None."""
        self._activity.append(callback)

    @property
    def bound(self) -> bool:
        return self._sock is not None

    def bind(self, transport: Any, endpoint: str) -> None:
        self._max_size = transport.max_message_size
        self._sock = transport.router(endpoint)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def send(self, identity: bytes, msg_type: str, body: dict[str, Any]) -> None:
        """Send to a connected peer; ``PeerUnreachable`` if it is not (ROUTER_MANDATORY)."""
        if self._sock is None:
            raise PeerUnreachable("endpoint is not bound")
        frames = wire.encode(msg_type, body)
        await self._sock.send(identity, frames)

    def _refused(self, reason: str, **kw: Any) -> None:
        self.dropped += 1
        now = _clock.monotonic()
        if now - self._dropped_log > 1.0:  # a flood of garbage must not flood the log
            self._dropped_log = now
            self.log.warning("message dropped", reason=reason, dropped_total=self.dropped, **kw)

    async def run(self) -> None:
        """Receive until the socket closes. Never raises for bad input."""
        sock = self._sock
        assert sock is not None, "bind() first"
        while True:
            frames = await sock.recv()
            if frames is None:
                return  # closed
            if len(frames) < 2:
                self._refused("no identity frame")
                continue
            identity, rest = frames[0], frames[1:]
            try:
                msg = wire.decode(rest, self._max_size)
            except wire.WireError as e:
                self._refused(e.reason, version=wire.peer_version(rest))
                continue
            sender = msg.body.get("from")
            if isinstance(sender, str):
                inc = msg.body.get("inc", msg.body.get("incarnation"))
                for cb in self._activity:
                    try:
                        cb(sender, inc)
                    except Exception:
                        self.log.exception("activity callback failed")
            handler = self._handlers.get(msg.type)
            if handler is None:
                self._refused(f"no handler for {msg.type!r}")
                continue
            try:
                result = handler(identity, msg)
                if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                    result = await result
            except (JobmeshError, ValueError) as e:
                result = ("error", {"error": str(e), "type": msg.type})
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.log.exception("handler failed", type=msg.type)
                result = ("error", {"error": f"internal error: {type(e).__name__}", "type": msg.type})
            if result is None:
                continue
            reply_type, body = result
            rid = msg.body.get("rid")
            if rid is not None and "rid" not in body:
                body = {**body, "rid": rid}
            try:
                await self.send(identity, reply_type, body)
            except (PeerUnreachable, wire.WireError) as e:
                self.log.info("reply not delivered", type=reply_type, error=str(e))


# -- the DEALER side ----------------------------------------------------------------------------


class Dealer:
    """A connection to one peer's ROUTER endpoint."""

    def __init__(self, transport: Any, endpoint: str, identity: bytes | None = None) -> None:
        self.endpoint = endpoint
        self._rids = itertools.count(1)  # per dealer: replies are matched on this connection only
        self._sock = transport.dealer(endpoint, identity)
        self.log = log.bind(node=transport.node, peer=endpoint)

    async def send(self, msg_type: str, body: dict[str, Any], timeout: float = 1.0,
                   raw: bytes | None = None) -> None:
        frames = wire.encode(msg_type, body, raw=raw)
        try:
            await self._sock.send(frames, timeout)
        except PeerUnreachable:
            raise PeerUnreachable(f"could not send to {self.endpoint} within {timeout:.1f} s") from None

    async def recv(self, timeout: float) -> wire.Message:
        """The next valid message; bad ones are logged and skipped. ``RequestTimeout`` after ``timeout``."""
        deadline = _clock.monotonic() + timeout
        while True:
            left = deadline - _clock.monotonic()
            if left <= 0:
                raise RequestTimeout(f"no answer from {self.endpoint} within {timeout:.1f} s")
            try:
                frames = await self._sock.recv(left)
            except asyncio.TimeoutError:
                raise RequestTimeout(f"no answer from {self.endpoint} within {timeout:.1f} s") from None
            try:
                return wire.decode(frames)
            except wire.WireError as e:
                self.log.warning("reply dropped", reason=e.reason)

    async def request(self, msg_type: str, body: dict[str, Any], timeout: float) -> wire.Message:
        """Send and wait for the reply carrying the same ``rid`` (others are skipped)."""
        rid = next(self._rids)
        deadline = _clock.monotonic() + timeout
        await self.send(msg_type, {**body, "rid": rid}, timeout=timeout)
        while True:
            msg = await self.recv(max(0.0, deadline - _clock.monotonic()))
            if msg.body.get("rid") == rid:
                return msg

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "Dealer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def close_link(task: "asyncio.Task[Any]", dealer: Dealer | None) -> None:
    """Stop a link to a peer: cancel its sender task and close its DEALER. An error closing the
    socket is nothing to act on (it is gone either way). The blob and transfer links use it."""
    task.cancel()
    if dealer is not None:
        try:
            dealer.close()
        except Exception:
            pass
