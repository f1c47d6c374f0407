"""`pledgeforge signer serve|check|renew|audit verify|audit show`: the signing service.

Exit statuses by kind (pledgeforge/cli.py): a configuration that does not
read is a usage error (2); a service, token or database that cannot be used
is an environment failure (3); an audit log that does not verify, or a
request the service refused, is a verification failure (1).
"""

from __future__ import annotations

import signal
import threading

import click

from pledgeforge.errors import VerificationFailure

from .common import UsageError, json_option, key_uri, messages, pin_env_option, print_json

CONFIG_OPTION = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                             help="the signing service's TOML configuration")
DATABASE_OPTION = click.option("--database", "database_url",
                               help="its database URL instead (sqlite:///PATH, postgresql://...)")
JSON_OPTION = json_option


@click.group()
def signer() -> None:
    """The signing service: registrar-side keys behind a key server that builds what it signs."""


@signer.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="the signing service's TOML configuration")
def serve(config_path):
    """Serve until SIGTERM or Ctrl-C; SIGHUP (or a change of the file) reloads the policy."""
    from pledgeforge.keyserver import server
    from pledgeforge.keyserver.config import load_signer_config
    from pledgeforge.registrar.server import configure_logging

    config = load_signer_config(config_path)
    configure_logging()
    server.run(config)


@signer.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="the signing service's TOML configuration")
@JSON_OPTION
def check(config_path, as_json):
    """Read the configuration as `serve` would and show its keys, clients and delegations."""
    from pledgeforge.keyserver.config import load_signer_config

    config = load_signer_config(config_path)
    policy = config.policy
    summary = {
        "node": config.node,
        "keys": {name: str(k.uri) for name, k in config.keys.items()},
        "clients": {name: {"subject": c.subject.rfc4514_string(), "rate_per_s": c.rate_per_s,
                           "burst": c.burst} for name, c in policy.clients.items()},
        "delegations": [{"name": d.name, "delegator": d.delegator, "delegate": d.delegate,
                         "key": d.key, "operations": list(d.operations),
                         "not_before": d.not_before.isoformat(), "not_after": d.not_after.isoformat()}
                        for d in policy.delegations],
    }
    if as_json:
        print_json(summary)
        return
    click.echo(f"node {config.node}: {len(config.keys)} key(s), {len(policy.clients)} client(s), "
               f"{len(policy.delegations)} delegation(s)")
    for d in summary["delegations"]:
        click.echo(f"  {d['name']}: {d['delegator']} lets {d['delegate']} {','.join(d['operations'])} "
                   f"with {d['key']} from {d['not_before']} to {d['not_after']}")


@signer.command()
@click.option("--service", "service_uri", required=True,
              help="the CA key on the signing service: signer+https://HOST:PORT/keys/NAME?...")
@click.option("--key", "key", required=True, help="this node's own key (pkcs11:... or tpm:...)")
@click.option("--subject", required=True, help="the subject to certify, e.g. 'CN=registrar-1,O=Owner'")
@click.option("--cert", "cert_path", required=True, type=click.Path(dir_okay=False),
              help="where the certificate goes (the registrar's signing_cert)")
@click.option("--chain", "chain_path", type=click.Path(dir_okay=False),
              help="where the chain above it goes (PEM)")
@click.option("--watch", is_flag=True, help="keep renewing before expiry until SIGTERM (logs each renewal)")
@pin_env_option
@JSON_OPTION
def renew(service_uri, key, subject, cert_path, chain_path, watch, pin_env, as_json):
    """Get (or renew) a short-term delegation certificate for this node's key."""
    from pathlib import Path

    from pledgeforge.hsm.keyuri import SignerUri
    from pledgeforge.keyserver.renewal import Renewal
    from pledgeforge.registrar.server import configure_logging

    service = key_uri(service_uri, None)
    if not isinstance(service, SignerUri):
        raise UsageError("--service must be a signer+https: URI naming the CA key on the signing service")
    renewal = Renewal(service, key_uri(key, pin_env), subject, Path(cert_path),
                      Path(chain_path) if chain_path else None)
    if not watch:
        cert = renewal.renew()
        if as_json:
            print_json({"cert": cert_path, "subject": cert.subject.rfc4514_string(),
                        "issuer": cert.issuer.rfc4514_string(),
                        "not_after": cert.not_valid_after_utc.isoformat()})
        else:
            click.echo(f"{cert_path}: {cert.subject.rfc4514_string()} valid until "
                       f"{cert.not_valid_after_utc.isoformat()}")
        return
    configure_logging()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    renewal.run(stop)


