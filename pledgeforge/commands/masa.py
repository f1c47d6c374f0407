"""`pledgeforge masa serve|add-owner|add-device`: the MASA, for people running their own."""

from __future__ import annotations

import click

from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.x509 import to_pem

from .common import UsageError, json_option, print_json, read_input


def _masa_config(path: str):
    from pledgeforge.registrar.config import MasaConfig, load_config

    config = load_config(path)
    if not isinstance(config, MasaConfig):
        raise UsageError(f"{path} configures a {config.role} registrar, not a MASA (role = \"masa\")")
    return config


def _store(path: str):
    from pledgeforge.registrar.db import MasaStore

    return MasaStore(_masa_config(path).database_url)


@click.group()
def masa() -> None:
    """The MASA: vouchers signed with a key in an HSM."""


@masa.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="the MASA's TOML configuration (role = \"masa\")")
def serve(config_path):
    """Serve until SIGTERM or Ctrl-C."""
    from pledgeforge.registrar import server

    config = _masa_config(config_path)
    server.configure_logging()
    server.run(config)


@masa.command("add-owner")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--name", required=True, help="the owner's name")
@click.option("--domain-ca", required=True, type=click.Path(dir_okay=False),
              help="the owner's domain CA certificate (pinned in its vouchers)")
@json_option
def add_owner(config_path, name, domain_ca, as_json):
    """Add (or update) an owner and its domain CA."""
    cert = load_certificate_file(domain_ca, "domain CA certificate")[0]
    _store(config_path).add_owner(name, to_pem(cert).decode())
    if as_json:
        print_json({"owner": name, "domain_ca": cert.subject.rfc4514_string()})
    else:
        click.echo(f"owner {name}: domain CA {cert.subject.rfc4514_string()}")


@masa.command("add-device")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.option("--serial", help="the device serial number (IDevID serialNumber)")
@click.option("--owner", help="an owner added with add-owner")
@click.option("--est-domain", help="est-domain for the owner's EST server (brski-cloud)")
@click.option("--additional-configuration-url", help="additional-configuration-url for the voucher")
@click.option("--from", "from_file", type=click.Path(dir_okay=False, allow_dash=True),
              help="add every device of a manufacturing export instead ('-': stdin): the JSON "
                   "lines `pledgeforge provision export --format masa` writes")
@json_option(help="one JSON object per device recorded")
def add_device(config_path, serial, owner, est_domain, additional_configuration_url, from_file, as_json):
    """Record (or change) who owns a device, or every device of a manufacturing export."""
    if from_file is not None:
        if serial or owner or est_domain or additional_configuration_url:
            raise UsageError("give either --from FILE or --serial/--owner/..., not both")
        from pledgeforge.station.export import read_masa

        devices = read_masa(read_input(from_file, "MASA import file").decode("utf-8", "replace"),
                            from_file)
    elif serial and owner:
        from pledgeforge.station.export import MasaDevice

        devices = [MasaDevice(serial, owner, est_domain, additional_configuration_url)]
    else:
        raise UsageError("give --serial SN and --owner NAME, or --from FILE")
    store = _store(config_path)
    for device in devices:
        store.set_device(device.serial, device.owner, device.est_domain,
                         device.additional_configuration_url)
        if as_json:
            print_json({"serial": device.serial, "owner": device.owner,
                        "est_domain": device.est_domain,
                        "additional_configuration_url": device.additional_configuration_url})
        else:
            click.echo(f"device {device.serial} belongs to {device.owner}")
