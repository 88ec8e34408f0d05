"""The node transport on the simulated network: ROUTER/DEALER and PUB/SUB semantics, no sockets.

``SimNet`` is shared by every node of a simulation; ``SimNet.factory(name)`` is what a
``Node(transport=...)`` takes. The sockets it makes behave like the ZeroMQ ones the node
uses (DESIGN §4 traps included): a ROUTER answers only identities it has heard from
(``PeerUnreachable`` otherwise, as with ``ROUTER_MANDATORY``) and a reconnecting dealer
takes its identity back (``ROUTER_HANDOVER``); a message to an endpoint nobody has bound
is lost (a DEALER would queue it, but the node never relies on that, and a loss is the
harsher case); PUB drops nothing itself but the network may; a closed socket receives
nothing. Every byte crosses ``SimNetwork`` between the sending and the receiving *node*,
so its latency, loss, duplication, reordering, partitions and clogs apply per node pair.

Delivery is a callback at the message's virtual arrival time that hands the frames to the
receiving socket; the receiver's tasks then run in their own node's context (so a killed
node receives nothing, and a paused one reads it when it resumes).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import itertools
from collections import deque
from typing import Any, Callable

from .. import wire
from ..transport import BindError, PeerUnreachable, TransportClosed
from .network import SimNetwork


def _size(frames: list[bytes]) -> int:
    return sum(len(f) for f in frames)


class SimNet:
    """Every endpoint of a simulation, and the network between the nodes that bind them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, network: SimNetwork) -> None:
        self.loop = loop
        self.network = network
        self.routers: dict[str, SimRouter] = {}
        self.pubs: dict[str, SimPub] = {}
        self.subs: dict[str, list[SimSub]] = {}  # PUB endpoint -> subscribers connected to it
        self.owner: dict[str, str] = {}  # endpoint -> node that bound it last (for link faults)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._ids = itertools.count(1)

    def factory(self, name: str) -> Callable[..., "SimTransport"]:
        """What ``Node(transport=...)`` takes for the node called ``name``."""

        def make(node: str, curve: Any = None, max_message_size: int = wire.MAX_MESSAGE_SIZE) -> SimTransport:
            return SimTransport(self, name, max_message_size)

        return make

    # -- the network ------------------------------------------------------------------------
    def send(self, src: str, dst: str, deliver: Callable[[], None], size: int) -> None:
        self.network.send(src, dst, deliver, self.loop.time(), size=size)
        self._arm()

    def _arm(self) -> None:
        at = self.network.next_delivery_time()
        if at is None or (self._timer_at is not None and self._timer_at <= at):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        # the network's own timer runs outside every node (no node context)
        self._timer = self.loop.call_at(at, self._pump, context=_EMPTY)

    def _pump(self) -> None:
        self._timer = None
        self._timer_at = None
        for d in self.network.deliverable(self.loop.time()):
            d.payload()
        self._arm()

    def kill(self, name: str) -> None:
        """A process died: its connections lose what was in flight to it."""
        self.network.purge(name, inbound=True, outbound=False)


class SimTransport:
    """One node's transport on the simulated network (``threads`` False: heartbeats are tasks)."""

    threads = False
    secure = False
    curve = None

    def __init__(self, net: SimNet, node: str, max_message_size: int = wire.MAX_MESSAGE_SIZE) -> None:
        self.net = net
        self.node = node
        self.max_message_size = max_message_size
        self._sockets: list[Any] = []
        self.closed = False

    def _add(self, sock: Any) -> Any:
        if self.closed:
            raise TransportClosed("transport closed")
        self._sockets.append(sock)
        return sock

    def router(self, endpoint: str) -> "SimRouter":
        live = self.net.routers.get(endpoint)
        if live is not None and not live.closed:
            raise BindError(f"cannot bind the transfer endpoint {endpoint}: Address already in use")
        return self._add(SimRouter(self, endpoint))

    def dealer(self, endpoint: str, identity: bytes | None = None) -> "SimDealer":
        return self._add(SimDealer(self, endpoint, identity))

    def pub(self, endpoint: str) -> "SimPub":
        live = self.net.pubs.get(endpoint)
        if live is not None and not live.closed:
            raise BindError(f"cannot bind the heartbeat endpoint {endpoint}: Address already in use")
        return self._add(SimPub(self, endpoint))

    def sub(self) -> "SimSub":
        return self._add(SimSub(self))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()


