"""The deribit adapter against ``httpx.MockTransport``: the module contract, the auth flows, every
mapped error shape, the pure parsing (orders, trades, positions, bars) and the fills cursor."""
from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from brokers import registry
from brokers.auth import LocalTokenSource, Token
from brokers.base import Bar, BrokerOrder, BrokerPosition, Capabilities, OrderRequest
from brokers.deribit import adapter, parse
from brokers.deribit.rpc import dumps, loads
from brokers.errors import (
    AuthFailed,
    AuthNeedsOperator,
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
from brokers.symbols import symbol_adapter
from schema.enums import OrderStatus, OrderType, Side, TimeInForce

ACCOUNT = "DERIBIT-T"
CLIENT_SECRET = "s3cr3t-client-value"
BASE = "https://deribit.test/api/v2"
SYMBOL = "BTC-PERPETUAL"
ORDER: dict[str, Any] = {
    "order_id": "1234", "order_state": "open", "order_type": "limit", "direction": "buy",
    "instrument_name": SYMBOL, "amount": 20, "filled_amount": 0, "average_price": 0,
    "price": Decimal("1000.5"), "label": "s.1.a", "time_in_force": "good_til_day",
    "last_update_timestamp": 1_700_000_000_123, "creation_timestamp": 1_700_000_000_000,
}
TRADE: dict[str, Any] = {"trade_id": "T-1", "trade_seq": 5, "order_id": "1234", "label": "s.1.a", "direction": "buy",
                         "amount": 20, "price": Decimal("60000.5"), "timestamp": 1_700_000_060_000,
                         "instrument_name": SYMBOL}
LIMIT = OrderRequest("s.1.a", SYMBOL, Side.BUY, OrderType.LIMIT, Decimal(2), limit_price=Decimal("1000.5"))


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEBUS_SECRET_DERIBIT_T_CLIENT_ID", "the-client")
    monkeypatch.setenv("TRADEBUS_SECRET_DERIBIT_T_CLIENT_SECRET", CLIENT_SECRET)


# ---------------------------------------------------------------- a scripted venue


def respond(status: int, payload: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, content=dumps(payload).encode(), headers=headers)


def ok(result: Any, rpc_id: Any = None) -> httpx.Response:
    payload = {"jsonrpc": "2.0", "result": result, "usIn": 1, "usOut": 2, "usDiff": 1, "testnet": True}
    if rpc_id is not None:
        payload["id"] = rpc_id
    return respond(200, payload)


def err(code: int, message: str, *, status: int = 400, data: Any = None, headers: dict[str, str] | None = None,
        rpc_id: Any = None) -> httpx.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return respond(status, {"jsonrpc": "2.0", "id": rpc_id, "error": error}, headers)


Route = Callable[[dict[str, Any], httpx.Request], httpx.Response]


class FakeDeribit:
    """Answers by JSON-RPC method; token methods are served unless overridden. ``calls`` records
    (method, params, request) in order."""

    def __init__(self) -> None:
        self.routes: dict[str, Route | list[Route]] = {}
        self.calls: list[tuple[str, dict[str, Any], httpx.Request]] = []
        self.issued = 0

    def on(self, method: str, *answers: Route | httpx.Response | Any) -> FakeDeribit:
        """Answers in order (the last repeats): a route, a ready response, or a result value."""
        routes: list[Route] = []
        for answer in answers:
            if callable(answer):
                routes.append(answer)
            elif isinstance(answer, httpx.Response):
                routes.append(lambda p, r, a=answer: a)
            else:
                routes.append(lambda p, r, a=answer: ok(a))
        self.routes[method] = routes
        return self

    def methods(self) -> list[str]:
        return [m for m, _, _ in self.calls]

    def params_of(self, method: str) -> list[dict[str, Any]]:
        return [p for m, p, _ in self.calls if m == method]

    def token(self, scope: str = "account:read_write") -> dict[str, Any]:
        self.issued += 1
        return {"access_token": f"AT{self.issued}", "refresh_token": f"RT{self.issued}", "expires_in": 900,
                "scope": scope, "token_type": "bearer"}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        rpc_id = None
        if request.method == "POST":
            body = loads(request.content)
            method, params, rpc_id = body["method"], body["params"], body["id"]
        else:
            method = request.url.path.removeprefix("/api/v2/")
            params = {k: v[-1] for k, v in parse_qs(request.url.query.decode()).items()}
        self.calls.append((method, params, request))
        routes = self.routes.get(method)
        if routes:
            route = routes.pop(0) if len(routes) > 1 else routes[0]  # type: ignore[union-attr]
            response = route(params, request)
        elif method == "public/auth" or method in ("public/fork_token", "public/exchange_token"):
            scope = f"session:{params['session_name']}" if method == "public/fork_token" else "account:read_write"
            response = ok(self.token(scope))
        else:
            response = err(-32601, "Method not found")
        if rpc_id is not None:
            payload = json.loads(response.content)
            if isinstance(payload, dict):
                payload["id"] = rpc_id
                response = httpx.Response(response.status_code, content=json.dumps(payload).encode(),
                                          headers=response.headers)
        return response


def facade(venue: FakeDeribit | Callable[[httpx.Request], httpx.Response], **config: Any) -> adapter.DeribitFacade:
    base = {"broker": "deribit", "base_url": BASE, "account": ACCOUNT, "timeout_s": 1}
    return registry.build_facade(base | config, transport=httpx.MockTransport(venue))  # type: ignore[return-value]


def bearer(request: httpx.Request) -> str | None:
    value = request.headers.get("Authorization")
    return value.removeprefix("Bearer ") if value else None


class CountingSource:
    """A token source that counts ``rejected`` calls (the auth path is taken once per refusal)."""

    def __init__(self, inner: LocalTokenSource) -> None:
        self.inner = inner
        self.rejections = 0

    def current(self) -> Token:
        return self.inner.current()

    def rejected(self, token: Token) -> Token:
        self.rejections += 1
        return self.inner.rejected(token)

    def on_new_token(self, callback: Callable[[Token], None]) -> None:
        self.inner.on_new_token(callback)


# ---------------------------------------------------------------- module contract


def test_module_contract_and_capabilities() -> None:
    assert adapter.BROKER == "deribit"
    assert adapter.CAPABILITIES == Capabilities(execution=True, market_data=True, lookup_by_client_id=True,
                                                brackets=False, modify=True)
    assert adapter.CREDENTIALS == ("client_id", "client_secret")
    assert registry.broker_info("deribit").capabilities == adapter.CAPABILITIES
    assert registry.needs_tokens("deribit")
    with facade(FakeDeribit()) as broker:
        assert broker.capabilities == adapter.CAPABILITIES
        assert isinstance(broker, adapter.DeribitFacade)


def test_data_only_without_an_account_needs_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRADEBUS_SECRET_DERIBIT_T_CLIENT_SECRET")
    broker = registry.build_facade({"broker": "deribit", "base_url": BASE},
                                   transport=httpx.MockTransport(FakeDeribit()))
    assert broker.capabilities.execution is False and broker.capabilities.market_data is True
    with pytest.raises(NotSupported, match="order execution"):
        broker.submit_order(LIMIT)
    with pytest.raises(NotSupported):
        broker.switch_subaccount(2)  # type: ignore[attr-defined]


def test_missing_credentials_name_where_to_put_them_and_no_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRADEBUS_SECRET_DERIBIT_T_CLIENT_SECRET")
    with pytest.raises(AuthNeedsOperator) as caught:
        facade(FakeDeribit())
    assert "TRADEBUS_SECRET_DERIBIT_T_CLIENT_SECRET" in str(caught.value) and "the-client" not in str(caught.value)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="base_url"):
        registry.build_facade({"broker": "deribit"})
    for bad in ({"subject_id": 0}, {"session_name": ""}, {"track_subject_ids": ["2"]}, {"heartbeat_s": True}):
        with pytest.raises(ValueError):
            facade(FakeDeribit(), **bad)


