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
from contextlib import contextmanager

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from clirunner import PLEDGEFORGE, openssl, run_cli
from registrar_standin import StandIn, https, wait_for_health
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


@contextmanager
def running_masa(world, softhsm, name: str, *, check_time: bool, masa_settings: str = ""):
    """`pledgeforge masa serve` with the world's keys, its own database and port."""
    tmp = world["tmp"]
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp / f"{name}.toml"
    config.write_text(
        f'role = "masa"\ncheck_time = {str(check_time).lower()}\n'
        f'[server]\nport = {port}\ntls_cert = "tls.crt"\ntls_key = "tls.key"\n'
        f'[database]\nurl = "sqlite:///{name}.sqlite"\n'
        f'[hsm]\nsofthsm2_conf = "{softhsm.conf}"\n'
        f'[masa]\nsigning_key = "{world["token"].with_object("masa")}"\nsigning_cert = "masa.crt"\n'
        f'signing_chain = ["mfg.crt"]\nmanufacturer_cas = ["{APPC / "vendor.crt"}", "mfg.crt"]\n'
        'cloud_registrars = [{ name = "test-cloud", anchor = "cloud.crt" }]\n' + masa_settings)
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
        wait_for_health(proc, url, tmp / "web.crt")
        store = MasaStore(f"sqlite:///{tmp / f'{name}.sqlite'}")
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


@pytest.fixture(scope="module")
def masa(world, softhsm):
    """Time checks off: RFC 8995 C.2.2's request was created (and its certificates expired) long ago."""
    with running_masa(world, softhsm, "masa", check_time=False) as server:
        yield server


def _post(masa, body: bytes, path: str = REQUEST_VOUCHER, content_type: str = VOUCHER_MEDIA_TYPE,
          accept: str = VOUCHER_MEDIA_TYPE):
    return https(masa["url"] + path, "POST", body, anchors=[masa["anchor"]],
                 headers={"Content-Type": content_type, "Accept": accept})


def _pledge(world, tmp_path, serial: str, issuer=None) -> StandIn:
    key, cert = issuer or (world["mfg_key"], world["mfg_cert"])
    return StandIn.create(tmp_path, serial, lambda pub, s: issue_idevid(key, cert, pub, s))


NOW = object()


def registrar_request(pledge_cms: bytes, party: Party, *, serial: str, nonce: bytes | None = None,
                      chain=(), created_on=NOW) -> bytes:
    """A registrar voucher-request around a pledge's, signed by `party` (created now by default)."""
    request = Voucher(is_request=True, serial_number=serial,
                      created_on=dt.datetime.now(dt.timezone.utc) if created_on is NOW else created_on,
                      nonce=nonce, prior_signed_voucher_request=pledge_cms)
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


# --------------------------------------------------------------------------- replays and floods

@pytest.fixture(scope="module")
def strict_masa(world, softhsm):
    """Time checks on (this world's certificates are current); each registrar may have three
    new vouchers, then one more every 5000 s."""
    settings = ("max_request_age_s = 600\nmax_request_future_s = 300\n"
                "[masa.rate_limits]\nregistrar_rate_per_s = 0.0002\nregistrar_burst = 3\n")
    with running_masa(world, softhsm, "strict-masa", check_time=True, masa_settings=settings) as server:
        yield server


def _device(masa, world, tmp_path, serial: str) -> StandIn:
    masa["store"].set_device(serial, "test-owner")
    return _pledge(world, tmp_path, serial)


def test_repeated_requests_are_answered_with_the_voucher_already_issued(world, strict_masa, tmp_path):
    registrar = world["owner"].issue("replaying registrar")
    pledge = _device(strict_masa, world, tmp_path, "REPLAY-1")
    cms, nonce = pledge.voucher_request()
    body = registrar_request(cms, registrar, serial="REPLAY-1", nonce=nonce)
    answers = [_post(strict_masa, body) for _ in range(5)]
    assert [a.status for a in answers] == [200] * 5, answers[-1].body
    assert len({a.body for a in answers}) == 1  # one signature, sent five times
    assert len(strict_masa["store"].audit_events("REPLAY-1")) == 1
    voucher = Voucher.from_json(_openssl_verify(tmp_path, answers[0].body, world["mfg_cert"]))
    assert voucher.nonce == nonce
    # The registrar asking again for the same pledge request (a new signature of its own,
    # a later created-on) repeats the request too.
    again = _post(strict_masa, registrar_request(cms, registrar, serial="REPLAY-1", nonce=nonce))
    assert again.status == 200 and again.body == answers[0].body
    assert len(strict_masa["store"].audit_events("REPLAY-1")) == 1
    # A new attempt of the pledge (a new nonce) and another requester each get a voucher of their own.
    cms2, nonce2 = pledge.voucher_request()
    fresh = _post(strict_masa, registrar_request(cms2, registrar, serial="REPLAY-1", nonce=nonce2))
    cloud = _post(strict_masa, registrar_request(cms, world["cloud"], serial="REPLAY-1", nonce=nonce))
    assert fresh.status == 200 and cloud.status == 200, (fresh.body, cloud.body)
    assert len({answers[0].body, fresh.body, cloud.body}) == 3
    assert len(strict_masa["store"].audit_events("REPLAY-1")) == 3


