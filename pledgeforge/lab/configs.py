"""The lab's server configurations: config/masa.toml, cloud.toml and owner.toml.

Each names only the keys its server signs with, so each holds only the PIN
files of those keys' tokens (see pki.py).

They are the dataclasses the servers read (registrar/config.py), filled in
from the lab's layout and written by the same module that reads them, so a
setting can never be written in a form the servers do not accept.
"""

from __future__ import annotations

from pledgeforge.registrar.config import (CsrAttrsSettings, EstSettings, MasaConfig, MasaRateLimits,
                                          RegistrarConfig, ServerSettings, SignerSettings,
                                          TrustedCloudRegistrar, UpstreamSettings, write_config)

from .layout import HOST, LabLayout

#: the dNSName the owner CA puts in every LDevID
LDEVID_DNS_TEMPLATE = "{serial}.pledges.lab.pledgeforge.test"

#: The MASA's defaults (registrar.config.MasaRateLimits) allow a registrar 10 new vouchers a
#: second after a burst of 100, and an address 20 requests a second after 200. A lab is one
#: site enrolling a factory batch at once: `pledgeforge fleet run` sends 1,000 pledges through
#: one owner registrar (redirect) and one cloud registrar (est-domain), both on 127.0.0.1, at
#: 10 to 20 enrollments a second, and a voucher the MASA refuses with 429 becomes a 503 to the
#: pledge with the MASA's Retry-After, which it waits out. These limits leave an order of
#: magnitude of room above what this machine sustains, and still answer a runaway client with 429.
LAB_MASA_RATE_LIMITS = MasaRateLimits(address_rate_per_s=400.0, address_burst=4000,
                                      registrar_rate_per_s=200.0, registrar_burst=2000)


def _server(lab: LabLayout, role: str, tls: str) -> ServerSettings:
    cert, key = lab.tls_files(tls)
    extra = {name: port for name, port in lab.data["servers"][role]["ports"].items() if name != "main"}
    return ServerSettings(host=HOST, port=lab.port(role), tls_cert=cert, tls_key=key, extra_ports=extra)


def server_configs(lab: LabLayout) -> list[MasaConfig | RegistrarConfig]:
    """What each of the lab's servers runs with."""
    manufacturer_cas = (lab.pki("manufacturer-ca"),)
    masa = MasaConfig(
        path=lab.config_path("masa"), server=_server(lab, "masa", "masa"),
        database_url=lab.database_url("masa"), softhsm2_conf=None,
        signer=SignerSettings(lab.key_uri("masa", "voucher-signer"), lab.pki("masa-signer")),
        manufacturer_cas=manufacturer_cas,
        cloud_registrars=(TrustedCloudRegistrar("lab-cloud", lab.pki("cloud-signer")),),
        rate_limits=LAB_MASA_RATE_LIMITS)
    upstream = UpstreamSettings(anchors=(lab.pki("web-ca"),))
    cloud = RegistrarConfig(
        path=lab.config_path("cloud"), role="cloud", server=_server(lab, "cloud", "cloud"),
        database_url=lab.database_url("cloud"), softhsm2_conf=None,
        signer=SignerSettings(lab.key_uri("cloud", "registrar-signer"), lab.pki("cloud-signer"),
                              (lab.pki("web-ca"),)),
        manufacturer_cas=manufacturer_cas, upstream=upstream)
    owner = RegistrarConfig(
        path=lab.config_path("owner"), role="owner", server=_server(lab, "owner", "registrar"),
        database_url=lab.database_url("owner"), softhsm2_conf=None,
        signer=SignerSettings(lab.key_uri("registrar", "registrar-signer"), lab.pki("registrar-signer"),
                              (lab.pki("owner-ca"),)),
        manufacturer_cas=manufacturer_cas, upstream=upstream,
        est=EstSettings(
            ca_key_uri=lab.key_uri("owner", "owner-ca"), ca_cert=lab.pki("owner-ca"), certificate_days=365,
            crl_url=lab.url("owner") + "/crl",
            csrattrs=CsrAttrsSettings(subject=("CN", "serialNumber"), san_dns=(LDEVID_DNS_TEMPLATE,),
                                      signature_algorithm="ecdsa-with-SHA256"),
            additional_configuration_dir=lab.dir / "owner-config"))
    return [masa, cloud, owner]


_TITLES = {"masa": "MASA", "cloud": "cloud registrar", "owner": "owner registrar and EST server"}


def write_configs(lab: LabLayout, configs: list[MasaConfig | RegistrarConfig] | None = None) -> None:
    """Write the servers' configurations: `server_configs(lab)`, or these (a lab whose keys are
    behind its signing service writes them with the service's key URIs)."""
    for config in server_configs(lab) if configs is None else configs:
        write_config(config, f"The lab's {_TITLES[config.role]} (written by `pledgeforge lab up`).")
