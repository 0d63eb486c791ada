"""Tradovate's wire shapes ↔ ``brokers.base`` types: pure functions, no I/O, no clock.

Everything here takes the venue's JSON (decoded with ``parse_float=Decimal``) or a WebSocket frame
and returns domain values, or raises one of ``SHAPE_ERRORS`` (the I/O layer turns those into
``UnexpectedResponse``/``OutcomeUnknown``). What follows from VENUES.md and what is *unconfirmed*
is said next to each function.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from brokers.base import Bar, BrokerFill, BrokerOrder, BrokerPosition
from brokers.errors import NotSupported
from brokers.intervals import NS_PER_SECOND, interval_ns
from brokers.wire import decimal_of as decimal
from brokers.wire import int_of as integer
from brokers.wire import optional_decimal
from schema.enums import OrderStatus, OrderType, Side, TimeInForce

BROKER = "tradovate"

SHAPE_ERRORS = (KeyError, TypeError, ValueError, InvalidOperation, AttributeError, IndexError)
"""What a malformed answer raises inside the parsers."""

# ---------------------------------------------------------------- JSON with exact numbers

_DECIMAL_MARK = "\x00tradovate-decimal:"
_MARKED = re.compile(r'"\\u0000tradovate-decimal:(-?[0-9]+(?:\.[0-9]+)?)"')


def _mark_decimal(value: object) -> object:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("a price or quantity must be finite")
        return _DECIMAL_MARK + format(value, "f")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def encode_json(payload: Any) -> str:
    """JSON text with every ``Decimal`` written as a JSON *number* (Tradovate wants numbers for
    prices and quantities), exactly — never through a float."""
    text = json.dumps(payload, default=_mark_decimal, separators=(",", ":"))
    return _MARKED.sub(r"\1", text)


def decode_json(raw: bytes | str) -> Any:
    """Decode with numbers kept exact (``Decimal`` for non-integers, ``int`` otherwise)."""
    return json.loads(raw, parse_float=Decimal)


# ---------------------------------------------------------------- scalars


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso_to_ns(value: Any) -> int:
    """``2025-11-20T14:30:00.000Z`` (or any ISO 8601 time with a zone) → UTC ns."""
    moment = datetime.fromisoformat(text(value))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {value!r}")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * NS_PER_SECOND + delta.microseconds * 1000


def ns_to_iso(ts_ns: int) -> str:
    """UTC ns → ``2025-11-20T14:30:00.000Z`` (millisecond precision, as Tradovate writes it)."""
    moment = _EPOCH + timedelta(microseconds=ts_ns // 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# ---------------------------------------------------------------- enums both ways

ACTIONS: Mapping[Side, str] = {Side.BUY: "Buy", Side.SELL: "Sell"}
ORDER_TYPES: Mapping[OrderType, str] = {
    OrderType.MARKET: "Market", OrderType.LIMIT: "Limit", OrderType.STOP: "Stop", OrderType.STOP_LIMIT: "StopLimit",
}
TIME_IN_FORCE: Mapping[TimeInForce, str] = {TimeInForce.DAY: "Day", TimeInForce.GTC: "GTC", TimeInForce.IOC: "IOC"}
_SIDES = {v: k for k, v in ACTIONS.items()}
_TYPES = {v: k for k, v in ORDER_TYPES.items()}

ORDER_STATUSES: Mapping[str, OrderStatus] = {
    "PendingNew": OrderStatus.SUBMITTED,
    "Working": OrderStatus.ACCEPTED,
    # OSO brackets wait as Suspended until their entry fills: working, just not yet at the exchange.
    "Suspended": OrderStatus.ACCEPTED,
    "PendingCancel": OrderStatus.PENDING_CANCEL,
    "PendingReplace": OrderStatus.PENDING_REPLACE,
    "Filled": OrderStatus.FILLED,
    # "Completed" is listed by Tradovate's OrderStatus enum without a definition (*unconfirmed*);
    # read as done-and-filled, which the fills then confirm or not.
    "Completed": OrderStatus.FILLED,
    "Canceled": OrderStatus.CANCELLED,
    "Expired": OrderStatus.EXPIRED,
    "Rejected": OrderStatus.REJECTED,
    "Unknown": OrderStatus.UNKNOWN,
}


def side_of(action: Any) -> Side:
    try:
        return _SIDES[text(action)]
    except KeyError:
        raise ValueError(f"unknown action {action!r}") from None


def order_type_of(value: Any) -> OrderType:
    try:
        return _TYPES[text(value)]
    except KeyError:
        raise ValueError(f"unsupported orderType {value!r}") from None


# ---------------------------------------------------------------- entities


def parse_order(data: Mapping[str, Any], symbol: str) -> BrokerOrder:
    """An order entity of ``/order/list`` / ``/order/item``; ``symbol`` is its contract's name.

    *Unconfirmed*: the real order entity carries ``id, accountId, contractId, timestamp, action,
    ordStatus`` and keeps quantity and prices in ``orderVersion`` and fills in execution reports;
    ``clOrdId``, ``orderType``, ``orderQty``, ``price``, ``stopPrice``, ``filledQty``, ``avgPx`` and
    ``text`` are read from the order itself, as the simulator's dialect serves them.
    """
    status = ORDER_STATUSES[text(data["ordStatus"])]
    quantity = decimal(data["orderQty"])
    filled = decimal(data.get("filledQty", 0))
    if status is OrderStatus.ACCEPTED and 0 < filled < quantity:
        status = OrderStatus.PARTIALLY_FILLED
    reason = data.get("text")
    return BrokerOrder(
        broker_order_id=str(integer(data["id"])),
        client_order_id=text(data.get("clOrdId") or ""),
        symbol=symbol,
        side=side_of(data["action"]),
        order_type=order_type_of(data["orderType"]),
        quantity=quantity,
        filled_quantity=filled,
        average_price=optional_decimal(data.get("avgPx")),
        status=status,
        limit_price=optional_decimal(data.get("price")),
        stop_price=optional_decimal(data.get("stopPrice")),
        reason=reason if isinstance(reason, str) and reason else None,
        updated_ns=iso_to_ns(data["timestamp"]),
    )


def parse_fill(data: Mapping[str, Any], symbol: str, client_order_id: str) -> BrokerFill:
    """A fill entity of ``/fill/list`` (``id, orderId, contractId, timestamp, action, qty, price``)."""
    return BrokerFill(
        broker_fill_id=str(integer(data["id"])),
        broker_order_id=str(integer(data["orderId"])),
        client_order_id=client_order_id,
        symbol=symbol,
        side=side_of(data["action"]),
        quantity=decimal(data["qty"]),
        price=decimal(data["price"]),
        ts_ns=iso_to_ns(data["timestamp"]),
    )


def parse_position(data: Mapping[str, Any], symbol: str) -> BrokerPosition:
    """A position entity of ``/position/list``: ``netPos`` signed, ``netPrice`` its average (absent
    or null when flat)."""
    quantity = decimal(data["netPos"])
    return BrokerPosition(symbol=symbol, quantity=quantity,
                          average_price=None if quantity == 0 else optional_decimal(data.get("netPrice")))


def parse_bar(data: Mapping[str, Any], symbol: str, interval: str) -> Bar:
    """A chart bar (``timestamp, open, high, low, close, upVolume, downVolume``). ``timestamp`` is
    read as the bar's open time (*unconfirmed*: Tradovate does not say start or end)."""
    ts_ns = iso_to_ns(data["timestamp"])
    return Bar(
        symbol=symbol,
        interval=interval,
        ts_ns=ts_ns,
        open=decimal(data["open"]),
        high=decimal(data["high"]),
        low=decimal(data["low"]),
        close=decimal(data["close"]),
        volume=decimal(data.get("upVolume", 0)) + decimal(data.get("downVolume", 0)),
        index=ts_ns // interval_ns(interval),
    )


