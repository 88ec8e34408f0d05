"""Blob ids, payload names, references and the blob store's errors: the payload's vocabulary.

What the rest of jobmesh checks and passes around (the HTTP API and the CLI validate ids and
names, job and workflow records carry ``BlobRef``s, transfer messages name blobs) without
needing the store itself: no files, no SQLite, no hashing of content. The store
(``store.py``) and its writers (``writers.py``) use the same names; ``store`` re-exports
all of them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from ..errors import JobmeshError, ValidationError

PREFIX = "sha256:"
_ID = re.compile(r"^sha256:([0-9a-f]{64})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
EMPTY_SHA = hashlib.sha256(b"").hexdigest()


class BlobStoreFull(JobmeshError):
    """The blob store's quota or the disk is full."""

    http_status = 507


class BlobTooLarge(JobmeshError):
    http_status = 413


class BlobMismatch(JobmeshError):
    """Received content does not hash to the id it was sent as."""


@dataclass(frozen=True)
class BlobRef:
    id: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "size": self.size}

    @classmethod
    def from_json(cls, data: Any, what: str = "payload") -> "BlobRef":
        if not isinstance(data, dict):
            raise ValidationError(f"{what}: expected {{\"id\", \"size\"}}")
        size = data.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValidationError(f"{what}: size must be a whole number >= 0")
        return cls(check_id(data.get("id"), what), size)


def check_id(value: Any, what: str = "blob id") -> str:
    """A blob id (``sha256:<64 lowercase hex>``); anything else (``../``, other hashes) is a 400."""
    if not isinstance(value, str) or not _ID.match(value):
        shown = value if isinstance(value, str) else type(value).__name__
        raise ValidationError(f"{what}: not a blob id (sha256:<64 hex digits>): {str(shown)[:80]!r}")
    return value


def check_name(value: Any, what: str = "payload name") -> str:
    """A payload name: letters, digits, ``.``, ``_``, ``-`` (no ``/``, no leading dot): a file name anywhere."""
    if not isinstance(value, str) or not _NAME.match(value) or value in (".", ".."):
        raise ValidationError(f"{what}: {str(value)[:80]!r} is not a valid name "
                              "(letters, digits, '.', '_', '-'; 128 characters at most; not starting with '.')")
    return value


def _hex(blob_id: str) -> str:
    m = _ID.match(blob_id)
    if m is None:
        raise ValidationError(f"not a blob id: {blob_id[:80]!r}")
    return m.group(1)



__all__ = ["BlobMismatch", "BlobRef", "BlobStoreFull", "BlobTooLarge", "EMPTY_SHA", "PREFIX", "check_id",
           "check_name"]
