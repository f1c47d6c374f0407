"""Key stores by URI scheme: parse, open, generate, list and delete keys wherever they live.

This is the only place that dispatches on the URI scheme; everything else
takes a `Signer`. A backend is registered under its scheme with the parser
of its URIs and a loader of its implementation (imported on first use, so
that parsing a `tpm:` URI does not load the TPM libraries):

    register_backend("pkcs11", parse_pkcs11_uri, _load("pkcs11_backend"))

The implementation module (or any object) provides

    ALGORITHMS: tuple[str, ...]          what it can generate, in CLI spelling
    open_signer(uri) -> Signer
    generate(uri, algorithm) -> Signer   algorithm: KeyAlgorithm | OtherKeyAlgorithm
    list_keys(uri) -> list               dataclasses describing each key
    delete(uri) -> str                   what was deleted, for the user

Built in: `pkcs11:` (RFC 7512, python-pkcs11), `tpm:` (tpm2-pytss) and
`signer+https:`, a key held by pledgeforge's signing service, whose
implementation is the service's client (pledgeforge.keyserver.client, loaded
on first use: nothing here imports the service). A cloud KMS registers its
own scheme the same way. An unknown scheme is an error naming the
registered ones. `make_key_uri(scheme, **attributes)` builds a URI of a
registered scheme from its attributes (the board key-store drivers name
their keys so).
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import Callable

from .errors import KeyUriError, UnsupportedAlgorithmError
from .keyuri import (KeyUri, Pkcs11Uri, SignerUri, TpmUri, parse_pkcs11_uri, parse_signer_uri,
                     parse_tpm_uri)
from .signer import KeyAlgorithm, OtherKeyAlgorithm, Signer, algorithm_named

#: parse(text after "scheme:", pin_env) -> KeyUri
Parser = Callable[[str, "str | None"], KeyUri]


@dataclass(frozen=True)
class Backend:
    scheme: str
    parse: Parser
    #: returns the implementation (see the module docstring)
    load: Callable[[], object]
    #: the KeyUri type of the scheme, for building URIs by attribute (`make_key_uri`)
    uri_type: type[KeyUri] | None = None


_backends: dict[str, Backend] = {}
_lock = threading.Lock()


def register_backend(scheme: str, parse: Parser, load: Callable[[], object],
                     uri_type: type[KeyUri] | None = None) -> None:
    """Make `scheme:` URIs parse with `parse` and act through the object `load()` returns;
    `uri_type` (a KeyUri dataclass) lets callers build such URIs by attribute."""
    scheme = scheme.lower()
    with _lock:
        if scheme in _backends:
            raise ValueError(f"a key store is already registered for {scheme}:")
        _backends[scheme] = Backend(scheme, parse, load, uri_type)


def unregister_backend(scheme: str) -> None:
    with _lock:
        _backends.pop(scheme.lower(), None)


def schemes() -> list[str]:
    with _lock:
        return sorted(_backends)


def _known() -> str:
    return ", ".join(f"{s}:" for s in schemes())


def _backend(scheme: str) -> Backend:
    with _lock:
        backend = _backends.get(scheme.lower())
    if backend is None:
        raise KeyUriError(f"unknown key URI scheme {scheme!r}; key stores registered: {_known()}")
    return backend


def parse_key_uri(text: str, *, pin_env: str | None = None) -> KeyUri:
    """The KeyUri of `text`, parsed by its scheme's backend. `pin_env` is the configured PIN variable."""
    if not isinstance(text, str) or ":" not in text:
        raise KeyUriError(f"not a key URI: {text!r} (expected one of {_known()} followed by the key's name)")
    scheme, rest = text.split(":", 1)
    return _backend(scheme).parse(rest, pin_env)


def make_key_uri(scheme: str, **attributes) -> KeyUri:
    """The `scheme:` URI with these attributes (e.g. make_key_uri("tpm", handle=0x81020000,
    tcti=...)), built by the scheme's own URI type, so a caller never formats one by hand."""
    backend = _backend(scheme)
    if backend.uri_type is None:
        raise KeyUriError(f"the {backend.scheme}: key store builds no URIs from attributes; "
                          f"give its URI as text")
    try:
        return backend.uri_type(**attributes)
    except TypeError as exc:
        raise KeyUriError(f"{backend.scheme}: URI attributes {sorted(attributes)}: {exc}") from None


def _implementation(uri: str | KeyUri, pin_env: str | None) -> tuple[KeyUri, object]:
    if isinstance(uri, str):
        uri = parse_key_uri(uri, pin_env=pin_env)
    return uri, _backend(uri.scheme).load()


def algorithms(scheme: str) -> tuple[str, ...]:
    """What the `scheme:` key store can generate (CLI spellings)."""
    return tuple(_backend(scheme).load().ALGORITHMS)


def open_signer(uri: str | KeyUri, *, pin_env: str | None = None) -> Signer:
    """The existing key named by `uri` as a Signer."""
    uri, backend = _implementation(uri, pin_env)
    return backend.open_signer(uri)


def generate_key(uri: str | KeyUri, algorithm: KeyAlgorithm | OtherKeyAlgorithm | str, *,
                 pin_env: str | None = None) -> Signer:
    """Generate a new non-extractable key where `uri` says; refuse to overwrite."""
    uri, backend = _implementation(uri, pin_env)
    if isinstance(algorithm, str):
        algorithm = algorithm_named(algorithm)
    if algorithm.value not in backend.ALGORITHMS:
        raise UnsupportedAlgorithmError(
            f"the {uri.scheme}: key store cannot generate {algorithm.value} keys; "
            f"it generates {', '.join(backend.ALGORITHMS)}")
    return backend.generate(uri, algorithm)


def list_keys(uri: str | KeyUri, *, pin_env: str | None = None) -> list:
    """Keys in the token (pkcs11) or persistent handles (tpm) the URI names."""
    uri, backend = _implementation(uri, pin_env)
    return backend.list_keys(uri)


def delete_key(uri: str | KeyUri, *, pin_env: str | None = None) -> str:
    """Delete the key `uri` names, for good; returns what was deleted."""
    uri, backend = _implementation(uri, pin_env)
    return backend.delete(uri)


def _load(module: str) -> Callable[[], object]:
    return lambda: importlib.import_module(f"{__package__}.{module}")


register_backend("pkcs11", parse_pkcs11_uri, _load("pkcs11_backend"), Pkcs11Uri)
register_backend("tpm", parse_tpm_uri, _load("tpm_backend"), TpmUri)
register_backend("signer+https", parse_signer_uri,
                 lambda: importlib.import_module("pledgeforge.keyserver.client"), SignerUri)


__all__ = ["register_backend", "unregister_backend", "schemes", "algorithms", "parse_key_uri", "make_key_uri",
           "open_signer", "generate_key", "list_keys", "delete_key", "KeyUri", "Pkcs11Uri", "TpmUri",
           "SignerUri"]
