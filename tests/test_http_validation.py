"""The HTTP API's request rules, without a server."""

from __future__ import annotations

import pytest

from jobmesh.errors import ValidationError
from jobmesh.http.actor import parse_http_address, url_for
from jobmesh.http.validation import (
    MAX_LIMIT,
    decode_json,
    parse_event_topics,
    parse_find_query,
    parse_float,
    parse_job_body,
    parse_wait,
    parse_offload_topic,
    parse_offloading_body,
)
from jobmesh.job import JobState
from jobmesh.job_options import JobRequest


def test_decode_json_accepts_valid_and_explains_invalid() -> None:
    assert decode_json(b'{"a": 1}') == {"a": 1}
    with pytest.raises(ValidationError, match="invalid JSON"):
        decode_json(b"{nope")
    with pytest.raises(ValidationError, match="empty"):
        decode_json(b"  ")
    with pytest.raises(ValidationError, match="UTF-8"):
        decode_json(b'"\xff\xfe"')


def test_single_job_body() -> None:
    specs, is_list = parse_job_body({"topic": "a/b", "properties": {"x": 1}})
    assert specs == [JobRequest("a/b", {"x": 1})] and is_list is False
    assert parse_job_body({"topic": "a"}) == ([JobRequest("a", None)], False)
    assert parse_job_body({"topic": "a", "properties": None}) == ([JobRequest("a", None)], False)


def test_job_body_options_are_checked_and_normalized() -> None:
    (r,), _ = parse_job_body({"topic": "a", "delay": 5, "key": "k", "timeout": 30, "priority": -2})
    assert (r.delay, r.at, r.key, r.timeout, r.priority) == (5.0, None, "k", 30.0, -2)
    (r,), _ = parse_job_body({"topic": "a", "at": "2031-12-01T09:00:00Z"})
    assert r.at == 1953882000.0
    (r,), _ = parse_job_body({"topic": "a", "at": "2031-12-01T10:00:00+01:00"})
    assert r.at == 1953882000.0


@pytest.mark.parametrize(
    "body, message",
    [
        ({"topic": "a", "delay": -1}, "delay must be between 0"),
        ({"topic": "a", "delay": "5"}, "delay must be a number"),
        ({"topic": "a", "delay": True}, "delay must be a number"),
        ({"topic": "a", "delay": 1, "at": "2031-12-01T09:00:00Z"}, "give delay or at, not both"),
        ({"topic": "a", "at": "tomorrow"}, "at must be an ISO 8601 time"),
        ({"topic": "a", "at": 1953968400}, "at must be an ISO 8601 time"),
        ({"topic": "a", "key": ""}, "key must be a non-empty string"),
        ({"topic": "a", "key": 5}, "key must be a non-empty string"),
        ({"topic": "a", "key": "k" * 201}, "key is longer than 200"),
        ({"topic": "a", "timeout": 0}, "timeout must be more than 0"),
        ({"topic": "a", "priority": 1.5}, "priority must be a whole number"),
        ({"topic": "a", "priority": 10**7}, "priority must be between"),
    ],
)
def test_bad_job_options(body: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_job_body(body)
    with pytest.raises(ValidationError, match=r"jobs\[0\]: " + message):
        parse_job_body([body])


def test_wait_query() -> None:
    assert parse_wait({}) is None and parse_wait({"wait": "2.5"}) == 2.5
    with pytest.raises(ValidationError, match="wait must be between 0.0 and 25.0"):
        parse_wait({"wait": "60"})


def test_list_job_body_keeps_order_and_names_the_bad_item() -> None:
    specs, is_list = parse_job_body([{"topic": "a"}, {"topic": "b", "properties": {}}])
    assert is_list and specs == [JobRequest("a", None), JobRequest("b", {})]
    assert parse_job_body([]) == ([], True)
    with pytest.raises(ValidationError, match=r"jobs\[1\]: missing field 'topic'"):
        parse_job_body([{"topic": "a"}, {"properties": {}}])


@pytest.mark.parametrize(
    "body, message",
    [
        ("just a string", "expected a JSON object"),
        (42, "expected a JSON object"),
        ({}, "missing field 'topic'"),
        ({"topic": 5}, "topic must be a string"),
        ({"topic": ""}, "non-empty"),
        ({"topic": "a//b"}, "empty segment"),
        ({"topic": "a/*"}, "wildcard"),
        ({"topic": "a", "properties": [1]}, "properties must be a JSON object"),
        ({"topic": "a", "properties": "x"}, "properties must be a JSON object"),
        ({"topic": "a", "prio": 1}, "unknown field"),
    ],
)
def test_bad_job_bodies(body: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_job_body(body)


def test_find_query() -> None:
    assert parse_find_query({}) == {"state": None, "topic": None, "queue": None, "limit": 100}
    q = parse_find_query({"state": "succeeded", "topic": "a/b", "limit": "5", "queue": "q1"})
    assert q == {"state": JobState.SUCCEEDED, "topic": "a/b", "queue": "q1", "limit": 5}
    with pytest.raises(ValidationError, match="unknown state"):
        parse_find_query({"state": "DONE"})
    for bad in ("x", "0", "-3", str(MAX_LIMIT + 1), "1.5"):
        with pytest.raises(ValidationError, match="limit"):
            parse_find_query({"limit": bad})


def test_offloading_body() -> None:
    assert parse_offloading_body({"enabled": True}) == "enabled"
    assert parse_offloading_body({"enabled": False}) == "disabled"
    assert parse_offloading_body({"exclusive": True}) == "exclusive"
    for bad, msg in (
        ({"enabled": "yes"}, "true or false"),
        ({"exclusive": False}, "only be set to true"),
        ({"enabled": True, "exclusive": True}, "exactly one"),
        ({}, "exactly one"),
        ({"mode": "on"}, "unknown field"),
        ([True], "expected a JSON object"),
    ):
        with pytest.raises(ValidationError, match=msg):
            parse_offloading_body(bad)


def test_offload_topic_and_event_topics_and_floats() -> None:
    assert parse_offload_topic("media/**") == "media/**"
    with pytest.raises(ValidationError):
        parse_offload_topic("a//b")
    assert parse_event_topics(None) is None
    assert parse_event_topics(" job/finished, job/failed ,") == ["job/finished", "job/failed"]
    assert parse_float("0.5", "heartbeat", 0.1, 60) == 0.5
    for bad in ("nan", "0", "x", "61"):
        with pytest.raises(ValidationError, match="heartbeat"):
            parse_float(bad, "heartbeat", 0.1, 60)


def test_http_address_parsing_and_urls() -> None:
    assert parse_http_address("127.0.0.1:8471") == ("127.0.0.1", 8471)
    assert parse_http_address(":0") == ("127.0.0.1", 0)
    assert parse_http_address("[::1]:80") == ("::1", 80)
    for bad in ("localhost", "h:x", "h:70000"):
        with pytest.raises(ValidationError):
            parse_http_address(bad)
    assert url_for("0.0.0.0", 81) == "http://127.0.0.1:81"
    assert url_for("::1", 81) == "http://[::1]:81"
    assert url_for("10.0.0.2", 81) == "http://10.0.0.2:81"
