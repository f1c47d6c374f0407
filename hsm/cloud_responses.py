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

    def __new__(cls, name: str, status: HTTPStatus) -> "CloudResponse":
        member = str.__new__(cls, name)
        member._value_ = name
        member.status = status
        return member

    # Location names the owner registrar (or another cloud registrar)
    REDIRECT = "redirect", HTTPStatus.TEMPORARY_REDIRECT
    # a voucher from the MASA, carrying est-domain (the est-domain flow)
    VOUCHER = "voucher", HTTPStatus.OK
    # + Retry-After: the voucher is being prepared
    ACCEPTED = "accepted", HTTPStatus.ACCEPTED
    # + Retry-After: no owner is known for the pledge yet
    OWNER_UNKNOWN = "owner-unknown", HTTPStatus.UNAUTHORIZED
    # the pledge is unknown (as if no record existed)
    UNKNOWN = "unknown", HTTPStatus.NOT_FOUND
    # the voucher-request is malformed
    BAD_REQUEST = "bad-request", HTTPStatus.BAD_REQUEST
    # + Retry-After: the registrar is overloaded
    OVERLOADED = "overloaded", HTTPStatus.SERVICE_UNAVAILABLE

    @classmethod
    def names(cls) -> list[str]:
        """Every name, in the order above (for CLI choices and error messages)."""
        return [member.value for member in cls]


__all__ = ["CloudResponse"]
