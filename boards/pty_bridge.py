"""A local pty in front of a network serial console (RFC 2217 or raw TCP).

Tools that open a serial port by path and nothing else (smpclient and smpmgr
call `serial.Serial(path)`, so `rfc2217://` URLs do not reach them) get a pty
whose bytes travel both ways to the console at `url`, opened with pyserial as
any RFC 2217 or `socket://` client opens it. The bridge runs where the tool
runs, so it serves a board behind ser2net as well as `board run --serial
rfc2217|tcp`.

Output arriving while no program has the pty open waits in the pty, as on a
USB serial adapter; when the pty is full the oldest unread output is dropped
rather than stalling the connection.
"""

from __future__ import annotations

import errno
import os
import select
import termios
import threading
from pathlib import Path

import serial

from pledgeforge.errors import EnvironmentFailure, UsageError

from .transports import link_pty, open_raw_pty, unlink_pty

SCHEMES = ("rfc2217", "socket")
# How often the pumps look up from a quiet line to see whether to stop.
_POLL_S = 0.2
_CHUNK = 4096


class BridgeError(EnvironmentFailure):
    """The bridge cannot be set up or lost its console."""


class PtyBridge:
    """Carries bytes between a pty (linked from `link`) and the console at `url`.

    `closed` is set when the bridge stops: after `close()`, or when the console
    closed the connection (then `error` says so).
    """

    def __init__(self, url: str, link: str | os.PathLike, *, baudrate: int = 115200,
                 timeout: float = 10.0):
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme not in SCHEMES:
            raise UsageError(f"console URL {url!r} is not one the bridge serves; use "
                             "rfc2217://HOST:PORT or socket://HOST:PORT")
        self.url = url
        self.link = Path(link)
        # A write to a console that stopped reading is bounded: by write_timeout
        # for socket://; pyserial's RFC 2217 client refuses that setting, and the
        # 5 s timeout it gives its own socket bounds its writes instead.
        bounds = {"write_timeout": timeout} if scheme == "socket" else {}
        try:
            self._port = serial.serial_for_url(url, baudrate=baudrate, timeout=_POLL_S, **bounds)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise BridgeError(f"cannot open the console at {url}: {exc} "
                              "(is the board running, and is that its console address?)") from None
        self._master, self._slave, self.path = open_raw_pty(baudrate)
        link_pty(self.path, self.link)
        self.error: str | None = None
        self.closed = threading.Event()
        self._threads = [threading.Thread(target=self._guard, args=(pump,), daemon=True,
                                          name=f"pty-bridge-{pump.__name__}")
                         for pump in (self._from_console, self._to_console)]
        for thread in self._threads:
            thread.start()

    def _guard(self, pump) -> None:
        try:
            pump()
        except (serial.SerialException, OSError) as exc:
            if not self.closed.is_set():
                self.error = f"the console at {self.url} went away: {exc}"
        self.closed.set()

    def _from_console(self) -> None:
        while not self.closed.is_set():
            data = self._port.read(max(1, min(self._port.in_waiting, _CHUNK)))
            if data:
                self._to_pty(data)

    def _to_pty(self, data: bytes) -> None:
        try:
            os.write(self._master, data)
        except BlockingIOError:
            # Nobody has read the pty for a long while: drop what it holds (the
            # oldest output) so that the latest gets through.
            termios.tcflush(self._slave, termios.TCIFLUSH)
            try:
                os.write(self._master, data)
            except BlockingIOError:
                pass

    def _to_console(self) -> None:
        while not self.closed.is_set():
            ready, _, _ = select.select([self._master], [], [], _POLL_S)
            if not ready:
                continue
            try:
                data = os.read(self._master, _CHUNK)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:
                    continue     # no program has the pty open
                raise
            self._port.write(data)

    def close(self) -> None:
        self.closed.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(5 * _POLL_S + 1)
        self._port.close()
        unlink_pty(self.path, self.link)
        os.close(self._master)
        os.close(self._slave)

    def describe(self) -> dict:
        return {"url": self.url, "pty": self.path, "link": str(self.link)}

    def __enter__(self) -> "PtyBridge":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
