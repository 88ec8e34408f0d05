"""``HttpActor``: serves the node's aiohttp app on ``config.http`` ("HOST:PORT").

An actor like the others so that the node starts and stops it in order and a crash
is supervised; it takes no messages of its own except ``"url"``. Port 0 asks the OS
for a free port; the real address is published as ``node.http_url`` and kept for
restarts (a restarted actor binds the same port again, so clients keep working).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..actor import Actor
from ..errors import ValidationError
from .app import build_app
from .keys import CLOSING
from .metrics import NodeMetrics


def parse_http_address(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8471"``, ``":8471"``, ``"[::1]:8471"`` -> (host, port)."""
    if not isinstance(text, str) or ":" not in text:
        raise ValidationError(f"http address {text!r} must look like HOST:PORT")
    host, _, port_text = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ValidationError(f"http address {text!r}: port must be a number") from None
    if not 0 <= port <= 65535:
        raise ValidationError(f"http address {text!r}: port must be 0-65535")
    return host, port


def url_for(host: str, port: int) -> str:
    """A URL clients on this machine can use (a wildcard bind is reached via loopback)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class HttpActor(Actor):
    """The REST API, the event stream, /metrics and the console of one node."""

    shutdown_timeout = 3.0  # seconds open requests get when the node stops

    def __init__(self, node: Any, address: str | None = None) -> None:
        super().__init__("http")
        self.node = node
        self.address = address or node.config.http
        self.host, self.port = parse_http_address(self.address)
        self.metrics = NodeMetrics(node)
        self._app_runner: web.AppRunner | None = None
        self.log = self.log.bind(node=getattr(node, "name", None))

    @property
    def url(self) -> str | None:
        return getattr(self.node, "http_url", None)

    async def on_start(self) -> None:
        security = getattr(self.node.config, "security", None)
        token = getattr(security, "http_token", None) or None
        app = build_app(self.node, token=token, metrics=self.metrics)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.shutdown_timeout)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise ValidationError(f"cannot serve HTTP on {self.address}: {e.strerror or e}") from None
        self._app_runner = runner
        port = self.port
        for addr in runner.addresses:
            if isinstance(addr, tuple) and len(addr) >= 2:
                port = int(addr[1])
                break
        self.port = port  # a restart binds the same port again
        self.node.http_url = url_for(self.host, port)
        self.log.info("http serving", url=self.node.http_url, token=bool(token))

    async def on_stop(self) -> None:
        runner, self._app_runner = self._app_runner, None
        if runner is None:
            return
        if runner.app is not None:
            runner.app[CLOSING].set()
        await runner.cleanup()
        self.log.info("http stopped")

    async def receive(self, msg: Any) -> Any:
        if msg == "url":
            return self.url
        raise ValidationError(f"http actor does not understand {msg!r}")