def test_symbols_are_the_perpetual_only() -> None:
    symbols = symbol_adapter("deribit")
    assert symbols.to_broker(SYMBOL) == SYMBOL and symbols.to_canonical(SYMBOL) == SYMBOL
    for other in ("ESZ6", "BTC", "BTCZ5", "BTC-27DEC25", "ETH-PERPETUAL"):
        with pytest.raises(UnknownSymbol):
            symbols.to_broker(other)
        with pytest.raises(UnknownSymbol):
            symbols.to_canonical(other)
    venue = FakeDeribit()
    with facade(venue) as broker, pytest.raises(UnknownSymbol):
        broker.submit_order(OrderRequest("c", "ESZ6", Side.BUY, OrderType.MARKET, Decimal(1)))
    assert venue.calls == []  # refused before anything was sent


# ---------------------------------------------------------------- auth flows


def test_client_credentials_go_in_a_post_body_and_the_token_as_bearer() -> None:
    venue = FakeDeribit().on("private/get_open_orders_by_instrument", [])
    with facade(venue) as broker:
        assert broker.open_orders() == []
    (auth_method, auth_params, auth_request), (_, params, request) = venue.calls
    assert auth_method == "public/auth" and auth_request.method == "POST"
    assert auth_params == {"grant_type": "client_credentials", "client_id": "the-client", "client_secret": CLIENT_SECRET}
    assert CLIENT_SECRET not in str(auth_request.url)
    assert request.method == "GET" and request.url.path == "/api/v2/private/get_open_orders_by_instrument"
    assert params == {"instrument_name": SYMBOL, "type": "all"} and bearer(request) == "AT1"


def test_session_name_forks_the_token_on_obtain() -> None:
    venue = FakeDeribit().on("private/get_open_orders_by_instrument", [])
    config = {"broker": "deribit", "base_url": BASE, "account": ACCOUNT, "session_name": "engine-a"}
    source = LocalTokenSource(adapter.authenticator(config, transport=httpx.MockTransport(venue)))
    with registry.build_facade(config, transport=httpx.MockTransport(venue), tokens=source) as broker:
        broker.open_orders()
    assert venue.methods()[:2] == ["public/auth", "public/fork_token"]
    assert venue.params_of("public/fork_token") == [{"refresh_token": "RT1", "session_name": "engine-a"}]
    assert bearer(venue.calls[2][2]) == "AT2"  # the forked session's token
    token = source.current()
    assert token.extras["session_name"] == "engine-a" and "session:engine-a" in token.extras["scope"]


