"""The frozen domain objects the store hands out (orders are ``order_fsm.OrderState``).

They are snapshots: changing the database means calling the store, never mutating these.
Container fields (``params``, ``config``, ``state``...) are plain dicts and lists for the
caller's convenience; treat them as read-only.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from schema.decimals import ZERO
from schema.enums import HeatState, JobStatus, RollPhase, SessionState, Side
from schema.order_fsm import OrderState


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: int
    name: str
    strategy: str
    params: dict[str, Any]
    symbol: str  # canonical root, e.g. "ES"
    contract: str  # the contract traded now, e.g. "ESZ6"
    interval: str
    account: str
    data_source: str
    state: SessionState
    state_reason: str | None
    heat_state: HeatState
    roll_state: RollPhase
    lease_owner: str | None
    lease_epoch: int
    fill_cursor: str | None
    created_ns: int
    updated_ns: int
    version: int


@dataclass(frozen=True, slots=True)
class PositionInfo:
    """A signed net position; ``average_price`` is ``None`` exactly when flat."""

    session: str
    symbol: str
    quantity: Decimal = ZERO
    average_price: Decimal | None = None
    updated_ns: int = 0
    version: int = 0  # 0: never written

    @property
    def is_flat(self) -> bool:
        return self.quantity == ZERO


@dataclass(frozen=True, slots=True)
class FillInfo:
    broker_fill_id: str
    client_order_id: str | None
    session: str
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    ts_ns: int
    recorded_ns: int


@dataclass(frozen=True, slots=True)
class FillResult:
    """What one newly booked fill changed. ``order`` is ``None`` when the order is not ours."""

    fill: FillInfo
    order: OrderState | None
    position: PositionInfo


@dataclass(frozen=True, slots=True)
class StrategySnapshot:
    session: str
    state: dict[str, Any]
    outbox: list[Any]
    version: int
    updated_ns: int


@dataclass(frozen=True, slots=True)
class Lease:
    """A held lease. ``epoch`` is the fencing token: it grows whenever the owner changes."""

    name: str
    owner: str | None
    epoch: int
    expires_ns: int
    taken_from: str | None = None  # the unexpired holder this acquire found dead and replaced

    def held_by(self, owner: str, now_ns: int) -> bool:
        return self.owner == owner and self.expires_ns > now_ns


@dataclass(frozen=True, slots=True)
class BrokerAccount:
    name: str
    broker: str
    config: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One row of the event store."""

    aggregate: str
    aggregate_version: int
    kind: str
    data: dict[str, Any]
    ts_ns: int


@dataclass(frozen=True, slots=True)
class Mismatch:
    """An order whose row differs from the fold of its events (``field == "events"``: the events
    themselves could not be folded; ``folded`` then holds the error)."""

    client_order_id: str
    field: str
    row: Any
    folded: Any


@dataclass(frozen=True, slots=True)
class RollInfo:
    id: int
    session: str
    from_contract: str
    to_contract: str
    phase: RollPhase
    started_ns: int
    updated_ns: int
    version: int

    @property
    def is_done(self) -> bool:
        return self.phase is RollPhase.DONE

    @property
    def is_finished(self) -> bool:
        return self.phase in (RollPhase.DONE, RollPhase.ABORTED)


@dataclass(frozen=True, slots=True)
class Job:
    id: int
    kind: str
    payload: dict[str, Any]
    status: JobStatus
    attempts: int
    max_attempts: int
    run_after_ns: int
    claimed_by: str | None
    claimed_until_ns: int | None
    error: str | None
    result: dict[str, Any] | None
    created_ns: int
    updated_ns: int
    version: int


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """An encrypted broker token. ``ciphertext`` is opaque here; never log it."""

    account: str
    kind: str
    ciphertext: bytes
    expires_ns: int | None
    updated_ns: int
    version: int

    def __repr__(self) -> str:  # keep even the ciphertext out of logs and tracebacks
        return f"TokenRecord(account={self.account!r}, kind={self.kind!r}, expires_ns={self.expires_ns})"


@dataclass(frozen=True, slots=True)
class RiskView:
    """What the account checks before an order goes out, read in one transaction (one snapshot)."""

    session: SessionInfo
    open_orders: tuple[OrderState, ...]
    positions: tuple[PositionInfo, ...]
    roll: RollInfo | None

    def position(self, symbol: str) -> Decimal:
        return next((p.quantity for p in self.positions if p.symbol == symbol), Decimal(0))