def test_identical_requests_in_flight_at_once_get_one_voucher(world, strict_masa, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    registrar = world["owner"].issue("hasty registrar")
    pledge = _device(strict_masa, world, tmp_path, "REPLAY-AT-ONCE")
    cms, nonce = pledge.voucher_request()
    body = registrar_request(cms, registrar, serial="REPLAY-AT-ONCE", nonce=nonce)
    with ThreadPoolExecutor(max_workers=5) as pool:
        answers = list(pool.map(lambda _: _post(strict_masa, body), range(5)))
    assert [a.status for a in answers] == [200] * 5
    assert len({a.body for a in answers}) == 1
    assert len(strict_masa["store"].audit_events("REPLAY-AT-ONCE")) == 1


def test_nonceless_requests_repeat_while_the_voucher_has_most_of_its_life(world, strict_masa, tmp_path):
    registrar = world["owner"].issue("offline registrar")
    pledge = _device(strict_masa, world, tmp_path, "REPLAY-NONCELESS")
    bodies = [registrar_request(pledge.voucher_request(nonceless=True)[0], registrar,
                                serial="REPLAY-NONCELESS") for _ in range(3)]
    answers = [_post(strict_masa, body) for body in bodies]
    assert [a.status for a in answers] == [200] * 3
    assert len({a.body for a in answers}) == 1
    voucher = Voucher.from_json(_openssl_verify(tmp_path, answers[0].body, world["mfg_cert"]))
    assert voucher.nonce is None and voucher.expires_on is not None
    assert len(strict_masa["store"].audit_events("REPLAY-NONCELESS")) == 1


def test_created_on_outside_the_accepted_window_is_refused(world, strict_masa, tmp_path):
    registrar = world["owner"].issue("registrar with a clock")
    pledge = _device(strict_masa, world, tmp_path, "STALE-1")
    now = dt.datetime.now(dt.timezone.utc)
    before = table_contents(strict_masa["store"].engine, MASA_METADATA)
    for created_on, words in ((now - dt.timedelta(days=30), "s ago"),
                              (now - dt.timedelta(hours=1), "s ago"),
                              (now + dt.timedelta(days=1), "in the future"),
                              (None, "no created-on")):
        cms, nonce = pledge.voucher_request()
        answer = _post(strict_masa, registrar_request(cms, registrar, serial="STALE-1", nonce=nonce,
                                                      created_on=created_on))
        assert answer.status == 400, f"{created_on}: {answer.status} {answer.body!r}"
        assert words in answer.body.decode(), answer.body
    assert table_contents(strict_masa["store"].engine, MASA_METADATA) == before
    cms, nonce = pledge.voucher_request()
    assert _post(strict_masa, registrar_request(cms, registrar, serial="STALE-1", nonce=nonce)).status == 200


def test_each_registrar_has_a_bounded_rate_of_new_vouchers(world, strict_masa, tmp_path):
    busy = world["owner"].issue("busy registrar")
    pledge = _device(strict_masa, world, tmp_path, "RATE-1")
    requests = []
    for _ in range(4):
        cms, nonce = pledge.voucher_request()
        requests.append(registrar_request(cms, busy, serial="RATE-1", nonce=nonce))
    answers = [_post(strict_masa, body) for body in requests]
    assert [a.status for a in answers] == [200, 200, 200, 429], answers[-1].body
    retry_after = answers[-1].header("retry-after")
    assert retry_after is not None and int(retry_after) >= 1
    assert b"too many requests" in answers[-1].body
    assert len(strict_masa["store"].audit_events("RATE-1")) == 3
    # What it already has costs nothing; another registrar has its own bucket.
    repeat = _post(strict_masa, requests[0])
    assert repeat.status == 200 and repeat.body == answers[0].body
    cms, nonce = pledge.voucher_request()
    other = world["owner"].issue("quiet registrar")
    assert _post(strict_masa, registrar_request(cms, other, serial="RATE-1", nonce=nonce)).status == 200


def test_each_source_address_has_a_bounded_request_rate(world, softhsm, tmp_path):
    settings = "[masa.rate_limits]\naddress_rate_per_s = 0.0002\naddress_burst = 4\n"
    with running_masa(world, softhsm, "flooded-masa", check_time=True, masa_settings=settings) as masa:
        masa["store"].set_device("FLOOD-1", "test-owner")
        pledge = _pledge(world, tmp_path, "FLOOD-1")
        cms, nonce = pledge.voucher_request()
        valid = registrar_request(cms, world["registrar"], serial="FLOOD-1", nonce=nonce)
        statuses = [_post(masa, b"garbage").status for _ in range(4)]
        assert statuses == [400] * 4  # refused, but each took a token
        answer = _post(masa, valid)
        assert answer.status == 429, answer.body
        assert int(answer.header("retry-after")) >= 1
        assert _post(masa, valid, REQUEST_AUDIT_LOG, accept="application/json").status == 429
        assert masa["store"].audit_events("FLOOD-1") == []
