"""The command line's shared option conventions and argument types: ``--url``/``--token``/
``--json`` (``add_client_options``), ``-p KEY=VALUE`` (``add_property_option``,
``parse_property``), commands that take one ID (``add_id_commands``) and number arguments
with one-line usage errors (``number_arg``). Apart so that every command module declares its
options the same way.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Callable, Sequence

DEFAULT_URL = "http://127.0.0.1:8471"


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """``--url``, ``--token``, ``--json`` for a command that talks to a node."""
    parser.add_argument(
        "--url",
        default=os.environ.get("JOBMESH_URL") or DEFAULT_URL,
        help="the node's HTTP address (env JOBMESH_URL; default %(default)s)",
    )
    parser.add_argument(
        "--token", default=os.environ.get("JOBMESH_TOKEN"), help="API token (env JOBMESH_TOKEN)"
    )
    parser.add_argument("--json", action="store_true", help="print the raw JSON answer")


def parse_property(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``: VALUE as JSON when it parses (1, true, [1,2], {"a":1}), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    return key, parsed


def add_property_option(parser: argparse.ArgumentParser, what: str = "a job property") -> None:
    """``-p/--property KEY=VALUE`` (repeatable, parsed by :func:`parse_property`): one convention
    for every command that sends properties."""
    parser.add_argument("-p", "--property", action="append", type=parse_property, metavar="KEY=VALUE",
                        help=f"{what}; VALUE is JSON when it parses, else a string (repeatable)")


def add_id_commands(sub: Any, commands: Sequence[tuple[str, Callable[[argparse.Namespace], int], str]]) -> None:
    """Sub-commands that take one ID and the client options: ``(name, func, help)`` each."""
    for name, func, text in commands:
        p = sub.add_parser(name, help=text)
        p.add_argument("id", metavar="ID")
        add_client_options(p)
        p.set_defaults(func=func)


def number_arg(cast: Callable[[str], Any], ok: Callable[[Any], bool], must: str) -> Callable[[str], Any]:
    """An argparse ``type=`` for a number: ``cast`` (float: seconds, int: a whole number) that must
    satisfy ``ok``; bad input is a one-line usage error ("must be {must}, got ...")."""
    expected = "a number of seconds" if cast is float else "a whole number"

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {must}, got {text if cast is float else value}")
        return value

    return parse


_seconds = number_arg(float, lambda v: v >= 0, "0 or more")
_positive_int = number_arg(int, lambda v: v >= 1, "at least 1")
