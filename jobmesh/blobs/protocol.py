"""The blob-transfer protocol between two nodes, as a pure state machine (DESIGN §4: blobs move
in chunks with credit-based flow control, separately from job messages).

No sockets, no files, no asyncio: messages, timer ticks and the actor's reports ("opened",
"written", "finished", "corrupt") go in; instructions come out (``Send``, ``SendChunk``,
``OpenPartial``, ``Write``, ``Finish``, ``Fetched``, ``Pushed``, ``Log``). The actor
(``blobs/actor.py``) reads and writes the files and carries them out.

The receiver drives every transfer (it knows what it has and how fast it writes)::

    sender                                         receiver
      | BLOB_OFFER [(id, size)]          -->          |  has it: BLOB_DONE at once (never re-sent)
      |                     <--  BLOB_WANT id, sid, gen, offset, limit   (offset: the partial file's size)
      | BLOB_CHUNK id, sid, gen, offset, sum + data -->|  ... up to ``limit`` bytes (the credit)
      |                     <--  BLOB_CREDIT id, sid, gen, limit         (as chunks are written)
      |                     <--  BLOB_DONE id, ok     (sha256 of the whole verified, renamed in place)

- **Credit**: the sender sends only up to the byte the receiver granted; the receiver grants
  a window (``window`` bytes) beyond what it has *written*, so what waits in memory on either
  side is bounded by one window per transfer, whatever the blob's size.
- **Pull or push, one mechanism**: ``offer`` (the sender wants the receiver to have a blob;
  the origin before a handoff, a target before a result) and ``fetch`` (the receiver asks
  for a blob it lacks) both end in the receiver's WANT.
- **Resumable**: a transfer restarts at the partial file's size (after a reconnect, a new
  incarnation of either side, a stall); ``gen`` numbers each (re)start of one session, so
  chunks of an earlier start still on the wire are recognised and dropped.
- **Raw data**: a chunk's header (id, session, offset, checksum) is the msgpack body, its data
  the message's raw fourth frame (``jobmesh.wire``), so the bytes are never packed into or
  copied out of msgpack; ``Chunk.data`` is what that frame carried.
- **Corrupt chunks** (an Adler-32 checksum per chunk, ``checksum``: cheap enough to run at
  several GB/s, while the sha256 of the whole blob is the real check) and lost ones (a gap
  in the offsets) are asked for again from that offset (go-back-N); the whole blob is
  checked against its sha256 before it is renamed into place, and fetched again from 0 if
  it does not match.
- **Never re-sent** when the receiver already has that hash: it answers the offer with DONE.
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

from .. import clock as _clock

CHUNK_SIZE = 2 * 1024 * 1024
WINDOW = 16 * CHUNK_SIZE


def checksum(data: Any) -> int:
    """A chunk's checksum (Adler-32): catches a damaged chunk at once, so only that chunk is
    fetched again; the blob's sha256 checks the whole before it is renamed into place."""
    return zlib.adler32(data)


class BlobProtocolError(ValueError):
    pass


def _s(body: dict[str, Any], key: str, what: str) -> str:
    v = body.get(key)
    if not isinstance(v, str) or not v:
        raise BlobProtocolError(f"{what}: field {key!r} must be a non-empty string")
    return v


def _i(body: dict[str, Any], key: str, what: str) -> int:
    v = body.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise BlobProtocolError(f"{what}: field {key!r} must be a whole number >= 0")
    return v


def _blob_id(body: dict[str, Any], key: str, what: str) -> str:
    from .store import _ID

    v = _s(body, key, what)
    if not _ID.match(v):
        raise BlobProtocolError(f"{what}: {key!r} is not a blob id")
    return v


# --------------------------------------------------------------------------- messages


class BlobMessage:
    TYPE: ClassVar[str] = ""

    def to_wire(self) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class Offer(BlobMessage):
    """sender -> receiver: make sure you have these blobs ((id, size) pairs)."""

    TYPE: ClassVar[str] = "blob_offer"
    items: tuple[tuple[str, int], ...]

    def to_wire(self) -> dict[str, Any]:
        return {"items": [[i, s] for i, s in self.items]}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "Offer":
        items = body.get("items")
        if not isinstance(items, list) or len(items) > 10_000:
            raise BlobProtocolError("blob_offer: items must be a list (10,000 at most)")
        out = []
        for it in items:
            if not isinstance(it, list) or len(it) != 2:
                raise BlobProtocolError("blob_offer: an item is [id, size]")
            out.append((_blob_id({"id": it[0]}, "id", "blob_offer"), _i({"s": it[1]}, "s", "blob_offer")))
        return cls(tuple(out))


