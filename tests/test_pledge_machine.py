"""The pledge state machine, walked transition by transition without I/O."""

from __future__ import annotations

import base64
import itertools
import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pledgeforge.errors import PledgeforgeError
from pledgeforge.firmware.pledge_machine import (
    VOUCHER_MEDIA_TYPE,
    Action,
    BuildVoucherRequest,
    Cancel,
    CertificateAccepted,
    CertificateRejected,
    CheckCertificate,
    CheckServerAgainstPin,
    Connect,
    ConnectFailed,
    ConnectOk,
    CsrReady,
    Enrolled,
    Failed,
    GenerateCsr,
    KeyOperationFailed,
    PledgeConfig,
    PledgeConfigError,
    PledgeMachine,
    ProtocolError,
    Response,
    SendRequest,
    ServerMatchesPin,
    ServerPinMismatch,
    Sleep,
    State,
    TimerFired,
    Timeout,
    TrustBuiltinAnchors,
    TrustPinnedDomainCert,
    TrustProvisional,
    VerifyVoucher,
    VoucherRejected,
    VoucherRequestBuilt,
    VoucherVerified,
    est_base_url,
    resolve_location,
    server_origin,
)
from pledgeforge.hsm.retry_after import parse_retry_after

CLOUD = "https://cloud.example:443"
CLOUD2 = "https://cloud2.example:443"
OWNER = "https://owner.example:8443"
EST = "https://est.example:9443"
CLOUD_CERT = b"cloud-server-cert"
CLOUD2_CERT = b"cloud2-server-cert"
OWNER_CERT = b"owner-server-cert"
EST_CERT = b"est-server-cert"
PIN = b"pinned-domain-cert"
CACERTS = b"base64-pkcs7-ca-certs"
CSR = b"\x30\x82csr-der"
ISSUED = b"base64-pkcs7-ldevid"
LDEVID = b"ldevid-der"
VOUCHER = Response(200, {"Content-Type": VOUCHER_MEDIA_TYPE}, b"signed-voucher")


def counting_nonces():
    counter = itertools.count(1)
    return lambda size: next(counter).to_bytes(size, "big")


def machine(**overrides) -> PledgeMachine:
    config = PledgeConfig(cloud_registrar_url="https://cloud.example", **overrides)
    return PledgeMachine(config, nonce_source=counting_nonces())


def expect(action: Action, kind: type, **fields) -> Action:
    assert isinstance(action, kind), action
    for name, value in fields.items():
        assert getattr(action, name) == value, (name, action)
    return action


def states(m: PledgeMachine) -> list[State]:
    return [t.to_state for t in m.transitions]


def cloud_voucher_request(m: PledgeMachine) -> SendRequest:
    expect(m.start(), Connect, url=CLOUD, trust=TrustBuiltinAnchors())
    expect(
        m.handle(ConnectOk(True, CLOUD_CERT)),
        BuildVoucherRequest, registrar_url=CLOUD, registrar_cert_der=CLOUD_CERT,
    )
    return expect(
        m.handle(VoucherRequestBuilt(b"vr-cloud")),
        SendRequest,
        method="POST",
        url=f"{CLOUD}/.well-known/brski/requestvoucher",
        body=b"vr-cloud",
        content_type=VOUCHER_MEDIA_TYPE,
        accept=VOUCHER_MEDIA_TYPE,
    )


def owner_voucher_request(m: PledgeMachine) -> SendRequest:
    cloud_voucher_request(m)
    expect(m.handle(Response(307, {"Location": OWNER})), Connect, url=OWNER, trust=TrustProvisional())
    expect(
        m.handle(ConnectOk(False, OWNER_CERT)),
        BuildVoucherRequest, registrar_url=OWNER, registrar_cert_der=OWNER_CERT,
    )
    return expect(
        m.handle(VoucherRequestBuilt(b"vr-owner")),
        SendRequest, url=f"{OWNER}/.well-known/brski/requestvoucher", body=b"vr-owner",
    )


def owner_verified(m: PledgeMachine) -> None:
    """Redirect flow up to the voucher accepted and the pin checked."""
    owner_voucher_request(m)
    expect(m.handle(VOUCHER), VerifyVoucher)
    expect(m.handle(VoucherVerified(PIN)), CheckServerAgainstPin)
    expect(
        m.handle(ServerMatchesPin()),
        SendRequest, url=f"{OWNER}/.well-known/brski/voucher_status",
    )


def est_domain_connected(m: PledgeMachine) -> None:
    """est-domain flow up to the EST server authenticated by the pin."""
    cloud_voucher_request(m)
    expect(m.handle(VOUCHER), VerifyVoucher)
    expect(m.handle(VoucherVerified(PIN, est_domain="est.example:9443")), SendRequest)
    expect(
        m.handle(Response(200)),
        Connect, url=EST, trust=TrustPinnedDomainCert(PIN, "est.example"),
    )
    expect(m.handle(ConnectOk(True, EST_CERT)), SendRequest, url=f"{EST}/.well-known/est/cacerts")


def enroll(m: PledgeMachine, origin: str) -> Enrolled:
    """From the pending GET /cacerts to Enrolled, checking every request."""
    est = f"{origin}/.well-known/est"
    assert m.pending == SendRequest("GET", f"{est}/cacerts", accept="application/pkcs7-mime")
    expect(
        m.handle(Response(200, {"Content-Type": "application/pkcs7-mime"}, CACERTS)),
        SendRequest, method="GET", url=f"{est}/csrattrs", accept="application/csrattrs",
    )
    expect(m.handle(Response(200, body=b"csr-attributes")), GenerateCsr, csr_attributes=b"csr-attributes")
    enroll_request = expect(
        m.handle(CsrReady(CSR)),
        SendRequest, method="POST", url=f"{est}/simpleenroll",
        content_type="application/pkcs10", accept="application/pkcs7-mime",
    )
    assert base64.b64decode(enroll_request.body) == CSR
    expect(
        m.handle(Response(200, {"Content-Type": "application/pkcs7-mime"}, ISSUED)),
        CheckCertificate, enroll_response=ISSUED, ca_certs=CACERTS,
    )
    status = expect(
        m.handle(CertificateAccepted(LDEVID)),
        SendRequest, method="POST", url=f"{origin}/.well-known/brski/enrollstatus",
        content_type="application/json",
    )
    assert json.loads(status.body) == {"version": 1, "status": True}
    return expect(m.handle(Response(200)), Enrolled, certificate_der=LDEVID, ca_certs=CACERTS)


