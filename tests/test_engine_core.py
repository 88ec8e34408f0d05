"""The engine core, driven by events with a fake clock: every test compares exact instruction
lists (as dask's test_worker_state_machine does). No store, no loop, no sleeps."""

from __future__ import annotations

import math
from typing import Any

import pytest

from jobmesh.config import QueueConfig
from jobmesh.engine import events as ev
from jobmesh.engine import instructions as ins
from jobmesh.engine.core import DEFER_AFTER, EngineCore, Run
from jobmesh.errors import Conflict
from jobmesh.job import InvalidTransition, Job, JobState
from jobmesh.queues.core import Outcome
from jobmesh.transfer.protocol import JobSpec, ResultItem
from jobmesh.job import ResultKind

Q, A, S = JobState.QUEUED, JobState.ACTIVE, JobState.SUCCEEDED
F = ins.JobFacts.of


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Reply:
    """Stands for the requester's future (the core only passes it on)."""

    def __init__(self, name: str = "reply") -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


def job(i: int, topic: str = "t/a", queue: str = "main", origin: str = "n", **kw: Any) -> Job:
    j = Job(id=f"j{i}", topic=topic, properties={}, queue=queue, origin=origin, created=999.0, **kw)
    j.seq = i
    return j


def horizon(q: QueueConfig, clock: Clock) -> float:
    """What a refill reads up to: jobs due later wait on disk (an ordered queue defers nothing)."""
    return math.inf if q.type == "ordered" else clock.t + DEFER_AFTER


def engine(capacity: int = 4, queues: list[QueueConfig] | None = None, runnable: Any = None,
           clock: Clock | None = None, open_: bool = True) -> tuple[EngineCore, Clock]:
    clock = clock or Clock()
    qs = queues or [QueueConfig(name="main", max_parallel=10, retry_delay=2.0, retries=2)]
    core = EngineCore("n", qs, capacity, runnable or (lambda topic: True), clock, cores=2)
    if open_:
        order = sorted(qs, key=lambda q: -q.priority)  # reads in the order slots are given
        assert core.handle(ev.Restored([])) == [ins.ReadReady(q.name, 0, 1024, horizon(q, clock)) for q in order]
        for q in qs:
            assert core.handle(ev.ReadyRead(q.name, 0, 1024, [])) == []
    return core, clock


def commit(out: list[Any]) -> ins.Commit:
    [c] = [i for i in out if isinstance(i, ins.Commit)]
    return c


def add_and_reserve(core: EngineCore, *jobs: Job) -> list[Run]:
    """JobsAdded and its commit: returns the runs reserved for them."""
    core.handle(ev.JobsAdded(list(jobs), ["{}"] * len(jobs)))
    out = core.handle(ev.InsertsCommitted(list(jobs)))
    return commit(out).done[0].runs


# --------------------------------------------------------------------------- a job's local path


def test_a_job_from_add_to_succeeded_is_these_events_and_instructions() -> None:
    core, clock = engine()
    j = job(1)
    reply = Reply()
    assert core.handle(ev.JobsAdded([j], ["{}"], reply)) == [
        ins.Commit(inserts=[j], texts=["{}"], done=[ev.InsertsCommitted([j], reply)],
                   failed=[ev.InsertsNotCommitted(reply, "")]),
    ]
    as_added = j.snapshot()
    out = core.handle(ev.InsertsCommitted([j], reply))
    run = core.running["j1"]
    assert out == [ins.Reply(reply, [as_added]),  # the job as added (a copy: the core keeps j)
                   ins.Commit(starts=[j], done=[ev.StartsCommitted([run])], failed=[ev.StartsFailed([run], "")])]
    assert out[0].value[0] is not j and out[0].value[0].state is Q
    assert (j.state, j.attempt, j.target, j.started) == (A, 1, "n", 1000.0)
    clock.t = 1000.5
    assert core.handle(ev.StartsCommitted([run])) == [
        ins.JobsStarted([(F(j), 1000.0)]),  # waiting: 1 s since it was created
        ins.Start([run]),
    ]
    clock.t = 1001.0
    out = core.handle(ev.RunsFinished([(run, Outcome("OK", "done"))]))
    assert j.state is S and j.finished == 1001.0 and j.result_message == "done"
    assert out == [ins.Commit(successes=[j], then=[ins.JobsTransitioned([(F(j), A, S, 1000.0, "OK")])])]
    assert not core.running and core.finished_total == 1


def test_an_ok_end_is_a_narrow_write_unless_the_job_changed_queue_during_its_run() -> None:
    """``successes`` write only a success's own columns, so they are used only while the rest of
    the row is as the start wrote it; a job moved to another queue meanwhile is a full write."""
    core, clock = engine(queues=[QueueConfig(name="main", max_parallel=10), QueueConfig(name="other")])
    a, b = job(1), job(2)
    ra, rb = add_and_reserve(core, a, b)
    core.handle(ev.StartsCommitted([ra, rb]))
    b.queue = "other"
    clock.t = 1001.0
    c = commit(core.handle(ev.RunsFinished([(ra, Outcome("OK")), (rb, Outcome("OK"))])))
    assert (c.successes, c.updates) == ([a], [b])
    assert a.state is S and b.state is S and a.finished == b.finished == 1001.0


