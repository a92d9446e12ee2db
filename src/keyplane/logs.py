"""Structured logs on stderr: readable lines when a person is watching (stderr is a terminal),
one JSON object a line otherwise. Nothing logged ever carries a secret.

Tests read what was logged with ``structlog.testing.capture_logs()``, or the process's stderr.
"""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.typing import Processor


def configure(level: str = "info") -> None:
    numeric = logging.getLevelName(level.upper())
    logging.basicConfig(stream=sys.stderr, level=numeric, format="%(message)s", force=True)
    for noisy in ("uvicorn.access", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
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
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            *tail,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # WriteLogger: a line and its newline in one write (print() made two system calls of
        # each line on an unbuffered stderr: the access log's line per request).
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
