"""The pledge's behaviour as data: its state moves, its voucher-response policy, its budgets.

As h11 keeps HTTP's states in tables that its connection object consults,
`PledgeMachine` consults these on every step:

- `TRANSITIONS`: every move between states the machine may make, with what
  causes it. Every state change goes through `check_move`; a move the table
  does not list raises `IllegalTransition` (a bug in the machine, never the
  driver's fault). FAILED is reachable from every running state (`Cancel` is
  accepted at any time), so it is not repeated for each.
- `VOUCHER_RESPONSE_POLICY`: what the pledge does with each answer to a
  voucher-request (draft-ietf-anima-brski-cloud-20), in the vocabulary the
  cloud registrar uses for its answers (`CloudResponse`), and which retry
  budget a wait spends.
- `Budget`: the per-request retry budgets; `PledgeConfig.budget` gives each
  one's limit and wait cap.

`python -m pledgeforge.firmware.diagram` renders all three into
docs/pledge-states.md (a Mermaid state diagram and two tables); a test fails
when the checked-in file no longer matches.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import MappingProxyType

from pledgeforge.hsm.cloud_responses import CloudResponse

from .pledge_events import State

# --- state moves ------------------------------------------------------------------

_S = State

#: from-state -> {to-state: what causes the move}. The texts label the diagram's arrows.
TRANSITIONS: Mapping[State, Mapping[State, str]] = MappingProxyType({
    _S.IDLE: {
        _S.CLOUD_CONNECT: "start()",
    },
    _S.CLOUD_CONNECT: {
        _S.VOUCHER_REQUEST: "ConnectOk, authenticated by the built-in anchors",
        _S.WAITING: "connect failed, or server not authenticated",
    },
    _S.VOUCHER_REQUEST: {
        _S.VOUCHER_RECEIVED: "200 voucher",
        _S.REDIRECTED: "307 from an authenticated server",
        _S.WAITING: "202, 401 + Retry-After, 429, 5xx, transport failure, or 307 over provisional TLS",
    },
    _S.REDIRECTED: {
        _S.PROVISIONAL_CONNECT: "new voucher-request with a fresh nonce",
    },
    _S.PROVISIONAL_CONNECT: {
        _S.VOUCHER_REQUEST: "ConnectOk over provisional TLS",
        _S.WAITING: "connect failed",
    },
    _S.VOUCHER_RECEIVED: {
        _S.VOUCHER_VERIFIED: "VoucherVerified",
        _S.VOUCHER_REJECTED: "VoucherRejected, or unusable voucher contents",
    },
    _S.VOUCHER_VERIFIED: {
        _S.VOUCHER_REJECTED: "ServerPinMismatch",
        _S.EST_CONNECT: "voucher_status sent, est-domain names the EST server",
        _S.EST_CACERTS: "voucher_status sent, EST at the voucher server",
    },
    _S.VOUCHER_REJECTED: {
        _S.WAITING: "voucher_status sent, start over at the cloud registrar",
    },
    _S.EST_CONNECT: {
        _S.EST_CACERTS: "ConnectOk",
        _S.EST_CSRATTRS: "ConnectOk after a wait",
        _S.EST_ENROLL: "ConnectOk after a wait",
        _S.WAITING: "connect failed, or server not authenticated",
    },
    _S.EST_CACERTS: {
        _S.EST_CSRATTRS: "200 CA certificates",
        _S.EST_STATUS: "any other answer: enrollstatus reports it",
        _S.WAITING: "transport failure",
    },
    _S.EST_CSRATTRS: {
        _S.EST_ENROLL: "200, 204 or 404",
        _S.EST_STATUS: "any other answer: enrollstatus reports it",
        _S.WAITING: "transport failure",
    },
    _S.EST_ENROLL: {
        _S.EST_STATUS: "certificate accepted; or rejected, key or CSR failed, answer refused, "
                       "202 budget spent: enrollstatus reports why",
        _S.WAITING: "202, or transport failure",
    },
    _S.EST_STATUS: {
        _S.ENROLLED: "enrollstatus sent",
    },
    _S.WAITING: {
        _S.CLOUD_CONNECT: "TimerFired, to retry or start over",
        _S.PROVISIONAL_CONNECT: "TimerFired, to retry",
        _S.EST_CONNECT: "TimerFired, to retry",
    },
})

#: Why every running state may also move to FAILED (not repeated in TRANSITIONS).
FAILURE_FROM_ANY_RUNNING_STATE = ("every running state ends here on Cancel or on a failure with no "
                                  "retry left; after the voucher, a failure on the EST server's "
                                  "connection passes est-status first, whose enrollstatus reports why")


class IllegalTransition(RuntimeError):
    """The machine tried a move that TRANSITIONS does not list: a bug in the machine."""


def is_running(state: State) -> bool:
    return state is not State.IDLE and not state.is_terminal


def move_allowed(from_state: State, to_state: State) -> bool:
    if to_state is State.FAILED:
        return is_running(from_state)
    return to_state in TRANSITIONS.get(from_state, {})


def check_move(from_state: State, to_state: State) -> None:
    """Raise IllegalTransition unless the tables allow moving from `from_state` to `to_state`."""
    if not move_allowed(from_state, to_state):
        allowed = ", ".join(s.value for s in TRANSITIONS.get(from_state, {})) or "nothing"
        raise IllegalTransition(
            f"{from_state.value} -> {to_state.value} is not in the pledge's transition table "
            f"(from {from_state.value}: {allowed})"
        )


# --- retry budgets ----------------------------------------------------------------


class Budget(enum.Enum):
    """A retry budget, counted per request. `PledgeConfig.budget(b)` gives
    (most retries, longest wait or None for plain backoff)."""

    TRANSPORT = "transport"
    ACCEPTED = "accepted"
    OWNER_WAIT = "owner-wait"
    OVERLOAD = "overload"

    @property
    def spent_on(self) -> str:
        return _SPENT_ON[self]


_SPENT_ON = {
    Budget.TRANSPORT: "connection errors and timeouts",
    Budget.ACCEPTED: "202: the voucher (or, at /simpleenroll, the certificate) is not ready "
                     "yet; at /simpleenroll a spent budget fails",
    Budget.OWNER_WAIT: "401 + Retry-After: no owner known yet, which may take hours",
    Budget.OVERLOAD: "5xx: the server is unavailable, or 429: it asks the pledge to slow down",
}


# --- the voucher-response policy -----------------------------------------------------


class Reaction(enum.Enum):
    """What the pledge does with an answer to its voucher-request."""

    VERIFY = "verify the voucher"
    FOLLOW = "follow the redirect"
    WAIT = "wait, then resend"
    FAIL = "fail"


ANY_STATUS = range(100, 1000)


@dataclass(frozen=True)
class VoucherResponseRule:
    """One row of the policy. `reason` is shown for WAIT and FAIL; it may name
    `{origin}` (the server asked) and `{status}` (status line and the server's
    short text)."""

    statuses: range | frozenset[int]
    reaction: Reaction
    reason: str
    note: str
    #: the wait spends this budget (WAIT only)
    budget: Budget | None = None
    #: the rule takes only answers that carry a Retry-After header
    needs_retry_after: bool = False
    #: the cloud registrar's name for this answer, where it has one
    cloud_response: CloudResponse | None = None

    def matches(self, status: int, has_retry_after: bool) -> bool:
        return status in self.statuses and (has_retry_after or not self.needs_retry_after)

    @property
    def answer(self) -> str:
        """The statuses this rule takes, as the documentation writes them."""
        if self.statuses == ANY_STATUS:
            text = "any other"
        elif isinstance(self.statuses, range):
            text = f"{self.statuses.start // 100}xx"
        else:
            text = ", ".join(str(s) for s in sorted(self.statuses))
        return text + (" + Retry-After" if self.needs_retry_after else "")


def _only(status: HTTPStatus) -> frozenset[int]:
    return frozenset({int(status)})


#: First match wins. Every budget is per request; when one runs out the pledge
#: starts over at the cloud registrar (at most PledgeConfig.max_restarts times).
VOUCHER_RESPONSE_POLICY: tuple[VoucherResponseRule, ...] = (
    VoucherResponseRule(
        _only(HTTPStatus.OK), Reaction.VERIFY, "",
        "check media type, signature, serial number and nonce",
        cloud_response=CloudResponse.VOUCHER,
    ),
    VoucherResponseRule(
        _only(HTTPStatus.TEMPORARY_REDIRECT), Reaction.FOLLOW, "",
        "only from a server the built-in anchors authenticated (else start over); "
        "a loop or more than max_redirects hops fails; each hop gets a new "
        "voucher-request with a fresh nonce",
        cloud_response=CloudResponse.REDIRECT,
    ),
    VoucherResponseRule(
        _only(HTTPStatus.ACCEPTED), Reaction.WAIT,
        "{origin} accepted the voucher-request, voucher not ready yet",
        "wait min(Retry-After, accepted_wait_cap_s), resend",
        budget=Budget.ACCEPTED, cloud_response=CloudResponse.ACCEPTED,
    ),
    VoucherResponseRule(
        _only(HTTPStatus.UNAUTHORIZED), Reaction.WAIT,
        "{origin} does not know this pledge's owner yet (401)",
        "owner not known yet: wait up to owner_wait_cap_s, resend",
        budget=Budget.OWNER_WAIT, needs_retry_after=True,
        cloud_response=CloudResponse.OWNER_UNKNOWN,
    ),
    VoucherResponseRule(
        _only(HTTPStatus.BAD_REQUEST), Reaction.FAIL,
        "{origin} rejected the voucher-request as malformed: {status}",
        "asking again will not change the answer",
        cloud_response=CloudResponse.BAD_REQUEST,
    ),
    VoucherResponseRule(
        _only(HTTPStatus.UNAUTHORIZED), Reaction.FAIL,
        "{origin} did not accept this pledge's IDevID: {status}",
        "401 without Retry-After: the IDevID is refused",
    ),
    VoucherResponseRule(
        _only(HTTPStatus.NOT_FOUND), Reaction.FAIL,
        "{origin} does not know this pledge (unknown serial number): {status}; "
        "the vendor must register it",
        "the vendor registers the pledge, then the board is restarted",
        cloud_response=CloudResponse.UNKNOWN,
    ),
    VoucherResponseRule(
        _only(HTTPStatus.TOO_MANY_REQUESTS), Reaction.WAIT,
        "{origin} asks the pledge to slow down: {status}",
        "rate-limited (RFC 6585): as 5xx, wait Retry-After (up to overload_wait_cap_s) "
        "or back off, resend",
        budget=Budget.OVERLOAD,
    ),
    VoucherResponseRule(
        range(500, 600), Reaction.WAIT,
        "{origin} is unavailable: {status}",
        "wait Retry-After (up to overload_wait_cap_s) or back off, resend",
        budget=Budget.OVERLOAD, cloud_response=CloudResponse.OVERLOADED,
    ),
    VoucherResponseRule(
        ANY_STATUS, Reaction.FAIL,
        "{origin} answered the voucher-request with {status}",
        "403, other 4xx, other 3xx, other 2xx: asking again will not change the answer",
    ),
)


def voucher_response_rule(status: int, has_retry_after: bool) -> VoucherResponseRule:
    """The policy row for an answer to a voucher-request."""
    for rule in VOUCHER_RESPONSE_POLICY:
        if rule.matches(status, has_retry_after):
            return rule
    # A status outside 100-999 is no HTTP status at all: as "any other".
    return VOUCHER_RESPONSE_POLICY[-1]


__all__ = [
    "TRANSITIONS", "FAILURE_FROM_ANY_RUNNING_STATE", "IllegalTransition", "is_running",
    "move_allowed", "check_move", "Budget", "Reaction", "VoucherResponseRule",
    "VOUCHER_RESPONSE_POLICY", "voucher_response_rule",
]
