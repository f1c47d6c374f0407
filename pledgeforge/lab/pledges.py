"""Pledges made by the lab: an IDevID key in a TPM or a token, its IDevID, its owner registered.

Each pledge keeps its files in pledges/<serial>/: its identity (identity.json,
the stored form of firmware/identity.py) and its IDevID (idevid.crt, for
openssl). A TPM pledge gets a swtpm of its own (one TPM per device), whose
state lives in swtpm/<serial>/. A caller that runs the key stores itself (a
fleet's pools of tokens and TPMs) names where the keys go with a `KeyHome`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from pledgeforge.atomicfile import atomic_write
from pledgeforge.firmware.identity import PledgeIdentity
from pledgeforge.hsm import keystore as keystores
from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.identity_names import IdentityNameError, check_serial_number
from pledgeforge.hsm.keyuri import KeyUri, Pkcs11Uri
from pledgeforge.hsm.signer import KeyAlgorithm
from pledgeforge.hsm.x509 import to_pem

from .databases import LabDatabases, check_flow
from .layout import LabError, LabLayout
from .pki import issue_idevid

IDEVID_HANDLE = 0x81020000
#: a TPM pledge's LDevID key slots: this handle and the next, beside the IDevID's
LDEVID_TPM_HANDLE = IDEVID_HANDLE + 1
IDEVID_FILE = "idevid.crt"
KEYSTORES = ("tpm", "pkcs11")


@dataclass(frozen=True)
class KeyHome:
    """Where a new pledge's keys go when its caller runs the key store: a token of a SoftHSM,
    or a TPM and handles, that stays the caller's to start and stop. The IDevID key is made
    at `idevid`; the two LDevID slots are derived from `ldevid` (firmware/ldevid_keys.py)."""

    keystore: str
    idevid: KeyUri
    ldevid: KeyUri
    #: the token, for a PKCS#11 home (what ProvisionedPledge.token_uri reports)
    token_uri: str | None = None
    #: the SoftHSM configuration of that token
    softhsm2_conf: Path | None = None


@dataclass(frozen=True)
class ProvisionedPledge:
    """A pledge the lab made: its identity (stored in its directory too), the owner flow
    registered for it, where its files are, and the running swtpm of a TPM pledge."""

    identity: PledgeIdentity
    flow: str
    keystore: str
    algorithm: str
    #: the pledge's own directory: idevid.crt and identity.json, later its voucher, LDevID, ...
    directory: Path
    #: the lab's file of the anchor vouchers verify against (the MASA's certificate chains to it)
    manufacturer_ca: Path
    #: the lab's file of the pledge's built-in anchor for the cloud registrar's TLS certificate
    cloud_anchor: Path
    owner_registrar_url: str
    masa_url: str
    softhsm2_conf: Path
    #: PKCS#11 token for further keys of this pledge (its LDevID), when keystore is pkcs11
    token_uri: str | None = None
    #: the running swtpm of a TPM pledge (stopped by close())
    swtpm: object | None = field(default=None, compare=False, repr=False)

    @property
    def serial(self) -> str:
        return self.identity.serial

    @property
    def key_uri(self) -> str:
        """The IDevID key (pkcs11: or tpm: URI; the PIN, if any, via pin-source=file:)."""
        return self.identity.idevid_key_uri

    @property
    def idevid_cert(self) -> Path:
        return self.directory / IDEVID_FILE

    @property
    def cloud_registrar_url(self) -> str:
        return self.identity.cloud_registrar_url

    def close(self) -> None:
        """Stop the pledge's swtpm, if any (its state stays in its directory)."""
        if self.swtpm is not None:
            from pledgeforge.hsm import tpm_backend

            tcti = self.swtpm.tcti
            self.swtpm.stop()
            tpm_backend.disconnect(tcti)

    def to_dict(self) -> dict:
        """JSON-ready (paths as strings; the identity's certificates are in the directory)."""
        values = {"serial": self.serial, "flow": self.flow, "keystore": self.keystore,
                  "algorithm": self.algorithm, "key_uri": self.key_uri, "idevid_cert": self.idevid_cert,
                  "manufacturer_ca": self.manufacturer_ca, "cloud_anchor": self.cloud_anchor,
                  "cloud_registrar_url": self.cloud_registrar_url,
                  "owner_registrar_url": self.owner_registrar_url, "masa_url": self.masa_url,
                  "directory": self.directory, "softhsm2_conf": self.softhsm2_conf,
                  "token_uri": self.token_uri}
        return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


