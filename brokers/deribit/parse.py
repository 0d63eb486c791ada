"""Deribit wire dicts ↔ ``brokers.base`` types: pure functions, no I/O, no clock.

Units. The engine's quantity is CONTRACTS. Deribit's ``amount`` on futures is USD notional, a
multiple of the instrument's contract size (10 USD for BTC-PERPETUAL). We send ``amount`` (the
parameter every Deribit API version documents; ``contracts`` is a later, optional alternative) as
``contracts × contract size`` and read ``amount``/``filled_amount``/position ``size``/trade
``amount`` back by dividing; an amount that is not a whole number of contracts is a bad answer.

Timestamps: Deribit sends integer milliseconds; we keep integer UTC nanoseconds.

Bars. A chart tick is the bar's OPEN time. Deribit's chart answer and its ``chart.trades`` channel
both include the bar still forming; ``closed_bars`` keeps only bars that ended by the venue's clock,
and ``ClosedBars`` yields a streamed bar only once a NEWER tick arrives (the real channel re-sends the
forming bar as it updates; the last version before a newer tick is the closed bar). A quiet market
with no new tick therefore delays the last bar: *unconfirmed* whether Deribit emits an empty bar
for a minute without trades; BTC-PERPETUAL trades every minute in practice.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from brokers.base import Bar, BrokerFill, BrokerOrder, BrokerPosition, OrderRequest
from brokers.errors import NotSupported, UnknownSymbol
from brokers.intervals import interval_ns
from brokers.wire import decimal_of, int_of
from schema.enums import OrderStatus, OrderType, Side, TimeInForce

BROKER = "deribit"
NS_PER_MS = 1_000_000
MAX_LABEL_CHARS = 64

CONTRACT_SIZE_USD: Mapping[str, Decimal] = MappingProxyType({"BTC-PERPETUAL": Decimal(10)})
"""USD notional of one contract (Deribit's ``contract_size``; ``public/get_instrument`` states it)."""

ORDER_TYPES: Mapping[OrderType, str] = MappingProxyType({
    OrderType.MARKET: "market",
    OrderType.LIMIT: "limit",
    OrderType.STOP: "stop_market",
    OrderType.STOP_LIMIT: "stop_limit",
})
_ORDER_TYPES_BACK: Mapping[str, OrderType] = MappingProxyType({v: k for k, v in ORDER_TYPES.items()})

TIME_IN_FORCE: Mapping[TimeInForce, str] = MappingProxyType({
    TimeInForce.DAY: "good_til_day",
    TimeInForce.GTC: "good_til_cancelled",
    TimeInForce.IOC: "immediate_or_cancel",
})
_EXPIRING_TIF = frozenset({"immediate_or_cancel", "fill_or_kill"})

STOP_TRIGGER = "last_price"
"""Deribit stops need a trigger source (index/mark/last); the engine's stops trigger on trades."""

RESOLUTIONS: Mapping[str, str] = MappingProxyType({
    "1m": "1", "3m": "3", "5m": "5", "10m": "10", "15m": "15", "30m": "30",
    "1h": "60", "2h": "120", "3h": "180", "6h": "360", "12h": "720", "1d": "1D",
})
"""Engine interval → Deribit chart resolution (the set Deribit's chart endpoints accept)."""


# ---------------------------------------------------------------- small readers


def str_of(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def contract_size(instrument: str) -> Decimal:
    try:
        return CONTRACT_SIZE_USD[instrument]
    except KeyError:
        raise UnknownSymbol(instrument, broker=BROKER, detail="no contract size known") from None


def currency_of(instrument: str) -> str:
    """``BTC-PERPETUAL`` → ``BTC`` (the ``currency`` parameter of account-wide queries)."""
    contract_size(instrument)
    return instrument.split("-", 1)[0]


def to_amount(instrument: str, contracts: Decimal) -> Decimal:
    return contracts * contract_size(instrument)


def to_contracts(instrument: str, amount: Decimal) -> Decimal:
    contracts = amount / contract_size(instrument)
    if contracts != contracts.to_integral_value():
        raise ValueError(f"amount {amount} is not a whole number of contracts")
    return contracts.quantize(Decimal(1))


def resolution(interval: str) -> str:
    """The chart resolution for an engine interval; ``NotSupported`` for one Deribit lacks."""
    interval_ns(interval)  # ValueError for a malformed interval
    try:
        return RESOLUTIONS[interval]
    except KeyError:
        raise NotSupported(BROKER, f"{interval} bars", f"Deribit charts offer {', '.join(RESOLUTIONS)}") from None


def interval_ms(interval: str) -> int:
    return interval_ns(interval) // NS_PER_MS


# ---------------------------------------------------------------- requests


def order_request(req: OrderRequest) -> tuple[str, dict[str, Any]]:
    """(method, params) for ``private/buy``/``private/sell``. ``ValueError`` for a request that
    cannot be expressed (the caller turns it into a refusal before anything is sent)."""
    if not req.client_order_id or len(req.client_order_id) > MAX_LABEL_CHARS:
        raise ValueError(f"the client order id must be 1..{MAX_LABEL_CHARS} characters (Deribit's label)")
    params: dict[str, Any] = {
        "instrument_name": req.symbol,
        "amount": to_amount(req.symbol, req.quantity),
        "type": ORDER_TYPES[req.order_type],
        "label": req.client_order_id,
        "time_in_force": TIME_IN_FORCE[req.time_in_force],
    }
    if req.order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT) and req.limit_price is not None:
        params["price"] = req.limit_price
    if req.order_type in (OrderType.STOP, OrderType.STOP_LIMIT):
        if req.stop_price is not None:
            params["trigger_price"] = req.stop_price
        params["trigger"] = STOP_TRIGGER
    method = "private/buy" if req.side is Side.BUY else "private/sell"
    return method, params


def edit_request(order: BrokerOrder, quantity: Decimal | None, limit_price: Decimal | None,
                 stop_price: Decimal | None) -> dict[str, Any]:
    """``private/edit`` params: Deribit wants the full amount (and price) every time, so what is not
    changed is sent as the order has it."""
    params: dict[str, Any] = {
        "order_id": order.broker_order_id,
        "amount": to_amount(order.symbol, order.quantity if quantity is None else quantity),
    }
    price = order.limit_price if limit_price is None else limit_price
    if price is not None:
        params["price"] = price
    trigger = order.stop_price if stop_price is None else stop_price
    if trigger is not None:
        params["trigger_price"] = trigger
    return params


# ---------------------------------------------------------------- answers


def order_status(state: str, filled: Decimal, time_in_force: str | None) -> OrderStatus:
    if state == "open":
        return OrderStatus.PARTIALLY_FILLED if filled > 0 else OrderStatus.ACCEPTED
    if state == "untriggered":
        return OrderStatus.ACCEPTED
    if state == "filled":
        return OrderStatus.FILLED
    if state == "rejected":
        return OrderStatus.REJECTED
    if state == "cancelled":
        # An IOC/FOK order is never cancelled by us: the venue cancelling it means it expired.
        return OrderStatus.EXPIRED if time_in_force in _EXPIRING_TIF else OrderStatus.CANCELLED
    raise ValueError(f"unknown order_state {state!r}")


def parse_order(data: Any) -> BrokerOrder:
    """A Deribit order object. Market orders carry ``price: "market_price"`` (a string): no limit."""
    if not isinstance(data, dict):
        raise TypeError("order is not an object")
    instrument = str_of(data["instrument_name"])
    order_type = _ORDER_TYPES_BACK.get(str_of(data["order_type"]))
    if order_type is None:
        raise ValueError(f"order_type {data['order_type']!r} is not one the engine places")
    filled = to_contracts(instrument, decimal_of(data["filled_amount"]))
    time_in_force = data.get("time_in_force")
    average = data.get("average_price")
    label = data.get("label")
    trigger = data.get("trigger_price")
    reason = data.get("cancel_reason") or data.get("reject_reason")
    return BrokerOrder(
        broker_order_id=str_of(data["order_id"]),
        client_order_id="" if label is None else str_of(label),
        symbol=instrument,
        side=Side(str_of(data["direction"])),
        order_type=order_type,
        quantity=to_contracts(instrument, decimal_of(data["amount"])),
        filled_quantity=filled,
        # Deribit reports 0 as the average of an order with nothing filled.
        average_price=decimal_of(average) if filled > 0 and average is not None else None,
        status=order_status(str_of(data["order_state"]), filled, time_in_force if isinstance(time_in_force, str) else None),
        limit_price=decimal_of(data["price"]) if order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT) else None,
        stop_price=decimal_of(trigger) if order_type in (OrderType.STOP, OrderType.STOP_LIMIT) else None,
        reason=str(reason) if reason else None,
        updated_ns=int_of(data["last_update_timestamp"]) * NS_PER_MS,
    )