# ---------------------------------------------------------------- answers


def business_error(data: Any) -> str | None:
    """The venue's refusal in an HTTP 200 answer, or None: ``{failureReason, failureText}`` (order
    commands), ``{errorText}``, or ``{violations: [...]}``. A ``failureReason`` of ``Success`` is
    not a failure."""
    if not isinstance(data, dict):
        return None
    reason = data.get("failureReason")
    if reason not in (None, "", "Success"):
        detail = data.get("failureText")
        return f"{reason}: {detail}" if isinstance(detail, str) and detail else str(reason)
    error_text = data.get("errorText")
    if isinstance(error_text, str) and error_text:
        return error_text
    violations = data.get("violations")
    if isinstance(violations, list) and violations:
        parts = []
        for item in violations:
            if isinstance(item, dict):
                parts.append(str(item.get("description") or item.get("constraint") or item))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return None


_AUTH_PHRASES = ("access is denied", "access token", "unauthorized", "not authorized")


def is_auth_refusal(message: str) -> bool:
    """An ``errorText`` that says the token was refused (*unconfirmed*: Tradovate answers a stale
    token with HTTP 401; some of its examples show ``errorText`` about the access token instead)."""
    lowered = message.lower()
    return any(phrase in lowered for phrase in _AUTH_PHRASES)


