"""The loop watchdog: a thread that notices the event loop stop answering and names the culprit.

An ``async def`` consumer that blocks (``time.sleep``, CPU-bound work) freezes every other job,
the HTTP API and the actors of its node. Discovery keeps the node alive (heartbeats have a
thread of their own) and logs the lag afterwards; this thread says it *while* it happens, and
which job, topic and line hold the loop, read from the loop thread's stack: the frames below the
runner's ``_execute`` (its short path: ``_worker``, ``_resumed``) are the consumer's. One line per block, with the fix.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import types
from typing import Any, Callable

HINT = ("an async consumer must not block the event loop: await asyncio.sleep() or async I/O, "
        "or make it a plain `def` (it then runs in a thread)")
_RUNNER_FILE = os.path.join("consumers", "runner.py")
_STEPPING_FILE = os.path.join("consumers", "stepping.py")
# the runner's frames that run a consumer, first step to end (its short path runs one from the
# slot worker itself, and a consumer of it that waits goes on in ``_resumed``)
_RUN_FRAMES = ("_execute", "_resumed", "_worker")


def blocking_frame_info(frame: types.FrameType | None) -> dict[str, Any]:
    """From the loop thread's innermost frame: ``at`` (file:line of the innermost Python frame),
    and, when a consumer runs it, ``job_id``, ``topic`` and ``consumer``. Pure reading."""
    frames: list[types.FrameType] = []  # innermost first
    f = frame
    while f is not None:
        frames.append(f)
        f = f.f_back
    info: dict[str, Any] = {}
    if frames:
        inner = frames[0]
        info["at"] = f"{inner.f_code.co_filename.rsplit('/', 1)[-1]}:{inner.f_lineno} in {inner.f_code.co_name}"
    for i, f in enumerate(frames):
        if f.f_code.co_name in _RUN_FRAMES and f.f_code.co_filename.endswith(_RUNNER_FILE):
            try:
                local = f.f_locals
                job = local.get("job") or getattr(local.get("run"), "job", None)
            except Exception:  # a frame's locals are a best-effort read from another thread
                job = None
            if job is not None:
                info["job_id"] = getattr(job, "id", None)
                info["topic"] = getattr(job, "topic", None)
            for callee in reversed(frames[:i]):  # outermost first: the consumer's own entry frame
                name = callee.f_code.co_filename
                if not name.endswith(_RUNNER_FILE) and not name.endswith(_STEPPING_FILE):
                    info["consumer"] = getattr(callee.f_code, "co_qualname", callee.f_code.co_name)
                    break
            break
    return info


class LoopWatchdog:
    """``start(loop)`` / ``stop()``. The loop stamps a heartbeat every ``interval``; the thread
    logs a warning when no stamp came for ``threshold`` seconds (once per block)."""

    def __init__(self, log: Any, threshold: float = 1.0, interval: float = 0.2,
                 describe: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        self.log = log
        self.threshold = threshold
        self.interval = interval
        self.describe = describe  # fallback when the stack names no job: the jobs running on the loop
        self.blocks = 0  # how many blocks were reported (read by tests and metrics)
        self._beat = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop.clear()
        self._stamp()
        self._thread = threading.Thread(target=self._run, name="jobmesh-loop-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self._thread = None

    def _stamp(self) -> None:
        self._beat = time.monotonic()
        if not self._stop.is_set() and self._loop is not None:
            self._handle = self._loop.call_later(self.interval, self._stamp)

    def _run(self) -> None:
        reported = False
        while not self._stop.wait(self.interval):
            silent = time.monotonic() - self._beat
            if silent < self.threshold:
                reported = False
                continue
            if reported:
                continue
            reported = True
            self.blocks += 1
            try:
                self._report(silent)
            except Exception:  # the watchdog must never take anything down
                pass

    def _report(self, silent: float) -> None:
        frame = sys._current_frames().get(self._loop_thread) if self._loop_thread is not None else None
        info = blocking_frame_info(frame)
        if "job_id" not in info and self.describe is not None:
            running = [j for j in self.describe() if j.get("async")]
            if running:
                info["running"] = ", ".join(f"{j['job_id']} ({j['topic']})" for j in running[:3]) + (
                    f" and {len(running) - 3} more" if len(running) > 3 else "")
        if "job_id" in info or "running" in info:
            self.log.warning("event loop blocked by a consumer", blocked_for=f"{silent:.1f}s", hint=HINT, **info)
        else:  # start-up imports, a host program's own code: discovery's lag line covers these
            self.log.debug("event loop blocked", blocked_for=f"{silent:.1f}s", **info)
