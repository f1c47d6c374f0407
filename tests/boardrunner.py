"""Run `pledgeforge board run` as users do (a real process) and talk to its console.

The process and console handling is the package's bench (pledgeforge/bench.py,
which the demo uses too); tests add the raw TCP console and shorter expects.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
from pathlib import Path

import pexpect.fdpexpect

from clirunner import PLEDGEFORGE, run_cli
from pledgeforge import bench
from pledgeforge.boards.power import power_request
from pledgeforge.boards.profile import load_profile, write_profile

EXPECT_TIMEOUT = 30


def quick_profile(profile: str | Path, directory: Path, *, autoboot_seconds: float = 0.0) -> Path:
    """`profile` (a shipped name or a file) with no boot delays, written into `directory`:
    a test that waits for the prompt need not sit through a countdown at every boot.
    A test that watches for the countdown line asks for a short one (autoboot_seconds)."""
    loaded = load_profile(profile)
    quick = loaded.with_timings(autoboot_seconds=autoboot_seconds, firmware_seconds=0)
    return write_profile(quick, Path(directory) / f"{loaded.name}-quick.toml").path


class BoardProcess(bench.BoardProcess):
    """A board child process, with the consoles tests open on it."""

    def tcp_address(self) -> tuple[str, int]:
        host_port = self.info["console"].split("://", 1)[1]
        host, port = host_port.rsplit(":", 1)
        return host, int(port)

    def wait_for_phase(self, phase: str, attempts: int = 100) -> None:
        """Wait, without reading the console, until the power switch reports `phase`."""
        for _ in range(attempts):
            status = run_cli("board", "power", "status", "--state", self.state_dir)
            if f"({phase})".encode() in status.stdout:
                return
        raise AssertionError(f"board never reached {phase}: {status.stdout!r}")

    def open_pty(self, logfile=None) -> pexpect.fdpexpect.fdspawn:
        return bench.open_console(self.state_dir / "console", EXPECT_TIMEOUT, logfile)

    def open_tcp(self) -> pexpect.fdpexpect.fdspawn:
        sock = socket.create_connection(self.tcp_address(), timeout=10)
        child = pexpect.fdpexpect.fdspawn(sock, timeout=EXPECT_TIMEOUT)
        child._socket = sock  # keep the socket object alive as long as the spawn
        return child


def factory_board(lab, profile: str | Path, state_dir: Path, *args: str) -> "BoardProcess":
    """A factory-new board whose TPM comes from the lab's TPM maker (use it with `with`)."""
    return BoardProcess(profile, state_dir, "--factory-new", "--tpm-maker", lab.tpm_maker_dir, *args)


def manufacture(lab, board: "BoardProcess", flow: str = "redirect"):
    """The lab's station provisions the board over its console (the lab's servers learn of it
    for `flow`), then the board is power-cycled into its firmware; the station's result."""
    result = lab.manufacture_board(board.console_path, flow)
    power_request(board.state_dir, "cycle")
    return result


class BridgeProcess:
    """`pledgeforge board pty-bridge` as a child process; `info` is the JSON line it printed."""

    def __init__(self, url: str, link):
        self.url = url
        self.link = link
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    def __enter__(self) -> "BridgeProcess":
        self.proc = subprocess.Popen([PLEDGEFORGE, "board", "pty-bridge", "--url", self.url,
                                      "--link", str(self.link)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ready, _, _ = select.select([self.proc.stdout], [], [], bench.START_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise AssertionError(f"pty-bridge did not start: {self.proc.stderr.read()!r}")
        self.info = json.loads(line)
        return self

    def stop(self) -> int:
        """SIGTERM, as a user's Ctrl-C or a service manager stops it; the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(bench.STOP_TIMEOUT_S)
        finally:
            self.proc.stdout.close()
            self.proc.stderr.close()

    def __exit__(self, *exc) -> None:
        if self.proc.returncode is None:
            self.stop()
