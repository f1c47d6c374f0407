"""Before anything is signed: the request's timestamp, its id, and the client's rate.

Every request carries an `id` of the client's choosing and a `timestamp`
(RFC 3339). A timestamp further than the window from the service's clock is
refused (a replay, or a client whose clock is wrong). Within the window the
service remembers each client's ids with the answer it gave: the same id
again gets that answer, byte for byte, without a new signature (a retry
after a lost answer is safe, with the first timestamp or a fresh one); the
same id with other content is refused.
Entries older than two windows are dropped: their timestamps are refused
anyway.

Each client has a token bucket of `burst` tokens refilled at `rate_per_s`
(registrar/rate_limit.py's arithmetic); every signature a request asks for
(every item of a batch) takes one. The bucket is a database row in
wall-clock seconds, so a restart does not refill it.

The functions named `*_job` run in the state worker's transaction (store.py).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from pledgeforge.registrar.rate_limit import Limit, take

from .audit import timestamp
from .policy import Client
from .store import execute_prepared, rate_buckets, replay_entries


def timestamp_problem(sent: dt.datetime, now: dt.datetime, window_s: int) -> str | None:
    """Why a request timestamp is refused, or None."""
    skew = (now - sent).total_seconds()
    if skew > window_s:
        return (f"the request's timestamp is {skew:.0f} s old; this service accepts requests up to "
                f"{window_s} s old (a replayed request, or a client clock that is wrong)")
    if -skew > window_s:
        return (f"the request's timestamp lies {-skew:.0f} s in the future (more than {window_s} s): "
                "check the client's clock")
    return None


@dataclass(frozen=True)
class StoredAnswer:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class Admission:
    """What the admission job decided: go ahead (reserved), wait (429), or a known id."""

    reserved: bool = False
    wait_s: float = 0.0
    #: the id was seen: its answer, or None while that request is still being served
    seen: bool = False
    answer: StoredAnswer | None = None
    same_body: bool = True


def admit_job(client: Client, request_id: str, body_sha256: str, signatures: int, node: str):
    """The job that looks the id up, charges the client's bucket and reserves the id."""

    def job(conn: Connection) -> Admission:
        row = execute_prepared(conn, "select replay entry", _select_entry,
                               {"client": client.name, "request_id": request_id}).first()
        if row is not None:
            answer = None
            if row.status is not None:
                # bytes(): a PostgreSQL driver hands bytea out as a memoryview
                answer = StoredAnswer(row.status, row.content_type, bytes(row.response),
                                      json.loads(row.headers))
            return Admission(seen=True, answer=answer, same_body=row.body_sha256 == body_sha256)
        wait = _charge(conn, client, signatures)
        if wait > 0:
            return Admission(wait_s=wait)
        execute_prepared(conn, "reserve replay entry", lambda: insert(replay_entries).values(
            {name: bindparam(name) for name in ("client", "request_id", "body_sha256", "node", "created_at")}),
            {"client": client.name, "request_id": request_id, "body_sha256": body_sha256, "node": node,
             "created_at": timestamp()})
        return Admission(reserved=True)

    return job


def _charge(conn: Connection, client: Client, count: int) -> float:
    now = time.time()
    limit = Limit(client.rate_per_s, client.burst)
    row = execute_prepared(conn, "select rate bucket", lambda: select(rate_buckets).where(
        rate_buckets.c.client == bindparam("client")).with_for_update(), {"client": client.name}).first()
    tokens, at = (row.tokens, row.at) if row is not None else (float(client.burst), now)
    tokens, wait = take(tokens, at, now, limit, count)
    values = {"client": client.name, "tokens": tokens, "at": now}
    if row is None:
        execute_prepared(conn, "insert rate bucket", lambda: insert(rate_buckets).values(
            {name: bindparam(name) for name in values}), values)
    else:
        execute_prepared(conn, "update rate bucket", lambda: update(rate_buckets).where(
            rate_buckets.c.client == bindparam("client")).values(
            tokens=bindparam("tokens"), at=bindparam("at")), values)
    return wait


def _select_entry():
    # FOR UPDATE: nodes sharing a PostgreSQL database take turns on a client's rows
    # (SQLite, one writer at a time, renders nothing for it).
    return select(replay_entries).where(replay_entries.c.client == bindparam("client"),
                                        replay_entries.c.request_id == bindparam("request_id")
                                        ).with_for_update()


def _where_entry():
    return (replay_entries.c.client == bindparam("client")) & \
        (replay_entries.c.request_id == bindparam("request_id"))


def answer_job(client: str, request_id: str, answer: StoredAnswer | None):
    """The job that stores the answer of a reserved id (None: forget the id, nothing was signed)."""

    def job(conn: Connection) -> None:
        entry = {"client": client, "request_id": request_id}
        if answer is None:
            execute_prepared(conn, "forget replay entry",
                             lambda: delete(replay_entries).where(_where_entry()), entry)
        else:
            execute_prepared(conn, "answer replay entry", lambda: update(replay_entries).where(
                _where_entry()).values({name: bindparam(name) for name in (
                    "status", "content_type", "response", "headers")}),
                {**entry, "status": answer.status, "content_type": answer.content_type,
                 "response": answer.body, "headers": json.dumps(answer.headers)})

    return job


def prune_job(older_than: dt.datetime):
    """Drop entries whose timestamps would be refused anyway."""

    def job(conn: Connection) -> int:
        return conn.execute(delete(replay_entries).where(
            replay_entries.c.created_at < timestamp(older_than))).rowcount

    return job


def release_unanswered_job(node: str):
    """At start: this node's reservations that never got an answer (it stopped while serving
    them); a retry of those ids is served afresh."""

    def job(conn: Connection) -> int:
        return conn.execute(delete(replay_entries).where(
            (replay_entries.c.node == node) & replay_entries.c.status.is_(None))).rowcount

    return job
