"""The schwab adapter without a venue: pure parsing, error mapping (``httpx.MockTransport``), the
OAuth flows and the 7-day refresh-token warning, symbols, capabilities, and the streamer's logic
driven through a scripted socket (the real WebSocket is exercised in
tests/integration/test_schwab_dialect.py)."""
from __future__ import annotations

import base64
import itertools
import json
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from brokers.auth import LocalTokenSource, Token
from brokers.base import Bar, OrderRequest
from brokers.errors import (
    AuthFailed,
    AuthNeedsOperator,
    BrokerError,
    BrokerUnavailable,
    NotSupported,
    RateLimited,
    Retryable,
    UnexpectedResponse,
    UnknownSymbol,
)
from brokers.registry import broker_info, build_authenticator, build_facade
from brokers.schwab import adapter, parse
from brokers.schwab.auth import (
    EXTRA_REFRESH_EXPIRES_NS,
    REFRESH_TOKEN_LIFETIME_NS,
    SchwabAuthenticator,
)
from brokers.schwab.bars import CLOSE_GRACE_NS, BarAssembler, closed_bars
from brokers.schwab.client import SchwabRest
from brokers.schwab.streamer import StreamClosed, httpx_ws_connector
from brokers.symbols import schwab as schwab_symbols
from schema.enums import OrderType, Side

ACCOUNT = "SCH-1"
APP_KEY = "key-abc"
APP_SECRET = "very-secret-app-secret"
REFRESH = "refresh-token-value-xyz"
MINUTE_NS = 60_000_000_000
BASE_MINUTE = 29_933_000
NOW_NS = (BASE_MINUTE + 100) * MINUTE_NS
HOUR_NS = 3600 * 1_000_000_000
SYMBOL = "/ESZ26"
CONFIG = {"broker": "schwab", "account": ACCOUNT, "base_url": "https://api.schwab.test", "timeout_s": 1}

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEBUS_SECRET_SCH_1_APP_KEY", APP_KEY)
    monkeypatch.setenv("TRADEBUS_SECRET_SCH_1_APP_SECRET", APP_SECRET)
    monkeypatch.setenv("TRADEBUS_SECRET_SCH_1_REFRESH_TOKEN", REFRESH)
    monkeypatch.delenv("TRADEBUS_SECRETS_FILE", raising=False)


def no_secret_in(text: str) -> None:
    for secret in (APP_SECRET, REFRESH, "access-1", "access-2", "sekrit-access", base64.b64encode(
            f"{APP_KEY}:{APP_SECRET}".encode()).decode()):
        assert secret not in text


def ms(minute: int) -> int:
    return (BASE_MINUTE + minute) * 60_000


