"""The TradeStation adapter against the REAL venue simulator process speaking the TradeStation
dialect: orders, fills, lookup, bars and streams over real HTTP, the OAuth2 refresh flow with
rotating refresh tokens, token expiry mid-run, GoAway, silently dropped stream frames, brackets."""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from bus_harness import wait_until
from sim_process import CountingTokens, SimProcess, collect_bars, environment

from brokers.auth import LocalTokenSource
from brokers.base import Bar, BrokerFacade, BrokerOrder, OrderRequest
from brokers.errors import AuthNeedsOperator, OutcomeUnknown, Rejected, Retryable
from brokers.instruments import front_contract
from brokers.registry import build_facade
from brokers.tradestation import adapter
from brokers.tradestation.parse import FillCursor, order_confirm_id
from schema.enums import OrderStatus, OrderType, Side

pytestmark = pytest.mark.integration

TODAY = datetime.now(UTC).date()
ES = front_contract("ES", TODAY)
EC = front_contract("6E", TODAY)
ACCOUNTS = ("SIM1", "SIM2", "SIM3")
HEARTBEAT_AFTER_S = 4.0
"""The dialect sends a heartbeat after 5 idle seconds; a keep-alive this long after the last bar is one."""


class Sim(SimProcess):
    def config(self, account: str, **extra: Any) -> dict[str, Any]:
        return {"broker": "tradestation", "account": f"ts-int-{account}", "base_url": self.base_url,
                "token_url": f"{self.base_url}/oauth/token", "account_id": account, "timeout_s": 3, **extra}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    with Sim(tmp_path_factory.mktemp("ts-sim"), "tradestation", accounts=ACCOUNTS, symbols=(ES, EC),
             token_ttl_s=600, seed=5) as running:
        yield running


@pytest.fixture(scope="module", autouse=True)
def credentials() -> Iterator[None]:
    secrets: dict[str, str | None] = {}
    for account in (*ACCOUNTS, "dead", "wrong-client"):
        prefix = f"TRADEBUS_SECRET_TS_INT_{account.upper().replace('-', '_')}_"
        secrets[prefix + "CLIENT_ID"] = "sim-client"
        secrets[prefix + "CLIENT_SECRET"] = "wrong-secret" if account == "wrong-client" else "sim-secret"
        refresh = f"sim-refresh-{account}" if account in ACCOUNTS else "sim-refresh-NOPE"
        secrets[prefix + "REFRESH_TOKEN"] = "sim-refresh-SIM3" if account == "wrong-client" else refresh
    with environment(secrets):
        yield


@dataclass
class Broker:
    facade: BrokerFacade
    tokens: CountingTokens


@pytest.fixture(scope="module")
def broker(sim: Sim) -> Iterator[Broker]:
    """SIM1's one facade: its refresh tokens rotate, so a second owner would find them spent."""
    config = sim.config("SIM1")
    auth = adapter.authenticator(config)
    tokens = CountingTokens(LocalTokenSource(auth))
    facade = build_facade(config, tokens=tokens)
    assert type(facade) is BrokerFacade
    try:
        yield Broker(facade, tokens)
    finally:
        facade.close()
        auth.close()


def settled(facade: BrokerFacade, client_order_id: str, *statuses: OrderStatus) -> BrokerOrder:
    def probe() -> BrokerOrder | None:
        order = facade.order_by_client_id(client_order_id)
        return order if order is not None and order.status in statuses else None
    return wait_until(probe, f"{client_order_id} to be {'/'.join(s.value for s in statuses)}")


def last_close(facade: BrokerFacade, symbol: str = ES) -> Decimal:
    return facade.historical_bars(symbol, "1m", limit=1)[-1].close


def position(facade: BrokerFacade, symbol: str = ES) -> Decimal:
    return sum((p.quantity for p in facade.positions() if p.symbol == symbol), Decimal(0))


def contiguous(bars: list[Bar], after: int) -> None:
    assert [b.index for b in bars] == list(range(after + 1, after + 1 + len(bars)))


