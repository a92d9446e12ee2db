"""A command run on a pseudo-terminal, as a person at a shell runs it: its output read as they see
it, and Ctrl-C pressed as they press it (the terminal sends SIGINT to the whole foreground process
group, children included)."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import time
from collections.abc import Callable


class Terminal:
    """``argv`` running on its own pseudo-terminal (stdin, stdout and stderr)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: become the command
            try:
                os.execve(argv[0], argv, env)  # noqa: S606 - the test's own argv
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = bytearray()
        self.status: int | None = None

    def text(self) -> str:
        return self.output.decode(errors="replace")

    def _read(self, seconds: float) -> bool:
        """Read what arrives within ``seconds``; False once the terminal is closed."""
        ready, _, _ = select.select([self.fd], [], [], seconds)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: every process holding the terminal has gone
            return False
        self.output += data
        return bool(data)

    def wait_for(self, condition: Callable[[str], bool], *, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self.text()):
            if time.monotonic() > deadline or not self._read(0.1):
                raise AssertionError(f"timed out waiting for {what}:\n{self.text()[-3000:]}")

    def press_ctrl_c(self, *, timeout: float = 60.0) -> int:
        """Type Ctrl-C; read until the command exits; return its exit status."""
        os.write(self.fd, b"\x03")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read(0.1):
            pass
        return self.wait(timeout=max(1.0, deadline - time.monotonic()))

    def wait(self, *, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout}s:\n{self.text()[-3000:]}")
            time.sleep(0.05)
        return self.status

    def close(self) -> None:
        """Whatever happened: no process left behind, the terminal closed."""
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(self.pid), signal.SIGKILL)
            self.wait(timeout=10)
        os.close(self.fd)
