"""The SQLite store on real files: group commit, schema versions, reads, recovery, clean-up."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pytest

from jobmesh.actor import ActorSystem
from jobmesh.job import Job, JobState, ResultKind
from jobmesh.transfer.messages import ResultItem
from jobmesh.store import SCHEMA_VERSION, SchemaError, Store


def mk(i: int, topic: str = "t/a", queue: str = "main", **kw) -> Job:
    return Job(id=f"job-{i}", topic=topic, properties={"i": i}, queue=queue, origin="n", created=float(i), **kw)


async def open_store(path, **kw) -> tuple[Store, ActorSystem]:
    system = ActorSystem()
    store = Store(path, **kw)
    await system.start(store)
    return store, system


async def test_insert_is_durable_and_group_committed(tmp_path):
    store, system = await open_store(tmp_path / "jobs.db")
    try:
        jobs = [mk(i) for i in range(100)]
        # 100 concurrent writers: they share a handful of transactions
        await asyncio.gather(*(store.insert([j]) for j in jobs))
        assert store.commits < 10
        assert [j.seq for j in jobs] == list(range(1, 101))
        # visible to a fresh connection (committed), not just this process' cache
        conn = sqlite3.connect(tmp_path / "jobs.db")
        assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 100
        conn.close()
        got = store.get("job-7")
        assert got is not None and got.properties == {"i": 7} and got.state is JobState.QUEUED
    finally:
        await system.stop_all()


async def test_updates_of_one_job_in_a_batch_collapse_to_the_last(tmp_path):
    store, system = await open_store(tmp_path / "jobs.db")
    try:
        j = mk(1)
        await store.insert([j])
        j.state = JobState.ACTIVE
        f1 = store.update(j)
        j.state = JobState.SUCCEEDED
        j.finished = 5.0
        f2 = store.update(j)
        assert f1 is f2  # same transaction
        await f2
        assert store.get("job-1").state is JobState.SUCCEEDED
    finally:
        await system.stop_all()


async def test_find_filters_newest_first_and_ready_window(tmp_path):
    store, system = await open_store(tmp_path / "jobs.db")
    try:
        jobs = [mk(i, topic="t/a" if i % 2 else "t/b", queue="q1" if i < 6 else "q2") for i in range(10)]
        await store.insert(jobs)
        assert [j.id for j in store.find(topic="t/a", limit=3)] == ["job-9", "job-7", "job-5"]
        assert len(store.find(queue="q1")) == 6
        jobs[0].state = JobState.ACTIVE
        await store.update(jobs[0])
        assert [j.id for j in store.find(state="ACTIVE")] == ["job-0"]
        ready = store.ready("q1", after_seq=0, limit=10)
        assert [j.id for j in ready] == ["job-1", "job-2", "job-3", "job-4", "job-5"]  # job-0 not QUEUED
        assert [j.id for j in store.ready("q1", after_seq=3, limit=2)] == ["job-3", "job-4"]
        counts = {(q, t, s): n for q, t, s, n in store.open_counts()}
        assert counts[("q1", "t/b", "ACTIVE")] == 1
    finally:
        await system.stop_all()


async def test_schema_version_recorded_and_newer_refused(tmp_path):
    path = tmp_path / "jobs.db"
    store, system = await open_store(path)
    await system.stop_all()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    conn.execute("UPDATE schema_version SET version=?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(SchemaError):
        await Store(path).on_start()


async def test_reopen_keeps_sequence_and_rows(tmp_path):
    path = tmp_path / "jobs.db"
    store, system = await open_store(path)
    await store.insert([mk(1), mk(2)])
    await system.stop_all()
    store, system = await open_store(path)
    try:
        j = mk(3)
        await store.insert([j])
        assert j.seq == 3 and store.count() == 3
    finally:
        await system.stop_all()


async def test_active_rows_are_what_a_crash_interrupted(tmp_path):
    """The store only reads them; the engine applies the retry rule (tests/test_engine_core.py)."""
    store, system = await open_store(tmp_path / "jobs.db")
    try:
        a = mk(1, state=JobState.ACTIVE, max_retries=3, retry_count=0)
        b = mk(2, state=JobState.ACTIVE, max_retries=3, retry_count=3)
        elsewhere = mk(3, state=JobState.ACTIVE)
        elsewhere.origin, elsewhere.target = "n", "other"
        copy = mk(5, state=JobState.ACTIVE)
        copy.origin = "other"
        await store.insert([a, b, elsewhere, mk(4), copy])
        assert [j.id for j in store.active_rows()] == ["job-1", "job-2", "job-3", "job-5"]
        store.local_name = "n"  # offloading: a job running at another node is not ours to recover
        assert [j.id for j in store.active_rows()] == ["job-1", "job-2", "job-5"]
        assert [j.id for j in store.handed_off()] == ["job-3"]
    finally:
        await system.stop_all()


async def test_purge_respects_ttls_and_keep_queues(tmp_path):
    store, system = await open_store(tmp_path / "jobs.db")
    try:
        old_ok = mk(1, state=JobState.SUCCEEDED, finished=10.0)
        new_ok = mk(2, state=JobState.SUCCEEDED, finished=500.0)
        old_err = mk(3, state=JobState.ERROR, finished=10.0)
        kept = mk(4, state=JobState.SUCCEEDED, finished=10.0, queue="keep")
        queued = mk(5)
        await store.insert([old_ok, new_ok, old_err, kept, queued])
        # succeeded before 100 go; other finals only before 5
        assert await store.purge(succeeded_before=100.0, others_before=5.0, keep_queues=["keep"]) == 1
        assert store.get("job-1") is None and store.get("job-3") is not None
        assert await store.purge(succeeded_before=100.0, others_before=50.0, keep_queues=["keep"]) == 1
        assert store.get("job-3") is None
        assert {j.id for j in store.find(limit=10)} == {"job-2", "job-4", "job-5"}
    finally:
        await system.stop_all()


async def test_purge_sweeps_in_bounded_ranges_and_goes_on_where_it_stopped(tmp_path, monkeypatch):
    """The clean-up has no index of end times: it deletes by ranges of seqs (PURGE_CHUNK a
    transaction), stops once ``limit`` rows went and goes on from there in the next call; a call
    that sweeps to the newest row starts the next sweep from the oldest."""
    import jobmesh.store.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "PURGE_CHUNK", 7)
    store, system = await open_store(tmp_path / "jobs.db")
    try:
        states = [JobState.SUCCEEDED, JobState.QUEUED, JobState.GIVEN_UP, JobState.SUCCEEDED, JobState.ACTIVE]
        jobs = [mk(i, state=states[i % 5], finished=None if states[i % 5] in (JobState.QUEUED, JobState.ACTIVE)
                   else 10.0) for i in range(1, 61)]
        await store.insert(jobs)
        commits = store.commits
        finals = {j.id for j in jobs if j.finished is not None}  # 36 rows
        first = await store.purge(succeeded_before=100.0, others_before=100.0, keep_queues=[], limit=10)
        assert 10 <= first < 10 + 7  # stopped in the chunk that reached the limit
        assert store.commits - commits >= 2  # more than one transaction
        rest = await store.purge(succeeded_before=100.0, others_before=100.0, keep_queues=[], limit=1000)
        assert first + rest == len(finals)
        assert {j.id for j in store.find(limit=100)} == {j.id for j in jobs} - finals
        # a row that ends later, below where the last sweep went, goes in the next sweep
        late = store.get("job-1")  # QUEUED, at the lowest seq
        late.state, late.finished = JobState.SUCCEEDED, 20.0
        await store.update(late)
        assert await store.purge(succeeded_before=100.0, others_before=100.0, keep_queues=[], limit=1000) == 1
        assert store.get("job-1") is None
    finally:
        await system.stop_all()


async def test_a_purge_that_overlaps_another_still_sweeps_the_whole_table(tmp_path, monkeypatch):
    """The manager's clean-up loop and an explicit ``purge_history()`` may overlap. They share the
    sweep's cursor, so they take turns: a call that returns fewer than ``limit`` swept every row
    once (what ``purge_history``'s loop relies on), even one that began while the other was half-way."""
    import jobmesh.store.sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "PURGE_CHUNK", 5)
    store, system = await open_store(tmp_path / "jobs.db")
    try:
        jobs = [mk(i, state=JobState.SUCCEEDED, finished=10.0) if i % 2 else mk(i) for i in range(1, 41)]
        await store.insert(jobs)
        first = asyncio.ensure_future(
            store.purge(succeeded_before=100.0, others_before=100.0, keep_queues=[], limit=1000))
        for _ in range(1000):  # until the first sweep is past the low seqs
            if store._purge_from >= 10:
                break
            await asyncio.sleep(0)
        assert store._purge_from >= 10 and not first.done()  # half-way
        late = store.get("job-2")  # seq 2, behind the first sweep: only a whole second sweep finds it
        late.state, late.finished = JobState.SUCCEEDED, 20.0
        await store.update(late)
        second = await store.purge(succeeded_before=100.0, others_before=100.0, keep_queues=[], limit=1000)
        assert await first == 20
        assert second == 1 and store.get("job-2") is None
    finally:
        await system.stop_all()