@dataclass(frozen=True)
class Trade:
    """A fill and the venue's per-instrument trade sequence number (the fills cursor)."""

    seq: int
    fill: BrokerFill


def parse_trade(data: Any) -> Trade:
    if not isinstance(data, dict):
        raise TypeError("trade is not an object")
    instrument = str_of(data["instrument_name"])
    label = data.get("label")
    fill = BrokerFill(
        broker_fill_id=str_of(data["trade_id"]),
        broker_order_id=str_of(data["order_id"]),
        client_order_id="" if label is None else str_of(label),
        symbol=instrument,
        side=Side(str_of(data["direction"])),
        quantity=to_contracts(instrument, decimal_of(data["amount"])),
        price=decimal_of(data["price"]),
        ts_ns=int_of(data["timestamp"]) * NS_PER_MS,
    )
    return Trade(int_of(data["trade_seq"]), fill)


def parse_position(data: Any) -> BrokerPosition | None:
    """A position (``size`` is signed USD: negative = short); None when flat (Deribit lists
    instruments traded before with size 0)."""
    if not isinstance(data, dict):
        raise TypeError("position is not an object")
    instrument = str_of(data["instrument_name"])
    quantity = to_contracts(instrument, decimal_of(data["size"]))
    if quantity == 0:
        return None
    average = data.get("average_price")
    return BrokerPosition(symbol=instrument, quantity=quantity,
                          average_price=None if average is None else decimal_of(average))


