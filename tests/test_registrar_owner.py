"""The lab's owner registrar over real HTTPS: voucher round trip through the MASA, EST
enrollment checked with OpenSSL, who may enroll, refusals with nothing written, the
bounded retry towards an unreachable MASA, and a MASA's request to wait passed on."""

from __future__ import annotations

import base64
import dataclasses
import socket
import sqlite3
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from clirunner import openssl
from registrar_standin import StandIn, https, post_voucher_request, tls_refusal, wait_for_health
from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.keystore import open_signer
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner
from pledgeforge.hsm.voucher import Voucher
from pledgeforge.hsm.wellknown import REQUEST_VOUCHER
from pledgeforge.hsm.x509 import issue_idevid, make_ca, make_csr, to_der, to_pem
from pledgeforge.registrar.db import MASA_METADATA, OWNER_METADATA, table_contents
from pledgeforge.hsm.est_wire import CsrAttributes, parse_certs_only
from pledgeforge.lab.configs import server_configs
from pledgeforge.lab.processes import free_port, stop_process
from pledgeforge.registrar.config import MasaRateLimits, write_config

EST = "/.well-known/est"
BRSKI = "/.well-known/brski"


@pytest.fixture
def pledge(lab, tmp_path, request):
    serial = "OW-" + request.node.name.split("[")[0][-20:].replace("_", "-").upper()
    return StandIn.create(tmp_path, serial, lab.issue_idevid)


def owner_cert(lab) -> x509.Certificate:
    return load_certificate_file(str(lab.pki("owner-ca")))[0]


def get_voucher(lab, pledge: StandIn):
    """Redirect flow from the pledge's side: cloud 307, then provisional TLS to the owner registrar."""
    first, _ = pledge.voucher_request()
    redirect = post_voucher_request(lab.url("cloud") + REQUEST_VOUCHER, first, identity=pledge,
                                    anchors=[lab.pki("web-ca")])
    assert redirect.status == 307, redirect.body
    # Provisional TLS: no anchors; the pledge pins the certificate it was shown.
    hello = https(lab.url("owner") + EST + "/cacerts", identity=pledge)
    cms, nonce = pledge.voucher_request(proximity=hello.server_cert)
    answer = post_voucher_request(redirect.header("location"), cms, identity=pledge)
    return answer, nonce, hello.server_cert


def enroll(lab, pledge: StandIn, csr: x509.CertificateSigningRequest, path: str = "simpleenroll",
           client_files=None):
    return https(lab.url("owner") + f"{EST}/{path}", "POST", base64.encodebytes(to_der(csr)),
                 identity=None if client_files else pledge, client_files=client_files,
                 anchors=[lab.pki("owner-ca")], headers={"Content-Type": "application/pkcs10"})


def asked_csr(lab, pledge: StandIn, key: SoftwareSigner | None = None):
    """A CSR with what /csrattrs asks for (as a pledge would build it)."""
    answer = https(lab.url("owner") + EST + "/csrattrs", identity=pledge, anchors=[lab.pki("owner-ca")])
    assert answer.status == 200 and answer.header("content-type") == "application/csrattrs"
    attrs = CsrAttributes.decode(answer.body)
    assert attrs.subject_oids[:2] == ["2.5.4.3", "2.5.4.5"]
    key = key or SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    return key, make_csr(key, f"CN=ldevid {pledge.serial},serialNumber={pledge.serial}",
                         dns_names=[n.value for n in attrs.subject_alt_names]), answer.body


