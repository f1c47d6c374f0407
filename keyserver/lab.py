"""The lab's signing service: `pledgeforge lab up --signer [keyless|short-term]`.

The lab (registrar/lab.py) calls three functions here:

- `add_signing_service(lab, mode)` when it creates the lab: a TLS certificate
  for the service and a client certificate for each server (from the lab's web
  CA), the service's configuration (config/signer.toml: the lab's MASA, owner
  CA, owner registrar and cloud registrar keys, a client and delegations for
  each server), and new key URIs in the servers' configurations:
  `signer+https://127.0.0.1:PORT/keys/NAME?...`. The service is the lab's
  server "signer", started before the others.
  In short-term mode the owner registrar keeps a key of its own (token
  owner-node) and signs voucher-requests with it under a short-term
  delegation certificate (id-kp-cmcRA, 8 hours) that the service issues
  with the owner CA key; `pledgeforge signer renew --watch` renews it.
- `before_registrars(lab)` once the service answers: in short-term mode, a
  certificate for the node (if none is valid) and the renewal process.
- `stop_renewal(lab)` and `signer_status(lab)` for `lab down` and `lab status`.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

from cryptography.x509.oid import ExtendedKeyUsageOID

from pledgeforge.atomicfile import atomic_write
from pledgeforge.hsm import keystore
from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.keyuri import SignerUri
from pledgeforge.hsm.x509 import issue_certificate

ROLE = "signer"
MODES = ("keyless", "short-term")
NODE_TOKEN = "owner-node"
NODE_SUBJECT = "CN=pledgeforge lab owner registrar node,O=pledgeforge lab owner"
CLIENT_ORG = "O=pledgeforge lab signer clients"
#: which lab key each server signs with, as the service names it: (token, object)
KEYS = {"masa-voucher": ("masa", "voucher-signer"), "owner-registrar": ("owner", "registrar-signer"),
        "owner-ca": ("owner", "owner-ca"), "cloud-registrar": ("cloud", "registrar-signer")}
CERTS = {"masa-voucher": ("masa-signer", ["manufacturer-ca"]),
         "owner-registrar": ("registrar-signer", ["owner-ca"]),
         "owner-ca": ("owner-ca", []), "cloud-registrar": ("cloud-signer", ["web-ca"])}


def _lab_module():
    # The lab's own file functions, so that what is made here is made as the rest of the lab.
    from pledgeforge.registrar import lab as lab_module

    return lab_module


def client_uri(lab, key: str, client: str) -> SignerUri:
    tls = lab.dir / "tls"
    return SignerUri(host=_lab_module().HOST, port=lab.port(ROLE), key=key,
                     client_cert=str(tls / f"signer-client-{client}.crt"),
                     client_key=str(tls / f"signer-client-{client}.key"), ca=str(lab.pki("web-ca")))


def _keys(mode: str) -> list[str]:
    """The keys the service holds: in short-term mode the owner registrar signs with its own."""
    return [k for k in KEYS if not (mode == "short-term" and k == "owner-registrar")]


def _clients(mode: str) -> list[str]:
    return ["masa", "owner", "cloud"] + (["owner-node"] if mode == "short-term" else [])


def add_signing_service(lab, mode: str) -> None:
    """Put the lab's registrar-side keys behind a signing service (see the module docstring)."""
    lab_module = _lab_module()
    if mode not in MODES:
        raise lab_module.LabError(f"--signer must be {' or '.join(MODES)}, not {mode!r}")
    d = lab.dir
    web = keystore.open_signer(lab.key_uri("vendor", "web-ca"))
    web_cert = load_certificate_file(str(lab.pki("web-ca")))[0]
    lab.data["servers"][ROLE] = {
        "ports": {"main": lab_module._free_port()}, "pid": None, "stage": 0,
        "module": "pledgeforge.keyserver.server", "probe_identity": False,
        "config": str(lab.config_path(ROLE)), "log": str(lab.log_path(ROLE)),
        "database": lab.database_url(ROLE)}
    lab_module._ensure_tls(d / "tls", "signer", lambda pub: issue_certificate(
        web, web_cert, pub, "CN=localhost,O=pledgeforge lab signing service", key_usage="tls",
        extended_key_usage=[ExtendedKeyUsageOID.SERVER_AUTH], dns_names=["localhost"],
        ip_addresses=[lab_module.HOST]))
    for client in _clients(mode):
        lab_module._ensure_tls(d / "tls", f"signer-client-{client}", lambda pub, c=client: issue_certificate(
            web, web_cert, pub, f"CN=pledgeforge lab {c},{CLIENT_ORG}", key_usage="tls",
            extended_key_usage=[ExtendedKeyUsageOID.CLIENT_AUTH]))
    node_key = None
    if mode == "short-term":
        pin = (d / "secrets" / "user.pin").read_text().strip()
        so_pin = (d / "secrets" / "so.pin").read_text().strip()
        lab.softhsm.ensure_token(NODE_TOKEN, pin, so_pin)
        node_key = lab.key_uri(NODE_TOKEN, "registrar-signer")
        lab_module._ensure_key(node_key)
    atomic_write(lab.config_path(ROLE), _signer_config(lab, mode).encode())
    _point_servers_at_the_service(lab, node_key)
    lab.data["signer"] = {"mode": mode, "url": lab.url(ROLE), "config": str(lab.config_path(ROLE)),
                          "keys": sorted(_keys(mode))}
    if mode == "short-term":
        lab.data["signer"]["renewal"] = {"pid": None, "cert": str(lab.pki("owner-node-registrar")),
                                         "log": str(lab.dir / "logs" / "renewal.log")}


