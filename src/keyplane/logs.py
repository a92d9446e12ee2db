"""Structured logs on stderr: readable lines when a person is watching (stderr is a terminal),
one JSON object a line otherwise. Nothing logged ever carries a secret.

Tests read what was logged with ``structlog.testing.capture_logs()``, or the process's stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog
from structlog.typing import Processor

#: The JSON configuration ``configure`` installed (its processors, its logger factory, the stream
#: and the least level written), for ``write_line``; None on a terminal or before ``configure``.
_json: tuple[list[Processor], Any, TextIO, int] | None = None
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def configure(level: str = "info") -> None:
    numeric = logging.getLevelName(level.upper())
    logging.basicConfig(stream=sys.stderr, level=numeric, format="%(message)s", force=True)
    for noisy in ("uvicorn.access", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    global _json
    _json = None
    tail: list[Processor]
    if sys.stderr.isatty():
        # The console renderer formats exceptions itself (format_exc_info would pre-empt it).
        tail = [
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=True),
            structlog.dev.ConsoleRenderer(colors=True),
        ]
    else:
        tail = [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        *tail,
    ]
    factory = structlog.WriteLoggerFactory(sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # WriteLogger: a line and its newline in one write (print() made two system calls of
        # each line on an unbuffered stderr: the access log's line per request).
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    if not sys.stderr.isatty():
        _json = (list(processors), factory, sys.stderr, numeric)


def write_line(level: str, event: str, fields: dict[str, str | int | float]) -> bool:
    """Write the very line ``structlog.get_logger().<level>(event, **fields)`` writes under the
    JSON configuration of ``configure`` (same keys in the same order, same spacing, same
    timestamp format), without structlog's pipeline (~3/4 of the access log's cost per
    request), and return True; ``fields`` are plain str, int or float values and become the
    line's. Return False, writing nothing, whenever that configuration is not the one in force
    (a terminal, a test capturing the logs, another configuration) or context variables are
    bound: the caller then logs through structlog."""
    if _json is None:
        return False
    processors, factory, stream, least = _json
    config = structlog.get_config()
    if (
        config["logger_factory"] is not factory
        or config["processors"] != processors
        or structlog.contextvars.get_contextvars()
    ):
        return False
    if _LEVELS[level] < least:
        return True  # below the level configured: structlog's filtering logger drops it
    fields["event"] = event
    fields["level"] = level
    fields["timestamp"] = datetime.now(tz=UTC).isoformat().replace("+00:00", "Z")
    stream.write(json.dumps(fields) + "\n")
    stream.flush()
    return True
