"""The lab's cloud registrar over real HTTPS: every answer brski-cloud-20 defines, driven by
its database, and every refusal with its status (or the TLS alert) and nothing written."""

from __future__ import annotations

import json

import pytest

from clirunner import openssl
from registrar_standin import StandIn, https, post_voucher_request, tls_refusal
from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner
from pledgeforge.hsm.voucher import Voucher
from pledgeforge.hsm.wellknown import REQUEST_VOUCHER, VOUCHER_STATUS
from pledgeforge.hsm.x509 import issue_idevid, make_ca, to_der
from pledgeforge.registrar.db import CLOUD_METADATA, MASA_METADATA, table_contents



@pytest.fixture
def pledge(lab, tmp_path, request):
    serial = "CL-" + request.node.name.split("[")[0][-20:].replace("_", "-").upper()
    return StandIn.create(tmp_path, serial, lab.issue_idevid)


def ask(lab, pledge: StandIn, endpoint: str = "main", **kwargs):
    cms, nonce = pledge.voucher_request(**kwargs)
    answer = post_voucher_request(lab.url("cloud", endpoint) + REQUEST_VOUCHER, cms, identity=pledge,
                                  anchors=[lab.pki("web-ca")])
    return answer, nonce


def test_redirect_flow_answers_307_to_the_owner_registrar(lab, pledge):
    lab.register_pledge(pledge.serial, "redirect")
    answer, _ = ask(lab, pledge)
    assert answer.status == 307, answer.body
    assert answer.header("location") == lab.url("owner") + REQUEST_VOUCHER


def test_est_domain_flow_answers_with_a_voucher_carrying_est_domain(lab, pledge, tmp_path):
    settings = json.dumps({"sip": {"registrar": "sip.example"}}).encode()
    lab.register_pledge(pledge.serial, "est-domain", additional_configuration=settings)
    # The pledge pins the certificate the cloud registrar showed it (RFC 8995 5.2).
    hello = https(lab.url("cloud") + "/.well-known/pledgeforge/health", identity=pledge,
                  anchors=[lab.pki("web-ca")])
    answer, nonce = ask(lab, pledge, proximity=hello.server_cert)
    assert answer.status == 200, answer.body
    assert answer.header("content-type") == "application/voucher-cms+json"
    (tmp_path / "voucher.der").write_bytes(answer.body)
    out = openssl("cms", "-verify", "-inform", "DER", "-in", tmp_path / "voucher.der",
                  "-CAfile", lab.pki("manufacturer-ca"), "-purpose", "any")
    assert out.returncode == 0, out.stderr.decode()
    voucher = Voucher.from_json(out.stdout, expect_request=False)
    assert voucher.serial_number == pledge.serial and voucher.nonce == nonce
    assert voucher.est_domain == lab.url("owner")
    assert voucher.pinned_domain_cert == to_der(load_certificate_file(str(lab.pki("owner-ca")))[0])
    config_url = voucher.additional_configuration
    assert config_url == f"{lab.url('owner')}/pledge-config/{pledge.serial}.json"
    fetched = https(config_url, identity=pledge, anchors=[lab.pki("owner-ca")])
    assert fetched.status == 200 and fetched.body == settings

    events = lab.masa_store().audit_events(pledge.serial)
    assert events[-1]["requester"] == "cloud registrar lab-cloud for lab-owner"
    vouchers = table_contents(lab.cloud_store().engine, CLOUD_METADATA)["cloud_vouchers"]
    assert any(row[1] == pledge.serial for row in vouchers)

    # The est-domain flow reports voucher_status to the cloud registrar.
    status = https(lab.url("cloud") + VOUCHER_STATUS, "POST", b'{"version":1,"status":true}',
                   identity=pledge, anchors=[lab.pki("web-ca")],
                   headers={"Content-Type": "application/json"})
    assert status.status == 200
    reports = table_contents(lab.cloud_store().engine, CLOUD_METADATA)["cloud_status_reports"]
    assert [r for r in reports if r[1] == pledge.serial and r[2] == "voucher_status" and r[3] is True]


@pytest.mark.parametrize("response, retry_after, status", [
    ("accepted", 3, 202),
    ("owner-unknown", 3600, 401),
    ("owner-unknown", None, 401),
    ("unknown", None, 404),
    ("bad-request", None, 400),
    ("overloaded", 9, 503),
])
def test_configured_answers(lab, pledge, response, retry_after, status):
    lab.set_cloud_response(pledge.serial, response, retry_after=retry_after)
    answer, _ = ask(lab, pledge)
    assert answer.status == status, answer.body
    assert answer.header("retry-after") == (None if retry_after is None else str(retry_after))
    # No voucher was asked for: nothing reached the MASA.
    assert lab.masa_store().audit_events(pledge.serial) == []


def test_unregistered_pledge_is_unknown(lab, pledge):
    answer, _ = ask(lab, pledge)
    assert answer.status == 404
    assert pledge.serial in answer.body.decode()


