"""A board's TPM device identity (TCG "TPM 2.0 Keys for Device Identity and Attestation").

What runs beside the TPM while a manufacturing station provisions the board:

- the endorsement key (EK): its certificate, read from the TPM's NV where the
  TPM maker stored it, and its public area, recreated from the TCG template
  (the EK is a primary key, so the same template gives the same key);
- the IAK, a restricted signing key (it signs only what the TPM produced), and
  the IDevID, an unrestricted signing key, both primary keys of the endorsement
  hierarchy made persistent (an owner clear does not erase them);
- TPM2_ActivateCredential: the station encrypts a secret to the EK for the
  IAK's name; only this TPM, holding both, recovers it;
- TPM2_Certify of the IDevID by the IAK over the station's nonce: the TPM's
  signed statement that a key with that public area is resident in it.

Everything travels as the TPM's own marshalled structures (TPM2B_PUBLIC,
TPMS_ATTEST, TPMT_SIGNATURE) and the credential in the tpm2-tools format
(`tpm2_makecredential -o`), so tpm2-tools read and write the same bytes. The
station's checks are in `tpm_attestation`; this module needs a TPM, that one
never does. TPM access goes through tpm_backend's shared connection per TCTI.
"""

from __future__ import annotations

from dataclasses import dataclass

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import (ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_PT_NV, TPM2_RC, TPM2_SE,
                                  TPMA_OBJECT)
from tpm2_pytss.types import TPM2B_PUBLIC, TPMT_SIG_SCHEME, TPMT_SYM_DEF
from tpm2_pytss.utils import NoSuchIndex, create_ek_template, tools_to_credential

from . import tpm_backend
from .errors import KeyNotFoundError, KeyStoreError
from .keyuri import TpmUri
from .signer import KeyAlgorithm
from .tpm_backend import _NO_OBJECT, _failure, _require_handle

#: Where a board keeps its identity keys: the IDevID where boards and the lab keep it, the
#: IAK beside it.
IDEVID_HANDLE = 0x81020000
IAK_HANDLE = 0x81020001


@dataclass(frozen=True)
class EkKind:
    """One TCG EK credential profile template and the NV index of its certificate."""

    template: str  # tpm2-pytss template name (TCG EK Credential Profile)
    certificate_index: int


#: EK kinds by key algorithm spelling. swtpm_setup 0.7 (`--create-ek-cert`)
#: writes the RSA-2048 EK certificate at 0x01c00002 (low range, template L-1)
#: and its ECC EK, a NIST P-384 key, at 0x01c00016 (high range, template H-3);
#: the low-range P-256 EK (0x01c0000a) is what many TPMs ship instead.
EK_KINDS = {
    "rsa-2048": EkKind("EK-RSA2048", 0x01C00002),
    "ec-p256": EkKind("EK-ECC256", 0x01C0000A),
    "ec-p384": EkKind("EK-HIGH-ECC384", 0x01C00016),
}
DEFAULT_EK_KIND = "rsa-2048"

# An NV read larger than the TPM's buffer is refused; 512 bytes is what every
# TPM allows when it does not say more (PC Client platform minimum).
_NV_BUFFER_DEFAULT = 512


@dataclass(frozen=True)
class Endorsement:
    """The EK as the station needs it."""

    kind: str
    #: DER, as the TPM maker stored it (NV padding removed)
    certificate: bytes
    #: marshalled TPM2B_PUBLIC of the EK (MakeCredential needs its parameters, not just its key)
    public: bytes


@dataclass(frozen=True)
class Certification:
    """What TPM2_Certify returns: the TPM's statement and the IAK's signature over it."""

    #: marshalled TPMS_ATTEST, exactly the bytes the IAK signed
    attest: bytes
    #: marshalled TPMT_SIGNATURE
    signature: bytes


def _ek_kind(kind: str) -> EkKind:
    try:
        return EK_KINDS[kind]
    except KeyError:
        raise KeyStoreError(f"unknown EK kind {kind!r}; choose one of {', '.join(EK_KINDS)}") from None


def _der_prefix(data: bytes) -> bytes:
    """The first DER element of `data`: NV indices are often larger than the certificate."""
    if len(data) < 2 or data[0] != 0x30:
        raise KeyStoreError("the EK certificate NV index does not hold a DER certificate")
    first = data[1]
    if first < 0x80:
        header, length = 2, first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or len(data) < 2 + count:
            raise KeyStoreError("the EK certificate NV index holds a malformed DER length")
        header, length = 2 + count, int.from_bytes(data[2:2 + count], "big")
    if header + length > len(data):
        raise KeyStoreError("the EK certificate in NV is truncated")
    return data[:header + length]


