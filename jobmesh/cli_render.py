"""How the command line shows answers: ``emit`` (``--json`` or the human text), ``table`` and
the renderers of jobs, topology, queues and statistics, with the small formatters they share
(``duration``, ``_short_time``, ``_ms``, ``job_status``). Pure functions of the node's JSON:
no HTTP here.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable, Sequence


def emit(args: argparse.Namespace, data: Any, render: Callable[[Any], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=False))
    else:
        text = render(data)
        if text:
            print(text)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain left-aligned text table; ``-`` for missing values."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    return str(value)


def _short_time(iso: str | None) -> str | None:
    """``2026-01-02T03:04:05.678Z`` -> ``2026-01-02 03:04:05Z``: seconds, and still saying UTC."""
    if not iso:
        return None
    return iso.replace("T", " ")[:19] + ("Z" if iso.endswith("Z") else "")


def duration(seconds: float | None) -> str:
    """Seconds for people: ``0.9998`` -> ``1.0 s``, ``75.2`` -> ``1 min 15 s``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec} s" if sec else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def render_job(job: dict[str, Any]) -> str:
    prog = job.get("progress") or {}
    lines = [
        f"id:          {job['id']}",
        f"topic:       {job['topic']}",
        f"state:       {job['state']}",
        f"queue:       {job.get('queue')}",
        f"origin:      {job.get('origin') or '-'}",
        f"target:      {job.get('target') or '-'}",
        f"created:     {job.get('created') or '-'}",
        f"started:     {job.get('started') or '-'}",
        f"finished:    {job.get('finished') or '-'}",
        f"retries:     {job.get('retry_count', 0)}/{job.get('max_retries', '-')}",
        f"properties:  {json.dumps(job.get('properties') or {}, sort_keys=True)}",
    ]
    if prog.get("steps"):
        lines.append(f"progress:    {prog.get('step', 0)}/{prog['steps']}" + (f" eta {prog['eta']}" if prog.get("eta") else ""))
    for label, field in (("not before", "not_before"), ("key", "key"), ("timeout", "timeout")):
        if job.get(field) is not None:
            value = f"{job[field]:g} s" if field == "timeout" else job[field]
            lines.append(f"{label + ':':<13}{value}")
    if job.get("priority"):
        lines.append(f"priority:    {job['priority']}")
    if job.get("result_message"):
        lines.append(f"message:     {job['result_message']}")
    if job.get("result") is not None:
        lines.append(f"result:      {json.dumps(job['result'], sort_keys=True)}")
    for label, key in (("payload:    ", "payload"), ("output:     ", "output_payload")):
        items = job.get(key) or {}
        if items:
            lines.append(f"{label} " + ", ".join(f"{n} ({items[n].get('size')} bytes)" for n in sorted(items)))
    log_lines = prog.get("log") or []
    if log_lines:
        lines.append("log:")
        lines.extend(f"  {line}" for line in log_lines)
    return "\n".join(lines)


def render_jobs(data: dict[str, Any]) -> str:
    jobs = data.get("jobs", [])
    if not jobs:
        return "no jobs"
    text = table(
        ["ID", "STATE", "TOPIC", "QUEUE", "RETRIES", "CREATED", "TARGET"],
        [
            [j["id"], j["state"], j["topic"], j.get("queue"), j.get("retry_count"), _short_time(j.get("created")),
             _target_of(j)]
            for j in jobs
        ],
    )
    total = data.get("total")
    if isinstance(total, int) and total > len(jobs):
        text += (f"\nshowing the newest {len(jobs)} of {total} jobs; --limit N shows more, "
                 f"--state/--topic/--queue narrow it down")
    return text


def _target_of(job: dict[str, Any]) -> str | None:
    """Where the job runs or ran; a copy of another node's job is running here, at the node asked."""
    return job.get("target")


def render_job_line(job: dict[str, Any]) -> str:
    if job.get("deleted"):
        return f"{job['id']}  deleted"
    msg = f"  {job['result_message']}" if job.get("result_message") else ""
    return f"{job['id']}  {job['state']}  {job['topic']}{msg}"


TOPOLOGY_WIDTH = 100  # columns the topology table keeps to (a terminal and a half is unreadable)


