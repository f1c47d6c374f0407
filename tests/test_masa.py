"""The MASA as a real HTTPS server (`pledgeforge masa serve`) with its voucher key in SoftHSM.

It accepts RFC 8995 C.2.2's registrar voucher-request when configured with
that example's owner and vendor CAs (time checks off: they expired), its
vouchers verify with `openssl cms -verify`, and every refusal has its status
code and leaves the database untouched.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import signal
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from clirunner import PLEDGEFORGE, openssl, run_cli
from registrar_standin import StandIn, https
from pledgeforge.hsm.wellknown import REQUEST_VOUCHER, VOUCHER_MEDIA_TYPE
from vectors import APPC
from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.cms import sign_cms
from pledgeforge.hsm.keystore import generate_key
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner
from pledgeforge.hsm.voucher import Voucher, decode_binary
from pledgeforge.hsm.x509 import issue_certificate, issue_idevid, make_ca, to_der, to_pem
from pledgeforge.registrar.db import MASA_METADATA, MasaStore, table_contents

ID_KP_CMC_RA = ObjectIdentifier("1.3.6.1.5.5.7.3.28")
REQUEST_AUDIT_LOG = "/.well-known/brski/requestauditlog"
VECTOR_SERIAL = "00-D0-E5-F2-00-02"


class Party:
    """A software CA or registrar of the test world (test CAs only, never a server key)."""

    def __init__(self, cert: x509.Certificate, key: SoftwareSigner):
        self.cert, self.key = cert, key

    @classmethod
    def ca(cls, name: str) -> "Party":
        key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
        return cls(make_ca(key, f"CN={name}"), key)

    def issue(self, name: str, eku=(ID_KP_CMC_RA,), **kwargs) -> "Party":
        key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
        return Party(issue_certificate(self.key, self.cert, key.public_key, f"CN={name}",
                                       extended_key_usage=list(eku), **kwargs), key)


def _write_key(path, signer: SoftwareSigner) -> None:
    path.write_bytes(signer.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


@pytest.fixture(scope="module")
def world(softhsm, tmp_path_factory):
    """Keys and certificates: the MASA's and the manufacturer CA's in SoftHSM, the rest software."""
    tmp = tmp_path_factory.mktemp("masa")
    label = f"masa{os.getpid()}"
    softhsm.ensure_token(label, "1234", "123456")
    pin = tmp / "pin"
    pin.write_text("1234\n")
    pin.chmod(0o600)
    token = softhsm.token_uri(label, pin_file=pin)
    mfg_key = generate_key(token.with_object("mfg-ca"), "ec-p256")
    mfg_cert = make_ca(mfg_key, "CN=test manufacturer CA")
    masa_key = generate_key(token.with_object("masa"), "ec-p256")
    masa_cert = issue_certificate(mfg_key, mfg_cert, masa_key.public_key, "CN=test MASA")
    web = Party.ca("test web CA")
    tls = web.issue("localhost", eku=(ExtendedKeyUsageOID.SERVER_AUTH,), key_usage="tls",
                    dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    owner, stranger = Party.ca("test owner CA"), Party.ca("stranger CA")
    files = {
        "mfg.crt": to_pem(mfg_cert), "masa.crt": to_pem(masa_cert), "web.crt": to_pem(web.cert),
        "tls.crt": to_pem(tls.cert),
    }
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    _write_key(tmp / "tls.key", tls.key)
    cloud = web.issue("test cloud registrar")
    (tmp / "cloud.crt").write_bytes(to_pem(cloud.cert))
    return dict(tmp=tmp, token=token, mfg_key=mfg_key, mfg_cert=mfg_cert, masa_cert=masa_cert,
                web=web, owner=owner, stranger=stranger, cloud=cloud,
                registrar=owner.issue("owner registrar"),
                stranger_registrar=stranger.issue("stranger registrar"),
                not_a_registrar=owner.issue("owner web server", eku=(ExtendedKeyUsageOID.SERVER_AUTH,)))


def _wait_for_health(proc: subprocess.Popen, url: str, anchor, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"masa serve exited with {proc.returncode}: {proc.stderr.read().decode()}"
        try:
            if https(url + "/.well-known/pledgeforge/health", anchors=[anchor], timeout=2).status == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "the MASA did not answer in time"
        try:
            proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture(scope="module")
def masa(world, softhsm):
    tmp = world["tmp"]
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp / "masa.toml"
    config.write_text(
        'role = "masa"\ncheck_time = false\n'
        f'[server]\nport = {port}\ntls_cert = "tls.crt"\ntls_key = "tls.key"\n'
        '[database]\nurl = "sqlite:///masa.sqlite"\n'
        f'[hsm]\nsofthsm2_conf = "{softhsm.conf}"\n'
        f'[masa]\nsigning_key = "{world["token"].with_object("masa")}"\nsigning_cert = "masa.crt"\n'
        f'signing_chain = ["mfg.crt"]\nmanufacturer_cas = ["{APPC / "vendor.crt"}", "mfg.crt"]\n'
        'cloud_registrars = [{ name = "test-cloud", anchor = "cloud.crt" }]\n')
    env = {**os.environ, "SOFTHSM2_CONF": str(softhsm.conf)}
    added = run_cli("masa", "add-owner", "--config", config, "--name", "vector-owner",
                    "--domain-ca", APPC / "ownerca_secp384r1.crt", env=env)
    assert added.returncode == 0, added.stderr
    added = run_cli("masa", "add-device", "--config", config, "--serial", VECTOR_SERIAL,
                    "--owner", "vector-owner", env=env)
    assert added.returncode == 0, added.stderr
    proc = subprocess.Popen([PLEDGEFORGE, "masa", "serve", "--config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"https://127.0.0.1:{port}"
    try:
        _wait_for_health(proc, url, tmp / "web.crt")
        store = MasaStore(f"sqlite:///{tmp / 'masa.sqlite'}")
        store.add_owner("test-owner", to_pem(world["owner"].cert).decode())
        store.add_owner("stranger", to_pem(world["stranger"].cert).decode())
        yield dict(url=url, store=store, anchor=tmp / "web.crt", proc=proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
    # SIGTERM is a graceful shutdown, not a crash.
    assert proc.returncode == 0, proc.stderr.read().decode()


def _post(masa, body: bytes, path: str = REQUEST_VOUCHER, content_type: str = VOUCHER_MEDIA_TYPE,
          accept: str = VOUCHER_MEDIA_TYPE):
    return https(masa["url"] + path, "POST", body, anchors=[masa["anchor"]],
                 headers={"Content-Type": content_type, "Accept": accept})


def _pledge(world, tmp_path, serial: str, issuer=None) -> StandIn:
    key, cert = issuer or (world["mfg_key"], world["mfg_cert"])
    return StandIn.create(tmp_path, serial, lambda pub, s: issue_idevid(key, cert, pub, s))


def registrar_request(pledge_cms: bytes, party: Party, *, serial: str, nonce: bytes | None = None,
                      chain=()) -> bytes:
    """A registrar voucher-request around a pledge's, signed by `party`."""
    request = Voucher(is_request=True, serial_number=serial,
                      created_on=dt.datetime.now(dt.timezone.utc), nonce=nonce,
                      prior_signed_voucher_request=pledge_cms)
    return sign_cms(request.to_json(), party.key, party.cert, chain)