def test_after_a_failed_write_a_jobs_next_ok_end_is_written_whole() -> None:
    """A commit of a job's record failed (the shell says ``WritesFailed``): its row may differ from
    the record in any column (a retry count, a delay), so its next OK end is a full write, once."""
    core, clock = engine()
    j = job(1)
    [run] = add_and_reserve(core, j)
    core.handle(ev.StartsCommitted([run]))
    clock.t = 1001.0
    c = commit(core.handle(ev.RunsFinished([(run, Outcome("FAILED", "boom"))])))
    assert c.updates == [j] and j.retry_count == 1
    assert core.handle(ev.WritesFailed(["j1"])) == []  # that commit failed: the row still says ACTIVE, 0 retries
    clock.t = 1004.0
    [run] = commit(core.handle(ev.Tick())).done[0].runs
    core.handle(ev.StartsCommitted([run]))
    c = commit(core.handle(ev.RunsFinished([(run, Outcome("OK"))])))
    assert (c.successes, c.updates) == ([], [j]) and not core.unsynced


def test_a_failed_write_is_forgotten_by_any_whole_write_of_the_job_not_only_its_next_ok_end() -> None:
    """Any full write puts the row right (the stop of a queued job here), so the job leaves
    ``unsynced`` with it: the set does not keep the ids of jobs that never run here again; a
    write that failed too brings it back."""
    core, clock = engine(runnable=lambda topic: False)  # no consumer: it stays QUEUED
    j = job(1)
    core.handle(ev.JobsAdded([j], ["{}"]))
    core.handle(ev.InsertsCommitted([j]))
    core.handle(ev.WritesFailed(["j1"]))
    assert core.unsynced == {"j1"} and j.state is Q
    c = commit(core.handle(ev.StopRequested("j1", JobState.STOPPED, stored=job(1))))  # the shell read its row
    assert c.updates == [j] and j.state is JobState.STOPPED  # the window's record, written whole
    assert not core.unsynced
    core.handle(ev.WritesFailed(["j1"]))  # ... unless that write failed too
    assert core.unsynced == {"j1"}


def test_an_add_answers_copies_of_the_jobs_kept_and_the_jobs_let_go_as_they_are() -> None:
    """Only a window's worth is copied: jobs that wait on disk (the window is full, or older
    jobs wait in the store) are handed to the adder as they are; a failed commit fails the add."""
    core, clock = engine(capacity=0)
    core.queues["main"].window_size = 2
    jobs = [job(i) for i in (1, 2, 3)]
    reply = Reply()
    core.handle(ev.JobsAdded(jobs, ["{}"] * 3, reply))
    [answer] = [i for i in core.handle(ev.InsertsCommitted(jobs, reply)) if isinstance(i, ins.Reply)]
    assert answer.value == jobs
    assert [a is j for a, j in zip(answer.value, jobs)] == [False, False, True]  # j3 waits on disk
    assert [j.id for j in core.queues["main"].window.view()] == ["j1", "j2"]
    [failed] = core.handle(ev.InsertsNotCommitted(reply, "disk full"))
    assert failed.reply is reply and failed.value is None and "disk full" in str(failed.error)


def test_load_counts_a_slot_active_once_its_start_is_durable() -> None:
    """A reserved slot whose start is being written is still QUEUED in the job manager's count;
    load() must not count it as active too (the offloader saw 91 of 90 jobs and moved one too many)."""
    core, clock = engine()
    [run] = add_and_reserve(core, job(1))
    assert core.load()["active"] == 0 and core.free_slots() == 3  # reserved: the slot is taken, not active
    core.handle(ev.StartsCommitted([run]))
    assert core.load()["active"] == 1
    core.handle(ev.RunsFinished([(run, Outcome("OK"))]))
    assert core.load()["active"] == 0 and core.free_slots() == 4


def test_a_failure_retries_after_its_delay_then_gives_up() -> None:
    core, clock = engine()
    j = job(1, max_retries=2)  # the queue's retries, set on the job when it was added
    [run] = add_and_reserve(core, j)
    core.handle(ev.StartsCommitted([run]))
    out = core.handle(ev.RunsFinished([(run, Outcome("FAILED", "boom", log=("Traceback (most recent call last):\nX",)))]))
    assert (j.state, j.retry_count, j.not_before) == (Q, 1, 1002.0)
    assert "attempt 1 failed" in j.progress.log[-1] and "retry 1/2" in j.progress.log[-1]
    assert out == [ins.SetTimer(1002.0),
                   ins.Commit(updates=[j], then=[ins.JobsTransitioned([(F(j, True), A, Q, 0.0, "FAILED")])])]
    clock.t = 1002.0
    out = core.handle(ev.Tick())
    run2 = core.running["j1"]
    assert out == [ins.Commit(starts=[j], done=[ev.StartsCommitted([run2])], failed=[ev.StartsFailed([run2], "")])]
    assert j.attempt == 2
    core.handle(ev.StartsCommitted([run2]))
    core.handle(ev.RunsFinished([(run2, Outcome("FAILED", "boom"))]))
    clock.t = 1004.0
    [run3] = commit(core.handle(ev.Tick())).done[0].runs
    core.handle(ev.StartsCommitted([run3]))
    out = core.handle(ev.RunsFinished([(run3, Outcome("FAILED", "boom"))]))
    assert j.state is JobState.GIVEN_UP and j.retry_count == 2
    assert out[0] == ins.Log("warning", "job given up", {"job_id": "j1", "topic": "t/a", "retries": 2, "reason": "boom"})


def test_every_path_goes_through_one_transition_table_and_a_refusal_tells_the_story() -> None:
    core, _ = engine()
    j = job(1)
    [run] = add_and_reserve(core, j)
    core.handle(ev.StartsCommitted([run]))
    core.handle(ev.RunsFinished([(run, Outcome("OK"))]))
    with pytest.raises(InvalidTransition) as e:  # a SUCCEEDED job is retried through the same table
        core.story.transition(j, Q, "a bug", 1001.0)
    assert e.value.job_id == "j1" and (e.value.old, e.value.new) == (S, Q)
    assert [line[2:] for line in e.value.story] == [
        ("QUEUED", "QUEUED", "added"), ("QUEUED", "ACTIVE", "reserved a slot"), ("ACTIVE", "SUCCEEDED", "run ended: OK")]
    assert "its recent story" in str(e.value)


