"""`pledgeforge pledge bootstrap|reenroll --lab D ...`: a pledge in a lab, bootstrapped and renewed."""

from __future__ import annotations

import click
from click.core import ParameterSource

from pledgeforge.errors import EnvironmentFailure, VerificationFailure

from .common import UsageError, json_option, messages, print_json


@click.group()
def pledge() -> None:
    """A BRSKI pledge with its IDevID key in swtpm or SoftHSM."""


def _lab(lab_dir: str, role: str):
    from pledgeforge.lab import Lab

    lab = Lab.load(lab_dir)
    problem = lab.probe(role)
    if problem is not None:
        raise EnvironmentFailure(f"the lab's {role} registrar does not answer ({problem}); "
                                 f"start the lab with `pledgeforge lab up --dir {lab.dir}`")
    return lab


@pledge.command()
@click.option("--lab", "lab_dir", required=True, type=click.Path(file_okay=False),
              help="a lab directory made by `pledgeforge lab up`")
@click.option("--flow", type=click.Choice(["redirect", "est-domain"]), default="redirect", show_default=True,
              help="redirect: 307 to the owner registrar; est-domain: voucher from the cloud naming the EST server")
@click.option("--keystore", type=click.Choice(["tpm", "pkcs11"]), default="pkcs11", show_default=True,
              help="where the IDevID and LDevID keys live")
@click.option("--algorithm", type=click.Choice(["ec-p256", "ec-p384", "rsa-2048"]), default="ec-p256",
              show_default=True, help="IDevID key algorithm")
@click.option("--serial", default=None,
              help="serial number (default: a new random one); a pledge provisioned before bootstraps again")
@click.option("--timeout", type=click.FloatRange(min=0.5), default=10.0, show_default=True,
              help="seconds for each connect, handshake and request")
@json_option(help="print the result as one JSON object on stdout (the states go to stderr)")
@click.pass_context
def bootstrap(ctx, lab_dir, flow, keystore, algorithm, serial, timeout, as_json):
    """Provision a pledge (IDevID key, IDevID, ownership for FLOW) and run BRSKI to the end.

    With --serial of a pledge provisioned before, that pledge bootstraps again with
    its IDevID: the new LDevID key replaces the previous one once the new LDevID is
    stored, and whatever an earlier attempt cut short left in its key store is deleted.
    Prints every state the pledge passes. Exit status 0 when enrolled, 1 when
    the pledge failed, 3 when the lab does not answer.
    """
    from pledgeforge import lab_pledge

    say = messages(as_json)
    lab = _lab(lab_dir, "cloud")
    again = serial is not None and lab_pledge.provisioned(lab, serial)
    if again:
        provisioned = lab_pledge.reopen_pledge(lab, serial)
        for name, asked, have in (("flow", flow, provisioned.flow), ("keystore", keystore, provisioned.keystore),
                                  ("algorithm", algorithm, provisioned.algorithm)):
            if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE and asked != have:
                provisioned.close()
                raise UsageError(f"pledge {serial} was provisioned with --{name} {have}; "
                                 f"leave out --{name}, or choose another serial")
    else:
        provisioned = lab.provision_pledge(serial, keystore=keystore, algorithm=algorithm, flow=flow)
    try:
        say(f"pledge {provisioned.serial}{' (provisioned before)' if again else ''}: "
            f"IDevID key {provisioned.key_uri}, flow {provisioned.flow}")
        result, summary = lab_pledge.bootstrap(
            provisioned, timeout=timeout,
            on_transition=lambda t: say(f"  {t.to_state.value:20} {t.reason}"))
    finally:
        provisioned.close()
    if as_json:
        print_json(summary)
    if not result.enrolled:
        raise VerificationFailure(f"pledge {provisioned.serial} did not enroll: {result.reason}")
    say(f"enrolled: LDevID {summary['ldevid_subject']} in {summary['ldevid']}")


@pledge.command()
@click.option("--lab", "lab_dir", required=True, type=click.Path(file_okay=False),
              help="a lab directory made by `pledgeforge lab up`")
@click.option("--serial", required=True, help="a pledge enrolled with `pledgeforge pledge bootstrap`")
@click.option("--timeout", type=click.FloatRange(min=0.5), default=10.0, show_default=True,
              help="seconds for each connect, handshake and request")
@json_option(help="print the result as one JSON object on stdout (progress goes to stderr)")
def reenroll(lab_dir, serial, timeout, as_json):
    """Renew an enrolled pledge's LDevID with EST /simplereenroll (RFC 7030 4.2.2).

    TLS is authenticated by the current LDevID; the new key is generated in the
    other key slot, the new LDevID keeps the subject and subjectAltName, and the
    old key is deleted once the new LDevID is stored. Exit status 0 when renewed,
    1 when the renewal failed, 3 when the lab does not answer.
    """
    from pledgeforge import lab_pledge

    say = messages(as_json)
    lab = _lab(lab_dir, "owner")
    provisioned = lab_pledge.reopen_pledge(lab, serial)
    try:
        say(f"pledge {serial}: renewing LDevID with {lab.url('owner')}")
        result, summary = lab_pledge.reenroll(provisioned, timeout=timeout)
    finally:
        provisioned.close()
    if as_json:
        print_json(summary)
    if not result.renewed:
        raise VerificationFailure(f"pledge {serial} was not renewed: {result.reason}")
    say(f"renewed: LDevID {summary['ldevid_subject']} (certificate {summary['ldevid_serial']}, "
        f"until {summary['not_after']}) in {summary['ldevid']}; key {summary['ldevid_key']}")
