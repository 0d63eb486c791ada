"""The simulator's HTTP server in-process, with bars driven by the test (no producer thread), so
cancel, modify, resting orders and stream replay can be checked step by step."""
from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType

import httpx
import pytest

from brokers.base import Bar, BrokerFacade, OrderRequest
from brokers.errors import OrderNotFound, Rejected, Retryable, UnexpectedResponse, UnknownSymbol
from brokers.registry import build_facade
from brokers.sim import server as sim_server
from brokers.sim.server import JsonLog, SimApp, SimConfig, VenueHTTPServer
from schema.enums import OrderStatus, OrderType, Side

pytestmark = pytest.mark.integration

SYMBOL = "ESZ6"
NOW_NS = 1_795_000_000 * 1_000_000_000


@dataclass
class Running:
    app: SimApp
    url: str
    broker: BrokerFacade


@pytest.fixture
def venue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    monkeypatch.setattr(sim_server, "HEARTBEAT_INTERVAL_S", 0.1)
    config = SimConfig(host="127.0.0.1", port=0, state_dir=tmp_path, symbols=(SYMBOL, "6EZ6"), interval="1m",
                       pace_s=1.0, seed=3, csv=MappingProxyType({}), accounts=("SIM1",), history=10)
    app = SimApp(config, JsonLog(io.StringIO()), now_ns=NOW_NS)
    for _ in range(config.history):
        app.produce_one_round()
    server = VenueHTTPServer(("127.0.0.1", 0), app)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    broker = build_facade({"broker": "sim", "base_url": url, "account": "SIM1", "timeout_s": 5})
    try:
        yield Running(app, url, broker)
    finally:
        broker.close()
        app.stop()
        server.shutdown()
        server.server_close()
        thread.join(5)


def latest(app: SimApp) -> Bar:
    bar = app.books[SYMBOL].last
    assert bar is not None
    return bar


def test_history_is_timestamped_up_to_now(venue: Running) -> None:
    bars = venue.broker.historical_bars(SYMBOL, "1m")
    assert [b.index for b in bars] == list(range(10))
    assert bars[-1].ts_ns == NOW_NS // 60_000_000_000 * 60_000_000_000 - 60_000_000_000
    assert venue.broker.historical_bars(SYMBOL, "1m", after_ts_ns=bars[7].ts_ns) == bars[8:]
    assert venue.broker.historical_bars(SYMBOL, "1m", limit=2) == bars[-2:]  # no cursor: the latest
    assert venue.broker.historical_bars(SYMBOL, "1m", after_ts_ns=bars[3].ts_ns, limit=2) == bars[4:6]


def test_limit_order_rests_is_modified_and_cancelled(venue: Running) -> None:
    broker = venue.broker
    far_below = latest(venue.app).low - Decimal(100)
    broker.submit_order(OrderRequest("l1", SYMBOL, Side.BUY, OrderType.LIMIT, Decimal(1), limit_price=far_below))
    venue.app.produce_one_round()
    [working] = broker.open_orders()
    assert (working.client_order_id, working.status, working.limit_price) == ("l1", OrderStatus.ACCEPTED, far_below)

    modified = broker.modify_order("l1", quantity=Decimal(3), limit_price=far_below - Decimal("0.25"))
    assert (modified.quantity, modified.limit_price) == (Decimal(3), far_below - Decimal("0.25"))
    with pytest.raises(Rejected, match="tick"):
        broker.modify_order("l1", limit_price=Decimal("1.01"))

    cancelled = broker.cancel_order("l1")
    assert cancelled.status is OrderStatus.CANCELLED
    assert broker.open_orders() == []
    with pytest.raises(Rejected, match="order is cancelled"):
        broker.cancel_order("l1")
    with pytest.raises(OrderNotFound):
        broker.cancel_order("nope")


def test_marketable_limit_fills_on_the_next_bar(venue: Running) -> None:
    broker = venue.broker
    broker.submit_order(OrderRequest("l2", SYMBOL, Side.BUY, OrderType.LIMIT, Decimal(2),
                                     limit_price=latest(venue.app).high + Decimal(50)))
    venue.app.produce_one_round()
    fills, cursor = broker.fills_since(None)
    assert [(f.client_order_id, f.price) for f in fills] == [("l2", latest(venue.app).open)]
    assert cursor == "1"


def test_rejections_over_http(venue: Running) -> None:
    with pytest.raises(Rejected, match="positive whole number"):
        venue.broker.submit_order(OrderRequest("r1", SYMBOL, Side.BUY, OrderType.MARKET, Decimal("0.5")))
    rejected = venue.broker.order_by_client_id("r1")
    assert rejected is not None and rejected.status is OrderStatus.REJECTED
    with pytest.raises(Rejected, match="unknown symbol NQZ6"):
        venue.broker.submit_order(OrderRequest("r2", "NQZ6", Side.BUY, OrderType.MARKET, Decimal(1)))
    response = httpx.get(f"{venue.url}/v1/orders", params={"account": "SIM9"})
    assert response.status_code == 400 and "account" in response.json()["message"]


