"""The exit statuses scripts rely on, each kind of failure run through the real CLI:

    0 success, 1 verification or protocol failure, 2 usage error,
    3 environment (missing token, unreachable server or board, I/O).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from clirunner import run_cli
from pledgeforge.boards.image_signing import ImageLayout, sign_image
from pledgeforge.cli import ExitCode, exit_code_for
from pledgeforge.errors import (EnvironmentFailure, FileAccessError, PledgeforgeError, UsageError,
                                VerificationFailure)
from pledgeforge.hsm import errors as hsm_errors
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner
from registrar_standin import running_lab
from vectors import APPC

VOUCHER_REQUEST = APPC / "vr_00-D0-E5-F2-00-02.der"


def test_the_kind_of_an_error_decides_its_status():
    assert exit_code_for(VerificationFailure("x")) == ExitCode.FAILURE == 1
    assert exit_code_for(UsageError("x")) == ExitCode.USAGE == 2
    assert exit_code_for(EnvironmentFailure("x")) == ExitCode.ENVIRONMENT == 3
    assert exit_code_for(FileAccessError("x")) == 3
    assert exit_code_for(FileNotFoundError(2, "No such file or directory", "f")) == 3
    assert exit_code_for(PledgeforgeError("an error of no kind")) == 1
    # A malformed key URI is a key store error and a usage error: usage wins.
    assert exit_code_for(hsm_errors.KeyUriError("x")) == 2
    for environment in (hsm_errors.TokenNotFoundError, hsm_errors.PinError,
                        hsm_errors.TpmUnreachableError, hsm_errors.KeyNotFoundError):
        assert exit_code_for(environment("x")) == 3, environment
    for verification in (hsm_errors.BadSignatureError, hsm_errors.DigestMismatchError,
                         hsm_errors.UntrustedSignerError, hsm_errors.MalformedCmsError,
                         hsm_errors.CertificateError, hsm_errors.VoucherError):
        assert exit_code_for(verification("x")) == 1, verification


@dataclass
class Bench:
    """Files and keys the failing command lines refer to."""

    tmp: Path
    env: dict
    key_uri: str
    token_label: str
    bad_pin: Path
    tampered: Path
    image: Path
    other_key_pem: Path
    stopped_lab: Path
    dead_port: int


@pytest.fixture(scope="module")
def stopped_lab(tmp_path_factory) -> Path:
    """A lab whose servers were started once and are now down: an unreachable registrar."""
    directory = tmp_path_factory.mktemp("stopped-lab")
    with running_lab(directory):
        pass
    return directory


@pytest.fixture
def bench(token, tmp_path, stopped_lab) -> Bench:
    # By the CLI: this process's PKCS#11 module may be pointed at the lab's SoftHSM.
    assert run_cli("keys", "generate", "--key", token.uri_text("k"), env=token.hsm.env()).returncode == 0
    bad_pin = tmp_path / "bad.pin"
    bad_pin.write_text("000000\n")
    der = bytearray(VOUCHER_REQUEST.read_bytes())
    der[der.index(b"serial-number")] ^= 0x01                 # content changed after signing
    tampered = tmp_path / "tampered.der"
    tampered.write_bytes(bytes(der))
    fw, other = (SoftwareSigner.generate(KeyAlgorithm.EC_P256) for _ in range(2))
    image = tmp_path / "app.signed.bin"
    image.write_bytes(sign_image(fw, b"firmware" * 100, "1.0.0", ImageLayout()))
    other_key_pem = tmp_path / "other.pem"
    other_key_pem.write_bytes(other.public_key_pem())
    with socket.socket() as s:                               # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    return Bench(tmp_path, token.hsm.env(), token.uri_text("k"), token.label, bad_pin, tampered,
                 image, other_key_pem, stopped_lab, dead_port)


# (what fails, the command line, the status, a piece of the one-line message)
TABLE = [
    ("nothing", lambda b: ["board", "profiles"], 0, None),
    ("a digest", lambda b: ["cms", "verify", "--in", b.tampered, "--anchors", APPC / "vendor.crt",
                            "--no-check-time"], 1, "does not match the content"),
    ("a chain", lambda b: ["cms", "verify", "--in", VOUCHER_REQUEST, "--anchors", APPC / "masa.crt",
                           "--no-check-time"], 1, "does not chain"),
    ("a certificate", lambda b: ["cert", "verify", "--in", APPC / "idevid_00-D0-E5-F2-00-02.crt",
                                 "--anchors", APPC / "masa.crt", "--no-check-time"], 1, "does not chain"),
    ("an image", lambda b: ["image", "verify", "--in", b.image, "--key-pem", b.other_key_pem], 1,
     "wrong key"),
    ("bulk items", lambda b: ["verify", "--bulk", b.tampered, "--anchors", APPC / "vendor.crt",
                              "--no-check-time"], 1, "1 of 1 items failed verification"),
    ("a missing option", lambda b: ["cms", "verify", "--anchors", APPC / "vendor.crt"], 2,
     "Missing option '--in'"),
    ("an unknown choice", lambda b: ["board", "power", "sideways", "--state", b.tmp], 2,
     "'sideways' is not one of"),
    ("a key URI", lambda b: ["keys", "public", "--key", "foo:bar"], 2, "unknown key URI scheme"),
    ("a PIN on the command line", lambda b: ["keys", "public", "--key",
                                             f"pkcs11:token={b.token_label};object=k?pin-value=1234"],
     2, "pin-value"),
    ("a profile name", lambda b: ["board", "run", "--profile", "nosuch", "--state", b.tmp / "board"],
     2, "no profile named 'nosuch'"),
    ("a station without its CA", lambda b: ["provision", "--port", b.tmp / "console"], 2,
     "give --ca-key, --ca-cert, --masa-url, --cloud-registrar, --cloud-anchor, --anchors"),
    ("a serial number", lambda b: ["ca", "issue-idevid", "--ca-key", b.key_uri, "--ca-cert", b.tmp / "ca",
                                   "--csr", b.tmp / "csr", "--serial", "no spaces", "--out", b.tmp / "o"],
     2, "serial number (--serial) 'no spaces'"),
    ("a token", lambda b: ["keys", "public", "--key",
                           f"pkcs11:token=ghost;object=k?pin-source=file:{b.bad_pin}"], 3,
     "no PKCS#11 token labelled 'ghost'"),
    ("a PIN", lambda b: ["keys", "public", "--key",
                         f"pkcs11:token={b.token_label};object=k?pin-source=file:{b.bad_pin}"], 3,
     "wrong PIN"),
    ("a TPM", lambda b: ["keys", "public", "--key",
                         f"tpm:handle=0x81020000?tcti=swtpm:host=127.0.0.1,port={b.dead_port}"], 3,
     "127.0.0.1"),
    ("a file", lambda b: ["cms", "verify", "--in", b.tmp / "missing.der", "--anchors",
                          APPC / "vendor.crt"], 3, "cannot read CMS input"),
    ("a board", lambda b: ["board", "power", "status", "--state", b.tmp], 3, "no board is running"),
    ("a lab", lambda b: ["lab", "status", "--dir", b.tmp / "nothing"], 3, "holds no lab"),
    ("a server", lambda b: ["pledge", "bootstrap", "--lab", b.stopped_lab], 3,
     "cloud registrar does not answer"),
]


@pytest.mark.parametrize("what,args,status,message", TABLE, ids=[row[0] for row in TABLE])
def test_exit_status_table(bench, what, args, status, message):
    result = run_cli(*args(bench), env=bench.env)
    err = result.stderr.decode()
    assert result.returncode == status, (what, err)
    assert "Traceback" not in err
    if message is None:
        return
    assert message in err, err
    if status != ExitCode.USAGE or err.startswith("pledgeforge: error:"):
        # Ours: one line on stderr, nothing half-printed on stdout (bulk verification
        # prints its report first, by design).
        assert len(err.strip().splitlines()) == 1, err
        if what != "bulk items":
            assert result.stdout == b""
