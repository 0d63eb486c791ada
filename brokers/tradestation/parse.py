"""TradeStation v3 wire ↔ domain: pure functions, no I/O, no clock.

Everything here takes already-decoded JSON (numbers as ``Decimal``) and returns ``brokers.base``
types, or builds request bodies. Shape errors raise ``KeyError``/``TypeError``/``ValueError``; the
I/O layer turns them into ``UnexpectedResponse`` (or ``OutcomeUnknown`` after a command).

Facts we rely on and how sure we are (VENUES.md, public client libraries):

* orders carry ``OrderID``, ``Status`` (three-letter codes), ``OrderType``, ``LimitPrice``,
  ``StopPrice``, ``OpenedDateTime``/``ClosedDateTime`` and one leg per futures order with
  ``BuyOrSell``, ``Symbol``, ``QuantityOrdered``, ``ExecQuantity``, ``ExecutionPrice``;
* whether an order in a query answer echoes the ``OrderConfirmID`` it was placed with is
  *unconfirmed*: we read it when present and never rely on it being there (see
  ``lookup_is_conclusive``);
* ``ExecutionPrice`` is read as the leg's *average* execution price (*unconfirmed*; it matters only
  for partial fills, see ``fills_from_orders``);
* a bar's ``TimeStamp`` is read as the bar's END (close) time, as TradeStation charts label bars
  (*unconfirmed* for the API); ``Bar.ts_ns`` is the open time, so we subtract one interval;
* ``Quantity`` of a short position may come negative or positive with ``LongShort: "Short"``
  (public material says both): we take the magnitude and the sign from ``LongShort``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from brokers.base import Bar, BrokerFill, BrokerOrder, BrokerPosition, OrderRequest
from brokers.intervals import interval_ns
from brokers.wire import decimal_of
from schema.enums import OrderStatus, OrderType, Side, TimeInForce

# ---------------------------------------------------------------- client order ids

MAX_ORDER_CONFIRM_ID_LEN = 22
"""TradeStation limits ``OrderConfirmID``; the public material we have states only that it must be
unique per API key, order and user, not the limit. 22 characters is a conservative figure
(*unconfirmed*). The engine's ids (``session.sessionid.signal``, up to 64 characters) are sent as
they are when they fit; longer ones are replaced by a deterministic hash (``order_confirm_id``)."""
_PLAIN_CONFIRM_ID = re.compile(rf"^[A-Za-z0-9._-]{{1,{MAX_ORDER_CONFIRM_ID_LEN}}}$")
HASHED_CONFIRM_ID_PREFIX = "H"
"""Hashed ids start with ``H`` followed by 21 base32 characters (105 bits of SHA-256): no plain id
of the engine's shape (``name.id.signal``) can look like one, since those contain dots."""


def order_confirm_id(client_order_id: str) -> str:
    """The ``OrderConfirmID`` we send for ``client_order_id``: the id itself when it fits, else a
    deterministic 22-character hash (the same id always maps to the same value, so a lookup after
    a restart finds the order without any stored mapping)."""
    if not client_order_id:
        raise ValueError("client order id must not be empty")
    if _PLAIN_CONFIRM_ID.match(client_order_id) and not _looks_hashed(client_order_id):
        return client_order_id
    digest = hashlib.sha256(client_order_id.encode()).digest()
    return HASHED_CONFIRM_ID_PREFIX + base64.b32encode(digest).decode()[: MAX_ORDER_CONFIRM_ID_LEN - 1]


def _looks_hashed(value: str) -> bool:
    return (len(value) == MAX_ORDER_CONFIRM_ID_LEN and value.startswith(HASHED_CONFIRM_ID_PREFIX)
            and re.fullmatch(r"[A-Z2-7]+", value[1:]) is not None)


# ---------------------------------------------------------------- scalars


