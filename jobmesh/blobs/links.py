"""The blob actor's sending path: one DEALER per peer, its own (never the transfer actor's),
so chunks wait in a pipe of their own while handoffs and results go on theirs. Within a
link, control messages (offers, wants, credits, dones) go before chunks; a chunk is read from
its file just before it is sent (``PREFETCH`` reads ahead) and its data is the message's raw
frame (``jobmesh.wire``). Part of the blob actor (``blobs.actor``): it reads the actor's
members, serving state and counters, and counts what it sends there."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from .. import wire
from .protocol import BlobMessage, Chunk, SendChunk

SEND_TIMEOUT = 5.0
PREFETCH = 4  # chunks read ahead per link (bounded memory: PREFETCH chunks)


class BlobLink:
    """One peer's blob DEALER: control messages first, then chunks (read just before sending)."""

    def __init__(self, actor: Any, name: str, endpoint: str) -> None:
        self.actor = actor
        self.name = name
        self.endpoint = endpoint
        self.control: deque[BlobMessage] = deque()
        self.chunks: deque[SendChunk] = deque()
        self.wakeup = asyncio.Event()
        self.dealer: Any = None
        self.task = asyncio.get_running_loop().create_task(self._loop(), name=f"blobs:{actor.node.name}->{name}")

    def put(self, msg: BlobMessage) -> None:
        self.control.append(msg)
        self.wakeup.set()

    def put_chunk(self, ins: SendChunk) -> None:
        self.chunks.append(ins)
        self.wakeup.set()

    async def _loop(self) -> None:
        from ..transport import Dealer, PeerUnreachable

        a = self.actor
        loop = asyncio.get_running_loop()
        reads: deque[tuple[SendChunk, asyncio.Future[tuple[bytes, int]]]] = deque()
        while True:
            if not self.control and not self.chunks and not reads:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            transport = a.transport()
            if transport is None:
                await asyncio.sleep(0.1)
                continue
            if self.dealer is None:
                self.dealer = Dealer(transport, self.endpoint)
            raw: bytes | None = None
            if self.control:
                msg: BlobMessage = self.control.popleft()
                body = msg.to_wire()
            else:
                while self.chunks and len(reads) < PREFETCH:  # read ahead, in the executor's threads
                    ins = self.chunks.popleft()
                    if a.serving(ins):  # else the receiver restarted the session meanwhile
                        reads.append((ins, loop.run_in_executor(a._io(), a._read_chunk, ins.id, ins.offset, ins.length)))
                if not reads:
                    continue
                ins, fut = reads.popleft()
                try:
                    data, sm = await fut
                except OSError as e:
                    a.log.warning("blob chunk not readable", id=ins.id, error=str(e))
                    continue
                if not a.serving(ins):
                    continue
                if a.corrupt_chunks > 0:  # fault injection for tests: flip a byte after the checksum
                    a.corrupt_chunks -= 1
                    data = bytes([data[0] ^ 0xFF]) + data[1:] if data else data
                msg = Chunk(ins.id, ins.sid, ins.gen, ins.offset, data, sm)
                body = msg.to_wire()
                raw = data
                a.bytes_sent += len(data)
            body["from"] = a.node.name
            body["inc"] = a.node.started_at
            member = a._members.get(self.name)
            if member is not None:
                body["to_inc"] = member[0]
            try:
                await self.dealer.send(msg.TYPE, body, timeout=SEND_TIMEOUT, raw=raw)
            except PeerUnreachable as e:
                a.dropped += 1
                a.log.info("blob message not delivered", peer=self.name, type=msg.TYPE, error=str(e))
            except wire.WireError as e:
                a.log.error("blob message cannot be encoded", type=msg.TYPE, error=e.reason)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if a.stopping:
                    return
                a.log.warning("blob send failed", peer=self.name, error=repr(e))
                await asyncio.sleep(0.05)

    def close(self) -> None:
        from ..transport import close_link

        close_link(self.task, self.dealer)
        self.dealer = None


__all__ = ["BlobLink", "PREFETCH", "SEND_TIMEOUT"]
