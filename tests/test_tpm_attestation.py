"""TPM device-identity attestation against a real swtpm born with an EK certificate.

The board side (hsm/tpm_identity.py) runs on the TPM; the station side
(hsm/tpm_attestation.py) is pure software. tpm2-tools and openssl, which
nobody here wrote, read and write the same structures: `tpm2_readpublic`
shows the keys' attributes, `tpm2_activatecredential` opens the station's
credential, the station checks what `tpm2_certify` signs, `openssl verify`
chains the EK certificate to the maker.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_RC, TPM2_SE, TPMA_OBJECT
from tpm2_pytss.types import TPM2B_PUBLIC, TPMT_SIGNATURE, TPMT_SYM_DEF
from tpm2_pytss.utils import tools_to_credential

from pledgeforge.hsm import keystore, tpm_backend, tpm_identity
from pledgeforge.hsm.errors import KeyNotFoundError, KeyStoreError
from pledgeforge.hsm.key_evidence import (ActivationMismatchError, Assurance, AttestationKeyError,
                                          CertifiedNameMismatchError, CsrKeyMismatchError,
                                          DeviceKeyAttributesError, EndorsementKeyMismatchError,
                                          EvidenceOrderError, ForeignSignerError,
                                          MalformedEvidenceError, ReplayedAttestationError,
                                          UnknownTpmMakerError)
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner
from pledgeforge.hsm.swtpm import Swtpm
from pledgeforge.hsm.tpm_attestation import (TpmAttestation, endorsement_primary_qualified_name,
                                              name_of, parse_public)
from pledgeforge.hsm.tpm_identity import IAK_HANDLE, IDEVID_HANDLE
from pledgeforge.hsm.tpm_maker_ca import create_tpm_maker_ca, open_tpm_maker_ca
from pledgeforge.hsm.x509 import make_csr

RSA_EK_HANDLE = 0x81010001  # where swtpm_setup persists its RSA EK (the same key as the template's)


def tool(tpm: Swtpm, *args: str, cwd=None) -> str:
    proc = subprocess.run(list(args), env=tpm.env(), capture_output=True, text=True, timeout=60,
                          cwd=cwd)
    assert proc.returncode == 0, f"{args[0]}: {proc.stderr}"
    return proc.stdout


def readpublic_attributes(tpm: Swtpm, handle: int) -> set[str]:
    lines = tool(tpm, "tpm2_readpublic", "-c", f"0x{handle:08x}").splitlines()
    value = lines[lines.index("attributes:") + 1].strip()
    assert value.startswith("value: ")
    return set(value[len("value: "):].split("|"))


class Board:
    """A board's TPM identity as the board's manufacturing mode would drive it."""

    def __init__(self, tpm: Swtpm, idevid: int = IDEVID_HANDLE, iak: int = IAK_HANDLE):
        self.tpm = tpm
        self.idevid, self.iak = tpm.key_uri(idevid), tpm.key_uri(iak)

    def keys(self, algorithm: KeyAlgorithm = KeyAlgorithm.EC_P256) -> tuple[bytes, bytes]:
        return (tpm_identity.create_idevid(self.idevid, algorithm),
                tpm_identity.create_iak(self.iak, algorithm))

    def csr(self, uri=None):
        return make_csr(keystore.open_signer(uri or self.idevid), "CN=IDevID PF-0001,serialNumber=PF-0001")


def station_for(maker) -> TpmAttestation:
    return TpmAttestation([maker.root], [maker.issuer])


def bind_iak(station: TpmAttestation, board: Board, iak_public: bytes, kind: str = "rsa-2048"):
    ek = tpm_identity.read_endorsement(board.tpm.tcti, kind)
    station.check_endorsement(ek.certificate, ek.public)
    credential = station.challenge(iak_public)
    station.check_activation(tpm_identity.activate_credential(board.iak, credential, kind))
    return ek


@pytest.fixture
def board(manufactured_swtpm) -> Board:
    return Board(manufactured_swtpm)


# --------------------------------------------------------------------------- the TPM maker

def test_the_ek_certificates_in_nv_chain_to_the_maker_by_openssl(board, tpm_maker, tmp_path):
    for kind, index in (("rsa-2048", "0x01c00002"), ("ec-p384", "0x01c00016")):
        ek = tpm_identity.read_endorsement(board.tpm.tcti, kind)
        # What the TPM holds at the TCG index is the certificate we read.
        nv = tmp_path / f"{kind}.nv"
        tool(board.tpm, "tpm2_nvread", index, "-o", str(nv))
        assert nv.read_bytes()[:len(ek.certificate)] == ek.certificate
        pem = tmp_path / f"{kind}.pem"
        pem.write_bytes(x509.load_der_x509_certificate(ek.certificate).public_bytes(
            serialization.Encoding.PEM))
        out = subprocess.run(["openssl", "verify", "-CAfile", str(tpm_maker.root_path),
                              "-untrusted", str(tpm_maker.issuer_path), str(pem)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and out.stdout.strip() == f"{pem}: OK", out.stderr
        # Control: the issuing CA alone is no anchor, so the root is what is trusted.
        alone = subprocess.run(["openssl", "verify", "-CAfile", str(tpm_maker.issuer_path),
                                str(pem)], capture_output=True, text=True, timeout=30)
        assert alone.returncode != 0


def test_an_ek_certificate_of_another_maker_does_not_chain_by_openssl(tmp_path, tpm_maker):
    other = Swtpm(tmp_path / "other-board")
    other.manufacture(create_ek_cert=True, ca_dir=tmp_path / "other-maker")
    pem = tmp_path / "ek.pem"
    pem.write_bytes(x509.load_der_x509_certificate(
        other.ek_cert_paths()[0].read_bytes()).public_bytes(serialization.Encoding.PEM))
    out = subprocess.run(["openssl", "verify", "-CAfile", str(tpm_maker.root_path), "-untrusted",
                          str(tpm_maker.issuer_path), str(pem)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode != 0 and "unable to get local issuer certificate" in out.stdout + out.stderr


def test_the_maker_ca_is_made_once_and_keeps_its_issuing_key_private(tmp_path):
    first = create_tpm_maker_ca(tmp_path / "maker")
    again = create_tpm_maker_ca(tmp_path / "maker")
    assert again.root == first.root and again.issuer == first.issuer
    assert open_tpm_maker_ca(tmp_path / "maker").root == first.root
    assert (tmp_path / "maker" / "signkey.pem").stat().st_mode & 0o777 == 0o600
    # The root key signed the issuing CA and is gone: nothing in the directory holds it.
    keys = [p for p in (tmp_path / "maker").iterdir() if b"PRIVATE KEY" in p.read_bytes()]
    assert [k.name for k in keys] == ["signkey.pem"]
    assert first.issuer.issuer == first.root.subject
    first.issuer.verify_directly_issued_by(first.root)


def _make_ca(directory: str) -> bytes:
    return create_tpm_maker_ca(directory).root.public_bytes(serialization.Encoding.DER)


def test_boards_manufactured_at_once_share_one_maker(tmp_path):
    """Several processes making the maker CA in one directory at once end with one CA."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        roots = pool.map(_make_ca, [str(tmp_path / "maker")] * 8)
    assert len(set(roots)) == 1