def test_subject_id_exchanges_the_token_on_obtain() -> None:
    venue = FakeDeribit()
    auth = adapter.authenticator({"base_url": BASE, "account": ACCOUNT, "subject_id": 7},
                                 transport=httpx.MockTransport(venue))
    token = auth.obtain()
    assert venue.methods() == ["public/auth", "public/exchange_token"]
    assert venue.params_of("public/exchange_token") == [{"refresh_token": "RT1", "subject_id": 7}]
    assert token.access_token == "AT2" and token.extras["subject_id"] == 7


def test_a_refused_token_is_renewed_once_with_the_rotating_refresh_token() -> None:
    venue = FakeDeribit().on("private/get_open_orders_by_instrument",
                             err(13009, "unauthorized", data={"reason": "token expired"}), [])
    source = CountingSource(LocalTokenSource(adapter.authenticator({"base_url": BASE, "account": ACCOUNT},
                                                                   transport=httpx.MockTransport(venue))))
    with registry.build_facade({"broker": "deribit", "base_url": BASE, "account": ACCOUNT},
                               transport=httpx.MockTransport(venue), tokens=source) as broker:
        assert broker.open_orders() == []
        # Given the access token expires again, the NEXT refresh uses the rotated refresh token.
        venue.on("private/get_open_orders_by_instrument", err(13009, "unauthorized"), [])
        broker.open_orders()
    refreshes = [p for p in venue.params_of("public/auth") if p["grant_type"] == "refresh_token"]
    assert refreshes == [{"grant_type": "refresh_token", "refresh_token": "RT1"},
                         {"grant_type": "refresh_token", "refresh_token": "RT2"}]
    assert source.rejections == 2
    assert [bearer(r) for m, _, r in venue.calls if m.startswith("private/")] == ["AT1", "AT2", "AT2", "AT3"]


def test_a_refused_refresh_token_falls_back_to_the_client_credentials() -> None:
    venue = FakeDeribit()
    auth = adapter.authenticator({"base_url": BASE, "account": ACCOUNT}, transport=httpx.MockTransport(venue))
    first = auth.obtain()
    venue.on("public/auth", err(13009, "unauthorized"), lambda p, r: ok(venue.token()))
    fresh = auth.refresh(first)
    assert [p["grant_type"] for p in venue.params_of("public/auth")] == ["client_credentials", "refresh_token",
                                                                       "client_credentials"]
    assert fresh.access_token == "AT2"


@pytest.mark.parametrize("code", [13004, 13009])
def test_refused_client_credentials_need_the_operator(code: int) -> None:
    venue = FakeDeribit().on("public/auth", err(code, "invalid_credentials", data={"client_secret": CLIENT_SECRET}))
    auth = adapter.authenticator({"base_url": BASE, "account": ACCOUNT}, transport=httpx.MockTransport(venue))
    with pytest.raises(AuthNeedsOperator) as caught:
        auth.obtain()
    assert CLIENT_SECRET not in str(caught.value) and str(code) in str(caught.value)


def test_rate_limited_token_request() -> None:
    venue = FakeDeribit().on("public/auth", err(10028, "too_many_requests", status=429, headers={"Retry-After": "2"}))
    auth = adapter.authenticator({"base_url": BASE, "account": ACCOUNT}, transport=httpx.MockTransport(venue))
    with pytest.raises(RateLimited) as caught:
        auth.obtain()
    assert caught.value.retry_after_s == 2.0


@pytest.mark.parametrize("refusal", [err(13009, "unauthorized"), err(13004, "invalid_credentials"),
                                     err(10000, "authorization_required"), httpx.Response(401),
                                     httpx.Response(403, text="forbidden")])
def test_a_second_refusal_is_auth_failed_and_nothing_was_sent_three_times(refusal: httpx.Response) -> None:
    venue = FakeDeribit().on("private/buy", refusal)
    with facade(venue) as broker, pytest.raises(AuthFailed) as caught:
        broker.submit_order(LIMIT)
    assert venue.methods().count("private/buy") == 2
    assert "AT1" not in str(caught.value) and "AT2" not in str(caught.value)


def test_token_repr_hides_secrets() -> None:
    token = adapter.authenticator({"base_url": BASE, "account": ACCOUNT},
                                  transport=httpx.MockTransport(FakeDeribit())).obtain()
    assert "AT1" not in repr(token) and "RT1" not in repr(token)


# ---------------------------------------------------------------- error mapping

COMMANDS: dict[str, Callable[[adapter.DeribitFacade], Any]] = {
    "private/buy": lambda b: b.submit_order(LIMIT),
    "private/sell": lambda b: b.submit_order(OrderRequest("s.1.b", SYMBOL, Side.SELL, OrderType.MARKET, Decimal(1))),
    "private/edit": lambda b: b.modify_order("s.1.a", limit_price=Decimal("1001")),
    "private/cancel": lambda b: b.cancel_order("s.1.a"),
}
READS: dict[str, Callable[[adapter.DeribitFacade], Any]] = {
    "private/get_open_orders_by_instrument": lambda b: b.open_orders(),
    "private/get_positions": lambda b: b.positions(),
    "private/get_order_state_by_label": lambda b: b.order_by_client_id("s.1.a"),
    "private/get_account_summary": lambda b: b.account_equity(),
    "private/get_user_trades_by_instrument": lambda b: b.fills_since("deribit1:1/BTC-PERPETUAL=1"),
}


