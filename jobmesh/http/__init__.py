"""The node's HTTP side (DESIGN §5.2): REST API, server-sent events, /metrics, console mount.

``HttpActor(node)`` serves ``build_app(node)`` on ``node.config.http``; the node starts
it when ``config.http`` is set. Optional parts mount themselves when present:
``jobmesh.http.schedules.add_routes(app, node)`` and ``jobmesh.console.add_routes(app, node)``.
"""

from __future__ import annotations

from .actor import HttpActor, parse_http_address, url_for
from .app import build_app
from .metrics import NodeMetrics

__all__ = ["HttpActor", "NodeMetrics", "build_app", "parse_http_address", "url_for"]
