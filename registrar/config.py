"""Server configuration files (TOML) for the MASA, the cloud registrar and the owner registrar.

One file describes one server; `role` says which ("masa", "cloud" or
"owner"). Relative paths are taken from the directory of the file, so a lab
or an operator's directory can be moved as a whole. Example (owner):

    role = "owner"

    [server]
    host = "127.0.0.1"
    port = 8443
    tls_cert = "tls/registrar.crt"     # PEM chain, leaf first
    tls_key = "tls/registrar.key"      # PEM; TLS keys may live in files

    [database]
    url = "sqlite:///db/owner.sqlite"  # relative SQLite paths are resolved too

    [hsm]
    softhsm2_conf = "softhsm/softhsm2.conf"   # optional: SoftHSM2 configuration of the PKCS#11
                                              # keys below that do not give their own

    [registrar]
    signing_key = "pkcs11:token=owner;object=registrar?module-path=...&pin-source=file:..."
    signing_cert = "pki/registrar-signer.crt"
    signing_chain = ["pki/owner-ca.crt"]
    manufacturer_cas = ["pki/manufacturer-ca.crt"]
    masa_anchors = ["pki/web-ca.crt"]
    # masa_url = "masa.example.com:9443"     # otherwise the IDevID's id-pe-masa-url

    [est]                                 # owner registrars only
    ca_key = "pkcs11:token=owner;object=owner-ca?..."
    ca_cert = "pki/owner-ca.crt"
    crl_url = "https://registrar.example:8443/crl"   # optional: the CRL distribution point of
    crl_days = 7                                     # issued LDevIDs, and each CRL's lifetime

    [est.csrattrs]
    subject = ["CN", "serialNumber"]
    san_dns = ["{serial}.pledges.example"]
    signature_algorithm = "ecdsa-with-SHA256"

A MASA (role = "masa") has a [masa] table instead: signing_key,
signing_cert, signing_chain, manufacturer_cas, cloud_registrars,
nonceless_lifetime_s, max_request_age_s, max_request_future_s, and an
optional [masa.rate_limits] table (see MasaRateLimits).

Every table refuses keys it does not know, naming the closest known one
("did you mean ...?"). `write_config` writes a configuration from the same
dataclasses `load_config` returns (the lab writes its servers' files so).

Key URIs are parsed when the file is read. `[hsm] softhsm2_conf` is module
configuration for the PKCS#11 keys of this file: each one that does not say
otherwise gets `x-module-env=SOFTHSM2_CONF=...` (see hsm/keyuri.py).

Every mistake is reported as one ConfigError naming the file and the key.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tomli_w

from pledgeforge.atomicfile import atomic_write
from pledgeforge.errors import FileAccessError, UsageError, closest_name
from pledgeforge.hsm.identity_names import IdentityNameError, check_dns_name, check_name
from pledgeforge.hsm.errors import KeyStoreError
from pledgeforge.hsm.keystore import parse_key_uri
from pledgeforge.hsm.keyuri import KeyUri, Pkcs11Uri

ROLES = ("masa", "cloud", "owner")
SOFTHSM2_LIBRARY = "libsofthsm2.so"


class ConfigError(UsageError):
    """A server configuration file is missing, unreadable or wrong."""


@dataclass(frozen=True)
class ServerSettings:
    host: str
    port: int
    tls_cert: Path
    tls_key: Path
    #: further endpoints of the same server, name -> port (e.g. a second
    #: cloud registrar identity "var" on its own port); the main one is "main".
    extra_ports: dict[str, int] = field(default_factory=dict)
    shutdown_timeout_s: float = 5.0

    def ports(self) -> dict[str, int]:
        return {"main": self.port, **self.extra_ports}


@dataclass(frozen=True)
class SignerSettings:
    """A signing key in an HSM (by URI) and the certificate(s) that go with it."""

    key_uri: KeyUri
    cert: Path
    chain: tuple[Path, ...] = ()


@dataclass(frozen=True)
class UpstreamSettings:
    """How a registrar reaches the MASA."""

    anchors: tuple[Path, ...]
    masa_url: str | None = None
    timeout_s: float = 10.0
    attempts: int = 3
    backoff_s: float = 0.5


@dataclass(frozen=True)
class TrustedCloudRegistrar:
    """A cloud registrar the MASA lets ask for vouchers on behalf of owners."""

    name: str
    anchor: Path
    #: owner names it may act for; empty means every owner
    acts_for: tuple[str, ...] = ()


@dataclass(frozen=True)
class CsrAttrsSettings:
    #: subject attribute types the CSR must carry (DN keywords such as CN, serialNumber)
    subject: tuple[str, ...] = ()
    #: DNS names the CSR must request; "{serial}" becomes the pledge's serial number
    san_dns: tuple[str, ...] = ()
    #: signature algorithm the pledge is asked to use (a hint, as in RFC 7030 4.5.2)
    signature_algorithm: str | None = None


@dataclass(frozen=True)
class EstSettings:
    ca_key_uri: KeyUri
    ca_cert: Path
    ca_chain: tuple[Path, ...] = ()
    certificate_days: int = 365
    csrattrs: CsrAttrsSettings = CsrAttrsSettings()
    #: files served at /pledge-config/<name> (additional-configuration-url targets)
    additional_configuration_dir: Path | None = None
    #: the URL of this registrar's /crl: issued LDevIDs name it as their CRL distribution point
    crl_url: str | None = None
    #: how long each CRL is valid (its nextUpdate)
    crl_days: int = 7


@dataclass(frozen=True)
class MasaRateLimits:
    """Token buckets ([masa.rate_limits]). Every request from a source address takes a
    token of that address, before anything is parsed; every new voucher takes a token of
    the registrar (its signing certificate) that asked, once its right is checked. Repeated
    requests answered with a voucher already issued take none of the registrar's."""

    address_rate_per_s: float = 20.0
    address_burst: int = 200
    registrar_rate_per_s: float = 10.0
    registrar_burst: int = 100
    #: buckets kept per kind; beyond that the least recently used is forgotten
    tracked_clients: int = 10_000