async def test_a_failing_call_does_not_lose_the_batch(tmp_path):
    store, system = await open_store(tmp_path / "jobs.db")
    try:
        def boom(conn):
            conn.execute("INSERT INTO nosuchtable VALUES (1)")
        j = mk(1)
        f_ins = store.insert([j])
        f_bad = store.call(boom)
        await f_ins
        with pytest.raises(sqlite3.OperationalError):
            await f_bad
        assert store.get("job-1") is not None
    finally:
        await system.stop_all()


async def test_full_durability_commits_in_a_thread(tmp_path):
    store, system = await open_store(tmp_path / "jobs.db", durability="full")
    try:
        assert store.inline_commits is False
        await store.insert([mk(1)])
        assert store.get("job-1") is not None
    finally:
        await system.stop_all()


async def test_start_writes_and_full_snapshots_keep_their_order(tmp_path):
    store, system = await open_store(tmp_path / "jobs.db")
    try:
        a, b = mk(1), mk(2)
        await store.insert([a, b])
        # a: started, then its final snapshot in the same batch -> the snapshot wins
        a.state, a.started, a.attempt, a.target = JobState.ACTIVE, 5.0, 1, "n"
        store.update_started(a)
        a.state, a.finished = JobState.SUCCEEDED, 6.0
        store.update(a)
        # b: a full snapshot (back to QUEUED), then a start in the same batch -> the start wins
        b.retry_count = 1
        store.update(b)
        b.state, b.started, b.attempt, b.target = JobState.ACTIVE, 7.0, 2, "n"
        await store.update_started(b)
        ga, gb = store.get("job-1"), store.get("job-2")
        assert (ga.state, ga.finished) == (JobState.SUCCEEDED, 6.0)
        assert (gb.state, gb.started, gb.attempt, gb.retry_count, gb.target) == (JobState.ACTIVE, 7.0, 2, 1, "n")
    finally:
        await system.stop_all()


