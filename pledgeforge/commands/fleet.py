"""`pledgeforge fleet run --lab D --count N ...`: many pledges bootstrapped at once against a lab."""

from __future__ import annotations

import sys

import click

from pledgeforge.errors import EnvironmentFailure, VerificationFailure

from .common import json_option, messages, print_json


@click.group()
def fleet() -> None:
    """Many pledges against one lab: throughput, latency and what each side spends."""


def _running_lab(lab_dir: str):
    from pledgeforge.lab import Lab

    lab = Lab.load(lab_dir)
    for role in lab.data["servers"]:
        problem = lab.probe(role)
        if problem is not None:
            raise EnvironmentFailure(f"the lab's {role} server does not answer ({problem}); "
                                     f"start the lab with `pledgeforge lab up --dir {lab.dir}`")
    return lab


class _Progress:
    """Bars on stderr while it is a terminal (rich); lines for people go through the same console,
    above the bars, so that neither overwrites the other. stdout stays the command's own."""

    def __init__(self, total: int, bars: bool):
        self.total = total
        self._bars = None
        self._tasks: dict[str, int] = {}
        if bars:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bars = Progress(TextColumn("{task.description:12}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=Console(stderr=True),
                                  redirect_stdout=False, redirect_stderr=False)

    def __enter__(self) -> "_Progress":
        if self._bars is not None:
            self._bars.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bars is not None:
            self._bars.stop()

    def advance(self, phase: str, done: int) -> None:
        if self._bars is None:
            return
        if phase not in self._tasks:
            self._tasks[phase] = self._bars.add_task(phase, total=self.total)
        self._bars.update(self._tasks[phase], completed=done)

    def say(self, text: str) -> None:
        if self._bars is not None:
            self._bars.console.print(text, markup=False, highlight=False)
        else:
            click.echo(text, err=True)


@fleet.command()
@click.option("--lab", "lab_dir", required=True, type=click.Path(file_okay=False),
              help="a lab directory made by `pledgeforge lab up` (its servers running)")
@click.option("--count", type=click.IntRange(min=1), required=True, help="how many pledges")
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True,
              help="how many pledges bootstrap at once (worker threads)")
@click.option("--flow", type=click.Choice(["redirect", "est-domain", "mixed"]), default="mixed",
              show_default=True, help="the owner flow of every pledge; mixed alternates them")
@click.option("--keystore", type=click.Choice(["pkcs11", "tpm", "mixed"]), default="pkcs11",
              show_default=True,
              help="where the pledges' keys live: tokens of the fleet's SoftHSM (8 pledges each) or "
                   "swtpm processes (20 pledges each, at most 64); mixed alternates them")
@click.option("--timeout", type=click.FloatRange(min=0.5), default=30.0, show_default=True,
              help="seconds for each connect, handshake and request of a pledge")
@json_option(help="print one JSON line per pledge as it ends, then one with the figures (progress "
                  "goes to stderr)")
def run(lab_dir, count, concurrency, flow, keystore, timeout, as_json):
    """Provision COUNT pledges (not timed), then bootstrap them CONCURRENCY at a time.

    Every pledge has its own IDevID key in hardware and goes through the same
    firmware as `pledge bootstrap`. At the end: enrollments per second, latency
    p50/p95/p99, failures by reason, and CPU per enrollment of the fleet, its key
    stores and each of the lab's servers. Pledges and their records stay in the lab
    (pledges/<serial>/, the keys under fleets/<name>/). Exit status 0 when every
    pledge enrolled, 1 when some did not, 2 for a fleet that cannot be made, 3 when
    the lab does not answer.
    """
    from pledgeforge.fleet import Fleet, FleetPlan

    say = messages(as_json)
    plan = FleetPlan(count=count, concurrency=concurrency, flow=flow, keystore=keystore, timeout=timeout)
    lab = _running_lab(lab_dir)
    with Fleet(lab, plan) as run_, _Progress(count, bars=sys.stderr.isatty()) as progress:
        progress.say(f"fleet {run_.name}: {count} pledges ({flow}, {keystore}), keys under {run_.directory}")
        run_.provision(lambda done: progress.advance("provisioning", done))
        progress.say(f"provisioned in {run_.provisioning_s:.1f} s; bootstrapping {concurrency} at a time")
        ended = 0

        def report(outcome) -> None:
            nonlocal ended
            ended += 1
            progress.advance("enrolling", ended)
            if as_json:
                print_json(outcome.to_dict())
                sys.stdout.flush()
            elif not outcome.enrolled:
                progress.say(f"  {outcome.serial} failed: {outcome.reason}")

        figures = run_.run(report)
    if as_json:
        print_json(figures.to_dict())
    else:
        for line in figures.lines():
            say(line)
    if figures.failed:
        top = ", ".join(f"{n} x {reason}" for reason, n in figures.failures.most_common(3))
        raise VerificationFailure(f"{figures.failed} of {count} pledges did not enroll: {top}")

