"""The scheduler's pure core with a fake clock: forms, validation, ids, cron edges, due lists."""

from __future__ import annotations

import pytest

from jobmesh.errors import ValidationError
from jobmesh.job import iso, parse_iso
from jobmesh.scheduler.schedule import (
    Schedule,
    ScheduleRecord,
    due,
    merge_fired,
    merge_records,
    next_fire_time,
    next_wakeup,
    parse_schedule,
    records_digest,
)


def T(text: str) -> float:
    return parse_iso(text)


def S(body: dict, created: str = "2026-01-01T00:00:00Z", **kw) -> Schedule:
    return Schedule(parse_schedule(body), T(created), **kw)


# -- validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, fragment",
    [
        ([], "JSON object"),
        ({"every": 5}, "topic"),
        ({"topic": "", "every": 5}, "topic"),
        ({"topic": "a//b", "every": 5}, ""),
        ({"topic": "a/b"}, "exactly one of"),
        ({"topic": "a/b", "every": 5, "cron": "* * * * *"}, "exactly one of"),
        ({"topic": "a/b", "every": 0}, "between"),
        ({"topic": "a/b", "every": -3}, "between"),
        ({"topic": "a/b", "every": "5"}, "number"),
        ({"topic": "a/b", "every": True}, "number"),
        ({"topic": "a/b", "every": float("nan")}, "number"),
        ({"topic": "a/b", "cron": "not a cron"}, "cron"),
        ({"topic": "a/b", "cron": "61 * * * *"}, "invalid cron"),
        ({"topic": "a/b", "cron": "* * * *"}, "5 fields"),
        ({"topic": "a/b", "cron": "0 0 30 2 *"}, "never fires"),
        ({"topic": "a/b", "cron": 5}, "cron expression string"),
        ({"topic": "a/b", "at": "yesterday"}, "ISO 8601"),
        ({"topic": "a/b", "at": 12345}, "ISO 8601"),
        ({"topic": "a/b", "hourly": {"minute": 60}}, "0 to 59"),
        ({"topic": "a/b", "hourly": {}}, "missing minute"),
        ({"topic": "a/b", "daily": {"hour": 24, "minute": 0}}, "0 to 23"),
        ({"topic": "a/b", "daily": {"hour": 1, "minute": 0, "second": 3}}, "unknown second"),
        ({"topic": "a/b", "daily": "25"}, "HH:MM"),
        ({"topic": "a/b", "weekly": {"weekday": "someday", "hour": 1, "minute": 0}}, "day name"),
        ({"topic": "a/b", "weekly": {"weekday": 8, "hour": 1, "minute": 0}}, "0-7"),
        ({"topic": "a/b", "monthly": {"day": 32, "hour": 1, "minute": 0}}, "1 to 31"),
        ({"topic": "a/b", "yearly": {"month": 2, "day": 30, "hour": 0, "minute": 0}}, "never fires"),
        ({"topic": "a/b", "every": 5, "properties": []}, "properties"),
        ({"topic": "a/b", "every": 5, "properties": {"x": {1, 2}}}, "JSON-compatible"),
        ({"topic": "a/b", "every": 5, "properties": {"schedule_id": "x"}}, "set by the scheduler"),
        ({"topic": "a/b", "every": 5, "colour": "red"}, "unknown schedule field"),
    ],
)
def test_invalid_bodies_are_rejected_with_a_clear_message(body, fragment):
    with pytest.raises(ValidationError) as ei:
        parse_schedule(body, now=T("2026-06-01T00:00:00Z"))
    assert fragment.lower() in str(ei.value).lower()
    assert ei.value.http_status == 400


def test_at_in_the_past_is_rejected_beyond_the_grace():
    now = T("2026-06-01T12:00:00Z")
    with pytest.raises(ValidationError, match="in the past"):
        parse_schedule({"topic": "a", "at": "2026-06-01T11:58:00Z"}, now=now)
    spec = parse_schedule({"topic": "a", "at": "2026-06-01T11:59:30Z"}, now=now)
    assert spec.when == T("2026-06-01T11:59:30Z")


