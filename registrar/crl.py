"""The owner CA's certificate revocation list, served by the owner registrar at /crl.

`pledgeforge registrar revoke` marks LDevIDs revoked in the owner
registrar's database (db.py); the registrar publishes them in an RFC 5280 CRL
(DER, application/pkix-crl) signed with the owner CA's key in its HSM,
through the async signer so that signing never stalls the event loop. With
`[est] crl_url` configured, every LDevID issued carries that URL as its CRL
distribution point, so `openssl verify -crl_check` and any relying party
can find it.

The CRL is rebuilt only when the set of revoked LDevIDs changed or half of
its validity (`crl_days`) has passed; every other request gets the one
already signed, so fetching /crl costs anyone no HSM signature. Its cRLNumber
is the signing time in seconds, kept increasing within a process, so it grows
across restarts too (RFC 5280 5.2.3).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

from cryptography import x509

from pledgeforge.hsm.signer import Signer
from pledgeforge.hsm.x509 import issue_crl_async, to_der

from .db import REVOCATION_REASONS, OwnerStore

CRL_MEDIA_TYPE = "application/pkix-crl"
CRL_PATH = "/crl"

#: the reason codes the database keeps (RFC 5280 spelling, e.g. keyCompromise) -> cryptography's
REASONS = {name: x509.ReasonFlags(name) for name in REVOCATION_REASONS}


@dataclass(frozen=True)
class _Signed:
    revoked: tuple
    der: bytes
    number: int
    refresh_after: dt.datetime


class CrlPublisher:
    """The current CRL of one CA, rebuilt when needed (see the module docstring)."""

    def __init__(self, store: OwnerStore, ca_signer: Signer, ca_cert: x509.Certificate,
                 validity: dt.timedelta):
        self.store = store
        self.ca_signer = ca_signer
        self.ca_cert = ca_cert
        self.validity = validity
        self._signed: _Signed | None = None
        self._lock = asyncio.Lock()

    def _revoked(self) -> tuple:
        return tuple((int(r.certificate_serial, 16), r.revoked_at, REASONS[r.revocation_reason])
                     for r in self.store.revoked_ldevids())

    def _fresh(self, revoked: tuple, now: dt.datetime) -> bool:
        signed = self._signed
        return signed is not None and signed.revoked == revoked and now < signed.refresh_after

    async def current(self) -> bytes:
        """The CRL (DER) as it stands now."""
        revoked = self._revoked()
        now = dt.datetime.now(dt.timezone.utc)
        if self._fresh(revoked, now):
            return self._signed.der
        async with self._lock:  # one signature for the requests that arrive meanwhile
            revoked = self._revoked()
            now = dt.datetime.now(dt.timezone.utc)
            if self._fresh(revoked, now):
                return self._signed.der
            number = max(int(now.timestamp()), self._signed.number + 1 if self._signed else 0)
            crl = await issue_crl_async(self.ca_signer, self.ca_cert, revoked, number=number,
                                        this_update=now, next_update=now + self.validity)
            self._signed = _Signed(revoked, to_der(crl), number, now + self.validity / 2)
            return self._signed.der


__all__ = ["CrlPublisher", "CRL_MEDIA_TYPE", "CRL_PATH", "REASONS"]
