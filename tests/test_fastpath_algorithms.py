"""Certificate signature algorithms and public keys: the fastpath and the reference agree.

The reference checks certificate signatures with cryptography
(verify_directly_issued_by). It verifies ECDSA and RSA with SHA-2 and SHA-3,
RSA-PSS, Ed25519, Ed448 and DSA with SHA-224/256; it declines SHA-1 and MD5
(the issuer did not sign the certificate, as far as it is concerned: the item
is UNTRUSTED_SIGNER however valid the signature); and it raises on keys it
cannot load at all (unknown key types, curves it does not support) and on DSA
with SHA-384/512, which makes the item MALFORMED. Certificates here are real:
made by cryptography, or by the openssl CLI where cryptography no longer signs
(SHA-1, MD5, unusual curves); unusual algorithm identifiers are written into a
certificate with the element tree of test_fastpath_encodings.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from asn1crypto.core import ObjectIdentifier as Asn1Oid
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from clirunner import openssl
from pledgeforge.fastpath import BulkVerifier, Result
from pledgeforge.fastpath.reference import verify_certificate_item, verify_cms_item
from test_fastpath_encodings import Node, encode, parse

NOW = dt.datetime.now(dt.timezone.utc)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


LEAF_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pledge"),
                       x509.NameAttribute(NameOID.SERIAL_NUMBER, "PF-ALG-1")])


def _cert(issuer_key, issuer_name, public_key, subject, algorithm=None, rsa_padding=None):
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - dt.timedelta(minutes=5))
               .not_valid_after(NOW + dt.timedelta(days=1)))
    if subject == issuer_name:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    kwargs = {"rsa_padding": rsa_padding} if rsa_padding else {}
    return builder.sign(issuer_key, algorithm, **kwargs)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _broken(der: bytes) -> bytes:
    out = bytearray(der)
    out[-1] ^= 0x01
    return bytes(out)


def _agree_certificates(items, anchors) -> list[Result]:
    """Both verifiers on bare certificates: same code and serial for every item."""
    fast = BulkVerifier(anchors, threads=1).verify_batch(items, certificates=True)
    for der, got in zip(items, fast):
        want, serial = verify_certificate_item(der, anchors)
        assert (got.code, got.serial) == (want, serial)
    return [r.code for r in fast]


@pytest.fixture(scope="module")
def issuer_keys():
    return {"ec": ec.generate_private_key(ec.SECP256R1()),
            "rsa": rsa.generate_private_key(65537, 2048),
            "dsa": dsa.generate_private_key(2048),
            "ed25519": ed25519.Ed25519PrivateKey.generate(),
            "ed448": ed448.Ed448PrivateKey.generate()}


@pytest.fixture(scope="module")
def roots(issuer_keys):
    first_hash = {"ec": hashes.SHA256(), "rsa": hashes.SHA256(), "dsa": hashes.SHA256()}
    return {kind: _cert(key, _name(f"root {kind}"), key.public_key(), _name(f"root {kind}"),
                        first_hash.get(kind))
            for kind, key in issuer_keys.items()}


def _pss(algorithm) -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.DIGEST_LENGTH)


SIGNED = {
    # name: (issuer kind, hash, PSS, expected code for a correct signature)
    "ecdsa-sha224": ("ec", hashes.SHA224(), False, Result.OK),
    "ecdsa-sha512": ("ec", hashes.SHA512(), False, Result.OK),
    "ecdsa-sha3-256": ("ec", hashes.SHA3_256(), False, Result.OK),
    "ecdsa-sha3-512": ("ec", hashes.SHA3_512(), False, Result.OK),
    "rsa-sha224": ("rsa", hashes.SHA224(), False, Result.OK),
    "rsa-sha3-384": ("rsa", hashes.SHA3_384(), False, Result.OK),
    "rsa-pss-sha512": ("rsa", hashes.SHA512(), True, Result.OK),
    "rsa-pss-sha3-256": ("rsa", hashes.SHA3_256(), True, Result.OK),
    "dsa-sha224": ("dsa", hashes.SHA224(), False, Result.OK),
    "dsa-sha256": ("dsa", hashes.SHA256(), False, Result.OK),
    # cryptography signs these but cannot verify them: the reference raises.
    "dsa-sha384": ("dsa", hashes.SHA384(), False, Result.MALFORMED),
    "dsa-sha512": ("dsa", hashes.SHA512(), False, Result.MALFORMED),
    "ed25519": ("ed25519", None, False, Result.OK),
    "ed448": ("ed448", None, False, Result.OK),
}


@pytest.mark.parametrize("scheme", list(SIGNED))
def test_certificate_signatures_per_scheme(scheme, issuer_keys, roots):
    kind, algorithm, pss, expected = SIGNED[scheme]
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _cert(issuer_keys[kind], roots[kind].subject, leaf_key.public_key(), LEAF_NAME,
                 algorithm, _pss(algorithm) if pss else None)
    codes = _agree_certificates([_der(leaf), _broken(_der(leaf))], [roots[kind]])
    broken_expected = Result.MALFORMED if expected is Result.MALFORMED else Result.UNTRUSTED_SIGNER
    assert codes == [expected, broken_expected]


# --------------------------------------------------------------------------- openssl-made PKI

def _run(*args) -> None:
    result = openssl(*args)
    assert result.returncode == 0, result.stderr.decode()


def _openssl_pki(tmp: Path, name: str, keygen: list[str], digest: str = "-sha256"):
    """A self-signed root on a key made by `openssl genpkey keygen...`, a P-256 leaf it
    signs with `digest`, and a CMS SignedData the root's key signs: DER bytes each."""
    key, root, leaf_key, csr, leaf, content, cms = (
        tmp / f"{name}{suffix}" for suffix in (".key", ".pem", "-leaf.key", ".csr", "-leaf.pem",
                                               ".json", ".cms"))
    _run("genpkey", *keygen, "-out", key)
    _run("req", "-x509", "-new", "-key", key, "-subj", f"/CN=root {name}", "-days", "2",
         digest, "-out", root)
    _run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", leaf_key)
    _run("req", "-new", "-key", leaf_key, "-subj", "/CN=pledge/serialNumber=PF-ALG-2", "-out", csr)
    _run("x509", "-req", "-in", csr, "-CA", root, "-CAkey", key, "-days", "1", digest,
         "-set_serial", "7", "-out", leaf)
    content.write_bytes(b'{"ietf-voucher-request:voucher": {}}')
    _run("cms", "-sign", "-signer", root, "-inkey", key, "-in", content, "-outform", "DER",
         "-nodetach", "-binary", "-md", "sha256", "-out", cms)
    load = lambda path: _der(x509.load_pem_x509_certificate(path.read_bytes()))  # noqa: E731
    return load(root), load(leaf), cms.read_bytes()


