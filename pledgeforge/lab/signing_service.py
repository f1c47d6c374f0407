"""The lab's signing service: `pledgeforge lab up --signer [keyless|short-term]`.

The service is the lab server "signer" (`SIGNER`, a `ServerKind` of stage 0:
it starts, and answers, before the MASA and the registrars, which open their
keys through it). `add(lab, mode)`, when the lab is created, makes

- a TLS certificate for the service and a TLS client certificate for each
  server (from the lab's web CA, which the service takes as its client CA);
- the service's configuration (config/signer.toml, written from
  keyserver.config's dataclasses): the MASA's voucher key, the owner and cloud
  registrars' voucher-request keys and the owner CA key, each by its own
  token's key URI, so the service holds those tokens' PINs; a client and
  delegations for each server;
- the servers' configurations again, each naming its keys as
  `signer+https://127.0.0.1:PORT/keys/NAME?client-cert=...` and holding no
  token PIN at all, only its client certificate and key for the service.

In short-term mode the owner registrar keeps a key of its own (token
registrar-node, whose PIN only its configuration names) and signs
voucher-requests with it under a short-term delegation certificate
(id-kp-cmcRA, 8 hours) that the service issues with the owner CA key. Once
the service answers, the lab gets the node a certificate (if none is valid)
and starts `pledgeforge signer renew --watch`, which renews it; `lab down`
stops that process, `lab status` shows it.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from dataclasses import replace

from cryptography.x509.oid import ExtendedKeyUsageOID

from pledgeforge.errors import UsageError
from pledgeforge.hsm import keystore
from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.keyuri import SignerUri
from pledgeforge.hsm.x509 import issue_certificate, parse_dn
from pledgeforge.keyserver.config import EXTENDED_KEY_USAGES, KeySettings, SignerConfig, write_signer_config
from pledgeforge.keyserver.policy import Client, Delegation, Policy
from pledgeforge.keyserver.renewal import Renewal
from pledgeforge.registrar.config import MasaConfig, RegistrarConfig, ServerSettings, SignerSettings

from . import pki
from .configs import server_configs, write_configs
from .layout import HOST, LabLayout
from .processes import free_port, server_alive, stop_process
from .servers import ServerKind, register_server_kind

ROLE = "signer"
MODES = ("keyless", "short-term")
NODE_TOKEN = "registrar-node"
NODE_KEY = "registrar-signer"
NODE_SUBJECT = "CN=pledgeforge lab owner registrar node,O=pledgeforge lab owner"
CLIENT_ORG = "O=pledgeforge lab signer clients"
#: the lab's keys the service can hold, as it names them: (token, object)
KEYS = {"masa-voucher": ("masa", "voucher-signer"), "owner-registrar": ("registrar", "registrar-signer"),
        "owner-ca": ("owner", "owner-ca"), "cloud-registrar": ("cloud", "registrar-signer")}
#: each key's certificate and chain (pki/NAME.crt)
CERTS = {"masa-voucher": ("masa-signer", ["manufacturer-ca"]),
         "owner-registrar": ("registrar-signer", ["owner-ca"]),
         "owner-ca": ("owner-ca", []), "cloud-registrar": ("cloud-signer", ["web-ca"])}
#: how long the lab's delegations last: as long as its certificates
DELEGATION_DAYS = 3650


def signer_mode(lab: LabLayout) -> str | None:
    """The lab's signing-service mode, or None for a lab without one."""
    entry = lab.data["servers"].get(ROLE)
    return entry["mode"] if entry else None


def check_mode(lab: LabLayout, wanted: str | None) -> None:
    """`lab up --signer MODE` on an existing lab: it must have been made so."""
    have = signer_mode(lab)
    if wanted is not None and wanted != have:
        made = f"with a {have} signing service" if have else "without a signing service"
        raise UsageError(f"the lab in {lab.dir} was created {made}; create another lab "
                         f"directory for --signer {wanted}")


def held_keys(mode: str) -> list[str]:
    """The keys the service holds: in short-term mode the owner registrar signs with its own."""
    return sorted(k for k in KEYS if not (mode == "short-term" and k == "owner-registrar"))


def _clients(mode: str) -> list[str]:
    return ["masa", "owner", "cloud"] + (["owner-node"] if mode == "short-term" else [])


