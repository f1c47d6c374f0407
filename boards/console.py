"""The board's UART: output fan-out, a bounded output log, and line discipline.

Three pieces, from the wire inwards:

- `Console` is the UART seen from both sides. Transports (pty, RFC 2217, raw
  TCP) attach to it; everything the board writes goes to every attached
  client and into a bounded log that a client attaching later may be sent first.
  Writing never blocks: each transport's `send` only queues, and a transport
  that cannot keep up drops its oldest bytes, as a UART overrun does. Input
  from any client lands in one bounded input buffer. A tap (the transcript)
  sees both directions.
- `LineEditor` is the pure line discipline: echo, backspace, Ctrl-C, CR, LF
  and CRLF line ends, escape sequences and garbage bytes ignored, and SMP
  console frames (lines starting 06 09 or 04 14, as Zephyr's mcumgr uses on a
  shared UART) split out unechoed.
- `Terminal` is the board's side: it reads lines or a keypress with the
  editor, hands SMP frames to the SMP handler, and lets the runtime stop a read
  when power goes away.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

CR, LF = 0x0D, 0x0A
CTRL_C, CTRL_U, BS, DEL, ESC, TAB = 0x03, 0x15, 0x08, 0x7F, 0x1B, 0x09
# First bytes of an SMP console frame: 06 09 starts a packet, 04 14 continues it.
SMP_STARTS = {0x06: 0x09, 0x04: 0x14}

DEFAULT_INPUT_LIMIT = 256 * 1024
MAX_LINE = 1024
MAX_SMP_LINE = 8192
_MAX_ESCAPE = 16
# How long a read waits before re-checking the board's state; power-off and
# reset also wake it at once through `Console.wake`.
_READ_SLICE = 0.5
_HIDDEN = re.compile(rb"[^\r\n]")


class OutputLog:
    """The last `capacity` bytes written, replayed to clients that attach later."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._buf = bytearray()
        self._trimmed = False

    def append(self, data: bytes) -> None:
        self._buf += data
        # Trim in large steps so appends stay cheap.
        if len(self._buf) > 2 * self.capacity:
            del self._buf[:len(self._buf) - self.capacity]
            self._trimmed = True

    def snapshot(self) -> bytes:
        data = bytes(self._buf[-self.capacity:])
        if self._trimmed or len(self._buf) > self.capacity:
            # Start at a line boundary rather than in the middle of a line.
            cut = data.find(b"\n")
            if 0 <= cut < len(data) - 1:
                data = data[cut + 1:]
        return data


class Attachment:
    """One client's hold on the console; `detach()` lets go."""

    def __init__(self, console: "Console", send: Callable[[bytes], None]):
        self._console = console
        self.send = send

    def detach(self) -> None:
        self._console._detach(self)


