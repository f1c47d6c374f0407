"""Voucher and voucher-request models (RFC 8366, RFC 8995 §3/§5, rfc8366bis, brski-cloud).

Parsing is strict on types and on leaf names, with two tolerances the
published examples need: RFC 8366's own example writes the boolean
`domain-cert-revocation-checks` as the string "true", and several examples
carry the nonce in base64url rather than base64. Leaves qualified by another
YANG module ("module:leaf") are augmentations and are kept as they are.

The registrar never trusts `serial-number` here: it takes the serial from
the IDevID certificate and compares.

A nonce keeps the text it arrived in (`nonce_text`) next to its bytes:
pledges that compare nonces as strings get back exactly the string they sent
(base64url without padding stays so), while checks compare the bytes.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import VoucherError

VOUCHER_KEY = "ietf-voucher:voucher"
VOUCHER_REQUEST_KEY = "ietf-voucher-request:voucher"
ASSERTIONS = ("verified", "logged", "proximity", "agent-proximity")

# leaf name -> (attribute, type) ; types: str, date, bool, binary, enum
_COMMON = {
    "created-on": ("created_on", "date"),
    "expires-on": ("expires_on", "date"),
    "assertion": ("assertion", "enum"),
    "serial-number": ("serial_number", "str"),
    "idevid-issuer": ("idevid_issuer", "binary"),
    "pinned-domain-cert": ("pinned_domain_cert", "binary"),
    "domain-cert-revocation-checks": ("domain_cert_revocation_checks", "bool"),
    "nonce": ("nonce", "binary"),
    "pinned-domain-pubk": ("pinned_domain_pubk", "binary"),
    "pinned-domain-pubk-sha256": ("pinned_domain_pubk_sha256", "binary"),
    "last-renewal-date": ("last_renewal_date", "date"),
    # brski-cloud: the EST server the pledge enrols with, and where to fetch
    # further configuration (-04 names it additional-configuration).
    "est-domain": ("est_domain", "str"),
    "additional-configuration": ("additional_configuration", "str"),
    "additional-configuration-url": ("additional_configuration", "str"),
}
_REQUEST_ONLY = {
    "prior-signed-voucher-request": ("prior_signed_voucher_request", "binary"),
    "proximity-registrar-cert": ("proximity_registrar_cert", "binary"),
    "proximity-registrar-pubk": ("proximity_registrar_pubk", "binary"),
    "proximity-registrar-pubk-sha256": ("proximity_registrar_pubk_sha256", "binary"),
}
_LEAVES = {False: _COMMON, True: {**_COMMON, **_REQUEST_ONLY}}

_DATE_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


#: Vouchers and status reports are two or three levels deep; extensions get some room.
MAX_JSON_DEPTH = 32
#: json.dumps(..., separators=(",", ":")), made once
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def parse_json(data: bytes | str, what: str) -> Any:
    """JSON text to Python values; VoucherError when it is not JSON or nests deeper than
    MAX_JSON_DEPTH. The json decoder recurses once per level, so a few kB of brackets end
    in RecursionError, and anything deep makes every later walk over the value recursive."""
    try:
        obj = json.loads(data)
    except RecursionError:
        raise VoucherError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise VoucherError(f"{what} is not valid JSON: {exc}") from None
    # Only containers are walked: a batch of vouchers is mostly strings.
    pending = [(obj, 1)] if isinstance(obj, (dict, list)) else []
    while pending:
        value, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            raise VoucherError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
        pending.extend((child, depth + 1) for child in (value.values() if isinstance(value, dict) else value)
                       if isinstance(child, (dict, list)))
    return obj


def parse_date(text: str, leaf: str = "date") -> dt.datetime:
    """RFC 3339 date-and-time (YANG ietf-yang-types) to an aware datetime."""
    if not isinstance(text, str):
        raise VoucherError(f"{leaf} must be a date-and-time string, not {type(text).__name__}")
    return _date_of(text, leaf)


# Dates repeat (the vouchers of a batch are created within one second), and
# both directions return immutable values: each is worked out once.
@functools.lru_cache(maxsize=1024)
def _date_of(text: str, leaf: str) -> dt.datetime:
    m = _DATE_RE.match(text)
    if not m:
        raise VoucherError(f"{leaf} {text!r} is not an RFC 3339 date-and-time")
    year, mon, day, hour, minute, sec = (int(g) for g in m.groups()[:6])
    frac = m.group(7)
    micro = int((frac[1:] + "000000")[:6]) if frac else 0
    zone = m.group(8)
    if zone in ("Z", "z"):
        tz = dt.timezone.utc
    else:
        sign = 1 if zone[0] == "+" else -1
        tz = dt.timezone(sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    try:
        return dt.datetime(year, mon, day, hour, minute, sec, micro, tzinfo=tz)
    except ValueError as exc:
        raise VoucherError(f"{leaf} {text!r} is not a valid date: {exc}") from None


@functools.lru_cache(maxsize=1024)
def format_date(value: dt.datetime) -> str:
    v = value.astimezone(dt.timezone.utc)
    return (f"{v.year:04d}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
            f".{v.microsecond // 1000:03d}Z")


def decode_binary(text: Any, leaf: str) -> bytes:
    """YANG binary is base64; base64url (seen in published nonces) is accepted too."""
    if not isinstance(text, str):
        raise VoucherError(f"{leaf} must be a base64 string, not {type(text).__name__}")
    try:
        # Canonical base64 (what nearly everyone sends) needs no preparing.
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        pass
    compact = "".join(text.split())
    padded = compact + "=" * (-len(compact) % 4)
    try:
        if "-" in compact or "_" in compact:
            return base64.urlsafe_b64decode(padded.encode("ascii"))
        return base64.b64decode(padded.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise VoucherError(f"{leaf} is not valid base64") from None


def _decode_bool(value: Any, leaf: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):  # RFC 8366 §5.2's own example
        return value == "true"
    raise VoucherError(f"{leaf} must be a boolean, not {value!r}")


@dataclass(frozen=True)
class Voucher:
    """A voucher (is_request=False) or voucher-request (is_request=True)."""

    is_request: bool = False
    serial_number: str | None = None
    assertion: str | None = None
    created_on: dt.datetime | None = None
    expires_on: dt.datetime | None = None
    idevid_issuer: bytes | None = None
    pinned_domain_cert: bytes | None = None
    domain_cert_revocation_checks: bool | None = None
    nonce: bytes | None = None
    #: the nonce as it was written in the JSON this voucher was read from; a voucher
    #: made with nonce_text=<a request's nonce_text> repeats that string exactly
    nonce_text: str | None = field(default=None, compare=False, repr=False)
    pinned_domain_pubk: bytes | None = None
    pinned_domain_pubk_sha256: bytes | None = None
    last_renewal_date: dt.datetime | None = None
    est_domain: str | None = None
    additional_configuration: str | None = None
    #: which leaf carried additional_configuration ("-url" in rfc8366bis, bare in -04)
    additional_configuration_leaf: str = "additional-configuration-url"
    prior_signed_voucher_request: bytes | None = None
    proximity_registrar_cert: bytes | None = None
    proximity_registrar_pubk: bytes | None = None
    proximity_registrar_pubk_sha256: bytes | None = None
    #: module-qualified leaves of other YANG modules, kept verbatim
    extensions: dict[str, Any] = field(default_factory=dict)

    @property
    def top_key(self) -> str:
        return VOUCHER_REQUEST_KEY if self.is_request else VOUCHER_KEY

    # ------------------------------------------------------------------ parse

    @classmethod
    def from_json(cls, data: bytes | str | dict, *, expect_request: bool | None = None) -> "Voucher":
        """Parse a voucher or voucher-request; `expect_request` pins which one."""
        if isinstance(data, (bytes, str)):
            obj = parse_json(data, "voucher")
        else:
            obj = data
        if not isinstance(obj, dict) or len(obj) != 1:
            raise VoucherError("voucher JSON must be an object with exactly one member "
                               f"({VOUCHER_KEY!r} or {VOUCHER_REQUEST_KEY!r})")
        (key, body), = obj.items()
        if key not in (VOUCHER_KEY, VOUCHER_REQUEST_KEY):
            raise VoucherError(f"unknown voucher container {key!r}")
        is_request = key == VOUCHER_REQUEST_KEY
        if expect_request is not None and expect_request != is_request:
            want = "voucher-request" if expect_request else "voucher"
            raise VoucherError(f"expected a {want}, got {key!r}")
        if not isinstance(body, dict):
            raise VoucherError(f"{key} must be an object")
        leaves = _LEAVES[is_request]
        values: dict[str, Any] = {"is_request": is_request}
        extensions = {}
        for name, raw in body.items():
            if name not in leaves:
                if ":" in name:
                    extensions[name] = raw
                    continue
                raise VoucherError(f"unknown leaf {name!r} in {key}")
            attr, kind = leaves[name]
            if attr in values:
                raise VoucherError(f"{name!r} and its alternative spelling are both present")
            if kind == "date":
                values[attr] = parse_date(raw, name)
            elif kind == "binary":
                values[attr] = decode_binary(raw, name)
                if attr == "nonce":
                    values["nonce_text"] = raw
            elif kind == "bool":
                values[attr] = _decode_bool(raw, name)
            elif kind == "enum":
                if raw not in ASSERTIONS:
                    raise VoucherError(f"assertion {raw!r} is not one of {', '.join(ASSERTIONS)}")
                values[attr] = raw
            else:
                if not isinstance(raw, str) or not raw:
                    raise VoucherError(f"{name} must be a non-empty string")
                values[attr] = raw
            if attr == "additional_configuration":
                values["additional_configuration_leaf"] = name
        if "serial_number" not in values:
            raise VoucherError(f"{key} lacks the mandatory serial-number")
        return cls(**values, extensions=extensions)

    # ------------------------------------------------------------------ serialise

    def to_dict(self) -> dict:
        leaves = _LEAVES[self.is_request]
        body: dict[str, Any] = {}
        for name, (attr, kind) in leaves.items():
            if attr == "additional_configuration" and name != self.additional_configuration_leaf:
                continue
            value = getattr(self, attr)
            if value is None:
                continue
            if kind == "date":
                body[name] = format_date(value)
            elif attr == "nonce" and self._nonce_text_fits():
                body[name] = self.nonce_text
            elif kind == "binary":
                body[name] = binascii.b2a_base64(value, newline=False).decode("ascii")
            else:
                body[name] = value
        body.update(self.extensions)
        return {self.top_key: body}

    def to_json(self) -> bytes:
        return _COMPACT_JSON.encode(self.to_dict()).encode()

    def _nonce_text_fits(self) -> bool:
        """Whether nonce_text still spells the nonce (a replace() may have changed the bytes)."""
        if self.nonce_text is None:
            return False
        try:
            return decode_binary(self.nonce_text, "nonce") == self.nonce
        except VoucherError:
            return False

    def replace(self, **changes) -> "Voucher":
        return replace(self, **changes)

    # ------------------------------------------------------------------ checks

    def require(self, *attrs: str) -> None:
        """Raise VoucherError naming the first missing leaf among `attrs`."""
        by_attr = {a: n for n, (a, _) in _LEAVES[self.is_request].items()}
        for attr in attrs:
            if getattr(self, attr) is None:
                raise VoucherError(f"voucher lacks {by_attr.get(attr, attr)}")

    def check_time(self, now: dt.datetime | None = None, *, skew: dt.timedelta = dt.timedelta(minutes=5)) -> None:
        """created-on must not lie in the future (beyond `skew`); expires-on must not have passed."""
        now = now or dt.datetime.now(dt.timezone.utc)
        if self.created_on is not None and self.created_on - skew > now:
            raise VoucherError(f"voucher created-on {format_date(self.created_on)} is in the future")
        if self.expires_on is not None and self.expires_on < now:
            raise VoucherError(f"voucher expired on {format_date(self.expires_on)}")


@dataclass(frozen=True)
class StatusReport:
    """voucher_status (RFC 8995 §5.7) and enrollstatus (§5.9.4) telemetry."""

    status: bool
    reason: str | None = None
    reason_context: dict | None = None
    version: int = 1

    @classmethod
    def from_json(cls, data: bytes | str) -> "StatusReport":
        obj = parse_json(data, "status report")
        if not isinstance(obj, dict):
            raise VoucherError("status report must be a JSON object")
        unknown = set(obj) - {"version", "status", "reason", "reason-context"}
        if unknown:
            raise VoucherError(f"unknown status report member(s): {', '.join(sorted(unknown))}")
        if not isinstance(obj.get("status"), bool):
            raise VoucherError("status report needs a boolean 'status'")
        version = obj.get("version", 1)
        if not isinstance(version, int) or isinstance(version, bool):
            raise VoucherError("status report 'version' must be an integer")
        reason = obj.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise VoucherError("status report 'reason' must be a string")
        context = obj.get("reason-context")
        if context is not None and not isinstance(context, dict):
            raise VoucherError("status report 'reason-context' must be an object")
        return cls(obj["status"], reason, context, version)

    def to_json(self) -> bytes:
        obj: dict[str, Any] = {"version": self.version, "status": self.status}
        if self.reason is not None:
            obj["reason"] = self.reason
        if self.reason_context is not None:
            obj["reason-context"] = self.reason_context
        return json.dumps(obj, separators=(",", ":")).encode()


__all__ = ["Voucher", "StatusReport", "parse_json", "parse_date", "format_date", "decode_binary",
           "VOUCHER_KEY", "VOUCHER_REQUEST_KEY", "ASSERTIONS"]
