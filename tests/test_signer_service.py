"""The signing service as its clients meet it: real SoftHSM2 keys, mutual TLS on loopback,
real client certificates, OpenSSL checking what it signs, and its audit log on disk.

One service (two worker processes per key) serves the module; each test
uses serial numbers and request ids of its own.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import http.client
import json
import os
import secrets
import signal
import sqlite3
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.oid import ExtendedKeyUsageOID

from clirunner import jq, openssl, run_cli
from pledgeforge.hsm import keystore
from pledgeforge.hsm.cms import sign_cms
from pledgeforge.hsm.errors import KeyStoreError
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner
from pledgeforge.hsm.voucher import Voucher, format_date
from pledgeforge.hsm.x509 import issue_crl_async, issue_from_csr, issue_idevid, make_csr, to_der, to_pem
from pledgeforge.keyserver import audit
from pledgeforge.keyserver.client import SigningRefused, new_request
from pledgeforge.keyserver.config import load_signer_config, write_signer_config
from pledgeforge.keyserver.policy import subject_text
from pledgeforge.keyserver.renewal import Renewal
from pledgeforge.keyserver.store import open_store

from signer_world import ID_KP_CMC_RA, HOST, SignerWorld, delegation, free_port

FLOOD_BURST = 5


@pytest.fixture(scope="module")
def world(softhsm, tmp_path_factory):
    world = SignerWorld(tmp_path_factory.mktemp("signer"), softhsm)
    for name in ("masa", "registrar", "est", "node", "shortlived", "lapsed", "nodelegation", "raw", "flood",
                 "steady"):
        world.identity(name)
    clients = {name: {"rate_per_s": 1000, "burst": 1000} for name in world.identities}
    # The flooder refills one token every 100 s: whatever it gets beyond its burst is no
    # matter of timing.
    clients["flood"] = {"rate_per_s": 0.01, "burst": FLOOD_BURST}
    clients["steady"] = {"rate_per_s": 1, "burst": 40}
    world.delegations = [
        delegation("masa-vouchers", "masa", "masa", ["voucher"], delegator="manufacturer PKI officer",
                   serials=["SV-*"], domains=["*.owner.example"]),
        delegation("registrar-requests", "registrar", "registrar", ["voucher-request"],
                   delegator="owner PKI officer", serials=["SV-*"]),
        delegation("est-ca", "est", "owner-ca", ["certificate", "crl"], delegator="owner PKI officer",
                   subjects=["*serialNumber=SV-*"], domains=["*.pledges.owner.example"],
                   certificate_days=30),
        delegation("registrar-node", "node", "owner-ca", ["delegation-certificate"],
                   delegator="owner PKI officer", subjects=["CN=registrar-*,O=signer tests"],
                   certificate_hours=2),
        # Certificates of a few seconds, so that a renewal comes round during a test.
        delegation("shortlived-node", "shortlived", "owner-ca", ["delegation-certificate"],
                   subjects=["CN=registrar-*,O=signer tests"], certificate_hours=0.001),
        delegation("lapsed", "lapsed", "masa", ["voucher"], serials=["SV-*"], hours_ago=48,
                   hours_left=-24),
        delegation("raw-digests", "raw", "masa", ["digest"], delegator="MASA operator"),
        delegation("flood", "flood", "masa", ["voucher"], serials=["SV-*"]),
        delegation("steady", "steady", "masa", ["voucher"], serials=["SV-*"]),
    ]
    world.clients = clients
    world.write_config(clients, world.delegations, workers=2)
    world.start()
    yield world
    world.stop()


def serial() -> str:
    return "SV-" + secrets.token_hex(4).upper()


def voucher_fields(world, serial_number: str, **changes) -> dict:
    values = dict(assertion="logged", serial_number=serial_number, nonce=secrets.token_bytes(16),
                  created_on=dt.datetime.now(dt.timezone.utc), pinned_domain_cert=to_der(world.owner_ca))
    voucher = Voucher(**{**values, **changes})
    return voucher.to_dict()


def post(world, who, key: str, operation: str, body: dict, batch: bool = False):
    path = f"/keys/{key}/{operation}" + ("/batch" if batch else "")
    return world.connection(key, world.identities[who]).request("POST", path, body)


def records(world, **filters) -> list[dict]:
    return audit.query(open_store(f"sqlite:///{world.database_path}"), **filters)


def record_of(world, request_id: str) -> list[dict]:
    return [r for r in records(world) if r["request_id"].split("#")[0] == request_id]


def openssl_verified_voucher(world, tmp_path: Path, der: bytes) -> bytes:
    (tmp_path / "voucher.der").write_bytes(der)
    out = openssl("cms", "-verify", "-inform", "DER", "-in", tmp_path / "voucher.der",
                  "-CAfile", world.manufacturer_ca_path, "-purpose", "any")
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout


# --------------------------------------------------------------------------- what it signs

def test_a_voucher_from_fields_is_built_signed_in_softhsm_and_verified_by_openssl(world, tmp_path):
    signer = keystore.open_signer(world.uri("masa", world.identities["masa"]))
    assert signer.operations == ("voucher",)
    number = serial()
    fields = voucher_fields(world, number, est_domain="https://est.owner.example:8443")
    der = sign_cms(json.dumps(fields).encode(), signer, signer.certificate)
    content = openssl_verified_voucher(world, tmp_path, der)
    voucher = Voucher.from_json(content, expect_request=False)
    assert voucher.serial_number == number and voucher.est_domain == "https://est.owner.example:8443"
    assert voucher.pinned_domain_cert == to_der(world.owner_ca)
    # The record names the client, the delegation and its delegator, and what was handed out.
    (record,) = records(world, serial=number)
    assert (record["client"], record["delegation"], record["delegator"], record["outcome"]) == \
        ("masa", "masa-vouchers", "manufacturer PKI officer", "signed")
    assert record["digest"] == audit.hashlib.sha256(der).hexdigest()


def test_every_answer_names_its_node_delegation_and_audit_record(world):
    number = serial()
    request = new_request(voucher=voucher_fields(world, number))
    answer = post(world, "masa", "masa", "voucher", request)
    assert answer.status == 200
    (record,) = record_of(world, request["id"])
    assert answer.trace == (f'node=signer-1; delegation=masa-vouchers; delegator="manufacturer PKI '
                            f'officer"; audit=signer-1/{record["seq"]}')
    assert answer.json()["audit"] == f"signer-1/{record['seq']}"


def test_a_registrar_voucher_request_around_a_pledge_request(world, tmp_path):
    pledge_key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    number = serial()
    idevid = issue_idevid(world.manufacturer_key, world.manufacturer_ca, pledge_key.public_key, number)
    nonce = secrets.token_bytes(16)
    pledge_request = sign_cms(Voucher(is_request=True, serial_number=number, nonce=nonce,
                                      created_on=dt.datetime.now(dt.timezone.utc)).to_json(),
                              pledge_key, idevid)
    registrar = keystore.open_signer(world.uri("registrar", world.identities["registrar"]))
    request = Voucher(is_request=True, serial_number=number, nonce=nonce,
                      created_on=dt.datetime.now(dt.timezone.utc), prior_signed_voucher_request=pledge_request)
    der = sign_cms(request.to_json(), registrar, registrar.certificate)
    (tmp_path / "rvr.der").write_bytes(der)
    out = openssl("cms", "-verify", "-inform", "DER", "-in", tmp_path / "rvr.der",
                  "-CAfile", world.owner_ca_path, "-purpose", "any")
    assert out.returncode == 0, out.stderr.decode()
    assert Voucher.from_json(out.stdout, expect_request=True).prior_signed_voucher_request == pledge_request
    # A serial number that is not the pledge's is refused, whatever the delegation allows.
    other = request.replace(serial_number=serial())
    with pytest.raises(SigningRefused) as info:
        sign_cms(other.to_json(), registrar, registrar.certificate)
    assert info.value.status == 400 and "is not the pledge's" in info.value.reason


def test_a_certificate_from_a_csr_within_subject_and_san(world, tmp_path):
    ca = keystore.open_signer(world.uri("owner-ca", world.identities["est"]))
    number = serial()
    device = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    name = f"{number.lower()}.pledges.owner.example"
    csr = make_csr(device, f"CN={number},serialNumber={number}", dns_names=[name, "extra.example"])
    cert = issue_from_csr(ca, world.owner_ca, csr, days=30,
                          extended_key_usage=[ExtendedKeyUsageOID.CLIENT_AUTH], dns_names=[name])
    (tmp_path / "ldevid.pem").write_bytes(to_pem(cert))
    out = openssl("verify", "-CAfile", world.owner_ca_path, tmp_path / "ldevid.pem")
    assert out.returncode == 0, out.stderr.decode()
    text = openssl("x509", "-in", tmp_path / "ldevid.pem", "-noout", "-text").stdout.decode()
    assert f"DNS:{name}" in text and "extra.example" not in text and "TLS Web Client Authentication" in text
    # A name outside the delegation's domains, a CSR whose signature is not its key's.
    outside = make_csr(device, f"CN={number},serialNumber={number}", dns_names=["evil.example"])
    with pytest.raises(SigningRefused) as info:
        ca.build_certificate(outside, days=30, extended_key_usage=[], dns_names=["evil.example"])
    assert info.value.status == 403 and "DNS name 'evil.example' is outside delegation est-ca" in info.value.reason
    forged = x509.load_der_x509_csr(to_der(csr)[:-8] + bytes(8))
    answer = post(world, "est", "owner-ca", "certificate",
                  new_request(csr=base64.b64encode(to_der(forged)).decode()))
    assert answer.status == 400


def test_a_crl_is_built_from_the_entries_and_dated_by_the_service(world, tmp_path):
    ca = keystore.open_signer(world.uri("owner-ca", world.identities["est"]))
    when = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    revoked = [(0x1234ABCD, when, x509.ReasonFlags.key_compromise), (0x42, when, None)]
    crl = asyncio.run(issue_crl_async(ca, world.owner_ca, revoked, number=7,
                                      this_update=when, next_update=when + dt.timedelta(days=2)))
    (tmp_path / "crl.der").write_bytes(to_der(crl))
    checked = openssl("crl", "-inform", "DER", "-in", tmp_path / "crl.der", "-noout", "-verify", "-text",
                      "-CAfile", world.owner_ca_path)
    text = checked.stdout.decode()
    assert b"verify OK" in checked.stdout + checked.stderr, checked.stderr
    assert "1234ABCD" in text and "Key Compromise" in text and "X509v3 CRL Number: \n                7" in text
    # The service's clock, not the client's, dates it; the lifetime asked for is kept.
    assert abs(crl.last_update_utc - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=5)
    assert crl.next_update_utc - crl.last_update_utc == dt.timedelta(days=2)
    (record,) = records(world, serial="CRL 7")
    assert (record["operation"], record["delegation"], record["outcome"]) == ("crl", "est-ca", "signed")
    assert record["digest"] == audit.hashlib.sha256(to_der(crl)).hexdigest()


def test_a_short_term_delegation_certificate(world, tmp_path):
    node = keystore.open_signer(world.uri("owner-ca", world.identities["node"]))
    key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    cert, chain = node.delegation_certificate(make_csr(key, "CN=registrar-7,O=signer tests"))
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(hours=1, minutes=55) < lifetime <= dt.timedelta(hours=2)
    assert ID_KP_CMC_RA in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert chain == [world.owner_ca]
    (tmp_path / "ra.pem").write_bytes(to_pem(cert))
    out = openssl("verify", "-CAfile", world.owner_ca_path, "-purpose", "any", tmp_path / "ra.pem")
    assert out.returncode == 0, out.stderr.decode()
    with pytest.raises(SigningRefused) as info:
        node.delegation_certificate(make_csr(key, "CN=masa,O=signer tests"))
    assert info.value.status == 403 and "outside delegation registrar-node" in info.value.reason


def test_the_node_renews_its_certificate_before_it_expires(world, token, tmp_path):
    node_key = keystore.generate_key(token.uri("registrar-node"), "ec-p256")
    renewal = Renewal(world.uri("owner-ca", world.identities["shortlived"]), token.uri("registrar-node"),
                      "CN=registrar-9,O=signer tests", tmp_path / "ra.pem", tmp_path / "chain.pem")
    stop, renewed, twice = threading.Event(), [], threading.Event()

    def on_renewed(cert):
        renewed.append(cert)
        if len(renewed) == 2:
            twice.set()

    runner = threading.Thread(target=renewal.run, args=(stop, on_renewed))
    runner.start()
    try:
        assert twice.wait(60), "the certificate was not renewed"
    finally:
        stop.set()
        runner.join(30)
    first, second = renewed[:2]
    assert first.public_key() == second.public_key() == node_key.public_key
    assert second.serial_number != first.serial_number
    assert second.not_valid_after_utc > first.not_valid_after_utc
    assert renewal.current() in renewed and (tmp_path / "chain.pem").read_bytes() == to_pem(world.owner_ca)


def test_a_raw_digest_is_signed_where_a_delegation_grants_it(world):
    raw = keystore.open_signer(world.uri("masa", world.identities["raw"]))
    dgst = secrets.token_bytes(32)
    signature = raw.sign_digest(dgst)
    raw.public_key.verify(signature, dgst, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def test_the_signer_commands_exit_by_the_kind_of_failure(world, token, tmp_path):
    """A refused request 1, a configuration that does not read 2, a token or service that
    cannot be used 3 (pledgeforge/cli.py)."""
    keystore.generate_key(token.uri("exit-node"), "ec-p256")

    def renew(service, subject):
        return run_cli("signer", "renew", "--service", service, "--key", token.uri_text("exit-node"),
                       "--subject", subject, "--cert", tmp_path / "node.pem", env=token.hsm.env())

    service = world.uri("owner-ca", world.identities["node"])
    refused = renew(service, "CN=masa,O=signer tests")
    assert refused.returncode == 1 and b"refused (403)" in refused.stderr, refused.stderr
    unreachable = renew(replace(service, port=free_port()), "CN=registrar-8,O=signer tests")
    assert unreachable.returncode == 3 and b"cannot be reached" in unreachable.stderr, unreachable.stderr
    assert not (tmp_path / "node.pem").exists()

    config = load_signer_config(world.config_path)
    masa = config.keys["masa"]
    absent = replace(config, path=tmp_path / "absent-token.toml",
                     server=replace(config.server, port=free_port()),
                     keys={**config.keys, "masa": replace(masa, uri=replace(masa.uri, token="absent"))})
    write_signer_config(absent)
    served = run_cli("signer", "serve", "--config", absent.path)
    assert served.returncode == 3 and b"no PKCS#11 token labelled 'absent'" in served.stderr, served.stderr
    typo = tmp_path / "typo.toml"
    typo.write_text(absent.path.read_text().replace("[requests]", "[request]"))
    served = run_cli("signer", "serve", "--config", typo)
    assert served.returncode == 2 and b"request is not a known setting; did you mean requests?" in served.stderr


# --------------------------------------------------------------------------- refusals

def _no_certificate_request(world) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(world.web_ca_path))
    conn = http.client.HTTPSConnection(HOST, world.port, context=context, timeout=30)
    try:
        conn.request("POST", "/keys/masa/voucher", body=b"{}", headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_a_client_without_a_certificate_gets_401_and_a_record(world):
    before = len(records(world, outcome="refused"))
    status, reason = _no_certificate_request(world)
    assert status == 401 and "present a TLS client certificate" in reason
    refused = records(world, outcome="refused")
    assert len(refused) == before + 1
    assert refused[-1]["status"] == 401 and refused[-1]["identity"] == "" and refused[-1]["peer"].startswith(HOST)


def test_a_certificate_from_an_unknown_ca_ends_the_handshake_and_is_recorded(world):
    stranger = world.identity("masa-impostor", subject=world.identities["masa"].cert.subject.rfc4514_string(),
                              stranger=True)
    conn = world.connection("masa", stranger)
    with pytest.raises(KeyStoreError) as info:
        conn.call("GET", "/keys/masa")
    assert "UNKNOWN_CA" in str(info.value).upper()
    # The service writes its records in the order it meets them: once a later request is
    # answered (after its own record), the refusal's record is on disk.
    world.connection("masa", world.identities["masa"]).call("GET", "/keys/masa")
    refused = [r for r in records(world, outcome="refused") if r["operation"] == "connect"]
    assert refused and refused[-1]["status"] == 495
    assert "unknown_ca" in refused[-1]["reason"] and "unable to get local issuer" in refused[-1]["reason"]


@pytest.mark.parametrize("who,key,operation,make,status,words", [
    ("nodelegation", "masa", "voucher", lambda w: {"voucher": voucher_fields(w, serial())}, 403,
     "client nodelegation has no delegation for key masa"),
    ("lapsed", "masa", "voucher", lambda w: {"voucher": voucher_fields(w, serial())}, 403,
     "delegation lapsed expired on"),
    ("masa", "masa", "voucher", lambda w: {"voucher": voucher_fields(w, "XX-" + secrets.token_hex(3))}, 403,
     "is outside delegation masa-vouchers (serials SV-*)"),
    ("masa", "masa", "digest", lambda w: {"digest": base64.b64encode(bytes(32)).decode()}, 403,
     "no delegation lets client masa sign raw digests with key masa"),
    ("masa", "masa", "voucher", lambda w: {"voucher": {"ietf-voucher:voucher": {
        "serial-number": serial(), "assertion": "trusted", "created-on": format_date(
            dt.datetime.now(dt.timezone.utc))}}}, 400, "assertion 'trusted' is not one of"),
    ("masa", "masa", "voucher", lambda w: {"voucher": voucher_fields(w, serial(), nonce=None)}, 400,
     "a voucher needs a nonce, or (nonceless) an expires-on"),
    ("masa", "masa", "voucher", lambda w: {"voucher": voucher_fields(
        w, serial(), created_on=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3))}, 400,
     "created-on"),
    ("masa", "masa", "crl", lambda w: {"revoked": [], "number": 1, "validity_s": 60}, 403,
     "no delegation lets client masa issue CRLs with key masa"),
    ("est", "owner-ca", "crl", lambda w: {"revoked": [{"serial": "1f", "revoked_at": "2030-01-01T00:00:00Z",
                                                        "reason": "boredom"}], "number": 1, "validity_s": 60},
     400, "revoked[0].reason 'boredom' is no RFC 5280 reason"),
])
def test_refusals_have_a_status_a_reason_and_a_record(world, who, key, operation, make, status, words):
    request = new_request(**make(world))
    answer = post(world, who, key, operation, request)
    assert answer.status == status, answer.body
    assert words in answer.body.decode()
    (record,) = record_of(world, request["id"])
    assert (record["status"], record["outcome"], record["client"]) == (status, "refused", who)
    assert words in record["reason"]
    assert answer.trace.startswith("node=signer-1;")


def test_a_certificate_of_no_configured_client_is_refused(world):
    unknown = world.identity("wanderer")
    answer = world.connection("masa", unknown).request("POST", "/keys/masa/voucher",
                                                       new_request(voucher=voucher_fields(world, serial())))
    assert answer.status == 403 and "is no configured client" in answer.body.decode()
    assert records(world)[-1]["identity"] == "CN=wanderer,O=signer tests"


def test_a_replayed_request_with_a_stale_timestamp_is_refused(world):
    request = new_request(voucher=voucher_fields(world, serial()))
    first = post(world, "masa", "masa", "voucher", request)
    assert first.status == 200
    stale = {**request, "timestamp": format_date(dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=6))}
    replayed = post(world, "masa", "masa", "voucher", stale)
    assert replayed.status == 403 and "s old; this service accepts requests up to 300 s old" in replayed.body.decode()
    outcomes = [r["outcome"] for r in record_of(world, request["id"])]
    assert outcomes == ["signed", "refused"]


# --------------------------------------------------------------------------- replay, floods

def test_the_same_request_id_twice_signs_once(world):
    request = new_request(voucher=voucher_fields(world, serial()))
    first = post(world, "masa", "masa", "voucher", request)
    again = post(world, "masa", "masa", "voucher", request)
    assert first.status == again.status == 200
    assert again.body == first.body and again.trace == first.trace
    # A retry may carry a fresh timestamp: it is the same request.
    later = {**request, "timestamp": format_date(dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=5))}
    retried = post(world, "masa", "masa", "voucher", later)
    assert retried.status == 200 and retried.body == first.body
    assert [r["outcome"] for r in record_of(world, request["id"])] == ["signed", "repeated", "repeated"]
    # The same id for another request is an error, not the first answer.
    changed = {**request, "voucher": voucher_fields(world, serial())}
    answer = post(world, "masa", "masa", "voucher", changed)
    assert answer.status == 409 and "was used for another request" in answer.body.decode()


def test_the_same_request_id_at_once_signs_once(world):
    request = new_request(voucher=voucher_fields(world, serial()))
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post(world, "masa", "masa", "voucher", request), range(4)))
    assert {a.status for a in answers} == {200} and len({a.body for a in answers}) == 1
    outcomes = sorted(r["outcome"] for r in record_of(world, request["id"]))
    assert outcomes == ["repeated"] * 3 + ["signed"]


def test_a_flooding_client_gets_429_while_another_keeps_its_throughput(world):
    flood_total, steady_total = 80, 30

    def flood(_):
        return post(world, "flood", "masa", "voucher", new_request(voucher=voucher_fields(world, serial())))

    def steady(_):
        return post(world, "steady", "masa", "voucher", new_request(voucher=voucher_fields(world, serial())))

    with ThreadPoolExecutor(12) as pool:
        flooded = pool.map(flood, range(flood_total))
        kept = pool.map(steady, range(steady_total))
        flooded, kept = list(flooded), list(kept)
    flood_ok = [a for a in flooded if a.status == 200]
    flood_429 = [a for a in flooded if a.status == 429]
    # The flooder gets its burst (and at most one refilled token), nothing more.
    assert len(flood_ok) <= FLOOD_BURST + 1 and len(flood_429) == flood_total - len(flood_ok)
    assert all(int(a.retry_after) >= 1 for a in flood_429)
    assert "too many requests from client flood" in flood_429[0].body.decode()
    # The other client got every voucher it asked for.
    assert [a.status for a in kept] == [200] * steady_total
    assert len(records(world, client="flood", outcome="refused")) >= len(flood_429)


# --------------------------------------------------------------------------- batches

def test_a_batch_answers_each_item_and_signs_the_good_ones(world, tmp_path):
    numbers = [serial() for _ in range(5)]
    items = [{"voucher": voucher_fields(world, n)} for n in numbers]
    items[1] = {"voucher": voucher_fields(world, "XX-OUTSIDE")}
    items[3] = {"voucher": {"ietf-voucher:voucher": {"serial-number": numbers[3]}}}
    request = new_request(items=items)
    answer = post(world, "masa", "masa", "voucher", request, batch=True)
    assert answer.status == 200
    results = answer.json()["results"]
    assert [r["status"] for r in results] == [200, 403, 200, 400, 200]
    assert "outside delegation masa-vouchers" in results[1]["reason"]
    for number, result in zip(numbers, results):
        if result["status"] == 200:
            content = openssl_verified_voucher(world, tmp_path, base64.b64decode(result["cms"]))
            assert Voucher.from_json(content).serial_number == number
    rows = record_of(world, request["id"])
    assert [r["request_id"] for r in rows] == [f"{request['id']}#{i}" for i in range(5)]
    assert [r["outcome"] for r in rows] == ["signed", "refused", "signed", "refused", "signed"]
    assert f"audit=signer-1/{rows[0]['seq']}-{rows[-1]['seq']}" in answer.trace


def test_a_batch_of_csrs_answers_each_certificate_or_refusal(world, tmp_path):
    numbers = [serial() for _ in range(3)]
    devices = [SoftwareSigner.generate(KeyAlgorithm.EC_P256) for _ in numbers]
    csrs = [make_csr(device, f"CN={number},serialNumber={number}",
                     dns_names=[f"{number.lower()}.pledges.owner.example"])
            for device, number in zip(devices, numbers)]
    csrs[1] = make_csr(devices[1], f"CN={numbers[1]},serialNumber={numbers[1]}", dns_names=["evil.example"])
    items = [{"csr": to_pem(csr).decode()} for csr in csrs]
    items.append({"csr": "not a certificate request"})
    request = new_request(items=items)
    answer = post(world, "est", "owner-ca", "certificate", request, batch=True)
    assert answer.status == 200, answer.body
    results = answer.json()["results"]
    assert [r["status"] for r in results] == [200, 403, 200, 400]
    assert "DNS name 'evil.example' is outside delegation est-ca" in results[1]["reason"]
    assert "'csr' is neither PEM nor base64" in results[3]["reason"]
    for i in (0, 2):
        path = tmp_path / f"ldevid-{i}.pem"
        path.write_text(results[i]["certificate"])
        out = openssl("verify", "-CAfile", world.owner_ca_path, path)
        assert out.returncode == 0, out.stderr.decode()
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        assert cert.public_key() == devices[i].public_key
    rows = record_of(world, request["id"])
    assert [(r["operation"], r["outcome"]) for r in rows] == \
        [("certificate batch", o) for o in ("signed", "refused", "signed", "refused")]
    assert [r["subject"] for r in rows[:3]] == [subject_text(csr.subject) for csr in csrs]


def test_a_batch_larger_than_allowed_is_refused_whole(world):
    items = [{"voucher": voucher_fields(world, serial())}] * 1001
    answer = post(world, "masa", "masa", "voucher", new_request(items=items), batch=True)
    assert answer.status == 413 and "at most 1000 items" in answer.body.decode()


# --------------------------------------------------------------------------- operations

def _worker_pids(world) -> list[int]:
    """The service's living child processes: its signing workers."""
    children = []
    for task in Path(f"/proc/{world.proc.pid}/task").iterdir():
        children += [int(p) for p in (task / "children").read_text().split()]
    return [pid for pid in children
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]


