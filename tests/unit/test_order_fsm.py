"""The order state machine: every legal transition, every illegal one, and the odd-but-real edges."""
from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D

import pytest

from schema.enums import OrderStatus as S
from schema.enums import OrderType, Side, TimeInForce
from schema.order_fsm import (
    ABSENT_REASON,
    TRANSITIONS,
    IllegalTransition,
    OrderEvent,
    OrderEventKind as K,
    OrderState,
    Overfill,
    apply,
    fold,
    legal_events,
)

CID = "es1.1.7"
QTY = D(10)
TS = 1_000


def created(quantity: D = QTY, order_type: OrderType = OrderType.LIMIT, **overrides) -> OrderEvent:
    terms = dict(
        client_order_id=CID, session="es1", signal=7, symbol="ESZ6", side=Side.BUY, order_type=order_type,
        quantity=quantity, limit_price=D("100"), stop_price=None, time_in_force=TimeInForce.DAY, epoch=3,
    )
    terms.update(overrides)
    return OrderEvent.created(TS, **terms)


BASE = apply(None, created())

# The scenario each status is tested in: how much has filled, and where a pending state came from.
FILLED_IN = {S.PARTIALLY_FILLED: D(4), S.FILLED: QTY}
PREVIOUS_IN = {S.PENDING_CANCEL: S.ACCEPTED, S.PENDING_REPLACE: S.ACCEPTED, S.UNKNOWN: S.SUBMITTED}


def order_in(status: S, *, filled: D | None = None, previous: S | None = None) -> OrderState:
    filled = FILLED_IN.get(status, D(0)) if filled is None else filled
    return replace(
        BASE,
        status=status,
        previous_status=previous if previous is not None else PREVIOUS_IN.get(status),
        filled_quantity=filled,
        average_price=D("100") if filled else None,
        broker_order_id=None if status in (S.PENDING_SUBMIT, S.SUBMITTED) else "B-1",
        version=5,
    )


def event_of(kind: K, ts: int = TS + 1) -> OrderEvent:
    """A typical event of each kind (a fill of 2 at 101; a replace to 8 at 99)."""
    return {
        K.CREATED: created(),
        K.SUBMIT_SENT: OrderEvent.submit_sent(ts),
        K.ACCEPTED: OrderEvent.accepted(ts, broker_order_id="B-9"),
        K.REJECTED: OrderEvent.rejected(ts, reason="margin"),
        K.FILL: OrderEvent.fill(ts, broker_fill_id="F-1", quantity=D(2), price=D("101")),
        K.CANCEL_REQUESTED: OrderEvent.cancel_requested(ts),
        K.CANCEL_REJECTED: OrderEvent.cancel_rejected(ts, reason="too late"),
        K.CANCELLED: OrderEvent.cancelled(ts, reason="user"),
        K.EXPIRED: OrderEvent.expired(ts),
        K.REPLACE_REQUESTED: OrderEvent.replace_requested(ts, quantity=D(8), limit_price=D("99"), stop_price=None),
        K.REPLACED: OrderEvent.replaced(ts, quantity=D(8), limit_price=D("99"), stop_price=None),
        K.REPLACE_REJECTED: OrderEvent.replace_rejected(ts, reason="no"),
        K.OUTCOME_UNKNOWN: OrderEvent.outcome_unknown(ts, reason="timeout"),
        K.RESOLVED_ABSENT: OrderEvent.resolved_absent(ts),
    }[kind]


