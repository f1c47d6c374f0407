"""The servers' state through SQLAlchemy Core: SQLite by default, any SQLAlchemy URL works.

Each server has its own tables (and usually its own database): the MASA
knows owners, devices and the vouchers it issued (its audit log); the cloud
registrar knows what to answer each pledge and what pledges reported; the
owner registrar knows its pledge list, the vouchers it obtained, status
reports, and the LDevIDs it issued with their enrollstatus and revocation.

Servers read these tables on every request, so ownership registered by
another process (the lab, an operator's CLI) takes effect at once. SQLite
runs in WAL mode with a busy timeout so that such a writer and a serving
process do not trip over each other, and syncs to disk at checkpoints rather
than on every commit (synchronous=NORMAL).

Nothing here is called on a refused request: handlers only write after every
check passed. Serial numbers and owner names are checked (hsm/identity_names)
before they become keys, whoever writes them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (Boolean, Column, DateTime, Engine, ForeignKey, Integer, LargeBinary,
                        MetaData, String, Table, Text, create_engine, delete, event, func, insert,
                        or_, select, update)
from sqlalchemy.exc import SQLAlchemyError

from pledgeforge.errors import EnvironmentFailure
from pledgeforge.hsm.cloud_responses import CloudResponse
from pledgeforge.hsm.identity_names import check_name, check_serial_number

SQLITE_BUSY_TIMEOUT_MS = 10_000


class DatabaseError(EnvironmentFailure):
    """The database could not be opened or written."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def open_engine(url: str, metadata: MetaData) -> Engine:
    """An engine for `url` with `metadata`'s tables created if missing."""
    try:
        engine = create_engine(url)
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        raise DatabaseError(f"cannot use database URL {url!r}: {exc}") from None
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            # In WAL mode NORMAL syncs at checkpoints rather than on every commit: a commit
            # made just before power fails may be lost, the database never corrupts. The
            # servers commit on their event loop, where an fsync per commit stalled every
            # other connection (a fifth of the owner registrar's busy time in a fleet).
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.close()
    try:
        metadata.create_all(engine)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot open database {engine.url.render_as_string(hide_password=True)}: "
                            f"{exc.__class__.__name__}: {exc.orig if hasattr(exc, 'orig') else exc}") from None
    return engine


def _ts() -> Column:
    return Column("created_at", DateTime(timezone=True), nullable=False, default=utcnow)


# --------------------------------------------------------------------------- MASA

MASA_METADATA = MetaData()

masa_owners = Table(
    "masa_owners", MASA_METADATA,
    Column("name", String(200), primary_key=True),
    # The owner's domain CA: registrars it issued may ask for vouchers, and
    # it is the pinned-domain-cert of the owner's vouchers.
    Column("domain_ca_pem", Text, nullable=False),
    _ts(),
)

masa_devices = Table(
    "masa_devices", MASA_METADATA,
    Column("serial", String(200), primary_key=True),
    Column("owner", String(200), ForeignKey("masa_owners.name"), nullable=False),
    # Set for the est-domain flow (brski-cloud): copied into the voucher.
    Column("est_domain", Text),
    Column("additional_configuration_url", Text),
    _ts(),
)

# Every voucher issued; the audit log (RFC 8995 5.8.1) is this table per serial.
masa_vouchers = Table(
    "masa_vouchers", MASA_METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("serial", String(200), nullable=False, index=True),
    Column("owner", String(200), nullable=False),
    Column("domain_id", String(200), nullable=False),
    Column("nonce", Text),
    Column("assertion", String(40), nullable=False),
    Column("requester", Text, nullable=False),
    Column("voucher", LargeBinary, nullable=False),
    _ts(),
)


@dataclass(frozen=True)
class Device:
    serial: str
    owner: str
    domain_ca_pem: str
    est_domain: str | None
    additional_configuration_url: str | None


