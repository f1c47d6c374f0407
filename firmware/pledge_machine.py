"""The pledge's BRSKI state machine, sans I/O.

The machine consumes events and returns actions, as h11 does for HTTP. It
never opens a socket, touches a key, reads a clock or draws randomness of its
own, so the same object runs behind an HTTPS driver, a serial console shell, a
fleet simulator and unit tests.

Protocol: RFC 8995 (BRSKI), RFC 7030 (EST) and the cloud registrar
(draft-friel-anima-brski-cloud-04 as refined by draft-ietf-anima-brski-cloud-20).
The pledge first asks the provisioned cloud registrar for a voucher; it
answers either

* 307 + Location (redirect flow): the pledge starts over at the owner
  registrar with a new voucher-request and a fresh nonce, over provisional TLS,
  verifies the voucher, checks the recorded server certificate against
  pinned-domain-cert, sends voucher_status there and enrolls there; or
* 200 + voucher carrying est-domain (est-domain flow): the pledge verifies it,
  sends voucher_status to the cloud registrar, then enrolls with the EST server
  named by est-domain, authenticated by pinned-domain-cert.

A voucher without est-domain means "enroll with the registrar that issued the
voucher"; that server is then checked against the pin exactly as in the
redirect flow. A voucher with est-domain from an owner registrar is honoured
the same way as from the cloud registrar.

Driver contract
---------------

1. ``machine = PledgeMachine(PledgeConfig(cloud_registrar_url=...))`` then
   ``action = machine.start()``.
2. Until ``action.is_terminal``: perform the action, then feed exactly one
   event of the types in ``action.expects`` with ``action = machine.handle(event)``.
   ``Cancel(reason)`` is accepted at any time and ends in ``Failed``.
3. The terminal actions are ``Enrolled`` (store the certificate and CA certs)
   and ``Failed`` (show ``reason``). Nothing is valid after them.
4. Actions and their answers:

   ``Connect(url, trust)``
       open TLS to the origin ``url`` with the IDevID as client certificate,
       replacing any previous connection. Answer ``ConnectOk(authenticated,
       server_cert_der)`` when the handshake completes, whether or not the
       server certificate validated against ``trust`` (that is what
       ``authenticated`` says; for ``TrustProvisional`` it says whether the
       built-in anchors validated it). ``ConnectFailed(reason)`` or
       ``Timeout()`` for network and TLS-protocol failures.
   ``BuildVoucherRequest(nonce, registrar_url, registrar_cert_der)``
       sign a pledge voucher-request with exactly this nonce:
       ``VoucherRequestBuilt(body)`` or ``KeyOperationFailed(reason)``.
   ``SendRequest(method, url, body, content_type, accept)``
       one HTTP request over the current connection, body as given (the
       machine already base64-encodes the CSR for /simpleenroll):
       ``Response(status, headers, body, received_at)``, ``ConnectFailed`` if
       the connection is gone or breaks, ``Timeout()``.
   ``VerifyVoucher(voucher, content_type, expected_nonce)``
       check media type, CMS signature, serial number and nonce:
       ``VoucherVerified(pinned_domain_cert_der, est_domain,
       additional_configuration_url)`` or ``VoucherRejected(reason)``.
   ``CheckServerAgainstPin(server_cert_der, pinned_domain_cert_der, server_name)``
       ``ServerMatchesPin()`` or ``ServerPinMismatch(reason)``.
   ``GenerateCsr(csr_attributes)``
       generate the LDevID key, build the CSR: ``CsrReady(csr_der)`` or
       ``KeyOperationFailed(reason)``.
   ``CheckCertificate(enroll_response, content_type, ca_certs)``
       ``CertificateAccepted(certificate_der)`` or ``CertificateRejected(reason)``.
   ``Sleep(seconds)``
       wait (the driver owns the clock; it may close the connection meanwhile),
       then ``TimerFired()``.

5. Every retry after a Sleep starts with a fresh ``Connect``, so a driver
   never has to keep a connection alive across waits.
6. The machine draws nonces from ``nonce_source(n) -> bytes`` (default
   ``secrets.token_bytes``); tests inject a deterministic source. A source that
   repeats a nonce raises ProtocolError.
7. ``machine.state`` is the current ``State``; ``machine.transitions`` lists
   every ``Transition(from_state, to_state, reason)`` so far: print
   ``transitions[n:]`` after each call to show every state passed.
8. Feeding an event that does not answer the pending action (or feeding
   anything before ``start()`` or after a terminal action) raises
   ``ProtocolError``, a bug in the driver; the machine is left unchanged.

Responses to a voucher-request
------------------------------

=====================  ==========================================================
200                    voucher: verify it
307                    followed only over a connection authenticated by the
                       built-in anchors (else: start over at the cloud
                       registrar); a loop or more than ``max_redirects`` hops
                       fails; each hop gets a new voucher-request and nonce
202                    wait min(Retry-After, ``accepted_wait_cap_s``), resend
401 + Retry-After      owner not known yet: wait up to ``owner_wait_cap_s``
400, 401 alone, 403,   failed, no retry: the answer will not change by asking
404, other 4xx/3xx     again (404 = the cloud registrar does not know this
                       pledge; the vendor must register it, then the board
                       is restarted)
5xx (503 overloaded)   wait Retry-After (up to ``overload_wait_cap_s``) or back off
timeout, conn. error   exponential backoff, ``max_transport_retries`` times
=====================  ==========================================================

A missing or unreadable Retry-After falls back to the exponential backoff.
Each budget is per request; when one runs out (and when a voucher or the
voucher server's certificate is rejected, or the cloud registrar is not
authenticated) the pledge starts over at the cloud registrar, at most
``max_restarts`` times, then fails. EST answers other than 200 (204/404 for
/csrattrs: no attributes; 202 for /simpleenroll: wait and resend) fail.
voucher_status and enrollstatus are telemetry: whatever comes back, the pledge
moves on. Every budget is finite, so the machine always ends in Enrolled or
Failed after a bounded number of events.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import functools
import ipaddress
import json
import math
import re
import secrets
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from urllib.parse import urljoin, urlsplit

from pledgeforge.errors import PledgeforgeError
from pledgeforge.hsm.wellknown import (BRSKI_PATH, CSRATTRS_MEDIA_TYPE, EST_PATH, JSON_MEDIA_TYPE,
                                       PKCS7_MEDIA_TYPE, PKCS10_MEDIA_TYPE, VOUCHER_MEDIA_TYPE)

from .pledge_events import (
    Action,
    BuildVoucherRequest,
    Cancel,
    CertificateAccepted,
    CertificateRejected,
    CheckCertificate,
    CheckServerAgainstPin,
    Connect,
    ConnectFailed,
    ConnectOk,
    CsrReady,
    Enrolled,
    Event,
    Failed,
    GenerateCsr,
    KeyOperationFailed,
    Response,
    SendRequest,
    ServerMatchesPin,
    ServerPinMismatch,
    Sleep,
    State,
    TimerFired,
    Timeout,
    Transition,
    Trust,
    TrustBuiltinAnchors,
    TrustPinnedDomainCert,
    TrustProvisional,
    VerifyVoucher,
    VoucherRejected,
    VoucherRequestBuilt,
    VoucherVerified,
)

__all__ = [
    # the machine
    "PledgeMachine", "PledgeConfig", "ProtocolError", "PledgeConfigError",
    "parse_retry_after", "server_origin", "resolve_location", "est_base_url",
    "BRSKI_PATH", "EST_PATH", "VOUCHER_MEDIA_TYPE",
    # re-exported vocabulary
    "State", "Transition", "Trust", "TrustBuiltinAnchors", "TrustProvisional",
    "TrustPinnedDomainCert", "Event", "Action",
    "ConnectOk", "ConnectFailed", "Timeout", "Response", "VoucherRequestBuilt",
    "VoucherVerified", "VoucherRejected", "ServerMatchesPin", "ServerPinMismatch",
    "CsrReady", "CertificateAccepted", "CertificateRejected", "KeyOperationFailed",
    "TimerFired", "Cancel",
    "Connect", "BuildVoucherRequest", "SendRequest", "VerifyVoucher",
    "CheckServerAgainstPin", "GenerateCsr", "CheckCertificate", "Sleep",
    "Enrolled", "Failed",
]

NONCE_BYTES = 16
_LONGEST_DELAY_S = 10**9  # far beyond any cap; keeps float arithmetic finite


class ProtocolError(RuntimeError):
    """The driver fed an event the machine cannot take now: a programming error."""


class PledgeConfigError(PledgeforgeError):
    """A PledgeConfig value is out of range."""


@dataclass(frozen=True)
class PledgeConfig:
    """What the pledge is provisioned with and how patient it is.

    Retry budgets count per request; `max_restarts` counts returns to the
    cloud registrar over the whole run. Durations are seconds.
    """

    cloud_registrar_url: str
    max_redirects: int = 5
    max_restarts: int = 3
    max_transport_retries: int = 3
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 300.0
    accepted_wait_cap_s: float = 60.0
    max_accepted_retries: int = 10
    owner_wait_cap_s: float = 6 * 3600.0
    max_owner_wait_retries: int = 24
    overload_wait_cap_s: float = 600.0
    max_overload_retries: int = 5

    def __post_init__(self) -> None:
        try:
            server_origin(self.cloud_registrar_url)
        except (ValueError, TypeError, AttributeError) as exc:
            raise PledgeConfigError(f"cloud_registrar_url: {exc}") from None
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("max_"):
                if type(value) is not int or value < 0:
                    raise PledgeConfigError(
                        f"{f.name} must be a whole number >= 0, not {value!r}"
                    )
            elif f.name.endswith("_s"):
                if (
                    type(value) not in (int, float)
                    or not math.isfinite(value)
                    or value <= 0
                ):
                    raise PledgeConfigError(
                        f"{f.name} must be a number of seconds > 0, not {value!r}"
                    )
        if self.backoff_max_s < self.backoff_initial_s:
            raise PledgeConfigError(
                f"backoff_max_s ({self.backoff_max_s}) must be at least "
                f"backoff_initial_s ({self.backoff_initial_s})"
            )


# --- URLs -------------------------------------------------------------------------

_HOSTNAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?")


def server_origin(url: str) -> str:
    """The normalised origin ``https://host:port`` of an https URL.

    Raises ValueError naming what is wrong (scheme, host, port).
    """
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != "https":
        raise ValueError(f"{url!r} is not an https:// URL")
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r} names no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port") from None
    if port == 0:
        raise ValueError(f"{url!r} has an invalid port")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{url!r} has an invalid IPv6 address") from None
        host = f"[{host}]"
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{url!r} has an invalid host name")
    return f"https://{host}:{port or 443}"


def _host(origin: str) -> str:
    """The host of a normalised origin, without IPv6 brackets."""
    return urlsplit(origin).hostname or ""


def resolve_location(request_url: str, location: str) -> str:
    """The registrar origin a 307 Location names, resolved against the request
    URL (RFC 9110 10.2.2). Its BRSKI endpoints are at ``BRSKI_PATH``."""
    reference = location.strip()
    # RFC 3986 5.2.2 strict: a reference with a scheme is taken as it is
    # (urljoin would quietly resolve "https:///x" against the request URL).
    if urlsplit(reference).scheme:
        return server_origin(reference)
    return server_origin(urljoin(request_url, reference))


def est_base_url(est_domain: str) -> str:
    """The EST base URL for a voucher's est-domain: a host[:port] or an https
    URL; without a path the EST endpoints are at ``EST_PATH`` (RFC 7030 3.2.2)."""
    value = est_domain.strip()
    if "://" not in value:
        value = f"https://{value}"
    origin = server_origin(value)
    path = urlsplit(value).path.rstrip("/")
    return origin + (path or EST_PATH)


# --- Retry-After ------------------------------------------------------------------

_DELTA_SECONDS = re.compile(r"[0-9]+")


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _parse_http_date(text: str) -> datetime | None:
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return None if moment is None else _as_utc(moment)


def parse_retry_after(value: str | None, reference: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (RFC 9110 10.2.3).

    delta-seconds is read directly; an HTTP-date is measured from `reference`
    (the response's own Date header is the best one: pledges often have no
    trustworthy clock). Returns None when the value is absent or unreadable,
    or is a date with no reference; the caller then uses its own backoff.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        # Count digits first: int() refuses very long strings.
        if len(text) > 10:
            return float(_LONGEST_DELAY_S)
        return float(min(int(text), _LONGEST_DELAY_S))
    if reference is None:
        return None
    moment = _parse_http_date(text)
    if moment is None:
        return None
    delta = (moment - _as_utc(reference)).total_seconds()
    return float(min(max(delta, 0.0), _LONGEST_DELAY_S))


def _reference_time(response: Response) -> datetime | None:
    date = response.header("date")
    if date is not None:
        moment = _parse_http_date(date)
        if moment is not None:
            return moment
    if response.received_at is not None:
        try:
            return datetime.fromtimestamp(response.received_at, timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    return None


# --- helpers ----------------------------------------------------------------------


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _status_text(response: Response) -> str:
    """'404 Not Found' plus the server's short explanation when it sent text."""
    try:
        text = f"{response.status} {HTTPStatus(response.status).phrase}"
    except ValueError:
        text = str(response.status)
    media = _media_type(response.content_type)
    if response.body and (media.startswith("text/") or media == JSON_MEDIA_TYPE):
        detail = " ".join(response.body[:200].decode("utf-8", "replace").split())
        if detail:
            text += f" ({detail})"
    return text