def test_a_reported_run_is_never_reported_twice() -> None:
    core, _ = engine()
    j = job(1)
    [run] = add_and_reserve(core, j)
    core.handle(ev.StartsCommitted([run]))
    core.handle(ev.RunsFinished([(run, Outcome("OK"))]))
    assert core.handle(ev.RunsFinished([(run, Outcome("FAILED"))])) == []


# --------------------------------------------------------------------------- slots


def test_capacity_and_max_parallel_bound_the_reservations_higher_priority_first() -> None:
    queues = [QueueConfig(name="main", max_parallel=10), QueueConfig(name="hi", topics=["hi/*"], priority=5, max_parallel=2)]
    core, _ = engine(capacity=3, queues=queues)
    low = [job(i) for i in range(1, 4)]
    high = [job(i, topic="hi/x", queue="hi") for i in range(4, 8)]
    core.handle(ev.JobsAdded(low + high, ["{}"] * 7))
    out = core.handle(ev.InsertsCommitted(low + high))
    # two of the high-priority queue (its max_parallel), then one of main: three slots
    assert commit(out).starts == [high[0], high[1], low[0]]
    assert core.free_slots() == 0
    runs = commit(out).done[0].runs
    core.handle(ev.StartsCommitted(runs))
    out = core.handle(ev.RunsFinished([(runs[0], Outcome("OK"))]))
    assert commit(out).starts == [high[2]]  # the freed slot goes to "hi" again


def test_an_unrunnable_topic_is_parked_until_consumers_change() -> None:
    have: set[str] = set()
    core, _ = engine(runnable=lambda t: t in have)
    j = job(1)
    core.handle(ev.JobsAdded([j], ["{}"]))
    assert core.handle(ev.InsertsCommitted([j])) == []  # parked: no consumer
    have.add("t/a")
    out = core.handle(ev.ConsumersChanged())
    assert commit(out).starts == [j]


def test_a_window_refills_from_the_store_in_order() -> None:
    core, clock = engine(capacity=1, open_=False)
    assert core.handle(ev.Restored([])) == [ins.ReadReady("main", 0, 1024, clock.t + DEFER_AFTER)]
    rows = [job(1), job(2)]
    out = core.handle(ev.ReadyRead("main", 0, 1024, rows))
    assert commit(out).starts == [rows[0]]
    assert core.queues["main"].store_has_more is False and core.queues["main"].last_seq == 2
    late = job(3)
    core.handle(ev.InsertsCommitted([late]))  # nothing older in the store: straight into the window
    assert "j3" in core.queues["main"].window


# --------------------------------------------------------------------------- stop, remove, retry


def test_stop_a_queued_job_is_recorded_then_answered() -> None:
    core, _ = engine(runnable=lambda t: False)
    j = job(1)
    core.handle(ev.JobsAdded([j], ["{}"]))
    core.handle(ev.InsertsCommitted([j]))
    reply = Reply()
    out = core.handle(ev.StopRequested("j1", JobState.STOPPED, reply, stored=job(1)))
    assert j.state is JobState.STOPPED and j.finished == 1000.0
    snap = j.snapshot()
    assert out == [ins.Commit(updates=[j], then=[ins.JobsTransitioned([(F(j), Q, JobState.STOPPED, None, "STOPPED")]),
                                                  ins.Reply(reply, snap)])]


def test_stop_a_running_job_asks_its_consumer_and_its_outcome_records_it() -> None:
    core, _ = engine()
    j = job(1)
    [run] = add_and_reserve(core, j)
    core.handle(ev.StartsCommitted([run]))
    reply = Reply()
    assert core.handle(ev.StopRequested("j1", JobState.DROPPED, reply)) == [ins.StopRun(run), ins.Reply(reply, j.snapshot())]
    assert run.stopped()
    out = core.handle(ev.RunsFinished([(run, Outcome("STOPPED", stop_state=JobState.DROPPED))]))
    assert j.state is JobState.DROPPED
    assert commit(out).then == [ins.JobsTransitioned([(F(j), A, JobState.DROPPED, 0.0, "STOPPED")])]


def test_stop_before_the_start_is_durable_means_the_consumer_never_starts() -> None:
    core, _ = engine()
    j = job(1)
    [run] = add_and_reserve(core, j)
    core.handle(ev.StopRequested("j1", JobState.STOPPED, None))
    out = core.handle(ev.StartsCommitted([run]))
    assert not any(isinstance(i, ins.Start) for i in out) and j.state is JobState.STOPPED


def test_retry_puts_a_final_job_back_and_refuses_a_succeeded_one() -> None:
    core, _ = engine(runnable=lambda t: False)
    stored = job(1, state=JobState.GIVEN_UP, retry_count=2, result_message="boom", finished=5.0)
    reply = Reply()
    out = core.handle(ev.RetryRequested("j1", reply, stored))
    assert (stored.state, stored.retry_count, stored.finished, stored.result_message) == (Q, 0, None, None)
    snap = stored.snapshot()
    assert out == [ins.Commit(updates=[stored], then=[ins.JobsTransitioned([(F(stored), JobState.GIVEN_UP, Q, None, "RETRY")]),
                                                       ins.Reply(reply, snap)])]
    done = job(2, state=S)
    [r] = core.handle(ev.RetryRequested("j2", reply, done))
    assert isinstance(r, ins.Reply) and isinstance(r.error, Conflict)


def test_remove_deletes_a_final_job() -> None:
    core, _ = engine()
    stored = job(1, state=JobState.ERROR)
    reply = Reply()
    assert core.handle(ev.RemoveRequested("j1", reply, stored)) == [ins.Commit(deletes=[stored],
                                                                               then=[ins.Reply(reply, None)])]


