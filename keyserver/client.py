"""The `signer+https:` key store: a key held by a signing service, used like any other key.

    signer+https://HOST:PORT/keys/NAME?client-cert=PATH&client-key=PATH&ca=PATH

The MASA, a registrar or the EST CA change one key URI in their
configuration and their keys live behind the service (hsm/keystore.py loads
this module for the scheme). The key is a `BuildingSigner`: `sign_cms` hands
it a voucher's or voucher-request's JSON and gets back the SignedData the
service built; `issue_from_csr` hands it the CSR and profile and gets back
the certificate; `issue_crl_async` hands it the revoked entries and gets back
the CRL. `sign_digest` asks for a raw signature, which the service gives
only where a delegation grants it.

A service that cannot be reached, or a key it cannot use, is a KeyStoreError
(an environment failure, as a missing token is); a request the service
refuses is a SigningRefused (a verification failure: the request was
checked and not granted).

Every request carries a fresh id and the time; a request whose answer was
lost (connection closed) is sent again with the same id, which the service
answers with its first answer without signing again. Requests go over one
kept-alive mutual-TLS connection per thread; every call has a timeout and at
most one retry.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import secrets
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pledgeforge.errors import VerificationFailure
from pledgeforge.hsm.chain import load_certificates
from pledgeforge.hsm.errors import KeyStoreError
from pledgeforge.hsm.keyuri import SignerUri
from pledgeforge.hsm.signer import BuildingSigner, KeyAlgorithm, Padding, check_digest_length
from pledgeforge.hsm.voucher import VOUCHER_KEY, VOUCHER_REQUEST_KEY, format_date, parse_json
from pledgeforge.hsm.x509 import to_pem

#: keys behind the service are made by its operator, not by its clients
ALGORITHMS: tuple[str, ...] = ()
#: how a kept-alive connection that the service closed between two requests fails
_CLOSED_MEANWHILE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                     ssl.SSLEOFError, ssl.SSLZeroReturnError)


class SigningRefused(VerificationFailure):
    """The service answered with a refusal: its status, its reason, its trace header."""

    def __init__(self, uri: SignerUri, status: int, reason: str, trace: str | None):
        super().__init__(f"the signing service {uri.origin} refused ({status}): {reason}")
        self.status = status
        self.reason = reason
        self.trace = trace


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    trace: str | None
    retry_after: str | None

    def json(self) -> dict:
        return json.loads(self.body)


def new_request(**members) -> dict:
    """A request body: a fresh id, the time now, and the members given."""
    now = dt.datetime.now(dt.timezone.utc)
    return {"id": secrets.token_hex(16), "timestamp": format_date(now), **members}


class ServiceConnection:
    """Mutual TLS to one signing service; one kept-alive connection per thread."""

    def __init__(self, uri: SignerUri):
        self.uri = uri
        try:
            self.context = ssl.create_default_context(cafile=uri.ca)
            self.context.load_cert_chain(uri.client_cert, uri.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise KeyStoreError(f"signer+https key {uri.key}: cannot use the client certificate "
                                f"{uri.client_cert}, its key or the CA {uri.ca}: {exc}") from None
        self._local = threading.local()

    def _connection(self) -> tuple[http.client.HTTPSConnection, bool]:
        """This thread's connection, and whether it served a request before."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        conn = http.client.HTTPSConnection(self.uri.host, self.uri.port, context=self.context,
                                           timeout=self.uri.timeout_s)
        self._local.conn = conn
        return conn, False

    def request(self, method: str, path: str, body: dict | None = None) -> Answer:
        """One request. A kept-alive connection the service closed meanwhile is replaced and
        the request sent once more (the same id: the service signs at most once)."""
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        while True:
            conn, reused = self._connection()
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as exc:   # ssl.SSLError is an OSError
                conn.close()
                self._local.conn = None
                if reused and isinstance(exc, _CLOSED_MEANWHILE):
                    continue
                raise KeyStoreError(f"the signing service {self.uri.origin} cannot be reached: "
                                    f"{type(exc).__name__}: {exc}") from None
            if response.will_close:
                conn.close()
                self._local.conn = None
            return Answer(response.status, payload, response.getheader("Signer-Trace"),
                          response.getheader("Retry-After"))

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        """A request that must succeed: its JSON answer, or SigningRefused."""
        answer = self.request(method, path, body)
        if answer.status != 200:
            reason = answer.body.decode("utf-8", "replace").strip()
            raise SigningRefused(self.uri, answer.status, reason, answer.trace)
        try:
            return answer.json()
        except ValueError:
            raise KeyStoreError(f"the signing service {self.uri.origin} answered with no JSON") from None

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()


