"""Fixtures shared by every tier.

PostgreSQL: ``TRADEBUS_TEST_PG_URL`` names an admin URL (``postgresql+psycopg://user:pw@host/db``).
Each test that asks for ``db_url`` with the postgres parameter gets a database of its own, created
for it and dropped after. When ``TRADEBUS_REQUIRE_PG=1`` (CI), an unreachable server fails those
tests instead of skipping them.
"""
from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_URL_ENV = "TRADEBUS_TEST_PG_URL"
REQUIRE_PG_ENV = "TRADEBUS_REQUIRE_PG"


def _pg_unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_PG_ENV) == "1":
        pytest.fail(f"PostgreSQL is required ({REQUIRE_PG_ENV}=1) but {reason}")
    pytest.skip(f"PostgreSQL not available: {reason}")


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    url = os.environ.get(PG_URL_ENV)
    if not url:
        _pg_unavailable(f"{PG_URL_ENV} is not set")
    import sqlalchemy as sa

    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server means the same here
        _pg_unavailable(f"cannot connect to {engine.url.render_as_string(hide_password=True)}: {exc}")
    finally:
        engine.dispose()
    return url


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    import sqlalchemy as sa

    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    name = f"tradebus_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    url = sa.make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on SQLite (a file in tmp_path) and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tradebus.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
