"""tlslite-ng key objects whose private half stays inside a `Signer`.

tlslite computes the bytes a TLS CertificateVerify signs and hands them to
the key object. These subclasses keep tlslite's own public-key code (it
checks every signature it makes before sending it) and route the private
operation to the Signer, so a TPM or PKCS#11 key signs the digest and the
secret never enters this process.

What tlslite 0.8.2 passes to the key (read from its source):

- ECDSA, TLS 1.3: `sign(digest, None, hash, None)` with the full digest of
  the hash bound to the curve (SHA-256 for P-256, SHA-384 for P-384).
- ECDSA, TLS 1.2: the same call, but the digest is first cut to
  `private_key.curve.baselen` bytes, as ECDSA itself would cut it. A SHA-384
  digest for a P-256 key therefore arrives as 32 bytes.
- RSA PKCS#1 v1.5 (TLS 1.2): `sign(DigestInfo, "pkcs1", None, 0)`: the
  DigestInfo prefix is already in front of the digest.
- RSA-PSS (TLS 1.3, or TLS 1.2 when chosen): `sign(digest, "pss", hash,
  salt_len)` with salt length = digest length.
"""

from __future__ import annotations

from dataclasses import dataclass

import ecdsa.curves
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils
from cryptography.hazmat.primitives.serialization import Encoding
from tlslite import X509, X509CertChain
from tlslite.utils.python_ecdsakey import Python_ECDSAKey
from tlslite.utils.python_rsakey import Python_RSAKey
from tlslite.utils.rsakey import RSAKey

from pledgeforge.hsm.errors import UnsupportedAlgorithmError
from pledgeforge.hsm.signer import KeyAlgorithm, Padding, Signer, SignatureSpec, digest, hash_algorithm

# python-ecdsa curve objects, as tlslite names them when it parses a certificate.
_CURVES = {
    KeyAlgorithm.EC_P256: ecdsa.curves.NIST256p,
    KeyAlgorithm.EC_P384: ecdsa.curves.NIST384p,
}
_HASH_BY_DIGEST_SIZE = {32: "sha256", 48: "sha384", 64: "sha512"}
_HASH_SIZES = {name: size for size, name in _HASH_BY_DIGEST_SIZE.items()}


@dataclass(frozen=True)
class _KeyInSigner:
    """Stands where tlslite expects a python-ecdsa SigningKey.

    tlslite only reads `.curve.baselen` from it (TLS 1.2 truncation); its
    truthiness is what `hasPrivateKey` reports.
    """

    curve: ecdsa.curves.Curve


class SignerECDSAKey(Python_ECDSAKey):
    """An ECDSA P-256/P-384 key for tlslite that signs through a Signer."""

    def __init__(self, signer: Signer):
        algorithm = signer.algorithm
        if algorithm not in _CURVES:
            raise UnsupportedAlgorithmError(f"{signer.description}: {algorithm.value} is not an ECDSA key")
        curve = _CURVES[algorithm]
        numbers = signer.public_key.public_numbers()
        super().__init__(numbers.x, numbers.y, curve.name)
        self.private_key = _KeyInSigner(curve)
        self.signer = signer
        #: What the last CertificateVerify signature used (for logs and tests).
        self.last_signature: SignatureSpec | None = None

    def hasPrivateKey(self) -> bool:
        return True

    def _sign(self, data, hAlg):
        # A digest shorter than its hash was truncated to the curve size by
        # tlslite (TLS 1.2). ECDSA over the truncated value equals ECDSA over
        # the full digest, so label it with the hash of that length; key
        # stores check that the digest length matches the hash named.
        hash_name = hAlg if _HASH_SIZES.get(hAlg) == len(data) else _HASH_BY_DIGEST_SIZE.get(len(data))
        if hash_name is None:
            raise UnsupportedAlgorithmError(
                f"{self.signer.description}: cannot sign a {len(data)}-byte {hAlg} digest")
        signature = self.signer.sign_digest(bytes(data), hash_name)
        self.last_signature = SignatureSpec(hAlg)  # the hash the TLS signature scheme names
        return bytearray(signature)

    def _hashAndSign(self, data, hAlg):
        return self._sign(digest(bytes(data), hAlg), hAlg)

    def _verify(self, signature, hash_bytes):
        # tlslite checks every signature it makes before sending it. The public key is the
        # Signer's `cryptography` key, which checks it in OpenSSL rather than in python-ecdsa
        # (a millisecond of each handshake). A digest cut to the curve size (TLS 1.2) is
        # checked as the hash of its length, as _sign signed it.
        hash_name = _HASH_BY_DIGEST_SIZE.get(len(hash_bytes))
        if hash_name is None:
            return False
        try:
            self.signer.public_key.verify(bytes(signature), bytes(hash_bytes),
                                          ec.ECDSA(utils.Prehashed(hash_algorithm(hash_name))))
        except InvalidSignature:
            return False
        return True