def _openssl_verify(tmp_path, voucher: bytes, anchor: x509.Certificate) -> bytes:
    (tmp_path / "voucher.der").write_bytes(voucher)
    (tmp_path / "anchor.pem").write_bytes(to_pem(anchor))
    out = openssl("cms", "-verify", "-inform", "DER", "-in", tmp_path / "voucher.der",
                  "-CAfile", tmp_path / "anchor.pem", "-purpose", "any")
    assert out.returncode == 0, out.stderr.decode()
    assert b"Verification successful" in out.stderr
    return out.stdout


def test_rfc8995_c22_registrar_request_gets_a_voucher_that_openssl_verifies(world, masa, tmp_path):
    before = len(masa["store"].audit_events(VECTOR_SERIAL))
    answer = _post(masa, (APPC / "parboiled_vr_00-D0-E5-F2-00-02.der").read_bytes())
    assert answer.status == 200, answer.body
    assert answer.header("content-type") == VOUCHER_MEDIA_TYPE
    content = _openssl_verify(tmp_path, answer.body, world["mfg_cert"])
    voucher = Voucher.from_json(content, expect_request=False)
    assert voucher.serial_number == VECTOR_SERIAL
    assert voucher.assertion == "logged"
    assert voucher.nonce == decode_binary("-_XE9zK9q8Ll1qylMtLKeg", "nonce")
    # Copied as the pledge wrote it (base64url, no padding), not re-encoded.
    assert json.loads(content)["ietf-voucher:voucher"]["nonce"] == "-_XE9zK9q8Ll1qylMtLKeg"
    owner_ca = load_certificate_file(str(APPC / "ownerca_secp384r1.crt"))[0]
    assert voucher.pinned_domain_cert == to_der(owner_ca)
    assert voucher.est_domain is None and voucher.expires_on is None
    assert voucher.created_on is not None
    events = masa["store"].audit_events(VECTOR_SERIAL)
    assert len(events) == before + 1
    assert events[-1]["requester"].startswith("registrar ") and "fountain-test" in events[-1]["requester"]


