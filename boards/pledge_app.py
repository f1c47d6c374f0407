"""The board's pledge firmware: BRSKI from the console's `bootstrap`, renewal from `reenroll`.

It reads the pledge's identity from the board's flash (IDevID, where its key
lives, the built-in anchors) and the cloud registrar's URL from the flash's
configuration (`registrar.url`, defaulting to the profile's), and runs the
real pledge driver (firmware/pledge.py) with the keys in the board's key
store. It prints each state as it is entered.

The LDevID key follows its lifecycle (firmware/ldevid_keys.py) in two slots
beside the key store's "ldevid" slot (labels ldevid-a/-b on a token, handles
0x81020001/0x81020002 of a TPM):

- an enrollment (`bootstrap`, `reenroll`) makes its key in the slot that is
  not current; the flash records the voucher and the enrollment (LDevID, key
  slot, EST CA certificates and URL) in one atomic write, and only then is the
  new key current and the previous one deleted;
- at power-on, once the key store runs, whatever an enrollment cut short by a
  power cut left in the other slot is deleted;
- a factory reset destroys every key the firmware made (both LDevID slots and
  anything else outside the factory's slots), after the flash forgot the owner.

How the identity got there (a manufacturing step) is none of its business.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from pledgeforge.errors import PledgeforgeError
from pledgeforge.firmware.ldevid_keys import LdevidKeys, LdevidSlots, Slot
from pledgeforge.hsm import keystore
from pledgeforge.hsm.errors import KeyNotFoundError
from pledgeforge.hsm.x509 import to_pem

from .firmware_apps import FIRMWARE_APPS, FirmwareApp
from .flash import Enrollment as FlashEnrollment


@FIRMWARE_APPS.register
class PledgeApp(FirmwareApp):
    """A BRSKI pledge whose identity is in the board's flash and keys in its key store."""

    binds_to = "pledge"

    def __init__(self, timeout: float = 10.0):
        self.timeout = timeout
        self.last_state = "idle"

    @staticmethod
    def ldevid_keys(board) -> LdevidKeys:
        """The board's two LDevID slots, with the one its flash records as current."""
        enrollment = board.flash.state.enrollment
        return LdevidKeys(LdevidSlots.beside(board.keystore.slot_uri("ldevid")),
                          current=Slot(enrollment.slot) if enrollment is not None else None)

    def power_on(self, board) -> None:
        for deleted in self.ldevid_keys(board).recover():
            board.log_event(f"deleted the key of an enrollment cut short: {deleted}")

    def bootstrap(self, board, emit_line: Callable[[str], None]) -> bool:
        # The TLS stack loads only when a bootstrap runs, not with every board.
        from pledgeforge.firmware.pledge import PledgeDriver

        stored = board.flash.state.identity
        if stored is None:
            emit_line("no IDevID on this board (manufacturing failed; see `log`)")
            return False
        identity = replace(stored, idevid_key_uri=board.keystore.current_uri(stored.idevid_key_uri),
                           cloud_registrar_url=board.config_value("registrar.url"))

        def show(transition) -> None:
            self.last_state = transition.to_state.value
            emit_line(f"-> {transition.to_state.value:<20} {transition.reason}")

        def store(result) -> None:
            # The voucher and the enrollment in one write: the new key becomes current after it.
            board.flash.record_enrollment(FlashEnrollment(
                ldevid_pem=to_pem(result.ldevid).decode(), slot=result.ldevid_slot.value,
                ca_certs_pem="".join(to_pem(c).decode() for c in result.ca_certs),
                est_url=result.est_url), voucher=result.voucher)

        result = PledgeDriver(identity, timeout=self.timeout, on_transition=show,
                              cancel=board.power_lost, ldevid_keys=self.ldevid_keys(board)).run(store=store)
        if not result.enrolled:
            emit_line(f"bootstrap failed: {result.reason}")
            return False
        emit_line(f"enrolled: LDevID {result.ldevid.subject.rfc4514_string()} "
                  f"(key slot {result.ldevid_slot.value})")
        return True

    def reenroll(self, board, emit_line: Callable[[str], None]) -> bool:
        from pledgeforge.firmware.ldevid_renewal import Enrollment, renew
        from pledgeforge.hsm.chain import load_certificates

        stored = board.flash.state.enrollment
        if stored is None:
            emit_line("reenroll failed: this board holds no LDevID; run `bootstrap` first")
            return False
        if not stored.est_url:
            emit_line("reenroll failed: the enrollment names no EST server (stored by older "
                      "firmware); run `bootstrap` again")
            return False
        try:
            enrollment = Enrollment(load_certificates(stored.ldevid_pem.encode(), "the LDevID")[0],
                                    Slot(stored.slot),
                                    tuple(load_certificates(stored.ca_certs_pem.encode(),
                                                            "the EST CA certificates")),
                                    stored.est_url)
            emit_line(f"renewing LDevID {enrollment.certificate.serial_number:x} (key slot "
                      f"{stored.slot}) at {stored.est_url.rstrip('/')}/simplereenroll, new key in "
                      f"slot {enrollment.slot.other.value}")

            def store(result) -> None:
                board.flash.record_enrollment(replace(
                    stored, ldevid_pem=to_pem(result.certificate).decode(), slot=result.slot.value))

            result = renew(enrollment, self.ldevid_keys(board), store, timeout=self.timeout,
                           cancel=board.power_lost)
        except PledgeforgeError as exc:   # not enrolled as the record says, or unreadable
            emit_line(f"reenroll failed: {exc}")
            return False
        if result.enroll_status:
            emit_line(f"enrollstatus {result.enroll_status}")
        for deleted in result.deleted:
            emit_line(f"deleted {deleted}")
        if not result.renewed:
            emit_line(f"reenroll failed: {result.reason}")
            return False
        cert = result.certificate
        emit_line(f"renewed: LDevID {cert.subject.rfc4514_string()} serial {cert.serial_number:x} "
                  f"(key slot {result.slot.value}), valid until {cert.not_valid_after_utc:%Y-%m-%d}")
        return True

    def status_fields(self, board) -> dict[str, str]:
        return {"pledge": self.last_state}

    def factory_reset(self, board) -> list[str]:
        """Both LDevID slots emptied (no enrollment is current any more), then whatever else
        the firmware made; the factory's keys (the IDevID's) stay."""
        destroyed = LdevidKeys(LdevidSlots.beside(board.keystore.slot_uri("ldevid"))).recover()
        for uri in board.keystore.firmware_keys():
            try:
                destroyed.append(keystore.delete_key(uri))
            except KeyNotFoundError:
                pass
        for text in destroyed:
            board.log_event(f"factory reset: destroyed {text}")
        return destroyed
