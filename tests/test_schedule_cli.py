"""``jobmesh schedule``: argument rules, request bodies, rendering, exit codes (no node needed)."""

from __future__ import annotations

import pytest

from jobmesh.cli import build_parser, main
from jobmesh.cli_schedule import build_body, render_schedules, when_text
from jobmesh.scheduler.schedule import parse_schedule


def body_of(*argv: str) -> dict:
    args = build_parser().parse_args(["schedule", "add", *argv])
    return build_body(args)


def test_each_form_builds_a_body_the_node_accepts():
    cases = {
        ("t/a", "--every", "2.5"): {"every": 2.5},
        ("t/a", "--cron", "*/5 * * * *"): {"cron": "*/5 * * * *"},
        ("t/a", "--at", "2030-01-01T08:00:00Z"): {"at": "2030-01-01T08:00:00Z"},
        ("t/a", "--hourly", "15"): {"hourly": {"minute": 15}},
        ("t/a", "--daily", "03:30"): {"daily": {"hour": 3, "minute": 30}},
        ("t/a", "--weekly", "mon", "08:00"): {"weekly": {"weekday": "mon", "hour": 8, "minute": 0}},
        ("t/a", "--weekly", "0", "08:00"): {"weekly": {"weekday": 0, "hour": 8, "minute": 0}},
        ("t/a", "--monthly", "31", "23:59"): {"monthly": {"day": 31, "hour": 23, "minute": 59}},
        ("t/a", "--yearly", "02-29", "12:00"): {"yearly": {"month": 2, "day": 29, "hour": 12, "minute": 0}},
    }
    for argv, when in cases.items():
        body = body_of(*argv)
        assert body == {"topic": "t/a", "properties": {}, **when}, argv
        parse_schedule(body)  # the node would accept it


def test_tz_goes_into_the_body() -> None:
    body = body_of("t/a", "--cron", "0 6 * * *", "--tz", "Europe/Amsterdam")
    assert body["tz"] == "Europe/Amsterdam" and parse_schedule(body).tz == "Europe/Amsterdam"
    assert when_text({"kind": "daily", "daily": {"hour": 6, "minute": 0}, "tz": "Europe/Amsterdam"}) == \
        "daily 06:00 Europe/Amsterdam"


def test_properties_are_json_when_they_parse():
    body = body_of("t/a", "-p", "n=3", "-p", "name=x", "-p", "flags=[1,2]", "--every", "60")
    assert body["properties"] == {"n": 3, "name": "x", "flags": [1, 2]}


@pytest.mark.parametrize(
    "argv",
    [
        ["schedule", "add", "t/a"],  # no form
        ["schedule", "add", "t/a", "--every", "5", "--cron", "* * * * *"],  # two forms
        ["schedule", "add", "t/a", "--every", "five"],
        ["schedule", "add", "t/a", "--daily", "3pm"],
        ["schedule", "add", "t/a", "--hourly", "x"],
        ["schedule", "add", "t/a", "--yearly", "0229", "12:00"],
        ["schedule", "remove"],
        ["schedule"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip()


def test_unreachable_node_is_one_line_and_exit_1(capsys):
    rc = main(["schedule", "list", "--url", "http://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "cannot reach node" in err


def test_rendering():
    listing = {
        "schedules": [
            {"id": "abc", "topic": "t/a", "kind": "every", "every": 60, "suspended": False,
             "next_fire": "2026-01-01T00:01:00.000Z", "last_fired": None},
            {"id": "def", "topic": "t/b", "kind": "weekly", "weekly": {"weekday": "mon", "hour": 8, "minute": 5},
             "suspended": True, "next_fire": None, "last_fired": "2026-01-01T00:00:00.000Z"},
        ]
    }
    text = render_schedules(listing)
    lines = text.splitlines()
    assert lines[0].split() == ["ID", "TOPIC", "WHEN", "STATE", "NEXT", "FIRE", "LAST", "FIRED"]
    assert "every 60 s" in lines[1] and "active" in lines[1]
    assert "weekly mon 08:05 UTC" in lines[2] and "suspended" in lines[2]
    assert render_schedules({"schedules": []}) == "no schedules"
    assert when_text({"kind": "hourly", "hourly": {"minute": 7}}) == "hourly at :07"
    assert when_text({"kind": "cron", "cron": "0 * * * *"}) == "cron 0 * * * *"
