"""``jobmesh node``: the command-line flags applied to the configuration (``node_config``),
the checks before a start, and the run itself; and ``jobmesh demo``'s dispatch. The only
commands that import the engine (lazily, inside ``cmd_node``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .cli_http import CliError
from .cli_options import _positive_int


def _is_auto(value: str | None) -> bool:
    return isinstance(value, str) and (value == "auto" or value.endswith(":auto"))


def node_config(args: argparse.Namespace, picked: list[str] | None = None) -> Any:
    """The config file (or defaults) with the command-line flags applied, validated, ``auto`` ports
    picked (said in ``picked``, when given). Every mistake is a CliError (exit 2) that names the
    flag and the fix, raised before anything starts."""
    from .config import ConfigError, check_endpoint, load_config, normalize_http
    from .startup import resolve_auto

    try:
        config = load_config(args.config)
        if args.name:
            config.name = args.name
        if args.data:
            config.data = args.data
        if args.pub:
            config.pub = check_endpoint(args.pub, "--pub", example_port=5702)
        if args.bind:
            config.bind = args.bind if _is_auto(args.bind) else check_endpoint(
                args.bind, "--bind", need_next=not config.pub)
        if args.seed:
            config.seeds = [check_endpoint(s, "--seed") for s in args.seed]
        if args.advertise:
            config.advertise = check_endpoint(args.advertise, "--advertise", port_optional=True)
        if args.http is not None:
            off = args.http.lower() in ("off", "none", "")
            config.http = None if off else args.http if _is_auto(args.http) else normalize_http(args.http, "--http")
        if args.capacity is not None:
            config.capacity = args.capacity
        if args.log_format:
            config.log_format = args.log_format
        chosen = resolve_auto(config)
        if picked is not None:
            picked.extend(chosen)
        return config.validate()
    except ConfigError as e:
        raise CliError(f"configuration: {e}", code=2) from None
    except (OSError, RuntimeError) as e:  # auto: no free port on that host
        raise CliError(f"configuration: cannot pick a free port ({e})", code=2) from None


def cmd_node(args: argparse.Namespace) -> int:
    from .startup import StartupError, check_consumers, check_ports, import_consumer_modules

    picked: list[str] = []
    config = node_config(args, picked)
    try:
        check_ports(config)  # a port in use is one sentence now, not a traceback after half a start
    except StartupError as e:
        raise CliError(str(e), code=2) from None

    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # so --consumers finds modules in the working directory

    from .log import configure_logging

    configure_logging(config.log_format, level=args.log_level)
    modules = list(args.consumers or [])
    try:
        warnings = check_consumers(import_consumer_modules(modules, cwd))
    except StartupError as e:
        raise CliError(str(e), code=2) from None
    for line in warnings:
        print(f"jobmesh: warning: {line}", file=sys.stderr)
    if picked:  # --bind auto / --http auto: say what was picked, where a script can read it
        print(f"jobmesh node {config.name}: " + ", ".join(picked), flush=True)

    import asyncio

    from .errors import DataDirInUse, NameInUse
    from .runner import run_node

    try:
        return int(asyncio.run(run_node(config, modules)) or 0)
    except (DataDirInUse, NameInUse) as e:  # --data or --name belongs to another live node: one line
        raise CliError(str(e), code=2) from None
    except KeyboardInterrupt:  # a second Ctrl-C while draining
        return 130


def run_demo(argv: list[str]) -> int:
    import importlib

    try:
        demo = importlib.import_module("jobmesh.demo")
    except ModuleNotFoundError as e:
        if e.name != "jobmesh.demo":
            raise
        print("jobmesh: the demo is not part of this installation", file=sys.stderr)
        return 1
    try:
        return int(demo.main(argv) or 0)
    except KeyboardInterrupt:
        return 130


def add_parser(sub: Any) -> None:
    """``node``."""
    p = sub.add_parser("node", help="run a node in the foreground until SIGINT/SIGTERM")
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--name", help="node name (default: the host name)")
    p.add_argument("--data", help="data directory (the job store)")
    p.add_argument("--bind", help="transfer endpoint tcp://HOST:PORT (heartbeats take the next port too); "
                                  "'auto' picks free ports and prints them")
    p.add_argument("--pub", help="heartbeat endpoint tcp://HOST:PORT (default: the port after --bind)")
    p.add_argument("--seed", nargs="+", action="extend", metavar="ENDPOINT",
                   help="live members' --bind endpoints (--seed A B or --seed A --seed B)")
    p.add_argument("--http", help="HTTP API address HOST:PORT or a port (loopback), 'auto' (a free port, "
                                  "printed), or 'off'")
    p.add_argument("--advertise", metavar="ENDPOINT",
                   help="the endpoint peers connect to, tcp://HOST[:PORT] (a 0.0.0.0 bind, containers, NAT)")
    p.add_argument("--consumers", nargs="+", action="extend", metavar="MODULE", help="modules whose consumers to register")
    p.add_argument("--capacity", type=_positive_int, help="consumer slots")
    p.add_argument("--log-format", choices=("console", "json"), help="log output format")
    p.add_argument("--log-level", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   default=(os.environ.get("JOBMESH_LOG_LEVEL") or "INFO").upper(), help="log level (default INFO)")
    p.set_defaults(func=cmd_node)
