"""The roll procedure's decisions (``services.rolls.next_step``) from durable facts alone."""
from __future__ import annotations

import dataclasses
from datetime import date
from decimal import Decimal as D

import pytest

from schema.enums import OrderStatus, OrderType, RollPhase, Side, TimeInForce
from schema.order_fsm import OrderState
from schema.records import RollInfo
from services import rolls
from services.rolls import Leg, RollFacts, next_step, roll_signal

ROLL = RollInfo(id=3, session="es", from_contract="ESZ6", to_contract="ESH7", phase=RollPhase.CANCEL_WORKING,
                started_ns=1, updated_ns=1, version=1)


def order(signal: int, symbol: str, side: str, qty: str, status: OrderStatus, filled: str = "0") -> OrderState:
    return OrderState(
        client_order_id=f"es.1.{signal}", session="es", signal=signal, symbol=symbol, side=Side(side),
        order_type=OrderType.MARKET, quantity=D(qty), limit_price=None, stop_price=None,
        time_in_force=TimeInForce.DAY, status=status, previous_status=None, filled_quantity=D(filled),
        average_price=None, broker_order_id=None, reason=None, version=1)


def facts(phase: RollPhase, old: str = "2", new: str = "0", open_orders=(), flatten=None, opened=None,
          switched: bool = False) -> RollFacts:
    roll = dataclasses.replace(ROLL, phase=phase)
    return RollFacts(roll=roll, old_position=D(old), new_position=D(new), open_orders=tuple(open_orders),
                     flatten_order=flatten, open_order=opened, data_switched=switched)


def test_cancel_phase_cancels_working_orders_on_the_old_contract_then_advances() -> None:
    working = order(7, "ESZ6", "buy", "1", OrderStatus.ACCEPTED)
    elsewhere = order(8, "NQZ6", "buy", "1", OrderStatus.ACCEPTED)
    assert next_step(facts(RollPhase.CANCEL_WORKING, open_orders=[working, elsewhere])) == \
        rolls.CancelOrders((working.client_order_id,))
    cancelling = order(7, "ESZ6", "buy", "1", OrderStatus.PENDING_CANCEL)
    assert isinstance(next_step(facts(RollPhase.CANCEL_WORKING, open_orders=[cancelling])), rolls.Wait)
    assert next_step(facts(RollPhase.CANCEL_WORKING, open_orders=[elsewhere])) == rolls.Advance(RollPhase.FLATTEN_OLD)


def test_flatten_leg_is_one_deterministic_order_then_waits_for_its_fill() -> None:
    step = next_step(facts(RollPhase.FLATTEN_OLD, old="2"))
    assert step == rolls.SubmitLeg(Leg.FLATTEN_OLD, roll_signal(3, Leg.FLATTEN_OLD), "ESZ6", Side.SELL, D(2))
    short = next_step(facts(RollPhase.FLATTEN_OLD, old="-3"))
    assert (short.side, short.quantity) == (Side.BUY, D(3))
    sent = order(step.signal, "ESZ6", "sell", "2", OrderStatus.ACCEPTED)
    assert isinstance(next_step(facts(RollPhase.FLATTEN_OLD, flatten=sent)), rolls.Wait)
    filled = order(step.signal, "ESZ6", "sell", "2", OrderStatus.FILLED, filled="2")
    assert isinstance(next_step(facts(RollPhase.FLATTEN_OLD, old="2", flatten=filled)), rolls.Wait)  # not booked yet
    assert next_step(facts(RollPhase.FLATTEN_OLD, old="0", flatten=filled)) == rolls.Advance(RollPhase.OPEN_NEW)
    assert next_step(facts(RollPhase.FLATTEN_OLD, old="0")) == rolls.Advance(RollPhase.OPEN_NEW)  # flat already


def test_a_leg_that_ends_unfilled_is_for_the_operator() -> None:
    rejected = order(roll_signal(3, Leg.FLATTEN_OLD), "ESZ6", "sell", "2", OrderStatus.REJECTED)
    assert isinstance(next_step(facts(RollPhase.FLATTEN_OLD, flatten=rejected)), rolls.Stuck)


def test_open_leg_takes_its_size_from_the_flatten_legs_fills() -> None:
    closed = order(roll_signal(3, Leg.FLATTEN_OLD), "ESZ6", "sell", "2", OrderStatus.FILLED, filled="2")
    step = next_step(facts(RollPhase.OPEN_NEW, old="0", flatten=closed))
    assert step == rolls.SubmitLeg(Leg.OPEN_NEW, roll_signal(3, Leg.OPEN_NEW), "ESH7", Side.BUY, D(2))
    opened = order(step.signal, "ESH7", "buy", "2", OrderStatus.FILLED, filled="2")
    assert next_step(facts(RollPhase.OPEN_NEW, old="0", new="2", flatten=closed, opened=opened)) == \
        rolls.Advance(RollPhase.SWITCH_DATA)
    # Nothing was held: nothing is opened.
    assert next_step(facts(RollPhase.OPEN_NEW, old="0")) == rolls.Advance(RollPhase.SWITCH_DATA)


def test_switch_phase_asks_market_data_then_finishes() -> None:
    assert next_step(facts(RollPhase.SWITCH_DATA)) == rolls.SwitchData("ESH7")
    assert next_step(facts(RollPhase.SWITCH_DATA, switched=True)) == rolls.Advance(RollPhase.DONE)


def test_roll_legs_have_their_own_signal_range() -> None:
    assert roll_signal(3, Leg.FLATTEN_OLD) != roll_signal(3, Leg.OPEN_NEW) != roll_signal(4, Leg.FLATTEN_OLD)
    assert rolls.is_roll_signal(roll_signal(1, Leg.FLATTEN_OLD)) and not rolls.is_roll_signal(12345)


def test_roll_target_rolls_forward_on_the_roll_date_only() -> None:
    assert rolls.roll_target("ESZ6", date(2026, 12, 9)) is None
    assert rolls.roll_target("ESZ6", date(2026, 12, 10)) == "ESH7"
    assert rolls.roll_target("ESH7", date(2026, 12, 1)) is None  # already ahead of the front month
    assert rolls.roll_target("BTC-PERPETUAL", date(2026, 12, 10)) is None


@pytest.mark.parametrize("to, error", [("NQH7", "not a listed contract of ES"), ("ESF7", "not a listed contract of ES"),
                                       ("ESZ6", "already trades")])
def test_operator_roll_targets_are_checked(to: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        rolls.check_roll_target("ESZ6", to)
    assert rolls.check_roll_target("ESZ6", None) == "ESH7"
