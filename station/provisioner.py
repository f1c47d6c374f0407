"""One board, from `identify` to `lock`, over its console.

    identify            who the board is; a locked board is reported and left alone
    generate            the IDevID key is made in the board's key store
    TPM boards          read-ek, create-iak, activate, certify: the TCG flow
                        (hsm/tpm_attestation.py): the EK certificate chains to a configured
                        TPM maker, ActivateCredential binds the IAK to that EK, TPM2_Certify
                        by the IAK over a fresh nonce shows the IDevID key resident, fixed to
                        the TPM and able only to sign
    PKCS#11 boards      key-report: the token's attributes of the key (the weaker,
                        token-reported assurance: nothing signs the report)
    csr                 proof of possession of that very key
    issue               the IDevID (and the IAK certificate) from the manufacturer CA
    install             certificates, trust anchors, cloud registrar, firmware key; each read
                        back by the board and compared with what was sent
    record              the manufacturing database's row for the board
    lock                the board makes its identity final and refuses manufacturing for good

Nothing is issued before the evidence is accepted; nothing is recorded
before the certificate is installed and read back. A failure at any step
leaves the board unlocked (its next run starts over, with a new key) and no
row in the database; should the board refuse to lock, its row is deleted
again.
"""

from __future__ import annotations

import datetime as dt
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pledgeforge.errors import EnvironmentFailure, PledgeforgeError, VerificationFailure
from pledgeforge.firmware.mfg_protocol import PROTOCOL_VERSION, install_digest
from pledgeforge.hsm.identity_names import IdentityNameError, check_serial_number
from pledgeforge.hsm.key_evidence import (MalformedEvidenceError, TokenKeyReport,
                                          VerifiedDeviceKey, verify_token_key)
from pledgeforge.hsm.signer import Signer
from pledgeforge.hsm.tpm_attestation import TpmAttestation
from pledgeforge.hsm.tpm_identity import DEFAULT_EK_KIND
from pledgeforge.hsm.x509 import to_der

from . import certificates
from .link import DEFAULT_SLOW_TIMEOUT, DEFAULT_TIMEOUT, BoardLink, BoardRefusal, Exchange
from .records import BoardRecord, ManufacturingDb, sha256_hex

#: commands whose board-side time is TPM work on a TPM board
TPM_COMMANDS = frozenset({"generate", "read-ek", "create-iak", "activate", "certify", "csr"})
#: the IAK the station asks a TPM board for
IAK_ALGORITHM = "ec-p256"

Progress = Callable[[str, int, int], None]


class ProvisioningError(VerificationFailure):
    """The board answered, but not in a way the station can provision (a bad identity)."""


class BoardNotLockedError(EnvironmentFailure):
    """The board was recorded but whether it locked is unknown (its console failed)."""


@dataclass(frozen=True)
class StationConfig:
    """What a station issues with and installs, and whom it trusts."""

    ca_signer: Signer
    ca_certificate: x509.Certificate
    masa_url: str
    cloud_registrar_url: str
    #: the MASA / manufacturer anchors vouchers must chain to (PEM)
    trust_anchors_pem: bytes
    #: the cloud registrar's TLS trust anchor(s) (PEM)
    cloud_anchors_pem: bytes
    #: the public key MCUboot checks images against (PEM), if the station installs one
    image_key_pem: bytes | None = None
    tpm_maker_roots: Sequence[x509.Certificate] = ()
    tpm_maker_intermediates: Sequence[x509.Certificate] = ()
    ek_kind: str = DEFAULT_EK_KIND
    #: hardwareModuleName type for PKCS#11 boards (TPM boards always get the TCG's)
    hw_type: str | None = None
    name: str = field(default_factory=socket.gethostname)
    timeout: float = DEFAULT_TIMEOUT
    slow_timeout: float = DEFAULT_SLOW_TIMEOUT


@dataclass
class BoardResult:
    """How one board went: what the station reports per board (`to_dict` for --json)."""

    port: str
    status: str = "failed"  # provisioned | already-provisioned | failed
    serial: str | None = None
    profile: str | None = None
    keystore: str | None = None
    assurance: str | None = None
    error: str | None = None
    #: the exception that ended the run (its kind decides the exit status)
    failure: PledgeforgeError | None = None
    record: BoardRecord | None = None
    seconds: float = 0.0
    ca_seconds: float = 0.0
    bytes_out: int = 0
    bytes_in: int = 0
    retries: int = 0
    damaged_lines: int = 0
    exchanges: list[Exchange] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def board_seconds(self, commands: frozenset[str], baudrate: int) -> float:
        """Time the board spent on `commands` beyond moving their bytes at `baudrate`."""
        rate = baudrate / 10.0
        return sum(max(0.0, e.seconds - max(e.bytes_out, e.bytes_in) / rate)
                   for e in self.exchanges if e.command in commands)

    def to_dict(self) -> dict:
        data = {"port": self.port, "status": self.status, "serial": self.serial,
                "profile": self.profile, "keystore": self.keystore, "assurance": self.assurance,
                "error": self.error, "seconds": round(self.seconds, 3),
                "bytes": {"to_board": self.bytes_out, "from_board": self.bytes_in},
                "retries": self.retries, "damaged_lines": self.damaged_lines,
                "steps": self.steps}
        if self.record is not None:
            data["record"] = self.record.to_dict()
        return data


