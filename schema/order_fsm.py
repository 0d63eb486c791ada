"""The order state machine: one transition table, and pure functions that apply events to orders.

An order is created by its first event (``created``) and changed only by applying later events.
``TRANSITIONS`` decides, for every (status, event kind), the next status; a pair that is not in the
table raises ``IllegalTransition`` and leaves the order untouched, so an event is recorded only after
the table accepted it. No I/O, no clock: time arrives in each event's ``ts_ns``.

``OrderState`` is everything an ``orders`` row holds, and the row must always equal ``fold`` of the
order's events (``Store.verify_orders`` checks this). Amounts are ``Decimal``; in an event's
``data`` they are strings, so events are JSON as stored.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from enum import Enum, StrEnum
from types import MappingProxyType
from typing import Any

from schema.decimals import ZERO, canonical, money_str, optional_money, quantize_money, to_money
from schema.enums import OrderStatus, OrderType, Side, TimeInForce
from schema.errors import IllegalTransition, Overfill

__all__ = [
    "ABSENT_REASON",
    "IllegalTransition",
    "OrderEvent",
    "OrderEventKind",
    "OrderState",
    "Overfill",
    "TRANSITIONS",
    "apply",
    "fold",
    "legal_events",
]

ABSENT_REASON = "absent at broker"
"""The reason recorded when the broker answered and has no such order."""


class OrderEventKind(StrEnum):
    """What happened to an order (past tense: these are facts, not requests)."""

    CREATED = "created"
    SUBMIT_SENT = "submit_sent"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FILL = "fill"
    CANCEL_REQUESTED = "cancel_requested"
    CANCEL_REJECTED = "cancel_rejected"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REPLACE_REQUESTED = "replace_requested"
    REPLACED = "replaced"
    REPLACE_REJECTED = "replace_rejected"
    OUTCOME_UNKNOWN = "outcome_unknown"
    RESOLVED_ABSENT = "resolved_absent"


class _Rule(Enum):
    """Targets that depend on the order's quantities or history, not only on (status, kind)."""

    BY_FILL = "partially_filled, or filled once the cumulative quantity reaches the order's"
    FILL_KEEPS_STATUS = "filled once complete; until then the status stays (a cancel/replace is in flight, or it is over)"
    RESTING = "working at the broker: accepted, or partially_filled if anything has filled"
    PREVIOUS = "back to the status held before the cancel/replace request"
    STAY = "status unchanged (a late or redundant report that the table tolerates)"


Target = OrderStatus | _Rule

S = OrderStatus
K = OrderEventKind

