"""Heartbeats off the event loop: a sender that owns the PUB socket, a receiver that owns the SUB.

A consumer that blocks the event loop must not make its node look dead (DESIGN §3), so in
production both run in threads of their own: the discovery actor puts the latest encoded
heartbeat into a lock-protected slot, and the sender thread sends whatever is there every
interval (or at once, when asked). In the simulation (``transport.threads`` is False) the
same logic runs as tasks on the simulated loop, so that a seed replays exactly; what each
does per step lives in one place (``_SenderState``, ``_ReceiverState``) and only the driver
(thread or task) differs.

The sender also measures its own silence (the longest gap between two sends). A gap longer
than the timeout means the whole process was frozen (SIGSTOP, a suspended VM): the peers
have dropped us. It then holds back the stale payload until the actor has seen the gap
(``take_max_gap``) and published a fresh one, so a resumed node never re-announces its old
rank.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable

import structlog

from .. import clock as _clock
from .. import wire
from ..transport import TransportClosed
from ..wakeup import Wakeup

log = structlog.get_logger("jobmesh.discovery.heartbeat")


class _SenderState:
    """What to send now, and the silence measured so far (shared by the thread and the task)."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.lock = threading.Lock()
        self.frames: list[bytes] | None = None
        self.final: list[bytes] | None = None
        self.stop_requested = False
        self.last_sent: float | None = None
        self.max_gap = 0.0
        self.hold = False  # a long gap was seen: wait for a payload made after the actor knew
        self.gap_acknowledged = False

    def publish(self, frames: list[bytes]) -> None:
        with self.lock:
            self.frames = frames
            if self.gap_acknowledged:
                # the actor knows about the gap and this payload is newer: speak again,
                # and measure gaps afresh from the next send
                self.hold = False
                self.gap_acknowledged = False
                self.last_sent = None
                self.max_gap = 0.0

    def take_max_gap(self) -> float:
        with self.lock:
            gap, self.max_gap = self.max_gap, 0.0
            if self.hold:
                self.gap_acknowledged = True
            return gap

    def due(self, now: float) -> tuple[list[bytes] | None, bool]:
        """(frames to send now or None, stop?) at a wake-up."""
        with self.lock:
            if self.stop_requested:
                return None, True
            if self.last_sent is not None:
                gap = now - self.last_sent
                if gap > self.max_gap:
                    self.max_gap = gap
                if gap > self.timeout and not self.hold:
                    self.hold = True
                    self.gap_acknowledged = False
            frames = None if self.hold else self.frames
        # time passes even when nothing was sent, so the next gap is measured from here;
        # a held payload counts as silence (that is what peers experience)
        if frames is not None or self.last_sent is None:
            self.last_sent = now
        return frames, False


