"""The lab's server configurations: config/masa.toml, cloud.toml and owner.toml."""

from __future__ import annotations

import json
from pathlib import Path

from pledgeforge.atomicfile import atomic_write

from .layout import HOST, LabLayout


def _toml_string(value: str | Path) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _toml_list(values) -> str:
    return "[" + ", ".join(_toml_string(v) for v in values) + "]"


def write_configs(lab: LabLayout) -> None:
    d = lab.dir
    q = _toml_string

    def server(role: str, tls: str, extra: str = "") -> str:
        return (f"[server]\nhost = {q(HOST)}\nport = {lab.port(role)}\n"
                f"tls_cert = {q(d / 'tls' / f'{tls}.crt')}\ntls_key = {q(d / 'tls' / f'{tls}.key')}\n{extra}\n"
                f"[database]\nurl = {q(lab.database_url(role))}\n")

    masa = ("# The lab's MASA (written by `pledgeforge lab up`).\nrole = \"masa\"\n\n"
            + server("masa", "masa") +
            f"\n[masa]\nsigning_key = {q(lab.key_uri('masa', 'voucher-signer'))}\n"
            f"signing_cert = {q(lab.pki('masa-signer'))}\n"
            f"manufacturer_cas = {_toml_list([lab.pki('manufacturer-ca')])}\n"
            f"cloud_registrars = [{{ name = \"lab-cloud\", anchor = {q(lab.pki('cloud-signer'))} }}]\n")

    def registrar(role: str, key_token: str, signer_cert: str, chain: list[Path]) -> str:
        return (f"\n[registrar]\nsigning_key = {q(lab.key_uri(key_token, 'registrar-signer'))}\n"
                f"signing_cert = {q(lab.pki(signer_cert))}\nsigning_chain = {_toml_list(chain)}\n"
                f"manufacturer_cas = {_toml_list([lab.pki('manufacturer-ca')])}\n"
                f"masa_anchors = {_toml_list([lab.pki('web-ca')])}\n"
                "masa_timeout_s = 10\nmasa_attempts = 3\n")

    cloud = ("# The lab's cloud registrar (written by `pledgeforge lab up`).\nrole = \"cloud\"\n\n"
             + server("cloud", "cloud", f"extra_ports = {{ var = {lab.port('cloud', 'var')} }}\n")
             + registrar("cloud", "cloud", "cloud-signer", [lab.pki("web-ca")]))
    owner = ("# The lab's owner registrar and EST server (written by `pledgeforge lab up`).\n"
             "role = \"owner\"\n\n" + server("owner", "registrar")
             + registrar("owner", "owner", "registrar-signer", [lab.pki("owner-ca")])
             + f"\n[est]\nca_key = {q(lab.key_uri('owner', 'owner-ca'))}\n"
             f"ca_cert = {q(lab.pki('owner-ca'))}\ncertificate_days = 365\n"
             f"additional_configuration_dir = {q(d / 'owner-config')}\n\n"
             "[est.csrattrs]\nsubject = [\"CN\", \"serialNumber\"]\n"
             "san_dns = [\"{serial}.pledges.lab.pledgeforge.test\"]\n"
             "signature_algorithm = \"ecdsa-with-SHA256\"\n")
    for role, text in (("masa", masa), ("cloud", cloud), ("owner", owner)):
        atomic_write(lab.config_path(role), text.encode())
