"""run_node, consumer module loading, and the demo (as the CLI runs them)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jobmesh
from jobmesh.consumers.registry import consumers_in_module
from jobmesh.runner import run_node

from helpers import REPO

MODULE = textwrap.dedent(
    """
    import jobmesh
    from jobmesh.demo import fast as imported_elsewhere   # defined in another module: not registered

    @jobmesh.consumer("mod/a")
    async def a(job):
        return None

    @jobmesh.consumer("mod/b/*", "mod/c")
    def b(job, ctx):
        return None

    class Actorish(jobmesh.ConsumerActor):
        topics = ["mod/actor/**"]
        async def process(self, job, ctx):
            return None

    class NoTopics(jobmesh.ConsumerActor):   # abstract base: no topics, not registered
        pass

    def helper():                          # not a consumer
        return 1
    """
)


def test_consumers_in_module_finds_what_the_module_defines(tmp_path, monkeypatch):
    (tmp_path / "mod_consumers.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    found = consumers_in_module("mod_consumers")
    names = sorted(getattr(c, "__name__", "") for c in found)
    assert names == ["Actorish", "a", "b"]


async def test_node_registers_module_consumers_and_runs_them(tmp_path, monkeypatch):
    (tmp_path / "mod_consumers2.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    mod = importlib.import_module("mod_consumers2")
    async with jobmesh.Node(name="m", data_dir=tmp_path / "m") as node:
        node.add_consumers_from(mod)
        assert set(node.consumer_topics()) == {"mod/a", "mod/b/*", "mod/c", "mod/actor/**"}
        jobs = await node.jobs.add_many([("mod/a", None), ("mod/b/x", None), ("mod/c", None), ("mod/actor/x/y", None)])
        for j in jobs:
            assert (await node.jobs.wait(j.id, timeout=5)).state is jobmesh.JobState.SUCCEEDED


async def test_run_node_refuses_a_missing_consumer_module(tmp_path):
    cfg = jobmesh.NodeConfig(name="x", data=str(tmp_path / "x"), bind=None, http=None)  # type: ignore[arg-type]
    assert await run_node(cfg, ["no_such_module_here"]) == 2


def test_demo_ends_by_itself_with_a_summary():
    out = subprocess.run([sys.executable, "-m", "jobmesh", "demo", "--seconds", "1.5", "--plain"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "summary" in out.stdout and "SUCCEEDED" in out.stdout
    assert "jobs/s" in out.stdout.splitlines()[0]


def test_tune_gc_freezes_what_is_alive_and_collects_less_often() -> None:
    import gc

    from jobmesh.runner import GC_GEN0_THRESHOLD, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] >= GC_GEN0_THRESHOLD and gc.get_threshold()[1:] == before[1:]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
