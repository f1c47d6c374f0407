"""The manufacturing database: one row per board a station provisioned (SQLAlchemy Core).

SQLite by default (`sqlite:///manufacturing.sqlite`), any SQLAlchemy URL
works (PostgreSQL where several stations share one). A board is recorded in
one transaction once its IDevID certificate is installed and read back, and
before it is locked; should the board refuse to lock, the row is deleted, so
no row stands for a board that can still be provisioned anew. A board whose
state is unknown after its lock (the console died in the middle) keeps its
row: the next run finds the board locked (done) or not (the row is replaced
when it is provisioned again).

    manufactured_boards
      serial                  the board's serial number (the IDevID's serialNumber)
      profile, model          what the board said it is
      keystore, algorithm     tpm | pkcs11, and the key algorithm
      assurance               tpm-attested | token-reported (hsm/key_evidence.py)
      public_key_sha256       SHA-256 of the IDevID key's SubjectPublicKeyInfo
      ek_certificate_sha256   SHA-256 of the EK certificate (TPM boards)
      ek_issuer               the EK certificate's issuer (the TPM maker)
      iak_name                the IAK's TPM name (hex)
      iak_certificate_pem     the IAK certificate the station issued
      certificate_pem         the IDevID certificate
      certificate_serial      its serial number (hex)
      evidence                the evidence the station accepted (JSON)
      station                 which station provisioned it
      provisioned_at          when (UTC)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass

from sqlalchemy import Column, DateTime, MetaData, String, Table, Text, delete, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from pledgeforge.hsm.identity_names import check_serial_number
from pledgeforge.registrar.db import DatabaseError, open_engine

DEFAULT_DATABASE = "sqlite:///manufacturing.sqlite"
METADATA = MetaData()

manufactured_boards = Table(
    "manufactured_boards", METADATA,
    Column("serial", String(64), primary_key=True),
    Column("profile", String(64), nullable=False),
    Column("model", String(200), nullable=False),
    Column("keystore", String(20), nullable=False),
    Column("algorithm", String(20), nullable=False),
    Column("assurance", String(20), nullable=False),
    Column("public_key_sha256", String(64), nullable=False, unique=True),
    Column("ek_certificate_sha256", String(64)),
    Column("ek_issuer", Text),
    Column("iak_name", String(200)),
    Column("iak_certificate_pem", Text),
    Column("certificate_pem", Text, nullable=False),
    Column("certificate_serial", String(64), nullable=False),
    Column("evidence", Text, nullable=False),
    Column("station", String(200), nullable=False),
    Column("provisioned_at", DateTime(timezone=True), nullable=False),
)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class BoardRecord:
    """A provisioned board, as the database keeps it."""

    serial: str
    profile: str
    model: str
    keystore: str
    algorithm: str
    assurance: str
    public_key_sha256: str
    certificate_pem: str
    certificate_serial: str
    evidence: dict
    station: str
    provisioned_at: dt.datetime
    ek_certificate_sha256: str | None = None
    ek_issuer: str | None = None
    iak_name: str | None = None
    iak_certificate_pem: str | None = None

    def to_dict(self) -> dict:
        """JSON-ready."""
        data = asdict(self)
        data["provisioned_at"] = self.provisioned_at.isoformat(timespec="seconds")
        return data


def _row(record: BoardRecord) -> dict:
    values = asdict(record)
    values["evidence"] = json.dumps(record.evidence, sort_keys=True)
    return values


def _record(row) -> BoardRecord:
    values = dict(row)
    values["evidence"] = json.loads(values["evidence"])
    when = values["provisioned_at"]
    if when.tzinfo is None:  # SQLite keeps no offset; what is stored is UTC
        values["provisioned_at"] = when.replace(tzinfo=dt.timezone.utc)
    return BoardRecord(**values)


class ManufacturingDb:
    """The boards provisioned, in the database at `url`."""

    def __init__(self, url: str = DEFAULT_DATABASE):
        self.url = url
        self.engine = open_engine(url, METADATA)

    def close(self) -> None:
        self.engine.dispose()

    def record(self, record: BoardRecord) -> None:
        """Record a board, replacing the row of an earlier attempt on it (a board that was
        never locked and is provisioned again), in one transaction."""
        check_serial_number(record.serial)
        table = manufactured_boards
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(table).where(table.c.serial == record.serial))
                conn.execute(insert(table).values(**_row(record)))
        except IntegrityError:
            raise DatabaseError(f"board {record.serial}: another board is recorded with the same "
                                "IDevID key (public_key_sha256); a key shared by two boards is "
                                "refused") from None
        except SQLAlchemyError as exc:
            raise DatabaseError(f"cannot record board {record.serial} in {self._where}: "
                                f"{exc.__class__.__name__}") from None

    def remove(self, serial: str) -> None:
        """Forget a board that was recorded but did not lock."""
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(manufactured_boards).where(manufactured_boards.c.serial == serial))
        except SQLAlchemyError as exc:
            raise DatabaseError(f"cannot remove board {serial} from {self._where}: "
                                f"{exc.__class__.__name__}") from None

    def get(self, serial: str) -> BoardRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(manufactured_boards)
                               .where(manufactured_boards.c.serial == serial)).mappings().first()
        return None if row is None else _record(row)

    def boards(self, serials: list[str] | None = None) -> list[BoardRecord]:
        """Every board recorded (or those of `serials`), in serial order."""
        query = select(manufactured_boards).order_by(manufactured_boards.c.serial)
        if serials:
            query = query.where(manufactured_boards.c.serial.in_(serials))
        with self.engine.connect() as conn:
            return [_record(row) for row in conn.execute(query).mappings()]

    @property
    def _where(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)


__all__ = ["ManufacturingDb", "BoardRecord", "DEFAULT_DATABASE", "manufactured_boards", "sha256_hex"]
