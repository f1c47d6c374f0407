"""The pledge end to end: real driver, keys in swtpm or SoftHSM, the lab's registrars over HTTPS.

The happy paths go through `pledgeforge pledge bootstrap` as users run it and are
checked with openssl; every response code comes from the cloud registrar's
configuration; refusals come from servers that misbehave on purpose.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import replace

import pytest

from clirunner import openssl, run_cli
from registrar_standin import running_lab
from rogue_registrar import (Reply, RogueServer, SilentServer, VoucherForge, self_signed_tls,
                             tls_files, voucher_reply)
from pledgeforge import lab_pledge
from pledgeforge.firmware.pledge_machine import PledgeConfig
from pledgeforge.hsm import keystore
from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.wellknown import REQUEST_VOUCHER


@pytest.fixture(scope="module")
def forge(lab):
    return VoucherForge(lab)


@pytest.fixture(scope="module")
def web_ca_tls(lab, tmp_path_factory):
    """TLS files from the lab's web CA: a server the pledge authenticates as a cloud registrar."""
    web = keystore.open_signer(lab.key_uri("web", "web-ca"))
    return tls_files(tmp_path_factory.mktemp("webtls"), "rogue", web, load_certificate_file(str(lab.pki("web-ca")))[0])


def states(result) -> list[str]:
    return [t.to_state.value for t in result.transitions]


def run(lab, flow="redirect", keystore_kind="pkcs11", cloud_url=None, timeout=5.0, **config):
    """Provision a pledge and bootstrap it in-process with short, bounded waits."""
    pledge = lab.provision_pledge(f"T-{secrets.token_hex(4).upper()}", keystore=keystore_kind, flow=flow)
    try:
        identity = lab_pledge.pledge_identity(pledge, cloud_url)
        settings = dict(cloud_registrar_url=identity.cloud_registrar_url, backoff_initial_s=0.05,
                        backoff_max_s=0.1, max_restarts=0, max_transport_retries=1)
        settings.update(config)
        result, summary = lab_pledge.bootstrap(pledge, config=PledgeConfig(**settings), identity=identity,
                                               timeout=timeout)
    finally:
        pledge.close()
    return pledge, result, summary


# --------------------------------------------------------------------------- both flows, both key stores

@pytest.mark.parametrize("flow", ["redirect", "est-domain"])
@pytest.mark.parametrize("kind", ["tpm", "pkcs11"])
def test_cli_bootstrap_enrolls_and_openssl_checks_the_results(lab, flow, kind):
    out = run_cli("pledge", "bootstrap", "--lab", lab.dir, "--flow", flow, "--keystore", kind, "--json")
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    # With --json, stdout is the JSON object alone; the states go to stderr.
    summary = json.loads(out.stdout)
    assert summary["state"] == "enrolled" and summary["flow"] == flow and summary["keystore"] == kind
    walked = [t["to"] for t in summary["transitions"]]
    # Every state is printed as it is entered, in order.
    lines = out.stderr.decode().splitlines()
    printed = [line.split()[0] for line in lines if line.startswith("  ")]
    assert printed == walked
    if flow == "redirect":
        assert "redirected" in walked and "provisional-connect" in walked
        assert summary["redirects"] == [lab.url("owner")]
    else:
        assert "redirected" not in walked and summary["redirects"] == []
    assert walked[-5:] == ["est-cacerts", "est-csrattrs", "est-enroll", "est-status", "enrolled"]
    assert summary["idevid_key"].startswith("tpm:" if kind == "tpm" else "pkcs11:")
    assert summary["ldevid_key"].startswith("tpm:" if kind == "tpm" else "pkcs11:")
    assert summary["ldevid_key"] != summary["idevid_key"]

    verify = openssl("verify", "-CAfile", lab.pki("owner-ca"), summary["ldevid"])
    assert verify.returncode == 0, verify.stderr.decode()
    cms = openssl("cms", "-verify", "-inform", "DER", "-in", summary["voucher"],
                  "-CAfile", lab.pki("manufacturer-ca"), "-purpose", "any")
    assert cms.returncode == 0, cms.stderr.decode()
    voucher = json.loads(cms.stdout)["ietf-voucher:voucher"]
    assert voucher["serial-number"] == summary["serial"]
    assert ("est-domain" in voucher) == (flow == "est-domain")
    # The LDevID names the pledge and carries what csrattrs asked for.
    text = openssl("x509", "-in", summary["ldevid"], "-noout", "-subject", "-ext", "subjectAltName")
    assert summary["serial"] in text.stdout.decode()
    assert f"{summary['serial'].lower()}.pledges.lab.pledgeforge.test" in text.stdout.decode()


