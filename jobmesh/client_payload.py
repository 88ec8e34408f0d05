"""Job payload on the producer side (issue 14): which values of an add's ``payload`` need an
upload (files and bytes, each once), the bodies with blob ids put in their place, and the
reading and writing of the bytes themselves. Both clients use it; it is apart from
``jobmesh/client.py`` because it is about files and blobs, not about HTTP requests.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from .errors import ValidationError

PAYLOAD_PATH = "/api/v1/blobs"
BLOB_TIMEOUT = 600.0  # seconds an upload or download may go without a byte moving


def payload_values(bodies: list[dict[str, Any]]) -> list[Any]:
    """The values of the bodies' payloads that need an upload (files and bytes), each once."""
    seen: dict[int, Any] = {}
    for body in bodies:
        payload = body.get("payload")
        if payload is None:
            continue
        if not isinstance(payload, dict):
            raise ValidationError(f"payload must be a map of names to files, bytes or blob ids, got "
                                  f"{type(payload).__name__}")
        for name, value in payload.items():
            if not isinstance(name, str):
                raise ValidationError(f"payload names must be strings, got {type(name).__name__}")
            if isinstance(value, str):
                continue  # a blob id: the node checks it
            if not isinstance(value, (bytes, bytearray, memoryview, os.PathLike)):
                raise ValidationError(f"payload {name!r}: a file (pathlib.Path), bytes or a blob id, "
                                      f"not {type(value).__name__}")
            seen.setdefault(id(value), value)
    return list(seen.values())


def with_blob_ids(bodies: list[dict[str, Any]], ids: dict[int, str]) -> list[dict[str, Any]]:
    """The bodies with every uploaded payload value replaced by its blob id."""
    out = []
    for body in bodies:
        payload = body.get("payload")
        if payload:
            body = {**body, "payload": {n: v if isinstance(v, str) else ids[id(v)] for n, v in payload.items()}}
        out.append(body)
    return out


def _blob_source(value: Any) -> tuple[Any, int]:
    """An upload's body: (an open file or the bytes, its size)."""
    if isinstance(value, os.PathLike):
        try:
            f = open(value, "rb")
            return f, os.fstat(f.fileno()).st_size
        except OSError as e:
            raise ValidationError(f"cannot read payload file {os.fspath(value)}: {e.strerror}") from None
    data = bytes(value)
    return data, len(data)


async def _save_stream(content: Any, dest: Path) -> Path:
    """An aiohttp body into ``dest`` (a ``.part`` file renamed once complete; writes off the loop)."""
    tmp = dest.with_name(dest.name + ".part")
    f = await asyncio.to_thread(open, tmp, "wb")
    try:
        async for chunk in content.iter_chunked(1 << 20):
            await asyncio.to_thread(f.write, chunk)
    finally:
        await asyncio.to_thread(f.close)
    await asyncio.to_thread(os.replace, tmp, dest)
    return dest