# Written out by hand, independently of the table: the status each legal pair leads to in the
# scenario above. The first test checks this list and the table name the same pairs.
EXPECTED: dict[tuple[S | None, K], S] = {
    (None, K.CREATED): S.PENDING_SUBMIT,
    (S.PENDING_SUBMIT, K.SUBMIT_SENT): S.SUBMITTED,
    (S.SUBMITTED, K.ACCEPTED): S.ACCEPTED,
    (S.PENDING_SUBMIT, K.ACCEPTED): S.ACCEPTED,
    (S.UNKNOWN, K.ACCEPTED): S.ACCEPTED,
    (S.PARTIALLY_FILLED, K.ACCEPTED): S.PARTIALLY_FILLED,
    (S.FILLED, K.ACCEPTED): S.FILLED,
    (S.PENDING_SUBMIT, K.REJECTED): S.REJECTED,
    (S.SUBMITTED, K.REJECTED): S.REJECTED,
    (S.UNKNOWN, K.REJECTED): S.REJECTED,
    (S.ACCEPTED, K.FILL): S.PARTIALLY_FILLED,
    (S.PARTIALLY_FILLED, K.FILL): S.PARTIALLY_FILLED,
    (S.SUBMITTED, K.FILL): S.PARTIALLY_FILLED,
    (S.PENDING_SUBMIT, K.FILL): S.PARTIALLY_FILLED,
    (S.UNKNOWN, K.FILL): S.PARTIALLY_FILLED,
    (S.PENDING_CANCEL, K.FILL): S.PENDING_CANCEL,
    (S.PENDING_REPLACE, K.FILL): S.PENDING_REPLACE,
    (S.CANCELLED, K.FILL): S.CANCELLED,
    (S.EXPIRED, K.FILL): S.EXPIRED,
    (S.SUBMITTED, K.CANCEL_REQUESTED): S.PENDING_CANCEL,
    (S.ACCEPTED, K.CANCEL_REQUESTED): S.PENDING_CANCEL,
    (S.PARTIALLY_FILLED, K.CANCEL_REQUESTED): S.PENDING_CANCEL,
    (S.PENDING_CANCEL, K.CANCEL_REJECTED): S.ACCEPTED,
    (S.FILLED, K.CANCEL_REJECTED): S.FILLED,
    (S.PENDING_CANCEL, K.CANCELLED): S.CANCELLED,
    (S.SUBMITTED, K.CANCELLED): S.CANCELLED,
    (S.ACCEPTED, K.CANCELLED): S.CANCELLED,
    (S.PARTIALLY_FILLED, K.CANCELLED): S.CANCELLED,
    (S.PENDING_REPLACE, K.CANCELLED): S.CANCELLED,
    (S.UNKNOWN, K.CANCELLED): S.CANCELLED,
    (S.SUBMITTED, K.EXPIRED): S.EXPIRED,
    (S.ACCEPTED, K.EXPIRED): S.EXPIRED,
    (S.PARTIALLY_FILLED, K.EXPIRED): S.EXPIRED,
    (S.PENDING_CANCEL, K.EXPIRED): S.EXPIRED,
    (S.PENDING_REPLACE, K.EXPIRED): S.EXPIRED,
    (S.UNKNOWN, K.EXPIRED): S.EXPIRED,
    (S.ACCEPTED, K.REPLACE_REQUESTED): S.PENDING_REPLACE,
    (S.PARTIALLY_FILLED, K.REPLACE_REQUESTED): S.PENDING_REPLACE,
    (S.PENDING_REPLACE, K.REPLACED): S.ACCEPTED,
    (S.PENDING_REPLACE, K.REPLACE_REJECTED): S.ACCEPTED,
    (S.FILLED, K.REPLACE_REJECTED): S.FILLED,
    (S.PENDING_SUBMIT, K.OUTCOME_UNKNOWN): S.UNKNOWN,
    (S.SUBMITTED, K.OUTCOME_UNKNOWN): S.UNKNOWN,
    (S.PENDING_CANCEL, K.OUTCOME_UNKNOWN): S.UNKNOWN,
    (S.PENDING_REPLACE, K.OUTCOME_UNKNOWN): S.UNKNOWN,
    (S.SUBMITTED, K.RESOLVED_ABSENT): S.REJECTED,
    (S.UNKNOWN, K.RESOLVED_ABSENT): S.REJECTED,
    (S.PENDING_SUBMIT, K.RESOLVED_ABSENT): S.PENDING_SUBMIT,
}


def test_the_table_lists_exactly_the_expected_transitions() -> None:
    assert set(TRANSITIONS) == set(EXPECTED)


@pytest.mark.parametrize(("status", "kind"), sorted(EXPECTED, key=lambda k: (str(k[0]), k[1])))
def test_every_legal_transition(status: S | None, kind: K) -> None:
    before = None if status is None else order_in(status)
    after = apply(before, event_of(kind))
    assert after.status is EXPECTED[(status, kind)]
    assert after.version == (1 if before is None else before.version + 1)
    assert after.filled_quantity <= after.quantity


ILLEGAL = [
    (status, kind)
    for status in [None, *S]
    for kind in K
    if (status, kind) not in TRANSITIONS
]


@pytest.mark.parametrize(("status", "kind"), ILLEGAL, ids=[f"{s}-{k}" for s, k in ILLEGAL])
def test_every_other_pair_is_illegal(status: S | None, kind: K) -> None:
    before = None if status is None else order_in(status)
    with pytest.raises(IllegalTransition) as raised:
        apply(before, event_of(kind))
    assert raised.value.state == status
    assert raised.value.event == kind
    if before is not None:
        assert raised.value.subject == CID


