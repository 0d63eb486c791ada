"""The in-process backtest: a strategy core and the simulator's matching engine, no processes.

Each bar goes through the same two steps the live tree takes in lockstep:

1. the venue (``brokers.sim.venue.Venue`` itself, so the fill model is the simulator's, slippage
   included) closes the bar: working orders fill — a market order submitted on bar t fills at the
   open of bar t+1 — and each fill is handed to the strategy as the order update the account
   service would publish;
2. the strategy decides on the closed bar; each ``Submit`` becomes a venue order whose client
   order id is derived from (session, signal) as the account service does, and the venue's answer
   (accepted or rejected) is handed back as an order update.

The strategy starts from a flat ``PositionSnapshot``, as a fresh live session does, and every bar
is live. The result is therefore the trade list the full pipeline produces for the same CSV, and it
is deterministic: the same bars and parameters give the same fills, byte for byte.

``time_core`` measures the strategy core alone: ``decide`` over precomputed bar events, with no
venue and no fills — the number ``tradebus bench replay`` reports as the core's bars per second.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from brokers.base import Bar, OrderRequest
from brokers.instruments import canonical_root, instrument
from brokers.sim.feed import CsvFeed
from brokers.sim.venue import OrderRejected, Venue
from schema.enums import OrderStatus
from schema.store import CLIENT_ORDER_ID_SEPARATOR
from services.backtest.report import (
    ExecFill,
    Trade,
    equity_curve,
    exposure_bars,
    round_trips,
    summarize,
    write_report,
)
from services.strategy.core import BarEvent, Cancel, OrderEvent, PositionSnapshot, Submit
from services.strategy.registry import get_strategy

ACCOUNT = "BACKTEST"
SESSION = "backtest"
SESSION_ID = 0
DEFAULT_INTERVAL = "1d"


@dataclass(frozen=True)
class CoreResult:
    trades: list[Trade]
    curve: list[tuple[int, Decimal]]
    summary: dict[str, Any]
    fills: list[ExecFill]
    instructions: int
    """Instructions the strategy produced (orders submitted and cancels)."""
    bars: int
    elapsed_s: float
    """Monotonic seconds of the bar loop (venue + strategy), not reading the CSV or the report."""

    @property
    def bars_per_s(self) -> float:
        return self.bars / self.elapsed_s if self.elapsed_s > 0 else float("inf")


def read_bars(csv_path: str | Path, symbol: str, interval: str = DEFAULT_INTERVAL) -> list[Bar]:
    """Every bar of an OHLCV CSV (see ``brokers.sim.feed.CsvFeed`` for the accepted layouts)."""
    return list(CsvFeed(csv_path, symbol, interval))


def bar_event(bar: Bar) -> BarEvent:
    return BarEvent(bar.symbol, bar.interval, bar.ts_ns, bar.open, bar.high, bar.low, bar.close, bar.volume, True)


def client_order_id(signal: int, session: str = SESSION, session_id: int = SESSION_ID) -> str:
    """The id the account service would give ``signal`` (``Store.client_order_id_for``)."""
    return CLIENT_ORDER_ID_SEPARATOR.join((session, str(session_id), str(int(signal))))


def run_core(bars: Sequence[Bar], strategy_name: str, params: Mapping[str, Any], *, symbol: str | None = None,
             slippage_ticks: int = 0, commission_per_contract: Decimal = Decimal(0)) -> CoreResult:
    """Backtest ``strategy_name`` with ``params`` over ``bars`` (see the module docstring).

    ``symbol`` (default: the bars' own) picks the instrument's tick size and point value.
    Raises ``ParamError`` for an unknown strategy or bad parameters, before any bar is read.
    """
    strategy = get_strategy(strategy_name)
    state = strategy.initial_state(params)
    if not bars:
        return _result([], [], [], 0, 0.0, point_value=Decimal(1), commission=commission_per_contract)
    symbol = symbol or bars[0].symbol
    spec = instrument(canonical_root(symbol))
    venue = Venue([ACCOUNT], {symbol: spec.tick_size}, point_values={symbol: spec.point_value},
                  slippage_ticks=slippage_ticks)
    decide = strategy.decide
    fills: list[ExecFill] = []
    instructions = 0

    started = time.perf_counter()
    state, _ = decide(state, PositionSnapshot(position=Decimal(0), working=Decimal(0)))
    for bar in bars:
        if bar.symbol != symbol:
            raise ValueError(f"bar {bar.index} is for {bar.symbol}, not {symbol}")
        for fill in venue.on_bar(bar):
            fills.append(ExecFill(fill.ts_ns, fill.side, fill.quantity, fill.price))
            order = venue.order_by_client_id(ACCOUNT, fill.client_order_id)
            assert order is not None
            state, _ = decide(state, _order_event(order))
        state, produced = decide(state, bar_event(bar))
        for instruction in produced:
            if isinstance(instruction, Submit):
                instructions += 1
                state, _ = decide(state, _submit(venue, instruction))
            elif isinstance(instruction, Cancel):
                instructions += 1
                order = venue.cancel(ACCOUNT, instruction.client_order_id)
                state, _ = decide(state, _order_event(order))
    elapsed = time.perf_counter() - started

    return _result(bars, fills, [(b.ts_ns, b.close) for b in bars], instructions, elapsed,
                   point_value=spec.point_value, commission=commission_per_contract)


def _submit(venue: Venue, submit: Submit) -> OrderEvent:
    request = OrderRequest(client_order_id(submit.signal), submit.symbol, submit.side, submit.order_type,
                           submit.quantity, submit.limit_price, submit.stop_price)
    try:
        order = venue.submit(ACCOUNT, request)
    except OrderRejected as exc:
        if exc.order is None:
            raise
        order = exc.order
    return _order_event(order)


def _order_event(order: Any) -> OrderEvent:
    signal = int(order.client_order_id.rsplit(CLIENT_ORDER_ID_SEPARATOR, 1)[1])
    status = order.status.value if isinstance(order.status, OrderStatus) else str(order.status)
    return OrderEvent(order.client_order_id, signal, order.side.value, order.quantity, order.filled_quantity, status)


def _result(bars: Sequence[Bar], fills: list[ExecFill], closes: list[tuple[int, Decimal]], instructions: int,
            elapsed: float, *, point_value: Decimal, commission: Decimal) -> CoreResult:
    trades = round_trips(fills, point_value=point_value, commission_per_contract=commission)
    curve = equity_curve(closes, fills, point_value=point_value, commission_per_contract=commission)
    summary = summarize(trades, curve, bars=len(bars), exposure_bars=exposure_bars(closes, fills))
    return CoreResult(trades, curve, summary, fills, instructions, len(bars), elapsed)


def time_core(events: Sequence[BarEvent], strategy_name: str, params: Mapping[str, Any]) -> tuple[float, int]:
    """(monotonic seconds, instructions) of ``decide`` alone over precomputed bar events: the
    strategy core's own speed, with no venue, fills or order updates."""
    strategy = get_strategy(strategy_name)
    state = strategy.initial_state(params)
    decide = strategy.decide
    produced = 0
    started = time.perf_counter()
    for event in events:
        state, instructions = decide(state, event)
        if instructions:
            produced += len(instructions)
    return time.perf_counter() - started, produced


def run_backtest(csv_path: str | Path, symbol: str, strategy_name: str, params: Mapping[str, Any], out_dir: Path | None,
                 *, interval: str = DEFAULT_INTERVAL, slippage_ticks: int = 0,
                 commission_per_contract: Decimal = Decimal(0)) -> CoreResult:
    """Read a CSV, run the core, and (when ``out_dir`` is given) write the report there."""
    result = run_core(read_bars(csv_path, symbol, interval), strategy_name, params, symbol=symbol,
                      slippage_ticks=slippage_ticks, commission_per_contract=commission_per_contract)
    if out_dir is not None:
        write_report(out_dir, result.trades, result.curve, result.summary)
    return result