@signer.group()
def audit() -> None:
    """The service's hash-chained audit log."""


def _engine(config_path, database_url):
    from pledgeforge.keyserver.store import open_store

    if bool(config_path) == bool(database_url):
        raise UsageError("name the audit log with --config FILE or --database URL (one of them)")
    if config_path:
        from pledgeforge.keyserver.config import load_signer_config

        database_url = load_signer_config(config_path).database_url
    return open_store(database_url)


def _heads(values) -> dict:
    heads = {}
    for value in values:
        node, _, rest = value.partition(":")
        seq, _, digest = rest.partition(":")
        if not (node and seq.isascii() and seq.isdigit() and len(digest) == 64):
            raise UsageError(f"--expect-head {value!r} must be NODE:SEQ:HASH (as verify prints it)")
        heads[node] = (int(seq), digest.lower())
    return heads


@audit.command()
@CONFIG_OPTION
@DATABASE_OPTION
@click.option("--expect-head", "expect_heads", multiple=True, metavar="NODE:SEQ:HASH",
              help="a head noted earlier: that record must still be there, unchanged")
@JSON_OPTION
def verify(config_path, database_url, expect_heads, as_json):
    """Check the hash chain; name the first record that was edited, deleted or moved."""
    from pledgeforge.keyserver.audit import verify as verify_log

    result = verify_log(_engine(config_path, database_url), _heads(expect_heads))
    heads = {node: f"{node}:{head.seq}:{head.hash}" for node, head in result.heads.items()}
    if as_json:
        print_json({"ok": result.problem is None, "records": result.records, "heads": heads,
                    "problem": str(result.problem) if result.problem else None,
                    "first_bad": None if result.problem is None else {
                        "node": result.problem.node, "seq": result.problem.seq,
                        "row": result.problem.row_id}})
    if result.problem is not None:
        raise VerificationFailure(f"audit log broken at {result.problem}")
    say = messages(as_json)
    say(f"audit log intact: {result.records} record(s)")
    for head in heads.values():
        say(f"  head {head}")


@audit.command()
@CONFIG_OPTION
@DATABASE_OPTION
@click.option("--client", help="only this client's records")
@click.option("--serial", help="only records about this serial number")
@click.option("--since", help="from this time on (RFC 3339, or a prefix such as 2026-01-31)")
@click.option("--until", help="before this time")
@click.option("--node", help="only this node's records")
@click.option("--outcome", type=click.Choice(["signed", "refused", "repeated", "answered"]))
@click.option("--limit", type=click.IntRange(min=1), help="only the newest N")
@JSON_OPTION
def show(config_path, database_url, client, serial, since, until, node, outcome, limit, as_json):
    """Print audit records, oldest first."""
    from pledgeforge.keyserver.audit import query

    rows = query(_engine(config_path, database_url), client=client, serial=serial, since=since,
                 until=until, node=node, outcome=outcome, limit=limit)
    for row in rows:
        if as_json:
            print_json(row)
            continue
        who = row["client"] or row["identity"] or row["peer"]
        what = " ".join(p for p in (row["operation"], row["key"], row["subject"]) if p)
        by = f" under {row['delegation']} ({row['delegator']})" if row["delegation"] else ""
        why = f": {row['reason']}" if row["reason"] else ""
        click.echo(f"{row['node']}/{row['seq']} {row['at']} {who} {what} -> {row['status']} "
                   f"{row['outcome']}{by}{why}")