class MasaStore:
    def __init__(self, url: str):
        self.engine = open_engine(url, MASA_METADATA)

    def add_owner(self, name: str, domain_ca_pem: str) -> None:
        check_name(name, "owner name")
        with self.engine.begin() as conn:
            if conn.execute(select(masa_owners.c.name).where(masa_owners.c.name == name)).first():
                conn.execute(update(masa_owners).where(masa_owners.c.name == name)
                             .values(domain_ca_pem=domain_ca_pem))
            else:
                conn.execute(insert(masa_owners).values(name=name, domain_ca_pem=domain_ca_pem))

    def set_device(self, serial: str, owner: str, est_domain: str | None = None,
                   additional_configuration_url: str | None = None) -> None:
        check_serial_number(serial)
        values = dict(owner=owner, est_domain=est_domain,
                      additional_configuration_url=additional_configuration_url)
        with self.engine.begin() as conn:
            if conn.execute(select(masa_owners.c.name).where(masa_owners.c.name == owner)).first() is None:
                raise DatabaseError(f"MASA has no owner {owner!r}; add the owner first")
            if conn.execute(select(masa_devices.c.serial).where(masa_devices.c.serial == serial)).first():
                conn.execute(update(masa_devices).where(masa_devices.c.serial == serial).values(**values))
            else:
                conn.execute(insert(masa_devices).values(serial=serial, **values))

    def device(self, serial: str) -> Device | None:
        query = (select(masa_devices, masa_owners.c.domain_ca_pem)
                 .join(masa_owners, masa_owners.c.name == masa_devices.c.owner)
                 .where(masa_devices.c.serial == serial))
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            return None
        return Device(row["serial"], row["owner"], row["domain_ca_pem"], row["est_domain"],
                      row["additional_configuration_url"])

    def record_voucher(self, **values) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(masa_vouchers).values(**values))

    def issued_voucher(self, *, serial: str, requester: str, domain_id: str, nonce: str | None,
                       issued_after: dt.datetime | None = None) -> bytes | None:
        """The latest voucher issued to `requester` for `serial`, pinning `domain_id`, with
        `nonce` (None: a nonceless one) and issued after `issued_after`; None if there is none."""
        v = masa_vouchers.c
        query = (select(v.voucher).where(v.serial == serial, v.requester == requester,
                                         v.domain_id == domain_id,
                                         v.nonce.is_(None) if nonce is None else v.nonce == nonce)
                 .order_by(v.id.desc()).limit(1))
        if issued_after is not None:
            query = query.where(v.created_at > issued_after)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    def audit_events(self, serial: str) -> list[dict]:
        query = select(masa_vouchers).where(masa_vouchers.c.serial == serial).order_by(masa_vouchers.c.id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]


# --------------------------------------------------------------------------- cloud registrar

CLOUD_METADATA = MetaData()

# What the cloud registrar answers a voucher-request, per serial and endpoint:
# a CloudResponse name (pledgeforge.hsm.cloud_responses).
cloud_pledges = Table(
    "cloud_pledges", CLOUD_METADATA,
    Column("serial", String(200), primary_key=True),
    Column("endpoint", String(60), primary_key=True, default="main"),
    Column("response", String(40), nullable=False),
    Column("location", Text),
    Column("retry_after", Integer),
    # Answer `response` this many more times, then `then_response` (None: forever).
    Column("remaining", Integer),
    Column("then_response", String(40)),
    _ts(),
)

cloud_settings = Table(
    "cloud_settings", CLOUD_METADATA,
    Column("name", String(60), primary_key=True),
    Column("value", Text, nullable=False),
)

cloud_vouchers = Table(
    "cloud_vouchers", CLOUD_METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("serial", String(200), nullable=False, index=True),
    Column("nonce", Text),
    Column("voucher", LargeBinary, nullable=False),
    _ts(),
)

