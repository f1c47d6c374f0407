"""Process control for the lab's servers: is it ours, wait for its end, stop it.

A server's PID is kept in lab.json across `lab up` runs, so before signalling
it the lab checks /proc that the PID still belongs to the server it started
(its command line names its configuration file), never to a recycled PID.
"""

from __future__ import annotations

import os
import select
import signal
import socket
from pathlib import Path

STOP_TIMEOUT_S = 10.0


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    if state in ("Z", "X"):  # exited, not yet reaped
        _reap(pid)
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _reap(pid: int) -> None:
    """Collect our own exited child (a no-op for processes started by another `lab up`)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def server_alive(pid: int | None, config: Path, module: str = "pledgeforge.registrar.server") -> bool:
    """True when `pid` is the lab server `python -m module` started with `config` (not a recycled PID)."""
    if not pid:
        return False
    cmd = _cmdline(pid)
    return bool(cmd) and str(config) in cmd and module in cmd


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait (bounded) until `pid` exits; True if it did. Waits on a pidfd, not a sleep."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        exited = bool(poller.poll(max(timeout, 0) * 1000))
    finally:
        os.close(fd)
    if exited:
        _reap(pid)
    return exited


def stop_process(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, a bounded wait, then SIGKILL."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if wait_for_exit(pid, timeout):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    wait_for_exit(pid, timeout)


def free_port(host: str) -> int:
    """A TCP port nobody listens on now (the server binds it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
