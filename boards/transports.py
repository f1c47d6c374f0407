"""Ways to reach a board's console: a pty, RFC 2217 and raw TCP on loopback.

- `PtyTransport`: a pseudo-terminal, with a stable symlink (`DIR/console`) to
  its /dev/pts path. picocom, pyserial, smpmgr and pexpect open it like a USB
  serial adapter. The pty's own kernel buffer keeps the latest output for
  whoever opens it next.
- `Rfc2217Transport`: a Telnet COM-port server (what `ser2net` offers and
  labgrid's NetworkSerialPort speaks), built on pyserial's `PortManager`.
- `TcpTransport`: bytes as they are over TCP (`socket://` in pyserial).

Each transport runs one thread around a selector. Output from the board is
queued per client and flushed when the client's socket (or the pty) can take
it; a client that stops reading loses its oldest queued bytes instead of
stalling the board.

With a baud rate to pace at (`pace=`), a transport moves the bytes of each
direction no faster than a UART at that rate does (10 bits a byte, 8N1): the
board reads its input, and the client its output, as they would arrive over
a real line. Without it, bytes move as fast as the host allows.

A network client sees output from the moment it connects, as with ser2net: a
script that waits for a prompt must not match one printed for an earlier
client. With `replay=True` a client is sent the console's recent output first
(for a human attaching late who wants to see the boot). pyserial's RFC 2217
client clears its input once the port is open, so it may drop a replay.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import selectors
import socket
import termios
import threading
import time
import tty
from pathlib import Path

import serial
import serial.rfc2217

from pledgeforge.errors import EnvironmentFailure

from .console import Attachment, Console

#: the console transports a board serves (`board run --serial`)
SERIAL_KINDS = ("pty", "rfc2217", "tcp")

LOOPBACK = "127.0.0.1"
_SEND_CHUNK = 16 * 1024
_log = logging.getLogger(__name__)


class TransportError(EnvironmentFailure):
    """A console transport could not be set up."""


class LinePacer:
    """One direction of a UART at `baudrate` (8N1: 10 bits a byte): which of the bytes
    waiting have crossed the line by now. Bytes are let through in small batches (a few
    milliseconds of line time), so pacing costs a few hundred wake-ups a second, not one
    a byte."""

    BATCH_SECONDS = 0.004

    def __init__(self, baudrate: int):
        self.rate = baudrate / 10.0
        self.batch = max(1, int(self.rate * self.BATCH_SECONDS))
        #: the moment up to which the line has carried the bytes let through so far
        self._line_time = 0.0

    def started(self, now: float) -> None:
        """Bytes were queued: an idle line starts carrying them now."""
        self._line_time = max(self._line_time, now)

    def due(self, pending: int, now: float) -> int:
        """How many of `pending` bytes may go now (0 until a batch, or all of fewer, is over)."""
        if pending <= 0:
            return 0
        count = min(pending, int((now - self._line_time) * self.rate))
        if count < min(pending, self.batch):
            return 0
        self._line_time += count / self.rate
        return count

    def deadline(self, pending: int) -> float | None:
        """When the next batch of `pending` bytes will have crossed the line."""
        if pending <= 0:
            return None
        return self._line_time + min(pending, self.batch) / self.rate


class _Outbox:
    """Bytes waiting for one client. `raw` is trimmed from the front when it
    grows past the limit; `wire` is what is already encoded for the wire
    (escaped data, protocol replies) and is never cut. With a pacer, raw bytes
    leave at the line's rate."""

    def __init__(self, limit: int, pacer: LinePacer | None = None):
        self.limit = limit
        self.pacer = pacer
        self.raw = bytearray()
        self.wire = bytearray()
        self.dropped = 0
        self.lock = threading.Lock()

    def put(self, data: bytes) -> bool:
        """Queue `data`; True if bytes had to be dropped to stay in bounds."""
        with self.lock:
            if self.pacer is not None and not self.raw:
                self.pacer.started(time.monotonic())
            self.raw += data
            excess = len(self.raw) - self.limit
            if excess > 0:
                del self.raw[:excess]
                self.dropped += excess
                return True
            return False

    def pending(self) -> bool:
        with self.lock:
            return bool(self.raw or self.wire)

    def sendable(self, now: float) -> bool:
        """Whether something may be written now (wire bytes, or raw bytes the line carried)."""
        with self.lock:
            if self.wire or (self.raw and self.pacer is None):
                return True
            return bool(self.raw) and self.pacer.deadline(len(self.raw)) <= now

    def take(self, limit: int, now: float) -> bytes:
        """Up to `limit` raw bytes that may go now (call with the lock held)."""
        count = min(limit, len(self.raw))
        if self.pacer is not None:
            count = self.pacer.due(count, now)
        chunk = bytes(self.raw[:count])
        del self.raw[:count]
        return chunk

    def deadline(self, now: float) -> float | None:
        """When raw bytes become due next; None when nothing waits on the clock (none wait,
        or they are due already and wait for the client to take them)."""
        with self.lock:
            if self.pacer is None or self.wire:
                return None
            due = self.pacer.deadline(len(self.raw))
            return due if due is not None and due > now else None


