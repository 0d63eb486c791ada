"""Pure decisions of the account service: what a broker's answer means for our order.

No I/O here. The main loop asks the broker and the store; these functions say which order events
bring our row to the broker's truth, and what to do with an order whose fate is unresolved.
Fills are never derived from an order's status: they come only from the fills ledger (unique
broker fill ids), so nothing here can count a fill twice.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from schema.enums import OrderStatus
from schema.order_fsm import OrderEvent, OrderEventKind, OrderState

# Local statuses from which the broker's acknowledgement has not been recorded yet.
NOT_YET_ACKED = frozenset({OrderStatus.PENDING_SUBMIT, OrderStatus.SUBMITTED, OrderStatus.UNKNOWN})
WORKING = frozenset(
    {OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED, OrderStatus.PENDING_CANCEL, OrderStatus.PENDING_REPLACE}
)

def adoption_events(order: OrderState, broker_status: OrderStatus, *, broker_order_id: str | None,
                    reason: str | None, ts_ns: int) -> list[OrderEvent]:
    """Events that move ``order`` to the status the broker reports (fills excluded)."""
    local = OrderStatus(order.status)
    events: list[OrderEvent] = []
    if broker_status is OrderStatus.REJECTED:
        if local in NOT_YET_ACKED:
            events.append(OrderEvent(OrderEventKind.REJECTED, ts_ns, {"reason": reason or "rejected by broker"}))
        return events
    if local in NOT_YET_ACKED:
        events.append(OrderEvent(OrderEventKind.ACCEPTED, ts_ns, {"broker_order_id": broker_order_id}))
        local = OrderStatus.ACCEPTED
    if broker_status is OrderStatus.CANCELLED and local in WORKING:
        events.append(OrderEvent(OrderEventKind.CANCELLED, ts_ns, {"reason": reason or "cancelled at broker"}))
    elif broker_status is OrderStatus.EXPIRED and local in WORKING:
        events.append(OrderEvent(OrderEventKind.EXPIRED, ts_ns, {"reason": reason or "expired at broker"}))
    return events


class Resolution(StrEnum):
    ADOPT = "adopt"          # the broker has it: take its state
    SEND = "send"            # provably never reached the broker: send it now, same client order id
    ABSENT = "absent"        # sent (or maybe sent) but the broker has no such order: it never took it
    OPERATOR = "operator"    # cannot be decided safely by a program


@dataclass(frozen=True)
class RecoveryStep:
    resolution: Resolution
    why: str


def resolve(order: OrderState, *, found: bool) -> RecoveryStep:
    """What to do with an unresolved order once the broker has answered a lookup by client id."""
    status = OrderStatus(order.status)
    if found:
        return RecoveryStep(Resolution.ADOPT, "broker knows the client order id")
    if status is OrderStatus.PENDING_SUBMIT:
        return RecoveryStep(Resolution.SEND, "written ahead but never reached the broker")
    if status in (OrderStatus.SUBMITTED, OrderStatus.UNKNOWN):
        return RecoveryStep(Resolution.ABSENT, "the broker answered and has no such client order id")
    # A cancel or replace in flight on an order the broker no longer knows at all: something
    # outside the engine happened to it. Guessing could double a position; ask a person.
    return RecoveryStep(Resolution.OPERATOR, f"order in {status} is unknown to the broker")


def signed_remaining(order: OrderState) -> Decimal:
    sign = 1 if str(order.side) == "buy" else -1
    return sign * (order.quantity - order.filled_quantity)


def adds_risk(position: Decimal, open_orders: Iterable[OrderState], new_order: OrderState) -> bool:
    """Would ``new_order`` make the worst-case exposure larger?

    Exposure counts the position plus every open order as if it fills in full, ``unknown`` ones
    included (an unknown order may well be live at the broker). An order that only shrinks that
    number — a reduction or a close — is always allowed.
    """
    exposure = position + sum((signed_remaining(o) for o in open_orders), Decimal(0))
    return abs(exposure + signed_remaining(new_order)) > abs(exposure)
