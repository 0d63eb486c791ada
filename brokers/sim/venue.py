"""The simulator's matching engine: pure state, no I/O, no clock.

Time comes from the bars: the venue's "now" is the open time of the latest bar it has been given,
and fills are stamped with the open time of the bar that filled them. The HTTP server
(``brokers.sim.server``) owns threads, sockets and pacing, and calls in under one lock.

Fill model (whole quantity at once; no partial fills, no queue position; slippage only when asked):

* MARKET — submitted while bar t is the latest closed bar, fills at the OPEN of bar t+1.
* LIMIT — fills on the first later bar whose range reaches the limit L, at L, or at the bar's open
  when the bar opens through L. Buy: open ≤ L → open, else low ≤ L → L. Sell: open ≥ L → open,
  else high ≥ L → L.
* STOP — becomes a market order when a later bar trades through the stop S, filling at S, or at
  the open when the bar opens through S. Buy: open ≥ S → open, else high ≥ S → S. Sell mirrors.
* STOP_LIMIT — the stop S triggers as above at trigger price T (the open if gapped, else S). If T
  satisfies the limit L (buy: T ≤ L; sell: T ≥ L) it fills at T in that same bar. Otherwise the
  order rests as a plain LIMIT from the NEXT bar on: within the trigger bar we cannot know whether
  the range after the trigger came back to L, so we never assume it did.
* Slippage: with ``slippage_ticks`` = n > 0, MARKET and STOP fills (the orders that take whatever
  the market gives) move n ticks against the order — a buy pays n ticks more, a sell receives n
  ticks less (never below one tick). LIMIT and STOP_LIMIT fills are at their price or better and do
  not slip. The default, 0, is the model above unchanged.
* Time in force: DAY and GTC behave alike (bars carry no session boundaries). IOC orders get one
  bar: if the first bar after submission does not fill them, they expire.

Account equity (``summary``) is the account's starting equity plus the realized P&L of its fills,
average-cost: a fill that reduces a position realizes ``closed quantity × (fill price − average
price) × point value`` (sign flipped for a short). Open positions are not marked to market.

An order is "working" (``ACCEPTED``) until it fills, is cancelled or expires. Every submit attempt
is counted in ``submissions`` by client order id, including duplicates (which are rejected), so
tests can assert that nothing was ever sent twice.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from brokers.base import Bar, OrderRequest
from schema.enums import OrderStatus, OrderType, Side, TimeInForce

DUPLICATE_CLIENT_ID = "duplicate client order id"
DEFAULT_STARTING_EQUITY = Decimal("1000000")
"""Equity of an account before any fill, unless the venue is told otherwise."""
NO_BAR_YET = -1
"""``submitted_after_index`` of an order placed before any bar of its symbol."""
SLIPPING_ORDER_TYPES = frozenset({OrderType.MARKET, OrderType.STOP})
"""Orders that take the market's price and so can slip (see the module docstring)."""


class VenueError(Exception):
    """Base of the venue's refusals (the server maps them to HTTP answers)."""


