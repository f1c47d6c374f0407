"""A local BRSKI lab in one directory: keys in SoftHSM, a MASA, a cloud and an owner registrar.

`Lab.up(dir)` creates what is missing (first time) and starts the servers
that are not running, each as a detached `python -m pledgeforge.registrar.server`
process on loopback (logs in dir/logs), then writes dir/lab.json. Later calls
reuse everything: keys, certificates, ports, databases. `lab.down()` stops
the servers (SIGTERM, bounded wait, then SIGKILL).

Layout of the directory:

    softhsm/           SoftHSM2 config and tokens: vendor (manufacturer CA, web CA),
                       masa (voucher key), owner (owner CA = EST CA, registrar
                       voucher-request key), cloud (cloud registrar voucher-request
                       key), pledges (IDevID/LDevID keys of PKCS#11 pledges)
    secrets/           user and SO PINs (0600); key URIs name them by pin-source=file:
    pki/               CA and signer certificates (PEM)
    tls/               TLS server certificates and their keys (PEM files)
    config/            masa.toml, cloud.toml, owner.toml (`pledgeforge ... serve --config`)
    db/                one SQLite database per server
    logs/              one log per server
    swtpm/<serial>/    TPM state of each TPM pledge (one swtpm per pledge, as one TPM per board;
                       encrypted, reached through Unix sockets only its owner may open)
    pledges/<serial>/  each pledge's IDevID certificate (and its TPM state's key, 0600)
    owner-config/      files behind additional-configuration-url
    lab.json           URLs, ports, trust anchors, SoftHSM, PIDs (rewritten atomically)

Trust in the lab: the manufacturer CA issues IDevIDs and the MASA's
voucher-signing certificate (so vouchers chain to the manufacturer CA, the
pledge's voucher anchor); a "web CA" stands for the public Web PKI and issues
the MASA's and the cloud registrar's TLS certificates (the cloud registrar's
TLS anchor is the pledge's built-in anchor) and the cloud registrar's
voucher-request certificate; the owner CA issues the owner registrar's
certificates and the LDevIDs, and is the pinned-domain-cert of every voucher.

The pledge side uses `Lab.load(dir)`, `provision_pledge(...)` and
`set_cloud_response(...)`; servers read their databases per request, so
registering while they run takes effect at once. Every key URI of the lab
carries the lab's SoftHSM configuration (x-module-env=SOFTHSM2_CONF=...), so
any process can use the lab's keys beside keys of other SoftHSM instances.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import secrets
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from pledgeforge.atomicfile import atomic_write
from pledgeforge.errors import PledgeforgeError
from pledgeforge.hsm import keystore as keystores
from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.cloud_responses import CloudResponse
from pledgeforge.hsm.errors import KeyNotFoundError
from pledgeforge.hsm.identity_names import IdentityNameError, check_serial_number
from pledgeforge.hsm.keyuri import Pkcs11Uri
from pledgeforge.hsm.signer import KeyAlgorithm, Signer
from pledgeforge.hsm.softhsm import SoftHsm
from pledgeforge.hsm.wellknown import REQUEST_VOUCHER
from pledgeforge.hsm.x509 import issue_certificate, issue_idevid, make_ca, to_pem

from .db import CloudStore, MasaStore, OwnerStore
from .web import HEALTH_PATH

LAB_FILE = "lab.json"
ROLES = ("masa", "owner", "cloud")
OWNER_NAME = "lab-owner"
HOST = "127.0.0.1"
TOKENS = ("vendor", "masa", "owner", "cloud", "pledges")
IDEVID_HANDLE = 0x81020000
ID_KP_CMC_RA = ObjectIdentifier("1.3.6.1.5.5.7.3.28")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class LabError(PledgeforgeError):
    """The lab could not be created, started, stopped or used."""


# --------------------------------------------------------------------------- processes

def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    if state in ("Z", "X"):  # exited, not yet reaped
        _reap(pid)
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _reap(pid: int) -> None:
    """Collect our own exited child (a no-op for processes started by another `lab up`)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def server_alive(pid: int | None, config: Path, module: str = "pledgeforge.registrar.server") -> bool:
    """True when `pid` is the lab server started with `config` (not a recycled PID)."""
    if not pid:
        return False
    cmd = _cmdline(pid)
    return bool(cmd) and str(config) in cmd and module in cmd


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait (bounded) until `pid` exits; True if it did. Waits on a pidfd, not a sleep."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        exited = bool(poller.poll(max(timeout, 0) * 1000))
    finally:
        os.close(fd)
    if exited:
        _reap(pid)
    return exited