cloud_status_reports = Table(
    "cloud_status_reports", CLOUD_METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("serial", String(200), nullable=False, index=True),
    Column("kind", String(40), nullable=False),
    Column("status", Boolean, nullable=False),
    Column("reason", Text),
    Column("report", Text, nullable=False),
    _ts(),
)


@dataclass(frozen=True)
class CloudRecord:
    serial: str
    endpoint: str
    response: CloudResponse
    location: str | None
    retry_after: int | None
    remaining: int | None
    then_response: CloudResponse | None


def _check_response(name: str | None, what: str) -> CloudResponse | None:
    if name is None:
        return None
    if name not in CloudResponse.names():
        raise DatabaseError(f"{what} {name!r} is not one of {', '.join(CloudResponse.names())}")
    return CloudResponse(name)


class CloudStore:
    OVERLOAD = "overloaded_retry_after"

    def __init__(self, url: str):
        self.engine = open_engine(url, CLOUD_METADATA)

    def set_response(self, serial: str, response: str, *, endpoint: str = "main",
                     location: str | None = None, retry_after: int | None = None,
                     times: int | None = None, then: str | None = None) -> None:
        check_serial_number(serial)
        response = _check_response(response, "cloud response")
        then = _check_response(then, "follow-up response")
        if CloudResponse.REDIRECT in (response, then) and not location:
            raise DatabaseError("a redirect needs a location (the URL to send the pledge to)")
        if (times is None) != (then is None):
            raise DatabaseError("give `times` and `then` together (answer N times, then switch)")
        if times is not None and times < 1:
            raise DatabaseError("`times` must be at least 1")
        if retry_after is not None and retry_after < 0:
            raise DatabaseError("`retry_after` must be a number of seconds >= 0")
        values = dict(response=response.value, location=location, retry_after=retry_after,
                      remaining=times, then_response=then and then.value)
        key = (cloud_pledges.c.serial == serial) & (cloud_pledges.c.endpoint == endpoint)
        with self.engine.begin() as conn:
            if conn.execute(select(cloud_pledges.c.serial).where(key)).first():
                conn.execute(update(cloud_pledges).where(key).values(**values))
            else:
                conn.execute(insert(cloud_pledges).values(serial=serial, endpoint=endpoint, **values))

    def remove(self, serial: str, endpoint: str | None = None) -> None:
        condition = cloud_pledges.c.serial == serial
        if endpoint is not None:
            condition &= cloud_pledges.c.endpoint == endpoint
        with self.engine.begin() as conn:
            conn.execute(delete(cloud_pledges).where(condition))

    def take_response(self, serial: str, endpoint: str) -> CloudRecord | None:
        """The answer due now; counts down a limited answer (then switches to its follow-up)."""
        key = (cloud_pledges.c.serial == serial) & (cloud_pledges.c.endpoint == endpoint)
        with self.engine.begin() as conn:
            row = conn.execute(select(cloud_pledges).where(key)).mappings().first()
            if row is None:
                return None
            then = row["then_response"]
            record = CloudRecord(row["serial"], row["endpoint"], CloudResponse(row["response"]),
                                 row["location"], row["retry_after"], row["remaining"],
                                 None if then is None else CloudResponse(then))
            if record.remaining is not None:
                if record.remaining <= 1:
                    conn.execute(update(cloud_pledges).where(key).values(
                        response=then, remaining=None, then_response=None))
                else:
                    conn.execute(update(cloud_pledges).where(key)
                                 .values(remaining=record.remaining - 1))
        return record

    def set_overloaded(self, retry_after: int | None) -> None:
        """Answer every voucher-request with 503 + Retry-After (None switches it off)."""
        with self.engine.begin() as conn:
            conn.execute(delete(cloud_settings).where(cloud_settings.c.name == self.OVERLOAD))
            if retry_after is not None:
                conn.execute(insert(cloud_settings).values(name=self.OVERLOAD, value=str(retry_after)))

    def overloaded(self) -> int | None:
        with self.engine.connect() as conn:
            value = conn.execute(select(cloud_settings.c.value)
                                 .where(cloud_settings.c.name == self.OVERLOAD)).scalar()
        return None if value is None else int(value)

    def record_voucher(self, serial: str, nonce: str | None, voucher: bytes) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(cloud_vouchers).values(serial=serial, nonce=nonce, voucher=voucher))

    def record_status(self, serial: str, kind: str, report: "ParsedReport") -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(cloud_status_reports).values(
                serial=serial, kind=kind, status=report.status, reason=report.reason,
                report=report.text))