@dataclass(frozen=True)
class Want(BlobMessage):
    """receiver -> sender: (re)start session ``sid``/``gen`` at ``offset``; send up to ``limit``."""

    TYPE: ClassVar[str] = "blob_want"
    id: str
    sid: str
    gen: int
    offset: int
    limit: int

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "sid": self.sid, "gen": self.gen, "offset": self.offset, "limit": self.limit}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "Want":
        w = "blob_want"
        return cls(_blob_id(body, "id", w), _s(body, "sid", w), _i(body, "gen", w), _i(body, "offset", w),
                   _i(body, "limit", w))


@dataclass(frozen=True)
class Credit(BlobMessage):
    """receiver -> sender: you may send up to byte ``limit`` of this session."""

    TYPE: ClassVar[str] = "blob_credit"
    id: str
    sid: str
    gen: int
    limit: int

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "sid": self.sid, "gen": self.gen, "limit": self.limit}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "Credit":
        w = "blob_credit"
        return cls(_blob_id(body, "id", w), _s(body, "sid", w), _i(body, "gen", w), _i(body, "limit", w))


@dataclass(frozen=True)
class Chunk(BlobMessage):
    """sender -> receiver: ``data`` at ``offset``; ``sum`` is its ``checksum``. On the wire the
    data is the raw frame (``to_wire`` is the header only, ``from_wire`` takes the frame)."""

    TYPE: ClassVar[str] = "blob_chunk"
    RAW: ClassVar[bool] = True
    id: str
    sid: str
    gen: int
    offset: int
    data: bytes
    sum: int

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "sid": self.sid, "gen": self.gen, "offset": self.offset, "len": len(self.data),
                "sum": self.sum}

    @classmethod
    def from_wire(cls, body: dict[str, Any], raw: bytes | None = None) -> "Chunk":
        w = "blob_chunk"
        if raw is None:
            raise BlobProtocolError("blob_chunk: no data frame")
        if _i(body, "len", w) != len(raw):
            raise BlobProtocolError(f"blob_chunk: data frame of {len(raw)} bytes, header says {body.get('len')}")
        return cls(_blob_id(body, "id", w), _s(body, "sid", w), _i(body, "gen", w), _i(body, "offset", w),
                   raw, _i(body, "sum", w))


@dataclass(frozen=True)
class Done(BlobMessage):
    """receiver -> sender: the blob is here, verified (``ok``), or the transfer gave up."""

    TYPE: ClassVar[str] = "blob_done"
    id: str
    ok: bool = True
    reason: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "ok": self.ok, "reason": self.reason}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "Done":
        ok = body.get("ok", True)
        if not isinstance(ok, bool):
            raise BlobProtocolError("blob_done: ok must be a boolean")
        reason = body.get("reason")
        return cls(_blob_id(body, "id", "blob_done"), ok, reason if isinstance(reason, str) else None)


@dataclass(frozen=True)
class Missing(BlobMessage):
    """sender -> receiver: I do not have that blob (a fetch from me cannot succeed)."""

    TYPE: ClassVar[str] = "blob_missing"
    id: str
    sid: str

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "sid": self.sid}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> "Missing":
        return cls(_blob_id(body, "id", "blob_missing"), _s(body, "sid", "blob_missing"))


MESSAGES: dict[str, Any] = {m.TYPE: m for m in (Offer, Want, Credit, Chunk, Done, Missing)}
MESSAGE_TYPES = tuple(sorted(MESSAGES))


def decode(msg_type: str, body: Any, raw: bytes | None = None) -> BlobMessage:
    cls = MESSAGES.get(msg_type)
    if cls is None:
        raise BlobProtocolError(f"unknown blob message {msg_type!r}")
    if not isinstance(body, dict):
        raise BlobProtocolError(f"{msg_type}: body must be a map")
    if cls is Chunk:
        return Chunk.from_wire(body, raw)
    if raw is not None:
        raise BlobProtocolError(f"{msg_type}: takes no data frame")
    return cls.from_wire(body)


