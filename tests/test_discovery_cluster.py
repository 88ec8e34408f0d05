"""Discovery with real ``jobmesh node`` processes on loopback (issue 3's multi-process tests).

Short heartbeats (0.1 s interval, 0.5 s timeout) through a config file keep these
quick; the defaults are measured by ``benchmarks/discovery.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from helpers import http_json

from jobmesh.transport import generate_keypair

pytestmark = pytest.mark.slow

FAST = "[discovery]\nheartbeat_interval = 0.1\nheartbeat_timeout = 0.5\n"


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports p such that p and p+1 are free (ROUTER + PUB), plus HTTP ports."""
    out: list[int] = []
    while len(out) < n:
        s1 = socket.socket()
        s1.bind(("127.0.0.1", 0))
        p = s1.getsockname()[1]
        s2 = socket.socket()
        try:
            s2.bind(("127.0.0.1", p + 1))
            if p not in out and p + 1 not in out and p - 1 not in out:
                out.append(p)
        except OSError:
            pass
        finally:
            s1.close()
            s2.close()
    return out


class NodeProc:
    def __init__(self, tmp: Path, name: str, config: Path, seeds: list["NodeProc"] = ()) -> None:  # type: ignore[assignment]
        self.name = name
        self.tmp = tmp
        self.config = config
        self.port, self.http_port = free_ports(2)
        self.bind = f"tcp://127.0.0.1:{self.port}"
        self.seeds = [s.bind for s in seeds]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = tmp / f"{name}.log"

    def start(self) -> "NodeProc":
        cmd = [sys.executable, "-m", "jobmesh", "node", "--config", str(self.config), "--name", self.name,
               "--data", str(self.tmp / f"data-{self.name}"), "--bind", self.bind,
               "--http", f"127.0.0.1:{self.http_port}"]
        for s in self.seeds:
            cmd += ["--seed", s]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp)
        log.close()
        return self

    def topology(self) -> dict[str, Any] | None:
        """The node's view, or None while it does not answer (starting, stopped, killed)."""
        try:
            status, body = http_json("GET", f"http://127.0.0.1:{self.http_port}/api/v1/topology", timeout=1)
        except (OSError, ValueError):
            return None
        return body if status == 200 else None

    def names(self) -> list[str] | None:
        t = self.topology()
        return [i["name"] for i in t["instances"]] if t else None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Callable[..., NodeProc]]:
    config = tmp_path / "fast.toml"
    config.write_text(FAST)
    procs: list[NodeProc] = []

    def make(name: str, seeds: list[NodeProc] = (), config_text: str | None = None) -> NodeProc:  # type: ignore[assignment]
        cfg = config
        if config_text is not None:
            cfg = tmp_path / f"{name}.toml"
            cfg.write_text(config_text)
        p = NodeProc(tmp_path, name, cfg, list(seeds)).start()
        procs.append(p)
        return p

    try:
        yield make
    finally:
        for p in procs:
            p.stop()


def wait_for(cond: Callable[[], bool], timeout: float, what: str = "condition", nodes: list[NodeProc] = ()) -> float:  # type: ignore[assignment]
    t0 = time.monotonic()
    while True:
        if cond():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            views = {n.name: n.topology() for n in nodes}
            logs = {n.name: n.output()[-3000:] for n in nodes}
            raise AssertionError(f"{what} not reached within {timeout}s\nviews={views}\nlogs={logs}")
        time.sleep(0.05)


def agreed(nodes: list[NodeProc], names: list[str], leader: str) -> bool:
    for n in nodes:
        t = n.topology()
        if t is None or [i["name"] for i in t["instances"]] != names or t["leader"] != leader or not t["current"]:
            return False
    return True


def start_chain(mesh: Callable[..., NodeProc]) -> list[NodeProc]:
    a = mesh("a")
    time.sleep(0.3)  # a starts first (it is to lead); the others may come up in any order
    b = mesh("b", [a])
    c = mesh("c", [b])  # c knows only b
    nodes = [a, b, c]
    wait_for(lambda: agreed(nodes, ["a", "b", "c"], "a"), 10, "one topology", nodes)
    return nodes


def test_three_nodes_seeded_in_a_chain_then_kill_9_of_the_leader(mesh: Callable[..., NodeProc]) -> None:
    a, b, c = start_chain(mesh)
    t = c.topology()
    assert t is not None and t["local"] == "c"
    assert [(i["name"], i["leader"], i["local"]) for i in t["instances"]] == [
        ("a", True, False), ("b", False, False), ("c", False, True)]
    assert t["instances"][0]["capacity"]["slots"] >= 1
    a.kill()  # kill -9: no goodbye
    took = wait_for(lambda: agreed([b, c], ["b", "c"], "b"), 5, "new leader", [b, c])
    assert took < 0.5 + 0.1 + 1.0  # timeout + interval, with slack for a busy machine
    time.sleep(0.6)
    assert agreed([b, c], ["b", "c"], "b")