def client_uri(lab: LabLayout, key: str, client: str) -> SignerUri:
    """The key `key` on the lab's service, as the client `client` reaches it."""
    cert, key_file = lab.tls_files(f"signer-client-{client}")
    return SignerUri(host=HOST, port=lab.port(ROLE), key=key, client_cert=str(cert),
                     client_key=str(key_file), ca=str(lab.pki("web-ca")))


# --------------------------------------------------------------------------- creating

def add(lab: LabLayout, mode: str) -> None:
    """Put the lab's registrar-side keys behind a signing service (see the module docstring)."""
    if mode not in MODES:
        raise UsageError(f"--signer must be {' or '.join(MODES)}, not {mode!r}")
    lab.data["servers"][ROLE] = {
        "ports": {"main": free_port(HOST)}, "pid": None, "mode": mode,
        "config": str(lab.config_path(ROLE)), "log": str(lab.log_path(ROLE)),
        "database": lab.database_url(ROLE)}
    web = keystore.open_signer(lab.key_uri("web", "web-ca"))
    web_cert = load_certificate_file(str(lab.pki("web-ca")))[0]
    pki.ensure_tls(lab, "signer", lambda pub: issue_certificate(
        web, web_cert, pub, "CN=localhost,O=pledgeforge lab signing service", key_usage="tls",
        extended_key_usage=[ExtendedKeyUsageOID.SERVER_AUTH], dns_names=["localhost"], ip_addresses=[HOST]))
    for client in _clients(mode):
        pki.ensure_tls(lab, f"signer-client-{client}", lambda pub, c=client: issue_certificate(
            web, web_cert, pub, _client_subject(c), key_usage="tls",
            extended_key_usage=[ExtendedKeyUsageOID.CLIENT_AUTH]))
    if mode == "short-term":
        pki.ensure_token(lab, NODE_TOKEN)
        pki.ensure_key(lab.key_uri(NODE_TOKEN, NODE_KEY))
        lab.data["softhsm"]["tokens"][NODE_TOKEN] = str(lab.pin_file(NODE_TOKEN))
        lab.data["servers"][ROLE]["renewal"] = {"pid": None, "cert": str(_node_certificate(lab)),
                                                "log": str(lab.log_path("renewal"))}
    write_signer_config(service_config(lab, mode),
                        "The lab's signing service (written by `pledgeforge lab up --signer`).")
    write_configs(lab, [_behind_the_service(lab, config, mode) for config in server_configs(lab)])


def _client_subject(client: str) -> str:
    return f"CN=pledgeforge lab {client},{CLIENT_ORG}"


def _node_certificate(lab: LabLayout):
    return lab.pki("registrar-node")


def service_config(lab: LabLayout, mode: str) -> SignerConfig:
    """What the lab's service runs with."""
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    window = dict(not_before=now - dt.timedelta(hours=1), not_after=now + dt.timedelta(days=DELEGATION_DAYS))
    cert, key = lab.tls_files("signer")
    keys = {}
    for name in held_keys(mode):
        (token, obj), (certificate, chain) = KEYS[name], CERTS[name]
        keys[name] = KeySettings(name, lab.key_uri(token, obj), lab.pki(certificate),
                                 tuple(lab.pki(c) for c in chain))
    clients = {c: Client(c, parse_dn(_client_subject(c)), rate_per_s=50.0, burst=500) for c in _clients(mode)}
    every = ("*",)
    delegations = [
        # est-domain and additional-configuration-url name the owner registrar on loopback.
        Delegation("masa-vouchers", "pledgeforge lab manufacturer", "masa", "masa-voucher", ("voucher",),
                   serials=every, domains=(HOST, "localhost"), **window),
        Delegation("cloud-voucher-requests", "pledgeforge lab cloud operator", "cloud", "cloud-registrar",
                   ("voucher-request",), serials=every, **window),
        Delegation("owner-ldevids", "pledgeforge lab owner", "owner", "owner-ca", ("certificate", "crl"),
                   subjects=every, domains=("*.pledges.lab.pledgeforge.test",),
                   extended_key_usages=(EXTENDED_KEY_USAGES["clientAuth"],), **window),
    ]
    if mode == "keyless":
        delegations.append(Delegation("owner-voucher-requests", "pledgeforge lab owner", "owner",
                                      "owner-registrar", ("voucher-request",), serials=every, **window))
    else:
        delegations.append(Delegation("owner-registrar-node", "pledgeforge lab owner", "owner-node", "owner-ca",
                                      ("delegation-certificate",), subjects=(NODE_SUBJECT,),
                                      certificate_hours=8.0, **window))
    return SignerConfig(
        path=lab.config_path(ROLE), node="lab-signer",
        server=ServerSettings(host=HOST, port=lab.port(ROLE), tls_cert=cert, tls_key=key),
        client_cas=(lab.pki("web-ca"),), database_url=lab.database_url(ROLE), keys=keys,
        policy=Policy(clients, tuple(delegations)), workers_per_token=1)


