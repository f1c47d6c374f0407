"""The audit log: every request and its outcome, hash-chained, append-only.

Each record names the node that wrote it and its sequence number on that
node (1, 2, 3, ...), and carries `prev_hash`, the hash of the node's
previous record, and `hash`:

    hash = SHA-256(prev_hash bytes || JSON array of the record's fields in FIELDS order)

(the first record's prev_hash is 64 zeros). Editing a record changes its
hash; deleting one leaves a gap in the sequence and a prev_hash that names
no record; moving one breaks the order of the sequence numbers and the link
to its neighbours. `verify` walks each node's records in the order they
were written and names the first that does not fit. Deleting the newest
records leaves a shorter but consistent chain: compare the head `verify`
reports with one noted earlier (`expect_heads`; the service logs its head
when it starts and stops, and every response carries its record's
sequence number in the trace header).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from json.encoder import encode_basestring

from sqlalchemy import Connection, Engine, and_, func, or_, select

from .store import audit_records, insert_rows

GENESIS = "0" * 64


@dataclass
class AuditEntry:
    """What one record says (node and seq are given by the chain when it is appended)."""

    peer: str
    operation: str
    status: int
    outcome: str                # signed, refused, repeated
    reason: str = ""
    identity: str = ""          # the client certificate's subject (RFC 4514), if one was presented
    client: str = ""            # the configured client it is
    delegator: str = ""
    delegation: str = ""
    key: str = ""
    subject: str = ""           # serial number, or certificate subject
    request_id: str = ""
    digest: str = ""            # SHA-256 (hex) of the signed object handed out


#: the hashed fields, in order; changing this list invalidates every existing log
FIELDS = ("node", "seq", "at", "peer", "identity", "client", "delegator", "delegation", "operation",
          "key", "subject", "request_id", "digest", "status", "outcome", "reason")


#: the columns an appended record fills (the id is the database's)
COLUMNS = (*FIELDS, "prev_hash", "hash")


def record_hash(prev_hash: str, record: dict) -> str:
    payload = "[" + ",".join(_json_value(record[name]) for name in FIELDS) + "]"
    return hashlib.sha256(bytes.fromhex(prev_hash) + payload.encode()).hexdigest()


#: json.dumps(value, separators=(",", ":"), ensure_ascii=False), for what a field may be
_FIELD_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _json_value(value) -> str:
    """One field as json.dumps writes it (the text every existing record was hashed over);
    the record's text and numbers directly, which is most of the cost of an append."""
    if type(value) is str:
        return encode_basestring(value)
    if type(value) is int:
        return int.__repr__(value)
    return _FIELD_ENCODER.encode(value)