class OrderRejected(VenueError):
    def __init__(self, reason: str, order: VenueOrder | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.order = order


class UnknownOrder(VenueError):
    pass


class UnknownAccount(VenueError):
    pass


@dataclass(frozen=True)
class VenueOrder:
    order_id: str
    account: str
    client_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    limit_price: Decimal | None
    stop_price: Decimal | None
    time_in_force: TimeInForce
    status: OrderStatus
    filled_quantity: Decimal
    average_price: Decimal | None
    reason: str | None
    submitted_after_index: int
    """Index of the latest bar of ``symbol`` when the order arrived; only later bars may fill it."""
    created_ns: int
    updated_ns: int
    triggered: bool = False
    """A STOP_LIMIT whose stop has traded and now works as a limit."""

    @property
    def is_working(self) -> bool:
        return self.status is OrderStatus.ACCEPTED


@dataclass(frozen=True)
class VenueFill:
    seq: int
    fill_id: str
    order_id: str
    account: str
    client_order_id: str
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    ts_ns: int
    bar_index: int


@dataclass(frozen=True)
class AccountSummary:
    account: str
    starting_equity: Decimal
    realized_pnl: Decimal
    equity: Decimal
    """``starting_equity + realized_pnl``."""


@dataclass(frozen=True)
class VenuePosition:
    account: str
    symbol: str
    quantity: Decimal
    average_price: Decimal | None


# ---------------------------------------------------------------- fill rules (pure functions)


def limit_fill_price(side: Side, limit: Decimal, bar: Bar) -> Decimal | None:
    if side is Side.BUY:
        if bar.open <= limit:
            return bar.open
        return limit if bar.low <= limit else None
    if bar.open >= limit:
        return bar.open
    return limit if bar.high >= limit else None


def stop_trigger_price(side: Side, stop: Decimal, bar: Bar) -> Decimal | None:
    if side is Side.BUY:
        if bar.open >= stop:
            return bar.open
        return stop if bar.high >= stop else None
    if bar.open <= stop:
        return bar.open
    return stop if bar.low <= stop else None


def _limit_allows(side: Side, limit: Decimal, price: Decimal) -> bool:
    return price <= limit if side is Side.BUY else price >= limit


def evaluate(order: VenueOrder, bar: Bar) -> tuple[Decimal | None, bool]:
    """(fill price or None, triggered) for a working order against one later bar."""
    if order.order_type is OrderType.MARKET:
        return bar.open, order.triggered
    if order.order_type is OrderType.LIMIT:
        assert order.limit_price is not None
        return limit_fill_price(order.side, order.limit_price, bar), order.triggered
    if order.order_type is OrderType.STOP:
        assert order.stop_price is not None
        return stop_trigger_price(order.side, order.stop_price, bar), order.triggered
    assert order.limit_price is not None and order.stop_price is not None
    if order.triggered:
        return limit_fill_price(order.side, order.limit_price, bar), True
    trigger = stop_trigger_price(order.side, order.stop_price, bar)
    if trigger is None:
        return None, False
    if _limit_allows(order.side, order.limit_price, trigger):
        return trigger, True
    return None, True


# ---------------------------------------------------------------- the venue


class Venue:
    """Accounts, orders, fills and positions of the simulated broker.

    ``symbols`` maps each tradeable symbol to its tick size; prices off the tick are rejected.
    With ``symbols=None`` any symbol that has had a bar is tradeable and ticks are not checked.
    ``point_values`` (currency per point per contract) value realized P&L; a symbol missing from it
    counts 1. ``starting_equity`` is one amount for every account or one per account (missing:
    ``DEFAULT_STARTING_EQUITY``). ``slippage_ticks`` moves MARKET and STOP fills against the order
    (see the module docstring); it needs ``symbols`` (their tick sizes).
    """

    def __init__(self, accounts: Iterable[str], symbols: Mapping[str, Decimal] | None = None, *,
                 point_values: Mapping[str, Decimal] | None = None,
                 starting_equity: Decimal | Mapping[str, Decimal] = DEFAULT_STARTING_EQUITY,
                 slippage_ticks: int = 0) -> None:
        if slippage_ticks < 0:
            raise ValueError(f"slippage_ticks must be >= 0, got {slippage_ticks}")
        if slippage_ticks and symbols is None:
            raise ValueError("slippage_ticks needs the symbols' tick sizes")
        self.accounts: frozenset[str] = frozenset(accounts)
        self.slippage_ticks = slippage_ticks
        self._point_values: dict[str, Decimal] = dict(point_values or {})
        if isinstance(starting_equity, Decimal):
            self._starting = {a: starting_equity for a in self.accounts}
        else:
            self._starting = {a: starting_equity.get(a, DEFAULT_STARTING_EQUITY) for a in self.accounts}
        self._realized: dict[str, Decimal] = {a: Decimal(0) for a in self.accounts}
        self._ticks: dict[str, Decimal] | None = None if symbols is None else dict(symbols)
        self._orders: dict[str, VenueOrder] = {}
        self._working_ids: dict[str, None] = {}
        """Ids of the working orders, in arrival order: ``on_bar`` looks only at these, so a long
        run's filled orders cost nothing per bar."""
        self._by_client: dict[tuple[str, str], str] = {}
        self._fills: list[VenueFill] = []
        self._positions: dict[tuple[str, str], VenuePosition] = {}
        self._last_bar: dict[str, Bar] = {}
        self.submissions: dict[str, int] = {}
        self._next_order = 1

    # -- queries

    @property
    def now_ns(self) -> int:
        return max((b.ts_ns for b in self._last_bar.values()), default=0)

    def last_bar(self, symbol: str) -> Bar | None:
        return self._last_bar.get(symbol)

    @property
    def order_count(self) -> int:
        return len(self._orders)

    @property
    def fill_count(self) -> int:
        return len(self._fills)

    def order_by_client_id(self, account: str, client_order_id: str) -> VenueOrder | None:
        self._check_account(account)
        order_id = self._by_client.get((account, client_order_id))
        return None if order_id is None else self._orders[order_id]

    def orders(self, account: str, *, open_only: bool = False) -> list[VenueOrder]:
        self._check_account(account)
        return [o for o in self._orders.values() if o.account == account and (o.is_working or not open_only)]

    def open_orders(self, account: str) -> list[VenueOrder]:
        return self.orders(account, open_only=True)

    def positions(self, account: str) -> list[VenuePosition]:
        self._check_account(account)
        return [p for (acct, _), p in sorted(self._positions.items()) if acct == account and p.quantity != 0]

    def all_orders(self) -> list[VenueOrder]:
        """Every order of every account, in the order they arrived (the operator's view)."""
        return list(self._orders.values())

    def all_fills(self) -> list[VenueFill]:
        """Every fill of every account, once each, oldest first."""
        return list(self._fills)

    def all_positions(self) -> list[VenuePosition]:
        """Every non-flat position of every account, by (account, symbol)."""
        return [p for _, p in sorted(self._positions.items()) if p.quantity != 0]

    def summary(self, account: str) -> AccountSummary:
        """Starting equity plus realized P&L of ``account`` (see the module docstring)."""
        self._check_account(account)
        start, realized = self._starting[account], self._realized[account]
        return AccountSummary(account, start, realized, start + realized)

    def fills_since(self, account: str, seq: int = 0, limit: int | None = None) -> list[VenueFill]:
        """Fills of ``account`` with a sequence number above ``seq``, oldest first."""
        self._check_account(account)
        found = [f for f in self._fills if f.seq > seq and f.account == account]
        return found if limit is None else found[:limit]

    # -- commands

    def submit(self, account: str, request: OrderRequest) -> VenueOrder:
        """Accept a new order or raise ``OrderRejected`` (the rejected order, when one was
        recorded, rides on the exception). A duplicate client id is refused without touching the
        existing order."""
        self.submissions[request.client_order_id] = self.submissions.get(request.client_order_id, 0) + 1
        self._check_account(account)
        if (account, request.client_order_id) in self._by_client:
            raise OrderRejected(DUPLICATE_CLIENT_ID)
        last = self._last_bar.get(request.symbol)
        order = VenueOrder(
            order_id=f"O{self._next_order}",
            account=account,
            client_order_id=request.client_order_id,
            symbol=request.symbol,
            side=request.side,
            order_type=request.order_type,
            quantity=request.quantity,
            limit_price=request.limit_price,
            stop_price=request.stop_price,
            time_in_force=request.time_in_force,
            status=OrderStatus.ACCEPTED,
            filled_quantity=Decimal(0),
            average_price=None,
            reason=None,
            submitted_after_index=NO_BAR_YET if last is None else last.index,
            created_ns=self.now_ns,
            updated_ns=self.now_ns,
        )
        self._next_order += 1
        problem = self._validate(order)
        if problem is not None:
            order = dataclasses.replace(order, status=OrderStatus.REJECTED, reason=problem)
        self._store(order)
        self._by_client[(account, order.client_order_id)] = order.order_id
        if problem is not None:
            raise OrderRejected(problem, order)
        return order

    def cancel(self, account: str, client_order_id: str) -> VenueOrder:
        order = self._working(account, client_order_id, "cancel")
        return self._store(dataclasses.replace(order, status=OrderStatus.CANCELLED, updated_ns=self.now_ns))

    def modify(
        self,
        account: str,
        client_order_id: str,
        *,
        quantity: Decimal | None = None,
        limit_price: Decimal | None = None,
        stop_price: Decimal | None = None,
    ) -> VenueOrder:
        """Change a working order in place (same ids). A refused change leaves it untouched."""
        order = self._working(account, client_order_id, "modify")
        changed = dataclasses.replace(
            order,
            quantity=order.quantity if quantity is None else quantity,
            limit_price=order.limit_price if limit_price is None else limit_price,
            stop_price=order.stop_price if stop_price is None else stop_price,
            updated_ns=self.now_ns,
        )
        problem = self._validate(changed)
        if problem is not None:
            raise OrderRejected(problem, order)
        return self._store(changed)

    def on_bar(self, bar: Bar) -> list[VenueFill]:
        """Advance ``bar.symbol`` by one closed bar: fill or expire the working orders it reaches."""
        last = self._last_bar.get(bar.symbol)
        if last is not None and bar.index <= last.index:
            raise ValueError(f"bar {bar.index} of {bar.symbol} is not after bar {last.index}")
        if self._ticks is not None and bar.symbol not in self._ticks:
            raise ValueError(f"venue does not trade {bar.symbol}")
        self._last_bar[bar.symbol] = bar
        fills: list[VenueFill] = []
        for order_id in list(self._working_ids):
            order = self._orders[order_id]
            if order.symbol != bar.symbol or bar.index <= order.submitted_after_index:
                continue
            price, triggered = evaluate(order, bar)
            if price is not None:
                if self.slippage_ticks and order.order_type in SLIPPING_ORDER_TYPES:
                    price = self._slipped(order, price)
                fills.append(self._fill(order, price, bar))
            elif order.time_in_force is TimeInForce.IOC:
                self._store(dataclasses.replace(order, status=OrderStatus.EXPIRED, triggered=triggered,
                                                reason="IOC not filled on the next bar", updated_ns=bar.ts_ns))
            elif triggered != order.triggered:
                self._store(dataclasses.replace(order, triggered=triggered, updated_ns=bar.ts_ns))
        return fills

    # -- internals

    def _check_account(self, account: str) -> None:
        if account not in self.accounts:
            raise UnknownAccount(f"unknown account {account!r}")

    def _working(self, account: str, client_order_id: str, action: str) -> VenueOrder:
        order = self.order_by_client_id(account, client_order_id)
        if order is None:
            raise UnknownOrder(client_order_id)
        if not order.is_working:
            raise OrderRejected(f"cannot {action}: order is {order.status.value}", order)
        return order

    def _store(self, order: VenueOrder) -> VenueOrder:
        self._orders[order.order_id] = order
        if order.is_working:
            self._working_ids[order.order_id] = None
        else:
            self._working_ids.pop(order.order_id, None)
        return order

    def _slipped(self, order: VenueOrder, price: Decimal) -> Decimal:
        assert self._ticks is not None  # the constructor insists on ticks when slipping
        tick = self._ticks[order.symbol]
        slip = self.slippage_ticks * tick
        return price + slip if order.side is Side.BUY else max(tick, price - slip)

    def _validate(self, order: VenueOrder) -> str | None:
        """Why the venue refuses ``order``, or None. Checked on submit and on every modify."""
        known = self._last_bar if self._ticks is None else self._ticks
        if order.symbol not in known:
            return f"unknown symbol {order.symbol}"
        if not _is_finite(order.quantity) or order.quantity <= 0 or order.quantity != order.quantity.to_integral_value():
            return "quantity must be a positive whole number of contracts"
        needs_limit = order.order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT)
        needs_stop = order.order_type in (OrderType.STOP, OrderType.STOP_LIMIT)
        if needs_limit != (order.limit_price is not None):
            return f"limit_price is {'required' if needs_limit else 'not allowed'} for {order.order_type.value} orders"
        if needs_stop != (order.stop_price is not None):
            return f"stop_price is {'required' if needs_stop else 'not allowed'} for {order.order_type.value} orders"
        tick = None if self._ticks is None else self._ticks[order.symbol]
        for name, price in (("limit_price", order.limit_price), ("stop_price", order.stop_price)):
            if price is None:
                continue
            if not _is_finite(price) or price <= 0:
                return f"{name} must be positive"
            if tick is not None and price % tick != 0:
                return f"{name} {price} is not a multiple of the tick {tick}"
        return None

    def _fill(self, order: VenueOrder, price: Decimal, bar: Bar) -> VenueFill:
        seq = len(self._fills) + 1
        fill = VenueFill(
            seq=seq,
            fill_id=f"F{seq}",
            order_id=order.order_id,
            account=order.account,
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,
            quantity=order.quantity - order.filled_quantity,
            price=price,
            ts_ns=bar.ts_ns,
            bar_index=bar.index,
        )
        self._fills.append(fill)
        self._store(dataclasses.replace(
            order, status=OrderStatus.FILLED, filled_quantity=order.quantity, average_price=price,
            triggered=order.triggered or order.order_type is OrderType.STOP_LIMIT, updated_ns=bar.ts_ns,
        ))
        self._apply_to_position(fill)
        return fill

    def _apply_to_position(self, fill: VenueFill) -> None:
        key = (fill.account, fill.symbol)
        held = self._positions.get(key)
        quantity = Decimal(0) if held is None else held.quantity
        average = None if held is None else held.average_price
        point_value = self._point_values.get(fill.symbol, Decimal(1))
        self._realized[fill.account] += realized_points(quantity, average, fill.side.sign * fill.quantity,
                                                        fill.price) * point_value
        self._positions[key] = VenuePosition(fill.account, fill.symbol, *apply_fill(quantity, average, fill.side.sign * fill.quantity, fill.price))


