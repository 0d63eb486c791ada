"""sma_cross and the target-position book: pure, deterministic decisions."""
from __future__ import annotations

from decimal import Decimal

import pytest

from schema.enums import Side
from services.strategy.core import BarEvent, OrderEvent, ParamError, PositionSnapshot, Submit
from services.strategy.sma_cross import SmaCross

MINUTE = 60_000_000_000


def bar(i: int, close: str, *, live: bool = True) -> BarEvent:
    c = Decimal(close)
    return BarEvent(symbol="ESZ6", interval="1m", ts_ns=(i + 1) * MINUTE, open=c, high=c, low=c, close=c,
                    volume=Decimal(1), live=live)


def run(closes: list[str], params=None, *, live: bool = True):
    strategy = SmaCross()
    state = strategy.initial_state(params or {"fast": 2, "slow": 3, "qty": 1})
    out = []
    for i, close in enumerate(closes):
        state, instructions = strategy.decide(state, bar(i, close, live=live))
        out.append(instructions)
    return state, out


def test_cross_above_goes_long_and_cross_below_reverses_to_short() -> None:
    # closes:            fast(2) vs slow(3)
    # 10 10 10 9  -> fast 9.5 < slow 9.67
    # 12          -> fast 10.5 > slow 10.33: cross up → buy 1
    # 8           -> fast 10 < slow 9.67? no: slow=(9+12+8)/3=9.67, fast=10 > 9.67: no cross
    # 5           -> fast 6.5 < slow 8.33: cross down → sell 2 (close long, go short)
    state, out = run(["10", "10", "10", "9", "12", "8", "5"])
    submits = [i for step in out for i in step]
    assert submits == [
        Submit(signal=1, symbol="ESZ6", side=Side.BUY, quantity=Decimal(1), reason="fast crossed above slow"),
        Submit(signal=2, symbol="ESZ6", side=Side.SELL, quantity=Decimal(2), reason="fast crossed below slow"),
    ]
    assert state.book.target == Decimal(-1)
    assert state.book.next_signal == 3


def test_history_bars_update_averages_but_never_trade() -> None:
    state, out = run(["10", "10", "10", "9", "12", "8", "5"], live=False)
    assert all(step == () for step in out)
    assert len(state.closes) == 4 and state.book.next_signal == 1


def test_a_bar_seen_before_is_ignored() -> None:
    strategy = SmaCross()
    state, _ = run(["10", "10", "10", "9", "12"])
    again, instructions = strategy.decide(state, bar(4, "12"))
    assert instructions == () and again == state


def test_same_events_give_the_same_instructions_every_time() -> None:
    closes = [str(100 + (i * 7919 % 13) - 6) for i in range(300)]
    assert run(closes) == run(closes)


def test_snapshot_sets_target_and_unfilled_terminal_orders_are_taken_back_once() -> None:
    strategy = SmaCross()
    state = strategy.initial_state({"fast": 2, "slow": 3, "qty": 1})
    state, _ = strategy.decide(state, PositionSnapshot(position=Decimal(1), working=Decimal(-2)))
    assert state.book.target == Decimal(-1)
    rejected = OrderEvent(client_order_id="s.1.4", signal=4, side="sell", quantity=Decimal(2),
                          filled_quantity=Decimal(0), status="rejected")
    state, _ = strategy.decide(state, rejected)
    assert state.book.target == Decimal(1)
    state, _ = strategy.decide(state, rejected)  # the same update heard twice
    assert state.book.target == Decimal(1)


def test_state_survives_a_json_round_trip() -> None:
    strategy = SmaCross()
    state, _ = run(["10", "10", "10", "9", "12", "8", "5"])
    assert strategy.from_json(strategy.to_json(state)) == state


@pytest.mark.parametrize("params, message", [
    ({"fast": 5, "slow": 3, "qty": 1}, "must be smaller"),
    ({"fast": "x", "slow": 3, "qty": 1}, "whole number"),
    ({"fast": 2, "slow": 3}, "missing parameter 'qty'"),
    ({"fast": 2, "slow": 3, "qty": 1, "extra": 1}, "unknown parameter"),
    ({"fast": 2, "slow": 3, "qty": "-1"}, "positive"),
])
def test_bad_parameters_are_refused_with_a_clear_message(params, message) -> None:
    with pytest.raises(ParamError, match=message):
        SmaCross().initial_state(params)
