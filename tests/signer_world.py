"""A signing service and its surroundings in a temp directory, for the tests.

Keys in a real SoftHSM2 (one token per trust role, as in production: MASA,
owner), a TLS certificate for the service, client certificates from a
clients' CA and one from a CA nobody configured, a configuration file
written from the test's clients and delegations, and the service itself as
a real process (`python -m pledgeforge.keyserver.server`) on a free
loopback port. Throwaway CAs that are no service key (the web CA, the
clients' CA) are software keys.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from pledgeforge.hsm import keystore
from pledgeforge.hsm.keyuri import SignerUri
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner
from pledgeforge.hsm.x509 import issue_certificate, make_ca, to_pem
from pledgeforge.keyserver.client import ServiceConnection
from pledgeforge.lab.processes import free_port as lab_free_port, stop_process

from fixtures_softhsm import SO_PIN, USER_PIN, Token

ID_KP_CMC_RA = ObjectIdentifier("1.3.6.1.5.5.7.3.28")
HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def toml_table(header: str, values: dict) -> str:
    return f"[{header}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()) + "\n"


_tokens = iter(range(1, 1_000_000))


def token_factory(softhsm, directory: Path):
    """Fresh tokens (unique labels) of the test run's SoftHSM, their PINs in 0600 files."""
    def make(prefix: str) -> Token:
        label = f"{prefix}{next(_tokens)}-{os.getpid()}"
        softhsm.ensure_token(label, USER_PIN, SO_PIN)
        pin_file = directory / f"{label}.pin"
        pin_file.write_text(USER_PIN + "\n")
        pin_file.chmod(0o600)
        return Token(softhsm, label, USER_PIN, pin_file)
    return make


def free_port() -> int:
    """A port outside the ephemeral range, which outgoing connections cannot take first."""
    return lab_free_port(HOST)


@dataclass
class Identity:
    """A TLS client identity as PEM files (what a client's configuration names)."""

    name: str
    cert: x509.Certificate
    cert_path: Path
    key_path: Path


@dataclass
class ServiceKey:
    name: str
    uri: str
    cert: x509.Certificate
    cert_path: Path
    chain_paths: list[Path] = field(default_factory=list)