def test_stream_from_the_live_edge_then_heartbeats(venue: Running) -> None:
    stream = venue.broker.stream_bars(SYMBOL, "1m")
    try:
        first = next(stream)
        assert first is not None and first.index == latest(venue.app).index
        venue.app.produce_one_round()
        second = next(stream)
        assert second is not None and second.index == first.index + 1 and second.symbol == SYMBOL
        assert next(stream) is None  # idle: a heartbeat, not silence
    finally:
        stream.close()


def test_stream_replays_after_an_index(venue: Running) -> None:
    stream = venue.broker.stream_bars(SYMBOL, "1m", after_index=6)
    try:
        assert [next(stream).index for _ in range(3)] == [7, 8, 9]  # type: ignore[union-attr]
    finally:
        stream.close()


def test_stream_ends_with_retryable_when_the_venue_stops(venue: Running) -> None:
    stream = venue.broker.stream_bars(SYMBOL, "1m")
    assert next(stream) is not None
    venue.app.stop()
    with pytest.raises(Retryable):
        while True:
            next(stream)


def test_unknown_symbol_and_wrong_interval(venue: Running) -> None:
    with pytest.raises(UnknownSymbol, match="NQZ6"):
        venue.broker.historical_bars("NQZ6", "1m")
    response = httpx.get(f"{venue.url}/v1/bars/{SYMBOL}", params={"interval": "5m"})
    assert response.status_code == 400 and "1m" in response.json()["message"]


def test_instruments_and_health(venue: Running) -> None:
    instruments = httpx.get(f"{venue.url}/v1/instruments").json()["instruments"]
    assert [(i["symbol"], i["tick_size"]) for i in instruments] == [(SYMBOL, "0.25"), ("6EZ6", "0.00005")]
    health = httpx.get(f"{venue.url}/v1/health").json()
    assert health["status"] == "ok" and health["last_index"] == {SYMBOL: 9, "6EZ6": 9}


def test_stream_from_an_index_the_venue_never_made_is_refused(venue: Running) -> None:
    # Given a client that saw bar 500 from a previous venue run, the restarted venue says so.
    with pytest.raises(UnexpectedResponse, match="409"):
        next(venue.broker.stream_bars(SYMBOL, "1m", after_index=500))


def test_account_summary_is_starting_equity_plus_realized_pnl(venue: Running) -> None:
    broker = venue.broker
    # Given a fresh account: its starting equity, nothing realized
    summary = httpx.get(f"{venue.url}/v1/accounts/SIM1/summary", timeout=5)
    assert summary.status_code == 200
    assert summary.json() == {"account": "SIM1", "starting_equity": "1000000", "realized_pnl": "0", "equity": "1000000"}
    assert broker.account_equity() == Decimal("1000000")
    # When it buys 2 and sells 1 back on a later bar
    broker.submit_order(OrderRequest("e1", SYMBOL, Side.BUY, OrderType.MARKET, Decimal(2)))
    venue.app.produce_one_round()
    broker.submit_order(OrderRequest("e2", SYMBOL, Side.SELL, OrderType.MARKET, Decimal(1)))
    venue.app.produce_one_round()
    fills, _ = broker.fills_since(None)
    bought, sold = (next(f.price for f in fills if f.client_order_id == cid) for cid in ("e1", "e2"))
    # Then one contract's difference × the ES point value (50) is realized, as exact decimal strings
    realized = (sold - bought) * 50
    assert broker.account_equity() == Decimal("1000000") + realized
    body = httpx.get(f"{venue.url}/v1/accounts/SIM1/summary", timeout=5).json()
    assert Decimal(body["realized_pnl"]) == realized and isinstance(body["equity"], str)


def test_account_summary_of_an_unknown_account_is_404(venue: Running) -> None:
    response = httpx.get(f"{venue.url}/v1/accounts/NOPE/summary", timeout=5)
    assert response.status_code == 404 and response.json()["error"] == "unknown_account"


def test_starting_equity_comes_from_the_command_line(tmp_path: Path) -> None:
    config = sim_server.parse_args(["--accounts", "SIM1,SIM2", "--equity", "250000", "--equity", "SIM2=5000.50",
                                    "--symbols", SYMBOL], today=date(2026, 1, 5))
    app = SimApp(config, JsonLog(io.StringIO()), now_ns=NOW_NS)
    assert app.venue.summary("SIM1").equity == Decimal("250000")
    assert app.venue.summary("SIM2").equity == Decimal("5000.50")
    with pytest.raises(SystemExit):
        sim_server.parse_args(["--equity", "SIM9=1"], today=date(2026, 1, 5))
