"""What ``jobmesh node`` checks before anything starts: free ports, and consumer modules that load.

Each mistake becomes one ``StartupError`` sentence that says what to do (the CLI prints it
on one line and exits 2), instead of a traceback after half the node has started. Only the
stdlib at import time; the engine is imported by the consumer modules themselves.
"""

from __future__ import annotations

import difflib
import errno
import importlib
import os
import socket
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from .ports import free_port, free_port_pair

AUTO = "auto"


class StartupError(Exception):
    """A node that cannot start as asked; the message is one sentence with the fix."""


# -- auto ports ------------------------------------------------------------------------------


def resolve_auto(config: Any) -> list[str]:
    """``bind = "auto"`` / ``http = "auto"`` (or ``tcp://HOST:auto``, ``HOST:auto``): free ports now.
    Returns what was picked, as lines to print (empty when nothing was automatic)."""
    picked: list[str] = []
    bind = config.bind
    if isinstance(bind, str) and (bind == AUTO or bind.endswith(":" + AUTO)):
        host = "127.0.0.1" if bind == AUTO else bind[: -len(AUTO) - 1].partition("://")[2] or "127.0.0.1"
        port = free_port_pair(_probe_host(host))
        config.bind = f"tcp://{host}:{port}"
        picked.append(f"bind {config.bind} (heartbeats {config.pub or f'tcp://{host}:{port + 1}'})")
    http = config.http
    if isinstance(http, str) and (http == AUTO or http.endswith(":" + AUTO)):
        host = "127.0.0.1" if http == AUTO else http[: -len(AUTO) - 1] or "127.0.0.1"
        config.http = f"{host}:{free_port(_probe_host(host))}"
        picked.append(f"http {config.http} (JOBMESH_URL=http://{_url_host(host)}:{config.http.rpartition(':')[2]})")
    return picked


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "*", ""):
        return "127.0.0.1"
    return host


def _probe_host(host: str) -> str:
    """The address to test-bind for an endpoint's host (``*`` is every interface)."""
    host = host.strip("[]")
    return "0.0.0.0" if host in ("*", "") else host


# -- ports in use ------------------------------------------------------------------------------


def check_ports(config: Any) -> None:
    """Bind and release each port the node will take; a taken one is a StartupError naming the
    flag that asked for it. A check, not a reservation: the node binds again right after."""
    wanted: list[tuple[str, int, str]] = []
    if config.bind:
        host, port = _host_port(config.bind)
        wanted.append((host, port, f"--bind {config.bind}"))
        pub = config.pub_endpoint
        phost, pport = _host_port(pub)
        why = f"--pub {pub}" if config.pub else f"heartbeats: --bind {config.bind} also takes the next port, {pport}"
        wanted.append((phost, pport, why))
    if config.http:
        host, _, port_text = config.http.rpartition(":")
        if int(port_text) != 0:
            wanted.append((host.strip("[]"), int(port_text), f"--http {config.http}"))
    for host, port, why in wanted:
        _try_bind(host, port, why)


def _host_port(endpoint: str) -> tuple[str, int]:
    rest = endpoint.partition("://")[2]
    host, _, port = rest.rpartition(":")
    return _probe_host(host), int(port)


def _try_bind(host: str, port: int, why: str) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise StartupError(f"cannot bind {host!r} ({why}): not a known host name or address of this machine") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is not "in use"
        try:
            s.bind(addr)
            s.listen(1)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"port {port} is in use ({why}): stop the process that holds it, or choose other "
                    f"ports (--bind auto and --http auto pick free ones)") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise StartupError(
                    f"{host} is not an address of this machine ({why}): bind 0.0.0.0 (or 127.0.0.1) and "
                    f"tell peers the reachable address with --advertise tcp://HOST") from None
            if e.errno == errno.EACCES:
                raise StartupError(f"port {port} needs privileges ({why}): choose a port above 1023") from None
            raise StartupError(f"cannot bind {host}:{port} ({why}): {e.strerror or e}") from None


