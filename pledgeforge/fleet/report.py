"""What a fleet run reports: one outcome per pledge, and the figures of the whole run.

The figures: enrollments per second over the timed phase, latency of one
pledge's bootstrap (p50/p95/p99, from the moment a worker takes it up to its
records written), failures by reason, and CPU seconds per enrollment on each
side: the fleet process, its key stores (module host, swtpm), and each of the
lab's servers, with their sum as the registrar side.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from pledgeforge.firmware.pledge_events import State


@dataclass
class PledgeOutcome:
    """How one pledge of the fleet ended."""

    serial: str
    flow: str
    keystore: str
    state: str
    reason: str | None
    latency_s: float
    #: times the pledge waited (Retry-After, backoff) before it ended
    waits: int = 0
    ldevid: str | None = None
    #: seconds from the start of the run to this pledge's end
    finished_at_s: float | None = None

    @classmethod
    def not_run(cls, serial: str, flow: str, keystore: str, reason: str) -> "PledgeOutcome":
        return cls(serial, flow, keystore, State.FAILED.value, reason, 0.0)

    @property
    def enrolled(self) -> bool:
        return self.state == State.ENROLLED.value

    @property
    def failure(self) -> str | None:
        """The reason, with this pledge's serial number taken out, so that equal failures of
        different pledges count as one reason."""
        if self.enrolled:
            return None
        return (self.reason or f"ended in state {self.state}").replace(self.serial, "<serial>")

    def to_dict(self) -> dict:
        return {"record": "pledge", "serial": self.serial, "flow": self.flow, "keystore": self.keystore,
                "state": self.state, "enrolled": self.enrolled, "reason": self.reason,
                "latency_s": round(self.latency_s, 4), "waits": self.waits, "ldevid": self.ldevid}


def percentile(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile: the smallest value with at least `fraction` of all at or
    below it (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@dataclass
class FleetReport:
    plan: object  # runner.FleetPlan
    name: str
    outcomes: list[PledgeOutcome]
    wall_s: float
    provisioning_s: float | None
    #: CPU seconds used during the run: "fleet", "fleet_key_stores", and one per server role
    cpu_s: dict[str, float | None]
    servers: tuple[str, ...] = ()
    failures: Counter = field(init=False)

    def __post_init__(self) -> None:
        self.failures = Counter(o.failure for o in self.outcomes if not o.enrolled)

    @property
    def enrolled(self) -> int:
        return sum(1 for o in self.outcomes if o.enrolled)

    @property
    def failed(self) -> int:
        return len(self.outcomes) - self.enrolled

    @property
    def enrollments_per_s(self) -> float:
        return self.enrolled / self.wall_s if self.wall_s > 0 else 0.0

    def latency(self, fraction: float) -> float | None:
        return percentile([o.latency_s for o in self.outcomes if o.enrolled], fraction)

    def cpu_per_enrollment(self) -> dict[str, float | None]:
        """CPU seconds per enrollment of each side, and "registrar_side": the servers' sum."""
        per = max(self.enrolled, 1)
        out = {name: None if used is None else used / per for name, used in self.cpu_s.items()}
        server_figures = [out.get(role) for role in self.servers]
        out["registrar_side"] = None if any(v is None for v in server_figures) else sum(server_figures)
        return out

    def to_dict(self) -> dict:
        plan = self.plan
        return {
            "record": "summary", "fleet": self.name, "count": plan.count, "concurrency": plan.concurrency,
            "flow": plan.flow, "keystore": plan.keystore, "enrolled": self.enrolled, "failed": self.failed,
            "wall_s": round(self.wall_s, 3),
            "provisioning_s": None if self.provisioning_s is None else round(self.provisioning_s, 3),
            "enrollments_per_s": round(self.enrollments_per_s, 3),
            "latency_s": {name: _round(self.latency(q)) for name, q in (("p50", 0.50), ("p95", 0.95),
                                                                         ("p99", 0.99))},
            "failures": dict(self.failures.most_common()),
            "cpu_s_per_enrollment": {name: _round(v) for name, v in self.cpu_per_enrollment().items()},
        }

    def lines(self) -> list[str]:
        """The figures for people."""
        d = self.to_dict()
        lat = d["latency_s"]
        cpu = d["cpu_s_per_enrollment"]
        ms = lambda v: "n/a" if v is None else f"{v * 1000:.1f} ms"  # noqa: E731
        lines = [
            f"fleet {self.name}: {self.enrolled}/{len(self.outcomes)} enrolled in {self.wall_s:.2f} s "
            f"({d['enrollments_per_s']:.2f} enrollments/s, concurrency {self.plan.concurrency})",
            f"latency p50 {ms(lat['p50'])}, p95 {ms(lat['p95'])}, p99 {ms(lat['p99'])}",
            "CPU per enrollment: fleet " + ms(cpu["fleet"]) + ", key stores " + ms(cpu["fleet_key_stores"])
            + "; registrar side " + ms(cpu["registrar_side"]) + " ("
            + ", ".join(f"{role} {ms(cpu.get(role))}" for role in self.servers) + ")",
        ]
        for reason, count in self.failures.most_common():
            lines.append(f"failed x{count}: {reason}")
        return lines


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 5)


__all__ = ["PledgeOutcome", "FleetReport", "percentile"]
