"""The wire codec: round trips, and every kind of bad input is a WireError with a reason."""

from __future__ import annotations

import msgpack
import pytest

from jobmesh import wire
from jobmesh.wire import Message, WireError, decode, encode, encode_batch, split_batches


def test_round_trip_keeps_type_and_body() -> None:
    body = {"name": "a", "incarnation": 1.5, "topics": ["x/y"], "blob": b"\x00\x01", "n": None}
    frames = encode("heartbeat", body)
    assert frames[0] == wire.VERSION_FRAME
    assert frames[1] == b"heartbeat"
    msg = decode(frames)
    assert msg == Message("heartbeat", body)


def test_decode_accepts_zmq_frame_like_buffers() -> None:
    frames = [memoryview(f) for f in encode("join", {"name": "b"})]
    assert decode(frames).body == {"name": "b"}


@pytest.mark.parametrize(
    "frames, reason",
    [
        ([b"jm1", b"heartbeat"], "expected 3 frames"),
        ([b"jm1", b"heartbeat", b"", b""], "expected 3 frames"),
        ([b"jm2", b"heartbeat", msgpack.packb({})], "protocol version"),
        ([b"", b"heartbeat", msgpack.packb({})], "protocol version"),
        ([b"jm1", b"no-such-type", msgpack.packb({})], "unknown message type"),
        ([b"jm1", b"\xff\xfe", msgpack.packb({})], "not ascii"),
        ([b"jm1", b"heartbeat", b"\xc1garbage"], "malformed msgpack"),
        ([b"jm1", b"heartbeat", b"\x92\x01"], "malformed msgpack"),  # truncated array
        ([b"jm1", b"heartbeat", msgpack.packb([1, 2])], "must be a map"),
        ([b"jm1", b"heartbeat", msgpack.packb("text")], "must be a map"),
        ([b"jm1", b"heartbeat", msgpack.packb({1: 2})], "malformed msgpack"),  # non-string keys
    ],
)
def test_decode_rejects_bad_input_with_a_reason(frames: list[bytes], reason: str) -> None:
    with pytest.raises(WireError) as exc:
        decode(frames)
    assert reason in exc.value.reason


def test_decode_rejects_oversize_before_parsing() -> None:
    frames = encode("heartbeat", {"pad": "x" * 2000})
    with pytest.raises(WireError, match="exceeds the maximum of 1000"):
        decode(frames, max_size=1000)


def test_encode_rejects_unknown_type_oversize_and_unencodable_bodies() -> None:
    with pytest.raises(WireError, match="unknown message type"):
        encode("nope", {})
    with pytest.raises(WireError, match="exceeds"):
        encode("heartbeat", {"pad": "x" * 5000}, max_size=1000)
    with pytest.raises(WireError, match="cannot be encoded"):
        encode("heartbeat", {"obj": object()})
    with pytest.raises(WireError, match="must be a map"):
        encode("heartbeat", [1, 2])  # type: ignore[arg-type]


def test_registered_types_round_trip() -> None:
    wire.register_type("test/offer")
    assert "test/offer" in wire.known_types()
    assert decode(encode("test/offer", {"id": 1})).type == "test/offer"
    with pytest.raises(ValueError):
        wire.register_type("")


def test_batches_carry_several_items_and_extra_fields() -> None:
    items = [{"id": i} for i in range(5)]
    msg = decode(encode_batch("join", items, extra={"from": "a"}))
    assert msg.items == items
    assert msg.body["from"] == "a"
    # a plain message reads as a batch of one
    assert decode(encode("join", {"id": 9})).items == [{"id": 9}]


def test_split_batches_bounds_count_and_size() -> None:
    items = [{"id": i, "pad": "x" * 100} for i in range(10)]
    by_count = list(split_batches(items, max_items=4))
    assert [len(b) for b in by_count] == [4, 4, 2]
    by_size = list(split_batches(items, max_bytes=250))
    assert all(len(b) <= 2 for b in by_size)
    assert [i for b in by_size for i in b] == items
    # an oversize single item is kept alone, not lost
    big = [{"pad": "y" * 1000}, {"id": 1}]
    assert [len(b) for b in split_batches(big, max_bytes=100)] == [1, 1]
    with pytest.raises(ValueError):
        list(split_batches(items, max_items=0))


def test_a_raw_type_carries_a_fourth_frame_and_other_types_refuse_one() -> None:
    wire.register_type("test_raw", raw=True)
    data = bytes(range(256)) * 4
    frames = encode("test_raw", {"n": 1}, raw=data)
    assert len(frames) == 4 and frames[3] is data
    msg = decode(frames)
    assert msg.body == {"n": 1} and msg.raw == data
    assert decode([*frames[:3], memoryview(data)]).raw == data  # a view of the transport's buffer
    assert decode(frames[:3]).raw is None  # optional
    with pytest.raises(WireError, match="takes no raw frame"):
        encode("heartbeat", {}, raw=b"x")
    with pytest.raises(WireError, match="expected 3 frames, got 4"):
        decode([*encode("heartbeat", {}), b"x"])
    with pytest.raises(WireError, match="expected 3 frames, got 5"):
        decode([*frames, b"x"])
    with pytest.raises(WireError, match="exceeds the maximum"):
        decode(frames, max_size=len(data))  # the raw frame counts against the maximum size