class _Inbox:
    """Client input on its way to the board, let through at the line's rate."""

    def __init__(self, console: Console, pacer: LinePacer | None):
        self.console = console
        self.pacer = pacer
        self.held = bytearray()

    def put(self, data: bytes, now: float) -> None:
        if self.pacer is None:
            self.console.receive(data)
            return
        if not self.held:
            self.pacer.started(now)
        self.held += data
        self.release(now)

    def release(self, now: float) -> None:
        if self.pacer is not None and self.held:
            count = self.pacer.due(len(self.held), now)
            if count:
                self.console.receive(bytes(self.held[:count]))
                del self.held[:count]

    def deadline(self, now: float) -> float | None:
        return None if self.pacer is None else self.pacer.deadline(len(self.held))


def _pacer(baudrate: int | None) -> LinePacer | None:
    return LinePacer(baudrate) if baudrate else None


class _Loop(threading.Thread):
    """A selector thread; other threads wake it when a client has output."""

    def __init__(self, name: str):
        super().__init__(name=name, daemon=True)
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = False
        self._channels: list[_Channel] = []

    def wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # already has a wake-up pending, or the loop is gone

    def add(self, channel: "_Channel") -> None:
        self._channels.append(channel)
        self.selector.register(channel.fileobj, selectors.EVENT_READ, channel)

    def remove(self, channel: "_Channel") -> None:
        if channel in self._channels:
            self._channels.remove(channel)
            try:
                self.selector.unregister(channel.fileobj)
            except (KeyError, ValueError):
                pass
        channel.close()

    def run(self) -> None:
        while not self._stopping:
            # Ask for writability only where output may go now, so an idle client costs
            # nothing; a paced line wakes the loop when its next bytes are due.
            now = time.monotonic()
            timeout = 1.0
            for channel in list(self._channels):
                channel.release(now)
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if channel.wants_write(now) else 0)
                try:
                    self.selector.modify(channel.fileobj, events, channel)
                except (KeyError, ValueError, OSError):
                    self.remove(channel)
                    continue
                deadline = channel.deadline(now)
                if deadline is not None:
                    timeout = min(timeout, max(0.0, deadline - now))
            for key, events in self.selector.select(timeout=timeout):
                if key.data is None:
                    try:
                        self._wake_r.recv(4096)
                    except BlockingIOError:
                        pass
                    continue
                channel = key.data
                if channel not in self._channels:
                    continue
                try:
                    if events & selectors.EVENT_READ:
                        channel.on_readable(self)
                    if events & selectors.EVENT_WRITE and channel in self._channels:
                        channel.on_writable()
                except OSError as exc:
                    _log.debug("console client %s dropped: %s", channel, exc)
                    self.remove(channel)
        for channel in list(self._channels):
            self.remove(channel)
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self.wake()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)


class _Channel:
    """One file object in a loop: a listening socket, a client, or the pty."""

    fileobj = None

    def wants_write(self, now: float) -> bool:
        return False

    def release(self, now: float) -> None:
        """Let paced input through to the board."""

    def deadline(self, now: float) -> float | None:
        """When paced bytes become due next (None: nothing waits on the clock)."""
        return None

    def on_readable(self, loop: _Loop) -> None:
        raise NotImplementedError

    def on_writable(self) -> None:
        pass

    def close(self) -> None:
        pass


class _ConsoleChannel(_Channel):
    """A channel carrying the console both ways, each way through a queue that may be paced
    at the line's baud rate (subclasses set `outbox` and `inbox`)."""

    outbox: _Outbox
    inbox: _Inbox

    def wants_write(self, now: float) -> bool:
        return self.outbox.sendable(now)

    def release(self, now: float) -> None:
        self.inbox.release(now)

    def deadline(self, now: float) -> float | None:
        times = [t for t in (self.outbox.deadline(now), self.inbox.deadline(now)) if t is not None]
        return min(times) if times else None


