"""The heartbeat threads over real sockets: sending, silence detection and hold, batched receiving."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any, Callable, Iterator

import zmq
from helpers import free_port, wait_until

from jobmesh import wire
from jobmesh.discovery.heartbeat import HeartbeatReceiver, HeartbeatSender
from jobmesh.transport import BindError, Transport


def free_endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


def wait(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    wait_until(cond, timeout, interval=0.01)


def hb(name: str, n: int = 0) -> list[bytes]:
    return wire.encode("heartbeat", {"name": name, "incarnation": 1.0, "n": n})


class JumpClock:
    """A monotonic clock that can be pushed forward (a process frozen by SIGSTOP, seen from inside)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return time.monotonic() + self.offset

    def jump(self, seconds: float) -> None:
        with self.lock:
            self.offset += seconds


@contextlib.contextmanager
def sender_with_subscriber(clock: Callable[[], float] = time.monotonic,
                           final: list[bytes] | None = None) -> Iterator[tuple[HeartbeatSender, Any]]:
    """A started sender "a" on a free endpoint and a SUB socket on it that the first heartbeat
    (n=1) has reached; both closed on exit, the sender stopped with ``final``."""
    t = Transport("a")
    endpoint = free_endpoint()
    sender = HeartbeatSender(t, endpoint, interval=0.05, timeout=0.5, node="a", clock=clock)
    sub = t.sync_ctx.socket(zmq.SUB)
    try:
        sender.start_and_wait()
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(endpoint)
        sender.publish(hb("a", 1))
        assert sub.poll(2000)
        yield sender, sub
    finally:
        sender.stop(final=final)
        sub.close(0)
        t.close()


def test_sender_publishes_the_latest_payload_and_sends_at_once_when_asked() -> None:
    with sender_with_subscriber(final=hb("a", 99)) as (sender, sub):
        assert wire.decode(sub.recv_multipart()).body["n"] == 1
        sender.publish(hb("a", 2), send_now=True)
        wait(lambda: sub.poll(10) and wire.decode(sub.recv_multipart()).body["n"] == 2)
        assert sender.take_max_gap() < 0.5
    assert not sender.is_alive()


def test_sender_reports_a_bind_error() -> None:
    t = Transport("a")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    sender = HeartbeatSender(t, f"tcp://127.0.0.1:{port}", interval=0.05, timeout=0.5, node="a")
    try:
        try:
            sender.start_and_wait()
        except BindError as e:
            assert "cannot bind the heartbeat endpoint" in str(e) and "in use" in str(e)
        else:
            raise AssertionError("binding a busy port should fail")
    finally:
        busy.close()
        t.close()


def test_after_a_long_silence_the_stale_payload_is_held_until_the_actor_publishes_anew() -> None:
    clock = JumpClock()
    with sender_with_subscriber(clock=clock) as (sender, sub):
        clock.jump(5.0)  # as if the process had been stopped for 5 s
        time.sleep(0.2)
        while sub.poll(0):  # whatever went out before the jump was noticed
            sub.recv_multipart()
        time.sleep(0.2)
        assert not sub.poll(100), "the stale payload must not be sent after a long gap"
        sender.publish(hb("a", 2))  # made before the actor saw the gap: still held
        assert not sub.poll(200)
        gap = sender.take_max_gap()
        assert gap > 4.0
        sender.publish(hb("a", 3))  # made after: released
        assert sub.poll(2000)
        assert wire.decode(sub.recv_multipart()).body["n"] == 3
        time.sleep(0.2)
        assert sender.take_max_gap() < 0.5  # measured afresh from the first send after the hold


def test_receiver_keeps_the_latest_per_sender_and_reports_garbage() -> None:
    t = Transport("rx")
    endpoint = free_endpoint()
    pub = t.sync_ctx.socket(zmq.PUB)
    pub.bind(endpoint)
    rx = HeartbeatReceiver(t, "rx", period=0.05)
    try:
        rx.start_and_wait()
        rx.connect(endpoint)
        # slow joiner: keep sending until the subscription is through
        wait(lambda: (pub.send_multipart(hb("p", 0)) or True) and rx.received > 0)
        rx.take()
        for n in range(1, 6):
            pub.send_multipart(hb("p", n))
        pub.send_multipart(hb("q", 7))
        pub.send_multipart([b"jm1", b"heartbeat", b"\xc1"])
        pub.send_multipart([b"jm2", b"heartbeat", b"\x80"])
        pub.send_multipart(wire.encode("join", {"name": "p"}))
        pub.send_multipart(wire.encode("heartbeat", {"no": "name"}))
        got: list = []
        reasons: list[str] = []
        rejected = 0

        def collect() -> bool:
            nonlocal rejected
            batch, rs, rj = rx.take()
            got.extend(batch)
            reasons.extend(rs)
            rejected += rj
            return rejected >= 4 and any(b["name"] == "q" for _, b in got)

        wait(collect)
        latest_p = [b["n"] for _, b in got if b["name"] == "p"]
        assert latest_p[-1] == 5 and len(latest_p) <= 5  # coalesced per sender
        arrivals = [a for a, _ in got]
        assert arrivals == sorted(arrivals)
        assert any("malformed msgpack" in r for r in reasons)
        assert any("protocol version" in r for r in reasons)
        assert any("not a heartbeat" in r for r in reasons)
        assert any("without a name" in r for r in reasons)
        rx.disconnect(endpoint)
        time.sleep(0.2)
        rx.take()
        pub.send_multipart(hb("p", 9))
        time.sleep(0.3)
        assert rx.take()[0] == []
    finally:
        rx.stop()
        pub.close(0)
        t.close()
    assert not rx.is_alive()