@dataclass(frozen=True)
class MasaConfig:
    path: Path
    server: ServerSettings
    database_url: str
    softhsm2_conf: Path | None
    signer: SignerSettings
    manufacturer_cas: tuple[Path, ...]
    check_time: bool = True
    nonceless_lifetime_s: int = 1200
    cloud_registrars: tuple[TrustedCloudRegistrar, ...] = ()
    #: how old (and how far ahead, for clock skew) a registrar voucher-request's
    #: created-on may be; checked when check_time is on
    max_request_age_s: int = 600
    max_request_future_s: int = 300
    rate_limits: MasaRateLimits = MasaRateLimits()
    role: str = "masa"


@dataclass(frozen=True)
class RegistrarConfig:
    path: Path
    role: str  # "cloud" or "owner"
    server: ServerSettings
    database_url: str
    softhsm2_conf: Path | None
    signer: SignerSettings
    manufacturer_cas: tuple[Path, ...]
    upstream: UpstreamSettings
    check_time: bool = True
    #: owner: answer requestvoucher only for serials in the owner's pledge list
    require_pledge_list: bool = True
    est: EstSettings | None = None


class _Table:
    """Typed access to one TOML table, naming file and key in every error.

    It remembers which keys were read, so that `check_unknown` can refuse the
    ones nothing reads (a misspelt key would otherwise be ignored silently)
    and a missing key can be traced to its misspelling.
    """

    def __init__(self, data: dict, where: str, base: Path, source: Path, tables: list | None = None):
        self.data, self.where, self.base, self.source = data, where, base, source
        self.used: set[str] = set()
        #: every table read from the file, for the final check of unknown keys
        self.tables = tables if tables is not None else []
        self.tables.append(self)

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self._name(key)} {problem}")

    def _missing(self, key: str, problem: str) -> ConfigError:
        """`key` is missing; if an unknown key is its misspelling, name that instead."""
        typo = closest_name(key, [k for k in self.data if k not in self.used])
        if typo is not None:
            return self.fail(typo, f"is not a known setting; did you mean {key}?")
        return ConfigError(f"{self.source}: {problem}")

    def sub(self, key: str, data: dict) -> "_Table":
        """A table inside this one (an inline table or an array of tables entry)."""
        return _Table(data, self._name(key), self.base, self.source, self.tables)

    def table(self, key: str, required: bool = True) -> "_Table | None":
        self.used.add(key)
        value = self.data.get(key)
        if value is None:
            if required:
                raise self._missing(key, f"missing table [{self._name(key)}]")
            return None
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        return self.sub(key, value)

    def get(self, key: str, kind: type, default: Any = ...) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise self._missing(key, f"{self._name(key)} is missing")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, f"must be a {kind.__name__}, not {type(value).__name__}")
        return value

    def text(self, key: str, default: Any = ...) -> str:
        if key not in self.data and default is not ...:
            self.used.add(key)
            return default
        value = self.get(key, str)
        if not value.strip():
            raise self.fail(key, "must not be empty")
        return value

    def path(self, key: str, default: Any = ..., must_exist: bool = True) -> Path | None:
        if key not in self.data and default is not ...:
            self.used.add(key)
            return default
        return self._resolve(key, self.text(key), must_exist)

    def paths(self, key: str, default: Any = ..., must_exist: bool = True) -> tuple[Path, ...]:
        values = self.get(key, list, default)
        if not all(isinstance(v, str) and v.strip() for v in values):
            raise self.fail(key, "must be a list of file names")
        return tuple(self._resolve(key, v, must_exist) for v in values)

    def strings(self, key: str, default: Any = ...) -> tuple[str, ...]:
        values = self.get(key, list, default)
        if not all(isinstance(v, str) and v.strip() for v in values):
            raise self.fail(key, "must be a list of non-empty strings")
        return tuple(values)

    def key_uri(self, key: str, softhsm2_conf: Path | None) -> KeyUri:
        """A key URI; SoftHSM2 keys get the file's SoftHSM2 configuration unless they give their own."""
        try:
            uri = parse_key_uri(self.text(key))
        except KeyStoreError as exc:
            raise self.fail(key, f"is not a usable key URI: {exc}") from None
        if (softhsm2_conf is not None and isinstance(uri, Pkcs11Uri)
                and os.path.basename(os.path.realpath(uri.module_path)) == SOFTHSM2_LIBRARY
                and "SOFTHSM2_CONF" not in dict(uri.module_env)):
            uri = uri.with_module_env({"SOFTHSM2_CONF": str(softhsm2_conf)})
        return uri

    def port(self, key: str, default: Any = ...) -> int:
        value = self.get(key, int, default)
        if not 0 <= value <= 65535:
            raise self.fail(key, f"must be a TCP port (0-65535), not {value}")
        return value

    def positive(self, key: str, kind: type, default: Any = ...) -> Any:
        value = self.get(key, kind, default)
        if value <= 0:
            raise self.fail(key, f"must be greater than 0, not {value}")
        return value

    def check_unknown(self) -> None:
        """Refuse keys nothing read, naming the closest known one."""
        for key in self.data:
            if key not in self.used:
                close = closest_name(key, self.used)
                hint = f"; did you mean {close}?" if close else ""
                raise self.fail(key, f"is not a known setting{hint} (known: {', '.join(sorted(self.used))})")

    def name(self, key: str, default: Any = ...) -> str:
        """A short record name (owner, endpoint, cloud registrar): see hsm/identity_names."""
        value = self.text(key, default)
        try:
            return check_name(value, "a name")
        except IdentityNameError as exc:
            raise self.fail(key, f"is not valid: {exc}") from None

    def _resolve(self, key: str, value: str, must_exist: bool) -> Path:
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = (self.base / path).resolve()
        if must_exist and not path.exists():
            raise self.fail(key, f"names {path}, which does not exist")
        return path