def scripted(method: str, answer: httpx.Response | Route) -> FakeDeribit:
    """The venue knows the order (so cancel/edit get as far as acting) and answers ``method`` so."""
    venue = FakeDeribit().on("private/get_order_state_by_label", [ORDER])
    venue.on("private/get_account_summary", {"id": 1, "equity": Decimal("1.5"), "currency": "BTC"})
    return venue.on(method, answer)


@pytest.mark.parametrize("method", [*COMMANDS, *READS])
def test_10028_is_rate_limited_with_the_venues_delay(method: str) -> None:
    venue = scripted(method, err(10028, "too_many_requests", status=429, headers={"Retry-After": "3"}))
    with facade(venue) as broker, pytest.raises(RateLimited) as caught:
        {**COMMANDS, **READS}[method](broker)
    assert caught.value.retry_after_s == 3.0


def test_bare_429_is_rate_limited() -> None:
    with facade(scripted("private/buy", httpx.Response(429))) as broker, pytest.raises(RateLimited):
        broker.submit_order(LIMIT)


@pytest.mark.parametrize("method", ["private/cancel", "private/edit"])
def test_10004_is_order_not_found(method: str) -> None:
    with facade(scripted(method, err(10004, "order_not_found"))) as broker, pytest.raises(OrderNotFound) as caught:
        COMMANDS[method](broker)
    assert caught.value.order_ref == "s.1.a"


def test_cancel_of_a_label_the_venue_does_not_know_is_order_not_found() -> None:
    venue = FakeDeribit().on("private/get_order_state_by_label", [])
    with facade(venue) as broker, pytest.raises(OrderNotFound):
        broker.cancel_order("nobody")
    assert "private/cancel" not in venue.methods()


@pytest.mark.parametrize(("code", "message"), [(10009, "not_enough_funds"), (10043, "price_wrong_tick"),
                                               (11044, "not_open_order"), (-32602, "Invalid params")])
@pytest.mark.parametrize("method", list(COMMANDS))
def test_venue_refusals_of_commands_are_rejected_with_code_and_message(method: str, code: int, message: str) -> None:
    venue = scripted(method, err(code, message, data={"param": "price", "access_token": "LEAKED-TOKEN"}))
    with facade(venue) as broker, pytest.raises(Rejected) as caught:
        COMMANDS[method](broker)
    assert f"{code} {message}" in caught.value.reason and "LEAKED-TOKEN" not in str(caught.value)


@pytest.mark.parametrize("code", [10009, 10043, 11050])
@pytest.mark.parametrize("method", list(READS))
def test_venue_errors_on_reads_are_unexpected(method: str, code: int) -> None:
    venue = scripted(method, err(code, "something", data={"refresh_token": "LEAKED-TOKEN"}))
    with facade(venue) as broker, pytest.raises(UnexpectedResponse) as caught:
        READS[method](broker)
    assert str(code) in str(caught.value) and "LEAKED-TOKEN" not in str(caught.value)


@pytest.mark.parametrize("status", [500, 502, 503])
@pytest.mark.parametrize("method", list(COMMANDS))
def test_5xx_on_commands_is_outcome_unknown(method: str, status: int) -> None:
    with facade(scripted(method, httpx.Response(status))) as broker, pytest.raises(OutcomeUnknown):
        COMMANDS[method](broker)


@pytest.mark.parametrize("method", list(READS))
def test_5xx_on_reads_is_retryable(method: str) -> None:
    with facade(scripted(method, httpx.Response(503))) as broker, pytest.raises(Retryable) as caught:
        READS[method](broker)
    assert not isinstance(caught.value, OutcomeUnknown)


def raising(exc: type[httpx.TransportError]) -> Route:
    def route(params: dict[str, Any], request: httpx.Request) -> httpx.Response:
        raise exc("boom", request=request)
    return route


@pytest.mark.parametrize("method", list(COMMANDS))
@pytest.mark.parametrize("exc", [httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError])
def test_a_lost_answer_to_a_command_is_outcome_unknown(method: str, exc: type[httpx.TransportError]) -> None:
    with facade(scripted(method, raising(exc))) as broker, pytest.raises(OutcomeUnknown):
        COMMANDS[method](broker)


@pytest.mark.parametrize("method", list(COMMANDS))
def test_a_refused_connection_is_unavailable_even_for_commands(method: str) -> None:
    with facade(scripted(method, raising(httpx.ConnectError))) as broker, pytest.raises(BrokerUnavailable):
        COMMANDS[method](broker)


@pytest.mark.parametrize("method", list(READS))
def test_a_lost_answer_to_a_read_is_retryable(method: str) -> None:
    with facade(scripted(method, raising(httpx.ReadTimeout))) as broker, pytest.raises(Retryable) as caught:
        READS[method](broker)
    assert not isinstance(caught.value, OutcomeUnknown)


@pytest.mark.parametrize("answer", [httpx.Response(200, text="<html>gateway</html>"), ok({"order": {"order_id": 1}}),
                                    ok(None), respond(200, {"jsonrpc": "2.0"})])
