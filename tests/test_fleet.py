"""Fleets: many pledges at once against one lab, each with its own keys in hardware.

One lab for the module; each test runs its own fleet in it. The 50-pledge fleet goes
through `pledgeforge fleet run` as a user runs it, with jq reading its JSON lines and
openssl checking every LDevID; the 503 fleet runs in process, so that the cloud
registrar's answers can be set for its serial numbers between provisioning and the run.
Timings are reported but never judged here (benchmarks/fleet.py does that).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from clirunner import jq, openssl, run_cli
from pledgeforge.errors import UsageError
from pledgeforge.firmware.identity import PledgeIdentity
from pledgeforge.fleet import Fleet, FleetPlan, PledgeOutcome
from pledgeforge.fleet.cpu import children
from pledgeforge.fleet.key_pools import FIRST_HANDLE, MAX_TPMS, PLEDGES_PER_TOKEN, PLEDGES_PER_TPM
from pledgeforge.fleet.report import percentile
from pledgeforge.hsm import keystore
from pledgeforge.hsm.cloud_responses import CloudResponse
from pledgeforge.lab.configs import LAB_MASA_RATE_LIMITS
from pledgeforge.registrar.config import MasaRateLimits, load_config
from pledgeforge.registrar.rate_limit import Limit, TokenBuckets


@pytest.mark.slow
def test_a_mixed_fleet_of_50_on_both_key_stores_enrolls_and_every_ldevid_chains_to_the_owner_ca(lab):
    result = run_cli("fleet", "run", "--lab", lab.dir, "--count", "50", "--concurrency", "8",
                     "--flow", "mixed", "--keystore", "mixed", "--json", timeout=900)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    # jq reads every line: 50 pledges, then the figures.
    records = jq(result.stdout, ".record")
    assert records == ["pledge"] * 50 + ["summary"]
    pledges = jq(result.stdout, 'select(.record == "pledge")')
    [summary] = jq(result.stdout, 'select(.record == "summary")')
    assert all(p["enrolled"] and p["state"] == "enrolled" and p["reason"] is None for p in pledges)
    assert Counter((p["flow"], p["keystore"]) for p in pledges) == {
        ("redirect", "pkcs11"): 13, ("est-domain", "pkcs11"): 13, ("redirect", "tpm"): 12, ("est-domain", "tpm"): 12}

    # openssl: every LDevID chains to the owner CA; the owner registrar holds each as confirmed.
    ldevids = sorted(p["ldevid"] for p in pledges)
    verified = openssl("verify", "-CAfile", lab.pki("owner-ca"), *ldevids)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.decode().count(": OK") == 50
    store = lab.owner_store()
    for p in pledges:
        assert [i.state for i in store.ldevids(p["serial"])] == ["confirmed"], p["serial"]

    # Each pledge has its own IDevID key: PKCS#11 ones on the fleet's tokens, at most
    # PLEDGES_PER_TOKEN a token; TPM ones at their own handles, PLEDGES_PER_TPM a TPM.
    identities = {p["serial"]: PledgeIdentity.load(lab.pledge_dir(p["serial"])) for p in pledges}
    assert len({i.idevid.public_key().public_numbers() for i in identities.values()}) == 50
    tokens, tpms = Counter(), Counter()
    for p in pledges:
        uri = keystore.parse_key_uri(identities[p["serial"]].idevid_key_uri)
        if p["keystore"] == "pkcs11":
            assert uri.token.startswith("fleet-") and uri.object == f"idevid-{p['serial']}"
            tokens[uri.token] += 1
        else:
            assert (uri.handle - FIRST_HANDLE) % 3 == 0
            tpms[(uri.tcti, uri.handle)] += 1
    assert max(tokens.values()) <= PLEDGES_PER_TOKEN and len(tokens) == 4
    assert max(tpms.values()) == 1 and len({tcti for tcti, _ in tpms}) == 2
    # One of the fleet's tokens holds exactly its pledges' IDevID keys and their LDevID keys.
    fleet_token = min(tokens)
    on_token = {s for s, i in identities.items() if f"token={fleet_token};" in i.idevid_key_uri}
    token_uri = keystore.parse_key_uri(identities[min(on_token)].idevid_key_uri).with_object(None)
    assert {k.label for k in keystore.list_keys(token_uri)} == \
        {f"idevid-{s}" for s in on_token} | {f"ldevid-{s}-a" for s in on_token}
    assert Path(lab.dir, "fleets", summary["fleet"], "softhsm", "softhsm2.conf").is_file()

    # The figures: counts, rate, ordered percentiles, CPU of each side.
    assert (summary["count"], summary["enrolled"], summary["failed"], summary["failures"]) == (50, 50, 0, {})
    assert summary["enrollments_per_s"] > 0
    latency = summary["latency_s"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    cpu = summary["cpu_s_per_enrollment"]
    assert set(cpu) == {"fleet", "fleet_key_stores", "masa", "cloud", "owner", "registrar_side"}
    assert all(value > 0 for value in cpu.values()), cpu
    assert cpu["registrar_side"] == pytest.approx(cpu["masa"] + cpu["cloud"] + cpu["owner"], abs=1e-4)
    # Progress goes to stderr, never to stdout; no bar when stderr is no terminal.
    assert b"provisioned in" in result.stderr and b"\x1b[" not in result.stderr


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_a_fleet_where_the_cloud_registrar_answers_503_to_a_share_still_enrolls_within_its_budgets(lab):
    plan = FleetPlan(count=12, concurrency=6, flow="mixed", keystore="pkcs11")
    with Fleet(lab, plan) as fleet:
        fleet.provision()
        # A third of the pledges: 503 + Retry-After twice, then the answer of their flow.
        overloaded = {m.pledge.serial for m in fleet.members if m.index % 3 == 0}
        for member in fleet.members:
            if member.pledge.serial in overloaded:
                then = CloudResponse.REDIRECT if member.flow == "redirect" else CloudResponse.VOUCHER
                lab.set_cloud_response(member.pledge.serial, CloudResponse.OVERLOADED, retry_after=1,
                                       times=2, then=then)
        seen: list[PledgeOutcome] = []
        report = fleet.run(seen.append)
        conf = str(fleet.tokens.softhsm.conf)
        assert any(conf in _cmdline(pid) for pid in children(os.getpid()))
    # Closing the fleet stopped the module host of its SoftHSM.
    assert not any(conf in _cmdline(pid) for pid in children(os.getpid()))
    assert report.failed == 0 and not report.failures, report.failures
    assert {o.serial for o in seen} == {m.pledge.serial for m in fleet.members}
    # Each overloaded pledge waited out both answers and was not turned away; the others never waited.
    assert {o.serial: o.waits for o in seen} == {o.serial: 2 if o.serial in overloaded else 0 for o in seen}
    for serial in overloaded:
        result = json.loads((lab.pledge_dir(serial) / "result.json").read_text())
        waits = [t["reason"] for t in result["transitions"] if t["to"] == "waiting"]
        assert len(waits) == 2 and all("503" in reason for reason in waits), waits
    assert json.loads(json.dumps(report.to_dict()))["enrolled"] == 12


def test_fleet_run_refuses_what_it_cannot_do_with_the_exit_status_of_its_kind(lab, tmp_path):
    too_many = run_cli("fleet", "run", "--lab", lab.dir, "--count", str(MAX_TPMS * PLEDGES_PER_TPM + 1),
                       "--keystore", "tpm")
    assert too_many.returncode == 2
    err = too_many.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and f"at most {MAX_TPMS * PLEDGES_PER_TPM} TPM pledges" in err
    no_lab = run_cli("fleet", "run", "--lab", tmp_path / "nothing", "--count", "3", "--json")
    assert no_lab.returncode == 3 and no_lab.stdout == b""
    assert b"pledgeforge lab up" in no_lab.stderr


def test_mixed_plans_hold_each_pairing_of_flow_and_key_store():
    plan = FleetPlan(count=8, flow="mixed", keystore="mixed")
    assert [plan.member(i) for i in range(4)] == [("redirect", "pkcs11"), ("est-domain", "pkcs11"),
                                                  ("redirect", "tpm"), ("est-domain", "tpm")]
    assert FleetPlan(count=3, flow="est-domain").member(2) == ("est-domain", "pkcs11")
    for bad in (dict(count=0), dict(count=5, concurrency=0), dict(count=5, flow="sideways"),
                dict(count=5, keystore="floppy")):
        with pytest.raises(UsageError):
            FleetPlan(**bad)
    # A mixed fleet puts only every other pair on TPMs, so it may be larger than a TPM-only one.
    FleetPlan(count=2 * MAX_TPMS * PLEDGES_PER_TPM, keystore="mixed")


def test_percentiles_are_nearest_rank_and_failures_count_once_per_reason():
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.50), percentile(values, 0.95), percentile(values, 0.99)) == (50.0, 95.0, 99.0)
    assert percentile([3.0], 0.99) == 3.0 and percentile([], 0.5) is None
    a = PledgeOutcome("FL-A-1", "redirect", "pkcs11", "failed", "voucher for FL-A-1 refused", 1.0)
    b = PledgeOutcome("FL-A-2", "redirect", "pkcs11", "failed", "voucher for FL-A-2 refused", 1.0)
    assert a.failure == b.failure == "voucher for <serial> refused"


def test_the_lab_masa_takes_a_thousand_vouchers_from_one_registrar_at_twenty_a_second(lab):
    """The MASA's defaults would answer 429 to a lab enrolling a fleet; the lab's limits do not."""
    configured = load_config(lab.config_path("masa")).rate_limits
    assert configured == LAB_MASA_RATE_LIMITS

    def refused(limits: MasaRateLimits) -> int:
        registrar = TokenBuckets(Limit(limits.registrar_rate_per_s, limits.registrar_burst), 10)
        address = TokenBuckets(Limit(limits.address_rate_per_s, limits.address_burst), 10)
        # 1,000 vouchers at 20 a second, each with a retried request beside it from the same address.
        return sum(1 for i in range(1000) if registrar.take("owner registrar", i / 20) > 0
                   or address.take("127.0.0.1", i / 20) > 0 or address.take("127.0.0.1", i / 20) > 0)

    assert refused(configured) == 0
    assert refused(MasaRateLimits()) > 0


def test_the_servers_sqlite_databases_commit_without_a_sync_each_and_take_concurrent_readers(tmp_path):
    """WAL (readers never wait for the writer) with synchronous=NORMAL: the servers commit on
    their event loop, and an fsync per commit stalled every other connection."""
    from pledgeforge.registrar.db import OwnerStore

    store = OwnerStore(f"sqlite:///{tmp_path / 'owner.sqlite'}")
    try:
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    finally:
        store.engine.dispose()