class HeartbeatSender:
    """Sends the current heartbeat every ``interval`` from its own PUB socket: a thread with
    ZeroMQ, a task in the simulation."""

    def __init__(
        self,
        transport: Any,
        endpoint: str,
        interval: float,
        timeout: float,
        node: str,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.transport = transport
        self.endpoint = endpoint
        self.interval = interval
        self.timeout = timeout
        self.threaded = bool(getattr(transport, "threads", True))
        # a thread keeps real time (it runs while the loop is blocked); a task the node's clock
        self.clock = clock or (time.monotonic if self.threaded else _clock.monotonic)
        self.log = log.bind(node=node)
        self._state = _SenderState(interval, timeout)
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: Any = None  # the task's socket (simulation)
        self._wake = threading.Event()
        self._awake: Wakeup | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._name = f"jobmesh-heartbeat-{node}"
        self.sent = 0

    # -- called from the event loop -------------------------------------------------
    def start_and_wait(self, timeout: float = 5.0) -> None:
        """Start; raise what binding the PUB socket raised (e.g. port in use)."""
        if not self.threaded:
            sock = self._sock = self.transport.pub(self.endpoint)  # BindError propagates
            self._awake = Wakeup()
            self._task = asyncio.get_running_loop().create_task(self._arun(sock), name=self._name)
            return
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"heartbeat thread did not start within {timeout}s")
        if self._error is not None:
            raise self._error

    def publish(self, frames: list[bytes], send_now: bool = False) -> None:
        """Replace the payload (encoded frames); ``send_now`` sends it out of cycle."""
        self._state.publish(frames)
        if send_now:
            self._poke()

    def take_max_gap(self) -> float:
        """The longest gap between two sends since the last call (seconds)."""
        return self._state.take_max_gap()

    def is_alive(self) -> bool:
        if self._thread is not None:
            return self._thread.is_alive()
        return self._task is not None and not self._task.done()

    def stop(self, final: list[bytes] | None = None, timeout: float = 2.0) -> None:
        """Send ``final`` (a leaving heartbeat) if given, close the socket, end."""
        with self._state.lock:
            self._state.final = final
            self._state.stop_requested = True
        self._poke()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)
        if self._task is not None and not self._task.done():
            # a task cannot be joined from a sync call: say goodbye from here, then end it
            if final is not None and self._sock is not None:
                try:
                    self._sock.send_nowait(final)
                except TransportClosed:
                    pass
            self._state.final = None
            self._task.cancel()

    def _poke(self) -> None:
        if self.threaded:
            self._wake.set()
        elif self._awake is not None:
            self._awake.set()

    # -- one beat: what the thread and the task share -----------------------------------
    def _wait_for(self, next_due: float) -> float:
        """How long to wait for the next beat (an interval at most; a poke ends it sooner)."""
        return min(self.interval, max(0.0, next_due - self.clock()))

    def _beat(self, sock: Any) -> float | None:
        """Send what is due now; the time the next beat is due, or None when asked to stop."""
        now = self.clock()
        frames, stop = self._state.due(now)
        if stop:
            return None
        if frames is not None and sock.send_nowait(frames):
            self.sent += 1
        return now + self.interval

    # -- the thread (ZeroMQ) -------------------------------------------------------------
    def _run(self) -> None:
        try:
            sock = self.transport.pub(self.endpoint)
        except BaseException as e:  # reported to start_and_wait
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            next_due: float | None = self.clock()
            while next_due is not None:
                self._wake.wait(self._wait_for(next_due))
                self._wake.clear()
                next_due = self._beat(sock)
            if self._state.final is not None:
                sock.send_nowait(self._state.final)
                time.sleep(0.05)  # let the I/O thread flush it before the socket closes
        except TransportClosed as e:  # the context was destroyed under us: the node is stopping
            self.log.debug("heartbeat thread ends", error=str(e))
        except Exception:
            self.log.exception("heartbeat thread failed")
        finally:
            try:
                sock.close()
            except Exception:  # pragma: no cover
                pass

    # -- the task (simulation) -----------------------------------------------------------
    async def _arun(self, sock: Any) -> None:
        assert self._awake is not None
        try:
            next_due: float | None = self.clock()
            while next_due is not None:
                await self._awake.wait(self._wait_for(next_due))
                next_due = self._beat(sock)
            if self._state.final is not None:
                sock.send_nowait(self._state.final)
        except TransportClosed:
            pass
        finally:
            sock.close()


class _ReceiverState:
    """Heartbeats collected since the actor last took them: the latest per sender, decoded."""

    max_senders = 10_000
    max_reasons = 32

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.lock = threading.Lock()
        self.commands: list[tuple[str, str]] = []
        self.latest: dict[str, tuple[float, dict[str, Any]]] = {}
        self.reasons: list[str] = []
        self.received = 0
        self.rejected = 0

    def reject(self, reason: str) -> None:
        with self.lock:
            self.rejected += 1
            if len(self.reasons) < self.max_reasons:
                self.reasons.append(reason)

    def take_commands(self) -> list[tuple[str, str]]:
        with self.lock:
            commands, self.commands = self.commands, []
        return commands

    def accept(self, frames: list[bytes], arrived: float) -> None:
        try:
            msg = wire.decode(frames, self.max_size)
        except wire.WireError as e:
            self.reject(f"{e.reason} (version {wire.peer_version(frames)!r})")
            return
        if msg.type != "heartbeat":
            self.reject(f"{msg.type!r} is not a heartbeat")
            return
        name = msg.body.get("name")
        if not isinstance(name, str):
            self.reject("heartbeat without a name")
            return
        with self.lock:
            self.received += 1
            if name in self.latest or len(self.latest) < self.max_senders:
                self.latest[name] = (arrived, msg.body)


