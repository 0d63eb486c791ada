"""The tradovate adapter's contract without a network: pure parsing, the auth flows, and every
mapped error shape through ``httpx.MockTransport`` (each → the right ``brokers.errors`` type, with no
secret in any message)."""
from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from brokers.auth import LocalTokenSource, Token
from brokers.base import Bar, BrokerFacade, OrderRequest
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
from brokers.registry import broker_info, build_facade
from brokers.tradovate import adapter, parse
from brokers.tradovate.auth import RENEW_MARGIN_S, Credentials, TradovateAuthenticator
from brokers.tradovate.parse import BarCloser
from schema.enums import OrderStatus, OrderType, Side, TimeInForce

ACCOUNT = "TV-UNIT"
PASSWORD = "pw-Secret-42"
API_SECRET = "sec-Secret-77"
BASE = "https://tv.example/v1"
EXPIRES = "2030-01-01T00:00:00.000Z"
EXPIRES_NS = parse.iso_to_ns(EXPIRES)
NS = 1_000_000_000


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEBUS_SECRET_TV_UNIT_NAME", "trader")
    monkeypatch.setenv("TRADEBUS_SECRET_TV_UNIT_PASSWORD", PASSWORD)
    monkeypatch.setenv("TRADEBUS_SECRET_TV_UNIT_CID", "8")
    monkeypatch.setenv("TRADEBUS_SECRET_TV_UNIT_SEC", API_SECRET)
    monkeypatch.delenv("TRADEBUS_SECRETS_FILE", raising=False)


