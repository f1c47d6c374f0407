"""The lab with its registrar-side keys behind the signing service (`lab up --signer`).

Both BRSKI flows bootstrap a pledge while the MASA's voucher key, the cloud
and owner registrars' voucher-request keys and the owner's EST CA key are
held by the service; OpenSSL checks the voucher and the LDevID. In
short-term mode the owner registrar signs with a key of its own under a
delegation certificate the service issued; once that delegation has ended,
the service does not renew it and the MASA refuses the registrar.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509

from clirunner import jq, openssl, run_cli
from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.keyuri import Pkcs11Uri, SignerUri
from pledgeforge.hsm.voucher import Voucher
from pledgeforge.hsm.wellknown import REQUEST_VOUCHER
from pledgeforge.hsm.x509 import to_der
from pledgeforge.keyserver import audit
from pledgeforge.keyserver.config import load_signer_config, write_signer_config
from pledgeforge.keyserver.store import open_store
from pledgeforge.lab import Lab
from pledgeforge.lab.signing_service import NODE_SUBJECT, renewal
from pledgeforge.registrar.config import load_config

from registrar_standin import StandIn, https, post_voucher_request
from signer_world import ID_KP_CMC_RA


@pytest.fixture(scope="module")
def keyless(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keyless-lab")
    out = run_cli("lab", "up", "--dir", directory, "--signer", timeout=300)
    assert out.returncode == 0, out.stderr.decode()
    lab = Lab.load(directory)
    yield lab
    lab.down()


@pytest.fixture(scope="module")
def short_term(tmp_path_factory):
    directory = tmp_path_factory.mktemp("short-term-lab")
    lab, _ = Lab.up(directory, signer="short-term")
    yield lab
    lab.down()


def signer_records(lab, serial: str) -> list[dict]:
    return audit.query(open_store(lab.data["servers"]["signer"]["database"]), serial=serial)


def bootstrap(lab, flow: str) -> dict:
    out = run_cli("pledge", "bootstrap", "--lab", lab.dir, "--flow", flow, "--json", timeout=300)
    assert out.returncode == 0, out.stderr.decode() + out.stdout.decode()[-2000:]
    return json.loads(out.stdout.splitlines()[-1])


def check_with_openssl(lab, result: dict) -> Voucher:
    verified = openssl("cms", "-verify", "-inform", "DER", "-in", result["voucher"],
                       "-CAfile", lab.pki("manufacturer-ca"), "-purpose", "any")
    assert verified.returncode == 0, verified.stderr.decode()
    chained = openssl("verify", "-CAfile", lab.pki("owner-ca"), result["ldevid"])
    assert chained.returncode == 0 and b": OK" in chained.stdout, chained.stderr.decode()
    return Voucher.from_json(verified.stdout)


def test_every_registrar_side_key_is_the_services(keyless):
    masa = load_config(keyless.config_path("masa"))
    cloud = load_config(keyless.config_path("cloud"))
    owner = load_config(keyless.config_path("owner"))
    uris = {"masa-voucher": masa.signer.key_uri, "cloud-registrar": cloud.signer.key_uri,
            "owner-registrar": owner.signer.key_uri, "owner-ca": owner.est.ca_key_uri}
    for name, uri in uris.items():
        assert isinstance(uri, SignerUri) and uri.key == name and uri.port == keyless.port("signer")
    # No server holds a token PIN: each has its client certificate and key for the service.
    for config in (masa, cloud, owner):
        assert "pin-source" not in config.path.read_text()
    status = run_cli("lab", "status", "--dir", keyless.dir, "--json")
    [service] = jq(status.stdout, ".servers.signer")
    assert service["answering"] and service["mode"] == "keyless" and service["keys"] == sorted(uris)
    human = run_cli("lab", "status", "--dir", keyless.dir).stdout.decode()
    assert re.search(r"signer\s+answering", human)
    assert f"holds the keys {', '.join(sorted(uris))} (keyless)" in human


def test_a_lab_keeps_the_signing_service_it_was_made_with(keyless, tmp_path):
    other = run_cli("lab", "up", "--dir", keyless.dir, "--signer", "short-term")
    assert other.returncode == 2 and other.stderr.count(b"\n") == 1     # a usage error
    assert b"was created with a keyless signing service" in other.stderr
    plain = tmp_path / "plain"
    (plain / "lab.json").parent.mkdir()
    (plain / "lab.json").write_text(json.dumps({**keyless.data, "servers": {
        role: info for role, info in keyless.data["servers"].items() if role != "signer"}}))
    refused = run_cli("lab", "up", "--dir", plain, "--signer")
    assert refused.returncode == 2 and b"was created without a signing service" in refused.stderr


@pytest.mark.parametrize("flow,registrar_key", [("redirect", "owner-registrar"),
                                                ("est-domain", "cloud-registrar")])
def test_both_flows_bootstrap_with_the_keys_behind_the_service(keyless, flow, registrar_key):
    result = bootstrap(keyless, flow)
    assert result["state"] == "enrolled"
    voucher = check_with_openssl(keyless, result)
    serial = result["serial"]
    assert voucher.serial_number == serial
    signed = {(r["key"], r["operation"]): r for r in signer_records(keyless, serial)
              if r["outcome"] == "signed"}
    assert set(signed) == {("masa-voucher", "voucher"), (registrar_key, "voucher-request"),
                           ("owner-ca", "certificate")}
    # What the service handed out is what the pledge holds.
    ldevid = load_certificate_file(result["ldevid"])[0]
    assert signed[("owner-ca", "certificate")]["digest"] == hashlib.sha256(to_der(ldevid)).hexdigest()
    assert signed[("masa-voucher", "voucher")]["digest"] == \
        hashlib.sha256(Path(result["voucher"]).read_bytes()).hexdigest()


def _crl(lab, path: Path) -> str:
    """The owner registrar's CRL, checked by openssl against the owner CA; its text."""
    answer = https(lab.url("owner") + "/crl", anchors=[lab.pki("owner-ca")])
    assert answer.status == 200 and answer.header("content-type") == "application/pkix-crl"
    converted = openssl("crl", "-inform", "DER", "-out", path, input=answer.body)
    assert converted.returncode == 0, converted.stderr
    checked = openssl("crl", "-in", path, "-noout", "-verify", "-CAfile", lab.pki("owner-ca"))
    assert b"verify OK" in checked.stdout + checked.stderr, checked.stderr
    return openssl("crl", "-in", path, "-noout", "-text").stdout.decode()