def merge_positions(parts: list[BrokerPosition]) -> list[BrokerPosition]:
    """One position per instrument from several subaccounts' (the engine's account spans every
    subaccount it has traded in). The average is size-weighted when all parts point the same way;
    opposite parts net out and have no meaningful average (None)."""
    by_symbol: dict[str, list[BrokerPosition]] = {}
    for part in parts:
        by_symbol.setdefault(part.symbol, []).append(part)
    merged = []
    for symbol, group in by_symbol.items():
        total = sum((p.quantity for p in group), Decimal(0))
        if total == 0:
            continue
        same_way = all((p.quantity > 0) == (total > 0) for p in group)
        if len(group) == 1:
            average = group[0].average_price
        elif same_way and all(p.average_price is not None for p in group):
            average = sum((p.quantity * p.average_price for p in group), Decimal(0)) / total  # type: ignore[operator]
        else:
            average = None
        merged.append(BrokerPosition(symbol, total, average))
    return merged


def parse_equity(data: Any) -> Decimal:
    if not isinstance(data, dict):
        raise TypeError("account summary is not an object")
    return decimal_of(data["equity"])


def parse_account_id(data: Any) -> int:
    if not isinstance(data, dict):
        raise TypeError("account summary is not an object")
    return int_of(data["id"])


# ---------------------------------------------------------------- bars


