"""Job payload: a content-addressed blob store per node and blob transfer between nodes.

``store.py`` (files, references, garbage collection; its ids, names and errors are in
``refs.py``, its write path in ``writers.py``), ``protocol.py`` (the pure chunked, credit-based
transfer protocol), ``actor.py`` (``node.blobs``: the shell that moves chunks).
"""

from .store import BlobMismatch, BlobRef, BlobStore, BlobStoreFull, BlobTooLarge, check_id, check_name

__all__ = ["BlobMismatch", "BlobRef", "BlobStore", "BlobStoreFull", "BlobTooLarge", "check_id", "check_name"]