async def test_handoff_writes_only_target_and_attempt_and_keep_their_order(tmp_path):
    store, system = await open_store(tmp_path / "jobs.db")
    try:
        a, b, c, d = mk(1), mk(2), mk(3), mk(4)
        await store.insert([a, b, c, d])
        # a: handed off alone -> target and attempt change, the row stays QUEUED and ready
        a.attempt, a.target = 1, "peer"
        # b: handed off, then back home and started here in the same batch -> the start wins
        b.attempt, b.target = 1, "peer"
        store.handoff_many([a, b])
        b.state, b.started, b.attempt, b.target = JobState.ACTIVE, 7.0, 2, "n"
        store.start_many([b])
        # c: a full snapshot waits (a retry count), then a handoff -> one full row with both
        c.retry_count = 1
        store.update(c)
        c.attempt, c.target = 1, "peer"
        store.handoff_many([c])
        # d: handed off, then a full snapshot (its result) -> the snapshot wins
        d.attempt, d.target = 1, "peer"
        store.handoff_many([d])
        d.state, d.finished = JobState.SUCCEEDED, 9.0
        await store.update(d)
        ga, gb, gc, gd = (store.get(f"job-{i}") for i in (1, 2, 3, 4))
        assert (ga.state, ga.attempt, ga.target) == (JobState.QUEUED, 1, "peer")
        assert (gb.state, gb.attempt, gb.target, gb.started) == (JobState.ACTIVE, 2, "n", 7.0)
        assert (gc.state, gc.attempt, gc.target, gc.retry_count) == (JobState.QUEUED, 1, "peer", 1)
        assert (gd.state, gd.attempt, gd.target, gd.finished) == (JobState.SUCCEEDED, 1, "peer", 9.0)
        # a handed-off row is still where the ready scan finds it (its jobs_ready entry stayed)
        ready = [r[0] for r in store.reader.execute(
            "SELECT id FROM jobs INDEXED BY jobs_ready WHERE queue='main' AND state='QUEUED' ORDER BY seq")]
        assert ready == ["job-1", "job-3"]
    finally:
        await system.stop_all()


