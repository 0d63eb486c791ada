"""The simulator's fill model, one rule at a time, with hand-made bars."""
from __future__ import annotations

from decimal import Decimal

import pytest

from brokers.base import Bar, OrderRequest
from brokers.sim.venue import (
    DUPLICATE_CLIENT_ID,
    OrderRejected,
    UnknownAccount,
    UnknownOrder,
    Venue,
    apply_fill,
)
from schema.enums import OrderStatus, OrderType, Side, TimeInForce

SYM = "ESZ6"
ACCOUNT = "SIM1"
MINUTE = 60_000_000_000
D = Decimal


class Bars:
    """Factory for consecutive bars of one symbol: ``bars(o, h, l, c)``."""

    def __init__(self, symbol: str = SYM) -> None:
        self.symbol = symbol
        self.index = 0

    def __call__(self, o: str, h: str, l: str, c: str) -> Bar:  # noqa: E741 - OHLC
        bar = Bar(self.symbol, "1m", self.index * MINUTE, D(o), D(h), D(l), D(c), D(100), self.index)
        self.index += 1
        return bar


@pytest.fixture
def bars() -> Bars:
    return Bars()


@pytest.fixture
def venue(bars: Bars) -> Venue:
    v = Venue([ACCOUNT, "SIM2"], {SYM: D("0.25"), "6EZ6": D("0.00005")})
    v.on_bar(bars("100", "101", "99", "100"))  # bar 0: the latest closed bar when orders arrive
    return v


def order(cid: str, side: Side, order_type: OrderType = OrderType.MARKET, quantity: str = "1", *,
          limit: str | None = None, stop: str | None = None, tif: TimeInForce = TimeInForce.DAY,
          symbol: str = SYM) -> OrderRequest:
    return OrderRequest(cid, symbol, side, order_type, D(quantity),
                        None if limit is None else D(limit), None if stop is None else D(stop), tif)


def fill_price(venue: Venue, bars: Bars, request: OrderRequest, *bar_specs: tuple[str, str, str, str]) -> Decimal | None:
    venue.submit(ACCOUNT, request)
    for spec in bar_specs:
        fills = venue.on_bar(bars(*spec))
        if fills:
            return fills[0].price
    return None


# ---------------------------------------------------------------- market


def test_market_order_fills_at_the_open_of_the_next_bar(venue: Venue, bars: Bars) -> None:
    # Given bar 0 is the latest closed bar, when a market buy arrives, then bar 1's open fills it.
    accepted = venue.submit(ACCOUNT, order("m1", Side.BUY))
    assert accepted.status is OrderStatus.ACCEPTED and accepted.submitted_after_index == 0
    fills = venue.on_bar(bars("100.50", "102", "100", "101"))
    assert [(f.price, f.quantity, f.bar_index, f.fill_id, f.seq) for f in fills] == [(D("100.50"), D(1), 1, "F1", 1)]
    assert fills[0].ts_ns == MINUTE
    filled = venue.order_by_client_id(ACCOUNT, "m1")
    assert filled is not None and filled.status is OrderStatus.FILLED
    assert (filled.filled_quantity, filled.average_price, filled.updated_ns) == (D(1), D("100.50"), MINUTE)


def test_market_order_before_any_bar_fills_on_the_first_bar() -> None:
    venue = Venue([ACCOUNT], {SYM: D("0.25")})
    venue.submit(ACCOUNT, order("m1", Side.SELL))
    fills = venue.on_bar(Bars()("100", "101", "99", "100"))
    assert [f.price for f in fills] == [D("100")]


def test_orders_only_fill_on_their_own_symbol(venue: Venue, bars: Bars) -> None:
    venue.submit(ACCOUNT, order("m1", Side.BUY))
    assert venue.on_bar(Bars("6EZ6")("1.1", "1.2", "1.0", "1.1")) == []
    assert len(venue.on_bar(bars("100", "100", "100", "100"))) == 1


# ---------------------------------------------------------------- limit


@pytest.mark.parametrize(
    ("side", "limit", "bar", "expected"),
    [
        (Side.BUY, "99", ("100", "101", "98.50", "100"), "99"),      # low reaches L → L
        (Side.BUY, "99", ("98", "99.50", "97", "98"), "98"),          # opens through L → open
        (Side.BUY, "99", ("99", "100", "99", "100"), "99"),           # opens exactly at L
        (Side.BUY, "99", ("100", "101", "99.25", "100"), None),       # never reaches L
        (Side.SELL, "101", ("100", "101.50", "99", "100"), "101"),    # high reaches L → L
        (Side.SELL, "101", ("102", "103", "101.50", "102"), "102"),   # opens through L → open
        (Side.SELL, "101", ("100", "100.75", "99", "100"), None),
    ],
)
def test_limit_fill_rules(venue: Venue, bars: Bars, side: Side, limit: str, bar: tuple[str, str, str, str],
                          expected: str | None) -> None:
    price = fill_price(venue, bars, order("l1", side, OrderType.LIMIT, limit=limit), bar)
    assert price == (None if expected is None else D(expected))


