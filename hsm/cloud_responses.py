"""What a cloud registrar answers a voucher-request, by name and HTTP status.

One vocabulary (draft-ietf-anima-brski-cloud-20, section 3) for everyone who
speaks of these answers: the cloud registrar's database stores the names, its
CLI (`registrar set-response`) and the lab offer them, the server maps them to
statuses, and the pledge's voucher-response policy says what it does with
each. It lives beside the well-known BRSKI names because the pledge and the
servers both import it and neither may import the other.
"""

from __future__ import annotations

import enum
from http import HTTPStatus


class CloudResponse(enum.StrEnum):
    """One answer of the cloud registrar; its value is the name stored and typed."""

    status: HTTPStatus
    meaning: str

    def __new__(cls, name: str, status: HTTPStatus, meaning: str) -> "CloudResponse":
        member = str.__new__(cls, name)
        member._value_ = name
        member.status = status
        member.meaning = meaning
        return member

    REDIRECT = ("redirect", HTTPStatus.TEMPORARY_REDIRECT,
                "Location names the owner registrar (or another cloud registrar)")
    VOUCHER = ("voucher", HTTPStatus.OK,
               "a voucher from the MASA, carrying est-domain (the est-domain flow)")
    ACCEPTED = ("accepted", HTTPStatus.ACCEPTED,
                "+ Retry-After: the voucher is being prepared")
    OWNER_UNKNOWN = ("owner-unknown", HTTPStatus.UNAUTHORIZED,
                     "+ Retry-After: no owner is known for the pledge yet")
    UNKNOWN = ("unknown", HTTPStatus.NOT_FOUND,
               "the pledge is unknown (as if no record existed)")
    BAD_REQUEST = ("bad-request", HTTPStatus.BAD_REQUEST,
                   "the voucher-request is malformed")
    OVERLOADED = ("overloaded", HTTPStatus.SERVICE_UNAVAILABLE,
                  "+ Retry-After: the registrar is overloaded")

    @classmethod
    def names(cls) -> list[str]:
        """Every name, in the order above (for CLI choices and error messages)."""
        return [member.value for member in cls]


__all__ = ["CloudResponse"]