def market(cid: str, side: Side, symbol: str = ES) -> OrderRequest:
    return OrderRequest(cid, symbol, side, OrderType.MARKET, Decimal(1))


# ---------------------------------------------------------------- orders and fills


def test_market_orders_fill_and_fills_page_without_duplicates(sim: Sim, broker: Broker) -> None:
    facade = broker.facade
    _, cursor = facade.fills_since(None)
    before = position(facade)
    seen: list[str] = []

    def poll_until(cid: str) -> None:
        def probe() -> bool:
            nonlocal cursor
            fills, cursor = facade.fills_since(cursor)
            seen.extend(f.broker_fill_id for f in fills)
            return any(f.client_order_id == cid for f in fills)
        wait_until(probe, f"the fill of {cid}")

    placed = facade.submit_order(market("it.mkt.1", Side.BUY))
    assert (placed.status, placed.symbol, placed.client_order_id) == (OrderStatus.ACCEPTED, ES, "it.mkt.1")
    poll_until("it.mkt.1")
    assert position(facade) == before + 1
    facade.submit_order(market("it.mkt.2", Side.SELL))
    poll_until("it.mkt.2")
    assert position(facade) == before
    assert len(seen) == len(set(seen))  # never the same fill twice
    fills, again = facade.fills_since(cursor)
    assert (fills, again) == ([], cursor)
    # The cursor is the adapter's own: it names what it has seen, not a venue sequence.
    assert FillCursor.decode(cursor).seen[placed.broker_order_id].executed == 1
    assert (sim.submissions("it.mkt.1"), sim.submissions("it.mkt.2")) == (1, 1)
    filled = facade.order_by_client_id("it.mkt.1")
    assert filled is not None and filled.status is OrderStatus.FILLED and filled.average_price is not None


def test_limit_order_rests_is_modified_looked_up_and_cancelled(sim: Sim, broker: Broker) -> None:
    facade = broker.facade
    far_below = last_close(facade) - 500
    placed = facade.submit_order(OrderRequest("it.lim.1", ES, Side.BUY, OrderType.LIMIT, Decimal(1),
                                              limit_price=far_below))
    assert placed.status is OrderStatus.ACCEPTED
    assert "it.lim.1" in {o.client_order_id for o in facade.open_orders()}
    modified = facade.modify_order("it.lim.1", limit_price=far_below - Decimal("0.25"), quantity=Decimal(2))
    assert (modified.limit_price, modified.quantity, modified.status) == (
        far_below - Decimal("0.25"), Decimal(2), OrderStatus.ACCEPTED)
    found = facade.order_by_client_id("it.lim.1")
    assert found is not None and found.broker_order_id == placed.broker_order_id and found.quantity == 2
    cancelled = facade.cancel_order("it.lim.1")
    assert cancelled.status is OrderStatus.CANCELLED
    assert "it.lim.1" not in {o.client_order_id for o in facade.open_orders()}
    assert facade.order_by_client_id("it.never.sent") is None
    assert sim.submissions("it.lim.1") == 1


def test_stop_orders_trigger_or_rest(sim: Sim, broker: Broker) -> None:
    facade = broker.facade
    close = last_close(facade)
    before = position(facade)
    # A buy stop below the market and a sell stop above it trade at once; a buy stop-limit far above rests.
    facade.submit_order(OrderRequest("it.stp.1", ES, Side.BUY, OrderType.STOP, Decimal(1), stop_price=close - 100))
    facade.submit_order(OrderRequest("it.stp.2", ES, Side.SELL, OrderType.STOP, Decimal(1), stop_price=close + 100))
    resting = facade.submit_order(OrderRequest("it.stp.3", ES, Side.BUY, OrderType.STOP_LIMIT, Decimal(1),
                                               stop_price=close + 500, limit_price=close + 501))
    for cid in ("it.stp.1", "it.stp.2"):
        assert settled(facade, cid, OrderStatus.FILLED).filled_quantity == 1
    [working] = [o for o in facade.open_orders() if o.client_order_id == "it.stp.3"]
    assert (working.order_type, working.stop_price, working.limit_price) == (
        OrderType.STOP_LIMIT, close + 500, close + 501)
    assert facade.cancel_order("it.stp.3").status is OrderStatus.CANCELLED
    assert resting.broker_order_id == working.broker_order_id
    assert position(facade) == before