def optional_price(value: Any) -> Decimal | None:
    """A price that may be absent, empty or zero (TradeStation sends ``"0"`` for "no price" on some
    order types — *unconfirmed*; a zero price is never meaningful for futures)."""
    if value is None or value == "":
        return None
    price = decimal_of(value)
    return None if price == 0 else price


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"expected a non-empty string, got {type(value).__name__}")
    return value


def iso_to_ns(value: Any) -> int:
    """``2025-11-04T21:00:00Z`` → UTC ns. A timestamp without a zone is refused."""
    raw = text(value)
    parsed = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith("Z") else raw)
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {raw[:40]!r}")
    return int(parsed.timestamp()) * 1_000_000_000 + parsed.microsecond * 1000


def ns_to_iso(ts_ns: int) -> str:
    """UTC ns → ``2025-11-04T21:00:00Z`` (whole seconds, floor)."""
    return datetime.fromtimestamp(ts_ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_date(ts_ns: int) -> date:
    return datetime.fromtimestamp(ts_ns // 1_000_000_000, UTC).date()


def wire_decimal(value: Decimal) -> str:
    """Prices and quantities go out as plain decimal strings, never exponent notation."""
    return format(value, "f")


# ---------------------------------------------------------------- requests

ORDER_TYPES_OUT: Mapping[OrderType, str] = MappingProxyType({
    OrderType.MARKET: "Market",
    OrderType.LIMIT: "Limit",
    OrderType.STOP: "StopMarket",
    OrderType.STOP_LIMIT: "StopLimit",
})
ORDER_TYPES_IN: Mapping[str, OrderType] = MappingProxyType({v: k for k, v in ORDER_TYPES_OUT.items()})
DURATIONS_OUT: Mapping[TimeInForce, str] = MappingProxyType({
    TimeInForce.DAY: "DAY",
    TimeInForce.GTC: "GTC",
    TimeInForce.IOC: "IOC",
})
TRADE_ACTIONS: Mapping[Side, str] = MappingProxyType({Side.BUY: "BUY", Side.SELL: "SELL"})


def order_body(req: OrderRequest, account_id: str) -> dict[str, Any]:
    """``POST /v3/orderexecution/orders`` body for one order (quantities and prices as strings)."""
    body: dict[str, Any] = {
        "AccountID": account_id,
        "Symbol": req.symbol,
        "Quantity": wire_decimal(req.quantity),
        "OrderType": ORDER_TYPES_OUT[req.order_type],
        "TradeAction": TRADE_ACTIONS[req.side],
        "TimeInForce": {"Duration": DURATIONS_OUT[req.time_in_force]},
        "OrderConfirmID": order_confirm_id(req.client_order_id),
    }
    if req.limit_price is not None:
        body["LimitPrice"] = wire_decimal(req.limit_price)
    if req.stop_price is not None:
        body["StopPrice"] = wire_decimal(req.stop_price)
    return body


def bracket_body(entry: OrderRequest, take_profit: OrderRequest | None, stop_loss: OrderRequest | None,
                 account_id: str) -> dict[str, Any]:
    """An entry order with exit orders that become live when the entry fills (one-sends-other).
    Both exits: ``OSOs: [{Type: "BRK", Orders: [take profit, stop loss]}]`` — when one fills the
    venue cancels the other. One exit: ``OSOs: [{Type: "NORMAL", Orders: [it]}]`` (that TradeStation
    names a plain OSO ``NORMAL`` is *unconfirmed*). TradeStation's ``ordergroups`` ``BRK`` type
    brackets an EXISTING position (all its orders on one side), so an entry plus its bracket goes
    out as an order with OSOs (see ``exit_bracket_body``)."""
    legs = [leg for leg in (take_profit, stop_loss) if leg is not None]
    if not legs:
        raise ValueError("a bracket needs a take-profit and/or a stop-loss")
    body = order_body(entry, account_id)
    body["OSOs"] = [{"Type": "BRK" if len(legs) == 2 else "NORMAL",
                     "Orders": [order_body(leg, account_id) for leg in legs]}]
    return body


def exit_bracket_body(take_profit: OrderRequest, stop_loss: OrderRequest, account_id: str) -> dict[str, Any]:
    """``POST /v3/orderexecution/ordergroups`` ``Type: BRK``: a take-profit and a stop-loss around
    a position already held; when one fills the venue cancels the other."""
    return {"Type": "BRK", "Orders": [order_body(take_profit, account_id), order_body(stop_loss, account_id)]}


def replace_body(quantity: Decimal | None, limit_price: Decimal | None, stop_price: Decimal | None) -> dict[str, str]:
    """``PUT /v3/orderexecution/orders/{id}``: only the fields that change."""
    body = {}
    for name, value in (("Quantity", quantity), ("LimitPrice", limit_price), ("StopPrice", stop_price)):
        if value is not None:
            body[name] = wire_decimal(value)
    if not body:
        raise ValueError("nothing to modify: give quantity, limit_price and/or stop_price")
    return body


# ---------------------------------------------------------------- command answers


@dataclass(frozen=True)
class Placed:
    order_id: str
    message: str


@dataclass(frozen=True)
class PlaceError:
    order_id: str
    error: str
    message: str

    @property
    def is_duplicate(self) -> bool:
        """The venue refused a repeated ``OrderConfirmID``. Its exact answer is *unconfirmed*; any
        error naming a duplicate counts, and the caller looks the order up rather than trusting it."""
        return "duplicate" in f"{self.error} {self.message}".lower()


def parse_place_answer(data: Any) -> tuple[list[Placed], list[PlaceError]]:
    """``{Orders: [{OrderID, Message}], Errors: [{OrderID, Error, Message}]}`` (either list may be
    missing or empty)."""
    if not isinstance(data, dict) or not ({"Orders", "Errors"} & data.keys()):
        raise ValueError("expected an object with Orders and/or Errors")
    placed = [Placed(order_id_of(o), str(o.get("Message") or "")) for o in _list_field(data, "Orders")]
    errors = [PlaceError(str(e.get("OrderID") or ""), str(e.get("Error") or ""), str(e.get("Message") or ""))
              for e in _list_field(data, "Errors")]
    if not placed and not errors:
        raise ValueError("neither Orders nor Errors in the answer")
    return placed, errors


def _list_field(data: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    items = data.get(key)
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise TypeError(f"{key} must be a list of objects")
    return items


def venue_error(data: Any) -> tuple[str, str] | None:
    """``{"Error": kind, "Message": text}`` → (kind, text); None for any other shape."""
    if isinstance(data, dict) and isinstance(data.get("Error"), str):
        return data["Error"], str(data.get("Message") or "")
    return None


# ---------------------------------------------------------------- orders

WORKING_STATUSES = frozenset({
    OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED, OrderStatus.PENDING_CANCEL, OrderStatus.PENDING_REPLACE,
})

STATUS_CODES: Mapping[str, OrderStatus] = MappingProxyType({
    # alive
    "ACK": OrderStatus.ACCEPTED,        # received
    "OPN": OrderStatus.ACCEPTED,        # sent
    "DON": OrderStatus.ACCEPTED,        # queued
    "PLA": OrderStatus.ACCEPTED,        # sending
    "DIS": OrderStatus.ACCEPTED,        # dispatched
    "CND": OrderStatus.ACCEPTED,        # condition met
    "OSO": OrderStatus.ACCEPTED,        # one-sends-other child waiting for its parent
    "STP": OrderStatus.ACCEPTED,        # stop hit (now working)
    "CHG": OrderStatus.ACCEPTED,        # changed
    "UCH": OrderStatus.ACCEPTED,        # replaced
    "RJC": OrderStatus.ACCEPTED,        # cancel request rejected: still working
    "RJR": OrderStatus.ACCEPTED,        # change request rejected: still working
    "LAT": OrderStatus.ACCEPTED,        # too late to cancel
    "STT": OrderStatus.ACCEPTED,        # status message
    "SUS": OrderStatus.ACCEPTED,        # suspended
    "REC": OrderStatus.ACCEPTED,        # recall requested
    "RPD": OrderStatus.PENDING_REPLACE,  # replace pending
    "RSN": OrderStatus.PENDING_REPLACE,  # replace sent
    "UCN": OrderStatus.PENDING_CANCEL,  # cancel sent
    "ECN": OrderStatus.PENDING_CANCEL,  # expiration cancel request
    "FPR": OrderStatus.PARTIALLY_FILLED,
    # done
    "FLL": OrderStatus.FILLED,
    "BRF": OrderStatus.FILLED,          # bracket filled
    "CAN": OrderStatus.CANCELLED,
    "BRC": OrderStatus.CANCELLED,       # bracket cancelled (its other leg filled)
    "SCN": OrderStatus.CANCELLED,       # recalled
    "TSC": OrderStatus.CANCELLED,       # trade server cancelled
    "OUT": OrderStatus.CANCELLED,       # UROut
    "FLP": OrderStatus.CANCELLED,       # partially filled, then out: the fills stand, the rest is gone
    "DOA": OrderStatus.CANCELLED,       # dead
    "EXP": OrderStatus.EXPIRED,
    "REJ": OrderStatus.REJECTED,
    # nothing the engine can act on without a human
    "BRO": OrderStatus.UNKNOWN,         # broken after execution
    "COR": OrderStatus.UNKNOWN,         # fill corrected
    "ASS": OrderStatus.UNKNOWN,         # option assignment
    "EXE": OrderStatus.UNKNOWN,         # option exercise
    "OTHER": OrderStatus.UNKNOWN,
})
"""Every status code the public material lists. An unlisted code is a bad answer (strict)."""

_SIDES: Mapping[str, Side] = MappingProxyType({
    "buy": Side.BUY, "sell": Side.SELL, "buytocover": Side.BUY, "sellshort": Side.SELL,
    "buy to cover": Side.BUY, "sell short": Side.SELL,
})


def order_status(code: Any) -> OrderStatus:
    status = STATUS_CODES.get(text(code))
    if status is None:
        raise ValueError(f"unknown order status {str(code)[:10]!r}")
    return status


def order_id_of(data: Mapping[str, Any]) -> str:
    value = data["OrderID"]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return text(value)


MISSING = object()
"""``confirm_id_of`` when the answer has no ``OrderConfirmID`` field at all."""


def confirm_id_of(data: Mapping[str, Any]) -> object:
    """The order's ``OrderConfirmID`` (str), None if present but empty, ``MISSING`` if absent."""
    if "OrderConfirmID" not in data:
        return MISSING
    value = data["OrderConfirmID"]
    return value if isinstance(value, str) and value else None


def _only_leg(data: Mapping[str, Any]) -> Mapping[str, Any]:
    legs = data["Legs"]
    if not isinstance(legs, list) or len(legs) != 1 or not isinstance(legs[0], dict):
        raise ValueError("a futures order has exactly one leg")
    return legs[0]


def executed(data: Mapping[str, Any]) -> tuple[Decimal, Decimal | None]:
    """(cumulative executed quantity, average execution price) of an order."""
    leg = _only_leg(data)
    quantity = decimal_of(leg.get("ExecQuantity", "0"))
    if quantity < 0:
        raise ValueError("negative ExecQuantity")
    if quantity == 0:
        return quantity, None
    price = optional_price(leg.get("ExecutionPrice"))
    if price is None:
        price = optional_price(data.get("FilledPrice"))
    if price is None:
        raise ValueError("executed quantity without a price")
    return quantity, price


def parse_order(data: Mapping[str, Any], client_order_id: str) -> BrokerOrder:
    """One order of a query answer. ``client_order_id`` is supplied by the caller, who knows the
    mapping (the answer may carry only a hashed ``OrderConfirmID``, or none)."""
    leg = _only_leg(data)
    status = order_status(data["Status"])
    order_type = ORDER_TYPES_IN[text(data["OrderType"])]
    quantity = decimal_of(leg["QuantityOrdered"])
    filled, average = executed(data)
    if status is OrderStatus.ACCEPTED and 0 < filled < quantity:
        status = OrderStatus.PARTIALLY_FILLED
    reason = None
    if status in (OrderStatus.REJECTED, OrderStatus.CANCELLED, OrderStatus.EXPIRED, OrderStatus.UNKNOWN):
        reason = str(data.get("RejectReason") or data.get("StatusDescription") or "") or None
    limit = optional_price(data.get("LimitPrice")) if order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT) else None
    stop = optional_price(data.get("StopPrice")) if order_type in (OrderType.STOP, OrderType.STOP_LIMIT) else None
    stamp = data.get("ClosedDateTime") or data.get("OpenedDateTime")
    return BrokerOrder(
        broker_order_id=order_id_of(data),
        client_order_id=client_order_id,
        symbol=text(leg.get("Symbol") or data.get("Symbol")),
        side=_SIDES[text(leg["BuyOrSell"]).lower()],
        order_type=order_type,
        quantity=quantity,
        filled_quantity=filled,
        average_price=average,
        status=status,
        limit_price=limit,
        stop_price=stop,
        reason=reason,
        updated_ns=iso_to_ns(stamp) if stamp else 0,
    )


def lookup_is_conclusive(orders: Sequence[Mapping[str, Any]]) -> bool:
    """Whether "not among these orders" may be read as "the venue has no such order": only if the
    answers show that the venue echoes ``OrderConfirmID`` at all (some order carries the field),
    or there are no orders at all. If none carries it, absence proves nothing (*unconfirmed*
    field): the caller must raise rather than answer None."""
    return not orders or any(confirm_id_of(o) is not MISSING for o in orders)


def merge_orders(*answers: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Orders of several queries (today's, historical), once each by ``OrderID``; the first
    answer's version wins (``/orders`` is the fresher view)."""
    seen: dict[str, Mapping[str, Any]] = {}
    for answer in answers:
        for order in answer:
            seen.setdefault(order_id_of(order), order)
    return list(seen.values())


# ---------------------------------------------------------------- positions and balances


def parse_position(data: Mapping[str, Any]) -> BrokerPosition:
    magnitude = abs(decimal_of(data["Quantity"]))
    long_short = data.get("LongShort")
    if long_short not in ("Long", "Short"):
        # No LongShort: the sign of Quantity is all we have.
        sign = -1 if decimal_of(data["Quantity"]) < 0 else 1
    else:
        sign = -1 if long_short == "Short" else 1
    return BrokerPosition(symbol=text(data["Symbol"]), quantity=sign * magnitude,
                          average_price=optional_price(data.get("AveragePrice")))


def parse_equity(data: Any, account_id: str) -> Decimal:
    """``{Balances: [{AccountID, Equity, …}], Errors: [...]}`` → our account's ``Equity``."""
    if not isinstance(data, dict):
        raise TypeError("expected an object")
    for balance in _list_field(data, "Balances"):
        if str(balance.get("AccountID")) == account_id:
            return decimal_of(balance["Equity"])
    raise KeyError(f"no balance for account {account_id}")


# ---------------------------------------------------------------- bars

MAX_MINUTE_INTERVAL = 1440
"""TradeStation's largest minute bar."""


def bar_params(interval: str) -> dict[str, str]:
    """The engine's interval → TradeStation ``interval``/``unit``; ``ValueError`` when TradeStation
    has no such bar (seconds, multi-day)."""
    step = interval_ns(interval)
    minutes, rest = divmod(step, 60 * 1_000_000_000)
    if rest == 0 and minutes == 1440 and interval.endswith("d"):
        return {"interval": "1", "unit": "Daily"}
    if rest == 0 and 1 <= minutes <= MAX_MINUTE_INTERVAL and not interval.endswith("d"):
        return {"interval": str(minutes), "unit": "Minute"}
    raise ValueError(f"TradeStation has no {interval} bars (minute bars up to {MAX_MINUTE_INTERVAL}, or 1d)")


def bar_is_closed(data: Mapping[str, Any]) -> bool:
    """``BarStatus: "Closed"``; a bar without the field is taken as closed (REST answers may omit
    it — *unconfirmed*); ``"Open"`` is still forming."""
    status = data.get("BarStatus")
    return status is None or status == "Closed"


def parse_bar(data: Mapping[str, Any], symbol: str, interval: str) -> Bar:
    """A closed bar; ``TimeStamp`` is its end, ``ts_ns`` its open, ``index`` = ts_ns // interval."""
    step = interval_ns(interval)
    ts_ns = iso_to_ns(data["TimeStamp"]) - step
    high, low = decimal_of(data["High"]), decimal_of(data["Low"])
    if high < low:
        raise ValueError("High below Low")
    return Bar(symbol=symbol, interval=interval, ts_ns=ts_ns, open=decimal_of(data["Open"]), high=high,
               low=low, close=decimal_of(data["Close"]), volume=decimal_of(data.get("TotalVolume", "0")),
               index=ts_ns // step)


@dataclass(frozen=True)
class StreamBar:
    bar: Bar


@dataclass(frozen=True)
class FormingBar:
    """An update of the bar still forming (``BarStatus: "Open"``): never yielded as a bar."""


@dataclass(frozen=True)
class Heartbeat:
    count: int


@dataclass(frozen=True)
class StreamStatus:
    status: str
    """``EndSnapshot`` (history done, live from here) or ``GoAway`` (reconnect)."""


@dataclass(frozen=True)
class StreamError:
    error: str
    message: str


StreamItem = StreamBar | FormingBar | Heartbeat | StreamStatus | StreamError


def parse_stream_line(line: str, symbol: str, interval: str) -> StreamItem:
    """One line of a bar stream (one JSON object per line)."""
    data = json.loads(line, parse_float=Decimal)
    if not isinstance(data, dict):
        raise TypeError("a stream line must be a JSON object")
    if "Heartbeat" in data:
        count = data["Heartbeat"]
        return Heartbeat(int(count) if isinstance(count, (int, str)) and not isinstance(count, bool) else 0)
    if "StreamStatus" in data:
        return StreamStatus(text(data["StreamStatus"]))
    if "Error" in data:
        return StreamError(str(data["Error"]), str(data.get("Message") or ""))
    if not bar_is_closed(data):
        return FormingBar()
    return StreamBar(parse_bar(data, symbol, interval))


# ---------------------------------------------------------------- fills from orders

HISTORY_MARGIN_DAYS = 1
"""``historicalorders?since=`` takes a date (whose time zone is not stated): ask one day earlier
than we need and keep what we have seen that long, so no zone or midnight can hide an order."""
CURSOR_VERSION = 1


@dataclass(frozen=True)
class Seen:
    """What the cursor remembers of one order: its cumulative fill and how long to keep it."""

    executed: Decimal
    average: Decimal | None
    day: date
    """The order's closing date, or (while it is open) the day it was last seen open."""
    open: bool


@dataclass(frozen=True)
class FillCursor:
    """``fills_since``'s opaque cursor: the day of the poll that wrote it and, per order that is
    open or has fills and could still appear in a later answer, its cumulative executed quantity.
    Fills are derived as increments of that quantity, so an order is never reported twice; a
    fill's id is ``OrderID:cumulative`` — the same increment has the same id whoever observes it."""

    day: date | None = None
    seen: Mapping[str, Seen] = field(default_factory=lambda: MappingProxyType({}))

    def encode(self) -> str:
        payload = {"v": CURSOR_VERSION, "d": self.day.isoformat() if self.day else None,
                   "o": {oid: [wire_decimal(s.executed), None if s.average is None else wire_decimal(s.average),
                               s.day.isoformat(), int(s.open)] for oid, s in sorted(self.seen.items())}}
        return json.dumps(payload, separators=(",", ":"), sort_keys=True)

    @classmethod
    def decode(cls, cursor: str | None) -> FillCursor:
        if cursor is None:
            return cls()
        try:
            raw = json.loads(cursor)
            if not isinstance(raw, dict) or raw.get("v") != CURSOR_VERSION:
                raise ValueError("unknown cursor version")
            seen = {str(oid): Seen(decimal_of(entry[0]), None if entry[1] is None else decimal_of(entry[1]),
                                   date.fromisoformat(entry[2]), bool(entry[3]))
                    for oid, entry in raw["o"].items()}
            day = None if raw["d"] is None else date.fromisoformat(raw["d"])
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise ValueError(f"not a tradestation fills cursor ({type(exc).__name__})") from None
        return cls(day, MappingProxyType(seen))

    def open_orders(self) -> set[str]:
        return {oid for oid, s in self.seen.items() if s.open}

    def history_since(self, today: date, first_lookback_days: int, max_days: int) -> date:
        """The ``since`` date for ``historicalorders``: the last poll's day (or the first look-back)
        minus the margin, never further back than the venue allows."""
        start = self.day if self.day is not None else today - timedelta(days=first_lookback_days)
        return max(start - timedelta(days=HISTORY_MARGIN_DAYS), today - timedelta(days=max_days))


def fills_from_orders(
    orders: Sequence[Mapping[str, Any]],
    cursor: FillCursor,
    *,
    today: date,
    now_ns: int,
    client_id_of: Callable[[Mapping[str, Any]], str],
) -> tuple[list[BrokerFill], FillCursor]:
    """New fills in ``orders`` (merged answers of one poll) relative to ``cursor``, and the next
    cursor. Pure: ``today`` and ``now_ns`` come from the caller's clock.

    A fill is an increase of an order's executed quantity; its price is derived from the change of
    the average (exact when the whole order fills at once, as futures orders mostly do). Its time is
    the order's ``ClosedDateTime`` once closed, else ``now_ns`` (TradeStation's order answers carry
    no per-execution time). Orders the cursor knows but this poll did not return are kept while
    they could still show up (open, or closed within the margin); older ones are dropped.
    """
    fills: list[BrokerFill] = []
    seen: dict[str, Seen] = {}
    for order in orders:
        order_id = order_id_of(order)
        status = order_status(order["Status"])
        total, average = executed(order)
        closed_at = order.get("ClosedDateTime")
        closed_ns = iso_to_ns(closed_at) if closed_at else None
        is_open = status in WORKING_STATUSES
        before = cursor.seen.get(order_id)
        before_qty = before.executed if before is not None else Decimal(0)
        if total > before_qty:
            assert average is not None  # executed() insists on a price for a non-zero quantity
            increment = total - before_qty
            if before is not None and before.average is not None and before_qty > 0:
                price = (total * average - before_qty * before.average) / increment
            else:
                price = average
            leg = _only_leg(order)
            fills.append(BrokerFill(
                broker_fill_id=f"{order_id}:{wire_decimal(total)}",
                broker_order_id=order_id,
                client_order_id=client_id_of(order),
                symbol=text(leg.get("Symbol") or order.get("Symbol")),
                side=_SIDES[text(leg["BuyOrSell"]).lower()],
                quantity=increment,
                price=price,
                ts_ns=closed_ns if closed_ns is not None else now_ns,
            ))
        elif before is not None and total < before_qty:
            total, average = before_qty, before.average  # never go backwards (a corrected fill is for a human)
        if total > 0 or is_open:
            day = today if is_open or closed_ns is None else utc_date(closed_ns)
            seen[order_id] = Seen(total, average, day, is_open)
    keep_from = today - timedelta(days=HISTORY_MARGIN_DAYS)
    for order_id, entry in cursor.seen.items():
        if order_id not in seen and entry.day >= keep_from:
            seen[order_id] = entry
    return fills, FillCursor(today, MappingProxyType(seen))