def _behind_the_service(lab: LabLayout, config: MasaConfig | RegistrarConfig,
                        mode: str) -> MasaConfig | RegistrarConfig:
    """A server's configuration with its keys on the service (the owner registrar's own
    voucher-request key, in short-term mode, with its short-term certificate)."""
    if config.role == "masa":
        return replace(config, signer=replace(config.signer, key_uri=client_uri(lab, "masa-voucher", "masa")))
    if config.role == "cloud":
        return replace(config, signer=replace(config.signer,
                                              key_uri=client_uri(lab, "cloud-registrar", "cloud")))
    est = replace(config.est, ca_key_uri=client_uri(lab, "owner-ca", "owner"))
    if mode == "keyless":
        signer = replace(config.signer, key_uri=client_uri(lab, "owner-registrar", "owner"))
    else:
        signer = SignerSettings(lab.key_uri(NODE_TOKEN, NODE_KEY), _node_certificate(lab),
                                (lab.pki("owner-ca"),))
    return replace(config, signer=signer, est=est)


# --------------------------------------------------------------------------- short-term mode

def renewal(lab: LabLayout) -> Renewal:
    """The owner registrar node's renewal: the owner CA key on the service, the node's own
    key, its certificate."""
    return Renewal(client_uri(lab, "owner-ca", "owner-node"), lab.key_uri(NODE_TOKEN, NODE_KEY),
                   NODE_SUBJECT, _node_certificate(lab))


def _renewal_command(lab: LabLayout) -> list[str]:
    r = renewal(lab)
    return [sys.executable, "-m", "pledgeforge", "signer", "renew", "--watch", "--service", str(r.service),
            "--key", str(r.key), "--subject", r.subject, "--cert", str(r.cert_path)]


def _renewal_alive(lab: LabLayout) -> bool:
    info = lab.data["servers"][ROLE]["renewal"]
    return server_alive(info["pid"], _node_certificate(lab), "renew")


def _started(lab: LabLayout) -> None:
    """Short-term mode: a valid certificate for the node, and its renewal process running."""
    if signer_mode(lab) != "short-term":
        return
    r = renewal(lab)
    cert = r.current()
    if cert is None or r.due(cert, r.written_at()) <= dt.datetime.now(dt.timezone.utc):
        r.renew()
    if not _renewal_alive(lab):
        info = lab.data["servers"][ROLE]["renewal"]
        log = open(info["log"], "ab")
        try:
            proc = subprocess.Popen(_renewal_command(lab), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                    cwd=lab.dir)
        finally:
            log.close()
        info["pid"] = proc.pid


def _stopping(lab: LabLayout, timeout_s: float) -> list[str]:
    info = lab.data["servers"][ROLE].get("renewal")
    if info is None:
        return []
    stopped = []
    if _renewal_alive(lab):
        stop_process(info["pid"], timeout_s)
        stopped.append("renewal")
    info["pid"] = None
    return stopped


def _describe(lab: LabLayout) -> dict:
    state = {"mode": signer_mode(lab), "keys": held_keys(signer_mode(lab))}
    info = lab.data["servers"][ROLE].get("renewal")
    if info is not None:
        cert = renewal(lab).current()
        running = _renewal_alive(lab)
        state["renewal"] = {"running": running, "pid": info["pid"] if running else None,
                            "cert": info["cert"], "log": info["log"],
                            "valid_until": cert.not_valid_after_utc.isoformat() if cert else None}
    return state


SIGNER = ServerKind(ROLE, "web-ca", module="pledgeforge.keyserver.server",
                    # its clients are the servers, with certificates from the web CA
                    probe_identity=None, stage=0, on_started=_started, on_stopping=_stopping,
                    describe=_describe)
register_server_kind(SIGNER)


__all__ = ["SIGNER", "MODES", "NODE_SUBJECT", "add", "check_mode", "client_uri", "held_keys", "signer_mode",
           "renewal", "service_config"]