# --------------------------------------------------------------------------- recovery and shutdown


def test_recovery_counts_an_interrupted_run_as_a_retry_by_the_same_rule() -> None:
    core, _ = engine(open_=False)
    a = job(1, state=A, max_retries=3, retry_count=0)
    b = job(2, state=A, max_retries=3, retry_count=3)
    c = job(3, state=A, max_retries=-1, retry_count=99)
    copy = job(4, state=A, origin="other", retry_count=1)
    out = core.handle(ev.Recovered([a, b, c, copy]))
    assert (a.state, a.retry_count) == (Q, 1)
    assert (b.state, b.finished, b.result_message) == (JobState.GIVEN_UP, 1000.0, "interrupted by a node crash; no retries left")
    assert (c.state, c.retry_count) == (Q, 100)
    assert (copy.state, copy.retry_count) == (Q, 1)  # its origin counts its retries
    assert out == [ins.Log("warning", "recovered jobs interrupted by a crash", {"jobs": 4, "given_up": 1}),
                   ins.Commit(updates=[a, b, c, copy])]


def test_shutdown_starts_nothing_and_interrupts_what_runs() -> None:
    core, _ = engine()
    j1, j2 = job(1), job(2)
    runs = add_and_reserve(core, j1, j2)
    core.handle(ev.StartsCommitted([runs[0]]))
    assert core.handle(ev.DrainStarted()) == []
    assert core.handle(ev.AbortRuns()) == [ins.CancelRun(runs[0])]
    out = core.handle(ev.StartsCommitted([runs[1]]))  # its start became durable after the drain began
    assert not any(isinstance(i, ins.Start) for i in out) and j2.state is Q and j2.retry_count == 0
    out = core.handle(ev.AbortRuns(force=True))
    assert j1.state is Q and not core.running
    assert out[0] == ins.Log("warning", "run did not end when interrupted; reported back to QUEUED, a late result "
                                        "will be ignored", {"job_id": "j1", "topic": "t/a"})


# --------------------------------------------------------------------------- the watchdog


def test_a_queued_job_missing_from_the_window_on_two_rounds_is_repaired() -> None:
    core, clock = engine(capacity=2)
    assert core.handle(ev.WatchdogDue()) == [ins.ScanReady(["main"], 256, [], clock.t)]
    assert core.handle(ev.ReadyScanned({"main": [(7, "lost", 0.0)]}, {})) == []  # a suspect
    core.handle(ev.WatchdogDue())
    assert core.handle(ev.ReadyScanned({"main": [(7, "lost", 0.0)]}, {})) == [ins.LoadJobs(["lost"], "repair")]
    lost = Job(id="lost", topic="t/a", properties={}, origin="n", seq=7)
    out = core.handle(ev.JobsLoaded("repair", [lost]))
    assert out[:2] == [ins.Repaired("watchdog_requeue", 1), ins.Log(
        "warning", "repaired: queued jobs no queue was dispatching are back in their window (a missed transition; "
                   "please report it)", {"count": 1, "job_ids": ["lost"], "topics": ["t/a"]})]
    assert commit(out).starts == [lost]


# --------------------------------------------------------------------------- offloading: origin side


def test_a_job_offloaded_from_take_to_succeeded() -> None:
    core, clock = engine(runnable=lambda t: False)
    j = job(1)
    core.handle(ev.JobsAdded([j], ["{}"]))
    core.handle(ev.InsertsCommitted([j]))
    reply = Reply()
    [r] = core.handle(ev.SummaryRequested(reply))
    assert r == ins.Reply(reply, [("main", "t/a", 1, 1.0, False)])
    out = core.handle(ev.TakeForOffload("main", "t/a", 5, "b"))
    assert (j.attempt, j.target, j.state) == (1, "b", Q)
    assert out == [ins.Commit(handoffs=[j], done=[ev.HandoffCommitted("b", [j], 5)],
                              failed=[ev.HandoffNotCommitted("b", [j], 5, "")])]
    assert core.handle(ev.HandoffCommitted("b", [j], 5)) == [ins.OfferJobs("b", [JobSpec.of(j)], 5)]
    clock.t = 1001.0
    out = core.handle(ev.RemoteStarted("b", "j1", 1, 1000.5))
    assert j.state is A and j.started == 1000.5
    # the start and the OK result are narrow writes: the rest of the row is as the handoff left it
    assert out == [ins.Commit(starts=[j], then=[ins.JobsStarted([(F(j), 1500.0)])])]
    assert core.load()["waiting_elsewhere"] == 0
    out = core.handle(ev.RemoteResults([ev.RemoteResult("b", "j1", 1, "OK", "fine", None, 1000.5, 1000.75, ("l",))]))
    assert (j.state, j.result_message, j.progress.log, j.finished) == (S, "fine", ["l"], 1001.0)
    assert out == [ins.Commit(successes=[j], then=[ins.JobsTransitioned([(F(j), A, S, 250.0, "OK")]),
                                                    ins.ResultsRecorded([("j1", 1)], 0)],
                              failed=[ev.ResultsNotCommitted([F(j)], [("j1", 1)], "")])]
    assert not core.away
    assert core.story.of("j1")[-1] == ("j1", 1001.0, "ACTIVE", "SUCCEEDED", "result from b: OK")


def offloaded(core: EngineCore, clock: Any, j: Job) -> None:
    """``j`` added, taken for ``b`` and handed over (QUEUED there, its handoff durable)."""
    core.handle(ev.JobsAdded([j], ["{}"]))
    core.handle(ev.InsertsCommitted([j]))
    core.handle(ev.TakeForOffload("main", "t/a", 5, "b"))
    core.handle(ev.HandoffCommitted("b", [j], 5))


