"""Server configuration files: written from the dataclasses they are read into, and every
table refuses keys it does not know, naming the closest known one."""

from __future__ import annotations

import tomllib
from dataclasses import replace

import pytest

from pledgeforge.hsm.keystore import parse_key_uri
from pledgeforge.registrar.config import (ConfigError, CsrAttrsSettings, EstSettings, MasaConfig,
                                          MasaRateLimits, RegistrarConfig, ServerSettings, SignerSettings,
                                          TrustedCloudRegistrar, UpstreamSettings, load_config, write_config)

KEY = ("pkcs11:token=masa;object=voucher-signer?x-module-env=SOFTHSM2_CONF=/srv/hsm/softhsm2.conf"
       "&pin-source=file:/srv/hsm/masa.pin")


@pytest.fixture
def files(tmp_path):
    for name in ("tls.crt", "tls.key", "signer.crt", "chain.crt", "mfg.crt", "web.crt", "ca.crt", "softhsm2.conf"):
        (tmp_path / name).write_text("x")
    return tmp_path


def _server(d) -> ServerSettings:
    return ServerSettings(host="127.0.0.2", port=9443, tls_cert=d / "tls.crt", tls_key=d / "tls.key",
                          extra_ports={"var": 9444}, shutdown_timeout_s=2.5)


def test_a_masa_configuration_reads_back_as_written(files):
    config = MasaConfig(
        path=files / "masa.toml", server=_server(files), database_url=f"sqlite:///{files / 'masa.sqlite'}",
        softhsm2_conf=files / "softhsm2.conf",
        signer=SignerSettings(parse_key_uri(KEY), files / "signer.crt", (files / "chain.crt",)),
        manufacturer_cas=(files / "mfg.crt",), check_time=False, nonceless_lifetime_s=60,
        cloud_registrars=(TrustedCloudRegistrar("cloud-a", files / "web.crt", ("owner-1", "owner-2")),),
        max_request_age_s=30, max_request_future_s=10,
        rate_limits=MasaRateLimits(address_rate_per_s=1.5, address_burst=3, registrar_rate_per_s=0.5,
                                   registrar_burst=2, tracked_clients=7))
    write_config(config, "a MASA\nof our own")
    assert load_config(config.path) == config
    text = config.path.read_text()
    assert text.startswith("# a MASA\n# of our own\n")
    assert tomllib.loads(text)["masa"]["rate_limits"]["tracked_clients"] == 7


def test_an_owner_and_a_cloud_registrar_read_back_as_written(files):
    owner = RegistrarConfig(
        path=files / "owner.toml", role="owner", server=_server(files),
        database_url="postgresql://registrar@db.example/owner", softhsm2_conf=None,
        signer=SignerSettings(parse_key_uri(KEY.replace("masa", "registrar")), files / "signer.crt"),
        manufacturer_cas=(files / "mfg.crt",),
        upstream=UpstreamSettings(anchors=(files / "web.crt",), masa_url="masa.example:9443", timeout_s=3.0,
                                  attempts=5, backoff_s=0.25),
        require_pledge_list=False,
        est=EstSettings(ca_key_uri=parse_key_uri("tpm:handle=0x81000010?tcti=swtpm:path=/srv/tpm/swtpm.sock"),
                        ca_cert=files / "ca.crt", ca_chain=(files / "chain.crt",), certificate_days=30,
                        csrattrs=CsrAttrsSettings(("CN",), ("{serial}.example",), "ecdsa-with-SHA384"),
                        additional_configuration_dir=files / "not-yet"))
    write_config(owner)
    assert load_config(owner.path) == owner
    cloud = replace(owner, path=files / "cloud.toml", role="cloud", est=None, require_pledge_list=True)
    write_config(cloud)
    assert load_config(cloud.path) == cloud


