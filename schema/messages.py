"""Every message type that crosses the bus, declared once.

A message body is a frozen ``msgspec.Struct``; its ``TYPE`` is the wire name carried in the
envelope. Money, prices and quantities are ``Decimal`` (encoded as strings on the wire, never
floats); timestamps are UTC integer nanoseconds. ``MESSAGE_TYPES`` maps wire names to body
classes: the bus decodes and validates a body against it, and rejects unknown types.

Facts (pub/sub) are past tense or nouns; requests (RPC) are imperative and each has a reply type.
"""
from __future__ import annotations

from decimal import Decimal

import msgspec

SCHEMA_VERSION = 1


class Message(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    TYPE = ""


# ---------------------------------------------------------------- market data (facts)


class BarClosed(Message, kw_only=True):
    """One closed OHLCV bar. ``ts_ns`` is the bar's open time; ``index`` the source's bar number."""

    TYPE = "md.bar"
    symbol: str
    interval: str
    ts_ns: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    index: int


# ---------------------------------------------------------------- orders, fills, positions (facts)


class OrderUpdated(Message, kw_only=True):
    """An order's row after a change, as committed to the database."""

    TYPE = "order.updated"
    session: str
    client_order_id: str
    broker_order_id: str | None
    symbol: str
    side: str
    order_type: str
    quantity: Decimal
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    status: str
    filled_quantity: Decimal
    average_price: Decimal | None = None
    reason: str | None = None
    signal: int
    version: int


class FillRecorded(Message, kw_only=True):
    TYPE = "fill.recorded"
    session: str
    broker_fill_id: str
    client_order_id: str
    symbol: str
    side: str
    quantity: Decimal
    price: Decimal
    ts_ns: int


class PositionChanged(Message, kw_only=True):
    TYPE = "position.changed"
    session: str
    symbol: str
    quantity: Decimal
    average_price: Decimal | None = None
    reason: str


class SessionStateChanged(Message, kw_only=True):
    TYPE = "session.state"
    session: str
    state: str
    previous: str | None = None
    reason: str


class ReconcileReport(Message, kw_only=True):
    TYPE = "reconcile.report"
    session: str
    changes: list[str]
    broker_position: Decimal
    db_position: Decimal
    ok: bool


class BarProcessed(Message, kw_only=True):
    """A session's strategy has decided on a bar it received live, and every order it sent for that
    bar has been answered by the account (which answers only after the venue did). A replay in
    lockstep releases the next bar on it. ``live`` is False for a bar that arrived stale (it moved
    the indicators but could not trade)."""

    TYPE = "strategy.processed"
    session: str
    symbol: str
    interval: str
    ts_ns: int
    index: int
    live: bool
    orders_sent: int


class Heartbeat(Message, kw_only=True):
    TYPE = "heartbeat"
    process: str
    pid: int
    state: str


class Alert(Message, kw_only=True):
    TYPE = "alert"
    level: str
    text: str
    session: str | None = None


# ---------------------------------------------------------------- requests and replies (RPC)


class SubmitOrder(Message, kw_only=True):
    """Ask the account service to place an order. ``signal`` is the strategy's persisted, per-session
    decision number: the client order id is derived from (session, signal), so resending the same
    request never makes a second order."""

    TYPE = "order.submit"
    session: str
    signal: int
    symbol: str
    side: str
    order_type: str
    quantity: Decimal
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: str = "day"


class CancelOrder(Message, kw_only=True):
    TYPE = "order.cancel"
    session: str
    client_order_id: str


class OrderReply(Message, kw_only=True):
    TYPE = "order.reply"
    order: OrderUpdated


class AccountSnapshotRequest(Message, kw_only=True):
    TYPE = "account.snapshot"
    session: str


class AccountSnapshot(Message, kw_only=True):
    TYPE = "account.snapshot.reply"
    session: str
    symbol: str
    position: Decimal
    open_orders: list[OrderUpdated]


class BarsRequest(Message, kw_only=True):
    """Recent bars, oldest first, strictly after ``after_ts_ns`` (0: all that are held)."""

    TYPE = "md.bars"
    symbol: str
    interval: str
    after_ts_ns: int = 0


class BarsReply(Message, kw_only=True):
    TYPE = "md.bars.reply"
    bars: list[BarClosed]


class SwitchContract(Message, kw_only=True):
    """Ask a session's market-data process to stream ``symbol`` from now on (the last phase of a
    contract roll). Idempotent: asking for the contract already streamed just answers."""

    TYPE = "md.switch"
    session: str
    symbol: str


class ContractSwitched(Message, kw_only=True):
    TYPE = "md.switch.reply"
    symbol: str
    bars: int


# ---------------------------------------------------------------- operator commands (requests)


class RollRequest(Message, kw_only=True):
    """Roll the session to ``to_contract`` (default: the contract after the one it trades)."""

    TYPE = "session.roll"
    session: str
    to_contract: str | None = None


class FlattenRequest(Message, kw_only=True):
    """Halt the session, cancel its working orders, and close its position."""

    TYPE = "session.flatten"
    session: str
    reason: str = "flatten requested by operator"


class OperatorCommand(Message, kw_only=True):
    """``tradebus sessions halt|resume|ack|flatten|roll|remove`` sent over the bus to ``control``.

    ``choice`` is ack's ``resume_roll`` / ``abort_roll`` when a roll is mid-way; ``force`` is
    remove's ``--force``; ``to_contract`` is roll's target."""

    TYPE = "operator.command"
    command: str
    session: str
    reason: str = ""
    choice: str | None = None
    force: bool = False
    to_contract: str | None = None


class CommandDone(Message, kw_only=True):
    """What an operator command did, in words an operator reads (the reply to several requests)."""

    TYPE = "operator.done"
    session: str
    state: str
    text: str


class TokenIssued(Message, kw_only=True):
    """A broker account's new token, encrypted with the installation's token key (``services.tokens``):
    the journal and the wire never carry it in clear."""

    TYPE = "auth.token"
    account: str
    version: int
    expires_ns: int
    ciphertext: bytes


class TokenRequest(Message, kw_only=True):
    """Ask the tokens service for an account's current token (reply ``TokenIssued``)."""

    TYPE = "auth.get"
    account: str


class TokenRejected(Message, kw_only=True):
    """The venue refused token ``version``: refresh it unless that has happened already (reply
    ``TokenIssued`` with a newer version, or an error)."""

    TYPE = "auth.rejected"
    account: str
    version: int


class ErrorReply(Message, kw_only=True):
    """Any request can be answered with this. ``code`` is a stable machine-readable name."""

    TYPE = "error"
    code: str
    message: str


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        BarClosed,
        OrderUpdated,
        FillRecorded,
        PositionChanged,
        SessionStateChanged,
        ReconcileReport,
        BarProcessed,
        Heartbeat,
        Alert,
        SubmitOrder,
        CancelOrder,
        OrderReply,
        AccountSnapshotRequest,
        AccountSnapshot,
        BarsRequest,
        BarsReply,
        SwitchContract,
        ContractSwitched,
        RollRequest,
        FlattenRequest,
        OperatorCommand,
        CommandDone,
        TokenIssued,
        TokenRequest,
        TokenRejected,
        ErrorReply,
    )
}
