"""tlslite-ng's TLS connection with its costly parts done by pyca/cryptography (OpenSSL).

tlslite runs the whole of TLS in Python. Three parts of a pledge's handshakes
and records cost most of its CPU, and each has a seam of tlslite's own where
`cryptography` does the same job for a few microseconds:

- Records. tlslite seals AES-GCM over a Python Rijndael and ChaCha20-Poly1305
  in Python (a third of the pledge's CPU before). Its RecordLayer picks a
  cipher factory per suite in the static method `_getCipherSettings`, and the
  objects it makes have a small interface (`seal(nonce, plaintext, aad)`,
  `open(nonce, ciphertext, aad)` returning None on a bad tag, a few
  attributes): `NativeAeadRecordLayer` answers the AEAD suites with adapters
  over `cryptography`'s AESGCM and ChaCha20Poly1305.
- X25519 key exchange. tlslite's Montgomery ladder in Python costs about 7 ms
  a call, two calls a handshake. `TLSConnection._getKEX` makes the object of a
  group's key exchange; here X25519 gets `NativeX25519KeyExchange`, the same
  private value (32 random bytes) and wire format, computed by OpenSSL.
- The server's signature. tlslite checks the server's CertificateVerify (TLS
  1.3) or ServerKeyExchange (TLS 1.2) with python-ecdsa, about 5 ms for P-256.
  `TLSConnection._clientGetKeyFromChain` hands out the server's public key;
  here an ECDSA key comes out as `NativeVerifyingECDSAKey`, which checks with
  OpenSSL the digests whose hash it knows by size and leaves any other to
  python-ecdsa. (The chain itself is checked by tls_client.py, not by tlslite.)

The handshake logic stays tlslite's. tests/test_tls_client.py checks that the
connection really uses these parts, and that each agrees with tlslite's own.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from tlslite import TLSConnection as _TlsliteConnection
from tlslite.constants import CipherSuite, GroupName
from tlslite.errors import TLSIllegalParameterException
from tlslite.keyexchange import ECDHKeyExchange
from tlslite.recordlayer import RecordLayer
from tlslite.utils.python_ecdsakey import Python_ECDSAKey

#: what `TLSConnection.getCipherImplementation()` reports for records sealed here
IMPLEMENTATION = "cryptography"


class _Aead:
    """An AEAD of `cryptography` with the interface tlslite's record layer expects."""

    isBlockCipher = False
    isAEAD = True
    nonceLength = 12
    tagLength = 16
    implementation = IMPLEMENTATION

    def __init__(self, cipher, name: str, key):
        self._cipher = cipher(bytes(key))
        self.name = name
        self.key = key

    def seal(self, nonce, plaintext, data) -> bytearray:
        return bytearray(self._cipher.encrypt(bytes(nonce), bytes(plaintext), bytes(data)))

    def open(self, nonce, ciphertext, data) -> bytearray | None:
        try:
            return bytearray(self._cipher.decrypt(bytes(nonce), bytes(ciphertext), bytes(data)))
        except InvalidTag:
            return None  # tlslite's convention for a record that fails authentication


def _factory(cipher, name: str):
    def create(key, implementations=None) -> _Aead:
        return _Aead(cipher, name, key)
    return create


class NativeAeadRecordLayer(RecordLayer):
    """tlslite's record layer, with `cryptography` sealing AES-GCM and ChaCha20-Poly1305 records."""

    @staticmethod
    def _getCipherSettings(cipherSuite):
        key_length, iv_length, create = RecordLayer._getCipherSettings(cipherSuite)
        if cipherSuite in CipherSuite.chacha20Suites:
            create = _factory(ChaCha20Poly1305, "chacha20-poly1305")
        elif cipherSuite in CipherSuite.aes128GcmSuites:
            create = _factory(AESGCM, "aes128gcm")
        elif cipherSuite in CipherSuite.aes256GcmSuites:
            create = _factory(AESGCM, "aes256gcm")
        return key_length, iv_length, create


