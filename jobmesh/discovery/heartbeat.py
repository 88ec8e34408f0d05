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
from typing import Any

import structlog

from ..transport import Transport, ZMQError

log = structlog.get_logger("jobmesh.discovery.heartbeat")


class HeartbeatSender(threading.Thread):
    """Sends the current heartbeat every ``interval`` from its own PUB socket."""

    def __init__(self, transport: Transport, endpoint: str, interval: float, timeout: float, node: str) -> None:
        super().__init__(name=f"jobmesh-heartbeat-{node}", daemon=True)
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

        next_due = time.monotonic()
        while True:
            wait = max(0.0, next_due - time.monotonic())
            self._wake.wait(wait)
            self._wake.clear()
            now = time.monotonic()
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
