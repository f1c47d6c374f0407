"""The verification profile: one source for the fastpath and the reference.

The extension must be built from the profile and result codes it runs with, and
the profile's library facts (what cryptography loads and checks) must be what the
installed libraries do, since the fastpath predicts the reference from them.
"""

from __future__ import annotations

import datetime as dt
import enum
from pathlib import Path

import pytest
from asn1crypto import algos
from asn1crypto.core import ObjectIdentifier
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa, x448, x25519
from cryptography.x509.oid import NameOID

from pledgeforge.fastpath import _verify, profile_codegen
from pledgeforge.fastpath.results import Result
from pledgeforge.hsm import verification_profile as profile

ROOT = Path(__file__).resolve().parents[1]


def _profile() -> dict:
    return dict(vars(profile))


def test_the_extension_is_built_from_this_profile_and_these_result_codes():
    assert _verify.PROFILE_FINGERPRINT == profile_codegen.fingerprint(_profile(), Result), \
        "the fastpath extension is stale: run make ext"
    generated = profile_codegen.generate(*profile_codegen.load_sources(str(ROOT)))
    assert (ROOT / profile_codegen.PXD_PATH).read_text() == generated


def test_the_generated_result_codes_are_results():
    text = profile_codegen.generate(_profile(), Result)
    assert [line.split() for line in text.splitlines() if line.startswith("    R_")] == \
        [[f"R_{r.name}", "=", str(int(r))] for r in Result]


def test_the_fingerprint_follows_every_value():
    base = profile_codegen.fingerprint(_profile(), Result)
    deeper = {**_profile(), "MAX_CHAIN_DEPTH": profile.MAX_CHAIN_DEPTH + 1}
    fewer_curves = {**_profile(), "NAMED_CURVES": dict(list(profile.NAMED_CURVES.items())[1:])}
    renumbered = enum.IntEnum("Result", [(r.name, int(r) + 1) for r in Result])
    assert len({base, profile_codegen.fingerprint(deeper, Result),
                profile_codegen.fingerprint(fewer_curves, Result),
                profile_codegen.fingerprint(_profile(), renumbered)}) == 4


def test_a_profile_naming_an_unknown_hash_or_scheme_does_not_build():
    with pytest.raises(ValueError, match="unknown hash 'sha2'"):
        profile_codegen.generate({**_profile(), "CMS_DIGESTS": ("sha2",)}, Result)
    bad = {**_profile(), "CMS_SIGNATURE_ALGORITHMS": {"1.2.3": ("x", "ecdsa-ish", "sha256")}}
    with pytest.raises(ValueError, match="unknown signature scheme 'ecdsa-ish'"):
        profile_codegen.generate(bad, Result)


def _profile_oids() -> set[str]:
    p = profile
    return ({p.SIGNED_DATA, p.CONTENT_TYPE_ATTRIBUTE, p.MESSAGE_DIGEST_ATTRIBUTE,
             p.SIGNING_TIME_ATTRIBUTE, p.UNIQUE_IDENTIFIER_ATTRIBUTE, p.SERIAL_NUMBER_ATTRIBUTE}
            | {oid for oid, _ in p.HASHES.values()} | set(p.CONTENT_TYPES.values())
            | set(p.CMS_SIGNATURE_ALGORITHMS) | set(p.CERTIFICATE_SIGNATURE_ALGORITHMS)
            | set(p.PUBLIC_KEY_TYPES) | set(p.NAMED_CURVES))


def test_oids_are_encoded_as_asn1crypto_encodes_them():
    for dotted in _profile_oids():
        assert profile_codegen.oid_der(dotted) == ObjectIdentifier(dotted).contents, dotted
        assert len(profile_codegen.oid_der(dotted)) <= profile.MAX_OID_LENGTH


def test_hash_names_are_those_of_asn1crypto_and_hashlib():
    for name, (oid, _) in profile.HASHES.items():
        assert algos.DigestAlgorithmId._map[oid] == name
    assert set(profile.CMS_DIGESTS) <= set(profile.HASHES)


