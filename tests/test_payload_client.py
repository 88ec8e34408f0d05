"""Job payload from producers (issue 14): ``Client.add(payload=)``, ``add_many`` items with a
payload, ``Client.enqueue(task, ..., _payload=)``, ``task.send_with_options(payload=)`` and the
SyncClient; outputs read back with ``client.payload``. One node in this process (HTTP on port 0);
small blobs: the transfer itself is tested elsewhere."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest

import jobmesh


@jobmesh.task("pc/upper")
def upper(suffix: str = "") -> dict[str, Any]:
    """Reads its input payload ``text`` and attaches ``out`` (the text upper-cased, plus suffix)."""
    ctx = jobmesh.current_context()
    data = ctx.payload("text").read_bytes()
    ctx.output_payload("out", data.upper() + suffix.encode())
    return {"read": len(data)}


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def test_client_add_uploads_files_and_bytes_and_reads_outputs(node_factory, tmp_path: Path) -> None:
    node = await node_factory([upper], name="pc", http="127.0.0.1:0")
    src = tmp_path / "in.txt"
    src.write_bytes(b"hello file")
    async with jobmesh.Client(node.http_url) as client:
        h = await client.add("pc/upper", {"suffix": "!"}, payload={"text": src})
        assert h.added.payload["text"].id == sha(b"hello file") and h.added.payload["text"].size == 10
        job = await h.wait(10)
        assert job.state is jobmesh.JobState.SUCCEEDED and job.result == {"read": 10}
        assert job.output_payload["out"].id == sha(b"HELLO FILE!")
        assert await client.payload(h.id, "out") == b"HELLO FILE!"
        saved = await client.payload(h.id, "text", tmp_path / "copy.txt")
        assert saved == tmp_path / "copy.txt" and saved.read_bytes() == b"hello file"
        # bytes, and a blob id already stored (passed as it is, no upload)
        h2 = await client.add("pc/upper", payload={"text": b"abc"})
        h3 = await client.add("pc/upper", payload={"text": sha(b"abc")})
        assert (await h2.wait(10)).output_payload["out"].id == (await h3.wait(10)).output_payload["out"].id
        # one payload object shared by many items is uploaded once; items may carry their own
        shared = {"text": b"shared"}
        uploads: list[Any] = []
        real_upload = client.upload

        async def counting_upload(value: Any) -> dict[str, Any]:
            uploads.append(value)
            return await real_upload(value)

        client.upload = counting_upload  # type: ignore[method-assign]
        many = await client.add_many([{"topic": "pc/upper", "payload": shared},
                                      {"topic": "pc/upper", "payload": shared},
                                      {"topic": "pc/upper", "payload": {"text": b"own"}}])
        outs = [(await m.wait(10)).output_payload["out"].id for m in many]
        assert outs == [sha(b"SHARED"), sha(b"SHARED"), sha(b"OWN")] and uploads == [b"shared", b"own"]
        client.upload = real_upload  # type: ignore[method-assign]
        # bad input: a clear error in the producer, or the node's 400
        with pytest.raises(jobmesh.ValidationError, match="unknown blob"):
            await client.add("pc/upper", payload={"text": sha(b"never stored")})
        with pytest.raises(jobmesh.ValidationError, match="not a blob id"):
            await client.add("pc/upper", payload={"text": "../etc/passwd"})
        with pytest.raises(jobmesh.ValidationError, match="a file .pathlib.Path., bytes or a blob id"):
            await client.add("pc/upper", payload={"text": 42})
        with pytest.raises(jobmesh.ValidationError, match="cannot read payload file"):
            await client.add("pc/upper", payload={"text": tmp_path / "missing"})
        with pytest.raises(jobmesh.NotFound):
            await client.payload(h.id, "nope")


async def test_enqueue_and_send_with_options_take_payload(node_factory, monkeypatch) -> None:
    node = await node_factory([upper], name="pe", http="127.0.0.1:0")
    async with jobmesh.Client(node.http_url) as client:
        h = await client.enqueue(upper, "?", _payload={"text": b"via enqueue"}, _key="pe-1")
        job = await h.wait(10)
        assert job.key == "pe-1" and await client.payload(h.id, "out") == b"VIA ENQUEUE?"
    # the default producer: the node running here (node.jobs.add stores the bytes)
    h2 = await upper.send_with_options(kwargs={"suffix": "."}, payload={"text": b"local"})
    done = await h2.wait(10)
    assert (await node.jobs.payload(done.id, "out")).read_bytes() == b"LOCAL."
    # ... and through HTTP ($JOBMESH_URL when no node runs in this process)
    from jobmesh import tasks as tasks_mod

    monkeypatch.setattr(tasks_mod, "_running_nodes", [])
    monkeypatch.setenv("JOBMESH_URL", node.http_url)
    h3 = await upper.send_with_options(payload={"text": b"remote"})
    assert (await node.jobs.payload((await h3.wait(10)).id, "out")).read_bytes() == b"REMOTE"


async def test_sync_client_payload(node_factory, tmp_path: Path) -> None:
    node = await node_factory([upper], name="ps", http="127.0.0.1:0")
    src = tmp_path / "s.txt"
    src.write_bytes(b"sync")

    def use() -> list[Any]:
        with jobmesh.SyncClient(node.http_url) as client:
            h = client.add("pc/upper", payload={"text": src})
            job = h.wait(10)
            e = client.enqueue(upper, "!", _payload={"text": b"e"})
            e.wait(10)
            with pytest.raises(jobmesh.ValidationError, match="unknown blob"):
                client.add("pc/upper", payload={"text": sha(b"nothing")})
            return [job.state, client.payload(h.id, "out"), client.payload(e.id, "out", tmp_path / "e").read_bytes(),
                    client.upload(b"xyz")]

    assert await asyncio.to_thread(use) == [jobmesh.JobState.SUCCEEDED, b"SYNC", b"E!",
                                            {"id": sha(b"xyz"), "size": 3}]
