"""`pledgeforge cms sign|verify`: CMS SignedData as vouchers use it."""

from __future__ import annotations

import base64
import datetime as dt
import json

import click

from pledgeforge.hsm import cms as hcms
from pledgeforge.hsm import keystore
from pledgeforge.hsm.chain import load_certificate_file

from .common import json_option, key_uri, lab_option, pin_env_option, print_json, read_input, write_output


@click.group()
def cms() -> None:
    """Sign and verify CMS SignedData (vouchers, voucher-requests)."""


@cms.command()
@click.option("--key", "uri", required=True, help="the signing key's URI")
@click.option("--cert", required=True, type=click.Path(dir_okay=False), help="signer certificate (PEM); "
              "further certificates in the file are included as the chain")
@click.option("--in", "in_path", required=True, help="content to sign ('-' for stdin)")
@click.option("--out", "out_path", required=True, help="DER output ('-' for stdout)")
@click.option("--content-type", type=click.Choice(["voucher", "data"]), default="voucher", show_default=True)
@click.option("--pss", is_flag=True, help="RSA keys: sign with RSASSA-PSS instead of PKCS#1 v1.5")
@pin_env_option
@lab_option
def sign(uri, cert, in_path, out_path, content_type, pss, pin_env, lab):
    """Sign a file; the signature is made inside the key store."""
    from pledgeforge.hsm.signer import Padding

    certs = load_certificate_file(cert, "signer certificate")
    signer = keystore.open_signer(key_uri(uri, pin_env, lab))
    der = hcms.sign_cms(read_input(in_path, "content"), signer, certs[0], certs[1:],
                        content_type=content_type, pad=Padding.PSS if pss else Padding.PKCS1V15)
    write_output(out_path, der)


@cms.command()
@click.option("--in", "in_path", required=True, help="CMS in DER, PEM or base64 ('-' for stdin)")
@click.option("--anchors", required=True, type=click.Path(dir_okay=False), help="trust anchors (PEM)")
@click.option("--certfile", type=click.Path(dir_okay=False), help="extra certificates to build the chain")
@click.option("--no-check-time", is_flag=True, help="ignore certificate validity periods")
@click.option("--at-time", type=click.DateTime(["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
              help="check validity at this UTC time instead of now")
@json_option(help="print one JSON object instead of the content: content type, signer, chain, "
                  "signing time, the content (parsed when it is JSON, as a voucher is) and its base64")
def verify(in_path, anchors, certfile, no_check_time, at_time, as_json):
    """Verify, then print the content on stdout (exit 0 only when valid, 1 when not)."""
    der = hcms.load_cms_input(read_input(in_path, "CMS input"))
    extra = load_certificate_file(certfile, "certfile") if certfile else []
    when = at_time.replace(tzinfo=dt.timezone.utc) if at_time else None
    result = hcms.verify_cms(der, load_certificate_file(anchors, "trust anchors"), extra,
                             at_time=when, check_time=not no_check_time)
    if not as_json:
        write_output(None, result.content)
        return
    try:
        content = json.loads(result.content)
    except ValueError:   # not JSON (or not UTF-8): the base64 says it all
        content = None
    print_json({
        "valid": True,
        "content_type": result.content_type,
        "signer": result.signer_cert.subject.rfc4514_string(),
        "chain": [c.subject.rfc4514_string() for c in result.chain],
        "signing_time": result.signing_time.isoformat() if result.signing_time else None,
        "content": content,
        "content_base64": base64.b64encode(result.content).decode(),
    })
