"""A job's payload as the API takes it (``{name: Path | bytes | BlobRef | blob id}``) turned into
references to blobs in the node's store. Files and bytes are hashed and copied in through
``run_in_executor`` (a thread under ZeroMQ, inline under the simulator)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ..errors import NotFound, ValidationError
from .store import BlobRef, BlobStore, check_id, check_name

MAX_NAMES = 256


async def resolve_payload(store: BlobStore, payload: Any, where: str = "") -> dict[str, BlobRef]:
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise ValidationError(f"{where}payload must be a map of names to files, bytes or blob ids")
    if len(payload) > MAX_NAMES:
        raise ValidationError(f"{where}payload: at most {MAX_NAMES} names")
    loop = asyncio.get_running_loop()
    out: dict[str, BlobRef] = {}
    for name in sorted(payload):
        value = payload[name]
        check_name(name, f"{where}payload name")
        if isinstance(value, str):
            check_id(value, f"{where}payload {name!r}")
            try:
                out[name] = store.ref_of(value)
            except NotFound:
                raise ValidationError(f"{where}payload {name!r}: unknown blob {value}") from None
        elif isinstance(value, BlobRef):
            try:
                out[name] = store.ref_of(value.id)
            except NotFound:
                raise ValidationError(f"{where}payload {name!r}: unknown blob {value.id}") from None
        elif isinstance(value, (bytes, bytearray, memoryview, os.PathLike)):
            out[name] = await loop.run_in_executor(None, store.put, value)
        else:
            raise ValidationError(f"{where}payload {name!r}: a file (pathlib.Path), bytes or a blob id, "
                                  f"not {type(value).__name__}")
    return out
