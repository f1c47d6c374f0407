"""The vocabulary of the pledge state machine: states, events, actions.

Everything here is a frozen dataclass or an enum: plain values a driver can
log, compare and build by hand (from an HTTPS client, a serial console shell
or a test). `pledge_machine` holds the logic and documents the driver
contract; it re-exports every name below, so drivers import from there.

Each action that waits for a result names the events that may answer it in
`expects`; the terminal actions (`Enrolled`, `Failed`) expect nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import ClassVar


class State(enum.Enum):
    """Where the pledge is in BRSKI; every change is recorded as a Transition."""

    IDLE = "idle"
    CLOUD_CONNECT = "cloud-connect"
    VOUCHER_REQUEST = "voucher-request"
    REDIRECTED = "redirected"
    PROVISIONAL_CONNECT = "provisional-connect"
    VOUCHER_RECEIVED = "voucher-received"
    VOUCHER_VERIFIED = "voucher-verified"
    VOUCHER_REJECTED = "voucher-rejected"
    EST_CONNECT = "est-connect"
    EST_CACERTS = "est-cacerts"
    EST_CSRATTRS = "est-csrattrs"
    EST_ENROLL = "est-enroll"
    EST_STATUS = "est-status"
    WAITING = "waiting"
    ENROLLED = "enrolled"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in (State.ENROLLED, State.FAILED)


@dataclass(frozen=True)
class Transition:
    from_state: State
    to_state: State
    reason: str

    def __str__(self) -> str:
        return f"{self.from_state.value} -> {self.to_state.value}: {self.reason}"


def _short(value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, _Message):
        return value.summary()
    return repr(value)


class _Message:
    """Shared by events, actions and trust modes: a one-line summary for consoles."""

    def summary(self) -> str:
        parts = ", ".join(f"{f.name}={_short(getattr(self, f.name))}" for f in fields(self))
        return f"{type(self).__name__}({parts})"


# --- how the driver must authenticate the TLS server of a Connect ----------------


@dataclass(frozen=True)
class TrustBuiltinAnchors(_Message):
    """Validate the server chain against the pledge's built-in trust anchors."""


@dataclass(frozen=True)
class TrustProvisional(_Message):
    """Provisional TLS (RFC 8995 5.1): complete the handshake whatever the
    server presents, record its certificate, and report in ConnectOk whether
    the built-in trust anchors happened to validate it."""


@dataclass(frozen=True)
class TrustPinnedDomainCert(_Message):
    """Validate the server against the voucher's pinned-domain-cert: the pin is
    either the server's own certificate or a CA that issued its chain; when it
    is a CA, the server certificate must also match `server_name` (DNS-ID or
    IP address)."""

    pinned_domain_cert_der: bytes
    server_name: str


Trust = TrustBuiltinAnchors | TrustProvisional | TrustPinnedDomainCert


# --- events: what the driver feeds in ---------------------------------------------


class Event(_Message):
    """Base of everything `PledgeMachine.handle` accepts."""


@dataclass(frozen=True)
class ConnectOk(Event):
    """The TLS handshake completed. `authenticated` says whether the server
    validated against the trust the Connect asked for (built-in anchors for
    builtin and provisional, the pin for pinned). Certificate problems are
    reported here, never as ConnectFailed."""

    authenticated: bool
    server_cert_der: bytes


@dataclass(frozen=True)
class ConnectFailed(Event):
    """Network or TLS-protocol failure while connecting or exchanging a request."""

    reason: str


@dataclass(frozen=True)
class Timeout(Event):
    """The connect or request took longer than the driver's own timeout."""


@dataclass(frozen=True)
class Response(Event):
    """An HTTP response. `headers` accepts a mapping or (name, value) pairs and
    is stored as lower-cased names. `received_at` (POSIX seconds, driver clock)
    resolves a Retry-After HTTP-date when the response carries no Date header."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    received_at: float | None = None

    def __post_init__(self) -> None:
        raw = self.headers
        pairs: Iterable = raw.items() if isinstance(raw, Mapping) else raw
        object.__setattr__(
            self, "headers", tuple((str(k).lower(), str(v)) for k, v in pairs)
        )

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None

    @property
    def content_type(self) -> str | None:
        return self.header("content-type")


@dataclass(frozen=True)
class VoucherRequestBuilt(Event):
    """The signed voucher-request (CMS, application/voucher-cms+json)."""

    body: bytes


@dataclass(frozen=True)
class VoucherVerified(Event):
    """The voucher's signature, serial and nonce checked out. The verifier maps
    both `additional-configuration` (brski-cloud-04) and
    `additional-configuration-url` (rfc8366bis) to one field."""

    pinned_domain_cert_der: bytes
    est_domain: str | None = None
    additional_configuration_url: str | None = None


@dataclass(frozen=True)
class VoucherRejected(Event):
    reason: str


@dataclass(frozen=True)
class ServerMatchesPin(Event):
    """The recorded server certificate validates against pinned-domain-cert."""


@dataclass(frozen=True)
class ServerPinMismatch(Event):
    reason: str


@dataclass(frozen=True)
class CsrReady(Event):
    """A PKCS#10 CSR (DER) signed by the freshly generated LDevID key."""

    csr_der: bytes