EC_KEY = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
RSA_KEY = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]


@pytest.mark.parametrize("name,keygen,digest", [
    ("ecdsa-sha1", EC_KEY, "-sha1"),
    ("rsa-sha1", RSA_KEY, "-sha1"),
    ("rsa-md5", RSA_KEY, "-md5"),
])
def test_sha1_and_md5_certificate_signatures_are_not_trusted(tmp_path, name, keygen, digest):
    """Valid signatures, but over hashes the reference no longer accepts."""
    root, leaf, _ = _openssl_pki(tmp_path, name, keygen, digest)
    anchor = x509.load_der_x509_certificate(root)
    assert _agree_certificates([leaf], [anchor]) == [Result.UNTRUSTED_SIGNER]


@pytest.mark.parametrize("curve,param_enc,expected", [
    ("brainpoolP256r1", "named_curve", Result.OK),
    ("secp256k1", "named_curve", Result.OK),
    ("P-256", "explicit", Result.OK),               # explicit parameters of a named curve it knows
    ("secp256k1", "explicit", Result.MALFORMED),    # explicit, but not P-256/384/521
    ("secp112r1", "named_curve", Result.MALFORMED), # a curve the reference does not load
    ("prime239v1", "named_curve", Result.MALFORMED),
])
def test_ec_issuer_and_signer_keys_by_curve(tmp_path, curve, param_enc, expected):
    keygen = ["-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{curve}",
              "-pkeyopt", f"ec_param_enc:{param_enc}"]
    root, leaf, cms = _openssl_pki(tmp_path, "curve", keygen)
    anchor = x509.load_der_x509_certificate(root)
    assert _agree_certificates([leaf], [anchor]) == [expected]
    fast = BulkVerifier([anchor], threads=1).verify_batch([cms])[0]
    assert fast.code is verify_cms_item(cms, [anchor])[0] is expected


