"""A pledge provisioned in a local lab, bootstrapped and renewed by the real firmware.

Glue between the lab (pledgeforge/lab: keys, IDevID, ownership) and the
pledge (firmware/: state machine over TLS, LDevID key lifecycle, renewal).
What the pledge keeps, and what a user checks with openssl afterwards, is
written to its own directory in the lab:

    pledges/<serial>/idevid.crt     the IDevID (written at provisioning)
    pledges/<serial>/identity.json  the pledge's identity (written at provisioning)
    pledges/<serial>/ldevid.json    the pledge's record of its enrollment: the LDevID, the slot
                                    of its key, the EST CA certificates and URL (one atomic
                                    write: the LDevID key is promoted only once it is stored)
    pledges/<serial>/voucher.p7b    the verified voucher (DER CMS)
    pledges/<serial>/ldevid.crt     the LDevID (PEM; a copy of ldevid.json's)
    pledges/<serial>/cacerts.pem    the EST CA certificates (a copy of ldevid.json's)
    pledges/<serial>/additional-configuration   when the voucher named one
    pledges/<serial>/result.json    what `pledgeforge pledge bootstrap --json` prints

The LDevID key has two slots (firmware/ldevid_keys.py): labels
ldevid-<serial>-a/-b on the lab's pledge token, or TPM handles 0x81020001 and
0x81020002 beside the IDevID's 0x81020000. Every bootstrap and renewal starts
by deleting whatever an attempt cut short left in the slot that is not current.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from cryptography import x509

from pledgeforge.atomicfile import atomic_write
from pledgeforge.firmware import pledge_machine as pm
from pledgeforge.firmware.identity import PledgeIdentity
from pledgeforge.firmware.ldevid_keys import LdevidKeys, LdevidSlots, Slot
from pledgeforge.firmware.ldevid_renewal import Enrollment, RenewalResult, renew
from pledgeforge.firmware.pledge import BootstrapResult, PledgeDriver
from pledgeforge.hsm.chain import load_certificates
from pledgeforge.hsm.x509 import to_pem
from pledgeforge.lab import Lab, LabError, ProvisionedPledge

VOUCHER_FILE = "voucher.p7b"
ENROLLMENT_FILE = "ldevid.json"
LDEVID_FILE = "ldevid.crt"
CACERTS_FILE = "cacerts.pem"
ADDITIONAL_CONFIGURATION_FILE = "additional-configuration"
RESULT_FILE = "result.json"


def provisioned(lab: Lab, serial: str) -> bool:
    """Whether `serial` (a valid serial number, or IdentityNameError) is provisioned in `lab`."""
    return lab.has_pledge(serial)


def reopen_pledge(lab: Lab, serial: str) -> ProvisionedPledge:
    """A pledge provisioned earlier in `lab`, ready to run again."""
    return lab.reopen_pledge(serial)


def pledge_identity(pledge: ProvisionedPledge, cloud_registrar_url: str | None = None) -> PledgeIdentity:
    """What the provisioned pledge is born with, as the driver wants it (optionally pointed
    at another cloud registrar). Its LDevID key slots are in the same key store as the
    IDevID: the pledge token (labels of its own per serial) or the pledge's own TPM."""
    if cloud_registrar_url:
        return replace(pledge.identity, cloud_registrar_url=cloud_registrar_url)
    return pledge.identity


