"""A board console on a real pty that speaks SMP, for driving smpmgr/smpclient in tests.

A thread reads the pty master, splits SMP frame lines from text with the board
console's own line editor, answers frames with an SmpServer and writes a log line of console text
before every answer, so clients must pick frames out of interleaved text. A reset
request reboots the slots (MCUboot's swap/revert/verify) after the answer is out.
"""

from __future__ import annotations

import os
import select
import threading
import tty

from pledgeforge.boards.console import LineEditor, SmpFrame
from pledgeforge.boards.image_slots import BootImage, ImageSlots, NoBootableImageError
from pledgeforge.boards.smp_framing import SmpLineDecoder, encode_smp_frames
from pledgeforge.boards.smp_server import SmpParams, SmpServer


class PtySmpConsole:
    def __init__(self, slots: ImageSlots, params: SmpParams = SmpParams(), noise: bool = True):
        self.slots = slots
        self.noise = noise
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)   # a UART: no echo, no line discipline
        self.path = os.ttyname(self._slave)
        self.server = SmpServer(slots, self._request_reset, params)
        self._editor = LineEditor()
        self._decoder = SmpLineDecoder(params.max_packet)
        self.log: list[str] = []         # bootloader lines
        self.boots: list[BootImage | None] = []
        self.packets = 0
        self._reset_requested = False
        self._boot_event = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pty-smp", daemon=True)

    def __enter__(self) -> "PtySmpConsole":
        self.boot()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        os.close(self.master)
        os.close(self._slave)

    def boot(self) -> BootImage | None:
        try:
            booted = self.slots.boot(self.log.append)
        except NoBootableImageError:
            booted = None
        with self._boot_event:
            self.boots.append(booted)
            self._boot_event.notify_all()
        return booted

    def wait_for_boots(self, count: int, timeout: float = 30) -> None:
        with self._boot_event:
            if not self._boot_event.wait_for(lambda: len(self.boots) >= count, timeout):
                raise TimeoutError(f"only {len(self.boots)} boots, expected {count}")

    def _request_reset(self) -> None:
        self._reset_requested = True

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            select.select([], [self.master], [], 1.0)
            written = os.write(self.master, view)
            view = view[written:]

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:
                continue
            _echo, items = self._editor.feed(data)
            for item in items:
                if not isinstance(item, SmpFrame):
                    continue
                packet = self._decoder.feed_line(item.raw)
                if packet is None:
                    continue
                self.packets += 1
                response = self.server.handle(packet)
                if self.noise:
                    self._write(f"[{self.packets:06d}] <inf> app: console text between frames\r\n"
                                .encode())
                if response is not None:
                    self._write(encode_smp_frames(response))
                if self._reset_requested:
                    self._reset_requested = False
                    self.boot()
