"""`pledgeforge cert verify`: check a certificate (an IDevID, an LDevID) against trust anchors."""

from __future__ import annotations

import datetime as dt
import json

import click

from pledgeforge.hsm.chain import build_chain, load_certificate_file, load_certificates
from pledgeforge.hsm.x509 import read_masa_url, serial_number_of

from .common import read_input


@click.group()
def cert() -> None:
    """Inspect and verify certificates."""


@cert.command()
@click.option("--in", "in_path", required=True, help="certificate (PEM or DER)")
@click.option("--anchors", required=True, type=click.Path(dir_okay=False), help="trust anchors (PEM)")
@click.option("--certfile", type=click.Path(dir_okay=False), help="intermediate certificates")
@click.option("--no-check-time", is_flag=True, help="ignore validity periods")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def verify(in_path, anchors, certfile, no_check_time, as_json):
    """Build the certificate's path to the anchors; print its subject, serial and MASA URL.

    Encodings that deviate from the standards but are read anyway (see
    docs/conformance.md) are listed as non-conformances.
    """
    certs = load_certificates(read_input(in_path, "certificate"), f"certificate {in_path}")
    leaf, extra = certs[0], certs[1:]
    if certfile:
        extra += load_certificate_file(certfile, "certfile")
    chain = build_chain(leaf, load_certificate_file(anchors, "trust anchors"), extra,
                        at_time=dt.datetime.now(dt.timezone.utc), check_time=not no_check_time)
    masa_url = read_masa_url(leaf)
    nonconformances = [p for p in (masa_url.problem if masa_url else None,) if p]
    if as_json:
        click.echo(json.dumps({
            "subject": leaf.subject.rfc4514_string(),
            "serial-number": serial_number_of(leaf),
            "masa-url": masa_url.url if masa_url else None,
            "chain": [c.subject.rfc4514_string() for c in chain],
            "nonconformances": nonconformances,
        }))
        return
    click.echo(f"subject: {leaf.subject.rfc4514_string()}")
    click.echo(f"serial-number: {serial_number_of(leaf) or '-'}")
    click.echo(f"masa-url: {masa_url.url if masa_url else '-'}")
    click.echo(f"chain: {' <- '.join(c.subject.rfc4514_string() for c in chain)}")
    for problem in nonconformances:
        click.echo(f"nonconformance: {problem}")
