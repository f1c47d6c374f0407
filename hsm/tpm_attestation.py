"""The station's half of TPM device-identity attestation: pure software, no TPM.

TCG "TPM 2.0 Keys for Device Identity and Attestation", the CA side, for one board:

1. `check_endorsement(ek_certificate, ek_public)`: the EK certificate chains to
   a configured TPM maker root (hsm/chain.py), and the EK public area the
   board presents carries the certificate's key and is an EK (a restricted
   decryption key fixed to its TPM).
2. `challenge(iak_public)`: the IAK public area must describe a restricted
   signing key fixed to its TPM; MakeCredential encrypts a fresh secret to the
   EK for the IAK's name (a tpm2-tools credential blob for the board).
3. `check_activation(secret)`: the board returns what ActivateCredential
   recovered. Only the TPM holding that EK, with an object of that very name
   loaded, could have: the IAK is now bound to the certified TPM.
4. `certify_nonce()`: a fresh nonce for TPM2_Certify.
5. `check_certify(attest, signature, idevid_public, csr)`: the TPMS_ATTEST is
   TPM-generated (magic) and a certify; its signature is the bound IAK's; its
   extraData is the nonce of step 4 (else a replay); the certified name is the
   name of the IDevID public area presented, and the qualified name places it
   as a primary key of the endorsement hierarchy; the public area says
   fixedTPM, fixedParent, sensitiveDataOrigin and sign, and neither decrypt
   nor restricted; the CSR proves possession of that very key.

Why each check matters: a restricted key signs no data that starts with the
TPM_GENERATED magic unless the TPM produced it, so a certify signed by the
bound IAK is the TPM's own word. ActivateCredential refuses objects loaded
from outside the TPM (TPM_RC_AUTH_UNAVAILABLE), so a software key cannot stand
in for the IAK. The name covers every attribute, so the attributes checked are
the attributes of the key the TPM certified.

Steps must come in this order (EvidenceOrderError otherwise); a step may be
repeated (a new challenge or nonce replaces the old one). Each refusal is a
`key_evidence.KeyEvidenceError` subclass with one clear line.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import secrets
from typing import Callable, Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from tpm2_pytss import TSS2_Exception
from tpm2_pytss.constants import TPM2_ALG, TPM2_GENERATED, TPM2_RH, TPM2_ST, TPMA_OBJECT
from tpm2_pytss.types import TPM2B_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE
from tpm2_pytss.utils import credential_to_tools, make_credential as tpm_make_credential

from .chain import build_chain
from .errors import CertificateError, ExpiredCertificateError, UntrustedSignerError
from .key_evidence import (ActivationMismatchError, Assurance, AttestationKeyError,
                           CertifiedNameMismatchError, DeviceKeyAttributesError,
                           EndorsementKeyMismatchError, EvidenceOrderError, ForeignSignerError,
                           MalformedEvidenceError, ReplayedAttestationError, UnknownTpmMakerError,
                           VerifiedDeviceKey, check_csr_key)

NONCE_SIZE = 32
SECRET_SIZE = 32
#: hashes a certify signature may use (TPM name algorithms stations accept)
_SIGNATURE_HASHES = {TPM2_ALG.SHA256, TPM2_ALG.SHA384, TPM2_ALG.SHA512}
_HASHLIB = {TPM2_ALG.SHA256: "sha256", TPM2_ALG.SHA384: "sha384", TPM2_ALG.SHA512: "sha512"}
_FIXED = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
#: what every TCG EK template sets: a storage-like key that only decrypts credentials and seeds
_EK_ATTRIBUTES = _FIXED | TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.DECRYPT


# --------------------------------------------------------------------------- TPM structures

def _unmarshal(cls, data: bytes, what: str):
    """`cls` from exactly `data`: a short buffer or bytes left over are refused."""
    if not isinstance(data, (bytes, bytearray)):
        raise MalformedEvidenceError(f"the {what} must be bytes, not {type(data).__name__}")
    try:
        value, used = cls.unmarshal(bytes(data))
    except TSS2_Exception as exc:
        raise MalformedEvidenceError(f"the {what} is not a marshalled {cls.__name__} ({exc})") from None
    if used != len(data):
        raise MalformedEvidenceError(f"the {what} has {len(data) - used} bytes after its "
                                     f"{cls.__name__}")
    return value


def parse_public(data: bytes, what: str) -> TPM2B_PUBLIC:
    """A marshalled TPM2B_PUBLIC (what `tpm2_readpublic -o` writes) of an RSA or ECC key."""
    public = _unmarshal(TPM2B_PUBLIC, data, what)
    if public.publicArea.type not in (TPM2_ALG.RSA, TPM2_ALG.ECC):
        raise MalformedEvidenceError(f"the {what} is not an RSA or ECC key "
                                     f"(type {public.publicArea.type})")
    if public.publicArea.nameAlg not in _HASHLIB:
        raise MalformedEvidenceError(f"the {what} has name algorithm {public.publicArea.nameAlg}; "
                                     "SHA-256, SHA-384 or SHA-512 is required")
    return public


def public_key_of(public: TPM2B_PUBLIC, what: str):
    """The cryptography public key of a TPM public area."""
    try:
        return serialization.load_der_public_key(public.to_der())
    except (ValueError, TypeError, TSS2_Exception) as exc:
        raise MalformedEvidenceError(f"the {what} holds no usable public key ({exc})") from None


def name_of(public: TPM2B_PUBLIC) -> bytes:
    """The TPM name: name algorithm, then its hash of the marshalled TPMT_PUBLIC."""
    return bytes(public.get_name())


def endorsement_primary_qualified_name(name: bytes) -> bytes:
    """The qualified name of a primary key of the endorsement hierarchy with this name
    (TPM 2.0 Part 1, qualified names: QN = H(QN of the parent || name); a hierarchy's QN is
    its handle; `tpm2_readpublic` prints the same)."""
    alg = TPM2_ALG(int.from_bytes(name[:2], "big"))
    parent = int(TPM2_RH.ENDORSEMENT).to_bytes(4, "big")
    return name[:2] + hashlib.new(_HASHLIB[alg], parent + name).digest()


def _attribute_words(attrs: int) -> str:
    return str(TPMA_OBJECT(attrs)) or "none"


def check_idevid_public(public: TPM2B_PUBLIC) -> None:
    """An IDevID must be generated in the TPM, stay there and sign, and do nothing else."""
    attrs = public.publicArea.objectAttributes
    problems = []
    if attrs & TPMA_OBJECT.DECRYPT:
        problems.append("IDevID key can decrypt")
    if attrs & TPMA_OBJECT.RESTRICTED:
        problems.append("IDevID key is restricted (it could not sign a CSR or a voucher-request)")
    if not attrs & TPMA_OBJECT.SIGN_ENCRYPT:
        problems.append("IDevID key cannot sign")
    if not attrs & TPMA_OBJECT.FIXEDTPM:
        problems.append("IDevID key is not fixedTPM (it can be duplicated out of the TPM)")
    if not attrs & TPMA_OBJECT.FIXEDPARENT:
        problems.append("IDevID key is not fixedParent (it can be duplicated)")
    if not attrs & TPMA_OBJECT.SENSITIVEDATAORIGIN:
        problems.append("IDevID key was not generated by the TPM (sensitiveDataOrigin clear: "
                        "it may have been imported)")
    if problems:
        raise DeviceKeyAttributesError("; ".join(problems) + f" (attributes: {_attribute_words(attrs)})")


def check_iak_public(public: TPM2B_PUBLIC) -> None:
    """An IAK must be a restricted signing key generated in its TPM and fixed to it."""
    attrs = public.publicArea.objectAttributes
    missing = [word for flag, word in ((TPMA_OBJECT.RESTRICTED, "restricted"),
                                       (TPMA_OBJECT.SIGN_ENCRYPT, "sign"),
                                       (TPMA_OBJECT.FIXEDTPM, "fixedTPM"),
                                       (TPMA_OBJECT.FIXEDPARENT, "fixedParent"),
                                       (TPMA_OBJECT.SENSITIVEDATAORIGIN, "sensitiveDataOrigin"))
               if not attrs & flag]
    if missing or attrs & TPMA_OBJECT.DECRYPT:
        what = f"lacks {', '.join(missing)}" if missing else "can decrypt"
        raise AttestationKeyError(f"the IAK is not a restricted signing key fixed to its TPM: it "
                                  f"{what} (attributes: {_attribute_words(attrs)})")


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def make_credential(ek_public: TPM2B_PUBLIC, object_name: bytes, secret: bytes) -> bytes:
    """TPM2_MakeCredential in software: `secret` for the TPM holding the EK, released only
    with an object named `object_name` loaded; as a tpm2-tools credential blob."""
    try:
        id_object, encrypted_secret = tpm_make_credential(ek_public, secret, object_name)
    except (ValueError, TypeError, TSS2_Exception) as exc:
        raise EndorsementKeyMismatchError(f"cannot make a credential for this EK ({exc})") from None
    return credential_to_tools(id_object, encrypted_secret)


# --------------------------------------------------------------------------- one board's attestation

class _Step(enum.IntEnum):
    NEW = 0
    ENDORSED = 1
    CHALLENGED = 2
    ACTIVATED = 3
    NONCE_ISSUED = 4
    ATTESTED = 5


class TpmAttestation:
    """The station's state for attesting one board's TPM (see the module docstring).

    `maker_roots` are the TPM maker root certificates the station trusts;
    `maker_intermediates` their issuing CAs (EK certificates in NV carry no chain).
    `random_bytes(n)` draws secrets and nonces (tests give a deterministic one).
    """

    def __init__(self, maker_roots: Sequence[x509.Certificate],
                 maker_intermediates: Iterable[x509.Certificate] = (), *,
                 random_bytes: Callable[[int], bytes] = secrets.token_bytes,
                 at_time: dt.datetime | None = None, check_time: bool = True):
        if not maker_roots:
            raise UnknownTpmMakerError("no TPM maker root is configured: the station cannot "
                                       "trust any EK certificate (configure the maker's root CA)")
        self._roots = list(maker_roots)
        self._intermediates = list(maker_intermediates)
        self._random = random_bytes
        self._at_time = at_time
        self._check_time = check_time
        self._step = _Step.NEW
        self._ek_certificate: x509.Certificate | None = None
        self._ek_public: TPM2B_PUBLIC | None = None
        self._iak_public: TPM2B_PUBLIC | None = None
        self._secret = b""
        self._nonce = b""
        self.result: VerifiedDeviceKey | None = None

    def _require(self, step: _Step, doing: str) -> None:
        if self._step < step:
            raise EvidenceOrderError(f"cannot {doing} before {_NEEDS[step]}")
        if self._step == _Step.ATTESTED:
            raise EvidenceOrderError(f"cannot {doing}: this board's attestation is complete; "
                                     "start a new one")

    # -- 1 ---------------------------------------------------------------------

    def check_endorsement(self, ek_certificate: bytes, ek_public: bytes) -> x509.Certificate:
        """Check the EK certificate (DER) and the EK public area (marshalled TPM2B_PUBLIC).

        Checking an endorsement again starts over: the IAK must be bound anew.
        """
        self._require(_Step.NEW, "check an endorsement")
        self._step = _Step.NEW
        try:
            certificate = x509.load_der_x509_certificate(ek_certificate)
        except ValueError as exc:
            raise MalformedEvidenceError(f"the EK certificate is not a DER certificate: {exc}") from None
        try:
            build_chain(certificate, self._roots, self._intermediates, at_time=self._at_time,
                        check_time=self._check_time)
        except ExpiredCertificateError as exc:
            raise UnknownTpmMakerError(f"EK certificate chain is not valid now: {exc}") from None
        except (UntrustedSignerError, CertificateError):
            raise UnknownTpmMakerError(
                f"EK certificate from an unknown TPM maker: issued by "
                f"{certificate.issuer.rfc4514_string() or '(empty name)'}, which chains to none of "
                f"the {len(self._roots)} configured TPM maker root(s)") from None
        public = parse_public(ek_public, "EK public area")
        try:
            certified_key = _spki(certificate.public_key())
        except ValueError as exc:
            raise MalformedEvidenceError(f"the EK certificate's key cannot be read: {exc}") from None
        if _spki(public_key_of(public, "EK public area")) != certified_key:
            raise EndorsementKeyMismatchError("the EK public area is not the key of the EK "
                                              "certificate")
        attrs = public.publicArea.objectAttributes
        if attrs & _EK_ATTRIBUTES != _EK_ATTRIBUTES or attrs & TPMA_OBJECT.SIGN_ENCRYPT:
            raise EndorsementKeyMismatchError(
                "the EK public area is not a restricted decryption key fixed to its TPM "
                f"(attributes: {_attribute_words(attrs)})")
        self._ek_certificate, self._ek_public = certificate, public
        self._step = _Step.ENDORSED
        return certificate

    # -- 2, 3 ------------------------------------------------------------------

    def challenge(self, iak_public: bytes) -> bytes:
        """A credential blob (tpm2-tools format) for the board to activate with its EK and IAK."""
        self._require(_Step.ENDORSED, "challenge the IAK")
        public = parse_public(iak_public, "IAK public area")
        check_iak_public(public)
        public_key_of(public, "IAK public area")
        self._secret = self._random(SECRET_SIZE)
        blob = make_credential(self._ek_public, name_of(public), self._secret)
        self._iak_public = public
        self._step = _Step.CHALLENGED
        return blob

    def check_activation(self, secret: bytes) -> None:
        """The secret the board's TPM recovered must be the one in the challenge."""
        self._require(_Step.CHALLENGED, "check an activation")
        if self._step != _Step.CHALLENGED:
            raise EvidenceOrderError("the IAK is already bound; issue a certify nonce")
        expected, self._secret = self._secret, b""  # one answer per challenge
        if not expected or not hmac.compare_digest(bytes(secret), expected):
            self._step = _Step.ENDORSED
            raise ActivationMismatchError(
                "the board did not recover the credential: its IAK is not in the TPM of the "
                "certified EK (or the IAK public area presented is not its IAK's)")
        self._step = _Step.ACTIVATED

    # -- 4, 5 ------------------------------------------------------------------

    def certify_nonce(self) -> bytes:
        """A fresh nonce for TPM2_Certify; it replaces any earlier one."""
        self._require(_Step.ACTIVATED, "issue a certify nonce")
        self._nonce = self._random(NONCE_SIZE)
        self._step = _Step.NONCE_ISSUED
        return self._nonce

    def check_certify(self, attest: bytes, signature: bytes, idevid_public: bytes,
                      csr: x509.CertificateSigningRequest) -> VerifiedDeviceKey:
        """Check the board's TPM2_Certify of its IDevID and the CSR; the key to certify."""
        self._require(_Step.NONCE_ISSUED, "check a certify")
        nonce, self._nonce = self._nonce, b""  # a nonce is good for one answer
        self._step = _Step.ACTIVATED
        statement = _unmarshal(TPMS_ATTEST, attest, "certify statement (TPMS_ATTEST)")
        sig = _unmarshal(TPMT_SIGNATURE, signature, "certify signature (TPMT_SIGNATURE)")
        if statement.magic != TPM2_GENERATED.VALUE:
            raise MalformedEvidenceError("the certify statement was not produced by a TPM (its "
                                         "magic is not TPM_GENERATED)")
        if statement.type != TPM2_ST.ATTEST_CERTIFY:
            raise MalformedEvidenceError(f"the statement is a {statement.type}, not a certify")
        self._check_signature(sig, bytes(attest))
        if not hmac.compare_digest(bytes(statement.extraData), nonce):
            raise ReplayedAttestationError("the nonce differs: replayed attestation (the certify "
                                           "is not over the nonce this station just issued)")
        public = parse_public(idevid_public, "IDevID public area")
        name = name_of(public)
        if bytes(statement.attested.certify.name) != name:
            raise CertifiedNameMismatchError("the certify names another key than the IDevID "
                                             "public area presented")
        if bytes(statement.attested.certify.qualifiedName) != endorsement_primary_qualified_name(name):
            raise CertifiedNameMismatchError("the certified IDevID is not a primary key of the "
                                             "endorsement hierarchy (an owner clear would erase it)")
        check_idevid_public(public)
        public_key = public_key_of(public, "IDevID public area")
        check_csr_key(csr, public_key, "the IDevID key the TPM certified")
        iak_name = name_of(self._iak_public)
        self.result = VerifiedDeviceKey(
            public_key, Assurance.TPM_ATTESTED,
            {"ek-certificate-sha256": hashlib.sha256(
                 self._ek_certificate.public_bytes(serialization.Encoding.DER)).hexdigest(),
             "ek-issuer": self._ek_certificate.issuer.rfc4514_string(),
             "iak-name": iak_name.hex(), "idevid-name": name.hex(),
             "idevid-attributes": _attribute_words(public.publicArea.objectAttributes)},
            iak_public_key=public_key_of(self._iak_public, "IAK public area"),
            ek_certificate=self._ek_certificate)
        self._step = _Step.ATTESTED
        return self.result

    def _check_signature(self, sig: TPMT_SIGNATURE, attest: bytes) -> None:
        foreign = ForeignSignerError("the certify is signed by a key other than the activated IAK")
        if sig.sigAlg not in (TPM2_ALG.ECDSA, TPM2_ALG.RSASSA, TPM2_ALG.RSAPSS):
            raise foreign
        if sig.signature.any.hashAlg not in _SIGNATURE_HASHES:
            raise MalformedEvidenceError(f"the certify is signed with hash "
                                         f"{sig.signature.any.hashAlg}; SHA-256 or better is required")
        try:
            sig.verify_signature(self._iak_public, attest)
        except (InvalidSignature, ValueError, TypeError):
            raise foreign from None


_NEEDS = {
    _Step.NEW: "nothing",
    _Step.ENDORSED: "the EK certificate is checked (check_endorsement)",
    _Step.CHALLENGED: "the IAK is challenged (challenge)",
    _Step.ACTIVATED: "the activation is checked (check_activation)",
    _Step.NONCE_ISSUED: "a certify nonce is issued (certify_nonce)",
}


__all__ = ["TpmAttestation", "parse_public", "public_key_of", "name_of", "make_credential",
           "check_idevid_public", "check_iak_public", "endorsement_primary_qualified_name",
           "NONCE_SIZE"]