@dataclass(frozen=True)
class EnrollmentRecord:
    """pledges/<serial>/ldevid.json: what the pledge keeps of its enrollment."""

    enrollment: Enrollment
    key_uri: str

    @classmethod
    def read(cls, pledge: ProvisionedPledge) -> "EnrollmentRecord | None":
        path = Path(pledge.directory) / ENROLLMENT_FILE
        try:
            doc = json.loads(path.read_text())
            return cls(Enrollment(
                certificate=x509.load_pem_x509_certificate(doc["certificate"].encode()),
                slot=Slot(doc["slot"]), ca_certs=tuple(load_certificates(doc["ca_certificates"].encode())),
                est_url=doc["est_url"]), doc["key"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LabError(f"{path} is unreadable ({exc}); bootstrap the pledge again") from None

    def write(self, pledge: ProvisionedPledge) -> None:
        e = self.enrollment
        doc = {"serial": e.serial, "slot": e.slot.value, "key": self.key_uri,
               "certificate": to_pem(e.certificate).decode(),
               "ca_certificates": "".join(to_pem(c).decode() for c in e.ca_certs),
               "est_url": e.est_url,
               "stored_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        atomic_write(Path(pledge.directory) / ENROLLMENT_FILE, (json.dumps(doc, indent=2) + "\n").encode())


def ldevid_keys(pledge: ProvisionedPledge, identity: PledgeIdentity) -> LdevidKeys:
    """The pledge's LDevID slots, the one its record names current; what an attempt cut
    short left in the other slot is deleted here."""
    record = EnrollmentRecord.read(pledge)
    keys = LdevidKeys(LdevidSlots.beside(identity.ldevid_key_uri),
                      current=record.enrollment.slot if record else None)
    keys.recover()
    return keys


def bootstrap(pledge: ProvisionedPledge, *, config: pm.PledgeConfig | None = None,
              identity: PledgeIdentity | None = None, timeout: float = 10.0,
              on_transition: Callable[[pm.Transition], None] | None = None,
              cancel: threading.Event | None = None) -> tuple[BootstrapResult, dict]:
    """Run the pledge to Enrolled or Failed; store what it got; return (result, summary).
    Setting `cancel` ends a bootstrap that waits or retries (PledgeDriver)."""
    identity = identity or pledge_identity(pledge)

    def store(result: BootstrapResult) -> None:
        EnrollmentRecord(Enrollment(result.ldevid, result.ldevid_slot, tuple(result.ca_certs),
                                    result.est_url), result.ldevid_key_uri).write(pledge)

    driver = PledgeDriver(identity, config, timeout=timeout, on_transition=on_transition,
                          cancel=cancel, ldevid_keys=ldevid_keys(pledge, identity))
    result = driver.run(store=store)
    summary = store_result(pledge, result, identity.idevid)
    return result, summary


def reenroll(pledge: ProvisionedPledge, *, timeout: float = 10.0) -> tuple[RenewalResult, dict]:
    """Renew the enrolled pledge's LDevID (EST /simplereenroll); return (result, summary)."""
    record = EnrollmentRecord.read(pledge)
    if record is None:
        raise LabError(f"pledge {pledge.serial} holds no LDevID; bootstrap it first")
    identity = pledge_identity(pledge)
    keys = ldevid_keys(pledge, identity)

    def store(result: RenewalResult) -> None:
        EnrollmentRecord(Enrollment(result.certificate, result.slot, record.enrollment.ca_certs,
                                    record.enrollment.est_url), result.key_uri).write(pledge)

    result = renew(record.enrollment, keys, store, timeout=timeout)
    directory = Path(pledge.directory)
    if result.renewed:
        _write(directory / LDEVID_FILE, to_pem(result.certificate))
    previous = record.enrollment.certificate
    summary = {
        "renewed": result.renewed,
        "reason": result.reason,
        "serial": pledge.serial,
        "keystore": pledge.keystore,
        "previous_ldevid_serial": f"{previous.serial_number:x}",
        "previous_ldevid_key": record.key_uri,
        "ldevid_serial": f"{result.certificate.serial_number:x}" if result.renewed else None,
        "ldevid_key": result.key_uri,
        "ldevid": str(directory / LDEVID_FILE) if result.renewed else None,
        "ldevid_subject": result.certificate.subject.rfc4514_string() if result.renewed else None,
        "not_after": result.certificate.not_valid_after_utc.isoformat() if result.renewed else None,
        "enrollstatus": result.enroll_status,
        "deleted_keys": result.deleted,
        "est_url": record.enrollment.est_url,
    }
    return result, summary


def store_result(pledge: ProvisionedPledge, result: BootstrapResult, idevid: x509.Certificate) -> dict:
    """Write the artefacts to the pledge's directory; the JSON summary the CLI prints."""
    directory = Path(pledge.directory)
    paths: dict[str, str | None] = {"voucher": None, "ldevid": None, "cacerts": None,
                                    "additional_configuration": None}
    if result.voucher is not None:
        paths["voucher"] = _write(directory / VOUCHER_FILE, result.voucher)
    if result.ldevid is not None:
        paths["ldevid"] = _write(directory / LDEVID_FILE, to_pem(result.ldevid))
        paths["cacerts"] = _write(directory / CACERTS_FILE, b"".join(to_pem(c) for c in result.ca_certs))
    if result.additional_configuration is not None:
        paths["additional_configuration"] = _write(directory / ADDITIONAL_CONFIGURATION_FILE,
                                                   result.additional_configuration)
    summary = {
        "state": result.state,
        "reason": result.reason,
        "serial": result.serial,
        "flow": pledge.flow,
        "keystore": pledge.keystore,
        "algorithm": pledge.algorithm,
        "idevid_key": pledge.key_uri,
        "idevid": str(pledge.idevid_cert),
        "ldevid_key": result.ldevid_key_uri,
        **paths,
        "idevid_subject": idevid.subject.rfc4514_string(),
        "ldevid_subject": result.ldevid.subject.rfc4514_string() if result.ldevid is not None else None,
        "registrar_url": result.registrar_url,
        "est_url": result.est_url,
        "redirects": list(result.redirects),
        "additional_configuration_url": result.additional_configuration_url,
        "additional_configuration_error": result.additional_configuration_error,
        "transitions": [{"from": t.from_state.value, "to": t.to_state.value, "reason": t.reason}
                        for t in result.transitions],
    }
    atomic_write(directory / RESULT_FILE, (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _write(path: Path, data: bytes) -> str:
    atomic_write(path, data)
    return str(path)
