"""The job JSON (DESIGN §5.2) written straight to text, for the HTTP API's hot answers.

``json.dumps([job.to_json() for job in jobs])`` builds a dict per job and walks it again to
encode it: about 25 µs a job, the largest single cost of ``POST /api/v1/jobs`` with a batch
(measured: ``benchmarks/client.py``, add_many at ~16k jobs/s). This writer gives the same text
(byte for byte what ``json.dumps(job.to_json(), separators=(",", ":"), default=str)`` gives,
tested) in a few µs: fields in ``to_json``'s order, strings through the C string encoder,
the fields a fresh job leaves empty written as constants.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii as _str_text  # type: ignore[attr-defined]
from typing import Any, Iterable

from .job import Job, JobState, iso

_dumps = json.JSONEncoder(separators=(",", ":"), default=str).encode
try:  # the C encoder itself: a third of ``JSONEncoder.encode``'s cost for a small dict
    from json.encoder import c_make_encoder as _make  # type: ignore[attr-defined]

    _props_chunks = _make(None, str, _str_text, None, ":", ",", False, False, True)

    def _props_text(props: dict[str, Any]) -> str:
        """Properties (checked JSON when added, so no cycle check) as compact text."""
        return "".join(_props_chunks(props, 0))
except ImportError:  # pragma: no cover - an interpreter without the C accelerator
    _props_text = _dumps
_EMPTY_PROGRESS = '{"steps":null,"step":0,"eta":null,"log":[]}'


def _opt_str(value: str | None) -> str:
    return "null" if value is None else _str_text(value)


def _value(value: Any) -> str:
    """Any JSON value; the common scalars without the encoder's call overhead."""
    if value is None:
        return "null"
    if type(value) is str:
        return _str_text(value)
    if type(value) is int:
        return int.__repr__(value)
    return _dumps(value)


def _refs(refs: dict[str, Any]) -> str:
    if not refs:
        return "{}"
    return _dumps({n: r.to_json() for n, r in sorted(refs.items())})


_STATE_TEXT = {state: _str_text(state.value) for state in JobState}
_int_text = int.__repr__


def _tail_text(job: Job) -> str:
    """Everything after the properties: the fields the jobs of one add mostly share."""
    p = job.progress
    if p.steps is None and p.step == 0 and p.eta is None and not p.log:
        progress = _EMPTY_PROGRESS
    else:
        progress = _dumps(p.to_json())
    target, started, finished = job.target, job.started, job.finished
    retries, max_retries, priority = job.retry_count, job.max_retries, job.priority
    message, result, key, timeout = job.result_message, job.result, job.key, job.timeout
    return (
        f',"state":{_STATE_TEXT[job.state]},'
        f'"queue":{_str_text(job.queue)},"origin":{_str_text(job.origin)},'
        f'"target":{"null" if target is None else _str_text(target)},'
        f'"created":{_opt_str(iso(job.created))},'
        f'"started":{"null" if started is None else _str_text(iso(started))},'  # type: ignore[arg-type]
        f'"finished":{"null" if finished is None else _str_text(iso(finished))},'  # type: ignore[arg-type]
        f'"retry_count":{_int_text(retries) if type(retries) is int else _value(retries)},'
        f'"max_retries":{_int_text(max_retries) if type(max_retries) is int else _value(max_retries)},'
        f'"progress":{progress},"result_message":{"null" if message is None else _str_text(message)},'
        f'"result":{"null" if result is None else _value(result)},'
        f'"not_before":{_opt_str(iso(job.not_before)) if job.not_before else "null"},'
        f'"key":{"null" if key is None else _str_text(key)},"timeout":{"null" if timeout is None else _value(timeout)},'
        f'"priority":{_int_text(priority) if type(priority) is int else _value(priority)},'
        f'"payload":{_refs(job.payload) if job.payload else "{}"},'
        f'"output_payload":{_refs(job.output_payload) if job.output_payload else "{}"}}}'
    )


def _head_text(job: Job) -> str:
    props = job.properties
    return (f'{{"id":{_str_text(job.id)},"topic":{_str_text(job.topic)},'
            f'"properties":{_props_text(props) if props else "{}"}')


def job_json_text(job: Job) -> str:
    """``job.to_json()`` as compact JSON text."""
    return _head_text(job) + _tail_text(job)


_QUEUED = JobState.QUEUED


def jobs_json_text(jobs: Iterable[Job]) -> str:
    """A JSON list of jobs. Jobs as an add leaves them (queued, never run, nothing attached) share
    their tail with the others of the same queue, time and options: written once a call."""
    tails: dict[tuple[Any, ...], str] = {}
    parts = []
    for j in jobs:
        if (j.state is _QUEUED and j.started is None and j.target is None and j.result is None
                and j.result_message is None and not j.retry_count and not j.payload and not j.output_payload
                and not j.progress.log and j.progress.steps is None and not j.progress.step
                and j.progress.eta is None and j.key is None):
            k = (j.queue, j.origin, j.created, j.finished, j.max_retries, j.not_before, j.timeout, j.priority)
            tail = tails.get(k)
            if tail is None:
                tail = tails[k] = _tail_text(j)
        else:
            tail = _tail_text(j)
        parts.append(_head_text(j) + tail)
    return "[" + ",".join(parts) + "]"


__all__ = ["job_json_text", "jobs_json_text"]
