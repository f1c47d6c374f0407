"""Who can reach a swtpm (owner-only Unix sockets) and what its state files give away (encrypted).

Other users are played by `nobody` through setpriv, which needs root; every
check of a refusal comes with a control showing that the same probe succeeds
where the protection is lifted, so a probe that cannot connect at all fails.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from pledgeforge.hsm import tpm_backend
from pledgeforge.hsm.keyuri import TpmUri
from pledgeforge.hsm.signer import KeyAlgorithm
from pledgeforge.hsm.swtpm import (_GET_RANDOM_2, STATE_FILE, Swtpm, SwtpmError,
                                   _private_runtime_dir, tpm_command)

HANDLE = 0x81020000
DATA = b"voucher-request for serial PF-0001"

as_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                             reason="acting as another user (setpriv) needs root")

# Connects to each path given and prints "connected" or the errno's name, one line each.
_CONNECT_PROBE = """
import errno, socket, sys
for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        print("connected")
    except OSError as exc:
        print(errno.errorcode.get(exc.errno, str(exc.errno)))
    finally:
        s.close()
"""


def as_nobody(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=30, cwd="/", **kwargs)


def connect_as_nobody(*paths: Path) -> list[str]:
    proc = as_nobody("/usr/bin/python3", "-c", _CONNECT_PROBE, *map(str, paths))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def getrandom(tcti: str, *, user: str) -> subprocess.CompletedProcess:
    argv = ["tpm2_getrandom", "-T", tcti, "--hex", "8"]
    if user == "nobody":
        return as_nobody(*argv)
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def open_parent():
    """A directory every user may pass through (tmp_path's parents are 0700)."""
    parent = Path(tempfile.mkdtemp(prefix="pf-swtpm-"))
    os.chmod(parent, 0o711)
    yield parent
    shutil.rmtree(parent, ignore_errors=True)


# -- who can reach the TPM ----------------------------------------------------

def test_sockets_are_owner_only(swtpm):
    assert mode(swtpm.socket_dir) == 0o700
    for path in (swtpm.socket_path, swtpm.ctrl_socket_path):
        assert stat.S_ISSOCK(path.lstat().st_mode)
        assert mode(path) == 0o600
        assert path.lstat().st_uid == os.getuid()


@as_root
def test_another_user_cannot_connect_but_the_owner_can(open_parent):
    tpm = Swtpm(open_parent / "board" / "tpm").start()
    try:
        os.chmod(open_parent / "board", 0o711)  # only the TPM's own directory is closed
        # The owner: tpm2-tools and a raw TPM command both get through.
        assert getrandom(tpm.tcti, user="owner").returncode == 0
        assert tpm_command(tpm.socket_path, _GET_RANDOM_2, timeout=10) == 0

        # Another user: refused on the command and the control socket, by tpm2-tools too.
        assert connect_as_nobody(tpm.socket_path, tpm.ctrl_socket_path) == ["EACCES", "EACCES"]
        refused = getrandom(tpm.tcti, user="nobody")
        assert refused.returncode != 0 and "Could not load tcti" in refused.stderr

        # Control: with the directory and sockets opened up, the same probes get through,
        # so the refusals above are the permissions' doing.
        os.chmod(tpm.socket_dir, 0o711)
        for path in (tpm.socket_path, tpm.ctrl_socket_path):
            os.chmod(path, 0o666)
        assert connect_as_nobody(tpm.socket_path, tpm.ctrl_socket_path) == ["connected", "connected"]
        assert getrandom(tpm.tcti, user="nobody").returncode == 0
    finally:
        tpm.stop()
        tpm_backend.disconnect(tpm.tcti)


def test_a_state_dir_too_long_for_a_socket_uses_a_private_runtime_dir(tmp_path):
    state = tmp_path / ("a-long-directory-name-" * 5) / "tpm"
    tpm = Swtpm(state)
    assert len(str(tpm.ctrl_socket_path)) <= 107 and tpm.socket_dir != tpm.state_dir
    assert tpm.socket_dir.parent.name == f"pledgeforge-{os.getuid()}"
    assert Swtpm(state).tcti == tpm.tcti  # the same place at every start
    try:
        with tpm:
            signer = tpm_backend.generate(tpm.key_uri(HANDLE), KeyAlgorithm.EC_P256)
            assert mode(tpm.socket_dir) == 0o700 and mode(tpm.socket_dir.parent) == 0o700
            assert mode(tpm.socket_path) == 0o600
            assert getrandom(tpm.tcti, user="owner").returncode == 0
        assert not tpm.socket_dir.exists()  # nothing left behind once stopped
        with tpm:
            assert tpm_backend.TpmSigner(tpm.key_uri(HANDLE)).public_key == signer.public_key
    finally:
        tpm_backend.disconnect(tpm.tcti)


def test_a_state_dir_whose_name_a_tcti_cannot_carry_uses_a_private_runtime_dir(tmp_path):
    tpm = Swtpm(tmp_path / "board=1&x%41")  # '=' ends a TCTI value, '&' and '%' a URI attribute
    assert tpm.socket_dir != tpm.state_dir and not set("=&%") & set(tpm.tcti[len("swtpm:path="):])
    with tpm:
        assert getrandom(tpm.tcti, user="owner").returncode == 0
        assert tpm_backend.list_keys(tpm.key_uri(None)) == []
    tpm_backend.disconnect(tpm.tcti)


def test_a_comma_in_the_state_path_is_one_clear_error(tmp_path):
    with pytest.raises(SwtpmError, match="','") as info:
        Swtpm(tmp_path / "board,1")
    assert "\n" not in str(info.value)


def test_a_runtime_dir_of_someone_else_is_refused(tmp_path):
    squatted = tmp_path / f"pledgeforge-{os.getuid()}"
    squatted.mkdir(mode=0o755)
    os.chmod(squatted, 0o755)
    with pytest.raises(SwtpmError, match="not a private directory"):
        _private_runtime_dir(tmp_path)
    os.chmod(squatted, 0o700)
    assert _private_runtime_dir(tmp_path) == squatted


@as_root
def test_a_runtime_dir_owned_by_another_user_is_refused(tmp_path):
    squatted = tmp_path / f"pledgeforge-{os.getuid()}"
    squatted.mkdir(mode=0o700)
    os.chown(squatted, 65534, 65534)  # nobody made it first, with the right mode
    with pytest.raises(SwtpmError, match="not a private directory"):
        _private_runtime_dir(tmp_path)


# -- what the state files give away ----------------------------------------------

def public_point(signer) -> list[bytes]:
    numbers = signer.public_key.public_numbers()
    return [numbers.x.to_bytes(32, "big"), numbers.y.to_bytes(32, "big")]


def plaintext_swtpm_state_with_a_key(state: Path) -> tuple[Path, list[bytes]]:
    """The control: the same key made in a swtpm started by hand without --key."""
    state.mkdir(mode=0o700)
    sock = state / "s"
    proc = subprocess.Popen(["swtpm", "socket", "--tpm2", "--server", f"type=unixio,path={sock},mode=0600",
                             "--ctrl", f"type=unixio,path={sock}.ctrl,mode=0600",
                             "--tpmstate", f"dir={state}", "--flags", "not-need-init,startup-clear"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tcti = f"swtpm:path={sock}"
    try:
        deadline = time.monotonic() + 10
        while True:  # until it answers; each pause is a wait on the process
            try:
                if tpm_command(sock, _GET_RANDOM_2, timeout=2) == 0:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "plain swtpm did not start"
            try:
                proc.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                pass
        signer = tpm_backend.generate(TpmUri(handle=HANDLE, tcti=tcti), KeyAlgorithm.EC_P256)
        point = public_point(signer)
    finally:
        tpm_backend.disconnect(tcti)
        proc.terminate()
        proc.wait(timeout=10)
    return state / STATE_FILE, point


def test_state_file_does_not_show_the_keys_it_holds(tmp_path):
    tpm = Swtpm(tmp_path / "tpm", key_file=tmp_path / "tpm-state.key")
    with tpm:
        point = public_point(tpm_backend.generate(tpm.key_uri(HANDLE), KeyAlgorithm.EC_P256))
        tpm_backend.disconnect(tpm.tcti)
    state = (tpm.state_dir / STATE_FILE).read_bytes()
    assert not any(part in state for part in point)

    # Control: unencrypted, the same kind of key shows its public point in the same file.
    plain_file, plain_point = plaintext_swtpm_state_with_a_key(tmp_path / "plain")
    assert all(part in plain_file.read_bytes() for part in plain_point)


def test_state_key_is_made_once_owner_only_outside_the_tpm_dir(tmp_path):
    key_file = tmp_path / "board" / "tpm-state.key"
    tpm = Swtpm(tmp_path / "board" / "tpm", key_file=key_file)
    tpm.manufacture(create_ek_cert=True, ca_dir=tmp_path / "maker-ca")
    assert mode(key_file) == 0o600 and mode(tpm.state_dir) == 0o700
    key = key_file.read_bytes()
    assert len(bytes.fromhex(key.decode())) == 32
    # The endorsement keys and their certificates were made in the encrypted state.
    assert [p.name for p in tpm.ek_cert_paths()] == ["ek-rsa2048.crt", "ek-secp384r1.crt"]
    with tpm:
        keys = {k.handle_hex for k in tpm_backend.list_keys(tpm.key_uri(None))}
        assert {"0x81010001", "0x81010016"} <= keys
        readpublic = subprocess.run(["tpm2_readpublic", "-T", tpm.tcti, "-c", "0x81010001"],
                                    capture_output=True, text=True, timeout=30)
        assert readpublic.returncode == 0 and "rsa" in readpublic.stdout, readpublic.stderr
        tpm_backend.disconnect(tpm.tcti)
    tpm.start().stop()
    assert key_file.read_bytes() == key  # made once, kept


def test_keys_come_back_with_the_key_and_a_wrong_key_is_refused(tmp_path):
    key_file = tmp_path / "tpm-state.key"
    tpm = Swtpm(tmp_path / "tpm", key_file=key_file)
    tpm.manufacture(create_ek_cert=False)
    with tpm:
        signer = tpm_backend.generate(tpm.key_uri(HANDLE), KeyAlgorithm.EC_P256)
        tpm_backend.disconnect(tpm.tcti)
    right_key = key_file.read_bytes()
    state_before = (tpm.state_dir / STATE_FILE).read_bytes()

    key_file.write_bytes(os.urandom(32).hex().encode())
    with pytest.raises(SwtpmError) as info:
        tpm.start()
    message = str(info.value)
    assert "\n" not in message and str(key_file) in message and "does not decrypt" in message
    assert not tpm.running
    assert (tpm.state_dir / STATE_FILE).read_bytes() == state_before  # untouched

    key_file.write_bytes(right_key)
    with tpm:
        back = tpm_backend.TpmSigner(tpm.key_uri(HANDLE))
        assert back.public_key == signer.public_key
        back.public_key.verify(back.sign(DATA), DATA, ec.ECDSA(hashes.SHA256()))
        tpm_backend.disconnect(tpm.tcti)


def test_a_state_without_its_key_is_refused_not_replaced(tmp_path):
    key_file = tmp_path / "tpm-state.key"
    tpm = Swtpm(tmp_path / "tpm", key_file=key_file)
    tpm.start().stop()
    state_before = (tpm.state_dir / STATE_FILE).read_bytes()
    key_file.unlink()
    with pytest.raises(SwtpmError, match="has no key file") as info:
        tpm.start()
    assert "\n" not in str(info.value)
    assert not key_file.exists() and (tpm.state_dir / STATE_FILE).read_bytes() == state_before


def test_a_key_file_open_to_others_is_refused(tmp_path):
    key_file = tmp_path / "tpm-state.key"
    tpm = Swtpm(tmp_path / "tpm", key_file=key_file)
    tpm.start().stop()
    os.chmod(key_file, 0o644)
    with pytest.raises(SwtpmError, match="chmod 600"):
        tpm.start()
    os.chmod(key_file, 0o600)
    tpm.start().stop()
