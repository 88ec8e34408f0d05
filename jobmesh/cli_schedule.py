"""``jobmesh schedule add|list|remove|suspend|resume``: scheduled jobs over a node's HTTP API.

Follows ``jobmesh.cli``'s conventions (``--url``/``JOBMESH_URL``, ``--token``/
``JOBMESH_TOKEN``, ``--json``, one-line errors, exit 1 on error and 2 on usage).
Only the stdlib: the command stays fast to start.
"""

from __future__ import annotations

import argparse
from typing import Any

from .cli import CliError, add_client_options, add_id_commands, add_property_option, api_path, client, emit, table


def _path(schedule_id: str | None = None, action: str | None = None) -> str:
    return api_path("/api/v1/schedules", schedule_id, action)


def _hhmm(text: str) -> dict[str, int]:
    h, sep, m = text.partition(":")
    if not sep or not h.isdigit() or not m.isdigit():
        raise CliError(f"expected a time HH:MM, got {text!r}", code=2)
    return {"hour": int(h), "minute": int(m)}


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CliError(f"{what} must be a whole number, got {text!r}", code=2) from None


def _weekday(text: str) -> Any:
    return int(text) if text.isdigit() else text


def build_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST body from the parsed flags (the node validates the values)."""
    body: dict[str, Any] = {"topic": args.topic, "properties": dict(args.property or [])}
    if args.at is not None:
        body["at"] = args.at
    elif args.every is not None:
        body["every"] = args.every
    elif args.cron is not None:
        body["cron"] = args.cron
    elif args.hourly is not None:
        body["hourly"] = {"minute": _int(args.hourly, "--hourly MINUTE")}
    elif args.daily is not None:
        body["daily"] = _hhmm(args.daily)
    elif args.weekly is not None:
        day, hhmm = args.weekly
        body["weekly"] = {"weekday": _weekday(day), **_hhmm(hhmm)}
    elif args.monthly is not None:
        day, hhmm = args.monthly
        body["monthly"] = {"day": _int(day, "--monthly DAY"), **_hhmm(hhmm)}
    elif args.yearly is not None:
        date, hhmm = args.yearly
        month, sep, day = date.partition("-")
        if not sep:
            raise CliError(f"--yearly expects MM-DD HH:MM, got {date!r}", code=2)
        body["yearly"] = {"month": _int(month, "--yearly MONTH"), "day": _int(day, "--yearly DAY"), **_hhmm(hhmm)}
    else:  # pragma: no cover - argparse requires one of the group
        raise CliError("give one of --at, --every, --cron, --hourly, --daily, --weekly", code=2)
    if getattr(args, "tz", None):
        body["tz"] = args.tz
    return body


def when_text(s: dict[str, Any]) -> str:
    """A schedule's timing in a few words: 'every 60 s', 'cron */5 * * * *', 'daily 03:30 UTC'."""
    kind = s.get("kind")
    w = s.get(kind) if isinstance(kind, str) else None
    if kind == "at":
        return f"at {w}"
    if kind == "every":
        return f"every {w} s"
    zone = s.get("tz") or "UTC"
    if kind == "cron":
        return f"cron {w}" + (f" ({zone})" if s.get("tz") else "")
    if isinstance(w, dict):
        hm = f"{w.get('hour', 0):02d}:{w.get('minute', 0):02d}" if "hour" in w else f"xx:{w.get('minute', 0):02d}"
        if kind == "hourly":
            return f"hourly at :{w.get('minute', 0):02d}" + (f" ({zone})" if s.get("tz") else "")
        if kind == "daily":
            return f"daily {hm} {zone}"
        if kind == "weekly":
            return f"weekly {w.get('weekday')} {hm} {zone}"
        if kind == "monthly":
            return f"monthly day {w.get('day')} {hm} {zone}"
        if kind == "yearly":
            return f"yearly {w.get('month'):02d}-{w.get('day'):02d} {hm} {zone}"
    return str(kind)


def render_schedule_line(s: dict[str, Any]) -> str:
    state = "suspended" if s.get("suspended") else "active"
    nxt = s.get("next_fire") or "-"
    return f"{s['id']}  {s['topic']}  {when_text(s)}  {state}  next {nxt}"


def render_schedules(data: dict[str, Any]) -> str:
    items = data.get("schedules", []) if isinstance(data, dict) else []
    if not items:
        return "no schedules"
    rows = [
        [s["id"], s["topic"], when_text(s), "suspended" if s.get("suspended") else "active",
         s.get("next_fire"), s.get("last_fired")]
        for s in items
    ]
    return table(["ID", "TOPIC", "WHEN", "STATE", "NEXT FIRE", "LAST FIRED"], rows)


def cmd_add(args: argparse.Namespace) -> int:
    schedule = client(args).post(_path(), build_body(args))
    emit(args, schedule, render_schedule_line)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    emit(args, client(args).get(_path()), render_schedules)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    removed = client(args).delete(_path(args.id))
    emit(args, removed, lambda s: f"removed {s['id']}  {s['topic']}  {when_text(s)}")
    return 0


def cmd_suspend(args: argparse.Namespace) -> int:
    emit(args, client(args).post(_path(args.id, "suspend")), render_schedule_line)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    emit(args, client(args).post(_path(args.id, "resume")), render_schedule_line)
    return 0


def add_parser(subparsers: Any) -> None:
    """Add ``jobmesh schedule ...`` to the ``jobmesh`` command's sub-parsers."""
    sp = subparsers.add_parser("schedule", help="scheduled jobs: add, list, remove, suspend, resume")
    ssub = sp.add_subparsers(dest="schedule_command", metavar="ACTION", required=True)

    p = ssub.add_parser("add", help="add a scheduled job (an identical one returns the existing schedule)")
    p.add_argument("topic", metavar="TOPIC")
    add_property_option(p)
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--at", metavar="ISO", help="once, at this time (ISO 8601; no zone means UTC)")
    when.add_argument("--every", type=float, metavar="SECONDS",
                      help="every N seconds, on a grid aligned to the epoch (60 = each minute)")
    when.add_argument("--cron", metavar="EXPR", help="a cron expression, in UTC or --tz (quote it)")
    when.add_argument("--hourly", metavar="MINUTE", help="every hour at this minute")
    when.add_argument("--daily", metavar="HH:MM", help="every day at this time (UTC or --tz)")
    when.add_argument("--weekly", nargs=2, metavar=("DAY", "HH:MM"),
                      help="every week: DAY is mon..sun or 0-7 (0 and 7 = Sunday)")
    when.add_argument("--monthly", nargs=2, metavar=("DAY", "HH:MM"), help="every month on day DAY (1-31)")
    when.add_argument("--yearly", nargs=2, metavar=("MM-DD", "HH:MM"), help="every year on this date")
    p.add_argument("--tz", metavar="ZONE", help="the time zone of --cron and the calendar forms, an IANA name "
                                                "such as Europe/Amsterdam (default UTC); DST slots fire once")
    add_client_options(p)
    p.set_defaults(func=cmd_add)

    p = ssub.add_parser("list", help="list schedules")
    add_client_options(p)
    p.set_defaults(func=cmd_list)

    add_id_commands(ssub, (
        ("remove", cmd_remove, "remove a schedule"),
        ("suspend", cmd_suspend, "stop a schedule from firing until resumed"),
        ("resume", cmd_resume, "let a suspended schedule fire again (missed slots are not caught up)"),
    ))


__all__ = ["CliError", "add_parser", "build_body", "render_schedules", "when_text"]