class _SocketClient(_ConsoleChannel):
    """A network client of the console; subclasses add the wire protocol."""

    def __init__(self, console: Console, sock: socket.socket, loop: _Loop, *, replay: bool = False,
                 pace: int | None = None):
        self.console = console
        self.replay = replay
        self.sock = sock
        self.fileobj = sock
        self.loop = loop
        self.outbox = _Outbox(console.log_capacity, _pacer(pace))
        self.inbox = _Inbox(console, _pacer(pace))
        # A fixed send buffer: otherwise the kernel grows it to megabytes for
        # a client that stopped reading, and our bound on queued output would
        # be the kernel's instead.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(console.log_capacity, 16384))
        sock.setblocking(False)
        self.attachment: Attachment | None = None

    def start(self) -> None:
        self.attachment = self.console.attach(self._queue, replay=self.replay)

    def _queue(self, data: bytes) -> None:
        self.outbox.put(data)
        self.loop.wake()

    def encode(self, data: bytes) -> bytes:
        return data

    def decode(self, data: bytes) -> bytes:
        return data

    def on_readable(self, loop: _Loop) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        if not data:
            loop.remove(self)
            return
        self.inbox.put(self.decode(data), time.monotonic())

    def on_writable(self) -> None:
        box = self.outbox
        with box.lock:
            if not box.wire and box.raw:
                chunk = box.take(_SEND_CHUNK, time.monotonic())
                if chunk:
                    box.wire += self.encode(chunk)
            if not box.wire:
                return
            try:
                sent = self.sock.send(box.wire)
            except BlockingIOError:
                return
            del box.wire[:sent]

    def close(self) -> None:
        if self.attachment is not None:
            self.attachment.detach()
        self.sock.close()

    def __repr__(self) -> str:
        try:
            return f"{type(self).__name__}({self.sock.getpeername()})"
        except OSError:
            return f"{type(self).__name__}(closed)"


class _Listener(_Channel):
    def __init__(self, sock: socket.socket, make_client):
        self.sock = sock
        self.fileobj = sock
        self.make_client = make_client

    def on_readable(self, loop: _Loop) -> None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        client = self.make_client(conn, loop)
        loop.add(client)
        client.start()
        loop.wake()

    def close(self) -> None:
        self.sock.close()