def test_a_remote_ok_result_that_overtook_its_start_message_is_a_narrow_write_with_its_start() -> None:
    core, clock = engine(runnable=lambda t: False)
    j = job(1)
    offloaded(core, clock, j)
    clock.t = 1001.0
    out = core.handle(ev.RemoteResults([ev.RemoteResult("b", "j1", 1, "OK", None, None, 1000.5, 1000.75)]))
    assert (j.state, j.started, j.finished) == (S, 1000.5, 1001.0)
    c = commit(out)
    # the success row carries the start time; target and attempt are as the handoff wrote them
    assert (c.updates, c.successes, c.starts) == ([], [j], [])
    assert c.then[0] == ins.JobsStarted([(F(j), 1500.0)])


def test_a_failed_write_of_a_remote_start_makes_the_next_writes_of_the_job_whole() -> None:
    core, clock = engine(runnable=lambda t: False)
    j = job(1)
    offloaded(core, clock, j)
    c = commit(core.handle(ev.RemoteStarted("b", "j1", 1, 1000.5)))
    assert c.starts == [j]
    core.handle(ev.WritesFailed(["j1"]))  # what the shell feeds when that commit failed
    c = commit(core.handle(ev.RemoteResults([ev.RemoteResult("b", "j1", 1, "OK")])))
    assert (c.updates, c.successes) == ([j], []) and "j1" not in core.unsynced
    j2 = job(2)
    offloaded(core, clock, j2)
    core.handle(ev.WritesFailed(["j2"]))  # a failed write before the start message: the start goes whole
    c = commit(core.handle(ev.RemoteStarted("b", "j2", 1, 1000.5)))
    assert (c.updates, c.starts) == ([j2], []) and "j2" not in core.unsynced
    c = commit(core.handle(ev.RemoteResults([ev.RemoteResult("b", "j2", 1, "OK")])))
    assert (c.updates, c.successes) == ([], [j2])


def test_a_remote_ok_result_of_a_job_whose_queue_is_gone_moves_it_and_writes_the_whole_row() -> None:
    """Restored at its origin with a queue the configuration no longer has (the start-up re-home
    moves only QUEUED rows): the result records it in the queue that matches now, as decide() did."""
    core, clock = engine(runnable=lambda t: False)
    j = job(1, queue="gone", state=A, target="b", attempt=1, started=1000.0)
    core.handle(ev.Restored([j]))
    c = commit(core.handle(ev.RemoteResults([ev.RemoteResult("b", "j1", 1, "OK")])))
    assert (j.state, j.queue) == (S, "main") and (c.updates, c.successes) == ([j], [])


def test_a_remote_ok_result_of_a_job_asked_to_stop_takes_the_decision_path() -> None:
    core, clock = engine(runnable=lambda t: False)
    j = job(1)
    offloaded(core, clock, j)
    core.handle(ev.RemoteStarted("b", "j1", 1, 1000.5))
    core.handle(ev.StopRequested("j1", JobState.STOPPED))
    assert core.stop_wanted == {"j1": JobState.STOPPED}  # the stop is on its way to b
    c = commit(core.handle(ev.RemoteResults([ev.RemoteResult("b", "j1", 1, "OK", "done anyway")])))
    assert j.state is S and c.updates == [j] and "j1" not in core.stop_wanted  # it ended OK before the stop


def test_a_stale_remote_result_is_acknowledged_never_recorded() -> None:
    core, _ = engine()
    assert core.handle(ev.RemoteResults([ev.RemoteResult("b", "gone", 3, "OK")])) == [
        ins.Log("info", "result not applied", {"job_id": "gone", "attempt": 3, "peer": "b", "reason": "unknown job"}),
        ins.Commit(then=[ins.ResultsRecorded([("gone", 3)], 1)], failed=[ev.ResultsNotCommitted([], [("gone", 3)], "")])]


def test_a_failed_remote_run_is_decided_here_and_a_target_that_left_gives_its_jobs_back() -> None:
    core, _ = engine(runnable=lambda t: False)
    j1, j2 = job(1), job(2)
    core.handle(ev.JobsAdded([j1, j2], ["{}", "{}"]))
    core.handle(ev.InsertsCommitted([j1, j2]))
    core.handle(ev.TakeForOffload("main", "t/a", 2, "b"))
    core.handle(ev.HandoffCommitted("b", [j1, j2], 2))
    core.handle(ev.RemoteStarted("b", "j1", 1, 1000.0))
    out = core.handle(ev.RemoteResults([ev.RemoteResult("b", "j1", 1, "FAILED", "boom")]))
    assert (j1.state, j1.retry_count, j1.target) == (Q, 1, None) and "j1" in core.queues["main"].window
    out = core.handle(ev.HandoffReturned([("j2", 1)], "target left the topology", "b"))
    assert j2.target is None and "j2" in core.queues["main"].window
    assert out == [ins.Log("info", "jobs back home", {"jobs": 1, "peer": "b", "reason": "target left the topology"}),
                   ins.Commit(updates=[j2])]