def render_topology(data: dict[str, Any]) -> str:
    """One row per node, within ``TOPOLOGY_WIDTH`` columns: the topic list is cut to fit (with
    "+N more"); ``--json`` has everything."""
    rows = []
    for i in data.get("instances", []):
        cap = i.get("capacity") or {}
        name = i["name"] + (" *" if i.get("leader") else "") + (" (here)" if i.get("local") else "")
        load = f"{cap.get('active', 0)}/{cap.get('slots', '?')}" if cap else None
        topics = list(i.get("topics") or [])
        enabled = set(i.get("offload_topics") or [])
        on = sum(1 for t in topics if t in enabled)
        offload = "all" if topics and on == len(topics) else "none" if topics and not on else f"{on}/{len(topics)}"
        rows.append([name, i.get("endpoint"), load, cap.get("queued") if cap else None,
                     offload if topics else None, topics])
    head = f"local: {data.get('local')}   leader: {data.get('leader')} (*)"
    if data.get("current") is False:
        head += "   (changing)"
    headers = ["NAME", "ENDPOINT", "ACTIVE", "QUEUED", "OFFLOAD", "TOPICS"]
    fixed = [[_cell(v) for v in r[:-1]] for r in rows]
    widths = [max([len(h)] + [len(r[k]) for r in fixed]) for k, h in enumerate(headers[:-1])]
    room = max(20, TOPOLOGY_WIDTH - sum(w + 2 for w in widths))
    cells = [[*r[:-1], _fit(t, room)] for r, t in zip(rows, [r[-1] for r in rows])]
    return head + "\n" + table(headers, cells)


def _fit(items: list[str], width: int) -> str:
    """``a,b,c`` cut to ``width`` characters with ``+N more`` for what did not fit."""
    out: list[str] = []
    for k, item in enumerate(items):
        rest = len(items) - k - 1
        candidate = ",".join([*out, item])
        tail = f" +{rest} more" if rest else ""
        if len(candidate) + len(tail) > width and out:
            return ",".join(out) + f" +{len(items) - k} more"
        out.append(item)
    return ",".join(out) or "-"


def render_queues(data: dict[str, Any]) -> str:
    rows = []
    for q in data.get("queues", []):
        s = q.get("statistics") or {}
        rows.append(
            [
                q.get("name"), q.get("type"), q.get("topics"), q.get("max_parallel"), q.get("suspended"),
                s.get("queued"), s.get("active"), s.get("finished"), s.get("failed"), s.get("cancelled"),
                _ms(s.get("average_waiting_time")), _ms(s.get("average_processing_time")),
            ]
        )
    return table(
        ["NAME", "TYPE", "TOPICS", "PARALLEL", "SUSPENDED", "QUEUED", "ACTIVE", "FINISHED", "FAILED RUNS",
         "CANCELLED", "AVG WAIT", "AVG RUN"],
        rows,
    ) + "\n" + STATS_NOTE


def render_queue_line(q: dict[str, Any]) -> str:
    return f"queue {q.get('name')}: {'suspended' if q.get('suspended') else 'running'}"


STAT_FIELDS = ("queued", "active", "finished", "failed", "cancelled", "processed", "average_waiting_time", "average_processing_time")


STATS_NOTE = ("FINISHED: jobs that succeeded.  FAILED RUNS: attempts that failed and were retried (one job\n"
              "may count many).  CANCELLED: jobs given up, stopped or dropped.")


def _ms(value: Any) -> str | None:
    """Milliseconds as a rounded duration (``0.8 ms``, ``1.2 s``)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    if value < 1000:
        return f"{value:.1f} ms" if value < 10 else f"{value:.0f} ms"
    return duration(value / 1000.0)


def _stat_row(s: dict[str, Any]) -> list[Any]:
    return [*(s.get(f) for f in STAT_FIELDS[:6]), _ms(s.get("average_waiting_time")), _ms(s.get("average_processing_time"))]


def render_stats(data: dict[str, Any]) -> str:
    def rows(section: dict[str, Any]) -> list[list[Any]]:
        return [[name, *_stat_row(s)] for name, s in sorted(section.items())]

    headers = ["QUEUED", "ACTIVE", "FINISHED", "FAILED RUNS", "CANCELLED", "PROCESSED", "AVG WAIT", "AVG RUN"]
    out = [table(["", *headers], [["overall", *_stat_row(data.get("overall") or {})]])]
    if data.get("queues"):
        out += ["", table(["QUEUE", *headers], rows(data["queues"]))]
    if data.get("topics"):
        out += ["", table(["TOPIC", *headers], rows(data["topics"]))]
    return "\n".join([*out, "", STATS_NOTE])


def job_status(job: dict[str, Any]) -> str:
    """Where a job is, in a few words: ``ACTIVE on b, step 2/3`` / ``QUEUED, retry 1/10 after KeyError``."""
    parts = [job.get("state", "?")]
    if job.get("target") and job.get("target") != job.get("origin"):
        parts.append(f"on {job['target']}")
    prog = job.get("progress") or {}
    if prog.get("steps"):
        parts.append(f"step {prog.get('step', 0)}/{prog['steps']}")
    text = ", ".join(parts)
    if job.get("retry_count"):
        mx = job.get("max_retries")
        text += f", retry {job['retry_count']}/{'forever' if mx == -1 else mx}"
        if job.get("result_message") and job.get("state") == "QUEUED":
            text += f" after {job['result_message']}"
    return text
