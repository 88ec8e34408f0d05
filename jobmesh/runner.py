"""``run_node``: a node in the foreground until SIGINT/SIGTERM (what ``jobmesh node`` runs).

The first signal drains gracefully (no new jobs start, running ones get
``config.shutdown_grace`` seconds, everything else stays QUEUED on disk); a second
signal skips the wait for running jobs. Either way, what still runs then goes back to
QUEUED as an interrupted run and the process exits without waiting for a sync
consumer's thread (see ``consumers.runner``).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import signal
import sys
from typing import Any

import structlog

from .config import NodeConfig
from .errors import DataDirInUse
from .node import Node

log = structlog.get_logger("jobmesh.runner")


GC_GEN0_THRESHOLD = 10_000  # allocations between first-generation collections (CPython's default: 700)


def tune_gc() -> None:
    """What ``jobmesh node`` does once its node is up (an embedding program may call it too).

    The objects alive then (modules, configuration, the node's actors) leave the cyclic
    collector's way (``gc.freeze``), and a first-generation collection waits for 10,000
    allocations instead of 700. A job allocates about ten short-lived objects, which reference
    counting frees anyway; with the defaults, a full collection walked the node's ~100,000 objects
    every few thousand jobs: 15 % of the time of a 100,000-job ``add_many`` (0.9 s of GC in 6 s,
    ``benchmarks/client.py``), about 2 % after.
    """
    gc.collect()  # start-up's garbage first: what is frozen is never collected
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    if 0 < gen0 < GC_GEN0_THRESHOLD:
        gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def load_consumer_modules(node: Node, modules: list[str]) -> int:
    """Import each module (cwd on the path) and register its consumers; returns how many."""
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    n = 0
    for name in modules:
        module = importlib.import_module(name)
        n += len(node.add_consumers_from(module))
    return n


async def run_node(config: NodeConfig, consumer_modules: list[str]) -> int:
    """Run until a signal; 0 on a clean stop, 1 if an actor escalated, 2 on bad consumers.

    ``DataDirInUse`` (another live node owns ``config.data``) is raised, not logged: it is
    a usage error the caller reports in one line, and nothing was started. So is the reason
    a part stopped the node with ``node.fail`` (``NameInUse``: its name is taken), after the stop.
    """
    node = Node(config=config)
    try:
        count = load_consumer_modules(node, consumer_modules)
    except Exception as exc:  # ImportError, a syntax error, a bad pattern: say which module
        log.error("could not load consumers", modules=consumer_modules, error=repr(exc))
        return 2
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals = 0

    def on_signal(signame: str) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("signal received; draining", signal=signame, node=config.name,
                     grace=config.shutdown_grace)
        else:
            log.warning("second signal; not waiting for running jobs", signal=signame, node=config.name)
            node.engine.hurry()
        stop_requested.set()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig.name)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread / platform
            pass
    try:
        await node.start()
        tune_gc()
        log.info("node ready", node=config.name, consumers=count, http=node.http_url)
        assert node.stopped is not None
        stopped_task = asyncio.ensure_future(node.stopped.wait())
        stop_task = asyncio.ensure_future(stop_requested.wait())
        await asyncio.wait({stopped_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        stopped_task.cancel()
        stop_task.cancel()
        if node.running:
            await node.stop(grace=config.shutdown_grace if signals < 2 else 0.0)
    except DataDirInUse:
        raise
    except Exception as exc:
        log.error("node failed", error=repr(exc), exc_info=exc)
        if node.running:
            await node.stop(grace=0.0)
        return 1
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    if node.fatal is not None:
        raise node.fatal  # e.g. NameInUse: the caller says it in one line
    return 1 if node.escalated is not None else 0


def main_for_tests(argv: list[str]) -> Any:  # pragma: no cover - convenience for subprocess tests
    """``python -m jobmesh.runner NAME DATA [MODULE ...]``: a socket-free node (tests, benchmarks)."""
    name, data, *mods = argv
    cfg = NodeConfig(name=name, data=data, bind=None, http=None)  # type: ignore[arg-type]
    return asyncio.run(run_node(cfg, mods))


if __name__ == "__main__":  # pragma: no cover
    from .log import configure_logging

    configure_logging("console")
    sys.exit(main_for_tests(sys.argv[1:]))
