"""The pure blob-transfer protocol: credit, resume, dedup, corrupt and lost chunks, peer failure."""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Any

from jobmesh.blobs.protocol import (
    BlobConfig, BlobProtocol, Chunk, checksum, Done, Fetched, Finish, OpenPartial, Pushed, Send, SendChunk, Write, Want,
)

CFG = BlobConfig(chunk_size=100, window=400, stall_timeout=1.0)


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


class Node:
    """A protocol with an in-memory store and partial files: what the actor does, synchronously."""

    def __init__(self, name: str, mesh: "Mesh", blobs: dict[str, bytes] | None = None) -> None:
        self.name = name
        self.mesh = mesh
        self.blobs = dict(blobs or {})
        self.partial: dict[str, bytearray] = {}
        self.p = BlobProtocol(name, lambda i: i in self.blobs, lambda i: len(self.blobs[i]) if i in self.blobs else None,
                              mesh.clock, CFG, session_prefix=name)
        self.events: list[Any] = []

    def run(self, out: list[Any]) -> None:
        for ins in out:
            if isinstance(ins, Send):
                self.mesh.wire.append((self.name, ins.peer, ins.message))
            elif isinstance(ins, SendChunk):
                data = self.blobs[ins.id][ins.offset:ins.offset + ins.length]
                crc = checksum(data)
                if self.mesh.corrupt and ins.offset == self.mesh.corrupt[0]:
                    self.mesh.corrupt.pop(0)
                    data = b"X" + data[1:]
                self.mesh.wire.append((self.name, ins.peer, Chunk(ins.id, ins.sid, ins.gen, ins.offset, data, crc)))
            elif isinstance(ins, OpenPartial):
                buf = self.partial.setdefault(ins.id, bytearray())
                self.run(self.p.opened(ins.id, len(buf)))
            elif isinstance(ins, Write):
                buf = self.partial[ins.id]
                if checksum(ins.data) != ins.sum:
                    self.run(self.p.corrupt(ins.id, ins.gen, ins.offset))
                    continue
                del buf[ins.offset:]
                buf += ins.data
                self.run(self.p.written(ins.id, ins.gen, len(ins.data)))
            elif isinstance(ins, Finish):
                data = bytes(self.partial.pop(ins.id))
                ok = "sha256:" + hashlib.sha256(data).hexdigest() == ins.id
                if ok:
                    self.blobs[ins.id] = data
                self.run(self.p.finished(ins.id, ok, None if ok else "mismatch"))
            else:
                self.events.append(ins)


class Mesh:
    def __init__(self) -> None:
        self.clock = Clock()
        self.wire: deque[tuple[str, str, Any]] = deque()
        self.nodes: dict[str, Node] = {}
        self.corrupt: list[int] = []
        self.drop: set[int] = set()  # chunk offsets to lose once
        self.max_in_flight = 0

    def add(self, name: str, blobs: dict[str, bytes] | None = None) -> Node:
        n = self.nodes[name] = Node(name, self, blobs)
        return n

    def pump(self, limit: int = 100_000, stop_after: int | None = None) -> int:
        n = 0
        while self.wire and n < limit:
            chunk_bytes = sum(len(m.data) for _, _, m in self.wire if isinstance(m, Chunk))
            self.max_in_flight = max(self.max_in_flight, chunk_bytes)
            src, dst, msg = self.wire.popleft()
            if isinstance(msg, Chunk) and msg.offset in self.drop:
                self.drop.discard(msg.offset)
                continue
            node = self.nodes[dst]
            raw = msg.data if isinstance(msg, Chunk) else None  # a chunk's data travels as the raw frame
            node.run(node.p.receive_wire(src, msg.TYPE, msg.to_wire(), raw))
            n += 1
            if stop_after is not None and n >= stop_after:
                break
        return n


def blob(n: int, seed: int = 1) -> tuple[str, bytes]:
    data = bytes((i * 7 + seed) % 251 for i in range(n))
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def test_push_moves_the_blob_within_the_credit() -> None:
    m = Mesh()
    bid, data = blob(2345)
    a, b = m.add("a", {bid: data}), m.add("b")
    a.run(a.p.push("b", [(bid, len(data))]))
    m.pump()
    assert b.blobs[bid] == data
    assert Pushed("b", bid, True, None) in a.events
    assert m.max_in_flight <= CFG.window
    assert not a.p.busy() and not b.p.busy()