def test_a_pin_is_never_written_into_a_configuration(files):
    signer = SignerSettings(parse_key_uri("pkcs11:token=masa;object=k?pin-value=1234"), files / "signer.crt")
    config = MasaConfig(path=files / "masa.toml", server=_server(files), database_url="sqlite:///:memory:",
                        softhsm2_conf=None, signer=signer, manufacturer_cas=(files / "mfg.crt",))
    with pytest.raises(ConfigError, match="never the PIN itself"):
        write_config(config)
    assert not config.path.exists()


OWNER = ('role = "owner"\n'
         '[server]\nport = 0\ntls_cert = "tls.crt"\ntls_key = "tls.key"\n'
         '[database]\nurl = "sqlite:///owner.sqlite"\n'
         '[hsm]\nsofthsm2_conf = "softhsm2.conf"\n'
         '[registrar]\nsigning_key = "pkcs11:token=t;object=k"\nsigning_cert = "signer.crt"\n'
         'manufacturer_cas = ["mfg.crt"]\nmasa_anchors = ["web.crt"]\n'
         '[est]\nca_key = "pkcs11:token=t;object=ca"\nca_cert = "ca.crt"\n'
         '[est.csrattrs]\nsubject = ["CN"]\n')


@pytest.mark.parametrize("change, problem", [
    (('role = "owner"\n', 'role = "owner"\ncheck_tme = false\n'),
     r"^\S+owner.toml: check_tme is not a known setting; did you mean check_time\?"),
    (("port = 0\n", "port = 0\nshutdown_timeout = 3\n"),
     r"server.shutdown_timeout is not a known setting; did you mean shutdown_timeout_s\?"),
    (("port = 0\n", "prot = 0\n"), r"server.prot is not a known setting; did you mean port\?"),
    (('url = "sqlite:///owner.sqlite"\n', 'url = "sqlite:///owner.sqlite"\npool = 3\n'),
     r"database.pool is not a known setting \(known: url\)"),
    (('softhsm2_conf = "softhsm2.conf"\n', 'softhsm_conf = "softhsm2.conf"\n'),
     r"hsm.softhsm_conf is not a known setting; did you mean softhsm2_conf\?"),
    (('masa_anchors = ["web.crt"]\n', 'masa_anchors = ["web.crt"]\nmasa_timout_s = 3\n'),
     r"registrar.masa_timout_s is not a known setting; did you mean masa_timeout_s\?"),
    (('ca_cert = "ca.crt"\n', 'ca_cert = "ca.crt"\ncertificate_day = 3\n'),
     r"est.certificate_day is not a known setting; did you mean certificate_days\?"),
    (('subject = ["CN"]\n', 'subjects = ["CN"]\n'),
     r"est.csrattrs.subjects is not a known setting; did you mean subject\?"),
    (("[registrar]\n", "[registar]\n"), r"registar is not a known setting; did you mean registrar\?"),
])
def test_every_table_refuses_unknown_keys_with_a_hint(files, change, problem):
    path = files / "owner.toml"
    path.write_text(OWNER)
    assert load_config(path).est.csrattrs.subject == ("CN",)
    path.write_text(OWNER.replace(*change))
    with pytest.raises(ConfigError, match=problem):
        load_config(path)


def test_tables_of_another_role_are_refused(files):
    masa = ('role = "masa"\n[server]\nport = 0\ntls_cert = "tls.crt"\ntls_key = "tls.key"\n'
            '[database]\nurl = "sqlite:///masa.sqlite"\n'
            '[masa]\nsigning_key = "pkcs11:token=t;object=k"\nsigning_cert = "signer.crt"\n'
            'manufacturer_cas = ["mfg.crt"]\n'
            'cloud_registrars = [{ name = "c", anchor = "web.crt", act_for = ["o"] }]\n')
    path = files / "masa.toml"
    path.write_text(masa)
    with pytest.raises(ConfigError, match=r"masa.cloud_registrars\[0\].act_for is not a known setting; "
                                          r"did you mean acts_for\?"):
        load_config(path)
    path.write_text(masa.replace("act_for", "acts_for") + '[registrar]\nmasa_anchors = ["web.crt"]\n')
    with pytest.raises(ConfigError, match=r"masa.toml: registrar is not a known setting"):
        load_config(path)