def test_illegal_transition_names_status_event_and_order() -> None:
    with pytest.raises(IllegalTransition, match=r"no transition from filled on fill \(es1.1.7\)"):
        apply(order_in(S.FILLED), event_of(K.FILL))


def test_created_order_carries_its_terms() -> None:
    assert BASE.status is S.PENDING_SUBMIT and BASE.version == 1
    assert (BASE.client_order_id, BASE.session, BASE.signal, BASE.epoch) == (CID, "es1", 7, 3)
    assert (BASE.quantity, BASE.limit_price, BASE.filled_quantity, BASE.average_price) == (QTY, D(100), 0, None)
    assert BASE.created_ns == BASE.updated_ns == TS


@pytest.mark.parametrize(
    "bad",
    [
        dict(quantity=D(0)),
        dict(quantity=D(-1)),
        dict(limit_price=None),  # a limit order needs its price
        dict(order_type=OrderType.MARKET),  # ...and a market order takes none
        dict(order_type=OrderType.STOP),  # needs a stop price, takes no limit price
    ],
)
def test_created_refuses_bad_terms(bad: dict) -> None:
    with pytest.raises(ValueError):
        apply(None, created(**bad))


def test_fills_accumulate_with_a_volume_weighted_average() -> None:
    order = apply(order_in(S.ACCEPTED), OrderEvent.fill(2, broker_fill_id="a", quantity=D(4), price=D("100")))
    order = apply(order, OrderEvent.fill(3, broker_fill_id="b", quantity=D(6), price=D("101")))
    assert order.status is S.FILLED
    assert order.filled_quantity == QTY
    assert order.average_price == D("100.6")


def test_average_price_is_rounded_to_the_stored_scale() -> None:
    order = apply(order_in(S.ACCEPTED), OrderEvent.fill(2, broker_fill_id="a", quantity=D(1), price=D("100")))
    order = apply(order, OrderEvent.fill(3, broker_fill_id="b", quantity=D(2), price=D("100.01")))
    assert order.average_price == D("100.0066666667")


def test_overfill_raises_and_changes_nothing() -> None:
    before = order_in(S.PARTIALLY_FILLED)  # 4 of 10 filled
    with pytest.raises(Overfill, match="4 filled \\+ 7 > 10 ordered"):
        apply(before, OrderEvent.fill(2, broker_fill_id="x", quantity=D(7), price=D(1)))
    assert before.filled_quantity == D(4)


def test_a_fill_after_the_cancel_ack_wins() -> None:
    # Given a cancel acknowledged before the fill report that raced it arrived
    cancelled = order_in(S.CANCELLED, filled=D(4))
    # When the late fill completes the order, it is filled
    done = apply(cancelled, OrderEvent.fill(2, broker_fill_id="late", quantity=D(6), price=D(100)))
    assert done.status is S.FILLED and done.filled_quantity == QTY
    # When it does not, the fill is still booked and the order stays cancelled
    part = apply(cancelled, OrderEvent.fill(2, broker_fill_id="late", quantity=D(1), price=D(100)))
    assert part.status is S.CANCELLED and part.filled_quantity == D(5)


def test_a_partial_fill_while_cancelling_is_remembered_for_a_rejected_cancel() -> None:
    order = apply(order_in(S.ACCEPTED), OrderEvent.cancel_requested(2))
    assert (order.status, order.previous_status) == (S.PENDING_CANCEL, S.ACCEPTED)
    order = apply(order, OrderEvent.fill(3, broker_fill_id="f", quantity=D(3), price=D(100)))
    assert (order.status, order.previous_status) == (S.PENDING_CANCEL, S.PARTIALLY_FILLED)
    rejected = apply(order, OrderEvent.cancel_rejected(4, reason="not now"))
    assert (rejected.status, rejected.previous_status, rejected.reason) == (S.PARTIALLY_FILLED, None, "not now")
    cancelled = apply(order, OrderEvent.cancelled(4))
    assert cancelled.status is S.CANCELLED and cancelled.filled_quantity == D(3)


def test_a_fill_that_completes_the_order_while_cancelling_fills_it_and_the_late_refusal_is_tolerated() -> None:
    order = apply(order_in(S.ACCEPTED), OrderEvent.cancel_requested(2))
    order = apply(order, OrderEvent.fill(3, broker_fill_id="f", quantity=QTY, price=D(100)))
    assert order.status is S.FILLED
    assert apply(order, OrderEvent.cancel_rejected(4, reason="too late: filled")).status is S.FILLED


