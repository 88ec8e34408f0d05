"""What a consumer sees besides the job: progress reporting, a log, the stop flag, results.

Mirrors Sling's ``JobExecutionContext``. Sync consumers run in a thread and call
these too: each method is a few attribute updates, safe under the GIL.
"""

from __future__ import annotations

from .. import clock as _clock
from typing import Any, Callable

from ..job import Job, JobResult, ResultKind

MAX_LOG_LINES = 1000  # a job's progress log keeps its newest lines (bounded memory and rows)
MAX_LOG_LINE = 4000


def append_log(job: Job, line: str) -> None:
    log = job.progress.log
    log.append(line[:MAX_LOG_LINE])
    if len(log) > MAX_LOG_LINES:
        del log[: len(log) - MAX_LOG_LINES]


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

    __slots__ = ("job", "_stopped", "_clock", "_on_progress", "output")

    def __init__(self, job: Job, stopped: Callable[[], bool], clock: Callable[[], float] = _clock.wall,
                 on_progress: Callable[[Job], Any] | None = None) -> None:
        self.job = job
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
