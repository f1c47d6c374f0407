"""`pledgeforge provision [export]`: the manufacturing station, one board or a rack."""

from __future__ import annotations

import socket
import sys
import threading

import click

from pledgeforge.errors import EnvironmentFailure, UsageError, VerificationFailure

from .common import json_option, key_uri, messages, pin_env_option, print_json, read_input, write_output

DEFAULT_DB = "sqlite:///manufacturing.sqlite"


def _certificates(paths, what: str) -> list:
    from pledgeforge.hsm.chain import load_certificate_file

    return [cert for path in paths for cert in load_certificate_file(path, what)]


def _anchor_file(path: str, what: str) -> bytes:
    from pledgeforge.hsm.chain import load_certificates

    data = read_input(path, what)
    load_certificates(data, f"{what} {path}")  # a file that holds no certificate is refused here
    return data


@click.group(invoke_without_command=True)
@click.option("--port", "ports", multiple=True, metavar="PATH|URL|GLOB",
              help="a board's console: a pty path, rfc2217://HOST:PORT or socket://HOST:PORT; "
                   "repeat it, or give a glob of paths ('rack/*/console'), to provision a rack "
                   "in parallel")
@click.option("--ca-key", "ca_uri", help="the manufacturer CA key's URI (in an HSM)")
@click.option("--ca-cert", type=click.Path(dir_okay=False), help="the manufacturer CA certificate")
@click.option("--masa-url", help="id-pe-masa-url the IDevIDs carry, e.g. masa.example.com:9443")
@click.option("--cloud-registrar", "cloud_url", help="the cloud registrar's URL the boards are given")
@click.option("--cloud-anchor", type=click.Path(dir_okay=False),
              help="the cloud registrar's TLS trust anchor (PEM) the boards are given")
@click.option("--anchors", type=click.Path(dir_okay=False),
              help="the MASA / manufacturer trust anchors (PEM) vouchers must chain to")
@click.option("--image-key", type=click.Path(dir_okay=False),
              help="the firmware public key (PEM) MCUboot checks images against")
@click.option("--tpm-maker-root", "tpm_roots", multiple=True, type=click.Path(dir_okay=False),
              help="a TPM maker's root certificate EK certificates must chain to (repeatable; "
                   "needed for TPM boards)")
@click.option("--tpm-maker-ca", "tpm_cas", multiple=True, type=click.Path(dir_okay=False),
              help="a TPM maker's issuing CA certificate (EK certificates in NV carry no chain)")
@click.option("--ek-kind", type=click.Choice(["rsa-2048", "ec-p256", "ec-p384"]), default="rsa-2048",
              show_default=True, help="which of the TPM's endorsement keys the IAK is bound to")
@click.option("--hw-type", help="hardwareModuleName type OID for PKCS#11 boards (TPM boards get "
                                "the TCG's, 2.23.133.1.2)")
@click.option("--db", "db_url", default=DEFAULT_DB, show_default=True,
              help="the manufacturing database (any SQLAlchemy URL)")
@click.option("--station", "station_name", help="this station's name in the records (default: the host name)")
@click.option("--timeout", type=click.FloatRange(0.5, 600), default=5.0, show_default=True,
              help="seconds of console silence before a request is sent again (key generation: 60)")
@json_option(help="one JSON object per board on stdout as each finishes (progress goes to stderr)")
@pin_env_option
@click.pass_context
def provision(ctx, ports, ca_uri, ca_cert, masa_url, cloud_url, cloud_anchor, anchors, image_key,
              tpm_roots, tpm_cas, ek_kind, hw_type, db_url, station_name, timeout, as_json, pin_env):
    """Provision factory-new boards over their serial consoles: the IDevID key is generated in
    the board's TPM or secure element, shown to be resident (TPM attestation; a PKCS#11 board's
    reported key attributes, a weaker assurance), certified by the manufacturer CA, installed with
    the trust anchors, cloud registrar and firmware key, read back, recorded, and the board locked.

    A board already locked is reported and left alone. Exit 0 when every board is provisioned
    (or already was), else the status of the first failure. `provision export` hands the
    database on to the MASA and the registrars."""
    if ctx.invoked_subcommand is not None:
        return
    needed = {"--port": ports, "--ca-key": ca_uri, "--ca-cert": ca_cert, "--masa-url": masa_url,
              "--cloud-registrar": cloud_url, "--cloud-anchor": cloud_anchor, "--anchors": anchors}
    missing = [name for name, value in needed.items() if not value]
    if missing:
        raise UsageError(f"give {', '.join(missing)} (or a subcommand: export)")
    if not cloud_url.startswith("https://"):
        raise UsageError(f"--cloud-registrar must be an https:// URL, not {cloud_url!r}")
    from pledgeforge.boards.mcuboot import load_public_key
    from pledgeforge.hsm import keystore
    from pledgeforge.station.provisioner import Station, StationConfig
    from pledgeforge.station.rack import expand_ports, provision_rack
    from pledgeforge.station.records import ManufacturingDb

    urls = expand_ports(ports)
    image_pem = None
    if image_key:
        image_pem = read_input(image_key, "firmware key")
        load_public_key(image_pem, f"firmware key {image_key}")
    config = StationConfig(
        ca_signer=keystore.open_signer(key_uri(ca_uri, pin_env)),
        ca_certificate=_certificates([ca_cert], "CA certificate")[0],
        masa_url=masa_url, cloud_registrar_url=cloud_url,
        trust_anchors_pem=_anchor_file(anchors, "trust anchors"),
        cloud_anchors_pem=_anchor_file(cloud_anchor, "cloud registrar anchor"),
        image_key_pem=image_pem,
        tpm_maker_roots=_certificates(tpm_roots, "TPM maker root"),
        tpm_maker_intermediates=_certificates(tpm_cas, "TPM maker CA"),
        ek_kind=ek_kind, hw_type=hw_type, name=station_name or socket.gethostname(),
        timeout=timeout)
    station = Station(config, ManufacturingDb(db_url))
    say = messages(as_json)
    lock = threading.Lock()

    def done(result) -> None:
        with lock:
            if as_json:
                print_json(result.to_dict())
            elif not bars:
                say(_result_line(result))

    bars = _ProgressBars(urls) if sys.stderr.isatty() else None
    try:
        results = provision_rack(station, urls, progress=bars.update if bars else None, on_done=done)
    finally:
        if bars:
            bars.close()
    if bars and not as_json:
        for result in results:
            say(_result_line(result))
    failed = [r for r in results if not r.ok]
    if failed:
        first = failed[0].failure
        kind = EnvironmentFailure if isinstance(first, EnvironmentFailure) else VerificationFailure
        if isinstance(first, UsageError):
            kind = UsageError
        where = "" if len(results) == 1 else f"{len(failed)} of {len(results)} boards failed; "
        raise kind(f"{where}{failed[0].port}: {failed[0].error}")


