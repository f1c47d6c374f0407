"""Run `pledgeforge board run` as users do (a real process) and talk to its console."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import termios
import tty
from pathlib import Path

import pexpect
import pexpect.fdpexpect

from clirunner import PLEDGEFORGE

START_TIMEOUT = 60.0
EXPECT_TIMEOUT = 30


class BoardProcess:
    """One `pledgeforge board run` child; `info` is the JSON line it printed."""

    def __init__(self, profile: str | Path, state_dir: Path, *args: str, env: dict | None = None):
        self.profile = str(profile)
        self.state_dir = Path(state_dir)
        self.args = list(args)
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    def start(self) -> "BoardProcess":
        self.stderr = open(self.state_dir.parent / f"{self.state_dir.name}.stderr", "ab")
        self.proc = subprocess.Popen(
            [PLEDGEFORGE, "board", "run", "--profile", self.profile, "--state", str(self.state_dir),
             *self.args],
            stdout=subprocess.PIPE, stderr=self.stderr, env=self.env or dict(os.environ))
        line = _read_line(self.proc.stdout, START_TIMEOUT)
        if not line:
            self.proc.wait(10)
            err = (self.state_dir.parent / f"{self.state_dir.name}.stderr").read_text()
            raise AssertionError(f"board run exited ({self.proc.returncode}) without its JSON line: {err}")
        self.info = json.loads(line)
        return self

    @property
    def console_path(self) -> str:
        return self.info["console"]

    def tcp_address(self) -> tuple[str, int]:
        host_port = self.info["console"].split("://", 1)[1]
        host, port = host_port.rsplit(":", 1)
        return host, int(port)

    def open_pty(self, logfile=None) -> pexpect.fdpexpect.fdspawn:
        """The console as a terminal program sees it (raw mode, as picocom sets)."""
        fd = os.open(self.state_dir / "console", os.O_RDWR | os.O_NOCTTY)
        # TCSANOW: switching modes must not discard output already waiting in the pty.
        tty.setraw(fd, termios.TCSANOW)
        return pexpect.fdpexpect.fdspawn(fd, timeout=EXPECT_TIMEOUT, logfile=logfile)

    def open_tcp(self) -> pexpect.fdpexpect.fdspawn:
        sock = socket.create_connection(self.tcp_address(), timeout=10)
        child = pexpect.fdpexpect.fdspawn(sock, timeout=EXPECT_TIMEOUT)
        child._socket = sock  # keep the socket object alive as long as the spawn
        return child

    def kill(self) -> None:
        """A power cut of the whole board process."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
        if getattr(self, "stderr", None):
            self.stderr.close()
        return self.proc.returncode if self.proc else 0

    def __enter__(self) -> "BoardProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _read_line(stream, timeout: float) -> bytes:
    """One line from a child's stdout, waiting at most `timeout` seconds."""
    fd = stream.fileno()
    data = b""
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise AssertionError(f"no line from the board within {timeout} s")
        chunk = os.read(fd, 1)
        if not chunk:
            return data
        data += chunk
    return data


def login(child, username: str, password: str, prompt: str) -> None:
    child.expect("login: ")
    child.send(username + "\r")
    child.expect_exact("Password: ")
    child.send(password + "\r")
    child.expect_exact(prompt)


def run(child, command: str, prompt: str) -> str:
    """Type a command, return its output (without the echo and the prompt)."""
    child.send(command + "\r")
    child.expect_exact(command + "\r\n")
    child.expect_exact(prompt)
    return child.before.decode(errors="replace")
