"""The console transcript: everything a board's console sent and received, as text.

The transcript lives in the board's state directory (`DIR/console.log`, rotated
to `console.log.1`, `.2`, ...) so that it outlives the board process. Each line
is one record:

    2025-01-02T10:11:12.345678Z out U-Boot 2024.01-pledgeforge (Jan 08 2024 - 12:00:00 +0000)
    2025-01-02T10:11:14.002001Z in  status
    2025-01-02T10:11:20.511093Z out [SMP write-rsp shell exec seq 3, 312 bytes: ret 0]
    2025-01-02T10:11:25.000000Z --- power off

- the time (UTC) of the record's first byte;
- `out` for what the board sent, `in` for what a client sent it, `---` for
  events (power on/off, the transcript itself starting or losing bytes);
- the text. A record is one console line: CR, LF and CRLF end it and are not
  shown. A line still incomplete after a short pause (a prompt, keys being
  typed) becomes a record of its own. Control bytes are shown as `\\xNN` (tab
  as `\\t`), a backslash as `\\\\`, bytes that are not UTF-8 as `\\xNN`, so the
  file stays readable text with one record per line. SMP console frames are
  summarised (operation, group and command, sequence number, size and result),
  one record per packet, never copied.

Recording is off the console's hot path: `TranscriptRecorder.record` only
queues the bytes; a thread of its own renders and writes them. When the disk
cannot keep up the queue stays bounded and its oldest bytes are dropped (the
transcript says how many), so a slow disk never stalls the board. `flush`
(called at power-off) waits, up to a bound, until everything recorded so far
is in the file.

`read_lines` and `follow_lines` read the transcript back across its files;
following notices rotation and stops when asked.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import cbor2

from .smp_framing import SmpLineDecoder
from .smp_server import COMMAND_NAMES, HEADER

TRANSCRIPT_FILE = "console.log"
# Bytes waiting for the writer; beyond this the oldest are dropped.
DEFAULT_QUEUE_BYTES = 4 * 1024 * 1024
# The writer takes what was recorded when this much is waiting, or when the
# oldest of it is this old (or at a flush).
BATCH_BYTES = 64 * 1024
BATCH_S = 0.1
# A line still open this long after its last byte, or this long after its
# first, is written as it is; the rest of it becomes the next record.
IDLE_S = 0.5
MAX_AGE_S = 2.0
# The longest record; a longer line continues in the next record.
MAX_RECORD = 4096
# The longest SMP frame line kept for decoding (the console's own limit).
MAX_FRAME_LINE = 8192
# How long a reader waits between looks at a transcript that is not growing.
FOLLOW_POLL_S = 0.25

OUT, IN, EVENT = "out", "in", "event"
_MARKS = {OUT: "out", IN: "in ", EVENT: "---"}
_DIRECTIONS = {mark: direction for direction, mark in _MARKS.items()}
_RECORD_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (out|in |---) (.*)$")
_SPECIAL = re.compile(rb"[\r\n\x04\x06]")
_SMP_STARTS = {0x06: 0x09, 0x04: 0x14}
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\\\\\udc80-\udcff]")
_OPS = {0: "read", 1: "read-rsp", 2: "write", 3: "write-rsp"}
_log = logging.getLogger(__name__)


def transcript_path(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / TRANSCRIPT_FILE


@dataclass(frozen=True)
class Record:
    time: float                 # seconds since the epoch, of the record's first byte
    direction: str              # OUT, IN or EVENT
    text: str                   # already safe: no control characters

    def line(self) -> str:
        stamp = datetime.fromtimestamp(self.time, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return f"{stamp} {_MARKS[self.direction]} {self.text}\n"


def parse_line(line: str) -> dict:
    """A transcript line as `{"time", "dir", "text"}`; a line that is not a
    record (a damaged file) comes back whole as the text, with no time."""
    match = _RECORD_RE.match(line.rstrip("\n"))
    if match is None:
        return {"time": None, "dir": None, "text": line.rstrip("\n")}
    return {"time": match.group(1), "dir": _DIRECTIONS[match.group(2)], "text": match.group(3)}


def _escape(match: re.Match) -> str:
    ch = match.group()
    if ch == "\\":
        return "\\\\"
    if ch == "\t":
        return "\\t"
    code = ord(ch)
    return f"\\x{code - 0xDC00 if code >= 0xDC80 else code:02x}"


def safe_text(data: bytes) -> str:
    """Console bytes as one line of readable text (see the module docstring)."""
    return _UNSAFE.sub(_escape, data.decode("utf-8", "surrogateescape"))


def summarise_smp(packet: bytes, frames: int) -> str:
    """One SMP packet as a transcript record's text."""
    if len(packet) < HEADER.size:
        return f"[SMP packet too short, {len(packet)} bytes]"
    op_byte, _flags, length, group, sequence, command = HEADER.unpack_from(packet)
    op = _OPS.get(op_byte & 0x07, f"op {op_byte & 0x07}")
    name = COMMAND_NAMES.get((group, command), f"group {group} command {command}")
    text = f"[SMP {op} {name} seq {sequence}, {length} bytes"
    if frames > 1:
        text += f" in {frames} frames"
    detail = _smp_detail(op_byte & 0x07, group, command, packet[HEADER.size:])
    return text + (f": {detail}]" if detail else "]")


