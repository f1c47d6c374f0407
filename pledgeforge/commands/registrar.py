"""`pledgeforge registrar serve|add-pledge|set-response|overload`: owner and cloud registrars."""

from __future__ import annotations

import click

from pledgeforge.hsm.cloud_responses import CloudResponse

from .common import UsageError, json_option, print_json

RESPONSES = CloudResponse.names()


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


@registrar.command("add-pledge")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--serial", required=True)
@click.option("--flow", type=click.Choice(["redirect", "est-domain"]), default="redirect",
              show_default=True, help="est-domain: the voucher comes from the cloud registrar")
@json_option
def add_pledge(config_path, serial, flow, as_json):
    """Put a pledge on the owner registrar's pledge list."""
    from pledgeforge.registrar.db import OwnerStore

    OwnerStore(_config(config_path, "owner").database_url).add_pledge(serial, flow)
    if as_json:
        print_json({"serial": serial, "flow": flow})
    else:
        click.echo(f"pledge {serial} ({flow}) added")


@registrar.command("set-response")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--serial", required=True)
@click.option("--response", type=click.Choice(RESPONSES), required=True,
              help="the answer, by name: " + ", ".join(f"{r} ({r.status:d})" for r in CloudResponse))
@click.option("--location", help="redirect target URL")
@click.option("--retry-after", type=click.IntRange(min=0), help="Retry-After seconds")
@click.option("--times", type=click.IntRange(min=1), help="answer this many times, then --then")
@click.option("--then", "then", type=click.Choice(RESPONSES))
@click.option("--endpoint", default="main", show_default=True, help="which listening endpoint")
@json_option
def set_response(config_path, serial, response, location, retry_after, times, then, endpoint, as_json):
    """What the cloud registrar answers a pledge's voucher-requests."""
    from pledgeforge.registrar.db import CloudStore

    CloudStore(_config(config_path, "cloud").database_url).set_response(
        serial, response, endpoint=endpoint, location=location, retry_after=retry_after,
        times=times, then=then)
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
