"""A database outage in the middle of a run: every process waits it out, none restarts.

The demo tree runs on PostgreSQL reached through a small TCP proxy owned by the test. Cutting the
proxy (every open connection reset, new ones refused) is a real outage as the engine sees it —
connections die mid-use — without touching the PostgreSQL server other tests share. After the
database is back the sessions trade on, in ``trading``, with a consistent ledger.
"""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from engine_tree import EngineTree, wait_until
from sqlalchemy.engine import make_url

from schema.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

OUTAGE_S = 8.0  # longer than the account's lease (6 s): the lease must survive it too
SESSION_PROGRAMS = {f"session-{s}:{s}-{role}" for s in ("es-sma", "6e-sma")
                    for role in ("marketdata", "account", "strategy")}


class CuttableProxy:
    """Forwards a local TCP port to ``target``; ``cut()`` resets every connection and refuses new
    ones until ``restore()``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            with self.lock:
                self.sockets |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                _reset(s)
            with self.lock:
                self.sockets -= {source, sink}

    def cut(self) -> None:
        self.open.clear()
        with self.lock:
            doomed = list(self.sockets)
        for s in doomed:
            _reset(s)

    def restore(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


def _reset(s: socket.socket) -> None:
    # Linger 0 makes the close an RST. The shutdown comes first: closing a socket another thread
    # is blocked reading does not wake that thread, and the connection would stay half-alive.
    for step in (lambda: s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"),
                 lambda: s.shutdown(socket.SHUT_RDWR), s.close):
        try:
            step()
        except OSError:
            pass


@pytest.fixture
def proxied_pg_url(pg_url: str) -> Iterator[tuple[str, CuttableProxy]]:
    url = make_url(pg_url)
    proxy = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    try:
        yield url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False), proxy
    finally:
        proxy.close()


def test_a_database_outage_is_waited_out_without_a_single_restart(
        tmp_path_factory: pytest.TempPathFactory, proxied_pg_url: tuple[str, CuttableProxy], pg_url: str) -> None:
    db_url, proxy = proxied_pg_url
    tree = EngineTree(tmp_path_factory.mktemp("outage"), db_url=db_url)
    store = Store.from_url(pg_url)  # the test's own view, not through the proxy
    try:
        tree.start(expect=SESSION_PROGRAMS)
        wait_until(lambda: all(store.fills(s) for s in ("es-sma", "6e-sma")), timeout=90,
                   what="both demo sessions to trade")
        before = tree.pids()

        proxy.cut()
        cut_at = time.monotonic()
        wait_until(lambda: "database_unavailable" in tree.log("es-sma-strategy")
                   or "database_unavailable" in tree.log("es-sma-account"), timeout=OUTAGE_S,
                   what="the session to notice the outage")
        while time.monotonic() - cut_at < OUTAGE_S:
            assert tree.pids() == before, "a process exited during the outage"
            time.sleep(0.5)  # sampling the process table for the outage's duration, not a readiness wait
        proxy.restore()

        fills_at_restore = {s: len(store.fills(s)) for s in ("es-sma", "6e-sma")}
        wait_until(lambda: all(len(store.fills(s)) > fills_at_restore[s] for s in ("es-sma", "6e-sma")),
                   timeout=90, what="both sessions to trade again after the outage")
        assert tree.pids() == before, "a process was restarted because of the outage"
        assert {str(store.get_session(s).state) for s in ("es-sma", "6e-sma")} == {"trading"}
        assert store.verify_orders() == []
        assert "database_back" in tree.log("es-sma-strategy") + tree.log("es-sma-account")
    except BaseException:
        print(tree.diagnostics())
        raise
    finally:
        tree.stop()
        store.close()