def _smp_detail(op: int, group: int, command: int, body: bytes) -> str:
    """The part of a packet worth reading in a transcript: results, and the
    command line of a shell exec. Upload data and the like are never shown."""
    if len(body) > 4096:
        return ""
    try:
        payload = cbor2.loads(body)
    except Exception:   # cbor2 raises several types for malformed input
        return "not CBOR"
    if not isinstance(payload, dict):
        return ""
    if op in (0, 2):
        argv = payload.get("argv")
        if (group, command) == (9, 0) and isinstance(argv, list):
            return safe_text(" ".join(str(a) for a in argv).encode())[:200]
        return ""
    err = payload.get("err")
    if isinstance(err, dict):
        return f"error group {err.get('group')} rc {err.get('rc')}"
    if payload.get("rc"):
        return f"rc {payload['rc']}"
    if "ret" in payload:
        return f"ret {payload['ret']}"
    return "ok"


class _Direction:
    """One direction's line being assembled."""

    def __init__(self, name: str):
        self.name = name
        self.text = bytearray()
        self.start: float | None = None      # time of the line's first byte
        self.last = 0.0                      # time of its latest byte
        self.after_cr = False
        self.frame: bytearray | None = None  # an SMP frame line in progress
        self.frame_start = 0.0
        self.frame_truncated = False
        self.smp_first = 0                   # a start byte seen at the end of a chunk
        self.decoder = SmpLineDecoder(1 << 16)
        self.frames = 0
        self.packet_start = 0.0