def test_limit_order_rests_until_a_later_bar_reaches_it(venue: Venue, bars: Bars) -> None:
    price = fill_price(venue, bars, order("l1", Side.BUY, OrderType.LIMIT, limit="98"),
                       ("100", "101", "99", "100"), ("100", "100", "99", "99"), ("99", "99", "97", "98"))
    assert price == D("98")


def test_the_bar_that_was_closed_at_submission_never_fills(bars: Bars) -> None:
    # Given bar 0 already crossed the limit before the order arrived, it must not fill on it.
    venue = Venue([ACCOUNT], {SYM: D("0.25")})
    bar0 = bars("100", "101", "90", "100")
    venue.on_bar(bar0)
    venue.submit(ACCOUNT, order("l1", Side.BUY, OrderType.LIMIT, limit="95"))
    assert venue.open_orders(ACCOUNT)[0].client_order_id == "l1"
    with pytest.raises(ValueError, match="not after"):
        venue.on_bar(bar0)


# ---------------------------------------------------------------- stop


@pytest.mark.parametrize(
    ("side", "stop", "bar", "expected"),
    [
        (Side.BUY, "101", ("100", "101.50", "99", "101"), "101"),     # high reaches S → S
        (Side.BUY, "101", ("102", "103", "101.50", "102"), "102"),    # opens through S → open
        (Side.BUY, "101", ("100", "100.75", "99", "100"), None),
        (Side.SELL, "99", ("100", "101", "98.50", "99"), "99"),       # low reaches S → S
        (Side.SELL, "99", ("98", "98.50", "97", "98"), "98"),         # opens through S → open
        (Side.SELL, "99", ("100", "101", "99.25", "100"), None),
    ],
)
def test_stop_fill_rules(venue: Venue, bars: Bars, side: Side, stop: str, bar: tuple[str, str, str, str],
                         expected: str | None) -> None:
    price = fill_price(venue, bars, order("s1", side, OrderType.STOP, stop=stop), bar)
    assert price == (None if expected is None else D(expected))


# ---------------------------------------------------------------- stop limit


def test_stop_limit_triggered_intrabar_fills_at_the_stop_when_the_limit_allows(venue: Venue, bars: Bars) -> None:
    price = fill_price(venue, bars, order("sl", Side.BUY, OrderType.STOP_LIMIT, stop="101", limit="101.50"),
                       ("100", "102", "99", "101"))
    assert price == D("101")


def test_stop_limit_gapping_past_its_limit_waits_for_the_next_bar(venue: Venue, bars: Bars) -> None:
    # Given a buy stop 101 limit 101.50, when a bar opens at 103 (through both), it triggers but does
    # not fill in that bar even though its low (101) touched the limit; the next bar fills it as a limit.
    venue.submit(ACCOUNT, order("sl", Side.BUY, OrderType.STOP_LIMIT, stop="101", limit="101.50"))
    assert venue.on_bar(bars("103", "104", "101", "102")) == []
    working = venue.order_by_client_id(ACCOUNT, "sl")
    assert working is not None and working.triggered and working.status is OrderStatus.ACCEPTED
    fills = venue.on_bar(bars("102", "102", "101.25", "101.50"))
    assert [f.price for f in fills] == [D("101.50")]


def test_sell_stop_limit_mirrors(venue: Venue, bars: Bars) -> None:
    assert fill_price(venue, bars, order("a", Side.SELL, OrderType.STOP_LIMIT, stop="99", limit="98.50"),
                      ("99.50", "100", "98", "98")) == D("99")
    assert fill_price(venue, bars, order("b", Side.SELL, OrderType.STOP_LIMIT, stop="99", limit="98.50"),
                      ("98", "98", "97", "97"), ("98", "98.75", "97", "98")) == D("98.50")


def test_untriggered_stop_limit_stays_untriggered(venue: Venue, bars: Bars) -> None:
    venue.submit(ACCOUNT, order("sl", Side.BUY, OrderType.STOP_LIMIT, stop="105", limit="106"))
    assert venue.on_bar(bars("100", "104.75", "99", "100")) == []
    working = venue.order_by_client_id(ACCOUNT, "sl")
    assert working is not None and not working.triggered