class SignerRSAKey(Python_RSAKey):
    """An RSA key for tlslite that signs (PKCS#1 v1.5 or PSS) through a Signer."""

    def __init__(self, signer: Signer):
        if not isinstance(signer.public_key, rsa.RSAPublicKey):
            raise UnsupportedAlgorithmError(f"{signer.description}: not an RSA key")
        numbers = signer.public_key.public_numbers()
        super().__init__(numbers.n, numbers.e)
        self.signer = signer
        self.last_signature: SignatureSpec | None = None

    def hasPrivateKey(self) -> bool:
        return True

    def sign(self, data, padding="pkcs1", hashAlg=None, saltLen=None):
        # tlslite passes every argument by position or by these keyword names.
        padding = (padding or "pkcs1").lower()
        data = bytes(data)
        if padding == "pss":
            if saltLen != _HASH_SIZES.get(hashAlg):
                raise UnsupportedAlgorithmError(
                    f"{self.signer.description}: RSA-PSS with salt length {saltLen} for {hashAlg}; "
                    "only salt length = digest length is supported")
            spec = SignatureSpec(hashAlg, Padding.PSS)
            dgst = data
        elif padding == "pkcs1":
            if hashAlg is not None:
                spec, dgst = SignatureSpec(hashAlg, Padding.PKCS1V15), data
            else:
                spec, dgst = _split_digest_info(data)
        else:
            raise UnsupportedAlgorithmError(f"{self.signer.description}: RSA padding {padding!r}")
        signature = self.signer.sign_digest(dgst, spec.hash_name, spec.padding)
        self.last_signature = spec
        return bytearray(signature)

    def _rawPrivateKeyOp(self, message):
        # Decryption or raw signing would need the secret exponent, which
        # never leaves the key store. TLS client authentication needs neither.
        raise UnsupportedAlgorithmError(f"{self.signer.description}: raw RSA private operation refused")


def _split_digest_info(data: bytes) -> tuple[SignatureSpec, bytes]:
    """(hash, digest) from a DER DigestInfo, as tlslite builds it for PKCS#1 v1.5."""
    for name, size in _HASH_SIZES.items():
        prefix = bytes(RSAKey.addPKCS1Prefix(bytearray(), name))
        if len(data) == len(prefix) + size and data.startswith(prefix):
            return SignatureSpec(name, Padding.PKCS1V15), data[len(prefix):]
    raise UnsupportedAlgorithmError("PKCS#1 v1.5 signature over an unsupported DigestInfo")


def tls_private_key(signer: Signer) -> SignerECDSAKey | SignerRSAKey:
    """The tlslite key object for `signer` (EC P-256/P-384 or RSA)."""
    if isinstance(signer.public_key, ec.EllipticCurvePublicKey):
        return SignerECDSAKey(signer)
    if isinstance(signer.public_key, rsa.RSAPublicKey):
        return SignerRSAKey(signer)
    raise UnsupportedAlgorithmError(f"{signer.description}: TLS client keys must be EC or RSA")


def tls_certificate_chain(certificates: list[x509.Certificate]) -> X509CertChain:
    """A tlslite certificate chain (leaf first) from cryptography certificates."""
    parsed = []
    for cert in certificates:
        tl_cert = X509()
        tl_cert.parseBinary(bytearray(cert.public_bytes(Encoding.DER)))
        parsed.append(tl_cert)
    return X509CertChain(parsed)


def preferred_signature_hashes(signer: Signer) -> list[str]:
    """Hashes in the order this key prefers them for CertificateVerify.

    The hash matching the key's strength comes first (TLS 1.3 requires it
    for ECDSA; for TLS 1.2 it keeps the digest untruncated).
    """
    first = signer.algorithm.default_hash
    return [first] + [name for name in _HASH_SIZES if name != first]