def _signer_config(lab, mode: str) -> str:
    lab_module = _lab_module()
    q, ql = lab_module._toml_string, lab_module._toml_list
    now = dt.datetime.now(dt.timezone.utc)
    start = (now - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    end = (now + dt.timedelta(days=3650)).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = ("# The lab's signing service (written by `pledgeforge lab up --signer`).\n"
            'node = "lab-signer"\n\n'
            f"[server]\nhost = {q(lab_module.HOST)}\nport = {lab.port(ROLE)}\n"
            f"tls_cert = {q(lab.dir / 'tls' / 'signer.crt')}\ntls_key = {q(lab.dir / 'tls' / 'signer.key')}\n"
            f"client_cas = {ql([lab.pki('web-ca')])}\n\n"
            f"[database]\nurl = {q(lab.database_url(ROLE))}\n\n"
            "[hsm]\nworkers_per_token = 1\n\n")
    for name in _keys(mode):
        (token, obj), (cert, chain) = KEYS[name], CERTS[name]
        text += (f"[keys.{name}]\nuri = {q(lab.key_uri(token, obj))}\ncert = {q(lab.pki(cert))}\n"
                 f"chain = {ql([lab.pki(c) for c in chain])}\n\n")
    for client in _clients(mode):
        text += (f"[clients.{client}]\nsubject = {q(f'CN=pledgeforge lab {client},{CLIENT_ORG}')}\n"
                 "rate_per_s = 50\nburst = 500\n\n")

    def delegation(name, delegator, client, key, operations, **scope) -> str:
        lines = [f"name = {q(name)}", f"delegator = {q(delegator)}", f"delegate = {q(client)}",
                 f"key = {q(key)}", f"operations = {ql(operations)}", f"not_before = {start}",
                 f"not_after = {end}"] + [f"{k} = {v}" for k, v in scope.items()]
        return "[[delegations]]\n" + "\n".join(lines) + "\n\n"

    every = ql(["*"])
    # est-domain and additional-configuration-url name the owner registrar on loopback.
    text += delegation("masa-vouchers", "pledgeforge lab manufacturer", "masa", "masa-voucher",
                       ["voucher"], serials=every, domains=ql([lab_module.HOST, "localhost"]))
    text += delegation("cloud-voucher-requests", "pledgeforge lab cloud operator", "cloud",
                       "cloud-registrar", ["voucher-request"], serials=every)
    if mode == "keyless":
        text += delegation("owner-voucher-requests", "pledgeforge lab owner", "owner",
                           "owner-registrar", ["voucher-request"], serials=every)
    text += delegation("owner-ldevids", "pledgeforge lab owner", "owner", "owner-ca", ["certificate"],
                       subjects=every, domains=ql(["*.pledges.lab.pledgeforge.test"]))
    if mode == "short-term":
        text += delegation("owner-registrar-node", "pledgeforge lab owner", "owner-node", "owner-ca",
                           ["delegation-certificate"], subjects=ql([NODE_SUBJECT]),
                           certificate_hours=8)
    return text


def _point_servers_at_the_service(lab, node_key) -> None:
    """Each server's key URIs become the service's (the owner registrar's, in short-term
    mode, its own key with the short-term certificate)."""
    q = _lab_module()._toml_string
    changes = {
        "masa": [(lab.key_uri("masa", "voucher-signer"), client_uri(lab, "masa-voucher", "masa"))],
        "cloud": [(lab.key_uri("cloud", "registrar-signer"), client_uri(lab, "cloud-registrar", "cloud"))],
        "owner": [(lab.key_uri("owner", "owner-ca"), client_uri(lab, "owner-ca", "owner"))],
    }
    if node_key is None:
        changes["owner"].append((lab.key_uri("owner", "registrar-signer"),
                                 client_uri(lab, "owner-registrar", "owner")))
    for role, swaps in changes.items():
        path = lab.config_path(role)
        text = path.read_text()
        for old, new in swaps:
            assert q(old) in text, f"{path} does not name {old}"
            text = text.replace(q(old), q(new))
        if role == "owner" and node_key is not None:
            old_key = q(lab.key_uri("owner", "registrar-signer"))
            text = text.replace(f"signing_key = {old_key}", f"signing_key = {q(node_key)}")
            text = text.replace(f"signing_cert = {q(lab.pki('registrar-signer'))}",
                                f"signing_cert = {q(lab.pki('owner-node-registrar'))}")
        atomic_write(path, text.encode())


# --------------------------------------------------------------------------- short-term mode

def renewal(lab):
    """The owner registrar node's renewal: its key, the service's owner CA key, its certificate."""
    from .renewal import Renewal

    return Renewal(client_uri(lab, "owner-ca", "owner-node"), lab.key_uri(NODE_TOKEN, "registrar-signer"),
                   NODE_SUBJECT, lab.pki("owner-node-registrar"))


def _renewal_command(lab) -> list[str]:
    r = renewal(lab)
    return [sys.executable, "-m", "pledgeforge", "signer", "renew", "--watch", "--service", str(r.service),
            "--key", str(r.key), "--subject", r.subject, "--cert", str(r.cert_path)]


def _renewal_alive(lab) -> bool:
    info = lab.data["signer"]["renewal"]
    return _lab_module().server_alive(info["pid"], Path(info["cert"]), "renew")


def before_registrars(lab) -> None:
    """Short-term mode: a valid certificate for the node, and its renewal process running."""
    if lab.data["signer"]["mode"] != "short-term":
        return
    r = renewal(lab)
    cert = r.current()
    if cert is None or r.due(cert, r.written_at()) <= dt.datetime.now(dt.timezone.utc):
        r.renew()
    if not _renewal_alive(lab):
        info = lab.data["signer"]["renewal"]
        log = open(info["log"], "ab")
        try:
            proc = subprocess.Popen(_renewal_command(lab), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                    cwd=lab.dir)
        finally:
            log.close()
        info["pid"] = proc.pid


def stop_renewal(lab, timeout_s: float) -> list[str]:
    info = lab.data["signer"].get("renewal")
    if info is None:
        return []
    stopped = []
    if _renewal_alive(lab):
        _lab_module().stop_process(info["pid"], timeout_s)
        stopped.append("renewal")
    info["pid"] = None
    return stopped


def signer_status(lab) -> dict:
    state = {"mode": lab.data["signer"]["mode"], "url": lab.url(ROLE), "keys": lab.data["signer"]["keys"],
             "config": lab.data["signer"]["config"]}
    info = lab.data["signer"].get("renewal")
    if info is not None:
        cert = renewal(lab).current()
        state["renewal"] = {"running": _renewal_alive(lab), "pid": info["pid"] if _renewal_alive(lab) else None,
                            "cert": info["cert"], "log": info["log"],
                            "valid_until": cert.not_valid_after_utc.isoformat() if cert else None}
    return state
