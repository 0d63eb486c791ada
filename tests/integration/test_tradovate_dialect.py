"""The tradovate adapter against the REAL simulator process speaking the tradovate dialect: orders,
lookups, fills, positions, bars over the market-data WebSocket, token expiry mid-stream and
mid-orders, renewal, penalty tickets, rate limits, lost acknowledgements, OSO brackets and the
trading socket's framing."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from bus_harness import wait_until
from httpx_ws import connect_ws
from sim_process import SimProcess, collect_bars, environment

from brokers.auth import LocalTokenSource, StaticTokenSource
from brokers.base import BrokerFacade, Bar, BrokerOrder, OrderRequest
from brokers.errors import (
    AuthFailed,
    AuthNeedsOperator,
    OutcomeUnknown,
    RateLimited,
    Rejected,
    Retryable,
    UnexpectedResponse,
    UnknownSymbol,
)
from brokers.instruments import front_contract, instrument
from brokers.registry import build_facade
from brokers.tradovate import adapter
from schema.enums import OrderStatus, OrderType, Side

pytestmark = pytest.mark.integration

DEADLINE_S = 10.0
ES = front_contract("ES", datetime.now(UTC).date())
E6 = front_contract("6E", datetime.now(UTC).date())
TICK = instrument("ES").tick_size
ACCOUNT = "TV-IT"
CREDENTIALS = {"TRADEBUS_SECRET_TV_IT_NAME": "demo", "TRADEBUS_SECRET_TV_IT_PASSWORD": "demo-password",
               "TRADEBUS_SECRET_TV_BAD_NAME": "demo", "TRADEBUS_SECRET_TV_BAD_PASSWORD": "wrong-password"}


class Sim(SimProcess):
    def config(self, account_spec: str | None = "SIM1", **extra: Any) -> dict[str, Any]:
        config = {"broker": "tradovate", "account": ACCOUNT, "base_url": f"{self.url}/tradovate/v1",
                  "md_ws_url": f"{self.ws_url}/tradovate/md", "timeout_s": 5, **extra}
        if account_spec is not None:
            config["account_spec"] = account_spec
        return config


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    root = tmp_path_factory.mktemp("tradovate-sim")
    with environment(CREDENTIALS), Sim(root, "tradovate", accounts=("SIM1", "SIM2", "SIM3"), symbols=(ES, E6),
                                       seed=5) as running:
        yield running


@pytest.fixture
def broker(sim: Sim) -> Iterator[BrokerFacade]:
    facade = build_facade(sim.config())
    assert isinstance(facade, BrokerFacade)
    try:
        yield facade
    finally:
        facade.close()


def last_close(broker: BrokerFacade, symbol: str = ES) -> Decimal:
    return broker.historical_bars(symbol, "1m", limit=1)[-1].close


def on_tick(price: Decimal) -> Decimal:
    return (price / TICK).to_integral_value() * TICK


def status_of(broker: BrokerFacade, cid: str) -> OrderStatus | None:
    order = broker.order_by_client_id(cid)
    return None if order is None else order.status


def _fills_when(broker: BrokerFacade, cursor: str | None, count: int) -> Any:
    fills, next_cursor = broker.fills_since(cursor)
    return (fills, next_cursor) if len(fills) >= count else None


def consecutive(bars: list[Bar]) -> bool:
    return [b.index for b in bars] == list(range(bars[0].index, bars[0].index + len(bars)))


# ---------------------------------------------------------------- orders


def test_market_limit_stop_modify_cancel_and_lookup(sim: Sim, broker: BrokerFacade) -> None:
    price = last_close(broker)
    # Given a market buy, when it is submitted, then the venue takes it and fills it on the next bar.
    market = broker.submit_order(OrderRequest("it.1.market", ES, Side.BUY, OrderType.MARKET, Decimal(1)))
    assert (market.status, market.symbol) == (OrderStatus.ACCEPTED, ES)
    wait_until(lambda: status_of(broker, "it.1.market") is OrderStatus.FILLED, "the market order to fill")

    # A limit far below and a stop far above rest.
    limit = broker.submit_order(OrderRequest("it.1.limit", ES, Side.BUY, OrderType.LIMIT, Decimal(2),
                                             limit_price=on_tick(price - 200)))
    stop = broker.submit_order(OrderRequest("it.1.stop", ES, Side.BUY, OrderType.STOP, Decimal(1),
                                            stop_price=on_tick(price + 200)))
    working = {o.client_order_id: o for o in broker.open_orders()}
    assert {"it.1.limit", "it.1.stop"} <= set(working)
    assert working["it.1.limit"].limit_price == on_tick(price - 200) and working["it.1.stop"].order_type is OrderType.STOP
    assert working["it.1.limit"].broker_order_id == limit.broker_order_id

    modified = broker.modify_order("it.1.limit", quantity=Decimal(3), limit_price=on_tick(price - 150))
    assert (modified.quantity, modified.limit_price, modified.status) == (Decimal(3), on_tick(price - 150),
                                                                          OrderStatus.ACCEPTED)
    with pytest.raises(Rejected, match="tick"):
        broker.modify_order("it.1.limit", limit_price=on_tick(price - 150) + TICK / 5)

    for cid in ("it.1.limit", "it.1.stop"):
        assert broker.cancel_order(cid).status is OrderStatus.CANCELLED
    assert not {"it.1.limit", "it.1.stop"} & {o.client_order_id for o in broker.open_orders()}
    with pytest.raises(Rejected, match="cancel"):
        broker.cancel_order("it.1.stop")  # already cancelled: the venue refuses

    found = broker.order_by_client_id("it.1.stop")
    assert found is not None and found.broker_order_id == stop.broker_order_id
    assert broker.order_by_client_id("it.1.never") is None
    with pytest.raises(Rejected, match="multiple of the tick"):
        broker.submit_order(OrderRequest("it.1.offtick", ES, Side.BUY, OrderType.LIMIT, Decimal(1),
                                         limit_price=price + TICK / 5))
    for cid in ("it.1.market", "it.1.limit", "it.1.stop", "it.1.offtick"):
        assert sim.submissions(cid) == 1


def test_fills_with_cursor_paging_and_positions(sim: Sim) -> None:
    # SIM2, and no account_id in the config: the adapter finds it by name.
    with build_facade(sim.config("SIM2")) as broker:
        broker.submit_order(OrderRequest("it.2.buy", ES, Side.BUY, OrderType.MARKET, Decimal(3)))
        fills, cursor = wait_until(lambda: _fills_when(broker, None, 1), "the first fill")
        assert [f.client_order_id for f in fills] == ["it.2.buy"]
        assert broker.fills_since(cursor) == ([], cursor)  # nothing new: the same cursor

        broker.submit_order(OrderRequest("it.2.sell", ES, Side.SELL, OrderType.MARKET, Decimal(1)))
        broker.submit_order(OrderRequest("it.2.eur", E6, Side.SELL, OrderType.MARKET, Decimal(2)))
        new_fills, next_cursor = wait_until(lambda: _fills_when(broker, cursor, 2), "two more fills")
        assert sorted(f.client_order_id for f in new_fills) == ["it.2.eur", "it.2.sell"]
        assert {f.symbol for f in new_fills} == {ES, E6}
        everything, _ = broker.fills_since(None)
        assert len({f.broker_fill_id for f in everything}) == len(everything) == 3
        assert broker.fills_since(next_cursor)[0] == []

        truth = {(p["symbol"], Decimal(p["quantity"])) for p in sim.admin("GET", "/v1/admin/positions")["positions"]
                 if p["account"] == "SIM2"}
        assert {(p.symbol, p.quantity) for p in broker.positions()} == truth == {(ES, Decimal(2)), (E6, Decimal(-2))}
        assert broker.account_equity() > 0


# ---------------------------------------------------------------- bars


def test_historical_bars(sim: Sim, broker: BrokerFacade) -> None:
    bars = broker.historical_bars(ES, "1m", limit=10)
    assert 1 <= len(bars) <= 10 and consecutive(bars)
    assert all(b.index == b.ts_ns // 60_000_000_000 and b.symbol == ES and b.low <= b.close <= b.high for b in bars)
    newer = broker.historical_bars(ES, "1m", after_ts_ns=bars[-3].ts_ns, limit=500)
    assert newer and newer[0].ts_ns == bars[-2].ts_ns and all(b.ts_ns > bars[-3].ts_ns for b in newer)
    assert consecutive(newer)
    # The same bars as the venue's own API serves, to the tick.
    native = sim.admin("GET", f"/v1/bars/{ES}?after_ts_ns={bars[0].ts_ns - 1}&limit=1000")["bars"]
    truth = {b["ts_ns"]: (Decimal(b["open"]), Decimal(b["close"]), Decimal(b["volume"])) for b in native}
    assert all(truth[b.ts_ns] == (b.open, b.close, b.volume) for b in bars + newer)
    with pytest.raises(UnknownSymbol):
        broker.historical_bars("NQZ6", "1m", limit=5)
    with pytest.raises(UnexpectedResponse, match="400"):
        broker.historical_bars(ES, "5m", limit=5)  # the simulator makes 1m bars only


def test_streaming_bars_in_order_and_resuming(broker: BrokerFacade) -> None:
    stream = broker.stream_bars(ES, "1m")
    try:
        bars = collect_bars(stream, 6)
    finally:
        stream.close()
    assert consecutive(bars) and all(b.symbol == ES for b in bars)
    resumed = broker.stream_bars(ES, "1m", after_index=bars[2].index)
    try:
        again = collect_bars(resumed, 4)
    finally:
        resumed.close()
    assert consecutive(again) and again[0].index == bars[3].index  # bars after the resume point, none before
    assert [(b.ts_ns, b.close) for b in again[:3]] == [(b.ts_ns, b.close) for b in bars[3:6]]


def test_token_expiry_mid_stream_reauthorises_the_live_socket(sim: Sim, broker: BrokerFacade) -> None:
    before = sim.dialect_stats()
    stream = broker.stream_bars(ES, "1m")
    try:
        first = collect_bars(stream, 2)
        assert sim.admin("POST", "/v1/admin/expire-tokens")["expired"] >= 1
        rest = collect_bars(stream, 5)
    finally:
        stream.close()
    # Same socket, no gap, no repeat: the socket was told, got a new token and resumed.
    assert consecutive(first + rest)
    after = sim.dialect_stats()
    assert after.get("ws_token_expired", 0) > before.get("ws_token_expired", 0)
    assert after["ws_authorized"] >= before.get("ws_authorized", 0) + 2
    assert after.get("tokens_issued", 0) > before.get("tokens_issued", 0)  # the dead session was replaced


# ---------------------------------------------------------------- tokens


def test_token_expiry_mid_orders_sends_each_order_once(sim: Sim, broker: BrokerFacade) -> None:
    price = last_close(broker)
    broker.submit_order(OrderRequest("it.3.a", ES, Side.BUY, OrderType.LIMIT, Decimal(1),
                                     limit_price=on_tick(price - 300)))
    before = sim.dialect_stats()
    sim.admin("POST", "/v1/admin/expire-tokens")
    # When the next order meets the dead token, the adapter renews (refused: the token is dead),
    # logs in again and sends the order once more — the venue saw the first attempt as a 401 only.
    order = broker.submit_order(OrderRequest("it.3.b", ES, Side.BUY, OrderType.LIMIT, Decimal(1),
                                             limit_price=on_tick(price - 300)))
    assert order.status is OrderStatus.ACCEPTED
    assert broker.cancel_order("it.3.a").status is OrderStatus.CANCELLED
    assert broker.cancel_order("it.3.b").status is OrderStatus.CANCELLED
    after = sim.dialect_stats()
    assert after["renewals_refused"] == before.get("renewals_refused", 0) + 1
    assert after["tokens_issued"] == before["tokens_issued"] + 1
    assert (sim.submissions("it.3.a"), sim.submissions("it.3.b")) == (1, 1)


def test_refresh_renews_the_session_without_a_new_login(sim: Sim) -> None:
    auth = adapter.authenticator(sim.config())
    try:
        token = auth.obtain()
        before = sim.dialect_stats()
        renewed = auth.refresh(token)
        after = sim.dialect_stats()
        assert renewed.access_token != token.access_token and renewed.expires_ns >= token.expires_ns
        assert after["renewals"] == before.get("renewals", 0) + 1
        assert after["token_requests"] == before["token_requests"]
        with build_facade(sim.config(), tokens=StaticTokenSource(renewed, "tradovate")) as broker:
            assert isinstance(broker.positions(), list)  # the renewed token works
            bars = broker.historical_bars(ES, "1m", limit=3)  # on the md socket too (no md token after renewal)
            assert bars
    finally:
        auth.close()


def test_penalty_tickets_are_waited_out_and_a_captcha_needs_the_operator(sim: Sim) -> None:
    sim.admin("POST", "/tradovate/admin/penalty", {"count": 2, "p_time": 0.3, "captcha": False})
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)  # the venue checks that the ticket's time has passed

    auth = adapter.authenticator(sim.config(), sleep=sleep)
    try:
        with build_facade(sim.config(), tokens=LocalTokenSource(auth)) as broker:
            assert isinstance(broker.open_orders(), list)
        assert waits == [0.3, 0.3]

        sim.admin("POST", "/tradovate/admin/penalty", {"count": 1, "p_time": 3600, "captcha": True})
        waits.clear()
        with pytest.raises(AuthNeedsOperator, match="captcha"):
            auth.obtain()
        assert waits == []
    finally:
        sim.admin("POST", "/tradovate/admin/penalty", {"count": 0})
        auth.close()


def test_wrong_credentials_and_rate_limits(sim: Sim, broker: BrokerFacade) -> None:
    with build_facade({**sim.config(), "account": "TV-BAD"}) as bad:
        with pytest.raises(AuthFailed) as caught:
            bad.open_orders()
    assert "wrong-password" not in str(caught.value) and "Incorrect username" in str(caught.value)

    broker.open_orders()
    sim.admin("POST", "/tradovate/admin/rate-limit", {"count": 1})
    with pytest.raises(RateLimited):
        broker.open_orders()
    assert isinstance(broker.open_orders(), list)

    # A token endpoint failing (the fault plan's "auth" call) is worth another try, not a refusal.
    try:
        sim.admin("POST", "/v1/admin/faults", {"rules": [{"call": "auth", "fault": "error_500", "count": 1}]})
        with build_facade(sim.config()) as fresh:
            with pytest.raises(Retryable):
                fresh.open_orders()
            assert isinstance(fresh.open_orders(), list)
    finally:
        sim.admin("DELETE", "/v1/admin/faults")


# ---------------------------------------------------------------- lost answers


def test_lost_answers_are_resolved_by_lookup_never_by_resending(sim: Sim, broker: BrokerFacade) -> None:
    price = on_tick(last_close(broker) - 400)
    try:
        # The venue acts, then the connection drops before the answer.
        sim.admin("POST", "/v1/admin/faults", {"rules": [{"call": "submit", "fault": "reset_after_accept",
                                                          "count": 1}]})
        request = OrderRequest("it.4.lost", ES, Side.BUY, OrderType.LIMIT, Decimal(1), limit_price=price)
        with pytest.raises(OutcomeUnknown):
            broker.submit_order(request)
        found = broker.order_by_client_id("it.4.lost")
        assert found is not None and found.status is OrderStatus.ACCEPTED
        assert broker.submit_order(request).broker_order_id == found.broker_order_id  # asks, does not resend

        # A 500 before acting: the lookup says "none", so the same id is sent once more.
        sim.admin("POST", "/v1/admin/faults", {"rules": [{"call": "submit", "fault": "error_500", "count": 1}]})
        request = OrderRequest("it.4.failed", ES, Side.BUY, OrderType.LIMIT, Decimal(1), limit_price=price)
        with pytest.raises(OutcomeUnknown):
            broker.submit_order(request)
        assert broker.order_by_client_id("it.4.failed") is None
        assert broker.submit_order(request).status is OrderStatus.ACCEPTED
    finally:
        sim.admin("DELETE", "/v1/admin/faults")
    assert (sim.submissions("it.4.lost"), sim.submissions("it.4.failed")) == (1, 1)
    for cid in ("it.4.lost", "it.4.failed"):
        broker.cancel_order(cid)


# ---------------------------------------------------------------- brackets


def test_oso_bracket_places_its_legs_on_fill_and_one_cancels_the_other(sim: Sim) -> None:
    with build_facade(sim.config("SIM3")) as broker:
        assert isinstance(broker, BrokerFacade)
        price = last_close(broker)
        entry = broker.submit_bracket(OrderRequest("it.5.entry", ES, Side.BUY, OrderType.MARKET, Decimal(1)),
                                      take_profit=on_tick(price + 300), stop_loss=on_tick(price - 300))
        assert entry.status is OrderStatus.ACCEPTED

        def legs() -> dict[str, BrokerOrder] | None:
            working = {o.client_order_id: o for o in broker.open_orders()}
            return working if {"it.5.entry:tp", "it.5.entry:sl"} <= set(working) else None

        working = wait_until(legs, "the bracket legs after the entry filled")
        assert broker.order_by_client_id("it.5.entry").status is OrderStatus.FILLED  # type: ignore[union-attr]
        tp, sl = working["it.5.entry:tp"], working["it.5.entry:sl"]
        assert (tp.side, tp.order_type, tp.limit_price) == (Side.SELL, OrderType.LIMIT, on_tick(price + 300))
        assert (sl.side, sl.order_type, sl.stop_price) == (Side.SELL, OrderType.STOP, on_tick(price - 300))

        # When the take-profit becomes marketable it fills, and the stop-loss is cancelled.
        broker.modify_order("it.5.entry:tp", limit_price=on_tick(last_close(broker) - 50))
        wait_until(lambda: status_of(broker, "it.5.entry:tp") is OrderStatus.FILLED, "the take-profit to fill")
        wait_until(lambda: status_of(broker, "it.5.entry:sl") is OrderStatus.CANCELLED, "the stop-loss to be cancelled")
        assert broker.positions() == []
        assert [sim.submissions(c) for c in ("it.5.entry", "it.5.entry:tp", "it.5.entry:sl")] == [1, 1, 1]


def test_the_demo_account_reaches_the_simulator(sim: Sim, tmp_path: Path) -> None:
    from brokers.sim.dialects import tradovate as dialect

    config, secrets = dialect.demo_account(sim.url, sim.ws_url, "SIM1")
    secrets_file = tmp_path / "secrets.toml"
    secrets_file.write_text("[DEMO-TV]\n" + "".join(f'{k} = "{v}"\n' for k, v in secrets.items()))
    secrets_file.chmod(0o600)
    with build_facade({**config, "broker": "tradovate", "account": "DEMO-TV",
                       "secrets_file": str(secrets_file)}) as broker:
        assert broker.capabilities.execution and broker.capabilities.market_data
        assert broker.historical_bars(ES, "1m", limit=2)
        assert isinstance(broker.open_orders(), list)


# ---------------------------------------------------------------- the trading socket's framing


def test_trading_socket_framing(sim: Sim, broker: BrokerFacade) -> None:
    auth = adapter.authenticator(sim.config())
    try:
        token = auth.obtain().access_token
    finally:
        auth.close()

    def frames(ws: Any, until: Callable[[str], bool]) -> str:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            frame = ws.receive_text(timeout=DEADLINE_S)
            if until(frame):
                return frame
        pytest.fail("no such frame")

    with httpx.Client() as client, connect_ws(f"{sim.ws_url}/tradovate/trade", client,
                                              keepalive_ping_interval_seconds=None) as ws:
        assert ws.receive_text(timeout=DEADLINE_S) == "o"
        ws.send_text("order/list\n1\n\n")
        assert json.loads(frames(ws, lambda f: f.startswith("a"))[1:]) == [{"s": 401, "i": 1, "d": "Access is denied"}]
        ws.send_text("authorize\n2\n\nnot-a-token")
        assert json.loads(frames(ws, lambda f: f.startswith("a"))[1:])[0]["s"] == 401
        ws.send_text(f"authorize\n3\n\n{token}")
        assert json.loads(frames(ws, lambda f: f.startswith("a"))[1:]) == [{"s": 200, "i": 3}]
        ws.send_text("[]")
        assert frames(ws, lambda f: f == "h") == "h"  # the server's heartbeat when idle
        ws.send_text("order/list\n4\n\n")
        [answer] = json.loads(frames(ws, lambda f: f.startswith("a"))[1:])
        assert answer["s"] == 200 and answer["i"] == 4 and isinstance(answer["d"], list)
        ws.send_text("nope/nothing\n5\n\n")
        assert json.loads(frames(ws, lambda f: f.startswith("a"))[1:])[0]["s"] == 404