class Station:
    """A manufacturing station: provisions boards at console URLs, records them in `db`."""

    def __init__(self, config: StationConfig, db: ManufacturingDb):
        self.config = config
        self.db = db

    def provision(self, url: str, progress: Progress | None = None) -> BoardResult:
        """Provision the board at `url`; never raises for the board's sake (see `result.error`)."""
        result = BoardResult(port=url)
        started = time.monotonic()
        link = None
        try:
            link = BoardLink(url, timeout=self.config.timeout,
                             slow_timeout=self.config.slow_timeout)
            _Run(self, link, result, progress or (lambda step, done, total: None)).run()
        except PledgeforgeError as exc:
            result.status, result.error, result.failure = "failed", str(exc), exc
        finally:
            if link is not None:
                stats = link.stats
                result.bytes_out, result.bytes_in = stats.bytes_out, stats.bytes_in
                result.retries, result.damaged_lines = stats.retries, stats.damaged_lines
                result.exchanges = list(stats.exchanges)
                link.close()
            result.seconds = time.monotonic() - started
        return result


class _Run:
    """One board's run (see the module docstring)."""

    def __init__(self, station: Station, link: BoardLink, result: BoardResult, progress: Progress):
        self.config = station.config
        self.db = station.db
        self.link = link
        self.result = result
        self.progress = progress
        self.total = 1

    def step(self, name: str) -> None:
        self.result.steps.append(name)
        self.progress(name, len(self.result.steps), self.total)

    def run(self) -> None:
        link, result = self.link, self.result
        board = link.request("identify")
        self._check_identity(board)
        result.serial, result.profile, result.keystore = board["serial"], board["profile"], board["keystore"]
        tpm = board["keystore"] == "tpm"
        # identify ... issue, the installs, record and lock
        self.total = (15 if tpm else 11) + bool(self.config.image_key_pem)
        self.step("identify")
        if board["state"] == "locked":
            result.status = "already-provisioned"
            result.record = self.db.get(board["serial"])
            if result.record is None:
                result.error = ("the board is locked, but this station's database has no record "
                                "of it: another station provisioned it")
            self.progress("already-provisioned", self.total, self.total)
            return
        generated = link.request("generate", {"algorithm": board.get("algorithm") or "ec-p256"})
        self.step("generate")
        verified = self._attest_tpm(generated) if tpm else self._token_report(generated)
        if verified.public_key_der != generated["public-key"]:
            raise ProvisioningError("the key the board proved is not the key it generated")
        result.assurance = verified.assurance.value
        idevid, iak = self._issue(board, verified)
        items = [("idevid-certificate", to_der(idevid), None)]
        if iak is not None:
            items.append(("iak-certificate", to_der(iak), None))
        items += [("trust-anchors", self.config.trust_anchors_pem, None),
                  ("cloud-registrar", self.config.cloud_anchors_pem, self.config.cloud_registrar_url)]
        if self.config.image_key_pem:
            items.append(("firmware-key", self.config.image_key_pem, None))
        for item, data, url in items:
            self._install(item, data, url)
        record = self._record(board, verified, idevid, iak)
        self.db.record(record)
        self.step("record")
        self._lock(board["serial"])
        result.record, result.status = record, "provisioned"

    # ------------------------------------------------------------------ steps

    def _check_identity(self, board: dict) -> None:
        if board["protocol"] != PROTOCOL_VERSION:
            raise ProvisioningError(f"the board speaks manufacturing protocol {board['protocol']}; "
                                    f"this station speaks {PROTOCOL_VERSION}")
        if board["keystore"] not in ("tpm", "pkcs11"):
            raise ProvisioningError(f"the board's key store {board['keystore']!r} is neither tpm "
                                    "nor pkcs11")
        try:
            check_serial_number(board["serial"], "the board's serial number")
        except IdentityNameError as exc:
            raise ProvisioningError(str(exc)) from None

    def _attest_tpm(self, generated: dict) -> VerifiedDeviceKey:
        link, kind = self.link, self.config.ek_kind
        attestation = TpmAttestation(list(self.config.tpm_maker_roots),
                                     list(self.config.tpm_maker_intermediates))
        ek = link.request("read-ek", {"kind": kind})
        attestation.check_endorsement(ek["certificate"], ek["public"])
        self.step("read-ek")
        iak = link.request("create-iak", {"algorithm": IAK_ALGORITHM})
        credential = attestation.challenge(iak["public"])
        self.step("create-iak")
        activated = link.request("activate", {"credential": credential, "kind": kind})
        attestation.check_activation(activated["secret"])
        self.step("activate")
        certified = link.request("certify", {"nonce": attestation.certify_nonce()})
        self.step("certify")
        csr = self._csr()
        verified = attestation.check_certify(certified["attest"], certified["signature"],
                                             certified["public"], csr)
        if "tpm-public" in generated and generated["tpm-public"] != certified["public"]:
            raise ProvisioningError("the IDevID public area the board certified is not the one "
                                    "it generated")
        self.step("attested")
        return verified

    def _token_report(self, generated: dict) -> VerifiedDeviceKey:
        reply = self.link.request("key-report")
        report = TokenKeyReport(reply["public-key"], reply["local"], reply["never-extractable"],
                                reply["sensitive"], reply["always-sensitive"], reply["extractable"])
        self.step("key-report")
        verified = verify_token_key(report, self._csr())
        self.step("checked")
        return verified

    def _csr(self) -> x509.CertificateSigningRequest:
        der = self.link.request("csr")["csr"]
        self.step("csr")
        try:
            return x509.load_der_x509_csr(der)
        except ValueError as exc:
            raise MalformedEvidenceError(f"the board's CSR is not a DER PKCS#10 request: {exc}") from None

    def _issue(self, board: dict, verified: VerifiedDeviceKey):
        config, serial = self.config, board["serial"]
        started = time.monotonic()
        iak = None
        if verified.ek_certificate is not None:
            module = (certificates.TCG_TPM20, certificates.tpm_hardware_serial(verified.ek_certificate))
        else:
            module = (config.hw_type, serial.encode()) if config.hw_type else None
        idevid = certificates.board_idevid(config.ca_signer, config.ca_certificate,
                                           verified.public_key, serial, masa_url=config.masa_url,
                                           hardware_module=module)
        if verified.iak_public_key is not None:
            iak = certificates.iak_certificate(config.ca_signer, config.ca_certificate,
                                               verified.iak_public_key, serial, hardware_module=module)
        self.result.ca_seconds += time.monotonic() - started
        self.step("issue")
        return idevid, iak

    def _install(self, item: str, data: bytes, url: str | None) -> None:
        args = {"item": item, "data": data, **({"url": url} if url is not None else {})}
        reply = self.link.request("install", args)
        if reply["item"] != item or reply["sha256"] != install_digest(item, data, url):
            raise ProvisioningError(f"the board read back another {item} than the station sent")
        self.step(f"install {item}")

    def _record(self, board: dict, verified: VerifiedDeviceKey, idevid, iak) -> BoardRecord:
        evidence = dict(verified.evidence)
        pem = lambda cert: cert.public_bytes(serialization.Encoding.PEM).decode()  # noqa: E731
        return BoardRecord(
            serial=board["serial"], profile=board["profile"], model=board["model"],
            keystore=board["keystore"], algorithm=board.get("algorithm") or "",
            assurance=verified.assurance.value,
            public_key_sha256=sha256_hex(verified.public_key_der),
            certificate_pem=pem(idevid), certificate_serial=f"{idevid.serial_number:x}",
            evidence=evidence, station=self.config.name,
            provisioned_at=dt.datetime.now(dt.timezone.utc).replace(microsecond=0),
            ek_certificate_sha256=evidence.get("ek-certificate-sha256"),
            ek_issuer=evidence.get("ek-issuer"), iak_name=evidence.get("iak-name"),
            iak_certificate_pem=pem(iak) if iak is not None else None)

    def _lock(self, serial: str) -> None:
        try:
            self.link.request("lock")
        except BoardRefusal:
            self.db.remove(serial)  # the board stays unlocked: no row may stand for it
            raise
        except PledgeforgeError as exc:
            # The lock may or may not have happened: the row stays, the next run finds out.
            raise BoardNotLockedError(f"board {serial} was recorded, but whether it locked is "
                                      f"unknown ({exc}); run the station on it again") from None
        self.step("lock")


__all__ = ["Station", "StationConfig", "BoardResult", "ProvisioningError", "BoardNotLockedError",
           "TPM_COMMANDS"]
