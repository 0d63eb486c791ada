"""``tradebus bench tick-to-trade`` end to end with a tiny count: the real tree, the real CLI.

No speed assertions (the figures depend on the machine and what else runs on it): the JSON document
has its shape, every hop was measured for (almost) every order, percentiles are ordered, and the
run left no root folder behind.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
TRADEBUS = Path(sys.executable).parent / "tradebus"
HOPS = {"venue_to_marketdata", "marketdata_to_strategy", "strategy_to_account", "account_to_venue", "venue",
        "venue_to_account"}
STATS = ("p50_us", "p90_us", "p99_us", "max_us")


def _roots() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("tradebus-ttt-sqlite-*")}


def _check_stats(stats: dict, n: int) -> None:
    assert stats["n"] == n
    values = [stats[k] for k in STATS]
    assert values == sorted(values), stats


def test_tick_to_trade_50_orders_on_sqlite() -> None:
    before = _roots()
    # When the bench runs 50 orders on SQLite through the CLI
    proc = subprocess.run([str(TRADEBUS), "bench", "tick-to-trade", "--orders", "50", "--db", "sqlite"],
                          cwd=REPO, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    # Then: one result, for SQLite, with every hop measured for the same orders
    assert doc["bench"] == "tick-to-trade" and doc["orders"] == 50 and doc["strategy"] == "every_bar"
    assert doc["machine"]["cpu_count"] >= 1 and doc["machine"]["python"]
    assert set(doc["results"]) == {"sqlite"} and doc["targets"] == {}
    result = doc["results"]["sqlite"]
    assert result["db"] == "sqlite" and result["root"] is None
    n = result["orders_measured"]
    assert n >= 40
    assert result["orders_seen"] == result["warmup_orders"] + n + result["incomplete_orders"]
    assert set(result["hops"]) == HOPS and set(result["mean_share_pct"]) == HOPS
    _check_stats(result["total"], n)
    for stats in [*result["hops"].values(), *result["detail"].values()]:
        _check_stats(stats, n)
    assert result["total"]["p50_us"] > 0
    assert result["strategy_lag_events"] == 0
    # And the run's root folder is gone
    assert _roots() <= before
