"""Key URIs: RFC 7512 `pkcs11:` and pledgeforge's `tpm:`.

    pkcs11:token=mfg;object=idevid-ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin
    tpm:handle=0x81020000?tcti=swtpm:host=127.0.0.1,port=2321

PINs come from `pin-value`, `pin-source=file:PATH` or `pin-source=env:NAME` in
the URI, or from an environment variable named in configuration. The PIN is
never part of `str(uri)` or `repr(uri)`, so a URI can be logged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, unquote_to_bytes

from .errors import KeyUriError, PinError

SOFTHSM2_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
DEFAULT_TCTI_ENV = ("TPM2TOOLS_TCTI", "TCTI")
DEFAULT_TCTI = "device:/dev/tpmrm0"

# RFC 7512 path attributes we understand; others are kept and ignored.
_PKCS11_PATH_ATTRS = {"token", "object", "id", "type", "manufacturer", "model", "serial",
                      "library-manufacturer", "library-description", "library-version",
                      "slot-id", "slot-description", "slot-manufacturer"}
_PKCS11_QUERY_ATTRS = {"module-path", "module-name", "pin-source", "pin-value"}


def _split_attrs(text: str, sep: str, what: str) -> dict[str, str]:
    attrs: dict[str, str] = {}
    if not text:
        return attrs
    for part in text.split(sep):
        if not part:
            continue
        if "=" not in part:
            raise KeyUriError(f"{what} attribute {part!r} has no '=' (expected name=value)")
        name, value = part.split("=", 1)
        name = name.strip().lower()
        if name in attrs:
            raise KeyUriError(f"{what} attribute {name!r} is given twice")
        # `id` is binary (RFC 7512 §2.3); everything else is UTF-8 text.
        attrs[name] = unquote_to_bytes(value).decode("latin-1") if name == "id" else unquote(value)
    return attrs


def _read_pin_source(source: str) -> str:
    if source.startswith("file:"):
        path = source[len("file:"):]
        if path.startswith("//"):
            path = path[2:]
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().rstrip("\r\n")
        except OSError as exc:
            raise PinError(f"cannot read PIN file {path}: {exc.strerror}") from None
    if source.startswith("env:"):
        name = source[len("env:"):]
        if name not in os.environ:
            raise PinError(f"PIN environment variable {name} is not set")
        return os.environ[name]
    if source.startswith("/"):
        return _read_pin_source("file:" + source)
    raise KeyUriError(f"pin-source {source!r} is not supported (use file:PATH or env:NAME)")


@dataclass(frozen=True)
class Pkcs11Uri:
    token: str | None = None
    object: str | None = None
    id: bytes | None = None
    module_path: str = SOFTHSM2_MODULE
    pin_source: str | None = None
    pin_value: str | None = field(default=None, repr=False)
    pin_env: str | None = None

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
        return Pkcs11Uri(self.token, label, key_id, self.module_path, self.pin_source,
                         self.pin_value, self.pin_env)

    def __str__(self) -> str:
        path = []
        if self.token is not None:
            path.append("token=" + quote(self.token, safe=""))
        if self.object is not None:
            path.append("object=" + quote(self.object, safe=""))
        if self.id is not None:
            path.append("id=" + "".join(f"%{b:02X}" for b in self.id))
        query = []
        if self.module_path != SOFTHSM2_MODULE:
            query.append("module-path=" + quote(self.module_path, safe="/"))
        if self.pin_source:
            query.append("pin-source=" + quote(self.pin_source, safe="/:"))
        text = "pkcs11:" + ";".join(path)
        return text + ("?" + "&".join(query) if query else "")


@dataclass(frozen=True)
class TpmUri:
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


KeyUri = Pkcs11Uri | TpmUri


def parse_key_uri(text: str, *, pin_env: str | None = None) -> KeyUri:
    """Parse a `pkcs11:` or `tpm:` key URI. `pin_env` is the configured PIN variable."""
    if not isinstance(text, str) or ":" not in text:
        raise KeyUriError(f"not a key URI: {text!r} (expected pkcs11:... or tpm:...)")
    scheme, rest = text.split(":", 1)
    scheme = scheme.lower()
    path, _, query = rest.partition("?")
    if scheme == "pkcs11":
        return _parse_pkcs11(path, query, pin_env)
    if scheme == "tpm":
        return _parse_tpm(path, query)
    raise KeyUriError(f"unsupported key URI scheme {scheme!r} (expected pkcs11: or tpm:)")


def _parse_pkcs11(path: str, query: str, pin_env: str | None) -> Pkcs11Uri:
    p = _split_attrs(path, ";", "pkcs11 path")
    q = _split_attrs(query, "&", "pkcs11 query")
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
    if module is None and "module-name" in q:
        module = f"/usr/lib/x86_64-linux-gnu/{q['module-name']}.so"
    return Pkcs11Uri(
        token=p.get("token"),
        object=p.get("object"),
        id=key_id,
        module_path=module or SOFTHSM2_MODULE,
        pin_source=q.get("pin-source"),
        pin_value=q.get("pin-value"),
        pin_env=pin_env,
    )


def default_tcti() -> str:
    for name in DEFAULT_TCTI_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return DEFAULT_TCTI


def _parse_tpm(path: str, query: str) -> TpmUri:
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
