"""What a consumer sees besides the job: progress reporting, a log, the stop flag, results.

Mirrors Sling's ``JobExecutionContext``. Sync consumers run in a thread and call
these too: each method is a few attribute updates, safe under the GIL.
"""

from __future__ import annotations

import re

from .. import clock as _clock
from typing import Any, Callable

from dataclasses import dataclass

from ..job import Job, JobResult, JobState, ResultKind, iso

MAX_LOG_LINES = 1000  # a job's progress log keeps its newest lines (bounded memory and rows)
MAX_LOG_LINE = 4000
TRACEBACK = "Traceback (most recent call last):"
# frames of the runtime itself, not of the consumer: they only hide the line that failed
_INTERNAL_FRAME = re.compile(
    r'^  File ".*(?:jobmesh/consumers/(?:runner|stepping|threads)\.py|concurrent/futures/thread\.py)", line \d+')
_FAILED = re.compile(r"^attempt (\d+) failed \((started [^)]*)\)")


def append_log(job: Job, line: str) -> None:
    """Add a line to the job's log; a traceback becomes a failure entry (see ``failure_entry``)."""
    if line.startswith(TRACEBACK):
        line = failure_entry(job, line)
    log = job.progress.log
    log.append(line[:MAX_LOG_LINE])
    if len(log) > MAX_LOG_LINES:
        del log[: len(log) - MAX_LOG_LINES]


def clean_traceback(text: str) -> str:
    """The traceback without the runtime's own frames (pool, sync threads): the consumer's frames stay."""
    out: list[str] = []
    dropping = False
    for line in text.splitlines():
        if line.startswith('  File "'):
            dropping = bool(_INTERNAL_FRAME.match(line))
        elif not line.startswith("    "):
            dropping = False
        if not dropping:
            out.append(line)
    return "\n".join(out) if any(l.startswith('  File "') for l in out) else text.rstrip("\n")


def failure_entry(job: Job, traceback_text: str) -> str:
    """``attempt N failed (started T; retry R/M at T2):`` and the cleaned traceback; when the
    previous failure had the very same traceback, one line that says so (eleven identical
    tracebacks help nobody). Written after the retry decision, so the header says what comes next."""
    tb = clean_traceback(traceback_text)
    head = f"attempt {job.attempt} failed (started {iso(job.started) or '-'}{_next(job)})"
    for previous in reversed(job.progress.log):
        m = _FAILED.match(previous)
        if m:
            body = previous[m.end():]
            if body.startswith(":\n") and body[2:] == tb:
                last = tb.splitlines()[-1] if tb else ""
                return f"{head}: {last} (same traceback as attempt {m.group(1)})"
            if body.startswith(":\n"):
                break
    return f"{head}:\n{tb}"


def _next(job: Job) -> str:
    retries = "forever" if job.max_retries < 0 else str(job.max_retries)
    if job.state is JobState.QUEUED:
        return f"; retry {job.retry_count}/{retries} at {iso(job.not_before) or 'once a slot is free'}"
    if job.state is JobState.GIVEN_UP:
        return f"; given up after {job.retry_count} retries"
    return ""


@dataclass(frozen=True)
class FailureEntry:
    """A failure entry of a job's log, read back (for the log line that reports it)."""

    attempt: int
    detail: str  # "started T; retry R/M at T2"
    traceback: str | None  # None when it repeated the previous attempt's
    error: str  # the traceback's last line

    @classmethod
    def parse(cls, line: str) -> "FailureEntry | None":
        m = _FAILED.match(line)
        if not m:
            return None
        rest = line[m.end():]
        if rest.startswith(":\n"):
            tb = rest[2:]
            return cls(int(m.group(1)), m.group(2), tb, tb.splitlines()[-1] if tb else "")
        return cls(int(m.group(1)), m.group(2), None, rest.lstrip(": "))


def failure_entries(job: Job, after_attempt: int) -> list[FailureEntry]:
    """The failure entries of ``job``'s log for attempts after ``after_attempt``, oldest first."""
    found = []
    for line in reversed(job.progress.log):
        e = FailureEntry.parse(line)
        if e is not None:
            if e.attempt <= after_attempt:
                break
            found.append(e)
    return found[::-1]