# The table. ``None`` as the status means "no order yet". Every odd-but-real edge says why.
_TABLE: dict[tuple[OrderStatus | None, OrderEventKind], Target] = {
    (None, K.CREATED): S.PENDING_SUBMIT,
    # ---- submission
    (S.PENDING_SUBMIT, K.SUBMIT_SENT): S.SUBMITTED,
    (S.SUBMITTED, K.ACCEPTED): _Rule.RESTING,
    # The broker's acknowledgement (streamed, or found by a lookup after a crash) can arrive before
    # we recorded that the send returned: the ack proves it was sent.
    (S.PENDING_SUBMIT, K.ACCEPTED): _Rule.RESTING,
    # An unknown outcome is resolved by asking the broker; it has the order. If fills were booked
    # while unknown, the order rests partially filled.
    (S.UNKNOWN, K.ACCEPTED): _Rule.RESTING,
    # Acks and fills travel on separate venue streams: the first fill can be booked before the ack.
    (S.PARTIALLY_FILLED, K.ACCEPTED): _Rule.STAY,
    # A marketable order can fill completely before its ack is recorded.
    (S.FILLED, K.ACCEPTED): _Rule.STAY,
    (S.PENDING_SUBMIT, K.REJECTED): S.REJECTED,
    (S.SUBMITTED, K.REJECTED): S.REJECTED,
    (S.UNKNOWN, K.REJECTED): S.REJECTED,
    # ---- fills (booked from the broker's fills ledger; unique broker fill ids make them once-only)
    (S.ACCEPTED, K.FILL): _Rule.BY_FILL,
    (S.PARTIALLY_FILLED, K.FILL): _Rule.BY_FILL,
    (S.SUBMITTED, K.FILL): _Rule.BY_FILL,  # filled before its ack was recorded
    # Sent, then a crash before ``submit_sent`` was written: the fills poll finds the fill first.
    (S.PENDING_SUBMIT, K.FILL): _Rule.BY_FILL,
    (S.UNKNOWN, K.FILL): _Rule.BY_FILL,  # a fill resolves an unknown outcome: the order exists
    # A fill while a cancel/replace is in flight: the request is still pending, so the status stays
    # and the status to return to (if the request is rejected) becomes partially_filled.
    (S.PENDING_CANCEL, K.FILL): _Rule.FILL_KEEPS_STATUS,
    (S.PENDING_REPLACE, K.FILL): _Rule.FILL_KEEPS_STATUS,
    # The real race: the venue filled (part of) the order just before it processed our cancel, and
    # the fill report arrives after the cancel acknowledgement. The fill wins: it is booked, and it
    # makes the order filled if it completes it; a partial late fill leaves it cancelled/expired.
    (S.CANCELLED, K.FILL): _Rule.FILL_KEEPS_STATUS,
    (S.EXPIRED, K.FILL): _Rule.FILL_KEEPS_STATUS,  # same race with end-of-day expiry
    # ---- cancel
    (S.SUBMITTED, K.CANCEL_REQUESTED): S.PENDING_CANCEL,
    (S.ACCEPTED, K.CANCEL_REQUESTED): S.PENDING_CANCEL,
    (S.PARTIALLY_FILLED, K.CANCEL_REQUESTED): S.PENDING_CANCEL,
    (S.PENDING_CANCEL, K.CANCEL_REJECTED): _Rule.PREVIOUS,
    # "Too late to cancel": the order filled completely while our cancel was on its way, and the
    # fill was booked before the broker's refusal arrived.
    (S.FILLED, K.CANCEL_REJECTED): _Rule.STAY,
    (S.PENDING_CANCEL, K.CANCELLED): S.CANCELLED,
    # Unsolicited cancels: the venue or a risk desk cancels a working order; IOC remainders.
    (S.SUBMITTED, K.CANCELLED): S.CANCELLED,
    (S.ACCEPTED, K.CANCELLED): S.CANCELLED,
    (S.PARTIALLY_FILLED, K.CANCELLED): S.CANCELLED,
    (S.PENDING_REPLACE, K.CANCELLED): S.CANCELLED,
    (S.UNKNOWN, K.CANCELLED): S.CANCELLED,  # resolution found it cancelled
    # ---- expiry (time in force ran out)
    (S.SUBMITTED, K.EXPIRED): S.EXPIRED,
    (S.ACCEPTED, K.EXPIRED): S.EXPIRED,
    (S.PARTIALLY_FILLED, K.EXPIRED): S.EXPIRED,
    (S.PENDING_CANCEL, K.EXPIRED): S.EXPIRED,
    (S.PENDING_REPLACE, K.EXPIRED): S.EXPIRED,
    (S.UNKNOWN, K.EXPIRED): S.EXPIRED,
    # ---- replace (new terms take effect only when the broker confirms them)
    (S.ACCEPTED, K.REPLACE_REQUESTED): S.PENDING_REPLACE,
    (S.PARTIALLY_FILLED, K.REPLACE_REQUESTED): S.PENDING_REPLACE,
    (S.PENDING_REPLACE, K.REPLACED): _Rule.RESTING,
    (S.PENDING_REPLACE, K.REPLACE_REJECTED): _Rule.PREVIOUS,
    (S.FILLED, K.REPLACE_REJECTED): _Rule.STAY,  # "too late to modify": it filled first
    # ---- a command whose outcome is not known (timeout after send, connection lost mid-call)
    (S.PENDING_SUBMIT, K.OUTCOME_UNKNOWN): S.UNKNOWN,
    (S.SUBMITTED, K.OUTCOME_UNKNOWN): S.UNKNOWN,
    (S.PENDING_CANCEL, K.OUTCOME_UNKNOWN): S.UNKNOWN,
    (S.PENDING_REPLACE, K.OUTCOME_UNKNOWN): S.UNKNOWN,
    # ---- the broker answered a lookup by client order id: no such order
    (S.SUBMITTED, K.RESOLVED_ABSENT): S.REJECTED,
    (S.UNKNOWN, K.RESOLVED_ABSENT): S.REJECTED,
    # Written ahead but never sent (a crash between commit and send): it stays pending_submit and
    # may be sent again under the same client order id, which the broker deduplicates.
    (S.PENDING_SUBMIT, K.RESOLVED_ABSENT): _Rule.STAY,
}
del S, K

TRANSITIONS: Mapping[tuple[OrderStatus | None, OrderEventKind], Target] = MappingProxyType(_TABLE)