def test_cli_bootstrap_against_a_stopped_lab_is_one_clear_error(tmp_path):
    out = run_cli("pledge", "bootstrap", "--lab", tmp_path / "nolab")
    assert out.returncode == 3
    assert b"lab up" in out.stderr and b"Traceback" not in out.stderr


# --------------------------------------------------------------------------- answers set in the cloud registrar

def _serial_setup(lab, flow, setup):
    """Provision with `setup(serial)` applied to the cloud registrar before the run."""
    serial = f"T-{secrets.token_hex(4).upper()}"
    pledge = lab.provision_pledge(serial, keystore="pkcs11", flow=flow)
    setup(serial)
    return pledge


def run_with(lab, flow, setup, **config):
    pledge = _serial_setup(lab, flow, setup)
    identity = lab_pledge.pledge_identity(pledge)
    settings = dict(cloud_registrar_url=identity.cloud_registrar_url, backoff_initial_s=0.05,
                    backoff_max_s=0.1, max_restarts=0, max_transport_retries=1)
    settings.update(config)
    result, _ = lab_pledge.bootstrap(pledge, config=PledgeConfig(**settings), identity=identity, timeout=5)
    return result


def test_202_with_retry_after_waits_then_gets_the_voucher(lab):
    result = run_with(lab, "est-domain", lambda s: lab.set_cloud_response(
        s, "accepted", retry_after=1, times=1, then="voucher"))
    assert result.enrolled, result.reason
    assert "waiting" in states(result)
    waited = [t.reason for t in result.transitions if t.to_state.value == "waiting"]
    assert len(waited) == 1 and "accepted the voucher-request" in waited[0] and "in 1 s" in waited[0]


def test_401_waits_for_the_owner_then_is_redirected(lab):
    result = run_with(lab, "redirect", lambda s: lab.set_cloud_response(
        s, "owner-unknown", retry_after=1, times=1, then="redirect"))
    assert result.enrolled, result.reason
    assert "waiting" in states(result) and "redirected" in states(result)


def test_503_backs_off_then_succeeds(lab):
    result = run_with(lab, "redirect", lambda s: lab.set_cloud_response(
        s, "overloaded", retry_after=1, times=1, then="redirect"))
    assert result.enrolled, result.reason
    assert any("503" in t.reason for t in result.transitions)


@pytest.mark.parametrize("answer, status", [("unknown", "404"), ("bad-request", "400")])
def test_refusals_fail_without_retrying(lab, answer, status):
    result = run_with(lab, "redirect", lambda s: lab.set_cloud_response(s, answer))
    assert result.state == "failed"
    assert status in result.reason
    assert states(result).count("voucher-request") == 1
    assert result.voucher is None and result.ldevid is None


def test_a_chain_of_redirects_is_followed(lab):
    result = run_with(lab, "redirect", lambda s: (
        lab.set_cloud_response(s, "redirect", location=lab.url("cloud", "var")),
        lab.set_cloud_response(s, "redirect", endpoint="var")))
    assert result.enrolled, result.reason
    assert list(result.redirects) == [lab.url("cloud", "var"), lab.url("owner")]


def test_a_redirect_loop_is_detected(lab):
    result = run_with(lab, "redirect", lambda s: (
        lab.set_cloud_response(s, "redirect", location=lab.url("cloud", "var")),
        lab.set_cloud_response(s, "redirect", location=lab.url("cloud"), endpoint="var")))
    assert result.state == "failed"
    assert "loop" in result.reason
    assert result.ldevid is None


def test_a_registrar_that_hangs_times_out_and_the_retries_are_bounded(lab):
    with SilentServer() as silent:
        pledge, result, _ = run(lab, cloud_url=silent.url, timeout=0.5)
    assert result.state == "failed"
    timeouts = [t for t in result.transitions if "tim" in t.reason.lower()]
    assert 1 <= len(timeouts) <= 3, [str(t) for t in result.transitions]