def test_builder_forms_map_to_cron():
    assert parse_schedule({"topic": "a", "hourly": {"minute": 5}}).cron_expression() == "5 * * * *"
    assert parse_schedule({"topic": "a", "hourly": 7}).cron_expression() == "7 * * * *"
    assert parse_schedule({"topic": "a", "daily": {"hour": 3, "minute": 30}}).cron_expression() == "30 3 * * *"
    assert parse_schedule({"topic": "a", "daily": "03:30"}).cron_expression() == "30 3 * * *"
    w = parse_schedule({"topic": "a", "weekly": {"weekday": "Monday", "hour": 8, "minute": 0}})
    assert w.cron_expression() == "0 8 * * 1"
    assert w.when == {"weekday": "mon", "hour": 8, "minute": 0}
    m = parse_schedule({"topic": "a", "monthly": {"day": 31, "hour": 0, "minute": 0}})
    assert m.cron_expression() == "0 0 31 * *"
    y = parse_schedule({"topic": "a", "yearly": {"month": 2, "day": 29, "hour": 0, "minute": 0}})
    assert y.cron_expression() == "0 0 29 2 *"


def test_weekday_numbers_follow_cron_and_iso_zero_and_seven_are_sunday():
    def wd(v):
        return parse_schedule({"topic": "a", "weekly": {"weekday": v, "hour": 0, "minute": 0}}).when["weekday"]

    assert wd(0) == "sun" and wd(7) == "sun" and wd(1) == "mon" and wd(6) == "sat" and wd("SAT") == "sat"


# -- identity -----------------------------------------------------------------------


def test_id_is_a_stable_hash_of_the_normalised_content():
    a = parse_schedule({"topic": "a/b", "properties": {"x": 1, "y": [1, 2]}, "every": 60})
    b = parse_schedule({"properties": {"y": [1, 2], "x": 1}, "every": 60.0, "topic": "a/b"})
    assert a.id == b.id and len(a.id) == 16
    assert parse_schedule({"topic": "a/b", "properties": {"x": 2}, "every": 60}).id != a.id
    assert parse_schedule({"topic": "a/b", "properties": {"x": 1, "y": [1, 2]}, "every": 61}).id != a.id
    assert parse_schedule({"topic": "a/c", "properties": {"x": 1, "y": [1, 2]}, "every": 60}).id != a.id
    # equivalent spellings of the same builder are the same schedule
    w1 = parse_schedule({"topic": "a", "weekly": {"weekday": 1, "hour": 8, "minute": 0}})
    w2 = parse_schedule({"topic": "a", "weekly": {"weekday": "monday", "hour": 8, "minute": 0}})
    assert w1.id == w2.id
    assert parse_schedule({"topic": "a", "cron": "*/5  *  * * *"}).id == parse_schedule(
        {"topic": "a", "cron": "*/5 * * * *"}
    ).id
    assert parse_schedule({"topic": "a", "at": "2026-06-01T12:00:00+02:00"}).id == parse_schedule(
        {"topic": "a", "at": "2026-06-01T10:00:00Z"}
    ).id


def test_id_does_not_depend_on_python_hash_seed():
    # the same content hashed in another process must give the same id
    import subprocess
    import sys

    code = (
        "from jobmesh.scheduler.schedule import parse_schedule;"
        "print(parse_schedule({'topic':'a/b','properties':{'k':'v'},'cron':'0 * * * *'}).id)"
    )
    out = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONHASHSEED": seed}, check=True
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert out == {parse_schedule({"topic": "a/b", "properties": {"k": "v"}, "cron": "0 * * * *"}).id}


def test_to_json_round_trips_to_the_same_schedule():
    for body in (
        {"topic": "a", "properties": {"p": 1}, "at": "2026-06-01T10:00:00Z"},
        {"topic": "a", "every": 2.5},
        {"topic": "a", "cron": "0 0 L * *"},
        {"topic": "a", "weekly": {"weekday": 3, "hour": 4, "minute": 5}},
    ):
        spec = parse_schedule(body)
        listed = Schedule(spec, T("2026-01-01T00:00:00Z")).to_json(now=T("2026-01-01T00:00:00Z"))
        assert listed["id"] == spec.id
        assert parse_schedule(listed).id == spec.id


