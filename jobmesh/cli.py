"""The ``jobmesh`` command (DESIGN §5.1): run a node, run the demo, talk to a node's HTTP API.

Kept fast to start: only the stdlib at import time (the HTTP client is ``urllib``);
aiohttp, zmq and the engine are imported by ``jobmesh node`` alone.

The commands live in modules of their own, each with an ``add_parser(sub)``: ``cli_node.py``
(``node``), ``cli_jobs.py`` (``submit``, ``jobs``, ``job``, ``stop``, ``retry``, ``remove``),
``cli_cluster.py`` (``topology``, ``queues``, ``stats``, ``offload``), ``cli_schedule.py`` and
``cli_workflow.py``; what they share is in ``cli_http.py`` (``ApiClient``, ``CliError``),
``cli_options.py`` and ``cli_render.py``. Every name is importable from here as before.

Conventions shared with other command modules (``jobmesh/cli_schedule.py``):
every sub-command sets ``func(args) -> int`` with ``set_defaults``; client commands
call ``add_client_options(parser)`` (``--url``, ``--token``, ``--json``) and use
``client(args)``; ``emit(args, data, render)`` prints JSON with ``--json`` or the
human rendering otherwise; raising ``CliError`` prints one line on stderr and
exits 1. Exit codes: 0 ok, 1 error, 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from . import cli_cluster, cli_jobs, cli_node
# the shared parts and the commands, importable from here as before (cli_schedule.py and cli_workflow.py do)
from .cli_cluster import cmd_offload, cmd_queues, cmd_stats, cmd_topology
from .cli_http import ApiClient, CliError, _http_error_message, _reason_text, api_path, client
from .cli_jobs import FINAL_STATES, SUBMIT_BATCH, cmd_job, cmd_jobs, cmd_remove, cmd_retry, cmd_stop, cmd_submit, \
    emit_created, read_job_lines, render_remove, render_stop, warn_if_no_consumer
from .cli_node import cmd_node, node_config, run_demo
from .cli_options import DEFAULT_URL, _positive_int, _seconds, add_client_options, add_id_commands, \
    add_property_option, number_arg, parse_property
from .cli_render import STAT_FIELDS, STATS_NOTE, TOPOLOGY_WIDTH, _ms, _short_time, duration, emit, job_status, \
    render_job, render_job_line, render_jobs, render_queue_line, render_queues, render_stats, render_topology, table


# -- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobmesh",
        description="jobmesh: a distributed job runtime for asyncio. Run a node, or talk to one over HTTP.",
    )
    parser.add_argument("--version", action="version", version=f"jobmesh {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    cli_node.add_parser(sub)

    sub.add_parser("demo", help="run a small local mesh with sample consumers and a workload", add_help=False)

    cli_jobs.add_parser(sub)

    cli_cluster.add_parser(sub)

    _add_optional_commands(sub, "jobmesh.cli_schedule")
    _add_optional_commands(sub, "jobmesh.cli_workflow")
    return parser


def _add_optional_commands(sub: Any, module_name: str) -> None:
    """Let a part's own module add its commands; a broken one costs only its commands."""
    import importlib

    try:
        module = importlib.import_module(module_name)
        add = getattr(module, "add_parser", None)
        if add is not None:
            add(sub)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            print(f"jobmesh: warning: {module_name} unavailable: {e}", file=sys.stderr)
    except Exception as e:  # a bug there must not take `jobmesh node` down with it
        print(f"jobmesh: warning: {module_name} unavailable: {e!r}", file=sys.stderr)


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "demo":  # the demo parses its own arguments
        return run_demo(args_list[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0) if isinstance(e.code, int) else 2
    if args.command is None:  # `jobmesh` alone: what it can do
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except CliError as e:
        print(f"jobmesh: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `jobmesh jobs | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
