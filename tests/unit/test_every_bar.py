"""every_bar: one order of ``qty`` per live bar, alternating sides, pure and deterministic."""
from __future__ import annotations

from decimal import Decimal

import pytest

from schema.enums import Side
from services.strategy.core import BarEvent, OrderEvent, ParamError, PositionSnapshot, Submit
from services.strategy.every_bar import EveryBar
from services.strategy.registry import get_strategy

MINUTE = 60_000_000_000


def bar(i: int, *, live: bool = True) -> BarEvent:
    c = Decimal("5000")
    return BarEvent(symbol="ESZ6", interval="1m", ts_ns=(i + 1) * MINUTE, open=c, high=c, low=c, close=c,
                    volume=Decimal(1), live=live)


def feed(events, params=None):
    strategy = EveryBar()
    state = strategy.initial_state(params or {"qty": 1})
    out = []
    for event in events:
        state, instructions = strategy.decide(state, event)
        out.extend(instructions)
    return state, out


def test_every_live_bar_makes_one_order_alternating_buy_and_sell() -> None:
    # Given a flat start, when four live bars close
    state, out = feed([bar(i) for i in range(4)], {"qty": 2})
    # Then: buy 2, sell 2, buy 2, sell 2, numbered 1..4, and the target is back to flat
    assert out == [
        Submit(signal=1, symbol="ESZ6", side=Side.BUY, quantity=Decimal(2), reason="every bar: buy 2"),
        Submit(signal=2, symbol="ESZ6", side=Side.SELL, quantity=Decimal(2), reason="every bar: sell 2"),
        Submit(signal=3, symbol="ESZ6", side=Side.BUY, quantity=Decimal(2), reason="every bar: buy 2"),
        Submit(signal=4, symbol="ESZ6", side=Side.SELL, quantity=Decimal(2), reason="every bar: sell 2"),
    ]
    assert state.book.target == 0 and state.book.next_signal == 5


def test_history_bars_and_repeated_bars_never_trade() -> None:
    state, out = feed([bar(0, live=False), bar(1, live=False), bar(2), bar(2), bar(1)])
    assert [s.signal for s in out] == [1]
    assert state.last_bar_ts == 3 * MINUTE


def test_a_position_from_a_snapshot_walks_back_one_qty_per_bar() -> None:
    # Given the account reports 3 long, when three bars close: sell 1 each time (never a bigger order)
    state, out = feed([PositionSnapshot(position=Decimal(3), working=Decimal(0)), bar(0), bar(1), bar(2), bar(3)])
    assert [(s.side, s.quantity) for s in out] == [(Side.SELL, Decimal(1))] * 3 + [(Side.BUY, Decimal(1))]
    assert state.book.target == 1


def test_a_rejected_order_leaves_the_target_where_it_was() -> None:
    state, out = feed([bar(0)])
    cid = "bench.1"
    state, _ = EveryBar().decide(state, OrderEvent(client_order_id=cid, signal=1, side="buy", quantity=Decimal(1),
                                                   filled_quantity=Decimal(0), status="rejected"))
    assert state.book.target == 0
    state, again = EveryBar().decide(state, bar(1))
    assert again[0].side is Side.BUY


def test_same_events_same_instructions_and_state_survives_json() -> None:
    events = [PositionSnapshot(position=Decimal(0), working=Decimal(0))] + [bar(i) for i in range(6)]
    first, out1 = feed(events)
    second, out2 = feed(events)
    assert out1 == out2 and first == second
    strategy = EveryBar()
    assert strategy.from_json(strategy.to_json(first)) == first


def test_params_are_checked_and_it_is_registered() -> None:
    with pytest.raises(ParamError):
        EveryBar().initial_state({})
    with pytest.raises(ParamError):
        EveryBar().initial_state({"qty": 1, "fast": 2})
    with pytest.raises(ParamError):
        EveryBar().initial_state({"qty": 0})
    assert get_strategy("every_bar").name == "every_bar"
