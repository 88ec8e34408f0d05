"""Shared fixtures, kept small: embedded engine nodes (no sockets) on tmp data dirs."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # lets tests `from helpers import ...`

import jobmesh  # noqa: E402

DEFAULT_PORTS = (5701, 5702, 8471)  # jobmesh node's defaults: --bind, its heartbeats, --http


@pytest.fixture(scope="session", autouse=True)
def default_ports_are_off_limits() -> Any:
    """Tests never use the default ports: a developer's own node may hold them (the suite then
    failed with 13 'Address already in use'). The suite holds them itself while it runs, so a test
    that binds one fails here and in CI alike, not only on a machine where a node runs."""
    held = []
    for port in DEFAULT_PORTS:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            s.listen(1)
            held.append(s)
        except OSError:  # taken already (a node, another suite): just as off limits
            s.close()
    yield
    for s in held:
        s.close()


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


CI_SEEDS_TEST = "tests/test_sim.py::test_ci_seeds"


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """The simulator's CI seed set runs last: it collects the background run started below."""
    ci = [item for item in items if item.nodeid.endswith(CI_SEEDS_TEST)]
    if ci:
        items[:] = [item for item in items if item not in ci] + ci


def pytest_collection_finish(session: Any) -> None:
    """With the seed set selected (after -k/-m), it starts now, in the background at the lowest CPU
    priority (see tests/background.py): ~130 s of the suite's CPU beside the real-process tests,
    which mostly wait."""
    import background

    if session.config.option.collectonly or not background.enabled():
        return
    if any(item.nodeid.endswith(CI_SEEDS_TEST) for item in session.items):
        from test_sim import ci_seeds

        background.start("ci-seeds", background.sim_argv(ci_seeds()), niced=True)


def pytest_sessionfinish(session: Any, exitstatus: Any) -> None:
    import background

    background.stop_all()