def _result_line(result) -> str:
    serial = result.serial or "?"
    if result.status == "provisioned":
        return (f"{result.port}: {serial} provisioned ({result.keystore}, {result.assurance}) "
                f"in {result.seconds:.1f} s")
    if result.status == "already-provisioned":
        note = f": {result.error}" if result.error else ", left as it is"
        return f"{result.port}: {serial} was provisioned already{note}"
    return f"{result.port}: {serial} FAILED: {result.error}"


class _ProgressBars:
    """A progress bar per board on stderr (a terminal)."""

    def __init__(self, ports: list[str]):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self._progress = Progress(TextColumn("{task.fields[port]}"), BarColumn(),
                                  TextColumn("{task.description}"),
                                  console=Console(stderr=True), transient=False)
        self._tasks = {port: self._progress.add_task("connecting", total=1, port=port)
                       for port in ports}
        self._progress.start()

    def update(self, port: str, step: str, done: int, total: int) -> None:
        self._progress.update(self._tasks[port], description=step, completed=done, total=total)

    def close(self) -> None:
        self._progress.stop()


@provision.command()
@click.option("--db", "db_url", default=DEFAULT_DB, show_default=True,
              help="the manufacturing database")
@click.option("--format", "fmt", type=click.Choice(["masa", "ownership"]), required=True,
              help="masa: what `masa add-device --from` imports; ownership: what `registrar "
                   "add-pledge --from` and `registrar set-response --from` import")
@click.option("--owner", help="masa: the owner the boards are sold to (an owner the MASA knows)")
@click.option("--est-domain", help="masa: the owner's EST server, for the est-domain flow")
@click.option("--additional-configuration-url", help="masa: additional-configuration-url for the vouchers")
@click.option("--flow", type=click.Choice(["redirect", "est-domain"]), default="redirect",
              show_default=True, help="ownership: how the cloud registrar treats the boards")
@click.option("--location", help="ownership, redirect flow: the owner registrar's URL the cloud "
                                 "registrar redirects the boards to")
@click.option("--serial", "serials", multiple=True, help="only this board (repeatable; default: all)")
@click.option("--out", default="-", show_default=True, help="where to write the JSON lines ('-': stdout)")
def export(db_url, fmt, owner, est_domain, additional_configuration_url, flow, location, serials, out):
    """Write the boards of the manufacturing database as JSON lines, one board a line, for the
    MASA (`--format masa`: serial, owner, est_domain, additional_configuration_url) or the
    cloud and owner registrars (`--format ownership`: serial, flow, response, location)."""
    from pledgeforge.station.export import masa_records, ownership_records, to_lines
    from pledgeforge.station.records import ManufacturingDb

    if fmt == "masa" and not owner:
        raise UsageError("--format masa needs --owner NAME (whom the MASA vouches the boards to)")
    boards = ManufacturingDb(db_url).boards(list(serials) or None)
    unknown = sorted(set(serials) - {b.serial for b in boards})
    if unknown:
        raise UsageError(f"no board {', '.join(unknown)} in {db_url}")
    records = (masa_records(boards, owner, est_domain, additional_configuration_url)
               if fmt == "masa" else ownership_records(boards, flow, location))
    write_output(out, to_lines(records))
    if out != "-":
        click.echo(f"wrote {len(records)} {fmt} record(s) to {out}", err=True)
