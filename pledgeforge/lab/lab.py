"""A local BRSKI lab in one directory: keys in SoftHSM, a MASA, a cloud and an owner registrar.

`Lab.up(dir)` creates what is missing (first time) and starts the servers
that are not running, each as a detached `python -m pledgeforge.registrar.server`
process on loopback (logs in dir/logs), then writes dir/lab.json. Later calls
reuse everything: keys, certificates, ports, databases. `lab.down()` stops
the servers (SIGTERM, bounded wait, then SIGKILL).

`Lab` is the one face of the lab package for the CLI, the demo, the bench and
the tests; each of its jobs is a module of its own:

    layout.py      the directory's layout, ports, URLs and key URIs (Lab is a LabLayout)
    pki.py         tokens and PINs, CA and signer keys, certificates, TLS files
    configs.py     the servers' configuration files
    servers.py     starting, probing and stopping the servers
    signing_service.py  `lab up --signer`: the registrar-side keys behind a signing service
    processes.py   process control under them
    databases.py   what the servers know: owners, pledges, the cloud registrar's answers
    pledges.py     provisioning pledges (`provision_pledge`)
    manufacture.py the factory: the TPM maker of its boards, its manufacturing station

The pledge side uses `Lab.load(dir)`, `provision_pledge(...)` and
`set_cloud_response(...)`; servers read their databases per request, so
registering while they run takes effect at once.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from pledgeforge.hsm.x509 import to_pem

# manufacture.py (the station and its TPM attestation, tpm2-pytss) is imported where a lab
# makes or manufactures boards: most users of a lab (a pledge, `keys --lab`, `lab status`)
# never do, and it is a quarter of the package's import time.
from . import pki, servers, signing_service
from .configs import write_configs
from .databases import OWNER_NAME, LabDatabases
from .layout import HOST, LAB_FILE, SUBDIRECTORIES, LabError, LabLayout
from .pledges import KeyHome, ProvisionedPledge, is_provisioned, provision_pledge, reopen_pledge
from .processes import STOP_TIMEOUT_S, free_port, server_alive, stop_process
from .servers import ROLES, START_TIMEOUT_S, UpReport

if TYPE_CHECKING:
    from pledgeforge.registrar.db import CloudStore, MasaStore, OwnerStore

#: lab.json's version: 2 since each trust role has a token and PIN of its own
LAB_VERSION = 2


class Lab(LabLayout):
    """A lab directory, as described by its lab.json."""

    def __init__(self, directory: Path, data: dict):
        super().__init__(directory, data)
        self.databases = LabDatabases(self)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Lab":
        directory = Path(directory).expanduser().resolve()
        try:
            data = json.loads((directory / LAB_FILE).read_text())
        except FileNotFoundError:
            raise LabError(f"{directory} holds no lab; create one with `pledgeforge lab up --dir "
                           f"{directory}`") from None
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read {directory / LAB_FILE}: {exc}") from None
        if data.get("version") != LAB_VERSION:
            raise LabError(f"{directory} holds a lab of another pledgeforge version (one PIN for every "
                           f"role); stop its servers (PIDs in {directory / LAB_FILE}), remove it and run "
                           f"`pledgeforge lab up --dir {directory}` again")
        return cls(directory, data)

    @classmethod
    def up(cls, directory: str | os.PathLike, timeout_s: float = START_TIMEOUT_S,
           signer: str | None = None) -> tuple["Lab", UpReport]:
        """Create the lab if needed, start what is not running, return once all answer.

        signer: "keyless" or "short-term" puts the registrar-side keys behind a signing
        service (signing_service.py); chosen when the lab is created."""
        directory = Path(directory).expanduser().resolve()
        report = UpReport()
        if (directory / LAB_FILE).exists():
            lab = cls.load(directory)
            signing_service.check_mode(lab, signer)
        else:
            lab = cls._create(directory, signer)
            report.created = True
        servers.start(lab, report, timeout_s)
        return lab, report

    @classmethod
    def _create(cls, directory: Path, signer: str | None = None) -> "Lab":
        for sub in SUBDIRECTORIES:
            (directory / sub).mkdir(parents=True, exist_ok=True)
        data = {
            "version": LAB_VERSION,
            "servers": {role: {"ports": {"main": free_port(HOST)}, "pid": None} for role in ROLES},
        }
        data["servers"]["cloud"]["ports"]["var"] = free_port(HOST)
        lab = cls(directory, data)
        owner_cert = pki.create_pki(lab)
        write_configs(lab)
        lab.masa_store().add_owner(OWNER_NAME, to_pem(owner_cert).decode())
        # pin_file: the PIN of the pledges' token, the one a user of the lab's pledges needs
        data["softhsm"] = {"conf": str(lab.softhsm.conf), "module": lab.softhsm.module_path,
                           "pin_file": str(lab.pin_file("pledges")),
                           "tokens": {token: str(lab.pin_file(token)) for token in pki.TOKENS}}
        data["swtpm_dir"] = str(directory / "swtpm")
        from . import manufacture

        data["tpm_maker"] = str(manufacture.tpm_maker(lab).directory)
        data["manufacturing_db"] = lab.manufacturing_db_url
        data["trust_anchors"] = {
            "manufacturer_ca": str(lab.pki("manufacturer-ca")),
            "cloud_registrar_tls": str(lab.pki("web-ca")),
            "masa_tls": str(lab.pki("web-ca")),
            "owner_ca": str(lab.pki("owner-ca")),
            "tpm_maker_root": str(manufacture.tpm_maker(lab).root_path),
        }
        data["firmware_signing"] = {"key": str(lab.firmware_key_uri),
                                    "public_key": str(lab.firmware_key_pem_path)}
        data["owner"] = {"name": OWNER_NAME, "registrar_url": lab.url("owner"), "est_domain": lab.url("owner")}
        data["urls"] = {role: lab.url(role) for role in ROLES}
        data["urls"]["cloud_var"] = lab.url("cloud", "var")
        data["created_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        for role in ROLES:
            data["servers"][role].update(config=str(lab.config_path(role)), log=str(lab.log_path(role)),
                                         database=lab.database_url(role))
        if signer is not None:
            signing_service.add(lab, signer)
        lab.save()
        return lab

    def probe(self, role: str, timeout: float = 2.0) -> str | None:
        """None when the server answers its health check over TLS; else what went wrong."""
        return servers.probe(self, role, timeout)

    def down(self, timeout_s: float = STOP_TIMEOUT_S) -> list[str]:
        """Stop the running servers; return which were stopped."""
        stopped = servers.stop(self, timeout_s)
        self.databases.close()
        return stopped

    def status(self) -> dict:
        return servers.status(self)

    # ------------------------------------------------------------------ databases (databases.py)

    def masa_store(self) -> MasaStore:
        return self.databases.masa_store()

    def cloud_store(self) -> CloudStore:
        return self.databases.cloud_store()

    def owner_store(self) -> OwnerStore:
        return self.databases.owner_store()

    def register_pledge(self, serial: str, flow: str, additional_configuration: bytes | None = None) -> None:
        """Ownership of `serial` for `flow` in all three databases (LabDatabases.register_pledge)."""
        self.databases.register_pledge(serial, flow, additional_configuration)

    def set_cloud_response(self, serial: str, response: str, **options) -> None:
        """What the cloud registrar answers `serial` (options: LabDatabases.set_cloud_response)."""
        self.databases.set_cloud_response(serial, response, **options)

    def set_cloud_overloaded(self, retry_after: int | None) -> None:
        """503 + Retry-After to every voucher-request; None switches that off."""
        self.databases.set_cloud_overloaded(retry_after)

    # ------------------------------------------------------------------ pledges (pki.py, pledges.py)

    def issue_idevid(self, public_key, serial: str) -> x509.Certificate:
        """An IDevID from the manufacturer CA (the factory side: only the lab holds its PIN)."""
        return pki.issue_idevid(self, public_key, serial)

    def provision_pledge(self, serial: str | None = None, keystore: str = "pkcs11",
                         algorithm: str = "ec-p256", flow: str = "redirect", *,
                         additional_configuration: bytes | None = None,
                         home: KeyHome | None = None) -> ProvisionedPledge:
        """A new pledge: IDevID key in swtpm or the pledges token (or where `home` says), its
        IDevID, ownership for `flow`."""
        return provision_pledge(self, self.databases, serial, keystore, algorithm, flow,
                                additional_configuration=additional_configuration, home=home)

    # ------------------------------------------------------------------ boards (manufacture.py)

    def manufacture_board(self, port: str, flow: str = "redirect", **options):
        """Provision the factory-new board at console `port` with the lab's manufacturing
        station and register it with the lab's servers for `flow` (manufacture.py); the
        station's BoardResult. Start such boards with `board run --factory-new --tpm-maker
        <lab>/tpm-maker`."""
        from . import manufacture

        return manufacture.manufacture_board(self, self.databases, port, flow, **options)

    def station(self, **options):
        """The lab's manufacturing station (its CA, anchors, TPM maker, database)."""
        from . import manufacture

        return manufacture.station(self, **options)

    def has_pledge(self, serial: str) -> bool:
        """Whether `serial` was provisioned in this lab (an invalid serial raises IdentityNameError)."""
        return is_provisioned(self, serial)

    def reopen_pledge(self, serial: str) -> ProvisionedPledge:
        """A pledge provisioned earlier, ready to bootstrap or renew again (pledges.py)."""
        return reopen_pledge(self, self.databases, serial)


__all__ = ["Lab", "LabError", "KeyHome", "ProvisionedPledge", "UpReport", "server_alive", "stop_process"]