def test_paused_node_is_dropped_then_rejoins_without_ghosts(mesh: Callable[..., NodeProc]) -> None:
    a, b, c = start_chain(mesh)
    b.signal(signal.SIGSTOP)
    wait_for(lambda: agreed([a, c], ["a", "c"], "a"), 5, "b dropped", [a, c])
    time.sleep(0.5)
    b.signal(signal.SIGCONT)
    wait_for(lambda: agreed([a, b, c], ["a", "c", "b"], "a"), 5, "b back at the end", [a, b, c])
    time.sleep(1.0)  # stable: no flapping, no duplicate, no ghost
    assert agreed([a, b, c], ["a", "c", "b"], "a")
    assert "rejoining the topology" in b.output()


def test_paused_leader_comes_back_behind_the_new_leader(mesh: Callable[..., NodeProc]) -> None:
    a, b, c = start_chain(mesh)
    a.signal(signal.SIGSTOP)
    wait_for(lambda: agreed([b, c], ["b", "c"], "b"), 5, "b leads", [b, c])
    a.signal(signal.SIGCONT)
    wait_for(lambda: agreed([a, b, c], ["b", "c", "a"], "b"), 5, "a back, not leading", [a, b, c])
    time.sleep(1.0)
    assert agreed([a, b, c], ["b", "c", "a"], "b")


def test_restart_with_the_same_name_replaces_the_old_incarnation(mesh: Callable[..., NodeProc]) -> None:
    a, b, c = start_chain(mesh)
    old_inc = next(i["incarnation"] for i in b.topology()["instances"] if i["name"] == "a")  # type: ignore[index]
    a.kill()
    a2 = NodeProc(a.tmp, "a", a.config, [b])
    a2.port, a2.http_port, a2.bind = a.port, a.http_port, a.bind  # same name, same endpoints
    a2.start()
    try:
        nodes = [a2, b, c]
        wait_for(lambda: agreed(nodes, ["b", "c", "a"], "b"), 8, "a behind b and c", nodes)
        for n in nodes:
            insts = n.topology()["instances"]  # type: ignore[index]
            assert [i["name"] for i in insts].count("a") == 1
            assert next(i["incarnation"] for i in insts if i["name"] == "a") > old_inc
    finally:
        a2.stop()


def test_keyless_node_is_refused_by_a_curve_cluster(mesh: Callable[..., NodeProc]) -> None:
    pub, sec = generate_keypair()
    secure = FAST + f'[security]\ncurve_server_public_key = "{pub}"\ncurve_server_secret_key = "{sec}"\n'
    a = mesh("a", config_text=secure)
    time.sleep(0.3)
    b = mesh("b", [a], config_text=secure)
    x = mesh("x", [a])  # no keys
    wait_for(lambda: agreed([a, b], ["a", "b"], "a"), 10, "secure pair", [a, b])
    wait_for(lambda: x.names() == ["x"] and x.topology()["current"], 10, "x alone", [x])  # type: ignore[index]
    time.sleep(0.5)
    assert agreed([a, b], ["a", "b"], "a")
    assert "join attempt failed" in x.output()


def test_garbage_on_the_router_and_pub_ports_changes_nothing(mesh: Callable[..., NodeProc]) -> None:
    a = mesh("a")
    time.sleep(0.3)
    b = mesh("b", [a])
    wait_for(lambda: agreed([a, b], ["a", "b"], "a"), 10, "pair", [a, b])
    import zmq

    ctx = zmq.Context()
    try:
        for port in (a.port, a.port + 1, b.port, b.port + 1):
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:  # not even ZMTP
                s.sendall(os.urandom(512))
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(a.bind)
        for frames in ([b"junk"], [b"jm1", b"join", b"\xc1"], [b"jm9", b"join", b"\x80"],
                       [b"jm1", b"join", b"\x81\xa4name\x07"], [os.urandom(64)] * 3):
            dealer.send_multipart(frames)
        sub = ctx.socket(zmq.SUB)  # and a listener on a's PUB: it can hear, but that harms nothing
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"tcp://127.0.0.1:{a.port + 1}")
        assert sub.poll(2000), "no heartbeat heard on a's PUB"
        frames = sub.recv_multipart()
        assert frames[0] == b"jm1" and frames[1] == b"heartbeat"
        dealer.close(0)
        sub.close(0)
    finally:
        ctx.destroy(0)
    time.sleep(1.0)
    assert agreed([a, b], ["a", "b"], "a")
    assert a.proc.poll() is None and b.proc.poll() is None  # type: ignore[union-attr]
