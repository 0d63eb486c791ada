"""Contract rolls: what the next step of a roll is, decided from durable facts only.

A roll moves a session's position from one futures contract to the next in four phases, each
committed to the ``rolls`` row before the next begins (``schema.store.ROLL_PHASE_ORDER``):

``cancel_working``  cancel the session's working orders on the old contract, wait until none is open;
``flatten_old``     close the old contract's position with one market order (leg 1);
``open_new``        open the same position on the new contract with one market order (leg 2);
``switch_data``     have the market-data process stream the new contract; then ``done`` — the
                    session's contract becomes the new one and it trades again, in one transaction.

Each leg's order has a client order id derived from the roll's id (``roll_signal``), never from the
clock, so a leg asked for twice — by a roll resumed after a crash — is the same single order. The
size of leg 2 is read from leg 1's *fills*, so a roll resumed after leg 1 opens exactly what was
closed, whatever the strategy's state says.

``next_step`` is pure: the strategy process gathers the roll row, the positions and the orders from
the database (the account process's truth) and executes what it returns, over and over, until the
roll is done or a step says the operator must look.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import IntEnum

from brokers.instruments import canonical_root, front_contract, instrument, is_contract, next_contract, roll_date
from schema.enums import OrderStatus, RollPhase, Side
from schema.order_fsm import OrderState
from schema.records import RollInfo

ROLL_SIGNAL_BASE = 1_000_000_000
"""Signals from here up are roll legs; a strategy's own signals count up from 1 and never get here."""
ROLL_SIGNAL_SLOTS = 10


class Leg(IntEnum):
    FLATTEN_OLD = 1
    OPEN_NEW = 2


def roll_signal(roll_id: int, leg: Leg) -> int:
    return ROLL_SIGNAL_BASE + roll_id * ROLL_SIGNAL_SLOTS + int(leg)


def is_roll_signal(signal: int) -> bool:
    return signal >= ROLL_SIGNAL_BASE


# ---------------------------------------------------------------------------- when to roll


def roll_target(contract: str, day: date) -> str | None:
    """The contract a session trading ``contract`` should roll to on ``day``, or None.

    A perpetual never rolls; a contract rolls once its roll date (``roll_days_before_expiry``
    before expiry, per instrument) has come.
    """
    if not is_contract(contract) or day < roll_date(contract):
        return None  # (a session already on a later contract than today's front one stays there)
    front = front_contract(canonical_root(contract), day)
    return None if front == contract else front


def check_roll_target(contract: str, to_contract: str | None) -> str:
    """Validate an operator's roll target (default: the next listed contract). Raises ValueError."""
    if not is_contract(contract):
        raise ValueError(f"{contract} is not a dated futures contract: nothing to roll")
    target = to_contract or next_contract(contract)
    root = canonical_root(contract)
    if not is_contract(target) or canonical_root(target) != root:
        raise ValueError(f"cannot roll {contract} to {target}: not a listed contract of {root} "
                         f"(listed months: {instrument(root).months})")
    if target == contract:
        raise ValueError(f"the session already trades {contract}")
    return target


# ---------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class CancelOrders:
    client_order_ids: tuple[str, ...]


@dataclass(frozen=True)
class SubmitLeg:
    leg: Leg
    signal: int
    symbol: str
    side: Side
    quantity: Decimal


@dataclass(frozen=True)
class SwitchData:
    symbol: str


@dataclass(frozen=True)
class Advance:
    to: RollPhase


@dataclass(frozen=True)
class Wait:
    why: str


@dataclass(frozen=True)
class Stuck:
    """Something a program must not guess about: the operator decides."""

    why: str


Step = CancelOrders | SubmitLeg | SwitchData | Advance | Wait | Stuck

OPEN_STATUSES_NOT_CANCELLABLE = frozenset({OrderStatus.PENDING_SUBMIT, OrderStatus.SUBMITTED, OrderStatus.UNKNOWN})


@dataclass(frozen=True)
class RollFacts:
    """Everything ``next_step`` looks at, read from the database in one go."""

    roll: RollInfo
    old_position: Decimal
    new_position: Decimal
    open_orders: tuple[OrderState, ...]
    flatten_order: OrderState | None
    open_order: OrderState | None
    data_switched: bool = False


def next_step(facts: RollFacts) -> Step:
    roll = facts.roll
    phase = roll.phase
    if phase is RollPhase.CANCEL_WORKING:
        working = [o for o in facts.open_orders if o.symbol == roll.from_contract]
        cancellable = tuple(o.client_order_id for o in working
                            if OrderStatus(o.status) not in OPEN_STATUSES_NOT_CANCELLABLE
                            and OrderStatus(o.status) is not OrderStatus.PENDING_CANCEL)
        if cancellable:
            return CancelOrders(cancellable)
        if working:
            return Wait(f"{len(working)} order(s) on {roll.from_contract} still open")
        return Advance(RollPhase.FLATTEN_OLD)
    if phase is RollPhase.FLATTEN_OLD:
        return _leg(facts, Leg.FLATTEN_OLD, roll.from_contract, facts.old_position, Decimal(0),
                    RollPhase.OPEN_NEW)
    if phase is RollPhase.OPEN_NEW:
        closed = facts.flatten_order
        if closed is None or closed.filled_quantity == 0:
            # Nothing was held on the old contract: nothing to open on the new one.
            return _leg(facts, Leg.OPEN_NEW, roll.to_contract, Decimal(0), Decimal(0), RollPhase.SWITCH_DATA)
        carried = closed.filled_quantity * -Side(closed.side).sign
        return _leg(facts, Leg.OPEN_NEW, roll.to_contract, -carried + facts.new_position, carried,
                    RollPhase.SWITCH_DATA)
    if phase is RollPhase.SWITCH_DATA:
        return Advance(RollPhase.DONE) if facts.data_switched else SwitchData(roll.to_contract)
    return Stuck(f"roll {roll.id} is {phase}: nothing to do")


def _leg(facts: RollFacts, leg: Leg, symbol: str, to_close: Decimal, goal: Decimal, then: RollPhase) -> Step:
    """One market order that takes ``symbol``'s position to ``goal``. ``to_close`` is the signed
    quantity the order must remove (position − goal, before any leg order)."""
    order = facts.flatten_order if leg is Leg.FLATTEN_OLD else facts.open_order
    position = facts.old_position if leg is Leg.FLATTEN_OLD else facts.new_position
    if order is None:
        if to_close == 0:
            return Advance(then)
        side = Side.SELL if to_close > 0 else Side.BUY
        return SubmitLeg(leg, roll_signal(facts.roll.id, leg), symbol, side, abs(to_close))
    status = OrderStatus(order.status)
    if not status.is_terminal:
        return Wait(f"{order.client_order_id} is {status}")
    if order.filled_quantity != order.quantity:
        return Stuck(f"roll {facts.roll.id}: {leg.name.lower()} order {order.client_order_id} ended {status} with "
                     f"{order.filled_quantity} of {order.quantity} filled; {symbol} position is {position}")
    if position != goal:
        return Wait(f"{symbol} position is {position}, waiting for {goal} (fill not booked yet)")
    return Advance(then)


def roll_orders(roll_id: int, orders: Iterable[OrderState]) -> dict[Leg, OrderState]:
    """The leg orders of roll ``roll_id`` among ``orders``."""
    wanted = {roll_signal(roll_id, leg): leg for leg in Leg}
    return {wanted[o.signal]: o for o in orders if o.signal in wanted}