def test_venue_refusals_and_equity(sim: Sim, broker: Broker) -> None:
    facade = broker.facade
    with pytest.raises(Rejected, match="tick"):
        facade.submit_order(OrderRequest("it.rej.1", ES, Side.BUY, OrderType.LIMIT, Decimal(1),
                                         limit_price=Decimal("1000.1")))
    rejected = facade.order_by_client_id("it.rej.1")
    assert rejected is not None and rejected.status is OrderStatus.REJECTED
    # The venue refuses the repeated OrderConfirmID; the adapter answers with the order it has.
    again = facade.submit_order(OrderRequest("it.rej.1", ES, Side.BUY, OrderType.MARKET, Decimal(1)))
    assert (again.broker_order_id, again.status) == (rejected.broker_order_id, OrderStatus.REJECTED)
    assert sim.submissions("it.rej.1") == 2
    equity = facade.account_equity()
    assert isinstance(equity, Decimal) and equity > 0


def test_an_unknown_outcome_is_resolved_by_lookup(sim: Sim, broker: Broker) -> None:
    facade = broker.facade
    sim.admin("POST", "/v1/admin/faults", {"rules": [{"call": "submit", "fault": "reset_after_accept", "count": 1}]})
    try:
        with pytest.raises(OutcomeUnknown):
            facade.submit_order(OrderRequest("it.unk.1", ES, Side.BUY, OrderType.LIMIT, Decimal(1),
                                             limit_price=last_close(facade) - 400))
    finally:
        sim.admin("DELETE", "/v1/admin/faults")
    found = facade.order_by_client_id("it.unk.1")
    assert found is not None and found.status is OrderStatus.ACCEPTED  # it was placed; never resend
    assert sim.submissions("it.unk.1") == 1
    facade.cancel_order("it.unk.1")


# ---------------------------------------------------------------- bars


def test_historical_bars_are_closed_contiguous_and_page(broker: Broker) -> None:
    facade = broker.facade
    bars = facade.historical_bars(ES, "1m", limit=15)
    assert len(bars) == 15 and all(b.symbol == ES for b in bars)
    contiguous(bars[1:], bars[0].index)
    later = facade.historical_bars(ES, "1m", after_ts_ns=bars[-5].ts_ns, limit=3)
    assert later == bars[-4:-1]
    euro = facade.historical_bars("6E", "1m", limit=3)
    assert [b.symbol for b in euro] == ["6E"] * 3
    assert facade.historical_bars(EC, "1m", limit=3)[-1].index >= euro[-1].index


def test_stream_bars_arrive_in_order_after_the_backfill(broker: Broker) -> None:
    facade = broker.facade
    start = facade.historical_bars(ES, "1m", limit=5)[0].index
    stream = facade.stream_bars(ES, "1m", after_index=start)
    try:
        bars = collect_bars(stream, 10)
    finally:
        stream.close()
    contiguous(bars, start)


# ---------------------------------------------------------------- tokens


def test_token_expiry_mid_orders_refreshes_without_sending_twice(sim: Sim, broker: Broker) -> None:
    facade = broker.facade
    far_below = last_close(facade) - 500
    facade.submit_order(OrderRequest("it.exp.1", ES, Side.BUY, OrderType.LIMIT, Decimal(1), limit_price=far_below))
    refusals = broker.tokens.rejections
    assert sim.admin("POST", "/v1/admin/expire-tokens")["expired"] >= 1
    facade.submit_order(OrderRequest("it.exp.2", ES, Side.BUY, OrderType.LIMIT, Decimal(1), limit_price=far_below))
    assert broker.tokens.rejections == refusals + 1
    assert {"it.exp.1", "it.exp.2"} <= {o.client_order_id for o in facade.open_orders()}
    assert (sim.submissions("it.exp.1"), sim.submissions("it.exp.2")) == (1, 1)
    for cid in ("it.exp.1", "it.exp.2"):
        facade.cancel_order(cid)


