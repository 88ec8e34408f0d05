"""structlog set-up: console for people, JSON lines with ``--log-format json``.

Library code logs with ``structlog.get_logger(...).bind(node=..., job_id=..., topic=...)``;
this module only configures rendering, once per process.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(fmt: str = "console", level: str | int = "INFO", stream=None) -> None:
    """Configure structlog and the stdlib root logger (aiohttp logs through it)."""
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    stream = stream or sys.stderr
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        timestamper,
    ]
    if fmt == "json":
        renderer: structlog.types.Processor = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level, stream=stream, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
