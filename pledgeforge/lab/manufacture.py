"""The lab's factory step for boards: `pledgeforge board run --lab D` manufactures a new board.

At the board's first power-on the board's flash gets the lab's firmware
public key (so that images signed with the lab's firmware-signing key boot),
the IDevID key is generated in the board's own
key store (its "idevid" slot: swtpm or SoftHSM token), the lab's manufacturer
CA certifies it, and the board's flash gets the pledge identity with its
built-in trust anchors and the lab's cloud registrar as `registrar.url`. The
lab also records the board's owner, so its cloud registrar knows what to
answer (`flow`: 307 to the owner registrar, or a voucher naming the EST
server).

This is an in-process shortcut: the step reaches into the board (its key
store and flash) directly, as a manufacturing station talking to the board
over its console would do through commands. It is one `ProvisioningStep`, so
such a station can take its place.
"""

from __future__ import annotations

from pledgeforge.boards.provisioning import ProvisioningStep
from pledgeforge.firmware.identity import PledgeIdentity
from pledgeforge.hsm import keystore
from pledgeforge.hsm.chain import load_certificate_file

from .databases import check_flow
from .lab import Lab


class LabManufacturing(ProvisioningStep):
    """Boards manufactured by the lab's CA, owned by the lab's owner for `flow`."""

    def __init__(self, lab: Lab, flow: str = "redirect"):
        self.lab = lab
        self.flow = check_flow(flow)

    def provision(self, board) -> None:
        lab = self.lab
        if board.profile.image.verify_key is None:   # a profile that names its key keeps it
            board.slots.install_verify_key(lab.firmware_key_pem())
        uri = board.keystore.slot_uri("idevid")
        signer = keystore.generate_key(uri, board.keystore.algorithm)
        idevid = lab.issue_idevid(signer.public_key, board.serial_number)
        lab.register_pledge(board.serial_number, self.flow)
        board.flash.config_set("registrar.url", lab.url("cloud"))
        board.flash.set_identity(PledgeIdentity.from_certificates(
            uri, idevid, builtin_anchors=load_certificate_file(str(lab.pki("web-ca"))),
            masa_anchors=load_certificate_file(str(lab.pki("manufacturer-ca")))))
        board.log_event(f"manufactured: IDevID {idevid.subject.rfc4514_string()}, owner flow {self.flow}")

    def status_fields(self, board) -> dict[str, str]:
        return {"owner flow": self.flow}
