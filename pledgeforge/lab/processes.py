"""Process control for the lab's servers: is it ours, wait for its end, stop it.

A server's PID is kept in lab.json across `lab up` runs, so before signalling
it the lab checks /proc that the PID still belongs to the server it started
(its command line names its configuration file), never to a recycled PID.
"""

from __future__ import annotations

import os
import secrets
import select
import signal
import socket
from pathlib import Path

from .layout import LabError

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


#: where the lab's ports are chosen from, less the kernel's ephemeral range
LAB_PORTS = range(10000, 65536)
_PORT_TRIES = 64


def _ephemeral_ports() -> range:
    """The ports the kernel hands to outgoing connections and to binds on port 0."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port(host: str) -> int:
    """A TCP port nobody listens on now, for a server that binds it later.

    It is chosen outside the ephemeral range: a port from that range can be
    taken between now and the server's bind by any outgoing connection on the
    machine (its source port), which busy test runs and fleets make by the
    thousand. Outside it, only another listener can take it.
    """
    ephemeral = _ephemeral_ports()
    candidates = [p for p in LAB_PORTS if p not in ephemeral]
    for _ in range(_PORT_TRIES):
        port = secrets.choice(candidates)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise LabError(f"found no free TCP port on {host} in {_PORT_TRIES} tries")


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