class _NvReader:
    """Reads whole NV indices in pieces the TPM accepts; NoSuchIndex for an absent index
    (the contract of tpm2-pytss's create_ek_template)."""

    def __init__(self, esys: ESAPI):
        self.esys = esys
        self.piece = _NV_BUFFER_DEFAULT
        _, data = esys.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT_NV.BUFFER_MAX, 1)
        for prop in data.data.tpmProperties:
            if prop.property == TPM2_PT_NV.BUFFER_MAX and prop.value:
                self.piece = prop.value

    def __call__(self, index: int) -> bytes:
        try:
            tr = self.esys.tr_from_tpmpublic(index)
        except TSS2_Exception as exc:
            if exc.error == TPM2_RC.HANDLE:
                raise NoSuchIndex(index) from None
            raise
        try:
            size = self.esys.nv_read_public(tr)[0].nvPublic.dataSize
            data = b""
            while len(data) < size:
                data += bytes(self.esys.nv_read(tr, min(self.piece, size - len(data)), len(data)))
            return data
        finally:
            self.esys.tr_close(tr)


def _create_ek(esys: ESAPI, kind: str) -> tuple[ESYS_TR, TPM2B_PUBLIC, bytes | None]:
    """The EK as a transient object (flush it), its public area and its NV certificate."""
    try:
        certificate, template = create_ek_template(_ek_kind(kind).template, _NvReader(esys))
    except ValueError:
        certificate, template = None, None  # high-range kinds refuse when the certificate is absent
    if certificate is None:
        return ESYS_TR.NONE, TPM2B_PUBLIC(), None
    handle, public = esys.create_primary(None, template, ESYS_TR.ENDORSEMENT)[:2]
    return handle, public, certificate


def read_endorsement(tcti: str, kind: str = DEFAULT_EK_KIND) -> Endorsement:
    """The EK certificate from NV and the EK public area from the TCG template."""
    ek_kind = _ek_kind(kind)
    tpm = tpm_backend.connection(tcti)

    def read(esys: ESAPI) -> Endorsement | None:
        handle, public, certificate = _create_ek(esys, kind)
        if certificate is None:
            return None
        try:
            return Endorsement(kind, _der_prefix(certificate), public.marshal())
        finally:
            esys.flush_context(handle)

    try:
        found = tpm.run(read)
    except TSS2_Exception as exc:
        raise _failure(exc, f"reading the {kind} endorsement key of the TPM at {tcti}") from None
    if found is None:
        raise KeyNotFoundError(
            f"the TPM at {tcti} has no {kind} EK certificate (NV index "
            f"0x{ek_kind.certificate_index:08x}); a TPM made without one cannot be attested "
            "(for swtpm: swtpm_setup --create-ek-cert)")
    return found


def create_iak(uri: TpmUri, algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256) -> bytes:
    """Create the IAK (restricted signing key) at uri.handle; its marshalled TPM2B_PUBLIC."""
    return tpm_backend.create_persistent_key(uri, algorithm, restricted=True).marshal()


def create_idevid(uri: TpmUri, algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256) -> bytes:
    """Create the IDevID (unrestricted signing key, the `tpm:` key a Signer opens) at
    uri.handle; its marshalled TPM2B_PUBLIC."""
    return tpm_backend.create_persistent_key(uri, algorithm).marshal()


def read_public(uri: TpmUri) -> bytes:
    """The marshalled TPM2B_PUBLIC of the persistent object at uri.handle."""
    handle = _require_handle(uri)
    tpm = tpm_backend.connection(uri.tcti)

    def read(esys: ESAPI) -> bytes:
        return esys.read_public(tpm.persistent(esys, handle, refresh=True))[0].marshal()

    try:
        return tpm.run(read)
    except TSS2_Exception as exc:
        if exc.error in _NO_OBJECT:
            raise KeyNotFoundError(f"no key at TPM handle 0x{handle:08x} ({uri.tcti})") from None
        raise _failure(exc, f"reading TPM object 0x{handle:08x}") from None