@pytest.mark.parametrize("grouped", [True, False], ids=["json_each", "no-json1"])
async def test_grouped_starts_and_narrow_successes_write_each_row_and_keep_their_order(tmp_path, grouped):
    """Starts that share their values are one statement, successes write only their final columns;
    each row still gets its own values, and a narrow write meeting another write of its row in the
    same batch becomes one full write. Without SQLite's JSON functions, the same one row at a time."""
    store, system = await open_store(tmp_path / "jobs.db")
    store._grouped = grouped
    try:
        jobs = [mk(i) for i in range(1, 8)]
        await store.insert(jobs)
        a, b, c, d, e, f, g = jobs
        for j, (started, attempt) in zip(jobs, [(5.0, 1), (5.0, 1), (5.0, 2), (6.0, 1), (5.0, 1), (5.0, 1), (5.0, 1)]):
            j.state, j.started, j.attempt, j.target = JobState.ACTIVE, started, attempt, "n"
        await store.start_many(jobs)  # three groups: (5.0, 1), (5.0, 2), (6.0, 1)
        got = {j.id: store.get(j.id) for j in jobs}
        assert [(x.state, x.started, x.attempt, x.target) for x in got.values()] == [
            (JobState.ACTIVE, j.started, j.attempt, "n") for j in jobs]
        # a, b: plain successes at one time; c: with a result; d: with a message and progress
        for j in (a, b, c, d):
            j.state, j.finished = JobState.SUCCEEDED, 9.0
        c.result = {"n": 3}
        d.result_message, d.progress.log = "fine", ["step one"]
        store.succeed_many([a, b, c, d])
        # e: a success, then a full snapshot in the same batch -> the snapshot wins
        e.state, e.finished = JobState.SUCCEEDED, 9.0
        store.succeed_many([e])
        e.result_message = "changed after"
        store.update(e)
        # f: a full snapshot waits (a retry count), then the success -> one full row with both
        f.retry_count = 4
        store.update(f)
        f.state, f.finished = JobState.SUCCEEDED, 9.5
        store.succeed_many([f])
        # g: a success, then started again in the same batch (retried) -> one full row, ACTIVE
        g.state, g.finished = JobState.SUCCEEDED, 9.0
        store.succeed_many([g])
        g.state, g.started, g.finished, g.attempt = JobState.ACTIVE, 10.0, None, 2
        await store.start_many([g])
        ga, gb, gc, gd, ge, gf, gg = (store.get(j.id) for j in jobs)
        for x in (ga, gb):
            assert (x.state, x.finished, x.result, x.result_message, x.started, x.attempt) == (
                JobState.SUCCEEDED, 9.0, None, None, 5.0, 1)
        assert (gc.state, gc.result, gc.attempt) == (JobState.SUCCEEDED, {"n": 3}, 2)
        assert (gd.state, gd.result_message, gd.progress.log, gd.started) == (
            JobState.SUCCEEDED, "fine", ["step one"], 6.0)
        assert (ge.state, ge.result_message) == (JobState.SUCCEEDED, "changed after")
        assert (gf.state, gf.finished, gf.retry_count) == (JobState.SUCCEEDED, 9.5, 4)
        assert (gg.state, gg.started, gg.finished, gg.attempt) == (JobState.ACTIVE, 10.0, None, 2)
    finally:
        await system.stop_all()


async def test_a_success_after_a_handoff_alone_writes_the_start_too(tmp_path):
    """An offloaded job whose result overtook its start message goes from its handoff row (QUEUED,
    target and attempt) straight to SUCCEEDED: the narrow success writes its start time with it."""
    store, system = await open_store(tmp_path / "jobs.db")
    try:
        a, b = mk(1), mk(2)
        await store.insert([a, b])
        for j in (a, b):
            j.target, j.attempt = "peer", 1
        await store.handoff_many([a, b])
        for j, started in ((a, 4.0), (b, 4.5)):  # each started at its own time at the peer
            j.state, j.started, j.finished = JobState.SUCCEEDED, started, 5.0
        b.result_message = "fine"
        await store.succeed_many([a, b])
        ga, gb = store.get("job-1"), store.get("job-2")
        assert (ga.state, ga.started, ga.finished, ga.target, ga.attempt) == (JobState.SUCCEEDED, 4.0, 5.0, "peer", 1)
        assert (gb.state, gb.started, gb.result_message, gb.target) == (JobState.SUCCEEDED, 4.5, "fine", "peer")
        ready = list(store.reader.execute("SELECT id FROM jobs INDEXED BY jobs_ready WHERE queue='main' "
                                          "AND state='QUEUED'"))
        assert ready == []
    finally:
        await system.stop_all()