@dataclass(frozen=True)
class CertificateAccepted(Event):
    """The issued certificate (DER) matches the CSR and chains to the CA certs."""

    certificate_der: bytes


@dataclass(frozen=True)
class CertificateRejected(Event):
    reason: str


@dataclass(frozen=True)
class KeyOperationFailed(Event):
    """Signing the voucher-request or generating the LDevID key/CSR failed."""

    reason: str


@dataclass(frozen=True)
class TimerFired(Event):
    """The Sleep asked for is over."""


@dataclass(frozen=True)
class Cancel(Event):
    """Stop now (operator request, power-off); accepted in every running state."""

    reason: str = "cancelled"


# --- actions: what the machine asks the driver to do ------------------------------


class Action(_Message):
    """Base of everything the machine returns. `expects` lists the events that
    answer it; empty for the terminal actions."""

    expects: ClassVar[tuple[type[Event], ...]] = ()

    @property
    def is_terminal(self) -> bool:
        return not self.expects


@dataclass(frozen=True)
class Connect(Action):
    """Open a TLS connection to `url` (an origin, https://host:port), replacing
    any previous connection, and authenticate the server as `trust` says. The
    pledge presents its IDevID as TLS client certificate."""

    expects: ClassVar = (ConnectOk, ConnectFailed, Timeout)
    url: str
    trust: Trust


@dataclass(frozen=True)
class BuildVoucherRequest(Action):
    """Build and sign (with the IDevID key) a pledge voucher-request carrying
    exactly this `nonce`. `registrar_cert_der` is the TLS server certificate of
    the registrar it goes to (proximity-registrar-cert, RFC 8995 3.4)."""

    expects: ClassVar = (VoucherRequestBuilt, KeyOperationFailed)
    nonce: str
    registrar_url: str
    registrar_cert_der: bytes


@dataclass(frozen=True)
class SendRequest(Action):
    """Send one HTTP request over the current connection; `body` is sent as is."""

    expects: ClassVar = (Response, ConnectFailed, Timeout)
    method: str
    url: str
    body: bytes = b""
    content_type: str | None = None
    accept: str | None = None


@dataclass(frozen=True)
class VerifyVoucher(Action):
    """Verify the voucher (CMS signature by the MASA, serial number of this
    pledge, nonce equal to `expected_nonce`) and extract its leaves."""

    expects: ClassVar = (VoucherVerified, VoucherRejected)
    voucher: bytes
    content_type: str | None
    expected_nonce: str


@dataclass(frozen=True)
class CheckServerAgainstPin(Action):
    """Validate the certificate the server presented on the current connection
    (recorded at ConnectOk) against the voucher's pinned-domain-cert."""

    expects: ClassVar = (ServerMatchesPin, ServerPinMismatch)
    server_cert_der: bytes
    pinned_domain_cert_der: bytes
    server_name: str


@dataclass(frozen=True)
class GenerateCsr(Action):
    """Generate the LDevID key and a CSR applying `csr_attributes` (the raw
    /csrattrs response body, base64 per RFC 7030; None when the server has none)."""

    expects: ClassVar = (CsrReady, KeyOperationFailed)
    csr_attributes: bytes | None


@dataclass(frozen=True)
class CheckCertificate(Action):
    """Check the /simpleenroll response (raw body, base64 PKCS#7 certs-only)
    against the CSR's key and the /cacerts response `ca_certs`."""

    expects: ClassVar = (CertificateAccepted, CertificateRejected)
    enroll_response: bytes
    content_type: str | None
    ca_certs: bytes


@dataclass(frozen=True)
class Sleep(Action):
    """Wait `seconds`, then feed TimerFired. The driver may close the connection."""

    expects: ClassVar = (TimerFired,)
    seconds: float
    reason: str = ""


@dataclass(frozen=True)
class Enrolled(Action):
    """Terminal: the pledge holds an LDevID. Store it with the CA certs."""

    certificate_der: bytes
    ca_certs: bytes
    registrar_url: str
    est_url: str
    additional_configuration_url: str | None = None
    redirects: tuple[str, ...] = ()


@dataclass(frozen=True)
class Failed(Action):
    """Terminal: enrollment failed for `reason`, last in `state`."""

    reason: str
    state: State
