"""The wire codec (DESIGN §4): multipart frames ``[version, type, body]``, body msgpack.

Pure: no sockets. Every peer message goes through ``decode``, which never raises
anything but ``WireError`` (with a reason the caller logs before dropping the
message), so malformed frames, unknown types, other protocol versions and
oversize messages cannot crash a node.

Raw frame: a type registered with ``raw=True`` (blob chunks) may carry a fourth frame,
``[version, type, body, raw]``, bytes that are not msgpack (``Message.raw``): a chunk's
data crosses without being packed into, and copied out of, a msgpack body. Every
other type keeps exactly three frames; a fourth frame on one of them is refused.

Batching: several items may share one message (``encode_batch`` / ``Message.items``)
because one message per job caps a node near the asyncio socket rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import msgpack

PROTOCOL_VERSION = 1
VERSION_FRAME = b"jm%d" % PROTOCOL_VERSION
MAX_MESSAGE_SIZE = 4 * 1024 * 1024  # bytes; also set as ZMQ_MAXMSGSIZE on every socket
MAX_TYPE_LENGTH = 64
BATCH_KEY = "items"

# Message types known to this node. Discovery's are registered here; other parts
# (transfer) add theirs with ``register_type`` at import time.
_RAW_TYPES: set[str] = set()  # types that may carry a fourth, raw frame
_TYPES: set[str] = {
    "heartbeat",  # PUB/SUB: a node's liveness, endpoints, properties and member gossip
    "join",  # DEALER -> ROUTER: ask a member for the member list
    "join_reply",  # ROUTER -> DEALER: the member list
    "error",  # ROUTER -> DEALER: the request was refused (body: {"error": reason})
}


class WireError(ValueError):
    """A message this node cannot accept; ``reason`` says why (logged, message dropped)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def register_type(msg_type: str, raw: bool = False) -> str:
    """Make ``msg_type`` acceptable to ``decode`` (idempotent); ``raw``: it may carry a raw frame."""
    if not msg_type or len(msg_type) > MAX_TYPE_LENGTH or not msg_type.isascii():
        raise ValueError(f"invalid message type {msg_type!r}")
    _TYPES.add(msg_type)
    if raw:
        _RAW_TYPES.add(msg_type)
    return msg_type


def known_types() -> frozenset[str]:
    return frozenset(_TYPES)


@dataclass(frozen=True)
class Message:
    """A decoded message: its type, its msgpack body (a map) and, for a raw type, its raw frame."""

    type: str
    body: dict[str, Any]
    raw: bytes | memoryview | None = None

    @property
    def items(self) -> list[Any]:
        """The items of a batch message (a single-item list for a plain message)."""
        items = self.body.get(BATCH_KEY)
        if isinstance(items, list):
            return items
        return [self.body]


def _pack(body: Any) -> bytes:
    try:
        return msgpack.packb(body, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise WireError(f"body cannot be encoded: {e}") from None


def encode(msg_type: str, body: dict[str, Any], max_size: int = MAX_MESSAGE_SIZE,
           raw: bytes | None = None) -> list[bytes]:
    """Frames for one message (``raw``: a fourth frame, for a type registered ``raw=True``).
    Raises ``WireError`` for an unknown type or an oversize body."""
    if msg_type not in _TYPES:
        raise WireError(f"unknown message type {msg_type!r}")
    if not isinstance(body, dict):
        raise WireError("body must be a map")
    packed = _pack(body)
    frames = [VERSION_FRAME, msg_type.encode("ascii"), packed]
    if raw is not None:
        if msg_type not in _RAW_TYPES:
            raise WireError(f"message type {msg_type!r} takes no raw frame")
        frames.append(raw)
    size = sum(len(f) for f in frames)
    if size > max_size:
        raise WireError(f"message of {size} bytes exceeds the maximum of {max_size}")
    return frames


def encode_batch(
    msg_type: str, items: Sequence[Any], extra: dict[str, Any] | None = None, max_size: int = MAX_MESSAGE_SIZE
) -> list[bytes]:
    """One message carrying several items (``body = {**extra, "items": [...]}``)."""
    body = dict(extra or {})
    body[BATCH_KEY] = list(items)
    return encode(msg_type, body, max_size)


def split_batches(
    items: Iterable[Any], max_items: int = 256, max_bytes: int = MAX_MESSAGE_SIZE // 2
) -> Iterator[list[Any]]:
    """Group items into batches bounded by count and (approximate) encoded size.

    An item that alone exceeds ``max_bytes`` is still yielded on its own, so the
    caller's ``encode`` reports it as oversize instead of it vanishing here.
    """
    if max_items < 1 or max_bytes < 1:
        raise ValueError("max_items and max_bytes must be >= 1")
    batch: list[Any] = []
    size = 0
    for item in items:
        item_size = len(_pack(item))
        if batch and (len(batch) >= max_items or size + item_size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item_size
    if batch:
        yield batch


def decode(frames: Sequence[bytes], max_size: int = MAX_MESSAGE_SIZE) -> Message:
    """Parse ``[version, type, body]`` (or ``[version, type, body, raw]`` for a raw type); any
    problem is a ``WireError`` with a reason."""
    if len(frames) != 3 and len(frames) != 4:
        raise WireError(f"expected 3 frames, got {len(frames)}")
    version, raw_type, body = (bytes(f) for f in frames[:3])
    raw = frames[3] if len(frames) == 4 else None  # bytes, or a view of the transport's buffer
    size = len(version) + len(raw_type) + len(body) + (len(raw) if raw is not None else 0)
    if size > max_size:
        raise WireError(f"message of {size} bytes exceeds the maximum of {max_size}")
    if version != VERSION_FRAME:
        shown = version[:16].decode("ascii", "replace")
        raise WireError(f"protocol version {shown!r} is not {VERSION_FRAME.decode()!r}")
    try:
        msg_type = raw_type.decode("ascii")
    except UnicodeDecodeError:
        raise WireError("message type is not ascii") from None
    if msg_type not in _TYPES:
        raise WireError(f"unknown message type {msg_type[:MAX_TYPE_LENGTH]!r}")
    if raw is not None and msg_type not in _RAW_TYPES:
        raise WireError(f"expected 3 frames, got 4 (type {msg_type!r} takes no raw frame)")
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated classes for bad input
        raise WireError(f"malformed msgpack body: {type(e).__name__}") from None
    if not isinstance(obj, dict):
        raise WireError(f"body must be a map, got {type(obj).__name__}")
    return Message(msg_type, obj, raw)


def peer_version(frames: Sequence[bytes]) -> str | None:
    """The version frame of a (possibly rejected) message, for log lines."""
    if not frames:
        return None
    return bytes(frames[0])[:16].decode("ascii", "replace")
