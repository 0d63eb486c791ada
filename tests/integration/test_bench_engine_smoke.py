"""The engine benchmarks (``tradebus bench orders|recovery|memory``) run end to end with tiny
parameters and print well-formed JSON.

No speed or memory assertions: the figures depend on the machine and on whatever else runs on it.
What is checked is the shape of each document and that the run did what it says (every order
answered, every kill recovered, every process sampled). ``orders`` needs PostgreSQL: skipped when
``TRADEBUS_TEST_PG_URL`` is unset, failed instead when ``TRADEBUS_REQUIRE_PG=1`` (the
``pg_admin_url`` fixture decides).
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from services.bench import bench

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def _invoke(*args: str) -> dict:
    result = CliRunner().invoke(bench, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _check_targets(doc: dict) -> None:
    machine = doc["machine"]
    assert machine["cpu_count"] >= 1 and machine["python"] and machine["platform"]
    assert doc["targets"]
    for target in doc["targets"].values():
        assert {"target", "measured", "met"} <= set(target)
        assert isinstance(target["met"], bool)


@pytest.mark.postgres
def test_bench_orders(pg_admin_url: str) -> None:
    doc = _invoke("orders", "--db-url", pg_admin_url, "--count", "50", "--sessions", "2")
    assert doc["bench"] == "orders" and doc["count"] == 50
    _check_targets(doc)
    results = doc["results"]
    for raw in ("pg_raw_before", "pg_raw_after"):
        assert results[raw]["rows"] == 50 and results[raw]["inserts_per_s"] > 0
    assert results["pg_raw_parallel"]["connections"] == 2
    assert results["pg_order_floor"]["orders"] == 50 and results["pg_order_floor"]["orders_per_s"] > 0
    single, parallel = results["store_path_single"], results["store_path_parallel"]
    assert single["orders"] == 50 and parallel["orders"] == 100
    # Every order went through write-ahead, sent and accepted: a fresh signal each time.
    assert single["statuses_after_submit"] == {"accepted": 50}
    assert parallel["statuses_after_submit"] == {"accepted": 100}
    # The write-ahead writes (order and event in one statement) and the acknowledgement writes.
    assert single["sql_per_submit"]["insert+insert"] == 1 and single["sql_per_submit"]["update+insert"] == 1
    for key in ("account_processes_single", "account_processes_parallel"):
        engine = results[key]
        assert engine["orders_per_s"] > 0
        assert set(engine["reply_statuses"]) <= {"accepted", "filled", "submitted", "partially_filled"}, engine
    assert results["account_processes_parallel"]["sessions"] == 2
    assert all(v is None or v > 0 for v in doc["ratios"].values())


def test_bench_recovery() -> None:
    doc = _invoke("recovery", "--kills", "1", "--kinds", "strategy")
    assert doc["bench"] == "recovery" and doc["kinds"] == ["strategy"] and doc["error"] is None
    _check_targets(doc)
    strategy = doc["results"]["strategy"]
    assert strategy["kills"] == strategy["recovered"] == 1
    assert 0 < strategy["p50_s"] <= strategy["max_s"] < 60
    kill = strategy["kills_detail"][0]
    assert kill["victim"].endswith("-strategy")
    assert [step.split("@")[0] for step in kill["timeline_s"]][-3:] == ["start", "reconcile", "reconciled"]


def test_bench_memory() -> None:
    doc = _invoke("memory", "--duration", "5", "--sample-every", "2")
    assert doc["bench"] == "memory" and doc["error"] is None
    _check_targets(doc)
    processes = doc["results"]["processes"]
    assert {"busd", "sessionguard"} <= set(processes)
    assert any(name.endswith("-account") for name in processes)
    for proc in processes.values():
        assert proc["rss_kib_first"] > 0 and proc["rss_kib_last"] > 0
        assert proc["rss_kib_max"] >= max(proc["rss_kib_first"], proc["rss_kib_last"])