@pytest.mark.parametrize("method", list(COMMANDS))
def test_an_unreadable_answer_to_a_command_is_outcome_unknown(method: str, answer: httpx.Response) -> None:
    with facade(scripted(method, answer)) as broker, pytest.raises(OutcomeUnknown):
        COMMANDS[method](broker)


@pytest.mark.parametrize("answer", [httpx.Response(200, text="<html>"), ok({"not": "a list"}), ok([{"order_id": 1}])])
@pytest.mark.parametrize("method", ["private/get_open_orders_by_instrument", "private/get_positions",
                                    "private/get_order_state_by_label"])
def test_an_unreadable_answer_to_a_read_is_unexpected(method: str, answer: httpx.Response) -> None:
    with facade(scripted(method, answer)) as broker, pytest.raises(UnexpectedResponse):
        READS[method](broker)


def test_a_4xx_without_an_error_object() -> None:
    with facade(scripted("private/buy", httpx.Response(404, text="no such path"))) as broker, \
            pytest.raises(Rejected):
        broker.submit_order(LIMIT)
    with facade(scripted("private/get_positions", httpx.Response(404, text="nope"))) as broker, \
            pytest.raises(UnexpectedResponse):
        broker.positions()


def test_no_secret_reaches_an_error_message() -> None:
    body = '{"access_token": "LEAKED-1", "refresh_token": "LEAKED-2", "client_secret": "LEAKED-3"}'
    with facade(scripted("private/get_positions", httpx.Response(200, text=body + "garbage"))) as broker, \
            pytest.raises(UnexpectedResponse) as caught:
        broker.positions()
    assert "LEAKED" not in str(caught.value)


# ---------------------------------------------------------------- orders


def test_submit_sends_amount_in_usd_and_parses_the_order() -> None:
    venue = FakeDeribit().on("private/buy", {"order": ORDER, "trades": []})
    with facade(venue) as broker:
        order = broker.submit_order(LIMIT)
    (params,) = venue.params_of("private/buy")
    assert params == {"instrument_name": SYMBOL, "amount": "20", "type": "limit", "label": "s.1.a",
                      "time_in_force": "good_til_day", "price": "1000.5"}
    assert order == BrokerOrder("1234", "s.1.a", SYMBOL, Side.BUY, OrderType.LIMIT, Decimal(2), Decimal(0), None,
                                OrderStatus.ACCEPTED, limit_price=Decimal("1000.5"),
                                updated_ns=1_700_000_000_123_000_000)


def test_order_request_shapes() -> None:
    stop = OrderRequest("x", SYMBOL, Side.SELL, OrderType.STOP, Decimal(3), stop_price=Decimal("59000"),
                        time_in_force=TimeInForce.GTC)
    assert parse.order_request(stop) == ("private/sell", {
        "instrument_name": SYMBOL, "amount": Decimal(30), "type": "stop_market", "label": "x",
        "time_in_force": "good_til_cancelled", "trigger_price": Decimal("59000"), "trigger": "last_price"})
    stop_limit = OrderRequest("y", SYMBOL, Side.BUY, OrderType.STOP_LIMIT, Decimal(1), limit_price=Decimal("61000"),
                              stop_price=Decimal("60900"), time_in_force=TimeInForce.IOC)
    method, params = parse.order_request(stop_limit)
    assert method == "private/buy" and params["type"] == "stop_limit" and params["price"] == Decimal("61000")
    assert params["trigger_price"] == Decimal("60900") and params["time_in_force"] == "immediate_or_cancel"


@pytest.mark.parametrize("request_", [OrderRequest("x" * 65, SYMBOL, Side.BUY, OrderType.MARKET, Decimal(1)),
                                      OrderRequest("", SYMBOL, Side.BUY, OrderType.MARKET, Decimal(1))])
def test_a_label_deribit_cannot_take_is_refused_before_sending(request_: OrderRequest) -> None:
    venue = FakeDeribit()
    with facade(venue) as broker, pytest.raises(Rejected, match="64"):
        broker.submit_order(request_)
    assert venue.calls == []


@pytest.mark.parametrize(("state", "filled", "tif", "status"), [
    ("open", 0, "good_til_day", OrderStatus.ACCEPTED),
    ("open", 10, "good_til_day", OrderStatus.PARTIALLY_FILLED),
    ("untriggered", 0, "good_til_cancelled", OrderStatus.ACCEPTED),
    ("filled", 20, "good_til_day", OrderStatus.FILLED),
    ("rejected", 0, "good_til_day", OrderStatus.REJECTED),
    ("cancelled", 0, "good_til_day", OrderStatus.CANCELLED),
    ("cancelled", 10, "good_til_cancelled", OrderStatus.CANCELLED),
    ("cancelled", 0, "immediate_or_cancel", OrderStatus.EXPIRED),
])
def test_order_states(state: str, filled: int, tif: str, status: OrderStatus) -> None:
    order = parse.parse_order(ORDER | {"order_state": state, "filled_amount": filled, "time_in_force": tif,
                                       "average_price": Decimal("60000.5") if filled else 0})
    assert order.status is status and order.filled_quantity == Decimal(filled) / 10
    assert order.average_price == (Decimal("60000.5") if filled else None)


