"""Where everything of a lab is: its directory's layout, its servers' ports and URLs, its key URIs.

    softhsm/           one SoftHSM2 configuration, one token per trust role (see pki.TOKENS):
                       manufacturer, web, masa, owner, registrar, cloud, and pledges
                       (IDevID/LDevID keys of PKCS#11 pledges)
    secrets/           each token's user PIN (TOKEN.pin) and SO PIN (TOKEN.so.pin), 0600;
                       key URIs name the user PIN by pin-source=file:
    pki/               CA and signer certificates (PEM), and firmware-signing.pem: the public key
                       of the manufacturer's firmware-signing key (firmware token), which the
                       lab's station installs on the boards it manufactures
    tls/               TLS server certificates and their keys (PEM files)
    config/            masa.toml, cloud.toml, owner.toml (`pledgeforge ... serve --config`)
    db/                one SQLite database per server, and manufacturing.sqlite: the boards the
                       lab's manufacturing station provisioned
    tpm-maker/         the TPM maker's CA its boards' TPMs get EK certificates from
                       (`board run --tpm-maker D/tpm-maker`; root: tpm-maker-root.pem)
    logs/              one log per server
    swtpm/<serial>/    TPM state of each TPM pledge (one swtpm per pledge, as one TPM per board;
                       encrypted, reached through Unix sockets only its owner may open)
    pledges/<serial>/  each pledge's identity (identity.json), IDevID certificate, and the key of
                       its TPM state (0600); later its voucher, LDevID and result.json
    owner-config/      files behind additional-configuration-url
    fleets/<name>/     the key stores of a fleet's pledges (pledgeforge/fleet): a SoftHSM of its
                       own with its tokens and their PIN, and its TPMs; the pledges themselves
                       are in pledges/<serial>/ as any other
    lab.json           URLs, ports, trust anchors, SoftHSM, PIDs (rewritten atomically)

Every key URI of the lab carries the lab's SoftHSM configuration
(x-module-env=SOFTHSM2_CONF=...), so any process can use the lab's keys beside
keys of other SoftHSM instances; `reach` completes a URI that names a lab's token
and nothing more (`pledgeforge keys ... --lab D`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from pledgeforge.atomicfile import atomic_write
from pledgeforge.errors import EnvironmentFailure
from pledgeforge.hsm.errors import KeyUriError, TokenNotFoundError
from pledgeforge.hsm.keyuri import KeyUri, Pkcs11Uri
from pledgeforge.hsm.softhsm import SoftHsm, is_softhsm_module

LAB_FILE = "lab.json"
HOST = "127.0.0.1"
SUBDIRECTORIES = ("softhsm", "secrets", "pki", "tls", "config", "db", "logs", "swtpm", "pledges",
                  "owner-config", "tpm-maker")


class LabError(EnvironmentFailure):
    """The lab could not be created, started, stopped or used."""


class LabLayout:
    """A lab directory and what its lab.json says: names only, no servers, no keys."""

    def __init__(self, directory: Path, data: dict):
        self.dir = directory
        self.data = data
        self.softhsm = SoftHsm(directory / "softhsm")

    def save(self) -> None:
        atomic_write(self.dir / LAB_FILE, (json.dumps(self.data, indent=2, sort_keys=True) + "\n").encode())

    # ------------------------------------------------------------------ files

    def pin_file(self, token: str) -> Path:
        """The user PIN of one token: whoever may use that role's keys holds it."""
        return self.dir / "secrets" / f"{token}.pin"

    def so_pin_file(self, token: str) -> Path:
        """The security officer PIN of one token (it could reset the user PIN): used by nobody
        but the lab when it creates the token."""
        return self.dir / "secrets" / f"{token}.so.pin"

    def pki(self, name: str) -> Path:
        return self.dir / "pki" / f"{name}.crt"

    def tls_files(self, name: str) -> tuple[Path, Path]:
        """A TLS certificate (PEM chain) and its key file."""
        return self.dir / "tls" / f"{name}.crt", self.dir / "tls" / f"{name}.key"

    def config_path(self, role: str) -> Path:
        return self.dir / "config" / f"{role}.toml"

    def log_path(self, role: str) -> Path:
        return self.dir / "logs" / f"{role}.log"

    def database_url(self, role: str) -> str:
        return f"sqlite:///{self.dir / 'db' / f'{role}.sqlite'}"

    @property
    def manufacturing_db_url(self) -> str:
        """The lab station's manufacturing database."""
        return f"sqlite:///{self.dir / 'db' / 'manufacturing.sqlite'}"

    @property
    def tpm_maker_dir(self) -> Path:
        """The TPM maker CA of the lab's boards (made by manufacture.tpm_maker on first use)."""
        return self.dir / "tpm-maker"

    def pledge_dir(self, serial: str) -> Path:
        return self.dir / "pledges" / serial

    def key_uri(self, token: str, obj: str | None) -> Pkcs11Uri:
        """A key of the lab (or with obj None, its token), reached with that token's own PIN."""
        return self.softhsm.token_uri(token, pin_file=self.pin_file(token)).with_object(obj)

    @property
    def tokens(self) -> dict[str, Path]:
        """The lab's tokens (one per trust role) and their PIN files, as lab.json lists them."""
        return {token: Path(pin) for token, pin in self.data.get("softhsm", {}).get("tokens", {}).items()}

    def reach(self, uri: KeyUri) -> KeyUri:
        """`uri` as the lab reaches it. A pkcs11: URI of SoftHSM that gives no module
        configuration must name one of the lab's tokens; it gets the lab's SoftHSM
        configuration and, unless it names its own PIN source, that token's PIN file. Any other
        URI (a TPM key, a token of another configuration or module) is left as it is."""
        if not isinstance(uri, Pkcs11Uri) or uri.module_env or not is_softhsm_module(uri.module_path):
            return uri
        known = ", ".join(sorted(self.tokens))
        if uri.token is None:
            raise KeyUriError(f"name one of the lab's tokens with token=NAME in {uri} ({known})")
        pin_file = self.tokens.get(uri.token)
        if pin_file is None:
            raise TokenNotFoundError(f"the lab in {self.dir} has no token {uri.token!r} (its tokens: {known})")
        reached = uri.with_module_env(self.softhsm.module_env)
        if uri.pin_source is None and uri.pin_value is None:
            reached = replace(reached, pin_source=f"file:{pin_file}")
        return reached

    @property
    def firmware_key_uri(self) -> Pkcs11Uri:
        """The manufacturer's firmware-signing key (`pledgeforge image sign --key ...`)."""
        return self.key_uri("firmware", "firmware-signing")

    @property
    def firmware_key_pem_path(self) -> Path:
        return self.dir / "pki" / "firmware-signing.pem"

    def firmware_key_pem(self) -> bytes:
        """The public key firmware images are checked against (what boards get in flash)."""
        path = self.firmware_key_pem_path
        try:
            return path.read_bytes()
        except OSError as exc:
            raise LabError(f"cannot read the lab's firmware key {path} ({exc.strerror}); a lab made "
                           "before firmware signing has none: make a new lab directory") from None

    # ------------------------------------------------------------------ servers

    def port(self, role: str, endpoint: str = "main") -> int:
        return self.data["servers"][role]["ports"][endpoint]

    def url(self, role: str, endpoint: str = "main") -> str:
        """The origin of a server (endpoint "var": the cloud registrar's second identity)."""
        return f"https://{HOST}:{self.port(role, endpoint)}"

    @property
    def masa_url(self) -> str:
        """As the IDevIDs carry it (id-pe-masa-url: host:port)."""
        return f"{HOST}:{self.port('masa')}"

    def pid(self, role: str) -> int | None:
        return self.data["servers"][role].get("pid")