def bar_of(symbol: str, interval: str, tick_ms: int, open_: Any, high: Any, low: Any, close: Any,
           volume: Any) -> Bar:
    ts_ns = tick_ms * NS_PER_MS
    return Bar(symbol=symbol, interval=interval, ts_ns=ts_ns, open=decimal_of(open_), high=decimal_of(high),
               low=decimal_of(low), close=decimal_of(close), volume=decimal_of(volume),
               index=ts_ns // interval_ns(interval))


def closed_bars(data: Any, symbol: str, interval: str, *, now_ms: int) -> list[Bar]:
    """The bars of a ``public/get_tradingview_chart_data`` answer that had ended by ``now_ms`` (the
    venue's clock), oldest first. ``status: "no_data"`` is an empty answer, not an error."""
    if not isinstance(data, dict):
        raise TypeError("chart data is not an object")
    status = data.get("status")
    if status == "no_data":
        return []
    if status != "ok":
        raise ValueError(f"chart status {status!r}")
    columns = [data[name] for name in ("ticks", "open", "high", "low", "close", "volume")]
    if not all(isinstance(c, list) for c in columns) or len({len(c) for c in columns}) != 1:
        raise ValueError("chart columns are not lists of one length")
    length = interval_ms(interval)
    bars = []
    for tick, open_, high, low, close, volume in zip(*columns, strict=True):
        if int_of(tick) + length > now_ms:
            continue  # still forming
        bars.append(bar_of(symbol, interval, tick, open_, high, low, close, volume))
    bars.sort(key=lambda b: b.ts_ns)
    return bars


def chart_channel(instrument: str, interval: str) -> str:
    return f"chart.trades.{instrument}.{resolution(interval)}"


def parse_chart_update(data: Any, symbol: str, interval: str) -> Bar:
    """The ``data`` of a ``chart.trades`` notification: one version of the bar at ``tick``."""
    if not isinstance(data, dict):
        raise TypeError("chart update is not an object")
    return bar_of(symbol, interval, int_of(data["tick"]), data["open"], data["high"], data["low"], data["close"],
                  data["volume"])


class ClosedBars:
    """Turns the channel's bar versions into closed bars, once each, in order.

    Holds the latest version of the newest tick; a newer tick closes it. Versions of ticks at or
    before the last yielded one (repeats, stale re-sends, bars already replayed from history) and
    versions older than the held tick are ignored.
    """

    def __init__(self, after_index: int | None = None) -> None:
        self.last_index = after_index
        self._pending: Bar | None = None

    def update(self, bar: Bar) -> Bar | None:
        if self.last_index is not None and bar.index <= self.last_index:
            return None
        pending = self._pending
        if pending is None or bar.index == pending.index:
            self._pending = bar
            return None
        if bar.index < pending.index:
            return None
        self._pending = bar
        self.last_index = pending.index
        return pending

    def replayed(self, bar: Bar) -> None:
        """``bar`` was yielded from history: never yield it (or anything older) again."""
        self.last_index = bar.index if self.last_index is None else max(self.last_index, bar.index)
        if self._pending is not None and self._pending.index <= self.last_index:
            self._pending = None


# ---------------------------------------------------------------- fills cursor

CURSOR_PREFIX = "deribit1:"
_CURSOR_KEY = re.compile(r"^\d+/[A-Z0-9_-]+$")


def encode_cursor(seqs: Mapping[str, int]) -> str:
    """The last trade_seq seen per ``<account id>/<instrument>``: ``deribit1:1/BTC-PERPETUAL=57``
    (trade_seq counts per instrument; each subaccount sees only its own trades)."""
    return CURSOR_PREFIX + ",".join(f"{key}={seq}" for key, seq in sorted(seqs.items()))


def decode_cursor(cursor: str | None) -> dict[str, int]:
    if cursor is None:
        return {}
    if not cursor.startswith(CURSOR_PREFIX):
        raise ValueError(f"not a deribit fills cursor: {cursor[:24]!r}")
    body = cursor[len(CURSOR_PREFIX):]
    seqs: dict[str, int] = {}
    if not body:
        return seqs
    for part in body.split(","):
        key, sep, seq = part.partition("=")
        if not sep or not _CURSOR_KEY.match(key) or not seq.isdigit():
            raise ValueError(f"not a deribit fills cursor: {cursor[:24]!r}")
        seqs[key] = int(seq)
    return seqs
