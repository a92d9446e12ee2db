"""``keyplane up`` and ``keyplane trial`` as a user runs them: one supervisor process, its console
captured to a file, its children found by the pids the console announces.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2

from tests.support.procs import PYTHON, wait_for

_STARTED = re.compile(r"keyplane: (?:started|restarted) (.+?) \(pid (\d+)\)")


class Supervised:
    """A running supervisor (``keyplane up`` or ``keyplane trial``) started by a test."""

    def __init__(self, args: list[str], env: dict[str, str], console: Path) -> None:
        self.console_path = console
        with console.open("ab") as out:
            self.popen = subprocess.Popen(
                [PYTHON, "-m", "keyplane.cli", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a failed test can still stop everything it started
            )
        self._seen: set[int] = set()

    def console(self) -> str:
        return self.console_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> None:
        def ready() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"the supervisor exited early:\n{self.console()}")
            return "ready; press Ctrl-C to stop" in self.console()

        wait_for(ready, timeout=timeout, what="the supervisor's ready line")

    def pids(self) -> dict[str, int]:
        """Each child's current pid, as the console last announced it."""
        return {name: int(pid) for name, pid in _STARTED.findall(self.console())}

    def kill(self, name: str) -> int:
        """SIGKILL child ``name``; returns the pid killed."""
        pid = self.pids()[name]
        self._seen.add(pid)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not alive(pid), timeout=10, what=f"{name} (pid {pid}) to die")
        return pid

    def wait_restarted(self, name: str, old_pid: int, timeout: float = 60.0) -> int:
        """Wait for the console to announce ``name`` exited and came back under a new pid."""

        def restarted() -> int | None:
            pid = self.pids().get(name)
            return pid if pid is not None and pid != old_pid else None

        pid: int = wait_for(restarted, timeout=timeout, what=f"{name} to be restarted")
        self._seen.add(pid)
        assert re.search(
            rf"{re.escape(name)} exited with signal SIGKILL; restarting", self.console()
        )
        return pid

    def child_pids(self) -> list[int]:
        return sorted(self._seen | set(self.pids().values()))

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> int:
        """Stop the supervisor as a person would; returns its exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout=timeout)
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        """Whatever happened, leave no process behind: the supervisor, then each child it named."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for pid in self.child_pids():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its parent's wait counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def whoami(url: str, secret: str) -> int:
    """The status a gateway answers ``GET /v1/api-key`` with for ``secret``."""
    return httpx2.get(
        url + "/v1/api-key", headers={"Authorization": f"Bearer {secret}"}, timeout=5
    ).status_code


@contextmanager
def port_held(port: int) -> Iterator[None]:
    """Hold ``port`` on 127.0.0.1 so a server restarted onto it fails to bind (and is restarted
    again, with a longer backoff) until the block ends."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 10
        while True:
            try:
                s.bind(("127.0.0.1", port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        s.listen()
        yield