async def test_plain_and_full_inserts_write_the_same_rows(tmp_path):
    """A new job with defaults in its optional columns binds 9 values; one with any of them set
    binds all 21; both read back as they were added."""
    store, system = await open_store(tmp_path / "jobs.db")
    try:
        plain = mk(1)
        full = mk(2, key="k", timeout=3.0, priority=2, not_before=50.0)
        await store.insert([plain, full])
        gp, gf = store.get("job-1"), store.get("job-2")
        assert (gp.retry_count, gp.attempt, gp.not_before, gp.priority, gp.key, gp.timeout, gp.target) == (
            0, 0, 0.0, 0, None, None, None)
        assert (gp.properties, gp.created, gp.max_retries, gp.state) == ({"i": 1}, 1.0, plain.max_retries,
                                                                          JobState.QUEUED)
        assert (gf.key, gf.timeout, gf.priority, gf.not_before) == ("k", 3.0, 2, 50.0)
    finally:
        await system.stop_all()


def test_the_marker_deletes_follow_the_table_even_after_a_rollback():
    """The per-copy marker deletes are skipped while no held marker exists, looked at inside each
    transaction: a batch that released the last marker and rolled back (its commit failed) brings it
    back, and the next newer copy of that job still clears it (it would stay held by id)."""
    from jobmesh.store.rows import _INSERT_COPY, copy_row
    from jobmesh.store.schema import migrate
    from jobmesh.store.transfer import TransferStore

    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    ts = TransferStore("me")

    def copy(seq: int, job_id: str, attempt: int) -> Job:
        j = Job(id=job_id, topic="t/a", properties={}, queue="main", origin="o", created=1.0, attempt=attempt)
        j.seq = seq
        return j

    conn.execute(_INSERT_COPY, copy_row(copy(1, "c-a", 1)))
    ts.hold_restored(conn)  # at start: c-a (attempt 1) is held
    conn.execute("BEGIN IMMEDIATE")  # one batch: the origin confirmed c-a, and another copy arrived
    TransferStore.release(conn, [("c-a", 1)])
    ts.write(conn, [("o", copy(2, "c-b", 1))], [], [])  # sees no marker left
    conn.execute("ROLLBACK")  # the batch's commit failed
    assert conn.execute("SELECT job_id, attempt FROM transfer_copies").fetchall() == [("c-a", 1)]
    conn.execute("BEGIN IMMEDIATE")
    ts.write(conn, [("o", copy(3, "c-a", 2))], [], [])  # a newer attempt of c-a: its origin's word
    conn.execute("COMMIT")
    assert conn.execute("SELECT job_id, attempt FROM transfer_copies").fetchall() == []
    conn.close()


def test_an_outbox_body_is_msgpack_and_json_bodies_of_older_nodes_still_read():
    import json

    from jobmesh.store.transfer import outbox_body, read_outbox_body
    from jobmesh.transfer.messages import ResultItem

    wire = {"id": "j-1", "attempt": 2, "kind": "OK", "message": None, "retry_delay": None,
            "started": 1796168549.8306148, "finished": 1796168549.9, "log": ["a"]}
    body = outbox_body(wire)
    assert isinstance(body, bytes) and read_outbox_body(body) == wire
    assert read_outbox_body(json.dumps(wire)) == wire  # a row an older node wrote
    assert ResultItem.from_wire(read_outbox_body(body)).finished == 1796168549.9
    with pytest.raises(ValueError):
        read_outbox_body("[1, 2]")
    # a consumer's value goes as JSON, as before: JSON accepts what msgpack would refuse to read back
    # (int keys: read back as strings) or to pack (an int beyond 64 bits, a lone surrogate)
    for value, back in (({1: "a"}, {"1": "a"}), (2 ** 70, 2 ** 70)):
        body = outbox_body({**wire, "result": value})
        assert isinstance(body, str) and read_outbox_body(body)["result"] == back
    odd = {**wire, "result": None, "message": "bad \udc80 text"}
    assert isinstance(outbox_body(odd), str) and read_outbox_body(outbox_body(odd))["message"] == odd["message"]


async def test_writes_after_close_are_refused_not_hung(tmp_path):
    from jobmesh.errors import ActorStopped
    store, system = await open_store(tmp_path / "jobs.db")
    await system.stop_all()
    with pytest.raises(ActorStopped):
        store.insert([mk(1)])
    with pytest.raises(ActorStopped):
        store.update(mk(2))


