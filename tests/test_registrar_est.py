"""EST wire formats, CSR checks, Accept handling and configuration errors: pure logic, checked with OpenSSL."""

from __future__ import annotations

import base64

import pytest
from cryptography import x509

from clirunner import openssl
from pledgeforge.commands.registrar import RESPONSES
from pledgeforge.hsm.signer import KeyAlgorithm, SoftwareSigner
from pledgeforge.hsm.x509 import make_ca, make_csr, to_der
from pledgeforge.errors import FileAccessError
from pledgeforge.registrar.config import ConfigError, CsrAttrsSettings, load_config
from pledgeforge.hsm.cloud_responses import CloudResponse
from pledgeforge.registrar.db import CloudStore, DatabaseError
from pledgeforge.hsm.est_wire import CsrAttributes, certs_only, encode_body, parse_certs_only
from pledgeforge.registrar.est import check_csr_identity, csr_attributes_for, decode_request_body
from pledgeforge.registrar.web import Refusal, accepts

POLICY = CsrAttrsSettings(subject=("CN", "serialNumber"), san_dns=("{serial}.pledges.example",),
                          signature_algorithm="ecdsa-with-SHA256")


def _ca(name: str) -> x509.Certificate:
    return make_ca(SoftwareSigner.generate(KeyAlgorithm.EC_P256), f"CN={name}")


def test_certs_only_pkcs7_lists_every_certificate_for_openssl(tmp_path):
    certs = [_ca("first CA"), _ca("second CA")]
    body = encode_body(certs_only(certs))
    # RFC 8951: base64 of DER; openssl reads the decoded DER.
    der = base64.b64decode(body)
    (tmp_path / "cacerts.der").write_bytes(der)
    out = openssl("pkcs7", "-inform", "DER", "-in", tmp_path / "cacerts.der", "-print_certs", "-noout")
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    assert "subject=CN = first CA" in text and "subject=CN = second CA" in text
    assert parse_certs_only(der) == certs


def test_csrattrs_parse_with_openssl_and_round_trip(tmp_path):
    der = csr_attributes_for(POLICY, "SN-1").encode()
    (tmp_path / "attrs.der").write_bytes(der)
    out = openssl("asn1parse", "-inform", "DER", "-in", tmp_path / "attrs.der", "-i")
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    for name in ("commonName", "serialNumber", "Extension Request", "ecdsa-with-SHA256",
                 "X509v3 Subject Alternative Name"):
        assert name in text, text
    parsed = CsrAttributes.decode(der)
    assert parsed.subject_oids == ["2.5.4.3", "2.5.4.5"]
    assert parsed.signature_oid == "1.2.840.10045.4.3.2" and parsed.hash_name == "sha256"
    assert parsed.subject_alt_names == [x509.DNSName("sn-1.pledges.example")]


def _csr(subject: str, dns=()) -> x509.CertificateSigningRequest:
    return make_csr(SoftwareSigner.generate(KeyAlgorithm.EC_P256), subject, dns_names=dns)


def test_csr_carrying_what_was_asked_gives_the_names_to_certify():
    csr = _csr("CN=dev,serialNumber=SN-1", ["sn-1.pledges.example", "other.example"])
    assert check_csr_identity(csr, POLICY, "SN-1") == ["sn-1.pledges.example"]


@pytest.mark.parametrize("subject, dns, problem", [
    ("CN=dev", ["sn-1.pledges.example"], "lacks serialNumber"),
    ("serialNumber=SN-1", ["sn-1.pledges.example"], "lacks CN"),
    ("CN=dev,serialNumber=SN-2", ["sn-1.pledges.example"], "is not the pledge's serial number"),
    ("CN=dev,serialNumber=SN-1", ["elsewhere.example"], "does not request"),
])
def test_csr_missing_what_was_asked_is_refused_with_400(subject, dns, problem):
    with pytest.raises(Refusal) as refused:
        check_csr_identity(_csr(subject, dns), POLICY, "SN-1")
    assert refused.value.status == 400
    assert problem in refused.value.message


def test_base64_bodies_tolerate_line_breaks_and_refuse_garbage():
    der = to_der(_ca("x"))
    wrapped = base64.encodebytes(der).replace(b"\n", b"\r\n")
    assert decode_request_body(wrapped, "body") == der
    with pytest.raises(Refusal) as refused:
        decode_request_body(b"not base64 at all!", "PKCS#10 request")
    assert refused.value.status == 400


@pytest.mark.parametrize("header, ok", [
    (None, True), ("*/*", True), ("application/*", True),
    ("application/voucher-cms+json", True), ("application/voucher-cms+json; q=0.5", True),
    ("application/json", False), ("application/voucher-cms+json;q=0", False),
    ("application/json, application/voucher-cms+json;q=0.0", False),
])
def test_accept_header(header, ok):
    assert accepts(header, "application/voucher-cms+json") is ok