# --------------------------------------------------------------------------- instructions


@dataclass(frozen=True)
class Send:
    peer: str
    message: BlobMessage


@dataclass(frozen=True)
class SendChunk:
    """Read ``length`` bytes at ``offset`` of the blob and send them as a ``Chunk``."""

    peer: str
    id: str
    sid: str
    gen: int
    offset: int
    length: int


@dataclass(frozen=True)
class OpenPartial:
    """Open (or resume) the partial file of a blob; report ``opened(id, offset)``."""

    id: str
    size: int


@dataclass(frozen=True)
class Write:
    """Check ``sum`` and append ``data`` at ``offset`` (if ``gen`` is still current); report
    ``written(id, gen, n)`` or ``corrupt(id, gen, offset)``."""

    id: str
    gen: int
    offset: int
    data: bytes
    sum: int


@dataclass(frozen=True)
class Finish:
    """Everything is written: verify the sha256 and rename into place; report ``finished(id, ok)``."""

    id: str


@dataclass(frozen=True)
class Fetched:
    """A fetch ended here (the blob is in the store, or not): wake whoever waits for it."""

    id: str
    ok: bool
    reason: str | None = None


@dataclass(frozen=True)
class Pushed:
    """An offer to ``peer`` ended: it has the blob (``ok``) or the push gave up."""

    peer: str
    id: str
    ok: bool
    reason: str | None = None


@dataclass(frozen=True)
class Log:
    level: str
    event: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BlobConfig:
    chunk_size: int = CHUNK_SIZE
    window: int = WINDOW  # bytes granted beyond what is written
    stall_timeout: float = 5.0  # s without a chunk while credit is out: ask again
    max_stalls: int = 6  # in a row, then the fetch from that source fails
    max_restarts: int = 3  # whole-blob hash mismatches before giving up
    push_timeout: float = 10.0  # s without a word about an offered blob: offer again
    max_offers: int = 6

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.window < self.chunk_size:
            raise ValueError("need chunk_size >= 1 and window >= chunk_size")


# --------------------------------------------------------------------------- state


@dataclass
class _Fetch:
    id: str
    size: int
    sources: list[str]  # peers that have it, the first one is asked
    notify: set[str]  # peers that offered it: told DONE at the end
    sid: str
    gen: int = 0
    state: str = "opening"  # opening | receiving | finishing
    expected: int = 0  # next offset accepted
    written: int = 0
    limit: int = 0  # credit granted so far
    active_at: float = 0.0
    stalls: int = 0
    restarts: int = 0
    received: int = 0  # bytes accepted (for stats)


@dataclass
class _Serve:
    peer: str
    id: str
    sid: str
    gen: int
    next: int
    limit: int
    size: int
    active_at: float = 0.0


@dataclass
class _Push:
    peer: str
    id: str
    size: int
    active_at: float
    offers: int = 1


