"""How a blob is written: hashed while it is written to a file of its own, installed once whole.

``BlobWriter`` (an upload, a local copy: a temporary file hashed as it goes) and
``PartialBlob`` (a transfer from a peer, in order and resumable: a file under ``partial/``
verified against the id it was asked for) each end by handing their file to the store's
``_install``, which renames it into place; until then nothing is at a blob's final path.
They are the store's write path, kept apart from the index, the references and the
collector (``store.py``), which creates them (``BlobStore.writer``, ``BlobStore.partial``).
"""

from __future__ import annotations

import errno
import hashlib
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable

from .. import rng as _rng
from .refs import PREFIX, BlobMismatch, BlobRef, BlobStoreFull, BlobTooLarge, _hex

if TYPE_CHECKING:
    from .store import BlobStore

IO_CHUNK = 1 << 20


def _full(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


def _write(f: Any, data: bytes, give_up: Callable[[], None]) -> None:
    """Write to a blob's temp file; on an OSError ``give_up`` first (remove or close it), and a full
    disk or quota is ``BlobStoreFull``."""
    try:
        f.write(data)
    except OSError as e:
        give_up()
        if _full(e):
            raise BlobStoreFull(f"blob store is full (disk): {e.strerror}") from None
        raise


def _close_quietly(f: BinaryIO) -> None:
    """Close a blob's file, not acting on an error closing it (``BlobWriter.commit`` closes its own
    file and does act on one). ``BlobWriter.abort`` and ``PartialBlob.close`` use it."""
    try:
        f.close()
    except OSError:
        pass


class BlobWriter:
    """A blob being written (an upload, a copy): hashed as it goes, renamed into place by ``commit``."""

    def __init__(self, store: "BlobStore", limit: int | None = None) -> None:
        self.store = store
        self.limit = limit
        self.path = store.tmp_dir / f"w-{_rng.token_hex(8)}"
        self._f: BinaryIO | None = open(self.path, "wb")
        self._h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        n = len(data)
        if self.limit is not None and self.size + n > self.limit:
            self.abort()
            raise BlobTooLarge(f"blob larger than the limit of {self.limit} bytes")
        try:
            self.store.check_room(n)
        except BlobStoreFull:
            self.abort()
            raise
        assert self._f is not None
        _write(self._f, data, self.abort)
        self._h.update(data)
        self.size += n

    def commit(self) -> BlobRef:
        assert self._f is not None, "writer closed"
        try:
            self._f.close()
        except OSError as e:
            self.abort()
            if _full(e):
                raise BlobStoreFull(f"blob store is full (disk): {e.strerror}") from None
            raise
        self._f = None
        return self.store._install(self.path, PREFIX + self._h.hexdigest(), self.size)

    def abort(self) -> None:
        if self._f is not None:
            _close_quietly(self._f)
            self._f = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class PartialBlob:
    """A blob arriving from a peer, in order: ``append`` chunks, then ``finish`` (verify, rename).
    Resumable: a new ``PartialBlob`` for the same id continues where the file on disk ends."""

    def __init__(self, store: "BlobStore", blob_id: str, size: int) -> None:
        self.store = store
        self.id = blob_id
        self.expected_size = size
        self.path = store.partial_dir / _hex(blob_id)
        self._h = hashlib.sha256()
        offset = 0
        if self.path.exists():
            offset = self.path.stat().st_size
            if offset > size:
                self.path.unlink()
                offset = 0
        if offset:
            with open(self.path, "rb") as f:  # the prefix already here: hash it again
                while True:
                    b = f.read(IO_CHUNK)
                    if not b:
                        break
                    self._h.update(b)
        self.offset = self.hashed = offset  # bytes in the file / bytes of it hashed
        self._f: BinaryIO | None = open(self.path, "ab")
        busy = store._partial_busy
        busy[self.path.name] = busy.get(self.path.name, 0) + 1

    def write_at(self, offset: int, data: bytes) -> None:
        """Append ``data`` that belongs at ``offset`` and hash it: a rewind (a chunk fetched again
        after a corrupt or lost one) first cuts the file there and hashes the prefix again."""
        self.write_only(offset, data)
        self.hash([data])

    def write_only(self, offset: int, data: bytes) -> None:
        """``write_at`` without the hashing, which ``hash`` does next, in the same order (a
        transfer writes one chunk while the one before it is hashed). A rewind needs every
        chunk before it hashed."""
        if offset > self.offset:
            raise BlobMismatch(f"chunk at {offset} but the file ends at {self.offset}")
        if offset < self.offset:
            self._rewind(offset)
        self.append_only(data)

    def _rewind(self, offset: int) -> None:
        self.close()
        with open(self.path, "r+b") as f:
            f.truncate(offset)
        self._h = hashlib.sha256()
        with open(self.path, "rb") as f:
            left = offset
            while left > 0:
                b = f.read(min(IO_CHUNK, left))
                if not b:
                    break
                self._h.update(b)
                left -= len(b)
        self.offset = self.hashed = offset
        self._f = open(self.path, "ab")
        busy = self.store._partial_busy
        busy[self.path.name] = busy.get(self.path.name, 0) + 1

    def append(self, data: bytes) -> None:
        self.append_only(data)
        self.hash([data])

    def append_only(self, data: bytes) -> None:
        self.store.check_room(len(data))
        assert self._f is not None
        _write(self._f, data, self.close)
        self.offset += len(data)

    def hash(self, datas: Iterable[bytes]) -> int:
        """Hash what was just written, in order; returns the bytes hashed."""
        n = 0
        for data in datas:
            self._h.update(data)
            n += len(data)
        self.hashed += n
        return n

    def close(self) -> None:
        if self._f is not None:
            _close_quietly(self._f)
            self._f = None
            busy = self.store._partial_busy
            n = busy.get(self.path.name, 0) - 1
            if n > 0:
                busy[self.path.name] = n
            else:
                busy.pop(self.path.name, None)

    def discard(self) -> None:
        self.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def finish(self) -> BlobRef:
        """Verify the whole content against the id; ``BlobMismatch`` (file discarded) if it is not."""
        self.close()
        digest = PREFIX + self._h.hexdigest()
        if digest != self.id or self.offset != self.expected_size or self.hashed != self.offset:
            self.discard()
            raise BlobMismatch(f"received {self.offset} bytes hashing to {digest[:20]}…, expected {self.id[:20]}…")
        return self.store._install(self.path, self.id, self.offset)


__all__ = ["BlobWriter", "IO_CHUNK", "PartialBlob"]
