"""The TradeStation adapter against ``httpx.MockTransport``: wire → domain, every mapped error shape
→ its error type (never with a secret in the message), the OAuth2 refresh flows with rotation,
client ids, fills cursor, lookup, brackets, bar streams with resync."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from brokers import registry
from brokers.auth import StaticTokenSource, Token
from brokers.base import Bar, BracketExecution, BrokerFacade, OrderRequest
from brokers.errors import (
    AuthFailed,
    AuthNeedsOperator,
    BrokerError,
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
from brokers.tradestation import adapter, parse
from brokers.tradestation.adapter import TradeStationExecution
from brokers.tradestation.api import Api
from brokers.tradestation.stream import TradeStationMarketData
from brokers.tradovate import execution as tradovate_execution
from schema.enums import OrderStatus, OrderType, Side, TimeInForce

TOKEN_HOST = "signin.test"
API = "https://api.test"
ACCOUNT = "ts-unit"
ACC = "ACC1"
ORDERS = f"/v3/brokerage/accounts/{ACC}/orders"
HISTORY = f"/v3/brokerage/accounts/{ACC}/historicalorders"
PLACE = "/v3/orderexecution/orders"
CLIENT_ID, CLIENT_SECRET, FIRST_REFRESH = "CLIENT-ID-7Q", "CLIENT-SECRET-9Z", "REFRESH-SEED-4K"
SECRETS = (CLIENT_SECRET, FIRST_REFRESH)
MINUTE = 60_000_000_000
DAY_NS = 86_400 * 1_000_000_000
T0 = 1_772_460_000 * 1_000_000_000  # 2026-03-02T14:00:00Z
Handler = Callable[[httpx.Request], httpx.Response]


# ---------------------------------------------------------------- a scripted venue


@dataclass
class FakeVenue:
    """Routes by (method, path); token requests answer ACCESS-n/REFRESH-n unless told otherwise."""

    routes: dict[tuple[str, str], Handler | list[Handler]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    token_answer: Handler | None = None
    rotate: bool = True
    issued: int = 0

    def on(self, method: str, path: str, *answers: Handler | httpx.Response | dict[str, Any]) -> None:
        """Answers in turn; the last one repeats."""
        self.routes[(method, path)] = [_handler(a) for a in answers]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        if request.url.host == TOKEN_HOST:
            if self.token_answer is not None:
                return self.token_answer(request)
            self.issued += 1
            body: dict[str, Any] = {"access_token": f"ACCESS-{self.issued}", "expires_in": 1200, "token_type": "Bearer"}
            if self.rotate:
                body["refresh_token"] = f"REFRESH-{self.issued}"
            return httpx.Response(200, json=body)
        answers = self.routes.get((request.method, request.url.path))
        if not answers:
            return httpx.Response(404, json={"Error": "NotFound", "Message": f"no route {request.url.path}"})
        assert isinstance(answers, list)
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        return answer(request)

    def api(self, path: str | None = None) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.host == "api.test" and (path is None or r.url.path == path)]

    def token_forms(self) -> list[dict[str, str]]:
        return [{k: v[0] for k, v in parse_qs(r.content.decode()).items()} for r in self.requests
                if r.url.host == TOKEN_HOST]


def _handler(answer: Handler | httpx.Response | dict[str, Any]) -> Handler:
    if isinstance(answer, httpx.Response):
        return lambda request: _copy(answer)
    if isinstance(answer, dict):
        return lambda request: httpx.Response(200, json=answer)
    return answer


def _copy(response: httpx.Response) -> httpx.Response:
    return httpx.Response(response.status_code, headers=response.headers, content=response.content)


def raising(exc_type: type[httpx.TransportError]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type("boom", request=request)
    return handler


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEBUS_SECRET_TS_UNIT_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("TRADEBUS_SECRET_TS_UNIT_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("TRADEBUS_SECRET_TS_UNIT_REFRESH_TOKEN", FIRST_REFRESH)


@pytest.fixture
def venue() -> FakeVenue:
    return FakeVenue()


def make(venue: FakeVenue, **config: Any) -> BrokerFacade:
    base = {"broker": "tradestation", "account": ACCOUNT, "base_url": API, "account_id": ACC,
            "token_url": f"https://{TOKEN_HOST}/oauth/token", "timeout_s": 1}
    facade = registry.build_facade(base | config, transport=httpx.MockTransport(venue))
    assert type(facade) is BrokerFacade  # brackets go through the plain facade: no subclass
    return facade


def execution(venue: FakeVenue, *, clock: Callable[[], int] = lambda: T0) -> TradeStationExecution:
    client = httpx.Client(base_url=API, transport=httpx.MockTransport(venue))
    tokens = StaticTokenSource(Token("ACCESS-STATIC", expires_ns=T0 + DAY_NS))
    return TradeStationExecution(Api(client, tokens), ACC, clock_ns=clock)


def ts_order(order_id: str, status: str = "OPN", *, confirm: str | None = "s.1.1", qty: str = "1",
             executed: str = "0", price: str = "0", side: str = "Buy", order_type: str = "Limit",
             limit: str | None = "5000.25", stop: str | None = None, closed: str | None = None,
             symbol: str = "ESZ26", opened: str = "2026-03-02T14:00:00Z") -> dict[str, Any]:
    order: dict[str, Any] = {
        "AccountID": ACC, "OrderID": order_id, "Status": status, "StatusDescription": status,
        "OrderType": order_type, "OpenedDateTime": opened, "Duration": "DAY",
        "Legs": [{"AssetType": "FUTURE", "BuyOrSell": side, "Symbol": symbol, "QuantityOrdered": qty,
                  "ExecQuantity": executed, "ExecutionPrice": price}],
    }
    if confirm is not None:
        order["OrderConfirmID"] = confirm
    if limit is not None:
        order["LimitPrice"] = limit
    if stop is not None:
        order["StopPrice"] = stop
    if closed is not None:
        order["ClosedDateTime"] = closed
    return order


def orders(*items: dict[str, Any], next_token: str | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"Orders": list(items), "Errors": []}
    if next_token:
        answer["NextToken"] = next_token
    return answer


def no_secret(exc: BaseException) -> None:
    text = f"{exc} {exc!r} {getattr(exc, 'excerpt', '')}"
    for secret in (*SECRETS, "ACCESS-1", "ACCESS-2", "REFRESH-1", "REFRESH-2", "ACCESS-STATIC"):
        assert secret not in text, f"secret leaked in {text!r}"


LIMIT = OrderRequest("s.1.1", "ESZ6", Side.BUY, OrderType.LIMIT, Decimal("1"), limit_price=Decimal("5000.25"))
EXIT_TAKE = OrderRequest("x.1.2", "ESZ6", Side.SELL, OrderType.LIMIT, Decimal(1), limit_price=Decimal("5010"))
EXIT_STOP = OrderRequest("x.1.3", "ESZ6", Side.SELL, OrderType.STOP, Decimal(1), stop_price=Decimal("4990"))


# ---------------------------------------------------------------- the module contract


def test_module_contract_and_capabilities(venue: FakeVenue) -> None:
    info = registry.broker_info("tradestation")
    assert info.error is None and info.credentials == ("client_id", "client_secret", "refresh_token")
    assert adapter.BROKER == "tradestation"
    caps = adapter.CAPABILITIES
    assert (caps.execution, caps.market_data, caps.lookup_by_client_id, caps.brackets, caps.modify) == (True,) * 5
    with make(venue) as facade:
        assert facade.capabilities == caps
        assert registry.needs_tokens("tradestation")
        assert isinstance(registry.build_authenticator({"broker": "tradestation", "account": ACCOUNT}),
                          adapter.TradeStationAuthenticator)


def test_without_account_id_the_facade_is_data_only(venue: FakeVenue) -> None:
    with make(venue, account_id=None) as facade:
        assert not facade.capabilities.execution and facade.capabilities.market_data
        for call in (lambda: facade.submit_order(LIMIT), facade.open_orders, lambda: facade.fills_since(None),
                     lambda: facade.submit_bracket(LIMIT, Decimal("5010"), Decimal("4990")),
                     lambda: adapter.submit_exit_bracket(facade, EXIT_TAKE, EXIT_STOP)):
            with pytest.raises(NotSupported):
                call()
    assert venue.api(PLACE) == []
    assert venue.requests == []


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="base_url"):
        adapter.build({"account": ACCOUNT})
    with pytest.raises(ValueError, match="account"):
        adapter.build({"base_url": API})
    with pytest.raises(ValueError, match="token_url"):
        adapter.build({"account": ACCOUNT, "base_url": API, "token_url": "signin"})


@pytest.mark.parametrize(("canonical", "broker"), [
    ("ES", "@ES"), ("6E", "@EC"), ("NQ", "@NQ"), ("ESZ6", "ESZ26"), ("6EH7", "ECH27"), ("CLF7", "CLF27"),
])
def test_symbols_both_ways(venue: FakeVenue, canonical: str, broker: str) -> None:
    with make(venue) as facade:
        assert facade.to_broker_symbol(canonical) == broker
        assert facade.to_canonical(broker) == canonical


@pytest.mark.parametrize("symbol", ["XYZ", "ESF6", "BTC-PERPETUAL"])
def test_unknown_symbols(venue: FakeVenue, symbol: str) -> None:
    with make(venue) as facade, pytest.raises(UnknownSymbol):
        facade.to_broker_symbol(symbol)


def test_order_confirm_ids() -> None:
    assert parse.order_confirm_id("es-trend.3.17") == "es-trend.3.17"
    long_id = "a-very-long-session-name-for-testing.123456.987654321"
    hashed = parse.order_confirm_id(long_id)
    assert len(hashed) == parse.MAX_ORDER_CONFIRM_ID_LEN and hashed.startswith("H")
    assert parse.order_confirm_id(long_id) == hashed  # deterministic: a restart finds the order again
    assert parse.order_confirm_id(long_id + "0") != hashed
    assert parse.order_confirm_id("has space") != "has space"
    # An id that happens to look like a hash is hashed too, so the two namespaces cannot collide.
    assert parse.order_confirm_id(hashed) != hashed
    with pytest.raises(ValueError):
        parse.order_confirm_id("")


# ---------------------------------------------------------------- OAuth2 refresh


def test_obtain_sends_the_refresh_grant_form(venue: FakeVenue) -> None:
    auth = adapter.authenticator({"account": ACCOUNT, "token_url": f"https://{TOKEN_HOST}/oauth/token"},
                                 transport=httpx.MockTransport(venue))
    token = auth.obtain()
    [request] = venue.requests
    assert request.method == "POST" and request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert venue.token_forms() == [{"grant_type": "refresh_token", "client_id": CLIENT_ID,
                                    "client_secret": CLIENT_SECRET, "refresh_token": FIRST_REFRESH}]
    assert token.access_token == "ACCESS-1" and token.refresh_token == "REFRESH-1"
    assert token.expires_ns - token.issued_ns == 1200 * 1_000_000_000
    assert auth.refresh_at_ns(token) == token.expires_ns - 120 * 1_000_000_000
    assert auth.notices(token, token.issued_ns) == []
    for text in (repr(token), repr(auth)):
        assert "ACCESS-1" not in text and CLIENT_SECRET not in text and "REFRESH" not in text


def test_rotated_refresh_tokens_are_adopted_and_kept_when_absent(venue: FakeVenue) -> None:
    auth = adapter.authenticator({"account": ACCOUNT, "token_url": f"https://{TOKEN_HOST}/oauth/token"},
                                 transport=httpx.MockTransport(venue))
    first = auth.obtain()                      # answers REFRESH-1: adopted
    second = auth.refresh(first)               # spends REFRESH-1, answers REFRESH-2
    venue.rotate = False
    third = auth.refresh(second)               # spends REFRESH-2, answers none: REFRESH-2 is kept
    fourth = auth.refresh(third)
    sent = [form["refresh_token"] for form in venue.token_forms()]
    assert sent == [FIRST_REFRESH, "REFRESH-1", "REFRESH-2", "REFRESH-2"]
    assert (second.refresh_token, third.refresh_token, fourth.refresh_token) == ("REFRESH-2",) * 3
    # obtain() after a rotation uses the newest refresh token, never the spent initial one.
    venue.rotate = True
    auth.obtain()
    assert venue.token_forms()[-1]["refresh_token"] == "REFRESH-2"


@pytest.mark.parametrize(("status", "body", "headers", "error", "retry_after"), [
    (403, {"error": "invalid_grant", "error_description": f"Unknown or invalid refresh token {FIRST_REFRESH}"},
     {}, AuthNeedsOperator, None),
    (400, {"error": "invalid_grant"}, {}, AuthNeedsOperator, None),
    (401, {"error": "access_denied", "error_description": "Unauthorized"}, {}, AuthNeedsOperator, None),
    (401, {"error": "invalid_client", "error_description": f"bad secret {CLIENT_SECRET}"}, {}, AuthNeedsOperator, None),
    (400, {"error": "invalid_request"}, {}, AuthFailed, None),
    (429, {"error": "too_many_requests"}, {"Retry-After": "12"}, RateLimited, 12.0),
    (429, None, {}, RateLimited, 300.0),
    (503, None, {}, Retryable, None),
    (200, "not json", {}, UnexpectedResponse, None),
    (200, {"access_token": "", "expires_in": 1200}, {}, UnexpectedResponse, None),
    (200, {"access_token": "ACCESS-1", "expires_in": "soon"}, {}, UnexpectedResponse, None),
])
def test_token_refusals_map_to_errors(venue: FakeVenue, status: int, body: Any, headers: dict[str, str],
                                      error: type[BrokerError], retry_after: float | None) -> None:
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode() if body is not None else b""
    venue.token_answer = lambda request: httpx.Response(status, content=content, headers=headers)
    with make(venue) as facade, pytest.raises(error) as caught:
        facade.open_orders()
    assert type(caught.value) is error
    if retry_after is not None:
        assert caught.value.retry_after_s == retry_after  # type: ignore[attr-defined]
    no_secret(caught.value)
    assert venue.api() == []  # nothing went to the API without a token


@pytest.mark.parametrize(("failure", "error"), [(httpx.ConnectError, BrokerUnavailable),
                                                (httpx.ReadTimeout, Retryable)])
def test_token_transport_failures(venue: FakeVenue, failure: type[httpx.TransportError], error: type[BrokerError]) -> None:
    venue.token_answer = raising(failure)
    with make(venue) as facade, pytest.raises(error) as caught:
        facade.positions()
    no_secret(caught.value)


def test_missing_credentials_name_where_to_put_them(venue: FakeVenue, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRADEBUS_SECRET_TS_UNIT_REFRESH_TOKEN")
    with pytest.raises(AuthNeedsOperator, match="TRADEBUS_SECRET_TS_UNIT_REFRESH_TOKEN") as caught:
        make(venue)
    no_secret(caught.value)
    # With the tokens service's source, the adapter needs no credentials at all.
    tokens = StaticTokenSource(Token("ACCESS-STATIC", expires_ns=T0 + DAY_NS), broker="tradestation")
    facade = registry.build_facade({"broker": "tradestation", "account": ACCOUNT, "base_url": API,
                                    "account_id": ACC}, transport=httpx.MockTransport(venue), tokens=tokens)
    facade.close()


# ---------------------------------------------------------------- token refusal on a request


def test_an_unauthorized_answer_refreshes_and_resends_once(venue: FakeVenue) -> None:
    venue.on("POST", PLACE, httpx.Response(401, json={"Error": "Unauthorized", "Message": "expired"}),
             {"Orders": [{"OrderID": "77", "Message": "Sent order"}]})
    with make(venue) as facade:
        order = facade.submit_order(LIMIT)
    assert (order.broker_order_id, order.status, order.symbol) == ("77", OrderStatus.ACCEPTED, "ESZ6")
    first, second = venue.api(PLACE)
    assert first.headers["authorization"] == "Bearer ACCESS-1" and second.headers["authorization"] == "Bearer ACCESS-2"
    assert [f["refresh_token"] for f in venue.token_forms()] == [FIRST_REFRESH, "REFRESH-1"]
    body = json.loads(second.content)
    assert body == {"AccountID": ACC, "Symbol": "ESZ26", "Quantity": "1", "OrderType": "Limit", "TradeAction": "BUY",
                    "TimeInForce": {"Duration": "DAY"}, "OrderConfirmID": "s.1.1", "LimitPrice": "5000.25"}


def test_a_second_refusal_is_auth_failed(venue: FakeVenue) -> None:
    venue.on("GET", ORDERS, httpx.Response(401, json={"Error": "Unauthorized", "Message": "no"}))
    with make(venue) as facade, pytest.raises(AuthFailed) as caught:
        facade.open_orders()
    assert len(venue.api(ORDERS)) == 2
    no_secret(caught.value)


# ---------------------------------------------------------------- error shapes


def _resp(status: int, body: Any = None, **headers: str) -> httpx.Response:
    if isinstance(body, (bytes, str)):
        return httpx.Response(status, content=body if isinstance(body, bytes) else body.encode(), headers=headers)
    return httpx.Response(status, json=body, headers=headers)


SUBMIT_ERRORS = [
    (_resp(200, {"Orders": [], "Errors": [{"OrderID": "", "Error": "FAILED", "Message": "Insufficient margin"}]}),
     Rejected, "Insufficient margin"),
    (_resp(400, {"Error": "BadRequest", "Message": "Quantity must be positive"}), Rejected, "Quantity must be positive"),
    (_resp(400, {"Orders": [], "Errors": [{"OrderID": "", "Error": "FAILED", "Message": "Price off tick"}]}),
     Rejected, "Price off tick"),
    (_resp(403, {"Error": "Forbidden", "Message": "no trading permission"}), AuthFailed, "Forbidden"),
    (_resp(429, {"Error": "TooManyRequests", "Message": "quota"}, **{"Retry-After": "7"}), RateLimited, "rate limited"),
    (_resp(500, {"Error": "InternalServerError"}), OutcomeUnknown, "500"),
    (_resp(502, b"<html>bad gateway</html>"), OutcomeUnknown, "502"),
    (_resp(503, {"Error": "ServiceUnavailable"}), OutcomeUnknown, "503"),
    (_resp(504, {"Error": "GatewayTimeout"}), OutcomeUnknown, "504"),
    (_resp(200, b"not json"), OutcomeUnknown, "look the order up"),
    (_resp(200, {"Weird": 1}), OutcomeUnknown, "look the order up"),
    (_resp(200, {"Orders": [{"Message": "no id"}]}), OutcomeUnknown, "look the order up"),
    (_resp(404, {"Error": "NotFound", "Message": "no such route"}), UnexpectedResponse, "404"),
    (_resp(500, {"Orders": [], "Errors": [{"OrderID": "", "Error": "FAILED", "Message": "x"}]}), OutcomeUnknown, "500"),
]


@pytest.mark.parametrize(("answer", "error", "text"), SUBMIT_ERRORS)
def test_submit_answers_map_to_errors(venue: FakeVenue, answer: httpx.Response, error: type[BrokerError],
                                      text: str) -> None:
    venue.on("POST", PLACE, answer)
    with make(venue) as facade, pytest.raises(error) as caught:
        facade.submit_order(LIMIT)
    assert type(caught.value) is error and text in str(caught.value)
    if error is RateLimited:
        assert caught.value.retry_after_s == 7.0  # type: ignore[attr-defined]
    no_secret(caught.value)
    assert len(venue.api(PLACE)) == 1  # never resent


def test_rate_limit_without_retry_after_waits_one_quota_window(venue: FakeVenue) -> None:
    venue.on("GET", ORDERS, _resp(429, {"Error": "TooManyRequests", "Message": "quota"}))
    with make(venue) as facade, pytest.raises(RateLimited) as caught:
        facade.open_orders()
    assert caught.value.retry_after_s == 300.0


@pytest.mark.parametrize(("failure", "error"), [
    (httpx.ConnectError, BrokerUnavailable), (httpx.ConnectTimeout, BrokerUnavailable),
    (httpx.ReadTimeout, OutcomeUnknown), (httpx.RemoteProtocolError, OutcomeUnknown), (httpx.ReadError, OutcomeUnknown),
])
def test_submit_transport_failures(venue: FakeVenue, failure: type[httpx.TransportError], error: type[BrokerError]) -> None:
    venue.on("POST", PLACE, raising(failure))
    with make(venue) as facade, pytest.raises(error) as caught:
        facade.submit_order(LIMIT)
    no_secret(caught.value)


@pytest.mark.parametrize(("answer", "error"), [
    (_resp(500, {"Error": "InternalServerError"}), Retryable),
    (_resp(503, {"Error": "ServiceUnavailable"}), Retryable),
    (_resp(400, {"Error": "BadRequest", "Message": "bad pageSize"}), UnexpectedResponse),
    (_resp(403, {"Error": "Forbidden", "Message": "no"}), AuthFailed),
    (_resp(200, b"garbage"), UnexpectedResponse),
    (_resp(200, {"Orders": "nope"}), UnexpectedResponse),
    (_resp(200, {"Orders": [], "Errors": [{"AccountID": ACC, "Error": "Forbidden", "Message": "closed"}]}),
     UnexpectedResponse),
    (_resp(200, orders(ts_order("1", "ZZZ"))), UnexpectedResponse),
    (_resp(200, orders(ts_order("1", executed="1", price="0"))), UnexpectedResponse),
    (_resp(200, {"Orders": [{**ts_order("1"), "Legs": []}]}), UnexpectedResponse),
])
def test_read_answers_map_to_errors(venue: FakeVenue, answer: httpx.Response, error: type[BrokerError]) -> None:
    venue.on("GET", ORDERS, answer)
    with make(venue) as facade, pytest.raises(error) as caught:
        facade.open_orders()
    assert type(caught.value) is error
    no_secret(caught.value)


@pytest.mark.parametrize(("failure", "error"), [(httpx.ReadTimeout, Retryable), (httpx.ConnectError, BrokerUnavailable)])
def test_read_transport_failures(venue: FakeVenue, failure: type[httpx.TransportError], error: type[BrokerError]) -> None:
    venue.on("GET", f"/v3/brokerage/accounts/{ACC}/positions", raising(failure))
    with make(venue) as facade, pytest.raises(error):
        facade.positions()


def test_a_secret_in_a_body_never_reaches_a_message(venue: FakeVenue) -> None:
    leak = json.dumps({"Orders": 3, "access_token": "ACCESS-1", "refresh_token": FIRST_REFRESH}).encode()
    venue.on("GET", ORDERS, _resp(200, leak))
    with make(venue) as facade, pytest.raises(UnexpectedResponse) as caught:
        facade.open_orders()
    no_secret(caught.value)


# ---------------------------------------------------------------- parsing


def test_orders_parse_with_statuses_and_partial_fills(venue: FakeVenue) -> None:
    venue.on("GET", ORDERS, orders(
        ts_order("1", "ACK"),
        ts_order("2", "OPN", confirm="s.1.2", qty="3", executed="1", price="5000.5"),
        ts_order("3", "FPR", confirm="s.1.3", qty="2", executed="1", price="5000"),
        ts_order("4", "FLL", confirm="s.1.4", executed="1", price="5001", closed="2026-03-02T14:05:00Z"),
        ts_order("5", "UCN", confirm="s.1.5", order_type="StopMarket", limit="0", stop="4990", side="Sell"),
        ts_order("6", "OSO", confirm="s.1.6", symbol="ECH27", limit="1.0850"),
        ts_order("7", "BRC", confirm="s.1.7"),
        ts_order("8", "RPD", confirm=None, order_type="Market", limit="0"),
    ))
    with make(venue) as facade:
        working = {o.broker_order_id: o for o in facade.open_orders()}
    assert set(working) == {"1", "2", "3", "5", "6", "8"}
    assert working["1"].status is OrderStatus.ACCEPTED and working["1"].client_order_id == "s.1.1"
    assert working["1"].updated_ns == T0
    assert (working["2"].status, working["2"].filled_quantity, working["2"].average_price) == (
        OrderStatus.PARTIALLY_FILLED, Decimal(1), Decimal("5000.5"))
    assert working["3"].status is OrderStatus.PARTIALLY_FILLED
    assert (working["5"].status, working["5"].order_type, working["5"].stop_price, working["5"].limit_price,
            working["5"].side) == (OrderStatus.PENDING_CANCEL, OrderType.STOP, Decimal(4990), None, Side.SELL)
    assert working["6"].symbol == "6EH7"
    assert (working["8"].status, working["8"].client_order_id, working["8"].limit_price) == (
        OrderStatus.PENDING_REPLACE, "", None)


@pytest.mark.parametrize(("code", "status"), sorted(parse.STATUS_CODES.items()))
def test_every_status_code_maps(code: str, status: OrderStatus) -> None:
    order = parse.parse_order(ts_order("9", code), "c")
    assert order.status is status


def test_positions_and_equity(venue: FakeVenue) -> None:
    venue.on("GET", f"/v3/brokerage/accounts/{ACC}/positions", {"Positions": [
        {"AccountID": ACC, "Symbol": "ESZ26", "Quantity": "2", "LongShort": "Long", "AveragePrice": "5000.25"},
        {"AccountID": ACC, "Symbol": "ECH27", "Quantity": "-3", "LongShort": "Short", "AveragePrice": "1.085"},
        {"AccountID": ACC, "Symbol": "NQZ26", "Quantity": "1", "LongShort": "Short", "AveragePrice": "18000"},
        {"AccountID": ACC, "Symbol": "CLF27", "Quantity": "0", "LongShort": "Long", "AveragePrice": "0"},
    ], "Errors": []})
    venue.on("GET", f"/v3/brokerage/accounts/{ACC}/balances", {"Balances": [
        {"AccountID": "OTHER", "Equity": "1"}, {"AccountID": ACC, "Equity": "250123.45"}], "Errors": []})
    with make(venue) as facade:
        held = {p.symbol: p.quantity for p in facade.positions()}
        assert held == {"ESZ6": 2, "6EH7": -3, "NQZ6": -1}
        assert facade.account_equity() == Decimal("250123.45")
    venue.on("GET", f"/v3/brokerage/accounts/{ACC}/balances", {"Balances": [], "Errors": []})
    with make(venue) as facade, pytest.raises(UnexpectedResponse):
        facade.account_equity()


# ---------------------------------------------------------------- commands


def test_cancel_looks_up_deletes_and_reads_back(venue: FakeVenue) -> None:
    venue.on("GET", ORDERS, orders(ts_order("41", "OPN")))
    venue.on("DELETE", f"{PLACE}/41", {"OrderID": "41", "Message": "Cancel request sent"})
    venue.on("GET", f"{ORDERS}/41", orders(ts_order("41", "CAN", closed="2026-03-02T14:01:00Z")),
             httpx.Response(503, json={"Error": "ServiceUnavailable"}))
    with make(venue) as facade:
        cancelled = facade.cancel_order("s.1.1")
        assert (cancelled.status, cancelled.broker_order_id, cancelled.client_order_id) == (
            OrderStatus.CANCELLED, "41", "s.1.1")
        # The read-back fails: the cancel was acknowledged, so the order is pending cancel.
        again = facade.cancel_order("s.1.1")
        assert again.status is OrderStatus.PENDING_CANCEL


@pytest.mark.parametrize(("answer", "error"), [
    (_resp(404, {"Error": "NotFound", "Message": "no order"}), OrderNotFound),
    (_resp(400, {"Error": "BadRequest", "Message": "Order already filled"}), Rejected),
    (_resp(200, {"OrderID": "41", "Error": "FAILED", "Message": "Too late to cancel"}), Rejected),
    (_resp(500, {"Error": "InternalServerError"}), OutcomeUnknown),
])
def test_cancel_refusals(venue: FakeVenue, answer: httpx.Response, error: type[BrokerError]) -> None:
    venue.on("GET", ORDERS, orders(ts_order("41", "OPN")))
    venue.on("DELETE", f"{PLACE}/41", answer)
    with make(venue) as facade, pytest.raises(error):
        facade.cancel_order("s.1.1")


def test_cancel_or_modify_of_an_unknown_client_id_is_order_not_found(venue: FakeVenue) -> None:
    venue.on("GET", ORDERS, orders(ts_order("41", "OPN", confirm="other")))
    venue.on("GET", HISTORY, orders())
    with make(venue) as facade:
        with pytest.raises(OrderNotFound):
            facade.cancel_order("s.1.1")
        with pytest.raises(OrderNotFound):
            facade.modify_order("s.1.1", limit_price=Decimal(1))
    assert not [r for r in venue.api() if r.method in ("DELETE", "PUT")]


def test_modify_puts_only_the_changes(venue: FakeVenue) -> None:
    venue.on("GET", ORDERS, orders(ts_order("41", "OPN")))
    venue.on("PUT", f"{PLACE}/41", {"OrderID": "41", "Message": "Cancel/Replace order sent"})
    venue.on("GET", f"{ORDERS}/41", orders(ts_order("41", "OPN", limit="4999.75", qty="2")))
    with make(venue) as facade:
        modified = facade.modify_order("s.1.1", quantity=Decimal(2), limit_price=Decimal("4999.75"))
    assert (modified.quantity, modified.limit_price) == (Decimal(2), Decimal("4999.75"))
    [put] = venue.api(f"{PLACE}/41")
    assert json.loads(put.content) == {"Quantity": "2", "LimitPrice": "4999.75"}


def test_duplicate_answer_returns_the_order_the_venue_has(venue: FakeVenue) -> None:
    duplicate = {"Orders": [], "Errors": [{"OrderID": "", "Error": "FAILED", "Message": "Duplicate OrderConfirmID"}]}
    venue.on("POST", PLACE, duplicate)
    venue.on("GET", ORDERS, orders(ts_order("41", "FLL", executed="1", price="5000", closed="2026-03-02T14:01:00Z")))
    with make(venue) as facade:
        order = facade.submit_order(LIMIT)
        assert (order.broker_order_id, order.status) == ("41", OrderStatus.FILLED)
        venue.on("GET", ORDERS, orders(ts_order("42", "OPN", confirm="other")))
        venue.on("GET", HISTORY, orders())
        with pytest.raises(Rejected, match="Duplicate"):
            facade.submit_order(LIMIT)
        venue.on("GET", ORDERS, httpx.Response(503, json={"Error": "ServiceUnavailable"}))
        with pytest.raises(OutcomeUnknown, match="duplicate"):
            facade.submit_order(LIMIT)


def test_long_client_ids_travel_hashed_and_come_back_whole(venue: FakeVenue) -> None:
    long_id = "a-rather-long-session-name.1234.5678901"
    confirm = parse.order_confirm_id(long_id)
    venue.on("POST", PLACE, {"Orders": [{"OrderID": "90", "Message": "Sent"}]})
    venue.on("GET", ORDERS, orders(ts_order("90", "OPN", confirm=confirm)))
    with make(venue) as facade:
        facade.submit_order(OrderRequest(long_id, "ESZ6", Side.BUY, OrderType.MARKET, Decimal(1)))
        assert json.loads(venue.api(PLACE)[0].content)["OrderConfirmID"] == confirm
        assert [o.client_order_id for o in facade.open_orders()] == [long_id]
    # A new process that never placed it still finds it by its client id (the hash is deterministic).
    with make(venue) as fresh:
        found = fresh.order_by_client_id(long_id)
        assert found is not None and (found.broker_order_id, found.client_order_id) == ("90", long_id)


# ---------------------------------------------------------------- lookup by client id


def test_lookup_searches_today_then_history(venue: FakeVenue) -> None:
    venue.on("GET", ORDERS, orders(ts_order("1", "OPN", confirm="x")))
    venue.on("GET", HISTORY, orders(ts_order("2", "FLL", executed="1", price="5000", closed="2026-02-27T15:00:00Z")))
    with make(venue) as facade:
        found = facade.order_by_client_id("s.1.1")
        assert found is not None and (found.broker_order_id, found.status) == ("2", OrderStatus.FILLED)
        assert facade.order_by_client_id("s.9.9") is None
    [history] = venue.api(HISTORY)[:1]
    assert "since" in history.url.params


def test_lookup_is_none_only_when_the_answer_could_show_the_id(venue: FakeVenue) -> None:
    venue.on("GET", ORDERS, orders(ts_order("1", "OPN", confirm=None)))
    venue.on("GET", HISTORY, orders())
    with make(venue) as facade, pytest.raises(UnexpectedResponse, match="OrderConfirmID"):
        facade.order_by_client_id("s.1.1")
    venue.on("GET", ORDERS, orders())
    with make(venue) as facade:
        assert facade.order_by_client_id("s.1.1") is None  # no orders at all: certainly none of ours


def test_lookup_finds_orders_this_process_placed_by_order_id(venue: FakeVenue) -> None:
    venue.on("POST", PLACE, {"Orders": [{"OrderID": "55", "Message": "Sent"}]})
    venue.on("GET", ORDERS, orders(ts_order("55", "OPN", confirm=None)))
    with make(venue) as facade:
        facade.submit_order(LIMIT)
        found = facade.order_by_client_id("s.1.1")
    assert found is not None and found.broker_order_id == "55"


# ---------------------------------------------------------------- brackets


def test_submit_bracket_sends_the_entry_with_a_brk_oso(venue: FakeVenue) -> None:
    venue.on("POST", PLACE, {"Orders": [{"OrderID": "1", "Message": "Sent"}, {"OrderID": "2", "Message": "Sent"},
                                        {"OrderID": "3", "Message": "Sent"}]})
    entry = OrderRequest("b.1.1", "ESZ6", Side.BUY, OrderType.MARKET, Decimal(2))
    with make(venue) as facade:
        placed = facade.submit_bracket(entry, take_profit=Decimal("5010.25"), stop_loss=Decimal("4990"))
        assert (placed.broker_order_id, placed.client_order_id, placed.symbol, placed.side, placed.order_type,
                placed.quantity, placed.status) == ("1", "b.1.1", "ESZ6", Side.BUY, OrderType.MARKET, Decimal(2),
                                                    OrderStatus.ACCEPTED)
        # The legs' ids are the entry's plus :tp / :sl; they travel hashed and come back whole.
        take_id, stop_id = "b.1.1" + adapter.TAKE_PROFIT_SUFFIX, "b.1.1" + adapter.STOP_LOSS_SUFFIX
        venue.on("GET", ORDERS, orders(
            ts_order("2", "OSO", confirm=parse.order_confirm_id(take_id), side="Sell", qty="2", limit="5010.25"),
            ts_order("3", "OSO", confirm=parse.order_confirm_id(stop_id), side="Sell", qty="2", limit=None,
                     stop="4990", order_type="StopMarket")))
        take_leg, stop_leg = facade.order_by_client_id(take_id), facade.order_by_client_id(stop_id)
    assert take_leg is not None and (take_leg.broker_order_id, take_leg.client_order_id) == ("2", take_id)
    assert stop_leg is not None and (stop_leg.broker_order_id, stop_leg.client_order_id) == ("3", stop_id)
    [request] = venue.api(PLACE)
    body = json.loads(request.content)
    assert (body["OrderConfirmID"], body["Symbol"], body["TradeAction"], body["Quantity"]) == ("b.1.1", "ESZ26", "BUY", "2")
    [oso] = body["OSOs"]
    assert oso["Type"] == "BRK"  # one cancels the other
    take, stop = oso["Orders"]
    assert take == {"AccountID": ACC, "Symbol": "ESZ26", "Quantity": "2", "OrderType": "Limit", "TradeAction": "SELL",
                    "TimeInForce": {"Duration": "GTC"}, "OrderConfirmID": parse.order_confirm_id(take_id),
                    "LimitPrice": "5010.25"}
    assert stop == {"AccountID": ACC, "Symbol": "ESZ26", "Quantity": "2", "OrderType": "StopMarket",
                    "TradeAction": "SELL", "TimeInForce": {"Duration": "GTC"},
                    "OrderConfirmID": parse.order_confirm_id(stop_id), "StopPrice": "4990"}


def test_a_bracket_with_one_leg_or_none(venue: FakeVenue) -> None:
    venue.on("POST", PLACE, {"Orders": [{"OrderID": "1", "Message": "Sent"}, {"OrderID": "2", "Message": "Sent"}]},
             {"Orders": [{"OrderID": "3", "Message": "Sent"}]})
    short = OrderRequest("b.2.1", "ESZ6", Side.SELL, OrderType.LIMIT, Decimal(1), limit_price=Decimal("5000"))
    with make(venue) as facade:
        first = facade.submit_bracket(short, stop_loss=Decimal("5020"))
        plain = facade.submit_bracket(dataclasses.replace(short, client_order_id="b.3.1"), None, None)
    assert (first.broker_order_id, first.client_order_id) == ("1", "b.2.1")
    assert (plain.broker_order_id, plain.client_order_id) == ("3", "b.3.1")
    with_stop, without = (json.loads(r.content) for r in venue.api(PLACE))
    [oso] = with_stop["OSOs"]
    [leg] = oso["Orders"]
    assert oso["Type"] == "NORMAL"
    assert (leg["OrderType"], leg["TradeAction"], leg["StopPrice"], leg["OrderConfirmID"]) == (
        "StopMarket", "BUY", "5020", parse.order_confirm_id("b.2.1" + adapter.STOP_LOSS_SUFFIX))
    assert "OSOs" not in without and without["OrderConfirmID"] == "b.3.1"


def test_bracket_legs_are_named_as_on_tradovate() -> None:
    assert (adapter.TAKE_PROFIT_SUFFIX, adapter.STOP_LOSS_SUFFIX) == (
        tradovate_execution.TAKE_PROFIT_SUFFIX, tradovate_execution.STOP_LOSS_SUFFIX)
    entry = OrderRequest("e" * 64, "ESZ26", Side.SELL, OrderType.MARKET, Decimal(3))
    take, stop = adapter.bracket_legs(entry, Decimal("4900"), Decimal("5100"))
    assert take == OrderRequest("e" * 64 + ":tp", "ESZ26", Side.BUY, OrderType.LIMIT, Decimal(3),
                                limit_price=Decimal("4900"), time_in_force=TimeInForce.GTC)
    assert stop == OrderRequest("e" * 64 + ":sl", "ESZ26", Side.BUY, OrderType.STOP, Decimal(3),
                                stop_price=Decimal("5100"), time_in_force=TimeInForce.GTC)
    assert adapter.bracket_legs(entry, None, None) == (None, None)
    assert isinstance(execution(FakeVenue()), BracketExecution)


def test_exit_bracket_posts_a_brk_group_in_canonical_symbols(venue: FakeVenue) -> None:
    venue.on("POST", "/v3/orderexecution/ordergroups", {"Orders": [{"OrderID": "7", "Message": "Sent"},
                                                                   {"OrderID": "8", "Message": "Sent"}]})
    with make(venue) as facade:
        take, stop = adapter.submit_exit_bracket(facade, EXIT_TAKE, EXIT_STOP)
    assert [(o.broker_order_id, o.client_order_id, o.symbol, o.status) for o in (take, stop)] == [
        ("7", "x.1.2", "ESZ6", OrderStatus.ACCEPTED), ("8", "x.1.3", "ESZ6", OrderStatus.ACCEPTED)]
    body = json.loads(venue.api("/v3/orderexecution/ordergroups")[0].content)
    assert body["Type"] == "BRK"
    assert [(o["OrderConfirmID"], o["Symbol"], o["OrderType"]) for o in body["Orders"]] == [
        ("x.1.2", "ESZ26", "Limit"), ("x.1.3", "ESZ26", "StopMarket")]


def test_a_partly_accepted_group_is_an_unknown_outcome(venue: FakeVenue) -> None:
    venue.on("POST", "/v3/orderexecution/ordergroups", {
        "Orders": [{"OrderID": "1", "Message": "Sent"}],
        "Errors": [{"OrderID": "", "Error": "FAILED", "Message": "stop price invalid"}]})
    with make(venue) as facade, pytest.raises(OutcomeUnknown, match="look each leg up"):
        adapter.submit_exit_bracket(facade, EXIT_TAKE, EXIT_STOP)
    body = json.loads(venue.api("/v3/orderexecution/ordergroups")[0].content)
    assert body["Type"] == "BRK" and [o["OrderConfirmID"] for o in body["Orders"]] == ["x.1.2", "x.1.3"]


def test_brackets_are_not_supported_when_the_capability_is_off(venue: FakeVenue,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapter, "CAPABILITIES", dataclasses.replace(adapter.CAPABILITIES, brackets=False))
    with make(venue) as facade:
        assert facade.capabilities.execution and not facade.capabilities.brackets
        with pytest.raises(NotSupported, match="bracket orders"):
            facade.submit_bracket(LIMIT, Decimal("5010"), Decimal("4990"))
        with pytest.raises(NotSupported, match="exit brackets"):
            adapter.submit_exit_bracket(facade, EXIT_TAKE, EXIT_STOP)
    assert venue.api() == []


# ---------------------------------------------------------------- fills from orders


def test_fills_are_increments_with_stable_ids_and_never_repeat(venue: FakeVenue) -> None:
    clock = [T0]
    ex = execution(venue, clock=lambda: clock[0])
    venue.on("GET", ORDERS, orders(ts_order("7", "FPR", qty="3", executed="1", price="100")))
    venue.on("GET", HISTORY, orders(ts_order("3", "FLL", confirm="s.0.1", executed="2", price="99",
                                             closed="2026-03-01T20:00:00Z")))
    fills, cursor = ex.fills_since(None)
    assert sorted((f.broker_fill_id, f.quantity, f.price) for f in fills) == [
        ("3:2", Decimal(2), Decimal(99)), ("7:1", Decimal(1), Decimal(100))]
    assert {f.client_order_id for f in fills} == {"s.0.1", "s.1.1"}
    [first_history] = venue.api(HISTORY)
    assert first_history.url.params["since"] == "2026-02-22"  # 7 days back, minus the one-day margin

    # The order fills completely at an average of 101: the new fill is 2 @ 101.5.
    venue.on("GET", ORDERS, orders(ts_order("7", "FLL", qty="3", executed="3", price="101",
                                            closed="2026-03-02T14:10:00Z")))
    fills, cursor2 = ex.fills_since(cursor)
    assert [(f.broker_fill_id, f.quantity, f.price, f.ts_ns) for f in fills] == [
        ("7:3", Decimal(2), Decimal("101.5"), T0 + 10 * MINUTE)]
    assert len(venue.api(HISTORY)) == 1  # same day, no open order vanished: one request per poll

    # Nothing new: no fills, the cursor comes back unchanged.
    assert ex.fills_since(cursor2) == ([], cursor2)
    # Replaying an older cursor never invents new ids: the same increment has the same id.
    again, _ = ex.fills_since(cursor)
    assert [f.broker_fill_id for f in again] == ["7:3"]


def test_fills_poll_history_on_a_new_day_or_when_an_open_order_vanishes(venue: FakeVenue) -> None:
    clock = [T0]
    ex = execution(venue, clock=lambda: clock[0])
    venue.on("GET", ORDERS, orders(ts_order("7", "OPN", qty="1")))
    venue.on("GET", HISTORY, orders())
    _, cursor = ex.fills_since(None)
    assert len(venue.api(HISTORY)) == 1
    # Order 7 left today's list (filled on a day it was not "today's" order): history is asked.
    venue.on("GET", ORDERS, orders())
    venue.on("GET", HISTORY, orders(ts_order("7", "FLL", executed="1", price="5000", closed="2026-03-02T15:00:00Z")))
    fills, cursor = ex.fills_since(cursor)
    assert [f.broker_fill_id for f in fills] == ["7:1"] and len(venue.api(HISTORY)) == 2
    # The next day: history since yesterday minus the margin; order 7 is still remembered, not re-reported.
    clock[0] = T0 + DAY_NS
    fills, cursor = ex.fills_since(cursor)
    assert fills == [] and venue.api(HISTORY)[-1].url.params["since"] == "2026-03-01"
    # Two days on, order 7 can no longer appear in any answer: the cursor forgets it.
    clock[0] = T0 + 3 * DAY_NS
    venue.on("GET", HISTORY, orders())
    _, cursor = ex.fills_since(cursor)
    assert "7" not in parse.FillCursor.decode(cursor).seen


def test_order_queries_follow_next_token_pages(venue: FakeVenue) -> None:
    venue.on("GET", ORDERS, orders(ts_order("1", "OPN", confirm="a"), next_token="p2"),
             orders(ts_order("2", "OPN", confirm="b")))
    with make(venue) as facade:
        assert [o.broker_order_id for o in facade.open_orders()] == ["1", "2"]
    first, second = venue.api(ORDERS)
    assert "nextToken" not in first.url.params and second.url.params["nextToken"] == "p2"


def test_a_bad_cursor_is_refused(venue: FakeVenue) -> None:
    with pytest.raises(ValueError, match="cursor"):
        execution(venue).fills_since("garbage")


# ---------------------------------------------------------------- bars


def bar(index: int, *, status: str = "Closed", close: str = "5000.25") -> dict[str, Any]:
    end_s = (index + 1) * 60
    return {"Open": "5000", "High": "5001", "Low": "4999.5", "Close": close, "TotalVolume": "12",
            "TimeStamp": parse.ns_to_iso(end_s * 1_000_000_000), "BarStatus": status, "IsRealtime": False,
            "IsEndOfHistory": False}


START = T0 // MINUTE  # a bar index near T0
BARS = "/v3/marketdata/barcharts/@ES"
STREAM = "/v3/marketdata/stream/barcharts/@ES"


def test_historical_bars_are_closed_and_open_time_stamped(venue: FakeVenue) -> None:
    venue.on("GET", BARS, {"Bars": [bar(START), bar(START + 1), bar(START + 2, status="Open")]})
    with make(venue) as facade:
        bars = facade.historical_bars("ES", "1m", limit=2)
    assert [(b.index, b.ts_ns, b.symbol, b.volume) for b in bars] == [
        (START, START * MINUTE, "ES", Decimal(12)), (START + 1, (START + 1) * MINUTE, "ES", Decimal(12))]
    assert venue.api(BARS)[0].url.params == httpx.QueryParams({"interval": "1", "unit": "Minute", "barsback": "3"})


def test_historical_bars_after_a_time_use_firstdate(venue: FakeVenue) -> None:
    venue.on("GET", "/v3/marketdata/barcharts/ECH27", {"Bars": [bar(START), bar(START + 1), bar(START + 2)]})
    with make(venue) as facade:
        bars = facade.historical_bars("6EH7", "1m", after_ts_ns=START * MINUTE, limit=1)
    assert [b.index for b in bars] == [START + 1]
    assert venue.api()[0].url.params["firstdate"] == parse.ns_to_iso(START * MINUTE)


@pytest.mark.parametrize(("interval", "params"), [
    ("5m", {"interval": "5", "unit": "Minute"}), ("1h", {"interval": "60", "unit": "Minute"}),
    ("1d", {"interval": "1", "unit": "Daily"}),
])
def test_interval_mapping(interval: str, params: dict[str, str]) -> None:
    assert parse.bar_params(interval) == params


@pytest.mark.parametrize("interval", ["30s", "2d", "25h"])
def test_intervals_tradestation_lacks(venue: FakeVenue, interval: str) -> None:
    with make(venue) as facade, pytest.raises(NotSupported):
        facade.historical_bars("ES", interval)


def test_bars_of_an_unknown_symbol(venue: FakeVenue) -> None:
    venue.on("GET", BARS, _resp(404, {"Error": "NotFound", "Message": "Invalid symbol"}))
    with make(venue) as facade, pytest.raises(UnknownSymbol):
        facade.historical_bars("ES", "1m")


def lines(*items: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, content=b"".join(json.dumps(i).encode() + b"\n" for i in items))


def take(stream: Iterator[Bar | None], count: int) -> list[int | None]:
    got: list[int | None] = []
    for item in stream:
        got.append(None if item is None else item.index)
        if len(got) == count:
            break
    return got


def test_stream_yields_closed_bars_only_and_goaway_reconnects(venue: FakeVenue) -> None:
    venue.on("GET", STREAM, lines(bar(START), bar(START + 1, status="Open"), {"StreamStatus": "EndSnapshot"},
                                  {"Heartbeat": 1}, bar(START + 1), bar(START + 2, status="Open"),
                                  {"StreamStatus": "GoAway"}))
    with make(venue) as facade:
        stream = facade.stream_bars("ES", "1m")
        assert take(stream, 5) == [START, None, None, None, START + 1]
        with pytest.raises(Retryable, match="GoAway"):
            take(stream, 3)
    assert venue.api(STREAM)[0].url.params["barsback"] == "1"  # from the latest closed bar on


def test_reconnect_backfills_then_drops_what_is_not_newer(venue: FakeVenue) -> None:
    venue.on("GET", BARS, {"Bars": [bar(START + 1), bar(START + 2), bar(START + 3, status="Open")]})
    venue.on("GET", STREAM, lines(bar(START), bar(START + 1), bar(START + 2), bar(START + 3)))
    with make(venue) as facade:
        stream = facade.stream_bars("ES", "1m", after_index=START)
        assert take(stream, 3) == [START + 1, START + 2, START + 3]
        with pytest.raises(Retryable, match="ended the stream"):
            take(stream, 1)
    assert venue.api(BARS)[0].url.params["firstdate"] == parse.ns_to_iso(START * MINUTE)
    assert venue.api(STREAM)[0].url.params["barsback"] == "10"  # its own history covers the race


def test_a_silent_gap_in_the_stream_is_mended_from_rest(venue: FakeVenue) -> None:
    venue.on("GET", STREAM, lines(bar(START), bar(START + 3), bar(START + 4)))
    venue.on("GET", BARS, {"Bars": [bar(START + 1), bar(START + 2), bar(START + 3)]})
    with make(venue) as facade:
        assert take(facade.stream_bars("ES", "1m"), 5) == [START, START + 1, START + 2, START + 3, START + 4]


def test_token_refused_in_stream_refreshes_and_reconnects_once(venue: FakeVenue) -> None:
    venue.on("GET", STREAM,
             httpx.Response(401, json={"Error": "Unauthorized", "Message": "expired"}),
             lines(bar(START), {"Error": "Unauthorized", "Message": "Access token expired"}),
             lines(bar(START + 1)))
    venue.on("GET", BARS, {"Bars": [bar(START)]})
    with make(venue) as facade:
        assert take(facade.stream_bars("ES", "1m"), 2) == [START, START + 1]
    assert [r.headers["authorization"] for r in venue.api(STREAM)] == [
        "Bearer ACCESS-1", "Bearer ACCESS-2", "Bearer ACCESS-3"]
    venue.on("GET", STREAM, httpx.Response(401, json={"Error": "Unauthorized", "Message": "no"}))
    with make(venue) as facade, pytest.raises(AuthFailed):
        take(facade.stream_bars("ES", "1m"), 1)


@pytest.mark.parametrize(("line", "error"), [
    ({"Error": "TooManyRequests", "Message": "quota"}, RateLimited),
    ({"Error": "InternalServerError", "Message": "oops"}, Retryable),
])
def test_in_stream_errors(venue: FakeVenue, line: dict[str, Any], error: type[BrokerError]) -> None:
    venue.on("GET", STREAM, lines(bar(START), line))
    with make(venue) as facade:
        stream = facade.stream_bars("ES", "1m")
        assert take(stream, 1) == [START]
        with pytest.raises(error):
            take(stream, 1)


def test_a_malformed_stream_line_is_an_unexpected_response(venue: FakeVenue) -> None:
    venue.on("GET", STREAM, httpx.Response(200, content=b'{"Heartbeat": 1}\nnot json\n'))
    with make(venue) as facade, pytest.raises(UnexpectedResponse):
        take(facade.stream_bars("ES", "1m"), 3)


def test_stream_transport_failure_is_retryable(venue: FakeVenue) -> None:
    venue.on("GET", STREAM, raising(httpx.ReadTimeout))
    market = TradeStationMarketData(Api(httpx.Client(base_url=API, transport=httpx.MockTransport(venue)),
                                        StaticTokenSource(Token("ACCESS-STATIC", expires_ns=T0))), 1.0)
    with pytest.raises(Retryable):
        take(market.stream_bars("@ES", "1m", after_index=None), 1)
