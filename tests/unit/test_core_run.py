"""The in-process backtest: sma_cross through the simulator's matching engine, on a tiny CSV whose
trades are worked out by hand."""
from __future__ import annotations

from decimal import Decimal as D
from pathlib import Path

import pytest

from brokers.base import Bar, OrderRequest
from brokers.sim.venue import Venue, VenueFill
from schema.enums import OrderType, Side
from services.backtest.core_run import bar_event, read_bars, run_backtest, run_core, time_core
from services.backtest.report import ExecFill, Trade
from services.strategy.core import ParamError

# sma_cross with fast=1, slow=2: "fast" is the close, "slow" the mean of the last two closes.
#   bar 2: close 101 > mean 100 after 99 < 99.5   → cross up:   buy 1  (fills at bar 3's open, 101.25)
#   bar 4: close 100 < mean 101 after 102 > 101.5 → cross down: sell 2 (fills at bar 5's open, 99.75)
#   bar 6: close 103 > mean 101 after 99 < 99.5   → cross up:   buy 2  (no later bar: never fills)
CSV = """Date,Open,High,Low,Close,Volume
2024-01-02,100.00,100.50,99.75,100.00,10
2024-01-03,100.00,100.25,98.75,99.00,10
2024-01-04,99.25,101.25,99.00,101.00,10
2024-01-05,101.25,102.25,101.00,102.00,10
2024-01-08,101.75,102.00,99.50,100.00,10
2024-01-09,99.75,100.00,98.50,99.00,10
2024-01-10,99.25,103.50,99.00,103.00,10
"""
PARAMS = {"fast": 1, "slow": 2, "qty": 1}
DAY = 86_400 * 10**9
JAN_2 = 1_704_153_600 * 10**9  # 2024-01-02T00:00Z


def ts(day: int) -> int:
    """Bar time of 2024-01-<day>."""
    return JAN_2 + (day - 2) * DAY


@pytest.fixture
def csv_path(tmp_path: Path) -> Path:
    path = tmp_path / "bars.csv"
    path.write_text(CSV)
    return path


def test_trades_equal_the_hand_computed_ones(csv_path: Path) -> None:
    result = run_core(read_bars(csv_path, "ES"), "sma_cross", PARAMS, symbol="ES")
    assert result.fills == [ExecFill(ts(5), Side.BUY, D(1), D("101.25")), ExecFill(ts(9), Side.SELL, D(2), D("99.75"))]
    assert result.trades == [Trade(ts(5), ts(9), "long", D(1), D("101.25"), D("99.75"), D(-75), D(0))]
    assert result.instructions == 3  # the last bar's order is sent but never fills
    # long from 101.25 marked at 102 and 100, then short 1 from 99.75 marked at 99 and 103 (ES: 50 a point)
    assert [e for _, e in result.curve] == [D(0), D(0), D(0), D("37.5"), D("-62.5"), D("-37.5"), D("-237.5")]
    assert result.summary["net_pnl"] == "-237.50"
    assert result.summary["closed_pnl"] == "-75.00"
    assert (result.summary["trades"], result.summary["bars"], result.summary["exposure_bars"]) == (1, 7, 4)
    assert result.bars == 7 and result.bars_per_s > 0


def test_slippage_moves_market_fills_against_the_order(csv_path: Path) -> None:
    result = run_core(read_bars(csv_path, "ES"), "sma_cross", PARAMS, symbol="ES", slippage_ticks=1)
    assert [f.price for f in result.fills] == [D("101.50"), D("99.50")]
    assert result.trades[0].pnl == D(-100)


def test_commission_is_netted_from_trades_and_curve(csv_path: Path) -> None:
    result = run_core(read_bars(csv_path, "ES"), "sma_cross", PARAMS, symbol="ES",
                      commission_per_contract=D("2.5"))
    assert (result.trades[0].commission, result.trades[0].pnl) == (D(5), D(-80))
    assert result.curve[-1][1] == D("-237.5") - 3 * D("2.5")


