"""The board's pledge firmware: BRSKI from the console's `bootstrap` command.

It reads the pledge's identity from the board's flash (IDevID, where its key
lives, the built-in anchors) and the cloud registrar's URL from the flash's
configuration (`registrar.url`, defaulting to the factory's, else the
profile's), and runs the
real pledge driver (firmware/pledge.py) with the keys in the board's key
store, the LDevID key in the store's "ldevid" slot. It prints each state as
it is entered, and stores the voucher and LDevID in flash only once the
pledge is enrolled: a power cut during enrollment leaves the last good state.

How the identity got there (a manufacturing step) is none of its business.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from pledgeforge.hsm.x509 import to_pem

from .firmware_apps import FIRMWARE_APPS, FirmwareApp


@FIRMWARE_APPS.register
class PledgeApp(FirmwareApp):
    """A BRSKI pledge whose identity is in the board's flash and keys in its key store."""

    binds_to = "pledge"

    def __init__(self, timeout: float = 10.0):
        self.timeout = timeout
        self.last_state = "idle"

    def bootstrap(self, board, emit_line: Callable[[str], None]) -> bool:
        # The TLS stack loads only when a bootstrap runs, not with every board.
        from pledgeforge.firmware.pledge import PledgeDriver

        stored = board.flash.state.identity
        if stored is None:
            emit_line("no IDevID on this board: it is not manufactured yet (a station provisions "
                      "it over this console: pledgeforge provision --port ...)")
            return False
        identity = replace(stored, idevid_key_uri=board.keystore.current_uri(stored.idevid_key_uri),
                           cloud_registrar_url=board.config_value("registrar.url"),
                           ldevid_key_uri=board.keystore.slot_uri("ldevid"))

        def show(transition) -> None:
            self.last_state = transition.to_state.value
            emit_line(f"-> {transition.to_state.value:<20} {transition.reason}")

        result = PledgeDriver(identity, timeout=self.timeout, on_transition=show).run()
        if not result.enrolled:
            emit_line(f"bootstrap failed: {result.reason}")
            return False
        # Voucher first, then the LDevID: each write is atomic, and a board
        # with a voucher but no LDevID simply bootstraps again.
        board.flash.set_voucher(result.voucher)
        board.flash.set_ldevid(to_pem(result.ldevid).decode())
        emit_line(f"enrolled: LDevID {result.ldevid.subject.rfc4514_string()}")
        return True

    def status_fields(self, board) -> dict[str, str]:
        return {"pledge": self.last_state}