# -- next fire: cron edges, UTC ------------------------------------------------------


def nxt(body: dict, after: str) -> str | None:
    t = parse_schedule(body).next_fire(T(after))
    return iso(t)


def test_cron_next_fire_is_strictly_after_and_on_minute_boundaries():
    c = {"topic": "a", "cron": "* * * * *"}
    assert nxt(c, "2026-03-01T10:00:00Z") == "2026-03-01T10:01:00.000Z"
    assert nxt(c, "2026-03-01T10:00:59.999Z") == "2026-03-01T10:01:00.000Z"
    assert nxt(c, "2026-03-01T10:00:00.001Z") == "2026-03-01T10:01:00.000Z"
    assert nxt(c, "2026-03-01T23:59:30Z") == "2026-03-02T00:00:00.000Z"


def test_cron_month_ends_and_leap_days():
    assert nxt({"topic": "a", "cron": "0 0 31 * *"}, "2026-04-01T00:00:00Z") == "2026-05-31T00:00:00.000Z"
    assert nxt({"topic": "a", "cron": "0 0 L * *"}, "2026-02-01T00:00:00Z") == "2026-02-28T00:00:00.000Z"
    assert nxt({"topic": "a", "cron": "0 0 L * *"}, "2028-02-01T00:00:00Z") == "2028-02-29T00:00:00.000Z"
    assert nxt({"topic": "a", "cron": "0 0 29 2 *"}, "2026-11-25T00:00:00Z") == "2028-02-29T00:00:00.000Z"
    assert nxt({"topic": "a", "cron": "0 0 29 2 *"}, "2028-02-29T00:00:00Z") == "2032-02-29T00:00:00.000Z"
    assert nxt({"topic": "a", "cron": "59 23 31 12 *"}, "2026-12-31T23:59:00Z") == "2027-12-31T23:59:00.000Z"
    y = {"topic": "a", "yearly": {"month": 2, "day": 29, "hour": 12, "minute": 0}}
    assert nxt(y, "2029-01-01T00:00:00Z") == "2032-02-29T12:00:00.000Z"
    m = {"topic": "a", "monthly": {"day": 31, "hour": 0, "minute": 0}}
    assert nxt(m, "2026-02-01T00:00:00Z") == "2026-03-31T00:00:00.000Z"  # skips months without a 31st


def test_cron_is_utc_no_daylight_saving_shift():
    # 02:30 every day exists every day in UTC, including the EU/US DST switch dates
    d = {"topic": "a", "daily": {"hour": 2, "minute": 30}}
    assert nxt(d, "2026-03-29T00:00:00Z") == "2026-03-29T02:30:00.000Z"  # EU spring forward
    assert nxt(d, "2026-03-08T00:00:00Z") == "2026-03-08T02:30:00.000Z"  # US spring forward
    assert nxt(d, "2026-10-25T02:30:00Z") == "2026-10-26T02:30:00.000Z"  # EU fall back: once only
    assert nxt({"topic": "a", "at": "2026-06-01T12:00:00+02:00"}, "2026-06-01T09:59:59Z") == "2026-06-01T10:00:00.000Z"


def test_weekly_next_fire():
    w = {"topic": "a", "weekly": {"weekday": "mon", "hour": 8, "minute": 0}}
    # 2026-11-25 is a Wednesday
    assert nxt(w, "2026-11-25T12:00:00Z") == "2026-11-30T08:00:00.000Z"
    assert nxt(w, "2026-11-30T07:59:59Z") == "2026-11-30T08:00:00.000Z"
    assert nxt(w, "2026-11-30T08:00:00Z") == "2026-12-07T08:00:00.000Z"


