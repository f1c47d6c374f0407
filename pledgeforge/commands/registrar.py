"""`pledgeforge registrar serve|add-pledge|set-response|overload|ldevids|revoke`: owner and cloud registrars."""

from __future__ import annotations

import click

from pledgeforge.hsm.cloud_responses import CloudResponse

from .common import UsageError, json_option, print_json, read_input

RESPONSES = CloudResponse.names()
#: RFC 5280 reason codes (kept in step with pledgeforge.registrar.db.REVOCATION_REASONS, which
#: is not imported here so that `--help` stays cheap)
REVOCATION_REASONS = ("unspecified", "keyCompromise", "affiliationChanged", "superseded",
                      "cessationOfOperation", "privilegeWithdrawn")


def _config(path: str, role: str | None = None):
    from pledgeforge.registrar.config import RegistrarConfig, load_config

    config = load_config(path)
    if not isinstance(config, RegistrarConfig):
        raise UsageError(f"{path} configures a MASA; use `pledgeforge masa serve`")
    if role is not None and config.role != role:
        raise UsageError(f"{path} configures a {config.role} registrar; this command is for a {role} registrar")
    return config


@click.group()
def registrar() -> None:
    """Owner registrar (BRSKI + EST) and cloud registrar (brski-cloud)."""


@registrar.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="TOML configuration with role = \"owner\" or \"cloud\"")
def serve(config_path):
    """Serve until SIGTERM or Ctrl-C."""
    from pledgeforge.registrar import server

    config = _config(config_path)
    server.configure_logging()
    server.run(config)


_FROM_HELP = ("every pledge of a manufacturing export instead ('-': stdin): the JSON lines "
              "`pledgeforge provision export --format ownership` writes")


def _ownership(from_file: str):
    from pledgeforge.station.export import read_ownership

    return read_ownership(read_input(from_file, "ownership import file").decode("utf-8", "replace"),
                          from_file)


@registrar.command("add-pledge")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--serial")
@click.option("--flow", type=click.Choice(["redirect", "est-domain"]), default="redirect",
              show_default=True, help="est-domain: the voucher comes from the cloud registrar")
@click.option("--from", "from_file", type=click.Path(dir_okay=False, allow_dash=True),
              help="add " + _FROM_HELP + " (serial, flow)")
@json_option(help="one JSON object per pledge added")
def add_pledge(config_path, serial, flow, from_file, as_json):
    """Put a pledge on the owner registrar's pledge list (or every pledge of an export)."""
    from pledgeforge.registrar.db import OwnerStore

    if (serial is None) == (from_file is None):
        raise UsageError("give either --serial SN or --from FILE")
    pledges = [(p.serial, p.flow) for p in _ownership(from_file)] if from_file else [(serial, flow)]
    store = OwnerStore(_config(config_path, "owner").database_url)
    for serial, flow in pledges:
        store.add_pledge(serial, flow)
        if as_json:
            print_json({"serial": serial, "flow": flow})
        else:
            click.echo(f"pledge {serial} ({flow}) added")


@registrar.command("set-response")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--serial")
@click.option("--response", type=click.Choice(RESPONSES),
              help="the answer, by name: " + ", ".join(f"{r} ({r.status:d})" for r in CloudResponse))
@click.option("--location", help="redirect target URL")
@click.option("--retry-after", type=click.IntRange(min=0), help="Retry-After seconds")
@click.option("--times", type=click.IntRange(min=1), help="answer this many times, then --then")
@click.option("--then", "then", type=click.Choice(RESPONSES))
@click.option("--endpoint", default="main", show_default=True, help="which listening endpoint")
@click.option("--from", "from_file", type=click.Path(dir_okay=False, allow_dash=True),
              help="set the answer for " + _FROM_HELP + " (serial, response, location)")
