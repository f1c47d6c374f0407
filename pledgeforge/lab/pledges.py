"""Pledges made by the lab: an IDevID key in a TPM or a token, its IDevID, its owner registered.

Each pledge keeps its files in pledges/<serial>/; a TPM pledge gets a swtpm of
its own (one TPM per device), whose state lives in swtpm/<serial>/.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path

from pledgeforge.atomicfile import atomic_write
from pledgeforge.hsm import keystore as keystores
from pledgeforge.hsm.identity_names import IdentityNameError, check_serial_number
from pledgeforge.hsm.signer import KeyAlgorithm
from pledgeforge.hsm.x509 import to_pem

from .databases import LabDatabases, check_flow
from .layout import LabError, LabLayout
from .pki import issue_idevid

IDEVID_HANDLE = 0x81020000
KEYSTORES = ("tpm", "pkcs11")


@dataclass(frozen=True)
class ProvisionedPledge:
    """What a freshly provisioned pledge knows, and where its key lives."""

    serial: str
    flow: str
    keystore: str
    algorithm: str
    #: the IDevID key (pkcs11: or tpm: URI; the PIN, if any, via pin-source=file:)
    key_uri: str
    idevid_cert: Path
    #: vouchers verify against this (the MASA's certificate chains to it)
    manufacturer_ca: Path
    #: the pledge's built-in anchor for the cloud registrar's TLS certificate
    cloud_anchor: Path
    cloud_registrar_url: str
    owner_registrar_url: str
    masa_url: str
    #: the pledge's own directory (for its voucher, LDevID, ...)
    directory: Path
    softhsm2_conf: Path
    #: PKCS#11 token for further keys of this pledge (its LDevID), when keystore is pkcs11
    token_uri: str | None = None
    #: the running swtpm of a TPM pledge (stopped by close())
    swtpm: object | None = field(default=None, compare=False, repr=False)

    def close(self) -> None:
        """Stop the pledge's swtpm, if any (its state stays in its directory)."""
        if self.swtpm is not None:
            from pledgeforge.hsm import tpm_backend

            tcti = self.swtpm.tcti
            self.swtpm.stop()
            tpm_backend.disconnect(tcti)

    def to_dict(self) -> dict:
        """JSON-ready (paths as strings; the swtpm process left out)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "swtpm"}
        return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


def provision_pledge(lab: LabLayout, databases: LabDatabases, serial: str | None = None,
                     keystore: str = "pkcs11", algorithm: str = "ec-p256", flow: str = "redirect", *,
                     additional_configuration: bytes | None = None) -> ProvisionedPledge:
    """A new pledge: IDevID key generated in swtpm or SoftHSM, IDevID issued by the
    manufacturer CA, ownership registered for `flow` (serial: generated when None)."""
    kind = keystore
    if kind not in KEYSTORES:
        raise LabError(f"keystore must be tpm or pkcs11, not {kind!r}")
    serial = serial or f"PF-{secrets.token_hex(4).upper()}"
    try:  # it names files here and keys in every server's database
        check_serial_number(serial)
    except IdentityNameError as exc:
        raise LabError(str(exc)) from None
    check_flow(flow)
    algo = KeyAlgorithm.parse(algorithm)
    directory = lab.pledge_dir(serial)
    if (directory / "idevid.crt").exists():
        raise LabError(f"pledge {serial} is already provisioned in {directory}; choose another serial")
    tpm = None
    token_uri = None
    if kind == "pkcs11":
        uri = lab.key_uri("pledges", f"idevid-{serial}")
        token_uri = str(lab.key_uri("pledges", None))
    else:
        from pledgeforge.hsm.swtpm import Swtpm

        # The TPM state's key lives with the pledge, not with the TPM's state.
        tpm = Swtpm(lab.dir / "swtpm" / serial, key_file=directory / "tpm-state.key").start()
        uri = tpm.key_uri(IDEVID_HANDLE)
    try:
        signer = keystores.generate_key(uri, algo)
        idevid = issue_idevid(lab, signer.public_key, serial)
        atomic_write(directory / "idevid.crt", to_pem(idevid))
        databases.register_pledge(serial, flow, additional_configuration)
    except BaseException:
        if tpm is not None:
            tpm.stop()
        raise
    return ProvisionedPledge(
        serial=serial, flow=flow, keystore=kind, algorithm=algo.value, key_uri=str(uri),
        idevid_cert=directory / "idevid.crt", manufacturer_ca=lab.pki("manufacturer-ca"),
        cloud_anchor=lab.pki("web-ca"), cloud_registrar_url=lab.url("cloud"),
        owner_registrar_url=lab.url("owner"), masa_url=lab.masa_url, directory=directory,
        softhsm2_conf=lab.softhsm.conf, token_uri=token_uri, swtpm=tpm)
