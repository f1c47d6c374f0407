"""`pledgeforge keys generate|public|list|delete`: keys that live in a TPM or PKCS#11 token."""

from __future__ import annotations

import dataclasses
import json

import click

from pledgeforge.hsm import keystore
from pledgeforge.hsm.signer import KeyAlgorithm

from .common import UsageError, json_option, key_uri, pin_env_option, print_json, write_output

ALGORITHMS_HELP = (f"{', '.join(a.value for a in KeyAlgorithm)} (every key store), or what a key "
                   "store offers besides (PKCS#11: ec-p521, rsa-4096); anything else is refused "
                   "with the list of what the key store generates")


@click.group()
def keys() -> None:
    """Generate, inspect and delete keys in TPMs and PKCS#11 tokens."""


@keys.command()
@click.option("--key", "uri", required=True, help="where the new key goes: pkcs11:token=T;object=O or tpm:handle=0x81...")
@click.option("--algorithm", default="ec-p256", show_default=True, help=ALGORITHMS_HELP)
@click.option("--out", "out", help="also write the public key PEM here")
@json_option(help="print the key's URI, algorithm and public key (PEM) as JSON")
@pin_env_option
def generate(uri, algorithm, out, as_json, pin_env):
    """Generate a non-extractable key pair inside the key store."""
    signer = keystore.generate_key(key_uri(uri, pin_env), algorithm)
    if out:
        write_output(out, signer.public_key_pem())
    if as_json:
        print_json({"key": signer.description, "algorithm": signer.algorithm.value,
                    "public_key": signer.public_key_pem().decode(), "out": out})
    else:
        click.echo(f"generated {signer.algorithm.value} key {signer.description}")


@keys.command()
@click.option("--key", "uri", required=True, help="the key's URI")
@pin_env_option
def public(uri, pin_env):
    """Print the public key (PEM) on stdout."""
    write_output(None, keystore.open_signer(key_uri(uri, pin_env)).public_key_pem())


@keys.command("list")
@click.option("--token-uri", "uri", required=True, help="pkcs11:token=T (with pin-source) or tpm:?tcti=...")
@json_option(help="one JSON object per key and line")
@pin_env_option
def list_(uri, as_json, pin_env):
    """List the keys in a token or the persistent keys of a TPM."""
    for info in keystore.list_keys(key_uri(uri, pin_env)):
        row = dataclasses.asdict(info)
        if "handle" in row:  # TPM handles read as tpm2-tools prints them
            row["handle"] = f"0x{row['handle']:08x}"
        click.echo(json.dumps(row) if as_json else "  ".join(f"{k}={v}" for k, v in row.items()))


@keys.command()
@click.option("--key", "uri", required=True, help="the key's URI")
@click.option("--yes", is_flag=True, help="really delete: the key cannot be brought back")
@json_option(help="print the deleted key's URI as JSON")
@pin_env_option
def delete(uri, yes, as_json, pin_env):
    """Delete a key from its key store (PKCS#11: private and public objects; TPM: evict the handle)."""
    parsed = key_uri(uri, pin_env)
    if not yes:
        raise UsageError(f"refusing to delete {parsed} without --yes: a deleted key cannot be "
                         "brought back")
    deleted = keystore.delete_key(parsed)
    if as_json:
        print_json({"deleted": str(deleted)})
    else:
        click.echo(f"deleted {deleted}")
