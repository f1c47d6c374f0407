"""The one signing interface every private key sits behind.

A `Signer` knows its public key and algorithm and signs a digest. CMS, X.509,
CSRs and TLS CertificateVerify are all built on `sign_digest`, so the same
code signs with a TPM, a PKCS#11 token or (for throwaway test CAs only) a
software key.

Servers sign with `sign_digest_async`: the blocking key-store call runs on
the signer's executor (one worker per token or TPM where the backend must
serialise), so an event loop never waits on a key. Code that builds what is
signed (CMS, certificates) is written once as `SigningSteps`, a generator that
yields what to sign and receives the signature; `signing_function` and
`async_signing_function` turn it into the blocking and the awaitable entry
point.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import hashlib
from abc import ABC, abstractmethod
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Awaitable, Callable, Generator, Sequence, TypeVar

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from .errors import UnsupportedAlgorithmError



def _in_executor(executor: Executor | None, fn: Callable, *args):
    """`fn(*args)` on `executor`, awaited from the running event loop. asyncio is imported
    here, where a loop already runs, rather than with this module, which every process that
    holds a key loads (a PKCS#11 module host, each CLI command) and most never run a loop."""
    import asyncio

    return asyncio.get_running_loop().run_in_executor(executor, fn, *args)

class KeyAlgorithm(enum.Enum):
    """Key types every key store of pledgeforge generates. The value is the CLI spelling.

    A key store may offer more (`keystore.algorithms(scheme)` lists what one
    generates); such keys are described by `OtherKeyAlgorithm`, which answers
    the same questions (`value`, `is_ec`, `curve`, `default_hash`).
    """

    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"

    @classmethod
    def parse(cls, text: str) -> "KeyAlgorithm":
        try:
            return cls(text.lower())
        except ValueError:
            names = ", ".join(a.value for a in cls)
            raise UnsupportedAlgorithmError(
                f"unknown key algorithm {text!r}; choose one of {names}"
            ) from None

    @classmethod
    def of_public_key(cls, public_key) -> "KeyAlgorithm | OtherKeyAlgorithm":
        """The algorithm of an EC or RSA public key; keys outside this enum get an OtherKeyAlgorithm."""
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            return algorithm_named(_ec_spelling(public_key.curve.name))
        if isinstance(public_key, rsa.RSAPublicKey):
            return algorithm_named(f"rsa-{public_key.key_size}")
        raise UnsupportedAlgorithmError(f"unsupported public key {public_key!r}")

    @property
    def is_ec(self) -> bool:
        return self in (KeyAlgorithm.EC_P256, KeyAlgorithm.EC_P384)

    @property
    def curve(self) -> ec.EllipticCurve:
        if self is KeyAlgorithm.EC_P256:
            return ec.SECP256R1()
        if self is KeyAlgorithm.EC_P384:
            return ec.SECP384R1()
        raise UnsupportedAlgorithmError(f"{self.value} is not an EC algorithm")

    @property
    def rsa_bits(self) -> int:
        return {KeyAlgorithm.RSA_2048: 2048, KeyAlgorithm.RSA_3072: 3072}[self]

    @property
    def default_hash(self) -> str:
        """The hash that matches the key's strength (SHA-384 for P-384)."""
        return "sha384" if self is KeyAlgorithm.EC_P384 else "sha256"


@dataclass(frozen=True)
class OtherKeyAlgorithm:
    """An EC curve or RSA size outside KeyAlgorithm that some key store offers (e.g. ec-p521)."""

    value: str
    is_ec: bool
    rsa_bits: int = 0
    curve_name: str = ""

    @property
    def curve(self) -> ec.EllipticCurve:
        if not self.is_ec:
            raise UnsupportedAlgorithmError(f"{self.value} is not an EC algorithm")
        return _CURVES[self.curve_name]()

    @property
    def default_hash(self) -> str:
        """SHA-512 for curves above 384 bits, SHA-384 for above 256, else SHA-256."""
        bits = self.curve.key_size if self.is_ec else 0
        return "sha512" if bits > 384 else "sha384" if bits > 256 else "sha256"


# Curves a key store may offer, by their SECG/RFC 5639 names. NIST curves keep
# their short CLI spelling; the others are spelt ec-NAME.
_CURVES = {"secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1, "secp521r1": ec.SECP521R1,
           "secp256k1": ec.SECP256K1, "brainpoolP256r1": ec.BrainpoolP256R1,
           "brainpoolP384r1": ec.BrainpoolP384R1, "brainpoolP512r1": ec.BrainpoolP512R1}
_NIST_SPELLINGS = {"secp256r1": "ec-p256", "secp384r1": "ec-p384", "secp521r1": "ec-p521"}


def _ec_spelling(curve_name: str) -> str:
    return _NIST_SPELLINGS.get(curve_name, f"ec-{curve_name}")


def algorithm_named(text: str) -> "KeyAlgorithm | OtherKeyAlgorithm":
    """The algorithm a CLI spelling names: a KeyAlgorithm when it is one, else an
    OtherKeyAlgorithm for another curve of _CURVES or RSA size.

    Whether a key store can generate it is the key store's answer, not this one's.
    """
    text = text.strip()
    try:
        return KeyAlgorithm(text.lower())
    except ValueError:
        pass
    family, _, rest = text.partition("-")
    family = family.lower()
    if family == "ec" and rest:
        by_spelling = {v: k for k, v in _NIST_SPELLINGS.items()}
        curve_name = by_spelling.get(text.lower()) or next(
            (name for name in _CURVES if name.lower() == rest.lower()), None)
        if curve_name is not None:
            return OtherKeyAlgorithm(_ec_spelling(curve_name), is_ec=True, curve_name=curve_name)
    if family == "rsa" and rest.isascii() and rest.isdigit() and int(rest) >= 1024:
        return OtherKeyAlgorithm(text, is_ec=False, rsa_bits=int(rest))
    names = ", ".join(a.value for a in KeyAlgorithm)
    raise UnsupportedAlgorithmError(f"unknown key algorithm {text!r}; choose one of {names} "
                                    "(or ec-CURVE / rsa-BITS where the key store offers it)")


class Padding(enum.Enum):
    """RSA signature padding; ignored for EC keys."""

    PKCS1V15 = "pkcs1v15"
    PSS = "pss"


_HASHES = {
    "sha256": (hashes.SHA256, 32),
    "sha384": (hashes.SHA384, 48),
    "sha512": (hashes.SHA512, 64),
}


def hash_algorithm(name: str) -> hashes.HashAlgorithm:
    """The cryptography hash object for 'sha256' / 'sha384' / 'sha512'."""
    try:
        return _HASHES[name][0]()
    except KeyError:
        raise UnsupportedAlgorithmError(f"unsupported hash {name!r}") from None


def digest(data: bytes, hash_name: str) -> bytes:
    hash_algorithm(hash_name)  # validates the name
    return hashlib.new(hash_name, data).digest()


def check_digest_length(dgst: bytes, hash_name: str) -> None:
    expected = _HASHES[hash_name][1] if hash_name in _HASHES else None
    if expected is None:
        raise UnsupportedAlgorithmError(f"unsupported hash {hash_name!r}")
    if len(dgst) != expected:
        raise ValueError(f"{hash_name} digest must be {expected} bytes, got {len(dgst)}")


def ecdsa_raw_to_der(raw: bytes) -> bytes:
    """r||s (as PKCS#11 and TPMs return it) to the DER ECDSA-Sig-Value."""
    half = len(raw) // 2
    r = int.from_bytes(raw[:half], "big")
    s = int.from_bytes(raw[half:], "big")
    return utils.encode_dss_signature(r, s)


def pss_padding(hash_name: str) -> padding.PSS:
    """PSS with MGF1 over the same hash and salt length = digest length (RFC 4055)."""
    algo = hash_algorithm(hash_name)
    return padding.PSS(mgf=padding.MGF1(algo), salt_length=algo.digest_size)


@dataclass(frozen=True)
class SignatureSpec:
    """What a signature is: hash plus (for RSA) padding."""

    hash_name: str = "sha256"
    padding: Padding = Padding.PKCS1V15


@dataclass(frozen=True)
class SignatureRequest:
    """What a SigningSteps generator asks its driver for: `signer`'s signature over `data`."""

    signer: "Signer"
    data: bytes
    hash_name: str = "sha256"
    padding: Padding = Padding.PKCS1V15


T = TypeVar("T")
#: Code that builds a signed object: yields SignatureRequests, receives each
#: signature (DER for ECDSA), returns the object.
SigningSteps = Generator[SignatureRequest, bytes, T]


def run_signing(steps: SigningSteps[T]) -> T:
    """Drive `steps` with blocking signatures."""
    try:
        request = next(steps)
        while True:
            request = steps.send(request.signer.sign(request.data, request.hash_name, request.padding))
    except StopIteration as done:
        return done.value


async def run_signing_async(steps: SigningSteps[T]) -> T:
    """Drive `steps`, awaiting each signature (the event loop keeps serving meanwhile)."""
    try:
        request = next(steps)
        while True:
            signature = await request.signer.sign_async(request.data, request.hash_name,
                                                        request.padding)
            request = steps.send(signature)
    except StopIteration as done:
        return done.value


def signing_function(steps_function: Callable[..., SigningSteps[T]]) -> Callable[..., T]:
    """The blocking entry point of a SigningSteps function (same arguments and docs)."""
    @functools.wraps(steps_function)
    def sign(*args, **kwargs) -> T:
        return run_signing(steps_function(*args, **kwargs))
    return sign


def async_signing_function(steps_function: Callable[..., SigningSteps[T]]) -> Callable[..., Awaitable[T]]:
    """The awaitable entry point of a SigningSteps function, for servers (same arguments)."""
    @functools.wraps(steps_function)
    async def sign(*args, **kwargs) -> T:
        return await run_signing_async(steps_function(*args, **kwargs))
    return sign


class Signer(ABC):
    """A private key that signs digests and never hands out its secret.

    Implementations must be safe to call from several threads (serialise
    inside if the backend is not). The async form runs the blocking call on
    `executor`: a backend whose key store handles one call at a time returns
    one single-worker executor per token or TPM, so waiting signatures queue
    there instead of holding threads of the loop's shared pool.
    """

    #: A short description for logs and errors (never a PIN).
    description: str = "signer"

    @property
    def executor(self) -> Executor | None:
        """Where `sign_digest_async` runs the blocking call (None: the loop's default pool)."""
        return None

    @property
    @abstractmethod
    def public_key(self):
        """The cryptography public key object."""

    @property
    def algorithm(self) -> KeyAlgorithm | OtherKeyAlgorithm:
        return KeyAlgorithm.of_public_key(self.public_key)

    @abstractmethod
    def sign_digest(
        self, dgst: bytes, hash_name: str = "sha256", pad: Padding = Padding.PKCS1V15
    ) -> bytes:
        """Sign a precomputed digest. ECDSA returns DER (ECDSA-Sig-Value)."""

    def sign(self, data: bytes, hash_name: str = "sha256", pad: Padding = Padding.PKCS1V15) -> bytes:
        """Hash `data` here, then sign the digest inside the key store."""
        return self.sign_digest(digest(data, hash_name), hash_name, pad)

    async def sign_digest_async(
        self, dgst: bytes, hash_name: str = "sha256", pad: Padding = Padding.PKCS1V15
    ) -> bytes:
        """`sign_digest` without blocking the running event loop."""
        return await _in_executor(self.executor, self.sign_digest, dgst, hash_name, pad)

    async def sign_async(self, data: bytes, hash_name: str = "sha256",
                         pad: Padding = Padding.PKCS1V15) -> bytes:
        """`sign` without blocking the running event loop."""
        return await self.sign_digest_async(digest(data, hash_name), hash_name, pad)

    def public_key_pem(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def public_key_der(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def close(self) -> None:
        """Release sessions or handles; the key stays where it lives."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class BuildingSigner(Signer):
    """A key behind a key server that builds what it signs (the keyless mode of IETF LURK).

    Such a server signs no digest of unknown meaning: it is given the content
    of a SignedData (a voucher, a voucher-request), a CSR with the profile of
    the certificate wanted, or the entries of a CRL, checks them against its
    policy, builds the object with its own certificate and clock, and returns
    it. `cms.sign_cms`, `x509.issue_from_csr` and `x509.issue_crl_async` (and
    the async forms) hand such a signer the whole object; `sign_digest` stays
    for what the server grants as raw signing.
    """

    @abstractmethod
    def build_signed_data(self, content: bytes, content_type: str) -> bytes:
        """DER ContentInfo/SignedData over `content`, built and signed by the key server."""

    @abstractmethod
    def build_certificate(self, csr, *, days: int, extended_key_usage: Sequence[str],
                          dns_names: Sequence[str], crl_urls: Sequence[str] = ()):
        """The certificate the key server issues for `csr` (a cryptography CSR) with that profile;
        extended_key_usage as dotted OIDs, crl_urls its CRL distribution point."""

    @abstractmethod
    def build_crl(self, revoked: Sequence[tuple], *, number: int, validity: dt.timedelta):
        """The CRL of the key server's CA certificate listing `revoked` ((certificate serial,
        revocation time, cryptography ReasonFlags or None) each), with cRLNumber `number`,
        valid for `validity` from the key server's clock."""

    async def build_signed_data_async(self, content: bytes, content_type: str) -> bytes:
        return await _in_executor(self.executor, self.build_signed_data, content, content_type)

    async def build_certificate_async(self, csr, *, days: int, extended_key_usage: Sequence[str],
                                      dns_names: Sequence[str], crl_urls: Sequence[str] = ()):
        return await _in_executor(self.executor, functools.partial(
            self.build_certificate, csr, days=days, extended_key_usage=extended_key_usage,
            dns_names=dns_names, crl_urls=crl_urls))

    async def build_crl_async(self, revoked: Sequence[tuple], *, number: int, validity: dt.timedelta):
        return await _in_executor(self.executor, functools.partial(
            self.build_crl, revoked, number=number, validity=validity))


class SoftwareSigner(Signer):
    """A key held in process memory: for throwaway test CAs only, never a device key."""

    description = "software key"

    def __init__(self, private_key):
        self._key = private_key

    @classmethod
    def generate(cls, algorithm: KeyAlgorithm) -> "SoftwareSigner":
        if algorithm.is_ec:
            return cls(ec.generate_private_key(algorithm.curve))
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=algorithm.rsa_bits))

    @classmethod
    def from_pem(cls, pem: bytes, password: bytes | None = None) -> "SoftwareSigner":
        return cls(serialization.load_pem_private_key(pem, password))

    @property
    def private_key(self):
        """Exposed for tests that need to compare with other tools."""
        return self._key

    @property
    def public_key(self):
        return self._key.public_key()

    def sign_digest(self, dgst, hash_name="sha256", pad=Padding.PKCS1V15):
        check_digest_length(dgst, hash_name)
        prehashed = utils.Prehashed(hash_algorithm(hash_name))
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return self._key.sign(dgst, ec.ECDSA(prehashed))
        if pad is Padding.PSS:
            return self._key.sign(dgst, pss_padding(hash_name), prehashed)
        return self._key.sign(dgst, padding.PKCS1v15(), prehashed)


def verify_signature(public_key, signature: bytes, data: bytes, hash_name: str,
                     pad: Padding = Padding.PKCS1V15) -> bool:
    """True when `signature` over `data` verifies; never raises on a bad signature."""
    from cryptography.exceptions import InvalidSignature

    algo = hash_algorithm(hash_name)
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(algo))
        elif isinstance(public_key, rsa.RSAPublicKey):
            if pad is Padding.PSS:
                # Accept any salt length on verify: senders differ.
                pad_obj = padding.PSS(mgf=padding.MGF1(algo), salt_length=padding.PSS.AUTO)
            else:
                pad_obj = padding.PKCS1v15()
            public_key.verify(signature, data, pad_obj, algo)
        else:
            from cryptography.hazmat.primitives.asymmetric import ed25519

            if isinstance(public_key, ed25519.Ed25519PublicKey):
                public_key.verify(signature, data)
            else:
                return False
    except InvalidSignature:
        return False
    return True