def test_cron_with_seconds_field():
    c = {"topic": "a", "cron": "* * * * * */15"}
    assert nxt(c, "2026-03-01T10:00:00Z") == "2026-03-01T10:00:15.000Z"
    assert nxt(c, "2026-03-01T10:00:44.5Z") == "2026-03-01T10:00:45.000Z"


def test_every_is_aligned_to_the_epoch_grid():
    e = {"topic": "a", "every": 60}
    assert nxt(e, "2026-03-01T10:00:00Z") == "2026-03-01T10:01:00.000Z"
    assert nxt(e, "2026-03-01T10:00:30.250Z") == "2026-03-01T10:01:00.000Z"
    assert nxt({"topic": "a", "every": 3600}, "2026-03-01T10:20:00Z") == "2026-03-01T11:00:00.000Z"
    assert nxt({"topic": "a", "every": 86400}, "2026-03-01T10:20:00Z") == "2026-03-02T00:00:00.000Z"
    # fractional intervals stay on an exact millisecond grid (no float drift)
    spec = parse_schedule({"topic": "a", "every": 0.1})
    t = 1_700_000_000.0
    seen = []
    for _ in range(50):
        t = spec.next_fire(t)
        seen.append(round(t * 1000))
    assert all(b - a == 100 for a, b in zip(seen, seen[1:]))
    assert spec.next_fire(0.3) == pytest.approx(0.4)


def test_at_fires_once():
    a = parse_schedule({"topic": "a", "at": "2026-06-01T10:00:00Z"})
    assert iso(a.next_fire(T("2026-06-01T09:00:00Z"))) == "2026-06-01T10:00:00.000Z"
    assert a.next_fire(T("2026-06-01T10:00:00Z")) is None


# -- due lists ----------------------------------------------------------------------


def test_every_fires_each_slot_once_and_never_twice_for_the_same_slot():
    s = S({"topic": "a", "every": 10}, created="2026-01-01T00:00:03Z")
    fired: dict[str, float] = {}
    fires_at = []
    now = T("2026-01-01T00:00:03Z")
    for _ in range(100):  # tick every 0.5 s of fake time for 50 s
        for f in due([s], fired, now):
            fires_at.append(iso(f.slot))
            fired[f.schedule_id] = f.slot
        now += 0.5
    assert fires_at == [
        "2026-01-01T00:00:10.000Z",
        "2026-01-01T00:00:20.000Z",
        "2026-01-01T00:00:30.000Z",
        "2026-01-01T00:00:40.000Z",
        "2026-01-01T00:00:50.000Z",
    ]


def test_slots_before_creation_do_not_fire():
    s = S({"topic": "a", "every": 10}, created="2026-01-01T00:00:10Z")
    assert due([s], {}, T("2026-01-01T00:00:10Z")) == []  # created exactly on a slot: not that slot
    assert due([s], {}, T("2026-01-01T00:00:19.999Z")) == []
    [f] = due([s], {}, T("2026-01-01T00:00:20Z"))
    assert iso(f.slot) == "2026-01-01T00:00:20.000Z" and f.missed == 0


def test_missed_fires_fire_once_for_the_latest_slot_no_burst():
    s = S({"topic": "a", "cron": "* * * * *"}, created="2026-01-01T00:00:00Z")
    last = {s.id: T("2026-01-01T00:05:00Z")}
    # no leader ran from 00:05 to 01:00:30: 55 slots missed
    fires = due([s], last, T("2026-01-01T01:00:30Z"))
    assert len(fires) == 1
    assert iso(fires[0].slot) == "2026-01-01T01:00:00.000Z"
    assert fires[0].missed == 54  # 00:06 .. 00:59 were skipped, 01:00 fires
    last[s.id] = fires[0].slot
    assert due([s], last, T("2026-01-01T01:00:59Z")) == []
    assert len(due([s], last, T("2026-01-01T01:01:00Z"))) == 1


def test_missed_every_counts():
    s = S({"topic": "a", "every": 1}, created="2026-01-01T00:00:00Z")
    [f] = due([s], {s.id: T("2026-01-01T00:00:05Z")}, T("2026-01-01T00:00:09.5Z"))
    assert iso(f.slot) == "2026-01-01T00:00:09.000Z" and f.missed == 3