def test_a_worker_that_dies_is_replaced_without_losing_the_request(world, tmp_path):
    workers = _worker_pids(world)
    assert len(workers) == 6   # two per key, three keys
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    for _ in range(3):
        answer = post(world, "masa", "masa", "voucher", new_request(voucher=voucher_fields(world, serial())))
        assert answer.status == 200, answer.body
        openssl_verified_voucher(world, tmp_path, base64.b64decode(answer.json()["cms"]))
    # The masa key's two workers were replaced; the others are replaced when next used.
    living = set(_worker_pids(world))
    assert len(living) == 2 and not living & set(workers)


def test_the_policy_is_reloaded_on_a_file_change_and_on_sighup(world):
    def ask(prefix: str) -> int:
        fields = voucher_fields(world, prefix + secrets.token_hex(3))
        # A new connection each time: its handshake takes the service through several
        # turns of its event loop, so a signal sent before is handled by then.
        return world.connection("masa", world.identities["masa"]).request(
            "POST", "/keys/masa/voucher", new_request(voucher=fields)).status

    assert ask("RL-") == 403
    wider = [dict(d) for d in world.delegations]
    wider[0]["serials"] = ["SV-*", "RL-*"]
    try:
        world.write_config(world.clients, wider, workers=2)   # a change of the file
        assert ask("RL-") == 200
        # An edit the file's size, inode and time do not show is taken on SIGHUP.
        path = world.config_path
        before = path.stat()
        text = path.read_text()
        with open(path, "r+") as fh:
            fh.write(text.replace('serials = ["SV-*", "RL-*"]', 'serials = ["SV-*", "QQ-*"]', 1))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert ask("QQ-") == 403
        world.reload()
        assert ask("QQ-") == 200 and ask("RL-") == 403
        # A broken file is not taken: the policy in force stays.
        path.write_text(text + "\n[[delegations]]\nname = 3\n")
        world.reload()
        assert ask("QQ-") == 200
        assert "policy not reloaded" in world.log()
    finally:
        world.write_config(world.clients, world.delegations, workers=2)
    assert ask("RL-") == 403