def test_a_failed_commit_of_a_remote_failure_retried_here_leaves_one_record() -> None:
    """The FAILED result sends the job back to QUEUED and the same burst reserves it here; the
    commit fails (disk full): the store still has it at b, so the job read back is its one record
    (away, the target resends), not that and the reserved one run again here too."""
    here = [False]  # no consumer here until the job is at b
    core, clock = engine(runnable=lambda t: here[0])
    j = job(1)
    core.handle(ev.JobsAdded([j], ["{}"]))
    core.handle(ev.InsertsCommitted([j]))
    core.handle(ev.TakeForOffload("main", "t/a", 1, "b"))
    core.handle(ev.HandoffCommitted("b", [j], 1))
    core.handle(ev.RemoteStarted("b", "j1", 1, 1000.0))
    here[0] = True
    core.handle(ev.ConsumersChanged())
    c = commit(core.handle(ev.RemoteResults([ev.RemoteResult("b", "j1", 1, "FAILED", "boom", 0.0)])))
    assert j.id in core.running and c.starts == [j]  # retried at once, here
    core.handle(ev.WritesFailed(["j1"]))
    for failed in c.failed:  # what the shell feeds when the commit failed
        failed.error = "disk full"
    out = core.handle_burst(c.failed)
    assert ins.LoadJobs(["j1"], "away") in out and not core.running
    stored = job(1, state=A, target="b", attempt=1, started=1000.0)
    core.handle(ev.JobsLoaded("away", [stored]))
    assert core.away["j1"] is stored and "j1" not in core.queues["main"].window and not core.running
    assert core.free_slots() == 4 and core.queues["main"].active == 0


def test_a_failed_handoff_commit_leaves_the_attempt_as_the_row_has_it() -> None:
    core, _ = engine(runnable=lambda t: False)
    j = job(1)
    core.handle(ev.JobsAdded([j], ["{}"]))
    core.handle(ev.InsertsCommitted([j]))
    c = commit(core.handle(ev.TakeForOffload("main", "t/a", 1, "b")))
    assert (j.attempt, j.target) == (1, "b")
    [failed] = c.failed
    core.handle(failed)
    assert (j.attempt, j.target, j.state) == (0, None, Q) and "j1" in core.queues["main"].window
    core.handle(ev.TakeForOffload("main", "t/a", 1, "c"))
    assert (j.attempt, j.target) == (1, "c")  # the next handoff is attempt 1 again, as the row had 0


def test_stop_of_a_job_at_another_node() -> None:
    core, _ = engine(runnable=lambda t: False)
    j1, j2 = job(1), job(2)
    core.handle(ev.JobsAdded([j1, j2], ["{}", "{}"]))
    core.handle(ev.InsertsCommitted([j1, j2]))
    core.handle(ev.TakeForOffload("main", "t/a", 2, "b"))
    core.handle(ev.HandoffCommitted("b", [j1, j2], 2))
    core.handle(ev.RemoteStarted("b", "j2", 1, 1000.0))
    out = core.handle(ev.StopRequested("j1", JobState.STOPPED, None))  # not started there: recorded now
    assert out[0] == ins.StopRemote("j1", withdraw=True) and j1.state is JobState.STOPPED
    out = core.handle(ev.StopRequested("j2", JobState.STOPPED, None))  # running there: its result records it
    assert out == [ins.StopRemote("j2")] and j2.state is A
    core.handle(ev.RemoteResults([ev.RemoteResult("b", "j2", 1, "CANCEL", "stopped")]))
    assert j2.state is JobState.STOPPED


# --------------------------------------------------------------------------- offloading: target side


def spec(i: int, attempt: int = 1) -> JobSpec:
    return JobSpec(f"c{i}", attempt, "t/a", {"n": i}, origin="o", created=900.0)


def test_a_copy_from_accepted_to_its_result_in_the_outbox() -> None:
    core, clock = engine()
    out = core.handle(ev.CopiesAccepted("o", [spec(1)], first_seq=50))
    copy = core.copies["c1"]
    assert (copy.origin, copy.attempt, copy.seq, copy.state) == ("o", 1, 50, Q)
    assert out == [ins.Commit(copies=[("o", copy)], done=[ev.CopiesCommitted("o", [copy])],
                              failed=[ev.CopiesNotCommitted("o", [copy], "")])]
    queued = F(copy)
    out = core.handle(ev.CopiesCommitted("o", [copy]))
    run = core.running["c1"]
    assert out[:2] == [ins.CopiesArrived([queued]), ins.CopiesRecorded("o", [("c1", 1)])]
    assert commit(out).starts == [copy] and copy.attempt == 1  # a copy keeps its origin's attempt
    out = core.handle(ev.StartsCommitted([run]))
    assert out == [ins.JobsStarted([(F(copy), 100000.0)]), ins.CopiesStarted([("c1", 1, 1000.0)]), ins.Start([run])]
    clock.t = 1002.0
    out = core.handle(ev.RunsFinished([(run, Outcome("OK", "made"))]))
    item = ResultItem("c1", 1, ResultKind.OK, "made", None, 1000.0, 1002.0, ())
    assert out == [ins.CopiesEnded([("c1", 1)]),  # at once: no start announced while the commit runs
                   ins.Commit(outbox=[(copy, item)], then=[ins.CopyResults([item], []),
                                                           ins.CopiesLeft([(F(copy), A)])])]
    assert not core.copies


def test_two_attempts_of_a_copy_in_one_batch_write_one_row_the_last() -> None:
    core, _ = engine()
    out = core.handle(ev.CopiesAccepted("o", [spec(1, attempt=1), spec(2), spec(1, attempt=2)], first_seq=50))
    c1, c2 = core.copies["c1"], core.copies["c2"]
    assert (c1.attempt, c1.seq) == (2, 52)
    assert out == [ins.Commit(copies=[("o", c2), ("o", c1)], done=[ev.CopiesCommitted("o", [c2, c1])],
                              failed=[ev.CopiesNotCommitted("o", [c2, c1], "")])]
    assert core.committing == {"c1", "c2"}


