"""A command run on a pseudo-terminal, as a person at a shell runs it: its output read as they see
it, and Ctrl-C pressed as they press it (the terminal sends SIGINT to the whole foreground process
group, children included).

A thread reads the terminal all the time, as a terminal emulator does. Output left unread would
fill the terminal's buffer and block the command's writes, and Ctrl-C flushes whatever is still
queued (the line discipline's default without NOFLSH), so lines written long before the key was
pressed could be lost.
"""

from __future__ import annotations

import contextlib
import os
import pty
import signal
import threading
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
        self._changed = threading.Condition()
        self._closed = False  # every process holding the terminal has gone
        self._reader = threading.Thread(target=self._read_all, daemon=True)
        self._reader.start()

    def text(self) -> str:
        with self._changed:
            return self.output.decode(errors="replace")

    def _read_all(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: every process holding the terminal has gone
                data = b""
            with self._changed:
                if data:
                    self.output += data
                else:
                    self._closed = True
                self._changed.notify_all()
            if not data:
                return

    def wait_for(self, condition: Callable[[str], bool], *, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(self.output.decode(errors="replace")):
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise AssertionError(f"timed out waiting for {what}:\n{self.text()[-3000:]}")
                self._changed.wait(left)

    def press_ctrl_c(self, *, timeout: float = 60.0) -> int:
        """Type Ctrl-C; wait until the command exits and its output is read; its exit status."""
        os.write(self.fd, b"\x03")
        deadline = time.monotonic() + timeout
        status = self.wait(timeout=timeout)
        self._reader.join(max(1.0, deadline - time.monotonic()))
        return status

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
        self._reader.join(10)
        os.close(self.fd)