def test_open_refuses_a_directory_without_a_maker(tmp_path):
    with pytest.raises(Exception, match="holds no TPM maker CA"):
        open_tpm_maker_ca(tmp_path)


# --------------------------------------------------------------------------- board side

def test_tpm2_readpublic_shows_the_idevid_and_iak_attributes(board):
    idevid_public, iak_public = board.keys()
    idevid = readpublic_attributes(board.tpm, IDEVID_HANDLE)
    assert {"fixedtpm", "fixedparent", "sensitivedataorigin", "userwithauth", "sign"} <= idevid
    assert not {"decrypt", "restricted"} & idevid
    iak = readpublic_attributes(board.tpm, IAK_HANDLE)
    assert {"fixedtpm", "fixedparent", "sensitivedataorigin", "userwithauth", "restricted",
            "sign"} <= iak and "decrypt" not in iak
    # What the board reports is what the TPM holds.
    assert tpm_identity.read_public(board.idevid) == idevid_public
    name = tool(board.tpm, "tpm2_readpublic", "-c", f"0x{IAK_HANDLE:08x}").splitlines()[0]
    assert name == f"name: {name_of(parse_public(iak_public, 'IAK')).hex()}"


def test_the_identity_flow_leaves_no_transient_object_or_session(board, tpm_maker):
    idevid_public, iak_public = board.keys()
    station = station_for(tpm_maker)
    bind_iak(station, board, iak_public)
    nonce = station.certify_nonce()
    tpm_identity.certify(board.idevid, board.iak, nonce)
    for kind in ("transient", "loaded-session", "saved-session"):
        assert tool(board.tpm, "tpm2_getcap", f"handles-{kind}").strip() == "", kind