def test_round_trip_voucher_then_est_enrollment(lab, pledge, tmp_path):
    lab.register_pledge(pledge.serial, "redirect")
    answer, nonce, server_cert = get_voucher(lab, pledge)
    assert answer.status == 200, answer.body
    (tmp_path / "voucher.der").write_bytes(answer.body)
    out = openssl("cms", "-verify", "-inform", "DER", "-in", tmp_path / "voucher.der",
                  "-CAfile", lab.pki("manufacturer-ca"), "-purpose", "any")
    assert out.returncode == 0, out.stderr.decode()
    voucher = Voucher.from_json(out.stdout, expect_request=False)
    assert voucher.serial_number == pledge.serial and voucher.nonce == nonce
    assert voucher.assertion == "logged" and voucher.est_domain is None
    assert voucher.pinned_domain_cert == to_der(owner_cert(lab))
    # The pin validates the registrar the pledge talked to provisionally.
    (tmp_path / "server.pem").write_bytes(to_pem(server_cert))
    assert openssl("verify", "-CAfile", lab.pki("owner-ca"), tmp_path / "server.pem").returncode == 0
    masa_events = lab.masa_store().audit_events(pledge.serial)
    assert len(masa_events) == 1 and masa_events[0]["requester"].startswith("registrar CN=pledgeforge lab owner registrar")
    status = https(lab.url("owner") + BRSKI + "/voucher_status", "POST", b'{"version":"1","status":true}',
                   identity=pledge, anchors=[lab.pki("owner-ca")], headers={"Content-Type": "application/json"})
    assert status.status == 200

    cacerts = https(lab.url("owner") + EST + "/cacerts", anchors=[lab.pki("owner-ca")])
    assert cacerts.status == 200 and cacerts.header("content-type") == "application/pkcs7-mime"
    (tmp_path / "cacerts.der").write_bytes(base64.b64decode(cacerts.body))
    printed = openssl("pkcs7", "-inform", "DER", "-in", tmp_path / "cacerts.der", "-print_certs")
    assert printed.returncode == 0 and b"pledgeforge lab owner CA" in printed.stdout

    key, csr, attrs_body = asked_csr(lab, pledge)
    (tmp_path / "csrattrs.der").write_bytes(base64.b64decode(attrs_body))
    parsed = openssl("asn1parse", "-inform", "DER", "-in", tmp_path / "csrattrs.der")
    assert parsed.returncode == 0
    for name in (b"serialNumber", b"commonName", b"Extension Request", b"ecdsa-with-SHA256"):
        assert name in parsed.stdout
    answer = enroll(lab, pledge, csr)
    assert answer.status == 200, answer.body
    assert answer.header("content-type").startswith("application/pkcs7-mime")
    (tmp_path / "issued.der").write_bytes(base64.b64decode(answer.body))
    printed = openssl("pkcs7", "-inform", "DER", "-in", tmp_path / "issued.der", "-print_certs")
    assert printed.returncode == 0
    (tmp_path / "ldevid.pem").write_bytes(printed.stdout)
    verified = openssl("verify", "-CAfile", lab.pki("owner-ca"), tmp_path / "ldevid.pem")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    ldevid = parse_certs_only(answer.body)[0]
    assert ldevid.public_key() == key.public_key
    assert ldevid.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == pledge.serial
    san = ldevid.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [f"{pledge.serial.lower()}.pledges.lab.pledgeforge.test"]

    # The new credentials: enrollstatus over them, then a renewal.
    ldevid_files = (tmp_path / "ldevid.crt", tmp_path / "ldevid.key")
    ldevid_files[0].write_bytes(to_pem(ldevid))
    ldevid_files[1].write_bytes(key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    report = https(lab.url("owner") + BRSKI + "/enrollstatus", "POST", b'{"version":1,"status":true}',
                   client_files=ldevid_files, anchors=[lab.pki("owner-ca")],
                   headers={"Content-Type": "application/json"})
    assert report.status == 200
    rows = table_contents(lab.owner_store().engine, OWNER_METADATA)["owner_status_reports"]
    mine = [r for r in rows if r[1] == pledge.serial]
    assert [r[2] for r in mine] == ["voucher_status", "enrollstatus"]
    assert mine[1][6] == to_pem(ldevid).decode()  # client_certificate: what the report came over
    renewal_key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    renewal = make_csr(renewal_key, ldevid.subject, dns_names=san.get_values_for_type(x509.DNSName))
    renewed = enroll(lab, pledge, renewal, "simplereenroll", client_files=ldevid_files)
    assert renewed.status == 200, renewed.body
    new_cert = parse_certs_only(renewed.body)[0]
    assert new_cert.subject == ldevid.subject and new_cert.public_key() == renewal_key.public_key
    issued = lab.owner_store().ldevids(pledge.serial)
    assert [(i.kind, i.certificate_serial) for i in issued] == [
        ("enroll", f"{ldevid.serial_number:x}"), ("reenroll", f"{new_cert.serial_number:x}")]
    assert issued[0].requester.startswith("idevid ") and issued[1].requester == (
        f"ldevid {ldevid.subject.rfc4514_string()} (certificate {ldevid.serial_number:x})")
    assert [i.state for i in issued] == ["confirmed", "unconfirmed"]


def test_est_domain_pledge_enrolls_without_a_voucher_from_this_registrar(lab, pledge):
    lab.register_pledge(pledge.serial, "est-domain")
    _, csr, _ = asked_csr(lab, pledge)
    answer = enroll(lab, pledge, csr)
    assert answer.status == 200, answer.body


def test_who_may_not_enroll(lab, pledge, tmp_path):
    # Redirect flow, but no voucher was obtained here yet.
    lab.register_pledge(pledge.serial, "redirect")
    _, csr, _ = asked_csr(lab, pledge)
    assert enroll(lab, pledge, csr).status == 403
    # Not on the pledge list at all: neither a voucher nor a certificate.
    stranger = StandIn.create(tmp_path / "s", pledge.serial + "-X", lab.issue_idevid)
    cms, _ = stranger.voucher_request()
    answer = post_voucher_request(lab.url("owner") + REQUEST_VOUCHER, cms, identity=stranger)
    assert answer.status == 404
    _, csr, _ = asked_csr(lab, stranger)
    assert enroll(lab, stranger, csr).status == 403
    # An IDevID cannot renew; an LDevID must enroll through /simplereenroll only.
    assert enroll(lab, pledge, csr, "simplereenroll").status == 403


def _state(lab):
    return (table_contents(lab.owner_store().engine, OWNER_METADATA),
            table_contents(lab.masa_store().engine, MASA_METADATA))


def test_refusals_write_nothing(lab, pledge, tmp_path):
    lab.register_pledge(pledge.serial, "est-domain")
    url = lab.url("owner") + REQUEST_VOUCHER
    foreign_key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    foreign_ca = make_ca(foreign_key, "CN=unknown manufacturer")
    alien = StandIn.create(tmp_path / "alien", pledge.serial,
                           lambda pub, s: issue_idevid(foreign_key, foreign_ca, pub, s))
    good, _ = pledge.voucher_request()
    _, csr, _ = asked_csr(lab, pledge)
    forged = bytearray(to_der(csr))
    forged[-5] ^= 0x01  # the CSR's signature: proof of possession fails
    no_serial = make_csr(SoftwareSigner.generate(KeyAlgorithm.EC_P256), "CN=no serial here")
    before = _state(lab)

    answer = post_voucher_request(url, good)  # no client certificate at all
    assert answer.status == 401
    tls_refusal(lambda: post_voucher_request(url, good, identity=alien))
    cases = [
        ("JSON serial differs from the IDevID", pledge.voucher_request(serial="NOT-" + pledge.serial)[0], 400),
        ("malformed CMS", b"\x30\x80\x00\x00", 400),
        ("not CMS", b"plain text", 400),
    ]
    for name, body, status in cases:
        answer = post_voucher_request(url, body, identity=pledge)
        assert answer.status == status, f"{name}: {answer.status} {answer.body!r}"
    est = lab.url("owner") + EST + "/simpleenroll"
    headers = {"Content-Type": "application/pkcs10"}
    for name, body, kwargs, status in [
        ("no client certificate", base64.encodebytes(to_der(csr)), {}, 401),
        ("proof of possession fails", base64.encodebytes(bytes(forged)), {"identity": pledge}, 400),
        ("CSR lacks what csrattrs asked", base64.encodebytes(to_der(no_serial)), {"identity": pledge}, 400),
        ("not base64", b"%%%", {"identity": pledge}, 400),
    ]:
        answer = https(est, "POST", body, anchors=[lab.pki("owner-ca")], headers=headers, **kwargs)
        assert answer.status == status, f"{name}: {answer.status} {answer.body!r}"
    answer = https(est, "POST", base64.encodebytes(to_der(csr)), identity=pledge,
                   anchors=[lab.pki("owner-ca")], headers={"Content-Type": "text/plain"})
    assert answer.status == 415
    assert _state(lab) == before


def test_unreachable_masa_is_retried_a_bounded_number_of_times(lab, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens once the socket is closed
    ca = open_signer(lab.key_uri("manufacturer", "manufacturer-ca"))
    ca_cert = load_certificate_file(str(lab.pki("manufacturer-ca")))[0]
    pledge = StandIn.create(tmp_path, "OW-NO-MASA", lambda pub, s: issue_idevid(
        ca, ca_cert, pub, s, masa_url=f"127.0.0.1:{closed}"))
    lab.register_pledge(pledge.serial, "redirect")
    before = _state(lab)
    cms, _ = pledge.voucher_request()
    answer = post_voucher_request(lab.url("owner") + REQUEST_VOUCHER, cms, identity=pledge)
    assert answer.status == 502, answer.body
    assert b"after 3 attempt(s)" in answer.body
    assert _state(lab) == before
    log = lab.log_path("owner").read_text()
    assert "attempt 3/3 failed" in log and f"127.0.0.1:{closed}" in log


def _start_masa_beside_the_lab(lab, tmp_path, port: int, rate_limits: MasaRateLimits):
    """The lab's MASA configuration (its keys, TLS certificate, owner and devices, the database
    copied) on `port`, with `rate_limits`: (process, log path)."""
    database = tmp_path / "masa.sqlite"
    source = sqlite3.connect(lab.database_url("masa").removeprefix("sqlite:///"))
    copy = sqlite3.connect(database)
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()
    masa = server_configs(lab)[0]
    config = dataclasses.replace(
        masa, path=tmp_path / "masa.toml", database_url=f"sqlite:///{database}", rate_limits=rate_limits,
        server=dataclasses.replace(masa.server, port=port, extra_ports={}))
    write_config(config)
    log = tmp_path / "masa.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pledgeforge.registrar.server", "--config",
                                 str(config.path)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        wait_for_health(proc, f"https://127.0.0.1:{port}", lab.pki("web-ca"), log)
    except BaseException:
        stop_process(proc.pid)
        raise
    return proc, log


def test_a_masa_asking_the_registrar_to_slow_down_reaches_the_pledge_as_its_wait(lab, tmp_path):
    """The MASA's 429 + Retry-After for the registrar: the pledge gets 503 with that wait, and
    the registrar does not ask the MASA again sooner than it was told."""
    port = free_port("127.0.0.1")
    ca = open_signer(lab.key_uri("manufacturer", "manufacturer-ca"))
    ca_cert = load_certificate_file(str(lab.pki("manufacturer-ca")))[0]
    pledge = StandIn.create(tmp_path, "OW-SLOW-MASA", lambda pub, s: issue_idevid(
        ca, ca_cert, pub, s, masa_url=f"127.0.0.1:{port}"))
    lab.register_pledge(pledge.serial, "redirect")
    slow = MasaRateLimits(registrar_rate_per_s=0.01, registrar_burst=1)   # one voucher, then 100 s
    proc, log = _start_masa_beside_the_lab(lab, tmp_path, port, slow)
    try:
        url = lab.url("owner") + REQUEST_VOUCHER
        first, _ = pledge.voucher_request()
        assert post_voucher_request(url, first, identity=pledge).status == 200
        second, _ = pledge.voucher_request()
        answer = post_voucher_request(url, second, identity=pledge)
        assert answer.status == 503, answer.body
        assert 90 <= int(answer.header("retry-after")) <= 100, answer.headers
        assert b"the MASA answered 429" in answer.body and b"asks to wait" in answer.body
    finally:
        stop_process(proc.pid)
    masa_log = log.read_text()
    assert masa_log.count("-> 429") == 1, masa_log   # asked once, not again within the wait
