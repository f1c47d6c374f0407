"""The pledge firmware of a board started with `--lab DIR`.

Manufacture (first power-on): the IDevID key is generated in the board's own
key store (its swtpm or SoftHSM token), the lab's manufacturer CA certifies
it, and the board's flash gets the certificate and its built-in trust
anchors. The lab also records the board's owner, so its cloud registrar
knows what to answer (`flow`: 307 to the owner registrar, or a voucher
naming the EST server).

`bootstrap` runs the real pledge driver (firmware/pledge.py) with the key in
the board's key store, prints each state as it is entered, and stores the
voucher and LDevID in flash only once the pledge is enrolled: a power cut
during enrollment leaves the last good state.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from pledgeforge.firmware.identity import PledgeIdentity
from pledgeforge.firmware.pledge import PledgeDriver
from pledgeforge.hsm import keystore
from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.keyuri import TpmUri, parse_key_uri
from pledgeforge.hsm.x509 import to_pem

from .runtime import Board, FirmwareApp

IDEVID_TPM_HANDLE = 0x81020000
LDEVID_TPM_HANDLE = 0x81020001
IDEVID_LABEL = "idevid"
LDEVID_LABEL = "ldevid"
FLOWS = ("redirect", "est-domain")


class LabPledgeApp(FirmwareApp):
    """Pledge firmware whose factory and registrars are a local lab."""

    def __init__(self, lab_dir: Path, flow: str = "redirect", timeout: float = 10.0):
        from pledgeforge.lab import Lab

        if flow not in FLOWS:
            raise ValueError(f"flow must be one of {', '.join(FLOWS)}, not {flow!r}")
        self.lab = Lab.load(lab_dir)
        self.flow = flow
        self.timeout = timeout
        self.last_state = "idle"

    # ------------------------------------------------------------------ the factory

    def provision(self, board: Board) -> None:
        uri = _key_uri(board, IDEVID_TPM_HANDLE, IDEVID_LABEL)
        signer = keystore.generate_key(uri, board.keystore.algorithm)
        idevid = self.lab.issue_idevid(signer.public_key, board.serial_number)
        self.lab.register_pledge(board.serial_number, self.flow)
        board.flash.config_set("registrar.url", self.lab.url("cloud"))
        board.flash.set_identity(PledgeIdentity.from_certificates(
            uri, idevid, builtin_anchors=load_certificate_file(str(self.lab.pki("web-ca"))),
            masa_anchors=load_certificate_file(str(self.lab.pki("manufacturer-ca")))))
        board.log_event(f"manufactured: IDevID {idevid.subject.rfc4514_string()}, owner flow {self.flow}")

    # ------------------------------------------------------------------ the pledge

    def bootstrap(self, board: Board, emit_line: Callable[[str], None]) -> bool:
        identity = board.flash.state.identity
        if identity is None:
            emit_line("no IDevID on this board (manufacturing failed; see `log`)")
            return False
        pledge = replace(identity, idevid_key_uri=_current_uri(board, identity.idevid_key_uri),
                         cloud_registrar_url=board.config_value("registrar.url"),
                         ldevid_key_uri=_key_uri(board, LDEVID_TPM_HANDLE, LDEVID_LABEL))

        def show(transition) -> None:
            self.last_state = transition.to_state.value
            emit_line(f"-> {transition.to_state.value:<20} {transition.reason}")

        result = PledgeDriver(pledge, timeout=self.timeout, on_transition=show).run()
        if not result.enrolled:
            emit_line(f"bootstrap failed: {result.reason}")
            return False
        # Voucher first, then the LDevID: each write is atomic, and a board
        # with a voucher but no LDevID simply bootstraps again.
        board.flash.set_voucher(result.voucher)
        board.flash.set_ldevid(to_pem(result.ldevid).decode())
        emit_line(f"enrolled: LDevID {result.ldevid.subject.rfc4514_string()}")
        return True

    def status_fields(self, board: Board) -> dict[str, str]:
        return {"pledge": self.last_state, "owner flow": self.flow}





# ---------------------------------------------------------------------- key store glue

def _key_uri(board: Board, handle: int, label: str) -> str:
    return board.keystore.key_uri(handle if board.keystore.type == "tpm" else label)


def _current_uri(board: Board, stored: str) -> str:
    """A TPM key's URI names the TCTI of the running swtpm, whose socket moves with the state directory."""
    uri = parse_key_uri(stored)
    if isinstance(uri, TpmUri):
        return board.keystore.key_uri(uri.handle)
    return stored
