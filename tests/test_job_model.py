"""The job state machine and model (DESIGN §1, §5.2), pure."""

import pytest

from jobmesh.job import (
    FINAL_STATES,
    InvalidTransition,
    Job,
    JobIdGenerator,
    JobResult,
    JobState,
    ResultKind,
    check_transition,
    iso,
    parse_iso,
)

ALLOWED = {
    ("QUEUED", "ACTIVE"), ("QUEUED", "STOPPED"), ("QUEUED", "DROPPED"),
    ("ACTIVE", "SUCCEEDED"), ("ACTIVE", "QUEUED"), ("ACTIVE", "GIVEN_UP"),
    ("ACTIVE", "ERROR"), ("ACTIVE", "STOPPED"), ("ACTIVE", "DROPPED"),
    ("STOPPED", "QUEUED"), ("GIVEN_UP", "QUEUED"), ("ERROR", "QUEUED"), ("DROPPED", "QUEUED"),
}


@pytest.mark.parametrize("old", list(JobState))
@pytest.mark.parametrize("new", list(JobState))
def test_every_transition_is_checked(old: JobState, new: JobState) -> None:
    if (old.value, new.value) in ALLOWED:
        check_transition(old, new)
    else:
        with pytest.raises(InvalidTransition):
            check_transition(old, new)


def test_final_states_are_sling_s() -> None:
    assert {s.value for s in FINAL_STATES} == {"SUCCEEDED", "STOPPED", "GIVEN_UP", "ERROR", "DROPPED"}
    assert not JobState.QUEUED.final and not JobState.ACTIVE.final
    assert JobState.SUCCEEDED.final
    assert str(JobState.GIVEN_UP) == "GIVEN_UP"


def test_succeeded_is_the_end() -> None:
    for new in JobState:
        with pytest.raises(InvalidTransition):
            check_transition(JobState.SUCCEEDED, new)


def test_job_json_has_the_contract_fields() -> None:
    job = Job(id="j1", topic="a/b", properties={"x": 1}, origin="n1", created=0.0)
    data = job.to_json()
    assert set(data) == {
        "id", "topic", "properties", "state", "queue", "origin", "target", "created",
        "started", "finished", "retry_count", "max_retries", "progress", "result_message",
        # issue 12 (DESIGN §5.2 "Added"), issue 14
        "result", "not_before", "key", "timeout", "priority", "payload", "output_payload",
    }
    assert (data["result"], data["not_before"], data["key"], data["timeout"], data["priority"]) == (
        None, None, None, None, 0)
    assert data["payload"] == {} and data["output_payload"] == {}
    assert data["created"] == "1970-01-01T00:00:00.000Z"
    assert data["started"] is None
    assert set(data["progress"]) == {"steps", "step", "eta", "log"}
    assert data["state"] == "QUEUED"


def test_job_json_round_trip_and_result_as_output() -> None:
    job = Job(id="j1", topic="a/b", properties={"x": 1}, origin="n1", created=10.5, not_before=20.25,
              key="k", timeout=3.0, priority=7, result=[1, "two"], retry_count=2)
    job.progress.log.append("line")
    back = Job.from_json(job.to_json())
    assert back.to_json() == job.to_json()
    assert back.output is None  # a list is a result, not a workflow step's output object
    back.result = {"a": 1}
    assert back.output == {"a": 1}  # an object result is the step's output: one value, not two
    back.output = {"b": 2}
    assert back.result == {"b": 2}


def test_iso_round_trip() -> None:
    ts = 1764085031.123
    assert abs(parse_iso(iso(ts)) - ts) < 0.001
    assert parse_iso("2026-11-25T15:00:00") == parse_iso("2026-11-25T15:00:00Z")
    assert parse_iso("2026-11-25T16:00:00+01:00") == parse_iso("2026-11-25T15:00:00Z")


def test_results() -> None:
    assert JobResult.OK.succeeded and JobResult.OK.kind is ResultKind.OK
    assert JobResult.FAILED.kind is ResultKind.FAILED
    assert JobResult.CANCEL.kind is ResultKind.CANCEL
    assert not JobResult.FAILED.succeeded


def test_ids_unique_and_time_ordered() -> None:
    t = [1000.0]
    gen = JobIdGenerator(clock=lambda: t[0])
    a = gen.next()
    t[0] = 1001.0
    b = gen.next()
    assert a < b
    ids = {gen.next() for _ in range(10000)}
    assert len(ids) == 10000
    assert JobIdGenerator().next() != JobIdGenerator().next()
