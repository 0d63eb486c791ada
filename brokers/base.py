"""The broker seam: plain data types, the four roles a broker supplies, and the facade callers use.

A broker supplies up to four parts (DESIGN.md §7):

* ``Registry`` — its name and capability flags;
* ``SymbolAdapter`` — canonical ↔ broker symbols;
* ``Execution`` — orders, positions and fills for ONE account (optional: data-only brokers);
* ``MarketData`` — historical and streaming bars (optional: execution-only brokers).

Roles speak the broker's own symbols; the ``BrokerFacade`` translates at its edge, so symbol
translation happens in exactly one place and every symbol a caller sees is canonical (``ESZ6``,
``ES`` for a continuous series, ``BTC-PERPETUAL``). A missing role or capability is answered with
``NotSupported`` naming the broker and capability — never an ``AttributeError``.

Money, prices and quantities are ``Decimal``; timestamps are UTC integer nanoseconds.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol, TypeVar, runtime_checkable

from brokers.errors import NotSupported, UnexpectedResponse, UnknownSymbol
from schema.enums import OrderStatus, OrderType, Side, TimeInForce

# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Capabilities:
    execution: bool
    market_data: bool
    lookup_by_client_id: bool
    """The broker can be asked for an order by our client id — required to resolve an unknown
    outcome without the operator."""
    brackets: bool = False
    modify: bool = False


@dataclass(frozen=True)
class OrderRequest:
    """A new order as the engine wants it. Business validation (positive quantity, prices present
    for the order type, tick multiples) is the broker's to answer: it rejects, it does not crash."""

    client_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: TimeInForce = TimeInForce.DAY


@dataclass(frozen=True)
class BrokerOrder:
    broker_order_id: str
    client_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    quantity: Decimal
    filled_quantity: Decimal
    average_price: Decimal | None
    status: OrderStatus
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    reason: str | None = None
    updated_ns: int = 0


@dataclass(frozen=True)
class BrokerFill:
    broker_fill_id: str
    broker_order_id: str
    client_order_id: str
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    ts_ns: int


@dataclass(frozen=True)
class BrokerPosition:
    symbol: str
    quantity: Decimal
    """Signed: positive long, negative short."""
    average_price: Decimal | None


@dataclass(frozen=True)
class Bar:
    """One closed OHLCV bar; ``ts_ns`` is its open time, ``index`` the source's bar number."""

    symbol: str
    interval: str
    ts_ns: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    index: int


# ---------------------------------------------------------------- the four roles


