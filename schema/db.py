"""Engines and migrations: how tradebus connects to its database, SQLite or PostgreSQL.

SQLite is shared by several processes (every service of every session), so each connection gets:
* WAL journal mode: readers never block the writer, and the writer never blocks readers;
* ``busy_timeout``: a writer waits for the lock instead of failing at once;
* ``synchronous=NORMAL``: durable across a process crash, the usual pairing with WAL;
* ``foreign_keys=ON``: SQLite checks them only when asked;
* our own ``BEGIN``: the ``sqlite3`` module's implicit transactions are turned off, so a transaction
  starts exactly when SQLAlchemy begins one. Write transactions start with ``BEGIN IMMEDIATE``
  (see ``write_engine``): they take the write lock before they read, so a read-then-write can
  never be refused half-way by another writer's commit (SQLite's BUSY_SNAPSHOT, which the busy
  timeout does not cover).

PostgreSQL goes through psycopg 3 with settings for a network that breaks mid-transaction: a connect
timeout and TCP keepalives (a dead link is noticed in seconds, not hours), and on the server side
``idle_in_transaction_session_timeout`` (a backend whose client vanished mid-transaction is ended,
releasing its row locks) and ``lock_timeout`` (a write waiting on such locks fails and is retried
instead of hanging). A connection that sat in the pool for over ``PING_AFTER_IDLE_S`` is pinged
before it is handed out, so a restarted server costs a retry, not a failed request. One used a
moment ago is not: SQLAlchemy's ``pool_pre_ping`` pinged before every transaction, a round trip as
dear as a statement, and on the order path, where connections are never idle, one in ten of the
strategy's busy samples was that ping. A server that restarts within that moment costs the one
request that meets the dead connection, reported as the database being unavailable, which every
service waits out. Passwords never reach logs or error text: use ``safe_url``.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

if TYPE_CHECKING:  # alembic is imported where it is used: running processes never migrate (11 MB each)
    from alembic.config import Config

log = logging.getLogger("tradebus.schema.db")

DB_FILENAME = "tradebus.db"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 5_000
SQLITE_SYNCHRONOUS = "NORMAL"
IMMEDIATE_OPTION = "tradebus_sqlite_immediate"
"""Execution option: begin this connection's transactions with ``BEGIN IMMEDIATE`` (SQLite only)."""
PG_DRIVER = "postgresql+psycopg"
PING_AFTER_IDLE_S = 1.0
"""A pooled PostgreSQL connection idle longer than this is pinged before it is handed out."""
_LAST_USED = "tradebus_last_used"
PG_MIGRATION_LOCK_KEY = 0x7472616465627573  # "tradebus": serialises concurrent ``migrate`` calls
PG_CONNECT_ARGS = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    # Our transactions last milliseconds; these only ever end orphans and unbounded waits.
    "options": "-c idle_in_transaction_session_timeout=10000 -c lock_timeout=5000",
}
DEFERRED_PG_OPTIONS = PG_CONNECT_ARGS["options"] + " -c synchronous_commit=off"
"""Connection options for transactions that need not wait for their WAL flush (``Store._tx``)."""


def safe_url(url: str | URL) -> str:
    """The URL as it may be logged: password masked."""
    return sa.make_url(url).render_as_string(hide_password=True)


def normalize_url(url: str | URL) -> URL:
    """The URL with PostgreSQL pointed at psycopg 3 whatever driver it named (or none)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.drivername != PG_DRIVER:
        parsed = parsed.set(drivername=PG_DRIVER)
    return parsed


def default_sqlite_url(state_dir: str | Path) -> str:
    """The database of a state folder: ``<state_dir>/tradebus.db``, as an absolute SQLite URL."""
    return f"sqlite:///{Path(state_dir).expanduser().resolve() / DB_FILENAME}"


def is_sqlite(engine_or_url: Engine | str | URL) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else sa.make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine for ``url`` with the connection settings described in the module docstring."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        connect_args = {
            "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
            "check_same_thread": False,  # the pool hands a connection to one thread at a time
            **kwargs.pop("connect_args", {}),
        }
        engine = sa.create_engine(parsed, connect_args=connect_args, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_on_connect)
        sa.event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    connect_args = {**PG_CONNECT_ARGS, **kwargs.pop("connect_args", {})}
    engine = sa.create_engine(parsed, connect_args=connect_args, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        sa.event.listen(engine, "checkout", _ping_if_idle(engine.dialect))
        sa.event.listen(engine, "connect", _mark_used)  # a connection just made needs no ping
        sa.event.listen(engine, "checkin", _mark_used)
    return engine


def _ping_if_idle(dialect: sa.Dialect) -> Callable[[Any, Any, Any], None]:
    def on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        used = record.info.get(_LAST_USED)
        if used is not None and time.monotonic() - used <= PING_AFTER_IDLE_S:
            return
        try:
            alive = dialect.do_ping(dbapi_connection)
        except Exception as exc:  # noqa: BLE001 - any failure means: not this connection
            raise sa.exc.DisconnectionError(f"ping failed: {type(exc).__name__}") from exc
        if not alive:
            raise sa.exc.DisconnectionError("ping failed")  # the pool retries with a fresh one

    return on_checkout


def _mark_used(_dbapi_connection: Any, record: Any) -> None:
    if record is not None:
        record.info[_LAST_USED] = time.monotonic()


def write_engine(engine: Engine) -> Engine:
    """``engine`` for write transactions: on SQLite they begin IMMEDIATE; elsewhere unchanged."""
    if is_sqlite(engine):
        return engine.execution_options(**{IMMEDIATE_OPTION: True})
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (_sqlite_on_begin)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA synchronous = {SQLITE_SYNCHRONOUS}")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: sa.Connection) -> None:
    immediate = connection.get_execution_options().get(IMMEDIATE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


# ---------------------------------------------------------------------------------------- migrations


def alembic_config() -> Config:
    """Alembic's configuration, built in code: no ``alembic.ini`` is needed on disk."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def migrate(url: str | URL, revision: str = "head") -> str | None:
    """Bring the database at ``url`` to ``revision`` (default: the newest). Returns the revision.

    Safe to call on every start: an up-to-date database is left alone. Concurrent callers are
    serialised (an advisory lock on PostgreSQL, the write lock on SQLite).
    """
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with write_engine(engine).begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK_KEY})
            before = MigrationContext.configure(connection).get_current_revision()
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            after = MigrationContext.configure(connection).get_current_revision()
        if after != before:
            log.info(
                "database migrated",
                extra={"action": "migrated", "fields": {"db": safe_url(url), "from": before, "to": after}},
            )
        return after
    finally:
        engine.dispose()


def current_revision(url: str | URL) -> str | None:
    """The revision the database at ``url`` is at (``None``: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