def test_a_closed_port_fails_after_bounded_retries(lab):
    with SilentServer() as gone:
        url = gone.url
    pledge, result, _ = run(lab, cloud_url=url)
    assert result.state == "failed"
    assert len(result.transitions) < 12


# --------------------------------------------------------------------------- the pledge refuses

def _rogue_cloud(lab, forge, web_ca_tls, make_voucher):
    """A cloud registrar the pledge authenticates (web CA), answering with a forged voucher."""
    def answer(request):
        if request.path == REQUEST_VOUCHER:
            return voucher_reply(make_voucher(request.body))
        return Reply(200)
    return RogueServer(web_ca_tls, lab.pki("manufacturer-ca"), answer)


@pytest.mark.parametrize("damage, words", [
    ("nonce", "nonce"),
    ("serial", "serial"),
    ("expired", "expire"),
    ("untrusted", "trust"),
    ("tampered", ""),
])
def test_the_pledge_refuses_a_bad_voucher(lab, forge, web_ca_tls, damage, words):
    def make(request_cms):
        if damage == "nonce":
            return forge.voucher_for(request_cms, nonce=secrets.token_bytes(16))
        if damage == "serial":
            return forge.voucher_for(request_cms, serial="SOMEONE-ELSE")
        if damage == "expired":
            return forge.voucher_for(request_cms, expired=True)
        if damage == "untrusted":
            return forge.untrusted_voucher_for(request_cms)
        good = bytearray(forge.voucher_for(request_cms))
        spot = good.find(b'"serial-number"')
        good[spot + 1] ^= 0x01  # one bit of the signed JSON
        return bytes(good)

    with _rogue_cloud(lab, forge, web_ca_tls, make) as rogue:
        _, result, summary = run(lab, cloud_url=rogue.url)
    assert result.state == "failed"
    rejected = [t for t in result.transitions if t.to_state.value == "voucher-rejected"]
    assert rejected, [str(t) for t in result.transitions]
    assert words in rejected[0].reason.lower()
    # The pledge told the server why (voucher_status) and kept nothing.
    assert "/.well-known/brski/voucher_status" in rogue.paths()
    status = json.loads(rogue.requests[rogue.paths().index("/.well-known/brski/voucher_status")].body)
    assert status["status"] is False
    assert summary["voucher"] is None and summary["ldevid"] is None


def test_a_307_from_an_unauthenticated_cloud_registrar_is_not_followed(lab, tmp_path):
    """Provisional TLS to the cloud registrar is forbidden: the pledge leaves before asking."""
    location = lab.url("owner") + REQUEST_VOUCHER
    with RogueServer(self_signed_tls(tmp_path, "impostor"), lab.pki("manufacturer-ca"),
                     lambda request: Reply(307, headers={"Location": location})) as rogue:
        _, result, _ = run(lab, cloud_url=rogue.url)
    assert result.state == "failed"
    assert "not authenticated" in result.reason
    assert "redirected" not in states(result) and "voucher-request" not in states(result)
    assert rogue.requests == []
    assert result.voucher is None


def test_an_owner_registrar_outside_the_pin_is_refused(lab, forge, web_ca_tls):
    """Redirected (by the real cloud registrar) to a server whose certificate the owner CA did not issue."""
    with _rogue_cloud(lab, forge, web_ca_tls, forge.voucher_for) as rogue:
        result = run_with(lab, "redirect", lambda s: lab.set_cloud_response(
            s, "redirect", location=rogue.url + REQUEST_VOUCHER))
    assert result.state == "failed"
    assert "provisional-connect" in states(result)
    assert "est-cacerts" not in states(result)
    assert "does not match the voucher's pinned-domain-cert" in result.reason
    assert rogue.paths()[0] == REQUEST_VOUCHER  # the pledge did ask there, then left
    assert result.ldevid is None