def _status_body(ok: bool, reason: str | None) -> bytes:
    """voucher_status / enrollstatus telemetry (RFC 8995 5.7 and 5.9.4)."""
    document: dict[str, object] = {"version": 1, "status": ok}
    if reason:
        document["reason"] = reason
    return json.dumps(document).encode()


@functools.cache
def _field_types(event_type: type) -> dict[str, object]:
    return typing.get_type_hints(event_type)


def _field_problem(event: Event) -> str | None:
    """Why an event's fields have the wrong types, or None: checked before
    anything changes so a bad event leaves the machine untouched."""
    hints = _field_types(type(event))
    for f in dataclasses.fields(event):
        hint = hints[f.name]
        options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        allowed = tuple(typing.get_origin(o) or o for o in options)
        if float in allowed:
            allowed += (int,)
        if not isinstance(getattr(event, f.name), allowed):
            value = getattr(event, f.name)
            return f"{type(event).__name__}.{f.name} must be {hint}, not {value!r}"
    return None


class _Step(enum.Enum):
    VOUCHER_REQUEST = "voucher-request"
    VOUCHER_STATUS = "voucher_status"
    CACERTS = "cacerts"
    CSRATTRS = "csrattrs"
    ENROLL = "simpleenroll"
    ENROLL_STATUS = "enrollstatus"


