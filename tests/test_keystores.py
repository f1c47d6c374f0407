"""The key-store registry: schemes, module configuration that travels with the key, two
SoftHSM configurations in one process, p11-kit module names, open algorithm lists, deletion."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from clirunner import openssl, run_cli
from pledgeforge.hsm import keystore, p11kit
from pledgeforge.hsm.cms import sign_cms, verify_cms
from pledgeforge.hsm.errors import (KeyNotFoundError, KeyStoreError, KeyUriError, PinError,
                                    TokenNotFoundError, UnsupportedAlgorithmError)
from pledgeforge.hsm.keyuri import KeyUri, Pkcs11Uri, parse_key_uri
from pledgeforge.hsm.signer import KeyAlgorithm, OtherKeyAlgorithm, verify_signature
from pledgeforge.hsm.softhsm import SoftHsm
from pledgeforge.hsm.x509 import make_ca, to_pem

PIN = "1234"


def _instance(directory: Path, label: str, pin: str = PIN) -> tuple[SoftHsm, Pkcs11Uri]:
    """A SoftHSM2 instance of its own with one token, and the token's URI (PIN from a file)."""
    hsm = SoftHsm(directory).ensure()
    hsm.ensure_token(label, pin, "123456")
    pin_file = directory / "pin"
    pin_file.write_text(pin + "\n")
    return hsm, hsm.token_uri(label, pin_file=pin_file)


def pkcs11_tool(hsm: SoftHsm, label: str, *args: str) -> str:
    out = subprocess.run(["pkcs11-tool", "--module", hsm.module_path, "--token-label", label, *args],
                         env=hsm.env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


# --------------------------------------------------------------------------- the registry

def test_unknown_scheme_is_refused_naming_the_registered_ones():
    for bad in ("kms:projects/p/keys/k", "vault+https://vault.example/k"):
        with pytest.raises(KeyUriError) as info:
            keystore.open_signer(bad)
        assert "pkcs11:" in str(info.value) and "tpm:" in str(info.value)
        assert "signer+https:" in str(info.value)
    assert {"pkcs11", "tpm", "signer+https"} <= set(keystore.schemes())


@dataclass(frozen=True)
class AliasUri(KeyUri):
    """`alias:LABEL`: a key of the test's token under another name."""

    target: Pkcs11Uri
    scheme = "alias"


class AliasBackend:
    """A key store of another scheme, as a remote signer would register one."""

    ALGORITHMS = ()

    @staticmethod
    def open_signer(uri: AliasUri):
        return keystore.open_signer(uri.target)


def test_a_registered_scheme_parses_and_opens_through_its_backend(token):
    real = keystore.generate_key(token.uri("aliased"), "ec-p256")
    parse = lambda rest, pin_env: AliasUri(token.uri(rest))  # noqa: E731
    keystore.register_backend("alias", parse, lambda: AliasBackend)
    try:
        with pytest.raises(ValueError, match="already registered"):
            keystore.register_backend("alias", parse, lambda: AliasBackend)
        opened = keystore.open_signer("alias:aliased")
        assert opened.public_key_der() == real.public_key_der()
        with pytest.raises(UnsupportedAlgorithmError, match="alias: key store cannot generate ec-p256"):
            keystore.generate_key("alias:other", "ec-p256")
    finally:
        keystore.unregister_backend("alias")
    with pytest.raises(KeyUriError, match="unknown key URI scheme 'alias'"):
        keystore.open_signer("alias:aliased")


# --------------------------------------------------------------------------- module configuration

def test_module_configuration_round_trips_in_the_uri(tmp_path):
    text = ("pkcs11:token=t;object=k?module-path=/usr/lib/softhsm/libsofthsm2.so"
            "&x-module-env=SOFTHSM2_CONF=/srv/hsm/softhsm2.conf&x-module-env=OTHER=a%20b"
            "&pin-source=file:/run/pin")
    uri = parse_key_uri(text)
    assert uri.module_env == (("OTHER", "a b"), ("SOFTHSM2_CONF", "/srv/hsm/softhsm2.conf"))
    assert parse_key_uri(str(uri)) == uri
    assert uri.with_object("other").module_env == uri.module_env
    for bad, problem in (("x-module-env=SOFTHSM2_CONF", "NAME=VALUE"), ("x-module-env=1X=y", "NAME=VALUE"),
                         ("x-module-env=A=1&x-module-env=A=2", "gives A twice")):
        with pytest.raises(KeyUriError, match=problem):
            parse_key_uri(f"pkcs11:token=t;object=k?{bad}")


def test_two_softhsm_configurations_in_one_process(tmp_path):
    """Two SoftHSM2 instances, each with a token labelled "shared": each key URI reaches its own."""
    before = dict(os.environ)
    first, first_token = _instance(tmp_path / "first", "shared")
    second, second_token = _instance(tmp_path / "second", "shared")
    a = keystore.generate_key(first_token.with_object("a"), "ec-p256")
    b = keystore.generate_key(second_token.with_object("b"), "ec-p384")
    assert a.public_key_der() != b.public_key_der()
    # Each token holds only its own key, as pkcs11-tool (with that instance's configuration) sees it.
    assert "label:      a" in pkcs11_tool(first, "shared", "--list-objects")
    assert "label:      b" not in pkcs11_tool(first, "shared", "--list-objects")
    assert "label:      b" in pkcs11_tool(second, "shared", "--list-objects")
    with pytest.raises(KeyNotFoundError):
        keystore.open_signer(first_token.with_object("b"))

    # Both in use at once, from two threads.
    errors, signatures = [], {"a": [], "b": []}

    def work(name, signer):
        try:
            for i in range(100):
                signatures[name].append((i, signer.sign(f"m{i}".encode(), signer.algorithm.default_hash)))
        except Exception as exc:  # recorded and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=("a", a)), threading.Thread(target=work, args=("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    for name, signer in (("a", a), ("b", b)):
        assert len(signatures[name]) == 100
        assert all(verify_signature(signer.public_key, sig, f"m{i}".encode(), signer.algorithm.default_hash)
                   for i, sig in signatures[name])
    assert dict(os.environ) == before


def test_keys_are_served_in_process_when_the_environment_already_says_so(softhsm, token):
    """The same key URI loads in-process for a child whose environment names the instance."""
    keystore.generate_key(token.uri("here"), "ec-p256")
    assert not keystore.open_signer(token.uri("here")).in_process  # this process: a module host
    pub = run_cli("keys", "public", "--key", token.uri_text("here"), env=softhsm.env())
    assert pub.returncode == 0, pub.stderr
    assert pub.stdout == keystore.open_signer(token.uri("here")).public_key_pem()


def _module_host_of(hsm: SoftHsm) -> int:
    """The pid of this process's module host for `hsm`, found as `ps` would find it."""
    children = set()
    for task in Path("/proc/self/task").iterdir():
        children |= {int(pid) for pid in (task / "children").read_text().split()}
    hosts = [pid for pid in children
             if b"pledgeforge.hsm.pkcs11_host" in Path(f"/proc/{pid}/cmdline").read_bytes()
             and f"SOFTHSM2_CONF={hsm.conf}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")]
    assert len(hosts) == 1, hosts
    return hosts[0]