def test_a_newer_copy_waits_for_the_superseded_run_whose_outcome_is_dropped() -> None:
    core, _ = engine()
    core.handle(ev.CopiesAccepted("o", [spec(1, attempt=1)], first_seq=50))
    old = core.copies["c1"]
    out = core.handle(ev.CopiesCommitted("o", [old]))
    run = core.running["c1"]
    core.handle(ev.StartsCommitted([run]))
    out = core.handle(ev.CopiesAccepted("o", [spec(1, attempt=2)], first_seq=51))
    assert out[0] == ins.StopRun(run) and run.superseded
    new = core.copies["c1"]
    core.handle(ev.CopiesCommitted("o", [new]))
    assert core.after_run == {"c1": new}  # one run per job id at a time
    out = core.handle(ev.RunsFinished([(run, Outcome("STOPPED", stop_state=JobState.STOPPED))]))
    assert out[0] == ins.Log("info", "run of a superseded copy ended; not reported", {"job_id": "c1"})
    c = commit(out)
    assert c.deletes == [old] and c.starts == [new] and not c.outbox  # the newer copy runs now


def test_a_forgotten_queued_copy_goes_and_a_stopped_one_reports_cancel() -> None:
    core, _ = engine(runnable=lambda t: False)
    core.handle(ev.CopiesAccepted("o", [spec(1), spec(2)], first_seq=50))
    c1, c2 = core.copies["c1"], core.copies["c2"]
    core.handle(ev.CopiesCommitted("o", [c1, c2]))
    out = core.handle(ev.CopiesForgotten([("c1", 1)], "acknowledged", held=[("h9", "t/a")]))
    assert "c1" not in core.copies and "c1" not in core.queues["main"].window
    assert commit(out).forget == [("c1", 1)] and len(commit(out).then[0].items) == 2
    out = core.handle(ev.CopyStopRequested("c2", 1, "stopped by origin"))
    [(job_, item)] = commit(out).outbox
    assert job_ is c2 and item.kind is ResultKind.CANCEL and item.message == "stopped"


# --------------------------------------------------------------------------- issue 12 on the engine


def test_a_job_due_after_the_horizon_waits_on_disk_read_back_in_due_order_and_the_watchdog_leaves_it() -> None:
    core, clock = engine(capacity=2)
    far = [job(1, not_before=1100.0), job(2, not_before=1100.0), job(3, not_before=1100.0)]
    core.handle(ev.JobsAdded(far, ["{}"] * 3))
    assert core.handle(ev.InsertsCommitted(far)) == []  # due after now + 60 s: not in the window
    assert len(core.queues["main"].window) == 0 and core.queues["main"].last_seq == 3
    # the watchdog: rows due now only, and nothing past the due cursor is a suspect
    assert core.handle(ev.WatchdogDue()) == [ins.ScanReady(["main"], 256, [], 1000.0)]
    clock.t = 1045.0  # the horizon moved DUE_SCAN past the cursor: the next round reads what comes due
    out = core.handle(ev.WatchdogDue())
    assert out == [ins.ReadDue("main", (1060.0, 0), 1105.0, 1024), ins.ScanReady(["main"], 256, [], 1045.0)]
    out = core.handle(ev.DueRead("main", (1060.0, 0), 1105.0, 2, far[:2]))  # a small window: two at a time
    assert out == [ins.ReadDue("main", (1100.0, 2), 1105.0, 1024), ins.SetTimer(1100.0)]  # reads on
    assert core.queues["main"].due_cursor == (1100.0, 2)
    # due now, not read yet (same due time, a higher seq): waiting by design, never repaired
    clock.t = 1101.0
    for _ in range(3):
        core.handle(ev.WatchdogDue())
        assert core.handle(ev.ReadyScanned({"main": [(3, "j3", 1100.0)]}, {})) == []
    out = core.handle(ev.DueRead("main", (1100.0, 2), 1105.0, 1024, far[2:]))
    assert core.queues["main"].due_cursor == (1105.0, 0) and "j3" in core.queues["main"].window


def test_an_ordered_queue_defers_nothing() -> None:
    core, clock = engine(queues=[QueueConfig(name="main", type="ordered")])
    j = job(1, not_before=5000.0)
    core.handle(ev.JobsAdded([j], ["{}"]))
    assert core.handle(ev.InsertsCommitted([j])) == [ins.SetTimer(5000.0)]  # its delayed head holds the line
    assert "j1" in core.queues["main"].window


def test_a_run_carries_its_time_limits_and_a_copy_its_options() -> None:
    core, clock = engine(queues=[QueueConfig(name="main", max_parallel=4, timeout=9.0)])
    [run] = add_and_reserve(core, job(1, timeout=2.5))
    assert (run.time_limit, run.queue_timeout) == (2.5, 9.0)  # the runner adds the consumer's between them
    core.handle(ev.CopiesAccepted("o", [JobSpec("c1", 1, "t/a", {}, origin="o", timeout=4.0, priority=3)], first_seq=9))
    assert (core.copies["c1"].timeout, core.copies["c1"].priority) == (4.0, 3)


def test_a_result_is_recorded_locally_and_travels_back_from_a_copy() -> None:
    core, clock = engine()
    [run] = add_and_reserve(core, job(1))
    core.handle(ev.StartsCommitted([run]))
    core.handle(ev.RunsFinished([(run, Outcome("OK", result=[1, "two"]))]))
    assert run.job.result == [1, "two"]
    core.handle(ev.CopiesAccepted("o", [spec(5)], first_seq=50))
    out = core.handle(ev.CopiesCommitted("o", [core.copies["c5"]]))
    copy_run = core.running["c5"]
    core.handle(ev.StartsCommitted([copy_run]))
    out = core.handle(ev.RunsFinished([(copy_run, Outcome("OK", result={"n": 1}))]))
    [(_, item)] = commit(out).outbox
    assert item.result == {"n": 1}


# --------------------------------------------------------------------------- job payload (issue 14)