_TELEMETRY = (_Step.VOUCHER_STATUS, _Step.ENROLL_STATUS)

_EST_STATES = {
    _Step.CACERTS: State.EST_CACERTS,
    _Step.CSRATTRS: State.EST_CSRATTRS,
    _Step.ENROLL: State.EST_ENROLL,
    _Step.ENROLL_STATUS: State.EST_STATUS,
}


@dataclass
class _Exchange:
    """One request, how to reconnect for it, and its retry budgets."""

    step: _Step
    state: State  # the state while the request runs
    connect: Connect  # how to (re)connect for it after a wait
    connect_state: State  # the state while reconnecting
    request: SendRequest | None = None
    nonce: str | None = None  # voucher-request only
    built_for_cert: bytes | None = None  # the server cert the voucher-request names
    failure: str | None = None  # telemetry only: the failure being reported
    transport_failures: int = 0
    accepted_waits: int = 0
    owner_waits: int = 0
    overload_waits: int = 0


class PledgeMachine:
    """The pledge side of BRSKI + EST; see the module docstring for the contract."""

    def __init__(
        self,
        config: PledgeConfig,
        nonce_source: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.config = config
        self._nonce_source = nonce_source
        self._cloud = server_origin(config.cloud_registrar_url)
        self._state = State.IDLE
        self._transitions: list[Transition] = []
        self._pending: Action | None = None
        self._resume: Callable[[], Action] | None = None
        self._restarts = 0
        self._used_nonces: set[str] = set()
        self._exchange: _Exchange | None = None
        # the current connection
        self._server_cert = b""
        self._authenticated = False
        # per attempt (reset by _begin_attempt)
        self._visited: set[str] = set()
        self._redirects: list[str] = []
        self._voucher_server = ""
        self._voucher_server_authenticated = False
        self._voucher: VoucherVerified | None = None
        self._est_url = ""
        self._ca_certs = b""
        self._certificate = b""

    # --- public surface -------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def transitions(self) -> list[Transition]:
        return list(self._transitions)

    @property
    def pending(self) -> Action | None:
        """The action last returned (None before start())."""
        return self._pending

    @property
    def restarts(self) -> int:
        return self._restarts

    def start(self) -> Action:
        if self._state is not State.IDLE:
            raise ProtocolError("start() was already called on this machine")
        return self._begin_attempt(f"start at cloud registrar {self._cloud}")

    def handle(self, event: Event) -> Action:
        if self._state is State.IDLE:
            raise ProtocolError("call start() before handle()")
        if self._state.is_terminal:
            raise ProtocolError(
                f"the machine is {self._state.value}; it takes no more events"
            )
        if not isinstance(event, Event):
            raise ProtocolError(f"{event!r} is not a pledge event")
        problem = _field_problem(event)
        if problem:
            raise ProtocolError(problem)
        if isinstance(event, Cancel):
            return self._fail(f"cancelled: {event.reason}")
        pending = self._pending
        assert pending is not None
        if not isinstance(event, pending.expects):
            expected = ", ".join(t.__name__ for t in pending.expects)
            raise ProtocolError(
                f"{type(event).__name__} does not answer {type(pending).__name__} "
                f"(state {self._state.value}); expected {expected} or Cancel"
            )
        handler = next(self._HANDLERS[t] for t in type(event).__mro__ if t in self._HANDLERS)
        return handler(self, event)

    # --- bookkeeping ----------------------------------------------------------

    def _move(self, to_state: State, reason: str) -> None:
        if to_state is not self._state:
            self._transitions.append(Transition(self._state, to_state, reason))
            self._state = to_state

    def _emit(self, action: Action) -> Action:
        self._pending = action
        return action

    def _fail(self, reason: str) -> Action:
        last = self._state
        self._move(State.FAILED, reason)
        return self._emit(Failed(reason, last))

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff: initial, 2x, 4x ... capped at backoff_max_s."""
        cfg = self.config
        return float(min(cfg.backoff_initial_s * 2 ** min(attempt, 64), cfg.backoff_max_s))

    def _wait(self, seconds: float, reason: str, resume: Callable[[], Action]) -> Action:
        self._resume = resume
        self._move(State.WAITING, reason)
        return self._emit(Sleep(seconds, reason))

    def _restart(self, reason: str) -> Action:
        limit = self.config.max_restarts
        if self._restarts >= limit:
            return self._fail(f"{reason}; gave up after {limit} restarts")
        self._restarts += 1
        delay = self._backoff(self._restarts - 1)
        count = f"{self._restarts}/{limit}"
        return self._wait(
            delay,
            f"{reason}; starting over at the cloud registrar ({count}) in {delay:g} s",
            lambda: self._begin_attempt(f"restart {count} at cloud registrar {self._cloud}"),
        )

    def _fresh_nonce(self) -> str:
        raw = self._nonce_source(NONCE_BYTES)
        if not isinstance(raw, bytes) or not raw:
            raise ProtocolError(f"nonce_source returned {raw!r}, not random bytes")
        nonce = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        if nonce in self._used_nonces:
            raise ProtocolError(
                "nonce_source repeated a nonce; every voucher-request needs a fresh one"
            )
        self._used_nonces.add(nonce)
        return nonce

    def _reconnect(self) -> Action:
        ex = self._exchange
        self._move(ex.connect_state, f"reconnecting to {ex.connect.url} for {ex.step.value}")
        return self._emit(ex.connect)

    # --- voucher phase --------------------------------------------------------

    def _begin_attempt(self, reason: str) -> Action:
        self._visited = {self._cloud}
        self._redirects = []
        self._voucher = None
        self._voucher_server = ""
        self._ca_certs = b""
        self._certificate = b""
        return self._begin_voucher_hop(
            self._cloud, TrustBuiltinAnchors(), State.CLOUD_CONNECT, reason
        )

    def _begin_voucher_hop(
        self, origin: str, trust: Trust, connect_state: State, reason: str
    ) -> Action:
        connect = Connect(origin, trust)
        self._exchange = _Exchange(
            _Step.VOUCHER_REQUEST, State.VOUCHER_REQUEST, connect, connect_state
        )
        self._move(connect_state, reason)
        return self._emit(connect)

    def _on_connect_ok(self, event: ConnectOk) -> Action:
        connect: Connect = self._pending
        ex = self._exchange
        if not event.authenticated:
            if isinstance(connect.trust, TrustBuiltinAnchors):
                return self._restart(
                    f"cloud registrar {connect.url} is not authenticated "
                    "by the built-in trust anchors"
                )
            if isinstance(connect.trust, TrustPinnedDomainCert):
                return self._fail(
                    f"EST server {connect.url} does not match the voucher's pinned-domain-cert"
                )
        rebuild = ex.step is _Step.VOUCHER_REQUEST and (
            ex.request is None or ex.built_for_cert != event.server_cert_der
        )
        nonce = self._fresh_nonce() if rebuild else None
        self._server_cert = event.server_cert_der
        self._authenticated = event.authenticated
        how = "authenticated" if event.authenticated else "provisional, not authenticated"
        self._move(ex.state, f"connected to {connect.url} ({how})")
        if rebuild:
            ex.nonce = nonce
            ex.request = None
            return self._emit(BuildVoucherRequest(nonce, connect.url, event.server_cert_der))
        return self._emit(ex.request)

    def _on_voucher_request_built(self, event: VoucherRequestBuilt) -> Action:
        ex = self._exchange
        ex.built_for_cert = self._server_cert
        ex.request = SendRequest(
            "POST",
            f"{ex.connect.url}{BRSKI_PATH}/requestvoucher",
            event.body,
            content_type=VOUCHER_MEDIA_TYPE,
            accept=VOUCHER_MEDIA_TYPE,
        )
        return self._emit(ex.request)

    def _on_voucher_response(self, response: Response) -> Action:
        ex = self._exchange
        origin = ex.connect.url
        status = response.status
        if status == HTTPStatus.OK:
            self._voucher_server = origin
            self._voucher_server_authenticated = self._authenticated
            self._move(State.VOUCHER_RECEIVED, f"voucher from {origin}")
            return self._emit(
                VerifyVoucher(response.body, response.content_type, ex.nonce)
            )
        if status == HTTPStatus.TEMPORARY_REDIRECT:
            return self._on_redirect(response)
        if status == HTTPStatus.ACCEPTED:
            return self._retry_later(
                response, "accepted_waits", self.config.max_accepted_retries,
                self.config.accepted_wait_cap_s,
                f"{origin} accepted the voucher-request, voucher not ready yet",
                self._restart,
            )
        if status == HTTPStatus.UNAUTHORIZED and response.header("retry-after") is not None:
            return self._retry_later(
                response, "owner_waits", self.config.max_owner_wait_retries,
                self.config.owner_wait_cap_s,
                f"{origin} does not know this pledge's owner yet (401)",
                self._restart,
            )
        if status == HTTPStatus.BAD_REQUEST:
            return self._fail(
                f"{origin} rejected the voucher-request as malformed: {_status_text(response)}"
            )
        if status == HTTPStatus.UNAUTHORIZED:
            return self._fail(
                f"{origin} did not accept this pledge's IDevID: {_status_text(response)}"
            )
        if status == HTTPStatus.NOT_FOUND:
            return self._fail(
                f"{origin} does not know this pledge (unknown serial number): "
                f"{_status_text(response)}; the vendor must register it"
            )
        if 500 <= status <= 599:
            return self._retry_later(
                response, "overload_waits", self.config.max_overload_retries,
                self.config.overload_wait_cap_s,
                f"{origin} is unavailable: {_status_text(response)}",
                self._restart,
            )
        return self._fail(
            f"{origin} answered the voucher-request with {_status_text(response)}"
        )

    def _on_redirect(self, response: Response) -> Action:
        ex = self._exchange
        origin = ex.connect.url
        if not self._authenticated:
            return self._restart(
                f"307 from {origin} refused: it came over provisional TLS, and redirects "
                "are followed only from servers authenticated by the built-in trust anchors"
            )
        location = response.header("location")
        if not location or not location.strip():
            return self._fail(f"307 from {origin} carries no Location header")
        try:
            target = resolve_location(ex.request.url, location)
        except ValueError as exc:
            return self._fail(f"307 from {origin}: unusable Location {location!r}: {exc}")
        if target in self._visited:
            return self._fail(f"redirect loop: {origin} sends the pledge back to {target}")
        if len(self._redirects) >= self.config.max_redirects:
            return self._fail(
                f"more than {self.config.max_redirects} redirects "
                f"({' -> '.join([self._cloud, *self._redirects, target])})"
            )
        self._visited.add(target)
        self._redirects.append(target)
        self._move(State.REDIRECTED, f"307 from {origin} to {target}")
        return self._begin_voucher_hop(
            target, TrustProvisional(), State.PROVISIONAL_CONNECT,
            f"new voucher-request with a fresh nonce to {target}",
        )

    def _retry_later(
        self,
        response: Response,
        budget: str,
        limit: int,
        cap: float,
        reason: str,
        exhausted: Callable[[str], Action],
    ) -> Action:
        ex = self._exchange
        used = getattr(ex, budget)
        if used >= limit:
            return exhausted(f"{reason}; still so after {limit} retries")
        setattr(ex, budget, used + 1)
        asked = parse_retry_after(response.header("retry-after"), _reference_time(response))
        delay = min(asked if asked is not None else self._backoff(used), cap)
        return self._wait(
            delay, f"{reason}; retry {used + 1}/{limit} in {delay:g} s", self._reconnect
        )

    def _on_voucher_verified(self, event: VoucherVerified) -> Action:
        if not event.pinned_domain_cert_der:
            return self._reject_voucher("the voucher carries no pinned-domain-cert")
        est_url = f"{self._voucher_server}{EST_PATH}"
        if event.est_domain is not None:
            try:
                est_url = est_base_url(event.est_domain)
            except ValueError as exc:
                return self._reject_voucher(f"unusable est-domain {event.est_domain!r}: {exc}")
        self._voucher = event
        self._est_url = est_url
        self._move(State.VOUCHER_VERIFIED, f"voucher from {self._voucher_server} verified")
        # The server we enroll with, or one we report to before it is
        # authenticated, must prove it belongs to the pinned domain.
        if not self._voucher_server_authenticated or event.est_domain is None:
            return self._emit(
                CheckServerAgainstPin(
                    self._server_cert, event.pinned_domain_cert_der,
                    _host(self._voucher_server),
                )
            )
        return self._send_voucher_status(None)

    def _on_voucher_rejected(self, event: VoucherRejected) -> Action:
        return self._reject_voucher(f"voucher from {self._voucher_server} rejected: {event.reason}")

    def _on_server_matches_pin(self, event: ServerMatchesPin) -> Action:
        return self._send_voucher_status(None)

    def _on_server_pin_mismatch(self, event: ServerPinMismatch) -> Action:
        return self._reject_voucher(
            f"{self._voucher_server} does not match the voucher's "
            f"pinned-domain-cert: {event.reason}"
        )

    def _reject_voucher(self, reason: str) -> Action:
        self._move(State.VOUCHER_REJECTED, reason)
        return self._send_voucher_status(reason)

    def _send_voucher_status(self, failure: str | None) -> Action:
        """voucher_status goes to the server that issued the voucher: the
        owner registrar in the redirect flow, the cloud registrar in the
        est-domain flow."""
        previous = self._exchange
        ex = _Exchange(_Step.VOUCHER_STATUS, self._state, previous.connect, previous.connect_state)
        ex.failure = failure
        ex.request = SendRequest(
            "POST",
            f"{self._voucher_server}{BRSKI_PATH}/voucher_status",
            _status_body(failure is None, failure),
            content_type=JSON_MEDIA_TYPE,
        )
        self._exchange = ex
        return self._emit(ex.request)

    def _after_voucher_status(self, outcome: str) -> Action:
        ex = self._exchange
        if ex.failure is not None:
            return self._restart(ex.failure)
        return self._begin_est(outcome)

    # --- EST phase ------------------------------------------------------------

    def _est_exchange(self, step: _Step, request: SendRequest) -> _Exchange:
        previous = self._exchange
        return _Exchange(step, _EST_STATES[step], previous.connect, State.EST_CONNECT, request)

    def _est_get(self, step: _Step, accept: str) -> SendRequest:
        return SendRequest("GET", f"{self._est_url}/{step.value}", accept=accept)

    def _begin_est(self, outcome: str) -> Action:
        voucher = self._voucher
        pin = voucher.pinned_domain_cert_der
        cacerts = self._est_get(_Step.CACERTS, PKCS7_MEDIA_TYPE)
        origin = server_origin(self._est_url)
        connect = Connect(origin, TrustPinnedDomainCert(pin, _host(origin)))
        self._exchange = _Exchange(
            _Step.CACERTS, State.EST_CACERTS, connect, State.EST_CONNECT, cacerts
        )
        if voucher.est_domain is not None:
            self._move(
                State.EST_CONNECT,
                f"voucher_status {outcome}; EST server {origin} from est-domain, "
                "authenticated by pinned-domain-cert",
            )
            return self._emit(connect)
        # The voucher server itself enrolls us; its certificate already
        # matched the pin on this very connection.
        self._move(State.EST_CACERTS, f"voucher_status {outcome}; EST with {origin}")
        return self._emit(cacerts)

    def _on_est_response(self, response: Response) -> Action:
        ex = self._exchange
        status = response.status
        if ex.step is _Step.CACERTS and status == HTTPStatus.OK:
            self._ca_certs = response.body
            self._exchange = self._est_exchange(
                _Step.CSRATTRS, self._est_get(_Step.CSRATTRS, CSRATTRS_MEDIA_TYPE)
            )
            self._move(State.EST_CSRATTRS, f"{len(response.body)} bytes of CA certificates")
            return self._emit(self._exchange.request)
        if ex.step is _Step.CSRATTRS and status in (
            HTTPStatus.OK, HTTPStatus.NO_CONTENT, HTTPStatus.NOT_FOUND,
        ):
            # RFC 7030 4.5.2: 204 or 404 mean "no attributes required".
            attributes = response.body if status == HTTPStatus.OK else None
            detail = "CSR attributes received" if attributes is not None else "no CSR attributes"
            self._move(State.EST_ENROLL, f"{detail}; generating the LDevID key")
            return self._emit(GenerateCsr(attributes))
        if ex.step is _Step.ENROLL and status == HTTPStatus.OK:
            return self._emit(
                CheckCertificate(response.body, response.content_type, self._ca_certs)
            )
        if ex.step is _Step.ENROLL and status == HTTPStatus.ACCEPTED:
            return self._retry_later(
                response, "accepted_waits", self.config.max_accepted_retries,
                self.config.accepted_wait_cap_s,
                f"{ex.request.url} accepted the CSR, certificate not ready yet",
                self._fail,
            )
        return self._fail(f"EST {ex.step.value} at {ex.request.url}: {_status_text(response)}")

    def _on_csr_ready(self, event: CsrReady) -> Action:
        request = SendRequest(
            "POST",
            f"{self._est_url}/{_Step.ENROLL.value}",
            # RFC 7030 4.2.1 and RFC 8951: the PKCS#10 body travels base64.
            base64.encodebytes(event.csr_der),
            content_type=PKCS10_MEDIA_TYPE,
            accept=PKCS7_MEDIA_TYPE,
        )
        self._exchange = self._est_exchange(_Step.ENROLL, request)
        return self._emit(request)

    def _on_key_operation_failed(self, event: KeyOperationFailed) -> Action:
        what = (
            "signing the voucher-request"
            if isinstance(self._pending, BuildVoucherRequest)
            else "generating the LDevID key and CSR"
        )
        return self._fail(f"{what} failed: {event.reason}")

    def _on_certificate_accepted(self, event: CertificateAccepted) -> Action:
        self._certificate = event.certificate_der
        return self._send_enroll_status(None)

    def _on_certificate_rejected(self, event: CertificateRejected) -> Action:
        return self._send_enroll_status(f"issued certificate rejected: {event.reason}")

    def _send_enroll_status(self, failure: str | None) -> Action:
        origin = server_origin(self._est_url)
        request = SendRequest(
            "POST",
            f"{origin}{BRSKI_PATH}/enrollstatus",
            _status_body(failure is None, failure),
            content_type=JSON_MEDIA_TYPE,
        )
        self._exchange = self._est_exchange(_Step.ENROLL_STATUS, request)
        self._exchange.failure = failure
        self._move(
            State.EST_STATUS,
            "certificate accepted" if failure is None else failure,
        )
        return self._emit(request)

    def _after_enroll_status(self, outcome: str) -> Action:
        ex = self._exchange
        if ex.failure is not None:
            return self._fail(ex.failure)
        self._move(State.ENROLLED, f"enrollstatus {outcome}")
        voucher = self._voucher
        return self._emit(
            Enrolled(
                certificate_der=self._certificate,
                ca_certs=self._ca_certs,
                registrar_url=self._voucher_server,
                est_url=self._est_url,
                additional_configuration_url=voucher.additional_configuration_url,
                redirects=tuple(self._redirects),
            )
        )

    # --- events shared by both phases ----------------------------------------

    def _on_response(self, response: Response) -> Action:
        step = self._exchange.step
        if step is _Step.VOUCHER_REQUEST:
            return self._on_voucher_response(response)
        if step is _Step.VOUCHER_STATUS:
            return self._after_voucher_status(f"answered {_status_text(response)}")
        if step is _Step.ENROLL_STATUS:
            return self._after_enroll_status(f"answered {_status_text(response)}")
        return self._on_est_response(response)

    def _on_transport_failure(self, event: ConnectFailed | Timeout) -> Action:
        reason = event.reason if isinstance(event, ConnectFailed) else "timed out"
        ex = self._exchange
        pending = self._pending
        if ex.step in _TELEMETRY:
            outcome = f"not delivered ({reason})"
            if ex.step is _Step.VOUCHER_STATUS:
                return self._after_voucher_status(outcome)
            return self._after_enroll_status(outcome)
        what = (
            f"connecting to {pending.url}"
            if isinstance(pending, Connect)
            else f"{pending.method} {pending.url}"
        )
        limit = self.config.max_transport_retries
        if ex.transport_failures >= limit:
            return self._restart(f"{what} failed {limit + 1} times, last: {reason}")
        ex.transport_failures += 1
        delay = self._backoff(ex.transport_failures - 1)
        return self._wait(
            delay,
            f"{what} failed ({reason}); retry {ex.transport_failures}/{limit} in {delay:g} s",
            self._reconnect,
        )

    def _on_timer_fired(self, event: TimerFired) -> Action:
        resume, self._resume = self._resume, None
        return resume()

    _HANDLERS: dict[type, Callable[["PledgeMachine", typing.Any], Action]] = {
        ConnectOk: _on_connect_ok,
        ConnectFailed: _on_transport_failure,
        Timeout: _on_transport_failure,
        Response: _on_response,
        VoucherRequestBuilt: _on_voucher_request_built,
        VoucherVerified: _on_voucher_verified,
        VoucherRejected: _on_voucher_rejected,
        ServerMatchesPin: _on_server_matches_pin,
        ServerPinMismatch: _on_server_pin_mismatch,
        CsrReady: _on_csr_ready,
        CertificateAccepted: _on_certificate_accepted,
        CertificateRejected: _on_certificate_rejected,
        KeyOperationFailed: _on_key_operation_failed,
        TimerFired: _on_timer_fired,
    }
