"""The strategy core: ``decide(state, event) -> (state, instructions)``, with no I/O.

A strategy never reads the clock or a random source: time arrives inside the events. Feeding the
same events in the same order therefore yields the same instructions, byte for byte — live, on a
replayed journal, or on a CSV file.

Events (inputs): ``BarEvent`` (a closed bar; ``live`` is False for catch-up history, which updates
indicators but never trades), ``PositionSnapshot`` (the account's truth at start or after a resync),
``OrderEvent`` (an order of this session changed), ``ContractRolled`` and ``Flatten`` (operator
and roll procedures, see ``services.rolls``). Instructions (outputs, imperative): ``Submit``,
``Cancel``, ``Log``. Each ``Submit`` carries a ``signal`` number from the persisted state; the
account service derives the client order id from (session, signal), so an instruction that is
executed twice still makes one order.

Strategies that adjust a *target position* share ``TargetPosition``: it tracks the position the
strategy has asked for (filled or still working) so an order's size never depends on whether a fill
has been heard of yet — a race that would otherwise make live runs and replays differ.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Protocol

from schema.enums import OrderType, Side

TERMINAL_UNFILLED = frozenset({"cancelled", "rejected", "expired"})
RECENT_ORDERS_KEPT = 64


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True)
class BarEvent:
    symbol: str
    interval: str
    ts_ns: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    live: bool = True


@dataclass(frozen=True)
class PositionSnapshot:
    """Net position plus the signed unfilled quantity of working orders, as the account sees it."""

    position: Decimal
    working: Decimal


@dataclass(frozen=True)
class OrderEvent:
    client_order_id: str
    signal: int
    side: str
    quantity: Decimal
    filled_quantity: Decimal
    status: str


@dataclass(frozen=True)
class ContractRolled:
    """The session's position now sits on ``symbol`` (a contract roll finished). Price history of
    the old contract says little about the new one: strategies restart their indicators, which the
    catch-up that follows refills from the new contract's bars."""

    symbol: str


@dataclass(frozen=True)
class Flatten:
    """An operator asked for a flat position (``tradebus sessions flatten``)."""

    symbol: str
    reason: str


Event = BarEvent | PositionSnapshot | OrderEvent | ContractRolled | Flatten


# ---------------------------------------------------------------------------- instructions


@dataclass(frozen=True)
class Submit:
    signal: int
    symbol: str
    side: Side
    quantity: Decimal
    order_type: OrderType = OrderType.MARKET
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    reason: str = ""


@dataclass(frozen=True)
class Cancel:
    client_order_id: str


@dataclass(frozen=True)
class Log:
    text: str


Instruction = Submit | Cancel | Log


# ---------------------------------------------------------------------------- strategy protocol


class ParamError(ValueError):
    """A strategy parameter is missing, unknown or out of range."""


class Strategy(Protocol):
    name: str

    def initial_state(self, params: Mapping[str, Any]) -> Any: ...

    def decide(self, state: Any, event: Event) -> tuple[Any, tuple[Instruction, ...]]: ...

    def to_json(self, state: Any) -> dict[str, Any]: ...

    def from_json(self, data: Mapping[str, Any]) -> Any: ...


# ---------------------------------------------------------------------------- target position


@dataclass(frozen=True)
class TargetPosition:
    """The position a strategy has asked for, and the next signal number to use."""

    target: Decimal = Decimal(0)
    next_signal: int = 1
    # Orders already taken out of the target after ending unfilled; bounded, so replays of the
    # same terminal update are ignored without the state growing forever.
    settled: tuple[str, ...] = field(default=())

    def move_to(self, desired: Decimal, symbol: str, reason: str) -> tuple["TargetPosition", tuple[Instruction, ...]]:
        delta = desired - self.target
        if delta == 0:
            return self, ()
        side = Side.BUY if delta > 0 else Side.SELL
        order = Submit(signal=self.next_signal, symbol=symbol, side=side, quantity=abs(delta), reason=reason)
        return replace(self, target=desired, next_signal=self.next_signal + 1), (order,)

    def on_snapshot(self, snapshot: PositionSnapshot) -> "TargetPosition":
        return replace(self, target=snapshot.position + snapshot.working)

    def on_order(self, event: OrderEvent) -> "TargetPosition":
        """An order that ended without filling fully no longer moves the position."""
        if event.status not in TERMINAL_UNFILLED or event.client_order_id in self.settled:
            return self
        unfilled = (event.quantity - event.filled_quantity) * Side(event.side).sign
        settled = (self.settled + (event.client_order_id,))[-RECENT_ORDERS_KEPT:]
        return replace(self, target=self.target - unfilled, settled=settled)

    def to_json(self) -> dict[str, Any]:
        return {"target": str(self.target), "next_signal": self.next_signal, "settled": list(self.settled)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TargetPosition":
        return cls(Decimal(data["target"]), int(data["next_signal"]), tuple(data.get("settled", ())))


def int_param(params: Mapping[str, Any], name: str, *, minimum: int = 1) -> int:
    if name not in params:
        raise ParamError(f"missing parameter {name!r}")
    raw = params[name]
    try:
        value = int(str(raw))
    except ValueError:
        raise ParamError(f"parameter {name!r} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ParamError(f"parameter {name!r} must be >= {minimum}, got {value}")
    return value


def decimal_param(params: Mapping[str, Any], name: str, *, positive: bool = True) -> Decimal:
    if name not in params:
        raise ParamError(f"missing parameter {name!r}")
    raw = params[name]
    try:
        value = Decimal(str(raw))
    except ArithmeticError:
        raise ParamError(f"parameter {name!r} must be a number, got {raw!r}") from None
    if not value.is_finite() or (positive and value <= 0):
        raise ParamError(f"parameter {name!r} must be a positive number, got {raw!r}")
    return value


def check_known(params: Mapping[str, Any], known: set[str], strategy: str) -> None:
    unknown = set(params) - known
    if unknown:
        raise ParamError(f"unknown parameter(s) for {strategy}: {sorted(unknown)}; known: {sorted(known)}")
