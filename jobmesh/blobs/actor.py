"""The blob actor: the node's blob store, its garbage collector, and the async shell around the
pure ``BlobProtocol`` (``node.blobs``).

Sending path: its own DEALER per peer (``links.BlobLink``), never the transfer actor's, so chunks
wait in a pipe of their own while handoffs and results go on theirs (the peer's ROUTER takes
from both in turn), and heartbeats are on PUB/SUB anyway. Within a link, control messages
(offers, wants, credits, dones) go before chunks. A chunk's data is the message's raw frame
(``jobmesh.wire``), never packed into msgpack. Memory is bounded by the protocol's credit:
a chunk is read from its file just before it is sent (``PREFETCH`` reads ahead), and a
receiver grants one window beyond what it has written and hashed.

Receiving path, the hot one: blob messages are handled in the ROUTER's handler itself,
synchronously — not through the actor's mailbox. Every change to the protocol's state
(here, in the actor's own messages, and in the write callbacks) is synchronous code with
no ``await`` in between, so they never interleave mid-change. Chunks of one blob are written
in batches (all that arrived since the last write, checksums checked) by one task, and
hashed (sha256, in order) on a lane of their own, so a chunk is written while the one before
it is hashed; the credit moves on once a chunk is written and hashed.

File work (reading a chunk, checking and writing it, hashing, the final rename) runs through
``loop.run_in_executor`` on the actor's own threads — niced (``_background_thread``), so a
transfer takes the CPU the node's jobs leave — under ZeroMQ, and inline under the
simulator's loop, so the loop keeps serving while a large blob moves.

API for the other parts:
- ``store``: the ``BlobStore`` (references, paths, ``put``), usable once the actor started.
- ``await ensure(peer, refs)``: ``peer`` holds these blobs once it returns (pushed, or it had
  them); ``BlobTransferError`` if that could not be done.
- ``await fetch(peer, refs)``: pull blobs that ``peer`` has into this node's store.
- ``held_by(peer, ids)``: bytes of ``ids`` that ``peer`` is known to hold (the offloader's
  preference for a target that already has a payload).
- ``stats()``: for ``/metrics``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

import structlog

from .. import clock as _clock
from .. import rng as _rng
from .. import wire
from ..actor import Actor
from ..errors import JobmeshError
from .protocol import (
    MESSAGE_TYPES,
    BlobConfig,
    BlobProtocol,
    Chunk,
    checksum,
    Fetched,
    Finish,
    Log,
    OpenPartial,
    Pushed,
    Send,
    SendChunk,
    Write,
)
from .links import BlobLink
from .requests import (BlobFinished, FetchRequested, GcDue, PartialOpened, PushRequested, TimerDue,
                       TopologyChanged, WriteFailed)
from .store import BlobMismatch, BlobRef, BlobStore, BlobStoreFull, PartialBlob

log = structlog.get_logger("jobmesh.blobs")

TIMER_PERIOD = 0.5
GC_PERIOD = 60.0
KNOWN_PER_PEER = 100_000
WRITE_BATCH = 16  # chunks written per executor call at most
IO_THREADS = 4
BACKGROUND_NICE = 10  # the blob threads' nice value (Linux: per thread)


def _background_thread() -> None:
    """The blob threads (reading, checking, writing, hashing chunks) yield the CPU to the node's
    own work: on a busy machine a large transfer slows down instead of slowing handoffs,
    results and runs. Linux sets a nice value per thread; elsewhere it would be the whole
    process's, so nothing is done there."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, 0, BACKGROUND_NICE)  # 0: the calling thread
        except OSError:
            pass


class BlobTransferError(JobmeshError):
    http_status = 503


class _Receiving:
    """A fetch's partial file, the writes queued for it (written in order by one task) and its
    latest hashing step (the hash lane runs them in order)."""

    def __init__(self, partial: PartialBlob) -> None:
        self.partial = partial
        self.queue: deque[Write] = deque()
        self.task: asyncio.Task[None] | None = None
        self.hashing: asyncio.Future[Any] | None = None