# -- consumer modules --------------------------------------------------------------------------


def import_consumer_modules(names: list[str], cwd: str | None = None) -> list[ModuleType]:
    """Import each ``--consumers`` module; an error names the file and line and says what to do."""
    cwd = cwd or os.getcwd()
    modules = []
    for name in names:
        modules.append(_import_one(name, cwd))
    return modules


def _import_one(name: str, cwd: str) -> ModuleType:
    as_module = _module_name_of(name)
    if as_module != name:
        raise StartupError(f"--consumers takes a module name, not a file: write --consumers {as_module}")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
            raise StartupError(_not_found(name, cwd)) from None
        where = _where(e, cwd)
        raise StartupError(
            f"{where}: {e} (the consumers module {name!r} imports it: install it into this Python "
            f"with {sys.executable} -m pip install {e.name or '...'}, or fix the import)") from None
    except SyntaxError as e:
        where = f"{_rel(e.filename or name, cwd)} line {e.lineno}"
        raise StartupError(f"{where}: {type(e).__name__}: {e.msg} (in the consumers module {name!r})") from None
    except Exception as e:
        from .errors import JobmeshError

        what = "" if isinstance(e, JobmeshError) else f"{type(e).__name__}: "
        raise StartupError(f"{_where(e, cwd)}: {what}{e} (loading the consumers module {name!r})") from None


def _module_name_of(name: str) -> str:
    """``pkg/my_consumers.py`` -> ``pkg.my_consumers``; a module name stays as it is."""
    text = name
    if text.endswith(".py"):
        text = text[:-3]
    text = text.replace(os.sep, ".").replace("/", ".").strip(".")
    return text if name.endswith(".py") or "/" in name or os.sep in name else name


def _not_found(name: str, cwd: str) -> str:
    candidates = sorted({p.stem for d in (cwd, *[x for x in sys.path if x and os.path.isdir(x)][:3])
                         for p in Path(d).glob("*.py") if not p.stem.startswith("_")})
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else \
        "; run jobmesh from the module's folder or add that folder to PYTHONPATH"
    return f"no module named {name!r} in {cwd} or on PYTHONPATH{hint}"


def _where(exc: BaseException, cwd: str) -> str:
    """``file.py line N`` of the innermost frame that is the user's (not importlib, not jobmesh)."""
    here = str(Path(__file__).resolve().parent)
    best = None
    for frame in traceback.extract_tb(exc.__traceback__):
        f = frame.filename
        if f.startswith("<frozen") or str(Path(f).resolve()).startswith(here + os.sep):
            continue
        best = frame
    if best is None:
        return "consumers module"
    return f"{_rel(best.filename, cwd)} line {best.lineno}"


def _rel(path: str, cwd: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(cwd).resolve()))
    except ValueError:
        return path


def check_consumers(modules: list[ModuleType]) -> list[str]:
    """Every module's consumers as specs (signatures were checked when they were declared), no
    two for the same pattern; returns a warning line per module that declares none."""
    from .consumers.registry import ConsumerSpec, check_new_consumer, consumers_in_module, declared_spec
    from .errors import ValidationError

    warnings: list[str] = []
    seen: list[ConsumerSpec] = []
    for module in modules:
        found = consumers_in_module(module)
        if not found:
            warnings.append(
                f"module {module.__name__!r} ({_rel(getattr(module, '__file__', '') or '?', os.getcwd())}) declares "
                f"no consumers: decorate a function with @jobmesh.consumer(\"topic\") or subclass "
                f"jobmesh.ConsumerActor with topics = [...]")
        for c in found:
            try:
                spec = declared_spec(c)
                if check_new_consumer(spec, seen) is None:
                    seen.append(spec)
            except ValidationError as e:
                raise StartupError(f"module {module.__name__!r}: {e}") from None
    return warnings
