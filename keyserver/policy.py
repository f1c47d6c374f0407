"""Who may have what signed: clients, and the delegations that give them rights to keys.

A delegation (in the sense of the CDNI HTTPS-delegation draft) names the
party that delegates a right, the delegate (a configured client), the key,
the operations, a scope and a time window:

    [[delegations]]
    name = "masa-vouchers"
    delegator = "manufacturer PKI officer"
    delegate = "masa"                      # a [clients.NAME]
    key = "masa"                           # a [keys.NAME]
    operations = ["voucher"]
    serials = ["PF-*"]                     # shell patterns on serial numbers
    domains = ["*.example.com"]            # ... on DNS names (est-domain, dNSName SANs)
    subjects = ["CN=registrar-*,O=Owner"]  # ... on certificate subjects (RFC 4514)
    not_before = 2025-01-01T00:00:00Z
    not_after = 2026-01-01T00:00:00Z

An empty pattern list matches nothing, so a delegation must list the scope
its operations need (the configuration reader refuses one that does not).
Everything here is pure: `Policy.grant` answers with the delegation that
covers a request, or raises Denied with the reason the client is told (a
batch finds its candidates once, `Policy.candidates`, and each item's
delegation among them, `grant_among`).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import re
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import NameOID

#: what the service does, as clients name it in the URL
VOUCHER = "voucher"
VOUCHER_REQUEST = "voucher-request"
CERTIFICATE = "certificate"
DELEGATION_CERTIFICATE = "delegation-certificate"
CRL = "crl"
DIGEST = "digest"
OPERATIONS = (VOUCHER, VOUCHER_REQUEST, CERTIFICATE, DELEGATION_CERTIFICATE, CRL, DIGEST)

#: which scope list each operation needs (checked when the configuration is read)
SCOPE_NEEDED = {VOUCHER: "serials", VOUCHER_REQUEST: "serials", CERTIFICATE: "subjects",
                DELEGATION_CERTIFICATE: "subjects"}


class Denied(Exception):
    """A request no delegation covers; the message is the reason given with the 403."""


@dataclass(frozen=True)
class Client:
    """A party with a TLS client certificate whose subject is `subject`, and its rate."""

    name: str
    subject: x509.Name
    rate_per_s: float
    burst: int


@dataclass(frozen=True)
class Scope:
    """What a request asserts, as far as delegations restrict it."""

    serial: str | None = None
    dns_names: tuple[str, ...] = ()
    subject: str | None = None   # RFC 4514


@dataclass(frozen=True)
class Delegation:
    name: str
    delegator: str
    delegate: str
    key: str
    operations: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    serials: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()
    #: lifetime of a short-term delegation certificate (never beyond not_after)
    certificate_hours: float = 8.0
    #: the longest lifetime of a certificate issued from a CSR
    certificate_days: int = 365
    #: extended key usages a certificate issued from a CSR may carry (dotted OIDs)
    extended_key_usages: tuple[str, ...] = ()

    def problem(self, scope: Scope, at: dt.datetime) -> str | None:
        """Why this delegation does not cover `scope` at `at`, or None when it does."""
        if at < self.not_before:
            return (f"delegation {self.name} is valid from {_when(self.not_before)}; "
                    f"it is now {_when(at)}")
        if at >= self.not_after:
            return f"delegation {self.name} expired on {_when(self.not_after)}"
        if scope.serial is not None and not _patterns(self.serials).match(scope.serial):
            return (f"serial number {scope.serial!r} is outside delegation {self.name} "
                    f"(serials {', '.join(self.serials) or 'none'})")
        for name in scope.dns_names:
            if not _patterns(self.domains, lower=True).match(name.lower()):
                return (f"DNS name {name!r} is outside delegation {self.name} "
                        f"(domains {', '.join(self.domains) or 'none'})")
        if scope.subject is not None and not _patterns(self.subjects).match(scope.subject):
            return (f"subject {scope.subject!r} is outside delegation {self.name} "
                    f"(subjects {', '.join(self.subjects) or 'none'})")
        return None


#: names RFC 4514 leaves as dotted OIDs, spelt as operators write them
_ATTRIBUTE_NAMES = {NameOID.SERIAL_NUMBER: "serialNumber", NameOID.EMAIL_ADDRESS: "emailAddress"}


def subject_text(name: x509.Name) -> str:
    """A subject as RFC 4514 text, as subject patterns are written: "CN=x,serialNumber=y"."""
    return name.rfc4514_string(_ATTRIBUTE_NAMES)


@functools.lru_cache(maxsize=1024)
def _patterns(patterns: tuple[str, ...], lower: bool = False) -> re.Pattern:
    """One regular expression matching what any of the shell `patterns` matches (fnmatchcase;
    `lower`: the patterns in lower case). An empty list matches nothing."""
    if not patterns:
        return re.compile(r"(?!)")
    return re.compile("|".join(f"(?:{fnmatch.translate(p.lower() if lower else p)})" for p in patterns))


def _when(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Policy:
    clients: dict[str, Client] = field(default_factory=dict)
    delegations: tuple[Delegation, ...] = ()

    def client_for(self, certificate: x509.Certificate) -> Client | None:
        """The configured client whose subject the (already verified) certificate carries."""
        for client in self.clients.values():
            if client.subject == certificate.subject:
                return client
        return None

    def delegations_of(self, client: Client, key: str) -> list[Delegation]:
        return [d for d in self.delegations if d.delegate == client.name and d.key == key]

    def grant(self, client: Client, key: str, operation: str, scope: Scope,
              at: dt.datetime) -> Delegation:
        """The first delegation that lets `client` do `operation` with `key` for `scope` at `at`."""
        return grant_among(self.candidates(client, key, operation), scope, at)

    def candidates(self, client: Client, key: str, operation: str) -> list[Delegation]:
        """The delegations that let `client` do `operation` with `key` at some time, for some
        scope (a batch's items share them); Denied when there are none."""
        mine = self.delegations_of(client, key)
        if not mine:
            raise Denied(f"client {client.name} has no delegation for key {key}")
        for_operation = [d for d in mine if operation in d.operations]
        if not for_operation:
            granted = sorted({op for d in mine for op in d.operations})
            raise Denied(f"no delegation lets client {client.name} {_verb(operation)} with key {key} "
                         f"(its delegations grant: {', '.join(granted)})")
        return for_operation


def grant_among(candidates: list[Delegation], scope: Scope, at: dt.datetime) -> Delegation:
    """The first of `candidates` (Policy.candidates) that covers `scope` at `at`."""
    problems = []
    for delegation in candidates:
        problem = delegation.problem(scope, at)
        if problem is None:
            return delegation
        problems.append(problem)
    others = f" (and {len(problems) - 1} other delegation(s) do not cover it either)" \
        if len(problems) > 1 else ""
    raise Denied(problems[0] + others)


def _verb(operation: str) -> str:
    return {VOUCHER: "sign vouchers", VOUCHER_REQUEST: "sign voucher-requests",
            CERTIFICATE: "issue certificates", DELEGATION_CERTIFICATE: "issue delegation certificates",
            CRL: "issue CRLs", DIGEST: "sign raw digests"}.get(operation, operation)