def test_market_and_stop_orders_parse() -> None:
    market = parse.parse_order(ORDER | {"order_type": "market", "price": "market_price", "direction": "sell"})
    assert market.order_type is OrderType.MARKET and market.limit_price is None and market.side is Side.SELL
    stop = parse.parse_order(ORDER | {"order_type": "stop_market", "price": "market_price", "order_state": "untriggered",
                                      "trigger_price": Decimal("59000.5"), "trigger": "last_price"})
    assert stop.order_type is OrderType.STOP and stop.stop_price == Decimal("59000.5") and stop.limit_price is None
    stop_limit = parse.parse_order(ORDER | {"order_type": "stop_limit", "trigger_price": 59000})
    assert (stop_limit.limit_price, stop_limit.stop_price) == (Decimal("1000.5"), Decimal(59000))


@pytest.mark.parametrize("change", [{"amount": 15}, {"order_state": "archived"}, {"order_type": "take_limit"},
                                    {"direction": "long"}, {"amount": True}, {"last_update_timestamp": "x"},
                                    {"instrument_name": "ETH-PERPETUAL"}])
def test_malformed_orders_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises((KeyError, TypeError, ValueError, UnknownSymbol)):
        parse.parse_order(ORDER | change)


def test_modify_sends_the_full_amount_and_price_to_the_order_id() -> None:
    venue = FakeDeribit().on("private/get_order_state_by_label", [ORDER])
    venue.on("private/edit", {"order": ORDER | {"amount": 30, "price": Decimal("999")}, "trades": []})
    with facade(venue) as broker:
        order = broker.modify_order("s.1.a", quantity=Decimal(3))
    assert venue.params_of("private/edit") == [{"order_id": "1234", "amount": "30", "price": "1000.5"}]
    assert order.quantity == Decimal(3) and order.limit_price == Decimal(999)


def test_cancel_acts_on_the_order_id_found_by_label() -> None:
    venue = FakeDeribit().on("private/get_order_state_by_label", [ORDER])
    venue.on("private/cancel", ORDER | {"order_state": "cancelled", "cancel_reason": "user_request"})
    with facade(venue) as broker:
        order = broker.cancel_order("s.1.a")
    assert venue.params_of("private/cancel") == [{"order_id": "1234"}]
    assert order.status is OrderStatus.CANCELLED and order.reason == "user_request"


def test_lookup_by_label_none_one_or_a_duplicate() -> None:
    venue = FakeDeribit().on("private/get_order_state_by_label", [], [ORDER],
                             [ORDER, ORDER | {"order_id": "1235"}])
    with facade(venue) as broker:
        assert broker.order_by_client_id("s.1.a") is None
        assert broker.order_by_client_id("s.1.a").broker_order_id == "1234"  # type: ignore[union-attr]
        with pytest.raises(UnexpectedResponse, match="sent twice"):
            broker.order_by_client_id("s.1.a")
    assert venue.params_of("private/get_order_state_by_label")[0] == {"currency": "BTC", "label": "s.1.a"}


def test_an_answer_for_another_label_is_doubt() -> None:
    venue = FakeDeribit().on("private/get_order_state_by_label", [ORDER | {"label": "other"}])
    with facade(venue) as broker, pytest.raises(UnexpectedResponse):
        broker.order_by_client_id("s.1.a")


# ---------------------------------------------------------------- sessions: switching subaccount


def test_switch_subaccount_keeps_tracking_orders_placed_before() -> None:
    venue = FakeDeribit()
    venue.on("private/get_account_summary", lambda p, r: ok({"id": 1 if bearer(r) == "AT1" else 2, "equity": 1}))
    venue.on("private/buy", lambda p, r: ok({"order": ORDER | {"label": p["label"],
                                                                "order_id": "A" if bearer(r) == "AT1" else "B"},
                                             "trades": []}))
    placed = {"AT1": [ORDER | {"order_id": "A", "label": "first"}], "AT2": [ORDER | {"order_id": "B", "label": "second"}]}
    venue.on("private/get_open_orders_by_instrument", lambda p, r: ok(placed[bearer(r) or ""]))
    venue.on("private/get_order_state_by_label",
             lambda p, r: ok([o for o in placed[bearer(r) or ""] if o["label"] == p["label"]]))
    with facade(venue) as broker:
        broker.submit_order(OrderRequest("first", SYMBOL, Side.BUY, OrderType.LIMIT, Decimal(2), Decimal("1000.5")))
        assert broker.switch_subaccount(2) == 2
        broker.submit_order(OrderRequest("second", SYMBOL, Side.BUY, OrderType.LIMIT, Decimal(2), Decimal("1000.5")))
        assert sorted(o.client_order_id for o in broker.open_orders()) == ["first", "second"]
        assert broker.order_by_client_id("first").broker_order_id == "A"  # type: ignore[union-attr]
        assert broker.order_by_client_id("second").broker_order_id == "B"  # type: ignore[union-attr]
        assert broker.switch_subaccount(2) == 2  # switching again adds nothing
    assert venue.params_of("public/exchange_token") == [{"refresh_token": "RT1", "subject_id": 2},
                                                        {"refresh_token": "RT1", "subject_id": 2}]
    buys = [bearer(r) for m, _, r in venue.calls if m == "private/buy"]
    assert buys == ["AT1", "AT2"]