async def test_a_copy_is_its_job_row_and_only_restored_copies_are_marked_held(tmp_path):
    """A copy costs its row and, once ended, its outbox row; the held markers exist only between a
    restart and the origin's confirmation (rows with held=0, as nodes before wrote, mean nothing)."""
    from jobmesh.store.transfer import TransferStore

    store, system = await open_store(tmp_path / "jobs.db")
    ts = TransferStore("me")
    try:
        store.local_name = "me"
        a = Job(id="c-a", topic="t/a", properties={}, queue="main", origin="o", created=1.0, attempt=2)
        b = Job(id="c-b", topic="t/a", properties={}, queue="main", origin="o", created=1.0, attempt=1)
        mine = mk(9)
        mine.origin = "me"
        await store.insert([mine])
        a.seq, b.seq = store.reserve_seqs(1), store.reserve_seqs(1)
        # an old node's marker for b (held=0 meant "not held"), and a held marker of an older attempt of a;
        # and one for a job this node no longer has (an old node's, inert: held=0)
        await store.call(lambda c: c.execute(
            "INSERT INTO transfer_copies (job_id, origin, attempt, held) VALUES ('gone', 'o', 1, 0)"))
        await store.call(lambda c: c.executemany(
            "INSERT INTO transfer_copies (job_id, origin, attempt, held) VALUES (?,?,?,?)",
            [("c-b", "o", 1, 0), ("c-a", "o", 1, 1)]))
        await store.call(lambda c: ts.write(c, [("o", a), ("o", b)], [], []))
        rows = store.reader.execute("SELECT job_id, attempt, held FROM transfer_copies ORDER BY job_id").fetchall()
        assert rows == [("gone", 1, 0)]  # an accepted copy clears any marker of its job (a's held one of an older attempt too)
        assert [j.id for j in store.ready("main", 0, 10)] == ["job-9", "c-a", "c-b"]
        assert [c[:3] for c in TransferStore.copies(store.reader, "me")] == [("c-a", "o", 2), ("c-b", "o", 1)]
        # a restart holds every copy it has, none of the node's own jobs (the inert marker goes);
        # confirmed ones are let go
        await store.call(ts.hold_restored)
        held = store.reader.execute("SELECT job_id, attempt, held FROM transfer_copies ORDER BY job_id").fetchall()
        assert held == [("c-a", 2, 1), ("c-b", 1, 1)]
        assert [j.id for j in store.ready("main", 0, 10)] == ["job-9"]
        await store.call(lambda c: TransferStore.release(c, [("c-a", 2)]))
        assert [j.id for j in store.ready("main", 0, 10)] == ["job-9", "c-a"]
        # the origin is done with b: its row and marker go
        await store.call(lambda c: ts.write(c, [], [], [("c-b", 1)]))
        assert store.reader.execute("SELECT count(*) FROM transfer_copies").fetchone()[0] == 0
        assert store.get("c-b") is None
        # no marker left: later copies skip the marker deletes; the next restart's markers count again
        d = Job(id="c-d", topic="t/a", properties={"k": 1}, queue="main", origin="o", created=1.0, attempt=1)
        d.seq = store.reserve_seqs(1)
        await store.call(lambda c: ts.write(c, [("o", d)], [], []))
        assert store.get("c-d").properties == {"k": 1}
        await store.call(ts.hold_restored)
        d2 = Job(id="c-d", topic="t/a", properties={}, queue="main", origin="o", created=1.0, attempt=2)
        d2.seq = store.reserve_seqs(1)
        await store.call(lambda c: ts.write(c, [("o", d2)], [], []))  # the newer attempt clears its marker
        held = store.reader.execute("SELECT job_id, attempt FROM transfer_copies ORDER BY job_id").fetchall()
        assert held == [("c-a", 2)] and store.get("c-d").attempt == 2
    finally:
        await system.stop_all()


def _copy_store() -> tuple[sqlite3.Connection, Any]:
    from jobmesh.store.schema import migrate
    from jobmesh.store.transfer import TransferStore

    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    return conn, TransferStore("me")


def _copy(seq: int, job_id: str, attempt: int = 1) -> Job:
    j = Job(id=job_id, topic="t/a", properties={}, queue="main", origin="o", created=1.0, attempt=attempt)
    j.seq = seq
    return j