def test_an_order_the_venue_rejects_is_handed_back_and_the_target_follows(csv_path: Path) -> None:
    # Given a quantity the venue refuses (whole contracts only)
    result = run_core(read_bars(csv_path, "ES"), "sma_cross", {**PARAMS, "qty": "1.5"}, symbol="ES")
    # Then nothing fills, and each cross asks again for the full target (the rejection reset it)
    assert result.fills == [] and result.trades == []
    assert result.instructions == 3


def test_the_same_input_gives_the_same_result(csv_path: Path) -> None:
    bars = read_bars(csv_path, "ES")
    first, second = (run_core(bars, "sma_cross", PARAMS, symbol="ES") for _ in range(2))
    assert (first.fills, first.trades, first.curve, first.summary) == (second.fills, second.trades, second.curve,
                                                                       second.summary)


def test_the_core_alone_decides_the_same_orders(csv_path: Path) -> None:
    events = [bar_event(b) for b in read_bars(csv_path, "ES")]
    seconds, instructions = time_core(events, "sma_cross", PARAMS)
    assert instructions == 3 and seconds > 0


def test_bad_parameters_are_refused_before_any_bar(csv_path: Path) -> None:
    with pytest.raises(ParamError, match="fast"):
        run_core(read_bars(csv_path, "ES"), "sma_cross", {"fast": 2, "slow": 2, "qty": 1})
    with pytest.raises(ParamError, match="unknown strategy"):
        run_core([], "nope", {})


def test_run_backtest_writes_the_report(csv_path: Path, tmp_path: Path) -> None:
    result = run_backtest(csv_path, "ES", "sma_cross", PARAMS, tmp_path / "out")
    assert result.trades[0].pnl == D(-75)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["equity.png", "summary.json", "trades.csv"]


# ---------------------------------------------------------------------------- the shared fill model


def _venue_fill(order_type: str, side: Side, *, slippage: int, limit: str | None = None, stop: str | None = None,
                bar: tuple[str, str, str, str] = ("100", "101", "99", "100.5")) -> list[VenueFill]:
    """One order submitted after a bar at 100, and the fills of the next bar (OHLC ``bar``)."""
    venue = Venue(["A"], {"ES": D("0.25")}, slippage_ticks=slippage)
    venue.on_bar(Bar("ES", "1m", 0, D(100), D(100), D(100), D(100), D(0), 0))
    venue.submit("A", OrderRequest("c1", "ES", side, OrderType(order_type), D(1),
                                   None if limit is None else D(limit), None if stop is None else D(stop)))
    o, h, l, c = (D(x) for x in bar)
    return venue.on_bar(Bar("ES", "1m", 60, o, h, l, c, D(0), 1))


def test_venue_slippage_moves_market_and_stop_fills_but_not_limits() -> None:
    assert [f.price for f in _venue_fill("market", Side.BUY, slippage=2)] == [D("100.50")]
    assert [f.price for f in _venue_fill("market", Side.SELL, slippage=2)] == [D("99.50")]
    assert [f.price for f in _venue_fill("stop", Side.BUY, slippage=1, stop="100.75")] == [D("101.00")]
    assert [f.price for f in _venue_fill("limit", Side.BUY, slippage=3, limit="99.50")] == [D("99.50")]
    assert [f.price for f in _venue_fill("market", Side.BUY, slippage=0)] == [D("100")]
    # a sell never slips below one tick
    assert [f.price for f in _venue_fill("market", Side.SELL, slippage=8, bar=("1", "1", "0.25", "1"))] == [D("0.25")]


def test_venue_slippage_needs_ticks_and_is_never_negative() -> None:
    with pytest.raises(ValueError, match="tick"):
        Venue(["A"], None, slippage_ticks=1)
    with pytest.raises(ValueError, match=">= 0"):
        Venue(["A"], {"ES": D("0.25")}, slippage_ticks=-1)