class Renderer:
    """Turns timestamped console chunks into records. Pure logic, no I/O.

    `feed` takes one chunk; `due` releases lines left incomplete for a while;
    `drain` releases everything (power-off, shutdown). Records come out in the
    order their first bytes arrived, whichever direction they belong to.
    """

    def __init__(self):
        self._dirs = {OUT: _Direction(OUT), IN: _Direction(IN)}
        self._ready: list[Record] = []

    def feed(self, when: float, direction: str, data: bytes) -> list[Record]:
        if direction == EVENT:
            self._ready.append(Record(when, EVENT, safe_text(data)))
            return self._release()
        d = self._dirs[direction]
        i, n = 0, len(data)
        if d.smp_first and n:
            first, d.smp_first = d.smp_first, 0
            if data[0] == _SMP_STARTS[first]:
                self._start_frame(d, when, bytes((first,)))
            else:
                self._add_text(d, when, bytes((first,)))
        while i < n:
            if d.frame is not None:
                i = self._feed_frame(d, data, i)
                continue
            if d.after_cr:
                d.after_cr = False
                if data[i] == 0x0A:          # the LF of a CRLF
                    i += 1
                    continue
            match = _SPECIAL.search(data, i)
            end = match.start() if match else n
            if end > i:
                self._add_text(d, when, data[i:end])
            if match is None:
                break
            b = data[end]
            i = end + 1
            if b in (0x0D, 0x0A):
                self._end_line(d)
                d.after_cr = b == 0x0D
            elif i == n:
                d.smp_first = b              # maybe a frame start cut across chunks
            elif data[i] == _SMP_STARTS[b]:
                self._start_frame(d, when, bytes((b,)))
            else:
                self._add_text(d, when, bytes((b,)))
        return self._release()

    def due(self, now: float) -> list[Record]:
        for d in self._dirs.values():
            if d.start is not None and (now - d.last >= IDLE_S or now - d.start >= MAX_AGE_S):
                self._end_line(d)
        return self._release()

    def next_due(self) -> float | None:
        """When `due` will next have something to release."""
        times = [min(d.last + IDLE_S, d.start + MAX_AGE_S)
                 for d in self._dirs.values() if d.start is not None]
        return min(times) if times else None

    def drain(self) -> list[Record]:
        for d in self._dirs.values():
            if d.smp_first:
                self._add_text(d, d.last, bytes((d.smp_first,)))
                d.smp_first = 0
            self._end_line(d)
            if d.frame is not None or d.decoder.in_frame:
                self._ready.append(Record(d.frame_start, d.name, "[SMP frame cut short]"))
                d.frame = None
                d.decoder.reset()
                d.frames = 0
        return self._release()

    # -- inside a direction ---------------------------------------------------

    def _add_text(self, d: _Direction, when: float, data: bytes) -> None:
        while data:
            if d.start is None:
                d.start = when
            room = MAX_RECORD - len(d.text)
            d.text += data[:room]
            d.last = when
            data = data[room:]
            if len(d.text) >= MAX_RECORD:
                self._end_line(d)

    def _end_line(self, d: _Direction) -> None:
        if d.start is not None:
            self._ready.append(Record(d.start, d.name, safe_text(bytes(d.text))))
        d.text.clear()
        d.start = None

    def _start_frame(self, d: _Direction, when: float, first: bytes) -> None:
        self._end_line(d)                    # text before the frame is a record of its own
        d.frame = bytearray(first)
        d.frame_start = when
        d.frame_truncated = False
        d.last = when

    def _feed_frame(self, d: _Direction, data: bytes, i: int) -> int:
        ends = [p for p in (data.find(b"\n", i), data.find(b"\r", i)) if p >= 0]
        end = min(ends) if ends else len(data)
        if len(d.frame) + end - i <= MAX_FRAME_LINE:
            d.frame += data[i:end]
        else:
            d.frame_truncated = True
        if end == len(data):
            return end
        self._end_frame(d)
        d.after_cr = data[end] == 0x0D
        return end + 1

    def _end_frame(self, d: _Direction) -> None:
        line, start = bytes(d.frame), d.frame_start
        d.frame = None
        if d.frame_truncated:
            d.decoder.reset()
            d.frames = 0
            self._ready.append(Record(start, d.name, f"[SMP frame line too long, over {MAX_FRAME_LINE} bytes]"))
            return
        if not d.decoder.in_frame:
            d.packet_start = start
            d.frames = 0
        d.frames += 1
        packet = d.decoder.feed_line(line)
        if packet is not None:
            self._ready.append(Record(d.packet_start, d.name, summarise_smp(packet, d.frames)))
            d.frames = 0
        elif not d.decoder.in_frame:
            self._ready.append(Record(start, d.name, f"[SMP frame not understood, {len(line)} bytes]"))
            d.frames = 0

    def _release(self) -> list[Record]:
        """Completed records that no open line started before."""
        opens = [d.start for d in self._dirs.values() if d.start is not None]
        horizon = min(opens) if opens else None
        self._ready.sort(key=lambda r: r.time)
        if horizon is None:
            out, self._ready = self._ready, []
            return out
        cut = 0
        while cut < len(self._ready) and self._ready[cut].time <= horizon:
            cut += 1
        out, self._ready = self._ready[:cut], self._ready[cut:]
        return out


