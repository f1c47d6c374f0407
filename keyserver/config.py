"""The signing service's configuration file (TOML): read into dataclasses, written from them.

    node = "signer-1"                  # names this service in audit records and trace headers

    [server]
    host = "127.0.0.1"
    port = 9443
    tls_cert = "tls/signer.crt"
    tls_key = "tls/signer.key"
    client_cas = ["pki/clients-ca.crt"]   # client certificates must chain to one of these

    [database]
    url = "sqlite:///db/signer.sqlite"    # audit, replay cache, rate counters

    [hsm]
    softhsm2_conf = "softhsm/softhsm2.conf"   # as in the registrars' files
    workers_per_token = 2                     # signing processes for each PKCS#11 key

    [requests]
    window_s = 300        # how far a request's timestamp may be from the service's clock
    max_batch = 1000      # items in one batch request

    [keys.masa]
    uri = "pkcs11:token=masa;object=voucher-signer?pin-source=file:..."
    cert = "pki/masa-signer.crt"
    chain = []

    [clients.masa]
    subject = "CN=masa,O=Example"     # the subject of its TLS client certificate
    rate_per_s = 50                   # signatures per second, refilling a bucket of
    burst = 200                       # this many

    [[delegations]]                   # see policy.py
    ...

It is read with the registrar's table reader (registrar/config.py), so every
mistake is one ConfigError naming the file and the key, and every table
refuses keys it does not know, naming the closest known one ("did you mean
...?"). `write_signer_config` writes a file from the same dataclasses
`load_signer_config` returns (the lab writes its signing service's file so).

Only the policy (clients and delegations) is reloaded while serving (SIGHUP
or a change of the file); server, database, HSM and key settings are read
at start.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import tomli_w
from cryptography.x509.oid import ExtendedKeyUsageOID

from pledgeforge.atomicfile import atomic_write
from pledgeforge.hsm.errors import CertificateError
from pledgeforge.hsm.identity_names import IdentityNameError, check_name
from pledgeforge.hsm.keyuri import KeyUri
from pledgeforge.hsm.x509 import parse_dn
from pledgeforge.registrar.config import (ConfigError, ServerSettings, Table, key_uri_text,
                                          read_database_url, read_server_settings, read_toml,
                                          server_document)

from .policy import OPERATIONS, SCOPE_NEEDED, Client, Delegation, Policy, subject_text

#: names a delegation may use for the extended key usages of certificates it lets issue
EXTENDED_KEY_USAGES = {"clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH.dotted_string,
                       "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH.dotted_string}
_USAGE_NAMES = {oid: name for name, oid in EXTENDED_KEY_USAGES.items()}
MAX_WORKERS_PER_TOKEN = 32


@dataclass(frozen=True)
class KeySettings:
    name: str
    uri: KeyUri
    cert: Path
    chain: tuple[Path, ...] = ()


@dataclass(frozen=True)
class SignerConfig:
    path: Path
    node: str
    server: ServerSettings
    client_cas: tuple[Path, ...]
    database_url: str
    keys: dict[str, KeySettings]
    policy: Policy
    softhsm2_conf: Path | None = None
    workers_per_token: int = 1
    window_s: int = 300
    max_batch: int = 1000


# --------------------------------------------------------------------------- reading

def load_signer_config(path: str | Path) -> SignerConfig:
    """Read the service's configuration; keys that no table has are refused."""
    path, top = read_toml(path)
    config = _config(path, top)
    for table in top.tables:
        table.check_unknown()
    return config


def load_policy(path: str | Path, keys: dict[str, KeySettings]) -> Policy:
    """The clients and delegations of the file, checked against the keys served now."""
    config = load_signer_config(path)
    for delegation in config.policy.delegations:
        if delegation.key not in keys:
            raise ConfigError(f"{config.path}: delegation {delegation.name} names key "
                              f"{delegation.key}, which this service does not hold since its start "
                              "(keys take a restart)")
    return config.policy