def test_cli_and_database_speak_the_shared_cloud_response_vocabulary(tmp_path):
    names = ["redirect", "voucher", "accepted", "owner-unknown", "unknown", "bad-request", "overloaded"]
    assert RESPONSES == names == [answer.value for answer in CloudResponse]
    store = CloudStore(f"sqlite:///{tmp_path / 'cloud.db'}")
    with pytest.raises(DatabaseError, match="not one of " + ", ".join(names)):
        store.set_response("PF-1", "teapot")
    store.set_response("PF-1", "accepted", retry_after=5, times=1, then="voucher")
    assert store.take_response("PF-1", "main").response is CloudResponse.ACCEPTED
    assert store.take_response("PF-1", "main").response is CloudResponse.VOUCHER


def _write(tmp_path, text: str):
    path = tmp_path / "server.toml"
    path.write_text(text)
    return path


def test_config_errors_name_the_file_and_the_key(tmp_path):
    (tmp_path / "tls.crt").write_text("x")
    (tmp_path / "tls.key").write_text("x")
    base = ('role = "masa"\n[server]\nport = 1\ntls_cert = "tls.crt"\ntls_key = "tls.key"\n'
            '[database]\nurl = "sqlite:///db.sqlite"\n')
    with pytest.raises(ConfigError, match=r"server.toml: masa.signing_key is missing|missing table \[masa\]"):
        load_config(_write(tmp_path, base))
    with pytest.raises(ConfigError, match=r"role must be one of masa, cloud, owner"):
        load_config(_write(tmp_path, base.replace('"masa"', '"mesa"')))
    with pytest.raises(ConfigError, match=r"server.port must be a TCP port"):
        load_config(_write(tmp_path, base.replace("port = 1", "port = 70000")))
    with pytest.raises(ConfigError, match=r"server.tls_cert names .*missing.crt, which does not exist"):
        load_config(_write(tmp_path, base.replace('"tls.crt"', '"missing.crt"')))
    with pytest.raises(ConfigError, match=r"not valid TOML"):
        load_config(_write(tmp_path, base + "[[["))
    with pytest.raises(FileAccessError, match=r"does not exist"):
        load_config(tmp_path / "nope.toml")


def test_relative_paths_and_sqlite_files_are_taken_from_the_config_directory(tmp_path):
    for name in ("tls.crt", "tls.key", "masa.crt", "mfg.crt"):
        (tmp_path / name).write_text("x")
    config = load_config(_write(tmp_path, (
        'role = "masa"\ncheck_time = false\n[server]\nport = 0\ntls_cert = "tls.crt"\ntls_key = "tls.key"\n'
        '[database]\nurl = "sqlite:///db/masa.sqlite"\n'
        '[masa]\nsigning_key = "pkcs11:token=t;object=k"\nsigning_cert = "masa.crt"\n'
        'manufacturer_cas = ["mfg.crt"]\n'
        'cloud_registrars = [{ name = "c", anchor = "masa.crt", acts_for = ["o"] }]\n')))
    assert config.database_url == f"sqlite:///{tmp_path / 'db' / 'masa.sqlite'}"
    assert config.server.tls_cert == tmp_path / "tls.crt"
    assert config.check_time is False
    assert config.cloud_registrars[0].acts_for == ("o",)
    assert config.manufacturer_cas == (tmp_path / "mfg.crt",)


def test_masa_limits_and_names_are_checked_when_the_configuration_is_read(tmp_path):
    for name in ("tls.crt", "tls.key", "masa.crt", "mfg.crt"):
        (tmp_path / name).write_text("x")
    base = ('role = "masa"\n[server]\nport = 0\ntls_cert = "tls.crt"\ntls_key = "tls.key"\n'
            '[database]\nurl = "sqlite:///masa.sqlite"\n'
            '[masa]\nsigning_key = "pkcs11:token=t;object=k"\nsigning_cert = "masa.crt"\n'
            'manufacturer_cas = ["mfg.crt"]\n')
    config = load_config(_write(tmp_path, base))
    assert (config.max_request_age_s, config.max_request_future_s) == (600, 300)
    assert config.rate_limits.registrar_burst == 100 and config.rate_limits.tracked_clients == 10_000
    config = load_config(_write(tmp_path, base + "max_request_age_s = 60\n"
                                "[masa.rate_limits]\naddress_rate_per_s = 0.5\naddress_burst = 2\n"))
    assert config.max_request_age_s == 60
    assert (config.rate_limits.address_rate_per_s, config.rate_limits.address_burst) == (0.5, 2)
    for extra, problem in [
        ("max_request_age = 60\n", r"masa.max_request_age is not a known setting"),
        ("max_request_future_s = -1\n", r"masa.max_request_future_s must be greater than 0"),
        ("[masa.rate_limits]\nregistrar_burts = 5\n", r"masa.rate_limits.registrar_burts is not a known"),
        ("[masa.rate_limits]\nregistrar_rate_per_s = 0\n", r"registrar_rate_per_s must be greater than 0"),
        ('cloud_registrars = [{ name = "bad\\nname", anchor = "masa.crt" }]\n',
         r"cloud_registrars\[0\].name is not valid"),
    ]:
        with pytest.raises(ConfigError, match=problem):
            load_config(_write(tmp_path, base + extra))