@runtime_checkable
class Registry(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def capabilities(self) -> Capabilities: ...


@dataclass(frozen=True)
class StaticRegistry:
    """A registry whose capabilities are fixed at construction (most brokers)."""

    name: str
    capabilities: Capabilities


@runtime_checkable
class SymbolAdapter(Protocol):
    def to_broker(self, symbol: str) -> str:
        """Canonical → broker form; ``UnknownSymbol`` if the broker does not carry it."""
        ...

    def to_canonical(self, broker_symbol: str) -> str:
        """Broker form → canonical; ``UnknownSymbol`` if it is not a known instrument."""
        ...


@runtime_checkable
class Execution(Protocol):
    """Order execution for one account, in the broker's own symbols. Every method either returns
    the broker's answer or raises a ``brokers.errors`` type."""

    def submit_order(self, req: OrderRequest) -> BrokerOrder: ...

    def cancel_order(self, client_order_id: str) -> BrokerOrder: ...

    def modify_order(
        self,
        client_order_id: str,
        quantity: Decimal | None = None,
        limit_price: Decimal | None = None,
        stop_price: Decimal | None = None,
    ) -> BrokerOrder: ...

    def open_orders(self) -> list[BrokerOrder]: ...

    def positions(self) -> list[BrokerPosition]: ...

    def fills_since(self, cursor: str | None) -> tuple[list[BrokerFill], str | None]:
        """Fills after the opaque ``cursor`` (None = from the beginning) and the cursor to pass
        next time (unchanged when there is nothing new)."""
        ...

    def order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        """None means the broker ANSWERED that it has no such order; any doubt raises."""
        ...


@runtime_checkable
class BracketExecution(Protocol):
    """An optional extra of an ``Execution`` (capability ``brackets``): an entry order with a
    take-profit limit and/or a stop-loss stop on the opposite side, placed as one venue-side group
    (Tradovate OSO, TradeStation BRK). Returns the entry order."""

    def submit_bracket(self, entry: OrderRequest, take_profit: Decimal | None,
                       stop_loss: Decimal | None) -> BrokerOrder: ...


@runtime_checkable
class AccountEquity(Protocol):
    """An optional extra of an ``Execution``: the account's equity in its currency. Brokers whose
    execution role lacks it answer ``NotSupported`` through the facade; callers fall back."""

    def account_equity(self) -> Decimal: ...


@runtime_checkable
class MarketData(Protocol):
    def historical_bars(self, symbol: str, interval: str, *, after_ts_ns: int = 0, limit: int = 500) -> list[Bar]:
        """Closed bars, oldest first, at most ``limit``: the first ones with ``ts_ns > after_ts_ns``
        (paging forward), or without a cursor (``after_ts_ns`` 0) the latest ``limit``."""
        ...

    def stream_bars(self, symbol: str, interval: str, *, after_index: int | None) -> Iterator[Bar | None]:
        """Closed bars as they happen (after replaying those after ``after_index`` if given).
        ``None`` is a keep-alive so the caller can check its deadlines. A disconnect raises
        ``Retryable``/``BrokerUnavailable``: the caller reconnects with its last index."""
        ...


# ---------------------------------------------------------------- the facade

_T = TypeVar("_T")


class BrokerFacade:
    """Everything a caller may ask of one broker account, in canonical symbols.

    Absent roles or capabilities raise ``NotSupported`` naming the broker and what is missing.
    ``close()`` releases connections (idempotent); the facade is also a context manager.
    """

    def __init__(
        self,
        name: str,
        account: str | None,
        registry: Registry,
        symbols: SymbolAdapter,
        execution: Execution | None = None,
        market_data: MarketData | None = None,
        *,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.account = account
        self.registry = registry
        self.symbols = symbols
        self._execution = execution
        self._market_data = market_data
        self._on_close = on_close
        self._closed = False

    def __repr__(self) -> str:
        return f"BrokerFacade(name={self.name!r}, account={self.account!r}, capabilities={self.capabilities})"

    # -- capabilities and symbols

    @property
    def capabilities(self) -> Capabilities:
        caps = self.registry.capabilities
        # A flag without its role would promise what cannot be delivered: the role decides.
        return dataclasses.replace(
            caps,
            execution=caps.execution and self._execution is not None,
            market_data=caps.market_data and self._market_data is not None,
        )

    def to_broker_symbol(self, symbol: str) -> str:
        return self.symbols.to_broker(symbol)

    def to_canonical(self, broker_symbol: str) -> str:
        return self.symbols.to_canonical(broker_symbol)

    def _canonical_in_answer(self, broker_symbol: str) -> str:
        """A symbol in a broker's answer we cannot map is a bad answer, not a caller error."""
        try:
            return self.symbols.to_canonical(broker_symbol)
        except UnknownSymbol as exc:
            raise UnexpectedResponse(f"broker answered with an unknown symbol ({exc})", broker=self.name) from exc

    def _with_canonical(self, item: _T) -> _T:
        return dataclasses.replace(item, symbol=self._canonical_in_answer(item.symbol))  # type: ignore[type-var]

    # -- roles

    def _require_execution(self, operation: str) -> Execution:
        if self._execution is None or not self.registry.capabilities.execution:
            raise NotSupported(self.name, "order execution", f"{operation} is unavailable; this broker is data-only here")
        return self._execution

    def _require_market_data(self, operation: str) -> MarketData:
        if self._market_data is None or not self.registry.capabilities.market_data:
            raise NotSupported(self.name, "market data", f"{operation} is unavailable")
        return self._market_data

    # -- execution

    def submit_order(self, req: OrderRequest) -> BrokerOrder:
        execution = self._require_execution("submit_order")
        sent = dataclasses.replace(req, symbol=self.symbols.to_broker(req.symbol))
        return self._with_canonical(execution.submit_order(sent))

    def submit_bracket(self, entry: OrderRequest, take_profit: Decimal | None = None,
                       stop_loss: Decimal | None = None) -> BrokerOrder:
        """See ``BracketExecution``; ``NotSupported`` where the broker has no bracket groups."""
        execution = self._require_execution("submit_bracket")
        if not self.registry.capabilities.brackets or not isinstance(execution, BracketExecution):
            raise NotSupported(self.name, "bracket orders", "place the protective orders separately")
        sent = dataclasses.replace(entry, symbol=self.symbols.to_broker(entry.symbol))
        return self._with_canonical(execution.submit_bracket(sent, take_profit, stop_loss))

    def cancel_order(self, client_order_id: str) -> BrokerOrder:
        return self._with_canonical(self._require_execution("cancel_order").cancel_order(client_order_id))

    def modify_order(
        self,
        client_order_id: str,
        quantity: Decimal | None = None,
        limit_price: Decimal | None = None,
        stop_price: Decimal | None = None,
    ) -> BrokerOrder:
        execution = self._require_execution("modify_order")
        if not self.registry.capabilities.modify:
            raise NotSupported(self.name, "order modification", "cancel and resubmit instead")
        order = execution.modify_order(client_order_id, quantity=quantity, limit_price=limit_price, stop_price=stop_price)
        return self._with_canonical(order)

    def open_orders(self) -> list[BrokerOrder]:
        return [self._with_canonical(o) for o in self._require_execution("open_orders").open_orders()]

    def positions(self) -> list[BrokerPosition]:
        return [self._with_canonical(p) for p in self._require_execution("positions").positions()]

    def fills_since(self, cursor: str | None) -> tuple[list[BrokerFill], str | None]:
        fills, next_cursor = self._require_execution("fills_since").fills_since(cursor)
        return [self._with_canonical(f) for f in fills], next_cursor

    def account_equity(self) -> Decimal:
        """The account's equity (``AccountEquity``); ``NotSupported`` when the broker cannot say."""
        execution = self._require_execution("account_equity")
        if not isinstance(execution, AccountEquity):
            raise NotSupported(self.name, "account equity", "configure [risk] equity instead")
        return execution.account_equity()

    def order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        execution = self._require_execution("order_by_client_id")
        if not self.registry.capabilities.lookup_by_client_id:
            raise NotSupported(self.name, "order lookup by client id", "an unknown outcome needs the operator")
        order = execution.order_by_client_id(client_order_id)
        return None if order is None else self._with_canonical(order)

    # -- market data

    def historical_bars(self, symbol: str, interval: str, *, after_ts_ns: int = 0, limit: int = 500) -> list[Bar]:
        market_data = self._require_market_data("historical_bars")
        broker_symbol = self.symbols.to_broker(symbol)
        label = self.symbols.to_canonical(broker_symbol)
        bars = market_data.historical_bars(broker_symbol, interval, after_ts_ns=after_ts_ns, limit=limit)
        return [dataclasses.replace(b, symbol=label) for b in bars]

    def stream_bars(self, symbol: str, interval: str, *, after_index: int | None = None) -> Iterator[Bar | None]:
        """See ``MarketData.stream_bars``; bars carry the canonical form of the symbol asked for
        (``ES`` stays ``ES`` rather than the broker's ``@ES``)."""
        market_data = self._require_market_data("stream_bars")
        broker_symbol = self.symbols.to_broker(symbol)
        label = self.symbols.to_canonical(broker_symbol)
        return _relabelled(market_data.stream_bars(broker_symbol, interval, after_index=after_index), label)

    # -- lifecycle

    def close_with(self, closer: Callable[[], None]) -> None:
        """Also run ``closer`` when the facade closes (after the adapter's own clean-up)."""
        previous = self._on_close

        def both() -> None:
            try:
                if previous is not None:
                    previous()
            finally:
                closer()

        self._on_close = both

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._on_close is not None:
            self._on_close()

    def __enter__(self) -> BrokerFacade:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _relabelled(stream: Iterator[Bar | None], symbol: str) -> Iterator[Bar | None]:
    """Relabel streamed bars; closing this generator closes the underlying stream."""
    try:
        for item in stream:
            yield None if item is None else dataclasses.replace(item, symbol=symbol)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