class ResultBuilder:
    """``ctx.result().message("...").succeeded()`` / ``.failed(retry_delay=5)`` / ``.cancelled()``.

    ``.output(key=value)`` (or ``.output({...})``) adds output properties to a success;
    they are stored with the job's result (``job.output``) and a workflow merges them
    into the next step's input.
    """

    __slots__ = ("_message", "_output")

    def __init__(self, output: dict[str, Any] | None = None) -> None:
        self._message: str | None = None
        self._output: dict[str, Any] | None = output

    def message(self, text: str) -> "ResultBuilder":
        self._message = str(text)
        return self

    def output(self, values: dict[str, Any] | None = None, **more: Any) -> "ResultBuilder":
        out = self._output if self._output is not None else {}
        if values:
            out.update(values)
        out.update(more)
        self._output = out
        return self

    def succeeded(self) -> JobResult:
        return JobResult(ResultKind.OK, self._message, output=self._output or None)

    def failed(self, retry_delay: float | None = None) -> JobResult:
        return JobResult(ResultKind.FAILED, self._message, retry_delay)

    def cancelled(self) -> JobResult:
        return JobResult(ResultKind.CANCEL, self._message)


class ExecutionContext:
    """Handed to consumers that take a second parameter (and to ``ConsumerActor.process``)."""

    __slots__ = ("job", "_stopped", "_clock", "_on_progress", "output", "_blobs")

    def __init__(self, job: Job, stopped: Callable[[], bool], clock: Callable[[], float] = _clock.wall,
                 on_progress: Callable[[Job], Any] | None = None, blobs: Any = None) -> None:
        self.job = job
        self._blobs = blobs  # the node's BlobStore (job payload)
        self._stopped = stopped
        self._clock = clock
        self._on_progress = on_progress
        # output properties of a successful run (``ctx.output["k"] = v``); stored as job.output
        self.output: dict[str, Any] = {}

    def _changed(self) -> None:
        if self._on_progress is not None:
            self._on_progress(self.job)

    def init_progress(self, steps: int, eta: float | None = None) -> None:
        """Announce ``steps`` steps; ``eta`` is seconds from now until the expected end."""
        p = self.job.progress
        p.steps = int(steps)
        p.step = 0
        p.eta = self._clock() + eta if eta is not None else None
        self._changed()

    def increment_progress(self, n: int = 1) -> None:
        p = self.job.progress
        p.step += int(n)
        if p.steps is not None and p.step > p.steps:
            p.step = p.steps
        self._changed()

    def update_progress(self, eta: float) -> None:
        """A new estimate: ``eta`` seconds from now."""
        self.job.progress.eta = self._clock() + eta
        self._changed()

    def log(self, fmt: str, *args: Any) -> None:
        """Add a line to the job's progress log (``%``-formatting, like logging)."""
        try:
            line = fmt % args if args else str(fmt)
        except (TypeError, ValueError):
            line = f"{fmt} {args!r}"
        append_log(self.job, line)
        self._changed()

    def is_stopped(self) -> bool:
        """True once the job was asked to stop (stop/remove, or the node shutting down)."""
        return self._stopped()

    def result(self) -> ResultBuilder:
        return ResultBuilder(dict(self.output) if self.output else None)

    # -- job payload (jobmesh.blobs) --------------------------------------------------------
    def payload(self, name: str) -> "Path":
        """The local, read-only file of the job's payload ``name`` (present before the run started)."""
        from pathlib import Path

        from ..errors import NotFound

        ref = self.job.payload.get(name)
        if ref is None or self._blobs is None:
            names = ", ".join(sorted(self.job.payload)) or "none"
            raise NotFound(f"job {self.job.id} has no payload named {name!r} (it has: {names})")
        path: Path = self._blobs.path(ref.id)
        return path

    def output_payload(self, name: str, value: Any) -> Any:
        """Attach output (``pathlib.Path`` or ``bytes``) that reaches the job's origin with its result.
        Returns the ``BlobRef``. The file or bytes are hashed and stored at once (a blocking copy:
        in an async consumer, large files cost loop time; a plain ``def`` consumer runs in a thread)."""
        from ..blobs.store import check_name
        from ..errors import ValidationError

        if self._blobs is None:
            raise ValidationError("this node has no blob store")
        check_name(name, "output payload name")
        ref = self._blobs.put(value)
        self._blobs.add_output(self.job.id, self.job.attempt, name, ref)
        self.job.output_payload = {**self.job.output_payload, name: ref}
        return ref