class BlobActor(Actor):
    def __init__(self, node: Any, config: BlobConfig | None = None) -> None:
        super().__init__("blobs")
        self.node = node
        self.log = log.bind(node=node.name)
        cfg = node.config
        self.store = BlobStore(Path(cfg.data) / "blobs", quota=cfg.blob_quota, grace=cfg.blob_gc_grace)
        self.cfg = config or BlobConfig()
        self.protocol: BlobProtocol | None = None
        self._links: dict[str, BlobLink] = {}
        self._members: dict[str, tuple[float, str]] = {}
        self._recv: dict[str, _Receiving] = {}
        self._fetch_pins: set[str] = set()
        self._fetch_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._push_waiters: dict[tuple[str, str], list[asyncio.Future[None]]] = {}
        self._known: dict[str, OrderedDict[str, int]] = {}  # peer -> blobs it confirmed holding (LRU)
        self._timer: asyncio.TimerHandle | None = None
        self._hash_lane: ThreadPoolExecutor | None = None  # one thread: blobs are hashed in order
        self._io_pool: ThreadPoolExecutor | None = None  # reading, checking, writing chunks
        self._listening = False
        self._network = False
        self.stopping = False
        # counters
        self.bytes_sent = 0
        self.bytes_received = 0
        self.pushes_done = 0
        self.fetches_done = 0
        self.fetches_failed = 0
        self.dropped = 0
        self.fenced = 0
        self.gc_runs = 0
        self.corrupt_chunks = 0  # tests: corrupt this many chunks sent (after their checksum)

    # -- lifecycle --------------------------------------------------------------------------
    async def on_start(self) -> None:
        self.stopping = False
        if self.store._conn is None:
            self.store.clock = _clock.wall
            self.store.open()
        if self.protocol is None:
            self.protocol = BlobProtocol(self.node.name, self.store.has, self.store.size_of, _clock.monotonic,
                                         self.cfg, session_prefix=_rng.token_hex(3) + "-")
        self.tell_later(min(GC_PERIOD, max(1.0, self.store.grace)), GcDue())

    def attach_network(self) -> None:
        """After discovery started: the blob messages on the node's ROUTER, peers from the topology."""
        d = self.node.discovery
        if d is None or self._network:
            return
        self._network = True
        for t in MESSAGE_TYPES:
            d.endpoint.register(t, self._on_wire, raw=(t == Chunk.TYPE))
        d.add_listener(self._on_topology)
        view = getattr(d, "view", None)
        if view is not None:
            self.tell(TopologyChanged(view))

    async def on_stop(self) -> None:
        self.stopping = True
        for link in self._links.values():
            link.close()
        self._links.clear()
        for r in self._recv.values():
            if r.task is not None:
                r.task.cancel()
            r.partial.close()
        self._recv.clear()
        for lst in [*self._fetch_waiters.values(), *self._push_waiters.values()]:
            for fut in lst:
                if not fut.done():
                    fut.set_exception(BlobTransferError("node is stopping"))
        self._fetch_waiters.clear()
        self._push_waiters.clear()
        for pool in (self._hash_lane, self._io_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._hash_lane = self._io_pool = None
        self.store.close()

    def transport(self) -> Any:
        d = self.node.discovery
        return None if d is None else getattr(d, "transport", None)

    # -- the API ----------------------------------------------------------------------------
    async def ensure(self, peer: str, refs: Iterable[BlobRef]) -> None:
        """Return once ``peer`` holds every one of ``refs`` (offered, fetched by it, verified)."""
        refs = sorted({r.id: r for r in refs}.values(), key=lambda r: r.id)
        if not refs:
            return
        futs: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        for r in refs:
            fut = loop.create_future()
            self._push_waiters.setdefault((peer, r.id), []).append(fut)
            futs.append(fut)
        self.store.pin(r.id for r in refs)
        try:
            self.tell(PushRequested(peer, [(r.id, r.size) for r in refs]))
            for fut in futs:
                await fut
        finally:
            self.store.unpin(r.id for r in refs)

    async def fetch(self, peer: str, refs: Iterable[BlobRef]) -> None:
        """Bring ``refs`` from ``peer`` into this node's store."""
        wanted = [r for r in sorted({r.id: r for r in refs}.values(), key=lambda r: r.id) if not self.store.has(r.id)]
        if not wanted:
            return
        loop = asyncio.get_running_loop()
        futs = []
        for r in wanted:
            fut = loop.create_future()
            self._fetch_waiters.setdefault(r.id, []).append(fut)
            futs.append(fut)
        self.tell(FetchRequested(peer, [(r.id, r.size) for r in wanted]))
        for fut in futs:
            await fut

    def held_by(self, peer: str, ids: Iterable[str]) -> int:
        known = self._known.get(peer)
        if not known:
            return 0
        return sum(known.get(i, 0) for i in set(ids))

    def stats(self) -> dict[str, Any]:
        p = self.protocol
        s = self.store.stats() if self.store._conn is not None else {}
        s.update({
            "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
            "pushes_done": self.pushes_done, "fetches_done": self.fetches_done,
            "fetches_failed": self.fetches_failed, "transfers_active": 0 if p is None else len(p.fetches),
            "serving": 0 if p is None else len(p.serves),
            "chunks_corrupt": 0 if p is None else p.chunks_corrupt,
            "chunks_stale": 0 if p is None else p.chunks_stale,
            "deduplicated": 0 if p is None else p.deduplicated,
            "messages_dropped": self.dropped, "gc_runs": self.gc_runs,
        })
        return s

    def serving(self, ins: SendChunk) -> bool:
        p = self.protocol
        s = None if p is None else p.serves.get((ins.peer, ins.id))
        return s is not None and s.sid == ins.sid and s.gen == ins.gen

    def _read_chunk(self, blob_id: str, offset: int, length: int) -> tuple[bytes, int]:
        with open(self.store.path(blob_id), "rb") as f:
            f.seek(offset)
            data = f.read(length)
        return data, checksum(data)

    # -- wire -------------------------------------------------------------------------------
    def _on_wire(self, identity: bytes, msg: wire.Message) -> None:
        """The ROUTER's handler for blob messages: handled here and now (see the module doc)."""
        if self.protocol is None or self.stopping:
            return None
        self._wire(msg.type, msg.body, msg.raw)
        self._arm()
        return None

    def _wire(self, msg_type: str, body: dict[str, Any], raw: bytes | None) -> None:
        p = self.protocol
        assert p is not None
        peer = body.get("from")
        if not isinstance(peer, str) or not peer:
            return
        to_inc = body.get("to_inc")
        if isinstance(to_inc, (int, float)) and to_inc != self.node.started_at:
            self.fenced += 1
            return
        known = self._members.get(peer)
        inc = body.get("inc")
        if known is not None and isinstance(inc, (int, float)) and inc < known[0]:
            return
        self._exec(p.receive_wire(peer, msg_type, body, raw))

    def _on_topology(self, event: Any) -> None:
        if not self.stopping:
            self.tell(TopologyChanged(event.new_view))

    # -- messages ---------------------------------------------------------------------------
    async def receive(self, msg: Any) -> Any:
        handler = _MAILBOX.get(type(msg))
        if handler is None:
            raise TypeError(f"blobs: unknown message {type(msg).__name__}")
        await handler(self, msg)
        self._arm()
        return None

    async def _push_requested(self, msg: PushRequested) -> None:
        self._exec(self._p().push(msg.peer, msg.items))

    async def _fetch_requested(self, msg: FetchRequested) -> None:
        p = self._p()
        out: list[Any] = []
        for blob_id, size in msg.items:
            out += p.fetch(msg.peer, blob_id, size)
        self._exec(out)

    async def _opened(self, msg: PartialOpened) -> None:
        self._exec(self._p().opened(msg.blob_id, msg.offset))

    async def _write_failed(self, msg: WriteFailed) -> None:
        self._exec(self._p().write_failed(msg.blob_id, msg.error))

    async def _finished(self, msg: BlobFinished) -> None:
        self._exec(self._p().finished(msg.blob_id, msg.ok, msg.error))

    async def _timer_due(self, msg: TimerDue) -> None:
        self._timer = None
        self._exec(self._p().on_timer())

    async def _topology_changed(self, msg: TopologyChanged) -> None:
        await self._topology(msg.view)

    async def _gc_due(self, msg: GcDue) -> None:
        self.gc()
        self.tell_later(min(GC_PERIOD, max(1.0, self.store.grace)), GcDue())

    def _p(self) -> BlobProtocol:
        p = self.protocol
        assert p is not None
        return p

    def _arm(self) -> None:
        p = self.protocol
        if self._timer is None and p is not None and p.busy():
            self._timer = self.tell_later(TIMER_PERIOD, TimerDue())

    def _exec(self, instructions: Iterable[Any]) -> None:
        """Carry out the protocol's instructions: synchronous (no await), see the module doc; an
        instruction without a handler is a bug and raises."""
        for ins in instructions:
            handler = DISPATCH.get(type(ins))
            if handler is None:
                raise TypeError(f"blobs: no handler for instruction {type(ins).__name__}")
            handler(self, ins)

    def _send_chunk(self, ins: SendChunk) -> None:
        link = self._link(ins.peer)
        if link is not None:
            link.put_chunk(ins)

    def _send(self, ins: Send) -> None:
        link = self._link(ins.peer)
        if link is not None:
            link.put(ins.message)
        else:
            self.dropped += 1

    def _finish_ins(self, ins: Finish) -> None:
        self._finish(ins.id)

    def _log(self, ins: Log) -> None:
        getattr(self.log, ins.level if ins.level in ("debug", "info", "warning", "error") else "info")(
            ins.event, **ins.fields)

    def _link(self, peer: str) -> BlobLink | None:
        member = self._members.get(peer)
        if member is None:
            return None
        link = self._links.get(peer)
        if link is None or link.endpoint != member[1]:
            if link is not None:
                link.close()
            link = self._links[peer] = BlobLink(self, peer, member[1])
        return link

    # -- receiving files --------------------------------------------------------------------
    def _open(self, ins: OpenPartial) -> None:
        old = self._recv.pop(ins.id, None)
        if old is not None:
            if old.task is not None:
                old.task.cancel()
            old.partial.close()
        if ins.id not in self._fetch_pins:
            self._fetch_pins.add(ins.id)
            self.store.pin([ins.id])

        async def run() -> None:
            loop = asyncio.get_running_loop()
            try:
                partial = await loop.run_in_executor(self._io(), self.store.partial, ins.id, ins.size)
            except (OSError, BlobStoreFull) as e:
                self.tell(WriteFailed(ins.id, str(e)))
                return
            self._recv[ins.id] = _Receiving(partial)
            self.tell(PartialOpened(ins.id, partial.offset))

        self.spawn(run(), name=f"blobs:open:{ins.id[7:19]}")

    def _queue_write(self, ins: Write) -> None:
        r = self._recv.get(ins.id)
        if r is None:
            return
        r.queue.append(ins)
        if r.task is None or r.task.done():
            r.task = self.spawn(self._writer(ins.id, r), name=f"blobs:write:{ins.id[7:19]}")

    def _hasher(self) -> ThreadPoolExecutor:
        if self._hash_lane is None:  # (no thread under the simulator: its run_in_executor is inline)
            self._hash_lane = ThreadPoolExecutor(1, thread_name_prefix=f"jobmesh-blobhash-{self.node.name}",
                                                 initializer=_background_thread)
        return self._hash_lane

    def _io(self) -> ThreadPoolExecutor:
        if self._io_pool is None:
            self._io_pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix=f"jobmesh-blobio-{self.node.name}",
                                               initializer=_background_thread)
        return self._io_pool

    async def _writer(self, blob_id: str, r: _Receiving) -> None:
        """Write the queued chunks in batches; each batch is hashed next, on the hash lane, while
        the next one is written; its credit moves on once it is hashed (``_hashed``)."""
        loop = asyncio.get_running_loop()
        p = self.protocol
        assert p is not None
        while r.queue:
            gen = p.current_gen(blob_id)
            batch: list[Write] = []
            while r.queue and len(batch) < WRITE_BATCH:
                ins = r.queue.popleft()
                if ins.gen == gen:
                    batch.append(ins)  # else a restart of the session made it stale
            if not batch:
                continue
            if batch[0].offset < r.partial.offset and r.hashing is not None:
                await asyncio.wait([r.hashing])  # a rewind hashes the prefix again: the lane first
            try:
                n_ok = await loop.run_in_executor(self._io(), _check_and_write, r.partial, batch)
            except (OSError, BlobStoreFull, BlobMismatch) as e:
                self._exec(p.write_failed(blob_id, str(e)))
                self._arm()
                return
            if n_ok:
                good = [w.data for w in batch[:n_ok]]
                r.hashing = loop.run_in_executor(self._hasher(), r.partial.hash, good)
                r.hashing.add_done_callback(functools.partial(self._hashed, blob_id, r, gen))
            if n_ok < len(batch):
                # a damaged chunk: drop what is queued behind it; the protocol asks again from there
                r.queue.clear()
                self._exec(p.corrupt(blob_id, gen, batch[n_ok].offset))
                self._arm()
                return

    def _hashed(self, blob_id: str, r: _Receiving, gen: int, fut: "asyncio.Future[int]") -> None:
        p = self.protocol
        if p is None or self.stopping or fut.cancelled():
            return
        if fut.exception() is not None:
            self._exec(p.write_failed(blob_id, str(fut.exception())))
        else:
            n = fut.result()
            self.bytes_received += n
            self._exec(p.written(blob_id, gen, n))
        self._arm()

    def _finish(self, blob_id: str) -> None:
        r = self._recv.get(blob_id)

        async def run() -> None:
            loop = asyncio.get_running_loop()
            if r is None:
                self.tell(BlobFinished(blob_id, self.store.has(blob_id), "no partial file"))
                return
            if r.task is not None and not r.task.done():
                try:
                    await r.task
                except Exception:
                    pass
            if r.hashing is not None:
                await asyncio.wait([r.hashing])
            try:
                await loop.run_in_executor(self._io(), r.partial.finish)
            except BlobMismatch as e:
                self._recv.pop(blob_id, None)
                self.tell(BlobFinished(blob_id, False, str(e)))
                return
            except (OSError, BlobStoreFull) as e:
                self._recv.pop(blob_id, None)
                self.tell(WriteFailed(blob_id, str(e)))
                return
            self._recv.pop(blob_id, None)
            self.tell(BlobFinished(blob_id, True, None))

        self.spawn(run(), name=f"blobs:finish:{blob_id[7:19]}")

    def _fetched(self, ins: Fetched) -> None:
        r = self._recv.pop(ins.id, None)
        if r is not None:
            r.partial.close()
        if ins.id in self._fetch_pins:
            self._fetch_pins.discard(ins.id)
            self.store.unpin([ins.id])
        if ins.ok:
            self.fetches_done += 1
        else:
            self.fetches_failed += 1
        for fut in self._fetch_waiters.pop(ins.id, []):
            if not fut.done():
                if ins.ok:
                    fut.set_result(None)
                else:
                    fut.set_exception(BlobTransferError(f"blob {ins.id} not fetched: {ins.reason}"))

    def _pushed(self, ins: Pushed) -> None:
        if ins.ok:
            self.pushes_done += 1
            known = self._known.setdefault(ins.peer, OrderedDict())
            known[ins.id] = self.store.size_of(ins.id) or 0
            known.move_to_end(ins.id)
            while len(known) > KNOWN_PER_PEER:
                known.popitem(last=False)
        else:
            self._known.get(ins.peer, {}).pop(ins.id, None)  # type: ignore[call-overload]
        for fut in self._push_waiters.pop((ins.peer, ins.id), []):
            if not fut.done():
                if ins.ok:
                    fut.set_result(None)
                else:
                    fut.set_exception(BlobTransferError(f"blob {ins.id} not delivered to {ins.peer}: {ins.reason}"))

    # -- topology ---------------------------------------------------------------------------
    async def _topology(self, view: Any) -> None:
        if view is None or self.protocol is None:
            return
        now = {i.name: (float(i.incarnation), i.endpoint or "") for i in view.instances if i.name != self.node.name}
        out: list[Any] = []
        for name, (inc, ep) in sorted(self._members.items()):
            new = now.get(name)
            if new is None or new[0] != inc:
                del self._members[name]
                link = self._links.pop(name, None)
                if link is not None:
                    link.close()
                self._known.pop(name, None)
                out += self.protocol.peer_down(name)
        for name, (inc, ep) in sorted(now.items()):
            if name not in self._members and ep:
                self._members[name] = (inc, ep)
                out += self.protocol.peer_up(name)
        self._exec(out)

    # -- garbage collection -----------------------------------------------------------------
    def gc(self) -> list[str]:
        """One collection: references of owners gone, then blobs nobody needs (after the grace)."""
        self.gc_runs += 1
        try:
            removed = self.store.gc(self._alive, _clock.wall())
        except Exception as e:
            self.log.warning("blob collection failed", error=repr(e))
            return []
        if removed:
            self.log.info("unreferenced blobs removed", count=len(removed))
        return removed

    def _alive(self, owners: list[str]) -> set[str]:
        """Owners that still exist here: job rows (own jobs, copies) and outbox entries."""
        reader = self.node.store.reader
        alive: set[str] = set()
        for i in range(0, len(owners), 500):
            part = owners[i:i + 500]
            marks = ",".join("?" * len(part))
            alive.update(r[0] for r in reader.execute(f"SELECT id FROM jobs WHERE id IN ({marks})", part))
            try:
                alive.update(r[0] for r in reader.execute(
                    f"SELECT job_id FROM transfer_outbox WHERE job_id IN ({marks})", part))
            except Exception:
                pass  # no outbox table in this store
        return alive