# --------------------------------------------------------------------------- owner registrar

OWNER_METADATA = MetaData()

PLEDGE_FLOWS = ("redirect", "est-domain")

owner_pledges = Table(
    "owner_pledges", OWNER_METADATA,
    Column("serial", String(200), primary_key=True),
    # redirect: enrolment needs a voucher obtained here first;
    # est-domain: the voucher came from the cloud registrar, the list suffices.
    Column("flow", String(20), nullable=False),
    _ts(),
)

owner_vouchers = Table(
    "owner_vouchers", OWNER_METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("serial", String(200), nullable=False, index=True),
    Column("nonce", Text),
    Column("voucher", LargeBinary, nullable=False),
    _ts(),
)

owner_status_reports = Table(
    "owner_status_reports", OWNER_METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("serial", String(200), nullable=False, index=True),
    Column("kind", String(40), nullable=False),
    Column("status", Boolean, nullable=False),
    Column("reason", Text),
    Column("report", Text, nullable=False),
    # RFC 8995 5.9.4: record which client certificate the report came over.
    Column("client_certificate", Text, nullable=False),
    _ts(),
)

# Every LDevID the owner CA issued, and what became of it: the pledge's
# enrollstatus about it (RFC 8995 5.9.4) and its revocation. An LDevID that
# no enrollstatus confirmed was never put to use (the pledge failed, or lost
# power before storing it): `registrar ldevids --unconfirmed` lists them.
owner_ldevids = Table(
    "owner_ldevids", OWNER_METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("serial", String(200), nullable=False, index=True),
    Column("kind", String(20), nullable=False),  # enroll (IDevID asked) / reenroll (an LDevID asked)
    Column("certificate_serial", String(64), nullable=False, unique=True),  # hex, lower case
    Column("subject", Text, nullable=False),
    Column("certificate_pem", Text, nullable=False),
    Column("not_after", DateTime(timezone=True), nullable=False),
    # the TLS client certificate the request came over: "idevid|ldevid <subject> (certificate <hex>)"
    Column("requester", Text, nullable=False),
    Column("confirmed", Boolean),  # None: no enrollstatus yet; else its status
    Column("status_reason", Text),
    Column("status_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("revocation_reason", String(40)),
    _ts(),  # when it was issued
)

#: RFC 5280 5.3.1 reason codes, as the CLI and the database spell them
REVOCATION_REASONS = ("unspecified", "keyCompromise", "affiliationChanged", "superseded",
                      "cessationOfOperation", "privilegeWithdrawn")


def certificate_serial_text(value: int | str) -> str:
    """How certificate serial numbers are keyed here: lower-case hex without leading zeros.
    Text may be written as openssl prints it (upper case, with ':' between the bytes, 0x...)."""
    if isinstance(value, int):
        return f"{value:x}"
    text = value.strip().lower().replace(":", "")
    text = text[2:] if text.startswith("0x") else text
    try:
        return f"{int(text, 16):x}"
    except ValueError:
        raise DatabaseError(f"certificate serial {value!r} is not a hexadecimal number "
                            "(give it as `openssl x509 -serial` prints it)") from None


@dataclass(frozen=True)
class IssuedLdevid:
    """One row of owner_ldevids."""

    serial: str
    kind: str
    certificate_serial: str
    subject: str
    certificate_pem: str
    not_after: dt.datetime
    requester: str
    issued_at: dt.datetime
    confirmed: bool | None
    status_reason: str | None
    status_at: dt.datetime | None
    revoked_at: dt.datetime | None
    revocation_reason: str | None

    @property
    def state(self) -> str:
        """revoked, confirmed, failed (enrollstatus said so) or unconfirmed (no enrollstatus)."""
        if self.revoked_at is not None:
            return "revoked"
        return {True: "confirmed", False: "failed", None: "unconfirmed"}[self.confirmed]

    def to_dict(self) -> dict:
        out = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "certificate_pem"}
        out["state"] = self.state
        return {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in out.items()}


