"""A replication receiver: stores what it gets, in arrival order, once per item.

Delivery is at least once (a response lost to a crash or an outage makes the agent
send the item again), so the receiver is idempotent: an item id it already stored is
acknowledged again and not stored twice. ``ReceiverState`` outlives the HTTP server,
as a real receiver's repository outlives its process: stop the server for an outage,
start it again on the same port, and nothing it stored is lost.

    python -m examples.replication.receiver --port 8500
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class ReceiverState:
    items: list[dict[str, Any]] = field(default_factory=list)  # stored, in arrival order
    seen: set[str] = field(default_factory=set)
    duplicates: int = 0
    requests: int = 0

    def store(self, item: dict[str, Any]) -> bool:
        """Store ``item`` unless its id was stored before; True if it is new."""
        self.requests += 1
        if item["id"] in self.seen:
            self.duplicates += 1
            return False
        self.seen.add(item["id"])
        self.items.append(item)
        return True


class Receiver:
    """The receiver's HTTP server on loopback; ``start()``/``stop()`` as often as an outage needs."""

    def __init__(self, state: ReceiverState | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = state or ReceiverState()
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=2 * 1024 * 1024)
        app.router.add_post("/replicate", self._replicate)
        app.router.add_get("/items", self._items)
        return app

    async def _replicate(self, request: web.Request) -> web.Response:
        try:
            item = await request.json()
        except ValueError:
            return web.json_response({"error": "body is not JSON"}, status=400)
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not isinstance(item.get("path"), str):
            return web.json_response({"error": "expected {id: str, path: str, seq, payload}"}, status=400)
        new = self.state.store(item)
        return web.json_response({"status": "stored" if new else "duplicate", "id": item["id"]})

    async def _items(self, request: web.Request) -> web.Response:
        return web.json_response({"items": self.state.items, "duplicates": self.state.duplicates,
                                  "requests": self.state.requests})

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> "Receiver":
        if self.port == 0:  # pick a port once: after an outage it comes back on the same one
            with socket.socket() as s:
                s.bind((self.host, 0))
                self.port = s.getsockname()[1]
        self._runner = web.AppRunner(self.app(), shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def running(self) -> bool:
        return self._runner is not None


async def _serve(port: int) -> None:
    receiver = await Receiver(port=port).start()
    print(f"receiver listening on {receiver.url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await receiver.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8500)
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