def test_replace_takes_effect_only_when_confirmed() -> None:
    order = apply(order_in(S.PARTIALLY_FILLED), OrderEvent.replace_requested(
        2, quantity=D(8), limit_price=D("99.5"), stop_price=None))
    assert order.status is S.PENDING_REPLACE and order.quantity == QTY and order.limit_price == D(100)
    done = apply(order, OrderEvent.replaced(3, quantity=D(8), limit_price=D("99.5"), stop_price=None,
                                            broker_order_id="B-2"))
    assert (done.status, done.quantity, done.limit_price, done.broker_order_id) == (
        S.PARTIALLY_FILLED, D(8), D("99.5"), "B-2")
    refused = apply(order, OrderEvent.replace_rejected(3, reason="no"))
    assert (refused.status, refused.quantity) == (S.PARTIALLY_FILLED, QTY)


def test_replace_down_to_the_filled_quantity_fills_and_below_it_is_an_overfill() -> None:
    pending = order_in(S.PENDING_REPLACE, filled=D(4), previous=S.PARTIALLY_FILLED)
    assert apply(pending, OrderEvent.replaced(2, quantity=D(4), limit_price=D(100), stop_price=None)).status is S.FILLED
    with pytest.raises(Overfill):
        apply(pending, OrderEvent.replaced(2, quantity=D(3), limit_price=D(100), stop_price=None))
    with pytest.raises(Overfill):
        apply(order_in(S.PARTIALLY_FILLED),
              OrderEvent.replace_requested(2, quantity=D(3), limit_price=D(100), stop_price=None))


def test_unknown_outcome_remembers_where_it_came_from_and_resolves_by_the_brokers_answer() -> None:
    order = apply(order_in(S.SUBMITTED), OrderEvent.outcome_unknown(2, reason="timeout"))
    assert (order.status, order.previous_status, order.reason) == (S.UNKNOWN, S.SUBMITTED, "timeout")
    accepted = apply(order, OrderEvent.accepted(3, broker_order_id="B-7"))
    assert (accepted.status, accepted.broker_order_id) == (S.ACCEPTED, "B-7")
    # Fills booked while unknown: the broker's ack makes it rest partially filled.
    filled = apply(order, OrderEvent.fill(3, broker_fill_id="f", quantity=D(2), price=D(100)))
    assert apply(filled, OrderEvent.accepted(4, broker_order_id="B-7")).status is S.PARTIALLY_FILLED


def test_absent_at_broker_rejects_a_sent_order_but_leaves_an_unsent_one_to_be_sent() -> None:
    absent = apply(order_in(S.UNKNOWN), OrderEvent.resolved_absent(2, reason="lookup found nothing"))
    assert absent.status is S.REJECTED and absent.reason.startswith(ABSENT_REASON)
    assert apply(order_in(S.SUBMITTED), OrderEvent.resolved_absent(2)).reason == ABSENT_REASON
    unsent = apply(BASE, OrderEvent.resolved_absent(2))
    assert unsent.status is S.PENDING_SUBMIT and unsent.client_order_id == CID


def test_fold_equals_applying_one_by_one() -> None:
    events = [
        created(),
        OrderEvent.submit_sent(2),
        OrderEvent.accepted(3, broker_order_id="B"),
        OrderEvent.fill(4, broker_fill_id="1", quantity=D("2.5"), price=D("100.25")),
        OrderEvent.cancel_requested(5),
        OrderEvent.cancel_rejected(6, reason="busy"),
        OrderEvent.fill(7, broker_fill_id="2", quantity=D("7.5"), price=D("100.75")),
    ]
    state = None
    for event in events:
        state = apply(state, event)
    assert fold(events) == state
    assert (state.status, state.version, state.updated_ns) == (S.FILLED, len(events), 7)
    with pytest.raises(ValueError):
        fold([])


def test_event_data_is_json_safe_and_refuses_floats() -> None:
    event = OrderEvent(K.FILL, 1, {"quantity": D("1.50"), "price": D("100"), "broker_fill_id": "x"})
    assert event.data == {"quantity": "1.5", "price": "100", "broker_fill_id": "x"}
    assert OrderEvent("accepted", 1, {}).kind is K.ACCEPTED  # kinds may arrive as strings
    with pytest.raises(TypeError):
        OrderEvent(K.FILL, 1, {"quantity": 1.5})
    with pytest.raises(TypeError):
        OrderEvent.fill(1, broker_fill_id="x", quantity=D(1), price=0.1)  # type: ignore[arg-type]


def test_legal_events() -> None:
    assert legal_events(None) == {K.CREATED}
    assert legal_events(S.REJECTED) == frozenset()
    assert K.FILL in legal_events(S.CANCELLED)
