"""The pledge's tables: the machine keeps to them, they are complete, and the
generated documentation matches them. Pure logic, no I/O except the docs file."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pledgeforge.firmware import pledge_machine as pm
from pledgeforge.firmware.diagram import mermaid, render
from pledgeforge.firmware.pledge import PledgeDriver
from pledgeforge.firmware.pledge_tables import (TRANSITIONS, VOUCHER_RESPONSE_POLICY, Budget,
                                                IllegalTransition, Reaction, check_move,
                                                is_running, voucher_response_rule)
from pledgeforge.hsm.cloud_responses import CloudResponse

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "pledge-states.md"
CLOUD = "https://cloud.example:443"
SMALL = dict(max_redirects=2, max_restarts=2, max_transport_retries=1, max_accepted_retries=1,
             max_owner_wait_retries=1, max_overload_retries=1)


def _listed_moves() -> set[tuple[pm.State, pm.State]]:
    return {(source, target) for source, targets in TRANSITIONS.items() for target in targets}


# --- the transition table ------------------------------------------------------


def test_a_move_the_table_does_not_list_raises():
    check_move(pm.State.VOUCHER_REQUEST, pm.State.REDIRECTED)
    check_move(pm.State.EST_CSRATTRS, pm.State.FAILED)
    with pytest.raises(IllegalTransition, match="idle -> enrolled .*from idle: cloud-connect"):
        check_move(pm.State.IDLE, pm.State.ENROLLED)
    with pytest.raises(IllegalTransition, match="redirected -> voucher-request"):
        check_move(pm.State.REDIRECTED, pm.State.VOUCHER_REQUEST)
    with pytest.raises(IllegalTransition):
        check_move(pm.State.ENROLLED, pm.State.FAILED)  # nothing leaves a terminal state
    with pytest.raises(IllegalTransition):
        check_move(pm.State.WAITING, pm.State.WAITING)  # staying put is no move


def test_the_machine_checks_every_move_against_the_table():
    m = pm.PledgeMachine(pm.PledgeConfig(CLOUD))
    m.start()
    with pytest.raises(IllegalTransition, match="cloud-connect -> est-status"):
        m._move(pm.State.EST_STATUS, "skipping the whole protocol")
    assert m.state is pm.State.CLOUD_CONNECT and len(m.transitions) == 1


def _answers(action: pm.Action, rng: random.Random) -> pm.Event:
    """One answer a driver could give, mostly ones that make progress."""
    def pick(*weighted):
        events, weights = zip(*weighted)
        return rng.choices(events, weights)[0]

    transport = [(pm.Timeout(), 1), (pm.ConnectFailed("refused"), 1)]
    if isinstance(action, pm.Connect):
        return pick((pm.ConnectOk(True, b"cert-a"), 6), (pm.ConnectOk(True, b"cert-b"), 1),
                    (pm.ConnectOk(False, b"cert-c"), 2), *transport)
    if isinstance(action, pm.BuildVoucherRequest):
        return pick((pm.VoucherRequestBuilt(b"vr"), 20), (pm.KeyOperationFailed("k"), 1))
    if isinstance(action, pm.SendRequest) and action.url.endswith("/requestvoucher"):
        voucher = pm.Response(200, {"Content-Type": pm.VOUCHER_MEDIA_TYPE}, b"voucher")
        return pick((voucher, 8), (pm.Response(307, {"Location": "https://owner.example"}), 3),
                    (pm.Response(307, {"Location": "https://owner2.example"}), 2),
                    (pm.Response(202, {"Retry-After": "5"}), 1),
                    (pm.Response(401, {"Retry-After": "60"}), 1), (pm.Response(503), 1),
                    (pm.Response(404), 1), *transport)
    if isinstance(action, pm.SendRequest):
        return pick((pm.Response(200, body=b"ok"), 12), (pm.Response(204), 1),
                    (pm.Response(202, {"Retry-After": "1"}), 1), *transport)
    if isinstance(action, pm.VerifyVoucher):
        return pick((pm.VoucherVerified(b"pin"), 4), (pm.VoucherVerified(b"pin", "est.example"), 4),
                    (pm.VoucherVerified(b""), 1), (pm.VoucherRejected("bad"), 1))
    if isinstance(action, pm.CheckServerAgainstPin):
        return pick((pm.ServerMatchesPin(), 6), (pm.ServerPinMismatch("no"), 1))
    if isinstance(action, pm.GenerateCsr):
        return pick((pm.CsrReady(b"csr"), 20), (pm.KeyOperationFailed("k"), 1))
    if isinstance(action, pm.CheckCertificate):
        return pick((pm.CertificateAccepted(b"ldevid"), 6), (pm.CertificateRejected("no"), 1))
    assert isinstance(action, pm.Sleep), action
    return pm.TimerFired()


def test_every_listed_move_is_one_the_machine_makes():
    """The table lists nothing the machine never does: seeded random walks
    (always the same ones) pass through every listed move, and reach FAILED
    from every state an event can arrive in."""
    rng = random.Random(8995)
    seen: set[tuple[pm.State, pm.State]] = set()
    for run in range(600):
        counter = iter(range(1, 10**6))
        m = pm.PledgeMachine(pm.PledgeConfig(CLOUD, **SMALL),
                             nonce_source=lambda n: next(counter).to_bytes(n, "big"))
        action = m.start()
        while not action.is_terminal:
            cancel = rng.random() < 0.03
            action = m.handle(pm.Cancel("test") if cancel else _answers(action, rng))
        seen |= {(t.from_state, t.to_state) for t in m.transitions}
    # REDIRECTED is passed through within one step (no event arrives there to fail on).
    failures = {(s, pm.State.FAILED) for s in pm.State
                if is_running(s) and s is not pm.State.REDIRECTED}
    assert _listed_moves() - seen == set(), "listed moves never made"
    assert failures - seen == set(), "running states never seen failing"
    assert seen <= _listed_moves() | failures  # check_move enforces it; said here too


# --- the voucher-response policy -----------------------------------------------------

ANSWERS = [  # (status, headers) -> what the pledge must do
    (200, {"Content-Type": pm.VOUCHER_MEDIA_TYPE}, pm.VerifyVoucher),
    (307, {"Location": "https://owner.example"}, pm.Connect),
    (202, {"Retry-After": "5"}, pm.Sleep),
    (401, {"Retry-After": "60"}, pm.Sleep),
    (400, {}, pm.Failed),
    (401, {}, pm.Failed),
    (404, {}, pm.Failed),
    (429, {"Retry-After": "7"}, pm.Sleep),
    (500, {}, pm.Sleep),
    (503, {"Retry-After": "9"}, pm.Sleep),
    (403, {}, pm.Failed),
    (308, {"Location": "https://owner.example"}, pm.Failed),
    (204, {}, pm.Failed),
]
EXPECTED_ACTION = {Reaction.VERIFY: pm.VerifyVoucher, Reaction.FOLLOW: pm.Connect,
                   Reaction.WAIT: pm.Sleep, Reaction.FAIL: pm.Failed}


@pytest.mark.parametrize("status, headers, action_type", ANSWERS)
def test_the_machine_does_what_the_policy_row_says(status, headers, action_type):
    m = pm.PledgeMachine(pm.PledgeConfig(CLOUD))
    m.start()
    m.handle(pm.ConnectOk(True, b"cloud-cert"))
    m.handle(pm.VoucherRequestBuilt(b"vr"))
    rule = voucher_response_rule(status, "Retry-After" in headers)
    action = m.handle(pm.Response(status, headers))
    assert isinstance(action, EXPECTED_ACTION[rule.reaction]) and isinstance(action, action_type)
    if rule.reaction in (Reaction.WAIT, Reaction.FAIL):
        fixed_part = rule.reason.format(origin=CLOUD, status="").split(":")[0]
        assert fixed_part in action.reason


def test_every_policy_row_is_reachable():
    hit = {voucher_response_rule(status, "Retry-After" in headers) for status, headers, _ in ANSWERS}
    assert hit == set(VOUCHER_RESPONSE_POLICY)
    assert all((rule.budget is None) == (rule.reaction is not Reaction.WAIT)
               for rule in VOUCHER_RESPONSE_POLICY)


@pytest.mark.parametrize("answer", list(CloudResponse), ids=str)
def test_each_cloud_response_meets_the_policy_row_that_names_it(answer):
    rule = voucher_response_rule(answer.status, has_retry_after=True)
    assert rule.cloud_response is answer
    assert answer.status in rule.statuses


def test_each_budget_takes_its_own_limits_from_the_config():
    config = pm.PledgeConfig(CLOUD, max_transport_retries=1, max_accepted_retries=2,
                             max_owner_wait_retries=3, max_overload_retries=4,
                             accepted_wait_cap_s=5.0, owner_wait_cap_s=6.0, overload_wait_cap_s=7.0)
    assert {budget: config.budget(budget) for budget in Budget} == {
        Budget.TRANSPORT: (1, None), Budget.ACCEPTED: (2, 5.0),
        Budget.OWNER_WAIT: (3, 6.0), Budget.OVERLOAD: (4, 7.0),
    }


# --- the driver ----------------------------------------------------------------------


def test_the_driver_performs_every_action_that_expects_an_answer():
    waiting_for_answers = {cls for cls in pm.Action.__subclasses__() if cls.expects}
    assert set(PledgeDriver.PERFORMERS) == waiting_for_answers


# --- the generated documentation ------------------------------------------------------


def test_the_checked_in_state_diagram_is_current():
    assert DOC.read_text(encoding="utf-8") == render(), (
        f"{DOC} is stale: regenerate it with `python -m pledgeforge.firmware.diagram "
        f"docs/pledge-states.md`")


def test_the_diagram_draws_every_listed_move_and_only_those():
    arrows = set(re.findall(r"^\s+(\w+) --> (\w+) :", mermaid(), re.MULTILINE))
    assert arrows == {(a.value.replace("-", "_"), b.value.replace("-", "_"))
                      for a, b in _listed_moves()}


def test_the_generator_writes_and_checks_the_file(tmp_path):
    target = tmp_path / "pledge-states.md"
    command = [sys.executable, "-m", "pledgeforge.firmware.diagram"]
    subprocess.run([*command, str(target)], check=True, timeout=60)
    assert target.read_text(encoding="utf-8") == render()
    ok = subprocess.run([*command, "--check", str(target)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    target.write_text(render().replace("| 404 |", "| 410 |"), encoding="utf-8")
    stale = subprocess.run([*command, "--check", str(target)], capture_output=True, text=True,
                           timeout=60)
    assert stale.returncode == 1
    assert stale.stderr.strip() == (f"{target} is stale: regenerate it with "
                                    f"`python -m pledgeforge.firmware.diagram {target}`")
