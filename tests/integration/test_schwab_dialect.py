"""The schwab adapter against the REAL venue simulator process speaking the Schwab dialect: OAuth2
over HTTP, price history over REST, bars over the streamer WebSocket (httpx-ws ↔ websockets).

Schwab is data-only here, so the order flows of other venues become: order calls are refused by
the facade and never reach the venue. Token expiry is forced with ``POST /v1/admin/expire-tokens``
(REST and mid-stream), the refresh token's 7-day life with ``POST /schwab/admin/refresh-expiry``.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sim_process import SimProcess, collect_bars, environment

from brokers.auth import StaticTokenSource
from brokers.base import Bar, BrokerFacade, OrderRequest
from brokers.errors import AuthNeedsOperator, NotSupported, Retryable, UnexpectedResponse
from brokers.instruments import front_contract
from brokers.registry import build_authenticator, build_facade
from brokers.schwab.auth import SchwabAuthenticator
from schema.enums import OrderType, Side

pytestmark = pytest.mark.integration

STREAM_DEADLINE_S = 15.0
PACE_S = 0.2
HISTORY = 20
MINUTE_NS = 60_000_000_000
DAY_NS = 86_400 * 1_000_000_000


def _today_contract(root: str) -> str:
    from datetime import UTC, datetime
    return front_contract(root, datetime.now(UTC).date())


ES = _today_contract("ES")
EURO = _today_contract("6E")


class Venue(SimProcess):
    def native_bars(self, symbol: str) -> dict[int, dict[str, Any]]:
        """The venue's own truth (``/v1`` API), by bar open time."""
        bars = self.admin("GET", f"/v1/bars/{symbol}?limit=10000")["bars"]
        return {b["ts_ns"]: b for b in bars}


@contextmanager
def running_venue(root: Path, token_ttl_s: float | None = None) -> Iterator[Venue]:
    with Venue(root, "schwab", accounts=("SIM1", "SIM2"), symbols=(ES, EURO), pace_s=PACE_S, history=HISTORY,
               token_ttl_s=token_ttl_s) as venue:
        assert venue.ws_url.startswith("ws://")  # the streamer's socket
        yield venue


@pytest.fixture(scope="module")
def credentials() -> Iterator[None]:
    secrets: dict[str, str | None] = {"TRADEBUS_SECRETS_FILE": None}
    for account in ("SIM1", "SIM2"):
        secrets[f"TRADEBUS_SECRET_{account}_APP_KEY"] = "sim-app-key"
        secrets[f"TRADEBUS_SECRET_{account}_APP_SECRET"] = "sim-app-secret"
        secrets[f"TRADEBUS_SECRET_{account}_REFRESH_TOKEN"] = f"sim-refresh-{account}"
    with environment(secrets):
        yield


@pytest.fixture(scope="module")
def venue(tmp_path_factory: pytest.TempPathFactory, credentials: None) -> Iterator[Venue]:
    with running_venue(tmp_path_factory.mktemp("schwab-sim")) as running:
        yield running


def config(venue: Venue, account: str = "SIM1", **extra: Any) -> dict[str, Any]:
    return {"broker": "schwab", "account": account, "base_url": venue.base_url, "timeout_s": 5, **extra}


@pytest.fixture
def broker(venue: Venue) -> Iterator[BrokerFacade]:
    facade = build_facade(config(venue))
    try:
        yield facade
    finally:
        facade.close()


collect = partial(collect_bars, deadline_s=STREAM_DEADLINE_S)


def assert_contiguous(bars: list[Bar], first_index: int | None = None) -> None:
    indices = [b.index for b in bars]
    start = indices[0] if first_index is None else first_index
    assert indices == list(range(start, start + len(bars))), indices


