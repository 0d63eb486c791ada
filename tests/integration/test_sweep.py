"""A parameter sweep on a tiny grid: one ``backtest`` job per runnable combination, run by two real
jobs-worker processes, ranked, drawn. Plus the grid syntax (pure, fast)."""
from __future__ import annotations

import csv
import json
from dataclasses import replace
from decimal import Decimal as D
from pathlib import Path

import pytest
from rich.console import Console

from schema.store import Store
from services.backtest.bench_replay import write_random_walk_csv
from services.backtest.core_run import read_bars, run_core
from services.backtest.sweep import (
    HEATMAP_PNG,
    SWEEP_CSV,
    SWEEP_JSON,
    CsvSweep,
    SweepSpecError,
    parse_range,
    run_sweep,
)
from services.jobs.core import BACKTEST, BacktestRequest, PermanentJobError
from services.jobs.main import backtest
from services.strategy.core import ParamError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- grid syntax


def test_ranges_are_inclusive_with_an_optional_step() -> None:
    assert parse_range("5..8") == [5, 6, 7, 8]
    assert parse_range("20..60:5") == [20, 25, 30, 35, 40, 45, 50, 55, 60]
    assert parse_range("20..58:5") == [20, 25, 30, 35, 40, 45, 50, 55]
    assert parse_range("0.5..1.5:0.25") == [D("0.5"), D("0.75"), D("1.00"), D("1.25"), D("1.50")]
    assert parse_range("3..3") == [3]


@pytest.mark.parametrize("text, why", [
    ("5-20", "start..end"), ("5..", "start..end"), ("..5", "start..end"), ("a..5", "not a number"),
    ("5..20:0", "step must be positive"), ("5..20:-1", "step must be positive"), ("20..5", "below start"),
    ("1..100000000", "more than"), ("1..5:x", "not a number"),
])
def test_bad_ranges_say_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(SweepSpecError, match=why):
        parse_range(text)


# ---------------------------------------------------------------------------- the backtest job


def test_a_backtest_job_payload_round_trips_and_a_bad_one_is_permanent(tmp_path: Path) -> None:
    request = BacktestRequest(csv="/x.csv", symbol="ES", strategy="sma_cross", params={"fast": 2, "slow": 3},
                              interval="1m", slippage_ticks=1, commission_per_contract=D("2.5"), out_dir=None)
    assert BacktestRequest.from_payload(json.loads(json.dumps(request.to_payload()))) == request
    for payload in ({}, {"csv": "x", "symbol": "ES", "strategy": "s", "params": [1]},
                    {"csv": "x", "symbol": "ES", "strategy": "s", "params": {}, "slippage_ticks": "many"}):
        with pytest.raises(PermanentJobError, match="bad backtest payload"):
            BacktestRequest.from_payload(payload)


def test_the_backtest_handler_runs_the_core_and_refuses_what_cannot_run(tmp_path: Path) -> None:
    data = write_random_walk_csv(tmp_path / "bars.csv", 100)
    request = BacktestRequest(csv=str(data), symbol="ES", strategy="sma_cross",
                              params={"fast": 2, "slow": 5, "qty": 1}, out_dir=str(tmp_path / "report"))
    result = backtest(request)
    expected = run_core(read_bars(data, "ES"), "sma_cross", request.params, symbol="ES")
    assert result["summary"] == expected.summary and result["out_dir"] == str(tmp_path / "report")
    assert (tmp_path / "report" / "summary.json").is_file()
    for bad in ({"params": {"fast": 5, "slow": 5, "qty": 1}}, {"csv": str(tmp_path / "missing.csv")},
                {"symbol": "NOPE"}):
        with pytest.raises(PermanentJobError):
            backtest(replace(request, **bad))