def _json(payload: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(status, content=parse.encode_json(payload).encode(),
                          headers={"Content-Type": "application/json"})


def _body(request: httpx.Request) -> Any:
    return json.loads(request.content, parse_float=Decimal) if request.content else None


def _secret_free(exc: BaseException) -> None:
    text = f"{exc} {exc!r}"
    for secret in (PASSWORD, API_SECRET, "tok-1", "tok-2", "md-1", "ticket-9"):
        assert secret not in text


# ---------------------------------------------------------------- a scripted venue


class FakeVenue:
    """A tiny Tradovate: tokens, one account, contract 77 = ESZ6, orders/fills/positions lists, and
    a queue of scripted answers per path that win over the defaults."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.scripted: dict[str, list[Callable[[httpx.Request], httpx.Response] | httpx.Response]] = {}
        self.tokens = iter(f"tok-{n}" for n in range(1, 1000))
        self.live: set[str] = set()
        self.orders: list[dict[str, Any]] = []
        self.fills: list[dict[str, Any]] = []
        self.positions: list[dict[str, Any]] = []

    def script(self, path: str, *answers: Callable[[httpx.Request], httpx.Response] | httpx.Response) -> None:
        self.scripted.setdefault(path, []).extend(answers)

    def calls(self, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path == "/v1" + path]

    def order(self, order_id: int, cid: str, **fields: Any) -> dict[str, Any]:
        entity = {"id": order_id, "accountId": 7, "contractId": 77, "timestamp": "2026-12-01T10:00:00.000Z",
                  "action": "Buy", "ordStatus": "Working", "clOrdId": cid, "orderType": "Limit", "orderQty": 1,
                  "price": Decimal("4990.25"), "timeInForce": "Day", "filledQty": 0, **fields}
        self.orders.append(entity)
        return entity

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.removeprefix("/v1")
        queue = self.scripted.get(path)
        if queue:
            answer = queue.pop(0)
            return answer(request) if callable(answer) else answer
        if path == "/auth/accesstokenrequest":
            token = next(self.tokens)
            self.live.add(token)
            return _json({"accessToken": token, "mdAccessToken": "md-1", "expirationTime": EXPIRES, "userId": 5})
        if path == "/auth/renewaccesstoken":
            old = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if old not in self.live:
                return httpx.Response(401)
            token = next(self.tokens)
            self.live.add(token)
            return _json({"accessToken": token, "expirationTime": EXPIRES})
        if request.headers.get("Authorization", "").removeprefix("Bearer ") not in self.live:
            return httpx.Response(401)
        if path == "/account/list":
            return _json([{"id": 6, "name": "OTHER"}, {"id": 7, "name": "DEMO7"}])
        if path == "/contract/item":
            return _json({"id": 77, "name": "ESZ6"}) if request.url.params["id"] == "77" else httpx.Response(404)
        if path == "/order/list":
            return _json(self.orders)
        if path == "/order/item":
            wanted = int(request.url.params["id"])
            found = next((o for o in self.orders if o["id"] == wanted), None)
            return httpx.Response(404) if found is None else _json(found)
        if path == "/fill/list":
            return _json(self.fills)
        if path == "/position/list":
            return _json(self.positions)
        if path == "/order/placeorder" or path == "/order/placeOSO":
            body = _body(request)
            order_id = 100 + len(self.orders)
            self.order(order_id, body["clOrdId"], orderType=body["orderType"], price=body.get("price"))
            return _json({"orderId": order_id})
        if path in ("/order/cancelorder", "/order/modifyorder"):
            body = _body(request)
            for order in self.orders:
                if order["id"] == body["orderId"]:
                    if path == "/order/cancelorder":
                        order["ordStatus"] = "Canceled"
                    else:
                        order.update(orderQty=body["orderQty"], price=body.get("price"))
            return _json({"commandId": 900})
        if path == "/cashBalance/getcashbalancesnapshot":
            return _json({"accountId": 7, "totalCashValue": Decimal("50123.50")})
        return httpx.Response(404)


CONFIG = {"broker": "tradovate", "account": ACCOUNT, "base_url": BASE, "account_spec": "DEMO7", "account_id": 7,
          "timeout_s": 2}


@pytest.fixture
def venue() -> FakeVenue:
    return FakeVenue()


@pytest.fixture
def broker(venue: FakeVenue) -> Iterator[BrokerFacade]:
    facade = build_facade(CONFIG, transport=httpx.MockTransport(venue))
    assert isinstance(facade, BrokerFacade)
    yield facade
    facade.close()


def _limit(cid: str = "s.1.1", symbol: str = "ESZ6") -> OrderRequest:
    return OrderRequest(cid, symbol, Side.BUY, OrderType.LIMIT, Decimal(1), limit_price=Decimal("4990.25"))


# ---------------------------------------------------------------- pure parsing


def test_json_numbers_are_exact_both_ways() -> None:
    text = parse.encode_json({"price": Decimal("5001.25"), "qty": 2, "tiny": Decimal("0.00005"), "s": "x"})
    assert text == '{"price":5001.25,"qty":2,"tiny":0.00005,"s":"x"}'
    assert parse.decode_json(text)["price"] == Decimal("5001.25")
    with pytest.raises(ValueError):
        parse.encode_json({"price": Decimal("NaN")})


def test_timestamps() -> None:
    ns = parse.iso_to_ns("2026-12-01T14:30:00.250Z")
    assert parse.ns_to_iso(ns) == "2026-12-01T14:30:00.250Z"
    assert parse.iso_to_ns("2026-12-01T15:30:00+01:00") == parse.iso_to_ns("2026-12-01T14:30:00Z")
    with pytest.raises(ValueError):
        parse.iso_to_ns("2026-12-01T14:30:00")  # no zone: refuse to guess


@pytest.mark.parametrize(("wire", "filled", "expected"), [
    ("Working", 0, OrderStatus.ACCEPTED), ("Working", 1, OrderStatus.PARTIALLY_FILLED),
    ("Suspended", 0, OrderStatus.ACCEPTED), ("PendingNew", 0, OrderStatus.SUBMITTED),
    ("Filled", 2, OrderStatus.FILLED), ("Completed", 2, OrderStatus.FILLED), ("Canceled", 0, OrderStatus.CANCELLED),
    ("Expired", 0, OrderStatus.EXPIRED), ("Rejected", 0, OrderStatus.REJECTED),
    ("PendingCancel", 0, OrderStatus.PENDING_CANCEL), ("PendingReplace", 0, OrderStatus.PENDING_REPLACE),
])
def test_order_status_mapping(wire: str, filled: int, expected: OrderStatus) -> None:
    order = parse.parse_order({"id": 5, "ordStatus": wire, "clOrdId": "c", "action": "Sell", "orderType": "StopLimit",
                               "orderQty": 2, "filledQty": filled, "price": Decimal("1.08005"), "stopPrice": 1,
                               "timestamp": "2026-12-01T10:00:00Z", "text": "why"}, "6EH7")
    assert order.status is expected
    assert (order.broker_order_id, order.side, order.order_type, order.limit_price, order.stop_price, order.reason) == (
        "5", Side.SELL, OrderType.STOP_LIMIT, Decimal("1.08005"), Decimal(1), "why")


@pytest.mark.parametrize("broken", [
    {"ordStatus": "Sleeping"}, {"orderType": "TrailingStop"}, {"orderQty": 1.5}, {"action": "Short"}, {"id": "5"},
    {"timestamp": "yesterday"},
])
def test_malformed_orders_raise_shape_errors(broken: dict[str, Any]) -> None:
    good = {"id": 5, "ordStatus": "Working", "action": "Buy", "orderType": "Market", "orderQty": 1,
            "timestamp": "2026-12-01T10:00:00Z"}
    with pytest.raises(parse.SHAPE_ERRORS):
        parse.parse_order({**good, **broken}, "ESZ6")


def test_fills_positions_and_bars() -> None:
    fill = parse.parse_fill({"id": 9, "orderId": 5, "action": "Buy", "qty": 2, "price": Decimal("5000.25"),
                             "timestamp": "2026-12-01T10:01:00Z"}, "ESZ6", "s.1.1")
    assert (fill.broker_fill_id, fill.broker_order_id, fill.quantity, fill.price) == ("9", "5", Decimal(2),
                                                                                     Decimal("5000.25"))
    assert parse.parse_position({"netPos": -2, "netPrice": Decimal("5000.5")}, "ESZ6").quantity == Decimal(-2)
    assert parse.parse_position({"netPos": 0, "netPrice": 5000}, "ESZ6").average_price is None
    bar = parse.parse_bar({"timestamp": "2026-12-01T10:05:00.000Z", "open": 1, "high": 2, "low": Decimal("0.5"),
                           "close": Decimal("1.5"), "upVolume": 10, "downVolume": 7}, "ESZ6", "5m")
    assert bar.volume == Decimal(17) and bar.ts_ns % (300 * NS) == 0 and bar.index == bar.ts_ns // (300 * NS)


@pytest.mark.parametrize(("answer", "expected"), [
    ({"failureReason": "UnknownReason", "failureText": "Price is off the tick"}, "UnknownReason: Price is off the tick"),
    ({"failureReason": "SessionClosed"}, "SessionClosed"),
    ({"orderId": 5, "failureReason": "Success"}, None),
    ({"errorText": "Insufficient margin"}, "Insufficient margin"),
    ({"violations": [{"constraint": "orderQty", "description": "must be positive"}, {"constraint": "price"}]},
     "must be positive; price"),
    ({"orderId": 5}, None), ([1, 2], None),
])
def test_business_error_shapes(answer: Any, expected: str | None) -> None:
    assert parse.business_error(answer) == expected


def test_frames_and_requests() -> None:
    assert parse.parse_frame("o").kind == "o" and parse.parse_frame("h").items == ()
    frame = parse.parse_frame('a[{"s":200,"i":1,"d":{"p":1.25}}]')
    assert frame.kind == "a" and frame.items[0]["d"]["p"] == Decimal("1.25")
    assert parse.parse_frame('c[1000,"bye"]').items == (1000, "bye")
    for bad in ("", "x[]", "a", 'a{"s":1}', "a[nope"):
        with pytest.raises(parse.SHAPE_ERRORS):
            parse.parse_frame(bad)
    assert parse.encode_request("authorize", 0, "", "TOKEN") == "authorize\n0\n\nTOKEN"
    assert parse.encode_request("md/getchart", 3, "", {"symbol": "ESZ6"}) == 'md/getchart\n3\n\n{"symbol":"ESZ6"}'
    with pytest.raises(ValueError):
        parse.encode_request("bad\nendpoint", 1)


def test_chart_descriptions_and_unsupported_intervals() -> None:
    assert parse.chart_description("5m")["elementSize"] == 5
    assert parse.chart_description("1h") == {"underlyingType": "MinuteBar", "elementSize": 60,
                                             "elementSizeUnit": "UnderlyingUnits", "withHistogram": False}
    assert parse.chart_description("1d")["underlyingType"] == "DailyBar"
    with pytest.raises(NotSupported):
        parse.chart_description("30s")


def test_chart_updates_keep_only_our_subscription() -> None:
    data = {"charts": [{"id": 1, "bars": [{"timestamp": "x"}]}, {"id": 2, "eoh": True}, {"id": 3, "bars": [{}]}]}
    update = parse.chart_updates(data, (1, 2))
    assert update.end_of_history and update.bars == [{"timestamp": "x"}]


def _bar(minute: int, close: str = "1") -> Bar:
    ts = minute * 60 * NS
    return Bar("ESZ6", "1m", ts, Decimal(1), Decimal(2), Decimal(0), Decimal(close), Decimal(1), minute)


def test_bar_closer_holds_the_forming_bar_until_a_later_one_or_the_clock() -> None:
    closer = BarCloser(60 * NS, after_ts_ns=_bar(1).ts_ns)
    for bar in (_bar(1), _bar(2), _bar(3, "1"), _bar(3, "1.5")):  # 1: at the resume point; 3 updated in place
        closer.add(bar)
    assert [b.index for b in closer.closed(now_ns=_bar(3).ts_ns)] == [2]
    closer.add(_bar(2))  # a repeat of a released bar is ignored
    assert closer.closed(now_ns=_bar(3).ts_ns) == []
    [late] = closer.closed(now_ns=_bar(4).ts_ns + parse.CLOSE_GRACE_NS)  # the wall clock closes bar 3
    assert (late.index, late.close) == (3, Decimal("1.5"))
    closer.add(_bar(4))
    closer.add(_bar(5))
    assert [b.index for b in closer.closed(now_ns=0)] == [4]


# ---------------------------------------------------------------- auth


def _authenticator(venue: FakeVenue, sleeps: list[float] | None = None, **kwargs: Any) -> TradovateAuthenticator:
    auth = adapter.authenticator(CONFIG, transport=httpx.MockTransport(venue),
                                 sleep=(sleeps.append if sleeps is not None else None))
    for key, value in kwargs.items():
        setattr(auth, key, value)
    return auth


def test_obtain_sends_the_credentials_and_reads_the_token(venue: FakeVenue) -> None:
    token = _authenticator(venue).obtain()
    [request] = venue.calls("/auth/accesstokenrequest")
    body = _body(request)
    assert {k: body[k] for k in ("name", "password", "cid", "sec", "appId")} == {
        "name": "trader", "password": PASSWORD, "cid": 8, "sec": API_SECRET, "appId": "tradebus"}
    assert body["deviceId"] and body["appVersion"]
    assert (token.access_token, token.expires_ns, dict(token.extras)) == ("tok-1", EXPIRES_NS,
                                                                          {"mdAccessToken": "md-1", "userId": 5})
    assert "tok-1" not in repr(token) and PASSWORD not in repr(Credentials("n", PASSWORD, "a", "1", "d", "8", "s"))


def test_the_device_id_is_stable_per_account(venue: FakeVenue) -> None:
    _authenticator(venue).obtain()
    _authenticator(venue).obtain()
    first, second = (_body(r)["deviceId"] for r in venue.calls("/auth/accesstokenrequest"))
    assert first == second


def test_wrong_credentials_are_auth_failed(venue: FakeVenue) -> None:
    venue.script("/auth/accesstokenrequest", _json({"errorText": "Incorrect username or password."}))
    with pytest.raises(AuthFailed) as caught:
        _authenticator(venue).obtain()
    assert not isinstance(caught.value, AuthNeedsOperator)
    assert "Incorrect username" in str(caught.value)
    _secret_free(caught.value)


def test_a_penalty_ticket_is_waited_out_and_the_same_body_resent_with_it(venue: FakeVenue) -> None:
    venue.script("/auth/accesstokenrequest", _json({"p-ticket": "ticket-9", "p-time": 3, "p-captcha": False}))
    sleeps: list[float] = []
    token = _authenticator(venue, sleeps).obtain()
    first, second = (_body(r) for r in venue.calls("/auth/accesstokenrequest"))
    assert sleeps == [3.0]
    assert second == {**first, "p-ticket": "ticket-9"}
    assert token.access_token == "tok-1"


def test_a_captcha_penalty_needs_the_operator_without_retrying(venue: FakeVenue) -> None:
    venue.script("/auth/accesstokenrequest", _json({"p-ticket": "ticket-9", "p-time": 3600, "p-captcha": True}))
    sleeps: list[float] = []
    with pytest.raises(AuthNeedsOperator) as caught:
        _authenticator(venue, sleeps).obtain()
    assert sleeps == [] and len(venue.calls("/auth/accesstokenrequest")) == 1
    _secret_free(caught.value)


def test_penalty_waits_are_bounded(venue: FakeVenue) -> None:
    venue.script("/auth/accesstokenrequest", *[_json({"p-ticket": "ticket-9", "p-time": 50}) for _ in range(5)])
    sleeps: list[float] = []
    with pytest.raises(RateLimited) as caught:
        _authenticator(venue, sleeps).obtain()
    assert sleeps == [50.0, 50.0]  # a third wait would pass MAX_PENALTY_WAIT_S
    assert caught.value.retry_after_s == 50.0
    _secret_free(caught.value)


@pytest.mark.parametrize(("answer", "error"), [
    (httpx.Response(429), RateLimited),
    (httpx.Response(500), Retryable),
    (httpx.Response(401), AuthFailed),
    (httpx.Response(200, content=b"<html>"), UnexpectedResponse),
    (_json({"accessToken": "tok-2"}), UnexpectedResponse),  # no expirationTime
    (_json({"p-ticket": "ticket-9", "p-time": "soon"}), UnexpectedResponse),
])
def test_token_request_errors(venue: FakeVenue, answer: httpx.Response, error: type[BrokerError]) -> None:
    venue.script("/auth/accesstokenrequest", answer)
    with pytest.raises(error) as caught:
        _authenticator(venue).obtain()
    _secret_free(caught.value)


def test_token_request_that_cannot_connect_is_broker_unavailable(venue: FakeVenue) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    venue.script("/auth/accesstokenrequest", refuse)
    with pytest.raises(BrokerUnavailable):
        _authenticator(venue).obtain()


def test_refresh_renews_the_same_session(venue: FakeVenue) -> None:
    auth = _authenticator(venue)
    first = auth.obtain()
    renewed = auth.refresh(first)
    [renewal] = venue.calls("/auth/renewaccesstoken")
    assert renewal.headers["Authorization"] == "Bearer tok-1"
    assert len(venue.calls("/auth/accesstokenrequest")) == 1  # no second session
    # The renewal answer has no md token: the socket then uses the access token; userId carries over.
    assert renewed.access_token == "tok-2" and dict(renewed.extras) == {"userId": 5}


def test_a_refused_renewal_falls_back_to_a_new_token_request(venue: FakeVenue) -> None:
    auth = _authenticator(venue)
    dead = Token("revoked", EXPIRES_NS)
    assert auth.refresh(dead).access_token == "tok-1"
    venue.script("/auth/renewaccesstoken", _json({"errorText": "Expired Access Token"}))
    assert auth.refresh(dead).access_token == "tok-2"
    assert len(venue.calls("/auth/accesstokenrequest")) == 2


def test_a_renewal_that_fails_in_transit_is_not_a_refusal(venue: FakeVenue) -> None:
    auth = _authenticator(venue)
    venue.script("/auth/renewaccesstoken", httpx.Response(503))
    with pytest.raises(Retryable):
        auth.refresh(auth.obtain())
    assert len(venue.calls("/auth/accesstokenrequest")) == 1


def test_refresh_time(venue: FakeVenue) -> None:
    auth = _authenticator(venue)
    long_lived = Token("t", expires_ns=10_000 * NS, issued_ns=10_000 * NS - 90 * 60 * NS)
    assert auth.refresh_at_ns(long_lived) == 10_000 * NS - int(RENEW_MARGIN_S * NS)
    short = Token("t", expires_ns=1_000 * NS, issued_ns=1_000 * NS - 600 * NS)
    assert auth.refresh_at_ns(short) == 1_000 * NS - 300 * NS  # never before half the lifetime
    assert auth.notices(long_lived, 0) == []


def test_missing_credentials_need_the_operator(monkeypatch: pytest.MonkeyPatch, venue: FakeVenue) -> None:
    monkeypatch.delenv("TRADEBUS_SECRET_TV_UNIT_PASSWORD")
    with pytest.raises(AuthNeedsOperator) as caught:
        build_facade(CONFIG, transport=httpx.MockTransport(venue))
    assert "password" in str(caught.value) and "TRADEBUS_SECRET_TV_UNIT_PASSWORD" in str(caught.value)


def test_optional_credentials_may_be_absent(monkeypatch: pytest.MonkeyPatch, venue: FakeVenue) -> None:
    monkeypatch.delenv("TRADEBUS_SECRET_TV_UNIT_CID")
    monkeypatch.delenv("TRADEBUS_SECRET_TV_UNIT_SEC")
    _authenticator(venue).obtain()
    assert not {"cid", "sec"} & set(_body(venue.calls("/auth/accesstokenrequest")[0]))


# ---------------------------------------------------------------- module contract, symbols


def test_module_contract_and_capabilities(venue: FakeVenue) -> None:
    info = broker_info("tradovate")
    assert info.error is None and info.credentials == ("name", "password")
    assert info.capabilities is not None and info.capabilities.brackets and info.capabilities.modify
    facade = build_facade({**CONFIG, "md_ws_url": "ws://md.example/ws"}, transport=httpx.MockTransport(venue))
    assert facade.capabilities == adapter.CAPABILITIES
    data_only = build_facade({k: v for k, v in CONFIG.items() if k not in ("account_spec", "account_id")}
                             | {"md_ws_url": "ws://md.example/ws"}, transport=httpx.MockTransport(venue))
    caps = data_only.capabilities
    assert (caps.execution, caps.market_data, caps.lookup_by_client_id, caps.brackets) == (False, True, False, False)
    with pytest.raises(NotSupported):
        data_only.submit_order(_limit())
    assert isinstance(data_only, BrokerFacade)
    with pytest.raises(NotSupported):
        data_only.submit_bracket(_limit(), Decimal(5000), None)
    without_md = build_facade(CONFIG, transport=httpx.MockTransport(venue))
    with pytest.raises(NotSupported):
        without_md.historical_bars("ESZ6", "1m")
    with pytest.raises(NotSupported):
        facade.stream_bars("ESZ6", "30s")
    for facade_ in (facade, data_only, without_md):
        facade_.close()
    with pytest.raises(ValueError):
        build_facade({**CONFIG, "base_url": ""})


def test_symbol_translation_with_contract_months(broker: BrokerFacade) -> None:
    assert broker.to_broker_symbol("ES") == "ES"
    assert broker.to_broker_symbol("ESZ6") == "ESZ6" and broker.to_broker_symbol("6EH7") == "6EH7"
    assert broker.to_canonical("ESZ26") == "ESZ6"  # the unconfirmed two-digit form is read too
    assert broker.to_canonical("6EH7") == "6EH7"
    for bad in ("ESF6", "@ES", "ESZ"):  # ES lists quarterly months only; no prefixes; a year is needed
        with pytest.raises(UnknownSymbol):
            broker.to_canonical(bad)
    with pytest.raises(UnknownSymbol):
        broker.to_broker_symbol("BTC-PERPETUAL")  # Tradovate does not carry it


# ---------------------------------------------------------------- orders over REST


def test_submit_sends_tradovates_order_shape(venue: FakeVenue, broker: BrokerFacade) -> None:
    stop = OrderRequest("s.1.2", "6EH27", Side.SELL, OrderType.STOP, Decimal(2), stop_price=Decimal("1.08005"),
                        time_in_force=TimeInForce.GTC)
    order = broker.submit_order(stop)
    [request] = venue.calls("/order/placeorder")
    assert request.headers["Authorization"] == "Bearer tok-1"
    assert request.content.decode().count('"stopPrice":1.08005') == 1  # a JSON number, exact
    assert _body(request) == {"accountSpec": "DEMO7", "accountId": 7, "clOrdId": "s.1.2", "action": "Sell",
                              "symbol": "6EH7", "orderQty": 2, "orderType": "Stop", "timeInForce": "GTC",
                              "isAutomated": True, "stopPrice": Decimal("1.08005")}
    assert (order.status, order.symbol, order.broker_order_id) == (OrderStatus.ACCEPTED, "6EH7", "100")


def test_the_account_id_is_looked_up_by_name_when_not_configured(venue: FakeVenue) -> None:
    with build_facade({**CONFIG, "account_id": None}, transport=httpx.MockTransport(venue)) as facade:
        facade.submit_order(_limit())
        facade.submit_order(_limit("s.1.9"))
    assert [_body(r)["accountId"] for r in venue.calls("/order/placeorder")] == [7, 7]
    assert len(venue.calls("/account/list")) == 1


@pytest.mark.parametrize(("answer", "error", "words"), [
    (_json({"failureReason": "UnknownReason", "failureText": "price is not a multiple of the tick"}), Rejected, "tick"),
    (_json({"violations": [{"constraint": "orderQty", "description": "orderQty must be positive"}]}), Rejected,
     "positive"),
    (_json({"errorText": "Insufficient margin"}), Rejected, "margin"),
    (httpx.Response(400, content=b'{"password":"pw-Secret-42"}'), Rejected, "400"),
    (httpx.Response(429), RateLimited, "429"),
    (httpx.Response(500), OutcomeUnknown, "500"),
    (httpx.Response(502, content=b"bad gateway"), OutcomeUnknown, "502"),
    (httpx.Response(200, content=b"not json"), OutcomeUnknown, "unreadable"),
    (_json({"weird": True}), OutcomeUnknown, "orderId"),
    (httpx.Response(403), AuthFailed, "403"),
])
def test_submit_error_shapes(venue: FakeVenue, broker: BrokerFacade, answer: httpx.Response,
                             error: type[BrokerError], words: str) -> None:
    venue.script("/order/placeorder", answer)
    with pytest.raises(error) as caught:
        broker.submit_order(_limit())
    assert words in str(caught.value)
    _secret_free(caught.value)


@pytest.mark.parametrize(("exc", "error"), [
    (httpx.ConnectError, BrokerUnavailable), (httpx.ConnectTimeout, BrokerUnavailable),
    (httpx.ReadTimeout, OutcomeUnknown), (httpx.RemoteProtocolError, OutcomeUnknown),
])
def test_submit_transport_failures(venue: FakeVenue, broker: BrokerFacade, exc: type[Exception],
                                   error: type[BrokerError]) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc("boom", request=request)

    venue.script("/order/placeorder", fail)
    with pytest.raises(error):
        broker.submit_order(_limit())


@pytest.mark.parametrize(("answer", "error"), [
    (httpx.Response(500), Retryable), (httpx.Response(429), RateLimited),
    (httpx.Response(200, content=b"{"), UnexpectedResponse), (_json({"orders": []}), UnexpectedResponse),
    (_json({"errorText": "Internal error"}), Rejected),
])
def test_read_error_shapes(venue: FakeVenue, broker: BrokerFacade, answer: httpx.Response,
                           error: type[BrokerError]) -> None:
    venue.script("/order/list", answer)
    with pytest.raises(error):
        broker.open_orders()
    venue.script("/order/list", answer)
    with pytest.raises(error):  # a lookup that cannot read the list must raise, never say "none"
        broker.order_by_client_id("s.1.1")


def test_a_refused_token_is_renewed_and_the_request_sent_once_more(venue: FakeVenue, broker: BrokerFacade) -> None:
    broker.positions()  # the first token
    venue.live.clear()  # the venue revokes every token (expire-tokens)
    order = broker.submit_order(_limit())
    assert order.status is OrderStatus.ACCEPTED
    placed = venue.calls("/order/placeorder")
    assert [r.headers["Authorization"] for r in placed] == ["Bearer tok-1", "Bearer tok-2"]
    # the renewal of the dead token was refused, so a new session was requested
    assert len(venue.calls("/auth/renewaccesstoken")) == 1 and len(venue.calls("/auth/accesstokenrequest")) == 2


def test_an_auth_error_text_counts_as_a_refused_token(venue: FakeVenue, broker: BrokerFacade) -> None:
    venue.script("/position/list", _json({"errorText": "Access is denied"}))
    assert broker.positions() == []
    assert len(venue.calls("/position/list")) == 2 and len(venue.calls("/auth/renewaccesstoken")) == 1


def test_a_second_refusal_is_auth_failed(venue: FakeVenue, broker: BrokerFacade) -> None:
    venue.script("/order/placeorder", httpx.Response(401), httpx.Response(401))
    with pytest.raises(AuthFailed) as caught:
        broker.submit_order(_limit())
    _secret_free(caught.value)
    assert len(venue.calls("/order/placeorder")) == 2


def test_an_unknown_outcome_is_looked_up_before_any_resend(venue: FakeVenue, broker: BrokerFacade) -> None:
    def acted_then_lost(request: httpx.Request) -> httpx.Response:
        venue.order(555, "s.1.1")
        raise httpx.ReadTimeout("lost", request=request)

    venue.script("/order/placeorder", acted_then_lost)
    with pytest.raises(OutcomeUnknown):
        broker.submit_order(_limit())
    again = broker.submit_order(_limit())  # the engine asks again: the venue has it, nothing is sent
    assert again.broker_order_id == "555" and len(venue.calls("/order/placeorder")) == 1
    assert broker.submit_order(_limit()).broker_order_id == "555"  # and again: still one
    assert len(venue.calls("/order/placeorder")) == 1


def test_an_unknown_outcome_the_venue_never_saw_is_sent_again(venue: FakeVenue, broker: BrokerFacade) -> None:
    venue.script("/order/placeorder", httpx.Response(500))
    with pytest.raises(OutcomeUnknown):
        broker.submit_order(_limit())
    assert broker.submit_order(_limit()).broker_order_id == "100"
    assert len(venue.calls("/order/placeorder")) == 2 and len(venue.calls("/order/list")) == 1


def test_lookup_by_client_id(venue: FakeVenue, broker: BrokerFacade) -> None:
    venue.order(41, "s.1.1", ordStatus="Filled", filledQty=1, avgPx=Decimal("4990"))
    venue.order(42, "other-account", accountId=6)
    found = broker.order_by_client_id("s.1.1")
    assert found is not None and (found.broker_order_id, found.status, found.symbol) == ("41", OrderStatus.FILLED,
                                                                                         "ESZ6")
    assert broker.order_by_client_id("other-account") is None  # another account's order is not ours
    assert broker.order_by_client_id("never") is None
    venue.script("/contract/item", httpx.Response(500))
    venue.order(43, "s.1.3", contractId=78)
    with pytest.raises(Retryable):
        broker.order_by_client_id("s.1.3")


def test_cancel_and_modify_by_order_id(venue: FakeVenue, broker: BrokerFacade) -> None:
    broker.submit_order(_limit())
    modified = broker.modify_order("s.1.1", limit_price=Decimal("4989.5"))
    assert _body(venue.calls("/order/modifyorder")[0]) == {"orderId": 100, "orderQty": 1, "orderType": "Limit",
                                                           "timeInForce": "Day", "isAutomated": True,
                                                           "price": Decimal("4989.5")}
    assert modified.limit_price == Decimal("4989.5")
    cancelled = broker.cancel_order("s.1.1")
    assert _body(venue.calls("/order/cancelorder")[0]) == {"orderId": 100, "isAutomated": True}
    assert cancelled.status is OrderStatus.CANCELLED
    with pytest.raises(OrderNotFound):
        broker.cancel_order("never-sent")
    venue.order(60, "s.1.6")
    venue.script("/order/cancelorder", _json({"failureReason": "TooLate", "failureText": "already filled"}))
    with pytest.raises(Rejected):
        broker.cancel_order("s.1.6")
    venue.script("/order/cancelorder", httpx.Response(504))
    with pytest.raises(OutcomeUnknown):
        broker.cancel_order("s.1.6")
    venue.script("/order/item", httpx.Response(500))
    with pytest.raises(OutcomeUnknown):  # the cancel went through; its result is unknown
        broker.cancel_order("s.1.6")


def test_open_orders_are_the_accounts_working_ones(venue: FakeVenue, broker: BrokerFacade) -> None:
    venue.order(1, "a")
    venue.order(2, "b", ordStatus="Filled", filledQty=1)
    venue.order(3, "c", accountId=6)
    assert [o.client_order_id for o in broker.open_orders()] == ["a"]


def test_fills_cursor_pages_without_duplicates(venue: FakeVenue, broker: BrokerFacade) -> None:
    venue.order(1, "s.1.1", ordStatus="Filled")
    venue.order(2, "x", accountId=6, ordStatus="Filled")
    fill = {"orderId": 1, "contractId": 77, "action": "Buy", "qty": 1, "price": Decimal("5000.25"),
            "timestamp": "2026-12-01T10:00:00Z"}
    venue.fills = [{**fill, "id": 10}, {**fill, "id": 10}, {**fill, "id": 11, "orderId": 2}]
    fills, cursor = broker.fills_since(None)
    assert [(f.broker_fill_id, f.client_order_id, f.symbol) for f in fills] == [("10", "s.1.1", "ESZ6")]
    assert cursor == "11"  # past the other account's fill too
    assert broker.fills_since(cursor) == ([], cursor)
    venue.fills.append({**fill, "id": 12})
    fills, cursor = broker.fills_since(cursor)
    assert [f.broker_fill_id for f in fills] == ["12"] and cursor == "12"
    with pytest.raises(ValueError):
        broker.fills_since("yesterday")


def test_a_fill_of_an_order_missing_from_the_list_is_asked_for_by_id(venue: FakeVenue,
                                                                   broker: BrokerFacade) -> None:
    archived = venue.order(5, "s.1.5", ordStatus="Filled")
    venue.script("/order/list", _json([]))
    venue.fills = [{"id": 20, "orderId": 5, "contractId": 77, "action": "Sell", "qty": 1, "price": 5000,
                    "timestamp": "2026-12-01T10:00:00Z"}]
    fills, _ = broker.fills_since(None)
    assert [f.client_order_id for f in fills] == [archived["clOrdId"]]


def test_positions_and_equity(venue: FakeVenue, broker: BrokerFacade) -> None:
    venue.positions = [{"id": 1, "accountId": 7, "contractId": 77, "netPos": -2, "netPrice": Decimal("5001.5")},
                       {"id": 2, "accountId": 7, "contractId": 77, "netPos": 0},
                       {"id": 3, "accountId": 6, "contractId": 77, "netPos": 4, "netPrice": 1}]
    [position] = broker.positions()
    assert (position.symbol, position.quantity, position.average_price) == ("ESZ6", Decimal(-2), Decimal("5001.5"))
    assert broker.account_equity() == Decimal("50123.50")
    assert len(venue.calls("/contract/item")) == 1  # contract names are cached


def test_bracket_is_one_oso_with_opposite_legs(venue: FakeVenue, broker: BrokerFacade) -> None:
    entry = OrderRequest("s.1.7", "ESZ6", Side.BUY, OrderType.MARKET, Decimal(1))
    order = broker.submit_bracket(entry, take_profit=Decimal("5010"), stop_loss=Decimal("4990.5"))
    [request] = venue.calls("/order/placeOSO")
    body = _body(request)
    assert body["bracket1"] == {"action": "Sell", "clOrdId": "s.1.7:tp", "orderType": "Limit",
                                "price": Decimal(5010), "timeInForce": "GTC"}
    assert body["bracket2"] == {"action": "Sell", "clOrdId": "s.1.7:sl", "orderType": "Stop",
                                "stopPrice": Decimal("4990.5"), "timeInForce": "GTC"}
    assert order.client_order_id == "s.1.7" and order.status is OrderStatus.ACCEPTED
    venue.script("/order/placeOSO", _json({"failureReason": "UnknownReason", "failureText": "bad bracket"}))
    with pytest.raises(Rejected):
        broker.submit_bracket(OrderRequest("s.1.8", "ESZ6", Side.SELL, OrderType.MARKET, Decimal(1)),
                              stop_loss=Decimal(5020))


def test_a_socket_the_venue_refuses_to_open_maps_to_the_right_error(venue: FakeVenue) -> None:
    answers = iter([httpx.Response(401), httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(503)])

    def upgrade(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/md":
            return next(answers)
        return venue(request)

    facade = build_facade({**CONFIG, "md_ws_url": "ws://md.example/md"}, transport=httpx.MockTransport(upgrade))
    try:
        for error in (AuthFailed, RateLimited, Retryable):
            with pytest.raises(error) as caught:
                facade.historical_bars("ESZ6", "1m", limit=5)
            _secret_free(caught.value)
    finally:
        facade.close()


def test_a_local_token_source_announces_renewed_tokens(venue: FakeVenue) -> None:
    seen: list[str] = []
    source = LocalTokenSource(_authenticator(venue))
    source.on_new_token(lambda token: seen.append(token.access_token))
    first = source.current()
    source.rejected(first)
    assert seen == ["tok-1", "tok-2"]


# ---------------------------------------------------------------- the market-data socket (scripted server)


class Tokens:
    """A TokenSource that hands out tok-1, tok-2 … and records what it was told."""

    def __init__(self) -> None:
        self.token = Token("tok-1", EXPIRES_NS, extras={"mdAccessToken": "md-1"})
        self.rejected_tokens: list[str] = []
        self.callbacks: list[Callable[[Token], None]] = []

    def current(self) -> Token:
        return self.token

    def rejected(self, token: Token) -> Token:
        self.rejected_tokens.append(token.access_token)
        self.token = Token(f"tok-{len(self.rejected_tokens) + 1}", EXPIRES_NS)
        return self.token

    def on_new_token(self, callback: Callable[[Token], None]) -> None:
        self.callbacks.append(callback)


def _ts(minute: int) -> str:
    return parse.ns_to_iso(1_796_000_000 * NS // (60 * NS) * (60 * NS) + minute * 60 * NS)


def _wire_bar(minute: int, close: str = "5000") -> dict[str, Any]:
    return {"timestamp": _ts(minute), "open": Decimal("5000"), "high": Decimal("5001"), "low": Decimal("4999"),
            "close": Decimal(close), "upVolume": 3, "downVolume": 4}


class Script:
    """The server side of one connection, written as a test script."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.seen: list[str] = []

    def send(self, *items: Any) -> None:
        self.conn.send("a" + parse.encode_json(list(items)))

    def expect(self, endpoint: str) -> tuple[int, str]:
        while True:
            message = self.conn.recv(timeout=5)
            self.seen.append(message)
            if message == "[]":
                continue
            name, request_id, _query, body = message.split("\n", 3)
            if name == endpoint:
                return int(request_id), body

    def open_and_authorize(self) -> None:
        self.conn.send("o")
        auth_id, _ = self.expect("authorize")
        self.send({"s": 200, "i": auth_id})

    def chart(self, history: list[dict[str, Any]] | None = None, eoh: bool = True) -> int:
        chart_id, _ = self.expect("md/getchart")
        self.send({"s": 200, "i": chart_id, "d": {"historicalId": 11, "realtimeId": 12}})
        if history:
            self.send({"e": "chart", "d": {"charts": [{"id": 11, "bars": history}]}})
        if eoh:
            self.send({"e": "chart", "d": {"charts": [{"id": 11, "eoh": True}]}})
        return chart_id

    def linger(self) -> None:
        try:
            while True:
                self.seen.append(self.conn.recv(timeout=5))
        except Exception:  # noqa: BLE001 - the client left
            pass


@pytest.fixture
def md_server() -> Iterator[Callable[[Callable[[Script], None]], str]]:
    import threading

    from websockets.sync.server import serve

    servers: list[Any] = []

    def start(script: Callable[[Script], None]) -> str:
        def handler(conn: Any) -> None:
            with contextlib.suppress(Exception):
                script(Script(conn))

        server = serve(handler, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"ws://127.0.0.1:{server.socket.getsockname()[1]}/md"

    yield start
    for server in servers:
        server.shutdown()


def _market_data(url: str, tokens: Any, clock_ns: Callable[[], int] = lambda: 0) -> Any:
    from brokers.tradovate.ws import TradovateMarketData

    return TradovateMarketData(url, tokens, httpx.Client(), timeout_s=2, clock_ns=clock_ns)


def test_stream_yields_only_closed_bars_once_in_order(md_server: Any) -> None:
    def script(s: Script) -> None:
        s.open_and_authorize()
        s.chart([_wire_bar(1), _wire_bar(2), _wire_bar(3, "5000.25")])
        s.send({"e": "chart", "d": {"charts": [{"id": 12, "bars": [_wire_bar(3, "5000.75")]}]}})  # 3 updated
        s.send({"e": "md", "d": {"quotes": []}}, {"e": "chart", "d": {"charts": [{"id": 99, "bars": [{}]}]}})
        s.send({"e": "chart", "d": {"charts": [{"id": 12, "bars": [_wire_bar(2), _wire_bar(4)]}]}})
        s.linger()

    stream = _market_data(md_server(script), Tokens()).stream_bars("ESZ6", "1m", after_index=None)
    try:
        bars = [b for b in itertools.islice((b for b in stream if b is not None), 3)]
    finally:
        stream.close()
    assert [b.index - bars[0].index for b in bars] == [0, 1, 2]
    assert bars[2].close == Decimal("5000.75")  # the last version of the forming bar, released once closed
    assert bars[0].volume == Decimal(7)


def test_the_md_token_authorises_and_a_later_401_reauthorises_the_same_socket(md_server: Any) -> None:
    authorisations: list[str] = []

    def script(s: Script) -> None:
        s.conn.send("o")
        auth_id, token = s.expect("authorize")
        authorisations.append(token)
        s.send({"s": 200, "i": auth_id})
        s.chart([_wire_bar(1)])
        s.send({"s": 401, "i": auth_id, "d": "Access token expired"})  # unasked: the token went stale
        again, token = s.expect("authorize")
        authorisations.append(token)
        s.send({"s": 200, "i": again})
        s.send({"e": "chart", "d": {"charts": [{"id": 12, "bars": [_wire_bar(2), _wire_bar(3)]}]}})
        s.linger()

    tokens = Tokens()
    stream = _market_data(md_server(script), tokens).stream_bars("ESZ6", "1m", after_index=None)
    try:
        bars = [b for b in itertools.islice((b for b in stream if b is not None), 2)]
    finally:
        stream.close()
    assert authorisations == ["md-1", "tok-2"] and tokens.rejected_tokens == ["tok-1"]
    assert bars[1].index == bars[0].index + 1


def test_an_announced_token_reauthorises_live_sockets(md_server: Any) -> None:
    authorisations: list[str] = []

    def script(s: Script) -> None:
        s.open_and_authorize()
        s.chart([_wire_bar(1), _wire_bar(2)])
        auth_id, token = s.expect("authorize")
        authorisations.append(token)
        s.send({"s": 200, "i": auth_id})
        s.send({"e": "chart", "d": {"charts": [{"id": 12, "bars": [_wire_bar(3)]}]}})
        s.linger()

    tokens = Tokens()
    stream = _market_data(md_server(script), tokens).stream_bars("ESZ6", "1m", after_index=None)
    try:
        first = next(b for b in stream if b is not None)
        [callback] = tokens.callbacks
        callback(Token("tok-renewed", EXPIRES_NS))
        second = next(b for b in stream if b is not None)
    finally:
        stream.close()
    assert authorisations == ["tok-renewed"] and second.index == first.index + 1


@pytest.mark.parametrize(("script_end", "error"), [
    (lambda s: s.conn.send('c[1000,"bye"]'), Retryable),
    (lambda s: s.send({"e": "shutdown", "d": {"reasonCode": "Maintenance"}}), Retryable),
    (lambda s: s.conn.close(), Retryable),
    (lambda s: s.conn.send("x-garbage"), UnexpectedResponse),
    (lambda s: s.send({"e": "chart", "d": {"charts": [{"id": 12, "bars": [{"timestamp": "soon"}]}]}}),
     UnexpectedResponse),
])
def test_a_socket_that_ends_or_talks_nonsense_raises(md_server: Any, script_end: Callable[[Script], None],
                                                     error: type[BrokerError]) -> None:
    def script(s: Script) -> None:
        s.open_and_authorize()
        s.chart()
        script_end(s)
        s.linger()

    stream = _market_data(md_server(script), Tokens()).stream_bars("ESZ6", "1m", after_index=None)
    with pytest.raises(error):
        for _ in stream:
            pass


@pytest.mark.parametrize(("answer", "error"), [
    ({"s": 404, "d": "Unknown symbol"}, UnknownSymbol), ({"s": 500, "d": "oops"}, Retryable),
    ({"s": 429}, RateLimited), ({"s": 400, "d": "bad chart"}, UnexpectedResponse),
    ({"s": 200, "d": {"historicalId": "x"}}, UnexpectedResponse),
])
def test_chart_request_refusals(md_server: Any, answer: dict[str, Any], error: type[BrokerError]) -> None:
    def script(s: Script) -> None:
        s.open_and_authorize()
        chart_id, _ = s.expect("md/getchart")
        s.send({**answer, "i": chart_id})
        s.linger()

    with pytest.raises(error):
        _market_data(md_server(script), Tokens()).historical_bars("ESZ6", "1m", limit=5)


def test_a_fresh_token_refused_too_is_auth_failed(md_server: Any) -> None:
    def script(s: Script) -> None:
        s.conn.send("o")
        for _ in range(2):
            auth_id, _ = s.expect("authorize")
            s.send({"s": 401, "i": auth_id, "d": "Access is denied"})
        s.linger()

    tokens = Tokens()
    with pytest.raises(AuthFailed) as caught:
        _market_data(md_server(script), tokens).historical_bars("ESZ6", "1m", limit=5)
    assert tokens.rejected_tokens == ["tok-1"]
    _secret_free(caught.value)


def test_history_asks_for_the_newest_bars_after_the_cursor_and_drops_the_forming_one(md_server: Any) -> None:
    requests: list[Any] = []

    def script(s: Script) -> None:
        s.open_and_authorize()
        chart_id, body = s.expect("md/getchart")
        requests.append(parse.decode_json(body))
        s.send({"s": 200, "i": chart_id, "d": {"historicalId": 11, "realtimeId": 12}})
        s.send({"e": "chart", "d": {"charts": [{"id": 11, "bars": [_wire_bar(1), _wire_bar(2), _wire_bar(3)]}]}})
        s.send({"e": "chart", "d": {"charts": [{"id": 11, "eoh": True}]}})
        s.expect("md/cancelchart")
        s.linger()

    after = parse.iso_to_ns(_ts(1))
    bars = _market_data(md_server(script), Tokens()).historical_bars("ESZ6", "1m", after_ts_ns=after, limit=5)
    assert [b.ts_ns for b in bars] == [parse.iso_to_ns(_ts(2))]  # 1 is at the cursor, 3 may still be forming
    [request] = requests
    assert request["timeRange"] == {"asMuchAsElements": 6, "asFarAsTimestamp": _ts(1)}
    assert request["chartDescription"]["underlyingType"] == "MinuteBar" and request["symbol"] == "ESZ6"