def fail_voucher_attempt(m: PledgeMachine) -> Action:
    """From a pending cloud Connect: an unauthenticated cloud registrar."""
    return m.handle(ConnectOk(False, b"impostor"))


# --- the two flows, every transition -------------------------------------------


def test_redirect_flow_walks_every_state_and_enrolls_at_the_owner_registrar():
    m = machine()
    owner_verified(m)
    status = m.pending
    assert json.loads(status.body) == {"version": 1, "status": True}
    assert status.content_type == "application/json"
    expect(m.handle(Response(200)), SendRequest, url=f"{OWNER}/.well-known/est/cacerts")
    enrolled = enroll(m, OWNER)
    assert enrolled.registrar_url == OWNER
    assert enrolled.est_url == f"{OWNER}/.well-known/est"
    assert enrolled.redirects == (OWNER,)
    assert states(m) == [
        State.CLOUD_CONNECT, State.VOUCHER_REQUEST, State.REDIRECTED,
        State.PROVISIONAL_CONNECT, State.VOUCHER_REQUEST, State.VOUCHER_RECEIVED,
        State.VOUCHER_VERIFIED, State.EST_CACERTS, State.EST_CSRATTRS,
        State.EST_ENROLL, State.EST_STATUS, State.ENROLLED,
    ]
    assert m.state is State.ENROLLED


def test_transitions_chain_and_name_their_reason():
    m = machine()
    owner_verified(m)
    m.handle(Response(200))
    enroll(m, OWNER)
    previous = State.IDLE
    for transition in m.transitions:
        assert transition.from_state is previous
        assert transition.to_state is not transition.from_state
        assert transition.reason
        previous = transition.to_state
    assert "307 from https://cloud.example:443 to https://owner.example:8443" in str(m.transitions[2])


def test_redirect_flow_checks_the_provisional_server_certificate_against_the_pin():
    m = machine()
    owner_voucher_request(m)
    expect(m.handle(VOUCHER), VerifyVoucher)
    check = expect(m.handle(VoucherVerified(PIN)), CheckServerAgainstPin)
    assert check == CheckServerAgainstPin(OWNER_CERT, PIN, "owner.example")


def test_est_domain_flow_reports_to_the_cloud_and_enrolls_at_the_pinned_est_server():
    m = machine()
    cloud_voucher_request(m)
    verify = expect(m.handle(VOUCHER), VerifyVoucher, voucher=b"signed-voucher")
    assert verify.content_type == VOUCHER_MEDIA_TYPE
    status = expect(
        m.handle(VoucherVerified(PIN, "est.example:9443", "https://cfg.example/boot")),
        SendRequest, method="POST", url=f"{CLOUD}/.well-known/brski/voucher_status",
    )
    assert json.loads(status.body) == {"version": 1, "status": True}
    expect(m.handle(Response(200)), Connect, url=EST, trust=TrustPinnedDomainCert(PIN, "est.example"))
    expect(m.handle(ConnectOk(True, EST_CERT)), SendRequest)
    enrolled = enroll(m, EST)
    assert enrolled.registrar_url == CLOUD
    assert enrolled.est_url == f"{EST}/.well-known/est"
    assert enrolled.additional_configuration_url == "https://cfg.example/boot"
    assert enrolled.redirects == ()
    assert states(m) == [
        State.CLOUD_CONNECT, State.VOUCHER_REQUEST, State.VOUCHER_RECEIVED,
        State.VOUCHER_VERIFIED, State.EST_CONNECT, State.EST_CACERTS,
        State.EST_CSRATTRS, State.EST_ENROLL, State.EST_STATUS, State.ENROLLED,
    ]


def test_est_domain_that_fails_the_pin_ends_in_failed_without_more_requests():
    m = machine()
    cloud_voucher_request(m)
    m.handle(VOUCHER)
    m.handle(VoucherVerified(PIN, est_domain="https://est.example:9443"))
    m.handle(Response(200))
    failed = expect(m.handle(ConnectOk(False, b"someone-else")), Failed, state=State.EST_CONNECT)
    assert "pinned-domain-cert" in failed.reason and EST in failed.reason
    assert m.state is State.FAILED


def test_voucher_without_est_domain_from_the_cloud_enrolls_there_after_the_pin_check():
    m = machine()
    cloud_voucher_request(m)
    m.handle(VOUCHER)
    expect(m.handle(VoucherVerified(PIN)), CheckServerAgainstPin, server_cert_der=CLOUD_CERT)
    expect(m.handle(ServerMatchesPin()), SendRequest, url=f"{CLOUD}/.well-known/brski/voucher_status")
    m.handle(Response(200))
    assert enroll(m, CLOUD).est_url == f"{CLOUD}/.well-known/est"


def test_est_domain_in_an_owner_voucher_is_honoured_after_the_owner_pin_check():
    m = machine()
    owner_voucher_request(m)
    m.handle(VOUCHER)
    expect(m.handle(VoucherVerified(PIN, est_domain="est.example:9443")), CheckServerAgainstPin)
    expect(m.handle(ServerMatchesPin()), SendRequest, url=f"{OWNER}/.well-known/brski/voucher_status")
    expect(m.handle(Response(200)), Connect, url=EST)


def test_voucher_status_is_telemetry_and_its_failure_does_not_stop_enrollment():
    m = machine()
    owner_verified(m)
    expect(m.handle(Timeout()), SendRequest, url=f"{OWNER}/.well-known/est/cacerts")
    m2 = machine()
    owner_verified(m2)
    expect(m2.handle(Response(500)), SendRequest, url=f"{OWNER}/.well-known/est/cacerts")


# --- fresh nonces and the voucher they bind ------------------------------------


def test_every_hop_gets_a_new_voucher_request_with_a_fresh_nonce():
    m = machine()
    m.start()
    cloud_build = m.handle(ConnectOk(True, CLOUD_CERT))
    m.handle(VoucherRequestBuilt(b"vr-cloud"))
    m.handle(Response(307, {"Location": CLOUD2}))
    cloud2_build = m.handle(ConnectOk(True, CLOUD2_CERT))
    m.handle(VoucherRequestBuilt(b"vr-cloud2"))
    m.handle(Response(307, {"Location": OWNER}))
    owner_build = m.handle(ConnectOk(False, OWNER_CERT))
    nonces = [b.nonce for b in (cloud_build, cloud2_build, owner_build)]
    assert len(set(nonces)) == 3
    m.handle(VoucherRequestBuilt(b"vr-owner"))
    verify = expect(m.handle(VOUCHER), VerifyVoucher)
    assert verify.expected_nonce == owner_build.nonce