def _database_url(table: _Table) -> str:
    url = table.text("url")
    # A relative SQLite file is taken from the config's directory, as every other path.
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        url = prefix + str((table.base / url[len(prefix):]).resolve())
    return url


def _server(table: _Table) -> ServerSettings:
    extra = table.get("extra_ports", dict, {})
    extra_ports = {}
    for name, port in extra.items():
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise table.fail(f"extra_ports.{name}", "must be a TCP port (0-65535)")
        if name == "main":
            raise table.fail("extra_ports.main", "is reserved for the main port")
        try:
            check_name(name, "an endpoint name")  # a database key of the cloud registrar
        except IdentityNameError as exc:
            raise table.fail(f"extra_ports.{name}", f"is not valid: {exc}") from None
        extra_ports[name] = port
    return ServerSettings(
        host=table.text("host", "127.0.0.1"),
        port=table.port("port"),
        tls_cert=table.path("tls_cert"),
        tls_key=table.path("tls_key"),
        extra_ports=extra_ports,
        shutdown_timeout_s=table.positive("shutdown_timeout_s", float, 5.0),
    )


def _server_document(server: ServerSettings) -> dict:
    doc = {"host": server.host, "port": server.port, "tls_cert": str(server.tls_cert),
           "tls_key": str(server.tls_key), "shutdown_timeout_s": server.shutdown_timeout_s}
    if server.extra_ports:
        doc["extra_ports"] = dict(server.extra_ports)
    return doc


def _signer(table: _Table, softhsm2_conf: Path | None, key: str = "signing_key",
            cert: str = "signing_cert", chain: str = "signing_chain") -> SignerSettings:
    return SignerSettings(table.key_uri(key, softhsm2_conf), table.path(cert), table.paths(chain, ()))