def test_positions_across_subaccounts_are_summed() -> None:
    merged = parse.merge_positions([BrokerPosition(SYMBOL, Decimal(2), Decimal(100)),
                                    BrokerPosition(SYMBOL, Decimal(1), Decimal(130))])
    assert merged == [BrokerPosition(SYMBOL, Decimal(3), Decimal(110))]
    assert parse.merge_positions([BrokerPosition(SYMBOL, Decimal(2), Decimal(100)),
                                  BrokerPosition(SYMBOL, Decimal(-1), Decimal(130))]) == [
        BrokerPosition(SYMBOL, Decimal(1), None)]
    assert parse.merge_positions([BrokerPosition(SYMBOL, Decimal(2), Decimal(100)),
                                  BrokerPosition(SYMBOL, Decimal(-2), Decimal(130))]) == []


def test_positions_parse_signed_usd_sizes_and_skip_flat_ones() -> None:
    venue = FakeDeribit().on("private/get_positions", [
        {"instrument_name": SYMBOL, "size": -30, "average_price": Decimal("60000.5"), "direction": "sell"},
        {"instrument_name": SYMBOL, "size": 0, "average_price": 0, "direction": "zero"}])
    with facade(venue) as broker:
        assert broker.positions() == [BrokerPosition(SYMBOL, Decimal(-3), Decimal("60000.5"))]
    assert venue.params_of("private/get_positions") == [{"currency": "BTC", "kind": "future"}]


def test_account_equity_is_the_venues_equity() -> None:
    venue = FakeDeribit().on("private/get_account_summary", {"id": 1, "equity": Decimal("2.12345678"),
                                                             "currency": "BTC"})
    with facade(venue) as broker:
        assert broker.account_equity() == Decimal("2.12345678")


# ---------------------------------------------------------------- fills and the cursor


def test_fills_follow_pages_never_repeat_and_keep_the_cursor_when_nothing_is_new() -> None:
    trades = [TRADE | {"trade_id": f"T-{seq}", "trade_seq": seq} for seq in (3, 5, 9)]

    def page(params: dict[str, Any], request: httpx.Request) -> httpx.Response:
        start, count = int(params["start_seq"]), int(params["count"])
        newer = [t for t in trades if t["trade_seq"] >= start]
        return ok({"trades": newer[:1] if count else [], "has_more": len(newer) > 1})

    venue = FakeDeribit().on("private/get_user_trades_by_instrument", page)
    venue.on("private/get_account_summary", {"id": 4, "equity": 1})
    with facade(venue) as broker:
        fills, cursor = broker.fills_since(None)
        assert [f.broker_fill_id for f in fills] == ["T-3", "T-5", "T-9"] and cursor == "deribit1:4/BTC-PERPETUAL=9"
        assert fills[0].quantity == Decimal(2) and fills[0].price == Decimal("60000.5")
        assert fills[0].ts_ns == 1_700_000_060_000_000_000 and fills[0].client_order_id == "s.1.a"
        assert broker.fills_since(cursor) == ([], cursor)
        trades.append(TRADE | {"trade_id": "T-12", "trade_seq": 12})
        fills, cursor = broker.fills_since(cursor)
        assert [f.broker_fill_id for f in fills] == ["T-12"] and cursor.endswith("=12")
    first = venue.params_of("private/get_user_trades_by_instrument")[0]
    assert first == {"instrument_name": SYMBOL, "start_seq": "1", "count": "100", "sorting": "asc",
                     "include_old": "true"}


def test_a_page_that_repeats_old_trades_is_filtered_and_a_stuck_one_is_doubt() -> None:
    venue = FakeDeribit().on("private/get_account_summary", {"id": 4, "equity": 1})
    venue.on("private/get_user_trades_by_instrument", {"trades": [TRADE, TRADE], "has_more": False})
    with facade(venue) as broker:
        fills, _ = broker.fills_since(None)
        assert len(fills) == 1
        venue.on("private/get_user_trades_by_instrument", {"trades": [TRADE], "has_more": True})
        with pytest.raises(UnexpectedResponse, match="has_more"):
            broker.fills_since("deribit1:4/BTC-PERPETUAL=5")


@pytest.mark.parametrize("cursor", ["17", "deribit1:x=1", "deribit1:1/BTC-PERPETUAL", "deribit1:1/BTC=-1"])
def test_a_foreign_cursor_is_refused(cursor: str) -> None:
    with facade(FakeDeribit()) as broker, pytest.raises(ValueError):
        broker.fills_since(cursor)


# ---------------------------------------------------------------- bars


def chart(ticks: list[int], status: str = "ok") -> dict[str, Any]:
    n = len(ticks)
    return {"ticks": ticks, "open": [Decimal("1.5")] * n, "high": [2] * n, "low": [1] * n, "close": [Decimal("1.5")] * n,
            "volume": [Decimal("0.25")] * n, "cost": [1] * n, "status": status}