def _config(path: Path, top: Table) -> SignerConfig:
    node = top.name("node")
    server_table = top.table("server")
    server = read_server_settings(server_table)
    if server.extra_ports:
        raise server_table.fail("extra_ports", "is not for a signing service: it listens on one port")
    client_cas = server_table.paths("client_cas")
    if not client_cas:
        raise server_table.fail("client_cas", "must name at least one CA (clients authenticate "
                                              "with certificates it issued)")
    database_url = read_database_url(top.table("database"))
    hsm = top.table("hsm", required=False)
    softhsm2_conf, workers = None, 1
    if hsm is not None:
        softhsm2_conf = hsm.path("softhsm2_conf", None)
        workers = hsm.positive("workers_per_token", int, 1)
        if workers > MAX_WORKERS_PER_TOKEN:
            raise hsm.fail("workers_per_token", f"must be at most {MAX_WORKERS_PER_TOKEN}, not {workers}")
    requests = top.table("requests", required=False) or top.sub("requests", {})
    keys = _keys(top, softhsm2_conf)
    return SignerConfig(
        path=path, node=node, server=server, client_cas=client_cas, database_url=database_url,
        keys=keys, policy=_policy(top, keys), softhsm2_conf=softhsm2_conf, workers_per_token=workers,
        window_s=requests.positive("window_s", int, 300),
        max_batch=requests.positive("max_batch", int, 1000))


def _keys(top: Table, softhsm2_conf: Path | None) -> dict[str, KeySettings]:
    table = top.table("keys")
    keys = {}
    for name in list(table.data):
        _check_name(table, name)
        entry = table.table(name)
        keys[name] = KeySettings(name, entry.key_uri("uri", softhsm2_conf), entry.path("cert"),
                                 entry.paths("chain", ()))
    if not keys:
        raise top.fail("keys", "must name at least one key ([keys.NAME] with uri and cert)")
    return keys


def _check_name(table: Table, name: str) -> None:
    try:
        check_name(name, "a name")
    except IdentityNameError as exc:
        raise table.fail(name, f"is not a usable name: {exc}") from None


def _policy(top: Table, keys: dict[str, KeySettings]) -> Policy:
    clients = {}
    table = top.table("clients", required=False)
    for name in list(table.data if table else {}):
        _check_name(table, name)
        entry = table.table(name)
        try:
            subject = parse_dn(entry.text("subject"))
        except CertificateError as exc:
            raise entry.fail("subject", f"is not a distinguished name: {exc}") from None
        clients[name] = Client(name, subject, entry.positive("rate_per_s", float, 10.0),
                               entry.positive("burst", int, 100))
    delegations = []
    for i, raw in enumerate(top.get("delegations", list, [])):
        if not isinstance(raw, dict):
            raise top.fail(f"delegations[{i}]", "must be a table ([[delegations]])")
        delegations.append(_delegation(top.sub(f"delegations[{i}]", raw), clients, keys))
    names = [d.name for d in delegations]
    for name in names:
        if names.count(name) > 1:
            raise top.fail("delegations", f"name {name} more than once (audit records name delegations)")
    return Policy(clients, tuple(delegations))