class _NetworkTransport:
    """A loopback TCP server; each connection is one console client.
    `replay`: send each new client the recent output before the live output."""

    scheme = ""

    def __init__(self, console: Console, port: int = 0, host: str = LOOPBACK, *, replay: bool = False,
                 pace: int | None = None):
        self.console = console
        self.replay = replay
        self.pace = pace
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot listen on {host}:{port} for the console: {exc.strerror} "
                                 "(choose another --port, or 0 for a free one)") from None
        sock.listen(8)
        sock.setblocking(False)
        self.host, self.port = sock.getsockname()[:2]
        self._loop = _Loop(f"console-{self.scheme}-{self.port}")
        self._loop.add(_Listener(sock, self._make_client))
        self._loop.start()

    @property
    def address(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def _make_client(self, conn: socket.socket, loop: _Loop) -> _SocketClient:
        raise NotImplementedError

    def close(self) -> None:
        self._loop.stop()


class TcpTransport(_NetworkTransport):
    """Raw TCP: the console's bytes, nothing else (pyserial `socket://`)."""

    scheme = "socket"

    def _make_client(self, conn, loop):
        return _SocketClient(self.console, conn, loop, replay=self.replay, pace=self.pace)


class VirtualUart:
    """The line settings an RFC 2217 client may set and read back.

    There is no wire, so the settings change nothing; they are kept so that
    clients reading them back (as pyserial does) see what they set.
    """

    def __init__(self, baudrate: int):
        self.baudrate = baudrate
        self.bytesize = serial.EIGHTBITS
        self.parity = serial.PARITY_NONE
        self.stopbits = serial.STOPBITS_ONE
        self.xonxoff = False
        self.rtscts = False
        self.break_condition = False
        self.dtr = True
        self.rts = True
        # Modem inputs as a board with a plain 3-wire UART presents them.
        self.cts = True
        self.dsr = True
        self.ri = False
        self.cd = True

    def reset_input_buffer(self) -> None:
        pass  # input goes straight to the board; there is nothing held here

    def reset_output_buffer(self) -> None:
        pass


class _Rfc2217Client(_SocketClient):
    def __init__(self, console, sock, loop, baudrate: int, *, replay: bool = False,
                 pace: int | None = None):
        super().__init__(console, sock, loop, replay=replay, pace=pace)
        self.uart = VirtualUart(baudrate)
        # PortManager sends Telnet replies through `self.write` and starts
        # negotiating at once, so it is created after the queue exists.
        self.manager = serial.rfc2217.PortManager(self.uart, self)

    def write(self, data: bytes) -> None:
        """Telnet/RFC 2217 replies from the PortManager, already wire-encoded."""
        with self.outbox.lock:
            self.outbox.wire += data
        self.loop.wake()

    def encode(self, data: bytes) -> bytes:
        # Telnet escapes IAC (0xFF) by doubling it; the same as PortManager.escape.
        return data.replace(b"\xff", b"\xff\xff")

    def decode(self, data: bytes) -> bytes:
        try:
            return b"".join(self.manager.filter(data))
        except (ValueError, IndexError, TypeError, KeyError) as exc:
            # A malformed subnegotiation: this client is confused, the board is not.
            raise OSError(f"bad RFC 2217 request: {exc}") from None


class Rfc2217Transport(_NetworkTransport):
    """A Telnet COM-port server (RFC 2217), as ser2net provides for real boards."""

    scheme = "rfc2217"

    def __init__(self, console: Console, port: int = 0, host: str = LOOPBACK, *, baudrate: int = 115200,
                 replay: bool = False, pace: int | None = None):
        self.baudrate = baudrate
        super().__init__(console, port, host, replay=replay, pace=pace)

    def _make_client(self, conn, loop):
        return _Rfc2217Client(self.console, conn, loop, self.baudrate, replay=self.replay,
                              pace=self.pace)


class _PtyMaster(_ConsoleChannel):
    def __init__(self, console: Console, master: int, slave: int, pace: int | None = None):
        self.console = console
        self.master = master
        self.slave = slave
        self.fileobj = master
        self.outbox = _Outbox(console.log_capacity, _pacer(pace))
        self.inbox = _Inbox(console, _pacer(pace))
        self.loop: _Loop | None = None
        self.attachment: Attachment | None = None

    def queue(self, data: bytes) -> None:
        if self.outbox.put(data):
            # Nobody has read the pty for a long while: what the kernel still
            # holds is older than what was just dropped, so drop it too. A
            # client opening the pty later then reads the latest output.
            termios.tcflush(self.slave, termios.TCIFLUSH)
        if self.loop is not None:
            self.loop.wake()

    def on_readable(self, loop: _Loop) -> None:
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:
                return  # no client has the pty open; we keep the slave, so this passes
            raise
        self.inbox.put(data, time.monotonic())

    def on_writable(self) -> None:
        box = self.outbox
        with box.lock:
            if box.wire or not box.raw:
                # `wire` holds bytes the line let through that the pty could not take yet
                chunk = bytes(box.wire)
            else:
                chunk = box.take(_SEND_CHUNK, time.monotonic())
            if not chunk:
                return
            try:
                sent = os.write(self.master, chunk)
            except BlockingIOError:
                sent = 0
            box.wire[:] = chunk[sent:]

    def close(self) -> None:
        if self.attachment is not None:
            self.attachment.detach()
        os.close(self.master)
        os.close(self.slave)


def open_raw_pty(baudrate: int) -> tuple[int, int, str]:
    """A pseudo-terminal that passes bytes through untouched: (master fd, slave fd, slave path).

    Raw mode on our own end of the slave: no echo of board output back to the
    board, no CR/LF rewriting; a client may still set its own modes when it
    opens it. The master is non-blocking. Keeping the slave open means the pty
    outlives each client that opens and closes it.
    """
    master, slave = os.openpty()
    tty.setraw(slave)
    attrs = termios.tcgetattr(slave)
    speed = getattr(termios, f"B{baudrate}", None)
    if speed is not None:
        attrs[4] = attrs[5] = speed
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
    flags = fcntl.fcntl(master, fcntl.F_GETFL)
    fcntl.fcntl(master, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    return master, slave, os.ttyname(slave)


def link_pty(path: str, link: Path) -> None:
    """Point `link` at the pty `path`, replacing whatever link was there in one step."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(path, tmp)
    os.replace(tmp, link)


def unlink_pty(path: str, link: Path) -> None:
    """Remove `link` if it still points at `path` (another process may have taken it over)."""
    try:
        if os.readlink(link) == path:
            link.unlink()
    except OSError:
        pass


class PtyTransport:
    """A pseudo-terminal for the console, linked from `link` (e.g. DIR/console)."""

    scheme = "pty"

    def __init__(self, console: Console, link: str | os.PathLike, *, baudrate: int = 115200,
                 pace: int | None = None):
        self.console = console
        self.link = Path(link)
        self.pace = pace
        master, slave, self.path = open_raw_pty(baudrate)
        self._channel = _PtyMaster(console, master, slave, pace)
        self._loop = _Loop(f"console-pty-{os.path.basename(self.path)}")
        self._channel.loop = self._loop
        self._loop.add(self._channel)
        # The kernel's pty buffer already holds recent output for the next
        # reader, so nothing is replayed here.
        self._channel.attachment = console.attach(self._channel.queue, replay=False)
        link_pty(self.path, self.link)
        self._loop.start()

    @property
    def address(self) -> str:
        return str(self.link)

    def close(self) -> None:
        self._loop.stop()
        unlink_pty(self.path, self.link)