def _signer_document(signer: SignerSettings, key: str = "signing_key", cert: str = "signing_cert",
                     chain: str = "signing_chain") -> dict:
    return {key: _key_uri_text(signer.key_uri, key), cert: str(signer.cert), chain: _texts(signer.chain)}


def _key_uri_text(uri: KeyUri, key: str) -> str:
    if getattr(uri, "pin_value", None) is not None:
        # str(uri) leaves the PIN out: the file would name a key nobody can open.
        raise ConfigError(f"{key}: a configuration file names where the PIN is (pin-source=file: "
                          "or env:), never the PIN itself")
    return str(uri)


def _texts(values) -> list[str]:
    return [str(v) for v in values]


def _san_templates(table: _Table) -> tuple[str, ...]:
    """dNSName templates: with a serial number in place of "{serial}", each must be a DNS name."""
    templates = table.strings("san_dns", ())
    for template in templates:
        try:
            check_dns_name(template.replace("{serial}", "serial"), "a dNSName")
        except IdentityNameError as exc:
            raise table.fail("san_dns", f"entry {template!r} does not make a DNS name: {exc}") from None
    return templates


def _crl_url(table: _Table) -> str | None:
    url = table.text("crl_url", None)
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise table.fail("crl_url", f"must be an http:// or https:// URL, not {url!r}")
    return url


def _rate_limits(table: _Table | None) -> MasaRateLimits:
    default = MasaRateLimits()
    if table is None:
        return default
    return MasaRateLimits(
        address_rate_per_s=table.positive("address_rate_per_s", float, default.address_rate_per_s),
        address_burst=table.positive("address_burst", int, default.address_burst),
        registrar_rate_per_s=table.positive("registrar_rate_per_s", float, default.registrar_rate_per_s),
        registrar_burst=table.positive("registrar_burst", int, default.registrar_burst),
        tracked_clients=table.positive("tracked_clients", int, default.tracked_clients),
    )


def _rate_limits_document(limits: MasaRateLimits) -> dict:
    return {"address_rate_per_s": limits.address_rate_per_s, "address_burst": limits.address_burst,
            "registrar_rate_per_s": limits.registrar_rate_per_s,
            "registrar_burst": limits.registrar_burst, "tracked_clients": limits.tracked_clients}


