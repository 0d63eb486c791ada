"""``tradebus bench replay`` end to end with tiny sizes: the real CLI, the real pipeline.

No speed assertions (the figures depend on the machine and what else runs on it): the JSON document
has its shape, every figure is positive, every engine traded the same crossings, and the pipeline's
trades are the in-process backtest's.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("backtrader", reason="the bench extra (backtrader) is not installed")
pytest.importorskip("backtesting", reason="the bench extra (backtesting.py) is not installed")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
TRADEBUS = Path(sys.executable).parent / "tradebus"
ENGINES = ("core", "core_with_fills", "backtesting_py", "backtrader", "backtrader_pipeline_bars", "pipeline")


def test_bench_replay_with_tiny_sizes() -> None:
    # When the bench runs on 1,500 bars, 150 of them through the process pipeline
    proc = subprocess.run([str(TRADEBUS), "bench", "replay", "--bars", "1500", "--pipeline-bars", "150",
                           "--repeats", "2"], cwd=REPO, capture_output=True, text=True, timeout=230)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)

    # Then every engine has its figures, measured over the bar counts it reports
    assert doc["bench"] == "replay"
    assert doc["data"]["bars"] == 1500 and doc["data"]["pipeline_bars"] == 150
    results = doc["results"]
    assert set(results) == set(ENGINES)
    for name in ENGINES:
        figures = results[name]
        assert figures["bars_per_s"] > 0 and figures["seconds"] > 0, name
    for name in ("core", "core_with_fills", "backtesting_py", "backtrader"):
        assert results[name]["bars"] == 1500 and len(results[name]["runs_s"]) == 2, name
    assert results["pipeline"]["bars"] == 150 and results["backtrader_pipeline_bars"]["bars"] == 150

    # ... every engine found the same crossings and made the same points
    full = ("core_with_fills", "backtesting_py", "backtrader")
    assert len({results[n]["trades"] for n in full}) == 1, doc["trade_counts"]
    assert len({results[n]["net_points"] for n in full}) == 1, {n: results[n]["net_points"] for n in full}
    assert results["core"]["orders"] == results["core_with_fills"]["orders"] > 0
    assert results["pipeline"]["trades"] == results["backtrader_pipeline_bars"]["trades"]
    assert results["pipeline"]["trades_match_core"] is True

    # ... and the ratios and targets are there, each target saying whether it was met
    assert all(doc["ratios"][k] > 0 for k in ("core_vs_backtesting_py", "pipeline_vs_backtrader"))
    assert set(doc["targets"]) == {"core_vs_backtesting_py", "core_bars_per_s", "pipeline_vs_backtrader"}
    assert all(isinstance(t["met"], bool) for t in doc["targets"].values())
    assert doc["machine"]["versions"]["backtrader"] and doc["machine"]["cpu_count"] >= 1