@dataclass(frozen=True)
class Penalty:
    """An auth answer's penalty ticket: wait ``wait_s``, resend with ``ticket``; a captcha means no
    automated retry is possible."""

    ticket: str | None
    wait_s: float
    captcha: bool

    def __repr__(self) -> str:
        return f"Penalty(wait_s={self.wait_s}, captcha={self.captcha}, ticket=***)"


def penalty_of(data: Any) -> Penalty | None:
    if not isinstance(data, dict) or not any(k in data for k in ("p-ticket", "p-time", "p-captcha")):
        return None
    ticket = data.get("p-ticket")
    wait = data.get("p-time", 0)
    captcha = data.get("p-captcha", False)
    if ticket is not None and not isinstance(ticket, str):
        raise TypeError("p-ticket must be a string")
    if not isinstance(captcha, bool):
        raise TypeError("p-captcha must be a boolean")
    wait_s = float(decimal(wait))
    if wait_s < 0:
        raise ValueError("p-time must not be negative")
    return Penalty(ticket, wait_s, captcha)


@dataclass(frozen=True, repr=False)
class TokenAnswer:
    access_token: str
    md_access_token: str | None
    expires_ns: int
    user_id: int | None


def parse_token_answer(data: Mapping[str, Any]) -> TokenAnswer:
    """``accessToken``, ``expirationTime`` (required), ``mdAccessToken``, ``userId`` (optional: a
    renewal answer may lack them)."""
    access = text(data["accessToken"])
    if not access:
        raise ValueError("empty accessToken")
    md = data.get("mdAccessToken")
    user_id = data.get("userId")
    return TokenAnswer(access, text(md) if md else None, iso_to_ns(data["expirationTime"]),
                       None if user_id is None else integer(user_id))


# ---------------------------------------------------------------- WebSocket framing


@dataclass(frozen=True)
class Frame:
    """A server frame: ``o`` open, ``h`` heartbeat, ``a`` data (``items``), ``c`` close (``items``
    holds ``[code, reason]`` when given)."""

    kind: str
    items: tuple[Any, ...] = ()


def parse_frame(raw: str | bytes) -> Frame:
    message = raw.decode() if isinstance(raw, bytes) else raw
    if not message:
        raise ValueError("empty frame")
    kind, rest = message[0], message[1:]
    if kind not in "ohac":
        raise ValueError(f"unknown frame type {kind!r}")
    if not rest.strip():
        if kind == "a":
            raise ValueError("data frame without data")
        return Frame(kind)
    data = decode_json(rest)
    if not isinstance(data, list):
        raise TypeError("frame payload must be a JSON array")
    return Frame(kind, tuple(data))