def apply_fill(quantity: Decimal, average: Decimal | None, signed_fill: Decimal, price: Decimal) -> tuple[Decimal, Decimal | None]:
    """New (signed quantity, average price) after a signed fill: adding averages in; reducing keeps
    the average; crossing through flat opens the remainder at the fill price; flat has no average."""
    new_quantity = quantity + signed_fill
    if new_quantity == 0:
        return new_quantity, None
    if quantity == 0 or average is None:
        return new_quantity, price
    if (quantity > 0) == (signed_fill > 0):
        return new_quantity, (quantity * average + signed_fill * price) / new_quantity
    if (quantity > 0) == (new_quantity > 0):
        return new_quantity, average
    return new_quantity, price


def realized_points(quantity: Decimal, average: Decimal | None, signed_fill: Decimal, price: Decimal) -> Decimal:
    """Points × contracts realized by a signed fill against a signed position at ``average``: only
    the part of the fill that closes contracts realizes anything (the rest opens or adds)."""
    if quantity == 0 or average is None or (quantity > 0) == (signed_fill > 0):
        return Decimal(0)
    closed = min(abs(signed_fill), abs(quantity))
    return closed * (price - average) if quantity > 0 else closed * (average - price)


def _is_finite(value: Decimal) -> bool:
    try:
        return value.is_finite()
    except (AttributeError, InvalidOperation):
        return False