def _delegation(t: Table, clients: dict[str, Client], keys: dict[str, KeySettings]) -> Delegation:
    name = t.name("name")
    delegate = t.text("delegate")
    if delegate not in clients:
        raise t.fail("delegate", f"names {delegate!r}, which is no [clients.NAME] "
                                 f"(clients: {', '.join(clients) or 'none'})")
    key = t.text("key")
    if key not in keys:
        raise t.fail("key", f"names {key!r}, which is no [keys.NAME] (keys: {', '.join(keys)})")
    operations = t.strings("operations")
    for operation in operations:
        if operation not in OPERATIONS:
            raise t.fail("operations", f"names {operation!r}; operations are {', '.join(OPERATIONS)}")
    if not operations:
        raise t.fail("operations", "must grant at least one operation")
    scopes = {"serials": t.strings("serials", ()), "domains": t.strings("domains", ()),
              "subjects": t.strings("subjects", ())}
    for operation in operations:
        needed = SCOPE_NEEDED.get(operation)
        if needed and not scopes[needed]:
            raise t.fail(needed, f"must list the patterns {operation} is granted for "
                                 '(["*"] for all): an empty list matches nothing')
    not_before, not_after = _moment(t, "not_before"), _moment(t, "not_after")
    if not_after <= not_before:
        raise t.fail("not_after", "must come after not_before")
    usages = []
    for usage in t.strings("extended_key_usages", ("clientAuth",)):
        if usage not in EXTENDED_KEY_USAGES:
            raise t.fail("extended_key_usages", f"names {usage!r}; known: {', '.join(EXTENDED_KEY_USAGES)}")
        usages.append(EXTENDED_KEY_USAGES[usage])
    hours = t.positive("certificate_hours", float, 8.0)
    if hours > 24 * 7:
        raise t.fail("certificate_hours", "must be at most a week: short-term certificates are "
                                          "revoked by not renewing them")
    return Delegation(
        name=name, delegator=t.text("delegator"), delegate=delegate, key=key,
        operations=tuple(operations), not_before=not_before, not_after=not_after,
        serials=scopes["serials"], domains=scopes["domains"], subjects=scopes["subjects"],
        certificate_hours=hours, certificate_days=t.positive("certificate_days", int, 365),
        extended_key_usages=tuple(usages))


def _moment(t: Table, key: str) -> dt.datetime:
    value = t.get(key, dt.datetime)
    if value.tzinfo is None:
        raise t.fail(key, "must carry its offset (e.g. 2026-01-01T00:00:00Z)")
    return value


# --------------------------------------------------------------------------- writing

def config_document(config: SignerConfig) -> dict:
    """The TOML document that `load_signer_config` reads back as `config` (paths absolute,
    every setting written, defaults included)."""
    hsm: dict = {"workers_per_token": config.workers_per_token}
    if config.softhsm2_conf is not None:
        hsm["softhsm2_conf"] = str(config.softhsm2_conf)
    return {
        "node": config.node,
        "server": {**server_document(config.server), "client_cas": [str(p) for p in config.client_cas]},
        "database": {"url": config.database_url},
        "hsm": hsm,
        "requests": {"window_s": config.window_s, "max_batch": config.max_batch},
        "keys": {name: {"uri": key_uri_text(k.uri, f"keys.{name}.uri"), "cert": str(k.cert),
                        "chain": [str(p) for p in k.chain]}
                 for name, k in config.keys.items()},
        "clients": {name: {"subject": subject_text(c.subject), "rate_per_s": c.rate_per_s,
                           "burst": c.burst}
                    for name, c in config.policy.clients.items()},
        "delegations": [_delegation_document(d) for d in config.policy.delegations],
    }


def _delegation_document(d: Delegation) -> dict:
    doc = {"name": d.name, "delegator": d.delegator, "delegate": d.delegate, "key": d.key,
           "operations": list(d.operations), "not_before": d.not_before, "not_after": d.not_after,
           "certificate_hours": d.certificate_hours, "certificate_days": d.certificate_days,
           "extended_key_usages": [_USAGE_NAMES[oid] for oid in d.extended_key_usages]}
    for scope in ("serials", "domains", "subjects"):
        if getattr(d, scope):
            doc[scope] = list(getattr(d, scope))
    return doc


def write_signer_config(config: SignerConfig, comment: str | None = None) -> Path:
    """Write `config` to `config.path` (atomically: a reader, such as the running service
    reloading its policy, sees the old file or the new one)."""
    text = tomli_w.dumps(config_document(config))
    if comment:
        text = "".join(f"# {line}\n" for line in comment.splitlines()) + "\n" + text
    atomic_write(config.path, text.encode())
    return config.path