# ---------------------------------------------------------------- time in force


def test_ioc_expires_when_the_next_bar_does_not_fill_it(venue: Venue, bars: Bars) -> None:
    venue.submit(ACCOUNT, order("i1", Side.BUY, OrderType.LIMIT, limit="90", tif=TimeInForce.IOC))
    assert venue.on_bar(bars("100", "101", "99", "100")) == []
    expired = venue.order_by_client_id(ACCOUNT, "i1")
    assert expired is not None and expired.status is OrderStatus.EXPIRED
    assert venue.on_bar(bars("90", "90", "80", "85")) == []


def test_ioc_market_order_fills(venue: Venue, bars: Bars) -> None:
    assert fill_price(venue, bars, order("i1", Side.BUY, tif=TimeInForce.IOC), ("100", "101", "99", "100")) == D("100")


# ---------------------------------------------------------------- positions


def test_positions_average_in_reduce_and_flip(venue: Venue, bars: Bars) -> None:
    venue.submit(ACCOUNT, order("b1", Side.BUY, quantity="2"))
    venue.on_bar(bars("100", "100", "100", "100"))
    venue.submit(ACCOUNT, order("b2", Side.BUY, quantity="1"))
    venue.on_bar(bars("103", "103", "103", "103"))
    [position] = venue.positions(ACCOUNT)
    assert (position.symbol, position.quantity, position.average_price) == (SYM, D(3), D(101))
    venue.submit(ACCOUNT, order("s1", Side.SELL, quantity="1"))
    venue.on_bar(bars("110", "110", "110", "110"))
    [position] = venue.positions(ACCOUNT)
    assert (position.quantity, position.average_price) == (D(2), D(101))  # reducing keeps the average
    venue.submit(ACCOUNT, order("s2", Side.SELL, quantity="5"))
    venue.on_bar(bars("105", "105", "105", "105"))
    [position] = venue.positions(ACCOUNT)
    assert (position.quantity, position.average_price) == (D(-3), D(105))  # flipped: the rest at the fill
    venue.submit(ACCOUNT, order("b3", Side.BUY, quantity="3"))
    venue.on_bar(bars("104", "104", "104", "104"))
    assert venue.positions(ACCOUNT) == []  # flat positions are not listed
    assert venue.positions("SIM2") == []


@pytest.mark.parametrize(
    ("quantity", "average", "signed_fill", "price", "expected"),
    [
        ("0", None, "1", "100", ("1", "100")),
        ("1", "100", "1", "102", ("2", "101")),
        ("-2", "100", "-2", "98", ("-4", "99")),
        ("2", "100", "-1", "90", ("1", "100")),
        ("2", "100", "-2", "90", ("0", None)),
        ("2", "100", "-3", "90", ("-1", "90")),
    ],
)
def test_apply_fill(quantity: str, average: str | None, signed_fill: str, price: str,
                    expected: tuple[str, str | None]) -> None:
    got = apply_fill(D(quantity), None if average is None else D(average), D(signed_fill), D(price))
    assert got == (D(expected[0]), None if expected[1] is None else D(expected[1]))


# ---------------------------------------------------------------- fills, ids, lookups


def test_fills_since_is_per_account_and_sequenced(venue: Venue, bars: Bars) -> None:
    venue.submit(ACCOUNT, order("a1", Side.BUY))
    venue.submit("SIM2", order("b1", Side.BUY))
    venue.submit(ACCOUNT, order("a2", Side.SELL))
    venue.on_bar(bars("100", "100", "100", "100"))
    assert [(f.seq, f.fill_id, f.client_order_id) for f in venue.fills_since(ACCOUNT)] == [(1, "F1", "a1"), (3, "F3", "a2")]
    assert [f.client_order_id for f in venue.fills_since(ACCOUNT, 1)] == ["a2"]
    assert venue.fills_since(ACCOUNT, 3) == []
    assert [f.client_order_id for f in venue.fills_since("SIM2")] == ["b1"]
    assert [o.order_id for o in venue.orders(ACCOUNT)] == ["O1", "O3"]


def test_lookup_by_client_id_is_per_account(venue: Venue) -> None:
    venue.submit(ACCOUNT, order("c1", Side.BUY))
    assert venue.order_by_client_id(ACCOUNT, "c1") is not None
    assert venue.order_by_client_id("SIM2", "c1") is None
    assert venue.order_by_client_id(ACCOUNT, "nope") is None
    with pytest.raises(UnknownAccount):
        venue.order_by_client_id("SIM9", "c1")