class Console:
    """The UART: board output fanned out to clients, client input queued for the board."""

    def __init__(self, *, line_ending: str = "\r\n", log_bytes: int = 64 * 1024,
                 input_limit: int = DEFAULT_INPUT_LIMIT,
                 tap: Callable[[str, bytes], None] | None = None):
        """`tap("out"|"in", data)` sees every byte written and received, in
        order (the transcript); it must queue and return at once."""
        self.line_ending = line_ending
        self._tap = tap
        self._log = OutputLog(log_bytes)
        self._out_lock = threading.Lock()
        self._attachments: list[Attachment] = []
        self._input = bytearray()
        self._input_limit = input_limit
        self._cond = threading.Condition()
        self._woken = False
        self.dropped_input = 0
        # Set while the board reads without echo (a password): the tap then sees
        # every input byte but a line end as "*", so no transcript holds it.
        self.hide_input = False

    # -- board side -----------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Raw bytes to every client (SMP frames, echo). Never blocks."""
        if not data:
            return
        with self._out_lock:
            if self._tap is not None:
                self._tap("out", data)
            self._log.append(data)
            for attachment in self._attachments:
                attachment.send(data)

    def print(self, text: str = "", end: str = "\n") -> None:
        """Text with the board's line ending in place of every newline."""
        self.output((text + end).encode("utf-8", "replace"))

    def output(self, data: bytes) -> None:
        """Bytes with the board's line ending in place of every newline (what
        a tty's output processing does to a program's output)."""
        self.write(data.replace(b"\r\n", b"\n").replace(b"\n", self.line_ending.encode()))

    def read(self, timeout: float) -> bytes:
        """Input received so far; b"" after `timeout` or when woken."""
        with self._cond:
            if not self._input and not self._woken:
                self._cond.wait(timeout)
            self._woken = False
            data = bytes(self._input)
            self._input.clear()
            return data

    def wake(self) -> None:
        """Make a pending `read` return now (power-off, reset)."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def flush_input(self) -> None:
        """Drop unread input, as a UART's FIFO is cleared at power-on."""
        with self._cond:
            self._input.clear()

    @property
    def log_capacity(self) -> int:
        """How much output is kept for late clients (and queued per client)."""
        return self._log.capacity

    def clear_history(self) -> None:
        """Forget the output log (power-off): a client attaching later must not
        mistake the previous boot's prompt for a live one."""
        with self._out_lock:
            self._log = OutputLog(self._log.capacity)

    def recent_output(self) -> bytes:
        with self._out_lock:
            return self._log.snapshot()

    # -- client side ----------------------------------------------------------

    def attach(self, send: Callable[[bytes], None], *, replay: bool = False) -> Attachment:
        """Start sending output to `send`, which must queue and return at once.
        With `replay`, the recent output is sent first."""
        attachment = Attachment(self, send)
        with self._out_lock:
            if replay:
                recent = self._log.snapshot()
                if recent:
                    send(recent)
            self._attachments.append(attachment)
        return attachment

    def _detach(self, attachment: Attachment) -> None:
        with self._out_lock:
            if attachment in self._attachments:
                self._attachments.remove(attachment)

    def receive(self, data: bytes) -> None:
        """Input from a client. Beyond the input limit bytes are dropped (an overrun)."""
        if not data:
            return
        with self._cond:
            if self._tap is not None:
                self._tap("in", _HIDDEN.sub(b"*", data) if self.hide_input else data)
            room = self._input_limit - len(self._input)
            if room < len(data):
                self.dropped_input += len(data) - max(room, 0)
                data = data[:max(room, 0)]
            self._input += data
            self._cond.notify_all()

    @property
    def client_count(self) -> int:
        with self._out_lock:
            return len(self._attachments)


class PowerLost(BaseException):
    """The board lost power: unwinds whatever the firmware was doing.

    BaseException, like SystemExit, so that no command's error handling can
    swallow it and keep running on a board that is off."""


class ResetRequested(BaseException):
    """A warm reset (`reboot`, `reset`, SMP reset): the firmware starts over."""


@dataclass(frozen=True)
class Line:
    text: str
    truncated: bool = False     # characters beyond MAX_LINE were dropped


@dataclass(frozen=True)
class SmpFrame:
    raw: bytes                  # the whole console line, start bytes included, no line end


@dataclass(frozen=True)
class Cancel:
    """Ctrl-C: the line being typed is abandoned."""


