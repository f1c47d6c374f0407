"""`pledgeforge keys generate|public|list|delete`: keys that live in a TPM or PKCS#11 token."""

from __future__ import annotations

import dataclasses
import json

import click

from pledgeforge.hsm import keystore
from pledgeforge.hsm.keyuri import Pkcs11Uri
from pledgeforge.hsm.signer import KeyAlgorithm

from .common import UsageError, json_option, key_uri, lab_option, pin_env_option, print_json, write_output

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
@lab_option
def generate(uri, algorithm, out, as_json, pin_env, lab):
    """Generate a non-extractable key pair inside the key store."""
    signer = keystore.generate_key(key_uri(uri, pin_env, lab), algorithm)
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
@lab_option
def public(uri, pin_env, lab):
    """Print the public key (PEM) on stdout."""
    write_output(None, keystore.open_signer(key_uri(uri, pin_env, lab)).public_key_pem())


@keys.command("list")
@click.option("--token-uri", "uri", help="pkcs11:token=T (with pin-source) or tpm:?tcti=...")
@click.option("--token", help="with --lab: one of the lab's tokens (default: every one of them)")
@json_option(help="one JSON object per key and line")
@pin_env_option
@lab_option
def list_(uri, token, as_json, pin_env, lab):
    """List the keys in a token or the persistent keys of a TPM, or those of a lab's tokens."""
    if uri and token:
        raise UsageError("give --token-uri or --token, not both")
    if uri:
        stores = [key_uri(uri, pin_env, lab)]
    elif lab is not None:
        stores = [lab.reach(Pkcs11Uri(token=name)) for name in ([token] if token else sorted(lab.tokens))]
    elif token:
        raise UsageError("--token names one of a lab's tokens: give --lab DIR too (or --token-uri URI)")
    else:
        raise UsageError("say which keys: --token-uri URI, or --lab DIR [--token NAME]")
    for store in stores:
        for info in keystore.list_keys(store):
            row = dataclasses.asdict(info)
            if "handle" in row:  # TPM handles read as tpm2-tools prints them
                row["handle"] = f"0x{row['handle']:08x}"
                row["uri"] = str(dataclasses.replace(store, handle=info.handle))
            else:
                row = {"token": store.token, **row, "uri": str(_object_uri(store, info))}
            click.echo(json.dumps(row) if as_json else "  ".join(f"{k}={v}" for k, v in row.items()))


def _object_uri(token: Pkcs11Uri, info) -> Pkcs11Uri:
    """The URI of a listed key: by its label, or by its id where it has none."""
    if info.label:
        return token.with_object(info.label)
    return token.with_object(None, bytes.fromhex(info.id_hex))


@keys.command()
@click.option("--key", "uri", required=True, help="the key's URI")
@click.option("--yes", is_flag=True, help="really delete: the key cannot be brought back")
@json_option(help="print the deleted key's URI as JSON")
@pin_env_option
@lab_option
def delete(uri, yes, as_json, pin_env, lab):
    """Delete a key from its key store (PKCS#11: private and public objects; TPM: evict the handle)."""
    parsed = key_uri(uri, pin_env, lab)
    if not yes:
        raise UsageError(f"refusing to delete {parsed} without --yes: a deleted key cannot be "
                         "brought back")
    deleted = keystore.delete_key(parsed)
    if as_json:
        print_json({"deleted": str(deleted)})
    else:
        click.echo(f"deleted {deleted}")