class SimRouter:
    def __init__(self, transport: SimTransport, endpoint: str) -> None:
        self.t = transport
        self.endpoint = endpoint
        self.closed = False
        self.queue: asyncio.Queue[list[bytes] | None] = asyncio.Queue()
        self.peers: dict[bytes, SimDealer] = {}  # identity -> the dealer last heard under it
        transport.net.routers[endpoint] = self
        transport.net.owner[endpoint] = transport.node

    def _arrive(self, dealer: "SimDealer", frames: list[bytes]) -> None:
        if self.closed or len(frames) > 0 and _size(frames) > self.t.max_message_size:
            return  # MAXMSGSIZE: ZeroMQ drops the connection; the message is gone
        self.peers[dealer.identity] = dealer  # handover: the newest connection owns the identity
        self.queue.put_nowait([dealer.identity, *frames])

    async def recv(self) -> list[bytes] | None:
        if self.closed:
            return None
        return await self.queue.get()

    async def send(self, identity: bytes, frames: list[bytes]) -> None:
        dealer = self.peers.get(identity)
        if self.closed or dealer is None or dealer.closed:
            raise PeerUnreachable(f"peer {identity!r} is not connected")
        net = self.t.net
        net.send(self.t.node, dealer.t.node, lambda: dealer._arrive(frames), _size(frames))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.t.net.routers.get(self.endpoint) is self:
            del self.t.net.routers[self.endpoint]
        self.queue.put_nowait(None)


class SimDealer:
    def __init__(self, transport: SimTransport, endpoint: str, identity: bytes | None) -> None:
        self.t = transport
        self.endpoint = endpoint
        self.identity = identity or b"\x00sim-%d" % next(transport.net._ids)
        self.closed = False
        self.queue: asyncio.Queue[list[bytes]] = asyncio.Queue()

    def _arrive(self, frames: list[bytes]) -> None:
        if not self.closed:
            self.queue.put_nowait(frames)

    async def send(self, frames: list[bytes], timeout: float) -> None:
        if self.closed:
            raise TransportClosed("dealer closed")
        net = self.t.net
        dst = net.owner.get(self.endpoint)
        if dst is None:
            return  # nobody ever bound it: connection refused, the message is gone
        endpoint = self.endpoint

        def arrive() -> None:
            router = net.routers.get(endpoint)
            if router is not None:
                router._arrive(self, frames)

        net.send(self.t.node, dst, arrive, _size(frames))

    async def recv(self, timeout: float) -> list[bytes]:
        return await asyncio.wait_for(self.queue.get(), timeout)

    def close(self) -> None:
        self.closed = True


class SimPub:
    def __init__(self, transport: SimTransport, endpoint: str) -> None:
        self.t = transport
        self.endpoint = endpoint
        self.closed = False
        transport.net.pubs[endpoint] = self
        transport.net.owner[endpoint] = transport.node

    def send_nowait(self, frames: list[bytes]) -> bool:
        if self.closed:
            raise TransportClosed("pub closed")
        net = self.t.net
        size = _size(frames)
        for sub in list(net.subs.get(self.endpoint, ())):
            if not sub.closed:
                net.send(self.t.node, sub.t.node, functools.partial(sub._arrive, self.endpoint, frames), size)
        return True

    def close(self) -> None:
        self.closed = True
        if self.t.net.pubs.get(self.endpoint) is self:
            del self.t.net.pubs[self.endpoint]


class SimSub:
    def __init__(self, transport: SimTransport) -> None:
        self.t = transport
        self.closed = False
        self.connected: list[str] = []
        self.inbox: deque[list[bytes]] = deque()

    def connect(self, endpoint: str) -> None:
        if endpoint in self.connected:
            return
        self.connected.append(endpoint)
        self.t.net.subs.setdefault(endpoint, []).append(self)

    def disconnect(self, endpoint: str) -> None:
        if endpoint in self.connected:
            self.connected.remove(endpoint)
            subs = self.t.net.subs.get(endpoint, [])
            if self in subs:
                subs.remove(self)

    def _arrive(self, endpoint: str, frames: list[bytes]) -> None:
        if not self.closed and endpoint in self.connected and len(self.inbox) < 10_000:  # RCVHWM
            self.inbox.append(frames)

    def recv_nowait(self) -> list[bytes] | None:
        if self.closed:
            raise TransportClosed("sub closed")
        return self.inbox.popleft() if self.inbox else None

    def close(self) -> None:
        for ep in list(self.connected):
            self.disconnect(ep)
        self.closed = True


_EMPTY = contextvars.Context()  # the network's own timer belongs to no node
