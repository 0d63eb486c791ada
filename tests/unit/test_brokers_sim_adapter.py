"""The sim adapter against ``httpx.MockTransport``: answers → domain types, failures → error types."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from decimal import Decimal

import httpx
import pytest

from brokers.base import Bar, BrokerFacade, OrderRequest
from brokers.errors import (
    AuthFailed,
    BrokerUnavailable,
    NotSupported,
    OrderNotFound,
    OutcomeUnknown,
    RateLimited,
    Rejected,
    Retryable,
    UnexpectedResponse,
    UnknownSymbol,
)
from brokers.registry import build_facade
from schema.enums import OrderStatus, OrderType, Side

Handler = Callable[[httpx.Request], httpx.Response]

ORDER = {
    "order_id": "O1", "account": "SIM1", "client_order_id": "c1", "symbol": "ESZ6", "side": "buy",
    "order_type": "limit", "quantity": "2", "limit_price": "5000.25", "stop_price": None, "time_in_force": "day",
    "status": "accepted", "filled_quantity": "0", "average_price": None, "reason": None,
    "created_ns": 5, "updated_ns": 7,
}
FILL = {"seq": 1, "fill_id": "F1", "order_id": "O1", "account": "SIM1", "client_order_id": "c1", "symbol": "ESZ6",
        "side": "buy", "quantity": "2", "price": "5000.25", "ts_ns": 60, "bar_index": 3}
BAR = {"symbol": "ESZ6", "interval": "1m", "ts_ns": 60, "open": "1", "high": "2", "low": "0.5", "close": "1.5",
       "volume": "10", "index": 4}
REQUEST = OrderRequest("c1", "ESZ6", Side.BUY, OrderType.LIMIT, Decimal("2"), limit_price=Decimal("5000.25"))


def facade(handler: Handler, **config: object) -> BrokerFacade:
    base = {"broker": "sim", "base_url": "http://venue.test", "account": "SIM1", "timeout_s": 1}
    return build_facade(base | config, transport=httpx.MockTransport(handler))


def answer(status: int, payload: object = None, **kwargs: object) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=payload, **kwargs)  # type: ignore[arg-type]
    return handler


def raising(exc_type: type[httpx.TransportError]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type("boom", request=request)
    return handler


# ---------------------------------------------------------------- success paths


def test_submit_sends_decimals_as_strings_and_parses_the_order() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=ORDER)

    with facade(handler) as broker:
        order = broker.submit_order(REQUEST)
    assert (seen[0].method, seen[0].url.path) == ("POST", "/v1/orders")
    body = json.loads(seen[0].content)
    assert body == {"account": "SIM1", "client_order_id": "c1", "symbol": "ESZ6", "side": "buy", "order_type": "limit",
                    "quantity": "2", "limit_price": "5000.25", "stop_price": None, "time_in_force": "day"}
    assert order.broker_order_id == "O1" and order.status is OrderStatus.ACCEPTED
    assert order.quantity == Decimal(2) and order.limit_price == Decimal("5000.25") and order.updated_ns == 7


def test_reads_parse_into_domain_types() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/orders":
            assert request.url.params["status"] == "open"
            return httpx.Response(200, json={"orders": [ORDER]})
        if path == "/v1/positions":
            return httpx.Response(200, json={"positions": [{"symbol": "ESZ6", "quantity": "-2", "average_price": "10.5"}]})
        if path == "/v1/bars/ESZ6":
            assert request.url.params["after_ts_ns"] == "30" and request.url.params["limit"] == "5"
            return httpx.Response(200, json={"bars": [BAR]})
        return httpx.Response(404, json={"error": "no_route"})

    broker = facade(handler)
    assert [o.client_order_id for o in broker.open_orders()] == ["c1"]
    [position] = broker.positions()
    assert (position.symbol, position.quantity, position.average_price) == ("ESZ6", Decimal(-2), Decimal("10.5"))
    assert broker.historical_bars("ESZ6", "1m", after_ts_ns=30, limit=5) == [
        Bar("ESZ6", "1m", 60, Decimal(1), Decimal(2), Decimal("0.5"), Decimal("1.5"), Decimal(10), 4)]


def test_fills_since_pages_with_an_opaque_cursor() -> None:
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        after = request.url.params["after_seq"]
        asked.append(after)
        fills = [FILL | {"seq": 1, "fill_id": "F1"}, FILL | {"seq": 4, "fill_id": "F4"}] if after == "0" else []
        return httpx.Response(200, json={"fills": fills, "last_seq": 4})

    broker = facade(handler)
    fills, cursor = broker.fills_since(None)
    assert [f.broker_fill_id for f in fills] == ["F1", "F4"] and cursor == "4"
    assert fills[0].price == Decimal("5000.25") and fills[0].side is Side.BUY
    assert broker.fills_since(cursor) == ([], "4")
    assert asked == ["0", "4"]
    with pytest.raises(ValueError, match="cursor"):
        broker.fills_since("abc")


def test_order_lookup_found_not_found_and_doubt() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        cid = request.url.path.rsplit("/", 1)[-1]
        if cid == "c1":
            return httpx.Response(200, json=ORDER)
        if cid == "gone":
            return httpx.Response(404, json={"error": "not_found"})
        return httpx.Response(404, text="<html>proxy says no</html>")

    broker = facade(handler)
    found = broker.order_by_client_id("c1")
    assert found is not None and found.client_order_id == "c1"
    assert broker.order_by_client_id("gone") is None
    # A 404 that is not the venue's "no such order" must not be read as "absent": it raises.
    with pytest.raises(UnexpectedResponse):
        broker.order_by_client_id("wrong-url")


def test_client_ids_are_escaped_in_paths() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(404, json={"error": "not_found"})

    assert facade(handler).order_by_client_id("a/b c") is None
    assert seen == ["/v1/orders/by-client-id/a%2Fb%20c?account=SIM1"]


# ---------------------------------------------------------------- refusals


def test_rejection_carries_the_venue_reason() -> None:
    broker = facade(answer(422, {"error": "rejected", "reason": "duplicate client order id"}))
    with pytest.raises(Rejected) as info:
        broker.submit_order(REQUEST)
    assert info.value.reason == "duplicate client order id"
    with pytest.raises(Rejected, match="missing field 'side'"):
        facade(answer(400, {"error": "bad_request", "message": "missing field 'side'"})).submit_order(REQUEST)


def test_cancel_and_modify_of_unknown_orders() -> None:
    broker = facade(answer(404, {"error": "not_found"}))
    with pytest.raises(OrderNotFound, match="c9"):
        broker.cancel_order("c9")
    with pytest.raises(OrderNotFound):
        broker.modify_order("c9", limit_price=Decimal("1"))


# ---------------------------------------------------------------- the error mapping


@pytest.mark.parametrize(
    ("exc_type", "on_submit", "on_read"),
    [
        (httpx.ConnectError, BrokerUnavailable, BrokerUnavailable),
        (httpx.ConnectTimeout, BrokerUnavailable, BrokerUnavailable),
        (httpx.ReadTimeout, OutcomeUnknown, Retryable),
        (httpx.ReadError, OutcomeUnknown, Retryable),
        (httpx.RemoteProtocolError, OutcomeUnknown, Retryable),
        (httpx.WriteError, OutcomeUnknown, Retryable),
    ],
)
def test_transport_failures(exc_type: type[httpx.TransportError], on_submit: type[Exception],
                            on_read: type[Exception]) -> None:
    broker = facade(raising(exc_type))
    with pytest.raises(on_submit) as info:
        broker.submit_order(REQUEST)
    assert isinstance(info.value.__cause__, exc_type)
    if on_submit is OutcomeUnknown:
        assert not isinstance(info.value, Retryable)
    for read in (broker.open_orders, broker.positions, lambda: broker.order_by_client_id("c1")):
        with pytest.raises(on_read) as read_info:
            read()
        assert isinstance(read_info.value.__cause__, exc_type)
    for command in (lambda: broker.cancel_order("c1"), lambda: broker.modify_order("c1", quantity=Decimal(1))):
        with pytest.raises(on_submit):
            command()


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_unknown_outcomes_on_commands_and_retryable_on_reads(status: int) -> None:
    broker = facade(answer(status, {"error": "internal"}))
    with pytest.raises(OutcomeUnknown, match=f"HTTP {status}"):
        broker.submit_order(REQUEST)
    with pytest.raises(OutcomeUnknown):
        broker.cancel_order("c1")
    with pytest.raises(Retryable):
        broker.positions()
    with pytest.raises(Retryable):
        broker.order_by_client_id("c1")


def test_rate_limit_carries_retry_after() -> None:
    broker = facade(answer(429, None, headers={"Retry-After": "3"}))
    with pytest.raises(RateLimited) as info:
        broker.submit_order(REQUEST)
    assert info.value.retry_after_s == 3.0
    assert isinstance(info.value, Retryable)
    with pytest.raises(RateLimited) as info:
        facade(answer(429)).positions()
    assert info.value.retry_after_s is None


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures(status: int) -> None:
    with pytest.raises(AuthFailed):
        facade(answer(status, {"error": "unauthorized"})).open_orders()


def test_unreadable_answers() -> None:
    garbage = answer(200, None, content=b"<html>oops</html>")
    with pytest.raises(OutcomeUnknown, match="look the order up"):
        facade(garbage).submit_order(REQUEST)
    with pytest.raises(UnexpectedResponse, match="not JSON") as info:
        facade(garbage).positions()
    assert "oops" in info.value.excerpt
    wrong_shape = answer(200, {"positions": [{"symbol": "ESZ6", "qty": "1"}]})
    with pytest.raises(UnexpectedResponse, match="malformed position"):
        facade(wrong_shape).positions()
    with pytest.raises(OutcomeUnknown):
        facade(answer(200, ORDER | {"status": "exploded"})).submit_order(REQUEST)


def test_messages_never_carry_query_strings() -> None:
    broker = facade(raising(httpx.ReadTimeout))
    with pytest.raises(Retryable) as info:
        broker.positions()
    assert "account=" not in str(info.value) and "GET /v1/positions" in str(info.value)


# ---------------------------------------------------------------- streaming


class _Lines(httpx.SyncByteStream):
    def __init__(self, lines: list[bytes], fail_with: type[httpx.TransportError] | None = None) -> None:
        self._lines = lines
        self._fail_with = fail_with

    def __iter__(self) -> Iterator[bytes]:
        yield from self._lines
        if self._fail_with is not None:
            raise self._fail_with("connection reset")


def test_stream_yields_bars_and_heartbeats_then_retryable_at_the_end() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.params["after_index"] == "3"
        return httpx.Response(200, stream=_Lines([json.dumps(BAR).encode() + b"\n", b'{"heartbeat": 1}\n', b"\n"]))

    stream = facade(handler).stream_bars("ESZ6", "1m", after_index=3)
    first = next(stream)
    assert isinstance(first, Bar) and first.index == 4 and first.close == Decimal("1.5")
    assert next(stream) is None
    with pytest.raises(Retryable, match="ended the stream"):
        next(stream)


def test_stream_disconnect_is_retryable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert "after_index" not in request.url.params
        return httpx.Response(200, stream=_Lines([b'{"heartbeat": 1}\n'], fail_with=httpx.ReadError))

    stream = facade(handler).stream_bars("ESZ6", "1m")
    assert next(stream) is None
    with pytest.raises(Retryable) as info:
        next(stream)
    assert isinstance(info.value.__cause__, httpx.ReadError)
    with pytest.raises(BrokerUnavailable):
        next(facade(raising(httpx.ConnectError)).stream_bars("ESZ6", "1m"))


def test_stream_of_an_unserved_symbol() -> None:
    broker = facade(answer(404, {"error": "unknown_symbol", "message": "not served here: NQZ6"}))
    with pytest.raises(UnknownSymbol, match="NQZ6"):
        next(broker.stream_bars("NQZ6", "1m"))
    with pytest.raises(UnknownSymbol):
        broker.historical_bars("NQZ6", "1m")


# ---------------------------------------------------------------- wiring


def test_build_facade_refuses_unknown_brokers_listing_the_known() -> None:
    with pytest.raises(ValueError, match=r"unknown broker 'ibkr'; known brokers: sim"):
        build_facade({"broker": "ibkr"})
    with pytest.raises(ValueError, match="base_url"):
        build_facade({"broker": "sim"})


def test_sim_capabilities_and_data_only_facade() -> None:
    broker = facade(answer(200, {"bars": []}))
    caps = broker.capabilities
    assert (caps.execution, caps.market_data, caps.lookup_by_client_id, caps.modify) == (True, True, True, True)
    data_only = facade(answer(200, {"bars": []}), account=None)
    assert not data_only.capabilities.execution
    assert data_only.historical_bars("ESZ6", "1m") == []
    with pytest.raises(NotSupported, match="'sim' does not support order execution"):
        data_only.submit_order(REQUEST)
    with pytest.raises(NotSupported):
        data_only.fills_since(None)
    data_only.close()
    data_only.close()  # idempotent