def test_registrar_names_and_dns_templates_are_checked_when_the_configuration_is_read(tmp_path):
    for name in ("tls.crt", "tls.key", "signer.crt", "mfg.crt", "web.crt", "ca.crt"):
        (tmp_path / name).write_text("x")
    base = ('role = "owner"\n[server]\nport = 0\ntls_cert = "tls.crt"\ntls_key = "tls.key"\n'
            '[database]\nurl = "sqlite:///owner.sqlite"\n'
            '[registrar]\nsigning_key = "pkcs11:token=t;object=k"\nsigning_cert = "signer.crt"\n'
            'manufacturer_cas = ["mfg.crt"]\nmasa_anchors = ["web.crt"]\n'
            '[est]\nca_key = "pkcs11:token=t;object=ca"\nca_cert = "ca.crt"\n[est.csrattrs]\n')
    good = load_config(_write(tmp_path, base + 'san_dns = ["{serial}.pledges.example", "x-{serial}"]\n'))
    assert good.est.csrattrs.san_dns == ("{serial}.pledges.example", "x-{serial}")
    for template in ("{serial}..example", "{serial}/x", "_{serial}.example", "{serial}.-x"):
        with pytest.raises(ConfigError, match=r"est.csrattrs.san_dns entry .* does not make a DNS name"):
            load_config(_write(tmp_path, base + f'san_dns = ["{template}"]\n'))
    with pytest.raises(ConfigError, match=r"server.extra_ports.* is not valid"):
        load_config(_write(tmp_path, base.replace("port = 0\n", 'port = 0\nextra_ports = { "a/b" = 1 }\n')))


def test_dns_names_from_templates_are_valid_or_refused():
    long_serial = "A" * 60
    assert csr_attributes_for(POLICY, long_serial).subject_alt_names == [
        x509.DNSName(f"{long_serial.lower()}.pledges.example")]
    too_long = CsrAttrsSettings(subject=("CN",), san_dns=("pledge-{serial}.example",))
    with pytest.raises(Refusal) as refused:
        csr_attributes_for(too_long, long_serial)
    assert refused.value.status == 403 and "label" in refused.value.message


def test_without_templates_the_csr_names_are_certified_only_if_they_are_host_names():
    policy = CsrAttrsSettings(subject=("CN",))
    assert check_csr_identity(_csr("CN=x", ["Dev-1.example"]), policy, "SN-1") == ["dev-1.example"]
    with pytest.raises(Refusal) as refused:
        check_csr_identity(_csr("CN=x", ["../../etc.example"]), policy, "SN-1")
    assert refused.value.status == 400 and "dNSName" in refused.value.message


def test_the_crl_settings_are_checked_when_the_configuration_is_read(tmp_path):
    for name in ("tls.crt", "tls.key", "signer.crt", "mfg.crt", "web.crt", "ca.crt"):
        (tmp_path / name).write_text("x")
    base = ('role = "owner"\n[server]\nport = 0\ntls_cert = "tls.crt"\ntls_key = "tls.key"\n'
            '[database]\nurl = "sqlite:///owner.sqlite"\n'
            '[registrar]\nsigning_key = "pkcs11:token=t;object=k"\nsigning_cert = "signer.crt"\n'
            'manufacturer_cas = ["mfg.crt"]\nmasa_anchors = ["web.crt"]\n'
            '[est]\nca_key = "pkcs11:token=t;object=ca"\nca_cert = "ca.crt"\n')
    default = load_config(_write(tmp_path, base)).est
    assert default.crl_url is None and default.crl_days == 7
    est = load_config(_write(tmp_path, base + 'crl_url = "https://ra.example:8443/crl"\ncrl_days = 2\n')).est
    assert (est.crl_url, est.crl_days) == ("https://ra.example:8443/crl", 2)
    for extra, problem in [('crl_url = "ldap:///cn=crl"\n', r"est.crl_url must be an http"),
                           ('crl_url = "https:///crl"\n', r"est.crl_url must be an http"),
                           ("crl_days = 0\n", r"est.crl_days must be greater than 0")]:
        with pytest.raises(ConfigError, match=problem):
            load_config(_write(tmp_path, base + extra))


def test_the_cli_offers_the_revocation_reasons_the_database_keeps():
    from pledgeforge.commands.registrar import REVOCATION_REASONS as offered
    from pledgeforge.registrar.crl import REASONS
    from pledgeforge.registrar.db import REVOCATION_REASONS as kept

    assert offered == kept == tuple(REASONS)
