"""Certificate path building to explicit trust anchors.

BRSKI trusts exactly the anchors it is given (a manufacturer CA, a
pinned-domain-cert), not a system store, and must be able to check a path at
a given time or with time checks off (the published test vectors expired
years ago). The rules are those `openssl verify -partial_chain` applies to
such paths: issuer name match, authorityKeyIdentifier against the issuer's
subjectKeyIdentifier, signature, CA basicConstraints on every issuer that is
not the anchor itself, validity of every certificate when asked.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from pledgeforge.errors import FileAccessError

from .errors import CertificateError, ExpiredCertificateError, UntrustedSignerError
from .verification_profile import MAX_CHAIN_DEPTH

#: What cryptography raises for a certificate it cannot read lazily (a name, an
#: extension, a key): the path cannot be judged, which is not "untrusted".
_UNREADABLE = (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension)


def _key_identifiers_agree(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """OpenSSL's X509_check_akid for key identifiers: when the certificate's
    authorityKeyIdentifier has a keyIdentifier and the issuer has a
    subjectKeyIdentifier, they must be equal (else X509_V_ERR_AKID_SKID_MISMATCH).
    The issuer's extensions are read only when the certificate names a key."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return True
    if aki is None:
        return True
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return True
    return aki == ski


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    # Signed by this key, yet OpenSSL does not take it as the issuer when the key
    # identifiers disagree; extensions are read only once the signature holds.
    return _key_identifiers_agree(cert, issuer)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        # X.509 v1 certificates predate extensions; OpenSSL treats them as CAs.
        return cert.version == x509.Version.v1


def _same(a: x509.Certificate, b: x509.Certificate) -> bool:
    return a.public_bytes(serialization.Encoding.DER) == b.public_bytes(serialization.Encoding.DER)


def _validity_problem(cert: x509.Certificate, at: dt.datetime) -> str | None:
    if at < cert.not_valid_before_utc:
        return f"certificate {cert.subject.rfc4514_string()} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%SZ}"
    if at > cert.not_valid_after_utc:
        return f"certificate {cert.subject.rfc4514_string()} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}"
    return None


def build_chain(
    leaf: x509.Certificate,
    anchors: Sequence[x509.Certificate],
    intermediates: Iterable[x509.Certificate] = (),
    *,
    at_time: dt.datetime | None = None,
    check_time: bool = True,
) -> list[x509.Certificate]:
    """The path [leaf, ..., anchor]; raise UntrustedSignerError / ExpiredCertificateError.

    A leaf that is itself one of the anchors is trusted directly (a pinned
    end-entity certificate). Among several paths, one valid in time wins; a
    path that only fails on time gives ExpiredCertificateError, so callers can
    tell "wrong signer" from "right signer, wrong time".
    """
    if not anchors:
        raise UntrustedSignerError("no trust anchors given")
    at = at_time or dt.datetime.now(dt.timezone.utc)
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.timezone.utc)
    pool = [c for c in intermediates if not _same(c, leaf)]
    time_problem: str | None = None

    def extend(path: list[x509.Certificate]) -> list[x509.Certificate] | None:
        nonlocal time_problem
        tip = path[-1]
        for anchor in anchors:
            if _same(tip, anchor) or _issued_by(tip, anchor):
                full = path if _same(tip, anchor) else path + [anchor]
                if not check_time:
                    return full
                problems = [p for p in (_validity_problem(c, at) for c in full) if p]
                if not problems:
                    return full
                time_problem = time_problem or problems[0]
        if len(path) >= MAX_CHAIN_DEPTH:
            return None
        for candidate in pool:
            if any(_same(candidate, c) for c in path):
                continue
            if _is_ca(candidate) and _issued_by(tip, candidate):
                found = extend(path + [candidate])
                if found:
                    return found
        return None

    try:
        found = extend([leaf])
        if found:
            return found
        if time_problem:
            raise ExpiredCertificateError(time_problem)
        leaf_name = leaf.subject.rfc4514_string() or "(empty subject)"
    except _UNREADABLE as exc:
        # A name, an extension or a key on the way that cryptography cannot read.
        raise CertificateError(f"a certificate on the path to the trust anchors cannot be read: "
                               f"{exc}") from None
    raise UntrustedSignerError(f"certificate {leaf_name} does not chain to any of "
                               f"{len(anchors)} trust anchor(s)")


def load_certificates(data: bytes, what: str = "certificate file") -> list[x509.Certificate]:
    """Every certificate in PEM (one or many) or a single DER certificate."""
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise CertificateError(f"{what} holds no readable certificate: {exc}") from None
    if not certs:
        raise CertificateError(f"{what} holds no certificate")
    return certs


def load_certificate_files(paths, what: str | None = None) -> list[x509.Certificate]:
    """Every certificate of every file (PEM bundles or DER), in order."""
    certs: list[x509.Certificate] = []
    for path in paths:
        certs += load_certificate_file(str(path), what)
    return certs


def load_certificate_file(path: str, what: str | None = None) -> list[x509.Certificate]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise FileAccessError(f"cannot read {what or 'certificate file'} {path}: {exc.strerror}") from None
    return load_certificates(data, f"{what or 'certificate file'} {path}")


class CertificateFile:
    """A certificate file that may be replaced while a server runs (a short-term certificate
    renewed beside it, written by atomic rename): read again whenever the file changed."""

    def __init__(self, path: str | os.PathLike, what: str | None = None):
        self.path = str(path)
        self.what = what
        self._stamp: tuple | None = None
        self._certificate: x509.Certificate | None = None
        self.current()

    def current(self) -> x509.Certificate:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise CertificateError(f"cannot read {self.what or 'certificate'} {self.path}: "
                                   f"{exc.strerror}") from None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp != self._stamp:
            self._certificate = load_certificate_file(self.path, self.what)[0]
            self._stamp = stamp
        return self._certificate