def test_the_owner_cas_crl_is_built_by_the_service_and_revokes_an_ldevid(keyless, tmp_path):
    result = bootstrap(keyless, "redirect")
    dp = openssl("x509", "-in", result["ldevid"], "-noout", "-ext", "crlDistributionPoints")
    assert f"URI:{keyless.url('owner')}/crl" in dp.stdout.decode()
    _crl(keyless, tmp_path / "before.pem")
    serial = openssl("x509", "-in", result["ldevid"], "-noout", "-serial").stdout.decode().strip().split("=")[1]
    revoked = run_cli("registrar", "revoke", "--config", keyless.config_path("owner"), "--cert-serial", serial,
                      "--reason", "keyCompromise", "--json")
    assert revoked.returncode == 0, revoked.stderr
    text = _crl(keyless, tmp_path / "after.pem")
    assert serial in text.replace(":", "").upper() and "Key Compromise" in text
    refused = openssl("verify", "-crl_check", "-CRLfile", tmp_path / "after.pem", "-CAfile",
                      keyless.pki("owner-ca"), result["ldevid"])
    assert refused.returncode != 0 and b"certificate revoked" in refused.stdout + refused.stderr
    crls = [r for r in audit.query(open_store(keyless.data["servers"]["signer"]["database"]), outcome="signed")
            if r["operation"] == "crl"]
    assert crls and {(r["client"], r["key"], r["delegation"]) for r in crls} == \
        {("owner", "owner-ca", "owner-ldevids")}