# Entering these remembers where the order came from, in ``previous_status``.
_REMEMBERS_PREVIOUS = frozenset({OrderStatus.PENDING_CANCEL, OrderStatus.PENDING_REPLACE, OrderStatus.UNKNOWN})
_IN_FLIGHT = frozenset({OrderStatus.PENDING_CANCEL, OrderStatus.PENDING_REPLACE})
_REASONED = frozenset(
    {
        OrderEventKind.REJECTED,
        OrderEventKind.CANCEL_REJECTED,
        OrderEventKind.CANCELLED,
        OrderEventKind.EXPIRED,
        OrderEventKind.REPLACE_REJECTED,
        OrderEventKind.OUTCOME_UNKNOWN,
    }
)


def legal_events(status: OrderStatus | None) -> frozenset[OrderEventKind]:
    """The event kinds the table accepts from ``status`` (``None``: no order yet)."""
    return frozenset(kind for (source, kind) in _TABLE if source == status)


# ---------------------------------------------------------------------------------------- values


def _jsonable(value: Any) -> Any:
    """Event data as it will be stored: Decimals as strings, enums as their values, no floats."""
    if value is None or isinstance(value, (bool, int, str)):
        return value.value if isinstance(value, Enum) else value
    if isinstance(value, Decimal):
        return money_str(value)
    if isinstance(value, Enum):
        return _jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    raise TypeError(f"order event data must be JSON-safe without floats, got {type(value).__name__} ({value!r})")


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """One fact about an order. ``data`` is normalised to JSON-safe values on construction.

    Build events with the named constructors (``OrderEvent.fill(...)``), so each kind always
    carries the same keys.
    """

    kind: OrderEventKind
    ts_ns: int
    data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", OrderEventKind(self.kind))
        object.__setattr__(self, "data", _jsonable(dict(self.data)))
        if not isinstance(self.ts_ns, int) or isinstance(self.ts_ns, bool):
            raise TypeError(f"ts_ns must be int nanoseconds, got {self.ts_ns!r}")

    # -- named constructors, one per kind

    @classmethod
    def created(
        cls,
        ts_ns: int,
        *,
        client_order_id: str,
        session: str,
        signal: int,
        symbol: str,
        side: Side | str,
        order_type: OrderType | str,
        quantity: Decimal,
        limit_price: Decimal | None = None,
        stop_price: Decimal | None = None,
        time_in_force: TimeInForce | str = TimeInForce.DAY,
        bracket_group: str | None = None,
        epoch: int = 0,
    ) -> OrderEvent:
        return cls(
            OrderEventKind.CREATED,
            ts_ns,
            {
                "client_order_id": client_order_id,
                "session": session,
                "signal": signal,
                "symbol": symbol,
                "side": Side(side),
                "order_type": OrderType(order_type),
                "quantity": quantity,
                "limit_price": limit_price,
                "stop_price": stop_price,
                "time_in_force": TimeInForce(time_in_force),
                "bracket_group": bracket_group,
                "epoch": epoch,
            },
        )

    @classmethod
    def submit_sent(cls, ts_ns: int, *, broker_order_id: str | None = None) -> OrderEvent:
        return cls(OrderEventKind.SUBMIT_SENT, ts_ns, _some(broker_order_id=broker_order_id))

    @classmethod
    def accepted(cls, ts_ns: int, *, broker_order_id: str | None) -> OrderEvent:
        return cls(OrderEventKind.ACCEPTED, ts_ns, {"broker_order_id": broker_order_id})

    @classmethod
    def rejected(cls, ts_ns: int, *, reason: str) -> OrderEvent:
        return cls(OrderEventKind.REJECTED, ts_ns, {"reason": reason})

    @classmethod
    def fill(cls, ts_ns: int, *, broker_fill_id: str, quantity: Decimal, price: Decimal) -> OrderEvent:
        return cls(OrderEventKind.FILL, ts_ns, {"broker_fill_id": broker_fill_id, "quantity": quantity, "price": price})

    @classmethod
    def cancel_requested(cls, ts_ns: int) -> OrderEvent:
        return cls(OrderEventKind.CANCEL_REQUESTED, ts_ns, {})

    @classmethod
    def cancel_rejected(cls, ts_ns: int, *, reason: str) -> OrderEvent:
        return cls(OrderEventKind.CANCEL_REJECTED, ts_ns, {"reason": reason})

    @classmethod
    def cancelled(cls, ts_ns: int, *, reason: str | None = None) -> OrderEvent:
        return cls(OrderEventKind.CANCELLED, ts_ns, _some(reason=reason))

    @classmethod
    def expired(cls, ts_ns: int, *, reason: str | None = None) -> OrderEvent:
        return cls(OrderEventKind.EXPIRED, ts_ns, _some(reason=reason))

    @classmethod
    def replace_requested(
        cls, ts_ns: int, *, quantity: Decimal, limit_price: Decimal | None, stop_price: Decimal | None
    ) -> OrderEvent:
        return cls(
            OrderEventKind.REPLACE_REQUESTED,
            ts_ns,
            {"quantity": quantity, "limit_price": limit_price, "stop_price": stop_price},
        )

    @classmethod
    def replaced(
        cls,
        ts_ns: int,
        *,
        quantity: Decimal,
        limit_price: Decimal | None,
        stop_price: Decimal | None,
        broker_order_id: str | None = None,
    ) -> OrderEvent:
        """The broker confirmed new terms; they are carried here because they are what is now true."""
        data: dict[str, Any] = {"quantity": quantity, "limit_price": limit_price, "stop_price": stop_price}
        data.update(_some(broker_order_id=broker_order_id))
        return cls(OrderEventKind.REPLACED, ts_ns, data)

    @classmethod
    def replace_rejected(cls, ts_ns: int, *, reason: str) -> OrderEvent:
        return cls(OrderEventKind.REPLACE_REJECTED, ts_ns, {"reason": reason})

    @classmethod
    def outcome_unknown(cls, ts_ns: int, *, reason: str) -> OrderEvent:
        return cls(OrderEventKind.OUTCOME_UNKNOWN, ts_ns, {"reason": reason})

    @classmethod
    def resolved_absent(cls, ts_ns: int, *, reason: str | None = None) -> OrderEvent:
        return cls(OrderEventKind.RESOLVED_ABSENT, ts_ns, _some(reason=reason))