def stop_process(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, a bounded wait, then SIGKILL."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if wait_for_exit(pid, timeout):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    wait_for_exit(pid, timeout)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- files

def _write_private(path: Path, data: bytes) -> None:
    atomic_write(path, data, mode=0o600)


def _toml_string(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _toml_list(values) -> str:
    return "[" + ", ".join(_toml_string(v) for v in values) + "]"


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


@dataclass
class UpReport:
    created: bool = False
    started: list[str] = field(default_factory=list)
    already_running: list[str] = field(default_factory=list)


class Lab:
    """A lab directory, as described by its lab.json."""

    def __init__(self, directory: Path, data: dict):
        self.dir = directory
        self.data = data
        self.softhsm = SoftHsm(directory / "softhsm")
        self._stores: dict[str, object] = {}

    # ------------------------------------------------------------------ paths and names

    @property
    def pin_file(self) -> Path:
        return self.dir / "secrets" / "user.pin"

    def pki(self, name: str) -> Path:
        return self.dir / "pki" / f"{name}.crt"

    def config_path(self, role: str) -> Path:
        return self.dir / "config" / f"{role}.toml"

    def log_path(self, role: str) -> Path:
        return self.dir / "logs" / f"{role}.log"

    def database_url(self, role: str) -> str:
        return f"sqlite:///{self.dir / 'db' / f'{role}.sqlite'}"

    def key_uri(self, token: str, obj: str) -> Pkcs11Uri:
        return self.softhsm.token_uri(token, pin_file=self.pin_file).with_object(obj)

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
        return cls(directory, data)

    @classmethod
    def up(cls, directory: str | os.PathLike, timeout_s: float = START_TIMEOUT_S,
           signer: str | None = None) -> tuple["Lab", UpReport]:
        """Create the lab if needed, start what is not running, return once all answer.

        signer: "keyless" or "short-term" puts the registrar-side keys behind a signing
        service (pledgeforge.keyserver.lab); chosen when the lab is created."""
        directory = Path(directory).expanduser().resolve()
        report = UpReport()
        if (directory / LAB_FILE).exists():
            lab = cls.load(directory)
            have = lab.data.get("signer", {}).get("mode")
            if signer is not None and signer != have:
                raise LabError(f"the lab in {directory} was created "
                               f"{'with a ' + have + ' signing service' if have else 'without a signing service'}; "
                               "create another lab for --signer " + signer)
        else:
            lab = _create(directory, signer)
            report.created = True
        lab._start(report, timeout_s)
        return lab, report

    def roles(self) -> list[str]:
        """Every server of the lab, in the order they start (a signing service first:
        the others open their keys through it)."""
        order = {role: i for i, role in enumerate(ROLES)}
        return sorted(self.data["servers"], key=lambda r: (self.data["servers"][r].get("stage", 1),
                                                            order.get(r, -1), r))

    def _module(self, role: str) -> str:
        return self.data["servers"][role].get("module", "pledgeforge.registrar.server")

    def alive(self, role: str) -> bool:
        return server_alive(self.pid(role), self.config_path(role), self._module(role))

    def _save(self) -> None:
        atomic_write(self.dir / LAB_FILE, (json.dumps(self.data, indent=2, sort_keys=True) + "\n").encode())

    def _start(self, report: UpReport, timeout_s: float) -> None:
        stages = sorted({self.data["servers"][r].get("stage", 1) for r in self.roles()})
        for stage in stages:
            pending: dict[str, subprocess.Popen] = {}
            for role in self.roles():
                if self.data["servers"][role].get("stage", 1) != stage:
                    continue
                if self.alive(role):
                    report.already_running.append(role)
                    continue
                pending[role] = self._spawn(role)
                self.data["servers"][role]["pid"] = pending[role].pid
            try:
                self._wait_answering(pending, timeout_s)
                if stage == 0 and self.data.get("signer"):
                    from pledgeforge.keyserver.lab import before_registrars

                    before_registrars(self)
            except (LabError, PledgeforgeError):
                for role, proc in pending.items():
                    stop_process(proc.pid)
                    self.data["servers"][role]["pid"] = None
                self._save()
                raise
            report.started += list(pending)
            self._save()

    def _spawn(self, role: str) -> subprocess.Popen:
        log = open(self.log_path(role), "ab")
        try:
            # A session of its own: the server outlives `lab up` and ignores its terminal.
            # Its environment already names the lab's SoftHSM, so the server loads
            # the module in-process rather than in a module host.
            return subprocess.Popen(
                [sys.executable, "-m", self._module(role), "--config", str(self.config_path(role))],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, cwd=self.dir,
                env=self.softhsm.env())
        finally:
            log.close()

    def _wait_answering(self, pending: dict[str, subprocess.Popen], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        waiting = dict(pending)
        last: dict[str, str] = {}
        while waiting:
            for role, proc in list(waiting.items()):
                if proc.poll() is not None:
                    raise LabError(f"the {role} server exited with status {proc.returncode}; "
                                   f"last lines of {self.log_path(role)}:\n{_log_tail(self.log_path(role))}")
                problem = self.probe(role)
                if problem is None:
                    del waiting[role]
                else:
                    last[role] = problem
            if not waiting:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                role = next(iter(waiting))
                raise LabError(f"the {role} server did not answer within {timeout_s:g} s "
                               f"({last.get(role)}); last lines of {self.log_path(role)}:\n"
                               f"{_log_tail(self.log_path(role))}")
            # Wait on one of the processes: returns at once if it dies.
            try:
                next(iter(waiting.values())).wait(timeout=min(0.1, remaining))
            except subprocess.TimeoutExpired:
                pass

    def probe(self, role: str, timeout: float = 2.0) -> str | None:
        """None when the server answers its health check over TLS; else what went wrong."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        anchor = "owner-ca" if role == "owner" else "web-ca"
        context.load_verify_locations(cafile=str(self.pki(anchor)))
        # The cloud registrar wants a manufacturer-issued client certificate (a server
        # that only knows other CAs says so in its entry).
        if self.data["servers"][role].get("probe_identity", True):
            context.load_cert_chain(str(self.dir / "tls" / "probe.crt"), str(self.dir / "tls" / "probe.key"))
        conn = http.client.HTTPSConnection(HOST, self.port(role), context=context, timeout=timeout)
        try:
            conn.request("GET", HEALTH_PATH)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                return f"health check answered {response.status}"
            if json.loads(body).get("role") != role:
                return f"port {self.port(role)} is served by something else"
            return None
        except (OSError, ssl.SSLError, http.client.HTTPException, ValueError) as exc:
            return f"{exc.__class__.__name__}: {exc}"
        finally:
            conn.close()

    def down(self, timeout_s: float = STOP_TIMEOUT_S) -> list[str]:
        """Stop the running servers; return which were stopped."""
        stopped = []
        if self.data.get("signer"):
            from pledgeforge.keyserver.lab import stop_renewal

            stopped += stop_renewal(self, timeout_s)
        for role in reversed(self.roles()):
            pid = self.pid(role)
            if self.alive(role):
                stop_process(pid, timeout_s)
                stopped.append(role)
            self.data["servers"][role]["pid"] = None
        self._save()
        for store in self._stores.values():
            store.engine.dispose()
        self._stores.clear()
        return stopped

    def status(self) -> dict:
        servers = {}
        for role in self.roles():
            pid = self.pid(role)
            alive = self.alive(role)
            servers[role] = {
                "url": self.url(role),
                "ports": self.data["servers"][role]["ports"],
                "pid": pid if alive else None,
                "running": alive,
                "answering": alive and self.probe(role) is None,
                "log": str(self.log_path(role)),
                "config": str(self.config_path(role)),
            }
        state = {"dir": str(self.dir), "servers": servers, "trust_anchors": self.data["trust_anchors"]}
        if self.data.get("signer"):
            from pledgeforge.keyserver.lab import signer_status

            state["signer"] = signer_status(self)
        return state

    # ------------------------------------------------------------------ databases

    def masa_store(self) -> MasaStore:
        return self._store("masa", MasaStore)

    def cloud_store(self) -> CloudStore:
        return self._store("cloud", CloudStore)

    def owner_store(self) -> OwnerStore:
        return self._store("owner", OwnerStore)

    def _store(self, role: str, kind):
        if role not in self._stores:
            self._stores[role] = kind(self.database_url(role))
        return self._stores[role]

    # ------------------------------------------------------------------ pledges

    def issue_idevid(self, public_key, serial: str) -> x509.Certificate:
        """An IDevID for `public_key`, issued by the manufacturer CA in SoftHSM, naming the MASA."""
        ca = keystores.open_signer(self.key_uri("vendor", "manufacturer-ca"))
        ca_cert = load_certificate_file(str(self.pki("manufacturer-ca")))[0]
        return issue_idevid(ca, ca_cert, public_key, serial, masa_url=self.masa_url)

    def register_pledge(self, serial: str, flow: str, additional_configuration: bytes | None = None) -> None:
        """Ownership for `flow`: the owner's pledge list, the MASA's record, the cloud's answer.

        redirect: the cloud registrar answers 307 to the owner registrar;
        est-domain: it answers with a voucher whose est-domain is the owner registrar.
        """
        if flow not in ("redirect", "est-domain"):
            raise LabError(f"flow must be redirect or est-domain, not {flow!r}")
        config_url = None
        if additional_configuration is not None:
            atomic_write(self.dir / "owner-config" / f"{serial}.json", additional_configuration)
            config_url = f"{self.url('owner')}/pledge-config/{serial}.json"
        self.owner_store().add_pledge(serial, flow)
        self.masa_store().set_device(serial, OWNER_NAME,
                                     est_domain=self.url("owner") if flow == "est-domain" else None,
                                     additional_configuration_url=config_url)
        if flow == "redirect":
            self.set_cloud_response(serial, CloudResponse.REDIRECT)
        else:
            self.set_cloud_response(serial, CloudResponse.VOUCHER)

    def set_cloud_response(self, serial: str, response: str, *, location: str | None = None,
                           retry_after: int | None = None, times: int | None = None,
                           then: str | None = None, endpoint: str = "main") -> None:
        """What the cloud registrar answers `serial`'s voucher-requests on `endpoint`.

        response and then: a CloudResponse or its name (pledgeforge.hsm.cloud_responses);
        a redirect's location defaults to the owner registrar, and accepted needs
        retry_after. With times=N and then=R it answers `response` N times, then R.
        Redirect chains and loops use the second endpoint "var": e.g. main -> var
        (location=lab.url("cloud", "var")) and var -> owner, or var -> main for a loop.
        """
        if CloudResponse.REDIRECT in (response, then):
            location = location or self.url("owner") + REQUEST_VOUCHER
        elif location is not None and "://" not in location:
            raise LabError(f"location {location!r} is not a URL")
        if location is not None and location.rstrip("/").count("/") == 2:
            location = location.rstrip("/") + REQUEST_VOUCHER
        if response == CloudResponse.ACCEPTED and retry_after is None:
            raise LabError("a 202 answer needs retry_after (RFC 7030 4.2.3)")
        self.cloud_store().set_response(serial, response, endpoint=endpoint, location=location,
                                        retry_after=retry_after, times=times, then=then)

    def set_cloud_overloaded(self, retry_after: int | None) -> None:
        """Answer every voucher-request with 503 + Retry-After; None switches that off."""
        self.cloud_store().set_overloaded(retry_after)

    def provision_pledge(self, serial: str | None = None, keystore: str = "pkcs11",
                         algorithm: str = "ec-p256", flow: str = "redirect", *,
                         additional_configuration: bytes | None = None) -> ProvisionedPledge:
        """A new pledge: IDevID key generated in swtpm or SoftHSM, IDevID issued by the
        manufacturer CA, ownership registered for `flow` (serial: generated when None)."""
        kind = keystore
        if kind not in ("tpm", "pkcs11"):
            raise LabError(f"keystore must be tpm or pkcs11, not {kind!r}")
        serial = serial or f"PF-{secrets.token_hex(4).upper()}"
        try:  # it names files here and keys in every server's database
            check_serial_number(serial)
        except IdentityNameError as exc:
            raise LabError(str(exc)) from None
        if flow not in ("redirect", "est-domain"):
            raise LabError(f"flow must be redirect or est-domain, not {flow!r}")
        algo = KeyAlgorithm.parse(algorithm)
        directory = self.dir / "pledges" / serial
        if (directory / "idevid.crt").exists():
            raise LabError(f"pledge {serial} is already provisioned in {directory}; choose another serial")
        tpm = None
        token_uri = None
        if kind == "pkcs11":
            uri = self.key_uri("pledges", f"idevid-{serial}")
            token_uri = str(self.key_uri("pledges", None))
        else:
            from pledgeforge.hsm.swtpm import Swtpm

            # The TPM state's key lives with the pledge, not with the TPM's state.
            tpm = Swtpm(self.dir / "swtpm" / serial, key_file=directory / "tpm-state.key").start()
            uri = tpm.key_uri(IDEVID_HANDLE)
        try:
            signer = keystores.generate_key(uri, algo)
            idevid = self.issue_idevid(signer.public_key, serial)
            atomic_write(directory / "idevid.crt", to_pem(idevid))
            self.register_pledge(serial, flow, additional_configuration)
        except BaseException:
            if tpm is not None:
                tpm.stop()
            raise
        return ProvisionedPledge(
            serial=serial, flow=flow, keystore=kind, algorithm=algo.value, key_uri=str(uri),
            idevid_cert=directory / "idevid.crt", manufacturer_ca=self.pki("manufacturer-ca"),
            cloud_anchor=self.pki("web-ca"), cloud_registrar_url=self.url("cloud"),
            owner_registrar_url=self.url("owner"), masa_url=self.masa_url, directory=directory,
            softhsm2_conf=self.softhsm.conf, token_uri=token_uri, swtpm=tpm)


# --------------------------------------------------------------------------- creation

def _ensure_key(uri: Pkcs11Uri, algorithm: str = "ec-p256") -> Signer:
    try:
        return keystores.open_signer(uri)
    except KeyNotFoundError:
        return keystores.generate_key(uri, algorithm)


def _ensure_certificate(path: Path, public_key, make) -> x509.Certificate:
    """Keep an existing certificate for this key; otherwise make and store one."""
    if path.exists():
        cert = load_certificate_file(str(path))[0]
        if cert.public_key() == public_key:
            return cert
    cert = make()
    atomic_write(path, to_pem(cert))
    return cert


def _ensure_tls(directory: Path, name: str, make_cert) -> None:
    """A software TLS key (TLS keys may be files) and its certificate."""
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    if key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        _write_private(key_path, key.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    _ensure_certificate(cert_path, key.public_key(), lambda: make_cert(key.public_key()))


def _secret(path: Path, length: int) -> str:
    if not path.exists():
        _write_private(path, (secrets.token_hex(length) + "\n").encode())
    return path.read_text().strip()


def _create(directory: Path, signer: str | None = None) -> Lab:
    for sub in ("softhsm", "secrets", "pki", "tls", "config", "db", "logs", "swtpm", "pledges",
                "owner-config"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    (directory / "secrets").chmod(0o700)
    pin = _secret(directory / "secrets" / "user.pin", 8)
    so_pin = _secret(directory / "secrets" / "so.pin", 8)
    data = {
        "version": 1,
        "servers": {role: {"ports": {"main": _free_port()}, "pid": None} for role in ROLES},
    }
    data["servers"]["cloud"]["ports"]["var"] = _free_port()
    lab = Lab(directory, data)
    lab.softhsm.ensure()
    for token in TOKENS:
        lab.softhsm.ensure_token(token, pin, so_pin)

    mfg = _ensure_key(lab.key_uri("vendor", "manufacturer-ca"))
    web = _ensure_key(lab.key_uri("vendor", "web-ca"))
    masa = _ensure_key(lab.key_uri("masa", "voucher-signer"))
    owner_ca = _ensure_key(lab.key_uri("owner", "owner-ca"))
    registrar = _ensure_key(lab.key_uri("owner", "registrar-signer"))
    cloud = _ensure_key(lab.key_uri("cloud", "registrar-signer"))

    mfg_cert = _ensure_certificate(lab.pki("manufacturer-ca"), mfg.public_key, lambda: make_ca(
        mfg, "CN=pledgeforge lab manufacturer CA,O=pledgeforge lab"))
    web_cert = _ensure_certificate(lab.pki("web-ca"), web.public_key, lambda: make_ca(
        web, "CN=pledgeforge lab web CA,O=pledgeforge lab"))
    owner_cert = _ensure_certificate(lab.pki("owner-ca"), owner_ca.public_key, lambda: make_ca(
        owner_ca, "CN=pledgeforge lab owner CA,O=pledgeforge lab owner"))
    _ensure_certificate(lab.pki("masa-signer"), masa.public_key, lambda: issue_certificate(
        mfg, mfg_cert, masa.public_key, "CN=pledgeforge lab MASA,O=pledgeforge lab", days=3650))
    ra = [ID_KP_CMC_RA]
    _ensure_certificate(lab.pki("registrar-signer"), registrar.public_key, lambda: issue_certificate(
        owner_ca, owner_cert, registrar.public_key, "CN=pledgeforge lab owner registrar,O=pledgeforge lab owner",
        days=3650, extended_key_usage=ra))
    _ensure_certificate(lab.pki("cloud-signer"), cloud.public_key, lambda: issue_certificate(
        web, web_cert, cloud.public_key, "CN=pledgeforge lab cloud registrar,O=pledgeforge lab",
        days=3650, extended_key_usage=ra))

    tls = directory / "tls"
    names = dict(dns_names=["localhost"], ip_addresses=[HOST])
    server = [ExtendedKeyUsageOID.SERVER_AUTH]
    _ensure_tls(tls, "masa", lambda pub: issue_certificate(
        web, web_cert, pub, "CN=localhost,O=pledgeforge lab MASA", key_usage="tls",
        extended_key_usage=server, **names))
    _ensure_tls(tls, "cloud", lambda pub: issue_certificate(
        web, web_cert, pub, "CN=localhost,O=pledgeforge lab cloud registrar", key_usage="tls",
        extended_key_usage=server, **names))
    _ensure_tls(tls, "registrar", lambda pub: issue_certificate(
        owner_ca, owner_cert, pub, "CN=localhost,O=pledgeforge lab owner registrar", key_usage="tls",
        extended_key_usage=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH, ID_KP_CMC_RA],
        **names))
    _ensure_tls(tls, "probe", lambda pub: issue_idevid(mfg, mfg_cert, pub, "lab-probe"))

    _write_configs(lab)
    lab.masa_store().add_owner(OWNER_NAME, to_pem(owner_cert).decode())
    data["softhsm"] = {"conf": str(lab.softhsm.conf), "module": lab.softhsm.module_path,
                       "pin_file": str(lab.pin_file), "tokens": list(TOKENS)}
    data["swtpm_dir"] = str(directory / "swtpm")
    data["trust_anchors"] = {
        "manufacturer_ca": str(lab.pki("manufacturer-ca")),
        "cloud_registrar_tls": str(lab.pki("web-ca")),
        "masa_tls": str(lab.pki("web-ca")),
        "owner_ca": str(lab.pki("owner-ca")),
    }
    data["owner"] = {"name": OWNER_NAME, "registrar_url": lab.url("owner"), "est_domain": lab.url("owner")}
    data["urls"] = {role: lab.url(role) for role in ROLES}
    data["urls"]["cloud_var"] = lab.url("cloud", "var")
    data["created_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    for role in ROLES:
        data["servers"][role].update(config=str(lab.config_path(role)), log=str(lab.log_path(role)),
                                     database=lab.database_url(role))
    if signer is not None:
        from pledgeforge.keyserver.lab import add_signing_service

        add_signing_service(lab, signer)
    lab._save()
    return lab


def _write_configs(lab: Lab) -> None:
    d = lab.dir
    q = _toml_string

    def server(role: str, tls: str, extra: str = "") -> str:
        return (f"[server]\nhost = {q(HOST)}\nport = {lab.port(role)}\n"
                f"tls_cert = {q(d / 'tls' / f'{tls}.crt')}\ntls_key = {q(d / 'tls' / f'{tls}.key')}\n{extra}\n"
                f"[database]\nurl = {q(lab.database_url(role))}\n")

    masa = ("# The lab's MASA (written by `pledgeforge lab up`).\nrole = \"masa\"\n\n"
            + server("masa", "masa") +
            f"\n[masa]\nsigning_key = {q(lab.key_uri('masa', 'voucher-signer'))}\n"
            f"signing_cert = {q(lab.pki('masa-signer'))}\n"
            f"manufacturer_cas = {_toml_list([lab.pki('manufacturer-ca')])}\n"
            f"cloud_registrars = [{{ name = \"lab-cloud\", anchor = {q(lab.pki('cloud-signer'))} }}]\n")

    def registrar(role: str, key_token: str, signer_cert: str, chain: list[Path]) -> str:
        return (f"\n[registrar]\nsigning_key = {q(lab.key_uri(key_token, 'registrar-signer'))}\n"
                f"signing_cert = {q(lab.pki(signer_cert))}\nsigning_chain = {_toml_list(chain)}\n"
                f"manufacturer_cas = {_toml_list([lab.pki('manufacturer-ca')])}\n"
                f"masa_anchors = {_toml_list([lab.pki('web-ca')])}\n"
                "masa_timeout_s = 10\nmasa_attempts = 3\n")

    cloud = ("# The lab's cloud registrar (written by `pledgeforge lab up`).\nrole = \"cloud\"\n\n"
             + server("cloud", "cloud", f"extra_ports = {{ var = {lab.port('cloud', 'var')} }}\n")
             + registrar("cloud", "cloud", "cloud-signer", [lab.pki("web-ca")]))
    owner = ("# The lab's owner registrar and EST server (written by `pledgeforge lab up`).\n"
             "role = \"owner\"\n\n" + server("owner", "registrar")
             + registrar("owner", "owner", "registrar-signer", [lab.pki("owner-ca")])
             + f"\n[est]\nca_key = {q(lab.key_uri('owner', 'owner-ca'))}\n"
             f"ca_cert = {q(lab.pki('owner-ca'))}\ncertificate_days = 365\n"
             f"additional_configuration_dir = {q(d / 'owner-config')}\n\n"
             "[est.csrattrs]\nsubject = [\"CN\", \"serialNumber\"]\n"
             "san_dns = [\"{serial}.pledges.lab.pledgeforge.test\"]\n"
             "signature_algorithm = \"ecdsa-with-SHA256\"\n")
    for role, text in (("masa", masa), ("cloud", cloud), ("owner", owner)):
        atomic_write(lab.config_path(role), text.encode())


__all__ = ["Lab", "LabError", "ProvisionedPledge", "UpReport", "server_alive", "stop_process"]