def _ek_session(esys: ESAPI, ek_public: TPM2B_PUBLIC) -> tuple[ESYS_TR, bool]:
    """The session that authorizes use of the EK, and whether it must be flushed.

    Low-range EK templates clear userWithAuth: the EK is usable only through
    its policy, PolicySecret on the endorsement hierarchy (whose authorization
    is empty on a board). High-range ones also accept the empty password.
    """
    if ek_public.publicArea.objectAttributes & TPMA_OBJECT.USERWITHAUTH:
        return ESYS_TR.PASSWORD, False
    session = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY,
                                      TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                                      ek_public.publicArea.nameAlg)
    try:
        esys.policy_secret(ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
    except TSS2_Exception:
        esys.flush_context(session)
        raise
    return session, True


def _still_answers(tpm) -> bool:
    """Whether the TPM runs commands: libtpms before 0.10 answers a secret that does not
    decrypt with the RSA EK with TPM_RC_FAILURE (since then TPM_RC_VALUE), though it is not
    in failure mode; a TPM that is refuses TPM2_GetRandom as well."""
    try:
        tpm.run(lambda esys: esys.get_random(1), retry=False)
    except (TSS2_Exception, KeyStoreError):
        return False
    return True


def activate_credential(iak: TpmUri, credential: bytes, kind: str = DEFAULT_EK_KIND) -> bytes:
    """The secret of a MakeCredential blob (tpm2-tools format) made for this TPM's EK of
    `kind` and the name of the IAK at iak.handle."""
    handle = _require_handle(iak)
    try:
        id_object, encrypted_secret = tools_to_credential(credential)
    except (ValueError, TSS2_Exception) as exc:
        raise KeyStoreError(f"the credential is not a tpm2-tools credential blob ({exc})") from None
    tpm = tpm_backend.connection(iak.tcti)

    def activate(esys: ESAPI) -> bytes | None:
        ek, ek_public, certificate = _create_ek(esys, kind)
        if certificate is None:
            return None
        session, flush = ESYS_TR.NONE, False
        try:
            session, flush = _ek_session(esys, ek_public)
            secret = esys.activate_credential(tpm.persistent(esys, handle), ek, id_object,
                                              encrypted_secret, session1=ESYS_TR.PASSWORD,
                                              session2=session)
            return bytes(secret)
        finally:
            # ESAPI starts sessions with continueSession set: they outlive the command.
            if flush:
                esys.flush_context(session)
            esys.flush_context(ek)

    try:
        secret = tpm.run(activate, retry=False)
    except TSS2_Exception as exc:
        if exc.error in _NO_OBJECT:
            raise KeyNotFoundError(f"no IAK at TPM handle 0x{handle:08x} ({iak.tcti})") from None
        if exc.error in (TPM2_RC.INTEGRITY, TPM2_RC.VALUE, TPM2_RC.SIZE) or (
                exc.error == TPM2_RC.FAILURE and _still_answers(tpm)):
            raise KeyStoreError(
                "the credential does not open with this TPM's EK and the key at "
                f"0x{handle:08x}: it was made for another TPM or another key ({exc})") from None
        raise _failure(exc, "activating the credential") from None
    if secret is None:
        raise KeyNotFoundError(f"the TPM at {iak.tcti} has no {kind} EK certificate, so no EK "
                               "to activate a credential with")
    return secret


def certify(idevid: TpmUri, iak: TpmUri, nonce: bytes) -> Certification:
    """TPM2_Certify of the key at idevid.handle by the IAK at iak.handle over `nonce`."""
    if idevid.tcti != iak.tcti:
        raise KeyStoreError("the IDevID and the IAK must be keys of one TPM (their URIs name "
                            f"two TCTIs: {idevid.tcti} and {iak.tcti})")
    if not 8 <= len(nonce) <= 64:
        raise KeyStoreError(f"the certify nonce must be 8 to 64 bytes, not {len(nonce)}")
    subject, signer = _require_handle(idevid), _require_handle(iak)
    tpm = tpm_backend.connection(iak.tcti)
    null_scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)  # the IAK's own scheme

    def run(esys: ESAPI) -> Certification:
        attest, signature = esys.certify(tpm.persistent(esys, subject),
                                         tpm.persistent(esys, signer), nonce, null_scheme)
        return Certification(bytes(attest), signature.marshal())

    try:
        return tpm.run(run)
    except TSS2_Exception as exc:
        if exc.error in _NO_OBJECT:
            raise KeyNotFoundError(f"the IDevID (0x{subject:08x}) or the IAK (0x{signer:08x}) is "
                                   f"missing from the TPM at {iak.tcti}") from None
        if exc.error in (TPM2_RC.KEY, TPM2_RC.ATTRIBUTES, TPM2_RC.SCHEME):
            raise KeyStoreError(f"the key at 0x{signer:08x} cannot certify (it must be a "
                                f"restricted signing key: an IAK) ({exc})") from None
        raise _failure(exc, "certifying the IDevID") from None


__all__ = ["IDEVID_HANDLE", "IAK_HANDLE", "EK_KINDS", "DEFAULT_EK_KIND", "Endorsement",
           "Certification", "read_endorsement", "create_iak", "create_idevid", "read_public",
           "activate_credential", "certify"]