def test_a_nonce_source_that_repeats_itself_is_refused():
    m = PledgeMachine(PledgeConfig("https://cloud.example"), nonce_source=lambda n: b"\x01" * n)
    m.start()
    m.handle(ConnectOk(True, CLOUD_CERT))
    m.handle(VoucherRequestBuilt(b"vr"))
    m.handle(Response(307, {"Location": OWNER}))
    before = (m.state, m.pending, len(m.transitions))
    with pytest.raises(ProtocolError, match="repeated a nonce"):
        m.handle(ConnectOk(False, OWNER_CERT))
    assert (m.state, m.pending, len(m.transitions)) == before


def test_the_nonce_is_base64url_of_the_random_bytes():
    m = PledgeMachine(PledgeConfig("https://cloud.example"), nonce_source=lambda n: b"\xfb\xff" * (n // 2))
    m.start()
    build = m.handle(ConnectOk(True, CLOUD_CERT))
    assert build.nonce == base64.urlsafe_b64encode(b"\xfb\xff" * 8).rstrip(b"=").decode()


# --- redirects ------------------------------------------------------------------


def test_a_chain_of_authenticated_redirects_is_followed():
    m = machine()
    cloud_voucher_request(m)
    expect(m.handle(Response(307, {"Location": CLOUD2})), Connect, url=CLOUD2, trust=TrustProvisional())
    m.handle(ConnectOk(True, CLOUD2_CERT))
    m.handle(VoucherRequestBuilt(b"vr-cloud2"))
    expect(m.handle(Response(307, {"Location": f"{OWNER}/.well-known/brski"})), Connect, url=OWNER)
    m.handle(ConnectOk(False, OWNER_CERT))
    m.handle(VoucherRequestBuilt(b"vr-owner"))
    m.handle(VOUCHER)
    m.handle(VoucherVerified(PIN))
    m.handle(ServerMatchesPin())
    m.handle(Response(200))
    assert enroll(m, OWNER).redirects == (CLOUD2, OWNER)


def test_a_307_over_provisional_tls_is_refused_and_the_pledge_starts_over():
    m = machine()
    owner_voucher_request(m)
    wait = expect(m.handle(Response(307, {"Location": "https://elsewhere.example"})), Sleep)
    assert "provisional TLS" in wait.reason
    assert m.state is State.WAITING
    expect(m.handle(TimerFired()), Connect, url=CLOUD, trust=TrustBuiltinAnchors())
    assert m.state is State.CLOUD_CONNECT
    assert m.restarts == 1


@pytest.mark.parametrize(
    "chain, looped",
    [
        ([CLOUD], CLOUD),  # straight back to the cloud registrar
        ([CLOUD2, "https://CLOUD.example/"], CLOUD),  # same origin, other spelling
        ([CLOUD2, "https://cloud2.example:443/x"], CLOUD2),
    ],
)
def test_a_redirect_loop_fails(chain, looped):
    m = machine()
    cloud_voucher_request(m)
    for index, location in enumerate(chain):
        action = m.handle(Response(307, {"Location": location}))
        if index < len(chain) - 1:
            m.handle(ConnectOk(True, f"cert{index}".encode()))
            m.handle(VoucherRequestBuilt(b"vr"))
    failed = expect(action, Failed, state=State.VOUCHER_REQUEST)
    assert "redirect loop" in failed.reason and looped in failed.reason


def follow_redirects(m: PledgeMachine, hops: int) -> Action:
    cloud_voucher_request(m)
    for hop in range(hops):
        action = m.handle(Response(307, {"Location": f"https://hop{hop}.example"}))
        if not isinstance(action, Connect):
            return action
        m.handle(ConnectOk(True, f"hop{hop}".encode()))
        m.handle(VoucherRequestBuilt(b"vr"))
    return m.pending


def test_redirects_up_to_the_limit_are_followed_and_one_more_fails():
    at_limit = machine(max_redirects=3)
    last_hop = "https://hop2.example:443/.well-known/brski/requestvoucher"
    expect(follow_redirects(at_limit, 3), SendRequest, url=last_hop)
    over = machine(max_redirects=3)
    failed = expect(follow_redirects(over, 4), Failed)
    assert "more than 3 redirects" in failed.reason


def test_the_default_redirect_limit_is_five():
    expect(follow_redirects(machine(), 5), SendRequest)
    expect(follow_redirects(machine(), 6), Failed)


@pytest.mark.parametrize(
    "location, reason",
    [
        (None, "no Location"),
        ("   ", "no Location"),
        ("http://owner.example", "not an https"),
        ("https://owner.example:99999", "invalid port"),
        ("https:///no-host", "no host"),
        ("https://bad host.example", "invalid host"),
    ],
)
def test_an_unusable_location_fails(location, reason):
    m = machine()
    cloud_voucher_request(m)
    headers = {} if location is None else {"Location": location}
    failed = expect(m.handle(Response(307, headers)), Failed)
    assert reason in failed.reason


@pytest.mark.parametrize(
    "location, origin",
    [
        ("https://owner.example:8443", "https://owner.example:8443"),
        ("https://owner.example:8443/", "https://owner.example:8443"),
        ("https://Owner.Example:8443/.well-known/brski/requestvoucher", "https://owner.example:8443"),
        ("https://owner.example", "https://owner.example:443"),
        ("//owner.example:8443/anything", "https://owner.example:8443"),
        ("/elsewhere", "https://cloud.example:443"),
        ("https://[2001:db8::1]:8443", "https://[2001:db8::1]:8443"),
        ("https://192.0.2.7", "https://192.0.2.7:443"),
    ],
)
def test_resolve_location_accepts_urls_hosts_and_relative_references(location, origin):
    assert resolve_location(f"{CLOUD}/.well-known/brski/requestvoucher", location) == origin


@pytest.mark.parametrize(
    "est_domain, url",
    [
        ("est.example", "https://est.example:443/.well-known/est"),
        ("est.example:9443", "https://est.example:9443/.well-known/est"),
        ("https://est.example:9443", "https://est.example:9443/.well-known/est"),
        ("https://est.example/", "https://est.example:443/.well-known/est"),
        ("https://est.example/.well-known/est/lab", "https://est.example:443/.well-known/est/lab"),
    ],
)
def test_est_base_url_forms(est_domain, url):
    assert est_base_url(est_domain) == url


def test_server_origin_rejects_what_is_not_an_https_server():
    for bad in ("ftp://x", "https://", "https://x:0", "cloud.example", "https://[zz::1]"):
        with pytest.raises(ValueError):
            server_origin(bad)


def test_a_redirect_to_an_ipv6_owner_pins_the_bare_address():
    m = machine()
    cloud_voucher_request(m)
    owner = "https://[2001:db8::1]:8443"
    expect(m.handle(Response(307, {"Location": owner})), Connect, url=owner)
    m.handle(ConnectOk(False, OWNER_CERT))
    m.handle(VoucherRequestBuilt(b"vr"))
    m.handle(VOUCHER)
    expect(m.handle(VoucherVerified(PIN)), CheckServerAgainstPin, server_name="2001:db8::1")


# --- voucher-request answers ----------------------------------------------------


@pytest.mark.parametrize(
    "status, headers, words",
    [
        (400, {}, "malformed"),
        (401, {}, "did not accept this pledge's IDevID"),
        (403, {}, "403 Forbidden"),
        (404, {}, "does not know this pledge"),
        (406, {}, "406 Not Acceptable"),
        (301, {"Location": OWNER}, "301 Moved Permanently"),
        (308, {"Location": OWNER}, "308 Permanent Redirect"),
        (204, {}, "204 No Content"),
        (599, {}, None),  # a 5xx: not here, see the retry tests
    ],
)
def test_voucher_request_refusals_fail_without_retrying(status, headers, words):
    m = machine()
    cloud_voucher_request(m)
    action = m.handle(Response(status, headers))
    if words is None:
        expect(action, Sleep)
        return
    failed = expect(action, Failed, state=State.VOUCHER_REQUEST)
    assert words in failed.reason
    assert m.restarts == 0


def test_a_refusal_quotes_the_servers_explanation():
    m = machine()
    cloud_voucher_request(m)
    failed = m.handle(Response(404, {"Content-Type": "text/plain"}, b"serial\nPF-0042 unknown"))
    assert "(serial PF-0042 unknown)" in failed.reason


def test_202_retry_after_an_hour_waits_sixty_seconds_and_resends_the_same_request():
    m = machine()
    sent = cloud_voucher_request(m)
    expect(m.handle(Response(202, {"Retry-After": "3600"})), Sleep, seconds=60.0)
    assert m.state is State.WAITING
    expect(m.handle(TimerFired()), Connect, url=CLOUD, trust=TrustBuiltinAnchors())
    assert m.state is State.CLOUD_CONNECT
    again = m.handle(ConnectOk(True, CLOUD_CERT))
    assert again == sent  # same body, same nonce
    expect(m.handle(Response(202, {"Retry-After": "5"})), Sleep, seconds=5.0)


def test_a_retry_to_a_server_with_another_certificate_builds_a_new_request():
    m = machine()
    owner_voucher_request(m)
    m.handle(Response(202, {"Retry-After": "1"}))
    expect(m.handle(TimerFired()), Connect, url=OWNER, trust=TrustProvisional())
    assert m.state is State.PROVISIONAL_CONNECT
    rebuilt = expect(m.handle(ConnectOk(False, b"rotated-owner-cert")), BuildVoucherRequest)
    assert rebuilt.registrar_cert_der == b"rotated-owner-cert"
    m.handle(VoucherRequestBuilt(b"vr-owner-2"))
    assert m.handle(VOUCHER).expected_nonce == rebuilt.nonce


def test_202_is_bounded_then_the_pledge_starts_over():
    m = machine(max_accepted_retries=2)
    m.start()
    first = m.handle(ConnectOk(True, CLOUD_CERT))
    sent = m.handle(VoucherRequestBuilt(b"vr-cloud"))
    for _ in range(2):
        expect(m.handle(Response(202, {"Retry-After": "1"})), Sleep, seconds=1.0)
        m.handle(TimerFired())
        assert m.handle(ConnectOk(True, CLOUD_CERT)) == sent
    wait = expect(m.handle(Response(202, {"Retry-After": "1"})), Sleep)
    assert "starting over" in wait.reason
    expect(m.handle(TimerFired()), Connect, url=CLOUD)
    assert m.restarts == 1
    # the new attempt has fresh budgets and a fresh nonce
    build = expect(m.handle(ConnectOk(True, CLOUD_CERT)), BuildVoucherRequest)
    assert build.nonce != first.nonce
    m.handle(VoucherRequestBuilt(b"vr-cloud-2"))
    assert "retry 1/2" in expect(m.handle(Response(202, {"Retry-After": "1"})), Sleep).reason


def test_401_with_retry_after_waits_for_the_owner_for_hours_up_to_the_cap():
    m = machine(owner_wait_cap_s=4 * 3600.0, max_owner_wait_retries=3)
    sent = cloud_voucher_request(m)
    expect(m.handle(Response(401, {"Retry-After": "7200"})), Sleep, seconds=7200.0)
    m.handle(TimerFired())
    assert m.handle(ConnectOk(True, CLOUD_CERT)) == sent
    expect(m.handle(Response(401, {"Retry-After": "86400"})), Sleep, seconds=4 * 3600.0)
    m.handle(TimerFired())
    m.handle(ConnectOk(True, CLOUD_CERT))
    expect(m.handle(Response(401, {"Retry-After": "soon"})), Sleep, seconds=8.0)  # backoff 2, 4, 8
    m.handle(TimerFired())
    m.handle(ConnectOk(True, CLOUD_CERT))
    wait = expect(m.handle(Response(401, {"Retry-After": "60"})), Sleep)
    assert "owner yet" in wait.reason and "starting over" in wait.reason


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_server_errors_back_off_honouring_retry_after(status):
    m = machine(overload_wait_cap_s=120.0)
    cloud_voucher_request(m)
    expect(m.handle(Response(status, {"Retry-After": "30"})), Sleep, seconds=30.0)
    m.handle(TimerFired())
    m.handle(ConnectOk(True, CLOUD_CERT))
    expect(m.handle(Response(status, {"Retry-After": "3000"})), Sleep, seconds=120.0)
    m.handle(TimerFired())
    m.handle(ConnectOk(True, CLOUD_CERT))
    expect(m.handle(Response(status)), Sleep, seconds=8.0)


def test_503_retries_are_bounded():
    m = machine(max_overload_retries=1, max_restarts=0)
    cloud_voucher_request(m)
    m.handle(Response(503))
    m.handle(TimerFired())
    m.handle(ConnectOk(True, CLOUD_CERT))
    failed = expect(m.handle(Response(503)), Failed)
    assert "unavailable" in failed.reason and "gave up after 0 restarts" in failed.reason


def test_retry_after_as_http_date_is_measured_from_the_response_date():
    m = machine()
    cloud_voucher_request(m)
    served = datetime(2030, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    headers = {
        "Date": format_datetime(served, usegmt=True),
        "Retry-After": format_datetime(served + timedelta(seconds=45), usegmt=True),
    }
    expect(m.handle(Response(503, headers)), Sleep, seconds=45.0)


def test_retry_after_as_http_date_uses_the_driver_clock_without_a_date_header():
    m = machine()
    cloud_voucher_request(m)
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    later = format_datetime(now + timedelta(seconds=20), usegmt=True)
    expect(
        m.handle(Response(202, {"Retry-After": later}, received_at=now.timestamp())),
        Sleep, seconds=20.0,
    )
    # no clock at all: the date cannot be measured, so the default backoff applies
    m.handle(TimerFired())
    m.handle(ConnectOk(True, CLOUD_CERT))
    expect(m.handle(Response(202, {"Retry-After": later})), Sleep, seconds=4.0)


@pytest.mark.parametrize(
    "value, seconds",
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("9" * 5000, 1e9),
        ("-5", None),
        ("1.5", None),
        ("٣", None),  # non-ASCII digit
        ("", None),
        ("tomorrow", None),
        (None, None),
        ("Wed, 01 Jan 2030 12:00:30 GMT", 30.0),
        ("Wed, 01 Jan 2030 11:00:00 GMT", 0.0),  # in the past: now
        ("Wed, 99 Foo 2030 12:00:30 GMT", None),
    ],
)
def test_parse_retry_after(value, seconds):
    reference = datetime(2030, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after(value, reference) == seconds


def test_parse_retry_after_needs_a_reference_for_dates():
    assert parse_retry_after("Wed, 01 Jan 2030 12:00:30 GMT") is None


# --- transport failures, backoff and restarts -----------------------------------


def test_transport_failures_back_off_exponentially_then_return_to_the_cloud():
    m = machine(max_transport_retries=3, backoff_initial_s=2.0)
    owner_voucher_request(m)
    delays = []
    failure = Timeout()
    for _ in range(3):
        delays.append(expect(m.handle(failure), Sleep).seconds)
        expect(m.handle(TimerFired()), Connect, url=OWNER, trust=TrustProvisional())
        failure = ConnectFailed("connection refused")
    assert delays == [2.0, 4.0, 8.0]
    wait = expect(m.handle(ConnectFailed("connection refused")), Sleep)
    assert "failed 4 times" in wait.reason and "connection refused" in wait.reason
    expect(m.handle(TimerFired()), Connect, url=CLOUD, trust=TrustBuiltinAnchors())
    assert m.restarts == 1
    assert states(m)[-2:] == [State.WAITING, State.CLOUD_CONNECT]


def test_backoff_is_capped():
    m = machine(max_transport_retries=6, backoff_initial_s=10.0, backoff_max_s=50.0)
    m.start()
    delays = []
    for _ in range(6):
        delays.append(m.handle(Timeout()).seconds)
        m.handle(TimerFired())
    assert delays == [10.0, 20.0, 40.0, 50.0, 50.0, 50.0]


def test_restarts_back_off_and_are_bounded():
    m = machine(max_restarts=2, backoff_initial_s=3.0)
    m.start()
    waits = []
    for _ in range(2):
        waits.append(expect(fail_voucher_attempt(m), Sleep).seconds)
        expect(m.handle(TimerFired()), Connect, url=CLOUD)
    failed = expect(fail_voucher_attempt(m), Failed, state=State.CLOUD_CONNECT)
    assert waits == [3.0, 6.0]
    assert "not authenticated by the built-in trust anchors" in failed.reason
    assert "gave up after 2 restarts" in failed.reason


def test_a_restart_forgets_the_previous_redirects():
    m = machine()
    owner_voucher_request(m)
    m.handle(Response(307, {"Location": CLOUD2}))  # provisional: refused
    m.handle(TimerFired())
    m.handle(ConnectOk(True, CLOUD_CERT))
    m.handle(VoucherRequestBuilt(b"vr"))
    # OWNER was visited in the first attempt; following it again is no loop
    expect(m.handle(Response(307, {"Location": OWNER})), Connect, url=OWNER)


# --- voucher verification outcomes ---------------------------------------------


def test_a_rejected_voucher_is_reported_to_the_owner_registrar_then_the_pledge_starts_over():
    m = machine()
    owner_voucher_request(m)
    m.handle(VOUCHER)
    status = expect(
        m.handle(VoucherRejected("nonce mismatch")),
        SendRequest, url=f"{OWNER}/.well-known/brski/voucher_status",
    )
    body = json.loads(status.body)
    assert body["status"] is False and "nonce mismatch" in body["reason"]
    assert m.state is State.VOUCHER_REJECTED
    wait = expect(m.handle(Response(200)), Sleep)
    assert "nonce mismatch" in wait.reason
    expect(m.handle(TimerFired()), Connect, url=CLOUD)


def test_a_rejected_cloud_voucher_is_reported_to_the_cloud_registrar():
    m = machine()
    cloud_voucher_request(m)
    m.handle(VOUCHER)
    status = expect(
        m.handle(VoucherRejected("bad signature")),
        SendRequest, url=f"{CLOUD}/.well-known/brski/voucher_status",
    )
    assert json.loads(status.body)["status"] is False
    expect(m.handle(Timeout()), Sleep)  # telemetry lost: still starts over


def test_an_owner_registrar_that_does_not_match_the_pin_is_told_and_left():
    m = machine()
    owner_voucher_request(m)
    m.handle(VOUCHER)
    m.handle(VoucherVerified(PIN))
    status = expect(m.handle(ServerPinMismatch("issuer differs")), SendRequest)
    assert status.url == f"{OWNER}/.well-known/brski/voucher_status"
    assert "issuer differs" in json.loads(status.body)["reason"]
    expect(m.handle(Response(200)), Sleep)
    expect(m.handle(TimerFired()), Connect, url=CLOUD)


@pytest.mark.parametrize(
    "verified, reason",
    [
        (VoucherVerified(b""), "no pinned-domain-cert"),
        (VoucherVerified(PIN, est_domain="http://est.example"), "unusable est-domain"),
    ],
)
def test_unusable_voucher_contents_are_a_rejection(verified, reason):
    m = machine()
    cloud_voucher_request(m)
    m.handle(VOUCHER)
    status = expect(m.handle(verified), SendRequest)
    assert reason in json.loads(status.body)["reason"]


def test_too_many_rejected_vouchers_fail():
    m = machine(max_restarts=1)
    for attempt in range(2):
        if attempt == 0:
            cloud_voucher_request(m)
        else:
            m.handle(ConnectOk(True, CLOUD_CERT))
            m.handle(VoucherRequestBuilt(b"vr"))
        m.handle(VOUCHER)
        m.handle(VoucherRejected("expired"))
        action = m.handle(Response(200))
        if attempt == 0:
            m.handle(TimerFired())
    failed = expect(action, Failed)
    assert "expired" in failed.reason and "gave up after 1 restarts" in failed.reason


# --- EST --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [204, 404])
def test_csrattrs_without_attributes(status):
    m = machine()
    est_domain_connected(m)
    m.handle(Response(200, body=CACERTS))
    expect(m.handle(Response(status)), GenerateCsr, csr_attributes=None)
    assert m.state is State.EST_ENROLL


@pytest.mark.parametrize(
    "step, status",
    [("cacerts", 404), ("cacerts", 500), ("cacerts", 202), ("csrattrs", 500), ("csrattrs", 401),
     ("simpleenroll", 400), ("simpleenroll", 401), ("simpleenroll", 500), ("simpleenroll", 503)],
)
def test_est_errors_are_reported_in_enrollstatus_then_fail_with_the_reason(step, status):
    m = machine()
    est_domain_connected(m)
    if step != "cacerts":
        m.handle(Response(200, body=CACERTS))
    if step == "simpleenroll":
        m.handle(Response(204))
        m.handle(CsrReady(CSR))
    report = expect(m.handle(Response(status, {"Content-Type": "text/plain"}, b"CA offline")),
                    SendRequest, url=f"{EST}/.well-known/brski/enrollstatus")
    body = json.loads(report.body)
    assert body["status"] is False and f"EST {step}" in body["reason"] and "CA offline" in body["reason"]
    assert m.state is State.EST_STATUS
    # Whether the report is delivered or not, the pledge fails with the reason.
    failed = expect(m.handle(Response(200) if status < 500 else Timeout()), Failed)
    assert f"EST {step}" in failed.reason and str(status) in failed.reason
    assert "CA offline" in failed.reason


def est_enroll_pending(m: PledgeMachine) -> SendRequest:
    est_domain_connected(m)
    m.handle(Response(200, body=CACERTS))
    m.handle(Response(204))
    return m.handle(CsrReady(CSR))


def test_simpleenroll_202_waits_capped_then_resends_the_same_csr_over_a_pinned_connection():
    m = machine()
    sent = est_enroll_pending(m)
    expect(m.handle(Response(202, {"Retry-After": "3600"})), Sleep, seconds=60.0)
    expect(m.handle(TimerFired()), Connect, url=EST, trust=TrustPinnedDomainCert(PIN, "est.example"))
    assert m.state is State.EST_CONNECT
    assert m.handle(ConnectOk(True, EST_CERT)) == sent
    assert m.state is State.EST_ENROLL


def test_simpleenroll_202_is_bounded():
    m = machine(max_accepted_retries=1)
    est_enroll_pending(m)
    m.handle(Response(202, {"Retry-After": "1"}))
    m.handle(TimerFired())
    m.handle(ConnectOk(True, EST_CERT))
    report = expect(m.handle(Response(202, {"Retry-After": "1"})), SendRequest,
                    url=f"{EST}/.well-known/brski/enrollstatus")
    assert "certificate not ready" in json.loads(report.body)["reason"]
    failed = expect(m.handle(Response(200)), Failed)
    assert "certificate not ready" in failed.reason


def test_est_over_the_voucher_server_reconnects_with_the_pin_after_a_timeout():
    m = machine()
    owner_verified(m)
    m.handle(Response(200))
    expect(m.handle(Timeout()), Sleep, seconds=2.0)
    expect(
        m.handle(TimerFired()),
        Connect, url=OWNER, trust=TrustPinnedDomainCert(PIN, "owner.example"),
    )
    expect(m.handle(ConnectOk(True, OWNER_CERT)), SendRequest, url=f"{OWNER}/.well-known/est/cacerts")


def test_est_transport_failures_lead_back_to_the_cloud_registrar():
    m = machine(max_transport_retries=1)
    est_domain_connected(m)
    m.handle(ConnectFailed("reset"))
    m.handle(TimerFired())
    m.handle(ConnectOk(True, EST_CERT))
    wait = expect(m.handle(ConnectFailed("reset")), Sleep)
    assert "starting over" in wait.reason
    expect(m.handle(TimerFired()), Connect, url=CLOUD)


def test_a_rejected_certificate_is_reported_in_enrollstatus_then_fails():
    m = machine()
    est_enroll_pending(m)
    m.handle(Response(200, body=ISSUED))
    status = expect(
        m.handle(CertificateRejected("public key differs from the CSR")),
        SendRequest, url=f"{EST}/.well-known/brski/enrollstatus",
    )
    body = json.loads(status.body)
    assert body["status"] is False and "public key differs" in body["reason"]
    failed = expect(m.handle(Response(200)), Failed, state=State.EST_STATUS)
    assert "public key differs" in failed.reason


def test_enrollstatus_is_telemetry_a_lost_report_still_enrolls():
    m = machine()
    est_enroll_pending(m)
    m.handle(Response(200, body=ISSUED))
    m.handle(CertificateAccepted(LDEVID))
    expect(m.handle(Timeout()), Enrolled, certificate_der=LDEVID)


@pytest.mark.parametrize("where", ["voucher-request", "csr"])
def test_key_operation_failures_fail_and_after_the_voucher_are_reported_first(where):
    m = machine()
    if where == "voucher-request":
        m.start()
        m.handle(ConnectOk(True, CLOUD_CERT))
        failed = expect(m.handle(KeyOperationFailed("token removed")), Failed)
        assert "signing the voucher-request failed: token removed" in failed.reason
    else:
        est_domain_connected(m)
        m.handle(Response(200, body=CACERTS))
        m.handle(Response(204))
        # After the voucher, the EST server learns why the pledge gives up.
        report = expect(m.handle(KeyOperationFailed("TPM lockout")), SendRequest,
                        url=f"{EST}/.well-known/brski/enrollstatus")
        assert json.loads(report.body) == {
            "version": 1, "status": False,
            "reason": "generating the LDevID key and CSR failed: TPM lockout"}
        failed = expect(m.handle(ConnectFailed("reset")), Failed)
        assert "LDevID key and CSR failed: TPM lockout" in failed.reason


# --- driver mistakes -----------------------------------------------------------


def test_handle_before_start_and_start_twice_are_protocol_errors():
    m = machine()
    with pytest.raises(ProtocolError, match="start"):
        m.handle(TimerFired())
    m.start()
    with pytest.raises(ProtocolError, match="already"):
        m.start()


def test_an_event_that_does_not_answer_the_pending_action_changes_nothing():
    m = machine()
    cloud_voucher_request(m)
    before = (m.state, m.pending, m.transitions)
    for wrong in (TimerFired(), ConnectOk(True, CLOUD_CERT), CsrReady(CSR), ServerMatchesPin()):
        with pytest.raises(ProtocolError, match="does not answer SendRequest"):
            m.handle(wrong)
    with pytest.raises(ProtocolError, match="not a pledge event"):
        m.handle("200 OK")
    with pytest.raises(ProtocolError, match="status"):
        m.handle(Response("200"))
    with pytest.raises(ProtocolError, match="server_cert_der"):
        m.handle(ConnectOk(True, "not-bytes"))
    assert (m.state, m.pending, m.transitions) == before
    expect(m.handle(VOUCHER), VerifyVoucher)


def test_nothing_is_accepted_after_a_terminal_action():
    m = machine()
    cloud_voucher_request(m)
    m.handle(Response(400))
    with pytest.raises(ProtocolError, match="failed"):
        m.handle(Response(200))
    with pytest.raises(ProtocolError):
        m.handle(Cancel())


def test_cancel_stops_the_machine_from_any_running_state():
    m = machine()
    owner_voucher_request(m)
    m.handle(Response(202, {"Retry-After": "30"}))
    failed = expect(m.handle(Cancel("operator pressed Ctrl-C")), Failed, state=State.WAITING)
    assert "operator pressed Ctrl-C" in failed.reason
    assert failed.is_terminal and m.state is State.FAILED


def test_actions_describe_themselves_in_one_line_for_consoles():
    m = machine()
    cloud_voucher_request(m)
    line = m.pending.summary()
    assert line.startswith("SendRequest(method='POST'") and "<8 bytes>" in line
    assert "\n" not in line


# --- configuration ---------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"cloud_registrar_url": "http://cloud.example"}, "cloud_registrar_url"),
        ({"cloud_registrar_url": "cloud.example"}, "cloud_registrar_url"),
        ({"max_redirects": -1}, "max_redirects"),
        ({"max_restarts": 1.5}, "max_restarts"),
        ({"accepted_wait_cap_s": 0}, "accepted_wait_cap_s"),
        ({"owner_wait_cap_s": float("inf")}, "owner_wait_cap_s"),
        ({"backoff_initial_s": 10.0, "backoff_max_s": 5.0}, "backoff_max_s"),
    ],
)
def test_bad_configuration_names_the_field(overrides, words):
    settings_ = {"cloud_registrar_url": "https://cloud.example", **overrides}
    with pytest.raises(PledgeConfigError, match=words) as raised:
        PledgeConfig(**settings_)
    assert isinstance(raised.value, PledgeforgeError)


def test_the_cloud_registrar_url_may_carry_the_brski_path():
    m = PledgeMachine(PledgeConfig("https://Cloud.Example/.well-known/brski"))
    expect(m.start(), Connect, url=CLOUD)


# --- properties: only ProtocolError, always termination -------------------------

SMALL = dict(
    max_redirects=2, max_restarts=2, max_transport_retries=2,
    max_accepted_retries=2, max_owner_wait_retries=2, max_overload_retries=2,
    backoff_initial_s=1.0, backoff_max_s=8.0, accepted_wait_cap_s=60.0,
    owner_wait_cap_s=3600.0, overload_wait_cap_s=600.0,
)


def event_bound(config: PledgeConfig) -> int:
    """Events one run can take at most: each request try costs at most a
    Sleep, a Connect, a BuildVoucherRequest and a SendRequest; every budget is
    per request; an attempt has at most max_redirects + 1 voucher requests,
    a voucher, a pin check, voucher_status, and four EST requests plus the CSR
    and certificate checks; attempts are max_restarts + 1."""
    tries = 1 + (
        config.max_transport_retries + config.max_accepted_retries
        + config.max_owner_wait_retries + config.max_overload_retries
    )
    requests = (config.max_redirects + 1) + 1 + 4
    per_attempt = 4 * tries * requests + 10
    return (config.max_restarts + 1) * per_attempt


HOSTS = ["https://cloud.example", "https://cloud2.example", "https://owner.example:8443",
         "https://owner2.example", "http://plain.example", "/relative"]
RETRY_AFTER = [None, "0", "1", "59", "3600", "86400", "garbage", "Wed, 01 Jan 2030 12:00:30 GMT"]


@st.composite
def responses(draw) -> Response:
    headers = {}
    if (retry_after := draw(st.sampled_from(RETRY_AFTER))) is not None:
        headers["Retry-After"] = retry_after
    if draw(st.booleans()):
        headers["Location"] = draw(st.sampled_from(HOSTS))
    if draw(st.booleans()):
        headers["Date"] = "Wed, 01 Jan 2030 12:00:00 GMT"
    status = draw(st.sampled_from([200, 200, 202, 204, 307, 400, 401, 403, 404, 500, 503]))
    return Response(status, headers, draw(st.sampled_from([b"", b"body"])))


def answers(action: Action) -> st.SearchStrategy:
    """Every valid answer a driver may give to `action`, failures included."""
    certs = st.sampled_from([b"cert-a", b"cert-b"])
    transport = st.one_of(st.builds(ConnectFailed, st.just("refused")), st.just(Timeout()))
    if isinstance(action, Connect):
        return st.one_of(st.builds(ConnectOk, st.booleans(), certs), transport)
    if isinstance(action, BuildVoucherRequest):
        return st.one_of(st.just(VoucherRequestBuilt(b"vr")), st.just(KeyOperationFailed("k")))
    if isinstance(action, SendRequest):
        return st.one_of(responses(), transport)
    if isinstance(action, VerifyVoucher):
        return st.one_of(
            st.builds(
                VoucherVerified,
                st.sampled_from([PIN, b""]),
                st.sampled_from([None, "est.example", "https://est.example:9443", "http://bad"]),
                st.sampled_from([None, "https://cfg.example"]),
            ),
            st.just(VoucherRejected("bad")),
        )
    if isinstance(action, CheckServerAgainstPin):
        return st.sampled_from([ServerMatchesPin(), ServerPinMismatch("no")])
    if isinstance(action, GenerateCsr):
        return st.sampled_from([CsrReady(CSR), KeyOperationFailed("k")])
    if isinstance(action, CheckCertificate):
        return st.sampled_from([CertificateAccepted(LDEVID), CertificateRejected("no")])
    if isinstance(action, Sleep):
        return st.just(TimerFired())
    raise AssertionError(f"no answers for {action}")


def progress(action: Action) -> st.SearchStrategy:
    """Answers that move the pledge forward (a redirect counts), so random
    runs also reach the EST states and Enrolled."""
    if isinstance(action, Connect):
        authenticated = st.booleans() if isinstance(action.trust, TrustProvisional) else st.just(True)
        return st.builds(ConnectOk, authenticated, st.sampled_from([b"cert-a", b"cert-b"]))
    if isinstance(action, SendRequest) and action.url.endswith("/requestvoucher"):
        return st.one_of(
            st.just(VOUCHER),
            st.builds(lambda host: Response(307, {"Location": host}), st.sampled_from(HOSTS)),
        )
    if isinstance(action, SendRequest) and action.url.endswith("/csrattrs"):
        return st.sampled_from([Response(200, body=b"attrs"), Response(204)])
    if isinstance(action, SendRequest):
        return st.just(Response(200, body=b"ok"))
    if isinstance(action, VerifyVoucher):
        return st.builds(
            VoucherVerified, st.just(PIN),
            st.sampled_from([None, "est.example", "https://est.example:9443"]),
        )
    return st.sampled_from(
        [e for e in (VoucherRequestBuilt(b"vr"), ServerMatchesPin(), CsrReady(CSR),
                     CertificateAccepted(LDEVID), TimerFired())
         if isinstance(e, action.expects)]
    )


def any_answer(data, action: Action):
    """Mostly progress, sometimes any valid answer (failures included)."""
    world = progress if data.draw(st.integers(0, 3), label="progress?") else answers
    return data.draw(world(action))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_valid_driver_run_terminates_within_the_bound(data):
    config = PledgeConfig("https://cloud.example", **SMALL)
    m = PledgeMachine(config, nonce_source=counting_nonces())
    action = m.start()
    events = 0
    longest_wait = max(config.backoff_max_s, config.accepted_wait_cap_s,
                       config.owner_wait_cap_s, config.overload_wait_cap_s)
    nonces = []
    while not action.is_terminal:
        if isinstance(action, Sleep):
            assert 0 <= action.seconds <= longest_wait
        if isinstance(action, BuildVoucherRequest):
            nonces.append(action.nonce)
        action = m.handle(any_answer(data, action))
        events += 1
        assert events <= event_bound(config)
    assert len(set(nonces)) == len(nonces)
    assert m.state in (State.ENROLLED, State.FAILED)
    assert isinstance(action, Enrolled if m.state is State.ENROLLED else Failed)
    assert m.restarts <= config.max_restarts
    previous = State.IDLE
    for transition in m.transitions:
        assert transition.from_state is previous
        previous = transition.to_state


def only_failures(action: Action) -> st.SearchStrategy:
    """A world where nothing works: every answer is a failure or a delay."""
    if isinstance(action, Connect):
        return st.one_of(
            st.just(Timeout()), st.just(ConnectFailed("unreachable")),
            st.just(ConnectOk(False, b"impostor")),
        )
    if isinstance(action, SendRequest):
        return st.one_of(
            st.just(Timeout()),
            st.builds(
                lambda status, retry_after: Response(status, {"Retry-After": retry_after}),
                st.sampled_from([202, 401, 503, 500]), st.sampled_from(RETRY_AFTER[1:]),
            ),
        )
    return answers(action)


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_a_world_of_failures_always_ends_in_failed(data):
    config = PledgeConfig("https://cloud.example", **SMALL)
    m = PledgeMachine(config, nonce_source=counting_nonces())
    action = m.start()
    events = 0
    while not action.is_terminal:
        action = m.handle(data.draw(only_failures(action)))
        events += 1
        assert events <= event_bound(config)
    expect(action, Failed)


def arbitrary_events() -> st.SearchStrategy:
    blobs = st.binary(max_size=8)
    text = st.text(max_size=20)
    return st.one_of(
        st.builds(ConnectOk, st.booleans(), blobs),
        st.builds(ConnectFailed, text),
        st.just(Timeout()),
        st.builds(
            Response,
            st.integers(min_value=0, max_value=999),
            st.dictionaries(
                st.sampled_from(["Location", "Retry-After", "Date", "Content-Type"]),
                st.one_of(text, st.sampled_from(HOSTS + RETRY_AFTER[1:])),
            ),
            blobs,
            st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
        ),
        st.builds(VoucherRequestBuilt, blobs),
        st.builds(VoucherVerified, blobs, st.one_of(st.none(), text), st.one_of(st.none(), text)),
        st.builds(VoucherRejected, text),
        st.just(ServerMatchesPin()),
        st.builds(ServerPinMismatch, text),
        st.builds(CsrReady, blobs),
        st.builds(CertificateAccepted, blobs),
        st.builds(CertificateRejected, text),
        st.builds(KeyOperationFailed, text),
        st.just(TimerFired()),
        st.builds(Cancel, text),
        st.sampled_from(["not an event", 42, None]),
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(arbitrary_events(), max_size=60))
def test_arbitrary_event_sequences_raise_nothing_but_protocol_errors(events):
    m = PledgeMachine(PledgeConfig("https://cloud.example", **SMALL), nonce_source=counting_nonces())
    m.start()
    for event in events:
        before = (m.state, m.pending, len(m.transitions))
        try:
            action = m.handle(event)
        except ProtocolError:
            assert (m.state, m.pending, len(m.transitions)) == before
            continue
        assert action is m.pending
        assert m.state.is_terminal == action.is_terminal
