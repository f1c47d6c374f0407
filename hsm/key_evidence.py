"""What a manufacturing station accepts as evidence that a device key lives in hardware.

Before the manufacturer CA issues an IDevID, the station must believe that the
key in the CSR was generated inside the board's key store and cannot leave it.
Two kinds of evidence, of unequal strength, and the verdict is recorded with
the certificate:

- `Assurance.TPM_ATTESTED`: TPM2_Certify by an IAK that ActivateCredential
  bound to an EK whose certificate chains to a known TPM maker
  (`tpm_attestation`). The TPM itself vouches; a board's software cannot lie.
- `Assurance.TOKEN_REPORTED`: a PKCS#11 secure element's attributes of the
  key (CKA_LOCAL, CKA_NEVER_EXTRACTABLE, CKA_SENSITIVE, CKA_ALWAYS_SENSITIVE,
  CKA_EXTRACTABLE) as the board reports them, plus the CSR's proof of
  possession. Nothing signs the report: the board's firmware could lie, so
  this is the weaker assurance.

Every refusal is a `KeyEvidenceError` subclass whose message says in one line
what is wrong.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pledgeforge.errors import VerificationFailure

from .errors import CertificateError
from .x509 import check_csr


class Assurance(enum.Enum):
    """How strongly the evidence shows that the key is resident in hardware."""

    TPM_ATTESTED = "tpm-attested"
    TOKEN_REPORTED = "token-reported"

    @property
    def description(self) -> str:
        if self is Assurance.TPM_ATTESTED:
            return ("TPM2_Certify by an IAK bound to an EK certified by a known TPM maker: "
                    "the TPM vouches that the key is resident")
        return ("the secure element's reported key attributes and the CSR's proof of "
                "possession: the board vouches for itself (weaker than TPM attestation)")


class KeyEvidenceError(VerificationFailure):
    """The evidence that a device key is resident in hardware was refused."""


class MalformedEvidenceError(KeyEvidenceError):
    """Bytes presented as a TPM structure, a certificate or a CSR do not parse as one."""


class UnknownTpmMakerError(KeyEvidenceError):
    """The EK certificate does not chain to a configured TPM maker root."""


class EndorsementKeyMismatchError(KeyEvidenceError):
    """The EK public area is not the key of the EK certificate, or not an EK."""


class AttestationKeyError(KeyEvidenceError):
    """The IAK public area is not a restricted signing key fixed to its TPM."""


class ActivationMismatchError(KeyEvidenceError):
    """The board did not recover the credential's secret: its IAK is not beside the EK."""


class ForeignSignerError(KeyEvidenceError):
    """The certify is not signed by the IAK that ActivateCredential bound."""


class ReplayedAttestationError(KeyEvidenceError):
    """The certify is over another nonce than the one the station just issued."""


class CertifiedNameMismatchError(KeyEvidenceError):
    """The certify names another object than the IDevID public area presented."""


class DeviceKeyAttributesError(KeyEvidenceError):
    """The device key may leave its key store, was imported, or can do more than sign."""


class CsrKeyMismatchError(KeyEvidenceError):
    """The CSR is not signed by, or does not carry, the key the evidence is about."""


class EvidenceOrderError(KeyEvidenceError):
    """A station asked for a step before the steps it depends on (a bug in the station)."""


@dataclass(frozen=True)
class VerifiedDeviceKey:
    """A device key the station may certify, and why it believes the key is resident."""

    public_key: object  # cryptography public key
    assurance: Assurance
    #: what the manufacturing record keeps, as strings (EK certificate hash, IAK name, attributes)
    evidence: Mapping[str, str] = field(default_factory=dict)
    #: TPM attestation only: the IAK (its certificate is issued too) and the EK certificate
    iak_public_key: object | None = None
    ek_certificate: x509.Certificate | None = None

    @property
    def public_key_der(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def check_csr_key(csr: x509.CertificateSigningRequest, public_key, what: str) -> None:
    """The CSR proves possession of its key, and that key is `public_key` (`what` it is)."""
    try:
        check_csr(csr)
    except CertificateError as exc:
        raise CsrKeyMismatchError(f"the CSR is refused: {exc}") from None
    try:
        csr_key = _spki(csr.public_key())
    except ValueError as exc:
        raise MalformedEvidenceError(f"the CSR's public key cannot be read: {exc}") from None
    if csr_key != _spki(public_key):
        raise CsrKeyMismatchError(f"the CSR's key is not {what}: the CSR was signed by a key "
                                  "outside the key store")


@dataclass(frozen=True)
class TokenKeyReport:
    """A PKCS#11 token's attributes of one private key, and that key's public half."""

    public_key_der: bytes  # SubjectPublicKeyInfo
    local: bool  # CKA_LOCAL: generated on the token, not imported
    never_extractable: bool  # CKA_NEVER_EXTRACTABLE
    sensitive: bool  # CKA_SENSITIVE
    always_sensitive: bool  # CKA_ALWAYS_SENSITIVE
    extractable: bool  # CKA_EXTRACTABLE

    def problems(self) -> list[str]:
        """What makes the key unfit for a device identity, in words; empty when none."""
        found = []
        if not self.local:
            found.append("was imported, not generated on the token (CKA_LOCAL false)")
        if self.extractable:
            found.append("can be exported (CKA_EXTRACTABLE true)")
        elif not self.never_extractable:
            found.append("was exportable once (CKA_NEVER_EXTRACTABLE false)")
        if not self.sensitive:
            found.append("is not sensitive (CKA_SENSITIVE false)")
        elif not self.always_sensitive:
            found.append("was not sensitive from its creation (CKA_ALWAYS_SENSITIVE false)")
        return found

    def evidence(self) -> dict[str, str]:
        flag = lambda value: "true" if value else "false"  # noqa: E731
        return {"CKA_LOCAL": flag(self.local), "CKA_NEVER_EXTRACTABLE": flag(self.never_extractable),
                "CKA_SENSITIVE": flag(self.sensitive),
                "CKA_ALWAYS_SENSITIVE": flag(self.always_sensitive),
                "CKA_EXTRACTABLE": flag(self.extractable)}


def verify_token_key(report: TokenKeyReport, csr: x509.CertificateSigningRequest) -> VerifiedDeviceKey:
    """The station's check of a PKCS#11 board: the reported attributes and the CSR's key.

    Accepted keys are recorded as `Assurance.TOKEN_REPORTED`, the weaker assurance.
    """
    try:
        public_key = serialization.load_der_public_key(report.public_key_der)
    except ValueError as exc:
        raise MalformedEvidenceError(f"the token's report carries no readable public key: "
                                     f"{exc}") from None
    problems = report.problems()
    if problems:
        raise DeviceKeyAttributesError("the token key " + "; it ".join(problems))
    check_csr_key(csr, public_key, "the token key whose attributes were reported")
    return VerifiedDeviceKey(public_key, Assurance.TOKEN_REPORTED, report.evidence())


__all__ = ["Assurance", "VerifiedDeviceKey", "TokenKeyReport", "verify_token_key", "check_csr_key",
           "KeyEvidenceError", "MalformedEvidenceError", "UnknownTpmMakerError",
           "EndorsementKeyMismatchError", "AttestationKeyError", "ActivationMismatchError",
           "ForeignSignerError", "ReplayedAttestationError", "CertifiedNameMismatchError",
           "DeviceKeyAttributesError", "CsrKeyMismatchError", "EvidenceOrderError"]