class RemoteSigner(BuildingSigner):
    """A key held by the signing service."""

    def __init__(self, uri: SignerUri):
        self.uri = uri
        self.description = str(uri)
        self.connection = ServiceConnection(uri)
        info = self.connection.call("GET", uri.path)
        try:
            self._public_key = serialization.load_pem_public_key(info["public_key"].encode())
            self.certificate = load_certificates(info["certificate"].encode())[0]
            self.chain = [load_certificates(pem.encode())[0] for pem in info["chain"]]
            self.operations = tuple(info["operations"])
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyStoreError(f"the signing service {uri.origin} described key {uri.key} in a "
                                f"way this client does not read: {exc}") from None
        self._algorithm = KeyAlgorithm.of_public_key(self._public_key)
        self._executor = ThreadPoolExecutor(8, thread_name_prefix="signer-client")

    @property
    def public_key(self):
        return self._public_key

    @property
    def algorithm(self):
        return self._algorithm

    @property
    def executor(self):
        return self._executor

    def _operation(self, operation: str, **item) -> dict:
        return self.connection.call("POST", f"{self.uri.path}/{operation}", new_request(**item))

    def sign_digest(self, dgst, hash_name="sha256", pad=Padding.PKCS1V15):
        check_digest_length(dgst, hash_name)
        answer = self._operation("digest", digest=base64.b64encode(dgst).decode(), hash=hash_name)
        return base64.b64decode(answer["signature"])

    def build_signed_data(self, content: bytes, content_type: str) -> bytes:
        operation, member, obj = voucher_operation(content, content_type)
        return base64.b64decode(self._operation(operation, **{member: obj})["cms"])

    def build_certificate(self, csr, *, days: int, extended_key_usage: Sequence[str],
                          dns_names: Sequence[str], crl_urls: Sequence[str] = ()) -> x509.Certificate:
        answer = self._operation("certificate", csr=to_pem(csr).decode(), days=days,
                                 extended_key_usage=list(extended_key_usage),
                                 dns_names=list(dns_names), crl_urls=list(crl_urls))
        return load_certificates(answer["certificate"].encode())[0]

    def build_crl(self, revoked: Sequence[tuple], *, number: int,
                  validity: dt.timedelta) -> x509.CertificateRevocationList:
        entries = [{"serial": f"{serial:x}", "revoked_at": format_date(when),
                    "reason": None if reason is None else reason.value}
                   for serial, when, reason in revoked]
        answer = self._operation("crl", revoked=entries, number=number,
                                 validity_s=max(1, int(validity.total_seconds())))
        try:
            return x509.load_der_x509_crl(base64.b64decode(answer["crl"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyStoreError(f"the signing service {self.uri.origin} answered with no CRL: "
                                f"{exc}") from None

    def delegation_certificate(self, csr) -> tuple[x509.Certificate, list[x509.Certificate]]:
        """A short-term registrar certificate for the key of `csr`, and the chain above it."""
        answer = self._operation("delegation-certificate", csr=to_pem(csr).decode())
        return (load_certificates(answer["certificate"].encode())[0],
                [load_certificates(pem.encode())[0] for pem in answer["chain"]])

    def batch(self, operation: str, items: list[dict]) -> list[dict]:
        """Many items in one request: one result per item ({"status": ..., ...})."""
        return self.connection.call("POST", f"{self.uri.path}/{operation}/batch",
                                    new_request(items=items))["results"]

    def close(self) -> None:
        self.connection.close()
        self._executor.shutdown(wait=False)


def voucher_operation(content: bytes, content_type: str) -> tuple[str, str, Any]:
    """Which operation signs `content`: (operation, item member, the JSON object)."""
    if content_type not in ("voucher", "1.2.840.113549.1.9.16.1.40"):
        raise KeyStoreError("the signing service signs vouchers and voucher-requests "
                            f"(content type voucher), not content of type {content_type}")
    try:
        obj = parse_json(content, "the content to sign")
    except Exception as exc:
        raise KeyStoreError(f"the signing service signs vouchers and voucher-requests: {exc}") from None
    if isinstance(obj, dict) and list(obj) == [VOUCHER_KEY]:
        return "voucher", "voucher", obj
    if isinstance(obj, dict) and list(obj) == [VOUCHER_REQUEST_KEY]:
        return "voucher-request", "voucher-request", obj
    raise KeyStoreError("the signing service signs vouchers and voucher-requests; this content "
                        f"is neither ({VOUCHER_KEY} or {VOUCHER_REQUEST_KEY} expected)")


@dataclass(frozen=True)
class RemoteKeyInfo:
    label: str
    algorithm: str
    operations: tuple[str, ...]


# --------------------------------------------------------------------------- the key-store API

def open_signer(uri: SignerUri) -> RemoteSigner:
    return RemoteSigner(uri)


def generate(uri: SignerUri, algorithm) -> RemoteSigner:
    raise KeyStoreError("keys behind a signing service are generated by its operator in the "
                        "service's HSM; add the key to the service's configuration")


def list_keys(uri: SignerUri) -> list[RemoteKeyInfo]:
    signer = RemoteSigner(uri)
    try:
        return [RemoteKeyInfo(uri.key, signer.algorithm.value, signer.operations)]
    finally:
        signer.close()


def delete(uri: SignerUri) -> str:
    raise KeyStoreError("keys behind a signing service are deleted by its operator, not by its clients")
