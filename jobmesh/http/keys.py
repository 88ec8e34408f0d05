"""Typed keys for what the aiohttp app carries (aiohttp's ``AppKey``)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

NODE: web.AppKey[Any] = web.AppKey("jobmesh_node", object)
CLOSING: web.AppKey[asyncio.Event] = web.AppKey("jobmesh_closing", asyncio.Event)
SETTINGS: web.AppKey[dict[str, Any]] = web.AppKey("jobmesh_http_settings", dict)
