"""The signing service's state through SQLAlchemy Core: audit log, replay cache, rate counters.

SQLite by default (WAL mode, from registrar.db.open_engine); nothing here is
SQLite-only, so several nodes can later share one PostgreSQL database:
every audit record names its node and each node keeps its own hash chain
(no row is shared between nodes' appends), replay entries are unique per
(client, request id), and a client's rate bucket is one row.

All of it is written from one thread, `StateWorker`, which runs the jobs
handed to it by the event loop in transactions of their own: jobs that
arrive while a transaction commits go together into the next one (a group
commit), so a flood of requests costs one commit per group, not per request.

Only what a restart must find is flushed to disk at its commit: audit
records and stored answers. A request's admission (its reservation and the
client's rate row) is committed without a flush of its own (SQLite
`synchronous = NORMAL` in WAL mode, PostgreSQL `synchronous_commit = off`):
a power cut may lose it, never reorder it, since the next flushed commit
makes every earlier one durable; what it would lose (a reservation nobody
answered, a rate counter) a restart discards anyway. A durable commit costs
the disk's flush (about 3 ms here), and every request has one anyway.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

from sqlalchemy import (Column, Connection, CursorResult, Engine, Executable, Float, Integer, LargeBinary,
                        MetaData, String, Table, Text, UniqueConstraint, bindparam, insert)

from pledgeforge.registrar.db import open_engine

log = logging.getLogger("pledgeforge.keyserver")

METADATA = MetaData()

#: one record per request or batch item, hash-chained per node (see audit.py)
audit_records = Table(
    "signer_audit", METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("node", String(100), nullable=False),
    Column("seq", Integer, nullable=False),
    # RFC 3339 text, UTC, microseconds: hashed as written, sorts as it reads
    Column("at", String(40), nullable=False, index=True),
    Column("peer", String(100), nullable=False),
    Column("identity", Text, nullable=False),       # the client certificate's subject, or ""
    Column("client", String(200), nullable=False, index=True),
    Column("delegator", Text, nullable=False),
    Column("delegation", String(200), nullable=False),
    Column("operation", String(40), nullable=False),
    Column("key", String(200), nullable=False),
    Column("subject", Text, nullable=False, index=True),   # serial number or certificate subject
    Column("request_id", String(300), nullable=False),
    Column("digest", String(128), nullable=False),   # SHA-256 of what was signed and handed out
    Column("status", Integer, nullable=False),
    Column("outcome", String(20), nullable=False),   # signed, refused, repeated
    Column("reason", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("node", "seq", name="signer_audit_node_seq"),
)

#: each client's requests of the last replay windows and the answer each got
replay_entries = Table(
    "signer_replay", METADATA,
    Column("client", String(200), primary_key=True),
    Column("request_id", String(200), primary_key=True),
    Column("body_sha256", String(64), nullable=False),
    Column("node", String(100), nullable=False),
    Column("created_at", String(40), nullable=False, index=True),
    Column("status", Integer),               # None while the request is being served
    Column("content_type", String(100)),
    Column("response", LargeBinary),
    Column("headers", Text),                 # JSON object
)

#: a token bucket per client (wall-clock seconds, so that a restart does not refill it)
rate_buckets = Table(
    "signer_rate", METADATA,
    Column("client", String(200), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("at", Float, nullable=False),
)


def open_store(url: str) -> Engine:
    return open_engine(url, METADATA)


#: statements compiled for a dialect: their SQL text and, for a positional paramstyle,
#: the order of their parameters
_compiled: dict[tuple, tuple[str, tuple[str, ...] | None]] = {}


def execute_prepared(conn: Connection, name: str, build: Callable[[], Executable],
                     params: dict | list[dict]) -> CursorResult:
    """Execute the statement `build()` makes (named `name`), compiled once per dialect.

    Every request runs a few statements on its own rows; building and compiling
    a SQLAlchemy expression (or finding it in the compiled cache, which hashes
    the whole expression) costs a request more than the database's work, so the
    SQL text is kept and handed to the driver as it is. The parameters are
    plain text, numbers and bytes that need no SQLAlchemy type processing; the
    rows come back as the driver gives them. A list of parameter dicts is one
    executemany.
    """
    key = (conn.dialect.name, conn.dialect.paramstyle, name)
    compiled = _compiled.get(key)
    if compiled is None:
        statement = build().compile(dialect=conn.dialect)
        compiled = (str(statement), tuple(statement.positiontup) if statement.positional else None)
        _compiled[key] = compiled
    sql, order = compiled

    def arranged(values: dict):
        return tuple(values[n] for n in order) if order is not None else values

    return conn.exec_driver_sql(sql, [arranged(p) for p in params] if isinstance(params, list)
                                else arranged(params))


def insert_rows(conn: Connection, table: Table, columns: tuple[str, ...], rows: list[dict]) -> None:
    """INSERT `rows` (dicts with at least `columns`) in one executemany.

    SQLAlchemy's processing of each row's parameters costs more than the
    database's insert of it (a batch of 100 audit records: 15 us a row against
    6); these columns are plain text and numbers that need none.
    """
    execute_prepared(conn, f"insert {table.name} {','.join(columns)}",
                     lambda: insert(table).values({name: bindparam(name) for name in columns}), rows)


def _set_durability(conn: Connection, durable: bool) -> None:
    """Whether this transaction's commit waits for the disk (see the module docstring)."""
    if conn.dialect.name == "sqlite":
        # Set before the transaction's first statement: SQLite refuses it inside one.
        conn.exec_driver_sql(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
    elif conn.dialect.name == "postgresql" and not durable:
        conn.exec_driver_sql("SET LOCAL synchronous_commit = off")


T = TypeVar("T")
#: a unit of database work; it runs inside a transaction shared with other jobs
Job = Callable[[Connection], T]


class StateWorker:
    """Runs database jobs in one thread, a group of them per transaction.

    A job that raises fails its whole group (the transaction rolls back) and
    `on_rollback` is called, so that whoever keeps state about what was
    written (the audit chain's head) can read it again.
    """

    def __init__(self, engine: Engine, on_rollback: Callable[[Connection], None] | None = None):
        self.engine = engine
        self._on_rollback = on_rollback
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="signer-state")
        self._pending: list[tuple[Job, bool, asyncio.Future]] = []
        self._wakeup: asyncio.Event | None = None
        self._writer: asyncio.Task | None = None
        self._closing = False

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._writer = asyncio.get_running_loop().create_task(self._write_forever())

    async def run(self, job: Job[T], durable: bool = True) -> T:
        """Run `job` in the next transaction; its result. durable=False: the transaction
        (if no durable job shares it) commits without flushing the disk."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((job, durable, future))
        self._wakeup.set()
        return await future

    async def _write_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            group, self._pending = self._pending, []
            try:
                results = await loop.run_in_executor(self._executor, self._transaction,
                                                     [job for job, _, _ in group],
                                                     any(durable for _, durable, _ in group))
            except Exception as exc:  # a database failure: every request of the group gets a 500
                log.error("state transaction of %d job(s) failed: %s: %s", len(group),
                          type(exc).__name__, exc)
                for _, _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, _, future), result in zip(group, results):
                if not future.done():
                    future.set_result(result)

    def _transaction(self, jobs: list[Job], durable: bool = True) -> list:
        try:
            with self.engine.begin() as conn:
                _set_durability(conn, durable)
                return [job(conn) for job in jobs]
        except Exception:
            if self._on_rollback is not None:
                with self.engine.connect() as conn:
                    self._on_rollback(conn)
            raise

    def call(self, job: Job[T]) -> T:
        """Run one job now, from outside the event loop (start-up, shut-down)."""
        return self._executor.submit(self._transaction, [job]).result()[0]

    async def close(self) -> None:
        """Finish the jobs handed over so far, then stop."""
        if self._writer is not None:
            self._closing = True
            self._wakeup.set()
            await self._writer
        self._executor.shutdown(wait=True)
        self.engine.dispose()
