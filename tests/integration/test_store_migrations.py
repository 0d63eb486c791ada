"""Migrations and engines, on SQLite and PostgreSQL: the migrated schema is exactly the models'."""
from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from schema.db import (
    alembic_config,
    current_revision,
    default_sqlite_url,
    head_revision,
    make_engine,
    migrate,
    normalize_url,
    safe_url,
)
from schema.models import Base


def _differences(url: str, metadata: sa.MetaData = Base.metadata) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, metadata)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_a_fresh_database_migrates_to_exactly_the_models(db_url: str) -> None:
    assert current_revision(db_url) is None
    assert migrate(db_url) == head_revision() == "0001"
    assert current_revision(db_url) == "0001"
    assert _tables(db_url) == set(Base.metadata.tables)
    assert _differences(db_url) == []


def test_the_comparison_would_notice_a_difference(db_url: str) -> None:
    # A negative control: the check above is only worth something if it can fail.
    migrate(db_url)
    changed = sa.MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["orders"].append_column(sa.Column("extra", sa.Integer(), nullable=True))
    differences = _differences(db_url, changed)
    assert [d[0] for d in differences] == ["add_column"]


def test_migrate_is_idempotent_and_downgrades_and_upgrades_again(db_url: str) -> None:
    migrate(db_url)
    assert migrate(db_url) == "0001"  # a second start changes nothing
    engine = make_engine(db_url)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "base")
    finally:
        engine.dispose()
    assert _tables(db_url) == set()
    assert current_revision(db_url) is None
    migrate(db_url)
    assert _differences(db_url) == []


def test_sqlite_connections_are_set_up_for_several_processes(tmp_path: Path) -> None:
    url = default_sqlite_url(tmp_path)
    assert url == f"sqlite:///{tmp_path.resolve() / 'tradebus.db'}"
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            pragma = lambda name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
            assert pragma("journal_mode") == "wal"
            assert pragma("foreign_keys") == 1
            assert pragma("busy_timeout") == 5000
            assert pragma("synchronous") == 1  # NORMAL
    finally:
        engine.dispose()


def test_urls_never_show_the_password() -> None:
    url = "postgresql://trader:s3cret@db.example:5432/tradebus"
    assert "s3cret" not in safe_url(url)
    assert normalize_url(url).drivername == "postgresql+psycopg"
    assert "s3cret" not in repr(make_engine(url))


def test_a_failed_connection_does_not_leak_the_password() -> None:
    url = "postgresql://trader:s3cret@127.0.0.1:1/tradebus"  # nothing listens on port 1
    with pytest.raises(Exception) as raised:
        current_revision(url)
    assert "s3cret" not in str(raised.value)
