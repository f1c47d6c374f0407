"""What the manufacturing database hands on: who the MASA and the registrars must know.

Both formats are JSON lines, one board a line, with the fields of the
command that imports them (and nothing else, so an importer can refuse what
it does not know):

    masa       {"serial", "owner", "est_domain", "additional_configuration_url"}
               -> pledgeforge masa add-device --config masa.toml --from FILE
    ownership  {"serial", "flow", "response", "location"}
               -> pledgeforge registrar add-pledge --config owner.toml --from FILE (serial, flow)
                  pledgeforge registrar set-response --config cloud.toml --from FILE (serial,
                  response: redirect for the redirect flow, voucher for est-domain; location:
                  where a redirect sends the pledge, the owner registrar)

A lab imports both (pledgeforge/lab/databases.py), as its MASA, cloud
registrar and owner registrar would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable

from pledgeforge.errors import UsageError, closest_name
from pledgeforge.hsm.identity_names import IdentityNameError, check_name, check_serial_number

from .records import BoardRecord

FORMATS = ("masa", "ownership")
FLOWS = ("redirect", "est-domain")
#: the cloud registrar's answer for each flow (hsm/cloud_responses.py names)
FLOW_RESPONSES = {"redirect": "redirect", "est-domain": "voucher"}
MASA_FIELDS = ("serial", "owner", "est_domain", "additional_configuration_url")
OWNERSHIP_FIELDS = ("serial", "flow", "response", "location")


class ImportFileError(UsageError):
    """A line of an import file is not a record of its format."""


@dataclass(frozen=True)
class MasaDevice:
    serial: str
    owner: str
    est_domain: str | None = None
    additional_configuration_url: str | None = None


@dataclass(frozen=True)
class Ownership:
    serial: str
    flow: str
    response: str
    #: the redirect flow's target: the owner registrar's URL
    location: str | None = None


def masa_records(boards: Iterable[BoardRecord], owner: str, est_domain: str | None = None,
                 additional_configuration_url: str | None = None) -> list[dict]:
    check_name(owner, "owner name")
    return [{"serial": b.serial, "owner": owner, "est_domain": est_domain,
             "additional_configuration_url": additional_configuration_url} for b in boards]


def ownership_records(boards: Iterable[BoardRecord], flow: str, location: str | None = None) -> list[dict]:
    if flow not in FLOWS:
        raise UsageError(f"flow must be redirect or est-domain, not {flow!r}")
    if flow == "redirect" and not location:
        raise UsageError("the redirect flow needs the owner registrar's URL the cloud registrar "
                         "redirects to (--location)")
    location = location if flow == "redirect" else None
    return [{"serial": b.serial, "flow": flow, "response": FLOW_RESPONSES[flow], "location": location}
            for b in boards]


def to_lines(records: Iterable[dict]) -> bytes:
    return b"".join(json.dumps(record, sort_keys=True).encode() + b"\n" for record in records)


def _records(text: str, source: str, fields: tuple[str, ...], required: tuple[str, ...]):
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ImportFileError(f"{where} is not JSON ({exc})") from None
        if not isinstance(record, dict):
            raise ImportFileError(f"{where} is not a JSON object")
        for key in record:
            if key not in fields:
                hint = closest_name(key, fields)
                raise ImportFileError(f"{where}: unknown field {key!r}"
                                      + (f"; did you mean {hint!r}?" if hint else
                                         f"; fields: {', '.join(fields)}"))
        for key in required:
            if not isinstance(record.get(key), str):
                raise ImportFileError(f"{where}: {key!r} is missing or not a string")
        for key in fields:
            if record.get(key) is not None and not isinstance(record[key], str):
                raise ImportFileError(f"{where}: {key!r} must be a string or null")
        try:
            check_serial_number(record["serial"], f"{where}: serial")
        except IdentityNameError as exc:
            raise ImportFileError(str(exc)) from None
        yield where, record


def read_masa(text: str, source: str = "the import file") -> list[MasaDevice]:
    """The devices of a masa export (one clear error for the first bad line)."""
    return [MasaDevice(record["serial"], record["owner"], record.get("est_domain"),
                       record.get("additional_configuration_url"))
            for _, record in _records(text, source, MASA_FIELDS, ("serial", "owner"))]


def read_ownership(text: str, source: str = "the import file") -> list[Ownership]:
    """The pledges of an ownership export (one clear error for the first bad line)."""
    out = []
    for where, record in _records(text, source, OWNERSHIP_FIELDS, ("serial", "flow", "response")):
        if record["flow"] not in FLOWS:
            raise ImportFileError(f"{where}: flow must be redirect or est-domain, "
                                  f"not {record['flow']!r}")
        out.append(Ownership(record["serial"], record["flow"], record["response"],
                             record.get("location")))
    return out


__all__ = ["FORMATS", "FLOWS", "FLOW_RESPONSES", "MasaDevice", "Ownership", "masa_records",
           "ownership_records", "to_lines", "read_masa", "read_ownership", "ImportFileError"]
