"""Day one (issue 13), embedded side: failures are visible, mistakes are caught when declared,
a blocked loop is named, an embedded node leaves stdout and its host's logging alone."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

import jobmesh
from jobmesh.consumers.context import clean_traceback
from jobmesh.consumers.registry import check_new_consumer, spec_of
from jobmesh.errors import ValidationError
from jobmesh.log import ensure_logging
from helpers import REPO, free_port_pair, wait_until_async


@jobmesh.consumer("day1/fail")
async def always_fails(job: jobmesh.Job) -> None:
    raise KeyError("missing")


@jobmesh.consumer("day1/block")
async def blocks_the_loop(job: jobmesh.Job) -> None:
    time.sleep(1.4)  # the mistake: a blocking call in an async def


@pytest.fixture
def logs() -> Any:
    """Every log event, as dicts. Logging is configured first (as a Node would), so that the
    capture reaches loggers bound before and after it alike."""
    ensure_logging()
    with capture_logs() as entries:
        yield entries


async def test_a_failure_is_a_warning_with_attempt_and_traceback(node_factory: Any, logs: list[dict[str, Any]]) -> None:
    node = await node_factory([always_fails])
    job = await node.jobs.add("day1/fail", {"retry_delay": 0})
    done = await node.jobs.wait(job.id, timeout=10)
    assert done.state is jobmesh.JobState.GIVEN_UP
    failed = [e for e in logs if e["event"] == "job failed; retrying" and e["log_level"] == "warning"]
    assert [e["attempt"] for e in failed] == list(range(1, 11))
    first = failed[0]
    assert first["log_level"] == "warning" and first["job_id"] == job.id and first["topic"] == "day1/fail"
    assert "retry 1/10" in first["detail"] and "KeyError" in first["error"]
    assert "raise KeyError" in first["exception"] and "pool.py" not in first["exception"]
    assert "exception" not in failed[1] and "same traceback as attempt 1" in failed[1]["error"]
    # the job's own log: one entry per attempt, numbered, the runtime's frames left out
    entries = [line for line in done.progress.log if line.startswith("attempt ")]
    assert len(entries) == 11 and entries[0].startswith("attempt 1 failed (started ")
    assert "Traceback" in entries[0] and "runner.py" not in entries[0] and "stepping.py" not in entries[0]
    assert entries[1].endswith("(same traceback as attempt 1)") and "given up after 10 retries" in entries[-1]


def test_clean_traceback_keeps_only_the_consumers_frames() -> None:
    tb = textwrap.dedent('''\
        Traceback (most recent call last):
          File "/x/jobmesh/consumers/stepping.py", line 52, in first_step
            yielded = cvars.run(coro.send, None)
                      ^^^^^^^^^^^^^^^^^^^^^^^^^^
          File "/w/my_consumers.py", line 5, in sleep
            await asyncio.sleep(1)
                  ^^^^^^^
        NameError: name 'asyncio' is not defined''')
    assert clean_traceback(tb).splitlines() == [
        "Traceback (most recent call last):", '  File "/w/my_consumers.py", line 5, in sleep',
        "    await asyncio.sleep(1)", "          ^^^^^^^", "NameError: name 'asyncio' is not defined"]


async def test_a_blocked_loop_names_the_job_and_says_how_to_fix_it(node_factory: Any, logs: list[dict[str, Any]]) -> None:
    node = await node_factory([blocks_the_loop])
    job = await node.jobs.add("day1/block", {})
    await node.jobs.wait(job.id, timeout=10)
    blocked = [e for e in logs if e["event"] == "event loop blocked by a consumer"]
    assert len(blocked) == 1, logs
    e = blocked[0]
    assert e["job_id"] == job.id and e["topic"] == "day1/block" and e["consumer"] == "blocks_the_loop"
    assert "test_day_one.py" in e["at"] and "plain `def`" in e["hint"]


async def test_describe_running_jobs(node_factory: Any) -> None:
    gate = asyncio.Event()

    @jobmesh.consumer("day1/wait")
    async def waits(job: jobmesh.Job) -> None:
        await gate.wait()

    node = await node_factory([waits])
    job = await node.jobs.add("day1/wait", {})
    running = await wait_until_async(node.describe_running_jobs, what="a running job")
    assert running == [{"job_id": job.id, "topic": "day1/wait", "consumer": waits.__qualname__, "async": True}]
    with pytest.raises(asyncio.TimeoutError, match=r"job .* is not final after 0\.05 s: ACTIVE"):
        await node.jobs.wait(job.id, timeout=0.05)  # says where the job is, not a bare TimeoutError
    gate.set()


def test_consumer_signatures_are_checked_when_declared() -> None:
    with pytest.raises(ValidationError, match=r"cannot take a job.*async def f\(job\)"):
        @jobmesh.consumer("a/b")
        async def f() -> None: ...
    with pytest.raises(ValidationError, match="cannot take a job"):
        @jobmesh.consumer("a/b")
        def g(job: Any, ctx: Any, extra: Any) -> None: ...

    @jobmesh.consumer("a/b")
    def h(*args: Any) -> None: ...

    class Bad(jobmesh.ConsumerActor):
        topics = ["a/c"]

        async def process(self) -> None:  # type: ignore[override]
            ...

    with pytest.raises(ValidationError, match=r"process\(self, job, ctx\)"):
        spec_of(Bad)


async def test_two_consumers_for_one_topic_are_refused(node_factory: Any) -> None:
    @jobmesh.consumer("day1/fail")
    async def other(job: jobmesh.Job) -> None: ...

    node = await node_factory([always_fails])
    assert node.add_consumer(always_fails) is node.add_consumer(always_fails)  # the same one: once
    with pytest.raises(ValidationError, match="'day1/fail' has two consumers"):
        node.add_consumer(other)

    @jobmesh.consumer("day1/*")
    async def wider(job: jobmesh.Job) -> None: ...

    assert check_new_consumer(spec_of(wider), node.consumers.specs) is None  # more specific wins: fine


# -- embedding: where the logs go ------------------------------------------------------------------

EMBED = '''
import asyncio, logging, sys, jobmesh
mode = sys.argv[1]
if mode == "stdlib":
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="HOST %(name)s %(levelname)s %(message)s")
elif mode == "structlog":
    import structlog
    structlog.configure(processors=[structlog.processors.KeyValueRenderer()],
                        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout))

async def main():
    async with jobmesh.Node(name="e", data_dir=sys.argv[2]) as node:
        await node.jobs.add("x/y", {})
asyncio.run(main())
'''


@pytest.mark.parametrize("mode", ["none", "stdlib", "structlog"])
def test_an_embedded_node_never_prints_to_stdout_and_leaves_host_logging_alone(tmp_path: Path, mode: str) -> None:
    script = tmp_path / "embed.py"
    script.write_text(EMBED)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, str(script), mode, str(tmp_path / "d")], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    if mode == "none":  # the CLI's rendering on stderr, INFO and up; nothing on stdout
        assert r.stdout == ""
        assert "node started" in r.stderr and "[info" in r.stderr and "[debug" not in r.stderr
    elif mode == "stdlib":  # through the host's logging: its handler, format and level
        assert "HOST jobmesh.node INFO node started" in r.stdout and r.stderr == ""
    else:  # the host's own structlog configuration, untouched
        assert "event='node started'" in r.stdout and r.stderr == ""


# -- advertise ---------------------------------------------------------------------------------------


async def test_a_wildcard_bind_advertises_the_advertise_endpoint(tmp_path: Path) -> None:
    pa, pb = free_port_pair(), free_port_pair()
    fast = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.6}
    a = jobmesh.Node(name="a", data_dir=tmp_path / "a", bind=f"tcp://0.0.0.0:{pa}", advertise="tcp://127.0.0.1")
    b = jobmesh.Node(name="b", data_dir=tmp_path / "b", bind=f"tcp://127.0.0.1:{pb}", seeds=[f"tcp://127.0.0.1:{pa}"])
    for n in (a, b):
        n.config.discovery.heartbeat_interval = fast["heartbeat_interval"]
        n.config.discovery.heartbeat_timeout = fast["heartbeat_timeout"]
    async with a, b:
        view = await wait_until_async(lambda: b.topology if len(b.topology.instances) == 2 else None,
                                      timeout=10, what="b sees a")
        seen = view.instance("a")
        assert (seen.endpoint, seen.pub_endpoint) == (f"tcp://127.0.0.1:{pa}", f"tcp://127.0.0.1:{pa + 1}")
        assert a.topology.instance("a").endpoint == f"tcp://127.0.0.1:{pa}"


@jobmesh.consumer("day1/sync-fail")
def sync_fails(job: jobmesh.Job) -> None:
    raise ValueError("sync boom")


async def test_a_sync_consumers_traceback_has_no_runtime_frames(node_factory: Any) -> None:
    node = await node_factory([sync_fails])
    job = await node.jobs.add("day1/sync-fail", {"retry_delay": 0})
    done = await node.jobs.wait(job.id, timeout=10)
    first = done.progress.log[0]
    assert first.startswith("attempt 1 failed") and 'raise ValueError("sync boom")' in first
    assert "pool.py" not in first and "threads.py" not in first
