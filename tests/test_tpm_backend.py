"""TPM 2.0 keys against real swtpm processes, checked with cryptography and tpm2-tools."""

from __future__ import annotations

import hashlib
import os
import select
import signal
import socket
import subprocess
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from pledgeforge.hsm import keystore, tpm_backend
from pledgeforge.hsm.errors import (HandleInUseError, KeyNotFoundError, KeyStoreError,
                                    KeyUriError, TpmUnreachableError)
from pledgeforge.hsm.keyuri import TpmUri
from pledgeforge.hsm.signer import KeyAlgorithm, Padding, verify_signature
from pledgeforge.hsm.swtpm import _GET_RANDOM_2, Swtpm, SwtpmError, tpm_command

HANDLE = 0x81020000
DATA = b"voucher-request for serial PF-0001"
HASHES = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}


def tpm2_tool(swtpm: Swtpm, *args: str) -> str:
    proc = subprocess.run(list(args), env=swtpm.env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def readpublic_attributes(swtpm: Swtpm, handle: int, pem_out) -> set[str]:
    out = tpm2_tool(swtpm, "tpm2_readpublic", "-c", f"0x{handle:08x}", "-f", "pem", "-o", str(pem_out))
    lines = out.splitlines()
    value = lines[lines.index("attributes:") + 1].strip()
    assert value.startswith("value: ")
    return set(value[len("value: "):].split("|"))


def transient_handles(swtpm: Swtpm) -> list[str]:
    return [line for line in tpm2_tool(swtpm, "tpm2_getcap", "handles-transient").splitlines()
            if line.strip()]


def assert_verifies(public_key, signature: bytes, hash_name: str, pad: Padding) -> None:
    """Verify with cryptography's own parameters (raises InvalidSignature on mismatch)."""
    algo = HASHES[hash_name]
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, DATA, ec.ECDSA(algo))
    elif pad is Padding.PSS:
        # RFC 4055 parameters: MGF1 with the same hash, salt as long as the digest.
        public_key.verify(signature, DATA, padding.PSS(padding.MGF1(algo), algo.digest_size), algo)
    else:
        public_key.verify(signature, DATA, padding.PKCS1v15(), algo)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SCHEMES = {
    KeyAlgorithm.EC_P256: [("sha256", Padding.PKCS1V15), ("sha384", Padding.PKCS1V15)],
    KeyAlgorithm.EC_P384: [("sha384", Padding.PKCS1V15), ("sha256", Padding.PKCS1V15)],
    KeyAlgorithm.RSA_2048: [("sha256", Padding.PKCS1V15), ("sha256", Padding.PSS),
                            ("sha384", Padding.PKCS1V15), ("sha384", Padding.PSS)],
    KeyAlgorithm.RSA_3072: [("sha256", Padding.PKCS1V15), ("sha384", Padding.PSS)],
}


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm), ids=lambda a: a.value)
def test_generate_persist_and_sign(swtpm, tpm_uri, tmp_path, algorithm):
    signer = tpm_backend.generate(tpm_uri(HANDLE), algorithm)
    assert signer.algorithm is algorithm

    for hash_name, pad in SCHEMES[algorithm]:
        signature = signer.sign(DATA, hash_name, pad)
        assert_verifies(signer.public_key, signature, hash_name, pad)
        assert not verify_signature(signer.public_key, signature, DATA + b"x", hash_name, pad)

    # Persistent: tpm2-tools, a separate program, finds the key at the handle,
    # non-extractable and for signing, with the same public key.
    pem = tmp_path / "pub.pem"
    attributes = readpublic_attributes(swtpm, HANDLE, pem)
    assert {"fixedtpm", "fixedparent", "sensitivedataorigin", "userwithauth", "sign"} <= attributes
    assert "restricted" not in attributes
    assert serialization.load_pem_public_key(pem.read_bytes()) == signer.public_key
    assert transient_handles(swtpm) == []


def test_signature_over_a_precomputed_digest(swtpm, tpm_uri):
    signer = tpm_backend.generate(tpm_uri(), KeyAlgorithm.EC_P256)
    signature = signer.sign_digest(hashlib.sha256(DATA).digest(), "sha256")
    assert_verifies(signer.public_key, signature, "sha256", Padding.PKCS1V15)
    with pytest.raises(ValueError):
        signer.sign_digest(b"too short", "sha256")


