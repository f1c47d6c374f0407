"""Driving emulated boards as a bench script would: `pledgeforge board run` as a
child process, its console opened like a terminal program opens a serial port.

The demo uses this, and so do the tests that treat boards as black boxes.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import termios
import tty
from pathlib import Path

import pexpect
import pexpect.fdpexpect

from pledgeforge.errors import EnvironmentFailure

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
CONSOLE_TIMEOUT_S = 30.0


class BenchError(EnvironmentFailure):
    """A board process did not start as it should."""


class BoardProcess:
    """One `pledgeforge board run` child; `info` is the JSON line it printed.

    `board run` messages go to DIR.log beside the state directory. The child has
    a session of its own, so it outlives the terminal of whoever started it.
    """

    def __init__(self, profile: str | Path, state_dir: Path, *args: str, env: dict | None = None):
        self.profile = str(profile)
        self.state_dir = Path(state_dir)
        self.args = [str(a) for a in args]
        self.env = env
        self.log_path = self.state_dir.parent / f"{self.state_dir.name}.log"
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    def start(self) -> "BoardProcess":
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pledgeforge", "board", "run", "--profile", self.profile,
                 "--state", str(self.state_dir), *self.args],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                env=self.env or dict(os.environ), start_new_session=True)
        line = self._first_line(START_TIMEOUT_S)
        if not line.endswith(b"\n"):
            self.stop()
            raise BenchError(f"board {self.state_dir.name} did not start (exit status {self.proc.returncode}); "
                             f"last lines of {self.log_path}:\n"
                             + self.log_path.read_text(errors="replace")[-2000:])
        self.info = json.loads(line)
        return self

    def _first_line(self, timeout: float) -> bytes:
        """The JSON line; what came before EOF or the timeout if the board never printed it."""
        fd, data = self.proc.stdout.fileno(), b""
        while not data.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], timeout)
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                break
            data += chunk
        return data

    @property
    def console_path(self) -> str:
        return self.info["console"]

    def kill(self) -> None:
        """A power cut of the whole board process."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT_S)

    def stop(self) -> int:
        """SIGTERM (the board shuts down in order), SIGKILL after a bounded wait."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode if self.proc else 0

    def __enter__(self) -> "BoardProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def open_console(path: str | Path, timeout: float = CONSOLE_TIMEOUT_S, logfile=None) -> pexpect.fdpexpect.fdspawn:
    """A pty console as a terminal program sees it (raw mode, as picocom sets)."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    # TCSANOW: switching modes must not discard output already waiting in the pty.
    tty.setraw(fd, termios.TCSANOW)
    return pexpect.fdpexpect.fdspawn(fd, timeout=timeout, logfile=logfile)


def login(child, username: str, password: str, prompt: str) -> None:
    child.expect("login: ")
    child.send(username + "\r")
    child.expect_exact("Password: ")
    child.send(password + "\r")
    child.expect_exact(prompt)


def run(child, command: str, prompt: str) -> str:
    """Type a command, return its output as the board sent it (CRLF), without the echo and the prompt."""
    child.send(command + "\r")
    child.expect_exact(command + "\r\n")
    child.expect_exact(prompt)
    return child.before.decode(errors="replace")