# --------------------------------------------------------------------------- algorithm identifiers

def _with_algorithm(cert: x509.Certificate, oid: str, params: bytes | None) -> bytes:
    """`cert` with both signature algorithm fields replaced (signature unchanged)."""
    tree = parse(_der(cert))
    algorithm = Node(0x30, [parse(Asn1Oid(oid).dump())] + ([parse(params)] if params else []))
    tree.body[0].body[2] = algorithm
    tree.body[1] = algorithm
    return encode(tree)


def _with_key_algorithm(cert: x509.Certificate, oid: str, params: bytes | None) -> x509.Certificate:
    tree = parse(_der(cert))
    spki = tree.body[0].body[6]
    spki.body[0] = Node(0x30, [parse(Asn1Oid(oid).dump())] + ([parse(params)] if params else []))
    return x509.load_der_x509_certificate(encode(tree))


def _seq(*parts: bytes) -> bytes:
    return encode(Node(0x30, [parse(p) for p in parts]))


def _alg(oid: str, params: bytes | None = None) -> bytes:
    return _seq(Asn1Oid(oid).dump(), *([params] if params else []))


def _int(value: int) -> bytes:
    return bytes([0x02, 1, value])


NULL = b"\x05\x00"
SHA256 = "2.16.840.1.101.3.4.2.1"
PARAMS = [None, NULL, b"\x30\x00", b"\x02\x01\x00", b"\x04\x10" + bytes(16),
          _seq(b"\x04\x01s", _int(9)), _seq(_int(23), _int(5), _int(11))]
SIGNATURE_OIDS = (
    ["1.2.840.10045.4.1"] + [f"1.2.840.10045.4.3.{i}" for i in range(1, 5)]          # ECDSA
    + [f"2.16.840.1.101.3.4.3.{i}" for i in range(1, 21)]                           # DSA, SHA-3, ML-DSA
    + [f"1.2.840.113549.1.1.{i}" for i in (1, 4, 5, 11, 12, 13, 14, 15)]             # RSA
    + ["1.3.14.3.2.29", "1.2.840.10040.4.3", "1.3.101.110", "1.3.101.112", "1.3.101.113",
       "1.2.3.4", "1.2.840.10045.2.1", "1.2.840.113549.2.9", "2.16.840.1.101.3.4.1.42",
       "1.2.840.10046.2.1", "1.2.840.113549.1.3.1", "1.2.840.113549.1.5.12",
       "1.2.840.113549.1.5.13", "1.2.840.113549.1.12.1.3", "2.16.840.1.101.3.4.4.2"])
PSS_PARAMS = {
    "defaults": _seq(),
    "sha256": _seq(encode(Node(0xa0, [parse(_alg(SHA256))])),
                   encode(Node(0xa1, [parse(_alg("1.2.840.113549.1.1.8", _alg(SHA256)))]))),
    "sha3-256": _seq(encode(Node(0xa0, [parse(_alg("2.16.840.1.101.3.4.2.8"))]))),
    "md5": _seq(encode(Node(0xa0, [parse(_alg("1.2.840.113549.2.5"))]))),
    "mgf1 with md5": _seq(encode(Node(0xa1, [parse(_alg("1.2.840.113549.1.1.8",
                                                          _alg("1.2.840.113549.2.5")))]))),
    "not mgf1": _seq(encode(Node(0xa1, [parse(_alg("1.2.3.4", _alg(SHA256)))]))),
    "sha1 spelled out": _seq(encode(Node(0xa0, [parse(_alg("1.3.14.3.2.26", NULL))]))),
    "trailer 2": _seq(encode(Node(0xa3, [parse(_int(2))]))),
}