def test_token_expiry_mid_stream_refreshes_and_the_stream_goes_on(sim: Sim, broker: Broker) -> None:
    facade = broker.facade
    stream = facade.stream_bars(ES, "1m")
    try:
        first = collect_bars(stream, 2)
        refusals = broker.tokens.rejections
        sim.admin("POST", "/v1/admin/expire-tokens")
        rest = collect_bars(stream, 6)
    finally:
        stream.close()
    contiguous(first[1:] + rest, first[0].index)
    assert broker.tokens.rejections == refusals + 1


def test_rotating_refresh_tokens(sim: Sim) -> None:
    auth = adapter.authenticator(sim.config("SIM2"))
    try:
        first = auth.obtain()
        assert first.refresh_token and first.refresh_token != "sim-refresh-SIM2"
        # The seeded token was spent by the rotation: reusing it is invalid_grant.
        spent = httpx.post(f"{sim.base_url}/oauth/token", timeout=5, data={
            "grant_type": "refresh_token", "client_id": "sim-client", "client_secret": "sim-secret",
            "refresh_token": "sim-refresh-SIM2"})
        assert (spent.status_code, spent.json()["error"]) == (403, "invalid_grant")
        second = auth.refresh(first)
        assert second.refresh_token not in (None, first.refresh_token)
        sim.admin("POST", "/tradestation/admin/rotation", {"rotate": False})
        third = auth.refresh(second)
        fourth = auth.refresh(third)
        assert third.refresh_token == fourth.refresh_token == second.refresh_token  # none returned: kept
        assert len({first.access_token, second.access_token, third.access_token, fourth.access_token}) == 4
    finally:
        sim.admin("POST", "/tradestation/admin/rotation", {"rotate": True})
        auth.close()


@pytest.mark.parametrize("account", ["dead", "wrong-client"])
def test_refusals_the_operator_must_fix(sim: Sim, account: str) -> None:
    with build_facade(sim.config(account) | {"account_id": "SIM3"}) as facade:
        with pytest.raises(AuthNeedsOperator) as caught:
            facade.open_orders()
    text = str(caught.value)
    assert "sim-secret" not in text and "wrong-secret" not in text and "sim-refresh" not in text


# ---------------------------------------------------------------- stream resync


def test_goaway_makes_the_caller_reconnect_from_its_last_bar(sim: Sim, broker: Broker) -> None:
    facade = broker.facade
    stream = facade.stream_bars(ES, "1m")
    try:
        bars = collect_bars(stream, 2)
        assert sim.admin("POST", "/tradestation/admin/goaway")["streams"] >= 1
        with pytest.raises(Retryable, match="GoAway"):
            bars += collect_bars(stream, 10_000)
    finally:
        stream.close()
    again = facade.stream_bars(ES, "1m", after_index=bars[-1].index)
    try:
        contiguous(collect_bars(again, 4), bars[-1].index)
    finally:
        again.close()


