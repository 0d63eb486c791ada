"""The tables (DESIGN §4) as SQLAlchemy 2 declarative models, one code path for SQLite and PostgreSQL.

Only ``schema.store`` reads and writes these; everyone else sees the frozen domain objects it
returns. Conventions:
* amounts are ``Money`` (exact on both databases), timestamps are ``BigInteger`` UTC nanoseconds;
* every row that is ever updated has ``version`` as SQLAlchemy's ``version_id_col``: an UPDATE
  carries ``WHERE version = <the version read>``, so a lost race raises instead of overwriting;
* states and kinds are stored as their enum's string value (no database enum types, so adding a
  member needs no migration);
* constraint names come from ``NAMING_CONVENTION``, so migrations and error translation can name
  them (``UQ_ORDERS_CLIENT_ORDER_ID`` and friends below).

Any change here needs a new Alembic revision under ``schema/migrations/versions``; a test compares
the migrated database with this metadata.
"""
from __future__ import annotations

from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schema.columns import Id, JsonDocument, Money

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

UQ_SESSIONS_NAME = "uq_sessions_name"
UQ_BROKER_ACCOUNTS_NAME = "uq_broker_accounts_name"
UQ_ORDERS_CLIENT_ORDER_ID = "uq_orders_client_order_id"
UQ_FILLS_BROKER_FILL_ID = "uq_fills_broker_fill_id"
UQ_POSITIONS_SESSION_SYMBOL = "uq_positions_session_symbol"
UQ_EVENTS_AGGREGATE_VERSION = "uq_events_aggregate_aggregate_version"

_CASCADE = "CASCADE"


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        int: sa.BigInteger(),
        str: sa.String(),
        Decimal: Money(),
        dict[str, Any]: JsonDocument(),
        list[Any]: JsonDocument(),
        bytes: sa.LargeBinary(),
    }


class BrokerAccountRow(Base):
    """A broker account the engine may use. ``config`` holds endpoints and options, never secrets."""

    __tablename__ = "broker_accounts"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(unique=True)
    broker: Mapped[str]
    config: Mapped[dict[str, Any]]
    version: Mapped[int] = mapped_column(sa.Integer())

    __mapper_args__ = {"version_id_col": version}


class SessionRow(Base):
    """A trading session. ``id`` is never reused (``sqlite_autoincrement``), so a session removed
    and added again under the same name gets new client order ids."""

    __tablename__ = "sessions"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(unique=True)
    strategy: Mapped[str]
    params: Mapped[dict[str, Any]]
    symbol: Mapped[str]  # canonical root, e.g. ES
    contract: Mapped[str]  # the contract traded now, e.g. ESZ6
    interval: Mapped[str]
    account: Mapped[str]
    data_source: Mapped[str]
    state: Mapped[str]
    state_reason: Mapped[str | None]
    heat_state: Mapped[str]
    roll_state: Mapped[str]
    lease_owner: Mapped[str | None]
    lease_epoch: Mapped[int]
    fill_cursor: Mapped[str | None]  # the broker's fills watermark, opaque to us
    created_ns: Mapped[int]
    updated_ns: Mapped[int]
    version: Mapped[int] = mapped_column(sa.Integer())

    __mapper_args__ = {"version_id_col": version}


