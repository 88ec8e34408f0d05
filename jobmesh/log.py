"""structlog set-up: console for people, JSON lines with ``--log-format json``.

Library code logs with ``structlog.get_logger(...).bind(node=..., job_id=..., topic=...)``;
this module only configures rendering, once per process. ``jobmesh node`` calls
``configure_logging``; an embedded ``Node`` calls ``ensure_logging``, which leaves a host
program's own logging alone (a library must not print to stdout or reset its host's set-up).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def _shared() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _renderer(fmt: str, colors: bool) -> Any:
    if fmt == "json":
        return [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    return [structlog.dev.ConsoleRenderer(colors=colors)]


def _level(level: str | int) -> int:
    if isinstance(level, str):
        return int(logging.getLevelName(level.upper()))
    return level


def configure_structlog(fmt: str = "console", level: str | int = "INFO", stream: Any = None) -> None:
    """structlog alone, rendered to ``stream`` (stderr): what the CLI and an embedded node share."""
    stream = stream or sys.stderr
    structlog.configure(
        processors=[*_shared(), *_renderer(fmt, colors=stream.isatty())],
        wrapper_class=structlog.make_filtering_bound_logger(_level(level)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )


def configure_logging(fmt: str = "console", level: str | int = "INFO", stream: Any = None) -> None:
    """Configure structlog and the stdlib root logger (aiohttp logs through it): the CLI's set-up."""
    stream = stream or sys.stderr
    configure_structlog(fmt, level, stream)
    logging.basicConfig(level=_level(level), stream=stream, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def ensure_logging(fmt: str = "console") -> str:
    """Logging for an embedded node, decided once per process; returns which way was taken.

    - ``"host"``: the host configured structlog: left alone.
    - ``"stdlib"``: the host configured the stdlib ``logging`` (root handlers) but not structlog:
      jobmesh's lines go through it, as loggers named ``jobmesh.*``, so its handlers, levels and
      format decide.
    - ``"stderr"``: nothing configured: the CLI's structlog set-up, INFO and up on stderr (never
      structlog's default of everything on stdout). The stdlib root logger is not touched.
    """
    if structlog.is_configured():
        return "host"
    if logging.getLogger().handlers:
        structlog.configure(
            processors=[
                structlog.stdlib.filter_by_level,
                structlog.contextvars.merge_contextvars,
                *_renderer(fmt, colors=False),
            ],
            wrapper_class=structlog.stdlib.BoundLogger,
            logger_factory=structlog.stdlib.LoggerFactory(),
            cache_logger_on_first_use=True,
        )
        return "stdlib"
    configure_structlog(fmt, "INFO", sys.stderr)
    return "stderr"