class LineEditor:
    """Turns raw input bytes into echo output and finished lines. Pure logic."""

    _TEXT, _SMP_MAYBE, _SMP, _ESC, _CSI = range(5)

    def __init__(self, max_line: int = MAX_LINE, max_smp_line: int = MAX_SMP_LINE):
        self.max_line = max_line
        self.max_smp_line = max_smp_line
        self.echo = True
        self._mode = self._TEXT
        self._buf = bytearray()
        self._truncated = False
        self._smp_first = 0
        self._escape_len = 0
        self._after_cr = False

    @property
    def at_line_start(self) -> bool:
        """Nothing typed and no frame or escape sequence in progress."""
        return self._mode == self._TEXT and not self._buf

    def discard(self) -> None:
        """Forget the line being typed (the key that stopped autoboot is not input)."""
        self._buf.clear()
        self._truncated = False
        if self._mode in (self._ESC, self._CSI):
            self._mode = self._TEXT

    def raw(self, data: bytes) -> bytes:
        """Input read past the line discipline (a file transfer): the LF of a
        CRLF that ended the last line is still not input."""
        if self._after_cr and data:
            self._after_cr = False
            if data[0] == LF:
                return data[1:]
        return data

    def feed(self, data: bytes) -> tuple[bytes, list]:
        """Bytes to echo and the items (Line, SmpFrame, Cancel) completed by `data`."""
        echo = bytearray()
        items: list = []
        while data:
            out, item, used = self.feed_one(data)
            echo += out
            if item is not None:
                items.append(item)
            data = data[used:]
        return bytes(echo), items

    def feed_one(self, data: bytes) -> tuple[bytes, object | None, int]:
        """Like `feed`, but stops after the first completed item: returns the
        echo, the item (or None) and how many bytes were used. A shell reads
        this way, so input typed ahead is echoed when the shell gets to it,
        after the output of the command before it."""
        echo = bytearray()
        items: list = []
        i, n = 0, len(data)
        while i < n and not items:
            if self._mode == self._SMP:
                i = self._feed_smp(data, i, items)
                continue
            b = data[i]
            i += 1
            if self._after_cr:
                self._after_cr = False
                if b == LF:           # the LF of a CRLF
                    continue
            if self._mode == self._SMP_MAYBE:
                self._mode = self._TEXT
                if SMP_STARTS[self._smp_first] == b:
                    self._mode = self._SMP
                    self._buf = bytearray((self._smp_first, b))
                    continue
            if self._mode in (self._ESC, self._CSI):
                if self._feed_escape(b):
                    continue
            self._feed_text(b, echo, items)
        return bytes(echo), (items[0] if items else None), i

    def _feed_smp(self, data: bytes, i: int, items: list) -> int:
        # Frames are base64 after the start bytes, so CR or LF can only end one.
        ends = [p for p in (data.find(b"\n", i), data.find(b"\r", i)) if p >= 0]
        end = min(ends) if ends else len(data)
        if len(self._buf) + (end - i) <= self.max_smp_line:
            self._buf += data[i:end]
        else:
            self._truncated = True
        if end == len(data):
            return end
        if not self._truncated:
            items.append(SmpFrame(bytes(self._buf)))
        self._buf = bytearray()
        self._truncated = False
        self._mode = self._TEXT
        self._after_cr = data[end] == CR
        return end + 1

    def _feed_escape(self, b: int) -> bool:
        """True if `b` belongs to the escape sequence (arrow keys and the like)."""
        self._escape_len += 1
        if self._mode == self._ESC:
            if b in (ord("["), ord("O")) and self._escape_len < _MAX_ESCAPE:
                self._mode = self._CSI
                return True
            self._mode = self._TEXT
            return 0x20 <= b <= 0x7E
        if 0x20 <= b <= 0x3F and self._escape_len < _MAX_ESCAPE:
            return True
        self._mode = self._TEXT
        return 0x40 <= b <= 0x7E       # the final byte; a control byte is processed normally

    def _feed_text(self, b: int, echo: bytearray, items: list) -> None:
        if b in (CR, LF):
            echo += b"\r\n"
            items.append(Line(self._buf.decode("ascii"), self._truncated))
            self._buf.clear()
            self._truncated = False
            self._after_cr = b == CR
        elif b in SMP_STARTS and not self._buf:
            self._mode = self._SMP_MAYBE
            self._smp_first = b
        elif b == CTRL_C:
            echo += b"^C\r\n"
            self._buf.clear()
            self._truncated = False
            items.append(Cancel())
        elif b == CTRL_U:
            if self.echo:
                echo += b"\b \b" * len(self._buf)
            self._buf.clear()
        elif b in (BS, DEL):
            if self._buf:
                self._buf.pop()
                if self.echo:
                    echo += b"\b \b"
        elif b == ESC:
            self._mode = self._ESC
            self._escape_len = 0
        elif 0x20 <= b <= 0x7E or b == TAB:
            ch = 0x20 if b == TAB else b
            if len(self._buf) < self.max_line:
                self._buf.append(ch)
                if self.echo:
                    echo.append(ch)
            else:
                self._truncated = True
        # Every other byte (NUL, other controls, bytes >= 0x80) is line noise: ignored.