def test_two_keys_of_one_hierarchy_differ(swtpm, tpm_uri):
    first = tpm_backend.generate(tpm_uri(HANDLE), KeyAlgorithm.EC_P256)
    second = tpm_backend.generate(tpm_uri(HANDLE + 1), KeyAlgorithm.EC_P256)
    assert first.public_key != second.public_key


def test_owner_hierarchy(swtpm, tpm_uri):
    signer = tpm_backend.generate(tpm_uri(0x81000010, hierarchy="owner"), KeyAlgorithm.EC_P256)
    assert_verifies(signer.public_key, signer.sign(DATA), "sha256", Padding.PKCS1V15)
    assert signer.uri.hierarchy == "owner"


def test_key_survives_restart(swtpm, tpm_uri):
    uri = tpm_uri(HANDLE)
    signer = tpm_backend.generate(uri, KeyAlgorithm.EC_P256)
    public_key = signer.public_key
    old_pid = swtpm.pid

    swtpm.restart()
    assert swtpm.pid != old_pid
    # The port is kept, so the URI stored before the reboot still names the key.
    assert swtpm.key_uri(HANDLE) == uri
    assert_verifies(public_key, signer.sign(DATA), "sha256", Padding.PKCS1V15)
    assert tpm_backend.TpmSigner(uri).public_key == public_key


def test_key_survives_a_new_swtpm_on_the_same_state(swtpm, tpm_uri):
    signer = tpm_backend.generate(tpm_uri(HANDLE), KeyAlgorithm.RSA_2048)
    swtpm.stop()
    with Swtpm(swtpm.state_dir) as rebooted:
        again = tpm_backend.TpmSigner(rebooted.key_uri(HANDLE))
        assert again.public_key == signer.public_key
        assert_verifies(again.public_key, again.sign(DATA, "sha256", Padding.PSS), "sha256",
                        Padding.PSS)
        tpm_backend.disconnect(rebooted.tcti)


def test_power_cut_keeps_keys(swtpm, tpm_uri):
    signer = tpm_backend.generate(tpm_uri(HANDLE), KeyAlgorithm.EC_P256)
    for _ in range(4):
        swtpm.stop(orderly=False)
        swtpm.start()
        assert_verifies(signer.public_key, signer.sign(DATA), "sha256", Padding.PKCS1V15)


def test_busy_handle_is_refused_and_the_old_key_kept(swtpm, tpm_uri):
    first = tpm_backend.generate(tpm_uri(HANDLE), KeyAlgorithm.EC_P256)
    with pytest.raises(HandleInUseError) as info:
        tpm_backend.generate(tpm_uri(HANDLE), KeyAlgorithm.EC_P384)
    message = str(info.value)
    assert "0x81020000" in message and "tpm2_evictcontrol" in message
    assert tpm_backend.TpmSigner(tpm_uri(HANDLE)).public_key == first.public_key
    assert transient_handles(swtpm) == []


def test_handle_freed_with_the_suggested_command_can_be_reused(swtpm, tpm_uri):
    tpm_backend.generate(tpm_uri(HANDLE), KeyAlgorithm.EC_P256)
    tpm2_tool(swtpm, "tpm2_evictcontrol", "-C", "o", "-c", f"0x{HANDLE:08x}")
    with pytest.raises(KeyNotFoundError):
        tpm_backend.TpmSigner(tpm_uri(HANDLE))
    signer = tpm_backend.generate(tpm_uri(HANDLE), KeyAlgorithm.EC_P384)
    assert_verifies(signer.public_key, signer.sign(DATA, "sha384"), "sha384", Padding.PKCS1V15)


def test_key_evicted_behind_a_signers_back(swtpm, tpm_uri):
    signer = tpm_backend.generate(tpm_uri(HANDLE), KeyAlgorithm.EC_P256)
    tpm2_tool(swtpm, "tpm2_evictcontrol", "-C", "o", "-c", f"0x{HANDLE:08x}")
    with pytest.raises(KeyNotFoundError, match="0x81020000"):
        signer.sign(DATA)


def test_missing_handle(swtpm, tpm_uri):
    with pytest.raises(KeyNotFoundError, match="0x81020005"):
        tpm_backend.TpmSigner(tpm_uri(0x81020005))


def test_uri_without_handle(swtpm, tpm_uri):
    with pytest.raises(KeyUriError, match="handle="):
        tpm_backend.generate(tpm_uri(None), KeyAlgorithm.EC_P256)
    with pytest.raises(KeyUriError):
        tpm_backend.TpmSigner(tpm_uri(None))
    with pytest.raises(KeyUriError, match="platform range"):
        tpm_backend.generate(tpm_uri(0x81800000), KeyAlgorithm.EC_P256)