def _some(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


@dataclass(frozen=True, slots=True)
class OrderState:
    """An order as its row holds it; always the fold of its events. ``version`` counts events."""

    client_order_id: str
    session: str
    signal: int
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    limit_price: Decimal | None
    stop_price: Decimal | None
    time_in_force: TimeInForce
    status: OrderStatus
    previous_status: OrderStatus | None
    broker_order_id: str | None
    filled_quantity: Decimal
    average_price: Decimal | None
    reason: str | None
    version: int
    bracket_group: str | None = None
    epoch: int = 0
    created_ns: int = 0
    updated_ns: int = 0

    @property
    def remaining_quantity(self) -> Decimal:
        return self.quantity - self.filled_quantity

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    @property
    def is_open(self) -> bool:
        return not self.status.is_terminal


# ---------------------------------------------------------------------------------------- apply


def apply(order_state: OrderState | None, event: OrderEvent) -> OrderState:
    """The order after ``event``; ``order_state`` is ``None`` only for the ``created`` event.

    Raises ``IllegalTransition`` if the table has no entry for (status, kind), and ``Overfill`` if
    a fill or replace would leave more filled than ordered. Either way nothing has changed.
    """
    status = None if order_state is None else order_state.status
    subject = event.data.get("client_order_id") if order_state is None else order_state.client_order_id
    target = _TABLE.get((status, event.kind))
    if target is None:
        raise IllegalTransition(status, event.kind, subject)
    if order_state is None:
        return _create(event)
    return _advance(order_state, event, target)


def fold(events: Iterable[OrderEvent]) -> OrderState:
    """The order built from all of its events, in order."""
    state: OrderState | None = None
    for event in events:
        state = apply(state, event)
    if state is None:
        raise ValueError("an order needs at least its created event")
    return state


def _create(event: OrderEvent) -> OrderState:
    data = event.data
    order_type = OrderType(data["order_type"])
    quantity = to_money(data["quantity"])
    limit_price = optional_money(data.get("limit_price"))
    stop_price = optional_money(data.get("stop_price"))
    if quantity <= ZERO:
        raise ValueError(f"order quantity must be positive, got {quantity}")
    _check_prices(order_type, limit_price, stop_price)
    return OrderState(
        client_order_id=str(data["client_order_id"]),
        session=str(data["session"]),
        signal=int(data["signal"]),
        symbol=str(data["symbol"]),
        side=Side(data["side"]),
        order_type=order_type,
        quantity=quantity,
        limit_price=limit_price,
        stop_price=stop_price,
        time_in_force=TimeInForce(data.get("time_in_force") or TimeInForce.DAY),
        status=OrderStatus.PENDING_SUBMIT,
        previous_status=None,
        broker_order_id=None,
        filled_quantity=ZERO,
        average_price=None,
        reason=None,
        version=1,
        bracket_group=data.get("bracket_group"),
        epoch=int(data.get("epoch") or 0),
        created_ns=event.ts_ns,
        updated_ns=event.ts_ns,
    )


def _check_prices(order_type: OrderType, limit_price: Decimal | None, stop_price: Decimal | None) -> None:
    needs_limit = order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT)
    needs_stop = order_type in (OrderType.STOP, OrderType.STOP_LIMIT)
    if needs_limit != (limit_price is not None):
        raise ValueError(f"a {order_type} order {'needs' if needs_limit else 'takes no'} limit price")
    if needs_stop != (stop_price is not None):
        raise ValueError(f"a {order_type} order {'needs' if needs_stop else 'takes no'} stop price")


