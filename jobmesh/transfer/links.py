"""The transfer actor's links to its peers: one DEALER per live member, one sender task each.

``PeerLinks`` knows the live members (name -> incarnation, endpoint) from the topology and
sends each peer's messages in order on its own task, so a dead peer never blocks the
others. Every body it sends carries the envelope the receiving protocol fences on
(``TransferProtocol.receive_envelope``): ``from`` (this node), ``inc`` (this node's
incarnation) and ``to_inc`` (the incarnation of the member it is meant for). A message for a
peer that is not a member is dropped (counted): the protocol resends what matters once the
peer is back.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Callable

from .. import clock as _clock
from .. import wire
from .messages import Message

SEND_TIMEOUT = 1.0
PER_PEER_QUEUE = 100_000  # messages waiting for one peer's DEALER at most (bounded memory)


class PeerLinks:
    """Members, their DEALERs and sender tasks. ``transport()`` gives the node's transport (or
    None before discovery runs); counters ``sent``/``dropped`` are for the metrics."""

    def __init__(self, name: str, incarnation: Callable[[], float], transport: Callable[[], Any], log: Any) -> None:
        self.name = name
        self.incarnation = incarnation
        self.transport = transport
        self.log = log
        self.members: dict[str, tuple[float, str]] = {}  # live peers: name -> (incarnation, endpoint)
        self._links: dict[str, _Link] = {}
        self.sent = 0
        self.dropped = 0
        self.stopping = False

    def names(self) -> set[str]:
        return set(self.members) | set(self._links)

    def queued(self) -> int:
        return sum(len(link.queue) for link in self._links.values())

    def update(self, view: Any) -> tuple[list[str], list[tuple[str, float]]]:
        """A new topology view: (members gone or back as a new incarnation, members new)."""
        now = {i.name: (float(i.incarnation), i.endpoint or "") for i in view.instances if i.name != self.name}
        down: list[str] = []
        up: list[tuple[str, float]] = []
        for name, (inc, _) in list(self.members.items()):
            new = now.get(name)
            if new is None or new[0] != inc:
                # gone, or back as a new incarnation: the old process failed (DESIGN §3)
                del self.members[name]
                self._close(name)
                self.log.info("peer down", peer=name, reason="left" if new is None else "new incarnation")
                down.append(name)
        for name, (inc, ep) in now.items():
            if name not in self.members and ep:
                self.members[name] = (inc, ep)
                up.append((name, inc))
        return down, up

    def send(self, peer: str, message: Message) -> None:
        member = self.members.get(peer)
        if member is None:
            self.dropped += 1
            return  # not (or no longer) in the topology: the protocol resends when it is back
        link = self._links.get(peer)
        if link is None or link.endpoint != member[1]:
            self._close(peer)
            link = self._links[peer] = _Link(self, peer, member[1])
        link.put(message)

    def _close(self, peer: str) -> None:
        link = self._links.pop(peer, None)
        if link is not None:
            link.close()

    def close(self) -> None:
        self.stopping = True
        for peer in list(self._links):
            self._close(peer)


class _Link:
    """One peer's DEALER and the task that sends its messages in order."""

    def __init__(self, links: PeerLinks, name: str, endpoint: str) -> None:
        self.links = links
        self.name = name
        self.endpoint = endpoint
        self.queue: deque[Message] = deque()
        self.wakeup = asyncio.Event()
        self.dealer: Any = None
        self._drop_log_at = 0.0
        self.task = asyncio.get_running_loop().create_task(self._send_loop(), name=f"transfer:{links.name}->{name}")

    def put(self, msg: Message) -> None:
        if len(self.queue) >= PER_PEER_QUEUE:
            self.queue.popleft()  # the protocol resends what matters
            self.links.dropped += 1
        self.queue.append(msg)
        self.wakeup.set()

    async def _send_loop(self) -> None:
        from ..transport import Dealer, PeerUnreachable

        links = self.links
        while True:
            if not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            transport = links.transport()
            if transport is None:
                await asyncio.sleep(0.1)
                continue
            if self.dealer is None:
                self.dealer = Dealer(transport, self.endpoint)
            msg = self.queue.popleft()
            body = msg.to_wire()
            body["from"] = links.name
            body["inc"] = links.incarnation()
            member = links.members.get(self.name)
            if member is not None:
                body["to_inc"] = member[0]  # fencing: a later incarnation of the peer drops it
            try:
                await self.dealer.send(msg.TYPE, body, timeout=SEND_TIMEOUT)
                links.sent += 1
            except PeerUnreachable as e:
                links.dropped += 1  # the protocol's resend timers cover it
                now = _clock.monotonic()
                if now - self._drop_log_at > 1.0:  # a dead peer must not flood the log
                    self._drop_log_at = now
                    links.log.info("transfer message not delivered", peer=self.name, type=msg.TYPE,
                                   dropped_total=links.dropped, error=str(e))
            except wire.WireError as e:
                links.log.error("transfer message cannot be encoded", type=msg.TYPE, error=e.reason)
            except Exception as e:  # a closed context at shutdown, or a socket error: next message
                if links.stopping:
                    return
                links.log.warning("transfer send failed", peer=self.name, error=repr(e))
                await asyncio.sleep(0.05)

    def close(self) -> None:
        from ..transport import close_link

        close_link(self.task, self.dealer)
        self.dealer = None
