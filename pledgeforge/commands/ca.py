"""`pledgeforge ca init|issue-idevid` and `pledgeforge csr`: certificates signed inside key stores."""

from __future__ import annotations

import click

from pledgeforge.hsm import keystore
from pledgeforge.hsm import x509 as hx509
from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.identity_names import check_serial_number

from .common import key_uri, pin_env_option, read_input, write_output


@click.group()
def ca() -> None:
    """A certificate authority whose key stays in an HSM or TPM."""


@ca.command()
@click.option("--key", "uri", required=True, help="the CA key's URI")
@click.option("--subject", required=True, help="DN, e.g. 'CN=Example Manufacturer CA,O=Example'")
@click.option("--days", type=int, default=3650, show_default=True)
@click.option("--out", required=True, help="CA certificate (PEM)")
@pin_env_option
def init(uri, subject, days, out, pin_env):
    """Create a self-signed CA certificate for an existing key."""
    signer = keystore.open_signer(key_uri(uri, pin_env))
    write_output(out, hx509.to_pem(hx509.make_ca(signer, subject, days=days)))
    click.echo(f"wrote CA certificate {out}")


@ca.command("issue-idevid")
@click.option("--ca-key", "ca_uri", required=True, help="the CA key's URI")
@click.option("--ca-cert", required=True, type=click.Path(dir_okay=False))
@click.option("--csr", "csr_path", required=True, type=click.Path(dir_okay=False))
@click.option("--serial", required=True,
              help="device serial number (subject serialNumber): up to 64 letters, digits, '-' and '.'")
@click.option("--masa-url", help="id-pe-masa-url, e.g. masa.example.com:9443")
@click.option("--hw-type", help="hardwareModuleName type OID (adds the otherName SAN)")
@click.option("--out", required=True, help="IDevID certificate (PEM)")
@pin_env_option
def issue_idevid(ca_uri, ca_cert, csr_path, serial, masa_url, hw_type, out, pin_env):
    """Issue an IEEE 802.1AR IDevID for a CSR whose key lives in the device."""
    check_serial_number(serial, "serial number (--serial)")  # before the HSM is opened
    ca_signer = keystore.open_signer(key_uri(ca_uri, pin_env))
    cert = load_certificate_file(ca_cert, "CA certificate")[0]
    csr = hx509.load_csr(read_input(csr_path, "CSR"))
    hx509.check_csr(csr)
    idevid = hx509.issue_idevid(ca_signer, cert, csr.public_key(), serial, subject=csr.subject,
                                masa_url=masa_url,
                                hardware_module=(hw_type, serial.encode()) if hw_type else None)
    write_output(out, hx509.to_pem(idevid))
    click.echo(f"wrote IDevID {out} for serial {serial}")


@click.command()
@click.option("--key", "uri", required=True, help="the key's URI")
@click.option("--subject", required=True, help="DN, e.g. 'CN=device'")
@click.option("--dns", "dns_names", multiple=True, help="DNS subjectAltName (repeatable)")
@click.option("--out", required=True, help="CSR (PEM)")
@pin_env_option
def csr(uri, subject, dns_names, out, pin_env):
    """Create a PKCS#10 CSR signed by a key in a key store."""
    signer = keystore.open_signer(key_uri(uri, pin_env))
    write_output(out, hx509.to_pem(hx509.make_csr(signer, subject, dns_names=dns_names)))
    click.echo(f"wrote CSR {out}")
