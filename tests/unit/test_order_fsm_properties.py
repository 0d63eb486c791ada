"""Property: for any legal sequence of order events, folding them equals applying them one by one,
and no order ever has more filled than ordered."""
from __future__ import annotations

from decimal import Decimal as D

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from schema.enums import OrderStatus, OrderType, Side
from schema.order_fsm import OrderEvent, OrderEventKind as K, OrderState, apply, fold, legal_events

MAX_EVENTS = 30
QUANTUM = D("0.01")


def _amounts(low: D, high: D) -> st.SearchStrategy[D]:
    return st.decimals(min_value=low, max_value=high, places=2, allow_nan=False, allow_infinity=False)


@st.composite
def next_event(draw: st.DrawFn, state: OrderState, ts: int) -> OrderEvent | None:
    """A legal event for ``state`` with drawn parameters, or None if none can be built."""
    remaining = state.quantity - state.filled_quantity
    kinds = sorted(k for k in legal_events(state.status) if not (k is K.FILL and remaining <= 0))
    if not kinds:
        return None
    kind = draw(st.sampled_from(kinds))
    if kind is K.FILL:
        quantity = draw(_amounts(QUANTUM, remaining))
        return OrderEvent.fill(ts, broker_fill_id=f"f{ts}", quantity=quantity, price=draw(_amounts(D(1), D(5000))))
    if kind in (K.REPLACE_REQUESTED, K.REPLACED):
        quantity = draw(_amounts(max(state.filled_quantity, QUANTUM), state.filled_quantity + 20))
        price = draw(_amounts(D(1), D(5000)))
        make = OrderEvent.replace_requested if kind is K.REPLACE_REQUESTED else OrderEvent.replaced
        return make(ts, quantity=quantity, limit_price=price, stop_price=None)
    simple = {
        K.SUBMIT_SENT: lambda: OrderEvent.submit_sent(ts),
        K.ACCEPTED: lambda: OrderEvent.accepted(ts, broker_order_id=f"b{ts}"),
        K.REJECTED: lambda: OrderEvent.rejected(ts, reason="r"),
        K.CANCEL_REQUESTED: lambda: OrderEvent.cancel_requested(ts),
        K.CANCEL_REJECTED: lambda: OrderEvent.cancel_rejected(ts, reason="r"),
        K.CANCELLED: lambda: OrderEvent.cancelled(ts),
        K.EXPIRED: lambda: OrderEvent.expired(ts),
        K.REPLACE_REJECTED: lambda: OrderEvent.replace_rejected(ts, reason="r"),
        K.OUTCOME_UNKNOWN: lambda: OrderEvent.outcome_unknown(ts, reason="timeout"),
        K.RESOLVED_ABSENT: lambda: OrderEvent.resolved_absent(ts),
    }
    return simple[kind]()


@st.composite
def event_sequences(draw: st.DrawFn) -> list[OrderEvent]:
    quantity = draw(_amounts(QUANTUM, D(50)))
    events = [
        OrderEvent.created(
            0, client_order_id="s.1.1", session="s", signal=1, symbol="ESZ6", side=draw(st.sampled_from(Side)),
            order_type=OrderType.LIMIT, quantity=quantity, limit_price=D(100),
        )
    ]
    state = apply(None, events[0])
    for ts in range(1, draw(st.integers(0, MAX_EVENTS)) + 1):
        event = draw(next_event(state, ts))
        if event is None:
            break
        events.append(event)
        state = apply(state, event)
    return events


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_sequences())
def test_fold_equals_stepwise_application_and_never_overfills(events: list[OrderEvent]) -> None:
    state = None
    for number, event in enumerate(events, start=1):
        state = apply(state, event)
        assert state.version == number
        assert 0 <= state.filled_quantity <= state.quantity
        if state.status is OrderStatus.FILLED:
            assert state.filled_quantity == state.quantity
        if state.status is OrderStatus.PARTIALLY_FILLED:
            assert 0 < state.filled_quantity < state.quantity
    assert fold(events) == state
    # Stored events are JSON: rebuilding them from their data gives the same order.
    assert fold(OrderEvent(e.kind.value, e.ts_ns, dict(e.data)) for e in events) == state
