"""Short-term delegation certificates, from the registrar node's side (STAR-like).

A registrar node keeps its voucher-request key in its own token. The signing
service, under a delegation with the delegation-certificate operation on the
owner CA key, certifies that key for a few hours at a time (id-kp-cmcRA, so
the MASA accepts the node's voucher-requests: the certificate chains to the
owner's domain CA). This client asks for the certificate with a CSR signed
by the node's key (proof of possession), writes it by atomic rename where
the registrar's configuration names its signing_cert (the registrar reads it
again when it changes), and asks again once two thirds of its lifetime have
passed. When the service refuses (the delegation ended or was withdrawn),
the certificate is left to expire: revocation is non-renewal.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cryptography import x509

from pledgeforge.atomicfile import atomic_write
from pledgeforge.errors import EnvironmentFailure, VerificationFailure
from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.errors import CertificateError, KeyStoreError
from pledgeforge.hsm.keystore import open_signer
from pledgeforge.hsm.keyuri import KeyUri, SignerUri
from pledgeforge.hsm.x509 import make_csr, to_pem

from .client import RemoteSigner, SigningRefused

log = logging.getLogger("pledgeforge.keyserver.renewal")

#: renew once this share of the certificate's lifetime has passed
RENEW_AT = 2 / 3
#: after a failed renewal, try again after this long (or sooner, before expiry)
RETRY_S = 60.0
MIN_RETRY_S = 1.0


class RenewalRefused(VerificationFailure):
    """The service refused to renew, and the certificate in place (if any) has expired."""


class RenewalUnreachable(EnvironmentFailure):
    """The service or the node's key could not be used, and the certificate in place (if any)
    has expired."""


@dataclass(frozen=True)
class Renewal:
    """Where the node's key is, whom to ask, and where the certificate goes."""

    service: SignerUri        # the owner CA key on the signing service
    key: KeyUri               # the node's own key
    subject: str
    cert_path: Path
    chain_path: Path | None = None

    def current(self) -> x509.Certificate | None:
        """The certificate in place, if it is one for this key."""
        if not self.cert_path.exists():
            return None
        try:
            cert = load_certificate_file(str(self.cert_path), "delegation certificate")[0]
        except CertificateError:
            return None
        return cert

    def written_at(self) -> dt.datetime:
        """When the certificate in place was written (its issuing CA backdates notBefore,
        so this is the start of the lifetime the service granted)."""
        try:
            mtime = self.cert_path.stat().st_mtime
        except OSError:
            return dt.datetime.now(dt.timezone.utc)
        return min(dt.datetime.fromtimestamp(mtime, dt.timezone.utc), dt.datetime.now(dt.timezone.utc))

    @staticmethod
    def due(cert: x509.Certificate | None, issued_at: dt.datetime) -> dt.datetime:
        """When `cert`, received at `issued_at`, should be replaced (now when there is none)."""
        if cert is None:
            return dt.datetime.now(dt.timezone.utc)
        end = cert.not_valid_after_utc
        return issued_at + (end - issued_at) * RENEW_AT

    def renew(self) -> x509.Certificate:
        """A new certificate for the node's key, written in place; SigningRefused if the service
        refuses, KeyStoreError if it or the node's key cannot be used."""
        signer = open_signer(self.key)
        csr = make_csr(signer, self.subject)
        service = RemoteSigner(self.service)
        try:
            cert, chain = service.delegation_certificate(csr)
        finally:
            service.close()
        if cert.public_key() != signer.public_key:
            raise KeyStoreError("the signing service certified another key than the node's")
        atomic_write(self.cert_path, to_pem(cert))
        if self.chain_path is not None:
            atomic_write(self.chain_path, b"".join(to_pem(c) for c in chain))
        log.info("delegation certificate %s renewed: valid until %s", self.cert_path,
                 cert.not_valid_after_utc.isoformat())
        return cert

    def run(self, stop: threading.Event,
            on_renewed: Callable[[x509.Certificate], None] | None = None) -> None:
        """Renew when due until `stop` is set (`on_renewed` is told of each new certificate);
        raise RenewalRefused (or RenewalUnreachable) once the certificate in place has expired
        and the service will not (or cannot) renew it."""
        cert = self.current()
        next_at = self.due(cert, self.written_at())
        while not stop.is_set():
            now = dt.datetime.now(dt.timezone.utc)
            if next_at > now:
                stop.wait((next_at - now).total_seconds())   # a timer; set() ends it at once
                continue
            try:
                new = self.renew()
            except (SigningRefused, KeyStoreError) as exc:
                log.warning("renewing %s failed: %s", self.cert_path, exc)
                if cert is None or cert.not_valid_after_utc <= now:
                    kind = RenewalRefused if isinstance(exc, SigningRefused) else RenewalUnreachable
                    raise kind(f"no delegation certificate for {self.subject}: the signing service "
                               f"did not renew it and the last one has expired ({exc})") from None
                left = (cert.not_valid_after_utc - now).total_seconds()
                next_at = now + dt.timedelta(seconds=max(MIN_RETRY_S, min(RETRY_S, left / 4)))
                continue
            if cert is not None and new.not_valid_after_utc <= cert.not_valid_after_utc:
                # The delegation ends there: asking before then cannot get anything later.
                next_at = new.not_valid_after_utc
            else:
                next_at = self.due(new, now)
            cert = new
            if on_renewed is not None:
                on_renewed(cert)
