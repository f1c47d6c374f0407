"""Open, generate and list keys by URI, whatever key store holds them.

This is the only place that dispatches on the URI scheme; everything else
takes a `Signer`.
"""

from __future__ import annotations

from .keyuri import KeyUri, Pkcs11Uri, TpmUri, parse_key_uri
from .signer import KeyAlgorithm, Signer


def _uri(uri: str | KeyUri, pin_env: str | None = None) -> KeyUri:
    return parse_key_uri(uri, pin_env=pin_env) if isinstance(uri, str) else uri


def open_signer(uri: str | KeyUri, *, pin_env: str | None = None) -> Signer:
    """The existing key named by `uri` as a Signer."""
    uri = _uri(uri, pin_env)
    if isinstance(uri, Pkcs11Uri):
        from .pkcs11_backend import Pkcs11Signer

        return Pkcs11Signer(uri)
    from .tpm_backend import TpmSigner

    return TpmSigner(uri)


def generate_key(uri: str | KeyUri, algorithm: KeyAlgorithm | str, *,
                 pin_env: str | None = None) -> Signer:
    """Generate a new non-extractable key where `uri` says; refuse to overwrite."""
    uri = _uri(uri, pin_env)
    if isinstance(algorithm, str):
        algorithm = KeyAlgorithm.parse(algorithm)
    if isinstance(uri, Pkcs11Uri):
        from . import pkcs11_backend

        return pkcs11_backend.generate(uri, algorithm)
    from . import tpm_backend

    return tpm_backend.generate(uri, algorithm)


def list_keys(uri: str | KeyUri, *, pin_env: str | None = None) -> list:
    """Keys in the token (pkcs11) or persistent handles (tpm) the URI names."""
    uri = _uri(uri, pin_env)
    if isinstance(uri, Pkcs11Uri):
        from . import pkcs11_backend

        return pkcs11_backend.list_keys(uri)
    from . import tpm_backend

    return tpm_backend.list_keys(uri)


__all__ = ["open_signer", "generate_key", "list_keys", "KeyUri", "Pkcs11Uri", "TpmUri"]