def test_never_resent_when_the_receiver_has_it() -> None:
    m = Mesh()
    bid, data = blob(1000)
    a, b = m.add("a", {bid: data}), m.add("b", {bid: data})
    a.run(a.p.push("b", [(bid, len(data))]))
    m.pump()
    assert Pushed("b", bid, True, None) in a.events
    assert b.p.deduplicated == 1


def test_empty_blob() -> None:
    m = Mesh()
    bid, data = blob(0)
    a, b = m.add("a", {bid: data}), m.add("b")
    a.run(a.p.push("b", [(bid, 0)]))
    m.pump()
    assert b.blobs[bid] == b"" and Pushed("b", bid, True, None) in a.events


def test_corrupt_chunk_is_fetched_again() -> None:
    m = Mesh()
    bid, data = blob(1000)
    a, b = m.add("a", {bid: data}), m.add("b")
    m.corrupt = [300]
    b.run(b.p.fetch("a", bid, len(data)))
    m.pump()
    assert b.blobs[bid] == data
    assert b.p.chunks_corrupt == 1
    assert Fetched(bid, True) in b.events


def test_lost_chunk_is_asked_for_again() -> None:
    m = Mesh()
    bid, data = blob(1000)
    a, b = m.add("a", {bid: data}), m.add("b")
    m.drop = {200}
    b.run(b.p.fetch("a", bid, len(data)))
    m.pump()
    assert b.blobs[bid] == data


def test_stall_asks_again_and_resumes() -> None:
    m = Mesh()
    bid, data = blob(1000)
    a, b = m.add("a", {bid: data}), m.add("b")
    b.run(b.p.fetch("a", bid, len(data)))
    m.pump(stop_after=3)
    m.wire.clear()  # everything on the wire lost
    have = len(b.partial[bid])
    assert 0 < have < len(data)
    m.clock.t += 2
    b.run(b.p.on_timer())
    wants = [msg for _, _, msg in m.wire if isinstance(msg, Want)]
    assert wants and wants[0].offset == have and wants[0].gen == 1
    m.pump()
    assert b.blobs[bid] == data


def test_resume_after_the_sender_restarts() -> None:
    m = Mesh()
    bid, data = blob(1500)
    a, b = m.add("a", {bid: data}), m.add("b")
    b.run(b.p.fetch("a", bid, len(data)))
    m.pump(stop_after=4)
    m.wire.clear()
    have = len(b.partial[bid])
    # a dies: the fetch has no source left and fails; the partial file stays
    b.run(b.p.peer_down("a"))
    assert any(isinstance(e, Fetched) and not e.ok for e in b.events)
    a2 = m.add("a", {bid: data})  # a new incarnation
    b.run(b.p.fetch("a", bid, len(data)))
    want = [msg for _, _, msg in m.wire if isinstance(msg, Want)][0]
    assert want.offset == have > 0
    m.pump()
    assert b.blobs[bid] == data
    assert a2.p.serves == {}


def test_push_to_a_peer_that_goes_down_fails_and_whole_hash_mismatch_refetches() -> None:
    m = Mesh()
    bid, data = blob(500)
    a, b = m.add("a", {bid: data}), m.add("b")
    a.run(a.p.push("b", [(bid, len(data))]))
    a.run(a.p.peer_down("b"))
    assert Pushed("b", bid, False, "peer down") in a.events
    # a blob whose content does not match its id is fetched again, then given up
    wrong = "sha256:" + "0" * 64
    a.blobs[wrong] = b"not that"
    b.run(b.p.fetch("a", wrong, 8))
    m.pump()
    assert wrong not in b.blobs
    assert any(isinstance(e, Fetched) and not e.ok for e in b.events)
    assert b.p.restarts == CFG.max_restarts + 1


def test_missing_at_the_sender_fails_the_fetch() -> None:
    m = Mesh()
    a, b = m.add("a"), m.add("b")
    bid, _ = blob(10)
    b.run(b.p.fetch("a", bid, 10))
    m.pump()
    assert any(isinstance(e, Fetched) and not e.ok for e in b.events)


def test_malformed_messages_become_logs() -> None:
    p = BlobProtocol("x", lambda i: False, lambda i: None)
    for t, body in [("blob_chunk", {"id": "../x"}), ("blob_want", []), ("blob_offer", {"items": [[1, 2]]}),
                    ("nope", {})]:
        out = p.receive_wire("y", t, body)
        assert len(out) == 1 and out[0].event == "malformed_blob_message_dropped"
