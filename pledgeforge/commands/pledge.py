"""`pledgeforge pledge bootstrap --lab D ...`: provision a fresh pledge in a lab and bootstrap it."""

from __future__ import annotations

import json

import click

from pledgeforge.errors import PledgeforgeError


@click.group()
def pledge() -> None:
    """A BRSKI pledge with its IDevID key in swtpm or SoftHSM."""


@pledge.command()
@click.option("--lab", "lab_dir", required=True, type=click.Path(file_okay=False),
              help="a lab directory made by `pledgeforge lab up`")
@click.option("--flow", type=click.Choice(["redirect", "est-domain"]), default="redirect", show_default=True,
              help="redirect: 307 to the owner registrar; est-domain: voucher from the cloud naming the EST server")
@click.option("--keystore", type=click.Choice(["tpm", "pkcs11"]), default="pkcs11", show_default=True,
              help="where the IDevID and LDevID keys live")
@click.option("--algorithm", type=click.Choice(["ec-p256", "ec-p384", "rsa-2048"]), default="ec-p256",
              show_default=True, help="IDevID key algorithm")
@click.option("--serial", default=None, help="serial number (default: a new random one)")
@click.option("--timeout", type=click.FloatRange(min=0.5), default=10.0, show_default=True,
              help="seconds for each connect, handshake and request")
@click.option("--json", "as_json", is_flag=True, help="last line: the result as a JSON object")
def bootstrap(lab_dir, flow, keystore, algorithm, serial, timeout, as_json):
    """Provision a pledge (IDevID key, IDevID, ownership for FLOW) and run BRSKI to the end.

    Prints every state the pledge passes. Exit status 0 when enrolled.
    """
    from pledgeforge import lab_pledge
    from pledgeforge.lab import Lab

    lab = Lab.load(lab_dir)
    problem = lab.probe("cloud")
    if problem is not None:
        raise PledgeforgeError(f"the lab's cloud registrar does not answer ({problem}); "
                               f"start the lab with `pledgeforge lab up --dir {lab.dir}`")
    provisioned = lab.provision_pledge(serial, keystore=keystore, algorithm=algorithm, flow=flow)
    try:
        click.echo(f"pledge {provisioned.serial}: IDevID key {provisioned.key_uri}, flow {flow}")
        result, summary = lab_pledge.bootstrap(
            provisioned, timeout=timeout,
            on_transition=lambda t: click.echo(f"  {t.to_state.value:20} {t.reason}"))
    finally:
        provisioned.close()
    if result.enrolled:
        click.echo(f"enrolled: LDevID {summary['ldevid_subject']} in {summary['ldevid']}")
    else:
        click.echo(f"failed: {result.reason}")
    if as_json:
        click.echo(json.dumps(summary))
    raise SystemExit(0 if result.enrolled else 1)
