"""The heartbeat sender: a thread of its own that owns the PUB socket (DESIGN §3).

A consumer that blocks the event loop must not make its node look dead, so the
heartbeats do not depend on the loop: the discovery actor puts the latest encoded
heartbeat into a lock-protected slot, and this thread sends whatever is there every
interval (or at once, when asked).

The thread also measures its own silence (the longest gap between two sends). A gap
longer than the timeout means the whole process was frozen (SIGSTOP, a suspended
VM): the peers have dropped us. The thread then holds back the stale payload until the
actor has seen the gap (``take_max_gap``) and published a fresh one, so a resumed
node never re-announces its old rank.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import structlog

from ..transport import Transport, ZMQError

log = structlog.get_logger("jobmesh.discovery.heartbeat")


class HeartbeatSender(threading.Thread):
    """Sends the current heartbeat every ``interval`` from its own PUB socket."""

    def __init__(
        self,
        transport: Transport,
        endpoint: str,
        interval: float,
        timeout: float,
        node: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name=f"jobmesh-heartbeat-{node}", daemon=True)
        self.clock = clock
        self.transport = transport
        self.endpoint = endpoint
        self.interval = interval
        self.timeout = timeout
        self.log = log.bind(node=node)
        self._lock = threading.Lock()
        self._frames: list[bytes] | None = None
        self._final: list[bytes] | None = None
        self._wake = threading.Event()
        self._stop_requested = False
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._last_sent: float | None = None
        self._max_gap = 0.0
        self._hold = False  # a long gap was seen: wait for a payload made after the actor knew
        self._gap_acknowledged = False
        self.sent = 0

    # -- called from the event loop -------------------------------------------------
    def start_and_wait(self, timeout: float = 5.0) -> None:
        """Start the thread; raise what binding the PUB socket raised (e.g. port in use)."""
        self.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"heartbeat thread did not start within {timeout}s")
        if self._error is not None:
            raise self._error

    def publish(self, frames: list[bytes], send_now: bool = False) -> None:
        """Replace the payload (encoded frames); ``send_now`` sends it out of cycle."""
        with self._lock:
            self._frames = frames
            if self._gap_acknowledged:
                # the actor knows about the gap and this payload is newer: speak again,
                # and measure gaps afresh from the next send
                self._hold = False
                self._gap_acknowledged = False
                self._last_sent = None
                self._max_gap = 0.0
        if send_now:
            self._wake.set()

    def take_max_gap(self) -> float:
        """The longest gap between two sends since the last call (seconds)."""
        with self._lock:
            gap, self._max_gap = self._max_gap, 0.0
            if self._hold:
                self._gap_acknowledged = True
            return gap

    def stop(self, final: list[bytes] | None = None, timeout: float = 2.0) -> None:
        """Send ``final`` (a leaving heartbeat) if given, close the socket, end the thread."""
        with self._lock:
            self._final = final
            self._stop_requested = True
        self._wake.set()
        if self.is_alive():
            self.join(timeout)

    # -- the thread ---------------------------------------------------------------
    def run(self) -> None:
        try:
            sock = self.transport.pub_socket(self.endpoint)
        except BaseException as e:  # reported to start_and_wait
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop(sock)
        except ZMQError as e:  # the context was destroyed under us: the node is stopping
            self.log.debug("heartbeat thread ends", error=str(e))
        except Exception:
            self.log.exception("heartbeat thread failed")
        finally:
            try:
                sock.close(0)
            except Exception:  # pragma: no cover
                pass

    def _loop(self, sock: Any) -> None:
        import zmq  # only to name the NOBLOCK flag; the socket came from the transport

        next_due = self.clock()
        while True:
            wait = min(self.interval, max(0.0, next_due - self.clock()))
            self._wake.wait(wait)
            self._wake.clear()
            now = self.clock()
            with self._lock:
                if self._stop_requested:
                    final = self._final
                    break
                if self._last_sent is not None:
                    gap = now - self._last_sent
                    if gap > self._max_gap:
                        self._max_gap = gap
                    if gap > self.timeout and not self._hold:
                        self._hold = True
                        self._gap_acknowledged = False
                frames = None if self._hold else self._frames
            if frames is not None:
                try:
                    sock.send_multipart(frames, flags=zmq.NOBLOCK)
                    self.sent += 1
                except zmq.Again:
                    pass  # PUB drops at the high-water mark; the next heartbeat replaces it
            # time passes even when nothing was sent, so the next gap is measured from here;
            # a held payload counts as silence (that is what peers experience)
            if frames is not None or self._last_sent is None:
                self._last_sent = now
            next_due = now + self.interval
        if final is not None:
            try:
                sock.send_multipart(final, flags=zmq.NOBLOCK)
                time.sleep(0.05)  # let the I/O thread flush it before the socket closes
            except zmq.ZMQError:
                pass


class HeartbeatReceiver(threading.Thread):
    """Receives heartbeats on a SUB socket of its own, off the event loop.

    Why a thread: liveness is then recorded when a heartbeat is read here, not when a
    busy loop gets round to it. Why in batches: the thread wakes every ``period``
    (a fraction of the heartbeat interval) and drains the socket, so neither it nor
    the loop wakes once per heartbeat — idle cost stays flat in wake-ups as members
    grow (measured: the per-message wake-ups were most of an idle node's CPU).
    The thread decodes each message (``wire.decode``) and keeps only the latest
    heartbeat per sender; ``take`` hands them to the actor with their read times
    (at most ``period`` late, small against the timeout).
    Rejected messages are counted and their reasons kept (bounded) for the actor to log.
    Connect/disconnect requests are queued and applied by the thread (a ZeroMQ socket
    belongs to one thread).
    """

    max_senders = 10_000
    max_reasons = 32

    def __init__(self, transport: Transport, node: str, period: float = 0.1) -> None:
        super().__init__(name=f"jobmesh-heartbeat-rx-{node}", daemon=True)
        self.period = period
        self._wake = threading.Event()
        self.transport = transport
        self.log = log.bind(node=node)
        self._lock = threading.Lock()
        self._commands: list[tuple[str, str]] = []
        self._latest: dict[str, tuple[float, dict[str, Any]]] = {}
        self._reasons: list[str] = []
        self._stop_requested = False
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.received = 0
        self.rejected = 0

    def start_and_wait(self, timeout: float = 5.0) -> None:
        self.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"heartbeat receiver did not start within {timeout}s")
        if self._error is not None:
            raise self._error

    def connect(self, endpoint: str) -> None:
        with self._lock:
            self._commands.append(("connect", endpoint))

    def disconnect(self, endpoint: str) -> None:
        with self._lock:
            self._commands.append(("disconnect", endpoint))

    def take(self) -> tuple[list[tuple[float, dict[str, Any]]], list[str], int]:
        """(heartbeats by arrival time, rejection reasons, rejections since last call)."""
        with self._lock:
            latest, self._latest = self._latest, {}
            reasons, self._reasons = self._reasons, []
            rejected, self.rejected = self.rejected, 0
        return sorted(latest.values(), key=lambda x: x[0]), reasons, rejected

    def stop(self, timeout: float = 2.0) -> None:
        self._stop_requested = True
        self._wake.set()
        if self.is_alive():
            self.join(timeout)

    def _reject(self, reason: str) -> None:
        with self._lock:
            self.rejected += 1
            if len(self._reasons) < self.max_reasons:
                self._reasons.append(reason)

    def run(self) -> None:
        import zmq

        from .. import wire

        try:
            sock = self.transport.sub_socket_sync()
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop_requested:
                self._wake.wait(self.period)
                if self._stop_requested:
                    break
                with self._lock:
                    commands, self._commands = self._commands, []
                for op, endpoint in commands:
                    try:
                        sock.connect(endpoint) if op == "connect" else sock.disconnect(endpoint)
                    except zmq.ZMQError as e:
                        if op == "connect":
                            self.log.warning("cannot connect to a member's heartbeats", endpoint=endpoint,
                                             error=str(e))
                for _ in range(10_000):  # drain what is there, bounded
                    try:
                        frames = sock.recv_multipart(flags=zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    arrived = time.monotonic()
                    try:
                        msg = wire.decode(frames, self.transport.max_message_size)
                    except wire.WireError as e:
                        self._reject(f"{e.reason} (version {wire.peer_version(frames)!r})")
                        continue
                    if msg.type != "heartbeat":
                        self._reject(f"{msg.type!r} is not a heartbeat")
                        continue
                    name = msg.body.get("name")
                    if not isinstance(name, str):
                        self._reject("heartbeat without a name")
                        continue
                    with self._lock:
                        self.received += 1
                        if name in self._latest or len(self._latest) < self.max_senders:
                            self._latest[name] = (arrived, msg.body)
        except zmq.ZMQError as e:  # the context was destroyed: the node is stopping
            self.log.debug("heartbeat receiver ends", error=str(e))
        except Exception:
            self.log.exception("heartbeat receiver failed")
        finally:
            try:
                sock.close(0)
            except Exception:  # pragma: no cover
                pass