def test_suspended_does_not_fire_and_resume_does_not_catch_up():
    base = S({"topic": "a", "every": 10}, created="2026-01-01T00:00:00Z")
    sus = Schedule(base.spec, base.created, suspended=True)
    assert due([sus], {}, T("2026-01-01T00:05:00Z")) == []
    assert next_fire_time(sus, None, T("2026-01-01T00:05:00Z")) is None
    resumed = Schedule(base.spec, base.created, suspended=False, resumed=T("2026-01-01T00:05:03Z"))
    assert due([resumed], {base.id: T("2026-01-01T00:00:10Z")}, T("2026-01-01T00:05:03Z")) == []
    [f] = due([resumed], {base.id: T("2026-01-01T00:00:10Z")}, T("2026-01-01T00:05:10Z"))
    assert iso(f.slot) == "2026-01-01T00:05:10.000Z"


def test_at_fires_once_even_if_late_and_asks_to_be_removed():
    s = S({"topic": "a", "at": "2026-01-01T00:01:00Z"}, created="2026-01-01T00:00:00Z")
    assert due([s], {}, T("2026-01-01T00:00:59.999Z")) == []
    [f] = due([s], {}, T("2026-01-01T03:00:00Z"))  # no leader at 00:01: fires late, once
    assert f.remove_after and iso(f.slot) == "2026-01-01T00:01:00.000Z"
    assert due([s], {s.id: f.slot}, T("2026-01-01T03:00:01Z")) == []
    # an `at` created just after its time (within the grace) still fires
    late = S({"topic": "a", "at": "2026-01-01T00:01:00Z"}, created="2026-01-01T00:01:20Z")
    assert len(due([late], {}, T("2026-01-01T00:01:20Z"))) == 1


def test_due_orders_fires_by_slot_and_is_one_per_schedule():
    a = S({"topic": "a", "every": 5}, created="2026-01-01T00:00:00Z")
    b = S({"topic": "b", "every": 7}, created="2026-01-01T00:00:00Z")
    c = S({"topic": "c", "cron": "* * * * *"}, created="2026-01-01T00:00:00Z")
    fires = due([c, a, b], {}, T("2026-01-01T00:01:02Z"))
    assert fires[0].schedule_id == b.id and iso(fires[0].slot) == "2026-01-01T00:00:56.000Z"
    assert {f.schedule_id for f in fires[1:]} == {a.id, c.id}
    assert [iso(f.slot) for f in fires[1:]] == ["2026-01-01T00:01:00.000Z"] * 2
    assert [f.schedule_id for f in fires[1:]] == sorted([a.id, c.id])  # ties: by id, deterministic


def test_next_wakeup_is_the_earliest_next_fire():
    a = S({"topic": "a", "every": 10}, created="2026-01-01T00:00:00Z")
    b = S({"topic": "b", "cron": "* * * * *"}, created="2026-01-01T00:00:00Z")
    now = T("2026-01-01T00:00:01Z")
    assert iso(next_wakeup([a, b], {}, now)) == "2026-01-01T00:00:10.000Z"
    assert next_wakeup([Schedule(a.spec, a.created, suspended=True)], {}, now) is None
    assert next_wakeup([], {}, now) is None
    # something already due: wake now
    assert next_wakeup([a], {}, T("2026-01-01T00:00:25Z")) == T("2026-01-01T00:00:25Z")
    # an `at` that fired has no next fire
    at = S({"topic": "a", "at": "2026-01-01T00:01:00Z"})
    assert next_fire_time(at, T("2026-01-01T00:01:00Z"), T("2026-01-01T00:02:00Z")) is None


def test_to_json_shows_next_and_last_fire():
    s = S({"topic": "a", "properties": {"k": 1}, "every": 30}, created="2026-01-01T00:00:00Z")
    j = s.to_json(last_fired=T("2026-01-01T00:00:30Z"), now=T("2026-01-01T00:00:40Z"))
    assert j == {
        "id": s.id,
        "kind": "every",
        "topic": "a",
        "properties": {"k": 1},
        "every": 30,
        "suspended": False,
        "created": "2026-01-01T00:00:00.000Z",
        "last_fired": "2026-01-01T00:00:30.000Z",
        "next_fire": "2026-01-01T00:01:00.000Z",
    }