def test_audit_log_lists_issued_vouchers_for_the_owner(world, masa):
    body = (APPC / "parboiled_vr_00-D0-E5-F2-00-02.der").read_bytes()
    assert _post(masa, body).status == 200
    answer = _post(masa, body, REQUEST_AUDIT_LOG, accept="application/json")
    assert answer.status == 200, answer.body
    log = json.loads(answer.body)
    assert log["version"] == 1 and len(log["events"]) >= 1
    # RFC 8995 5.8.2: domainID is the pinned certificate's SubjectKeyIdentifier.
    ski = bytes.fromhex("B9A5F6CB11E107A4492CA708C67C10BC87B37426")
    assert {e["domainID"] for e in log["events"]} == {base64.b64encode(ski).decode()}
    assert all(e["assertion"] == "logged" and e["nonce"] for e in log["events"])


def test_own_registrar_and_cloud_registrar_requests(world, masa, tmp_path):
    pledge = _pledge(world, tmp_path, "MASA-OWN-1")
    masa["store"].set_device("MASA-OWN-1", "test-owner", est_domain="https://127.0.0.1:1234",
                             additional_configuration_url="https://127.0.0.1:1234/cfg.json")
    cms, nonce = pledge.voucher_request()
    answer = _post(masa, registrar_request(cms, world["registrar"], serial="MASA-OWN-1", nonce=nonce))
    assert answer.status == 200, answer.body
    voucher = Voucher.from_json(_openssl_verify(tmp_path, answer.body, world["mfg_cert"]))
    assert voucher.nonce == nonce and voucher.pinned_domain_cert == to_der(world["owner"].cert)
    assert voucher.est_domain == "https://127.0.0.1:1234"
    assert voucher.additional_configuration == "https://127.0.0.1:1234/cfg.json"
    assert voucher.to_dict()["ietf-voucher:voucher"]["additional-configuration-url"]
    # RFC 8366: id-ct-animaJSONVoucher as eContentType.
    out = openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", tmp_path / "voucher.der")
    assert b"id-smime-ct-animaJSONVoucher" in out.stdout or b"1.2.840.113549.1.9.16.1.40" in out.stdout

    cms, nonce = pledge.voucher_request()
    answer = _post(masa, registrar_request(cms, world["cloud"], serial="MASA-OWN-1", nonce=nonce))
    assert answer.status == 200, answer.body
    assert masa["store"].audit_events("MASA-OWN-1")[-1]["requester"].startswith("cloud registrar test-cloud")

    # A nonceless request gets a voucher that expires.
    cms, _ = pledge.voucher_request(nonceless=True)
    request = Voucher(is_request=True, serial_number="MASA-OWN-1", prior_signed_voucher_request=cms)
    body = sign_cms(request.to_json(), world["registrar"].key, world["registrar"].cert)
    answer = _post(masa, body)
    assert answer.status == 200
    assert Voucher.from_json(_openssl_verify(tmp_path, answer.body, world["mfg_cert"])).expires_on is not None


