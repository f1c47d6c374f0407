"""tlslite-ng's TLS connection with its record encryption done by pyca/cryptography.

tlslite runs the whole of TLS in Python, the record layer's AEAD ciphers
included (AES-GCM over a Python Rijndael, ChaCha20-Poly1305 in Python), unless
M2Crypto or the old PyCrypto is installed, and even then GHASH and ChaCha20 stay
in Python. Sealing and opening the records of one bootstrap (about 18 kB: the
certificates of two handshakes, vouchers, CSR, certificates) was a third of the
pledge's CPU. `cryptography`'s AESGCM and ChaCha20Poly1305 (OpenSSL) do the
same job for a few microseconds a record.

The seam is tlslite's own: its RecordLayer picks a cipher factory per cipher
suite in the static method `_getCipherSettings`, and the objects it makes have a
small interface (`seal(nonce, plaintext, aad)`, `open(nonce, ciphertext, aad)`
returning None on a bad tag, and a few attributes). `TLSConnection` here is
tlslite's with a record layer that answers AES-GCM and ChaCha20-Poly1305 suites
with adapters over `cryptography`; every other suite, and the handshake itself,
stay tlslite's. tests/test_tls_client.py checks the connection really uses
them, against OpenSSL servers.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from tlslite import TLSConnection as _TlsliteConnection
from tlslite.constants import CipherSuite
from tlslite.recordlayer import RecordLayer

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


class TLSConnection(_TlsliteConnection):
    """tlslite's TLSConnection whose AES-GCM and ChaCha20-Poly1305 records `cryptography` seals."""

    def __init__(self, sock):
        super().__init__(sock)
        # The base class made its record layer over the buffered socket it keeps in self.sock;
        # nothing has used it yet.
        self._recordLayer = NativeAeadRecordLayer(self.sock)


__all__ = ["TLSConnection", "NativeAeadRecordLayer", "IMPLEMENTATION"]
