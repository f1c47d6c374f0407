"""Firmware apps: what the board's firmware runs behind its shell's `bootstrap`.

An app declares the name it binds to and registers itself in FIRMWARE_APPS;
`board run` picks one by name (boards/assembly.py). The runtime calls it; it
never touches the console except through the `emit_line` it is given.

Its methods run in the board's firmware thread. When the power goes,
`emit_line` raises `PowerLost` and `board.flash` refuses writes
(`FlashClosedError`), so work cut short by a power-off stores nothing more;
let those exceptions through; `board.power_lost` is an Event set at that moment,
for work that waits. Keys live in `board.keystore` (`slot_uri(...)`,
`key_uri(name)`), persistent data in `board.flash`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar

from .registry import Registry


class FirmwareApp(ABC):
    """The pledge firmware the board runs (`board` is the running `Board`)."""

    #: the name `board run` picks it by
    binds_to: ClassVar[str]

    @abstractmethod
    def bootstrap(self, board, emit_line: Callable[[str], None]) -> bool:
        """Run the pledge (the console's `bootstrap` command), printing each
        state through `emit_line` as it happens. True once enrolled (voucher and
        LDevID stored in `board.flash`)."""

    def power_on(self, board) -> None:
        """The board got power and its key store runs: first thing in the firmware thread,
        before the factory step and the boot (e.g. clean up what a power cut interrupted)."""

    def reenroll(self, board, emit_line: Callable[[str], None]) -> bool:
        """Renew the LDevID (the console's `reenroll`), printing through `emit_line` what it
        does. True once the new LDevID is stored."""
        emit_line("this firmware cannot renew an LDevID")
        return False

    def status_fields(self, board) -> dict[str, str]:
        """Extra `status` lines, e.g. {"pledge": "waiting for owner"}."""
        return {}

    def factory_reset(self, board) -> list[str]:
        """Destroy the keys the firmware made (the owner's), after the flash forgot the owner;
        what was destroyed, for the console."""
        return []


FIRMWARE_APPS: Registry[type[FirmwareApp]] = Registry("firmware app")