# ---------------------------------------------------------------- rejections, cancel, modify


def test_duplicate_client_id_is_rejected_but_counted(venue: Venue, bars: Bars) -> None:
    first = venue.submit(ACCOUNT, order("c1", Side.BUY))
    with pytest.raises(OrderRejected) as info:
        venue.submit(ACCOUNT, order("c1", Side.SELL, quantity="5"))
    assert info.value.reason == DUPLICATE_CLIENT_ID
    assert venue.submissions == {"c1": 2}
    assert venue.order_by_client_id(ACCOUNT, "c1") == first  # the original is untouched
    assert len(venue.on_bar(bars("100", "100", "100", "100"))) == 1


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (order("r", Side.BUY, quantity="0"), "quantity"),
        (order("r", Side.BUY, quantity="-1"), "quantity"),
        (order("r", Side.BUY, quantity="1.5"), "quantity"),
        (order("r", Side.BUY, OrderType.LIMIT), "limit_price is required"),
        (order("r", Side.BUY, OrderType.STOP), "stop_price is required"),
        (order("r", Side.BUY, OrderType.STOP_LIMIT, limit="100"), "stop_price is required"),
        (order("r", Side.BUY, limit="100"), "limit_price is not allowed"),
        (order("r", Side.BUY, OrderType.LIMIT, limit="100.10"), "not a multiple of the tick 0.25"),
        (order("r", Side.BUY, OrderType.LIMIT, limit="-1"), "must be positive"),
        (order("r", Side.BUY, symbol="NQZ6"), "unknown symbol NQZ6"),
    ],
)
def test_invalid_orders_are_rejected_and_recorded(venue: Venue, request_: OrderRequest, reason: str) -> None:
    with pytest.raises(OrderRejected, match=reason) as info:
        venue.submit(ACCOUNT, request_)
    recorded = venue.order_by_client_id(ACCOUNT, "r")
    assert recorded is not None and recorded.status is OrderStatus.REJECTED and reason in (recorded.reason or "")
    assert info.value.order == recorded
    assert venue.open_orders(ACCOUNT) == []


def test_unknown_account_is_refused(venue: Venue) -> None:
    with pytest.raises(UnknownAccount):
        venue.submit("SIM9", order("c1", Side.BUY))
    assert venue.submissions == {"c1": 1}


def test_cancel_stops_a_working_order(venue: Venue, bars: Bars) -> None:
    venue.submit(ACCOUNT, order("l1", Side.BUY, OrderType.LIMIT, limit="99"))
    cancelled = venue.cancel(ACCOUNT, "l1")
    assert cancelled.status is OrderStatus.CANCELLED
    assert venue.on_bar(bars("98", "98", "98", "98")) == []
    with pytest.raises(OrderRejected, match="order is cancelled"):
        venue.cancel(ACCOUNT, "l1")
    with pytest.raises(UnknownOrder):
        venue.cancel(ACCOUNT, "nope")


def test_cancel_after_fill_is_rejected(venue: Venue, bars: Bars) -> None:
    venue.submit(ACCOUNT, order("m1", Side.BUY))
    venue.on_bar(bars("100", "100", "100", "100"))
    with pytest.raises(OrderRejected, match="order is filled"):
        venue.cancel(ACCOUNT, "m1")


def test_modify_changes_a_working_order_in_place(venue: Venue, bars: Bars) -> None:
    venue.submit(ACCOUNT, order("l1", Side.BUY, OrderType.LIMIT, limit="95"))
    modified = venue.modify(ACCOUNT, "l1", quantity=D(3), limit_price=D("99"))
    assert (modified.order_id, modified.quantity, modified.limit_price) == ("O1", D(3), D("99"))
    with pytest.raises(OrderRejected, match="tick"):
        venue.modify(ACCOUNT, "l1", limit_price=D("99.01"))
    assert venue.order_by_client_id(ACCOUNT, "l1") == modified  # a refused modify changes nothing
    fills = venue.on_bar(bars("100", "100", "98.75", "99"))
    assert [(f.price, f.quantity) for f in fills] == [(D("99"), D(3))]
    with pytest.raises(OrderRejected, match="cannot modify"):
        venue.modify(ACCOUNT, "l1", quantity=D(1))


def test_unknown_symbols_bars_are_refused() -> None:
    venue = Venue([ACCOUNT], {SYM: D("0.25")})
    with pytest.raises(ValueError, match="does not trade"):
        venue.on_bar(Bars("NQZ6")("1", "1", "1", "1"))
