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


async def resolve_requests(store: BlobStore | None, requests: list[Any]) -> list[dict[str, BlobRef]]:
    """Each request's payload (``JobRequest.payload``) as ``{name: BlobRef}``: files and bytes
    stored once per payload object (a payload shared by many requests is stored once), blob ids
    checked."""
    if store is None:
        raise ValidationError("this node has no blob store")
    done: dict[int, dict[str, BlobRef]] = {}
    out: list[dict[str, BlobRef]] = []
    for i, r in enumerate(requests):
        if r.payload is None:
            out.append({})
            continue
        refs = done.get(id(r.payload))
        if refs is None:
            where = f"item {i}: " if len(requests) > 1 else ""
            refs = done[id(r.payload)] = await resolve_payload(store, r.payload, where)
        out.append(refs)
    return out


def with_payload(store: BlobStore | None, jobs: list[Any]) -> list[Any]:
    """The jobs (readers' copies) with their payload and output payload from the store's references."""
    if store is None or not store.has_refs or not jobs:
        return jobs
    found = store.payloads([j.id for j in jobs])
    for j in jobs:
        j.payload, j.output_payload = found.get(j.id, ({}, {}))
    return jobs


def payload_file(store: BlobStore | None, job: Any, name: str) -> "os.PathLike[str]":
    """The local file of ``job``'s output ``name`` or, failing that, its input; ``NotFound``."""
    ref = job.output_payload.get(name) or job.payload.get(name)
    if ref is None or store is None:
        raise NotFound(f"job {job.id} has no payload named {name!r}")
    path = store.path(ref.id)
    if not path.is_file():
        raise NotFound(f"payload {name!r} of job {job.id} ({ref.id}) is not on this node")
    return path