@pytest.mark.parametrize("grouped", [True, False], ids=["json_each", "no-json1"])
def test_a_copys_result_waits_in_its_row_and_goes_with_it_at_the_ack(grouped):
    """Schema 8: a copy's result is kept in its own row (ACTIVE, no end time) until its origin
    acknowledges it. Restarts see it as a result to resend, never as a run or a copy to hold."""
    from jobmesh.store.reads import StoreReads
    from jobmesh.store.transfer import TransferStore, read_outbox_body
    from jobmesh.transfer.messages import ResultItem

    conn, ts = _copy_store()
    ran, stopped, waiting = _copy(1, "c-ran"), _copy(2, "c-stopped"), _copy(3, "c-waiting")
    conn.execute("BEGIN IMMEDIATE")
    ts.write(conn, [("o", ran), ("o", stopped), ("o", waiting)], [], [], grouped=grouped)
    conn.execute("UPDATE jobs SET state='ACTIVE', started=5.0 WHERE id='c-ran'")  # its start
    ts.write(conn, [], [(ran, ResultItem("c-ran", 1, ResultKind.OK, started=5.0, finished=6.0)),
                        (stopped, ResultItem("c-stopped", 1, ResultKind.CANCEL, "stopped"))], [], grouped=grouped)
    conn.execute("COMMIT")
    rows = dict(((i, (s, f, o is not None)) for i, s, f, o in conn.execute(
        "SELECT id, state, finished, outbox FROM jobs ORDER BY seq")))
    assert rows == {"c-ran": ("ACTIVE", None, True), "c-stopped": ("ACTIVE", None, True),
                    "c-waiting": ("QUEUED", None, False)}
    assert conn.execute("SELECT count(*) FROM transfer_outbox").fetchone()[0] == 0
    # what a restart reads: the results to resend, the one copy to hold, no run interrupted
    got = {job_id: ResultItem.from_wire(read_outbox_body(body))
           for job_id, _, _, body in TransferStore.outbox(conn)}
    assert set(got) == {"c-ran", "c-stopped"} and got["c-ran"].finished == 6.0
    assert [c[0] for c in TransferStore.copies(conn, "me")] == ["c-waiting"]
    reads = StoreReads.__new__(StoreReads)
    reads._rconn, reads.local_name = conn, "me"
    assert reads.active_rows() == [] and reads.open_counts() == [("main", "t/a", "QUEUED", 1)]
    ready = [r[0] for r in conn.execute("SELECT id FROM jobs INDEXED BY jobs_ready WHERE state='QUEUED'")]
    assert ready == ["c-waiting"]  # the stopped copy never runs now
    ts.hold_restored(conn)
    assert conn.execute("SELECT job_id FROM transfer_copies").fetchall() == [("c-waiting",)]
    # nor a job kept here for a reader (get, find: "ask its origin"), and a late write of its row (a
    # snapshot read before the result landed) leaves it as it is: never a job to run again
    assert reads.get("c-ran") is None and [j.id for j in reads.find()] == ["c-waiting"]
    assert reads.find(state="ACTIVE") == [] and reads.get("c-waiting") is not None
    from jobmesh.store.rows import _START, _UPDATE, update_row
    late = _copy(1, "c-ran")  # QUEUED, as an engine that read the row before the result would write it
    conn.execute(_UPDATE, update_row(late))
    conn.execute(_START, (7.0, 1, "me", 1))
    assert conn.execute("SELECT state, started, outbox IS NOT NULL FROM jobs WHERE id='c-ran'").fetchone() == (
        "ACTIVE", 5.0, 1)
    # the acks: each result's row goes; a later attempt's ack would not touch an older row
    conn.execute("BEGIN IMMEDIATE")
    ts.write(conn, [], [], [("c-ran", 1), ("c-stopped", 2)], grouped=grouped)
    conn.execute("COMMIT")
    assert [r[0] for r in conn.execute("SELECT id FROM jobs ORDER BY seq")] == ["c-stopped", "c-waiting"]
    assert [r[0] for r in TransferStore.outbox(conn)] == ["c-stopped"]
    conn.close()