def test_a_tpm_without_ek_certificate_says_how_to_make_one(swtpm):
    with pytest.raises(KeyNotFoundError, match="no rsa-2048 EK certificate .*0x01c00002.*"
                                               "swtpm_setup --create-ek-cert"):
        tpm_identity.read_endorsement(swtpm.tcti)
    with pytest.raises(KeyStoreError, match="unknown EK kind 'rsa-1024'"):
        tpm_identity.read_endorsement(swtpm.tcti, "rsa-1024")


def test_a_credential_made_for_another_tpm_does_not_open(board, tmp_path, tpm_maker):
    _, iak_public = board.keys()
    other = Swtpm(tmp_path / "other")
    other.manufacture(create_ek_cert=True, ca_dir=tpm_maker.directory)
    with other:
        ek = tpm_identity.read_endorsement(other.tcti)
        tpm_backend.disconnect(other.tcti)
    station = station_for(tpm_maker)
    station.check_endorsement(ek.certificate, ek.public)  # a genuine TPM, but not this board's
    credential = station.challenge(iak_public)
    with pytest.raises(KeyStoreError, match="made for another TPM or another key"):
        tpm_identity.activate_credential(board.iak, credential)
    # The TPM is fine (libtpms 0.9 answers this with TPM_RC_FAILURE, yet keeps working).
    assert tpm_identity.read_public(board.iak) == iak_public


# --------------------------------------------------------------------------- the whole attestation

@pytest.mark.parametrize("kind", ["rsa-2048", "ec-p384"])
def test_a_resident_idevid_is_attested(board, tpm_maker, kind):
    idevid_public, iak_public = board.keys()
    station = station_for(tpm_maker)
    ek = bind_iak(station, board, iak_public, kind)
    certification = tpm_identity.certify(board.idevid, board.iak, station.certify_nonce())
    verified = station.check_certify(certification.attest, certification.signature,
                                     idevid_public, board.csr())
    assert verified.assurance is Assurance.TPM_ATTESTED
    assert verified.public_key == keystore.open_signer(board.idevid).public_key
    assert verified.evidence["ek-certificate-sha256"] == hashlib.sha256(ek.certificate).hexdigest()
    assert verified.evidence["idevid-name"] == name_of(parse_public(idevid_public, "x")).hex()
    assert verified.ek_certificate.public_bytes(serialization.Encoding.DER) == ek.certificate
    assert verified.iak_public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == \
        parse_public(iak_public, "IAK").to_der()
    with pytest.raises(EvidenceOrderError, match="attestation is complete"):
        station.certify_nonce()


def test_rsa_identity_keys_are_attested_too(board, tpm_maker):
    idevid_public, iak_public = board.keys(KeyAlgorithm.RSA_2048)
    station = station_for(tpm_maker)
    bind_iak(station, board, iak_public)
    certification = tpm_identity.certify(board.idevid, board.iak, station.certify_nonce())
    verified = station.check_certify(certification.attest, certification.signature,
                                     idevid_public, board.csr())
    assert verified.public_key.key_size == 2048


def test_the_station_credential_opens_with_tpm2_activatecredential(board, tpm_maker, tmp_path):
    _, iak_public = board.keys()
    station = station_for(tpm_maker)
    ek = tpm_identity.read_endorsement(board.tpm.tcti)
    station.check_endorsement(ek.certificate, ek.public)
    (tmp_path / "credential").write_bytes(station.challenge(iak_public))
    # The RSA EK under its policy, as tpm2-tools documents it.
    tool(board.tpm, "tpm2_startauthsession", "--policy-session", "-S", "session.ctx", cwd=tmp_path)
    tool(board.tpm, "tpm2_policysecret", "-S", "session.ctx", "-c", "e", cwd=tmp_path)
    tool(board.tpm, "tpm2_activatecredential", "-c", f"0x{IAK_HANDLE:08x}",
         "-C", f"0x{RSA_EK_HANDLE:08x}", "-i", "credential", "-o", "secret",
         "-P", "session:session.ctx", cwd=tmp_path)
    tool(board.tpm, "tpm2_flushcontext", "session.ctx", cwd=tmp_path)
    station.check_activation((tmp_path / "secret").read_bytes())
    station.certify_nonce()  # the IAK is bound


