"""``job.new_job``: the add path's maker of a new job is ``Job(...)`` with those keywords."""

from __future__ import annotations

from dataclasses import fields

from jobmesh.job import Job, new_job


def test_new_job_makes_what_the_dataclass_makes_with_fresh_mutable_fields() -> None:
    args = dict(id="j1", topic="a/b", properties={"x": 1}, queue="q", origin="n", created=5.0, max_retries=3,
                priority=2)
    made, want = new_job(**args), Job(**args)
    assert made == want
    assert list(vars(made)) == [f.name for f in fields(Job)] == list(vars(want))  # same attribute layout
    other = new_job(**args)
    assert other.progress is not made.progress and other.progress.log is not made.progress.log
    assert other.payload is not made.payload and other.output_payload is not made.output_payload
    made.progress.log.append("line")
    assert other.progress.log == [] and Job(**args).progress.log == []