def assert_match_venue(bars: list[Bar], venue: Venue, symbol: str) -> None:
    truth = venue.native_bars(symbol)
    for bar in bars:
        native = truth[bar.ts_ns]
        assert bar.index == bar.ts_ns // MINUTE_NS
        assert (bar.open, bar.high, bar.low, bar.close, bar.volume) == tuple(
            Decimal(native[k]) for k in ("open", "high", "low", "close", "volume"))
        assert all(isinstance(v, Decimal) for v in (bar.open, bar.high, bar.low, bar.close, bar.volume))


# ---------------------------------------------------------------- data only


def test_order_execution_is_refused_and_never_reaches_the_venue(venue: Venue, broker: BrokerFacade) -> None:
    assert (broker.capabilities.execution, broker.capabilities.market_data) == (False, True)
    with pytest.raises(NotSupported, match="'schwab' does not support order execution"):
        broker.submit_order(OrderRequest("s.1.1", ES, Side.BUY, OrderType.MARKET, Decimal(1)))
    with pytest.raises(NotSupported, match="order execution"):
        broker.order_by_client_id("s.1.1")
    assert venue.admin("GET", "/v1/admin/stats")["submissions"] == {}


# ---------------------------------------------------------------- history


def _newest_bar_forming(venue: Venue, symbol: str) -> None:
    """Wait (with a deadline) until the venue's newest bar is still forming by the wall clock:
    right after start its newest is the last history bar, which ended a moment ago."""
    deadline = time.monotonic() + STREAM_DEADLINE_S
    while max(venue.native_bars(symbol)) + MINUTE_NS <= time.time_ns():
        assert time.monotonic() < deadline, "the venue made no bar past the wall clock"
        time.sleep(PACE_S / 4)


def test_historical_bars_match_the_venue_and_page(venue: Venue, broker: BrokerFacade) -> None:
    _newest_bar_forming(venue, ES)
    bars = broker.historical_bars(ES, "1m")
    assert len(bars) >= HISTORY - 1 and all(b.symbol == ES and b.interval == "1m" for b in bars)
    assert_contiguous(bars)
    assert_match_venue(bars, venue, ES)
    latest_ts = max(venue.native_bars(ES))
    assert bars[-1].ts_ns < latest_ts  # the venue's newest bar has no later one yet: not yet closed

    page = broker.historical_bars(ES, "1m", after_ts_ns=bars[5].ts_ns, limit=3)
    assert page == bars[6:9]
    # No cursor: the last `limit` intervals up to the wall clock's now (oldest first).
    asked_ns = time.time_ns()
    recent = broker.historical_bars(ES, "1m", limit=2)
    assert len(recent) == 2 and recent[0].ts_ns > asked_ns - 3 * MINUTE_NS and recent[1].index == recent[0].index + 1

    continuous = broker.historical_bars("ES", "1m", after_ts_ns=bars[-3].ts_ns)
    assert [b.symbol for b in continuous][:2] == ["ES", "ES"] and continuous[0].ts_ns == bars[-2].ts_ns
    euro = broker.historical_bars(EURO, "1m", limit=5)
    assert len(euro) == 5 and euro[0].open < Decimal(10)
    assert broker.historical_bars(ES.replace("ES", "NQ"), "1m") == []  # not served: Schwab's empty answer


def test_intervals_the_simulator_does_not_serve(broker: BrokerFacade) -> None:
    with pytest.raises(UnexpectedResponse, match="not served"):
        broker.historical_bars(ES, "5m")
    with pytest.raises(NotSupported, match="5m bar streaming"):
        broker.stream_bars(ES, "5m")


# ---------------------------------------------------------------- streaming


def test_stream_replays_after_index_then_goes_live(venue: Venue, broker: BrokerFacade) -> None:
    history = broker.historical_bars(ES, "1m")
    after = history[-4].index
    stream = broker.stream_bars(ES, "1m", after_index=after)
    try:
        bars = collect(stream, 8)
    finally:
        stream.close()
    assert_contiguous(bars, after + 1)
    assert bars[:3] == history[-3:]
    assert_match_venue(bars, venue, ES)


