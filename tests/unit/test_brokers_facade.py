"""The facade: symbol translation in one place, clear answers for missing roles."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from brokers.base import (
    Bar,
    BrokerFacade,
    BrokerFill,
    BrokerOrder,
    BrokerPosition,
    Capabilities,
    Execution,
    MarketData,
    OrderRequest,
    StaticRegistry,
    SymbolAdapter,
)
from brokers.errors import NotSupported, UnexpectedResponse, UnknownSymbol
from brokers.symbols import symbol_adapter
from schema.enums import OrderStatus, OrderType, Side

D = Decimal


def broker_order(symbol: str) -> BrokerOrder:
    return BrokerOrder("B1", "c1", symbol, Side.BUY, OrderType.MARKET, D(1), D(0), None, OrderStatus.ACCEPTED)


@dataclass
class FakeExecution:
    """Speaks TradeStation symbols and records what it was asked."""

    calls: list[tuple[str, object]] = field(default_factory=list)
    position_symbol: str = "ESZ26"

    def submit_order(self, req: OrderRequest) -> BrokerOrder:
        self.calls.append(("submit_order", req.symbol))
        return broker_order(req.symbol)

    def cancel_order(self, client_order_id: str) -> BrokerOrder:
        self.calls.append(("cancel_order", client_order_id))
        return broker_order("ESZ26")

    def modify_order(self, client_order_id: str, quantity: Decimal | None = None,
                     limit_price: Decimal | None = None, stop_price: Decimal | None = None) -> BrokerOrder:
        self.calls.append(("modify_order", (client_order_id, quantity, limit_price, stop_price)))
        return broker_order("ESZ26")

    def open_orders(self) -> list[BrokerOrder]:
        return [broker_order("ECZ26")]

    def positions(self) -> list[BrokerPosition]:
        return [BrokerPosition(self.position_symbol, D(-2), D("4500.25"))]

    def fills_since(self, cursor: str | None) -> tuple[list[BrokerFill], str | None]:
        return [BrokerFill("F1", "B1", "c1", "ESZ26", Side.BUY, D(1), D(10), 5)], "next"

    def order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        return None if client_order_id == "none" else broker_order("ESZ26")


class FakeMarketData:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def historical_bars(self, symbol: str, interval: str, *, after_ts_ns: int = 0, limit: int = 500) -> list[Bar]:
        self.asked.append(symbol)
        return [Bar(symbol, interval, 1, D(1), D(1), D(1), D(1), D(1), 0)]

    def stream_bars(self, symbol: str, interval: str, *, after_index: int | None) -> Iterator[Bar | None]:
        self.asked.append(symbol)
        yield Bar(symbol, interval, 1, D(1), D(1), D(1), D(1), D(1), 0)
        yield None


ALL = Capabilities(execution=True, market_data=True, lookup_by_client_id=True, brackets=False, modify=True)


def make(execution: Execution | None = None, market_data: MarketData | None = None,
         caps: Capabilities = ALL, closed: list[int] | None = None) -> BrokerFacade:
    return BrokerFacade("tradestation", "ACC1", StaticRegistry("tradestation", caps),
                        symbol_adapter("tradestation", reference_year=2026), execution, market_data,
                        on_close=None if closed is None else (lambda: closed.append(1)))


def test_fakes_satisfy_the_role_protocols() -> None:
    assert isinstance(FakeExecution(), Execution)
    assert isinstance(FakeMarketData(), MarketData)
    assert isinstance(symbol_adapter("sim"), SymbolAdapter)


def test_symbols_are_translated_in_and_out() -> None:
    execution = FakeExecution()
    broker = make(execution, FakeMarketData())
    order = broker.submit_order(OrderRequest("c1", "ESZ6", Side.BUY, OrderType.MARKET, D(1)))
    assert execution.calls == [("submit_order", "ESZ26")]
    assert order.symbol == "ESZ6"
    assert [o.symbol for o in broker.open_orders()] == ["6EZ6"]
    assert broker.positions() == [BrokerPosition("ESZ6", D(-2), D("4500.25"))]
    fills, cursor = broker.fills_since(None)
    assert [f.symbol for f in fills] == ["ESZ6"] and cursor == "next"
    assert broker.cancel_order("c1").symbol == "ESZ6"
    assert broker.modify_order("c1", limit_price=D("1.5")).symbol == "ESZ6"
    assert execution.calls[-1] == ("modify_order", ("c1", None, D("1.5"), None))
    assert broker.order_by_client_id("none") is None
    assert broker.to_broker_symbol("6E") == "@EC" and broker.to_canonical("@EC") == "6E"


def test_bars_come_back_under_the_canonical_name() -> None:
    market_data = FakeMarketData()
    broker = make(FakeExecution(), market_data)
    assert [b.symbol for b in broker.historical_bars("ES", "1m")] == ["ES"]
    assert [None if b is None else b.symbol for b in broker.stream_bars("6EZ6", "1m", after_index=None)] == ["6EZ6", None]
    assert market_data.asked == ["@ES", "ECZ26"]


def test_unknown_symbols_fail_before_reaching_the_broker() -> None:
    execution = FakeExecution()
    with pytest.raises(UnknownSymbol, match="tradestation"):
        make(execution).submit_order(OrderRequest("c1", "BTC-PERPETUAL", Side.BUY, OrderType.MARKET, D(1)))
    assert execution.calls == []


def test_an_unknown_symbol_in_an_answer_is_a_bad_answer() -> None:
    with pytest.raises(UnexpectedResponse, match="unknown symbol"):
        make(FakeExecution(position_symbol="ZZZ")).positions()


def test_missing_roles_and_capabilities_answer_not_supported() -> None:
    # Given a data-only broker (like Schwab for futures), when asked to trade, then NotSupported names it.
    data_only = make(None, FakeMarketData(), Capabilities(execution=False, market_data=True, lookup_by_client_id=False))
    assert not data_only.capabilities.execution
    for call in (lambda: data_only.submit_order(OrderRequest("c", "ESZ6", Side.BUY, OrderType.MARKET, D(1))),
                 lambda: data_only.cancel_order("c"), data_only.open_orders, data_only.positions,
                 lambda: data_only.fills_since(None), lambda: data_only.order_by_client_id("c"),
                 lambda: data_only.modify_order("c", quantity=D(1))):
        with pytest.raises(NotSupported, match="'tradestation' does not support order execution"):
            call()
    exec_only = make(FakeExecution(), None)
    assert not exec_only.capabilities.market_data
    with pytest.raises(NotSupported, match="market data"):
        exec_only.historical_bars("ES", "1m")
    with pytest.raises(NotSupported, match="market data"):
        exec_only.stream_bars("ES", "1m")
    no_modify = make(FakeExecution(), None, Capabilities(execution=True, market_data=False, lookup_by_client_id=False))
    with pytest.raises(NotSupported, match="order modification"):
        no_modify.modify_order("c1", quantity=D(2))
    with pytest.raises(NotSupported, match="lookup by client id"):
        no_modify.order_by_client_id("c1")


def test_close_runs_once() -> None:
    closed: list[int] = []
    with make(FakeExecution(), closed=closed) as broker:
        pass
    broker.close()
    assert closed == [1]