def timestamp(moment: dt.datetime | None = None) -> str:
    moment = (moment or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Head:
    seq: int = 0
    hash: str = GENESIS


class AuditChain:
    """One node's end of the log: appends records after its head (one writer per node)."""

    def __init__(self, node: str):
        self.node = node
        self.head = Head()

    def reload(self, conn: Connection) -> None:
        """Read the head from the database (at start, and after a rolled-back transaction)."""
        row = conn.execute(select(audit_records.c.seq, audit_records.c.hash)
                           .where(audit_records.c.node == self.node)
                           .order_by(audit_records.c.id.desc()).limit(1)).first()
        self.head = Head(row.seq, row.hash) if row else Head()

    def append(self, conn: Connection, entries: list[AuditEntry],
               at: dt.datetime | None = None) -> list[int]:
        """Insert `entries` after the head, in one statement; their sequence numbers."""
        when = timestamp(at)
        rows = []
        seq, prev = self.head.seq, self.head.hash
        for entry in entries:
            seq += 1
            record = {**vars(entry), "node": self.node, "seq": seq, "at": when, "prev_hash": prev}
            prev = record["hash"] = record_hash(prev, record)
            rows.append(record)
        if rows:
            insert_rows(conn, audit_records, COLUMNS, rows)
            self.head = Head(seq, prev)
        return list(range(seq - len(rows) + 1, seq + 1))


# --------------------------------------------------------------------------- verification

@dataclass(frozen=True)
class Problem:
    node: str
    seq: int | None     # the record as it is numbered in the database
    row_id: int | None
    what: str

    def __str__(self) -> str:
        where = f"record {self.node}/{self.seq}" if self.seq is not None else f"node {self.node}"
        return f"{where} (row {self.row_id}): {self.what}" if self.row_id else f"{where}: {self.what}"


@dataclass(frozen=True)
class Verification:
    records: int
    heads: dict[str, Head]
    problem: Problem | None


def verify(engine: Engine, expect_heads: dict[str, tuple[int, str]] | None = None) -> Verification:
    """Check every node's chain; the first problem found (per node order), if any.

    `expect_heads` maps a node to a (seq, hash) noted earlier: that record must
    still be there, unchanged (what a deletion of the newest records breaks).
    """
    heads: dict[str, Head] = {}
    count = 0
    with engine.connect() as conn:
        nodes = [row.node for row in conn.execute(select(audit_records.c.node).distinct()
                                                  .order_by(audit_records.c.node))]
        for node in nodes:
            head = Head()
            rows = conn.execute(select(audit_records).where(audit_records.c.node == node)
                                .order_by(audit_records.c.id))
            for row in rows:
                count += 1
                record = row._asdict()
                expected_seq = head.seq + 1
                if record["seq"] != expected_seq:
                    what = _sequence_problem(engine, node, head.seq, record["seq"])
                    return Verification(count, heads, Problem(node, record["seq"], record["id"], what))
                if record["prev_hash"] != head.hash:
                    return Verification(count, heads, Problem(
                        node, record["seq"], record["id"],
                        "its prev_hash is not the hash of the record before it (a record before "
                        "it was replaced, or this one was moved)"))
                if record_hash(head.hash, record) != record["hash"]:
                    return Verification(count, heads, Problem(
                        node, record["seq"], record["id"],
                        "its fields do not match its hash (edited)"))
                head = Head(record["seq"], record["hash"])
            heads[node] = head
    for node, (seq, digest) in (expect_heads or {}).items():
        head = heads.get(node)
        if head is None or head.seq < seq:
            have = head.seq if head else 0
            return Verification(count, heads, Problem(
                node, seq, None, f"missing: the log of {node} ends at record {have} "
                                 f"(its newest records were deleted)"))
        if seq == head.seq and head.hash != digest:
            return Verification(count, heads, Problem(node, seq, None,
                                                      "its hash is not the one noted (rewritten)"))
        if seq < head.seq:
            with engine.connect() as conn:
                noted = conn.execute(select(audit_records.c.hash).where(and_(
                    audit_records.c.node == node, audit_records.c.seq == seq))).scalar()
            if noted != digest:
                return Verification(count, heads, Problem(node, seq, None,
                                                          "its hash is not the one noted (rewritten)"))
    return Verification(count, heads, None)


def _sequence_problem(engine: Engine, node: str, previous: int, found: int) -> str:
    """What it means that record `found` follows record `previous` of `node`."""
    expected = previous + 1
    if found < expected:
        return f"out of order (moved): it follows record {node}/{previous}"
    with engine.connect() as conn:
        later = conn.execute(select(audit_records.c.id).where(and_(
            audit_records.c.node == node, audit_records.c.seq == expected))).first()
    if later is not None:
        return f"out of order (moved): record {node}/{expected} was written after it"
    missing = f"record {node}/{expected} is" if found == expected + 1 else \
        f"records {node}/{expected}..{found - 1} are"
    return f"{missing} missing (deleted): it follows record {node}/{previous}"


# --------------------------------------------------------------------------- reading

def query(engine: Engine, *, client: str | None = None, serial: str | None = None,
          since: str | None = None, until: str | None = None, node: str | None = None,
          outcome: str | None = None, limit: int | None = None) -> list[dict]:
    """Records matching every filter given, oldest first (`limit`: the newest that many).

    `serial` matches the record's subject exactly or as a certificate subject's
    serialNumber; `since`/`until` are RFC 3339 prefixes compared as text
    (2025-06-01 means from the start of that day)."""
    t = audit_records
    conditions = []
    if client is not None:
        conditions.append(t.c.client == client)
    if serial is not None:
        conditions.append(or_(t.c.subject == serial, t.c.subject.like(f"%serialNumber={serial}%")))
    if since is not None:
        conditions.append(t.c.at >= since)
    if until is not None:
        conditions.append(t.c.at < until)
    if node is not None:
        conditions.append(t.c.node == node)
    if outcome is not None:
        conditions.append(t.c.outcome == outcome)
    statement = select(t).where(and_(*conditions)) if conditions else select(t)
    with engine.connect() as conn:
        if limit is not None:
            rows = conn.execute(statement.order_by(t.c.id.desc()).limit(limit)).all()[::-1]
        else:
            rows = conn.execute(statement.order_by(t.c.id)).all()
    return [row._asdict() for row in rows]


def count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(audit_records)).scalar_one()