def test_module_host_keeps_pins_off_command_lines_and_recovers_from_a_crash(tmp_path):
    pin = secrets.token_hex(8)
    hsm, token_uri = _instance(tmp_path / "hsm", "hosted", pin)
    signer = keystore.generate_key(token_uri.with_object("k"), "ec-p256")
    assert not signer.in_process
    pid = _module_host_of(hsm)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert pin.encode() not in cmdline and pin.encode() not in environ
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(KeyStoreError, match="module host .* exited"):
        signer.sign(b"during the crash")
    # The next call starts a new host; the key is still there.
    assert verify_signature(signer.public_key, signer.sign(b"after"), b"after", "sha256")
    assert _module_host_of(hsm) != pid


def _host_threads() -> int:
    return sum(t.name.startswith("pkcs11-host") for t in threading.enumerate())


def test_an_event_loop_talks_to_the_module_host_without_a_thread_between(tmp_path):
    """Async signatures are written and read on the loop, interleaved with blocking ones from
    another thread, each answered with its own signature."""
    hsm, token_uri = _instance(tmp_path / "hsm", "looped")
    signer = keystore.generate_key(token_uri.with_object("k"), "ec-p256")
    assert not signer.in_process
    blocking = {}

    def sign_blocking():
        for i in range(50):
            blocking[i] = signer.sign(f"thread {i}".encode())

    async def sign_on_the_loop():
        return await asyncio.gather(*(signer.sign_async(f"loop {i}".encode()) for i in range(50)))

    threads_before = _host_threads()
    alone = asyncio.run(sign_on_the_loop())
    assert _host_threads() == threads_before   # no executor thread was started for them
    thread = threading.Thread(target=sign_blocking)
    thread.start()
    looped = asyncio.run(sign_on_the_loop())
    thread.join()
    for signatures in (alone, looped):
        assert all(verify_signature(signer.public_key, sig, f"loop {i}".encode(), "sha256")
                   for i, sig in enumerate(signatures))
    assert len(blocking) == 50 and all(
        verify_signature(signer.public_key, sig, f"thread {i}".encode(), "sha256") for i, sig in blocking.items())


