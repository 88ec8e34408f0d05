"""``jobmesh workflow start|list|show|abort|definitions``: workflows over a node's HTTP API.

Follows ``jobmesh.cli``'s conventions (``--url``/``JOBMESH_URL``, ``--token``/
``JOBMESH_TOKEN``, ``--json``, one-line errors, exit 1 on error and 2 on usage).
``start --wait`` exits 0 when the workflow completed and 1 when it failed or was aborted.
Only the stdlib: the command stays fast to start.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .cli import _short_time, add_client_options, number_arg, add_property_option, api_path, client, emit, emit_created, table

FINAL = ("COMPLETED", "FAILED", "ABORTED")


def _path(instance_id: str | None = None, action: str | None = None) -> str:
    return api_path("/api/v1/workflows", instance_id, action)


def _step_text(w: dict[str, Any]) -> str:
    steps = w.get("steps") or 0
    cur = int(w.get("current_step") or 0)
    return f"{min(cur + 1, steps)}/{steps} {w.get('current_topic') or '-'}"


def render_instance_line(w: dict[str, Any]) -> str:
    text = f"{w['id']}  {w['workflow']}  {w['state']}  step {_step_text(w)}"
    if w.get("reason"):
        text += f"  {w['reason']}"
    return text


def render_instance(w: dict[str, Any]) -> str:
    lines = [
        f"id:          {w['id']}",
        f"workflow:    {w['workflow']}",
        f"state:       {w['state']}",
        f"origin:      {w.get('origin')}",
        f"step:        {_step_text(w)}",
        f"created:     {_short_time(w.get('created'))}",
        f"finished:    {_short_time(w.get('finished')) or '-'}",
    ]
    if w.get("reason"):
        lines.append(f"reason:      {w['reason']}")
    lines.append(f"properties:  {_json_text(w.get('properties'))}")
    lines.append(f"data:        {_json_text(w.get('data'))}")
    hist = w.get("history") or []
    if hist:
        lines.append("history:")
        rows = [[h["index"] + 1, h["topic"], h.get("job_id"), h.get("state"), _short_time(h.get("finished")),
                 h.get("result_message")] for h in hist]
        lines.extend("  " + line for line in table(["#", "TOPIC", "JOB", "STATE", "FINISHED", "MESSAGE"], rows).splitlines())
    return "\n".join(lines)


def _json_text(value: Any) -> str:
    """JSON as people read it (``{"path": "/a.png"}``, not Python's ``{'path': '/a.png'}``)."""
    if value in (None, {}, []):
        return "-"
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def render_instances(data: dict[str, Any]) -> str:
    items = data.get("workflows", []) if isinstance(data, dict) else []
    if not items:
        return "no workflows"
    rows = [[w["id"], w["workflow"], w["state"], _step_text(w), _short_time(w.get("created")), w.get("reason")]
            for w in items]
    return table(["ID", "WORKFLOW", "STATE", "STEP", "CREATED", "REASON"], rows)


def render_definitions(data: dict[str, Any]) -> str:
    items = data.get("definitions", []) if isinstance(data, dict) else []
    if not items:
        return "no workflow definitions"
    rows = [[d["name"], " -> ".join(s["topic"] + ("" if s.get("offloadable", True) else " (local)")
                                    for s in d.get("steps", [])), d.get("description")] for d in items]
    return table(["NAME", "STEPS", "DESCRIPTION"], rows)


def cmd_start(args: argparse.Namespace) -> int:
    c = client(args)
    inst = c.post(_path(), {"workflow": args.name, "properties": dict(args.property or [])})
    return emit_created(args, c, inst, FINAL, "COMPLETED", _path, "workflow", render_instance_line)


def cmd_list(args: argparse.Namespace) -> int:
    query = {"state": args.state, "workflow": args.workflow, "limit": args.limit}
    emit(args, client(args).request("GET", _path(), query=query), render_instances)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    emit(args, client(args).get(_path(args.id)), render_instance)
    return 0


def cmd_abort(args: argparse.Namespace) -> int:
    body = {"reason": args.reason} if args.reason else None
    emit(args, client(args).post(_path(args.id, "abort"), body), render_instance_line)
    return 0


def cmd_definitions(args: argparse.Namespace) -> int:
    emit(args, client(args).get("/api/v1/workflow-definitions"), render_definitions)
    return 0


_positive_float = number_arg(float, lambda v: not v <= 0, "more than 0")  # as before: NaN passes
_limit = number_arg(int, lambda v: 1 <= v <= 10_000, "between 1 and 10000")


def add_parser(subparsers: Any) -> None:
    """Add ``jobmesh workflow ...`` to the ``jobmesh`` command's sub-parsers."""
    sp = subparsers.add_parser("workflow", help="workflows: start, list, show, abort, definitions")
    wsub = sp.add_subparsers(dest="workflow_command", metavar="ACTION", required=True)

    p = wsub.add_parser("start", help="start a workflow instance")
    p.add_argument("name", metavar="NAME", help="the workflow's name (see `jobmesh workflow definitions`)")
    add_property_option(p, "an input property")
    p.add_argument("--wait", action="store_true", help="wait until it ends; exit 1 unless it COMPLETED")
    p.add_argument("--timeout", type=_positive_float, default=300.0, help="seconds to wait (default 300)")
    add_client_options(p)
    p.set_defaults(func=cmd_start)

    p = wsub.add_parser("list", help="list workflow instances, newest first")
    p.add_argument("--state", choices=("RUNNING", "COMPLETED", "FAILED", "ABORTED"), type=str.upper)
    p.add_argument("--workflow", metavar="NAME", help="only instances of this workflow")
    p.add_argument("--limit", type=_limit, default=100)
    add_client_options(p)
    p.set_defaults(func=cmd_list)

    p = wsub.add_parser("show", help="one instance with its step history")
    p.add_argument("id", metavar="ID")
    add_client_options(p)
    p.set_defaults(func=cmd_show)

    p = wsub.add_parser("abort", help="abort a running instance (its running step job is stopped)")
    p.add_argument("id", metavar="ID")
    p.add_argument("--reason", help="recorded as the instance's reason")
    add_client_options(p)
    p.set_defaults(func=cmd_abort)

    p = wsub.add_parser("definitions", help="the workflows this node can start")
    add_client_options(p)
    p.set_defaults(func=cmd_definitions)


__all__ = ["add_parser", "render_instance", "render_instances", "render_instance_line", "render_definitions"]