class NativeX25519KeyExchange(ECDHKeyExchange):
    """tlslite's X25519 key exchange with the scalar multiplications done by `cryptography`.
    The private value stays tlslite's (32 random bytes, clamped by the multiplication)."""

    def __init__(self, version):
        super().__init__(GroupName.x25519, version)

    def calc_public_value(self, private, point_format=None):
        return bytearray(X25519PrivateKey.from_private_bytes(bytes(private)).public_key().public_bytes_raw())

    def calc_shared_key(self, private, peer_share, valid_point_formats=None):
        if len(peer_share) != 32:
            raise TLSIllegalParameterException("Invalid key share")
        try:
            shared = X25519PrivateKey.from_private_bytes(bytes(private)).exchange(
                X25519PublicKey.from_public_bytes(bytes(peer_share)))
        except ValueError:  # an all-zero result: a small-order peer share (RFC 7748 section 6.1)
            raise TLSIllegalParameterException("Invalid key share") from None
        return bytearray(shared)


#: python-ecdsa's curve names, as tlslite's keys carry them, and OpenSSL's curves
_CURVES = {"NIST256p": ec.SECP256R1(), "NIST384p": ec.SECP384R1(), "NIST521p": ec.SECP521R1()}
#: the hash of a digest, by its size (TLS signs a digest of the hash its scheme names)
_HASHES = {32: hashes.SHA256(), 48: hashes.SHA384(), 64: hashes.SHA512()}


class NativeVerifyingECDSAKey(Python_ECDSAKey):
    """A peer's ECDSA public key as tlslite parsed it, checking signatures with `cryptography`."""

    @classmethod
    def of(cls, key: Python_ECDSAKey) -> Python_ECDSAKey:
        """The same key checking natively; `key` itself for a curve OpenSSL is not asked about."""
        curve = _CURVES.get(key.public_key.curve.name)
        if curve is None or key.hasPrivateKey():
            return key
        native = cls.__new__(cls)
        native.__dict__.update(key.__dict__)
        native._native = ec.EllipticCurvePublicKey.from_encoded_point(
            curve, key.public_key.to_string("uncompressed"))
        return native

    def _verify(self, signature, hash_bytes):
        algorithm = _HASHES.get(len(hash_bytes))
        if algorithm is None:
            return super()._verify(signature, hash_bytes)
        try:
            self._native.verify(bytes(signature), bytes(hash_bytes), ec.ECDSA(utils.Prehashed(algorithm)))
        except (InvalidSignature, ValueError):  # ValueError: a signature that is not DER
            return False
        return True


class TLSConnection(_TlsliteConnection):
    """tlslite's TLSConnection with records, X25519 and the server's ECDSA signature done by
    `cryptography` (see the module's description)."""

    def __init__(self, sock):
        super().__init__(sock)
        # The base class made its record layer over the buffered socket it keeps in self.sock;
        # nothing has used it yet.
        self._recordLayer = NativeAeadRecordLayer(self.sock)

    @staticmethod
    def _getKEX(group, version):
        if group == GroupName.x25519:
            return NativeX25519KeyExchange(version)
        return _TlsliteConnection._getKEX(group, version)

    def _clientGetKeyFromChain(self, certificate, settings, tack_ext=None):
        # A generator, as tlslite's: 0 or 1 while it waits on the socket, then the result.
        for result in super()._clientGetKeyFromChain(certificate, settings, tack_ext):
            if isinstance(result, tuple):
                public_key, chain, tack = result
                if isinstance(public_key, Python_ECDSAKey):
                    public_key = NativeVerifyingECDSAKey.of(public_key)
                result = (public_key, chain, tack)
            yield result


__all__ = ["TLSConnection", "NativeAeadRecordLayer", "NativeX25519KeyExchange", "NativeVerifyingECDSAKey",
           "IMPLEMENTATION"]
