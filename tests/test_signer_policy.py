"""The signing service's policy: which delegation covers a request, and why none does.

Pure logic on what the configuration reader makes of a real file; no
service runs here.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest
from cryptography.x509.oid import NameOID

from clirunner import jq, run_cli
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner
from pledgeforge.hsm.x509 import issue_certificate, make_ca, parse_dn, to_pem
from pledgeforge.keyserver.config import EXTENDED_KEY_USAGES, load_signer_config, write_signer_config
from pledgeforge.keyserver.policy import Client, Delegation, Denied, Policy, Scope
from pledgeforge.registrar.config import ConfigError

from signer_world import toml_table, toml_value

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.timezone.utc)


def _delegation(name="d", **changes) -> Delegation:
    values = dict(name=name, delegator="officer", delegate="masa", key="masa", operations=("voucher",),
                  not_before=NOW - dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=1),
                  serials=("PF-*",), domains=("*.example.com",), subjects=("CN=registrar-*",))
    values.update(changes)
    return Delegation(**values)


MASA = Client("masa", parse_dn("CN=masa,O=t"), 10.0, 10)


def _policy(*delegations) -> Policy:
    return Policy({"masa": MASA}, tuple(delegations))


def test_the_covering_delegation_is_granted():
    policy = _policy(_delegation("other", serials=("XX-*",)), _delegation("masa-vouchers"))
    granted = policy.grant(MASA, "masa", "voucher", Scope(serial="PF-1", dns_names=("a.example.com",)), NOW)
    assert granted.name == "masa-vouchers"


@pytest.mark.parametrize("scope,at,words", [
    (Scope(serial="XX-1"), NOW, "serial number 'XX-1' is outside delegation d (serials PF-*)"),
    (Scope(serial="PF-1", dns_names=("evil.example.org",)), NOW, "DNS name 'evil.example.org' is outside"),
    (Scope(subject="CN=intruder"), NOW, "subject 'CN=intruder' is outside delegation d"),
    (Scope(serial="PF-1"), NOW + dt.timedelta(days=2), "delegation d expired on 2030-06-02T12:00:00Z"),
    (Scope(serial="PF-1"), NOW - dt.timedelta(days=2), "delegation d is valid from 2030-05-31T12:00:00Z"),
])
def test_what_no_delegation_covers_is_denied_with_the_reason(scope, at, words):
    with pytest.raises(Denied) as info:
        _policy(_delegation()).grant(MASA, "masa", "voucher", scope, at)
    assert words in str(info.value)


def test_a_client_without_a_delegation_for_the_key_or_the_operation_is_told_which():
    policy = _policy(_delegation())
    with pytest.raises(Denied, match="client masa has no delegation for key owner-ca"):
        policy.grant(MASA, "owner-ca", "certificate", Scope(), NOW)
    with pytest.raises(Denied, match="no delegation lets client masa sign raw digests with key masa "
                                     r"\(its delegations grant: voucher\)"):
        policy.grant(MASA, "masa", "digest", Scope(), NOW)


def test_a_client_is_recognised_by_its_certificate_subject():
    ca_key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    ca = make_ca(ca_key, "CN=ca")
    key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    cert = issue_certificate(ca_key, ca, key.public_key, "CN=masa,O=t")
    other = issue_certificate(ca_key, ca, key.public_key, "CN=masa,O=someone else")
    policy = _policy()
    assert policy.client_for(cert) is MASA
    assert policy.client_for(other) is None


# --------------------------------------------------------------------------- the file

def _config(tmp_path, delegation: dict, clients: str | None = None) -> str:
    ca_key = SoftwareSigner.generate(KeyAlgorithm.EC_P256)
    ca = make_ca(ca_key, "CN=ca")
    (tmp_path / "ca.crt").write_bytes(to_pem(ca))
    (tmp_path / "tls.key").write_text("not read by the configuration reader")
    text = 'node = "n1"\n\n' + toml_table("server", {"port": 9443, "tls_cert": tmp_path / "ca.crt",
                                                      "tls_key": tmp_path / "tls.key",
                                                      "client_cas": [tmp_path / "ca.crt"]})
    text += toml_table("database", {"url": "sqlite:///db/s.sqlite"})
    text += toml_table("keys.masa", {"uri": "pkcs11:token=masa;object=v?pin-source=file:/p",
                                     "cert": tmp_path / "ca.crt"})
    text += clients if clients is not None else toml_table("clients.masa", {"subject": "CN=masa,O=t"})
    text += toml_table("[delegations]", delegation)
    (tmp_path / "signer.toml").write_text(text)
    return str(tmp_path / "signer.toml")


GOOD = {"name": "d", "delegator": "officer", "delegate": "masa", "key": "masa", "operations": ["voucher"],
        "serials": ["PF-*"], "not_before": NOW, "not_after": NOW + dt.timedelta(days=1)}


def test_a_good_file_reads_into_clients_delegations_and_keys(tmp_path):
    config = load_signer_config(_config(tmp_path, GOOD))
    assert config.node == "n1" and list(config.keys) == ["masa"]
    assert config.database_url == f"sqlite:///{tmp_path / 'db' / 's.sqlite'}"
    (delegation,) = config.policy.delegations
    assert delegation.serials == ("PF-*",) and delegation.not_after == NOW + dt.timedelta(days=1)
    assert config.policy.clients["masa"].subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "masa"


@pytest.mark.parametrize("change,words", [
    ({"serials": []}, "delegations[0].serials must list the patterns voucher is granted for"),
    ({"operations": ["sign-anything"]}, "delegations[0].operations names 'sign-anything'"),
    ({"delegate": "nobody"}, "delegations[0].delegate names 'nobody', which is no [clients.NAME]"),
    ({"key": "owner-ca"}, "delegations[0].key names 'owner-ca', which is no [keys.NAME]"),
    ({"not_after": NOW - dt.timedelta(days=1)}, "delegations[0].not_after must come after not_before"),
    ({"colour": "red"}, "delegations[0].colour is not a known setting"),
])
def test_a_mistake_in_a_delegation_is_one_error_naming_file_and_key(tmp_path, change, words):
    with pytest.raises(ConfigError) as info:
        load_signer_config(_config(tmp_path, {**GOOD, **change}))
    assert str(tmp_path / "signer.toml") in str(info.value) and words in str(info.value)


@pytest.mark.parametrize("old,new,words", [
    ('node = "n1"', 'node = "n1"\nnodes = 2', "nodes is not a known setting; did you mean node?"),
    ("port = 9443", "prot = 9443", "server.prot is not a known setting; did you mean port?"),
    ("[database]", "[database]\nurls = []", "database.urls is not a known setting; did you mean url?"),
    ('subject = "CN=masa,O=t"', 'subject = "CN=masa,O=t"\nbrust = 3',
     "clients.masa.brust is not a known setting; did you mean burst?"),
    ('delegator = "officer"', 'delegatr = "officer"', "delegations[0].delegatr is not a known setting; "
                                                        "did you mean delegator?"),
])
def test_a_misspelt_key_is_refused_naming_the_closest_known_one(tmp_path, old, new, words):
    path = _config(tmp_path, GOOD)
    text = open(path).read()
    assert old in text
    open(path, "w").write(text.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_signer_config(path)
    assert words in str(info.value)


def test_a_configuration_written_from_its_dataclasses_reads_back_the_same(tmp_path):
    config = load_signer_config(_config(tmp_path, {**GOOD, "domains": ["*.example.com"],
                                                   "extended_key_usages": ["serverAuth"]}))
    copy = replace(config, path=tmp_path / "copy.toml", workers_per_token=3, window_s=60)
    write_signer_config(copy, "written by a test")
    again = load_signer_config(copy.path)
    assert again == copy
    assert again.policy.delegations[0].extended_key_usages == (EXTENDED_KEY_USAGES["serverAuth"],)
    assert copy.path.read_text().startswith("# written by a test\n")


def test_a_time_without_offset_is_refused(tmp_path):
    path = _config(tmp_path, GOOD)
    text = open(path).read().replace(toml_value(NOW), "2030-06-01T12:00:00")
    open(path, "w").write(text)
    with pytest.raises(ConfigError, match="not_before must carry its offset"):
        load_signer_config(path)


def test_signer_check_shows_what_the_file_grants(tmp_path):
    path = _config(tmp_path, GOOD)
    out = run_cli("signer", "check", "--config", path, "--json")
    assert out.returncode == 0, out.stderr
    assert jq(out.stdout, "[.delegations[0].operations, (.clients | keys)]") == [[["voucher"], ["masa"]]]
    broken = _config(tmp_path, {**GOOD, "serials": []})
    out = run_cli("signer", "check", "--config", broken)
    assert out.returncode == 2 and out.stderr.count(b"\n") == 1   # a usage error
    assert b"delegations[0].serials must list the patterns" in out.stderr
    missing = run_cli("signer", "check", "--config", tmp_path / "nowhere.toml")
    assert missing.returncode == 3 and b"does not exist" in missing.stderr   # the environment
