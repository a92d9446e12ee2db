"""``logs.write_line`` (the access log's line without structlog's pipeline) writes the very line
structlog writes under keyplane's JSON configuration, and steps aside (returns False, writes
nothing) whenever that configuration is not the one in force."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyplane import logs

_TIME = re.compile(r'"timestamp": "\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z"')


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """keyplane's JSON logging (stderr not a terminal) at debug, into a buffer; structlog's and
    logging's configuration as they were afterwards."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    logs.configure("debug")
    try:
        yield out
    finally:
        structlog.configure(**{**saved, "processors": list(saved["processors"])})
        monkeypatch.setattr(logs, "_json", None)
        root.handlers[:] = handlers
        root.setLevel(level)


def _lines(out: io.StringIO) -> list[str]:
    lines = out.getvalue().splitlines(keepends=True)
    out.seek(0)
    out.truncate()
    return [_TIME.sub('"timestamp": "<t>"', line) for line in lines]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    level=st.sampled_from(["debug", "info"]),
    method=st.text(max_size=8),
    path=st.text(max_size=30),
    status=st.integers(min_value=100, max_value=599),
    ms=st.floats(min_value=0, max_value=1e6).map(lambda x: round(x, 2)),
)
def test_the_line_is_structlogs_line(
    stream: io.StringIO, level: str, method: str, path: str, status: int, ms: float
) -> None:
    log = structlog.get_logger("keyplane.control")
    fields: dict[str, str | int | float] = {
        "method": method,
        "path": path,
        "status": status,
        "ms": ms,
    }
    getattr(log, level)("request", **fields)
    theirs = _lines(stream)
    assert logs.write_line(level, "request", dict(fields))
    assert _lines(stream) == theirs
    assert len(theirs) == 1


def test_a_level_below_the_configured_one_writes_nothing(stream: io.StringIO) -> None:
    logs.configure("info")
    assert logs.write_line("debug", "request", {"status": 200})
    assert stream.getvalue() == ""


def test_it_steps_aside_for_captured_logs_and_bound_context(stream: io.StringIO) -> None:
    with structlog.testing.capture_logs() as captured:
        assert not logs.write_line("info", "request", {"status": 200})
    assert captured == []
    structlog.contextvars.bind_contextvars(request_id="r")
    try:
        assert not logs.write_line("info", "request", {"status": 200})
    finally:
        structlog.contextvars.clear_contextvars()
    assert stream.getvalue() == ""
