"""`pledgeforge image sign|verify|info`: MCUboot firmware images signed inside an HSM."""

from __future__ import annotations

import click

from pledgeforge.boards import mcuboot
from pledgeforge.boards.image_signing import ImageLayout, sign_image
from pledgeforge.errors import VerificationFailure
from pledgeforge.hsm import keystore

from .common import (check_json_output, json_option, key_uri, pin_env_option, print_json, read_input,
                     write_output)


def _size(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a number (decimal or 0x...)") from None


@click.group()
def image() -> None:
    """Build, verify and inspect MCUboot images."""


@image.command()
@click.option("--key", "uri", required=True, help="the firmware signing key: pkcs11:... or tpm:...")
@click.option("--version", "version", required=True, help="image version, MAJOR.MINOR.REVISION[+BUILD]")
@click.option("--in", "infile", required=True, help="the firmware binary")
@click.option("--out", "outfile", required=True, help="where the signed image goes")
@click.option("--header-size", default="0x200", show_default=True, help="MCUboot header size")
@click.option("--slot-size", default=None,
              help="slot size in bytes [default: the profile's, else 0x80000]")
@click.option("--align", type=click.Choice(["1", "2", "4", "8", "16", "32"]), default="4",
              show_default=True, help="flash write alignment")
@click.option("--pad-header/--no-pad-header", default=True, show_default=True,
              help="prepend the header space (use --no-pad-header for binaries that reserve it)")
@click.option("--profile", default=None, help="take the slot size from this board profile")
@json_option(help="print the signed image's file, version, size and hash as JSON")
@pin_env_option
def sign(uri, version, infile, outfile, header_size, slot_size, align, pad_header, profile, as_json,
         pin_env):
    """Sign a firmware binary; the key never leaves its key store."""
    check_json_output(as_json, outfile)
    if slot_size is not None:
        slot_bytes = _size(slot_size)
    elif profile is not None:
        from pledgeforge.boards.profile import load_profile

        slot_bytes = load_profile(profile).image.slot_size_kib * 1024
    else:
        slot_bytes = ImageLayout.slot_size
    layout = ImageLayout(header_size=_size(header_size), slot_size=slot_bytes, align=int(align),
                         pad_header=pad_header)
    payload = read_input(infile, "firmware binary")
    with keystore.open_signer(key_uri(uri, pin_env)) as signer:
        signed = sign_image(signer, payload, version, layout)
    write_output(outfile, signed)
    info = mcuboot.parse_image(signed)
    if as_json:
        print_json({"out": outfile, "version": str(info.version), "size": len(signed),
                    "hash": info.hash.hex()})
    else:
        click.echo(f"signed {outfile}: version {info.version}, {len(signed)} bytes, "
                   f"hash {info.hash.hex()}", err=outfile == "-")


@image.command()
@click.option("--key-pem", required=True, help="the firmware public key (PEM)")
@click.option("--in", "infile", required=True, help="the signed image")
@json_option(help="print the verified image's version and hash as JSON")
def verify(key_pem, infile, as_json):
    """Check an image as the bootloader does; exit 1 and say why when it fails."""
    public_key = mcuboot.load_public_key_file(key_pem)
    data = read_input(infile, "image")
    try:
        verified = mcuboot.verify_image(data, public_key)
    except mcuboot.ImageError as exc:
        raise VerificationFailure(f"{infile} is refused: {exc}") from None
    if as_json:
        print_json({"in": infile, "valid": True, "version": str(verified.version),
                    "hash": verified.hash.hex()})
    else:
        click.echo(f"{infile}: valid, version {verified.version}, hash {verified.hash.hex()}")


@image.command()
@click.option("--in", "infile", required=True, help="an MCUboot image")
@json_option(help="print one JSON object")
def info(infile, as_json):
    """Print an image's header and TLVs (without verifying the signature)."""
    data = read_input(infile, "image")
    try:
        summary = mcuboot.describe(data)
    except mcuboot.ImageError as exc:
        raise VerificationFailure(f"{infile} is not a readable MCUboot image: {exc}") from None
    if as_json:
        print_json(summary)
        return
    click.echo(f"version       {summary['version']}")
    click.echo(f"header size   {summary['header_size']:#x}")
    click.echo(f"image size    {summary['image_size']} bytes")
    click.echo(f"flags         {', '.join(summary['flags']) or '-'}")
    click.echo(f"hash          {summary['hash'] or '-'}")
    for tlv in summary["tlvs"]:
        where = "protected " if tlv["protected"] else ""
        value = tlv["value"] if tlv["value"] is not None else f"({tlv['length']} bytes)"
        click.echo(f"{where}TLV {tlv['type']:<12} {value}")