# --------------------------------------------------------------------------- the audit log

def _copy(world, directory: Path) -> Path:
    """The live database, copied with SQLite's backup API (the service keeps writing)."""
    target = directory / "audit-copy.sqlite"
    with sqlite3.connect(world.database_path) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return target


def _verify(path: Path, *extra) -> tuple[int, dict]:
    out = run_cli("signer", "audit", "verify", "--database", f"sqlite:///{path}", "--json", *extra)
    [report] = jq(out.stdout)
    return out.returncode, report


def test_audit_verify_names_the_first_edited_deleted_or_moved_record(world, tmp_path):
    for _ in range(3):
        assert post(world, "masa", "masa", "voucher",
                    new_request(voucher=voucher_fields(world, serial()))).status == 200
    pristine = _copy(world, tmp_path)
    code, report = _verify(pristine)
    assert code == 0 and report["ok"] and report["records"] >= 6
    head = report["heads"]["signer-1"]

    def tampered(name: str, *statements) -> Path:
        path = tmp_path / f"{name}.sqlite"
        path.write_bytes(pristine.read_bytes())
        with sqlite3.connect(path) as db:
            for statement in statements:
                db.execute(statement)
        return path

    edited = tampered("edited", "UPDATE signer_audit SET subject = 'SV-FORGED' WHERE seq = 4")
    deleted = tampered("deleted", "DELETE FROM signer_audit WHERE seq = 4")
    moved = tampered("moved",   # records 4 and 5 swap places in the order of writing
                     "UPDATE signer_audit SET id = -id WHERE seq IN (4, 5)",
                     "UPDATE signer_audit SET id = (SELECT -id FROM signer_audit WHERE seq = 4) WHERE seq = 5",
                     "UPDATE signer_audit SET id = -id + 1 WHERE seq = 4")
    for path, seq, words in ((edited, 4, "do not match its hash (edited)"),
                             (deleted, 5, "record signer-1/4 is missing (deleted)"),
                             (moved, 5, "out of order (moved): record signer-1/4 was written after it")):
        code, report = _verify(path)
        assert code == 1 and not report["ok"], path
        assert report["first_bad"]["seq"] == seq and words in report["problem"], report
    # The newest records deleted: consistent, but not the head noted earlier.
    truncated = tampered("truncated", "DELETE FROM signer_audit WHERE seq >= 5")
    assert _verify(truncated)[0] == 0
    code, report = _verify(truncated, "--expect-head", head)
    assert code == 1 and "its newest records were deleted" in report["problem"]
    human = run_cli("signer", "audit", "verify", "--database", f"sqlite:///{edited}")
    assert human.returncode == 1
    assert b"audit log broken at record signer-1/4" in human.stderr


def test_audit_show_filters_by_client_serial_and_time(world):
    number = serial()
    before = format_date(dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1))
    assert post(world, "masa", "masa", "voucher", new_request(voucher=voucher_fields(world, number))).status == 200
    config = ["--config", str(world.config_path)]
    out = run_cli("signer", "audit", "show", *config, "--serial", number, "--json")
    assert out.returncode == 0, out.stderr
    (row,) = jq(out.stdout)
    assert row["subject"] == number and row["client"] == "masa"
    out = run_cli("signer", "audit", "show", *config, "--client", "flood", "--since", before)
    assert out.returncode == 0 and out.stdout == b""
    out = run_cli("signer", "audit", "show", *config, "--client", "masa", "--since", before)
    assert f"masa voucher masa {number} -> 200 signed under masa-vouchers".encode() in out.stdout
    out = run_cli("signer", "audit", "show", *config, "--until", "2000-01-01")
    assert out.returncode == 0 and out.stdout == b""