def _read(path: str | Path) -> tuple[Path, _Table]:
    path = Path(path).expanduser().resolve()
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise FileAccessError(f"configuration file {path} does not exist") from None
    except OSError as exc:
        raise FileAccessError(f"cannot read configuration file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return path, _Table(data, "", path.parent, path)


def load_config(path: str | Path) -> MasaConfig | RegistrarConfig:
    """Read a server configuration; the `role` key decides its kind. Keys that no
    table of that kind has are refused, naming the closest known one."""
    path, top = _read(path)
    config = _config(path, top)
    for table in top.tables:
        table.check_unknown()
    return config


def _config(path: Path, top: _Table) -> MasaConfig | RegistrarConfig:
    role = top.text("role")
    if role not in ROLES:
        raise top.fail("role", f"must be one of {', '.join(ROLES)}, not {role!r}")
    server = _server(top.table("server"))
    database_url = _database_url(top.table("database"))
    hsm = top.table("hsm", required=False)
    softhsm2_conf = hsm.path("softhsm2_conf", None) if hsm else None
    check_time = top.get("check_time", bool, True)

    if role == "masa":
        masa = top.table("masa")
        clouds = []
        for i, entry in enumerate(masa.get("cloud_registrars", list, [])):
            if not isinstance(entry, dict):
                raise masa.fail(f"cloud_registrars[{i}]", "must be a table")
            t = masa.sub(f"cloud_registrars[{i}]", entry)
            clouds.append(TrustedCloudRegistrar(t.name("name"), t.path("anchor"),
                                                t.strings("acts_for", ())))
        return MasaConfig(
            path=path, server=server, database_url=database_url, softhsm2_conf=softhsm2_conf,
            signer=_signer(masa, softhsm2_conf), manufacturer_cas=masa.paths("manufacturer_cas"),
            check_time=check_time,
            nonceless_lifetime_s=masa.positive("nonceless_lifetime_s", int, 1200),
            cloud_registrars=tuple(clouds),
            max_request_age_s=masa.positive("max_request_age_s", int, MasaConfig.max_request_age_s),
            max_request_future_s=masa.positive("max_request_future_s", int, MasaConfig.max_request_future_s),
            rate_limits=_rate_limits(masa.table("rate_limits", required=False)),
        )

    reg = top.table("registrar")
    upstream = UpstreamSettings(
        anchors=reg.paths("masa_anchors"),
        masa_url=reg.text("masa_url", None),
        timeout_s=reg.positive("masa_timeout_s", float, 10.0),
        attempts=reg.positive("masa_attempts", int, 3),
        backoff_s=reg.positive("masa_backoff_s", float, 0.5),
    )
    est = None
    if role == "owner":
        e = top.table("est")
        attrs = e.table("csrattrs", required=False)
        csrattrs = CsrAttrsSettings()
        if attrs:
            csrattrs = CsrAttrsSettings(attrs.strings("subject", ()), _san_templates(attrs),
                                        attrs.text("signature_algorithm", None))
        est = EstSettings(
            ca_key_uri=e.key_uri("ca_key", softhsm2_conf), ca_cert=e.path("ca_cert"), ca_chain=e.paths("ca_chain", ()),
            certificate_days=e.positive("certificate_days", int, 365), csrattrs=csrattrs,
            additional_configuration_dir=e.path("additional_configuration_dir", None,
                                                must_exist=False),
            crl_url=_crl_url(e), crl_days=e.positive("crl_days", int, 7),
        )
    elif top.table("est", required=False) is not None:
        raise top.fail("est", "is only for owner registrars (a cloud registrar is no EST server)")
    return RegistrarConfig(
        path=path, role=role, server=server, database_url=database_url,
        softhsm2_conf=softhsm2_conf, signer=_signer(reg, softhsm2_conf),
        manufacturer_cas=reg.paths("manufacturer_cas"), upstream=upstream, check_time=check_time,
        require_pledge_list=reg.get("require_pledge_list", bool, True), est=est,
    )


# --------------------------------------------------------------------------- writing

def config_document(config: MasaConfig | RegistrarConfig) -> dict:
    """The TOML document that `load_config` reads back as `config` (paths absolute,
    every setting written, defaults included, so that the file is a complete example)."""
    doc: dict = {"role": config.role, "check_time": config.check_time,
                 "server": _server_document(config.server), "database": {"url": config.database_url}}
    if config.softhsm2_conf is not None:
        doc["hsm"] = {"softhsm2_conf": str(config.softhsm2_conf)}
    if isinstance(config, MasaConfig):
        doc["masa"] = {
            **_signer_document(config.signer),
            "manufacturer_cas": _texts(config.manufacturer_cas),
            "cloud_registrars": [{"name": c.name, "anchor": str(c.anchor), "acts_for": list(c.acts_for)}
                                 for c in config.cloud_registrars],
            "nonceless_lifetime_s": config.nonceless_lifetime_s,
            "max_request_age_s": config.max_request_age_s,
            "max_request_future_s": config.max_request_future_s,
            "rate_limits": _rate_limits_document(config.rate_limits),
        }
        return doc
    upstream = config.upstream
    doc["registrar"] = {
        **_signer_document(config.signer),
        "manufacturer_cas": _texts(config.manufacturer_cas),
        "masa_anchors": _texts(upstream.anchors),
        **({"masa_url": upstream.masa_url} if upstream.masa_url else {}),
        "masa_timeout_s": upstream.timeout_s,
        "masa_attempts": upstream.attempts,
        "masa_backoff_s": upstream.backoff_s,
        "require_pledge_list": config.require_pledge_list,
    }
    if config.est is not None:
        est = config.est
        attrs = est.csrattrs
        doc["est"] = {
            **_signer_document(SignerSettings(est.ca_key_uri, est.ca_cert, est.ca_chain),
                               "ca_key", "ca_cert", "ca_chain"),
            "certificate_days": est.certificate_days,
            **({"additional_configuration_dir": str(est.additional_configuration_dir)}
               if est.additional_configuration_dir is not None else {}),
            **({"crl_url": est.crl_url} if est.crl_url is not None else {}),
            "crl_days": est.crl_days,
            "csrattrs": {"subject": list(attrs.subject), "san_dns": list(attrs.san_dns),
                         **({"signature_algorithm": attrs.signature_algorithm}
                            if attrs.signature_algorithm else {})},
        }
    return doc


def write_config(config: MasaConfig | RegistrarConfig, comment: str | None = None) -> Path:
    """Write `config` to `config.path` (atomically: a reader sees the old file or the new one)."""
    text = tomli_w.dumps(config_document(config))
    if comment:
        text = "".join(f"# {line}\n" for line in comment.splitlines()) + "\n" + text
    atomic_write(config.path, text.encode())
    return config.path


# The readers and writers other pledgeforge servers use for their own files (the signing
# service's), so that every configuration mistake is reported, and every file written, the
# same way.
Table = _Table
read_toml = _read
read_server_settings = _server
read_database_url = _database_url
server_document = _server_document
key_uri_text = _key_uri_text
