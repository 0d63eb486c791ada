"""Alembic environment for tradebus.

Run through ``schema.db.migrate``, which hands over an open connection in
``config.attributes["connection"]`` (so SQLite gets its pragmas and the migration lock is held).
Without one (``alembic`` run by hand with ``-x url=...`` or ``sqlalchemy.url``), it connects itself.
"""
from __future__ import annotations

from alembic import context

from schema.db import make_engine
from schema.models import Base

target_metadata = Base.metadata


def _configure(connection) -> None:  # noqa: ANN001 - alembic hands us a Connection
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: pass -x url=... or use schema.db.migrate(url)")
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported; use schema.db.migrate(url)")
run_migrations_online()