# -- replication helpers -------------------------------------------------------------


def test_records_merge_last_writer_wins_and_tombstones():
    spec = parse_schedule({"topic": "a", "every": 5})
    r1 = ScheduleRecord(spec, 1.0, version=(1.0, "a"))
    r2 = ScheduleRecord(spec, 1.0, suspended=True, version=(2.0, "b"))
    gone = ScheduleRecord(spec, 1.0, removed=True, version=(3.0, "a"))
    assert merge_records({}, [r1]) == [r1]
    assert merge_records({r1.id: r1}, [r2]) == [r2]
    assert merge_records({r2.id: r2}, [r1]) == []
    assert merge_records({r2.id: r2}, [gone]) == [gone]
    # ties on time break by node name, the same way on every node
    ra = ScheduleRecord(spec, 1.0, version=(5.0, "a"))
    rb = ScheduleRecord(spec, 1.0, suspended=True, version=(5.0, "b"))
    assert merge_records({ra.id: ra}, [rb]) == [rb] and merge_records({rb.id: rb}, [ra]) == []
    assert records_digest({r1.id: r1}) != records_digest({r2.id: r2})
    assert records_digest([r1]) == records_digest({r1.id: r1})


def test_record_wire_round_trip_and_bad_input():
    spec = parse_schedule({"topic": "a", "properties": {"x": [1]}, "daily": {"hour": 1, "minute": 2}})
    r = ScheduleRecord(spec, 12.5, suspended=True, resumed=3.0, removed=False, version=(14.0, "n1"))
    assert ScheduleRecord.from_wire(r.to_wire()) == r
    for bad in (None, {}, {"spec": {"topic": "a", "every": 1}}, {"spec": {"topic": "a", "every": 1}, "created": 1,
                                                                   "version": [1]}):
        with pytest.raises(ValidationError):
            ScheduleRecord.from_wire(bad)


def test_merge_fired_keeps_the_max_and_ignores_junk():
    mine = {"a": 10.0, "b": 20.0}
    assert merge_fired(mine, {"a": 15.0, "b": 5.0, "c": 1.0}) == {"a": 15.0, "c": 1.0}
    assert merge_fired(mine, {"a": "x", 3: 4.0, "d": True, "e": float("inf")}) == {}
    assert merge_fired(mine, ["not", "a", "dict"]) == {}


# -- time zones (issue 12) ------------------------------------------------------------

AMS = "Europe/Amsterdam"  # CET/CEST: 2026-03-29 02:00 -> 03:00, 2026-10-25 03:00 -> 02:00


def fires(body: dict, start: str, n: int) -> list[str]:
    spec = parse_schedule(body)
    out, t = [], T(start)
    for _ in range(n):
        t = spec.next_fire(t)
        out.append(iso(t))
    return out


def test_cron_in_a_zone_follows_its_wall_clock() -> None:
    d = {"topic": "a", "cron": "0 6 * * *", "tz": AMS}
    assert fires(d, "2026-01-10T00:00:00Z", 1) == ["2026-01-10T05:00:00.000Z"]  # 06:00 CET
    assert fires(d, "2026-07-10T00:00:00Z", 1) == ["2026-07-10T04:00:00.000Z"]  # 06:00 CEST
    daily = {"topic": "a", "daily": "06:00", "tz": AMS}  # the calendar forms too
    assert fires(daily, "2026-07-10T00:00:00Z", 1) == ["2026-07-10T04:00:00.000Z"]
    assert parse_schedule(daily).to_json()["tz"] == AMS
    ny = {"topic": "a", "cron": "0 9 * * mon-fri", "tz": "America/New_York"}
    assert fires(ny, "2026-11-27T00:00:00Z", 2) == ["2026-11-27T14:00:00.000Z", "2026-11-30T14:00:00.000Z"]


