"""The lab's PKI: SoftHSM tokens and their PINs, the CA and signer keys, certificates, TLS files.

Trust in the lab: the manufacturer CA issues IDevIDs and the MASA's
voucher-signing certificate (so vouchers chain to the manufacturer CA, the
pledge's voucher anchor); a "web CA" stands for the public Web PKI and issues
the MASA's and the cloud registrar's TLS certificates (the cloud registrar's
TLS anchor is the pledge's built-in anchor) and the cloud registrar's
voucher-request certificate; the owner CA issues the owner registrar's
certificates and the LDevIDs, and is the pinned-domain-cert of every voucher.

Each trust role has a token of its own with its own user PIN, and each
server's configuration names only the PIN files of the keys it signs with
(configs.py): the MASA holds the masa PIN, the cloud registrar the cloud PIN,
the owner registrar the owner (its EST CA) and registrar PINs. The
manufacturer CA is the factory's: no server holds its PIN, only the lab's own
process when it issues an IDevID. The web CA stands for the public Web PKI and
is used only here, to issue the TLS certificates.

The tokens share one SoftHSM2 configuration: SoftHSM encrypts each token's
private objects under a key that only that token's PINs unwrap, so one PIN
opens one token, and the servers (all started with that one SOFTHSM2_CONF in
their environment) load the module in-process instead of one module host per
configuration. Separate configuration directories would add a file-permission
boundary only between roles run by different Unix users, which a lab is not.

Everything is created only when missing, so running it again keeps every
key and certificate.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from pledgeforge.atomicfile import atomic_write
from pledgeforge.hsm import keystore as keystores
from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.errors import KeyNotFoundError
from pledgeforge.hsm.keyuri import Pkcs11Uri
from pledgeforge.hsm.signer import Signer
from pledgeforge.hsm.x509 import issue_certificate, issue_idevid as issue_idevid_certificate, make_ca, to_pem

from .layout import HOST, LabLayout

#: token -> what it holds; one token (and PIN) per trust role
TOKENS = {
    "manufacturer": "the manufacturer CA: issues IDevIDs and the MASA's certificate (factory side only)",
    "web": "the web CA: stands for the public Web PKI (the MASA's and cloud registrar's TLS)",
    "masa": "the MASA's voucher-signing key",
    "owner": "the owner CA: the owner registrar's EST CA, issuer of LDevIDs",
    "registrar": "the owner registrar's voucher-request signing key",
    "cloud": "the cloud registrar's voucher-request signing key",
    "pledges": "IDevID and LDevID keys of the lab's PKCS#11 pledges",
    "firmware": "the manufacturer's firmware-signing key: boards check their images against it",
}
ID_KP_CMC_RA = ObjectIdentifier("1.3.6.1.5.5.7.3.28")


def issue_idevid(lab: LabLayout, public_key, serial: str) -> x509.Certificate:
    """An IDevID for `public_key`, issued by the manufacturer CA in SoftHSM, naming the MASA."""
    ca = keystores.open_signer(lab.key_uri("manufacturer", "manufacturer-ca"))
    ca_cert = load_certificate_file(str(lab.pki("manufacturer-ca")))[0]
    return issue_idevid_certificate(ca, ca_cert, public_key, serial, masa_url=lab.masa_url)


def create_pki(lab: LabLayout) -> x509.Certificate:
    """Tokens, keys, CA, signer and TLS certificates; returns the owner CA's certificate."""
    directory = lab.dir
    (directory / "secrets").chmod(0o700)
    lab.softhsm.ensure()
    for token in TOKENS:
        ensure_token(lab, token)

    mfg = ensure_key(lab.key_uri("manufacturer", "manufacturer-ca"))
    web = ensure_key(lab.key_uri("web", "web-ca"))
    masa = ensure_key(lab.key_uri("masa", "voucher-signer"))
    owner_ca = ensure_key(lab.key_uri("owner", "owner-ca"))
    registrar = ensure_key(lab.key_uri("registrar", "registrar-signer"))
    cloud = ensure_key(lab.key_uri("cloud", "registrar-signer"))
    firmware = ensure_key(lab.firmware_key_uri)
    atomic_write(lab.firmware_key_pem_path, firmware.public_key_pem())

    mfg_cert = _ensure_certificate(lab.pki("manufacturer-ca"), mfg.public_key, lambda: make_ca(
        mfg, "CN=pledgeforge lab manufacturer CA,O=pledgeforge lab"))
    web_cert = _ensure_certificate(lab.pki("web-ca"), web.public_key, lambda: make_ca(
        web, "CN=pledgeforge lab web CA,O=pledgeforge lab"))
    owner_cert = _ensure_certificate(lab.pki("owner-ca"), owner_ca.public_key, lambda: make_ca(
        owner_ca, "CN=pledgeforge lab owner CA,O=pledgeforge lab owner"))
    _ensure_certificate(lab.pki("masa-signer"), masa.public_key, lambda: issue_certificate(
        mfg, mfg_cert, masa.public_key, "CN=pledgeforge lab MASA,O=pledgeforge lab", days=3650))
    ra = [ID_KP_CMC_RA]
    _ensure_certificate(lab.pki("registrar-signer"), registrar.public_key, lambda: issue_certificate(
        owner_ca, owner_cert, registrar.public_key, "CN=pledgeforge lab owner registrar,O=pledgeforge lab owner",
        days=3650, extended_key_usage=ra))
    _ensure_certificate(lab.pki("cloud-signer"), cloud.public_key, lambda: issue_certificate(
        web, web_cert, cloud.public_key, "CN=pledgeforge lab cloud registrar,O=pledgeforge lab",
        days=3650, extended_key_usage=ra))

    names = dict(dns_names=["localhost"], ip_addresses=[HOST])
    server = [ExtendedKeyUsageOID.SERVER_AUTH]
    ensure_tls(lab, "masa", lambda pub: issue_certificate(
        web, web_cert, pub, "CN=localhost,O=pledgeforge lab MASA", key_usage="tls",
        extended_key_usage=server, **names))
    ensure_tls(lab, "cloud", lambda pub: issue_certificate(
        web, web_cert, pub, "CN=localhost,O=pledgeforge lab cloud registrar", key_usage="tls",
        extended_key_usage=server, **names))
    ensure_tls(lab, "registrar", lambda pub: issue_certificate(
        owner_ca, owner_cert, pub, "CN=localhost,O=pledgeforge lab owner registrar", key_usage="tls",
        extended_key_usage=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH, ID_KP_CMC_RA],
        **names))
    # The lab's health probe: the cloud registrar wants a manufacturer-issued client certificate.
    ensure_tls(lab, "probe", lambda pub: issue_idevid_certificate(mfg, mfg_cert, pub, "lab-probe"))
    return owner_cert


