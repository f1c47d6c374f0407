"""A pledge provisioned in a local lab, bootstrapped by the real driver.

Glue between the lab (pledgeforge/lab: keys, IDevID, ownership) and the
pledge (firmware/pledge.py: state machine over TLS). What the bootstrap
produced is written to the pledge's own directory in the lab, so a user can
check it with openssl afterwards:

    pledges/<serial>/idevid.crt     the IDevID (written at provisioning)
    pledges/<serial>/identity.json  the pledge's identity (written at provisioning)
    pledges/<serial>/voucher.p7b    the verified voucher (DER CMS)
    pledges/<serial>/ldevid.crt     the LDevID (PEM)
    pledges/<serial>/cacerts.pem    the EST CA certificates
    pledges/<serial>/additional-configuration   when the voucher named one
    pledges/<serial>/result.json    what `pledgeforge pledge bootstrap --json` prints
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable

from cryptography import x509

from pledgeforge.atomicfile import atomic_write
from pledgeforge.firmware import pledge_machine as pm
from pledgeforge.firmware.identity import PledgeIdentity
from pledgeforge.firmware.pledge import BootstrapResult, PledgeDriver
from pledgeforge.hsm.x509 import to_pem
from pledgeforge.lab import ProvisionedPledge

VOUCHER_FILE = "voucher.p7b"
LDEVID_FILE = "ldevid.crt"
CACERTS_FILE = "cacerts.pem"
ADDITIONAL_CONFIGURATION_FILE = "additional-configuration"
RESULT_FILE = "result.json"


def pledge_identity(pledge: ProvisionedPledge, cloud_registrar_url: str | None = None) -> PledgeIdentity:
    """What the provisioned pledge is born with, as the driver wants it (optionally pointed
    at another cloud registrar). The LDevID key goes into the same key store as the IDevID:
    the pledge token (a label of its own per serial) or the pledge's own TPM."""
    if cloud_registrar_url:
        return replace(pledge.identity, cloud_registrar_url=cloud_registrar_url)
    return pledge.identity


def bootstrap(pledge: ProvisionedPledge, *, config: pm.PledgeConfig | None = None,
              identity: PledgeIdentity | None = None, timeout: float = 10.0,
              on_transition: Callable[[pm.Transition], None] | None = None) -> tuple[BootstrapResult, dict]:
    """Run the pledge to Enrolled or Failed; store what it got; return (result, summary)."""
    identity = identity or pledge_identity(pledge)
    result = PledgeDriver(identity, config, timeout=timeout, on_transition=on_transition).run()
    summary = store_result(pledge, result, identity.idevid)
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