def bar(minute: int, close: str = "5000.25", volume: int = 10, symbol: str = SYMBOL) -> Bar:
    ts_ns = ms(minute) * 1_000_000
    price = Decimal(close)
    return Bar(symbol, "1m", ts_ns, price, price, price, price, Decimal(volume), ts_ns // MINUTE_NS)


# ---------------------------------------------------------------- contract, capabilities, symbols


def test_module_contract_and_capabilities() -> None:
    info = broker_info("schwab")
    assert info.error is None and info.credentials == ("app_key", "app_secret", "refresh_token")
    assert adapter.BROKER == "schwab"
    assert (adapter.CAPABILITIES.execution, adapter.CAPABILITIES.market_data,
            adapter.CAPABILITIES.lookup_by_client_id) == (False, True, False)
    with build_facade(CONFIG, transport=httpx.MockTransport(lambda r: httpx.Response(500))) as facade:
        assert facade.capabilities == adapter.CAPABILITIES
        assert isinstance(build_authenticator(CONFIG), SchwabAuthenticator)


def test_order_execution_is_not_supported_and_never_reaches_the_venue() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(500)

    with build_facade(CONFIG, transport=httpx.MockTransport(handler)) as facade:
        request = OrderRequest("s.1.1", "ESZ6", Side.BUY, OrderType.MARKET, Decimal(1))
        with pytest.raises(NotSupported) as caught:
            facade.submit_order(request)
        assert "'schwab'" in str(caught.value) and "order execution" in str(caught.value)
        assert caught.value.broker == "schwab" and caught.value.capability == "order execution"
        for call in (lambda: facade.cancel_order("c"), facade.open_orders, facade.positions,
                     lambda: facade.fills_since(None), lambda: facade.order_by_client_id("c"),
                     lambda: facade.modify_order("c", quantity=Decimal(2)), facade.account_equity):
            with pytest.raises(NotSupported, match="order execution"):
                call()
    assert calls == []


@pytest.mark.parametrize(("canonical", "broker"), [
    ("ES", "/ES"), ("6E", "/6E"), ("ESZ5", "/ESZ25"), ("ESZ6", "/ESZ26"), ("6EH7", "/6EH27"), ("NQM6", "/NQM26"),
])
def test_symbols_both_ways(canonical: str, broker: str) -> None:
    symbols = schwab_symbols(reference_year=2026)
    assert symbols.to_broker(canonical) == broker
    assert symbols.to_canonical(broker) == canonical


def test_unknown_symbols_are_refused() -> None:
    symbols = schwab_symbols(reference_year=2026)
    for bad in ("/XYZ", "ESZ26", "/ESF26", "/BTC-PERPETUAL"):
        with pytest.raises(UnknownSymbol, match="schwab"):
            symbols.to_canonical(bad)
    with pytest.raises(UnknownSymbol):
        symbols.to_broker("BTC-PERPETUAL")


# ---------------------------------------------------------------- OAuth


def token_handler(answers: list[httpx.Response], seen: list[httpx.Request]) -> Handler:
    queue = deque(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.popleft()

    return handler


def ok_token(access: str = "access-1", refresh: str | None = REFRESH, expires_in: int = 1800,
             **extra: Any) -> httpx.Response:
    body = {"access_token": access, "expires_in": expires_in, "token_type": "Bearer", "scope": "api",
            "id_token": "id-token-value", **extra}
    if refresh is not None:
        body["refresh_token"] = refresh
    return httpx.Response(200, json=body)


def authenticator(answers: list[httpx.Response], seen: list[httpx.Request], *, now: list[int] | None = None,
                  **config: Any) -> SchwabAuthenticator:
    clock = now if now is not None else [NOW_NS]
    return SchwabAuthenticator(CONFIG | config, transport=httpx.MockTransport(token_handler(answers, seen)),
                               clock_ns=lambda: clock[0])


def form_of(request: httpx.Request) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(request.content.decode()).items()}


def test_obtain_uses_basic_auth_and_the_refresh_grant() -> None:
    seen: list[httpx.Request] = []
    token = authenticator([ok_token()], seen).obtain()
    [request] = seen
    assert request.method == "POST" and str(request.url) == "https://api.schwab.test/v1/oauth/token"
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(f"{APP_KEY}:{APP_SECRET}".encode()).decode()
    assert form_of(request) == {"grant_type": "refresh_token", "refresh_token": REFRESH}
    assert (token.access_token, token.refresh_token, token.issued_ns) == ("access-1", REFRESH, NOW_NS)
    assert token.expires_ns == NOW_NS + 1800 * 1_000_000_000
    assert token.extras[EXTRA_REFRESH_EXPIRES_NS] == NOW_NS + REFRESH_TOKEN_LIFETIME_NS  # first use
    no_secret_in(repr(token))


def test_refresh_token_expiry_counts_from_the_configured_login_time() -> None:
    issued = NOW_NS - 6 * 24 * HOUR_NS
    token = authenticator([ok_token()], [], refresh_token_issued_ns=issued).obtain()
    assert token.extras[EXTRA_REFRESH_EXPIRES_NS] == issued + REFRESH_TOKEN_LIFETIME_NS


def test_refresh_keeps_the_refresh_token_and_its_expiry() -> None:
    seen: list[httpx.Request] = []
    clock = [NOW_NS]
    auth = authenticator([ok_token(), ok_token("access-2")], seen, now=clock)
    first = auth.obtain()
    clock[0] += 25 * 60 * 1_000_000_000
    second = auth.refresh(first)
    assert form_of(seen[1]) == {"grant_type": "refresh_token", "refresh_token": REFRESH}
    assert (second.access_token, second.refresh_token) == ("access-2", REFRESH)
    assert second.extras[EXTRA_REFRESH_EXPIRES_NS] == first.extras[EXTRA_REFRESH_EXPIRES_NS]
    assert auth.refresh_at_ns(second) < second.expires_ns
    # A Token survives the tokens service's storage with its extras.
    assert Token.from_bytes(second.to_bytes()).extras[EXTRA_REFRESH_EXPIRES_NS] == first.extras[EXTRA_REFRESH_EXPIRES_NS]


def test_a_new_refresh_token_in_an_answer_restarts_the_seven_days() -> None:
    clock = [NOW_NS]
    auth = authenticator([ok_token(), ok_token("access-2", refresh="rotated-refresh")], [], now=clock)
    first = auth.obtain()
    clock[0] += HOUR_NS
    second = auth.refresh(first)
    assert second.refresh_token == "rotated-refresh"
    assert second.extras[EXTRA_REFRESH_EXPIRES_NS] == clock[0] + REFRESH_TOKEN_LIFETIME_NS


def test_a_venue_stated_refresh_lifetime_wins() -> None:
    token = authenticator([ok_token(refresh_token_expires_in=3600)], []).obtain()
    assert token.extras[EXTRA_REFRESH_EXPIRES_NS] == NOW_NS + HOUR_NS


def test_an_operator_relogin_replaces_a_stale_stored_token(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []
    clock = [NOW_NS]
    auth = authenticator([ok_token(), ok_token("access-2", refresh="fresh-login-refresh")], seen, now=clock)
    stored = auth.obtain()
    # The operator logged in again and stored the new refresh token; the tokens service still has the old token.
    monkeypatch.setenv("TRADEBUS_SECRET_SCH_1_REFRESH_TOKEN", "fresh-login-refresh")
    clock[0] += 3 * 24 * HOUR_NS
    renewed = auth.refresh(stored)
    assert form_of(seen[1])["refresh_token"] == "fresh-login-refresh"
    assert renewed.extras[EXTRA_REFRESH_EXPIRES_NS] == clock[0] + REFRESH_TOKEN_LIFETIME_NS


def test_exchange_code_is_the_login_second_half() -> None:
    seen: list[httpx.Request] = []
    token = authenticator([ok_token(refresh="login-refresh")], seen).exchange_code("CODE.123@", "https://127.0.0.1")
    assert form_of(seen[0]) == {"grant_type": "authorization_code", "code": "CODE.123@",
                                "redirect_uri": "https://127.0.0.1"}
    assert token.refresh_token == "login-refresh"
    assert token.extras[EXTRA_REFRESH_EXPIRES_NS] == NOW_NS + REFRESH_TOKEN_LIFETIME_NS


def test_notices_warn_before_the_refresh_token_dies() -> None:
    auth = authenticator([ok_token()], [], refresh_token_issued_ns=NOW_NS)
    token = auth.obtain()
    expires = token.extras[EXTRA_REFRESH_EXPIRES_NS]
    assert auth.notices(token, expires - 49 * HOUR_NS) == []
    [warning] = auth.notices(token, expires - 47 * HOUR_NS)
    assert "expires in 1d 23h 00m" in warning and "log in to Schwab again" in warning
    assert "TRADEBUS_SECRET_SCH_1_REFRESH_TOKEN" in warning and "authorization-code" in warning
    [expired] = auth.notices(token, expires + HOUR_NS)
    assert "expired 1h 00m ago" in expired and "log in to Schwab again" in expired
    no_secret_in(warning + expired)
    assert auth.notices(Token("a", NOW_NS), NOW_NS) == []  # nothing tracked, nothing said


def test_notice_margin_is_configurable_and_first_use_says_it_is_an_estimate() -> None:
    auth = authenticator([ok_token()], [], refresh_warning_hours=100)
    token = auth.obtain()
    [warning] = auth.notices(token, token.extras[EXTRA_REFRESH_EXPIRES_NS] - 99 * HOUR_NS)
    assert "estimated from first use" in warning and "refresh_token_issued_ns" in warning


@pytest.mark.parametrize("body", [
    {"error": "invalid_grant", "error_description": "refresh token expired"},
    # What Schwab has been seen answering for a dead refresh token (public client issues).
    {"error": "unsupported_token_type", "error_description": '400 Bad Request: "{\\"error_description\\":\\"Exception '
     'while authenticating refresh token [tokenDigest=R8QKLpffOFVU=, Exception=Failed refresh token authentication]\\",'
     '\\"error\\":\\"refresh_token_authentication_error\\"}"'},
])
def test_a_dead_refresh_token_needs_the_operator(body: dict[str, str]) -> None:
    with pytest.raises(AuthNeedsOperator) as caught:
        authenticator([httpx.Response(400, json=body)], []).obtain()
    text = str(caught.value)
    assert "refresh token was refused" in text and "log in to Schwab again" in text and "7 days" in text
    assert "R8QKLpffOFVU" not in text
    no_secret_in(text)


@pytest.mark.parametrize(("response", "error", "words"), [
    (httpx.Response(401, json={"error": "invalid_client", "error_description": "Client authentication failed"}),
     AuthNeedsOperator, "app key/secret refused"),
    (httpx.Response(401, text="denied"), AuthNeedsOperator, "app key/secret refused"),
    (httpx.Response(400, json={"error": "invalid_request", "error_description": "bad"}), AuthFailed, "invalid_request"),
    (httpx.Response(429, headers={"Retry-After": "7"}), RateLimited, "rate limited"),
    (httpx.Response(503, text="maintenance"), Retryable, "HTTP 503"),
    (httpx.Response(200, text="<html>"), UnexpectedResponse, "not JSON"),
    (httpx.Response(200, json={"access_token": "sekrit-access"}), UnexpectedResponse, "expires_in"),
    (httpx.Response(200, json={"access_token": "sekrit-access", "expires_in": 0}), UnexpectedResponse, "expires_in"),
    (httpx.Response(404, json={"message": "no such path"}), UnexpectedResponse, "HTTP 404"),
])
def test_token_endpoint_errors(response: httpx.Response, error: type[BrokerError], words: str) -> None:
    with pytest.raises(error, match=words) as caught:
        authenticator([response], []).obtain()
    no_secret_in(str(caught.value))
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after_s == 7


def test_token_endpoint_unreachable_is_broker_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    auth = SchwabAuthenticator(CONFIG, transport=httpx.MockTransport(refuse))
    with pytest.raises(BrokerUnavailable):
        auth.obtain()


def test_missing_credentials_name_the_variable_not_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRADEBUS_SECRET_SCH_1_REFRESH_TOKEN")
    with pytest.raises(AuthNeedsOperator, match="TRADEBUS_SECRET_SCH_1_REFRESH_TOKEN") as caught:
        authenticator([], []).obtain()
    no_secret_in(str(caught.value))


def test_authorization_code_refused_needs_a_new_login() -> None:
    with pytest.raises(AuthNeedsOperator, match="authorization code was refused"):
        authenticator([httpx.Response(400, json={"error": "invalid_grant"})], []).exchange_code("x", "https://cb")


# ---------------------------------------------------------------- REST: price history


class FakeTokens:
    """A ``TokenSource`` that counts ``rejected`` and hands out access-1, access-2, …"""

    def __init__(self) -> None:
        self.issued = 0
        self.rejected_tokens: list[str] = []
        self.callbacks: list[Callable[[Token], None]] = []
        self.token = self._next()

    def _next(self) -> Token:
        self.issued += 1
        return Token(f"access-{self.issued}", expires_ns=NOW_NS + self.issued * HOUR_NS, refresh_token="r",
                     issued_ns=NOW_NS)

    def current(self) -> Token:
        return self.token

    def rejected(self, token: Token) -> Token:
        self.rejected_tokens.append(token.access_token)
        if token.access_token == self.token.access_token:
            self.token = self._next()
        return self.token

    def on_new_token(self, callback: Callable[[Token], None]) -> None:
        self.callbacks.append(callback)

    def announce_new(self) -> None:
        self.token = self._next()
        for callback in self.callbacks:
            callback(self.token)


def candle(minute: int, close: Any = Decimal("5000.25"), volume: Any = 12) -> dict[str, Any]:
    return {"open": Decimal("5000.00"), "high": Decimal("5001.50"), "low": Decimal("4999.75"), "close": close,
            "volume": volume, "datetime": ms(minute)}


def json_response(status: int, payload: Any) -> httpx.Response:
    def default(value: object) -> object:
        return float(value) if isinstance(value, Decimal) else str(value)

    return httpx.Response(status, content=json.dumps(payload, default=default).encode(),
                          headers={"Content-Type": "application/json"})


def market_data(handler: Handler, tokens: FakeTokens | None = None, *, now: int = NOW_NS,
                connect: Any = None, **options: Any) -> adapter.SchwabMarketData:
    tokens = tokens or FakeTokens()
    client = httpx.Client(base_url="https://api.schwab.test", transport=httpx.MockTransport(handler))
    return adapter.SchwabMarketData(SchwabRest(client, tokens), tokens, connect or FakeVenue().connect,
                                    timeout_s=1, clock_ns=lambda: now, **options)


def history_handler(candles: list[dict[str, Any]], seen: list[httpx.Request] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return json_response(200, {"candles": candles, "symbol": request.url.params["symbol"], "empty": not candles})

    return handler


def test_historical_bars_request_and_parse() -> None:
    seen: list[httpx.Request] = []
    # Minute 99 is still forming at NOW (minute 100 has just begun, within the close grace).
    md = market_data(history_handler([candle(97), candle(98, Decimal("5001.75"), 30), candle(99)], seen))
    bars = md.historical_bars(SYMBOL, "1m", after_ts_ns=ms(96) * 1_000_000)
    [request] = seen
    assert request.url.path == "/marketdata/v1/pricehistory"
    assert request.headers["Authorization"] == "Bearer access-1"
    params = dict(request.url.params)
    assert params == {"symbol": SYMBOL, "periodType": "day", "frequencyType": "minute", "frequency": "1",
                      "startDate": str(ms(96) + 1), "endDate": str(NOW_NS // 1_000_000)}
    assert [b.index for b in bars] == [BASE_MINUTE + 97, BASE_MINUTE + 98]
    assert bars[1] == Bar(SYMBOL, "1m", ms(98) * 1_000_000, Decimal("5000.00"), Decimal("5001.50"),
                          Decimal("4999.75"), Decimal("5001.75"), Decimal(30), BASE_MINUTE + 98)
    assert all(isinstance(v, Decimal) for b in bars for v in (b.open, b.high, b.low, b.close, b.volume))


def test_historical_bars_limit_cursor_and_the_last_closed_by_the_clock() -> None:
    candles = [candle(m) for m in range(90, 99)]
    md = market_data(history_handler(candles), now=(BASE_MINUTE + 99) * MINUTE_NS + CLOSE_GRACE_NS)
    assert [b.index - BASE_MINUTE for b in md.historical_bars(SYMBOL, "1m", after_ts_ns=1, limit=3)] == [90, 91, 92]
    assert md.historical_bars(SYMBOL, "1m", after_ts_ns=1)[-1].index == BASE_MINUTE + 98  # its minute has passed


def test_historical_bars_without_cursor_ask_for_the_recent_window() -> None:
    seen: list[httpx.Request] = []
    market_data(history_handler([], seen)).historical_bars(SYMBOL, "5m", limit=10)
    params = seen[0].url.params
    assert params["frequency"] == "5" and params["frequencyType"] == "minute"
    assert int(params["startDate"]) == (NOW_NS - 11 * 5 * MINUTE_NS) // 1_000_000 + 1


def test_daily_bars_use_the_daily_frequency_and_empty_answers_are_empty() -> None:
    seen: list[httpx.Request] = []
    md = market_data(history_handler([], seen))
    assert md.historical_bars("/ES", "1d", after_ts_ns=1) == []
    assert (seen[0].url.params["periodType"], seen[0].url.params["frequencyType"]) == ("year", "daily")


def test_unsupported_intervals() -> None:
    md = market_data(history_handler([]))
    with pytest.raises(NotSupported, match="2m bars"):
        md.historical_bars(SYMBOL, "2m")
    with pytest.raises(NotSupported, match="5m bar streaming"):
        md.stream_bars(SYMBOL, "5m", after_index=None)


def test_a_401_refreshes_once_and_retries() -> None:
    tokens = FakeTokens()
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        if request.headers["Authorization"] == "Bearer access-1":
            return json_response(401, {"errors": [{"status": 401, "title": "Unauthorized",
                                                   "detail": "Client not authorized"}]})
        return json_response(200, {"candles": [candle(1)], "symbol": SYMBOL, "empty": False})

    bars = market_data(handler, tokens).historical_bars(SYMBOL, "1m", after_ts_ns=1)
    assert seen == ["Bearer access-1", "Bearer access-2"] and tokens.rejected_tokens == ["access-1"]
    assert len(bars) == 1


def test_a_second_401_is_auth_failed_without_the_token() -> None:
    tokens = FakeTokens()
    md = market_data(lambda r: json_response(401, {"errors": [{"title": "Unauthorized",
                                                                "detail": "Client not authorized"}]}), tokens)
    with pytest.raises(AuthFailed, match="Client not authorized") as caught:
        md.historical_bars(SYMBOL, "1m", after_ts_ns=1)
    assert tokens.rejected_tokens == ["access-1"]
    no_secret_in(str(caught.value))


@pytest.mark.parametrize(("response", "error", "words"), [
    (json_response(403, {"errors": [{"title": "Forbidden", "detail": "No entitlement"}]}), AuthFailed, "No entitlement"),
    (httpx.Response(429, headers={"Retry-After": "3"}), RateLimited, "429"),
    (httpx.Response(500), Retryable, "HTTP 500"),
    (httpx.Response(502, text="bad gateway"), Retryable, "HTTP 502"),
    (json_response(400, {"errors": [{"status": "400", "title": "Bad Request", "detail": "Invalid frequency",
                                     "source": {"parameter": "frequency"}}]}), UnexpectedResponse, "Invalid frequency"),
    (json_response(404, {"message": "Not Found"}), UnexpectedResponse, "Not Found"),
    (httpx.Response(200, text="not json"), UnexpectedResponse, "not JSON"),
    (json_response(200, {"candles": "nope"}), UnexpectedResponse, "candles"),
    (json_response(200, {"candles": [{"datetime": 1, "open": 1}]}), UnexpectedResponse, "malformed candle"),
    (json_response(200, {"candles": [candle(2), candle(1)]}), UnexpectedResponse, "out of time order"),
    (json_response(200, {"candles": [candle(1, volume=True)]}), UnexpectedResponse, "malformed candle"),
])
def test_price_history_errors(response: httpx.Response, error: type[BrokerError], words: str) -> None:
    with pytest.raises(error, match=words) as caught:
        market_data(lambda r: response).historical_bars(SYMBOL, "1m", after_ts_ns=1)
    no_secret_in(str(caught.value))
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after_s == 3


def test_transport_failures_on_reads_are_retryable() -> None:
    def reset(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("reset", request=request)

    with pytest.raises(Retryable):
        market_data(reset).historical_bars(SYMBOL, "1m", after_ts_ns=1)


def test_facade_translates_symbols_and_relabels_bars() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/oauth/token"):
            return ok_token()
        return json_response(200, {"candles": [candle(1), candle(2)], "symbol": "/6EZ26", "empty": False})

    with build_facade(CONFIG, transport=httpx.MockTransport(handler)) as facade:
        bars = facade.historical_bars("6EZ6", "1m", after_ts_ns=1)
    assert seen[-1].url.params["symbol"] == "/6EZ26"
    assert [b.symbol for b in bars] == ["6EZ6", "6EZ6"]  # both minutes are long past on the wall clock


# ---------------------------------------------------------------- pure parsing and bar closing


def test_token_answer_never_echoes_tokens() -> None:
    with pytest.raises(UnexpectedResponse) as caught:
        parse.parse_token_answer({"access_token": "sekrit-access", "expires_in": "soon", "refresh_token": REFRESH})
    no_secret_in(str(caught.value))
    assert "TokenAnswer" in repr(parse.parse_token_answer({"access_token": "sekrit-access", "expires_in": 5}))
    no_secret_in(repr(parse.parse_token_answer({"access_token": "sekrit-access", "expires_in": 5})))


def test_streamer_info_shapes() -> None:
    entry = {"streamerSocketUrl": "wss://streamer-api.schwab.com/ws", "schwabClientCustomerId": "c",
             "schwabClientCorrelId": "k", "schwabClientChannel": "N9", "schwabClientFunctionId": "APIAPP"}
    assert parse.parse_streamer_info({"streamerInfo": [entry]}).socket_url.startswith("wss://")
    assert parse.parse_streamer_info({"streamerInfo": entry}).channel == "N9"
    for bad in ({}, {"streamerInfo": []}, {"streamerInfo": [entry | {"streamerSocketUrl": "https://x"}]},
                {"streamerInfo": [{k: v for k, v in entry.items() if k != "schwabClientCorrelId"}]}):
        with pytest.raises(UnexpectedResponse, match="user preferences"):
            parse.parse_streamer_info(bad)


def test_stream_message_kinds_and_chart_items() -> None:
    message = parse.parse_stream_message(json.dumps({
        "response": [{"service": "ADMIN", "command": "LOGIN", "requestid": "0", "content": {"code": 0, "msg": "ok"}}],
        "notify": [{"heartbeat": "1"}, {"service": "ADMIN", "content": {"code": 30, "msg": "stop"}}],
        "data": [{"service": "CHART_FUTURES", "timestamp": 1, "content": [
            {"key": SYMBOL, "seq": 1, "0": SYMBOL, "1": ms(5), "2": 5000.25, "3": 5001, "4": 4999.5, "5": 5000.75,
             "6": 42}]}],
    }))
    assert [r.code for r in message.replies] == [0] and message.heartbeats == 1
    assert [n.code for n in message.notices] == [30]
    [item] = message.data[0].items
    parsed = parse.parse_chart_item(item, SYMBOL, "1m", MINUTE_NS)
    assert (parsed.open, parsed.high, parsed.close, parsed.volume) == (Decimal("5000.25"), Decimal(5001),
                                                                       Decimal("5000.75"), Decimal(42))
    assert parsed.index == BASE_MINUTE + 5 and parse.chart_item_key(item) == SYMBOL
    with pytest.raises(UnexpectedResponse, match="malformed CHART_FUTURES item"):
        parse.parse_chart_item({"key": SYMBOL, "1": ms(5)}, SYMBOL, "1m", MINUTE_NS)
    for raw in ("not json", "[]", '{"other": 1}', '{"data": {}}', '{"response": [{"content": {}}]}'):
        with pytest.raises(UnexpectedResponse):
            parse.parse_stream_message(raw)


@pytest.mark.parametrize(("code", "error", "words"), [
    (0, None, ""), (26, None, ""),
    (3, AuthFailed, "LOGIN_DENIED"), (9, Retryable, "UNKNOWN_FAILURE"), (11, BrokerUnavailable, "SERVICE_NOT_AVAILABLE"),
    (12, Retryable, "CLOSE_CONNECTION"), (19, Retryable, "REACHED_SYMBOL_LIMIT"), (20, Retryable, "STREAM_CONN_NOT_FOUND"),
    (21, UnexpectedResponse, "BAD_COMMAND_FORMAT"), (22, Retryable, "FAILED_COMMAND_SUBS"),
    (30, Retryable, "STOP_STREAMING"), (77, UnexpectedResponse, "unexpected streamer code 77"),
])
def test_stream_codes_map_to_errors(code: int, error: type[BrokerError] | None, words: str) -> None:
    mapped = parse.stream_code_error(parse.StreamReply("ADMIN", "LOGIN", "0", code, "venue words"))
    if error is None:
        assert mapped is None
    else:
        assert type(mapped) is error and words in str(mapped) and str(code) in str(mapped)


def test_bar_assembler_closes_on_a_later_bar_or_the_clock() -> None:
    assembler = BarAssembler(MINUTE_NS)
    assert assembler.offer(bar(1, "1")) == []
    assert assembler.offer(bar(1, "2")) == []  # an update of the forming minute replaces it
    assert assembler.offer(bar(2, "3")) == [bar(1, "2")]
    assert assembler.offer(bar(1, "9")) == []  # a late update of a bar handed out: dropped
    assert assembler.dropped_late == 1
    end_of_2 = ms(3) * 1_000_000
    assert assembler.tick(end_of_2 + CLOSE_GRACE_NS - 1) == []
    assert assembler.tick(end_of_2 + CLOSE_GRACE_NS) == [bar(2, "3")]
    assert assembler.tick(end_of_2 + 10 * MINUTE_NS) == []
    assert assembler.offer(bar(5)) == [] and assembler.offer(bar(4)) == [bar(4)]  # older than pending: closed
    assert assembler.offer(bar(6)) == [bar(5)] and assembler.last_index == BASE_MINUTE + 5


def test_bar_assembler_respects_after_index_and_history_rule() -> None:
    assembler = BarAssembler(MINUTE_NS, last_index=BASE_MINUTE + 3)
    assert assembler.offer(bar(3)) == [] and assembler.offer(bar(4)) == [] and assembler.offer(bar(5)) == [bar(4)]
    history = [bar(1), bar(2), bar(3)]
    assert closed_bars(history, MINUTE_NS, ms(4) * 1_000_000) == history[:2]
    assert closed_bars(history, MINUTE_NS, ms(4) * 1_000_000 + CLOSE_GRACE_NS) == history
    assert closed_bars([], MINUTE_NS, 0) == []


# ---------------------------------------------------------------- the streamer, through a scripted socket

STREAMER_INFO = {"streamerSocketUrl": "wss://streamer.test/ws", "schwabClientCustomerId": "cust-1",
                 "schwabClientCorrelId": "corr-1", "schwabClientChannel": "N9", "schwabClientFunctionId": "APIAPP"}


def chart_frame(*minutes: int, key: str = SYMBOL, close: str = "5000.25") -> str:
    items = [{"key": key, "seq": m, "0": key, "1": ms(m), "2": float(close), "3": float(close), "4": float(close),
              "5": float(close), "6": 10} for m in minutes]
    return json.dumps({"data": [{"service": "CHART_FUTURES", "timestamp": 1, "command": "SUBS", "content": items}]})


def reply_frame(command: str, rid: str, code: int, msg: str = "", service: str = "ADMIN") -> str:
    return json.dumps({"response": [{"service": service, "command": command, "requestid": rid,
                                     "content": {"code": code, "msg": msg}}]})


HEARTBEAT = json.dumps({"notify": [{"heartbeat": "1"}]})


class FakeSocket:
    def __init__(self, venue: FakeVenue, frames: list[str | Exception]) -> None:
        self.venue = venue
        self.sent: list[dict[str, Any]] = []
        self.inbox: deque[str | Exception] = deque()
        self.after_subs = frames

    def send_text(self, text: str) -> None:
        for request in json.loads(text)["requests"]:
            self.sent.append(request)
            rid, service, command = request["requestid"], request["service"], request["command"]
            if command == "LOGIN":
                code = self.venue.login_codes.popleft() if self.venue.login_codes else 0
                self.inbox.append(reply_frame("LOGIN", rid, code, "login words"))
                if code != 0:
                    self.inbox.append(StreamClosed(1000, "login denied"))
            elif command == "SUBS":
                self.inbox.append(reply_frame("SUBS", rid, self.venue.subs_code, service=service))
                self.inbox.extend(self.after_subs)

    def receive_text(self, timeout_s: float) -> str | None:
        if not self.inbox:
            return None
        item = self.inbox.popleft()
        if isinstance(item, Exception):
            self.inbox.appendleft(item)  # a closed socket stays closed
            raise item
        return item


class FakeVenue:
    """Scripted streamer connections: ``connections[i]`` are the frames the i-th connection sends
    after its SUBS reply."""

    def __init__(self, *connections: list[str | Exception], login_codes: tuple[int, ...] = (),
                 subs_code: int = 0) -> None:
        self.scripts = deque(connections)
        self.login_codes = deque(login_codes)
        self.subs_code = subs_code
        self.sockets: list[FakeSocket] = []
        self.urls: list[str] = []

    @contextmanager
    def connect(self, url: str) -> Iterator[FakeSocket]:
        self.urls.append(url)
        socket = FakeSocket(self, self.scripts.popleft() if self.scripts else [])
        self.sockets.append(socket)
        yield socket


def rest_handler(candles: list[dict[str, Any]] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/trader/v1/userPreference":
            return json_response(200, {"streamerInfo": [STREAMER_INFO]})
        after = int(request.url.params["startDate"])
        chosen = [c for c in candles or [] if c["datetime"] >= after]
        return json_response(200, {"candles": chosen, "symbol": request.url.params["symbol"], "empty": not chosen})

    return handler


def streaming(venue: FakeVenue, *, tokens: FakeTokens | None = None, candles: list[dict[str, Any]] | None = None,
              now: int = ms(1) * 1_000_000, **options: Any) -> adapter.SchwabMarketData:
    """The clock stands at minute 1 unless told: only a later bar closes one (as in the simulator)."""
    options.setdefault("keepalive_s", 0.001)
    return market_data(rest_handler(candles), tokens, now=now, connect=venue.connect, **options)


def take(stream: Iterator[Bar | None], bars: int, *, max_items: int = 200) -> tuple[list[Bar], int]:
    got: list[Bar] = []
    nones = 0
    for item in stream:
        if item is None:
            nones += 1
        else:
            got.append(item)
        if len(got) >= bars or nones + len(got) >= max_items:
            break
    return got, nones


def minutes(bars: list[Bar]) -> list[int]:
    return [b.index - BASE_MINUTE for b in bars]


def test_stream_logs_in_subscribes_and_yields_each_closed_bar_once() -> None:
    venue = FakeVenue([chart_frame(1, close="1"), chart_frame(1, close="2"), HEARTBEAT, chart_frame(2), HEARTBEAT,
                       chart_frame(2, 3), chart_frame(3, 4)])
    stream = streaming(venue).stream_bars(SYMBOL, "1m", after_index=None)
    got, nones = take(stream, 3)
    stream.close()
    assert minutes(got) == [1, 2, 3] and got[0].close == Decimal(2) and nones >= 1
    login, subs, logout = venue.sockets[0].sent
    assert venue.urls == ["wss://streamer.test/ws"]
    assert login == {"service": "ADMIN", "command": "LOGIN", "requestid": "0", "SchwabClientCustomerId": "cust-1",
                     "SchwabClientCorrelId": "corr-1", "parameters": {"Authorization": "access-1",
                                                                      "SchwabClientChannel": "N9",
                                                                      "SchwabClientFunctionId": "APIAPP"}}
    assert (subs["service"], subs["command"], subs["parameters"]) == (
        "CHART_FUTURES", "SUBS", {"keys": SYMBOL, "fields": "0,1,2,3,4,5,6"})
    assert (logout["service"], logout["command"]) == ("ADMIN", "LOGOUT")


def test_stream_replays_history_after_the_index_then_goes_live() -> None:
    candles = [candle(m) for m in range(1, 5)]  # minute 4 is forming
    venue = FakeVenue([chart_frame(4, close="7"), chart_frame(5), chart_frame(6)])
    stream = streaming(venue, candles=candles).stream_bars(SYMBOL, "1m", after_index=BASE_MINUTE + 1)
    got, _ = take(stream, 4)
    stream.close()
    assert minutes(got) == [2, 3, 4, 5] and got[2].close == Decimal(7)  # the stream's version of minute 4


def test_a_quiet_minute_is_closed_by_the_clock() -> None:
    venue = FakeVenue([chart_frame(1)])
    md = streaming(venue, now=ms(2) * 1_000_000 + CLOSE_GRACE_NS)
    stream = md.stream_bars(SYMBOL, "1m", after_index=None)
    got, _ = take(stream, 1)
    stream.close()
    assert minutes(got) == [1]


def test_other_symbols_and_services_are_ignored() -> None:
    other = json.dumps({"data": [{"service": "LEVELONE_FUTURES", "content": [{"key": SYMBOL, "1": 2}]}]})
    venue = FakeVenue([chart_frame(1, key="/6EZ26"), other, chart_frame(1), chart_frame(2)])
    stream = streaming(venue).stream_bars(SYMBOL, "1m", after_index=None)
    got, _ = take(stream, 1)
    stream.close()
    assert minutes(got) == [1] and got[0].symbol == SYMBOL


def test_login_denied_refreshes_the_token_and_reconnects() -> None:
    tokens = FakeTokens()
    venue = FakeVenue([], [chart_frame(1), chart_frame(2)], login_codes=(3, 0))
    stream = streaming(venue, tokens=tokens).stream_bars(SYMBOL, "1m", after_index=None)
    got, _ = take(stream, 1)
    stream.close()
    assert minutes(got) == [1] and tokens.rejected_tokens == ["access-1"]
    assert [s.sent[0]["parameters"]["Authorization"] for s in venue.sockets] == ["access-1", "access-2"]


def test_login_denied_after_a_refresh_is_auth_failed() -> None:
    tokens = FakeTokens()
    venue = FakeVenue(login_codes=(3, 3))
    stream = streaming(venue, tokens=tokens).stream_bars(SYMBOL, "1m", after_index=None)
    with pytest.raises(AuthFailed, match="LOGIN denied again") as caught:
        take(stream, 1)
    assert tokens.rejected_tokens == ["access-1"]
    no_secret_in(str(caught.value))


def test_mid_stream_denial_resumes_without_gap_or_duplicate() -> None:
    tokens = FakeTokens()
    denial = reply_frame("LOGIN", "0", 3, "token expired")
    candles = [candle(m) for m in range(1, 6)]
    venue = FakeVenue([chart_frame(1), chart_frame(2), chart_frame(3), denial, StreamClosed(1000, "bye")],
                      [chart_frame(5), chart_frame(6), chart_frame(7)])
    stream = streaming(venue, tokens=tokens, candles=candles).stream_bars(SYMBOL, "1m", after_index=None)
    got, _ = take(stream, 6)
    stream.close()
    assert minutes(got) == [1, 2, 3, 4, 5, 6]
    assert tokens.rejected_tokens == ["access-1"] and len(venue.sockets) == 2


def test_a_new_token_relogs_on_the_live_socket() -> None:
    tokens = FakeTokens()
    frames: list[str | Exception] = [chart_frame(1), chart_frame(2)] + [HEARTBEAT] * 5 + [chart_frame(3), chart_frame(4)]
    venue = FakeVenue(frames)
    stream = streaming(venue, tokens=tokens).stream_bars(SYMBOL, "1m", after_index=None)
    got, _ = take(stream, 1)
    tokens.announce_new()
    socket = venue.sockets[0]
    got += take(stream, 1)[0]
    relogin = [r for r in socket.sent if r["command"] == "LOGIN"]
    assert [r["parameters"]["Authorization"] for r in relogin] == ["access-1", "access-2"]
    socket.inbox.appendleft(reply_frame("LOGIN", relogin[1]["requestid"], 0))
    got += take(stream, 1)[0]
    stream.close()
    assert minutes(got) == [1, 2, 3] and len(venue.sockets) == 1 and tokens.rejected_tokens == []


def test_a_local_token_source_is_refreshed_by_the_stream_before_expiry() -> None:
    clock = [NOW_NS]
    seen: list[httpx.Request] = []
    auth = authenticator([ok_token("access-1", expires_in=60), ok_token("access-2", expires_in=60)], seen, now=clock)
    tokens = LocalTokenSource(auth, clock_ns=lambda: clock[0])
    venue = FakeVenue([chart_frame(1)] + [HEARTBEAT] * 50)
    client = httpx.Client(base_url="https://api.schwab.test", transport=httpx.MockTransport(rest_handler()))
    md = adapter.SchwabMarketData(SchwabRest(client, tokens), tokens, venue.connect, timeout_s=1,
                                  clock_ns=lambda: clock[0], keepalive_s=0.001, token_poll_s=0.0)
    stream = md.stream_bars(SYMBOL, "1m", after_index=None)
    take(stream, 0, max_items=2)
    clock[0] += 45 * 1_000_000_000  # past the refresh point of a 60 s token
    take(stream, 0, max_items=3)
    stream.close()
    logins = [r["parameters"]["Authorization"] for r in venue.sockets[0].sent if r["command"] == "LOGIN"]
    assert logins == ["access-1", "access-2"] and len(seen) == 2


@pytest.mark.parametrize(("frame", "error", "words"), [
    (json.dumps({"notify": [{"service": "ADMIN", "content": {"code": 77, "msg": "strange"}}]}), UnexpectedResponse,
     "unexpected streamer code 77"),
    (json.dumps({"notify": [{"service": "ADMIN", "content": {"code": 30, "msg": "stop"}}]}), Retryable,
     "STOP_STREAMING"),
    (json.dumps({"notify": [{"service": "ADMIN", "content": {"code": 12, "msg": "max"}}]}), Retryable,
     "CLOSE_CONNECTION"),
    (reply_frame("SUBS", "9", 22, service="CHART_FUTURES"), Retryable, "FAILED_COMMAND_SUBS"),
    ("garbage{", UnexpectedResponse, "not JSON"),
    (json.dumps({"data": [{"service": "CHART_FUTURES", "content": [{"key": SYMBOL, "1": "x"}]}]}),
     UnexpectedResponse, "malformed CHART_FUTURES"),
    (StreamClosed(1006, "abnormal"), Retryable, "connection closed"),
])
def test_stream_failures_are_named_errors(frame: str | Exception, error: type[BrokerError], words: str) -> None:
    venue = FakeVenue([chart_frame(1), frame])
    stream = streaming(venue).stream_bars(SYMBOL, "1m", after_index=None)
    with pytest.raises(error, match=words) as caught:
        take(stream, 5)
    no_secret_in(str(caught.value))


def test_a_refused_subscription_and_a_silent_streamer_are_errors() -> None:
    stream = streaming(FakeVenue(subs_code=19)).stream_bars(SYMBOL, "1m", after_index=None)
    with pytest.raises(Retryable, match="REACHED_SYMBOL_LIMIT"):
        take(stream, 1)
    # A clock that moves 4 ms per look: the fake socket answers "nothing" at once, so on a fast
    # machine the real clock could see thousands of keep-alives inside the 10 ms of allowed silence.
    looks = itertools.count()
    stream = streaming(FakeVenue([]), silence_s=0.01, keepalive_s=0.005,
                       monotonic=lambda: next(looks) * 0.004).stream_bars(SYMBOL, "1m", after_index=None)
    with pytest.raises(Retryable, match="nothing heard"):
        take(stream, 1, max_items=10_000)


def test_no_reply_to_login_is_retryable() -> None:
    class Mute(FakeVenue):
        @contextmanager
        def connect(self, url: str) -> Iterator[FakeSocket]:
            socket = FakeSocket(self, [])
            socket.send_text = lambda text: None  # type: ignore[method-assign]
            yield socket

    md = market_data(rest_handler(), connect=Mute().connect, keepalive_s=0.001)
    with pytest.raises(Retryable, match="no answer to LOGIN"):
        take(md.stream_bars(SYMBOL, "1m", after_index=None), 1)


def test_extras_stay_immutable() -> None:
    token = authenticator([ok_token()], []).obtain()
    assert isinstance(token.extras, MappingProxyType)


def test_the_real_socket_factory_maps_connect_failures() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    for handler, error, words in ((refuse, BrokerUnavailable, "could not connect"),
                                  (lambda r: httpx.Response(403, text="no"), Retryable, "upgrade refused \\(HTTP 403\\)")):
        connect = httpx_ws_connector(httpx.Client(transport=httpx.MockTransport(handler)))
        with pytest.raises(error, match=words):
            with connect("wss://streamer.test/ws"):
                pass
