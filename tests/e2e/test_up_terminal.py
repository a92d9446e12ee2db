"""``keyplane up`` as a person at a terminal sees it: readable log lines (not JSON), no line per
feed long-poll, and Ctrl-C — which the terminal sends to every process of the group, children
included — stops everything quietly with exit status 0.

And the other side of the same switch: with stderr not a terminal, every log line is JSON.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.management import connect
from tests.support.procs import PYTHON, Deployment, wait_for
from tests.support.terminal import Terminal

#: What a clean stop never shows.
NEVER = ("Traceback", "Exception in ASGI application", "CancelledError", "unhandled_error")


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[tuple[Terminal, Deployment]]:
    dep = Deployment(tmp_path)  # only its config: free ports, its own data directory
    term = Terminal([PYTHON, "-m", "keyplane.cli", "up", "--config", str(dep.config)], dep.env)
    try:
        term.wait_for(lambda t: "ready; press Ctrl-C to stop" in t, timeout=120, what="ready")
        yield term, dep
    finally:
        term.close()


def key_everywhere(dep: Deployment, term: Terminal) -> None:
    """Create a key with the bootstrap management key and wait until every gateway has it: each
    gateway's long-poll has then answered at least once."""
    match = re.search(r"team: \S+ \((\S+)\)", term.text())
    assert match, term.text()
    secret = (dep.data_dir / "bootstrap-management-key").read_text().split()[-1]
    with connect(dep.control_url, secret) as client:
        created = client.post(f"/auth/teams/{match.group(1)}/api-keys", json={"name": "k"})
        assert created.status_code == 200, created.text
        path = f"/auth/api-keys/{created.json()['apiKeyId']}/propagation"
        wait_for(
            lambda: all(client.get(path).json()["icPropagation"].values()),
            what="the key on every gateway",
        )


@pytest.mark.slow
def test_up_at_a_terminal_reads_well_and_stops_quietly_on_ctrl_c(
    terminal: tuple[Terminal, Deployment],
) -> None:
    term, dep = terminal
    key_everywhere(dep, term)  # the feed's long-polls have answered: they would be logged now
    # Read before the key is pressed: Ctrl-C flushes what the terminal has not yet shown.
    term.wait_for(lambda t: "snapshot_applied" in t, timeout=30, what="a gateway's snapshot line")

    status = term.press_ctrl_c()

    shown = term.text()
    assert status == 0, shown[-3000:]
    assert "keyplane stopped" in shown
    for marker in NEVER:
        assert marker not in shown, shown[-3000:]
    assert "/internal/v1/changes" not in shown, "a feed long-poll was logged at info"
    lines = [line for line in shown.splitlines() if "snapshot_applied" in line]
    assert lines, shown[-3000:]
    for line in lines:
        assert not line.lstrip().startswith("{"), f"JSON at a terminal: {line}"
        assert re.search(r"keys\S*=\S*\d", line), line  # key=value, colours and all


def test_logs_are_json_when_stderr_is_not_a_terminal() -> None:
    program = (
        "import structlog; from keyplane import logs; logs.configure('info'); "
        "log = structlog.get_logger(); log.info('hello', keys=3); log.debug('hidden')"
    )
    done = subprocess.run(
        [PYTHON, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )

    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert json.loads(lines[0])["keys"] == 3
