"""The process shell every tradebus service runs in.

It owns what is the same for all of them: structured logging, orderly shutdown on SIGTERM/SIGINT,
finding the installation, and reaching remote dependencies (database, bus) with capped backoff
instead of crash-looping. A local dependency that is missing (state folder, config) is fatal at
once with a clear message; a remote one that is unreachable is waited for, reporting
``connecting``, because a database outage must never turn into a supervisord restart storm.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import TextIO, TypeVar

from bus.client import BusClient
from bus.endpoints import Endpoints
from bus.logs import configure_logging, log
from services.config import Config, ConfigError, load_config
from services.retry import Backoff

T = TypeVar("T")

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_CONFIG = 78
CONNECT_BACKOFF = Backoff()  # EX_CONFIG: supervisord shows it; sessionguard treats it like any failure
OUTAGE_BACKOFF = Backoff(base_s=0.2, cap_s=5.0)
OUTAGE_LOG_EVERY_S = 10.0


class Stopping(Exception):
    """Raised out of a wait when shutdown was requested."""


class ProcessShell:
    def __init__(self, name: str, config: Config) -> None:
        self.name = name
        self.config = config
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{name}"
        self.log = logging.getLogger(name)
        self._stop = threading.Event()
        self.outage = OutageLog(self.log)

    # ------------------------------------------------------------------ shutdown

    def install_signal_handlers(self, *, interrupt: bool = False) -> None:
        """SIGTERM/SIGINT request an orderly stop. ``interrupt`` also raises ``Stopping`` at once,
        for a process that spends its life blocked in a read (the event listener)."""

        def request_stop(signum: int, _frame: object) -> None:
            log(self.log, "stop_requested", signal=signal.Signals(signum).name)
            self._stop.set()
            if interrupt:
                raise Stopping()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        self._stop.set()

    def pause(self, seconds: float) -> None:
        """Wait out a backoff delay or a timer, waking at once on shutdown."""
        if self._stop.wait(seconds):
            raise Stopping()

    # ------------------------------------------------------------------ dependencies

    def endpoints(self) -> Endpoints:
        return Endpoints.for_state_dir(self.config.paths.state)

    def bus(self) -> BusClient:
        return BusClient(self.endpoints(), source=self.name)

    def store(self):  # -> schema.store.Store; imported lazily: busd and venue-sim don't need SQL
        from schema.store import Store

        return self.until_connected("database", lambda: _checked_store(Store, self.config.db_url))

    def broker(self, store, account: str):  # -> brokers.base.BrokerFacade
        """The facade of broker ``account``; its tokens (if the broker needs any) come from the tokens
        service, never from a refresh of this process's own."""
        from services.tokens.client import broker_facade

        return broker_facade(store, account, endpoints=self.endpoints(), state_dir=self.config.paths.state,
                             source=self.name)

    def through_outage(self, doing: str, operation: Callable[[], T]) -> T:
        """Run a database operation, waiting out an outage (``StoreUnavailable``) with capped backoff
        instead of failing: for work that must not be skipped (a strategy's state, its outbox).
        Nothing is half-done by a failed attempt: each store call is one transaction."""
        from schema.errors import StoreUnavailable

        attempt = 0
        while True:
            try:
                result = operation()
            except StoreUnavailable as exc:
                attempt += 1
                self.outage.down(exc, doing)
                self.pause(OUTAGE_BACKOFF.delay(attempt) or OUTAGE_BACKOFF.cap_s)
                continue
            self.outage.up()
            return result

    def until_connected(self, what: str, connect: Callable[[], T], backoff: Backoff = CONNECT_BACKOFF) -> T:
        """Call ``connect`` until it succeeds, logging ``connecting`` with capped backoff."""
        attempt = 0
        while True:
            attempt += 1
            try:
                result = connect()
            except Stopping:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure to reach it means: try again later
                delay = backoff.delay(attempt)
                log(self.log, "connecting", level=logging.WARNING, dependency=what, attempt=attempt,
                    error=type(exc).__name__, detail=_safe(str(exc)), retry_in_s=round(delay or 0, 3))
                if delay is None:
                    raise
                self.pause(delay)
                continue
            if attempt > 1:
                log(self.log, "connected", dependency=what, attempts=attempt)
            return result


class OutageLog:
    """Says once that the database went away, at most every ``every_s`` while it stays away, and
    once when it is back — a loop that meets the outage on every turn must not flood the log."""

    def __init__(self, logger: logging.Logger, every_s: float = OUTAGE_LOG_EVERY_S) -> None:
        self.logger = logger
        self.every_s = every_s
        self.down_since: float | None = None
        self.said_at = 0.0

    def down(self, exc: BaseException, doing: str) -> None:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
        if now - self.said_at >= self.every_s:
            self.said_at = now
            log(self.logger, "database_unavailable", level=logging.ERROR, doing=doing,
                down_for_s=round(now - self.down_since, 1), error=_safe(str(exc)))

    def up(self) -> None:
        if self.down_since is not None:
            log(self.logger, "database_back", down_for_s=round(time.monotonic() - self.down_since, 1))
            self.down_since = None
            self.said_at = 0.0


def _checked_store(store_cls, url: str):
    store = store_cls.from_url(url)
    store.list_sessions()  # proves the database answers and is migrated
    return store


def owner_is_dead(owner: str) -> bool:
    """True only with proof: ``owner`` (``host:pid:name``, see ``ProcessShell.owner``) names a
    process on this host that no longer exists. Another host, or a pid that is alive (even a
    recycled one), is not proof."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _safe(text: str) -> str:
    """Exception text from drivers can embed a DSN; keep only the first line and no password."""
    first = text.splitlines()[0] if text else ""
    if "://" in first and "@" in first:
        return "<connection error; URL withheld>"
    return first[:300]


def run_process(name: str, body: Callable[[ProcessShell], None], *, log_stream: TextIO | None = None,
                interrupt_on_stop: bool = False) -> int:
    """Run a service body inside the shell; returns the process exit code.

    Exit 0 only after an orderly shutdown; any unexpected exception is logged and gives a non-zero
    exit so supervisord (and sessionguard) see a failure.
    """
    configure_logging(name, stream=log_stream)
    logger = logging.getLogger(name)
    try:
        config = load_config()
        if not config.paths.state.is_dir():
            raise ConfigError(f"state folder {config.paths.state} is missing: run `tradebus init` first")
    except ConfigError as exc:
        log(logger, "config_error", level=logging.CRITICAL, error=str(exc))
        return EXIT_CONFIG
    shell = ProcessShell(name, config)
    shell.install_signal_handlers(interrupt=interrupt_on_stop)
    log(logger, "starting", pid=os.getpid())
    try:
        body(shell)
    except Stopping:
        pass
    except Exception as exc:  # noqa: BLE001 - last line of defence: log it, exit non-zero
        logger.exception("fatal error")
        log(logger, "fatal", level=logging.CRITICAL, error=type(exc).__name__, detail=_safe(str(exc)))
        return EXIT_FATAL
    log(logger, "stopped")
    return EXIT_OK