@pytest.mark.parametrize("grouped", [True, False], ids=["json_each", "no-json1"])
def test_a_result_whose_row_a_newer_copy_replaced_waits_in_the_outbox_table(grouped):
    """An older attempt's result and a newer copy of the same job in one commit: the newer copy's
    row replaces the older one first, so the result is kept in ``transfer_outbox`` (as every result
    was before schema 8), read back at a restart and deleted by its ack like one in a row."""
    from jobmesh.store.transfer import TransferStore

    conn, ts = _copy_store()
    old = _copy(1, "c-a", attempt=1)
    conn.execute("BEGIN IMMEDIATE")
    ts.write(conn, [("o", old)], [], [], grouped=grouped)
    conn.execute("COMMIT")
    conn.execute("BEGIN IMMEDIATE")
    ts.write(conn, [("o", _copy(2, "c-a", attempt=2))],
             [(old, ResultItem("c-a", 1, ResultKind.OK))], [], grouped=grouped)
    conn.execute("COMMIT")
    assert conn.execute("SELECT id, attempt, state, outbox FROM jobs").fetchall() == [("c-a", 2, "QUEUED", None)]
    assert [(r[0], r[2]) for r in TransferStore.outbox(conn)] == [("c-a", 1)]
    conn.execute("BEGIN IMMEDIATE")
    ts.write(conn, [], [], [("c-a", 1)], grouped=grouped)  # the older result acknowledged: the newer copy stays
    conn.execute("COMMIT")
    assert TransferStore.outbox(conn) == [] and conn.execute("SELECT attempt FROM jobs").fetchall() == [(2,)]
    conn.close()


def test_results_an_older_node_left_in_the_outbox_table_are_read_and_acknowledged():
    import json

    from jobmesh.store.transfer import TransferStore, read_outbox_body

    conn, ts = _copy_store()
    wire = ResultItem("c-old", 3, ResultKind.FAILED, "boom").to_wire()
    conn.execute("INSERT INTO transfer_outbox (job_id, origin, attempt, body) VALUES ('c-old', 'o', 3, ?)",
                 (json.dumps(wire),))  # what a node before schema 8 wrote
    [(job_id, origin, attempt, body)] = TransferStore.outbox(conn)
    assert (job_id, origin, attempt) == ("c-old", "o", 3) and read_outbox_body(body) == wire
    conn.execute("BEGIN IMMEDIATE")
    ts.write(conn, [], [], [("c-old", 3)])
    conn.execute("COMMIT")
    assert TransferStore.outbox(conn) == []
    conn.close()


def test_seq_range_is_only_a_range_without_gaps_or_repeats():
    from jobmesh.store.rows import seq_range

    assert seq_range([7]) == (7, 7)
    assert seq_range([3, 1, 2]) == (1, 3)  # any order: the rows are the same
    assert seq_range([1, 3]) is None  # seq 2 would be written too
    assert seq_range([1, 2, 2]) is None  # three seqs, two rows


@pytest.mark.parametrize("grouped", [True, False], ids=["json_each", "no-json1"])
async def test_starts_and_successes_of_a_range_leave_the_rows_around_it_alone(tmp_path, grouped):
    """A reservation of consecutive seqs is written over their range; a row just outside it, or in
    the gap of one that is not a range, keeps what it had."""
    store, system = await open_store(tmp_path / "jobs.db")
    store._grouped = grouped
    try:
        jobs = [mk(i) for i in range(1, 7)]
        await store.insert(jobs)
        run = [jobs[1], jobs[2], jobs[3]]  # seqs 2-4: a range
        gap = [jobs[0], jobs[5]]  # seqs 1 and 6: not one (2-5 lie between)
        for j in run + gap:
            j.state, j.started, j.attempt, j.target = JobState.ACTIVE, 5.0, 1, "n"
        await store.start_many(run)
        await store.start_many(gap)
        states = {j.id: store.get(j.id).state for j in jobs}
        assert states == {"job-1": JobState.ACTIVE, "job-2": JobState.ACTIVE, "job-3": JobState.ACTIVE,
                          "job-4": JobState.ACTIVE, "job-5": JobState.QUEUED, "job-6": JobState.ACTIVE}
        for j in run:
            j.state, j.finished = JobState.SUCCEEDED, 9.0
        await store.succeed_many(run[:2])  # seqs 2-3
        got = [(x.state, x.started, x.finished) for x in (store.get(j.id) for j in jobs)]
        assert got == [(JobState.ACTIVE, 5.0, None), (JobState.SUCCEEDED, 5.0, 9.0), (JobState.SUCCEEDED, 5.0, 9.0),
                       (JobState.ACTIVE, 5.0, None), (JobState.QUEUED, None, None), (JobState.ACTIVE, 5.0, None)]
    finally:
        await system.stop_all()