class Terminal:
    """The board's end of the console: lines, keypresses and SMP frames.

    `check` is called around every wait; the runtime makes it raise when the
    board loses power or must reset, which unwinds whatever was reading.
    `smp` receives each complete SMP console line. `station` is offered every
    line typed, wherever the firmware reads one (bootloader, login, shell): it
    returns True for a line it served (a manufacturing station's request), which
    the reader then never sees, as SMP frames share the UART with the text.
    """

    def __init__(self, console: Console, *, check: Callable[[], None],
                 smp: Callable[[bytes], None] | None = None, editor: LineEditor | None = None,
                 station: Callable[[str], bool] | None = None):
        self.console = console
        self.check = check
        self.smp = smp
        self.station = station
        self.editor = editor or LineEditor()
        self._items: deque = deque()
        self._pending = b""

    def print(self, text: str = "", end: str = "\n") -> None:
        self.check()
        self.console.print(text, end)

    def write(self, data: bytes) -> None:
        self.check()
        self.console.write(data)

    def output(self, data: bytes) -> None:
        """A program's output: newlines become the console's line ending."""
        self.check()
        self.console.output(data)

    def read_raw(self, size: int, timeout: float) -> bytes:
        """Up to `size` bytes of input within `timeout`, unechoed and past the
        line editor (XMODEM transfers); input beyond `size` waits for the next read."""
        deadline = time.monotonic() + timeout
        data = bytearray()
        while len(data) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and not self._pending:
                break
            data += self.editor.raw(self._next_input(max(0.0, min(remaining, _READ_SLICE))))
        self._pending = bytes(data[size:]) + self._pending
        return bytes(data[:size])

    def _next_input(self, timeout: float) -> bytes:
        self.check()
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        data = self.console.read(timeout)
        self.check()
        return data

    def _handle_smp(self, frame: SmpFrame) -> None:
        if self.smp is not None:
            self.smp(frame.raw)

    def read_line(self, *, echo: bool = True) -> Line | None:
        """The next line typed; None when Ctrl-C abandoned it."""
        self.editor.echo = echo
        self.console.hide_input = not echo
        try:
            while True:
                while self._items:
                    item = self._items.popleft()
                    if isinstance(item, SmpFrame):
                        self._handle_smp(item)
                    elif isinstance(item, Cancel):
                        return None
                    elif self.station is None or not self.station(item.text):
                        return item
                data = self._next_input(_READ_SLICE)
                if data:
                    out, item, used = self.editor.feed_one(data)
                    self._pending = data[used:]
                    self.write(out)
                    if item is not None:
                        self._items.append(item)
        finally:
            self.editor.echo = True
            self.console.hide_input = False

    def wait_key(self, timeout: float) -> bool:
        """True if a key was pressed within `timeout` (the key is consumed).
        SMP frames arriving meanwhile are served and do not count as keys."""
        deadline = time.monotonic() + timeout
        while True:
            while self._items:
                item = self._items.popleft()
                if isinstance(item, SmpFrame):
                    self._handle_smp(item)
                else:
                    return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            data = self._next_input(min(remaining, _READ_SLICE))
            for i in range(len(data)):
                out, items = self.editor.feed(data[i:i + 1])
                key = bool(out) or any(not isinstance(it, SmpFrame) for it in items)
                for item in items:
                    if isinstance(item, SmpFrame):
                        self._handle_smp(item)
                if key:
                    # Like U-Boot, the key that stops the countdown is swallowed.
                    self.editor.discard()
                    self._pending = data[i + 1:]
                    return True

    def pause(self, seconds: float, wait: Callable[[float], bool]) -> None:
        """Let `seconds` pass (boot progress) while staying responsive to power.
        `wait` blocks up to a timeout and returns True early when the board
        must stop; typed input is left for the next reader."""
        deadline = time.monotonic() + seconds
        while True:
            self.check()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            wait(remaining)