def test_stream_from_the_live_edge(venue: Venue, broker: BrokerFacade) -> None:
    latest_before = max(venue.native_bars(EURO)) // MINUTE_NS
    stream = broker.stream_bars(EURO, "1m")
    try:
        bars = collect(stream, 4)
    finally:
        stream.close()
    assert_contiguous(bars)
    assert bars[0].index >= latest_before and all(b.symbol == EURO for b in bars)
    assert_match_venue(bars, venue, EURO)


def test_token_expiry_mid_stream_resumes_without_gap_or_duplicate(venue: Venue, broker: BrokerFacade) -> None:
    before = venue.dialect_stats()
    stream = broker.stream_bars(ES, "1m")
    try:
        first = collect(stream, 3)
        assert venue.admin("POST", "/v1/admin/expire-tokens")["expired"] >= 1
        rest = collect(stream, 6)
    finally:
        stream.close()
    assert_contiguous(first + rest)
    after = venue.dialect_stats()
    assert after["login_denied"] > before["login_denied"]  # the venue refused the stale token mid-stream
    assert after["refresh_grants"] > before["refresh_grants"]  # the adapter refreshed (tokens.rejected)
    assert after["connections"] == before["connections"] + 2  # and reconnected once


def test_token_expiry_before_a_rest_call_refreshes_once(venue: Venue, broker: BrokerFacade) -> None:
    broker.historical_bars(ES, "1m", limit=1)
    before = venue.dialect_stats()["refresh_grants"]
    venue.admin("POST", "/v1/admin/expire-tokens")
    assert len(broker.historical_bars(ES, "1m", limit=3)) == 3
    assert venue.dialect_stats()["refresh_grants"] == before + 1


def test_one_streamer_connection_per_user(venue: Venue, broker: BrokerFacade) -> None:
    first = broker.stream_bars(ES, "1m")
    second_facade = build_facade(config(venue))
    second = second_facade.stream_bars(EURO, "1m")
    try:
        collect(first, 1)
        collect(second, 1)  # the same Schwab user logs in again: the venue closes the older connection
        with pytest.raises(Retryable, match="CLOSE_CONNECTION"):
            collect(first, 100)
        collect(second, 2)
    finally:
        first.close()
        second.close()
        second_facade.close()


@pytest.mark.parametrize(("code", "error", "words"), [
    (77, UnexpectedResponse, "unexpected streamer code 77"),
    (30, Retryable, "STOP_STREAMING"),
])
def test_streamer_codes_end_the_stream_with_a_named_error(venue: Venue, broker: BrokerFacade, code: int,
                                                          error: type[Exception], words: str) -> None:
    stream = broker.stream_bars(ES, "1m")
    try:
        collect(stream, 1)
        assert venue.admin("POST", "/schwab/admin/stream-notify", {"code": code, "msg": "from the test"})["notified"] == 1
        with pytest.raises(error, match=words):
            collect(stream, 100)
    finally:
        stream.close()


def test_a_fault_on_the_streams_first_step_and_on_history_is_retryable(venue: Venue, broker: BrokerFacade) -> None:
    venue.admin("POST", "/v1/admin/faults", {"rules": [{"call": "stream", "fault": "error_500", "count": 1},
                                                       {"call": "bars", "fault": "reset_before", "count": 1}]})
    try:
        with pytest.raises(Retryable, match="500"):
            next(broker.stream_bars(ES, "1m"))
        with pytest.raises(Retryable):
            broker.historical_bars(ES, "1m")
        assert broker.historical_bars(ES, "1m", limit=2)
    finally:
        venue.admin("DELETE", "/v1/admin/faults")


# ---------------------------------------------------------------- the refresh token's 7 days and the login


