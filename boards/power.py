"""The board's power switch, reachable while the board runs.

`pledgeforge board power on|off|cycle --state DIR` is what lab tools call
(labgrid's ExternalPowerDriver, LAVA's power commands, U-Boot test/py's reset
hook). It talks to the running board over a unix socket in the state
directory, `DIR/power.sock`: one JSON request line, one JSON answer line.
A unix socket keeps the switch to the user who owns the state directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Callable

from pledgeforge.errors import EnvironmentFailure, PledgeforgeError

POWER_SOCKET = "power.sock"
COMMANDS = ("on", "off", "cycle", "status")
REQUEST_TIMEOUT = 30.0
_MAX_REQUEST = 4096
# sun_path holds 108 bytes on Linux; deep state directories need the detour below.
_SUN_PATH_MAX = 107
_log = logging.getLogger(__name__)


class PowerControlError(EnvironmentFailure):
    """The power switch could not be reached or refused the request."""


@contextlib.contextmanager
def _socket_path(path: Path):
    """A path to use in bind/connect for `path`, however long `path` is.

    Long paths go through the directory's descriptor (/proc/self/fd/N/name),
    which names the same socket file with a short string.
    """
    if len(os.fsencode(str(path))) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def socket_path(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir).resolve() / POWER_SOCKET


class PowerServer:
    """Answers power requests for one board by calling `handler(command) -> dict`."""

    def __init__(self, state_dir: str | os.PathLike, handler: Callable[[str], dict]):
        self.path = socket_path(state_dir)
        self.handler = handler
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # The caller holds the state directory's lock, so a socket file left
        # here belongs to a board process that died: it is stale.
        self.path.unlink(missing_ok=True)
        with _socket_path(self.path) as bind_path:
            self._sock.bind(bind_path)
        os.chmod(self.path, 0o600)
        self._sock.listen(4)
        self._sock.settimeout(1.0)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="power-control", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"unix:{self.path}"

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                try:
                    self._answer(conn)
                except OSError as exc:
                    _log.debug("power request dropped: %s", exc)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(REQUEST_TIMEOUT)
        data = b""
        while b"\n" not in data and len(data) < _MAX_REQUEST:
            chunk = conn.recv(_MAX_REQUEST)
            if not chunk:
                break
            data += chunk
        try:
            request = json.loads(data.split(b"\n", 1)[0])
            command = request["command"]
            if command not in COMMANDS:
                raise ValueError(command)
        except (ValueError, KeyError, TypeError):
            reply = {"ok": False, "error": f"bad request; expected {{\"command\": one of {COMMANDS}}}"}
        else:
            try:
                reply = {"ok": True, **self.handler(command)}
            except PledgeforgeError as exc:
                reply = {"ok": False, "error": str(exc)}
        conn.sendall(json.dumps(reply).encode() + b"\n")

    def close(self) -> None:
        self._stopping.set()
        self._sock.close()
        self._thread.join(5.0)
        self.path.unlink(missing_ok=True)


def power_request(state_dir: str | os.PathLike, command: str, *,
                  timeout: float = REQUEST_TIMEOUT) -> dict:
    """Send one power command to the board running in `state_dir`."""
    if command not in COMMANDS:
        raise PowerControlError(f"unknown power command {command!r}; use one of {', '.join(COMMANDS)}")
    path = socket_path(state_dir)
    if not path.exists():
        raise PowerControlError(f"no board is running in {Path(state_dir)} (no {POWER_SOCKET}); "
                                "start one with `pledgeforge board run --state DIR`")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            with _socket_path(path) as connect_path:
                sock.connect(connect_path)
            sock.sendall(json.dumps({"command": command}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except (ConnectionRefusedError, FileNotFoundError):
            raise PowerControlError(f"no board is running in {Path(state_dir)} "
                                    f"({POWER_SOCKET} is stale)") from None
        except TimeoutError:
            raise PowerControlError(f"the board in {Path(state_dir)} did not answer within "
                                    f"{timeout:.0f} s") from None
        except OSError as exc:
            raise PowerControlError(f"cannot reach the board in {Path(state_dir)}: {exc}") from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise PowerControlError(f"the board in {Path(state_dir)} sent a garbled answer") from None
    if not reply.get("ok"):
        raise PowerControlError(reply.get("error") or "power request refused")
    return reply
