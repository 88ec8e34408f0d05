"""Shared fixtures, kept small: embedded engine nodes (no sockets) on tmp data dirs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # lets tests `from helpers import ...`

import jobmesh  # noqa: E402


@pytest.fixture
async def node_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``node = await node_factory(consumers=[...], queues=[...], **Node options)``.

    Started on ``tmp_path/<name>``; every node made is stopped when the test ends.
    """
    made: list[Any] = []

    async def factory(consumers: Any = (), name: str = "n1", data: Path | None = None, **options: Any) -> Any:
        node = jobmesh.Node(name=name, data_dir=data or tmp_path / name, **options)
        for c in consumers:
            node.add_consumer(c)
        await node.start()
        made.append(node)
        return node

    yield factory
    for node in reversed(made):
        if node.running:
            await node.stop(grace=1.0)
