"""The commands about the mesh rather than one job: ``topology``, ``queues`` (list, suspend,
resume), ``stats`` and ``offload``, with their parsers (``add_parser``).
"""

from __future__ import annotations

import argparse
import urllib.parse
from typing import Any

from .cli_http import CliError, client
from .cli_options import add_client_options
from .cli_render import emit, render_queue_line, render_queues, render_stats, render_topology


def cmd_topology(args: argparse.Namespace) -> int:
    emit(args, client(args).get("/api/v1/topology"), render_topology)
    return 0


def cmd_queues(args: argparse.Namespace) -> int:
    c = client(args)
    if args.action:
        if not args.name:
            raise CliError(f"queues {args.action} needs a queue NAME", code=2)
        path = f"/api/v1/queues/{urllib.parse.quote(args.name, safe='')}/{args.action}"
        emit(args, c.post(path), render_queue_line)
    else:
        emit(args, c.get("/api/v1/queues"), render_queues)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    emit(args, client(args).get("/api/v1/stats"), render_stats)
    return 0


def cmd_offload(args: argparse.Namespace) -> int:
    c = client(args)
    node = args.node
    if not node:
        node = c.get("/api/v1/topology")["local"]
    body = {"exclusive": True} if args.mode == "exclusive" else {"enabled": args.mode == "enable"}
    path = f"/api/v1/offloading/{urllib.parse.quote(node, safe='')}/{urllib.parse.quote(args.topic, safe='/*')}"
    result = c.put(path, body)
    emit(args, result, lambda r: f"offloading of {args.topic} on {node}: {r.get('mode', args.mode) if isinstance(r, dict) else args.mode}")
    return 0


def add_parser(sub: Any) -> None:
    """``topology``, ``queues``, ``stats`` and ``offload``."""
    p = sub.add_parser("topology", help="show the nodes that see each other")
    add_client_options(p)
    p.set_defaults(func=cmd_topology)

    p = sub.add_parser("queues", help="list queues, or suspend/resume one")
    p.add_argument("action", nargs="?", choices=("suspend", "resume"))
    p.add_argument("name", nargs="?", metavar="NAME")
    add_client_options(p)
    p.set_defaults(func=cmd_queues)

    p = sub.add_parser("stats", help="job statistics, overall and per queue and topic")
    add_client_options(p)
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("offload", help="enable, disable or make exclusive a topic for offloading")
    p.add_argument("mode", choices=("enable", "disable", "exclusive"))
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("--node", help="the node to change (default: the node at --url)")
    add_client_options(p)
    p.set_defaults(func=cmd_offload)