def test_a_tpm2_makecredential_blob_activates_on_the_board(board, tmp_path):
    _, iak_public = board.keys()
    ek = tpm_identity.read_endorsement(board.tpm.tcti)
    (tmp_path / "ek.pub").write_bytes(ek.public)
    (tmp_path / "secret").write_bytes(b"a secret of the station, 32 byte")
    name = name_of(parse_public(iak_public, "IAK")).hex()
    tool(board.tpm, "tpm2_makecredential", "-T", "none", "-u", "ek.pub", "-s", "secret",
         "-n", name, "-o", "credential", cwd=tmp_path)
    blob = (tmp_path / "credential").read_bytes()
    assert tpm_identity.activate_credential(board.iak, blob) == b"a secret of the station, 32 byte"


def test_openssl_and_tpm2_readpublic_agree_with_the_station_on_the_certify(board, tpm_maker,
                                                                           tmp_path):
    """The IAK's signature over the TPMS_ATTEST verifies with openssl and the IAK's PEM from
    tpm2_readpublic; the qualified name the station expects is the one the TPM reports."""
    idevid_public, iak_public = board.keys()
    station = station_for(tpm_maker)
    bind_iak(station, board, iak_public)
    certification = tpm_identity.certify(board.idevid, board.iak, station.certify_nonce())
    (tmp_path / "attest").write_bytes(certification.attest)
    signature = TPMT_SIGNATURE.unmarshal(certification.signature)[0]
    (tmp_path / "signature.der").write_bytes(bytes(signature))  # ECDSA-Sig-Value
    tool(board.tpm, "tpm2_readpublic", "-c", f"0x{IAK_HANDLE:08x}", "-f", "pem", "-o", "iak.pem",
         cwd=tmp_path)
    verified = subprocess.run(["openssl", "dgst", "-sha256", "-verify", "iak.pem", "-signature",
                               "signature.der", "attest"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=30)
    assert verified.returncode == 0 and "Verified OK" in verified.stdout, verified.stderr
    readpublic = tool(board.tpm, "tpm2_readpublic", "-c", f"0x{IDEVID_HANDLE:08x}").splitlines()
    name = parse_public(idevid_public, "IDevID")
    assert readpublic[1] == f"qualified name: {endorsement_primary_qualified_name(name_of(name)).hex()}"
    assert station.check_certify(certification.attest, certification.signature, idevid_public,
                                 board.csr()).assurance is Assurance.TPM_ATTESTED


# --------------------------------------------------------------------------- refusals

def test_a_certify_signed_by_another_key_than_the_activated_iak_is_refused(board, tpm_maker):
    idevid_public, iak_public = board.keys()
    other_iak = board.tpm.key_uri(0x81020002)
    tpm_identity.create_iak(other_iak)  # a restricted key of the same TPM, but not the bound one
    station = station_for(tpm_maker)
    bind_iak(station, board, iak_public)
    certification = tpm_identity.certify(board.idevid, other_iak, station.certify_nonce())
    with pytest.raises(ForeignSignerError,
                       match="^the certify is signed by a key other than the activated IAK$"):
        station.check_certify(certification.attest, certification.signature, idevid_public,
                              board.csr())


def test_a_replayed_nonce_is_refused(board, tpm_maker):
    idevid_public, iak_public = board.keys()
    first = station_for(tpm_maker)
    bind_iak(first, board, iak_public)
    recorded = tpm_identity.certify(board.idevid, board.iak, first.certify_nonce())
    # Another run: the station issues a fresh nonce; the recorded answer comes back.
    again = station_for(tpm_maker)
    bind_iak(again, board, iak_public)
    again.certify_nonce()
    with pytest.raises(ReplayedAttestationError, match="^the nonce differs: replayed attestation"):
        again.check_certify(recorded.attest, recorded.signature, idevid_public, board.csr())
    # The board's certify over the station's own fresh nonce passes.
    fresh = tpm_identity.certify(board.idevid, board.iak, again.certify_nonce())
    assert again.check_certify(fresh.attest, fresh.signature, idevid_public, board.csr())


def test_a_nonce_is_good_for_one_answer(board, tpm_maker):
    idevid_public, iak_public = board.keys()
    station = station_for(tpm_maker)
    bind_iak(station, board, iak_public)
    certification = tpm_identity.certify(board.idevid, board.iak, station.certify_nonce())
    with pytest.raises(CertifiedNameMismatchError):
        station.check_certify(certification.attest, certification.signature, iak_public,
                              board.csr())
    station.certify_nonce()
    with pytest.raises(ReplayedAttestationError):
        station.check_certify(certification.attest, certification.signature, idevid_public,
                              board.csr())


def test_an_ek_certificate_from_an_unknown_maker_is_refused(board, tmp_path):
    stranger = create_tpm_maker_ca(tmp_path / "stranger")
    station = station_for(stranger)
    ek = tpm_identity.read_endorsement(board.tpm.tcti)
    with pytest.raises(UnknownTpmMakerError, match="^EK certificate from an unknown TPM maker: "
                                                   "issued by CN=pledgeforge TPM maker EK issuing"):
        station.check_endorsement(ek.certificate, ek.public)
    with pytest.raises(EvidenceOrderError):
        station.challenge(board.keys()[1])



def software_public_area(software: SoftwareSigner, attributes: TPMA_OBJECT) -> TPM2B_PUBLIC:
    """A TPM public area for a P-256 key made in software. from_pem writes each coordinate
    as its integer's minimal bytes, and the TPM refuses a point whose coordinate is shorter
    than the curve's size (about one key in a hundred): pad both to 32 bytes."""
    area = TPM2B_PUBLIC.from_pem(software.public_key_pem(), objectAttributes=attributes)
    numbers = serialization.load_pem_public_key(software.public_key_pem()).public_numbers()
    area.publicArea.unique.ecc.x = numbers.x.to_bytes(32, "big")
    area.publicArea.unique.ecc.y = numbers.y.to_bytes(32, "big")
    return area

def test_a_software_key_presented_as_tpm_resident_is_refused(board, tpm_maker):
    idevid_public, iak_public = board.keys()
    software = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    station = station_for(tpm_maker)
    bind_iak(station, board, iak_public)
    certification = tpm_identity.certify(board.idevid, board.iak, station.certify_nonce())
    # The CSR of a key outside the TPM, beside a genuine certify of the resident key.
    with pytest.raises(CsrKeyMismatchError, match="^the CSR's key is not the IDevID key the TPM "
                                                  "certified"):
        station.check_certify(certification.attest, certification.signature, idevid_public,
                              make_csr(software, "CN=IDevID PF-0001,serialNumber=PF-0001"))
    # A public area made in software for that key, claiming every attribute of a TPM key.
    forged = software_public_area(software, TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
                                  | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.USERWITHAUTH
                                  | TPMA_OBJECT.SIGN_ENCRYPT)
    certification = tpm_identity.certify(board.idevid, board.iak, station.certify_nonce())
    with pytest.raises(CertifiedNameMismatchError, match="names another key than the IDevID"):
        station.check_certify(certification.attest, certification.signature, forged.marshal(),
                              make_csr(software, "CN=IDevID PF-0001,serialNumber=PF-0001"))


def test_a_software_iak_cannot_be_bound(board, tpm_maker):
    """A board offering a software key's public area as its IAK: the TPM does not release the
    credential to a key loaded from outside it, so the board has nothing right to answer."""
    software = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    fake_iak = software_public_area(
        software, TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT)
    fake_iak.publicArea.parameters.eccDetail.scheme.scheme = TPM2_ALG.ECDSA
    fake_iak.publicArea.parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG.SHA256
    station = station_for(tpm_maker)
    ek = tpm_identity.read_endorsement(board.tpm.tcti)
    station.check_endorsement(ek.certificate, ek.public)
    id_object, secret = tools_to_credential(station.challenge(fake_iak.marshal()))
    esys = ESAPI(board.tpm.tcti)
    try:
        ek_handle = esys.create_primary(None, parse_public(ek.public, "EK"), ESYS_TR.ENDORSEMENT)[0]
        loaded = esys.load_external(fake_iak, None, ESYS_TR.RH_NULL)
        session = esys.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY,
                                          TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)
        esys.policy_secret(ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
        with pytest.raises(TSS2_Exception) as refused:
            esys.activate_credential(loaded, ek_handle, id_object, secret, session2=session)
        assert refused.value.error == TPM2_RC.AUTH_UNAVAILABLE
        for handle in (session, loaded, ek_handle):
            esys.flush_context(handle)
    finally:
        esys.close()
    with pytest.raises(ActivationMismatchError, match="^the board did not recover the credential"):
        station.check_activation(bytes(32))


def test_a_decrypt_capable_idevid_is_refused(board, tpm_maker, tmp_path):
    _, iak_public = board.keys()
    handle = 0x81020003
    tool(board.tpm, "tpm2_createprimary", "-C", "e", "-G", "ecc256", "-c", "key.ctx", "-a",
         "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign|decrypt", cwd=tmp_path)
    tool(board.tpm, "tpm2_evictcontrol", "-C", "o", "-c", "key.ctx", f"0x{handle:08x}", cwd=tmp_path)
    tool(board.tpm, "tpm2_flushcontext", "-t")
    decrypting = board.tpm.key_uri(handle)
    assert "decrypt" in readpublic_attributes(board.tpm, handle)
    station = station_for(tpm_maker)
    bind_iak(station, board, iak_public)
    certification = tpm_identity.certify(decrypting, board.iak, station.certify_nonce())
    with pytest.raises(DeviceKeyAttributesError, match="^IDevID key can decrypt"):
        station.check_certify(certification.attest, certification.signature,
                              tpm_identity.read_public(decrypting), board.csr(decrypting))


def test_an_idevid_of_the_owner_hierarchy_is_refused(board, tpm_maker):
    _, iak_public = board.keys()
    owned = board.tpm.key_uri(0x81020004, hierarchy="owner")
    owned_public = tpm_identity.create_idevid(owned)
    station = station_for(tpm_maker)
    bind_iak(station, board, iak_public)
    certification = tpm_identity.certify(owned, board.iak, station.certify_nonce())
    with pytest.raises(CertifiedNameMismatchError, match="not a primary key of the endorsement"):
        station.check_certify(certification.attest, certification.signature, owned_public,
                              board.csr(owned))


def test_an_iak_that_is_not_a_restricted_signing_key_is_refused(board, tpm_maker):
    idevid_public, _ = board.keys()
    station = station_for(tpm_maker)
    ek = tpm_identity.read_endorsement(board.tpm.tcti)
    station.check_endorsement(ek.certificate, ek.public)
    with pytest.raises(AttestationKeyError, match="not a restricted signing key .* lacks restricted"):
        station.challenge(idevid_public)
    # The board side refuses to certify with it as well.
    with pytest.raises(KeyStoreError, match="must be a restricted signing key"):
        tpm_identity.certify(board.iak, board.idevid, bytes(32))


def test_an_ek_public_area_that_is_not_the_certified_key_is_refused(board, tpm_maker):
    station = station_for(tpm_maker)
    rsa = tpm_identity.read_endorsement(board.tpm.tcti, "rsa-2048")
    ecc = tpm_identity.read_endorsement(board.tpm.tcti, "ec-p384")
    with pytest.raises(EndorsementKeyMismatchError, match="not the key of the EK certificate"):
        station.check_endorsement(rsa.certificate, ecc.public)
    with pytest.raises(MalformedEvidenceError, match="not a marshalled TPM2B_PUBLIC"):
        station.check_endorsement(rsa.certificate, rsa.public[:40])
    with pytest.raises(MalformedEvidenceError, match="not a DER certificate"):
        station.check_endorsement(rsa.certificate[:100], rsa.public)


def test_a_truncated_or_padded_certify_is_malformed(board, tpm_maker):
    idevid_public, iak_public = board.keys()
    station = station_for(tpm_maker)
    bind_iak(station, board, iak_public)
    certification = tpm_identity.certify(board.idevid, board.iak, station.certify_nonce())
    with pytest.raises(MalformedEvidenceError, match="TPMS_ATTEST"):
        station.check_certify(certification.attest[:-3], certification.signature, idevid_public,
                              board.csr())
    station.certify_nonce()
    with pytest.raises(MalformedEvidenceError, match="2 bytes after its TPMT_SIGNATURE"):
        station.check_certify(certification.attest, certification.signature + b"\0\0",
                              idevid_public, board.csr())


def test_steps_out_of_order_are_refused(board, tpm_maker):
    _, iak_public = board.keys()
    station = station_for(tpm_maker)
    with pytest.raises(EvidenceOrderError, match="before the EK certificate is checked"):
        station.challenge(iak_public)
    ek = tpm_identity.read_endorsement(board.tpm.tcti)
    station.check_endorsement(ek.certificate, ek.public)
    with pytest.raises(EvidenceOrderError, match="before the activation is checked"):
        station.certify_nonce()
    station.challenge(iak_public)
    with pytest.raises(ActivationMismatchError):
        station.check_activation(b"guess")
    with pytest.raises(EvidenceOrderError, match="before the IAK is challenged"):
        station.check_activation(b"guess again")  # one answer per challenge
    with pytest.raises(UnknownTpmMakerError, match="no TPM maker root is configured"):
        TpmAttestation([])
