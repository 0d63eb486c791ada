"""The deribit adapter against the REAL simulator process speaking the Deribit dialect.

One simulator (``--dialect deribit --symbols BTC-PERPETUAL --accounts SIM1,SIM2``) serves the module;
every test uses labels of its own and reads the truth from the simulator's native ``/v1/admin`` views.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from itertools import count
from typing import Any

import httpx
import pytest
from bus_harness import wait_until
from sim_process import CountingTokens, SimProcess
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from brokers.auth import LocalTokenSource
from brokers.base import Bar, BrokerPosition, OrderRequest
from brokers.deribit import adapter
from brokers.errors import OrderNotFound, OutcomeUnknown, RateLimited, Rejected, Retryable, UnexpectedResponse
from brokers.registry import build_facade
from schema.enums import OrderStatus, OrderType, Side

pytestmark = pytest.mark.integration

SYMBOL = "BTC-PERPETUAL"
ACCOUNT = "DERIBIT-SIM"
PACE_S = 0.2
FAR_BELOW = Decimal("1000")
"""A buy limit the random walk from 60000 never reaches: the order rests."""
FAR_ABOVE = Decimal("1000000")
_ids = count(1)


def label(prefix: str = "it") -> str:
    return f"{prefix}.{time.monotonic_ns()}.{next(_ids)}"


class Venue(SimProcess):
    def orders(self) -> dict[str, dict[str, Any]]:
        return {o["client_order_id"]: o for o in self.admin("GET", "/v1/admin/orders")["orders"]}

    def positions(self, *accounts: str) -> list[BrokerPosition]:
        parts: dict[str, list[tuple[Decimal, Decimal]]] = {}
        for p in self.admin("GET", "/v1/admin/positions")["positions"]:
            if p["account"] in accounts:
                parts.setdefault(p["symbol"], []).append((Decimal(p["quantity"]), Decimal(p["average_price"])))
        out = []
        for symbol, group in parts.items():
            total = sum(q for q, _ in group)
            if total == 0:
                continue
            same_way = all((q > 0) == (total > 0) for q, _ in group)
            average = sum(q * a for q, a in group) / total if same_way else None
            out.append(BrokerPosition(symbol, total, average))
        return out

    def native_bars(self) -> list[dict[str, Any]]:
        return self.admin("GET", f"/v1/bars/{SYMBOL}?limit=10000")["bars"]

    def rpc(self, method: str, params: dict[str, Any], token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(f"{self.url}/deribit/api/v2/{method}", params=params, headers=headers, timeout=5)

    def post(self, body: Any) -> dict[str, Any]:
        return httpx.post(f"{self.url}/deribit/api/v2", content=json.dumps(body), timeout=5).json()


@pytest.fixture(scope="module")
def venue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Venue]:
    with Venue(tmp_path_factory.mktemp("deribit-sim"), "deribit", accounts=("SIM1", "SIM2"), symbols=(SYMBOL,),
               pace_s=PACE_S, seed=11) as running:
        yield running
        errors = [line for line in running.log_path.read_text().splitlines() if '"level": "error"' in line]
        assert errors == [], errors


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEBUS_SECRET_DERIBIT_SIM_CLIENT_ID", "sim-client")
    monkeypatch.setenv("TRADEBUS_SECRET_DERIBIT_SIM_CLIENT_SECRET", "sim-secret")


@pytest.fixture(autouse=True)
def clean_venue(venue: Venue) -> Iterator[None]:
    yield
    venue.admin("DELETE", "/v1/admin/faults")
    venue.admin("POST", "/deribit/admin/rate-limit", {"count": 0})
    venue.admin("POST", "/deribit/admin/rate-limit", {"count": 0, "scope": "ws"})


def config(venue: Venue, **extra: Any) -> dict[str, Any]:
    return {"broker": "deribit", "base_url": f"{venue.url}/deribit/api/v2",
            "ws_url": f"{venue.ws_url}/deribit/ws/api/v2", "account": ACCOUNT, "timeout_s": 2, "heartbeat_s": 1,
            **extra}


def counted(venue: Venue, **extra: Any) -> tuple[adapter.DeribitFacade, CountingTokens]:
    cfg = config(venue, **extra)
    source = CountingTokens(LocalTokenSource(adapter.authenticator(cfg)))
    return build_facade(cfg, tokens=source), source  # type: ignore[return-value]


def resting(cid: str, quantity: int = 2) -> OrderRequest:
    return OrderRequest(cid, SYMBOL, Side.BUY, OrderType.LIMIT, Decimal(quantity), limit_price=FAR_BELOW)


def market(cid: str, side: Side = Side.BUY) -> OrderRequest:
    return OrderRequest(cid, SYMBOL, side, OrderType.MARKET, Decimal(1))


def same_bar(bar: Bar, native: dict[str, Any]) -> bool:
    return (bar.ts_ns, bar.open, bar.high, bar.low, bar.close, bar.volume) == (
        native["ts_ns"], Decimal(native["open"]), Decimal(native["high"]), Decimal(native["low"]),
        Decimal(native["close"]), Decimal(native["volume"]))


# ---------------------------------------------------------------- orders, fills, positions


def test_order_lifecycle_fills_and_positions(venue: Venue, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapter, "TRADES_PAGE", 1)  # every fills page holds one trade: paging is exercised
    with build_facade(config(venue)) as broker:
        # Given a buy limit far below the market, it rests and can be found by its label.
        cid = label("limit")
        placed = broker.submit_order(resting(cid))
        assert placed.status is OrderStatus.ACCEPTED and placed.quantity == Decimal(2)
        assert cid in {o.client_order_id for o in broker.open_orders()}
        assert broker.order_by_client_id(cid).broker_order_id == placed.broker_order_id  # type: ignore[union-attr]
        assert broker.order_by_client_id(label("never-sent")) is None
        # When it is modified, the venue holds the new quantity and price.
        modified = broker.modify_order(cid, quantity=Decimal(3), limit_price=FAR_BELOW + Decimal("0.5"))
        assert (modified.quantity, modified.limit_price) == (Decimal(3), Decimal("1000.5"))
        truth = venue.orders()[cid]
        assert (truth["quantity"], truth["limit_price"], truth["account"]) == ("3", "1000.5", "SIM1")
        # When it is cancelled, it leaves the open orders; cancelling again is refused, an unknown label is not found.
        assert broker.cancel_order(cid).status is OrderStatus.CANCELLED
        assert cid not in {o.client_order_id for o in broker.open_orders()}
        with pytest.raises(Rejected, match="11044"):
            broker.cancel_order(cid)
        with pytest.raises(OrderNotFound):
            broker.cancel_order(label("unknown"))
        # A stop far above rests untriggered; a price off the 0.5 tick is refused by the venue.
        stop_cid = label("stop")
        stop = broker.submit_order(OrderRequest(stop_cid, SYMBOL, Side.BUY, OrderType.STOP, Decimal(1),
                                                stop_price=FAR_ABOVE))
        assert stop.status is OrderStatus.ACCEPTED and stop.stop_price == FAR_ABOVE
        assert broker.cancel_order(stop_cid).status is OrderStatus.CANCELLED
        with pytest.raises(Rejected, match="10043 price_wrong_tick"):
            broker.submit_order(OrderRequest(label("tick"), SYMBOL, Side.BUY, OrderType.LIMIT, Decimal(1),
                                             limit_price=Decimal("1000.25")))
        # When market orders fill, every fill comes once, across pages, and the cursor then stays put.
        _, cursor = broker.fills_since(None)
        buys = [label("mkt"), label("mkt"), label("mkt")]
        for buy in buys:
            broker.submit_order(market(buy))
        seen: list[Any] = []

        def collect() -> bool:
            nonlocal cursor
            fills, cursor = broker.fills_since(cursor)
            seen.extend(fills)
            return {f.client_order_id for f in seen} >= set(buys)

        wait_until(collect, "three market fills")
        assert len({f.broker_fill_id for f in seen}) == len(seen) == 3
        assert all(f.quantity == Decimal(1) and f.side is Side.BUY for f in seen)
        assert broker.fills_since(cursor) == ([], cursor)
        assert broker.order_by_client_id(buys[0]).status is OrderStatus.FILLED  # type: ignore[union-attr]
        # Positions and equity are the venue's.
        assert broker.positions() == venue.positions("SIM1")
        equity = venue.admin("GET", "/v1/accounts/SIM1/summary")["equity"]
        assert broker.account_equity() == Decimal(equity)
    assert all(venue.stats()["submissions"].get(c) == 1 for c in (cid, stop_cid, *buys))


def test_history_matches_the_venue_and_pages_by_time(venue: Venue) -> None:
    with build_facade({"broker": "deribit", "base_url": f"{venue.url}/deribit/api/v2"}) as broker:  # data only
        bars = broker.historical_bars(SYMBOL, "1m", limit=10)
        native = {b["ts_ns"]: b for b in venue.native_bars()}
        assert len(bars) == 10 and all(same_bar(b, native[b.ts_ns]) for b in bars)
        assert [b.index for b in bars] == list(range(bars[0].index, bars[0].index + 10))
        later = broker.historical_bars(SYMBOL, "1m", after_ts_ns=bars[2].ts_ns, limit=3)
        assert later == bars[3:6]


# ---------------------------------------------------------------- streaming


def test_stream_replays_then_streams_closed_bars_once_through_token_expiry(venue: Venue) -> None:
    broker, source = counted(venue)
    with broker:
        broker.open_orders()  # a live token, which the expiry below makes stale
        history = broker.historical_bars(SYMBOL, "1m", limit=5)
        stream = broker.stream_bars(SYMBOL, "1m", after_index=history[0].index)
        got: list[Bar] = []
        keepalives = 0
        cid = label("mid-stream")
        try:
            for item in stream:
                if item is None:
                    keepalives += 1
                    continue
                got.append(item)
                if len(got) == 6:
                    # Tokens expire mid-stream: the stream (public data) goes on, an order recovers.
                    venue.admin("POST", "/v1/admin/expire-tokens")
                    assert broker.submit_order(resting(cid)).status is OrderStatus.ACCEPTED
                if len(got) >= 12:
                    break
        finally:
            stream.close()
        broker.cancel_order(cid)
    indices = [b.index for b in got]
    assert indices == list(range(history[0].index + 1, history[0].index + 13)), indices
    native = {b["ts_ns"]: b for b in venue.native_bars()}
    assert all(same_bar(b, native[b.ts_ns]) for b in got)  # the final versions, never a forming one
    assert source.rejections == 1
    assert venue.stats()["submissions"][cid] == 1


def test_a_rate_limited_websocket_ends_and_the_caller_resumes_without_gaps(venue: Venue) -> None:
    with build_facade(config(venue)) as broker:
        got: list[Bar] = []
        stream = broker.stream_bars(SYMBOL, "1m", after_index=None)
        try:
            with pytest.raises(RateLimited):
                for item in stream:
                    if item is not None:
                        got.append(item)
                        if len(got) == 2:
                            # The next WebSocket request (the heartbeat answer) is refused: session over.
                            venue.admin("POST", "/deribit/admin/rate-limit", {"count": 1, "scope": "ws"})
        finally:
            stream.close()
        assert len(got) >= 2
        stream = broker.stream_bars(SYMBOL, "1m", after_index=got[-1].index)
        try:
            for item in stream:
                if item is not None:
                    got.append(item)
                    if len(got) >= 8:
                        break
        finally:
            stream.close()
    indices = [b.index for b in got]
    assert indices == list(range(indices[0], indices[0] + len(indices))), indices


def test_the_venue_drops_a_client_that_ignores_heartbeats(venue: Venue) -> None:
    with ws_connect(f"{venue.ws_url}/deribit/ws/api/v2", open_timeout=5) as ws:
        ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "public/set_heartbeat", "params": {"interval": 1}}))
        assert json.loads(ws.recv(timeout=5))["result"] == "ok"
        messages = []
        with pytest.raises(ConnectionClosed):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                messages.append(json.loads(ws.recv(timeout=5)))
        assert {"jsonrpc": "2.0", "method": "heartbeat", "params": {"type": "test_request"}} in messages
        assert ws.close_reason.startswith("heartbeat")


def test_the_websocket_speaks_json_rpc(venue: Venue) -> None:
    with ws_connect(f"{venue.ws_url}/deribit/ws/api/v2", open_timeout=5) as ws:
        def call(message: Any) -> dict[str, Any]:
            ws.send(json.dumps(message))
            while True:
                answer = json.loads(ws.recv(timeout=5))
                if answer.get("method") is None:
                    return answer

        assert call({"jsonrpc": "2.0", "method": "public/test", "params": {}})["error"]["code"] == -32600
        assert call([{"jsonrpc": "2.0", "id": 1, "method": "public/test"}])["error"]["code"] == -32600
        assert call({"jsonrpc": "2.0", "id": 2, "method": "private/get_positions",
                     "params": {"currency": "BTC"}})["error"]["code"] == 13009
        auth = call({"jsonrpc": "2.0", "id": 3, "method": "public/auth",
                     "params": {"grant_type": "client_credentials", "client_id": "sim-client",
                                "client_secret": "sim-secret"}})
        assert auth["id"] == 3 and auth["result"]["expires_in"] > 0
        # The connection is authorised now.
        assert isinstance(call({"jsonrpc": "2.0", "id": 4, "method": "private/get_positions",
                                "params": {"currency": "BTC"}})["result"], list)
        wrong = call({"jsonrpc": "2.0", "id": 5, "method": "public/subscribe", "params": {"channels": ["chart.trades.BTC-PERPETUAL.5"]}})
        assert wrong["error"]["code"] == -32602


# ---------------------------------------------------------------- the auth path, faults, rate limits


def test_expired_tokens_mid_orders_are_renewed_once_and_nothing_is_sent_twice(venue: Venue) -> None:
    broker, source = counted(venue)
    with broker:
        first = label("exp")
        broker.submit_order(resting(first))
        venue.admin("POST", "/v1/admin/expire-tokens")
        second = label("exp")
        assert broker.submit_order(resting(second)).status is OrderStatus.ACCEPTED
        assert source.rejections == 1
        venue.admin("POST", "/v1/admin/expire-tokens")
        assert broker.cancel_order(first).status is OrderStatus.CANCELLED
        assert broker.cancel_order(second).status is OrderStatus.CANCELLED
        assert source.rejections == 2
    submissions = venue.stats()["submissions"]
    assert (submissions[first], submissions[second]) == (1, 1)


@pytest.mark.parametrize(("fault", "acted"), [("ack_lost", True), ("accept_then_500", True),
                                              ("reset_after_accept", True), ("error_500", False),
                                              ("reset_before", False)])
def test_an_unknown_outcome_is_resolved_by_looking_the_label_up(venue: Venue, fault: str, acted: bool) -> None:
    venue.admin("POST", "/v1/admin/faults", {"rules": [{"call": "submit", "fault": fault, "count": 1,
                                                         "delay_s": 1.5 if fault == "ack_lost" else 0}]})
    with build_facade(config(venue, timeout_s=1)) as broker:
        cid = label(fault)
        with pytest.raises(OutcomeUnknown):
            broker.submit_order(resting(cid))
        found = broker.order_by_client_id(cid)
        assert (found is not None) is acted
        if found is not None:
            assert found.status is OrderStatus.ACCEPTED
            broker.cancel_order(cid)
    assert venue.stats()["submissions"].get(cid, 0) == (1 if acted else 0)


def test_10028_on_http_is_rate_limited_then_calls_go_through(venue: Venue) -> None:
    with build_facade(config(venue)) as broker:
        broker.open_orders()
        venue.admin("POST", "/deribit/admin/rate-limit", {"count": 1})
        with pytest.raises(RateLimited):
            broker.open_orders()
        assert isinstance(broker.open_orders(), list)


def test_a_repeated_label_is_accepted_and_the_lookup_says_a_duplicate_was_sent(venue: Venue) -> None:
    cfg = config(venue)
    token = adapter.authenticator(cfg).obtain().access_token
    cid = label("dup")
    params = {"instrument_name": SYMBOL, "amount": "10", "type": "limit", "price": "1000", "label": cid}
    first, second = (venue.rpc("private/buy", params, token).json() for _ in range(2))
    assert first["result"]["order"]["order_id"] != second["result"]["order"]["order_id"]
    assert second["result"]["order"]["label"] == cid
    assert venue.stats()["submissions"][cid] == 2
    with build_facade(cfg) as broker, pytest.raises(UnexpectedResponse, match="sent twice"):
        broker.order_by_client_id(cid)
    assert venue.rpc("private/cancel_by_label", {"label": cid, "currency": "BTC"}, token).json()["result"] == 2


def test_the_http_dialect_speaks_json_rpc(venue: Venue) -> None:
    assert venue.post({"jsonrpc": "2.0", "method": "public/test"})["error"]["code"] == -32600
    assert venue.post([{"jsonrpc": "2.0", "id": 1, "method": "public/test"}])["error"]["code"] == -32600
    assert venue.post({"jsonrpc": "2.0", "id": 1, "method": "public/test", "params": [1]})["error"]["code"] == -32602
    assert venue.post({"jsonrpc": "2.0", "id": 7, "method": "public/nope"})["error"]["code"] == -32601
    refused = venue.post({"jsonrpc": "2.0", "id": 8, "method": "public/auth",
                          "params": {"grant_type": "client_credentials", "client_id": "sim-client",
                                     "client_secret": "wrong"}})
    assert refused["id"] == 8 and refused["error"]["code"] == 13004
    assert venue.rpc("private/get_positions", {"currency": "BTC"}, "stale").json()["error"]["code"] == 13009
    answer = venue.rpc("public/get_instrument", {"instrument_name": SYMBOL}).json()["result"]
    assert answer["contract_size"] == 10 and answer["tick_size"] == 0.5


# ---------------------------------------------------------------- session transitions


def test_switching_subaccount_keeps_every_order_tracked(venue: Venue) -> None:
    with build_facade(config(venue)) as broker:
        before, after, filled = label("sub1"), label("sub2"), label("sub2-mkt")
        broker.submit_order(resting(before))
        # When the execution role switches to subaccount 2, new orders go there...
        assert broker.switch_subaccount(2) == 2  # type: ignore[attr-defined]
        broker.submit_order(resting(after))
        broker.submit_order(market(filled))
        truth = venue.orders()
        assert (truth[before]["account"], truth[after]["account"], truth[filled]["account"]) == ("SIM1", "SIM2", "SIM2")
        # ...and the order placed before the switch is still found, listed and cancellable.
        assert {before, after} <= {o.client_order_id for o in broker.open_orders()}
        assert broker.order_by_client_id(before).status is OrderStatus.ACCEPTED  # type: ignore[union-attr]
        assert broker.order_by_client_id(after).status is OrderStatus.ACCEPTED  # type: ignore[union-attr]
        wait_until(lambda: any(f.client_order_id == filled for f in broker.fills_since(None)[0]), "the SIM2 fill")
        assert broker.positions() == venue.positions("SIM1", "SIM2")
        assert broker.cancel_order(before).status is OrderStatus.CANCELLED
        assert venue.orders()[before]["status"] == "cancelled"
    # After a restart, track_subject_ids keeps subaccount 2 in view.
    with build_facade(config(venue, track_subject_ids=[2])) as restarted:
        assert restarted.order_by_client_id(after).status is OrderStatus.ACCEPTED  # type: ignore[union-attr]
        assert restarted.cancel_order(after).status is OrderStatus.CANCELLED
    assert venue.orders()[after]["status"] == "cancelled"


def test_a_named_session_sees_the_orders_of_the_default_session(venue: Venue) -> None:
    cid = label("session")
    with build_facade(config(venue)) as default_session:
        default_session.submit_order(resting(cid))
    cfg = config(venue, session_name="tradebus-engine")
    source = LocalTokenSource(adapter.authenticator(cfg))
    with build_facade(cfg, tokens=source) as named:
        assert "session:tradebus-engine" in source.current().extras["scope"]
        assert cid in {o.client_order_id for o in named.open_orders()}
        venue.admin("POST", "/v1/admin/expire-tokens")
        assert named.order_by_client_id(cid).status is OrderStatus.ACCEPTED  # type: ignore[union-attr]
        # The refreshed token belongs to the same named session.
        assert "session:tradebus-engine" in source.current().extras["scope"]
        assert named.cancel_order(cid).status is OrderStatus.CANCELLED
    assert venue.stats()["submissions"][cid] == 1


def test_a_websocket_the_venue_closes_is_retryable(venue: Venue) -> None:
    """The venue closes the socket (here: a path it does not serve): Retryable, the caller reconnects."""
    with build_facade(config(venue, ws_url=f"{venue.ws_url}/deribit/ws/api/v1")) as broker:
        stream = broker.stream_bars(SYMBOL, "1m", after_index=None)
        try:
            # Depending on timing the close is seen on receiving or on sending: Retryable either way.
            with pytest.raises(Retryable, match="closed the WebSocket|connection is closing"):
                next(stream)
        finally:
            stream.close()