P_IN = {"in": {"id": "sha256:" + "a" * 64, "size": 5}}
P_OUT = {"out": {"id": "sha256:" + "b" * 64, "size": 7}}


def test_the_offloader_places_named_jobs_and_jobs_kept_home_are_not_taken() -> None:
    core, _ = engine(runnable=lambda t: False)
    js = [job(i) for i in range(1, 5)]
    core.handle(ev.JobsAdded(js, ["{}"] * 4))
    core.handle(ev.InsertsCommitted(js))
    reply = Reply()
    assert core.handle(ev.CandidatesRequested("main", "t/a", 3, frozenset({"j4"}), reply)) == [
        ins.Reply(reply, ["j3", "j2", "j1"])]  # newest first, none kept home
    assert core.handle(ev.CandidatesRequested("main", "t/b", 3, frozenset(), reply)) == [ins.Reply(reply, [])]
    out = core.handle(ev.TakeForOffload("main", "t/a", 2, "b", ("j1", "j3", "j9")))  # j9: gone meanwhile
    j1, j2, j3, j4 = js
    assert commit(out).handoffs == [j1, j3] and (j1.target, j3.target, j2.target) == ("b", "b", None)
    out = core.handle(ev.TakeForOffload("main", "t/a", 5, "c", keep=frozenset({"j4"})))
    assert commit(out).handoffs == [j2] and j4.target is None and "j4" in core.queues["main"].window


def test_a_copys_input_references_and_a_results_outputs_are_written_with_their_rows() -> None:
    core, clock = engine()
    s = JobSpec("c1", 1, "t/a", {}, origin="o", payload=P_IN)
    out = core.handle(ev.CopiesAccepted("o", [s, spec(2)], first_seq=50))
    assert commit(out).inputs == [("c1", P_IN)]  # only the copy that has payload
    copy = core.copies["c1"]
    core.handle(ev.CopiesCommitted("o", [copy, core.copies["c2"]]))
    run = core.running["c1"]
    core.handle(ev.StartsCommitted([run]))
    out = core.handle(ev.RunsFinished([(run, Outcome("OK", output_payload=P_OUT))]))
    [(_, item)] = commit(out).outbox
    assert item.output_payload == P_OUT  # the result names the copy's outputs (they go first)
    # origin side: an OK result's outputs become the job's, in the result's commit
    core, _ = engine(runnable=lambda t: False)
    j = job(1)
    core.handle(ev.JobsAdded([j], ["{}"]))
    core.handle(ev.InsertsCommitted([j]))
    core.handle(ev.TakeForOffload("main", "t/a", 1, "b"))
    core.handle(ev.HandoffCommitted("b", [j], 1))
    out = core.handle(ev.RemoteResults([ev.RemoteResult("b", "j1", 1, "OK", output_payload=P_OUT)]))
    assert commit(out).outputs == [("j1", 1, P_OUT)] and j.state is S
    out = core.handle(ev.RemoteResults([ev.RemoteResult("b", "j1", 1, "OK", output_payload=P_OUT)]))
    assert commit(out).outputs == []  # a stale result changes nothing, its outputs neither


def test_a_burst_of_adds_is_one_commit_and_one_pump() -> None:
    core, _ = engine(capacity=2)
    a, b, c = job(1), job(2), job(3)
    out = core.handle_burst([ev.JobsAdded([a], ['{"a": 1}']), ev.JobsAdded([b, c], ["{}", "{}"])])
    assert out == [ins.Commit(inserts=[a, b, c], texts=['{"a": 1}', "{}", "{}"],
                              done=[ev.InsertsCommitted([a]), ev.InsertsCommitted([b, c])])]
    out = core.handle_burst([ev.InsertsCommitted([a]), ev.InsertsCommitted([b, c])])
    [c1] = [i for i in out if isinstance(i, ins.Commit)]
    assert c1.starts == [a, b] and len(core.running) == 2  # one pump for both: two slots, two starts
    assert [line[2:] for line in core.story.of("j3")] == [("QUEUED", "QUEUED", "added")]


def test_two_attempts_of_a_copy_in_one_burst_write_one_row_the_last() -> None:
    core, _ = engine()
    out = core.handle_burst([ev.CopiesAccepted("o", [spec(1, attempt=1)], first_seq=50),
                             ev.CopiesAccepted("o", [spec(1, attempt=2), spec(2)], first_seq=51)])
    c1, c2 = core.copies["c1"], core.copies["c2"]
    assert c1.attempt == 2
    assert commit(out).copies == [("o", c1), ("o", c2)]  # one INSERT per id (UNIQUE jobs.id; sim seed 18)


def test_every_event_has_one_core_handler_and_every_instruction_one_actor_handler() -> None:
    """The catalogues are the contract between the core and its shell: an event type the core
    cannot handle, or an instruction the actor would fail on at run time, shows up here."""
    import inspect

    from jobmesh.engine.actor import DISPATCH
    from jobmesh.engine.core import _HANDLERS

    def declared(module: Any) -> set[type]:
        return {c for c in vars(module).values() if inspect.isclass(c) and c.__module__ == module.__name__}

    assert set(ev.EVENT_TYPES) == set(_HANDLERS)
    assert declared(ev) - set(ev.EVENT_TYPES) == {ev.RemoteResult}  # a part of RemoteResults, not an event
    assert declared(ins) - set(DISPATCH) == {ins.JobFacts}  # a part of instructions, not one
    from jobmesh.manager_inbox import _HANDLERS as MANAGER_HANDLERS

    assert set(MANAGER_HANDLERS) == set(ins.TO_MANAGER)  # what goes to the job manager, it takes
    with pytest.raises(TypeError, match="no handler"):
        core, _ = engine()
        core.handle(object())  # type: ignore[arg-type]