class RotatingFile:
    """Appends lines to `path`, keeping at most `files` files of at most
    `max_bytes` each: `path` is the newest, `path.1` the one before, and so on.

    Write errors never reach the board: lines that could not be written are
    counted in `lost_lines` and the file is opened again for the next write.
    """

    def __init__(self, path: Path, max_bytes: int, files: int):
        self.path = path
        self.max_bytes = max_bytes
        self.files = files
        self._fh = None
        self._size = 0
        self.lost_lines = 0
        self._failing = False

    def write(self, lines: list[str]) -> None:
        for line in lines:
            data = line.encode("utf-8")
            try:
                self._ensure_open()
                if self._size and self._size + len(data) > self.max_bytes:
                    self._rotate()
                self._fh.write(data)
                self._size += len(data)
                self._failing = False
            except OSError as exc:
                self.lost_lines += 1
                self._close()
                if not self._failing:
                    _log.warning("console transcript %s: %s; lines are being lost", self.path, exc)
                    self._failing = True

    def flush(self) -> None:
        if self._fh is not None:
            try:
                self._fh.flush()
            except OSError as exc:
                _log.warning("console transcript %s: %s", self.path, exc)
                self._close()

    def check_replaced(self) -> None:
        """Start a new file if someone moved or deleted ours (as logrotate does)."""
        if self._fh is None:
            return
        try:
            same = os.stat(self.path).st_ino == os.fstat(self._fh.fileno()).st_ino
        except OSError:
            same = False
        if not same:
            self._close()

    def _ensure_open(self) -> None:
        if self._fh is None:
            self._fh = open(self.path, "ab")
            self._size = os.fstat(self._fh.fileno()).st_size

    def _rotate(self) -> None:
        self._close()
        for index in range(self.files - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index - 1}") if index > 1 else self.path
            try:
                os.replace(older, self.path.with_name(f"{self.path.name}.{index}"))
            except FileNotFoundError:
                pass
        if self.files == 1:
            self.path.unlink(missing_ok=True)
        self._ensure_open()

    def _close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None

    def close(self) -> None:
        self.flush()
        self._close()


class TranscriptRecorder:
    """Records a console into `path` from a thread of its own.

    `record(direction, data)` and `event(text)` only queue and never block on
    the disk; at most `queue_bytes` wait, and when the writer falls behind the
    oldest are dropped (the transcript notes how many bytes were lost).
    """

    def __init__(self, path: str | os.PathLike, *, file_bytes: int, files: int,
                 queue_bytes: int = DEFAULT_QUEUE_BYTES):
        self.path = Path(path)
        self._file = RotatingFile(self.path, file_bytes, files)
        self._renderer = Renderer()
        self._queue: deque[tuple[float, str, bytes]] = deque()
        self._queued = 0
        self._queue_bytes = queue_bytes
        self._dropped = 0
        self._cond = threading.Condition()
        self._flush_wanted = 0
        self._flush_done = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"transcript-{self.path.parent.name}",
                                        daemon=True)
        self.event(f"transcript started (pid {os.getpid()})")
        self._thread.start()

    # -- the console's side: queue and return -----------------------------------

    def record(self, direction: str, data: bytes) -> None:
        if not data:
            return
        with self._cond:
            self._queue.append((time.time(), direction, bytes(data)))
            self._queued += len(data)
            while self._queued > self._queue_bytes and len(self._queue) > 1:
                _, _, old = self._queue.popleft()
                self._queued -= len(old)
                self._dropped += len(old)
            # The writer is woken when output starts waiting (to set its timer)
            # and when a batch is full, not for every write: it collects for up
            # to BATCH_S, rather than compete with the board for the
            # interpreter over a few bytes at a time.
            if len(self._queue) == 1 or self._queued >= BATCH_BYTES:
                self._cond.notify()

    def event(self, text: str) -> None:
        self.record(EVENT, text.encode())

    def flush(self, timeout: float) -> bool:
        """Wait until everything recorded so far (open lines included) is
        written; False if that took longer than `timeout`."""
        with self._cond:
            self._flush_wanted += 1
            wanted = self._flush_wanted
            self._cond.notify()
            return self._cond.wait_for(lambda: self._flush_done >= wanted, timeout)

    def close(self, timeout: float) -> bool:
        """Flush and stop the writer; False if it did not finish within `timeout`
        (a stalled disk): it then finishes on its own if the disk recovers."""
        self.event("transcript stopped")
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the writer thread ---------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._closing or self._flush_wanted > self._flush_done
                           or self._queued >= BATCH_BYTES):
                    wake = [t for t in (self._renderer.next_due(),
                                        self._queue[0][0] + BATCH_S if self._queue else None)
                            if t is not None]
                    if wake and min(wake) <= time.time():
                        break
                    self._cond.wait(min(wake) - time.time() if wake else None)
                chunks = list(self._queue)
                self._queue.clear()
                self._queued = 0
                dropped, self._dropped = self._dropped, 0
                flush_wanted = self._flush_wanted
                closing = self._closing
            records: list[Record] = []
            if dropped:
                records.append(Record(chunks[0][0] if chunks else time.time(), EVENT,
                                      f"transcript lost {dropped} bytes (the disk was too slow)"))
            for when, direction, data in chunks:
                records += self._renderer.feed(when, direction, data)
            records += self._renderer.due(time.time())
            if flush_wanted > self._flush_done or closing:
                records += self._renderer.drain()
            self._file.check_replaced()
            self._file.write([record.line() for record in records])
            self._file.flush()
            with self._cond:
                self._flush_done = flush_wanted
                self._cond.notify_all()
                if closing and not self._queue:
                    self._file.close()
                    return