def _advance(state: OrderState, event: OrderEvent, target: Target) -> OrderState:
    kind = event.kind
    data = event.data
    changes: dict[str, Any] = {}
    filled = state.filled_quantity
    quantity = state.quantity

    if kind is OrderEventKind.FILL:
        fill_quantity = to_money(data["quantity"])
        price = to_money(data["price"])
        if fill_quantity <= ZERO:
            raise ValueError(f"fill quantity must be positive, got {fill_quantity}")
        filled = state.filled_quantity + fill_quantity
        if filled > quantity:
            raise Overfill(state.status, kind, state.client_order_id,
                           f"{state.filled_quantity} filled + {fill_quantity} > {quantity} ordered")
        paid = (state.average_price or ZERO) * state.filled_quantity + price * fill_quantity
        changes["filled_quantity"] = filled = canonical(filled)
        changes["average_price"] = quantize_money(paid / filled)
    elif kind in (OrderEventKind.REPLACE_REQUESTED, OrderEventKind.REPLACED):
        new_quantity = to_money(data["quantity"])
        limit_price = optional_money(data.get("limit_price"))
        stop_price = optional_money(data.get("stop_price"))
        if new_quantity < filled or new_quantity <= ZERO:
            raise Overfill(state.status, kind, state.client_order_id,
                           f"new quantity {new_quantity} is below the {filled} already filled")
        _check_prices(state.order_type, limit_price, stop_price)
        if kind is OrderEventKind.REPLACED:
            quantity = new_quantity
            changes.update(quantity=new_quantity, limit_price=limit_price, stop_price=stop_price)

    status, previous = _resolve(state, kind, target, complete=filled == quantity, filled=filled)

    if kind in _REASONED and data.get("reason"):
        changes["reason"] = str(data["reason"])
    elif kind is OrderEventKind.REJECTED:
        changes["reason"] = "rejected"
    elif kind is OrderEventKind.RESOLVED_ABSENT:
        detail = data.get("reason")
        changes["reason"] = f"{ABSENT_REASON}: {detail}" if detail else ABSENT_REASON
    if data.get("broker_order_id"):
        changes["broker_order_id"] = str(data["broker_order_id"])

    return replace(
        state,
        status=status,
        previous_status=previous,
        version=state.version + 1,
        updated_ns=event.ts_ns,
        **changes,
    )


def _resolve(
    state: OrderState, kind: OrderEventKind, target: Target, *, complete: bool, filled: Decimal
) -> tuple[OrderStatus, OrderStatus | None]:
    """(next status, next previous_status) for a table target."""
    if isinstance(target, OrderStatus):
        return target, (state.status if target in _REMEMBERS_PREVIOUS else None)
    if target is _Rule.BY_FILL:
        return (OrderStatus.FILLED if complete else OrderStatus.PARTIALLY_FILLED), None
    if target is _Rule.FILL_KEEPS_STATUS:
        if complete:
            return OrderStatus.FILLED, None
        if state.status in _IN_FLIGHT:
            return state.status, OrderStatus.PARTIALLY_FILLED
        return state.status, state.previous_status
    if target is _Rule.RESTING:
        if complete:
            return OrderStatus.FILLED, None
        return (OrderStatus.PARTIALLY_FILLED if filled > ZERO else OrderStatus.ACCEPTED), None
    if target is _Rule.PREVIOUS:
        if state.previous_status is None:  # only a corrupted row could get here
            raise IllegalTransition(state.status, kind, state.client_order_id)
        return state.previous_status, None
    return state.status, state.previous_status  # _Rule.STAY