def provision_pledge(lab: LabLayout, databases: LabDatabases, serial: str | None = None,
                     keystore: str = "pkcs11", algorithm: str = "ec-p256", flow: str = "redirect", *,
                     additional_configuration: bytes | None = None,
                     home: KeyHome | None = None) -> ProvisionedPledge:
    """A new pledge: IDevID key generated in swtpm or SoftHSM, IDevID issued by the
    manufacturer CA, ownership registered for `flow` (serial: generated when None).
    With `home`, the keys go where it says and no swtpm is started for the pledge."""
    kind = keystore
    if kind not in KEYSTORES:
        raise LabError(f"keystore must be tpm or pkcs11, not {kind!r}")
    if home is not None and home.keystore != kind:
        raise LabError(f"a {home.keystore} key home cannot hold the keys of a {kind} pledge")
    serial = serial or f"PF-{secrets.token_hex(4).upper()}"
    try:  # it names files here and keys in every server's database
        check_serial_number(serial)
    except IdentityNameError as exc:
        raise LabError(str(exc)) from None
    check_flow(flow)
    algo = KeyAlgorithm.parse(algorithm)
    directory = lab.pledge_dir(serial)
    if (directory / IDEVID_FILE).exists():
        raise LabError(f"pledge {serial} is already provisioned in {directory}; choose another serial")
    tpm = None
    token_uri = ldevid_uri = None
    softhsm2_conf = lab.softhsm.conf
    if home is not None:
        uri, ldevid_uri, token_uri = home.idevid, str(home.ldevid), home.token_uri
        softhsm2_conf = home.softhsm2_conf or softhsm2_conf
    elif kind == "pkcs11":
        uri = lab.key_uri("pledges", f"idevid-{serial}")
        token_uri = str(lab.key_uri("pledges", None))
        # The LDevID key goes into the same token, under labels of its own per serial.
        ldevid_uri = str(lab.key_uri("pledges", f"ldevid-{serial}"))
    else:
        from pledgeforge.hsm.swtpm import Swtpm

        # The TPM state's key lives with the pledge, not with the TPM's state.
        tpm = Swtpm(lab.dir / "swtpm" / serial, key_file=directory / "tpm-state.key").start()
        uri = tpm.key_uri(IDEVID_HANDLE)
        ldevid_uri = str(tpm.key_uri(LDEVID_TPM_HANDLE))
    try:
        signer = keystores.generate_key(uri, algo)
        idevid = issue_idevid(lab, signer.public_key, serial)
        identity = PledgeIdentity.from_certificates(
            str(uri), idevid, builtin_anchors=load_certificate_file(str(lab.pki("web-ca"))),
            masa_anchors=load_certificate_file(str(lab.pki("manufacturer-ca"))),
            cloud_registrar_url=lab.url("cloud"), ldevid_key_uri=ldevid_uri)
        identity.save(directory)
        # Written last: the certificate's presence marks the serial as taken.
        atomic_write(directory / IDEVID_FILE, to_pem(idevid))
        databases.register_pledge(serial, flow, additional_configuration)
    except BaseException:
        if tpm is not None:
            tpm.stop()
        raise
    return ProvisionedPledge(
        identity=identity, flow=flow, keystore=kind, algorithm=algo.value, directory=directory,
        manufacturer_ca=lab.pki("manufacturer-ca"), cloud_anchor=lab.pki("web-ca"),
        owner_registrar_url=lab.url("owner"), masa_url=lab.masa_url,
        softhsm2_conf=softhsm2_conf, token_uri=token_uri, swtpm=tpm)


def is_provisioned(lab: LabLayout, serial: str) -> bool:
    """Whether `serial` (a valid serial number, else IdentityNameError) is provisioned in `lab`."""
    check_serial_number(serial)
    return (lab.pledge_dir(serial) / IDEVID_FILE).exists()


def reopen_pledge(lab: LabLayout, databases: LabDatabases, serial: str) -> ProvisionedPledge:
    """A pledge provisioned earlier in `lab`, ready to run again: its TPM started on its
    state, or its keys on the lab's pledge token. (A pledge whose keys have a `KeyHome`
    needs that home's token or TPM, which its identity names.)"""
    if not is_provisioned(lab, serial):
        raise LabError(f"no pledge {serial} in {lab.dir} (provision one with `pledgeforge pledge bootstrap`)")
    directory = lab.pledge_dir(serial)
    identity = PledgeIdentity.load(directory)
    flow = databases.owner_store().pledge_flow(serial) or "redirect"
    tpm_state = lab.dir / "swtpm" / serial
    key = keystores.parse_key_uri(identity.idevid_key_uri)
    tpm, token_uri, softhsm2_conf = None, None, lab.softhsm.conf
    if isinstance(key, Pkcs11Uri):
        token_uri = str(key.with_object(None))
        softhsm2_conf = Path(dict(key.module_env).get("SOFTHSM2_CONF", softhsm2_conf))
    elif tpm_state.exists():
        from pledgeforge.hsm.swtpm import Swtpm

        # Its sockets live in its state directory, so the TCTI in the identity stays right.
        tpm = Swtpm(tpm_state, key_file=directory / "tpm-state.key").start()
    return ProvisionedPledge(
        identity=identity, flow=flow, keystore=key.scheme,
        algorithm=KeyAlgorithm.of_public_key(identity.idevid.public_key()).value, directory=directory,
        manufacturer_ca=lab.pki("manufacturer-ca"), cloud_anchor=lab.pki("web-ca"),
        owner_registrar_url=lab.url("owner"), masa_url=lab.masa_url,
        softhsm2_conf=softhsm2_conf, token_uri=token_uri, swtpm=tpm)
