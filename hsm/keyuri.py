"""Key URIs: RFC 7512 `pkcs11:`, pledgeforge's `tpm:` and the signing service's `signer+https:`.

    pkcs11:token=mfg;object=idevid-ca?module-name=softhsm2&x-module-env=SOFTHSM2_CONF=/lab/softhsm2.conf&pin-source=file:/run/pin
    tpm:handle=0x81020000?tcti=swtpm:host=127.0.0.1,port=2321
    signer+https://signer.example:9443/keys/masa?client-cert=/etc/masa/signer-client.crt&client-key=/etc/masa/signer-client.key&ca=/etc/masa/signer-ca.crt

PINs come from `pin-value`, `pin-source=file:PATH` or `pin-source=env:NAME` in
the URI, or from an environment variable named in configuration. The PIN is
never part of `str(uri)` or `repr(uri)`, so a URI can be logged.

A PKCS#11 module's configuration travels with the key: `module-name=` (a
module registered with p11-kit) or `module-path=` says which module, and the
vendor attribute `x-module-env=NAME=VALUE` (repeatable) gives an environment
variable the module reads when it initialises, such as SoftHSM2's
SOFTHSM2_CONF. The process environment is never changed for it: see
pkcs11_backend.py for how such a module is loaded.

Each scheme's parser lives here; hsm/keystore.py maps schemes to parsers and
backends, and `parse_key_uri` goes through it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import ClassVar, Mapping
from urllib.parse import quote, unquote, unquote_to_bytes

from .errors import KeyUriError, PinError

SOFTHSM2_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
DEFAULT_TCTI_ENV = ("TPM2TOOLS_TCTI", "TCTI")
DEFAULT_TCTI = "device:/dev/tpmrm0"

# RFC 7512 path attributes we understand; others are kept and ignored.
_PKCS11_PATH_ATTRS = {"token", "object", "id", "type", "manufacturer", "model", "serial",
                      "library-manufacturer", "library-description", "library-version",
                      "slot-id", "slot-description", "slot-manufacturer"}
MODULE_ENV_ATTR = "x-module-env"
_PKCS11_QUERY_ATTRS = {"module-path", "module-name", "pin-source", "pin-value", MODULE_ENV_ATTR}
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _split_attrs(text: str, sep: str, what: str,
                 repeatable: frozenset[str] = frozenset()) -> dict[str, str | list[str]]:
    """name=value pairs; names in `repeatable` collect a list, others may appear once."""
    attrs: dict[str, str | list[str]] = {}
    if not text:
        return attrs
    for part in text.split(sep):
        if not part:
            continue
        if "=" not in part:
            raise KeyUriError(f"{what} attribute {part!r} has no '=' (expected name=value)")
        name, value = part.split("=", 1)
        name = name.strip().lower()
        # `id` is binary (RFC 7512 §2.3); everything else is UTF-8 text.
        value = unquote_to_bytes(value).decode("latin-1") if name == "id" else unquote(value)
        if name in repeatable:
            attrs.setdefault(name, []).append(value)
        elif name in attrs:
            raise KeyUriError(f"{what} attribute {name!r} is given twice")
        else:
            attrs[name] = value
    return attrs


def _module_env(entries: list[str]) -> tuple[tuple[str, str], ...]:
    env: dict[str, str] = {}
    for entry in entries:
        name, eq, value = entry.partition("=")
        if not eq or not _ENV_NAME_RE.fullmatch(name):
            raise KeyUriError(f"{MODULE_ENV_ATTR}={entry!r} must be NAME=VALUE "
                              "(e.g. x-module-env=SOFTHSM2_CONF=/path/softhsm2.conf)")
        if name in env and env[name] != value:
            raise KeyUriError(f"{MODULE_ENV_ATTR} gives {name} twice")
        env[name] = value
    return tuple(sorted(env.items()))


#: PIN files as last read: path -> (inode, size, mtime in ns, PIN)
_pin_files: dict[str, tuple[int, int, int, str]] = {}


def _read_pin_file(path: str) -> str:
    """The PIN in `path`, read again only when the file changed.

    A key's PIN is asked for at every signature (a session must be logged in
    with the PIN its URI gives now); opening and reading the file cost a
    signature about an eighth of SoftHSM2's own time, a stat a fifth of that.
    A rewritten or replaced file has another mtime or inode, so a rotated
    PIN is seen at the next signature as before.
    """
    try:
        st = os.stat(path)
        cached = _pin_files.get(path)
        if cached is not None and cached[:3] == (st.st_ino, st.st_size, st.st_mtime_ns):
            return cached[3]
        with open(path, encoding="utf-8") as fh:
            pin = fh.read().rstrip("\r\n")
    except OSError as exc:
        _pin_files.pop(path, None)
        raise PinError(f"cannot read PIN file {path}: {exc.strerror}") from None
    _pin_files[path] = (st.st_ino, st.st_size, st.st_mtime_ns, pin)
    return pin


def _read_pin_source(source: str) -> str:
    if source.startswith("file:"):
        path = source[len("file:"):]
        if path.startswith("//"):
            path = path[2:]
        return _read_pin_file(path)
    if source.startswith("env:"):
        name = source[len("env:"):]
        if name not in os.environ:
            raise PinError(f"PIN environment variable {name} is not set")
        return os.environ[name]
    if source.startswith("/"):
        return _read_pin_source("file:" + source)
    raise KeyUriError(f"pin-source {source!r} is not supported (use file:PATH or env:NAME)")


class KeyUri:
    """What every key URI type is: a scheme and a text form that is safe to log."""

    scheme: ClassVar[str]


@dataclass(frozen=True)
class Pkcs11Uri(KeyUri):
    token: str | None = None
    object: str | None = None
    id: bytes | None = None
    module_path: str = SOFTHSM2_MODULE
    pin_source: str | None = None
    pin_value: str | None = field(default=None, repr=False)
    pin_env: str | None = None
    #: the p11-kit name the module was given by (module_path is then its file)
    module_name: str | None = None
    #: environment the module needs at C_Initialize, as sorted (NAME, VALUE) pairs
    module_env: tuple[tuple[str, str], ...] = ()

    scheme = "pkcs11"

    def pin(self) -> str | None:
        """The user PIN, or None if the URI gives none."""
        if self.pin_value is not None:
            return self.pin_value
        if self.pin_source:
            return _read_pin_source(self.pin_source)
        if self.pin_env:
            if self.pin_env not in os.environ:
                raise PinError(f"PIN environment variable {self.pin_env} is not set")
            return os.environ[self.pin_env]
        return None

    def with_object(self, label: str | None, key_id: bytes | None = None) -> "Pkcs11Uri":
        """Another object on the same token, reached the same way (module, its configuration, PIN)."""
        return replace(self, object=label, id=key_id)

    def with_module_env(self, env: Mapping[str, str]) -> "Pkcs11Uri":
        """This key with the module configuration `env` (added to what the URI gives)."""
        merged = {**dict(self.module_env), **env}
        return replace(self, module_env=tuple(sorted(merged.items())))

    def __str__(self) -> str:
        path = []
        if self.token is not None:
            path.append("token=" + quote(self.token, safe=""))
        if self.object is not None:
            path.append("object=" + quote(self.object, safe=""))
        if self.id is not None:
            path.append("id=" + "".join(f"%{b:02X}" for b in self.id))
        query = []
        if self.module_name is not None:
            query.append("module-name=" + quote(self.module_name, safe=""))
        elif self.module_path != SOFTHSM2_MODULE:
            query.append("module-path=" + quote(self.module_path, safe="/"))
        for name, value in self.module_env:
            query.append(f"{MODULE_ENV_ATTR}={name}=" + quote(value, safe="/:=,@+"))
        if self.pin_source:
            query.append("pin-source=" + quote(self.pin_source, safe="/:"))
        text = "pkcs11:" + ";".join(path)
        return text + ("?" + "&".join(query) if query else "")


@dataclass(frozen=True)
class TpmUri(KeyUri):
    handle: int | None = None
    tcti: str = DEFAULT_TCTI
    hierarchy: str = "endorsement"

    scheme = "tpm"

    def __str__(self) -> str:
        path = f"handle=0x{self.handle:08x}" if self.handle is not None else ""
        query = [f"tcti={self.tcti}"]
        if self.hierarchy != "endorsement":
            query.append(f"hierarchy={self.hierarchy}")
        return f"tpm:{path}?" + "&".join(query)


@dataclass(frozen=True)
class SignerUri(KeyUri):
    """A key held by a pledgeforge signing service (`pledgeforge signer serve`), reached over
    mutual TLS with the client's certificate and key (PEM files) and the CA the service's
    TLS certificate must chain to. The key itself never leaves the service."""

    host: str
    port: int
    key: str
    client_cert: str
    client_key: str
    ca: str
    timeout_s: float = 30.0

    scheme = "signer+https"

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    @property
    def path(self) -> str:
        return f"/keys/{quote(self.key, safe='')}"

    def __str__(self) -> str:
        query = "&".join(f"{name}={quote(value, safe='/:')}" for name, value in (
            ("client-cert", self.client_cert), ("client-key", self.client_key), ("ca", self.ca)))
        if self.timeout_s != 30.0:
            query += f"&timeout={self.timeout_s:g}"
        return f"signer+{self.origin}{self.path}?{query}"


_SIGNER_QUERY_ATTRS = {"client-cert", "client-key", "ca", "timeout"}


def parse_signer_uri(rest: str, pin_env: str | None = None) -> SignerUri:
    """A `signer+https:` URI, given what follows `signer+https:` (the service holds the PINs)."""
    from urllib.parse import urlsplit

    example = "signer+https://HOST:PORT/keys/NAME?client-cert=PATH&client-key=PATH&ca=PATH"
    try:
        parts = urlsplit("https:" + rest)
        port = parts.port
    except ValueError as exc:
        raise KeyUriError(f"signer+https URI is malformed ({exc}); expected {example}") from None
    if not parts.hostname or port is None:
        raise KeyUriError(f"signer+https URI needs a host and a port: {example}")
    segments = parts.path.split("/")
    if len(segments) != 3 or segments[:2] != ["", "keys"] or not segments[2]:
        raise KeyUriError(f"signer+https URI path must be /keys/NAME, not {parts.path!r}: {example}")
    q = _split_attrs(parts.query, "&", "signer+https query")
    unknown = set(q) - _SIGNER_QUERY_ATTRS
    if unknown:
        raise KeyUriError(f"unknown signer+https query attribute(s): {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(sorted(_SIGNER_QUERY_ATTRS))})")
    for name in ("client-cert", "client-key", "ca"):
        if not q.get(name):
            raise KeyUriError(f"signer+https URI lacks {name}=PATH: {example}")
        if not os.path.isabs(q[name]):
            raise KeyUriError(f"signer+https {name} must be an absolute path, not {q[name]!r}")
    timeout = 30.0
    if "timeout" in q:
        try:
            timeout = float(q["timeout"])
        except ValueError:
            timeout = 0.0
        if not 0 < timeout <= 3600:
            raise KeyUriError(f"signer+https timeout {q['timeout']!r} must be seconds between 0 and 3600")
    return SignerUri(host=parts.hostname, port=port, key=unquote(segments[2]),
                     client_cert=q["client-cert"], client_key=q["client-key"], ca=q["ca"],
                     timeout_s=timeout)


def parse_key_uri(text: str, *, pin_env: str | None = None) -> KeyUri:
    """Parse a key URI of any registered scheme. `pin_env` is the configured PIN variable."""
    from .keystore import parse_key_uri as parse  # the registry of schemes (it imports this module)

    return parse(text, pin_env=pin_env)


def parse_pkcs11_uri(rest: str, pin_env: str | None = None) -> Pkcs11Uri:
    """An RFC 7512 URI, given what follows `pkcs11:`."""
    path, _, query = rest.partition("?")
    p = _split_attrs(path, ";", "pkcs11 path")
    q = _split_attrs(query, "&", "pkcs11 query", repeatable=frozenset({MODULE_ENV_ATTR}))
    unknown_q = set(q) - _PKCS11_QUERY_ATTRS
    if unknown_q:
        raise KeyUriError(f"unknown pkcs11 query attribute(s): {', '.join(sorted(unknown_q))}")
    unknown_p = set(p) - _PKCS11_PATH_ATTRS
    if unknown_p:
        raise KeyUriError(f"unknown pkcs11 path attribute(s): {', '.join(sorted(unknown_p))}")
    if "pin-value" in q and "pin-source" in q:
        raise KeyUriError("give either pin-value or pin-source, not both")
    key_id = None
    if "id" in p:
        # unquote() already turned %xx into characters; id is binary.
        key_id = p["id"].encode("latin-1")
    module = q.get("module-path")
    module_name = q.get("module-name")
    if module is None and module_name is not None:
        # RFC 7512: module-path, when given, wins over module-name.
        from .p11kit import module_path

        module = module_path(module_name)
    return Pkcs11Uri(
        token=p.get("token"),
        object=p.get("object"),
        id=key_id,
        module_path=module or SOFTHSM2_MODULE,
        pin_source=q.get("pin-source"),
        pin_value=q.get("pin-value"),
        pin_env=pin_env,
        module_name=module_name if "module-path" not in q else None,
        module_env=_module_env(q.get(MODULE_ENV_ATTR, [])),
    )


def default_tcti() -> str:
    for name in DEFAULT_TCTI_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return DEFAULT_TCTI


def parse_tpm_uri(rest: str, pin_env: str | None = None) -> TpmUri:
    """A `tpm:` URI, given what follows `tpm:` (TPM keys here have no PIN)."""
    path, _, query = rest.partition("?")
    p = _split_attrs(path, ";", "tpm path")
    q = _split_attrs(query, "&", "tpm query")
    unknown = (set(p) - {"handle"}) | (set(q) - {"tcti", "hierarchy"})
    if unknown:
        raise KeyUriError(f"unknown tpm URI attribute(s): {', '.join(sorted(unknown))}")
    handle = None
    if "handle" in p:
        try:
            handle = int(p["handle"], 0)
        except ValueError:
            raise KeyUriError(f"tpm handle {p['handle']!r} is not a number (e.g. 0x81020000)") from None
        if not 0x81000000 <= handle <= 0x81FFFFFF:
            raise KeyUriError(
                f"tpm handle 0x{handle:08x} is not a persistent handle (0x81000000-0x81ffffff)")
    hierarchy = q.get("hierarchy", "endorsement").lower()
    if hierarchy not in ("endorsement", "owner"):
        raise KeyUriError(f"tpm hierarchy {hierarchy!r} must be endorsement or owner")
    return TpmUri(handle=handle, tcti=q.get("tcti") or default_tcti(), hierarchy=hierarchy)
