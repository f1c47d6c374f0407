"""TLS contexts for the servers (standard `ssl` module) and for their calls to the MASA.

Client certificates are verified by OpenSSL against the configured CAs while
the handshake runs. The `ssl` module has no "ask for a certificate but accept
any" mode, so a client certificate from an unknown issuer ends the handshake
with an alert (unknown_ca): that is the honest refusal for an IDevID of a
manufacturer nobody configured, and brski-cloud allows exactly that ("the
Cloud Registrar is able to reject TLS connections when it can determine
during TLS authentication that it cannot support the Pledge").
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Iterable

from cryptography import x509

from pledgeforge.hsm.chain import load_certificate_file, load_certificate_files
from pledgeforge.hsm.x509 import to_pem

from .config import ConfigError

CLIENT_AUTH_MODES = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL,
                     "none": ssl.CERT_NONE}


def _pem_bundle(paths: Iterable[Path]) -> str:
    return "".join(to_pem(c).decode() for c in load_certificate_files(paths, "CA certificate"))


def server_context(cert_chain: Path, key: Path, *, client_auth: str = "none",
                   client_cas: Iterable[Path] = (),
                   context_class: type[ssl.SSLContext] = ssl.SSLContext) -> ssl.SSLContext:
    """A TLS 1.2/1.3 server context; `client_auth` is required, optional or none."""
    context = context_class(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert_chain), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {cert_chain} with key {key}: {exc}") from None
    context.verify_mode = CLIENT_AUTH_MODES[client_auth]
    if client_auth != "none":
        bundle = _pem_bundle(client_cas)
        if not bundle:
            raise ConfigError("client certificates are requested but no CA to check them is configured")
        context.load_verify_locations(cadata=bundle)
    return context


def client_context(anchors: Iterable[Path]) -> ssl.SSLContext:
    """For calls to the MASA: its certificate must chain to `anchors` and name its host."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    bundle = _pem_bundle(anchors)
    if not bundle:
        raise ConfigError("no trust anchors configured for the MASA's TLS certificate (masa_anchors)")
    context.load_verify_locations(cadata=bundle)
    return context


def leaf_certificate(cert_chain: Path) -> x509.Certificate:
    """The server's own certificate (first in its chain file)."""
    return load_certificate_file(str(cert_chain), "TLS certificate")[0]
