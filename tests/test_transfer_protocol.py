"""The transfer protocol's pure state machine: no sockets, a fake clock, a fake network."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest

from jobmesh.job import ResultKind
from jobmesh.transfer.protocol import (
    AckItem,
    CommitAccepted,
    CommitResult,
    CommitSubmitted,
    ForgetJob,
    Handoff,
    HandoffAck,
    JobRef,
    JobSpec,
    Log,
    MarkAccepted,
    MarkStarted,
    MESSAGE_TYPES,
    OriginJobState,
    Progress,
    ProtocolConfig,
    ProtocolError,
    Reconcile,
    ReconcileReply,
    ReconcileRequest,
    ReleaseCopies,
    Repaired,
    RequeueLocal,
    Result,
    ResultAck,
    ResultItem,
    ScheduleTimer,
    Send,
    Started,
    StealRequest,
    StealRequested,
    Stop,
    StopAck,
    StopLocal,
    Submit,
    SubmitAck,
    SubmitDone,
    TargetJobState,
    TransferProtocol,
    UpdateProgress,
    VerifyQueued,
    decode_message,
)


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def spec(i: int | str, attempt: int = 1, topic: str = "demo/sleep", origin: str = "a") -> JobSpec:
    return JobSpec(id=f"job-{i}", attempt=attempt, topic=topic, properties={"n": i}, queue="main",
                   retry_count=0, max_retries=10, origin=origin, created=1.0)


def ok(job_id: str, attempt: int = 1) -> ResultItem:
    return ResultItem(job_id, attempt, ResultKind.OK, message="done", started=1.0, finished=2.0, log=("l1",))


def of(kind: type, instructions: list[Any]) -> list[Any]:
    return [i for i in instructions if isinstance(i, kind)]


def sends(instructions: list[Any], msg_type: type | None = None) -> list[Send]:
    return [i for i in instructions if isinstance(i, Send) and (msg_type is None or isinstance(i.message, msg_type))]


def roundtrip(msg: Any) -> Any:
    """What the other side sees: encoded to msgpack and decoded again."""
    body = msgpack.unpackb(msgpack.packb(msg.to_wire(), use_bin_type=True), raw=False)
    return decode_message(msg.TYPE, body)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def a(clock: FakeClock) -> TransferProtocol:
    return TransferProtocol("a", clock)


@pytest.fixture
def b(clock: FakeClock) -> TransferProtocol:
    return TransferProtocol("b", clock)


def deliver(to: TransferProtocol, frm: str, instrs: list[Any]) -> list[Any]:
    """Deliver every Send in ``instrs`` addressed to ``to`` (through the codec)."""
    out: list[Any] = []
    for s in sends(instrs):
        if s.peer == to.node:
            out += to.receive(frm, roundtrip(s.message))
    return out


# ---------------------------------------------------------------- happy path


def test_a_copy_that_ended_is_not_announced_started_while_its_result_is_committed(b: TransferProtocol,
                                                                                     clock: FakeClock) -> None:
    deliver(b, "a", TransferProtocol("a", clock).origin.offer("b", [spec(1), spec(2)]))
    b.target.committed("a", [JobRef("job-1", 1), JobRef("job-2", 1)])
    b.target.copies_started([("job-1", 1, clock.t), ("job-2", 1, clock.t)])
    assert b.target.copies_ended([("job-1", 1), ("job-2", 7)]) == []  # job-2: another attempt
    clock.t += 1.0  # past started_delay, the outbox commit still running
    assert [s.message for s in sends(b.on_timer(), Started)] == [Started("job-2", 1, clock.t - 1.0)]


def test_happy_path_handoff_ack_start_progress_result_ack(a: TransferProtocol, b: TransferProtocol) -> None:
    out = a.origin.offer("b", [spec(1), spec(2)])
    (handoff,) = sends(out, Handoff)
    assert handoff.peer == "b" and [j.id for j in handoff.message.items] == ["job-1", "job-2"]
    assert of(ScheduleTimer, out) == [ScheduleTimer(1001.0)]
    assert a.origin.job_state("job-1") == ("b", 1, OriginJobState.OFFERED)

    tout = deliver(b, "a", out)
    (commit,) = of(CommitAccepted, tout)
    assert commit.origin == "a" and [j.id for j in commit.jobs] == ["job-1", "job-2"]
    assert not sends(tout)  # no ack before the commit
    ack_out = b.target.committed("a", [JobRef(j.id, j.attempt) for j in commit.jobs])
    (ack,) = sends(ack_out, HandoffAck)
    assert all(i.accepted for i in ack.message.items)

    oout = deliver(a, "b", ack_out)
    (marked,) = of(MarkAccepted, oout)
    assert marked.jobs == (JobRef("job-1", 1), JobRef("job-2", 1))
    assert a.origin.job_state("job-1") == ("b", 1, OriginJobState.ACCEPTED)

    oout = deliver(a, "b", b.target.started("job-1", 1, 5.0))
    assert of(MarkStarted, oout) == [MarkStarted("b", "job-1", 1, 5.0)]
    oout = deliver(a, "b", b.target.progress(Progress("job-1", 1, steps=3, step=1, log=("rendered",))))
    (up,) = of(UpdateProgress, oout)
    assert up.progress.step == 1 and up.progress.log == ("rendered",)

    rout = b.target.results_ready([ok("job-1"), ok("job-2")])
    (res,) = sends(rout, Result)
    assert len(res.message.items) == 2
    assert b.target.results_taken == 2
    # handed over again (the engine actor's restart resend): neither sent nor counted twice
    assert not sends(b.target.results_ready([ok("job-1")])) and b.target.results_taken == 2
    oout = deliver(a, "b", rout)
    commits = of(CommitResult, oout)
    assert [c.result.id for c in commits] == ["job-1", "job-2"]
    assert commits[0].result.log == ("l1",) and commits[0].result.kind is ResultKind.OK
    assert not sends(oout)  # acknowledged only after the origin committed

    ack_out = a.origin.result_committed([("job-1", 1), ("job-2", 1)])
    (rack,) = sends(ack_out, ResultAck)
    assert a.origin.in_flight() == 0
    fout = deliver(b, "a", ack_out)
    assert of(ForgetJob, fout) == [ForgetJob("job-1", 1), ForgetJob("job-2", 1)]
    assert b.target.copies() == 0 and b.target.outbox() == []
    assert a.next_deadline() is None and b.next_deadline() is None


# ---------------------------------------------------------------- losses and duplicates


def test_lost_handoff_is_resent_with_backoff(a: TransferProtocol, clock: FakeClock) -> None:
    a.origin.offer("b", [spec(1)])  # lost
    resend_times = []
    for _ in range(100):
        clock.advance(0.5)
        out = a.on_timer()
        if sends(out, Handoff):
            resend_times.append(clock.t - 1000.0)
    # 1, then +2, +4, +8, then capped at 15
    assert resend_times[:5] == [1.0, 3.0, 7.0, 15.0, 30.0]
    assert all(b_ - a_ <= 15.0 for a_, b_ in zip(resend_times, resend_times[1:]))


def test_lost_ack_resend_gets_reack_without_second_commit(a: TransferProtocol, b: TransferProtocol,
                                                          clock: FakeClock) -> None:
    out = a.origin.offer("b", [spec(1)])
    tout = deliver(b, "a", out)
    b.target.committed("a", [JobRef("job-1", 1)])  # the ack is lost
    clock.advance(1.0)
    resend = a.on_timer()
    tout = deliver(b, "a", resend)
    assert not of(CommitAccepted, tout)
    (ack,) = sends(tout, HandoffAck)
    assert ack.message.items == (AckItem("job-1", 1, True),)
    oout = deliver(a, "b", tout)
    assert of(MarkAccepted, oout)
    # and no more resends once accepted
    clock.advance(100)
    assert not sends(a.on_timer(), Handoff)


def test_duplicate_handoff_while_committing_is_ignored(a: TransferProtocol, b: TransferProtocol) -> None:
    out = a.origin.offer("b", [spec(1)])
    first = deliver(b, "a", out)
    second = deliver(b, "a", out)
    assert len(of(CommitAccepted, first)) == 1
    assert second == []
    assert b.target.copy_state("job-1") == ("a", 1, TargetJobState.COMMITTING)


def test_duplicate_ack_is_ignored(a: TransferProtocol, b: TransferProtocol) -> None:
    out = a.origin.offer("b", [spec(1)])
    deliver(b, "a", out)
    ack = b.target.committed("a", [JobRef("job-1", 1)])
    assert of(MarkAccepted, deliver(a, "b", ack))
    assert deliver(a, "b", ack) == []


def test_lost_result_is_resent_and_lost_result_ack_is_answered_without_recommit(
        a: TransferProtocol, b: TransferProtocol, clock: FakeClock) -> None:
    deliver(b, "a", a.origin.offer("b", [spec(1)]))
    deliver(a, "b", b.target.committed("a", [JobRef("job-1", 1)]))
    b.target.results_ready([ok("job-1")])  # lost
    clock.advance(1.0)
    resent = b.on_timer()
    assert sends(resent, Result)
    oout = deliver(a, "b", resent)
    assert len(of(CommitResult, oout)) == 1
    a.origin.result_committed([("job-1", 1)])  # the RESULT_ACK is lost
    clock.advance(2.0)
    resent = b.on_timer()
    oout = deliver(a, "b", resent)
    assert not of(CommitResult, oout)  # never committed twice
    assert any(isinstance(i, Log) and i.event == "stale_result_ignored" for i in oout)
    fout = deliver(b, "a", oout)
    assert of(ForgetJob, fout) == [ForgetJob("job-1", 1)]
    assert b.target.copies() == 0


def test_duplicate_result_while_origin_commits_gives_one_commit(a: TransferProtocol, b: TransferProtocol) -> None:
    deliver(b, "a", a.origin.offer("b", [spec(1)]))
    deliver(a, "b", b.target.committed("a", [JobRef("job-1", 1)]))
    rout = b.target.results_ready([ok("job-1")])
    first = deliver(a, "b", rout)
    second = deliver(a, "b", rout)
    assert len(of(CommitResult, first)) == 1 and second == []


def test_result_arriving_before_the_ack_is_taken(a: TransferProtocol, b: TransferProtocol) -> None:
    deliver(b, "a", a.origin.offer("b", [spec(1)]))
    b.target.committed("a", [JobRef("job-1", 1)])  # ack lost
    oout = deliver(a, "b", b.target.started("job-1", 1, 3.0))
    assert of(MarkAccepted, oout) and of(MarkStarted, oout)
    oout = deliver(a, "b", b.target.results_ready([ok("job-1")]))
    assert len(of(CommitResult, oout)) == 1


# ---------------------------------------------------------------- failures


def test_target_failure_mid_run_requeues_and_late_result_is_ignored(
        a: TransferProtocol, b: TransferProtocol) -> None:
    deliver(b, "a", a.origin.offer("b", [spec(1), spec(2)]))
    deliver(a, "b", b.target.committed("a", [JobRef("job-1", 1), JobRef("job-2", 1)]))
    deliver(a, "b", b.target.started("job-1", 1, 3.0))
    out = a.peer_down("b")
    (rq,) = of(RequeueLocal, out)
    assert set(rq.jobs) == {JobRef("job-1", 1), JobRef("job-2", 1)} and rq.peer == "b"
    assert a.origin.in_flight("b") == 0 and a.origin.room("b") == 0
    # b was only paused: it comes back with a result for the old attempt
    a.peer_up("b")
    oout = deliver(a, "b", b.target.results_ready([ok("job-1")]))
    assert not of(CommitResult, oout)
    stale = [i for i in oout if isinstance(i, Log) and i.event == "stale_result_ignored"]
    assert stale and stale[0].fields["current_attempt"] == 1
    (rack,) = sends(oout, ResultAck)  # acknowledged so b's outbox drains
    deliver(b, "a", oout)
    assert b.target.outbox() == []


def test_result_of_old_target_ignored_while_new_target_runs_newer_attempt(clock: FakeClock) -> None:
    a, b, c = (TransferProtocol(n, clock) for n in "abc")
    deliver(b, "a", a.origin.offer("b", [spec(1, attempt=1)]))
    deliver(a, "b", b.target.committed("a", [JobRef("job-1", 1)]))
    a.peer_down("b")
    deliver(c, "a", a.origin.offer("c", [spec(1, attempt=2)]))
    deliver(a, "c", c.target.committed("a", [JobRef("job-1", 2)]))
    a.peer_up("b")
    oout = deliver(a, "b", b.target.results_ready([ok("job-1", 1)]))
    assert not of(CommitResult, oout)
    oout = deliver(a, "c", c.target.results_ready([ok("job-1", 2)]))
    (commit,) = of(CommitResult, oout)
    assert commit.peer == "c" and commit.result.attempt == 2


def test_newer_attempt_at_the_same_target_supersedes_the_old_copy(a: TransferProtocol, b: TransferProtocol) -> None:
    deliver(b, "a", a.origin.offer("b", [spec(1, attempt=1)]))
    b.target.committed("a", [JobRef("job-1", 1)])
    a.peer_down("b")
    a.peer_up("b")
    tout = deliver(b, "a", a.origin.offer("b", [spec(1, attempt=2)]))
    assert StopLocal("job-1", 1, "superseded by a newer attempt") in tout
    assert ForgetJob("job-1", 1, "superseded") in tout
    (commit,) = of(CommitAccepted, tout)
    assert commit.jobs[0].attempt == 2
    # an old handoff arriving late is refused as stale
    tout = b.receive("a", Handoff((spec(1, attempt=1),)))
    (ack,) = sends(tout, HandoffAck)
    assert ack.message.items[0].accepted is False and ack.message.items[0].reason == "stale attempt"


def test_late_accept_for_a_requeued_job_asks_the_target_to_stop(a: TransferProtocol, b: TransferProtocol) -> None:
    deliver(b, "a", a.origin.offer("b", [spec(1)]))
    ack = b.target.committed("a", [JobRef("job-1", 1)])
    a.peer_down("b")
    a.peer_up("b")
    oout = deliver(a, "b", ack)
    assert not of(MarkAccepted, oout)
    (stop,) = sends(oout, Stop)
    tout = deliver(b, "a", oout)
    assert StopLocal("job-1", 1, "stopped by origin") in tout


def test_result_being_committed_survives_target_failure(a: TransferProtocol, b: TransferProtocol) -> None:
    deliver(b, "a", a.origin.offer("b", [spec(1)]))
    deliver(a, "b", b.target.committed("a", [JobRef("job-1", 1)]))
    assert of(CommitResult, deliver(a, "b", b.target.results_ready([ok("job-1")])))
    out = a.peer_down("b")
    assert not of(RequeueLocal, out)  # the result wins
    assert not sends(a.origin.result_committed([("job-1", 1)]))  # b is down: it will resend
    assert a.origin.in_flight() == 0


def test_refused_handoff_requeues_locally_with_the_reason(clock: FakeClock) -> None:
    a = TransferProtocol("a", clock)
    b = TransferProtocol("b", clock, admission=lambda s: None if s.topic.startswith("media/") else "no consumer")
    tout = deliver(b, "a", a.origin.offer("b", [spec(1, topic="media/x"), spec(2, topic="mail/send")]))
    (commit,) = of(CommitAccepted, tout)
    assert [j.id for j in commit.jobs] == ["job-1"]
    oout = deliver(a, "b", tout)
    (rq,) = of(RequeueLocal, oout)
    assert rq.jobs == (JobRef("job-2", 1),) and "no consumer" in rq.reason
    assert a.origin.job_state("job-1") == ("b", 1, OriginJobState.OFFERED)
    assert a.origin.job_state("job-2") is None


def test_commit_failure_at_target_refuses(a: TransferProtocol, b: TransferProtocol) -> None:
    deliver(b, "a", a.origin.offer("b", [spec(1)]))
    oout = deliver(a, "b", b.target.commit_failed("a", [JobRef("job-1", 1)], "disk full"))
    (rq,) = of(RequeueLocal, oout)
    assert "disk full" in rq.reason and b.target.copies() == 0


# ---------------------------------------------------------------- origin absent: the outbox


def test_origin_absent_outbox_kept_then_flushed_on_rejoin(a: TransferProtocol, b: TransferProtocol,
                                                          clock: FakeClock) -> None:
    deliver(b, "a", a.origin.offer("b", [spec(1), spec(2)]))
    deliver(a, "b", b.target.committed("a", [JobRef("job-1", 1), JobRef("job-2", 1)]))
    b.peer_down("a")
    assert not sends(b.target.started("job-1", 1, 3.0))
    rout = b.target.results_ready([ok("job-1"), ok("job-2")])
    assert not sends(rout)
    for _ in range(10):
        clock.advance(20)
        assert not sends(b.on_timer())
    assert len(b.target.outbox("a")) == 2
    flush = b.peer_up("a")
    (res,) = sends(flush, Result)
    assert {i.id for i in res.message.items} == {"job-1", "job-2"}
    oout = deliver(a, "b", flush)
    assert len(of(CommitResult, oout)) == 2
    deliver(b, "a", a.origin.result_committed([("job-1", 1), ("job-2", 1)]))
    assert b.target.outbox() == []


def test_any_message_from_the_origin_flushes_its_outbox(a: TransferProtocol, b: TransferProtocol) -> None:
    deliver(b, "a", a.origin.offer("b", [spec(1)]))
    b.target.committed("a", [JobRef("job-1", 1)])
    b.peer_down("a")
    b.target.results_ready([ok("job-1")])
    tout = deliver(b, "a", a.origin.offer("b", [spec(2)]))
    assert sends(tout, Result) and of(CommitAccepted, tout)
    # a STOP (or any other message) does it too
    b.peer_down("a")
    tout = b.receive("a", Stop("job-2", 1))
    assert sends(tout, Result) and sends(tout, StopAck)


def test_an_attempt_number_is_never_reused_after_requeue(a: TransferProtocol) -> None:
    a.origin.offer("b", [spec(1, attempt=1)])
    a.peer_down("b")
    a.peer_up("b")
    out = a.origin.offer("b", [spec(1, attempt=1)])
    (rq,) = of(RequeueLocal, out)
    assert not sends(out) and "higher attempt" in rq.reason
    assert sends(a.origin.offer("b", [spec(1, attempt=2)]), Handoff)


def test_unacked_results_resend_with_backoff_while_origin_unreachable(b: TransferProtocol,
                                                                      clock: FakeClock) -> None:
    b.target.restore("a", [spec(1)])
    b.target.results_ready([ok("job-1")])
    times = []
    for _ in range(60):
        clock.advance(0.5)
        if sends(b.on_timer(), Result):
            times.append(clock.t - 1000.0)
    assert times[:4] == [1.0, 3.0, 7.0, 15.0]


def test_restart_restore_on_both_sides(clock: FakeClock) -> None:
    a, b = TransferProtocol("a", clock), TransferProtocol("b", clock)
    # origin restarted: the store says job-1 is accepted at b and job-2 offered, not acked
    a.origin.restore("b", [spec(1)], accepted=True)
    out = a.origin.restore("b", [spec(2)], accepted=False)
    assert [j.id for s in sends(out, Handoff) for j in s.message.items] == ["job-2"]
    # target restarted: job-1 has a result in its outbox
    out = b.target.restore("a", [spec(1)], outbox=[ok("job-1")])
    oout = deliver(a, "b", out)
    assert [c.result.id for c in of(CommitResult, oout)] == ["job-1"]


# ---------------------------------------------------------------- backpressure and batching


def test_backpressure_bounds_jobs_in_flight_per_peer(clock: FakeClock) -> None:
    a = TransferProtocol("a", clock, ProtocolConfig(max_in_flight_per_peer=3))
    b = TransferProtocol("b", clock)
    out = a.origin.offer("b", [spec(i) for i in range(5)])
    assert sum(len(s.message.items) for s in sends(out, Handoff)) == 3
    (rq,) = of(RequeueLocal, out)
    assert rq.reason == "backpressure" and [r.id for r in rq.jobs] == ["job-3", "job-4"]
    assert a.origin.room("b") == 0 and a.origin.room("c") == 3
    deliver(a, "b", b.target.committed("a", [JobRef(c.id, 1) for c in of(CommitAccepted, deliver(b, "a", out))[0].jobs]))
    deliver(a, "b", b.target.results_ready([ok("job-0")]))
    a.origin.result_committed([("job-0", 1)])
    assert a.origin.room("b") == 1


def test_offer_to_a_down_peer_or_self(a: TransferProtocol) -> None:
    a.peer_down("b")
    (rq,) = of(RequeueLocal, a.origin.offer("b", [spec(1)]))
    assert rq.reason == "peer down"
    with pytest.raises(Exception):
        a.origin.offer("a", [spec(2)])


def test_reoffer_of_a_job_in_flight_elsewhere_is_refused(a: TransferProtocol) -> None:
    a.origin.offer("b", [spec(1)])
    assert a.origin.offer("b", [spec(1)]) == []  # same attempt, same peer: idempotent
    out = a.origin.offer("c", [spec(1, attempt=2)])
    assert not sends(out) and of(Log, out)[0].event == "offer_refused_in_flight"


def test_batches_are_bounded(clock: FakeClock) -> None:
    a = TransferProtocol("a", clock, ProtocolConfig(max_batch=10))
    out = a.origin.offer("b", [spec(i) for i in range(25)])
    assert [len(s.message.items) for s in sends(out, Handoff)] == [10, 10, 5]


# ---------------------------------------------------------------- stop, submit, steal


def test_stop_reaches_the_target_and_is_resent_until_acked(a: TransferProtocol, b: TransferProtocol,
                                                           clock: FakeClock) -> None:
    deliver(b, "a", a.origin.offer("b", [spec(1)]))
    deliver(a, "b", b.target.committed("a", [JobRef("job-1", 1)]))
    a.origin.stop("job-1")  # lost
    clock.advance(1.0)
    out = a.on_timer()
    (stop,) = sends(out, Stop)
    tout = deliver(b, "a", out)
    assert StopLocal("job-1", 1, "stopped by origin") in tout
    deliver(a, "b", tout)  # StopAck
    clock.advance(100)
    assert not sends(a.on_timer(), Stop)


def test_stop_while_offered_is_sent_after_the_accept(a: TransferProtocol, b: TransferProtocol) -> None:
    deliver(b, "a", a.origin.offer("b", [spec(1)]))
    assert not sends(a.origin.stop("job-1"))
    oout = deliver(a, "b", b.target.committed("a", [JobRef("job-1", 1)]))
    assert sends(oout, Stop)


def test_stop_of_unknown_job_at_target(a: TransferProtocol, b: TransferProtocol) -> None:
    tout = b.receive("a", Stop("nope", 1))
    (ack,) = sends(tout, StopAck)
    assert ack.message.known is False
    assert of(Log, a.receive("b", ack.message))[0].event == "stop_unknown_at_target"
    assert a.origin.stop("nope") == []


def test_remote_submit_is_idempotent_and_times_out(a: TransferProtocol, b: TransferProtocol,
                                                   clock: FakeClock) -> None:
    out = a.origin.submit("b", "req-1", "demo/sleep", {"s": 1})
    tout = deliver(b, "a", out)
    assert of(CommitSubmitted, tout) == [CommitSubmitted("a", "req-1", "demo/sleep", {"s": 1})]
    assert deliver(b, "a", out) == []  # duplicate while the commit runs
    ack = b.target.submit_committed("a", "req-1", "job-9")
    again = deliver(b, "a", out)  # duplicate after: same answer, no second job
    assert sends(again, SubmitAck)[0].message == SubmitAck("req-1", job_id="job-9")
    done = deliver(a, "b", ack)
    assert done == [SubmitDone("b", "req-1", job_id="job-9")]
    assert deliver(a, "b", ack)[0].event == "stale_submit_ack"
    # a submission nobody answers ends with an error after submit_timeout
    a.origin.submit("b", "req-2", "demo/sleep", {})
    clock.advance(1.0)
    assert sends(a.on_timer(), Submit)
    clock.advance(30.0)
    (failed,) = of(SubmitDone, a.on_timer())
    assert failed.request_id == "req-2" and "no answer" in failed.error
    # and one to a node that leaves fails at once
    a.origin.submit("b", "req-3", "demo/sleep", {})
    (left,) = of(SubmitDone, a.peer_down("b"))
    assert left.request_id == "req-3" and left.error
    assert of(SubmitDone, a.origin.submit("b", "req-4", "x", {}))[0].error


def test_submit_failure_is_remembered(b: TransferProtocol) -> None:
    b.receive("a", Submit("r", "bad topic", {}))
    out = b.target.submit_failed("a", "r", "invalid topic")
    assert sends(out)[0].message == SubmitAck("r", error="invalid topic")
    assert sends(b.receive("a", Submit("r", "bad topic", {})))[0].message.error == "invalid topic"


def test_steal_request_becomes_an_instruction_for_the_offloader(a: TransferProtocol) -> None:
    out = a.receive("c", roundtrip(StealRequest(4, ("demo/**",))))
    assert out == [StealRequested("c", 4, ("demo/**",))]


# ---------------------------------------------------------------- codec


ALL_MESSAGES = [
    Handoff((spec(1), spec(2, topic="a/b"))),
    HandoffAck((AckItem("j", 1, True), AckItem("k", 2, False, "full"))),
    Started("j", 1, 12.5),
    Progress("j", 1, steps=3, step=2, eta=99.0, log=("x", "y")),
    Result((ResultItem("j", 1, ResultKind.FAILED, "boom", 5.0, 1.0, 2.0, ("a",)),
            ResultItem("k", 3, ResultKind.CANCEL))),
    ResultAck((JobRef("j", 1),)),
    Stop("j", 1),
    StopAck("j", 1, False),
    Submit("r", "t/x", {"a": [1, 2]}),
    SubmitAck("r", job_id="j"),
    StealRequest(3, ("a/**", "b")),
    Reconcile(7, (JobRef("j", 1), JobRef("k", 2)), first=True, last=False),
    ReconcileReply(7, (JobRef("k", 2),)),
    ReconcileRequest(),
]


@pytest.mark.parametrize("msg", ALL_MESSAGES, ids=lambda m: m.TYPE)
def test_every_message_roundtrips_through_msgpack(msg: Any) -> None:
    assert roundtrip(msg) == msg


def test_every_type_is_covered() -> None:
    assert {m.TYPE for m in ALL_MESSAGES} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("msg_type,body", [
    ("handoff", {"items": [{"id": "j"}]}),
    ("handoff", {"items": "nope"}),
    ("handoff", []),
    ("handoff_ack", {"items": [{"id": "j", "attempt": 1, "accepted": "yes"}]}),
    ("result", {"items": [{"id": "j", "attempt": 1, "kind": "MAYBE"}]}),
    ("result", {"items": [{"id": "j", "attempt": -1, "kind": "OK"}]}),
    ("result", {"items": [{"id": "j", "attempt": True, "kind": "OK"}]}),
    ("result", {"items": [{"id": "j", "attempt": 1, "kind": "OK", "retry_delay": -3}]}),
    ("progress", {"id": "", "attempt": 1}),
    ("progress", {"id": "j", "attempt": 1, "log": [1, 2]}),
    ("submit_ack", {"request_id": "r"}),
    ("submit_ack", {"request_id": "r", "job_id": "j", "error": "e"}),
    ("steal_request", {"count": 0, "topics": []}),
    ("reconcile", {"round": 1, "items": [["j", -1]], "first": True, "last": True}),
    ("reconcile", {"round": 1, "items": [{"id": "j", "attempt": 1}], "first": True, "last": True}),
    ("reconcile", {"round": "1", "items": [], "first": True, "last": True}),
    ("reconcile_reply", {"round": 1, "missing": [["", 1]]}),
    ("nonsense", {}),
])
def test_malformed_messages_are_refused_with_a_reason(msg_type: str, body: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_message(msg_type, body)


def test_malformed_wire_message_becomes_a_log_not_a_crash(a: TransferProtocol) -> None:
    out = a.receive_wire("b", "result", {"items": [{"garbage": 1}]})
    assert len(out) == 1 and out[0].event == "malformed_message_dropped" and out[0].fields["peer"] == "b"
    assert a.receive("a", Stop("j", 1))[0].event == "message_from_self_dropped"


def test_transfer_types_are_known_to_the_wire_codec() -> None:
    wire = pytest.importorskip("jobmesh.wire")
    for t in MESSAGE_TYPES:
        assert t in wire.known_types()
    frames = wire.encode(Stop.TYPE, Stop("j", 2).to_wire())
    decoded = wire.decode(frames)
    assert decode_message(decoded.type, decoded.body) == Stop("j", 2)


# ---------------------------------------------------------------- a lossy network, end to end


@pytest.mark.parametrize("seed", range(8))
def test_lossy_duplicating_network_every_job_committed_exactly_once(seed: int) -> None:
    """Drop 30% and duplicate 20% of messages, reorder them, restart nothing: every job's
    result is committed once at the origin and every copy is forgotten at the target."""
    rng = random.Random(seed)
    clock = FakeClock()
    nodes = {"a": TransferProtocol("a", clock), "b": TransferProtocol("b", clock)}
    committed: dict[str, int] = {}
    network: list[tuple[str, str, Any]] = []  # (to, from, message)
    pending_target_commits: list[tuple[str, JobRef]] = []
    pending_origin_commits: list[ResultItem] = []
    running: list[JobRef] = []

    def handle(node: str, instrs: list[Any]) -> None:
        for ins in instrs:
            if isinstance(ins, Send):
                if rng.random() < 0.3:
                    continue
                copies = 2 if rng.random() < 0.2 else 1
                for _ in range(copies):
                    network.append((ins.peer, node, roundtrip(ins.message)))
            elif isinstance(ins, CommitAccepted):
                pending_target_commits.extend((ins.origin, JobRef(j.id, j.attempt)) for j in ins.jobs)
            elif isinstance(ins, CommitResult):
                pending_origin_commits.append(ins.result)
            elif isinstance(ins, RequeueLocal):
                raise AssertionError(f"unexpected requeue {ins}")

    n_jobs = 50
    handle("a", nodes["a"].origin.offer("b", [spec(i) for i in range(n_jobs)]))
    for _ in range(5000):
        if len(committed) == n_jobs and not network and nodes["b"].target.copies() == 0:
            break
        r = rng.random()
        if network and r < 0.6:
            to, frm, msg = network.pop(rng.randrange(len(network)))
            handle(to, nodes[to].receive(frm, msg))
        elif pending_target_commits and r < 0.7:
            origin, ref = pending_target_commits.pop(0)
            running.append(ref)
            handle("b", nodes["b"].target.committed(origin, [ref]))
        elif running and r < 0.8:
            ref = running.pop(rng.randrange(len(running)))
            handle("b", nodes["b"].target.results_ready([ok(ref.id, ref.attempt)]))
        elif pending_origin_commits and r < 0.9:
            res = pending_origin_commits.pop(0)
            committed[res.id] = committed.get(res.id, 0) + 1
            handle("a", nodes["a"].origin.result_committed([(res.id, res.attempt)]))
        else:
            clock.advance(rng.choice([0.2, 1.0, 5.0]))
            for name, node in nodes.items():
                handle(name, node.on_timer())
    assert len(committed) == n_jobs
    assert set(committed.values()) == {1}
    assert nodes["a"].origin.in_flight() == 0
    assert nodes["b"].target.copies() == 0


@pytest.mark.parametrize("seed", range(6))
def test_chaos_targets_fail_and_return_every_job_committed_exactly_once(seed: int) -> None:
    """Origin a, targets b and c; a lossy network; targets declared failed at random (they
    keep running, as after a SIGSTOP) and coming back; requeued jobs are offered again with
    a new attempt. At the end every job's result is committed exactly once, nothing is in
    flight, and the targets hold no copies."""
    rng = random.Random(1000 + seed)
    clock = FakeClock()
    nodes = {n: TransferProtocol(n, clock) for n in "abc"}
    committed: dict[str, list[int]] = {}
    network: list[tuple[str, str, Any]] = []
    target_commits: list[tuple[str, str, JobRef]] = []  # (target, origin, ref)
    running: list[tuple[str, JobRef]] = []
    origin_commits: list[ResultItem] = []
    home: list[JobRef] = []  # requeued at a, waiting for a new offer
    attempts: dict[str, int] = {}
    down: set[str] = set()

    def handle(node: str, instrs: list[Any]) -> None:
        for ins in instrs:
            if isinstance(ins, Send):
                if rng.random() < 0.2:
                    continue
                for _ in range(2 if rng.random() < 0.1 else 1):
                    network.append((ins.peer, node, roundtrip(ins.message)))
            elif isinstance(ins, CommitAccepted):
                target_commits.extend((node, ins.origin, JobRef(j.id, j.attempt)) for j in ins.jobs)
            elif isinstance(ins, CommitResult):
                origin_commits.append(ins.result)
            elif isinstance(ins, RequeueLocal):
                home.extend(ins.jobs)
            elif isinstance(ins, (StopLocal, ForgetJob)):
                # a stopped run still ends with a result; a forgotten copy stops running
                if isinstance(ins, ForgetJob):
                    running[:] = [(t, r) for t, r in running if not (t == node and r == JobRef(ins.id, ins.attempt))]

    def offer(refs: list[JobRef]) -> None:
        live = [t for t in "bc" if t not in down]
        if not live:
            home.extend(refs)
            return
        for ref in refs:
            attempts[ref.id] = attempts.get(ref.id, 0) + 1
            handle("a", nodes["a"].origin.offer(rng.choice(live), [spec(ref.id.removeprefix("job-"),
                                                                         attempt=attempts[ref.id])]))

    n_jobs = 40
    offer([JobRef(f"job-{i}", 0) for i in range(n_jobs)])
    for _ in range(20000):
        if (len(committed) == n_jobs and not network and not home and nodes["a"].origin.in_flight() == 0
                and nodes["b"].target.copies() == 0 and nodes["c"].target.copies() == 0):
            break
        r = rng.random()
        if network and r < 0.5:
            to, frm, msg = network.pop(rng.randrange(len(network)))
            if to == "a" and frm in down:
                handle("a", nodes["a"].peer_up(frm))  # proof of life: a sees it again
                handle(frm, nodes[frm].peer_up("a"))
                down.discard(frm)
            handle(to, nodes[to].receive(frm, msg))
        elif target_commits and 0.5 <= r < 0.6:
            batch, target_commits[:] = list(target_commits), []  # group commit
            for t, origin, ref in batch:
                if nodes[t].target.copy_state(ref.id) == (origin, ref.attempt, TargetJobState.COMMITTING):
                    running.append((t, ref))
                handle(t, nodes[t].target.committed(origin, [ref]))
        elif running and 0.6 <= r < 0.7:
            t, ref = running.pop(rng.randrange(len(running)))
            handle(t, nodes[t].target.results_ready([ok(ref.id, ref.attempt)]))
        elif origin_commits and 0.7 <= r < 0.8:
            res = origin_commits.pop(0)
            committed.setdefault(res.id, []).append(res.attempt)
            handle("a", nodes["a"].origin.result_committed([(res.id, res.attempt)]))
        elif home and 0.8 <= r < 0.85:
            refs, home[:] = list(home), []
            offer(refs)
        elif 0.85 <= r < 0.855 and not down:
            victim = rng.choice("bc")
            if victim not in down:
                down.add(victim)
                handle("a", nodes["a"].peer_down(victim))
        elif 0.86 <= r < 0.89 and down:
            back = down.pop()
            handle("a", nodes["a"].peer_up(back))
            handle(back, nodes[back].peer_up("a"))
        elif r >= 0.89 or not network:
            clock.advance(rng.choice([0.2, 1.0, 5.0]))
            for name, node in nodes.items():
                handle(name, node.on_timer())
    assert len(committed) == n_jobs
    assert all(len(v) == 1 for v in committed.values()), {k: v for k, v in committed.items() if len(v) > 1}
    assert nodes["a"].origin.in_flight() == 0
    assert nodes["b"].target.copies() == 0 and nodes["c"].target.copies() == 0
    assert any(a_ > 1 for a_ in attempts.values())  # failures did happen and jobs were re-offered


# ---------------------------------------------------------------- reconciliation (issue 9)


def accepted_at(a: TransferProtocol, b: TransferProtocol, jobs: list[JobSpec]) -> None:
    """Offer ``jobs`` from a to b and let b commit them (a hears the acks)."""
    out = a.origin.offer("b", jobs)
    bout = deliver(b, "a", out)
    for c in of(CommitAccepted, bout):
        deliver(a, "b", b.target.committed(c.origin, [JobRef(j.id, j.attempt) for j in c.jobs]))


def test_restored_copies_wait_for_their_origin_and_a_round_repairs_both_ways(clock: FakeClock) -> None:
    """The target restarts holding copies of job-1 (still wanted) and job-2 (the origin gave it to
    another node meanwhile); the origin also believes the target has job-3, which it lost. One
    round confirms job-1 (it may run), drops job-2 (never run), and brings job-3 home."""
    a = TransferProtocol("a", clock)
    b = TransferProtocol("b", clock)
    a.origin.restore("b", [spec(1), spec(3)], accepted=True)
    b.target.restore("a", [spec(1), spec(2)])
    assert b.target.copy_state("job-1") == ("a", 1, TargetJobState.HELD)
    assert b.target.held() == 2
    out = b.target.peer_up("a")  # a (re)connection: the target asks for a round
    assert sends(out, ReconcileRequest)
    round_ = a.receive("b", roundtrip(sends(out, ReconcileRequest)[0].message))
    assert [r.message.items for r in sends(round_, Reconcile)] == [(JobRef("job-1", 1), JobRef("job-3", 1))]
    bout = deliver(b, "a", round_)
    assert of(ReleaseCopies, bout) == [ReleaseCopies("a", (JobRef("job-1", 1),))]
    assert [(f.id, f.attempt) for f in of(ForgetJob, bout)] == [("job-2", 1)]
    assert not of(StopLocal, bout)  # a held copy never ran: nothing to stop
    assert of(Repaired, bout) == [Repaired("copy_unwanted", 1)]
    assert b.target.copy_state("job-1") == ("a", 1, TargetJobState.COMMITTED)
    assert b.target.copy_state("job-2") is None
    aout = deliver(a, "b", bout)
    assert of(RequeueLocal, aout)[0].jobs == (JobRef("job-3", 1),)
    assert of(Repaired, aout) == [Repaired("handoff_lost", 1)]
    assert a.origin.job_state("job-3") is None and a.origin.job_state("job-1") is not None


def test_a_resent_handoff_confirms_a_held_copy_and_a_newer_attempt_replaces_it(clock: FakeClock) -> None:
    b = TransferProtocol("b", clock)
    b.target.restore("a", [spec(1), spec(2)])
    out = b.receive("a", Handoff((spec(1), spec(2, attempt=2))))
    assert of(ReleaseCopies, out) == [ReleaseCopies("a", (JobRef("job-1", 1),))]
    assert [(f.id, f.attempt) for f in of(ForgetJob, out)] == [("job-2", 1)]
    assert not of(StopLocal, out)
    assert [j.id for c in of(CommitAccepted, out) for j in c.jobs] == ["job-2"]


def test_an_empty_round_drops_every_copy_the_origin_does_not_want(a: TransferProtocol, b: TransferProtocol) -> None:
    accepted_at(a, b, [spec(1), spec(2)])
    a.peer_down("b")  # false alarm: a requeued both jobs, b still holds them
    a.peer_up("b")
    out = a.receive("b", ReconcileRequest())
    assert [(m.message.items, m.message.first, m.message.last) for m in sends(out, Reconcile)] == [((), True, True)]
    bout = deliver(b, "a", out)
    assert sorted(s.id for s in of(StopLocal, bout)) == ["job-1", "job-2"]
    assert sorted(f.id for f in of(ForgetJob, bout)) == ["job-1", "job-2"]
    assert b.target.copies() == 0


def test_copies_committed_during_a_round_are_not_dropped_and_drops_wait_for_the_last_batch(clock: FakeClock) -> None:
    cfg = ProtocolConfig(reconcile_batch=2)
    a, b = TransferProtocol("a", clock, cfg), TransferProtocol("b", clock, cfg)
    accepted_at(a, b, [spec(i) for i in range(5)])
    rnd = a.origin.reconcile("b")
    batches = [s.message for s in sends(rnd, Reconcile)]
    assert [(m.first, m.last, len(m.items)) for m in batches] == [(True, False, 2), (False, False, 2), (False, True, 1)]
    b.receive("a", batches[0])
    b.receive("a", Handoff((spec(9),)))  # a new job arrives between two batches of the round
    b.target.committed("a", [JobRef("job-9", 1)])
    out = b.receive("a", batches[1]) + b.receive("a", batches[2])
    assert not of(ForgetJob, out) and b.target.copies() == 6
    assert of(VerifyQueued, out)  # the confirmed copies are checked against their queue


def test_a_round_delivered_again_after_a_new_handoff_drops_nothing(clock: FakeClock) -> None:
    """Sim seed 100 (--delays 0.3): a round listing the jobs out at b, a handoff right behind it,
    then the round again (a duplicated message). Taken as a new round it dropped the new copy
    while its origin believed it accepted; answered rounds are stale from then on."""
    a, b = TransferProtocol("a", clock), TransferProtocol("b", clock)
    accepted_at(a, b, [spec(1)])
    rnd = sends(a.origin.reconcile("b"), Reconcile)[0].message
    assert not of(ForgetJob, b.receive("a", rnd))
    accepted_at(a, b, [spec(2)])  # offered after the round was listed: not in it
    again = b.receive("a", rnd)
    assert not of(ForgetJob, again) and not of(StopLocal, again) and b.target.copies() == 2
    assert not sends(again, ReconcileReply)  # answered once already
    nxt = sends(a.origin.reconcile("b"), Reconcile)[0].message  # the next round lists both
    assert not of(ForgetJob, b.receive("a", nxt)) and b.target.copies() == 2
    b.target.peer_down("a")  # a new incarnation of a counts its rounds from 1 again
    b.target.peer_up("a")
    fresh = b.receive("a", Reconcile(1, (JobRef("job-1", 1),)))
    assert sends(fresh, ReconcileReply) and of(ForgetJob, fresh)  # job-2 is not wanted by this a


def test_rounds_are_periodic_while_jobs_are_out_and_none_when_idle(clock: FakeClock) -> None:
    a, b = TransferProtocol("a", clock), TransferProtocol("b", clock)
    assert sends(a.on_timer(), Reconcile) == []
    accepted_at(a, b, [spec(1)])
    clock.advance(a.cfg.reconcile_interval + 0.1)
    assert len(sends(a.on_timer(), Reconcile)) == 1
    assert sends(a.on_timer(), Reconcile) == []  # not again until the next interval
    deliver(a, "b", b.target.results_ready([ok("job-1")]))
    a.origin.result_committed([("job-1", 1)])
    clock.advance(10 * a.cfg.reconcile_interval)
    assert sends(a.on_timer(), Reconcile) == [] and a.origin.next_deadline() is None


def test_a_target_asks_for_rounds_while_copies_are_held_and_when_rounds_stop(clock: FakeClock) -> None:
    b = TransferProtocol("b", clock)
    b.target.restore("a", [spec(1)])
    b.target.peer_up("a")
    clock.advance(b.cfg.held_retry + 0.01)
    assert len(sends(b.on_timer(), ReconcileRequest)) == 1  # held: ask again soon
    b.receive("a", Reconcile(1, (JobRef("job-1", 1),)))
    clock.advance(b.cfg.held_retry + 0.01)
    assert sends(b.on_timer(), ReconcileRequest) == []  # confirmed: rounds are the origin's to send
    clock.advance(2 * b.cfg.reconcile_interval)
    assert len(sends(b.on_timer(), ReconcileRequest)) == 1  # ... unless they stop coming


def test_a_stale_reply_does_not_requeue_a_job_offered_again(a: TransferProtocol, b: TransferProtocol) -> None:
    accepted_at(a, b, [spec(1)])
    a.peer_down("b")
    a.peer_up("b")
    a.origin.offer("b", [spec(1, attempt=2)])  # re-offered, not yet acked
    out = a.receive("b", ReconcileReply(1, (JobRef("job-1", 1), JobRef("job-1", 2))))
    assert not of(RequeueLocal, out)  # the old attempt is gone; the new one's handoff resend covers it


@pytest.mark.parametrize("seed", range(10))
def test_targets_crash_and_restart_every_job_once_and_no_superseded_copy_runs(seed: int) -> None:
    """Origin a, targets b and c; per-link FIFO with loss and duplication; targets crash
    (kill -9: only committed copies and the outbox survive) and restart as new incarnations,
    messages to the old incarnation are dropped (the transfer actor's fencing). A copy runs only
    while its origin wants that very attempt there; every job's result is committed once."""
    rng = random.Random(7000 + seed)
    clock = FakeClock()
    nodes = {n: TransferProtocol(n, clock) for n in "abc"}
    inc = {n: 1 for n in "abc"}
    links: dict[tuple[str, str], list[tuple[int, Any]]] = {}  # (from, to) -> FIFO of (to_inc, msg)
    durable: dict[str, dict[str, JobSpec]] = {"b": {}, "c": {}}  # committed copies
    outbox: dict[str, dict[str, ResultItem]] = {"b": {}, "c": {}}
    commits: list[tuple[str, str, JobRef]] = []
    queued: list[tuple[str, JobRef]] = []  # copies that may start (committed or released)
    running: list[tuple[str, JobRef]] = []
    origin_commits: list[ResultItem] = []
    committed: dict[str, int] = {}
    home: list[JobRef] = []
    attempts: dict[str, int] = {}
    up = {"b": True, "c": True}
    specs: dict[tuple[str, int], JobSpec] = {}

    def handle(node: str, instrs: list[Any]) -> None:
        for ins in instrs:
            if isinstance(ins, Send):
                if rng.random() < 0.1:
                    continue
                for _ in range(2 if rng.random() < 0.05 else 1):
                    links.setdefault((node, ins.peer), []).append((inc[ins.peer], roundtrip(ins.message)))
            elif isinstance(ins, CommitAccepted):
                commits.extend((node, ins.origin, JobRef(j.id, j.attempt)) for j in ins.jobs)
                for j in ins.jobs:
                    specs[(j.id, j.attempt)] = j
            elif isinstance(ins, ReleaseCopies):
                queued.extend((node, r) for r in ins.jobs)
            elif isinstance(ins, CommitResult):
                origin_commits.append(ins.result)
            elif isinstance(ins, RequeueLocal):
                home.extend(ins.jobs)
            elif isinstance(ins, (StopLocal, ForgetJob)):
                ref = JobRef(ins.id, ins.attempt)
                running[:] = [(t, r) for t, r in running if (t, r) != (node, ref)]
                queued[:] = [(t, r) for t, r in queued if (t, r) != (node, ref)]
                if isinstance(ins, ForgetJob):
                    durable[node].pop(ins.id, None)
                    outbox[node].pop(ins.id, None)

    def offer(refs: list[JobRef]) -> None:
        live = [t for t in "bc" if up[t]]
        if not live:
            home.extend(refs)
            return
        for ref in refs:
            attempts[ref.id] = attempts.get(ref.id, 0) + 1
            handle("a", nodes["a"].origin.offer(rng.choice(live), [spec(ref.id.removeprefix("job-"),
                                                                         attempt=attempts[ref.id])]))

    def crash(t: str) -> None:
        up[t] = False
        inc[t] += 1
        for key in [k for k in links if k[1] == t]:
            links[key] = []  # in flight to the dead process
        commits[:] = [c for c in commits if c[0] != t]
        queued[:] = [q for q in queued if q[0] != t]
        running[:] = [r for r in running if r[0] != t]
        handle("a", nodes["a"].peer_down(t))

    def restart(t: str) -> None:
        up[t] = True
        nodes[t] = TransferProtocol(t, clock)
        copies = [s for s in durable[t].values() if s.id not in outbox[t]]
        handle(t, nodes[t].target.restore("a", copies, list(outbox[t].values())))
        for c in copies:  # what is not held enters the queue windows at once (as the store's ready())
            if nodes[t].target.copy_state(c.id) == ("a", c.attempt, TargetJobState.COMMITTED):
                queued.append((t, JobRef(c.id, c.attempt)))
        handle(t, nodes[t].target.peer_down("a"))
        handle("a", nodes["a"].peer_up(t))
        handle(t, nodes[t].peer_up("a"))

    n_jobs = 30
    offer([JobRef(f"job-{i}", 0) for i in range(n_jobs)])
    for step in range(40000):
        if (len(committed) == n_jobs and not home and nodes["a"].origin.in_flight() == 0
                and all(nodes[t].target.copies() == 0 for t in "bc")):
            break
        faults = step < 8000  # a nemesis phase, then everything healed
        r = rng.random()
        busy = [k for k, q in links.items() if q and (k[1] == "a" or up[k[1]]) and (k[0] == "a" or up[k[0]])]
        if busy and r < 0.45:
            frm, to = rng.choice(sorted(busy))
            to_inc, msg = links[(frm, to)].pop(0)
            if to_inc == inc[to]:  # fencing: a message for an earlier incarnation is dropped
                handle(to, nodes[to].receive(frm, msg))
        elif commits and r < 0.55:
            t, origin, ref = commits.pop(0)
            if nodes[t].target.copy_state(ref.id) == (origin, ref.attempt, TargetJobState.COMMITTING):
                durable[t][ref.id] = specs[(ref.id, ref.attempt)]
                queued.append((t, ref))
                handle(t, nodes[t].target.committed(origin, [ref]))
        elif queued and r < 0.62:
            t, ref = queued.pop(rng.randrange(len(queued)))
            # the invariant: a copy starts only while its origin wants that attempt there
            assert nodes["a"].origin.job_state(ref.id)[:2] == (t, ref.attempt), (t, ref)
            running.append((t, ref))
        elif running and r < 0.7:
            t, ref = running.pop(rng.randrange(len(running)))
            res = ok(ref.id, ref.attempt)
            outbox[t][ref.id] = res
            handle(t, nodes[t].target.results_ready([res]))
        elif origin_commits and r < 0.78:
            res = origin_commits.pop(0)
            committed[res.id] = committed.get(res.id, 0) + 1
            handle("a", nodes["a"].origin.result_committed([(res.id, res.attempt)]))
        elif home and r < 0.82:
            refs, home[:] = list(home), []
            offer(refs)
        elif r < 0.825:
            victim = rng.choice("bc")
            if up[victim] and faults:
                crash(victim)
        elif r < 0.86 or not faults:
            for t in "bc":
                if not up[t] and (rng.random() < 0.3 or not faults):
                    restart(t)
            if not faults:
                clock.advance(0.2)
                for name in sorted(nodes):
                    handle(name, nodes[name].on_timer())
        else:
            clock.advance(rng.choice([0.2, 1.0, 3.0]))
            for name in sorted(nodes):
                if name == "a" or up[name]:
                    handle(name, nodes[name].on_timer())
    assert len(committed) == n_jobs, f"{n_jobs - len(committed)} jobs not committed"
    assert set(committed.values()) == {1}
    assert nodes["a"].origin.in_flight() == 0


def test_a_stop_recorded_at_home_withdraws_the_attempt_so_a_retry_can_go_again(a: TransferProtocol,
                                                                              b: TransferProtocol) -> None:
    """Sim seed 1073: a job offered to an unreachable target was stopped at home (STOPPED) and
    then retried; its old attempt stayed in flight, the new offer was refused with only a log,
    and the record said "handed to b" while nobody held it — QUEUED for good."""
    a.origin.offer("b", [spec(1)])
    out = a.origin.withdraw("job-1")
    assert [s.message for s in sends(out, Stop)] == [Stop("job-1", 1)]
    assert a.origin.job_state("job-1") is None
    out = a.origin.offer("b", [spec(1, attempt=2)])
    assert [j.id for s in sends(out, Handoff) for j in s.message.items] == ["job-1"]


def test_an_offer_refused_because_another_attempt_is_in_flight_comes_home(a: TransferProtocol) -> None:
    a.origin.offer("b", [spec(1)])
    out = a.origin.offer("c", [spec(1, attempt=2)])
    assert of(RequeueLocal, out) == [RequeueLocal((JobRef("job-1", 2),), "another attempt is still in flight", "c")]


def test_result_items_read_fast_or_checked_alike() -> None:
    from jobmesh.transfer.messages import ResultItem as RI

    body = {"id": "j", "attempt": 2, "kind": "FAILED", "message": "m", "retry_delay": 1, "started": 1.0,
            "finished": 2, "log": []}
    assert RI.from_wire(body) == RI._from_wire_checked(body)
    for bad in ({**body, "attempt": True}, {**body, "kind": "MAYBE"}, {**body, "retry_delay": -1},
                {**body, "id": ""}, {**body, "log": "x"}, {**body, "started": "1"}):
        with pytest.raises(ProtocolError):
            RI.from_wire(bad)


def test_ack_items_read_fast_or_checked_alike() -> None:
    from jobmesh.transfer.messages import AckItem

    for body in ({"id": "j", "attempt": 2, "accepted": True, "reason": None},
                 {"id": "j", "attempt": 0, "accepted": False, "reason": "no consumer"}, {"id": "j", "attempt": 1, "accepted": True}):
        fast = AckItem.from_wire(body)
        assert fast == AckItem._from_wire_checked(body) and hash(fast) == hash(AckItem._from_wire_checked(body))
        assert AckItem.from_wire(fast.to_wire()) == fast
    body = {"id": "j", "attempt": 2, "accepted": True, "reason": None}
    for bad in ({**body, "attempt": True}, {**body, "attempt": -1}, {**body, "id": ""}, {**body, "accepted": 1},
                {**body, "reason": 3}, {"attempt": 1, "accepted": True}, ["j", 1, True]):
        with pytest.raises(ProtocolError):
            AckItem.from_wire(bad)  # type: ignore[arg-type]


def test_specs_and_results_built_fast_equal_the_dataclass_made_ones() -> None:
    from jobmesh.job import Job

    job = Job(id="j", topic="a/b", properties={"n": 1}, queue="q", origin="o", created=2.0, retry_count=1,
              max_retries=3, attempt=4, timeout=2.5, priority=-1)
    ref = {"x": {"id": "sha256:" + "c" * 64, "size": 3}}
    for payload in (None, ref):
        fast = JobSpec.of(job, payload)
        made = JobSpec("j", 4, "a/b", {"n": 1}, "q", 1, 3, "o", 2.0, 2.5, -1, payload)
        assert fast == made and repr(fast) == repr(made) and JobSpec.from_wire(fast.to_wire()) == made
    args = ("j", 2, ResultKind.FAILED, "m", 1.5, 1.0, 2.0, ("l",))
    for extra in ((), ({"r": 1}, ref)):
        fast = ResultItem.of_run(*args, *extra)
        made = ResultItem(*args, *extra)
        assert fast == made and repr(fast) == repr(made)
        assert ResultItem.from_wire(fast.to_wire()) == made


def test_job_refs_read_fast_or_checked_alike() -> None:
    ref = JobRef.from_wire({"id": "j", "attempt": 3})
    assert ref == JobRef("j", 3) and hash(ref) == hash(JobRef("j", 3)) and JobRef.from_wire(ref.to_wire()) == ref
    for bad in ({"id": "j", "attempt": True}, {"id": "j", "attempt": -1}, {"id": "", "attempt": 1},
                {"id": 5, "attempt": 1}, {"attempt": 1}, {"id": "j"}, ["j", 1]):
        with pytest.raises(ProtocolError):
            JobRef.from_wire(bad)  # type: ignore[arg-type]


def test_result_item_carries_any_json_result_and_reads_an_older_output() -> None:
    from jobmesh.transfer.protocol import ResultItem

    for value in ({"a": 1}, [1, 2], "text", 0, False):
        item = ResultItem("j", 1, ResultKind.OK, result=value)
        assert ResultItem.from_wire(item.to_wire()).result == value
    assert "result" not in ResultItem("j", 1, ResultKind.OK).to_wire()
    old = {"id": "j", "attempt": 1, "kind": "OK", "log": [], "output": {"step": "out"}}  # a peer before issue 12
    assert ResultItem.from_wire(old).result == {"step": "out"}


def test_job_spec_carries_the_time_limit_and_priority() -> None:
    from jobmesh.transfer.protocol import JobSpec, ProtocolError

    spec = JobSpec("j", 1, "a/b", {}, timeout=2.5, priority=-3)
    assert JobSpec.from_wire(spec.to_wire()) == spec
    plain = JobSpec("j", 1, "a/b", {})
    assert "timeout" not in plain.to_wire() and "priority" not in plain.to_wire()
    assert JobSpec.from_wire(plain.to_wire()) == plain
    with pytest.raises(ProtocolError, match="timeout must be > 0"):
        JobSpec.from_wire({**spec.to_wire(), "timeout": -1})


def test_payload_survives_the_fast_reads_of_specs_and_results() -> None:
    from jobmesh.transfer.protocol import JobSpec, ProtocolError, ResultItem

    ref = {"x": {"id": "sha256:" + "c" * 64, "size": 3}}
    spec = JobSpec("j", 1, "a/b", {}, payload=ref)
    assert JobSpec.from_wire(spec.to_wire()) == spec == JobSpec._from_wire_checked(spec.to_wire())
    item = ResultItem("j", 1, ResultKind.OK, output_payload=ref)
    assert ResultItem.from_wire(item.to_wire()) == item == ResultItem._from_wire_checked(item.to_wire())
    with pytest.raises(ProtocolError):
        ResultItem.from_wire({**item.to_wire(), "output_payload": {"x": {"id": "nope", "size": 3}}})