def _refusal_cases(world, tmp_path):
    """(name, request body, headers, expected status, words in the answer)."""
    good = _pledge(world, tmp_path, "MASA-REF-1")
    unknown = _pledge(world, tmp_path, "MASA-UNKNOWN")
    foreign = Party.ca("unknown manufacturer")
    alien = _pledge(world, tmp_path, "MASA-REF-1", issuer=(foreign.key, foreign.cert))
    cms, nonce = good.voucher_request()
    reg = world["registrar"]
    ok = registrar_request(cms, reg, serial="MASA-REF-1", nonce=nonce)
    tampered = bytearray(ok)
    at = bytes(tampered).index(b"MASA-REF-1")
    tampered[at] = ord("N")
    lying_cms, lying_nonce = good.voucher_request(serial="MASA-REF-2")
    alien_cms, alien_nonce = alien.voucher_request()
    unknown_cms, unknown_nonce = unknown.voucher_request()
    return [
        ("wrong content type", ok, {"Content-Type": "application/json"}, 415, "Content-Type"),
        ("unacceptable answer type", ok, {"Accept": "application/json"}, 406, "Accept"),
        ("not CMS", b"\x30\x03\x02\x01\x00", {}, 400, "CMS"),
        ("garbage", b"hello", {}, 400, "CMS"),
        ("tampered registrar request", bytes(tampered), {}, 403, "not signed correctly"),
        ("no prior-signed-voucher-request",
         sign_cms(Voucher(is_request=True, serial_number="MASA-REF-1").to_json(), reg.key, reg.cert),
         {}, 400, "prior-signed-voucher-request"),
        ("registrar serial differs", registrar_request(cms, reg, serial="MASA-REF-2", nonce=nonce),
         {}, 400, "serial-number"),
        ("pledge JSON serial differs from its IDevID",
         registrar_request(lying_cms, reg, serial="MASA-REF-1", nonce=lying_nonce), {}, 400, "serial-number"),
        ("nonce differs", registrar_request(cms, reg, serial="MASA-REF-1", nonce=b"other nonce"),
         {}, 400, "nonce"),
        ("IDevID of an unknown manufacturer",
         registrar_request(alien_cms, reg, serial="MASA-REF-1", nonce=alien_nonce), {}, 403, "not trusted"),
        ("unknown device", registrar_request(unknown_cms, reg, serial="MASA-UNKNOWN", nonce=unknown_nonce),
         {}, 404, "not known"),
        ("registrar of another owner",
         registrar_request(cms, world["stranger_registrar"], serial="MASA-REF-1", nonce=nonce),
         {}, 403, "no right"),
        ("signer without id-kp-cmcRA",
         registrar_request(cms, world["not_a_registrar"], serial="MASA-REF-1", nonce=nonce),
         {}, 403, "cmcRA"),
    ]


def test_refusals_have_their_status_and_write_nothing(world, masa, tmp_path):
    masa["store"].set_device("MASA-REF-1", "test-owner")
    before = table_contents(masa["store"].engine, MASA_METADATA)
    for name, body, headers, status, words in _refusal_cases(world, tmp_path):
        answer = https(masa["url"] + REQUEST_VOUCHER, "POST", body, anchors=[masa["anchor"]],
                       headers={"Content-Type": VOUCHER_MEDIA_TYPE, "Accept": VOUCHER_MEDIA_TYPE, **headers})
        assert answer.status == status, f"{name}: {answer.status} {answer.body!r}"
        assert answer.header("content-type").startswith("text/plain"), name
        assert words.lower() in answer.body.decode().lower(), f"{name}: {answer.body!r}"
    assert table_contents(masa["store"].engine, MASA_METADATA) == before


def test_audit_log_is_not_for_registrars_of_other_owners(world, masa, tmp_path):
    masa["store"].set_device("MASA-REF-1", "test-owner")
    pledge = _pledge(world, tmp_path, "MASA-REF-1")
    cms, nonce = pledge.voucher_request()
    body = registrar_request(cms, world["stranger_registrar"], serial="MASA-REF-1", nonce=nonce)
    answer = _post(masa, body, REQUEST_AUDIT_LOG, accept="application/json")
    assert answer.status == 404