def test_a_registrar_on_a_short_term_certificate_bootstraps_a_pledge(short_term):
    owner = load_config(short_term.config_path("owner"))
    assert isinstance(owner.signer.key_uri, Pkcs11Uri) and owner.signer.key_uri.token == "registrar-node"
    # The owner registrar holds the PIN of its own node key and no other.
    assert re.findall(r"pin-source=file:[^&\"]+", owner.path.read_text()) == \
        [f"pin-source=file:{short_term.pin_file('registrar-node')}"]
    cert = load_certificate_file(str(owner.signer.cert))[0]
    assert cert.subject.rfc4514_string() == NODE_SUBJECT
    assert ID_KP_CMC_RA in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime <= dt.timedelta(hours=8, minutes=5)
    chained = openssl("verify", "-CAfile", short_term.pki("owner-ca"), "-purpose", "any", owner.signer.cert)
    assert chained.returncode == 0, chained.stderr.decode()
    state = short_term.status()["servers"]["signer"]
    assert state["renewal"]["running"] and state["renewal"]["valid_until"] == cert.not_valid_after_utc.isoformat()

    result = bootstrap(short_term, "redirect")
    assert result["state"] == "enrolled"
    check_with_openssl(short_term, result)
    # The node signed its voucher-request itself: the service signed only the voucher
    # and the LDevID.
    keys = sorted(r["key"] for r in signer_records(short_term, result["serial"]) if r["outcome"] == "signed")
    assert keys == ["masa-voucher", "owner-ca"]


def _end_node_delegation(lab, seconds: float) -> dt.datetime:
    """Rewrite the service's configuration so that the node's delegation ends soon."""
    config = load_signer_config(lab.config_path("signer"))
    end = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(seconds=seconds)
    delegations = tuple(replace(d, not_after=end) if d.name == "owner-registrar-node" else d
                        for d in config.policy.delegations)
    write_signer_config(replace(config, policy=replace(config.policy, delegations=delegations)))
    return end


def _renew(lab, *extra):
    r = renewal(lab)
    return run_cli("signer", "renew", "--service", str(r.service), "--key", str(r.key),
                   "--subject", r.subject, "--cert", r.cert_path, *extra)


def test_a_registrar_whose_delegation_ended_is_refused_by_the_masa(short_term, tmp_path):
    end = _end_node_delegation(short_term, 8)   # room for the CLI to start on a busy machine
    renewed = _renew(short_term, "--json")   # the service now certifies the node only until the end
    assert renewed.returncode == 0, renewed.stderr.decode()
    cert = renewal(short_term).current()
    assert cert.not_valid_after_utc == end
    assert jq(renewed.stdout, ".not_after") == [end.isoformat()]
    # A certificate's validity is counted in whole seconds: nothing happens when it
    # ends, so the test waits for the clock to pass it (bounded: a few seconds).
    threading.Event().wait(max(0.0, (end - dt.datetime.now(dt.timezone.utc)).total_seconds()) + 1.5)
    refused = _renew(short_term)
    assert refused.returncode == 1    # refused: a verification failure, not an environment one
    assert b"refused (403)" in refused.stderr and b"delegation owner-registrar-node expired" in refused.stderr

    pledge = StandIn.create(tmp_path, "PF-ENDED" + dt.datetime.now().strftime("%H%M%S"),
                            short_term.issue_idevid)
    short_term.register_pledge(pledge.serial, "redirect")
    cms, _ = pledge.voucher_request()
    answer = post_voucher_request(short_term.url("owner") + REQUEST_VOUCHER, cms, identity=pledge)
    assert answer.status == 403, answer.body
    assert b"the MASA answered 403" in answer.body and b"expired" in answer.body