def test_named_curves_are_the_curves_cryptography_loads_keys_on():
    loads = {}
    for oid in (v for k, v in vars(ec.EllipticCurveOID).items() if not k.startswith("_")):
        try:
            curve = ec.get_curve_for_oid(oid)()
            spki = ec.generate_private_key(curve).public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            serialization.load_der_public_key(spki)
        except (LookupError, UnsupportedAlgorithm, ValueError):
            continue
        loads[oid.dotted_string] = curve.name
    assert loads == profile.NAMED_CURVES


def test_public_key_types_cover_the_keys_cryptography_writes():
    from asn1crypto.keys import PublicKeyInfo

    keys = [rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP256R1()),
            dsa.generate_private_key(1024), ed25519.Ed25519PrivateKey.generate(),
            ed448.Ed448PrivateKey.generate(), x25519.X25519PrivateKey.generate(),
            x448.X448PrivateKey.generate()]
    for key in keys:
        spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        assert PublicKeyInfo.load(spki)["algorithm"]["algorithm"].dotted in profile.PUBLIC_KEY_TYPES
    # A key type outside the list: cryptography refuses it outright (GOST R 34.10-2001).
    algorithm = ObjectIdentifier("1.2.643.2.2.19").dump()
    key_bits = b"\x03\x11\x00" + bytes(range(16))
    gost = bytes([0x30, 2 + len(algorithm) + len(key_bits), 0x30, len(algorithm)]) + algorithm + key_bits
    assert "1.2.643.2.2.19" not in profile.PUBLIC_KEY_TYPES
    with pytest.raises(UnsupportedAlgorithm):
        serialization.load_der_public_key(gost)


def _certificate(key, hash_algorithm, **kwargs) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "profile")])
    start = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=1))
            .sign(key, hash_algorithm, **kwargs))


@pytest.mark.parametrize("hash_algorithm", [hashes.SHA224(), hashes.SHA256(), hashes.SHA384(),
                                            hashes.SHA512(), hashes.SHA3_256(), hashes.SHA3_512()])
def test_certificate_signature_algorithms_are_what_cryptography_signs_and_checks(hash_algorithm):
    keys = {"ecdsa": ec.generate_private_key(ec.SECP256R1()),
            "rsa-pkcs1": rsa.generate_private_key(65537, 2048)}
    if not hash_algorithm.name.startswith("sha3"):
        keys["dsa"] = dsa.generate_private_key(1024)
    for scheme, key in keys.items():
        # cryptography picks the signature algorithm OID for the key and the hash.
        cert = _certificate(key, hash_algorithm)
        want = profile.CERTIFICATE_SIGNATURE_ALGORITHMS[cert.signature_algorithm_oid.dotted_string]
        assert want[:2] == (scheme, hash_algorithm.name.replace("-", "_"))
        try:
            cert.verify_directly_issued_by(cert)
            checked = True
        except UnsupportedAlgorithm:
            checked = False
        assert checked == want[2], (scheme, hash_algorithm.name)


def test_edwards_and_pss_certificate_signatures():
    table = profile.CERTIFICATE_SIGNATURE_ALGORITHMS
    for key, scheme in ((ed25519.Ed25519PrivateKey.generate(), "ed25519"),
                        (ed448.Ed448PrivateKey.generate(), "ed448")):
        assert table[_certificate(key, None).signature_algorithm_oid.dotted_string] == (scheme, None, True)
    key = rsa.generate_private_key(65537, 2048)
    pss = _certificate(key, hashes.SHA256(), rsa_padding=padding.PSS(
        mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH))
    assert table[pss.signature_algorithm_oid.dotted_string] == ("rsa-pss", profile.PSS_PARAMETERS, True)
    pss.verify_directly_issued_by(pss)


def test_cms_signature_algorithms_name_cms_digests_and_asn1crypto_knows_them():
    for oid, (_, scheme, hash_name) in profile.CMS_SIGNATURE_ALGORITHMS.items():
        assert scheme in profile.SIGNATURE_SCHEMES
        assert hash_name in (*profile.CMS_DIGESTS, profile.DIGEST_ALGORITHM, profile.PSS_PARAMETERS)
        # id-ecPublicKey is a key type, not a signature algorithm, to asn1crypto.
        assert oid in algos.SignedDigestAlgorithmId._map or oid in profile.PUBLIC_KEY_TYPES