def test_an_est_server_outside_the_pin_is_refused(lab, forge, web_ca_tls, tmp_path):
    with RogueServer(web_ca_tls, lab.pki("manufacturer-ca"), lambda request: Reply(200)) as est:
        with _rogue_cloud(lab, forge, web_ca_tls,
                          lambda cms: forge.voucher_for(cms, est_domain=est.url)) as rogue:
            _, result, _ = run(lab, cloud_url=rogue.url)
    assert result.state == "failed"
    assert "voucher-verified" in states(result)
    assert "est-csrattrs" not in states(result)
    assert "does not match the voucher's pinned-domain-cert" in result.reason
    assert not any(p.startswith("/.well-known/est/") for p in est.paths())


# --------------------------------------------------------------------------- after enrolment

def test_additional_configuration_is_fetched_and_stored(lab):
    settings = json.dumps({"ntp": ["ntp.lab.pledgeforge.test"]}).encode()
    pledge = lab.provision_pledge(f"T-{secrets.token_hex(4).upper()}", keystore="pkcs11", flow="est-domain",
                                  additional_configuration=settings)
    result, summary = lab_pledge.bootstrap(pledge, timeout=5)
    assert result.enrolled, result.reason
    assert result.additional_configuration_url.endswith(f"/pledge-config/{pledge.serial}.json")
    assert result.additional_configuration == settings
    with open(summary["additional_configuration"], "rb") as stored:
        assert stored.read() == settings


def test_registrar_serve_runs_the_lab_configurations(tmp_path):
    """`pledgeforge registrar serve` is the same server the lab starts, for people running their own."""
    import signal
    import subprocess

    from clirunner import PLEDGEFORGE
    from pledgeforge.lab import Lab

    with running_lab(tmp_path / "lab") as lab:
        pass  # created, then stopped: the configuration files stay
    lab = Lab.load(tmp_path / "lab")
    env = {**os.environ, "SOFTHSM2_CONF": str(lab.softhsm.conf)}
    procs = {role: subprocess.Popen([PLEDGEFORGE, "registrar", "serve", "--config", lab.config_path(role)],
                                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for role in ("owner", "cloud")}
    try:
        for role, proc in procs.items():
            problem = "not tried"
            for _ in range(100):  # bounded: each probe itself times out after 2 s
                problem = lab.probe(role)
                if problem is None or proc.poll() is not None:
                    break
                try:
                    proc.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    pass
            assert problem is None, f"{role}: {problem}"
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=15) for proc in procs.values()]
    assert codes == [0, 0], [proc.stderr.read().decode() for proc in procs.values()]

    wrong = run_cli("registrar", "serve", "--config", lab.config_path("masa"))
    assert wrong.returncode == 2 and b"masa serve" in wrong.stderr


# --------------------------------------------------------------------------- failures after the voucher

@pytest.mark.parametrize("flow", ["redirect", "est-domain"])
def test_a_key_store_failure_after_the_voucher_is_reported_in_enrollstatus(lab, flow):
    from pledgeforge.firmware.ldevid_keys import LdevidKeys, LdevidSlots
    from pledgeforge.firmware.pledge import PledgeDriver
    from pledgeforge.registrar.db import OWNER_METADATA, table_contents

    pledge = lab.provision_pledge(f"T-{secrets.token_hex(4).upper()}", keystore="pkcs11", flow=flow)
    identity = lab_pledge.pledge_identity(pledge)
    # The LDevID key cannot be made: its slots are on a token this SoftHSM does not have
    # (with the PIN of a token it has, so that the token is what is missing).
    broken = LdevidKeys(LdevidSlots.beside(replace(lab.key_uri("pledges", "ldevid"), token="no-such-token")))
    config = PledgeConfig(cloud_registrar_url=identity.cloud_registrar_url, max_restarts=0)
    result = PledgeDriver(identity, config, timeout=5, ldevid_keys=broken).run()
    assert result.state == "failed" and "no PKCS#11 token labelled 'no-such-token'" in result.reason
    assert states(result)[-2:] == ["est-status", "failed"]
    reports = [r for r in table_contents(lab.owner_store().engine, OWNER_METADATA)["owner_status_reports"]
               if r[1] == pledge.serial and r[2] == "enrollstatus"]
    assert len(reports) == 1
    assert reports[0][3] is False and "generating the LDevID key and CSR failed" in reports[0][4]
    assert "no-such-token" in json.loads(reports[0][5])["reason"]
    assert lab.owner_store().ldevids(pledge.serial) == []  # nothing was issued
