"""Long CPU-bound checks that run in the background while the rest of the suite runs.

The simulator's CI seed set (``test_sim.py::test_ci_seeds``) is about 130 s of pure CPU on two
cores, and the real-process tests spend most of their time waiting on heartbeats and timeouts
with a core to spare. So the conftest starts the seed set right after collection, at the lowest
CPU priority (``nice 19``: the tests' own nodes always come first), and ``test_ci_seeds`` —
moved to the end of the run — only collects its result. ``JOBMESH_SIM_BACKGROUND=0`` runs it in
the foreground instead, as before.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Sequence

REPO = Path(__file__).resolve().parent.parent


def enabled() -> bool:
    return os.environ.get("JOBMESH_SIM_BACKGROUND", "1") != "0"


def _lowest_priority() -> None:  # pragma: no cover - runs in the child
    try:
        os.nice(19)
    except OSError:
        pass


class BackgroundRun:
    """One command started now, its output kept in a temporary file until ``result``."""

    def __init__(self, argv: Sequence[str], niced: bool = True) -> None:
        self.argv = list(argv)
        self._out: IO[bytes] = tempfile.TemporaryFile()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.argv, cwd=REPO, stdout=self._out, stderr=subprocess.STDOUT,
                                     preexec_fn=_lowest_priority if niced else None)

    def result(self, timeout: float) -> tuple[int, str]:
        """(exit code, output); the process is killed when it outlives ``timeout`` from now."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        self._out.seek(0)
        return code, self._out.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


_RUNS: dict[str, BackgroundRun] = {}


def start(name: str, argv: Sequence[str], niced: bool = True) -> BackgroundRun:
    """The run called ``name``, started on first use."""
    run = _RUNS.get(name)
    if run is None:
        run = _RUNS[name] = BackgroundRun(argv, niced)
    return run


def stop_all() -> None:
    for run in _RUNS.values():
        run.stop()


def sim_argv(seeds: str) -> list[str]:
    return [sys.executable, "-m", "jobmesh.sim", "--seeds", seeds, "--jobs", "2"]
