"""The backtest report: FIFO round trips, the marked-to-market curve, the summary and the files."""
from __future__ import annotations

import csv
import json
import math
import statistics
from decimal import Decimal as D
from pathlib import Path

import pytest

from schema.enums import Side
from services.backtest.report import (
    YEAR_NS,
    ExecFill,
    Trade,
    equity_curve,
    exposure_bars,
    max_drawdown,
    render_summary,
    round_trips,
    summarize,
    write_report,
)

PV = D(50)
BUY, SELL = Side.BUY, Side.SELL
DAY = 86_400 * 10**9


def fill(ts: int, side: Side, qty: str, price: str) -> ExecFill:
    return ExecFill(ts, side, D(qty), D(price))


# ---------------------------------------------------------------------------- round trips


def test_a_long_round_trip() -> None:
    trades = round_trips([fill(1, BUY, "1", "100"), fill(2, SELL, "1", "104.25")], point_value=PV)
    assert trades == [Trade(1, 2, "long", D(1), D(100), D("104.25"), D("212.50"), D(0))]


def test_a_short_round_trip_gains_when_the_price_falls() -> None:
    trades = round_trips([fill(1, SELL, "2", "100"), fill(2, BUY, "2", "99")], point_value=PV)
    assert trades == [Trade(1, 2, "short", D(2), D(100), D(99), D(100), D(0))]


def test_a_reversal_closes_the_position_then_opens_the_rest_the_other_way() -> None:
    fills = [fill(1, BUY, "1", "100"), fill(2, SELL, "2", "110"), fill(3, BUY, "1", "105")]
    assert round_trips(fills, point_value=PV) == [
        Trade(1, 2, "long", D(1), D(100), D(110), D(500), D(0)),
        Trade(2, 3, "short", D(1), D(110), D(105), D(250), D(0)),
    ]


def test_partial_closes_split_the_lot_and_keep_its_entry() -> None:
    fills = [fill(1, BUY, "3", "100"), fill(2, SELL, "1", "110"), fill(3, SELL, "2", "90")]
    assert round_trips(fills, point_value=PV) == [
        Trade(1, 2, "long", D(1), D(100), D(110), D(500), D(0)),
        Trade(1, 3, "long", D(2), D(100), D(90), D(-1000), D(0)),
    ]


def test_closing_is_first_in_first_out_across_lots() -> None:
    fills = [fill(1, BUY, "1", "100"), fill(2, BUY, "1", "102"), fill(3, SELL, "1", "105"), fill(4, SELL, "1", "101")]
    assert [(t.entry_ns, t.entry_price, t.exit_price, t.pnl) for t in round_trips(fills, point_value=PV)] == [
        (1, D(100), D(105), D(250)),
        (2, D(102), D(101), D(-50)),
    ]


def test_commission_is_charged_per_contract_on_both_sides_and_netted() -> None:
    fills = [fill(1, BUY, "2", "100"), fill(2, SELL, "3", "101"), fill(3, BUY, "1", "101")]
    trades = round_trips(fills, point_value=PV, commission_per_contract=D("2.5"))
    # 2 contracts long: 2 × 1 point × 50 = 100, less 2 contracts × 2 sides × 2.5 = 10
    assert (trades[0].quantity, trades[0].commission, trades[0].pnl) == (D(2), D(10), D(90))
    # the reversal's short contract: flat price, only its commission
    assert (trades[1].quantity, trades[1].commission, trades[1].pnl) == (D(1), D(5), D(-5))


def test_an_open_position_is_not_a_trade() -> None:
    assert round_trips([fill(1, BUY, "1", "100"), fill(2, BUY, "1", "101")], point_value=PV) == []


def test_a_fill_without_quantity_is_refused() -> None:
    with pytest.raises(ValueError):
        round_trips([fill(1, BUY, "0", "100")], point_value=PV)


# ---------------------------------------------------------------------------- curve and summary


# Given four daily bars, a long bought at 100 on bar 1's open and reversed short at 104 on bar 3's
BARS = [(0, D(100)), (DAY, D(102)), (2 * DAY, D(98)), (3 * DAY, D(103)), (4 * DAY, D(101))]
FILLS = [fill(DAY, BUY, "1", "100"), fill(3 * DAY, SELL, "2", "104")]


