"""A backtest's report: round trips from fills, the equity curve, summary figures, and the files.

Everything here is a pure function of (bars, fills) except ``write_report``, which writes
``trades.csv``, ``summary.json`` and ``equity.png`` into a folder. Equal inputs give byte-identical
files (no timestamps of the run, no float formatting of money).

Accounting, stated once:

* **Round trips are FIFO.** A fill against the position closes the oldest open lots first; a fill
  larger than the position closes it and opens the rest the other way (a reversal is two trades'
  worth: one closed, one opened). A fill that closes part of a lot splits it: one ``Trade`` for the
  closed part, the remainder stays open at its entry price and time.
* **Commission** is ``commission_per_contract`` per contract per fill (each side). A ``Trade``
  carries the commission of its entry share plus its exit share, and its ``pnl`` is *net* of it.
* **The equity curve** is profit and loss since the start (it starts at 0), marked to market at
  each bar's close: cash flows of the fills so far, less their commission, plus the open position
  valued at the close. A fill stamped with a bar's time (the simulator fills at a bar's open and
  stamps the fill with that bar's time) counts towards that bar's mark.
* **Sharpe ratio**: the mean of the per-bar changes of the equity curve over their sample standard
  deviation, times ``sqrt(bars per year)``; no risk-free rate. P&L changes rather than percentage
  returns, because a futures account has no natural capital base (this equals the Sharpe of returns
  on any fixed, non-compounding capital). Bars per year are measured from the data — bar count over
  the time spanned — so daily bars on trading days give ≈252 and intraday bars their real count.
* **Max drawdown** is the largest fall of the equity curve from its running peak (the start, 0,
  counts as a peak), in currency, reported as a positive amount.
"""
from __future__ import annotations

import csv
import json
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from schema.enums import Side

YEAR_NS = 3_652_425 * 86_400 * 10**9 // 10_000
"""A mean Gregorian year in nanoseconds (365.2425 days)."""
RATIO_DIGITS = 6
"""Decimal places kept for ratios (win rate, Sharpe, exposure) so summaries compare exactly."""
TRADES_CSV = "trades.csv"
SUMMARY_JSON = "summary.json"
EQUITY_PNG = "equity.png"
TRADE_COLUMNS = ("entry_time", "exit_time", "side", "qty", "entry_price", "exit_price", "pnl", "commission",
                 "entry_ns", "exit_ns")
PLOT_SIZE_INCHES = (10.0, 6.0)
PLOT_DPI = 100


@dataclass(frozen=True)
class ExecFill:
    """One execution of the backtested account: when, which way, how many, at what price."""

    ts_ns: int
    side: Side
    quantity: Decimal
    price: Decimal


@dataclass(frozen=True)
class Trade:
    """A closed round trip (or the closed part of one)."""

    entry_ns: int
    exit_ns: int
    direction: str
    """``"long"`` or ``"short"``."""
    quantity: Decimal
    entry_price: Decimal
    exit_price: Decimal
    pnl: Decimal
    """Net of ``commission``, in currency."""
    commission: Decimal


@dataclass
class _Lot:
    ts_ns: int
    quantity: Decimal  # unsigned
    price: Decimal


def round_trips(fills: Sequence[ExecFill], *, point_value: Decimal,
                commission_per_contract: Decimal = Decimal(0)) -> list[Trade]:
    """Closed trades of ``fills`` (oldest first), matched FIFO; see the module docstring."""
    lots: deque[_Lot] = deque()
    sign = 0  # +1 the open lots are long, -1 short, 0 flat
    trades: list[Trade] = []
    for fill in fills:
        if fill.quantity <= 0:
            raise ValueError(f"fill quantity must be positive, got {fill.quantity}")
        remaining = fill.quantity
        if sign != 0 and fill.side.sign != sign:
            while remaining > 0 and lots:
                lot = lots[0]
                closed = min(lot.quantity, remaining)
                commission = 2 * closed * commission_per_contract
                points = (fill.price - lot.price) * sign
                trades.append(Trade(
                    entry_ns=lot.ts_ns, exit_ns=fill.ts_ns, direction="long" if sign > 0 else "short",
                    quantity=closed, entry_price=lot.price, exit_price=fill.price,
                    pnl=points * closed * point_value - commission, commission=commission,
                ))
                remaining -= closed
                if closed == lot.quantity:
                    lots.popleft()
                else:
                    lot.quantity -= closed
            if not lots:
                sign = 0
        if remaining > 0:
            lots.append(_Lot(fill.ts_ns, remaining, fill.price))
            sign = fill.side.sign
    return trades


