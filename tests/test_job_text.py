"""The job JSON writer (``jobmesh.job_text``) gives exactly ``json.dumps(job.to_json())``'s text."""

from __future__ import annotations

import json

import pytest

from jobmesh.blobs.store import BlobRef
from jobmesh.job import Job, JobState, Progress
from jobmesh.job_text import job_json_text, jobs_json_text


def _reference(job: Job) -> str:
    return json.dumps(job.to_json(), separators=(",", ":"), default=str)


FRESH = Job(id="0190a-abc-000001", topic="bench/noop", properties={"i": 1}, origin="a", created=1_767_000_000.123)

JOBS = [
    FRESH,
    Job(id="x", topic="t", properties={}, origin="a", created=0.0),
    Job(id="é\"\\\n", topic="ü/ä", properties={"nested": {"l": [1, 2.5, None, True, "ß"]}, "n": -3},
        origin="nöde", created=1_767_000_000.0, queue="q\"1"),
    Job(id="final", topic="a/b", properties={"k": "v"}, state=JobState.SUCCEEDED, queue="main", origin="a",
        target="b", created=1.5, started=2.25, finished=3.125, retry_count=2, max_retries=-1,
        progress=Progress(steps=3, step=2, eta=4.0, log=["line 1", "ünï \"quoted\""]),
        result_message="done", result={"answer": 42, "list": [1, "2"]}, not_before=1.75, key="k-1",
        timeout=30.5, priority=-7,
        payload={"b": BlobRef("sha256:" + "b" * 64, 10), "a": BlobRef("sha256:" + "a" * 64, 0)},
        output_payload={"out": BlobRef("sha256:" + "c" * 64, 123)}),
    Job(id="r", topic="t", properties={"x": 1}, origin="a", result=3.5, timeout=30),
    Job(id="s", topic="t", properties={"x": 1}, origin="a", result="text", state=JobState.GIVEN_UP,
        result_message=None, progress=Progress(steps=None, step=1)),
    Job(id="l", topic="t", properties={"x": 1}, origin="a", result=[1, {"a": None}], state=JobState.ERROR),
    Job(id="b", topic="t", properties={"x": 1}, origin="a", result=False, progress=Progress(log=["only a log"])),
]


@pytest.mark.parametrize("job", JOBS, ids=lambda j: j.id)
def test_one_job_is_the_same_text_as_json_dumps_of_to_json(job: Job) -> None:
    assert job_json_text(job) == _reference(job)
    assert json.loads(job_json_text(job)) == json.loads(_reference(job))


def test_a_list_of_jobs_is_the_same_text_as_json_dumps() -> None:
    assert jobs_json_text(JOBS) == json.dumps([j.to_json() for j in JOBS], separators=(",", ":"), default=str)
    assert jobs_json_text([]) == "[]"


def test_a_round_trip_through_the_client_job_keeps_every_field() -> None:
    job = JOBS[3]
    again = Job.from_json(json.loads(job_json_text(job)))
    assert again.to_json() == job.to_json()
