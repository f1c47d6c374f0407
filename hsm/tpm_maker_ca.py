"""The TPM maker's CA: who vouches that an endorsement key belongs to a genuine TPM.

A real TPM leaves its factory with an EK certificate issued by its maker's CA;
a manufacturing station trusts a TPM because that certificate chains to a
maker root it is configured with. swtpm_setup plays the TPM factory through
swtpm's local CA (`swtpm_localca`): its configuration names a directory
holding the issuing key (`signkey.pem`), its certificate (`issuercert.pem`) and
the next serial number (`certserial`). When the key is missing, swtpm_localca
makes a CA of its own; `create_tpm_maker_ca` puts ours there first, laid out as
makers do:

    tpm-maker-root.pem  root CA certificate: what stations trust
    issuercert.pem      issuing CA certificate, signed by the root
    signkey.pem         issuing CA key (0600): what signs EK certificates

The root's key signs the issuing certificate and is then thrown away: nothing
more can be issued under the root, so nothing more needs guarding. The issuing
key is a software key on purpose: it belongs to the emulated TPM factory, not
to any party of the protocol. Several boards share one maker by sharing the
directory (`Swtpm.manufacture(ca_dir=...)`).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pledgeforge.atomicfile import atomic_write

from .chain import load_certificate_file
from .errors import CertificateError

ROOT_CERT = "tpm-maker-root.pem"
ISSUER_CERT = "issuercert.pem"
SIGNING_KEY = "signkey.pem"
CERT_SERIAL = "certserial"
#: the root swtpm_localca makes when it finds no CA (directories from before this module)
SWTPM_LOCALCA_ROOT = "swtpm-localca-rootca-cert.pem"
_LOCK = ".lock.tpm-maker-ca"

DEFAULT_MAKER = "pledgeforge TPM maker"
ROOT_DAYS = 365 * 30
ISSUER_DAYS = 365 * 20


@dataclass(frozen=True)
class TpmMakerCa:
    """A TPM maker CA directory, as swtpm_localca and a station see it."""

    directory: Path

    @property
    def root_path(self) -> Path:
        own = self.directory / ROOT_CERT
        legacy = self.directory / SWTPM_LOCALCA_ROOT
        return legacy if not own.exists() and legacy.exists() else own

    @property
    def issuer_path(self) -> Path:
        return self.directory / ISSUER_CERT

    @property
    def root(self) -> x509.Certificate:
        """The maker's root: the trust anchor a station is configured with."""
        return load_certificate_file(str(self.root_path), "TPM maker root certificate")[0]

    @property
    def issuer(self) -> x509.Certificate:
        """The issuing CA that signs EK certificates (an intermediate for path building)."""
        return load_certificate_file(str(self.issuer_path), "TPM maker issuing certificate")[0]


def _name(maker: str, role: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, maker),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"{maker} {role}")])


def _ca_certificate(subject: x509.Name, public_key, issuer: x509.Name, issuer_key, days: int,
                    path_length: int) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=True, crl_sign=True,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
    if issuer != subject:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    return builder.sign(issuer_key, hashes.SHA384())


def create_tpm_maker_ca(directory: str | os.PathLike, *, maker: str = DEFAULT_MAKER) -> TpmMakerCa:
    """Make the maker CA in `directory` unless one is there; return it either way.

    Safe when several processes manufacture boards into one directory at once:
    the first makes the CA under a lock, the others find it.
    """
    ca = TpmMakerCa(Path(directory).resolve())
    ca.directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(ca.directory / _LOCK, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if (ca.directory / SIGNING_KEY).exists():
            return ca
        root_key = ec.generate_private_key(ec.SECP384R1())
        issuer_key = ec.generate_private_key(ec.SECP256R1())
        root_name = _name(maker, "EK root CA")
        root = _ca_certificate(root_name, root_key.public_key(), root_name, root_key, ROOT_DAYS, 1)
        issuer = _ca_certificate(_name(maker, "EK issuing CA"), issuer_key.public_key(), root_name,
                                 root_key, ISSUER_DAYS, 0)
        pem = serialization.Encoding.PEM
        atomic_write(ca.directory / ROOT_CERT, root.public_bytes(pem))
        atomic_write(ca.directory / ISSUER_CERT, issuer.public_bytes(pem))
        atomic_write(ca.directory / CERT_SERIAL, b"1\n", 0o600)
        # Written last: its presence is what says "this directory holds a CA".
        atomic_write(ca.directory / SIGNING_KEY,
                     issuer_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()), 0o600)
        return ca
    finally:
        os.close(fd)  # releases the lock


def open_tpm_maker_ca(directory: str | os.PathLike) -> TpmMakerCa:
    """The maker CA already in `directory` (its root and issuing certificates are readable)."""
    ca = TpmMakerCa(Path(directory).resolve())
    if not (ca.directory / SIGNING_KEY).exists() or not ca.issuer_path.exists():
        raise CertificateError(f"{ca.directory} holds no TPM maker CA; create one with "
                               "create_tpm_maker_ca (Swtpm.manufacture does it on first use)")
    ca.root, ca.issuer  # read both now: an unreadable certificate is reported here
    return ca


__all__ = ["TpmMakerCa", "create_tpm_maker_ca", "open_tpm_maker_ca", "ROOT_CERT", "ISSUER_CERT",
           "SIGNING_KEY", "CERT_SERIAL"]