def equity_curve(bars: Sequence[tuple[int, Decimal]], fills: Sequence[ExecFill], *, point_value: Decimal,
                 commission_per_contract: Decimal = Decimal(0)) -> list[tuple[int, Decimal]]:
    """(bar time, P&L since the start marked at that bar's close) for every bar; fills must be in
    time order. A fill after the last bar is not counted."""
    curve: list[tuple[int, Decimal]] = []
    cash = Decimal(0)  # in points × contracts, commission kept apart
    commission = Decimal(0)
    position = Decimal(0)
    i, n = 0, len(fills)
    for ts_ns, close in bars:
        while i < n and fills[i].ts_ns <= ts_ns:
            fill = fills[i]
            signed = fill.side.sign * fill.quantity
            cash -= signed * fill.price
            position += signed
            commission += fill.quantity * commission_per_contract
            i += 1
        curve.append((ts_ns, (cash + position * close) * point_value - commission))
    return curve


def max_drawdown(curve: Sequence[tuple[int, Decimal]]) -> Decimal:
    """Largest fall from a running peak (the start, 0, counts), as a positive amount."""
    peak = Decimal(0)
    worst = Decimal(0)
    for _, equity in curve:
        if equity > peak:
            peak = equity
        elif peak - equity > worst:
            worst = peak - equity
    return worst


def drawdown_series(curve: Sequence[tuple[int, Decimal]]) -> list[Decimal]:
    """Equity minus its running peak at each point (zero or negative)."""
    peak = Decimal(0)
    out: list[Decimal] = []
    for _, equity in curve:
        peak = max(peak, equity)
        out.append(equity - peak)
    return out


def bars_per_year(curve: Sequence[tuple[int, Decimal]]) -> float | None:
    """Bars per year measured from the curve's timestamps, or None with fewer than two bars."""
    if len(curve) < 2 or curve[-1][0] <= curve[0][0]:
        return None
    return (len(curve) - 1) * YEAR_NS / (curve[-1][0] - curve[0][0])


def sharpe_ratio(curve: Sequence[tuple[int, Decimal]]) -> float | None:
    """Annualised Sharpe ratio of per-bar P&L changes (see the module docstring); None when it is
    undefined (fewer than three bars, or no variation at all)."""
    per_year = bars_per_year(curve)
    if per_year is None or len(curve) < 3:
        return None
    changes = [float(b - a) for (_, a), (_, b) in zip(curve, curve[1:])]
    mean = math.fsum(changes) / len(changes)
    variance = math.fsum((c - mean) ** 2 for c in changes) / (len(changes) - 1)
    if variance <= 0:
        return None
    return round(mean / math.sqrt(variance) * math.sqrt(per_year), RATIO_DIGITS)


def summarize(trades: Sequence[Trade], curve: Sequence[tuple[int, Decimal]], *, bars: int,
              exposure_bars: int) -> dict[str, Any]:
    """The summary figures, JSON-ready: amounts as Decimal strings, ratios as rounded floats (or
    None when undefined). ``net_pnl`` is the curve's last value (closed trades plus any open
    position marked at the last close); ``closed_pnl`` counts closed trades only."""
    wins = [t for t in trades if t.pnl > 0]
    losses = [t for t in trades if t.pnl <= 0]
    gross_profit = sum((t.pnl for t in wins), Decimal(0))
    gross_loss = sum((t.pnl for t in losses), Decimal(0))
    closed = gross_profit + gross_loss
    net = curve[-1][1] if curve else Decimal(0)
    per_year = bars_per_year(curve)
    return {
        "net_pnl": str(net),
        "closed_pnl": str(closed),
        "open_pnl": str(net - closed),
        "trades": len(trades),
        "wins": len(wins),
        "losses": len(losses),
        "win_rate": round(len(wins) / len(trades), RATIO_DIGITS) if trades else None,
        "gross_profit": str(gross_profit),
        "gross_loss": str(gross_loss),
        "profit_factor": round(float(gross_profit / -gross_loss), RATIO_DIGITS) if gross_loss < 0 else None,
        "avg_trade": str(closed / len(trades)) if trades else None,
        "commission": str(sum((t.commission for t in trades), Decimal(0))),
        "max_drawdown": str(max_drawdown(curve)),
        "sharpe": sharpe_ratio(curve),
        "sharpe_bars_per_year": None if per_year is None else round(per_year, 2),
        "bars": bars,
        "exposure_bars": exposure_bars,
        "exposure_pct": round(100 * exposure_bars / bars, RATIO_DIGITS) if bars else 0.0,
        "first_bar_ns": curve[0][0] if curve else None,
        "last_bar_ns": curve[-1][0] if curve else None,
    }