def test_not_a_signing_key(tmp_path):
    """The endorsement key made by swtpm_setup is restricted to decryption."""
    tpm = Swtpm(tmp_path / "tpm")
    tpm.manufacture(create_ek_cert=False)
    with tpm:
        with pytest.raises(KeyStoreError, match="not an unrestricted signing key"):
            tpm_backend.TpmSigner(tpm.key_uri(0x81010001))
        tpm_backend.disconnect(tpm.tcti)


@pytest.mark.timeout(30)
def test_unreachable_tpm():
    uri = TpmUri(handle=HANDLE, tcti=f"swtpm:host=127.0.0.1,port={closed_port()}")
    with pytest.raises(TpmUnreachableError) as info:
        tpm_backend.TpmSigner(uri)
    assert uri.tcti in str(info.value)
    with pytest.raises(TpmUnreachableError):
        tpm_backend.generate(uri, KeyAlgorithm.EC_P256)
    with pytest.raises(TpmUnreachableError):
        tpm_backend.list_keys(uri)


def test_bad_tcti_is_one_clear_error():
    with pytest.raises(TpmUnreachableError, match="nosuchtcti"):
        tpm_backend.TpmSigner(TpmUri(handle=HANDLE, tcti="nosuchtcti:x"))


@pytest.mark.timeout(60)
def test_tpm_going_away_and_coming_back(swtpm, tpm_uri):
    signer = tpm_backend.generate(tpm_uri(HANDLE), KeyAlgorithm.EC_P256)
    swtpm.stop()
    with pytest.raises(TpmUnreachableError, match=swtpm.tcti):
        signer.sign(DATA)
    swtpm.start()
    assert_verifies(signer.public_key, signer.sign(DATA), "sha256", Padding.PKCS1V15)


def test_no_transient_objects_left_after_many_operations(swtpm, tpm_uri):
    signers = [tpm_backend.generate(tpm_uri(HANDLE + i), algorithm)
               for i, algorithm in enumerate(KeyAlgorithm)]
    for _ in range(25):
        for signer in signers:
            signer.sign(DATA, signer.algorithm.default_hash)
    tpm_backend.list_keys(tpm_uri())
    # swtpm holds three transient objects: a leak would already have failed
    # the fourth generate; this checks nothing is left at all.
    assert transient_handles(swtpm) == []