def test_history_keeps_only_bars_closed_by_the_venues_clock() -> None:
    now = 1_700_000_130_000  # 30 s into the minute that opened at 1_700_000_100_000
    venue = FakeDeribit().on("public/get_time", now)
    venue.on("public/get_tradingview_chart_data", chart([1_699_999_980_000, 1_700_000_040_000, 1_700_000_100_000]))
    with facade(venue) as broker:
        bars = broker.historical_bars(SYMBOL, "1m", limit=3)
    # The bar that opened at 1_700_000_100_000 is still forming: not in history.
    assert [b.ts_ns for b in bars] == [1_699_999_980_000_000_000, 1_700_000_040_000_000_000]
    assert bars[0] == Bar(SYMBOL, "1m", 1_699_999_980_000_000_000, Decimal("1.5"), Decimal(2), Decimal(1),
                          Decimal("1.5"), Decimal("0.25"), 1_699_999_980_000_000_000 // 60_000_000_000)
    (params,) = venue.params_of("public/get_tradingview_chart_data")
    assert params == {"instrument_name": SYMBOL, "start_timestamp": str(now - 180_000), "end_timestamp": str(now),
                      "resolution": "1"}
    assert all(r.headers.get("Authorization") is None for _, _, r in venue.calls)  # public: no token needed


def test_history_after_a_time_and_no_data() -> None:
    venue = FakeDeribit().on("public/get_time", 1_700_000_100_000)
    venue.on("public/get_tradingview_chart_data", chart([], "no_data"))
    with facade(venue) as broker:
        assert broker.historical_bars(SYMBOL, "5m", after_ts_ns=1_699_000_000_000_000_000, limit=10) == []
    params = venue.params_of("public/get_tradingview_chart_data")[0]
    assert params["start_timestamp"] == "1699000000001" and params["resolution"] == "5"


@pytest.mark.parametrize("data", [{"status": "error"}, chart([1]) | {"open": []}, chart([1]) | {"ticks": ["x"]}])
def test_malformed_chart_data_is_unexpected(data: dict[str, Any]) -> None:
    venue = FakeDeribit().on("public/get_time", 1_700_000_100_000).on("public/get_tradingview_chart_data", data)
    with facade(venue) as broker, pytest.raises(UnexpectedResponse):
        broker.historical_bars(SYMBOL, "1m", limit=2)


def test_intervals_deribit_lacks_are_not_supported() -> None:
    with facade(FakeDeribit(), ws_url="wss://deribit.test/ws/api/v2") as broker:
        with pytest.raises(NotSupported, match="7m"):
            broker.historical_bars(SYMBOL, "7m")
        with pytest.raises(NotSupported):
            broker.stream_bars(SYMBOL, "45s")
    assert parse.resolution("1h") == "60" and parse.resolution("1d") == "1D"


def test_streaming_needs_a_ws_url() -> None:
    with facade(FakeDeribit()) as broker, pytest.raises(NotSupported, match="ws_url"):
        broker.stream_bars(SYMBOL, "1m")


def version(index: int, close: str) -> Bar:
    return Bar(SYMBOL, "1m", index * 60_000_000_000, Decimal(1), Decimal(3), Decimal(1), Decimal(close), Decimal(1),
               index)


def test_a_streamed_bar_is_closed_by_a_newer_tick_and_yielded_once() -> None:
    closer = parse.ClosedBars(after_index=None)
    assert closer.update(version(10, "1")) is None           # forming
    assert closer.update(version(10, "2")) is None           # updated
    assert closer.update(version(11, "1")) == version(10, "2")  # a newer tick closes the LAST version
    assert closer.update(version(10, "2")) is None           # a stale repeat
    assert closer.update(version(11, "5")) is None
    assert closer.update(version(12, "1")) == version(11, "5")
    assert closer.update(version(12, "1")) is None and closer.update(version(13, "1")) == version(12, "1")


def test_replayed_bars_are_never_streamed_again() -> None:
    closer = parse.ClosedBars(after_index=5)
    assert closer.update(version(5, "1")) is None and closer.update(version(6, "1")) is None
    closer.replayed(version(6, "9"))
    closer.replayed(version(7, "9"))
    assert closer.update(version(7, "1")) is None and closer.update(version(8, "1")) is None
    assert closer.update(version(9, "1")) == version(8, "1")


def test_chart_updates_parse() -> None:
    bar = parse.parse_chart_update({"tick": 1_700_000_040_000, "open": 1, "high": Decimal("2.5"), "low": 1,
                                    "close": 2, "volume": Decimal("0.5"), "cost": 1}, SYMBOL, "1m")
    assert bar.index == 1_700_000_040_000_000_000 // 60_000_000_000 and bar.high == Decimal("2.5")
    with pytest.raises((KeyError, TypeError)):
        parse.parse_chart_update({"tick": "x"}, SYMBOL, "1m")


# ---------------------------------------------------------------- the wire


def test_json_numbers_are_exact_both_ways() -> None:
    text = dumps({"price": Decimal("60000.50"), "amount": Decimal("1E+2"), "flag": True, "label": "a\"b", "n": None})
    assert text == '{"price":60000.50,"amount":100,"flag":true,"label":"a\\"b","n":null}'
    assert loads('{"p": 0.1}')["p"] == Decimal("0.1")
    with pytest.raises(TypeError):
        dumps({"p": 0.1})


def test_post_answers_must_carry_the_request_id() -> None:
    def wrong_id(request: httpx.Request) -> httpx.Response:
        return respond(200, {"jsonrpc": "2.0", "id": 999, "result": {"access_token": "a"}})
    auth = adapter.authenticator({"base_url": BASE, "account": ACCOUNT}, transport=httpx.MockTransport(wrong_id))
    with pytest.raises(UnexpectedResponse):
        auth.obtain()