@json_option(help="one JSON object per pledge set")
def set_response(config_path, serial, response, location, retry_after, times, then, endpoint,
                 from_file, as_json):
    """What the cloud registrar answers a pledge's voucher-requests (or every pledge of an
    export)."""
    from pledgeforge.registrar.db import CloudStore

    if from_file is not None:
        if serial or response or times or then:
            raise UsageError("give either --from FILE or --serial/--response/..., not both")
        answers = [(p.serial, p.response, p.location or location) for p in _ownership(from_file)]
    elif serial and response:
        answers = [(serial, response, location)]
    else:
        raise UsageError("give --serial SN and --response NAME, or --from FILE")
    store = CloudStore(_config(config_path, "cloud").database_url)
    for serial, response, location in answers:
        store.set_response(serial, response, endpoint=endpoint, location=location,
                           retry_after=retry_after, times=times, then=then)
        if as_json:
            print_json({"serial": serial, "endpoint": endpoint, "response": response,
                        "status": int(CloudResponse(response).status), "location": location,
                        "retry_after": retry_after, "times": times, "then": then})
        else:
            click.echo(f"pledge {serial} on {endpoint}: {response}")


@registrar.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--retry-after", type=click.IntRange(min=0), help="answer 503 with this Retry-After")
@click.option("--off", is_flag=True, help="stop answering 503")
@json_option
def overload(config_path, retry_after, off, as_json):
    """Make the cloud registrar answer every voucher-request with 503 (or stop)."""
    from pledgeforge.registrar.db import CloudStore

    if off == (retry_after is not None):
        raise UsageError("give either --retry-after SECONDS or --off")
    CloudStore(_config(config_path, "cloud").database_url).set_overloaded(None if off else retry_after)
    if as_json:
        print_json({"overloaded": not off, "retry_after": None if off else retry_after})
    else:
        click.echo("overload off" if off else f"overloaded, Retry-After {retry_after}")


def _owner_store(config_path: str):
    from pledgeforge.registrar.db import OwnerStore

    return OwnerStore(_config(config_path, "owner").database_url)


def _checked_serial(serial: str | None) -> str | None:
    from pledgeforge.hsm.identity_names import check_serial_number

    return None if serial is None else check_serial_number(serial)


def _ldevid_line(issued) -> str:
    status = issued.state
    if issued.state == "failed":
        status += f" ({issued.status_reason})"
    elif issued.state == "revoked":
        status += f" {issued.revoked_at:%Y-%m-%dT%H:%M:%SZ} ({issued.revocation_reason})"
    return (f"{issued.serial}  certificate {issued.certificate_serial}  {status}  "
            f"issued {issued.issued_at:%Y-%m-%dT%H:%M:%SZ} ({issued.kind}) to {issued.requester}")


@registrar.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="the owner registrar's configuration")
@click.option("--serial-number", "serial", help="only this pledge's LDevIDs")
@click.option("--unconfirmed", is_flag=True,
              help="only LDevIDs that no enrollstatus confirmed and nobody revoked")
@json_option(help="one JSON object per LDevID and line on stdout")
def ldevids(config_path, serial, unconfirmed, as_json):
    """LDevIDs the owner CA issued: who asked, what the pledge's enrollstatus said, revocation.

    An unconfirmed LDevID was issued but never put to use (the pledge failed, or lost
    power before storing it); revoke it with `pledgeforge registrar revoke`.
    """
    issued = _owner_store(config_path).ldevids(_checked_serial(serial), unconfirmed=unconfirmed)
    for item in issued:
        if as_json:
            print_json(item.to_dict())
        else:
            click.echo(_ldevid_line(item))
    if not issued and not as_json:
        click.echo("no LDevIDs" + (" left unconfirmed" if unconfirmed else ""), err=True)


@registrar.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="the owner registrar's configuration")
@click.option("--serial-number", "serial", help="revoke every LDevID of this pledge")
@click.option("--cert-serial", help="revoke this LDevID (its certificate serial, as openssl prints it)")
@click.option("--reason", type=click.Choice(REVOCATION_REASONS), default="unspecified", show_default=True,
              help="RFC 5280 reason code")
@json_option(help="one JSON object per LDevID revoked and line on stdout")
def revoke(config_path, serial, cert_serial, reason, as_json):
    """Revoke LDevIDs: the owner registrar's /crl lists them at its next request, and they
    can no longer renew (/simplereenroll) or report."""
    if (serial is None) == (cert_serial is None):
        raise UsageError("give either --serial-number S (every LDevID of pledge S) or --cert-serial N")
    revoked = _owner_store(config_path).revoke(certificate_serial=cert_serial,
                                               serial=_checked_serial(serial), reason=reason)
    for item in revoked:
        if as_json:
            print_json(item.to_dict())
        else:
            click.echo(f"revoked {_ldevid_line(item)}")
    if not revoked and not as_json:
        click.echo("nothing to revoke: already revoked", err=True)
