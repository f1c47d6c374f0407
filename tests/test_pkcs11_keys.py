"""PKCS#11 keys in a real SoftHSM2 token: generation, signing, attributes, errors."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from pledgeforge.hsm import keystore
from pledgeforge.hsm.errors import (KeyExistsError, KeyNotFoundError, KeyUriError, PinError,
                                    TokenNotFoundError)
from pledgeforge.hsm.keyuri import parse_key_uri
from pledgeforge.hsm.signer import KeyAlgorithm, Padding, verify_signature


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm))
def test_generated_key_signs_verifiably(token, algorithm):
    signer = keystore.generate_key(token.uri(f"k-{algorithm.value}"), algorithm)
    assert signer.algorithm is algorithm
    pads = [Padding.PKCS1V15] if algorithm.is_ec else [Padding.PKCS1V15, Padding.PSS]
    for pad in pads:
        for hash_name in ("sha256", "sha384"):
            sig = signer.sign(b"voucher bytes", hash_name, pad)
            assert verify_signature(signer.public_key, sig, b"voucher bytes", hash_name, pad)
            assert not verify_signature(signer.public_key, sig, b"voucher bytez", hash_name, pad)
    # A second process-level open by URI finds the same key.
    again = keystore.open_signer(token.uri(f"k-{algorithm.value}"))
    assert again.public_key_der() == signer.public_key_der()


def test_pkcs11_tool_sees_sensitive_never_extractable_keys(token):
    keystore.generate_key(token.uri("idevid"), "ec-p256")
    keystore.generate_key(token.uri("ca"), "rsa-2048")
    out = subprocess.run(
        ["pkcs11-tool", "--module", token.hsm.module_path, "--token-label", token.label,
         "--login", "--pin", token.pin, "--list-objects", "--type", "privkey"],
        env=token.hsm.env(), capture_output=True, text=True, timeout=60, check=True).stdout
    blocks = [b for b in out.split("Private Key Object") if "label" in b]
    assert len(blocks) == 2
    for block in blocks:
        assert "sensitive" in block and "never extractable" in block
        assert "always sensitive" in block and "local" in block
    # Public and private halves share one CKA_ID.
    pubs = subprocess.run(
        ["pkcs11-tool", "--module", token.hsm.module_path, "--token-label", token.label,
         "--list-objects", "--type", "pubkey"],
        env=token.hsm.env(), capture_output=True, text=True, timeout=60, check=True).stdout
    ids = lambda text: sorted(l.split(":", 1)[1].strip() for l in text.splitlines() if l.strip().startswith("ID:"))
    assert ids(out) == ids(pubs) and len(ids(out)) == 2


def test_list_keys_reports_attributes(token):
    keystore.generate_key(token.uri("a"), "ec-p384")
    keystore.generate_key(token.uri("b"), "rsa-3072")
    infos = {i.label: i for i in keystore.list_keys(token.uri())}
    assert infos["a"].algorithm == "ec-p384" and infos["b"].algorithm == "rsa-3072"
    assert all(i.sensitive and not i.extractable for i in infos.values())


def test_generate_refuses_to_overwrite(token):
    keystore.generate_key(token.uri("dup"), "ec-p256")
    with pytest.raises(KeyExistsError, match="dup"):
        keystore.generate_key(token.uri("dup"), "ec-p256")


def test_wrong_pin_is_named_and_pin_not_leaked(token, tmp_path):
    keystore.generate_key(token.uri("k"), "ec-p256")
    bad = tmp_path / "bad.pin"
    bad.write_text("987654")
    uri = token.uri("k", pin_source=f"file:{bad}")
    with pytest.raises(PinError, match="wrong PIN") as info:
        keystore.open_signer(uri)
    assert "987654" not in str(info.value)
    # The right PIN still works afterwards (the token was not left logged out for good).
    assert keystore.open_signer(token.uri("k")).sign(b"x")


def test_an_open_signer_reads_a_rewritten_pin_file_at_its_next_signature(token, tmp_path):
    """The PIN file is cached by its inode, size and mtime: a rotated or removed PIN is still
    what the next signature uses."""
    keystore.generate_key(token.uri("rotating"), "ec-p256")
    pin_file = tmp_path / "rotating.pin"
    pin_file.write_text(token.pin + "\n")
    signer = keystore.open_signer(token.uri("rotating", pin_source=f"file:{pin_file}"))
    assert signer.sign(b"before")
    replacement = tmp_path / "replacement.pin"
    replacement.write_text("000000\n")     # same length as the right one; a new inode
    replacement.replace(pin_file)
    with pytest.raises(PinError, match="wrong PIN"):
        signer.sign(b"after a wrong rotation")
    pin_file.unlink()
    with pytest.raises(PinError, match="cannot read PIN file"):
        signer.sign(b"without a PIN file")
    pin_file.write_text(token.pin + "\n")
    assert signer.sign(b"after the PIN came back")


def test_missing_token_missing_key_missing_pin(token):
    with pytest.raises(TokenNotFoundError, match="no-such-token"):
        keystore.open_signer(token.uri("k", token="no-such-token", pin_source=None, pin_value="1"))
    with pytest.raises(KeyNotFoundError, match="absent"):
        keystore.open_signer(token.uri("absent"))
    with pytest.raises(PinError, match="needs a PIN"):
        keystore.open_signer(token.uri("k", pin_source=None))


def test_pin_from_environment_variable_named_in_config(token, monkeypatch):
    keystore.generate_key(token.uri("envkey"), "ec-p256")
    monkeypatch.setenv("PF_TEST_PIN", token.pin)
    signer = keystore.open_signer(str(token.uri("envkey", pin_source=None)), pin_env="PF_TEST_PIN")
    assert signer.sign(b"data")
    monkeypatch.delenv("PF_TEST_PIN")
    with pytest.raises(PinError, match="PF_TEST_PIN"):
        keystore.open_signer(str(token.uri("envkey", pin_source="env:PF_TEST_PIN")))


def test_uri_parsing_errors():
    for bad in ("pkcs11:token", "file:/etc/passwd", "pkcs11:token=a?pin-value=1&pin-source=file:/x",
                "pkcs11:token=a;frobnicate=1", "tpm:handle=0x01000000", "tpm:handle=zzz"):
        with pytest.raises(KeyUriError):
            parse_key_uri(bad)
    uri = parse_key_uri("pkcs11:token=My%20Token;object=k;id=%01%ff?pin-value=secret")
    assert uri.token == "My Token" and uri.id == b"\x01\xff"
    assert "secret" not in str(uri) and "secret" not in repr(uri)


def test_two_threads_signing_on_one_token_do_not_crash(token):
    signer = keystore.generate_key(token.uri("threads"), "ec-p256")
    errors, results = [], []

    def work():
        try:
            for _ in range(200):
                results.append(signer.sign(b"m"))
        except Exception as exc:  # recorded and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 400
    assert all(verify_signature(signer.public_key, s, b"m", "sha256") for s in results[:10])


def _signed(signer, signature: bytes, dgst: bytes) -> bool:
    """Whether `signature` is the signer's ECDSA signature over the SHA-256 digest `dgst`."""
    try:
        signer.public_key.verify(signature, dgst, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    except Exception:
        return False
    return True


def test_sign_many_signs_each_digest_in_order(token):
    signer = keystore.generate_key(token.uri("batch"), "ec-p256")
    digests = [bytes([i]) * 32 for i in range(20)]
    signatures = signer._module.sign_many(token.label, token.pin, "batch", None, digests, "sha256",
                                          "pkcs1v15")
    assert len(signatures) == len(digests)
    assert all(_signed(signer, sig, dgst) for dgst, sig in zip(digests, signatures))
    assert not _signed(signer, signatures[0], digests[1])


def test_a_token_removed_and_put_back_gets_a_new_session(token):
    """SoftHSM2 keeps a token in a directory of its own: moving it away is pulling the
    token out; the signer says so, and signs again once the token is back."""
    signer = keystore.generate_key(token.uri("removable"), "ec-p256")
    assert _signed(signer, signer.sign_digest(b"\x01" * 32), b"\x01" * 32)
    mine = next(d for d in token.hsm.token_dir.iterdir()    # beside them: the store's lock file
                if d.is_dir() and token.label.encode() in (d / "token.object").read_bytes())
    away = token.hsm.state_dir / f"removed-{token.label}"
    mine.rename(away)
    try:
        with pytest.raises(TokenNotFoundError):
            signer.sign_digest(b"\x02" * 32)
    finally:
        away.rename(mine)
    assert _signed(signer, signer.sign_digest(b"\x03" * 32), b"\x03" * 32)


CLOSED_SESSION_SCRIPT = """
import sys
from pledgeforge.hsm import keystore
signer = keystore.open_signer(sys.argv[1])
assert signer.in_process  # this process has the token's SOFTHSM2_CONF
signer.sign_digest(bytes(32))
session, _ = signer._module.sessions[sys.argv[2]]
session.close()           # C_CloseSession behind the signer's back
print(signer.sign_digest(bytes(32)).hex())
"""


def test_a_session_closed_under_the_signer_is_reopened(token):
    signer = keystore.generate_key(token.uri("reopen"), "ec-p256")
    # In a process whose environment names this SoftHSM, so the module runs in it.
    out = subprocess.run([sys.executable, "-c", CLOSED_SESSION_SCRIPT, token.uri_text("reopen"),
                          token.label], env=token.hsm.env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert _signed(signer, bytes.fromhex(out.stdout.strip()), bytes(32))
