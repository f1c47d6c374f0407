"""`pledgeforge verify --bulk PATH --anchors PEM`: verify a batch of vouchers,
voucher-requests or certificates at libcrypto speed and report what failed."""

from __future__ import annotations

import collections
import os
import sys
import time

import click

from pledgeforge.errors import VerificationFailure
from pledgeforge.fastpath import BulkVerifier, Result
from pledgeforge.hsm.chain import load_certificate_file

from .common import UsageError, json_option, print_json


def _failure_line(r) -> str:
    if r.item_offset is not None:
        where = f"{r.name}@{r.item_offset}"
    else:
        where = r.name or f"item {r.index}"
    serial = f" serial {r.serial}" if r.serial else ""
    return f"{r.code.name:<24} {where}{serial}"


class _Progress:
    """A progress bar on the terminal (stderr), or nothing when output goes elsewhere."""

    def __init__(self, path: str, enabled: bool):
        self._bar = None
        self._task = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        # A directory has a known count; a stream of DER objects does not (the bar pulses).
        total = len(os.listdir(path)) if os.path.isdir(path) else None
        self._bar = Progress(TextColumn("verifying"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("items"), TimeElapsedColumn(),
                             console=Console(file=sys.stderr), transient=False)
        self._task = self._bar.add_task("verify", total=total)

    def __enter__(self) -> "_Progress":
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def echo(self, line: str) -> None:
        """A line of output that must not tear the bar."""
        if self._bar is not None:
            self._bar.console.file.flush()
            self._bar.print(line, markup=False, highlight=False)
        else:
            click.echo(line)


@click.command()
@click.option("--bulk", "path", required=True, type=click.Path(),
              help="a directory (one DER object per file) or a file of concatenated DER objects")
@click.option("--anchors", required=True, type=click.Path(dir_okay=False),
              help="trust anchors (PEM, one or more certificates)")
@click.option("--certfile", type=click.Path(dir_okay=False),
              help="extra certificates for building chains (PEM)")
@click.option("--certs", "certificates", is_flag=True,
              help="items are X.509 certificates to check against the anchors, not CMS")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="worker threads [default: all cores]")
@click.option("--no-check-time", is_flag=True, help="ignore certificate validity periods")
@click.option("--at-time", type=click.DateTime(["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
              help="check validity at this UTC time instead of now")
@json_option(help="JSON lines: one per failing item, then a summary")
def verify(path, anchors, certfile, certificates, threads, no_check_time, at_time, as_json):
    """Verify many CMS-signed vouchers / voucher-requests (or certificates) at once.

    Prints counts per result, items per second and the failing items; exits 1
    when any item fails.
    """
    anchor_certs = load_certificate_file(anchors, "trust anchor file")
    extra = load_certificate_file(certfile, "certificate file") if certfile else []
    try:
        verifier = BulkVerifier(anchor_certs, extra, threads=threads, at_time=at_time,
                                check_time=not no_check_time)
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    counts: collections.Counter = collections.Counter()
    failures = 0
    started = time.perf_counter()
    progress = _Progress(path, enabled=not as_json and sys.stderr.isatty())
    with progress:
        for result in verifier.verify(path, certificates=certificates):
            counts[result.code] += 1
            progress.advance()
            if result.ok:
                continue
            failures += 1
            if as_json:
                print_json({"index": result.index, "name": result.name, "offset": result.item_offset,
                            "result": result.code.name, "serial": result.serial})
            else:
                progress.echo(_failure_line(result))
    elapsed = time.perf_counter() - started
    total = sum(counts.values())
    rate = total / elapsed if elapsed > 0 else 0.0
    if as_json:
        print_json({"summary": {c.name: counts.get(c, 0) for c in Result}, "items": total,
                    "seconds": round(elapsed, 6), "items_per_second": round(rate, 1),
                    "threads": verifier.threads})
    else:
        shown = ", ".join(f"{c.name} {counts[c]}" for c in Result if counts.get(c))
        click.echo(f"{total} items in {elapsed:.3f} s ({rate:,.0f} items/s, "
                   f"{verifier.threads} threads): {shown or 'none'}")
    if failures:
        raise VerificationFailure(f"{failures} of {total} items failed verification")