def test_signature_algorithm_identifiers_agree(roots):
    """Every issuer key type against signature algorithm identifiers the reference
    verifies, declines, raises on, or refuses to parse (with each kind of parameters)."""
    leaf = _cert(ec.generate_private_key(ec.SECP256R1()), _name("any"),
                 ec.generate_private_key(ec.SECP256R1()).public_key(), LEAF_NAME, hashes.SHA256())
    items = {f"{oid} {params!r}": _with_algorithm(leaf, oid, params)
             for oid in SIGNATURE_OIDS for params in PARAMS}
    items.update({f"rsassa-pss {label}": _with_algorithm(leaf, "1.2.840.113549.1.1.10", params)
                  for label, params in PSS_PARAMS.items()})
    disagreements = []
    for kind, root in roots.items():
        # The leaf claims each root as its issuer, so every pair reaches the signature check.
        renamed = {label: _reissued(der, root.subject) for label, der in items.items()}
        fast = BulkVerifier([root], threads=2).verify_batch(list(renamed.values()), certificates=True)
        for (label, der), got in zip(renamed.items(), fast):
            want, _ = verify_certificate_item(der, [root])
            if got.code is not want:
                disagreements.append(f"{kind} {label}: fastpath {got.code.name}, reference {want.name}")
    assert not disagreements, "\n".join(disagreements)


def _reissued(der: bytes, issuer: x509.Name) -> bytes:
    tree = parse(der)
    tree.body[0].body[3] = parse(issuer.public_bytes())
    return encode(tree)


def test_some_identifiers_by_name(roots):
    leaf = _cert(ec.generate_private_key(ec.SECP256R1()), _name("any"),
                 ec.generate_private_key(ec.SECP256R1()).public_key(), LEAF_NAME, hashes.SHA256())
    cases = [
        ("1.2.840.10045.4.3.2", NULL, "ec", Result.MALFORMED),     # ECDSA parameters must be absent
        ("1.2.840.10045.4.3.2", None, "ec", Result.UNTRUSTED_SIGNER),
        ("1.2.840.113549.1.1.11", NULL, "rsa", Result.UNTRUSTED_SIGNER),
        ("2.16.840.1.101.3.4.3.3", None, "dsa", Result.MALFORMED),  # DSA with SHA-384: raises
        ("2.16.840.1.101.3.4.3.3", None, "ec", Result.UNTRUSTED_SIGNER),  # ... unless the key misfits
        ("1.2.3.4", None, "ec", Result.UNTRUSTED_SIGNER),
    ]
    for oid, params, kind, expected in cases:
        der = _reissued(_with_algorithm(leaf, oid, params), roots[kind].subject)
        assert _agree_certificates([der], [roots[kind]]) == [expected], (oid, params, kind)


@pytest.mark.parametrize("oid,params,expected", [
    ("1.2.3.4", None, Result.MALFORMED),                                   # unknown key type
    ("1.2.840.10045.2.1", Asn1Oid("1.2.3.4").dump(), Result.MALFORMED),    # unknown curve
    ("1.2.840.10045.2.1", NULL, Result.MALFORMED),                         # implicit curve
    ("1.2.840.113549.1.1.1", NULL, Result.UNTRUSTED_SIGNER),               # RSA label, EC bits
])
def test_issuer_keys_the_reference_cannot_load(roots, issuer_keys, oid, params, expected):
    """An anchor whose key the reference refuses (raises) or fails to read."""
    anchor = _with_key_algorithm(roots["ec"], oid, params)
    leaf = _cert(issuer_keys["ec"], anchor.subject, ec.generate_private_key(ec.SECP256R1()).public_key(),
                 LEAF_NAME, hashes.SHA256())
    assert _agree_certificates([_der(leaf)], [anchor]) == [expected]
