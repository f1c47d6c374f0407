"""A fleet: many lab pledges provisioned, then bootstrapped at once by one process.

Two phases. `provision()` (not timed) makes every pledge as the lab makes one
(pledgeforge/lab/pledges.py: IDevID key in hardware, IDevID from the
manufacturer CA, ownership for its flow), with its keys in the fleet's pools of
tokens and TPMs (key_pools.py). `run()` (timed) bootstraps them through the
same code as `pledgeforge pledge bootstrap` (lab_pledge.bootstrap: the sans-I/O
pledge machine behind its blocking driver), `concurrency` at a time on a
bounded pool of worker threads, and reports each pledge as it ends.

Why threads over the existing driver rather than asyncio over the machine:
what a pledge spends is CPU in this process (tlslite's handshake logic in
Python, its cryptography done by OpenSSL: about 25 ms an enrollment, under the
GIL) and waits on the servers and key stores (sockets, the module host, swtpm),
during which a blocked thread releases the GIL. An event loop would run the
same Python code on the same core: it would save thread switches, not CPU.
benchmarks/fleet.py measures the rate at each concurrency. The worker pool keeps
the one driver the CLI and the boards use (no second implementation of the
pledge's I/O), and its size bounds how many TLS sessions the fleet holds open.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pledgeforge import lab_pledge
from pledgeforge.errors import UsageError
from pledgeforge.firmware.pledge_events import State
from pledgeforge.lab import Lab, ProvisionedPledge

from .cpu import cpu_used, read_cpu
from .key_pools import TokenPool, TpmPool, check_tpm_fleet
from .report import FleetReport, PledgeOutcome

FLOWS = ("redirect", "est-domain", "mixed")
KEYSTORES = ("pkcs11", "tpm", "mixed")
MAX_COUNT = 100_000
MAX_CONCURRENCY = 256


@dataclass(frozen=True)
class FleetPlan:
    """How many pledges, how many at once, which flows and key stores (`mixed` alternates:
    flows pledge by pledge, key stores pair by pair, so every four pledges hold each pairing)."""

    count: int
    concurrency: int = 8
    flow: str = "redirect"
    keystore: str = "pkcs11"
    #: seconds for each connect, handshake and request of a pledge
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_COUNT:
            raise UsageError(f"a fleet has 1 to {MAX_COUNT} pledges, not {self.count}")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise UsageError(f"concurrency must be 1 to {MAX_CONCURRENCY}, not {self.concurrency}")
        if self.flow not in FLOWS:
            raise UsageError(f"flow must be one of {', '.join(FLOWS)}, not {self.flow!r}")
        if self.keystore not in KEYSTORES:
            raise UsageError(f"keystore must be one of {', '.join(KEYSTORES)}, not {self.keystore!r}")
        if self.timeout <= 0:
            raise UsageError(f"timeout must be a number of seconds > 0, not {self.timeout}")
        tpm_pledges = sum(1 for i in range(self.count) if self.member(i)[1] == "tpm")
        if tpm_pledges:
            check_tpm_fleet(tpm_pledges)

    def member(self, index: int) -> tuple[str, str]:
        """(flow, keystore) of the `index`th pledge."""
        flow = self.flow if self.flow != "mixed" else FLOWS[index % 2]
        keystore = self.keystore if self.keystore != "mixed" else KEYSTORES[(index // 2) % 2]
        return flow, keystore


@dataclass
class _Member:
    index: int
    pledge: ProvisionedPledge
    flow: str
    keystore: str


class Fleet:
    """One fleet in a running lab; its key stores and records live in lab/fleets/NAME/."""

    def __init__(self, lab: Lab, plan: FleetPlan, name: str | None = None):
        self.lab = lab
        self.plan = plan
        self.name = name or (dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
                             + "-" + secrets.token_hex(2))
        self.directory: Path = lab.dir / "fleets" / self.name
        self.tokens = TokenPool(self.directory)
        self.tpms = TpmPool(self.directory)
        self.members: list[_Member] = []
        self.provisioning_s: float | None = None
        #: set to stop a run: pledges not started yet are not started, waiting ones stop waiting
        self.cancel = threading.Event()

    # ------------------------------------------------------------------ provisioning (not timed)

    def serial(self, index: int) -> str:
        return f"FL-{self.name.rsplit('-', 1)[1].upper()}-{index:05d}"

    def provision(self, progress: Callable[[int], None] | None = None) -> None:
        """Make every pledge: keys in the pools, IDevID, ownership. `progress(n)` after each."""
        started = time.perf_counter()
        members = [self.plan.member(i) for i in range(self.plan.count)]
        counts = {kind: sum(1 for _, k in members if k == kind) for kind in ("pkcs11", "tpm")}
        self.directory.mkdir(parents=True, exist_ok=True)
        if counts["pkcs11"]:
            self.tokens.prepare(counts["pkcs11"])
        if counts["tpm"]:
            self.tpms.prepare(counts["tpm"])
        places = {"pkcs11": 0, "tpm": 0}
        for index, (flow, keystore) in enumerate(members):
            serial = self.serial(index)
            pool = self.tokens if keystore == "pkcs11" else self.tpms
            home = pool.home(places[keystore], serial)
            places[keystore] += 1
            pledge = self.lab.provision_pledge(serial, keystore=keystore, flow=flow, home=home)
            self.members.append(_Member(index, pledge, flow, keystore))
            if progress:
                progress(index + 1)
        self.provisioning_s = time.perf_counter() - started

    # ------------------------------------------------------------------ the run (timed)

    def _bootstrap(self, member: _Member) -> PledgeOutcome:
        if self.cancel.is_set():
            return PledgeOutcome.not_run(member.pledge.serial, member.flow, member.keystore, "fleet cancelled")
        started = time.perf_counter()
        try:
            result, summary = lab_pledge.bootstrap(member.pledge, timeout=self.plan.timeout,
                                                   cancel=self.cancel)
        except Exception as exc:  # one pledge's fault is counted, the fleet goes on
            return PledgeOutcome(member.pledge.serial, member.flow, member.keystore, State.FAILED.value,
                                 f"{type(exc).__name__}: {exc}", time.perf_counter() - started)
        return PledgeOutcome(
            member.pledge.serial, member.flow, member.keystore, result.state, result.reason,
            time.perf_counter() - started,
            waits=sum(1 for t in result.transitions if t.to_state is State.WAITING),
            ldevid=summary.get("ldevid"))

    def _server_pids(self) -> dict[str, int | None]:
        return {role: self.lab.pid(role) for role in self.lab.data["servers"]}

    def run(self, on_outcome: Callable[[PledgeOutcome], None] | None = None) -> FleetReport:
        """Bootstrap every provisioned pledge, `concurrency` at a time; `on_outcome` hears of
        each as it ends (in this thread). Returns the figures of the run."""
        if not self.members:
            raise UsageError("provision the fleet before running it")
        outcomes: list[PledgeOutcome] = []
        before = read_cpu(self._server_pids())
        started = time.perf_counter()
        with ThreadPoolExecutor(self.plan.concurrency, thread_name_prefix="pledge") as pool:
            futures = [pool.submit(self._bootstrap, member) for member in self.members]
            try:
                for future in as_completed(futures):
                    outcome = future.result()
                    outcome.finished_at_s = time.perf_counter() - started
                    outcomes.append(outcome)
                    if on_outcome:
                        on_outcome(outcome)
            except BaseException:
                self.cancel.set()  # Ctrl-C: let the workers end their pledges quickly
                raise
        wall = time.perf_counter() - started
        used = cpu_used(before, read_cpu(self._server_pids()))
        return FleetReport(plan=self.plan, name=self.name, outcomes=outcomes, wall_s=wall,
                           provisioning_s=self.provisioning_s, cpu_s=used,
                           servers=tuple(self._server_pids()))

    # ------------------------------------------------------------------ the end

    def close(self) -> None:
        """Stop the fleet's TPMs (keys, identities and records stay in the lab)."""
        for member in self.members:
            member.pledge.close()
        self.tpms.close()
        self.tokens.close()

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Fleet", "FleetPlan", "FLOWS", "KEYSTORES"]