def _issued(row) -> IssuedLdevid:
    values = dict(row)
    values.pop("id")
    values["issued_at"] = values.pop("created_at")
    for name in ("not_after", "issued_at", "status_at", "revoked_at"):
        if values[name] is not None and values[name].tzinfo is None:  # SQLite keeps no zone
            values[name] = values[name].replace(tzinfo=dt.timezone.utc)
    return IssuedLdevid(**values)


class OwnerStore:
    def __init__(self, url: str):
        self.engine = open_engine(url, OWNER_METADATA)

    def add_pledge(self, serial: str, flow: str) -> None:
        check_serial_number(serial)
        if flow not in PLEDGE_FLOWS:
            raise DatabaseError(f"flow {flow!r} is not one of {', '.join(PLEDGE_FLOWS)}")
        with self.engine.begin() as conn:
            if conn.execute(select(owner_pledges.c.serial).where(owner_pledges.c.serial == serial)).first():
                conn.execute(update(owner_pledges).where(owner_pledges.c.serial == serial).values(flow=flow))
            else:
                conn.execute(insert(owner_pledges).values(serial=serial, flow=flow))

    def pledge_flow(self, serial: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(owner_pledges.c.flow).where(owner_pledges.c.serial == serial)).scalar()

    def has_voucher(self, serial: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(owner_vouchers)
                                .where(owner_vouchers.c.serial == serial)).scalar() > 0

    def record_voucher(self, serial: str, nonce: str | None, voucher: bytes) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(owner_vouchers).values(serial=serial, nonce=nonce, voucher=voucher))

    def record_status(self, serial: str, kind: str, report: "ParsedReport", client_certificate: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(owner_status_reports).values(
                serial=serial, kind=kind, status=report.status, reason=report.reason,
                report=report.text, client_certificate=client_certificate))

    # ------------------------------------------------------------------ issued LDevIDs

    def record_ldevid(self, serial: str, kind: str, certificate_pem: str, certificate_serial: int,
                      subject: str, not_after: dt.datetime, requester: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(owner_ldevids).values(
                serial=serial, kind=kind, certificate_serial=certificate_serial_text(certificate_serial),
                subject=subject, certificate_pem=certificate_pem, not_after=not_after,
                requester=requester))

    def ldevid(self, certificate_serial: int | str) -> IssuedLdevid | None:
        key = certificate_serial_text(certificate_serial)
        with self.engine.connect() as conn:
            row = conn.execute(select(owner_ldevids).where(
                owner_ldevids.c.certificate_serial == key)).mappings().first()
        return _issued(row) if row else None

    def ldevids(self, serial: str | None = None, *, unconfirmed: bool = False) -> list[IssuedLdevid]:
        """Issued LDevIDs, oldest first; `unconfirmed`: only those no enrollstatus confirmed
        and nobody revoked."""
        c = owner_ldevids.c
        query = select(owner_ldevids).order_by(c.id)
        if serial is not None:
            query = query.where(c.serial == serial)
        if unconfirmed:
            query = query.where(or_(c.confirmed.is_(None), c.confirmed.is_(False)), c.revoked_at.is_(None))
        with self.engine.connect() as conn:
            return [_issued(r) for r in conn.execute(query).mappings()]

    def current_ldevid(self, serial: str) -> IssuedLdevid | None:
        """The pledge's LDevID in use: the latest one its enrollstatus confirmed, unless revoked."""
        c = owner_ldevids.c
        query = (select(owner_ldevids).where(c.serial == serial, c.confirmed.is_(True))
                 .order_by(c.id.desc()).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        issued = _issued(row) if row else None
        return issued if issued is not None and issued.revoked_at is None else None

    def record_enroll_status(self, serial: str, report: "ParsedReport",
                             client_certificate_serial: int | None) -> str | None:
        """Note an enrollstatus against the LDevID it is about: the LDevID it came over (a
        renewal reports over its new certificate), else the latest one issued to the pledge.
        Returns that LDevID's certificate serial, or None if the pledge has none."""
        c = owner_ldevids.c
        with self.engine.begin() as conn:
            row = None
            if client_certificate_serial is not None:
                row = conn.execute(select(c.id, c.certificate_serial).where(
                    c.certificate_serial == certificate_serial_text(client_certificate_serial),
                    c.serial == serial)).first()
            if row is None:
                row = conn.execute(select(c.id, c.certificate_serial).where(c.serial == serial)
                                   .order_by(c.id.desc()).limit(1)).first()
            if row is None:
                return None
            conn.execute(update(owner_ldevids).where(c.id == row.id).values(
                confirmed=report.status, status_reason=report.reason, status_at=utcnow()))
        return row.certificate_serial

    def revoke(self, *, certificate_serial: int | str | None = None, serial: str | None = None,
               reason: str = "unspecified") -> list[IssuedLdevid]:
        """Revoke one LDevID (by certificate serial) or every unrevoked one of a pledge; what
        was revoked now (an LDevID revoked before is left as it was)."""
        if (certificate_serial is None) == (serial is None):
            raise DatabaseError("name either a certificate serial or a pledge serial number")
        if reason not in REVOCATION_REASONS:
            raise DatabaseError(f"revocation reason {reason!r} is not one of {', '.join(REVOCATION_REASONS)}")
        c = owner_ldevids.c
        if certificate_serial is not None:
            key = certificate_serial_text(certificate_serial)
            if self.ldevid(key) is None:
                raise DatabaseError(f"this owner CA issued no LDevID with certificate serial {key}")
            condition = c.certificate_serial == key
        else:
            if not self.ldevids(serial):
                raise DatabaseError(f"this owner CA issued no LDevID to pledge {serial}")
            condition = c.serial == serial
        with self.engine.begin() as conn:
            ids = [r.id for r in conn.execute(select(c.id).where(condition, c.revoked_at.is_(None)))]
            if ids:
                conn.execute(update(owner_ldevids).where(c.id.in_(ids)).values(
                    revoked_at=utcnow(), revocation_reason=reason))
            rows = conn.execute(select(owner_ldevids).where(c.id.in_(ids)).order_by(c.id)).mappings()
            return [_issued(r) for r in rows]

    def revoked_ldevids(self) -> list[IssuedLdevid]:
        """Every revoked LDevID that has not expired yet (what the CRL lists), oldest first."""
        c = owner_ldevids.c
        query = (select(owner_ldevids).where(c.revoked_at.is_not(None), c.not_after > utcnow())
                 .order_by(c.id))
        with self.engine.connect() as conn:
            return [_issued(r) for r in conn.execute(query).mappings()]


# --------------------------------------------------------------------------- shared

@dataclass(frozen=True)
class ParsedReport:
    """A voucher_status / enrollstatus body as received (RFC 8995 5.7, 5.9.4)."""

    status: bool
    reason: str | None
    text: str


def table_contents(engine: Engine, metadata: MetaData) -> dict[str, list[tuple]]:
    """Every row of every table: what tests compare before and after a refused request."""
    with engine.connect() as conn:
        return {name: [tuple(row) for row in conn.execute(select(table))]
                for name, table in metadata.tables.items()}
