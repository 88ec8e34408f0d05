"""The content-addressed blob store: hashing, dedup, references, GC, quota, bad ids."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from jobmesh.blobs.store import BlobMismatch, BlobRef, BlobStore, BlobStoreFull, BlobTooLarge, check_id, check_name
from jobmesh.errors import NotFound, ValidationError


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def store(tmp_path: Path):
    clock = Clock()
    s = BlobStore(tmp_path / "blobs", grace=10.0, clock=clock).open()
    s.test_clock = clock  # type: ignore[attr-defined]
    yield s
    s.close()


def sid(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_put_bytes_is_content_addressed_read_only_and_deduplicated(store: BlobStore) -> None:
    a = store.put_bytes(b"hello")
    b = store.put_bytes(b"hello")
    assert a == b == BlobRef(sid(b"hello"), 5)
    p = store.path(a.id)
    assert p.read_bytes() == b"hello"
    assert not os.access(p, os.W_OK) or os.geteuid() == 0
    assert oct(p.stat().st_mode & 0o777) == "0o444"
    assert store.stats()["blobs"] == 1 and store.stats()["bytes"] == 5
    assert list(store.tmp_dir.iterdir()) == []


def test_empty_blob_and_file(store: BlobStore, tmp_path: Path) -> None:
    e = store.put_bytes(b"")
    assert e.size == 0 and store.path(e.id).read_bytes() == b""
    f = tmp_path / "x.bin"
    f.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    r = store.put(f)
    assert r.id == sid(f.read_bytes()) and r.size == f.stat().st_size


def test_bad_ids_and_names_are_validation_errors() -> None:
    for bad in ["../etc/passwd", "sha256:../../x", "sha256:" + "A" * 64, "md5:" + "0" * 32, "", 5, None,
                "sha256:" + "0" * 63]:
        with pytest.raises(ValidationError):
            check_id(bad)
    check_id("sha256:" + "0" * 64)
    for bad in ["../x", "a/b", ".hidden", "", "x" * 200, "a b"]:
        with pytest.raises(ValidationError):
            check_name(bad)
    assert check_name("thumb-48.png") == "thumb-48.png"


def test_unknown_blob_is_not_found(store: BlobStore) -> None:
    with pytest.raises(NotFound):
        store.ref_of("sha256:" + "1" * 64)
    with pytest.raises(ValidationError):
        store.put("not-a-blob")


def test_writer_limit_and_quota(tmp_path: Path) -> None:
    s = BlobStore(tmp_path / "b", quota=100).open()
    w = s.writer(limit=10)
    with pytest.raises(BlobTooLarge):
        w.write(b"x" * 11)
    assert list(s.tmp_dir.iterdir()) == []
    s.put_bytes(b"a" * 60)
    with pytest.raises(BlobStoreFull) as e:
        s.put_bytes(b"b" * 60)
    assert e.value.http_status == 507
    assert list(s.tmp_dir.iterdir()) == []
    s.close()


def test_partial_resumes_rewinds_and_verifies(store: BlobStore) -> None:
    data = os.urandom(1000)
    bid = sid(data)
    p = store.partial(bid, len(data))
    p.write_at(0, data[:300])
    p.close()
    p = store.partial(bid, len(data))  # a restart: resumes at the file's size
    assert p.offset == 300
    p.write_at(300, b"\0" * 100)  # a bad stretch written...
    p.write_at(300, data[300:])  # ...and fetched again from there
    ref = p.finish()
    assert ref == BlobRef(bid, 1000) and store.path(bid).read_bytes() == data
    bad = store.partial(sid(b"other"), 5)
    bad.write_at(0, b"wrong")
    with pytest.raises(BlobMismatch):
        bad.finish()
    assert not store.has(sid(b"other")) and store.partial_offset(sid(b"other")) == 0


def test_references_and_gc(store: BlobStore) -> None:
    clock = store.test_clock  # type: ignore[attr-defined]
    used = store.put_bytes(b"used")
    unused = store.put_bytes(b"unused")
    out = store.put_bytes(b"out")
    store.set_inputs({"job-1": {"image": used}, "job-2": {"image": used}})
    store.add_output("job-1", 1, "thumb", out)
    store.add_output("job-1", 2, "thumb", out)
    assert store.payloads(["job-1"])["job-1"] == ({"image": used}, {"thumb": out})
    alive = {"job-1", "job-2"}
    # within the grace period nothing goes
    assert store.gc(lambda owners: alive & set(owners)) == []
    clock.t += 11
    assert store.gc(lambda owners: alive & set(owners)) == [unused.id]
    assert store.has(used.id) and store.has(out.id)
    alive = {"job-2"}  # job-1 purged: its output goes, the shared input stays
    store.gc(lambda owners: alive & set(owners))
    clock.t += 11
    assert store.gc(lambda owners: alive & set(owners)) == [out.id]
    assert store.has(used.id)
    alive = set()
    store.gc(lambda owners: set())
    clock.t += 11
    assert store.gc(lambda owners: set()) == [used.id]
    assert store.stats()["blobs"] == 0


def test_pinned_blob_survives_gc(store: BlobStore) -> None:
    clock = store.test_clock  # type: ignore[attr-defined]
    r = store.put_bytes(b"pinned")
    store.pin([r.id])
    clock.t += 100
    store.gc(lambda o: set())
    clock.t += 100
    assert store.gc(lambda o: set()) == []
    store.unpin([r.id])
    assert store.gc(lambda o: set()) == [r.id]


def test_reopen_reconciles_files(tmp_path: Path) -> None:
    s = BlobStore(tmp_path / "b").open()
    r = s.put_bytes(b"keep")
    s.close()
    (tmp_path / "b" / "tmp" / "w-leftover").write_bytes(b"junk")
    s = BlobStore(tmp_path / "b").open()
    assert s.has(r.id) and s.stats()["blobs"] == 1
    assert list(s.tmp_dir.iterdir()) == []
    s.close()
