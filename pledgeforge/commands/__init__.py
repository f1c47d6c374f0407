"""CLI command groups. Each module defines one click command or group.

`COMMANDS` names, for each top-level command, the module here that defines it,
the attribute it is, and the first line of its help. The CLI imports a module
only when its command runs, so `pledgeforge pledge bootstrap` does not pay for
the board emulator's imports, and `pledgeforge --help` lists every command from
this table without importing any (a test keeps each summary equal to the
command's own first line).
"""

import importlib
from typing import NamedTuple

import click


class CommandEntry(NamedTuple):
    module: str      # in this package
    attribute: str   # the click command in that module
    summary: str     # the first line of its help, for `pledgeforge --help`


#: top-level command -> where it is defined, and what `pledgeforge --help` says of it
COMMANDS = {
    "board": CommandEntry("board", "board", "Run emulated boards and switch their power."),
    "image": CommandEntry("image", "image", "Build, verify and inspect MCUboot images."),
    "keys": CommandEntry("keys", "keys", "Generate, inspect and delete keys in TPMs and PKCS#11 tokens."),
    "ca": CommandEntry("ca", "ca", "A certificate authority whose key stays in an HSM or TPM."),
    "csr": CommandEntry("ca", "csr", "Create a PKCS#10 CSR signed by a key in a key store."),
    "cms": CommandEntry("cms", "cms", "Sign and verify CMS SignedData (vouchers, voucher-requests)."),
    "cert": CommandEntry("cert", "cert", "Inspect and verify certificates."),
    "verify": CommandEntry("verify", "verify",
                           "Verify many CMS-signed vouchers / voucher-requests (or certificates) at once."),
    "lab": CommandEntry("lab", "lab", "A local BRSKI lab: MASA, cloud registrar and owner registrar on loopback."),
    "masa": CommandEntry("masa", "masa", "The MASA: vouchers signed with a key in an HSM."),
    "registrar": CommandEntry("registrar", "registrar",
                              "Owner registrar (BRSKI + EST) and cloud registrar (brski-cloud)."),
    "pledge": CommandEntry("pledge", "pledge", "A BRSKI pledge with its IDevID key in swtpm or SoftHSM."),
    "provision": CommandEntry("provision", "provision",
                              "Provision factory-new boards over their serial consoles: the IDevID key is "
                              "generated in the board's TPM or secure element, shown to be resident (TPM "
                              "attestation; a PKCS#11 board's reported key attributes, a weaker assurance), "
                              "certified by the manufacturer CA, installed with the trust anchors, cloud "
                              "registrar and firmware key, read back, recorded, and the board locked."),
    "fleet": CommandEntry("fleet", "fleet",
                          "Many pledges against one lab: throughput, latency and what each side spends."),
    "demo": CommandEntry("demo", "demo",
                         "Bring up a lab, start a TPM board (redirect flow) and a PKCS#11 board (est-domain "
                         "flow), drive their consoles through boot, login and `bootstrap`, and summarise."),
    "signer": CommandEntry("signer", "signer",
                           "The signing service: registrar-side keys behind a key server that builds what it signs."),
}


def load_command(name: str) -> click.Command | None:
    """The click command `name`, its module imported now; None for an unknown name."""
    if name not in COMMANDS:
        return None
    entry = COMMANDS[name]
    return getattr(importlib.import_module(f"{__name__}.{entry.module}"), entry.attribute)