def exposure_bars(bars: Sequence[tuple[int, Decimal]], fills: Sequence[ExecFill]) -> int:
    """How many bars closed with a position open (fills counted as in ``equity_curve``)."""
    position = Decimal(0)
    exposed = 0
    i, n = 0, len(fills)
    for ts_ns, _ in bars:
        while i < n and fills[i].ts_ns <= ts_ns:
            position += fills[i].side.sign * fills[i].quantity
            i += 1
        exposed += position != 0
    return exposed


def iso_utc(ts_ns: int) -> str:
    """``2024-01-02T14:30:00.000000000Z``: nanosecond-exact, independent of the local zone."""
    seconds, nanos = divmod(ts_ns, 10**9)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def write_trades_csv(path: Path, trades: Sequence[Trade]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(TRADE_COLUMNS)
        for t in trades:
            writer.writerow((iso_utc(t.entry_ns), iso_utc(t.exit_ns), t.direction, t.quantity, t.entry_price,
                             t.exit_price, t.pnl, t.commission, t.entry_ns, t.exit_ns))


def write_equity_png(path: Path, curve: Sequence[tuple[int, Decimal]], *, title: str = "Equity") -> None:
    """Equity (top) and drawdown (bottom) against bar time, drawn with matplotlib's Agg backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    times = [datetime.fromtimestamp(ts // 10**9, UTC) for ts, _ in curve]
    equity = [float(e) for _, e in curve]
    drawdown = [float(d) for d in drawdown_series(curve)]
    figure = Figure(figsize=PLOT_SIZE_INCHES, dpi=PLOT_DPI)
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot(times, equity, color="tab:blue", linewidth=1)
    top.axhline(0, color="grey", linewidth=0.5)
    top.set_title(title)
    top.set_ylabel("P&L")
    top.grid(True, alpha=0.3)
    bottom.fill_between(times, drawdown, 0, color="tab:red", alpha=0.4, linewidth=0)
    bottom.set_ylabel("Drawdown")
    bottom.grid(True, alpha=0.3)
    figure.autofmt_xdate()
    figure.tight_layout()
    # No "Software"/date metadata: the same curve gives the same bytes.
    figure.savefig(path, format="png", metadata={"Software": None})


def write_report(out_dir: Path, trades: Sequence[Trade], curve: Sequence[tuple[int, Decimal]],
                 summary: dict[str, Any]) -> None:
    """``trades.csv``, ``summary.json`` and ``equity.png`` in ``out_dir`` (created if missing)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_trades_csv(out_dir / TRADES_CSV, trades)
    (out_dir / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_equity_png(out_dir / EQUITY_PNG, curve)


def _ratio(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def render_summary(summary: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    win_rate = summary.get("win_rate")
    return "\n".join((
        f"net P&L        {summary['net_pnl']}  (closed {summary['closed_pnl']}, open {summary['open_pnl']})",
        f"trades         {summary['trades']}  (won {summary['wins']}, lost {summary['losses']}, "
        f"win rate {'n/a' if win_rate is None else format(win_rate * 100, '.1f') + '%'})",
        f"max drawdown   {summary['max_drawdown']}",
        f"Sharpe         {_ratio(summary.get('sharpe'), '.2f')}",
        f"exposure       {summary['exposure_pct']:.1f}% of {summary['bars']} bars",
        f"commission     {summary['commission']}",
    ))
