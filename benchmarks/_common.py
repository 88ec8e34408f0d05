"""What the single-node benchmarks share: a fresh node data folder per run, quiet logs, the load figure.

Scripts here run as ``python benchmarks/NAME.py``: this folder is on ``sys.path`` then,
and this module puts the repository on it too, so ``jobmesh`` imports without installing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobmesh.log import configure_logging  # noqa: E402


def quiet_logs() -> None:
    """Only warnings: a benchmark prints one JSON object, not the node's log."""
    configure_logging("console", "WARNING")


def run_on_fresh_node(run: Callable[[argparse.Namespace, Path], Awaitable[dict[str, Any]]],
                      args: argparse.Namespace) -> dict[str, Any]:
    """``run(args, data_dir)`` in its own event loop on an empty data folder, deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="jobmesh-bench-") as d:
        return asyncio.run(run(args, Path(d) / "node"))


def load_average() -> float:
    """The 1-minute load average, reported with each figure: the machine is shared, numbers vary with it."""
    return round(os.getloadavg()[0], 2)
