"""Fleets: many lab pledges bootstrapped at once by one process, and what that costs each side.

`Fleet` (runner.py) provisions the pledges (not timed), then bootstraps them on
a bounded pool of workers and returns a `FleetReport` (report.py): enrollments
per second, latency percentiles, failures by reason, CPU per enrollment of the
fleet and of each of the lab's servers (cpu.py). Its pledges keep their keys in
pools of tokens and TPMs that each hold a bounded share of them (key_pools.py).
`pledgeforge fleet run` and benchmarks/fleet.py use it.
"""

from .report import FleetReport, PledgeOutcome
from .runner import FLOWS, KEYSTORES, Fleet, FleetPlan

__all__ = ["Fleet", "FleetPlan", "FleetReport", "PledgeOutcome", "FLOWS", "KEYSTORES"]