def encode_request(endpoint: str, request_id: int, query: str = "", body: Any = None) -> str:
    """``endpoint\\nid\\nquery\\nbody``; ``authorize`` carries the raw token as its body."""
    if "\n" in endpoint or "\n" in query:
        raise ValueError("endpoint and query must be single lines")
    payload = "" if body is None else body if isinstance(body, str) else encode_json(body)
    return f"{endpoint}\n{request_id}\n{query}\n{payload}"


HEARTBEAT = "[]"
"""What the client sends about every 2.5 s."""


def chart_description(interval: str) -> dict[str, Any]:
    """The ``chartDescription`` of a bar interval: minutes and hours are ``MinuteBar`` bars, days
    ``DailyBar``. Tradovate has no second bars (only ticks): ``NotSupported``."""
    length = interval_ns(interval)
    if length % (86_400 * NS_PER_SECOND) == 0:
        return {"underlyingType": "DailyBar", "elementSize": length // (86_400 * NS_PER_SECOND),
                "elementSizeUnit": "UnderlyingUnits", "withHistogram": False}
    if length % (60 * NS_PER_SECOND) == 0:
        return {"underlyingType": "MinuteBar", "elementSize": length // (60 * NS_PER_SECOND),
                "elementSizeUnit": "UnderlyingUnits", "withHistogram": False}
    raise NotSupported(BROKER, f"{interval} bars", "Tradovate charts come in minutes or days")


@dataclass
class ChartUpdate:
    """What one ``chart`` event said about one subscription."""

    bars: list[Mapping[str, Any]] = field(default_factory=list)
    end_of_history: bool = False


def chart_updates(data: Any, ids: Iterable[int]) -> ChartUpdate:
    """The bars and end-of-history marks of a ``chart`` event's ``d`` for the subscription ids
    ``ids`` (historical and realtime); other subscriptions' charts are ignored."""
    wanted = set(ids)
    update = ChartUpdate()
    for chart in data["charts"]:
        if integer(chart["id"]) not in wanted:
            continue
        if chart.get("eoh"):
            update.end_of_history = True
        for bar in chart.get("bars") or ():
            if not isinstance(bar, dict):
                raise TypeError("a bar must be an object")
            update.bars.append(bar)
    return update


# ---------------------------------------------------------------- closed bars

CLOSE_GRACE_NS = 2 * NS_PER_SECOND
"""How long after a bar's end (by the wall clock) a late update may still arrive."""


class BarCloser:
    """Decides which chart bars are closed.

    Tradovate streams the bar that is still forming, updating it in place, so a bar is taken as
    closed once a bar with a later timestamp has arrived, or once the wall clock is past its end by
    ``CLOSE_GRACE_NS``. Each timestamp is released once, oldest first, and never one at or before
    ``after_ts_ns`` (resume point or a bar already released). The simulator's dialect sends only
    closed bars, so there the first rule alone releases everything, one bar late at most.
    """

    def __init__(self, interval_ns_: int, after_ts_ns: int = -1) -> None:
        self._interval_ns = interval_ns_
        self._released_ts = after_ts_ns
        self._pending: dict[int, Bar] = {}

    @property
    def released_ts(self) -> int:
        return self._released_ts

    def add(self, bar: Bar) -> None:
        if bar.ts_ns <= self._released_ts:
            return  # already released (a repeat, or history overlapping the resume point)
        self._pending[bar.ts_ns] = bar  # a later version of a forming bar replaces the earlier

    def closed(self, now_ns: int) -> list[Bar]:
        if not self._pending:
            return []
        newest = max(self._pending)
        ready = [ts for ts in sorted(self._pending)
                 if ts < newest or ts + self._interval_ns + CLOSE_GRACE_NS <= now_ns]
        bars = [self._pending.pop(ts) for ts in ready]
        if bars:
            self._released_ts = bars[-1].ts_ns
        return bars