def test_a_cancelled_or_interrupted_async_call_leaves_the_host_in_step(tmp_path):
    hsm, token_uri = _instance(tmp_path / "hsm", "stepped")
    signer = keystore.generate_key(token_uri.with_object("k"), "ec-p256")
    pid = _module_host_of(hsm)

    async def scenario():
        # Cancelled while the host is stopped: its answer is still read when it comes, so the
        # next call gets its own signature, not the cancelled one's.
        os.kill(pid, signal.SIGSTOP)
        cancelled = asyncio.ensure_future(signer.sign_async(b"cancelled"))
        await asyncio.sleep(0.05)
        # A blocking call from this loop now would wait for the loop itself: refused.
        with pytest.raises(RuntimeError, match="use the async form"):
            signer.sign(b"blocking, from the loop")
        cancelled.cancel()
        os.kill(pid, signal.SIGCONT)
        after = await signer.sign_async(b"after the cancel")
        assert verify_signature(signer.public_key, after, b"after the cancel", "sha256")
        assert verify_signature(signer.public_key, signer.sign(b"blocking, now"), b"blocking, now", "sha256")
        # The host dies while the loop awaits it: an error naming that, then a new host.
        os.kill(pid, signal.SIGSTOP)
        pending = asyncio.ensure_future(signer.sign_async(b"during the crash"))
        await asyncio.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(KeyStoreError, match="module host .* exited during sign"):
            await pending
        again = await signer.sign_async(b"on a new host")
        assert verify_signature(signer.public_key, again, b"on a new host", "sha256")

    try:
        asyncio.run(scenario())
    finally:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGCONT)
    assert _module_host_of(hsm) != pid


def test_module_host_reports_errors_as_clearly_as_in_process(token, tmp_path):
    keystore.generate_key(token.uri("k"), "ec-p256")
    bad = tmp_path / "bad.pin"
    bad.write_text("987654\n")
    with pytest.raises(PinError, match="wrong PIN for PKCS#11 token") as info:
        keystore.open_signer(token.uri("k", pin_source=f"file:{bad}"))
    assert "987654" not in str(info.value)
    with pytest.raises(TokenNotFoundError) as info:
        keystore.open_signer(token.uri("k", token="elsewhere"))
    assert token.label in str(info.value) and str(token.hsm.conf) in str(info.value)
    with pytest.raises(KeyStoreError, match="does not exist"):
        keystore.open_signer(token.uri("k", module_path=str(tmp_path / "libnothing.so")))


# --------------------------------------------------------------------------- p11-kit module names

