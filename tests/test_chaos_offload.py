"""Chaos test in the spirit of Sling's ChaosTest: several ``jobmesh node`` processes with
topics spread over them, a workload of thousands of jobs added everywhere, random
kill -9 and restarts while it runs. At the end every accepted job is SUCCEEDED exactly
once in the records (at its origin), nothing is left queued or running anywhere, and
every outbox has drained."""

from __future__ import annotations

import random
import sqlite3
import textwrap
import threading
import time
from pathlib import Path

import pytest

from helpers import NodeProcess, wait_until

pytestmark = pytest.mark.timeout(180)

TOPICS = ["chaos/a", "chaos/b", "chaos/c"]
# which topics each node consumes: every topic at two nodes, one node with all of them
SPREAD = {"n0": ["chaos/a", "chaos/b"], "n1": ["chaos/b", "chaos/c"], "n2": ["chaos/a", "chaos/c"],
          "n3": TOPICS}

CONSUMER = '''
import asyncio, random, jobmesh

@jobmesh.consumer({topics!r})
async def work(job):
    await asyncio.sleep(random.uniform(0.005, 0.03))
'''


def _module(tmp: Path, name: str) -> str:
    mod = f"chaos_{name}"
    (tmp / f"{mod}.py").write_text(CONSUMER.replace("{topics!r}", ", ".join(repr(t) for t in SPREAD[name])))
    return mod


def _open_jobs(nodes: dict[str, NodeProcess]) -> str:
    """What is left open everywhere (for the failure message)."""
    lines = []
    for name, n in nodes.items():
        with sqlite3.connect(n.data / "jobs.db") as db:
            rows = db.execute("SELECT id, topic, origin, target, state, attempt, retry_count FROM jobs "
                              "WHERE state IN ('QUEUED','ACTIVE') AND outbox IS NULL LIMIT 20").fetchall()
            outbox = db.execute("SELECT id, origin, attempt FROM jobs WHERE outbox IS NOT NULL UNION ALL "
                                "SELECT job_id, origin, attempt FROM transfer_outbox LIMIT 10").fetchall()
            copies = db.execute("SELECT job_id, origin, attempt FROM transfer_copies LIMIT 10").fetchall()
        lines.append(f"{name}: open {rows} outbox {outbox} copies {copies}")
        lines.append(n.log_tail(15))
    return "\n".join(lines)


def test_random_kills_and_restarts_lose_nothing_and_record_each_job_once(tmp_path: Path) -> None:
    rnd = random.Random(4)
    conf = tmp_path / "chaos.toml"
    conf.write_text(textwrap.dedent("""
        [node]
        capacity = 8
        [discovery]
        heartbeat_interval = 0.2
        heartbeat_timeout = 1.0
    """))
    nodes = {name: NodeProcess(tmp_path, name, consumers=[_module(tmp_path, name)], bind=True, config=conf)
             for name in SPREAD}
    for n in nodes.values():
        for other in nodes.values():
            if other is not n:
                n.args += ["--seed", other.endpoint]
    accepted: dict[str, list[str]] = {name: [] for name in nodes}
    lock = threading.Lock()
    stop = threading.Event()
    target_jobs = 3000

    def submitter() -> None:
        i = 0
        while not stop.is_set() and sum(len(v) for v in accepted.values()) < target_jobs:
            name = rnd.choice(list(nodes))
            with lock:
                n = nodes[name]
            body = [{"topic": rnd.choice(TOPICS), "properties": {"i": i + k}} for k in range(50)]
            i += 50
            try:
                status, answer = n.api("POST", "/api/v1/jobs", body, timeout=3)
            except OSError:
                continue  # that node is down right now
            if status == 201:
                accepted[name].extend(j["id"] for j in answer)
            time.sleep(0.02)

    try:
        for n in nodes.values():
            n.start()
        wait_until(lambda: all(len(n.api("GET", "/api/v1/topology")[1]["instances"]) == 4
                               for n in nodes.values()), timeout=30, interval=0.1)
        t = threading.Thread(target=submitter, daemon=True)
        t.start()
        kills = 0
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and (t.is_alive() or kills < 4):
            time.sleep(rnd.uniform(0.8, 2.0))
            name = rnd.choice(list(nodes))
            with lock:
                old = nodes[name]
                old.kill()
                kills += 1
                time.sleep(rnd.uniform(0.0, 1.5))  # sometimes back before anyone noticed, sometimes not
                again = NodeProcess(tmp_path, name, http=False, data=old.data)
                again.args, again.url, again.endpoint = list(old.args), old.url, old.endpoint
                old.close()
                nodes[name] = again.start()
        stop.set()
        t.join(30)
        total = sum(len(v) for v in accepted.values())
        assert total >= 1000, f"only {total} jobs accepted"

        def finished() -> bool:
            for name, ids in accepted.items():
                _, st = nodes[name].api("GET", "/api/v1/stats")
                if st["overall"]["queued"] or st["overall"]["active"]:
                    return False
            return True

        try:
            wait_until(finished, timeout=60, interval=0.5)
        except AssertionError:
            raise AssertionError("jobs still open:\n" + _open_jobs(nodes)) from None

        def outboxes_empty() -> bool:
            for n in nodes.values():
                with sqlite3.connect(n.data / "jobs.db") as db:
                    if db.execute("SELECT (SELECT count(*) FROM transfer_outbox) + (SELECT count(*) FROM jobs WHERE outbox IS NOT NULL)").fetchone()[0]:
                        return False
            return True

        wait_until(outboxes_empty, timeout=30, interval=0.5)
    finally:
        stop.set()
        for n in nodes.values():
            n.close()

    seen: dict[str, int] = {}
    remote = 0
    for name, n in nodes.items():
        with sqlite3.connect(n.data / "jobs.db") as db:
            rows = db.execute("SELECT id, origin, state FROM jobs").fetchall()
            remote += db.execute("SELECT count(*) FROM jobs WHERE target!=origin").fetchone()[0]
            leftover = db.execute("SELECT count(*) FROM transfer_copies c JOIN jobs j ON j.id=c.job_id "
                                  "WHERE j.origin!=?", (name,)).fetchone()[0]
        assert leftover == 0, f"{name} still holds copies of other nodes' jobs"
        for job_id, origin, state in rows:
            assert origin == name, f"{name} keeps a copy of {origin}'s job {job_id} ({state})"
            assert state == "SUCCEEDED", f"{job_id} at {name} is {state}"
            seen[job_id] = seen.get(job_id, 0) + 1
        missing = set(accepted[name]) - {r[0] for r in rows}
        assert not missing, f"{len(missing)} jobs accepted by {name} are gone"
    assert all(c == 1 for c in seen.values())
    assert remote > 100, "the topics are spread: many jobs must have run at another node than their origin"
    print(f"chaos: {len(seen)} jobs, {remote} ran elsewhere, {kills} kills")
    assert sum(len(v) for v in accepted.values()) <= len(seen)
