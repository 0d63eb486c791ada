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