# -- reading it back ------------------------------------------------------------------

def _rotated(path: Path, index: int) -> Path:
    return path if index == 0 else path.with_name(f"{path.name}.{index}")


def _open_all(path: Path) -> list:
    """Open every file of the transcript, newest first, as one consistent set:
    if the writer rotated while they were being opened, open them again."""
    for _ in range(10):
        handles = []
        index = 0
        while True:
            try:
                handles.append(open(_rotated(path, index), "rb"))
            except FileNotFoundError:
                break
            index += 1
        try:
            current_ino = os.stat(path).st_ino
        except FileNotFoundError:
            current_ino = None
        if not handles or os.fstat(handles[0].fileno()).st_ino == current_ino:
            return handles
        for handle in handles:
            handle.close()
    return handles


def read_lines(state_dir: str | os.PathLike, last: int | None = None) -> Iterator[str]:
    """Every line of the transcript, oldest first (only the `last` N if given)."""
    handles = _open_all(transcript_path(state_dir))
    try:
        lines = (line.decode("utf-8", "replace") for handle in reversed(handles) for line in handle)
        yield from (deque(lines, maxlen=last) if last else lines)
    finally:
        for handle in handles:
            handle.close()


def follow_lines(state_dir: str | os.PathLike, stop: threading.Event, last: int | None = None,
                 poll: float = FOLLOW_POLL_S) -> Iterator[str]:
    """The transcript (only its `last` N lines if given), then each line as it
    is written, until `stop` is set; it waits for a transcript not written
    yet. Rotation is followed: the rest of the old file is read first, then
    any file rotated past meanwhile, then the new one."""
    path = transcript_path(state_dir)
    handles = _open_all(path)
    while not handles and not stop.is_set():
        stop.wait(poll)
        handles = _open_all(path)
    if not handles:
        return
    current, older = handles[0], handles[1:]
    lines = _LineSplitter()
    existing: list[str] = []
    for handle in reversed(older):
        existing += lines.feed(handle.read())
        handle.close()
    existing += lines.feed(current.read())
    yield from (existing[-last:] if last else existing)
    try:
        while True:
            data = current.read()
            if data:
                yield from lines.feed(data)
                continue
            if stop.is_set():
                return
            replacement = _replacement(path, current)
            if replacement is None:
                stop.wait(poll)
                continue
            # Rotated: read what the old file got last, then the files rotated
            # past meanwhile (if the writer rotated more than once), then go on
            # with the new one.
            yield from lines.feed(current.read())
            current.close()
            for handle in replacement[1:]:
                yield from lines.feed(handle.read())
                handle.close()
            current = replacement[0]
    finally:
        current.close()


class _LineSplitter:
    """Whole lines out of data read in arbitrary pieces."""

    def __init__(self):
        self._pending = b""

    def feed(self, data: bytes) -> Iterator[str]:
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace") + "\n"


def _replacement(path: Path, current) -> list | None:
    """After a rotation: the new current file, then the files rotated between
    it and `current`, oldest first; None if `path` is still `current`."""
    old_ino = os.fstat(current.fileno()).st_ino
    try:
        if os.stat(path).st_ino == old_ino:
            return None
    except FileNotFoundError:
        return None                        # between the rename and the new file
    handles = _open_all(path)
    if not handles:
        return None
    between = []
    for handle in handles[1:]:
        if os.fstat(handle.fileno()).st_ino == old_ino:
            break
        between.append(handle)
    else:
        between = []                       # ours was rotated out of reach: skip to the new file
    for handle in handles[1:]:
        if handle not in between:
            handle.close()
    return [handles[0], *reversed(between)]