def test_silently_dropped_bars_come_back_by_resync_after_reconnect(sim: Sim, broker: Broker) -> None:
    facade = broker.facade
    stream = facade.stream_bars(ES, "1m")
    try:
        [last] = collect_bars(stream, 1)
        assert sim.admin("POST", "/tradestation/admin/drop", {"bars": 1_000_000})["streams"] >= 1
        dropped_at = time.monotonic()
        # The venue keeps closing bars, the stream sends none of them — only a heartbeat after 5 idle
        # seconds, so it looks healthy. (A bar already in flight when the drop began may still come.)
        while True:
            item = next(stream)
            waited = time.monotonic() - dropped_at
            if item is not None:
                assert waited < 2.0, f"bar {item.index} arrived {waited:.1f}s into the drop"
                last = item
            elif waited >= HEARTBEAT_AFTER_S:
                break  # a keep-alive this late can only be a heartbeat: no bar was sent
        produced = facade.historical_bars(ES, "1m", limit=1)[-1].index
        assert produced >= last.index + 10  # bars closed meanwhile, none reached us
        sim.admin("POST", "/tradestation/admin/goaway")
        with pytest.raises(Retryable, match="GoAway"):
            collect_bars(stream, 10_000)
    finally:
        stream.close()
    # The caller reconnects with its last index: the backfill brings every dropped bar back.
    resynced = facade.stream_bars(ES, "1m", after_index=last.index)
    try:
        recovered = collect_bars(resynced, produced - last.index + 2)
    finally:
        resynced.close()
    contiguous(recovered, last.index)


def test_a_hole_in_the_live_stream_is_mended_at_once(sim: Sim, broker: Broker) -> None:
    facade = broker.facade
    stream = facade.stream_bars(ES, "1m")
    try:
        [first] = collect_bars(stream, 1)
        sim.admin("POST", "/tradestation/admin/drop", {"bars": 3})
        rest = collect_bars(stream, 8)
    finally:
        stream.close()
    contiguous(rest, first.index)


# ---------------------------------------------------------------- brackets


def test_bracket_goes_live_when_the_entry_fills_and_one_leg_cancels_the_other(sim: Sim, broker: Broker) -> None:
    facade = broker.facade
    close = last_close(facade)
    before = position(facade)
    take, stop = "it.brk.1" + adapter.TAKE_PROFIT_SUFFIX, "it.brk.1" + adapter.STOP_LOSS_SUFFIX
    placed = facade.submit_bracket(market("it.brk.1", Side.BUY), take_profit=close - 200, stop_loss=close - 300)
    assert (placed.client_order_id, placed.symbol, placed.side, placed.status) == (
        "it.brk.1", ES, Side.BUY, OrderStatus.ACCEPTED)
    settled(facade, "it.brk.1", OrderStatus.FILLED)
    # The take-profit (a sell limit below the market) fills on the first bar after it goes live.
    filled = settled(facade, take, OrderStatus.FILLED)
    assert (filled.side, filled.order_type, filled.limit_price, filled.quantity) == (
        Side.SELL, OrderType.LIMIT, close - 200, Decimal(1))
    cancelled = settled(facade, stop, OrderStatus.CANCELLED)
    assert (cancelled.side, cancelled.order_type, cancelled.stop_price, cancelled.filled_quantity) == (
        Side.SELL, OrderType.STOP, close - 300, Decimal(0))
    assert position(facade) == before
    # The legs' ids travel hashed (":" is not an OrderConfirmID character): the venue counts those.
    assert [sim.submissions(order_confirm_id(c)) for c in ("it.brk.1", take, stop)] == [1, 1, 1]


def test_exit_bracket_around_a_position(sim: Sim, broker: Broker) -> None:
    facade = broker.facade
    before = position(facade)
    facade.submit_order(market("it.xbk.0", Side.BUY))
    settled(facade, "it.xbk.0", OrderStatus.FILLED)
    close = last_close(facade)
    take = OrderRequest("it.xbk.1", ES, Side.SELL, OrderType.LIMIT, Decimal(1), limit_price=close + 300)
    stop = OrderRequest("it.xbk.2", ES, Side.SELL, OrderType.STOP, Decimal(1), stop_price=close + 200)
    first, second = adapter.submit_exit_bracket(facade, take, stop)
    assert first.status is second.status is OrderStatus.ACCEPTED
    assert (first.symbol, second.symbol) == (ES, ES)
    # The stop sits above the market: it trades at once, and its sibling is cancelled.
    settled(facade, "it.xbk.2", OrderStatus.FILLED)
    settled(facade, "it.xbk.1", OrderStatus.CANCELLED)
    assert position(facade) == before