def ensure_token(lab: LabLayout, token: str) -> None:
    """A token of the lab's SoftHSM with a user PIN and an SO PIN of its own."""
    lab.softhsm.ensure_token(token, ensure_pin(lab.pin_file(token)), ensure_pin(lab.so_pin_file(token)))


def ensure_key(uri: Pkcs11Uri, algorithm: str = "ec-p256") -> Signer:
    try:
        return keystores.open_signer(uri)
    except KeyNotFoundError:
        return keystores.generate_key(uri, algorithm)


def _ensure_certificate(path: Path, public_key, make) -> x509.Certificate:
    """Keep an existing certificate for this key; otherwise make and store one."""
    if path.exists():
        cert = load_certificate_file(str(path))[0]
        if cert.public_key() == public_key:
            return cert
    cert = make()
    atomic_write(path, to_pem(cert))
    return cert


def ensure_tls(lab: LabLayout, name: str, make_cert) -> None:
    """A software TLS key (TLS keys may be files) and its certificate (tls/NAME.crt, .key),
    made by `make_cert(public_key)`."""
    cert_path, key_path = lab.tls_files(name)
    if key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        atomic_write(key_path, key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), mode=0o600)
    _ensure_certificate(cert_path, key.public_key(), lambda: make_cert(key.public_key()))


def ensure_pin(path: Path) -> str:
    """A PIN of 16 hex digits, made once and kept in a 0600 file."""
    if not path.exists():
        atomic_write(path, (secrets.token_hex(8) + "\n").encode(), mode=0o600)
    return path.read_text().strip()
