"""Fleets of 10, 100 and 1,000 pledges against one fresh lab: throughput, latency, CPU of each side.

    .venv/bin/python benchmarks/fleet.py                    # 1, 10, 100, 1,000 and 100 again
    .venv/bin/python benchmarks/fleet.py --sweep            # also: rate by concurrency
    .venv/bin/python benchmarks/fleet.py --sizes 10,100 --keystore mixed

Everything runs in one fresh lab (a temp directory; its servers stopped at the
end) on this machine, with the fleet (pledgeforge/fleet: one process, a pool of
worker threads over the pledge driver) and the lab's three servers sharing its
cores. Measured in the same run:

- one pledge's bootstrap in process (lab_pledge.bootstrap, the first in this
  process and a later one), and the imports `pledgeforge pledge bootstrap` pays
  in a fresh interpreter against those of every command;
- 20 pledges one at a time (concurrency 1: the baseline of one pledge alone),
  then fleets of 10, 100, 1,000 and 100 again: each fleet's enrollments per
  second, latency p50/p95/p99, failures, and CPU seconds per enrollment of the
  fleet process, its key stores (module host, swtpm) and each server
  (/proc/PID/stat), the registrar side being the servers' sum. Provisioning is
  not timed.

The machine is shared, so the 1,000 fleet's throughput is compared with the mean
of the 100 fleets run just before and just after it: both saw the load it saw.
CPU per enrollment at 1,000 against 100 is printed too, a figure other people's
load does not move. Goals: at least 10 enrollments per second at 1,000 with no
failures, the 1,000/100 throughput ratio at least 0.9 (the cost of an
enrollment stays flat), one bootstrap under 0.5 s. The last line reads
`fleet 1000/100 throughput ratio: X`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pledgeforge import lab_pledge
from pledgeforge.fleet import Fleet, FleetPlan
from pledgeforge.lab import Lab

GOAL_RATE = 10.0
GOAL_RATIO = 0.9
GOAL_BOOTSTRAP_S = 0.5

_IMPORTS = {
    "pledge bootstrap": "import click; from pledgeforge.cli import main; "
                        "main.get_command(click.Context(main), 'pledge'); import pledgeforge.lab_pledge",
    "every command": "import click; from pledgeforge.cli import main; ctx = click.Context(main); "
                     "[main.get_command(ctx, n) for n in main.list_commands(ctx)]; import pledgeforge.lab_pledge",
}


def import_seconds(code: str, tries: int = 3) -> float:
    """The least of `tries` fresh interpreters' time to run `code` (imports only)."""
    timed = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
    return min(float(subprocess.run([sys.executable, "-c", timed], capture_output=True, text=True,
                                    check=True, timeout=120).stdout) for _ in range(tries))


def one_bootstrap(lab: Lab) -> float:
    pledge = lab.provision_pledge(keystore="pkcs11", flow="redirect")
    try:
        started = time.perf_counter()
        result, _ = lab_pledge.bootstrap(pledge)
        elapsed = time.perf_counter() - started
    finally:
        pledge.close()
    if not result.enrolled:
        raise SystemExit(f"a single pledge did not enroll: {result.reason}")
    return elapsed


def run_fleet(lab: Lab, count: int, args, concurrency: int | None = None) -> dict:
    plan = FleetPlan(count=count, concurrency=concurrency or args.concurrency, flow=args.flow,
                     keystore=args.keystore)
    with Fleet(lab, plan) as fleet:
        fleet.provision()
        report = fleet.run()
    figures = report.to_dict()
    cpu = figures["cpu_s_per_enrollment"]
    lat = figures["latency_s"]
    ms = lambda v: "  n/a" if v is None else f"{v * 1000:5.1f}"  # noqa: E731
    print(f"{count:5d} pledges, {plan.concurrency:2d} at once: {figures['enrollments_per_s']:6.2f} enrollments/s, "
          f"{figures['failed']} failed, latency p50/p95/p99 {ms(lat['p50'])}/{ms(lat['p95'])}/{ms(lat['p99'])} ms; "
          f"CPU ms/enrollment: fleet {ms(cpu['fleet'])}, key stores {ms(cpu['fleet_key_stores'])}, "
          f"registrar side {ms(cpu['registrar_side'])} (masa {ms(cpu['masa'])}, cloud {ms(cpu['cloud'])}, "
          f"owner {ms(cpu['owner'])})", flush=True)
    for reason, n in figures["failures"].items():
        print(f"        failed x{n}: {reason}")
    return figures


def cpu_total(figures: dict) -> float:
    cpu = figures["cpu_s_per_enrollment"]
    return cpu["fleet"] + cpu["fleet_key_stores"] + cpu["registrar_side"]


def goal(met: bool) -> str:
    return "goal met" if met else "GOAL MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000", help="fleet sizes (the last two are compared)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--flow", default="mixed", choices=["redirect", "est-domain", "mixed"])
    parser.add_argument("--keystore", default="pkcs11", choices=["pkcs11", "tpm", "mixed"])
    parser.add_argument("--sweep", action="store_true",
                        help="first: fleets of 200 at concurrency 1, 2, 4, 8, 16 and 32")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start")
    imports = {what: import_seconds(code) for what, code in _IMPORTS.items()}
    print(f"CLI imports: `pledge bootstrap` {imports['pledge bootstrap']:.3f} s, "
          f"every command {imports['every command']:.3f} s")
    with tempfile.TemporaryDirectory(prefix="pledgeforge-fleet-bench-") as tmp:
        lab, _ = Lab.up(Path(tmp) / "lab")
        try:
            first, later = one_bootstrap(lab), one_bootstrap(lab)
            print(f"one bootstrap in process: first {first:.3f} s, later {later:.3f} s "
                  f"({goal(first < GOAL_BOOTSTRAP_S)}: under {GOAL_BOOTSTRAP_S} s)")
            if args.sweep:
                for concurrency in (1, 2, 4, 8, 16, 32):
                    run_fleet(lab, 200, args, concurrency)
            print(f"fleets (flow {args.flow}, keystore {args.keystore}), one pledge at a time first:")
            baseline = run_fleet(lab, 20, args, concurrency=1)
            results = {size: run_fleet(lab, size, args) for size in sizes}
            small, large = sizes[-2], sizes[-1]
            again = run_fleet(lab, small, args)
        finally:
            lab.down()

    rate_small = statistics.mean([results[small]["enrollments_per_s"], again["enrollments_per_s"]])
    rate_large = results[large]["enrollments_per_s"]
    ratio = rate_large / rate_small if rate_small else 0.0
    failed = sum(f["failed"] for f in (baseline, again, *results.values()))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"registrar-side CPU per enrollment: one pledge alone "
          f"{baseline['cpu_s_per_enrollment']['registrar_side'] * 1000:.1f} ms, "
          + ", ".join(f"{size} pledges {results[size]['cpu_s_per_enrollment']['registrar_side'] * 1000:.1f} ms"
                      for size in sizes))
    print(f"CPU per enrollment, all sides, {large}/{small}: {cpu_total(results[large]) / cpu_total(results[small]):.2f}")
    print(f"{large} pledges: {rate_large:.2f} enrollments/s ({goal(rate_large >= GOAL_RATE)}: at least "
          f"{GOAL_RATE:g}), {failed} failed in all ({goal(failed == 0)}: none)")
    print(f"{small} pledges before and after: {results[small]['enrollments_per_s']:.2f} and "
          f"{again['enrollments_per_s']:.2f} enrollments/s ({goal(ratio >= GOAL_RATIO)}: ratio at least {GOAL_RATIO})")
    print(f"fleet {large}/{small} throughput ratio: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
