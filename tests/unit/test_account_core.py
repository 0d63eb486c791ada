from __future__ import annotations

from decimal import Decimal

import pytest

from schema.enums import OrderStatus
from schema.order_fsm import OrderEventKind
from services.account.core import Resolution, adoption_events, resolve


class FakeOrder:
    def __init__(self, status: OrderStatus) -> None:
        self.status = status
        self.client_order_id = "s.1.1"
        self.quantity = Decimal(1)


@pytest.mark.parametrize("local, broker, kinds", [
    (OrderStatus.PENDING_SUBMIT, OrderStatus.ACCEPTED, [OrderEventKind.ACCEPTED]),
    (OrderStatus.UNKNOWN, OrderStatus.FILLED, [OrderEventKind.ACCEPTED]),  # fills come from the ledger
    (OrderStatus.SUBMITTED, OrderStatus.CANCELLED, [OrderEventKind.ACCEPTED, OrderEventKind.CANCELLED]),
    (OrderStatus.UNKNOWN, OrderStatus.REJECTED, [OrderEventKind.REJECTED]),
    (OrderStatus.ACCEPTED, OrderStatus.ACCEPTED, []),
    (OrderStatus.PENDING_CANCEL, OrderStatus.CANCELLED, [OrderEventKind.CANCELLED]),
    (OrderStatus.PARTIALLY_FILLED, OrderStatus.EXPIRED, [OrderEventKind.EXPIRED]),
])
def test_adoption_brings_our_status_to_the_brokers(local, broker, kinds) -> None:
    events = adoption_events(FakeOrder(local), broker, broker_order_id="O1", reason=None, ts_ns=1)
    assert [e.kind for e in events] == kinds


@pytest.mark.parametrize("status, found, resolution", [
    (OrderStatus.PENDING_SUBMIT, True, Resolution.ADOPT),
    (OrderStatus.PENDING_SUBMIT, False, Resolution.SEND),
    (OrderStatus.SUBMITTED, False, Resolution.ABSENT),
    (OrderStatus.UNKNOWN, False, Resolution.ABSENT),
    (OrderStatus.UNKNOWN, True, Resolution.ADOPT),
    (OrderStatus.PENDING_CANCEL, False, Resolution.OPERATOR),
])
def test_unresolved_orders_are_settled_only_by_what_the_broker_said(status, found, resolution) -> None:
    assert resolve(FakeOrder(status), found=found).resolution is resolution


class Open:
    def __init__(self, side: str, quantity: str, filled: str = "0") -> None:
        self.side, self.quantity, self.filled_quantity = side, Decimal(quantity), Decimal(filled)


@pytest.mark.parametrize("position, working, new, adds", [
    ("0", [("buy", "1")], ("buy", "1"), True),        # unknown buy 1 may be live: another buy adds
    ("0", [("buy", "1")], ("sell", "1"), False),      # selling shrinks the worst case
    ("2", [], ("sell", "2"), False),                  # closing is always allowed
    ("2", [], ("sell", "5"), True),                   # reversing beyond flat adds risk
    ("-1", [("sell", "2", "1")], ("buy", "1"), False),  # only the unfilled part counts
])
def test_an_order_adds_risk_only_if_worst_case_exposure_grows(position, working, new, adds) -> None:
    from services.account.core import adds_risk

    orders = [Open(*w) for w in working]
    assert adds_risk(Decimal(position), orders, Open(*new)) is adds