# ---------------------------------------------------------------------------- the sweep


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_tiny_grid_runs_one_job_per_combination_on_two_workers(tmp_path: Path) -> None:
    # Given a small CSV and the grid fast=2..3 × slow=3..4, where fast=3/slow=3 is refused
    data = write_random_walk_csv(tmp_path / "bars.csv", 400, seed=11)
    spec = CsvSweep(csv=data, symbol="ES", strategy="sma_cross", params={"qty": "1"}, interval="1m")
    out = tmp_path / "sweep"
    console = Console(record=True, width=140)
    # When it runs on two real jobs workers
    result = run_sweep(spec, {"fast": "2..3", "slow": "3..4"}, out, workers=2, progress=False, console=console)

    # Then each runnable combination was one backtest job, and it completed
    assert result.ok and result.jobs == 3
    assert result.skipped == [({"fast": 3, "slow": 3}, "fast (3) must be smaller than slow (3)")]
    with Store.from_url(f"sqlite:///{out / '.sweep' / 'state' / 'sweep.db'}") as store:
        jobs = store.jobs()
    assert [j.kind for j in jobs] == [BACKTEST] * 3
    assert all(str(j.status) == "done" and j.attempts == 1 for j in jobs)
    assert sorted((j.payload["params"]["fast"], j.payload["params"]["slow"]) for j in jobs) == [(2, 3), (2, 4), (3, 4)]
    # ... run by the worker processes (their logs say so, once per job)
    done = [json.loads(line)["job"] for log in (out / ".sweep" / "state" / "logs").glob("jobs_*.log")
            for line in log.read_text().splitlines() if '"job_done"' in line]
    assert sorted(done) == sorted(j.id for j in jobs)
    # ... each with the result the in-process backtest gives for its parameters
    bars = read_bars(data, "ES", "1m")
    for run in result.ranked:
        expected = run_core(bars, "sma_cross", {"qty": "1", **run.params}, symbol="ES").summary
        assert run.summary == expected, run.params
        assert (Path(run.out_dir) / "trades.csv").is_file()

    # And sweep.csv is ranked by net P&L, best first (then Sharpe)
    rows = list(csv.DictReader((out / SWEEP_CSV).open()))
    assert [int(r["rank"]) for r in rows] == [1, 2, 3]
    keys = [(D(r["net_pnl"]), float(r["sharpe"]) if r["sharpe"] else float("-inf")) for r in rows]
    assert keys == sorted(keys, reverse=True)
    assert {(int(r["fast"]), int(r["slow"])) for r in rows} == {(2, 3), (2, 4), (3, 4)}
    # ... the heatmap is a PNG, the JSON keeps the skipped combination, the table was printed
    assert (out / HEATMAP_PNG).read_bytes().startswith(PNG_MAGIC)
    assert json.loads((out / SWEEP_JSON).read_text())["skipped"][0]["params"] == {"fast": 3, "slow": 3}
    assert "ranked by net P&L" in console.export_text()


@pytest.mark.integration
def test_a_grid_the_strategy_refuses_entirely_starts_nothing(tmp_path: Path) -> None:
    data = write_random_walk_csv(tmp_path / "bars.csv", 50)
    spec = CsvSweep(csv=data, symbol="ES", strategy="sma_cross", params={"qty": "1"})
    with pytest.raises(ParamError, match="every one of the 2 combinations"):
        run_sweep(spec, {"fast": "5..6", "slow": "4..4"}, tmp_path / "out", progress=False, console=Console(quiet=True))
    assert not (tmp_path / "out" / ".sweep").exists()


def test_a_sweep_needs_a_range_and_a_csv(tmp_path: Path) -> None:
    spec = CsvSweep(csv=tmp_path / "missing.csv", symbol="ES", strategy="sma_cross", params={"qty": "1"})
    with pytest.raises(SweepSpecError, match="no CSV file"):
        run_sweep(spec, {"fast": "2..3"}, tmp_path / "out", progress=False)
    with pytest.raises(SweepSpecError, match="at least one parameter range"):
        run_sweep(spec, {}, tmp_path / "out", progress=False)
    with pytest.raises(SweepSpecError, match="both fixed and swept"):
        run_sweep(spec, {"qty": "1..2"}, tmp_path / "out", progress=False)