def test_accepted_twice_then_the_voucher(lab, pledge):
    lab.register_pledge(pledge.serial, "est-domain")
    lab.set_cloud_response(pledge.serial, "accepted", retry_after=1, times=2, then="voucher")
    assert [ask(lab, pledge)[0].status for _ in range(3)] == [202, 202, 200]


def test_global_overload_switch(lab, pledge):
    lab.register_pledge(pledge.serial, "redirect")
    lab.set_cloud_overloaded(30)
    try:
        answer, _ = ask(lab, pledge)
        assert answer.status == 503 and answer.header("retry-after") == "30"
    finally:
        lab.set_cloud_overloaded(None)
    assert ask(lab, pledge)[0].status == 307


def test_redirect_chains_and_loops_through_a_second_identity(lab, pledge):
    var = lab.url("cloud", "var") + REQUEST_VOUCHER
    lab.set_cloud_response(pledge.serial, "redirect", location=lab.url("cloud", "var"))
    lab.set_cloud_response(pledge.serial, "redirect", endpoint="var")
    first, _ = ask(lab, pledge)
    assert first.status == 307 and first.header("location") == var
    second, _ = ask(lab, pledge, endpoint="var")
    assert second.status == 307 and second.header("location") == lab.url("owner") + REQUEST_VOUCHER
    # A loop: the second identity sends the pledge back to the first.
    lab.set_cloud_response(pledge.serial, "redirect", endpoint="var", location=lab.url("cloud"))
    back, _ = ask(lab, pledge, endpoint="var")
    assert back.header("location") == lab.url("cloud") + REQUEST_VOUCHER


def test_the_cloud_registrar_is_no_est_server(lab, pledge):
    answer = https(lab.url("cloud") + "/.well-known/est/csrattrs", identity=pledge,
                   anchors=[lab.pki("web-ca")])
    assert answer.status == 404


def _state(lab):
    return (table_contents(lab.cloud_store().engine, CLOUD_METADATA),
            table_contents(lab.masa_store().engine, MASA_METADATA))


def test_refusals_write_nothing(lab, pledge, tmp_path):
    lab.register_pledge(pledge.serial, "est-domain")
    # A counted answer: a refused request must not use it up.
    lab.set_cloud_response(pledge.serial, "accepted", retry_after=1, times=2, then="voucher")
    url = lab.url("cloud") + REQUEST_VOUCHER
    anchors = [lab.pki("web-ca")]
    twin = StandIn.create(tmp_path / "twin", pledge.serial + "-TWIN", lab.issue_idevid)
    foreign_ca_key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    foreign_ca = make_ca(foreign_ca_key, "CN=unknown manufacturer")
    alien = StandIn.create(tmp_path / "alien", pledge.serial,
                           lambda pub, s: issue_idevid(foreign_ca_key, foreign_ca, pub, s))
    good, _ = pledge.voucher_request()
    tampered = bytearray(good)
    at = bytes(tampered).index(pledge.serial.encode())
    tampered[at] ^= 0x01
    other_cert = make_ca(foreign_ca_key, "CN=not the cloud registrar")
    before = _state(lab)

    # No client certificate, or one from a manufacturer nobody configured: the TLS
    # handshake is refused (CertificateRequest is mandatory; brski-cloud lets the cloud
    # registrar reject at TLS a pledge it cannot support).
    # (The client sees an alert, a reset or an EOF, depending on timing; never an HTTP answer.)
    tls_refusal(lambda: post_voucher_request(url, good, anchors=anchors))
    tls_refusal(lambda: post_voucher_request(url, good, identity=alien, anchors=anchors))

    cases = [
        ("JSON serial differs from the IDevID", pledge.voucher_request(serial="SOMEONE-ELSE")[0], {}, 400),
        ("malformed CMS", b"\x30\x82\x01\x00garbage", {}, 400),
        ("not CMS at all", b"{\"ietf-voucher-request:voucher\":{}}", {}, 400),
        ("tampered", bytes(tampered), {}, 403),
        ("signed by another pledge's IDevID", twin.voucher_request(serial=pledge.serial)[0], {}, 403),
        ("pinned another registrar", pledge.voucher_request(proximity=other_cert)[0], {}, 401),
        ("wrong Content-Type", good, {"Content-Type": "application/json"}, 415),
        ("Accept excludes vouchers", good, {"Accept": "text/html"}, 406),
    ]
    for name, body, headers, status in cases:
        answer = post_voucher_request(url, body, identity=pledge, anchors=anchors, headers=headers)
        assert answer.status == status, f"{name}: {answer.status} {answer.body!r}"
    bad_status = https(lab.url("cloud") + VOUCHER_STATUS, "POST", b'{"status":"yes"}', identity=pledge,
                       anchors=anchors, headers={"Content-Type": "application/json"})
    assert bad_status.status == 400
    assert _state(lab) == before
