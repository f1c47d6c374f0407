"""`pledgeforge ca init|issue-idevid` and `pledgeforge csr`: certificates signed inside key stores."""

from __future__ import annotations

import click
from cryptography.hazmat.primitives import hashes

from pledgeforge.hsm import keystore
from pledgeforge.hsm import x509 as hx509
from pledgeforge.hsm.chain import load_certificate_file
from pledgeforge.hsm.identity_names import check_serial_number

from .common import (check_json_output, json_option, key_uri, lab_option, pin_env_option, print_json,
                     read_input, write_output)


@click.group()
def ca() -> None:
    """A certificate authority whose key stays in an HSM or TPM."""


@ca.command()
@click.option("--key", "uri", required=True, help="the CA key's URI")
@click.option("--subject", required=True, help="DN, e.g. 'CN=Example Manufacturer CA,O=Example'")
@click.option("--days", type=int, default=3650, show_default=True)
@click.option("--out", required=True, help="CA certificate (PEM; '-' for stdout)")
@json_option(help="print what was written as JSON (file, subject, validity)")
@pin_env_option
@lab_option
def init(uri, subject, days, out, as_json, pin_env, lab):
    """Create a self-signed CA certificate for an existing key."""
    check_json_output(as_json, out)
    signer = keystore.open_signer(key_uri(uri, pin_env, lab))
    cert = hx509.make_ca(signer, subject, days=days)
    write_output(out, hx509.to_pem(cert))
    if as_json:
        print_json(_certificate_report(out, cert))
    else:
        click.echo(f"wrote CA certificate {out}", err=out == "-")


@ca.command("issue-idevid")
@click.option("--ca-key", "ca_uri", required=True, help="the CA key's URI")
@click.option("--ca-cert", required=True, type=click.Path(dir_okay=False))
@click.option("--csr", "csr_path", required=True, type=click.Path(dir_okay=False))
@click.option("--serial", required=True,
              help="device serial number (subject serialNumber): up to 64 letters, digits, '-' and '.'")
@click.option("--masa-url", help="id-pe-masa-url, e.g. masa.example.com:9443")
@click.option("--hw-type", help="hardwareModuleName type OID (adds the otherName SAN)")
@click.option("--out", required=True, help="IDevID certificate (PEM; '-' for stdout)")
@json_option(help="print what was written as JSON (file, subject, issuer, serial number, MASA URL)")
@pin_env_option
@lab_option
def issue_idevid(ca_uri, ca_cert, csr_path, serial, masa_url, hw_type, out, as_json, pin_env, lab):
    """Issue an IEEE 802.1AR IDevID for a CSR whose key lives in the device."""
    check_json_output(as_json, out)
    check_serial_number(serial, "serial number (--serial)")  # before the HSM is opened
    ca_signer = keystore.open_signer(key_uri(ca_uri, pin_env, lab))
    cert = load_certificate_file(ca_cert, "CA certificate")[0]
    csr = hx509.load_csr(read_input(csr_path, "CSR"))
    hx509.check_csr(csr)
    idevid = hx509.issue_idevid(ca_signer, cert, csr.public_key(), serial, subject=csr.subject,
                                masa_url=masa_url,
                                hardware_module=(hw_type, serial.encode()) if hw_type else None)
    write_output(out, hx509.to_pem(idevid))
    if as_json:
        print_json({**_certificate_report(out, idevid), "serial_number": serial, "masa_url": masa_url})
    else:
        click.echo(f"wrote IDevID {out} for serial {serial}", err=out == "-")


@click.command()
@click.option("--key", "uri", required=True, help="the key's URI")
@click.option("--subject", required=True, help="DN, e.g. 'CN=device'")
@click.option("--dns", "dns_names", multiple=True, help="DNS subjectAltName (repeatable)")
@click.option("--out", required=True, help="CSR (PEM; '-' for stdout)")
@json_option(help="print what was written as JSON (file, subject)")
@pin_env_option
@lab_option
def csr(uri, subject, dns_names, out, as_json, pin_env, lab):
    """Create a PKCS#10 CSR signed by a key in a key store."""
    check_json_output(as_json, out)
    signer = keystore.open_signer(key_uri(uri, pin_env, lab))
    request = hx509.make_csr(signer, subject, dns_names=dns_names)
    write_output(out, hx509.to_pem(request))
    if as_json:
        print_json({"out": out, "subject": request.subject.rfc4514_string(), "dns": list(dns_names)})
    else:
        click.echo(f"wrote CSR {out}", err=out == "-")


def _certificate_report(out: str, cert) -> dict:
    return {"out": out, "subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "fingerprint_sha256": cert.fingerprint(hashes.SHA256()).hex()}