def _check_and_write(partial: PartialBlob, batch: list[Write]) -> int:
    """Check and write the chunks in order (not hashed: ``PartialBlob.hash`` does that next);
    returns how many were good (a damaged one stops the batch there)."""
    for n, ins in enumerate(batch):
        if checksum(ins.data) != ins.sum:
            return n
        partial.write_only(ins.offset, ins.data)
    return len(batch)


_MAILBOX: dict[type, Callable[[BlobActor, Any], Awaitable[None]]] = {
    PushRequested: BlobActor._push_requested,
    FetchRequested: BlobActor._fetch_requested,
    PartialOpened: BlobActor._opened,
    WriteFailed: BlobActor._write_failed,
    BlobFinished: BlobActor._finished,
    TimerDue: BlobActor._timer_due,
    TopologyChanged: BlobActor._topology_changed,
    GcDue: BlobActor._gc_due,
}

DISPATCH: dict[type, Callable[[BlobActor, Any], None]] = {
    Write: BlobActor._queue_write,
    SendChunk: BlobActor._send_chunk,
    Send: BlobActor._send,
    OpenPartial: BlobActor._open,
    Finish: BlobActor._finish_ins,
    Fetched: BlobActor._fetched,
    Pushed: BlobActor._pushed,
    Log: BlobActor._log,
}

__all__ = ["BlobActor", "BlobTransferError"]