def test_refresh_token_warning_then_death_needs_the_operator(venue: Venue) -> None:
    # Given a refresh token obtained by logging in six days ago (SIM2: the other tests use SIM1)
    issued = time.time_ns() - 6 * DAY_NS
    auth = build_authenticator(config(venue, "SIM2", refresh_token_issued_ns=issued))
    assert isinstance(auth, SchwabAuthenticator)
    try:
        token = auth.obtain()
        # Then the operator is warned, a day ahead, how to log in again
        [warning] = auth.notices(token, time.time_ns())
        assert "expires in 23h" in warning or "expires in 1d" in warning
        assert "log in to Schwab again" in warning and "TRADEBUS_SECRET_SIM2_REFRESH_TOKEN" in warning
        # and refreshing goes on working while the venue still takes the refresh token
        venue.admin("POST", "/schwab/admin/refresh-expiry", {"days_left": 1, "account": "SIM2"})
        token = auth.refresh(token)
        facade = build_facade(config(venue, "SIM2"))
        try:
            assert facade.historical_bars(ES, "1m", limit=1)
            # When the refresh token dies at the venue
            venue.admin("POST", "/schwab/admin/refresh-expiry", {"days_left": 0, "account": "SIM2"})
            with pytest.raises(AuthNeedsOperator, match="log in to Schwab again") as caught:
                auth.refresh(token)
            assert "sim-refresh-SIM2" not in str(caught.value)
            # Then a facade whose access token expires cannot recover without the operator
            venue.admin("POST", "/v1/admin/expire-tokens")
            with pytest.raises(AuthNeedsOperator, match="refresh token was refused"):
                facade.historical_bars(ES, "1m")
        finally:
            facade.close()
    finally:
        auth.close()


def test_authorization_code_login_gives_a_working_token(venue: Venue) -> None:
    auth = build_authenticator(config(venue))
    assert isinstance(auth, SchwabAuthenticator)
    try:
        token = auth.exchange_code("sim-code-SIM1", "https://127.0.0.1")
        assert token.refresh_token != "sim-refresh-SIM1"
        with build_facade(config(venue), tokens=StaticTokenSource(token, "schwab")) as facade:
            assert len(facade.historical_bars(ES, "1m", limit=2)) == 2
        assert auth.refresh(token).refresh_token == token.refresh_token  # Schwab does not rotate it
        with pytest.raises(AuthNeedsOperator, match="authorization code was refused"):
            auth.exchange_code("sim-code-NOBODY", "https://127.0.0.1")
    finally:
        auth.close()


def test_a_wrong_app_secret_needs_the_operator(venue: Venue, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEBUS_SECRET_SIM1_APP_SECRET", "wrong-secret")
    with build_facade(config(venue)) as facade:
        with pytest.raises(AuthNeedsOperator, match="app key/secret refused") as caught:
            facade.historical_bars(ES, "1m")
    assert "wrong-secret" not in str(caught.value)


# ---------------------------------------------------------------- re-LOGIN on the live socket


def test_new_tokens_relogin_on_the_live_socket(tmp_path: Path, credentials: None) -> None:
    # Given access tokens that live 5 s: the in-process token source refreshes after 2.5 s
    with running_venue(tmp_path, token_ttl_s=5) as short:
        facade = build_facade(config(short))
        stream = facade.stream_bars(ES, "1m")
        try:
            bars = collect(stream, 2)
            # When two refreshes happen during the stream
            deadline = time.monotonic() + STREAM_DEADLINE_S
            while short.dialect_stats()["relogins"] < 2:
                bars += [b for b in [next(stream)] if b is not None]
                assert time.monotonic() < deadline, "no re-LOGIN within the deadline"
            bars += collect(stream, 2)
        finally:
            stream.close()
            facade.close()
        stats = short.dialect_stats()
    # Then the socket was re-authorised in place: one connection, never denied, bars unbroken
    assert (stats["connections"], stats["login_denied"], stats["logins"]) == (1, 0, 1)
    assert stats["refresh_grants"] >= 2
    assert_contiguous(bars)
