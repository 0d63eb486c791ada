"""Initial schema: every table of DESIGN §4.

Written by hand against ``schema/models.py`` and checked by
``tests/integration/test_store_migrations.py`` (autogenerate's comparison must find no difference
on SQLite nor on PostgreSQL). The column types are spelled out here rather than imported from the
models, so this revision keeps meaning what it meant when later revisions change the models.

Revision ID: 0001
Revises:
Create Date: 2025-11-22
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQLITE = "sqlite"


def _money() -> sa.types.TypeEngine:
    """Exact amounts: NUMERIC(28, 10) on PostgreSQL, text on SQLite (see schema/columns.py)."""
    return sa.Numeric(28, 10).with_variant(sa.Text(), SQLITE)


def _id() -> sa.Column:
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), SQLITE), primary_key=True, autoincrement=True)


def _ns(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.BigInteger(), nullable=nullable)


def _str(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.String(), nullable=nullable)


def _version() -> sa.Column:
    return sa.Column("version", sa.Integer(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "broker_accounts",
        _id(),
        _str("name"),
        _str("broker"),
        sa.Column("config", sa.JSON(), nullable=False),
        _version(),
        sa.PrimaryKeyConstraint("id", name="pk_broker_accounts"),
        sa.UniqueConstraint("name", name="uq_broker_accounts_name"),
    )
    op.create_table(
        "sessions",
        _id(),
        _str("name"),
        _str("strategy"),
        sa.Column("params", sa.JSON(), nullable=False),
        _str("symbol"),
        _str("contract"),
        _str("interval"),
        _str("account"),
        _str("data_source"),
        _str("state"),
        _str("state_reason", nullable=True),
        _str("heat_state"),
        _str("roll_state"),
        _str("lease_owner", nullable=True),
        sa.Column("lease_epoch", sa.BigInteger(), nullable=False),
        _str("fill_cursor", nullable=True),
        _ns("created_ns"),
        _ns("updated_ns"),
        _version(),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
        sa.UniqueConstraint("name", name="uq_sessions_name"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "orders",
        _id(),
        _str("client_order_id"),
        _str("session"),
        sa.Column("signal", sa.BigInteger(), nullable=False),
        _str("broker_order_id", nullable=True),
        _str("symbol"),
        _str("side"),
        _str("order_type"),
        sa.Column("quantity", _money(), nullable=False),
        sa.Column("limit_price", _money(), nullable=True),
        sa.Column("stop_price", _money(), nullable=True),
        _str("time_in_force"),
        _str("status"),
        _str("previous_status", nullable=True),
        sa.Column("filled_quantity", _money(), nullable=False),
        sa.Column("average_price", _money(), nullable=True),
        _str("reason", nullable=True),
        _str("bracket_group", nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        _ns("created_ns"),
        _ns("updated_ns"),
        _version(),
        sa.PrimaryKeyConstraint("id", name="pk_orders"),
        sa.UniqueConstraint("client_order_id", name="uq_orders_client_order_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_orders_session_status", "orders", ["session", "status"])
    op.create_index("ix_orders_broker_order_id", "orders", ["broker_order_id"])
    op.create_table(
        "fills",
        _id(),
        _str("broker_fill_id"),
        _str("client_order_id", nullable=True),
        _str("session"),
        _str("symbol"),
        _str("side"),
        sa.Column("quantity", _money(), nullable=False),
        sa.Column("price", _money(), nullable=False),
        _ns("ts_ns"),
        _ns("recorded_ns"),
        sa.PrimaryKeyConstraint("id", name="pk_fills"),
        sa.UniqueConstraint("broker_fill_id", name="uq_fills_broker_fill_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_fills_session_ts_ns", "fills", ["session", "ts_ns"])
    op.create_index("ix_fills_client_order_id", "fills", ["client_order_id"])
    op.create_table(
        "positions",
        _id(),
        _str("session"),
        _str("symbol"),
        sa.Column("quantity", _money(), nullable=False),
        sa.Column("average_price", _money(), nullable=True),
        _ns("updated_ns"),
        _version(),
        sa.PrimaryKeyConstraint("id", name="pk_positions"),
        sa.UniqueConstraint("session", "symbol", name="uq_positions_session_symbol"),
        sa.ForeignKeyConstraint(
            ["session"], ["sessions.name"], name="fk_positions_session_sessions", ondelete="CASCADE"
        ),
    )
    op.create_table(
        "events",
        _id(),
        _str("aggregate"),
        sa.Column("aggregate_version", sa.BigInteger(), nullable=False),
        _str("kind"),
        sa.Column("data", sa.JSON(), nullable=False),
        _ns("ts_ns"),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.UniqueConstraint("aggregate", "aggregate_version", name="uq_events_aggregate_aggregate_version"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "strategy_state",
        _str("session"),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("outbox", sa.JSON(), nullable=False),
        _ns("updated_ns"),
        _version(),
        sa.PrimaryKeyConstraint("session", name="pk_strategy_state"),
        sa.ForeignKeyConstraint(
            ["session"], ["sessions.name"], name="fk_strategy_state_session_sessions", ondelete="CASCADE"
        ),
    )
    op.create_table(
        "rolls",
        _id(),
        _str("session"),
        _str("from_contract"),
        _str("to_contract"),
        _str("phase"),
        _ns("started_ns"),
        _ns("updated_ns"),
        _version(),
        sa.PrimaryKeyConstraint("id", name="pk_rolls"),
        sa.ForeignKeyConstraint(["session"], ["sessions.name"], name="fk_rolls_session_sessions", ondelete="CASCADE"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_rolls_session", "rolls", ["session"])
    op.create_table(
        "jobs",
        _id(),
        _str("kind"),
        sa.Column("payload", sa.JSON(), nullable=False),
        _str("status"),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        _ns("run_after_ns"),
        _str("claimed_by", nullable=True),
        _ns("claimed_until_ns", nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        _ns("created_ns"),
        _ns("updated_ns"),
        _version(),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_jobs_status_run_after_ns", "jobs", ["status", "run_after_ns"])
    op.create_table(
        "leases",
        _str("name"),
        _str("owner", nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        _ns("expires_ns"),
        _version(),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )
    op.create_table(
        "tokens",
        _str("account"),
        _str("kind"),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        _ns("expires_ns", nullable=True),
        _ns("updated_ns"),
        _version(),
        sa.PrimaryKeyConstraint("account", name="pk_tokens"),
    )


def downgrade() -> None:
    for index, table in (
        ("ix_jobs_status_run_after_ns", "jobs"),
        ("ix_rolls_session", "rolls"),
        ("ix_fills_client_order_id", "fills"),
        ("ix_fills_session_ts_ns", "fills"),
        ("ix_orders_broker_order_id", "orders"),
        ("ix_orders_session_status", "orders"),
    ):
        op.drop_index(index, table_name=table)
    for table in (
        "tokens",
        "leases",
        "jobs",
        "rolls",
        "strategy_state",
        "events",
        "positions",
        "fills",
        "orders",
        "sessions",
        "broker_accounts",
    ):
        op.drop_table(table)
