"""One board's console, as the station drives it: the I/O around mfg_protocol's StationChannel.

The port is opened with pyserial's `serial_for_url`, so a pty path, an
`rfc2217://host:port` (ser2net, `board run --serial rfc2217`) and a
`socket://host:port` all work. `request` writes a request, feeds everything
the console prints to the channel and writes what the channel says to write,
until the board answered, refused, or the channel gave up. A request that
gets no conclusive answer while the console stays quiet for `timeout`
seconds (`slow_timeout` for commands that make keys) is sent again, as many
times as the channel allows; a console that never stops talking without
answering is cut off by a cap per request.

Every exchange is counted (bytes each way, time, attempts) for the report
and for the rack benchmark's serial lower bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import serial

from pledgeforge.errors import EnvironmentFailure, UsageError, VerificationFailure
from pledgeforge.firmware.mfg_protocol import (COMMANDS, Answered, Failed, ProtocolError, Refused,
                                               Send, StationChannel)

DEFAULT_TIMEOUT = 5.0
DEFAULT_SLOW_TIMEOUT = 60.0
DEFAULT_BAUDRATE = 115200
#: how often a read returns to look at the clock when nothing arrives
_POLL_SECONDS = 0.1
#: on top of the quiet timeouts, what a request may take at most before it is given up
_REQUEST_CAP_EXTRA = 60.0


class LinkError(EnvironmentFailure):
    """The board's console cannot be opened or gave no valid answer."""


class BoardRefusal(VerificationFailure):
    """The board answered a request with an error (`code` from mfg_protocol.ERRORS)."""

    def __init__(self, command: str, code: str, message: str):
        super().__init__(f"the board refused {command}: {message} ({code})")
        self.command = command
        self.code = code


@dataclass
class Exchange:
    """One request as it went on the line."""

    command: str
    seconds: float
    bytes_out: int
    bytes_in: int
    attempts: int


@dataclass
class LinkStats:
    bytes_out: int = 0
    bytes_in: int = 0
    exchanges: list[Exchange] = field(default_factory=list)
    damaged_lines: int = 0
    retries: int = 0
    resent_chunks: int = 0


class BoardLink:
    """A manufacturing session on one console. Use as a context manager, or call `close()`."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT,
                 slow_timeout: float = DEFAULT_SLOW_TIMEOUT, baudrate: int = DEFAULT_BAUDRATE,
                 channel: StationChannel | None = None):
        self.url = url
        self.timeout = timeout
        self.slow_timeout = slow_timeout
        self.channel = channel or StationChannel()
        self.stats = LinkStats()
        # pyserial's RFC 2217 client has no write timeout (its socket writes block, bounded by
        # the server reading); the others get one.
        limits = {} if url.startswith("rfc2217://") else {"write_timeout": max(timeout, 5.0)}
        try:
            self._port = serial.serial_for_url(url, baudrate=baudrate, timeout=_POLL_SECONDS,
                                               **limits)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise LinkError(f"cannot open the board's console {url}: {exc}") from None

    def close(self) -> None:
        try:
            self._port.close()
        except (serial.SerialException, OSError):
            pass  # the board went away first; nothing is left to release

    def __enter__(self) -> "BoardLink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ requests

    def request(self, command: str, args: dict | None = None, *, rid: str | None = None) -> dict:
        """The board's reply fields; BoardRefusal when it says no, LinkError when no valid
        answer came within the attempts the channel allows."""
        quiet = self.slow_timeout if COMMANDS[command].slow else self.timeout
        started = time.monotonic()
        before = (self.stats.bytes_out, self.stats.bytes_in)
        cap = started + self.channel.max_attempts * quiet + _REQUEST_CAP_EXTRA
        try:
            pending = [self.channel.request(command, args, rid=rid)]
        except ProtocolError as exc:  # e.g. anchors too large for one message
            raise UsageError(f"cannot send {command} to the board: {exc}") from None
        outcome = None
        while outcome is None:
            for send in pending:
                self._write(send.data)
            pending = []
            heard = time.monotonic()
            while not pending and outcome is None:
                now = time.monotonic()
                if now >= cap:
                    outcome = Failed(command, "", f"the console talked for {now - started:.0f} s "
                                                  "without a valid answer", self.channel.max_attempts)
                    break
                if now - heard >= quiet:
                    step = self.channel.timed_out()
                    if isinstance(step, Send):
                        pending.append(step)
                    else:
                        outcome = step
                    break
                data = self._read()
                if not data:
                    continue
                heard = time.monotonic()
                for step in self.channel.receive(data):
                    if isinstance(step, Send):
                        pending.append(step)
                    else:
                        outcome = step
        self._count(command, started, before, outcome.attempts)
        if isinstance(outcome, Answered):
            return outcome.reply
        if isinstance(outcome, Refused):
            raise BoardRefusal(command, outcome.code, outcome.message)
        if self.channel.busy:  # given up on by the cap: the channel still waits
            self.channel = _fresh_channel(self.channel)
        raise LinkError(f"no valid answer from the board at {self.url} to {command}: "
                        f"{outcome.reason}")

    def _count(self, command: str, started: float, before: tuple[int, int], attempts: int) -> None:
        stats = self.stats
        stats.exchanges.append(Exchange(command, time.monotonic() - started,
                                        stats.bytes_out - before[0], stats.bytes_in - before[1],
                                        attempts))
        stats.damaged_lines = self.channel.damaged_lines
        stats.retries = self.channel.retries
        stats.resent_chunks = self.channel.resent_chunks

    # ------------------------------------------------------------------ the port

    def _write(self, data: bytes) -> None:
        try:
            self._port.write(data)
            self._port.flush()
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"cannot write to the board's console {self.url}: {exc}") from None
        self.stats.bytes_out += len(data)

    def _read(self) -> bytes:
        """What arrived within the poll interval (b"" if nothing did)."""
        try:
            data = self._port.read(1)
            if data:
                waiting = self._port.in_waiting
                if waiting:
                    data += self._port.read(waiting)
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"lost the board's console {self.url}: {exc}") from None
        self.stats.bytes_in += len(data)
        return data


def _fresh_channel(old: StationChannel) -> StationChannel:
    """A channel like `old` for the next request (an abandoned request ends with it)."""
    channel = StationChannel(max_attempts=old.max_attempts, line_length=old.line_length)
    channel.damaged_lines, channel.retries = old.damaged_lines, old.retries
    channel.resent_chunks = old.resent_chunks
    return channel


__all__ = ["BoardLink", "BoardRefusal", "LinkError", "Exchange", "LinkStats", "DEFAULT_TIMEOUT",
           "DEFAULT_SLOW_TIMEOUT"]