def test_a_slot_in_the_spring_gap_fires_once_an_hour_on() -> None:
    # 02:30 does not exist on 2026-03-29 in Amsterdam: it fires at 03:30 CEST (01:30 UTC), once
    assert fires({"topic": "a", "cron": "30 2 * * *", "tz": AMS}, "2026-03-28T12:00:00Z", 3) == [
        "2026-03-29T01:30:00.000Z", "2026-03-30T00:30:00.000Z", "2026-03-31T00:30:00.000Z"]
    # every half hour across the gap: every instant once, none twice, none skipped
    assert fires({"topic": "a", "cron": "*/30 * * * *", "tz": AMS}, "2026-03-28T23:50:00Z", 6) == [
        "2026-03-29T00:00:00.000Z", "2026-03-29T00:30:00.000Z", "2026-03-29T01:00:00.000Z",
        "2026-03-29T01:30:00.000Z", "2026-03-29T02:00:00.000Z", "2026-03-29T02:30:00.000Z"]


def test_a_slot_in_the_autumn_overlap_fires_once_at_its_first_occurrence() -> None:
    # 02:30 happens twice on 2026-10-25 (CEST, then CET): it fires at the first, 00:30 UTC
    assert fires({"topic": "a", "cron": "30 2 * * *", "tz": AMS}, "2026-10-24T12:00:00Z", 2) == [
        "2026-10-25T00:30:00.000Z", "2026-10-26T01:30:00.000Z"]
    assert fires({"topic": "a", "cron": "*/30 * * * *", "tz": AMS}, "2026-10-24T23:50:00Z", 4) == [
        "2026-10-25T00:00:00.000Z", "2026-10-25T00:30:00.000Z",  # 02:00, 02:30 CEST
        "2026-10-25T02:00:00.000Z", "2026-10-25T02:30:00.000Z"]  # 03:00, 03:30 CET: the second 02:xx skipped


def test_due_in_a_zone_fires_each_dst_slot_once() -> None:
    for start, end, cron in (("2026-03-28T20:00:00Z", "2026-03-29T06:00:00Z", "*/15 * * * *"),
                             ("2026-10-24T20:00:00Z", "2026-10-25T06:00:00Z", "*/15 * * * *"),
                             ("2026-03-28T20:00:00Z", "2026-03-29T06:00:00Z", "30 2 * * *"),
                             ("2026-10-24T20:00:00Z", "2026-10-25T06:00:00Z", "30 2 * * *")):
        s = S({"topic": "a", "cron": cron, "tz": AMS}, created=start)
        fired: dict[str, float] = {}
        slots = []
        t = T(start)
        while t < T(end):  # a leader ticking every 20 s
            for f in due([s], fired, t):
                fired[f.schedule_id] = f.slot
                slots.append(f.slot)
            t += 20
        assert len(slots) == len(set(slots)) and slots == sorted(slots)
        local = [iso(x) for x in slots]
        if cron == "30 2 * * *":
            assert len(slots) == 1, local
        elif start.startswith("2026-03"):  # 39 UTC quarters after creation; the gap's slots land on them
            assert len(slots) == 39, local
        else:  # the repeated wall-clock hour's four quarters fire once, not twice
            assert len(slots) == 35, local


def test_tz_validation_and_id() -> None:
    base = {"topic": "a", "cron": "0 6 * * *"}
    assert parse_schedule({**base, "tz": AMS}).id != parse_schedule(base).id
    assert parse_schedule({**base, "tz": "UTC"}).id == parse_schedule(base).id  # UTC is the default
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        parse_schedule({**base, "tz": "Mars/Olympus"})
    with pytest.raises(ValidationError, match="'tz' applies to cron and the calendar forms, not to 'every'"):
        parse_schedule({"topic": "a", "every": 60, "tz": AMS})
    rec = ScheduleRecord(parse_schedule({**base, "tz": AMS}), 0.0, version=(1.0, "n"))
    assert ScheduleRecord.from_wire(rec.to_wire()).spec.tz == AMS  # replicates with its zone