class OrderRow(Base):
    """An order; always equal to the fold of its ``order:<client_order_id>`` events.

    ``version`` doubles as the number of events applied, and as the aggregate version of the last
    event, because both start at 1 and grow by one per change.
    """

    __tablename__ = "orders"
    __table_args__ = (
        sa.Index("ix_orders_session_status", "session", "status"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    client_order_id: Mapped[str] = mapped_column(unique=True)
    session: Mapped[str]
    signal: Mapped[int]
    broker_order_id: Mapped[str | None] = mapped_column(index=True)
    symbol: Mapped[str]
    side: Mapped[str]
    order_type: Mapped[str]
    quantity: Mapped[Decimal]
    limit_price: Mapped[Decimal | None]
    stop_price: Mapped[Decimal | None]
    time_in_force: Mapped[str]
    status: Mapped[str]
    previous_status: Mapped[str | None]
    filled_quantity: Mapped[Decimal]
    average_price: Mapped[Decimal | None]
    reason: Mapped[str | None]
    bracket_group: Mapped[str | None]
    epoch: Mapped[int]
    created_ns: Mapped[int]
    updated_ns: Mapped[int]
    version: Mapped[int] = mapped_column(sa.Integer())

    # The store sets ``version`` itself (= events applied, which is also what makes every event
    # an UPDATE even when no other column changes); SQLAlchemy still checks the old value.
    __mapper_args__ = {"version_id_col": version, "version_id_generator": False}


class FillRow(Base):
    """One execution, as the broker reported it. Immutable; ``broker_fill_id`` makes it once-only."""

    __tablename__ = "fills"
    __table_args__ = (
        sa.Index("ix_fills_session_ts_ns", "session", "ts_ns"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    broker_fill_id: Mapped[str] = mapped_column(unique=True)
    client_order_id: Mapped[str | None] = mapped_column(index=True)
    session: Mapped[str]
    symbol: Mapped[str]
    side: Mapped[str]
    quantity: Mapped[Decimal]
    price: Mapped[Decimal]
    ts_ns: Mapped[int]  # when the broker says it happened
    recorded_ns: Mapped[int]  # when we booked it


class PositionRow(Base):
    """The net position of one session in one contract. ``quantity`` is signed (short < 0)."""

    __tablename__ = "positions"
    __table_args__ = (sa.UniqueConstraint("session", "symbol"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    session: Mapped[str] = mapped_column(sa.ForeignKey("sessions.name", ondelete=_CASCADE))
    symbol: Mapped[str]
    quantity: Mapped[Decimal]
    average_price: Mapped[Decimal | None]
    updated_ns: Mapped[int]
    version: Mapped[int] = mapped_column(sa.Integer())

    __mapper_args__ = {"version_id_col": version}


class EventRow(Base):
    """The append-only event store. (aggregate, aggregate_version) is unique: two writers can never
    both append the same next event, which makes it a second optimistic lock."""

    __tablename__ = "events"
    __table_args__ = (
        sa.UniqueConstraint("aggregate", "aggregate_version"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    aggregate: Mapped[str]  # "order:<cid>", "session:<name>", "position:<session>:<symbol>"
    aggregate_version: Mapped[int]
    kind: Mapped[str]
    data: Mapped[dict[str, Any]] = mapped_column(sa.JSON())
    ts_ns: Mapped[int]


class StrategyStateRow(Base):
    """The latest snapshot of a session's strategy: its state and its outbox of instructions that
    are decided but not yet acknowledged by the account service."""

    __tablename__ = "strategy_state"

    session: Mapped[str] = mapped_column(sa.ForeignKey("sessions.name", ondelete=_CASCADE), primary_key=True)
    state: Mapped[dict[str, Any]]
    outbox: Mapped[list[Any]]
    updated_ns: Mapped[int]
    version: Mapped[int] = mapped_column(sa.Integer())

    __mapper_args__ = {"version_id_col": version}


class RollRow(Base):
    """A contract roll, from the moment it starts until it is done (``phase`` is a ``RollPhase``)."""

    __tablename__ = "rolls"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    session: Mapped[str] = mapped_column(sa.ForeignKey("sessions.name", ondelete=_CASCADE), index=True)
    from_contract: Mapped[str]
    to_contract: Mapped[str]
    phase: Mapped[str]
    started_ns: Mapped[int]
    updated_ns: Mapped[int]
    version: Mapped[int] = mapped_column(sa.Integer())

    __mapper_args__ = {"version_id_col": version}


class JobRow(Base):
    """The durable work queue. A job is claimed by one worker until ``claimed_until_ns``."""

    __tablename__ = "jobs"
    __table_args__ = (
        sa.Index("ix_jobs_status_run_after_ns", "status", "run_after_ns"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    kind: Mapped[str]
    payload: Mapped[dict[str, Any]]
    status: Mapped[str]
    attempts: Mapped[int] = mapped_column(sa.Integer())
    max_attempts: Mapped[int] = mapped_column(sa.Integer())
    run_after_ns: Mapped[int]
    claimed_by: Mapped[str | None]
    claimed_until_ns: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(sa.Text())
    result: Mapped[dict[str, Any] | None]
    created_ns: Mapped[int]
    updated_ns: Mapped[int]
    version: Mapped[int] = mapped_column(sa.Integer())

    __mapper_args__ = {"version_id_col": version}


class LeaseRow(Base):
    """A named lease. ``epoch`` grows whenever the owner changes: the fencing token."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(primary_key=True)
    owner: Mapped[str | None]
    epoch: Mapped[int]
    expires_ns: Mapped[int]
    version: Mapped[int] = mapped_column(sa.Integer())

    __mapper_args__ = {"version_id_col": version}


class TokenRow(Base):
    """A broker auth token, encrypted by its owner before it gets here; plaintext never does."""

    __tablename__ = "tokens"

    account: Mapped[str] = mapped_column(primary_key=True)
    kind: Mapped[str]
    ciphertext: Mapped[bytes]
    expires_ns: Mapped[int | None]
    updated_ns: Mapped[int]
    version: Mapped[int] = mapped_column(sa.Integer())

    __mapper_args__ = {"version_id_col": version}
