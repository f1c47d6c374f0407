"""What voucher and certificate verification accepts, written once as data.

Two verifiers apply it: the reference (hsm.cms.verify_cms, hsm.chain.build_chain)
and the bulk fastpath, whose Cython extension is generated from this file when it
is built (fastpath/profile_codegen.py), so neither repeats a number or an OID.

The entries are of two kinds:

- choices of this project: the digests, signature algorithms and content types a
  voucher may use, how long a certificate path may be, what a bulk item may be.
  hsm.cms, hsm.chain and fastpath read them from here;
- what the libraries under the reference accept (cryptography's curves, key
  types, certificate signature algorithms and name strings). cryptography
  enforces them for the reference; the fastpath reads no certificate through
  cryptography and needs them spelled out to give the same answer.
  tests/test_verification_profile.py and tests/test_fastpath_library_facts.py check
  them against the installed libraries.

Plain data and the standard library only: setup.py reads this file before
anything is installed.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- limits

# Bulk items are DER: one element with definite, minimal lengths and low tag
# numbers; universal constructed elements only SEQUENCE and SET (no BER
# constructed strings); nesting up to MAX_NESTING. The reference reads BER, so
# fastpath.der_framing applies this rule before it (the extension applies it in C).

#: Constructed elements inside each other in one bulk item; deeper is malformed.
MAX_NESTING = 64
#: Larger bulk items are not vouchers, requests or certificates; refusing them bounds memory.
MAX_ITEM_BYTES = 16 * 1024 * 1024
#: Certificates in a path before the trust anchor.
MAX_CHAIN_DEPTH = 8
#: Content octets of the longest OBJECT IDENTIFIER cryptography's parser reads.
MAX_OID_LENGTH = 63

# --------------------------------------------------------------------------- hashes

#: Hashes by name (hashlib's and asn1crypto's): OID and libcrypto name. The ones
#: cryptography verifies certificate signatures with.
HASHES = {
    "sha1": ("1.3.14.3.2.26", "SHA1"),
    "sha224": ("2.16.840.1.101.3.4.2.4", "SHA224"),
    "sha256": ("2.16.840.1.101.3.4.2.1", "SHA256"),
    "sha384": ("2.16.840.1.101.3.4.2.2", "SHA384"),
    "sha512": ("2.16.840.1.101.3.4.2.3", "SHA512"),
    "sha3_224": ("2.16.840.1.101.3.4.2.7", "SHA3-224"),
    "sha3_256": ("2.16.840.1.101.3.4.2.8", "SHA3-256"),
    "sha3_384": ("2.16.840.1.101.3.4.2.9", "SHA3-384"),
    "sha3_512": ("2.16.840.1.101.3.4.2.10", "SHA3-512"),
}

# --------------------------------------------------------------------------- CMS (choices)

SIGNED_DATA = "1.2.840.113549.1.7.2"

#: eContentTypes a voucher or voucher-request may carry: RFC 8366's
#: id-ct-animaJSONVoucher, and id-data, which deployed implementations emit.
CONTENT_TYPES = {
    "data": "1.2.840.113549.1.7.1",
    "voucher": "1.2.840.113549.1.9.16.1.40",
}

#: Signed attributes every SignerInfo must carry once (signingTime is read when present).
CONTENT_TYPE_ATTRIBUTE = "1.2.840.113549.1.9.3"
MESSAGE_DIGEST_ATTRIBUTE = "1.2.840.113549.1.9.4"
SIGNING_TIME_ATTRIBUTE = "1.2.840.113549.1.9.5"

#: SignerInfo digestAlgorithm.
CMS_DIGESTS = ("sha256", "sha384", "sha512")

#: Signature schemes, as key type and padding: what a signature algorithm asks for.
SIGNATURE_SCHEMES = ("ecdsa", "rsa-pkcs1", "rsa-pss", "ed25519", "ed448", "dsa")

#: Where a signature algorithm's hash comes from when its OID does not name one.
DIGEST_ALGORITHM = "digestAlgorithm"        # the SignerInfo's digestAlgorithm
PSS_PARAMETERS = "RSASSA-PSS-params"        # the hash the parameters name (MGF1 must agree)

#: SignerInfo signatureAlgorithm: OID -> (name, scheme, hash). The hash must be
#: one of CMS_DIGESTS; the scheme one hsm.signer.verify_signature checks (ecdsa,
#: rsa-pkcs1, rsa-pss, ed25519).
CMS_SIGNATURE_ALGORITHMS = {
    "1.2.840.10045.4.3.2": ("ecdsa-with-SHA256", "ecdsa", "sha256"),
    "1.2.840.10045.4.3.3": ("ecdsa-with-SHA384", "ecdsa", "sha384"),
    "1.2.840.10045.4.3.4": ("ecdsa-with-SHA512", "ecdsa", "sha512"),
    "1.2.840.10045.4": ("ecdsa", "ecdsa", DIGEST_ALGORITHM),
    # id-ecPublicKey, as deployed pledges write it; OpenSSL verifies it as ECDSA.
    "1.2.840.10045.2.1": ("id-ecPublicKey", "ecdsa", DIGEST_ALGORITHM),
    # rsaEncryption, as OpenSSL writes it in CMS.
    "1.2.840.113549.1.1.1": ("rsaEncryption", "rsa-pkcs1", DIGEST_ALGORITHM),
    "1.2.840.113549.1.1.11": ("sha256WithRSAEncryption", "rsa-pkcs1", "sha256"),
    "1.2.840.113549.1.1.12": ("sha384WithRSAEncryption", "rsa-pkcs1", "sha384"),
    "1.2.840.113549.1.1.13": ("sha512WithRSAEncryption", "rsa-pkcs1", "sha512"),
    "1.2.840.113549.1.1.10": ("RSASSA-PSS", "rsa-pss", PSS_PARAMETERS),
    "1.3.101.112": ("Ed25519", "ed25519", DIGEST_ALGORITHM),
}

# --------------------------------------------------------------------------- X.509 (libraries)

#: Certificate signature algorithms cryptography's verify_directly_issued_by checks:
#: OID -> (scheme, hash, checkable). Not checkable: cryptography knows the key type
#: but raises on the hash, which makes the path unreadable once an issuer's key fits.
#: Other algorithms (SHA-1, MD5, DSA with SHA-3, ...) it declines: no issuer signed
#: such a certificate as far as the path is concerned. RSASSA-PSS is checkable when
#: its parameters name MGF1 and hashes of HASHES.
CERTIFICATE_SIGNATURE_ALGORITHMS = {
    "1.2.840.10045.4.3.1": ("ecdsa", "sha224", True),
    "1.2.840.10045.4.3.2": ("ecdsa", "sha256", True),
    "1.2.840.10045.4.3.3": ("ecdsa", "sha384", True),
    "1.2.840.10045.4.3.4": ("ecdsa", "sha512", True),
    "2.16.840.1.101.3.4.3.9": ("ecdsa", "sha3_224", True),
    "2.16.840.1.101.3.4.3.10": ("ecdsa", "sha3_256", True),
    "2.16.840.1.101.3.4.3.11": ("ecdsa", "sha3_384", True),
    "2.16.840.1.101.3.4.3.12": ("ecdsa", "sha3_512", True),
    "1.2.840.113549.1.1.14": ("rsa-pkcs1", "sha224", True),
    "1.2.840.113549.1.1.11": ("rsa-pkcs1", "sha256", True),
    "1.2.840.113549.1.1.12": ("rsa-pkcs1", "sha384", True),
    "1.2.840.113549.1.1.13": ("rsa-pkcs1", "sha512", True),
    "2.16.840.1.101.3.4.3.13": ("rsa-pkcs1", "sha3_224", True),
    "2.16.840.1.101.3.4.3.14": ("rsa-pkcs1", "sha3_256", True),
    "2.16.840.1.101.3.4.3.15": ("rsa-pkcs1", "sha3_384", True),
    "2.16.840.1.101.3.4.3.16": ("rsa-pkcs1", "sha3_512", True),
    "1.2.840.113549.1.1.10": ("rsa-pss", PSS_PARAMETERS, True),
    "2.16.840.1.101.3.4.3.1": ("dsa", "sha224", True),
    "2.16.840.1.101.3.4.3.2": ("dsa", "sha256", True),
    "2.16.840.1.101.3.4.3.3": ("dsa", "sha384", False),
    "2.16.840.1.101.3.4.3.4": ("dsa", "sha512", False),
    "1.3.101.112": ("ed25519", None, True),
    "1.3.101.113": ("ed448", None, True),
}

#: SubjectPublicKeyInfo algorithms cryptography loads; it refuses any other outright.
PUBLIC_KEY_TYPES = {
    "1.2.840.113549.1.1.1": "rsaEncryption",
    "1.2.840.113549.1.1.10": "RSASSA-PSS",
    "1.2.840.10045.2.1": "id-ecPublicKey",
    "1.2.840.10040.4.1": "DSA",
    "1.2.840.10046.2.1": "dhpublicnumber",
    "1.2.840.113549.1.3.1": "dhKeyAgreement",
    "1.3.101.110": "X25519",
    "1.3.101.111": "X448",
    "1.3.101.112": "Ed25519",
    "1.3.101.113": "Ed448",
    "2.16.840.1.101.3.4.3.17": "ML-DSA-44",
    "2.16.840.1.101.3.4.3.18": "ML-DSA-65",
    "2.16.840.1.101.3.4.3.19": "ML-DSA-87",
    "2.16.840.1.101.3.4.4.2": "ML-KEM-768",
    "2.16.840.1.101.3.4.4.3": "ML-KEM-1024",
}

#: Named curves cryptography loads EC keys on (OID -> its name for the curve).
NAMED_CURVES = {
    "1.2.840.10045.3.1.1": "secp192r1",
    "1.3.132.0.33": "secp224r1",
    "1.2.840.10045.3.1.7": "secp256r1",
    "1.3.132.0.34": "secp384r1",
    "1.3.132.0.35": "secp521r1",
    "1.3.132.0.10": "secp256k1",
    "1.3.36.3.3.2.8.1.1.7": "brainpoolP256r1",
    "1.3.36.3.3.2.8.1.1.11": "brainpoolP384r1",
    "1.3.36.3.3.2.8.1.1.13": "brainpoolP512r1",
}

#: Explicit (SpecifiedECDomain) curve parameters cryptography accepts: only those
#: of these curves, by the name libcrypto gives the curve they match.
EXPLICIT_CURVES = ("prime256v1", "secp384r1", "secp521r1")

#: Name attribute values (issuer, subject) by DER tag: (ASN.1 type, the text
#: encoding the value must decode with for the name to be read, the alphabet or
#: encoding checked as soon as the certificate loads, or None). A value of any
#: other type loads but cannot be read as text.
NAME_STRING_TYPES = {
    0x04: ("OCTET STRING", "utf-8", None),
    0x0C: ("UTF8String", "utf-8", None),
    0x12: ("NumericString", "utf-8", None),
    0x13: ("PrintableString", "utf-8", "printable"),
    0x14: ("TeletexString", "utf-8", None),
    0x16: ("IA5String", "utf-8", None),
    0x17: ("UTCTime", "utf-8", None),
    0x18: ("GeneralizedTime", "utf-8", None),
    0x1A: ("VisibleString", "utf-8", None),
    0x1C: ("UniversalString", "utf-32-be", "utf-32-be"),
    0x1E: ("BMPString", "utf-16-be", "utf-16-be"),
}

#: The PrintableString alphabet (X.680).
PRINTABLE_CHARACTERS = ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                        " '()+,-./:=?")

#: x500UniqueIdentifier: the one name attribute whose value may also be a BIT STRING.
UNIQUE_IDENTIFIER_ATTRIBUTE = "2.5.4.45"

#: The subject attribute bulk verification reports: X520SerialNumber (802.1AR IDevID).
SERIAL_NUMBER_ATTRIBUTE = "2.5.4.5"