def _write_key(path: Path, key: SoftwareSigner) -> None:
    path.write_bytes(key.private_key.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    path.chmod(0o600)


class SignerWorld:
    """Everything a signing service needs, and the service once started."""

    def __init__(self, directory: Path, softhsm):
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "pki").mkdir(exist_ok=True)
        (directory / "tls").mkdir(exist_ok=True)
        self.port = free_port()
        self.softhsm = softhsm
        # Throwaway CAs: web (the service's TLS), clients, and one nobody configured.
        self.web_ca_key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
        self.web_ca = make_ca(self.web_ca_key, "CN=signer test web CA")
        self.web_ca_path = self._pem("pki/web-ca.crt", self.web_ca)
        self.clients_ca_key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
        self.clients_ca = make_ca(self.clients_ca_key, "CN=signer test clients CA")
        self.clients_ca_path = self._pem("pki/clients-ca.crt", self.clients_ca)
        self.stranger_ca_key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
        self.stranger_ca = make_ca(self.stranger_ca_key, "CN=nobody's CA")
        tls_key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
        tls_cert = issue_certificate(self.web_ca_key, self.web_ca, tls_key.public_key,
                                     "CN=localhost,O=signer tests", key_usage="tls",
                                     extended_key_usage=[ExtendedKeyUsageOID.SERVER_AUTH],
                                     dns_names=["localhost"], ip_addresses=[HOST])
        self.tls_cert_path = self._pem("tls/signer.crt", tls_cert)
        self.tls_key_path = directory / "tls" / "signer.key"
        _write_key(self.tls_key_path, tls_key)

        # The service's keys, in SoftHSM: one token for the MASA, one for the owner.
        tokens = token_factory(softhsm, directory)
        masa_token, owner_token = tokens("svmasa"), tokens("svowner")
        self.manufacturer_key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
        self.manufacturer_ca = make_ca(self.manufacturer_key, "CN=signer test manufacturer CA")
        self.manufacturer_ca_path = self._pem("pki/manufacturer-ca.crt", self.manufacturer_ca)
        masa = keystore.generate_key(masa_token.uri("voucher-signer"), "ec-p256")
        masa_cert = issue_certificate(self.manufacturer_key, self.manufacturer_ca, masa.public_key,
                                      "CN=signer test MASA")
        owner_ca = keystore.generate_key(owner_token.uri("owner-ca"), "ec-p256")
        self.owner_ca = make_ca(owner_ca, "CN=signer test owner CA")
        registrar = keystore.generate_key(owner_token.uri("registrar-signer"), "ec-p256")
        registrar_cert = issue_certificate(owner_ca, self.owner_ca, registrar.public_key,
                                           "CN=signer test registrar", extended_key_usage=[ID_KP_CMC_RA])
        self.owner_ca_path = self._pem("pki/owner-ca.crt", self.owner_ca)
        self.keys = {
            "masa": ServiceKey("masa", masa_token.uri_text("voucher-signer"), masa_cert,
                               self._pem("pki/masa.crt", masa_cert), [self.manufacturer_ca_path]),
            "owner-ca": ServiceKey("owner-ca", owner_token.uri_text("owner-ca"), self.owner_ca,
                                   self.owner_ca_path),
            "registrar": ServiceKey("registrar", owner_token.uri_text("registrar-signer"),
                                    registrar_cert, self._pem("pki/registrar.crt", registrar_cert),
                                    [self.owner_ca_path]),
        }
        self.identities: dict[str, Identity] = {}
        self.config_path = directory / "signer.toml"
        self.database_path = directory / "db" / "signer.sqlite"
        self.log_path = directory / "signer.log"
        self.proc: subprocess.Popen | None = None

    def _pem(self, name: str, cert: x509.Certificate) -> Path:
        path = self.dir / name
        path.write_bytes(to_pem(cert))
        return path

    # ------------------------------------------------------------------ clients

    def identity(self, name: str, *, subject: str | None = None, stranger: bool = False) -> Identity:
        """A client certificate and key; `stranger`: issued by a CA the service does not know."""
        key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
        ca_key, ca = ((self.stranger_ca_key, self.stranger_ca) if stranger
                      else (self.clients_ca_key, self.clients_ca))
        cert = issue_certificate(ca_key, ca, key.public_key, subject or f"CN={name},O=signer tests",
                                 key_usage="tls", extended_key_usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
        cert_path = self.dir / "tls" / f"client-{name}.crt"
        key_path = self.dir / "tls" / f"client-{name}.key"
        cert_path.write_bytes(to_pem(cert))
        _write_key(key_path, key)
        identity = Identity(name, cert, cert_path, key_path)
        if not stranger:
            self.identities[name] = identity
        return identity

    def uri(self, key: str, identity: Identity) -> SignerUri:
        return SignerUri(host=HOST, port=self.port, key=key, client_cert=str(identity.cert_path),
                         client_key=str(identity.key_path), ca=str(self.web_ca_path))

    def connection(self, key: str, identity: Identity) -> ServiceConnection:
        return ServiceConnection(self.uri(key, identity))

    # ------------------------------------------------------------------ configuration

    def write_config(self, clients: dict[str, dict], delegations: list[dict], *, node: str = "signer-1",
                     workers: int = 1, window_s: int = 300, max_batch: int = 1000) -> Path:
        """clients: name -> {rate_per_s, burst} (subject: the identity's); delegations as in
        the configuration file."""
        text = f"node = {toml_value(node)}\n\n"
        text += toml_table("server", {"host": HOST, "port": self.port, "tls_cert": self.tls_cert_path,
                                      "tls_key": self.tls_key_path,
                                      "client_cas": [self.clients_ca_path]})
        text += toml_table("database", {"url": f"sqlite:///{self.database_path}"})
        text += toml_table("hsm", {"workers_per_token": workers})
        text += toml_table("requests", {"window_s": window_s, "max_batch": max_batch})
        for key in self.keys.values():
            text += toml_table(f"keys.{key.name}", {"uri": key.uri, "cert": key.cert_path,
                                                     "chain": key.chain_paths})
        for name, settings in clients.items():
            subject = self.identities[name].cert.subject.rfc4514_string()
            text += toml_table(f"clients.{name}", {"subject": subject, **settings})
        for delegation in delegations:
            text += toml_table("[delegations]", delegation)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)
        return self.config_path

    # ------------------------------------------------------------------ the process

    def start(self) -> "SignerWorld":
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pledgeforge.keyserver.server", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the signing service exited ({self.proc.returncode}):\n{self.log()}")
            if self.healthy():
                return self
            if time.monotonic() > deadline:
                raise AssertionError(f"the signing service did not answer in time:\n{self.log()}")
            try:
                self.proc.wait(timeout=0.1)   # returns at once if it dies
            except subprocess.TimeoutExpired:
                pass

    def healthy(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.web_ca_path))
        conn = http.client.HTTPSConnection(HOST, self.port, context=context, timeout=2)
        try:
            conn.request("GET", "/.well-known/pledgeforge/health")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def reload(self) -> None:
        os.kill(self.proc.pid, signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc.pid)
        self.proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"


def delegation(name: str, delegate: str, key: str, operations: list[str], *,
               delegator: str = "test security officer", hours_ago: float = 1, hours_left: float = 24,
               **scope) -> dict:
    now = dt.datetime.now(dt.timezone.utc)
    return {"name": name, "delegator": delegator, "delegate": delegate, "key": key,
            "operations": operations, "not_before": now - dt.timedelta(hours=hours_ago),
            "not_after": now + dt.timedelta(hours=hours_left), **scope}