def test_threads_sign_concurrently(swtpm, tpm_uri):
    ec_signer = tpm_backend.generate(tpm_uri(HANDLE), KeyAlgorithm.EC_P256)
    rsa_signer = tpm_backend.generate(tpm_uri(HANDLE + 1), KeyAlgorithm.RSA_2048)
    start = threading.Barrier(3)
    results: dict[str, list] = {"ec": [], "ec2": [], "rsa": []}
    errors: list[BaseException] = []

    def work(name, signer, pad):
        try:
            start.wait(timeout=30)
            for _ in range(40):
                results[name].append(signer.sign(DATA, "sha256", pad))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=("ec", ec_signer, Padding.PKCS1V15)),
               threading.Thread(target=work, args=("ec2", ec_signer, Padding.PKCS1V15)),
               threading.Thread(target=work, args=("rsa", rsa_signer, Padding.PSS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert all(not t.is_alive() for t in threads)
    for name, signer, pad in (("ec", ec_signer, Padding.PKCS1V15),
                              ("ec2", ec_signer, Padding.PKCS1V15), ("rsa", rsa_signer, Padding.PSS)):
        assert len(results[name]) == 40
        for signature in results[name]:
            assert_verifies(signer.public_key, signature, "sha256", pad)


def test_list_keys(swtpm, tpm_uri):
    assert tpm_backend.list_keys(tpm_uri(None)) == []
    tpm_backend.generate(tpm_uri(HANDLE), KeyAlgorithm.EC_P384)
    tpm_backend.generate(tpm_uri(HANDLE + 1), KeyAlgorithm.RSA_3072)
    keys = tpm_backend.list_keys(tpm_uri(None))
    assert [(k.handle_hex, k.algorithm) for k in keys] == [
        ("0x81020000", "ec-p384"), ("0x81020001", "rsa-3072")]
    assert all(k.can_sign and k.non_extractable for k in keys)
    assert "sensitivedataorigin" in keys[0].attribute_set


def test_through_keystore_with_uri_strings(swtpm):
    text = f"tpm:handle=0x81020002?tcti={swtpm.tcti}"
    created = keystore.generate_key(text, "ec-p256")
    opened = keystore.open_signer(text)
    assert opened.public_key == created.public_key
    assert_verifies(opened.public_key, opened.sign(DATA), "sha256", Padding.PKCS1V15)
    owner = keystore.generate_key(f"tpm:handle=0x81000002?tcti={swtpm.tcti}&hierarchy=owner",
                                  "rsa-2048")
    assert_verifies(owner.public_key, owner.sign(DATA), "sha256", Padding.PKCS1V15)
    listed = {k.handle_hex: k.algorithm for k in keystore.list_keys(f"tpm:?tcti={swtpm.tcti}")}
    assert listed == {"0x81000002": "rsa-2048", "0x81020002": "ec-p256"}
    with pytest.raises(HandleInUseError):
        keystore.generate_key(text, "ec-p384")


# -- the swtpm process itself -------------------------------------------------

def test_swtpm_process_lifecycle(tmp_path):
    tpm = Swtpm(tmp_path / "tpm")
    with tpm:
        pid = tpm.pid
        assert tpm.running and tpm.tcti == f"swtpm:path={tpm.socket_path}"
        assert tpm.socket_path.parent == tpm.state_dir
        assert tpm.ctrl_socket_path == tpm.socket_path.with_name("swtpm.sock.ctrl")
        assert tpm.socket_path.is_socket() and tpm.ctrl_socket_path.is_socket()
        assert tpm2_tool(tpm, "tpm2_getcap", "handles-persistent").strip() == ""
    assert not tpm.running and tpm.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    # A clean stop takes the sockets away with the process.
    assert not tpm.socket_path.exists() and not tpm.ctrl_socket_path.exists()
    tpm.stop()  # stopping twice is harmless


def test_swtpm_restarts_over_the_sockets_of_a_killed_one(tmp_path):
    tpm = Swtpm(tmp_path / "tpm").start()
    signer = tpm_backend.generate(tpm.key_uri(HANDLE), KeyAlgorithm.EC_P256)
    tcti = tpm.tcti
    pidfd = os.pidfd_open(tpm.pid)
    try:
        os.kill(tpm.pid, signal.SIGKILL)  # a power cut of the host process: no cleanup at all
        assert select.select([pidfd], [], [], 10)[0], "swtpm survived SIGKILL"
    finally:
        os.close(pidfd)
    assert not tpm.running
    assert tpm.socket_path.is_socket()  # left behind, nobody listening
    tpm.start()
    try:
        assert tpm.tcti == tcti
        assert tpm2_tool(tpm, "tpm2_getcap", "handles-persistent").split() == ["-", f"0x{HANDLE:X}"]
        assert_verifies(signer.public_key, signer.sign(DATA), "sha256", Padding.PKCS1V15)
    finally:
        tpm.stop()
        tpm_backend.disconnect(tcti)


def test_swtpm_dying_early_reports_its_stderr(swtpm):
    # Two swtpm processes cannot share one state directory: the second is refused
    # before it can take over the first one's socket paths.
    with pytest.raises(SwtpmError, match="lock") as info:
        Swtpm(swtpm.state_dir).start()
    assert "another swtpm" in str(info.value)
    assert swtpm.running
    assert tpm_command(swtpm.socket_path, _GET_RANDOM_2, timeout=10) == 0


def test_manufacture_with_ek_certificates(tmp_path):
    tpm = Swtpm(tmp_path / "board")
    tpm.manufacture(create_ek_cert=True, ca_dir=tmp_path / "maker-ca")
    certs = tpm.ek_cert_paths()
    assert [p.name for p in certs] == ["ek-rsa2048.crt", "ek-secp384r1.crt"]
    with tpm:
        keys = {k.handle_hex: k for k in tpm_backend.list_keys(tpm.key_uri(None))}
        ek = keys["0x81010001"]
        assert ek.algorithm == "rsa-2048"
        assert "restricted" in ek.attribute_set and not ek.can_sign
        pem = tmp_path / "ek.pem"
        readpublic_attributes(tpm, 0x81010001, pem)
        cert = x509.load_der_x509_certificate(certs[0].read_bytes())
        # The EK certificate certifies the key inside this TPM.
        assert cert.public_key() == serialization.load_pem_public_key(pem.read_bytes())
        tpm_backend.disconnect(tpm.tcti)
    maker_ca = x509.load_pem_x509_certificate((tmp_path / "maker-ca" / "issuercert.pem").read_bytes())
    assert cert.issuer == maker_ca.subject
