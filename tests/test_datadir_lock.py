"""A node owns its data directory (DESIGN §3, issue 9): a second node on it refuses to start,
in another process or in the same one; a dead holder's lock is taken over; stop releases it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

import jobmesh
from jobmesh.datadir import LOCK_NAME, DataDirLock
from jobmesh.errors import DataDirInUse, JobmeshError
from helpers import NodeProcess, free_port


def test_lock_names_its_holder_and_is_released(tmp_path):
    first = DataDirLock(tmp_path / "d", node="a")
    first.acquire(started=0.0)
    second = DataDirLock(tmp_path / "d", node="b")
    with pytest.raises(DataDirInUse) as e:
        second.acquire()
    assert isinstance(e.value, JobmeshError)
    assert e.value.pid == os.getpid() and e.value.node == "a"
    assert str(e.value) == (f"data directory {tmp_path / 'd'} is in use by another jobmesh node "
                            f"(pid {os.getpid()}, node a); stop it or choose another --data")
    first.release()
    first.release()  # idempotent
    second.acquire()
    assert second.held
    second.release()
    assert (tmp_path / "d" / LOCK_NAME).exists()  # the file stays (unlinking it would race)


async def test_second_embedded_node_on_one_directory_refuses_to_start(tmp_path):
    a = jobmesh.Node(name="a", data_dir=tmp_path / "d")
    b = jobmesh.Node(name="b", data_dir=tmp_path / "d")
    await a.start()
    try:
        with pytest.raises(DataDirInUse, match=r"in use by another jobmesh node \(pid \d+, node a\)"):
            await b.start()
        assert not b.running and a.running
        job = await a.jobs.add("x/y")  # the holder is untouched
        assert (await a.jobs.get(job.id)) is not None
    finally:
        await a.stop()
    await b.start()  # stop released it: the same process may start a node there again
    try:
        assert (await b.jobs.get(job.id)) is not None
    finally:
        await b.stop()
    await a.start()  # and the first Node object too
    await a.stop()


async def test_a_node_that_fails_to_start_releases_the_lock(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        n = jobmesh.Node(name="f", data_dir=tmp_path / "d", http=f"127.0.0.1:{port}")
        with pytest.raises(jobmesh.ValidationError, match="cannot serve HTTP"):  # the port is taken
            await n.start()
    finally:
        busy.close()
    lock = DataDirLock(tmp_path / "d")
    lock.acquire()
    lock.release()


def _port_free(port: int) -> bool:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_second_process_exits_2_at_once_and_a_killed_holder_is_taken_over(tmp_path):
    first = NodeProcess(tmp_path, "a", data=tmp_path / "shared")
    try:
        first.start()
        port = free_port()
        second = subprocess.run(
            [sys.executable, "-m", "jobmesh", "node", "--name", "b", "--data", str(tmp_path / "shared"),
             "--http", f"127.0.0.1:{port}", "--config", str(tmp_path / "a-standalone.toml"),
             "--log-format", "json"],
            capture_output=True, text=True, timeout=30, cwd=tmp_path, env=first.env)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert lines == [f"jobmesh: data directory {tmp_path / 'shared'} is in use by another jobmesh node "
                         f"(pid {first.proc.pid}, node a); stop it or choose another --data"]
        assert "Traceback" not in second.stderr
        assert _port_free(port)  # nothing was started
        assert first.proc.poll() is None and first.api("GET", "/api/v1/health")[0] == 200
        first.kill()  # kill -9: the kernel drops the lock; the file still names the dead pid
    finally:
        first.close()
    again = NodeProcess(tmp_path, "c", data=tmp_path / "shared")
    try:
        again.start()
        assert again.api("GET", "/api/v1/health")[0] == 200
        assert again.terminate(timeout=20) == 0
    finally:
        again.close()


async def test_the_incarnation_grows_across_restarts_even_when_the_clock_went_back(tmp_path) -> None:
    """Peers tell a restarted node from a stale process by its incarnation; with the start time
    alone, a clock set back made the restart look older and the mesh refused it for good
    (the simulator's seed 239: a clock jump of -30 s, then a kill -9 and a restart)."""
    import jobmesh

    now = [1000.0]
    first = jobmesh.Node(name="a", data_dir=tmp_path / "a", clock=lambda: now[0])
    await first.start()
    inc1 = first.started_at
    await first.stop()
    now[0] = 970.0  # the clock went back 30 s
    again = jobmesh.Node(name="a", data_dir=tmp_path / "a", clock=lambda: now[0])
    await again.start()
    try:
        assert again.started_at > inc1
    finally:
        await again.stop()