class BlobProtocol:
    """Both roles of one node. ``has(id)`` and ``size_of(id)`` look at the local store."""

    def __init__(self, node: str, has: Callable[[str], bool], size_of: Callable[[str], int | None],
                 clock: Callable[[], float] = _clock.monotonic, config: BlobConfig | None = None,
                 session_prefix: str = "s") -> None:
        self.node = node
        self.has = has
        self.size_of = size_of
        self.clock = clock
        self.cfg = config or BlobConfig()
        self._sids = (f"{session_prefix}{n:x}" for n in itertools.count(1))
        self.fetches: dict[str, _Fetch] = {}
        self.serves: dict[tuple[str, str], _Serve] = {}
        self.pushes: dict[tuple[str, str], _Push] = {}
        self.down: set[str] = set()
        # counters
        self.chunks_corrupt = 0
        self.chunks_stale = 0
        self.restarts = 0
        self.deduplicated = 0  # offers answered "already here"

    # -- queries
    def busy(self) -> bool:
        return bool(self.fetches or self.serves or self.pushes)

    def current_gen(self, blob_id: str) -> int | None:
        f = self.fetches.get(blob_id)
        return None if f is None else f.gen

    def next_deadline(self) -> float | None:
        dues = [f.active_at + self.cfg.stall_timeout for f in self.fetches.values() if f.state == "receiving"]
        dues += [p.active_at + self.cfg.push_timeout for p in self.pushes.values()]
        return min(dues) if dues else None

    # -- the sending side ------------------------------------------------------------------
    def push(self, peer: str, items: Iterable[tuple[str, int]]) -> list[Any]:
        """Make ``peer`` hold these blobs: offer them; ``Pushed`` reports each one's end."""
        now = self.clock()
        if peer in self.down:
            return [Pushed(peer, i, False, "peer down") for i, _ in items]
        new: list[tuple[str, int]] = []
        for blob_id, size in items:
            key = (peer, blob_id)
            if key in self.pushes:
                continue  # on its way already: the caller waits for the same Pushed
            self.pushes[key] = _Push(peer, blob_id, size, now)
            new.append((blob_id, size))
        return [Send(peer, Offer(tuple(new)))] if new else []

    def _on_want(self, peer: str, msg: Want) -> list[Any]:
        self._touch_push(peer, msg.id)
        size = self.size_of(msg.id)
        if size is None:
            self.serves.pop((peer, msg.id), None)
            return [Send(peer, Missing(msg.id, msg.sid))]
        key = (peer, msg.id)
        s = self.serves.get(key)
        if s is not None and s.sid == msg.sid and msg.gen < s.gen:
            self.chunks_stale += 1
            return []  # an old restart of this session
        s = _Serve(peer, msg.id, msg.sid, msg.gen, min(msg.offset, size), min(msg.limit, size), size, self.clock())
        self.serves[key] = s
        return self._pump(s)

    def _on_credit(self, peer: str, msg: Credit) -> list[Any]:
        self._touch_push(peer, msg.id)
        s = self.serves.get((peer, msg.id))
        if s is None or s.sid != msg.sid or s.gen != msg.gen:
            return []
        s.limit = max(s.limit, min(msg.limit, s.size))
        s.active_at = self.clock()
        return self._pump(s)

    def _pump(self, s: _Serve) -> list[Any]:
        out: list[Any] = []
        cs = self.cfg.chunk_size
        while s.next < s.limit:
            n = min(cs, s.limit - s.next)
            out.append(SendChunk(s.peer, s.id, s.sid, s.gen, s.next, n))
            s.next += n
        return out

    def _touch_push(self, peer: str, blob_id: str) -> None:
        p = self.pushes.get((peer, blob_id))
        if p is not None:
            p.active_at = self.clock()

    def _on_done(self, peer: str, msg: Done) -> list[Any]:
        self.serves.pop((peer, msg.id), None)
        p = self.pushes.pop((peer, msg.id), None)
        if p is None:
            return []
        return [Pushed(peer, msg.id, msg.ok, msg.reason)]

    # -- the receiving side ----------------------------------------------------------------
    def fetch(self, peer: str, blob_id: str, size: int) -> list[Any]:
        """Get ``blob_id`` from ``peer`` (which has it); ``Fetched`` reports the end."""
        return self._want(peer, blob_id, size, notify=False)

    def _on_offer(self, peer: str, msg: Offer) -> list[Any]:
        out: list[Any] = []
        for blob_id, size in msg.items:
            out += self._want(peer, blob_id, size, notify=True)
        return out

    def _want(self, peer: str, blob_id: str, size: int, notify: bool) -> list[Any]:
        if self.has(blob_id):
            if notify:
                self.deduplicated += 1
                return [Send(peer, Done(blob_id, True))]
            return [Fetched(blob_id, True)]
        f = self.fetches.get(blob_id)
        if f is not None:
            if peer not in f.sources:
                f.sources.append(peer)
            if notify:
                f.notify.add(peer)
            return []
        f = _Fetch(blob_id, size, [peer], {peer} if notify else set(), next(self._sids), active_at=self.clock())
        self.fetches[blob_id] = f
        return [OpenPartial(blob_id, size)]

    def opened(self, blob_id: str, offset: int) -> list[Any]:
        f = self.fetches.get(blob_id)
        if f is None or f.state != "opening":
            return []
        f.expected = f.written = min(offset, f.size)
        if f.written >= f.size:
            f.state = "finishing"
            return [Finish(blob_id)]
        return self._restart(f, fresh=True)

    def _restart(self, f: _Fetch, fresh: bool = False) -> list[Any]:
        if not f.sources:
            return self._fail(f, "no node to fetch it from")
        if not fresh:
            f.gen += 1
        f.state = "receiving"
        f.expected = f.written
        f.limit = min(f.size, f.written + self.cfg.window)
        f.active_at = self.clock()
        return [Send(f.sources[0], Want(f.id, f.sid, f.gen, f.written, f.limit))]

    def _on_chunk(self, peer: str, msg: Chunk) -> list[Any]:
        f = self.fetches.get(msg.id)
        if f is None or f.state != "receiving" or not f.sources or f.sources[0] != peer \
                or msg.sid != f.sid or msg.gen != f.gen:
            self.chunks_stale += 1
            return []
        if msg.offset != f.expected or msg.offset + len(msg.data) > f.limit:
            # a chunk lost on the way (or one we did not ask for): ask again from the gap
            self.chunks_stale += 1
            if msg.offset > f.expected:
                return [Log("info", "blob_chunk_gap", {"id": msg.id, "expected": f.expected, "got": msg.offset})] \
                    + self._restart_from_written(f)
            return []
        f.expected += len(msg.data)
        f.received += len(msg.data)
        f.active_at = self.clock()
        f.stalls = 0
        return [Write(f.id, f.gen, msg.offset, msg.data, msg.sum)]

    def _restart_from_written(self, f: _Fetch) -> list[Any]:
        # writes of the current gen still queued are dropped by the actor (gen check), so the
        # file ends at ``written`` once they are through; ask from there
        return self._restart(f)

    def written(self, blob_id: str, gen: int, n: int) -> list[Any]:
        f = self.fetches.get(blob_id)
        if f is None or f.gen != gen or f.state != "receiving":
            return []
        f.written += n
        if f.written >= f.size:
            f.state = "finishing"
            return [Finish(blob_id)]
        if f.limit - f.written <= self.cfg.window // 2 and f.limit < f.size:
            f.limit = min(f.size, f.written + self.cfg.window)
            return [Send(f.sources[0], Credit(f.id, f.sid, f.gen, f.limit))]
        return []

    def corrupt(self, blob_id: str, gen: int, offset: int) -> list[Any]:
        """The actor found a chunk whose checksum does not match: fetch again from there."""
        f = self.fetches.get(blob_id)
        if f is None or f.gen != gen:
            return []
        self.chunks_corrupt += 1
        f.written = offset
        return [Log("warning", "blob_chunk_corrupt", {"id": blob_id, "offset": offset,
                                                     "peer": f.sources[0] if f.sources else None})] \
            + self._restart(f)

    def write_failed(self, blob_id: str, reason: str) -> list[Any]:
        f = self.fetches.get(blob_id)
        if f is None:
            return []
        return self._fail(f, reason)

    def finished(self, blob_id: str, ok: bool, reason: str | None = None) -> list[Any]:
        f = self.fetches.get(blob_id)
        if f is None:
            return []
        if ok:
            del self.fetches[blob_id]
            tell = set(f.notify) | ({f.sources[0]} if f.sources else set())  # the source closes its session
            out: list[Any] = [Send(p, Done(blob_id, True)) for p in sorted(tell) if p not in self.down]
            return out + [Fetched(blob_id, True)]
        f.restarts += 1
        self.restarts += 1
        if f.restarts > self.cfg.max_restarts:
            return self._fail(f, reason or "content does not match its hash")
        f.state = "opening"
        f.gen += 1
        return [Log("warning", "blob_hash_mismatch_refetch", {"id": blob_id, "reason": reason}),
                OpenPartial(blob_id, f.size)]

    def _on_missing(self, peer: str, msg: Missing) -> list[Any]:
        f = self.fetches.get(msg.id)
        if f is None or msg.sid != f.sid:
            return []
        if peer in f.sources:
            f.sources.remove(peer)
        f.notify.discard(peer)
        if f.state == "receiving":
            return self._restart(f)
        return []

    def _fail(self, f: _Fetch, reason: str) -> list[Any]:
        self.fetches.pop(f.id, None)
        out: list[Any] = [Send(p, Done(f.id, False, reason)) for p in sorted(f.notify) if p not in self.down]
        return out + [Log("warning", "blob_fetch_failed", {"id": f.id, "reason": reason}),
                      Fetched(f.id, False, reason)]

    # -- both ------------------------------------------------------------------------------
    def receive(self, peer: str, msg: BlobMessage) -> list[Any]:
        self.down.discard(peer)
        if isinstance(msg, Chunk):
            return self._on_chunk(peer, msg)
        if isinstance(msg, Credit):
            return self._on_credit(peer, msg)
        if isinstance(msg, Want):
            return self._on_want(peer, msg)
        if isinstance(msg, Offer):
            return self._on_offer(peer, msg)
        if isinstance(msg, Done):
            return self._on_done(peer, msg)
        if isinstance(msg, Missing):
            return self._on_missing(peer, msg)
        return [Log("warning", "unexpected_blob_message", {"peer": peer, "type": msg.TYPE})]

    def receive_wire(self, peer: str, msg_type: str, body: Any, raw: bytes | None = None) -> list[Any]:
        try:
            msg = decode(msg_type, body, raw)
        except BlobProtocolError as e:
            return [Log("warning", "malformed_blob_message_dropped", {"peer": peer, "type": msg_type,
                                                                      "reason": str(e)})]
        return self.receive(peer, msg)

    def peer_down(self, peer: str) -> list[Any]:
        """``peer`` left (or restarted): its sessions end; fetches from it try another source
        (the partial file stays: a later fetch resumes it); pushes to it fail."""
        self.down.add(peer)
        out: list[Any] = []
        for key in [k for k in self.serves if k[0] == peer]:
            del self.serves[key]
        for key in sorted(k for k in self.pushes if k[0] == peer):
            del self.pushes[key]
            out.append(Pushed(peer, key[1], False, "peer down"))
        for blob_id in sorted(self.fetches):
            f = self.fetches[blob_id]
            f.notify.discard(peer)
            if peer in f.sources:
                was_current = f.sources[0] == peer
                f.sources.remove(peer)
                if was_current and f.state == "receiving":
                    out += self._restart(f) if f.sources else self._fail(f, f"{peer} is down")
                elif not f.sources and f.state == "opening":
                    pass  # fails once opened (no source left)
        return out

    def peer_up(self, peer: str) -> list[Any]:
        self.down.discard(peer)
        return []

    def on_timer(self) -> list[Any]:
        now = self.clock()
        out: list[Any] = []
        for blob_id in sorted(self.fetches):
            f = self.fetches[blob_id]
            if f.state == "receiving" and now - f.active_at >= self.cfg.stall_timeout:
                f.stalls += 1
                if f.stalls > self.cfg.max_stalls:
                    if f.sources:
                        f.sources.pop(0)
                    f.stalls = 0
                    if not f.sources:
                        out += self._fail(f, "transfer stalled")
                        continue
                out.append(Log("info", "blob_transfer_stalled_asking_again",
                               {"id": blob_id, "written": f.written, "peer": f.sources[0]}))
                out += self._restart(f)
        for key in sorted(k for k, s in self.serves.items() if now - s.active_at > 6 * self.cfg.push_timeout):
            del self.serves[key]  # a receiver that went quiet (it gave up, or restarts with a new session)
        for key in sorted(self.pushes):
            p = self.pushes[key]
            if now - p.active_at >= self.cfg.push_timeout:
                if p.offers >= self.cfg.max_offers:
                    del self.pushes[key]
                    out.append(Pushed(p.peer, p.id, False, "no answer from the peer"))
                    continue
                p.offers += 1
                p.active_at = now
                out.append(Send(p.peer, Offer(((p.id, p.size),))))
        return out


__all__ = ["BlobProtocol", "BlobConfig", "MESSAGE_TYPES", "Offer", "Want", "Credit", "Chunk", "Done", "Missing",
           "Send", "SendChunk", "OpenPartial", "Write", "Finish", "Fetched", "Pushed", "Log", "decode",
           "CHUNK_SIZE", "WINDOW", "checksum"]