class HeartbeatReceiver:
    """Receives heartbeats on a SUB socket of its own, off the event loop (a thread with
    ZeroMQ, a task in the simulation).

    Why a thread: liveness is then recorded when a heartbeat is read here, not when a
    busy loop gets round to it. Why in batches: it wakes every ``period`` (a fraction of
    the heartbeat interval) and drains the socket, so neither it nor the loop wakes once
    per heartbeat — idle cost stays flat in wake-ups as members grow (measured: the
    per-message wake-ups were most of an idle node's CPU). Each message is decoded here
    and only the latest heartbeat per sender is kept; ``take`` hands them to the actor
    with their read times (at most ``period`` late, small against the timeout).
    Rejected messages are counted and their reasons kept (bounded) for the actor to log.
    Connect/disconnect requests are queued and applied by the owner of the socket (a
    ZeroMQ socket belongs to one thread).
    """

    def __init__(self, transport: Any, node: str, period: float = 0.1) -> None:
        self.period = period
        self.transport = transport
        self.threaded = bool(getattr(transport, "threads", True))
        self.clock = time.monotonic if self.threaded else _clock.monotonic
        self.log = log.bind(node=node)
        self._state = _ReceiverState(transport.max_message_size)
        self._stop_requested = False
        self._wake = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._sock: Any = None  # on the loop (simulation): drained by take()
        self._name = f"jobmesh-heartbeat-rx-{node}"

    @property
    def received(self) -> int:
        return self._state.received

    def is_alive(self) -> bool:
        if self._thread is not None:
            return self._thread.is_alive()
        return self._sock is not None

    def start_and_wait(self, timeout: float = 5.0) -> None:
        if not self.threaded:
            # on the loop (the simulation) there is nothing to do off it: the socket is drained
            # when the actor takes what arrived, once per tick, as the thread would have
            self._sock = self.transport.sub()
            return
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"heartbeat receiver did not start within {timeout}s")
        if self._error is not None:
            raise self._error

    def connect(self, endpoint: str) -> None:
        with self._state.lock:
            self._state.commands.append(("connect", endpoint))

    def disconnect(self, endpoint: str) -> None:
        with self._state.lock:
            self._state.commands.append(("disconnect", endpoint))

    def take(self) -> tuple[list[tuple[float, dict[str, Any]]], list[str], int]:
        """(heartbeats by arrival time, rejection reasons, rejections since last call)."""
        st = self._state
        if self._sock is not None and not self._stop_requested:
            try:
                self._step(self._sock)
            except TransportClosed:
                self._sock = None
        with st.lock:
            latest, st.latest = st.latest, {}
            reasons, st.reasons = st.reasons, []
            rejected, st.rejected = st.rejected, 0
        return sorted(latest.values(), key=lambda x: x[0]), reasons, rejected

    def stop(self, timeout: float = 2.0) -> None:
        self._stop_requested = True
        self._wake.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _step(self, sock: Any) -> None:
        """Apply connects/disconnects, then drain what is there (bounded)."""
        for op, endpoint in self._state.take_commands():
            try:
                sock.connect(endpoint) if op == "connect" else sock.disconnect(endpoint)
            except ValueError as e:
                self.log.warning("cannot connect to a member's heartbeats", endpoint=endpoint, error=str(e))
        for _ in range(10_000):
            frames = sock.recv_nowait()
            if frames is None:
                break
            self._state.accept(frames, self.clock())

    def _run(self) -> None:
        try:
            sock = self.transport.sub()
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
                self._step(sock)
        except TransportClosed as e:  # the context was destroyed: the node is stopping
            self.log.debug("heartbeat receiver ends", error=str(e))
        except Exception:
            self.log.exception("heartbeat receiver failed")
        finally:
            try:
                sock.close()
            except Exception:  # pragma: no cover
                pass