def _p11kit_list() -> dict[str, str]:
    out = subprocess.run(["p11-kit", "list-modules"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return dict(re.findall(r"^([^\s:]+): (\S+)$", out.stdout, re.M))


def test_module_names_resolve_as_p11kit_lists_them():
    listed = _p11kit_list()
    assert "softhsm2" in listed and Path("/usr/share/p11-kit/modules/softhsm2.module").exists()
    ours = p11kit.registered_modules()
    assert {name: m.module for name, m in ours.items()} == listed
    for module in ours.values():
        assert Path(module.path).exists(), module
    assert os.path.realpath(p11kit.module_path("softhsm2")) == \
        os.path.realpath(SoftHsm(Path("/nonexistent")).module_path)
    with pytest.raises(KeyUriError, match="no PKCS#11 module named 'no-such-module'.*softhsm2"):
        parse_key_uri("pkcs11:token=t?module-name=no-such-module")


def test_a_key_named_through_module_name_signs(token):
    text = (f"pkcs11:token={token.label};object=by-name?module-name=softhsm2"
            f"&x-module-env=SOFTHSM2_CONF={token.hsm.conf}&pin-source=file:{token.pin_file}")
    uri = parse_key_uri(text)
    assert uri.module_name == "softhsm2" and str(uri) == text
    signer = keystore.generate_key(uri, "ec-p256")
    assert verify_signature(signer.public_key, signer.sign(b"m"), b"m", "sha256")
    assert keystore.open_signer(token.uri("by-name")).public_key_der() == signer.public_key_der()


def test_p11kit_precedence_user_then_system_then_package(tmp_path):
    dirs = {name: tmp_path / name for name in ("user", "system", "package", "lib")}
    for d in dirs.values():
        d.mkdir()
    (dirs["lib"] / "vendor.so").write_bytes(b"")
    (dirs["package"] / "hsm.module").write_text("module: /opt/package/hsm.so\npriority: 1\n")
    (dirs["system"] / "hsm.module").write_text("# the admin's choice\nmodule: vendor.so\n")
    (dirs["user"] / "hsm.module").write_text("priority: 7\n")  # adds nothing to module:
    (dirs["user"] / "mine.module").write_text("module: /home/me/mine.so\n")
    (dirs["package"] / "notes.txt").write_text("module: /not/a/module.so\n")
    paths = p11kit.P11KitPaths(system_config=str(tmp_path / "pkcs11.conf"),
                               user_config=str(tmp_path / "user.conf"),
                               user_modules=str(dirs["user"]), system_modules=str(dirs["system"]),
                               package_modules=str(dirs["package"]), module_dirs=(str(dirs["lib"]),))
    modules = p11kit.registered_modules(paths)
    assert set(modules) == {"hsm", "mine"}
    assert modules["hsm"].module == "vendor.so" and modules["hsm"].path == str(dirs["lib"] / "vendor.so")
    assert modules["mine"].path == "/home/me/mine.so"
    (tmp_path / "pkcs11.conf").write_text("user-config: none\n")
    assert set(p11kit.registered_modules(paths)) == {"hsm"}


# --------------------------------------------------------------------------- algorithms

def test_an_algorithm_one_key_store_offers_works_end_to_end(token, swtpm, tmp_path):
    signer = keystore.generate_key(token.uri("p521"), "ec-p521")
    assert isinstance(signer.algorithm, OtherKeyAlgorithm)
    assert signer.algorithm.value == "ec-p521" and signer.algorithm.default_hash == "sha512"
    ca = make_ca(signer, "CN=P-521 CA")
    (tmp_path / "ca.pem").write_bytes(to_pem(ca))
    der = sign_cms(b'{"v":1}', signer, ca)
    assert verify_cms(der, [ca]).content == b'{"v":1}'
    (tmp_path / "v.cms").write_bytes(der)
    checked = openssl("cms", "-verify", "-inform", "DER", "-in", tmp_path / "v.cms",
                      "-CAfile", tmp_path / "ca.pem", "-purpose", "any")
    assert checked.returncode == 0 and checked.stdout == b'{"v":1}', checked.stderr
    # The TPM key store does not offer it, and says what it does offer.
    with pytest.raises(UnsupportedAlgorithmError, match="tpm: key store cannot generate ec-p521.*ec-p256"):
        keystore.generate_key(swtpm.key_uri(0x81020000), "ec-p521")
    assert "ec-p521" in keystore.algorithms("pkcs11") and "ec-p521" not in keystore.algorithms("tpm")
    assert set(a.value for a in KeyAlgorithm) <= set(keystore.algorithms("tpm"))
    with pytest.raises(UnsupportedAlgorithmError, match="unknown key algorithm 'ec-p999'"):
        keystore.generate_key(token.uri("bad"), "ec-p999")
    # Digits str.isdigit takes and int() refuses: the same one-line refusal.
    with pytest.raises(UnsupportedAlgorithmError, match="unknown key algorithm 'rsa-²⁰⁴⁸'"):
        keystore.generate_key(token.uri("bad"), "rsa-²⁰⁴⁸")


# --------------------------------------------------------------------------- deletion

def _one_line_error(result) -> str:
    assert result.returncode != 0
    err = result.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_keys_delete_pkcs11_needs_yes_then_removes_both_halves(token):
    keystore.generate_key(token.uri("doomed"), "rsa-2048")
    keystore.generate_key(token.uri("kept"), "ec-p256")
    listing = lambda: pkcs11_tool(token.hsm, token.label, "--login", "--pin", token.pin, "--list-objects")
    assert listing().count("label:      doomed") == 2  # private and public key objects
    refused = run_cli("keys", "delete", "--key", token.uri_text("doomed"))
    assert "--yes" in _one_line_error(refused)
    assert listing().count("label:      doomed") == 2
    done = run_cli("keys", "delete", "--key", token.uri_text("doomed"), "--yes")
    assert done.returncode == 0, done.stderr
    assert b"1 private and 1 public" in done.stdout
    assert "doomed" not in listing() and listing().count("label:      kept") == 2
    with pytest.raises(KeyNotFoundError, match="doomed"):
        keystore.open_signer(token.uri("doomed"))
    again = run_cli("keys", "delete", "--key", token.uri_text("doomed"), "--yes")
    assert "no private key" in _one_line_error(again)


def test_keys_delete_tpm_evicts_the_persistent_handle(swtpm):
    uri = swtpm.key_uri(0x81020005)
    keystore.generate_key(uri, "ec-p256")
    readpublic = lambda: subprocess.run(["tpm2_readpublic", "-c", "0x81020005"], env=swtpm.env(),
                                        capture_output=True, timeout=60)
    assert readpublic().returncode == 0
    assert "--yes" in _one_line_error(run_cli("keys", "delete", "--key", str(uri)))
    assert readpublic().returncode == 0
    done = run_cli("keys", "delete", "--key", str(uri), "--yes")
    assert done.returncode == 0, done.stderr
    assert readpublic().returncode != 0
    assert "0x81020005" not in {k.handle_hex for k in keystore.list_keys(uri)}
    with pytest.raises(KeyNotFoundError):
        keystore.delete_key(uri)