def test_the_curve_marks_the_position_at_each_close_and_counts_fills_of_the_bar() -> None:
    curve = equity_curve(BARS, FILLS, point_value=PV, commission_per_contract=D(1))
    assert [e for _, e in curve] == [
        D(0),
        D(2 * 50 - 1),  # long from 100, close 102, one contract's commission
        D(-2 * 50 - 1),  # close 98
        D(4 * 50 + 1 * 50 - 3),  # closed at 104 (+200), short 1 from 104 at 103 (+50), 3 contracts paid
        D(200 + 150 - 3),  # short from 104 at 101
    ]


def test_summary_of_a_hand_computed_run() -> None:
    # Given three closed trades: +300, -100, +50 (net of commission) and a curve that peaks at 400
    trades = [Trade(0, 1, "long", D(1), D(0), D(0), D(300), D(2)),
              Trade(1, 2, "short", D(1), D(0), D(0), D(-100), D(2)),
              Trade(2, 3, "long", D(1), D(0), D(0), D(50), D(2))]
    values = [D(0), D(300), D(400), D(150), D(200), D(250)]
    curve = [(i * DAY, v) for i, v in enumerate(values)]
    # When it is summarised over six bars, four of them exposed
    summary = summarize(trades, curve, bars=6, exposure_bars=4)
    # Then the figures are the hand-computed ones
    assert summary["net_pnl"] == "250"
    assert summary["closed_pnl"] == "250" and summary["open_pnl"] == "0"
    assert (summary["trades"], summary["wins"], summary["losses"]) == (3, 2, 1)
    assert summary["win_rate"] == round(2 / 3, 6)
    assert summary["max_drawdown"] == "250"  # 400 → 150
    assert summary["gross_profit"] == "350" and summary["gross_loss"] == "-100"
    assert summary["profit_factor"] == 3.5
    assert summary["commission"] == "6"
    assert summary["exposure_pct"] == round(100 * 4 / 6, 6)
    changes = [300.0, 100.0, -250.0, 50.0, 50.0]
    per_year = 5 * YEAR_NS / (5 * DAY)  # 365.2425 bars a year: one a day
    expected = statistics.mean(changes) / statistics.stdev(changes) * math.sqrt(per_year)
    assert summary["sharpe"] == pytest.approx(expected, rel=1e-6)
    assert summary["sharpe_bars_per_year"] == pytest.approx(365.24, abs=0.01)
    json.dumps(summary)  # JSON-ready as it is


def test_summary_without_trades_or_variation() -> None:
    curve = [(i * DAY, D(0)) for i in range(5)]
    summary = summarize([], curve, bars=5, exposure_bars=0)
    assert summary["trades"] == 0 and summary["win_rate"] is None and summary["sharpe"] is None
    assert summary["max_drawdown"] == "0" and summary["exposure_pct"] == 0


def test_drawdown_counts_a_fall_from_the_start() -> None:
    assert max_drawdown([(0, D(-50)), (1, D(20)), (2, D(-10))]) == D(50)


def test_exposure_counts_bars_that_close_with_a_position() -> None:
    assert exposure_bars(BARS, FILLS) == 4
    assert exposure_bars(BARS, [fill(DAY, BUY, "1", "100"), fill(2 * DAY, SELL, "1", "99")]) == 1


# ---------------------------------------------------------------------------- files


def test_write_report_writes_the_three_files_identically_every_time(tmp_path: Path) -> None:
    trades = round_trips(FILLS, point_value=PV)
    curve = equity_curve(BARS, FILLS, point_value=PV)
    summary = summarize(trades, curve, bars=len(BARS), exposure_bars=exposure_bars(BARS, FILLS))
    write_report(tmp_path / "a", trades, curve, summary)
    write_report(tmp_path / "b", trades, curve, summary)

    rows = list(csv.DictReader((tmp_path / "a" / "trades.csv").open()))
    assert rows == [{"entry_time": "1970-01-02T00:00:00.000000000Z", "exit_time": "1970-01-04T00:00:00.000000000Z",
                     "side": "long", "qty": "1", "entry_price": "100", "exit_price": "104", "pnl": "200",
                     "commission": "0", "entry_ns": str(DAY), "exit_ns": str(3 * DAY)}]
    assert json.loads((tmp_path / "a" / "summary.json").read_text()) == summary
    png = (tmp_path / "a" / "equity.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    for name in ("trades.csv", "summary.json", "equity.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_render_summary_names_the_figures() -> None:
    curve = equity_curve(BARS, FILLS, point_value=PV)
    text = render_summary(summarize(round_trips(FILLS, point_value=PV), curve, bars=5, exposure_bars=4))
    assert "net P&L        350" in text
    assert "win rate 100.0%" in text and "max drawdown   200" in text and "80.0% of 5 bars" in text
