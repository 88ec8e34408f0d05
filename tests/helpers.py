"""Shared test helpers: free ports, and ``jobmesh node`` subprocesses that are always cleaned up.

    with NodeProcess(tmp_path, "a", consumers=["my_consumers"]) as node:
        node.url          # http://127.0.0.1:PORT (after /api/v1/health answered)
        node.kill()       # kill -9
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Sequence

from jobmesh.ports import free_port, free_port_pair  # re-exported: the tests import them from here

REPO = Path(__file__).resolve().parent.parent


def http_json(method: str, url: str, body: Any = None, timeout: float = 10.0,
              token: str | None = None) -> tuple[int, Any]:
    """(status, decoded JSON) for a request; 4xx/5xx answers are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw) if raw else None
        except ValueError:
            return e.code, raw.decode(errors="replace")


class HTTPStatusError(OSError):
    """A 4xx/5xx answer from :func:`fetch_json` (an ``OSError``, so retry loops that tolerate
    a node not answering yet tolerate this too)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = body


def fetch_json(method: str, url: str, body: Any = None, timeout: float = 10.0, token: str | None = None) -> Any:
    """The decoded JSON of a 2xx answer; any other status raises :class:`HTTPStatusError`."""
    status, data = http_json(method, url, body, timeout, token)
    if not 200 <= status < 300:
        raise HTTPStatusError(status, data)
    return data


class NodeProcess:
    """``jobmesh node`` as a subprocess (real process, real sockets), killed on exit no matter what."""

    def __init__(self, workdir: Path, name: str, consumers: Sequence[str] = (), http: bool = True,
                 bind: bool = False, seeds: Sequence[str] = (), config: Path | None = None,
                 extra: Sequence[str] = (), env: dict[str, str] | None = None, data: Path | None = None,
                 token: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.name = name
        self.token = token  # sent with the health check (a node with [security] http_token)
        self.data = data or self.workdir / name
        self.http_port = free_port() if http else None
        self.bind_port = free_port_pair() if bind else None
        self.url = f"http://127.0.0.1:{self.http_port}" if http else None
        self.endpoint = f"tcp://127.0.0.1:{self.bind_port}" if bind else None
        args = [sys.executable, "-m", "jobmesh", "node", "--name", name, "--data", str(self.data),
                "--log-format", "json"]
        args += ["--http", f"127.0.0.1:{self.http_port}"] if http else ["--http", "off"]
        if self.endpoint:
            args += ["--bind", self.endpoint]
        elif config is None:
            # No --bind: a node of its own, no discovery/transfer sockets (the CLI's default
            # bind is a fixed port, which parallel tests must not share).
            self.workdir.mkdir(parents=True, exist_ok=True)
            config = self.workdir / f"{name}-standalone.toml"
            config.write_text('[node]\nbind = ""\n')
        for s in seeds:
            args += ["--seed", s]
        if config is not None:
            args += ["--config", str(config)]
        if consumers:
            args += ["--consumers", *consumers]
        args += list(extra)
        self.args = args
        self.log_path = self.workdir / f"{name}.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.env["PYTHONPATH"] = os.pathsep.join([str(self.workdir), str(REPO), self.env.get("PYTHONPATH", "")])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0, wait: bool = True) -> "NodeProcess":
        """Launch; with ``wait`` (and HTTP on) return once healthy. ``wait=False`` lets several
        nodes boot side by side: call :meth:`wait_healthy` on each afterwards."""
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, cwd=self.workdir, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env)
        if self.url and wait:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 20.0) -> None:
        assert self.proc is not None and self.url is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, _ = http_json("GET", self.url + "/api/v1/health", timeout=1.0, token=self.token)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"node {self.name} not healthy after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def api(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
        assert self.url is not None
        return http_json(method, self.url + path, body, timeout, token=self.token)

    def kill(self) -> None:
        """kill -9: no drain, no flush (the crash case)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait for the graceful drain; kill -9 if it takes longer than ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        return self.proc.returncode

    def close(self) -> None:
        self.kill()
        if getattr(self, "_log", None) is not None:
            self._log.close()

    def __enter__(self) -> "NodeProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


def stop_all(nodes: Sequence[NodeProcess], timeout: float = 10.0) -> None:
    """SIGTERM every node at once (their graceful drains run side by side), then wait; kill -9
    whatever is still running ``timeout`` seconds later. Every node is closed."""
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for node in nodes:
        node.terminate(max(0.1, deadline - time.monotonic()))
        node.close()


def _poll_once(predicate: Any, deadline: float, timeout: float, what: str) -> Any:
    """One look for :func:`wait_until` and :func:`wait_until_async`: the truthy value, a falsy
    one to poll again, or an AssertionError once the deadline has passed."""
    value = predicate()
    if not value and time.monotonic() > deadline:
        raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {value!r})")
    return value


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll ``predicate()`` until truthy (returns it) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := _poll_once(predicate, deadline, timeout, what)):
        time.sleep(interval)
    return value



async def wait_until_async(predicate: Any, timeout: float = 10.0, interval: float = 0.02,
                           what: str = "condition") -> Any:
    """:func:`wait_until` for a test running in the event loop: sleeps without blocking it."""
    deadline = time.monotonic() + timeout
    while not (value := _poll_once(predicate, deadline, timeout, what)):
        await asyncio.sleep(interval)
    return value


@contextlib.asynccontextmanager
async def serve_app(app: Any) -> Any:
    """An aiohttp ``web.Application`` served on a free loopback port; yields its base URL
    (``http://127.0.0.1:PORT``) and cleans the runner up on exit."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()

CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright's own browser download cannot work here


@contextlib.contextmanager
def chromium(args: Sequence[str]) -> Iterator[Any]:
    """Headless chromium driven by Playwright, closed on exit; the test is skipped where
    the browser or the playwright package is missing (``scripts/setup-browser`` installs both)."""
    import pytest

    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is not installed (scripts/setup-browser installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (scripts/setup-browser installs it)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=list(args), headless=True)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def browser_tab(browser: Any, timeout_ms: int, width: int = 1400, height: int = 900) -> Iterator[Any]:
    """A fresh tab in its own context (own sessionStorage); fails the test on any script error."""
    context = browser.new_context(viewport={"width": width, "height": height})
    tab = context.new_page()
    tab.set_default_timeout(timeout_ms)
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield tab
        assert errors == [], f"script errors in the console: {errors}"
    finally:
        context.close()
