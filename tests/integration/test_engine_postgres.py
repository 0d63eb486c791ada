"""The demo tree on PostgreSQL instead of SQLite: same processes, same code, production database."""
from __future__ import annotations

import pytest
from engine_tree import EngineTree, wait_until

from schema.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def test_demo_sessions_trade_on_postgresql(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> None:
    tree = EngineTree(tmp_path_factory.mktemp("pgtree"), db_url=pg_url)
    store: Store | None = None
    try:
        tree.start(expect={"session-es-sma:es-sma-strategy", "session-6e-sma:6e-sma-strategy"})
        store = Store.from_url(pg_url)
        wait_until(lambda: all(store.fills(s) for s in ("es-sma", "6e-sma")), timeout=90,
                   what="fills on PostgreSQL for both demo sessions")
        assert store.verify_orders() == []
        assert not (tree.state / "tradebus.db").exists(), "the tree wrote to SQLite instead"
    except BaseException:
        print(tree.diagnostics())
        raise
    finally:
        tree.stop()
        if store is not None:
            store.close()
