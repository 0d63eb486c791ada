"""The engine's shared vocabulary: every named state and kind, declared once."""
from __future__ import annotations

from enum import StrEnum


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1

    @property
    def opposite(self) -> "Side":
        return Side.SELL if self is Side.BUY else Side.BUY


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"


class TimeInForce(StrEnum):
    DAY = "day"
    GTC = "gtc"
    IOC = "ioc"


class OrderStatus(StrEnum):
    PENDING_SUBMIT = "pending_submit"
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    PENDING_CANCEL = "pending_cancel"
    PENDING_REPLACE = "pending_replace"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"
    UNKNOWN = "unknown"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_ORDER_STATUSES

    @property
    def needs_resolution(self) -> bool:
        """States whose truth must be asked of the broker after a restart."""
        return self in UNRESOLVED_ORDER_STATUSES


TERMINAL_ORDER_STATUSES = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.EXPIRED}
)
UNRESOLVED_ORDER_STATUSES = frozenset(
    {
        OrderStatus.PENDING_SUBMIT,
        OrderStatus.SUBMITTED,
        OrderStatus.UNKNOWN,
        OrderStatus.PENDING_CANCEL,
        OrderStatus.PENDING_REPLACE,
    }
)


class SessionState(StrEnum):
    STARTING = "starting"
    RECONCILING = "reconciling"
    TRADING = "trading"
    HALTED = "halted"
    ROLLING = "rolling"
    STOPPING = "stopping"
    STOPPED = "stopped"
    NEEDS_OPERATOR = "needs_operator"


class HeatState(StrEnum):
    OK = "ok"
    WARNED = "warned"
    BLOCKED = "blocked"


class RollPhase(StrEnum):
    NONE = "none"
    CANCEL_WORKING = "cancel_working"
    FLATTEN_OLD = "flatten_old"
    OPEN_NEW = "open_new"
    SWITCH_DATA = "switch_data"
    DONE = "done"
    ABORTED = "aborted"  # an operator stopped a roll mid-way (``sessions ack --abort-roll``)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
