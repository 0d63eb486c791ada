"""Portfolio heat: open risk, the ok → warned → blocked ladder, its configuration, and where the
equity it is measured against comes from (the simulator's ledger, the account's cache)."""
from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path

import pytest

from brokers.errors import NotSupported, Retryable
from brokers.sim.venue import Venue, realized_points
from brokers.base import Bar, OrderRequest
from schema.enums import HeatState, OrderStatus, OrderType, Side, TimeInForce
from schema.order_fsm import OrderState
from services.account import main as account_main
from services.account.heat import (
    HeatConfigError,
    HeatThresholds,
    Holding,
    describe,
    heat_fraction,
    next_heat,
    open_risk,
)
from services.config import ConfigError, load_config

D = Decimal
ES = "ESZ6"
E6 = "6EZ6"
RULES = HeatThresholds(warn_pct=D("0.05"), block_pct=D("0.10"), risk_per_contract={"ES": D("2000"), "6E": D("2500")},
                       default_risk_per_contract=D("3000"))

OK, WARNED, BLOCKED = HeatState.OK, HeatState.WARNED, HeatState.BLOCKED


def order(side: str, qty: str, *, kind: str = "market", limit: str | None = None, stop: str | None = None,
          symbol: str = ES, filled: str = "0", status: str = "accepted", n: int = 1) -> OrderState:
    return OrderState(
        client_order_id=f"s.1.{n}", session="s", signal=n, symbol=symbol, side=Side(side),
        order_type=OrderType(kind), quantity=D(qty), limit_price=None if limit is None else D(limit),
        stop_price=None if stop is None else D(stop), time_in_force=TimeInForce.GTC, status=OrderStatus(status),
        previous_status=None, broker_order_id=None, filled_quantity=D(filled), average_price=None, reason=None,
        version=1)


def long(qty: str, avg: str | None, symbol: str = ES) -> dict[str, Holding]:
    return {symbol: Holding(D(qty), None if avg is None else D(avg))}


# ---------------------------------------------------------------- the ladder


@pytest.mark.parametrize("current, heat, expected", [
    # from ok: up immediately
    (OK, "0", OK), (OK, "0.0499", OK), (OK, "0.05", WARNED), (OK, "0.0999", WARNED), (OK, "0.10", BLOCKED),
    (OK, "3", BLOCKED),
    # from warned: up at block, down only below warn
    (WARNED, "0.10", BLOCKED), (WARNED, "0.05", WARNED), (WARNED, "0.0999", WARNED), (WARNED, "0.0499", OK),
    # from blocked: the hysteresis band [warn, block) keeps it blocked; below warn straight to ok
    (BLOCKED, "0.25", BLOCKED), (BLOCKED, "0.10", BLOCKED), (BLOCKED, "0.0999", BLOCKED), (BLOCKED, "0.05", BLOCKED),
    (BLOCKED, "0.0499", OK), (BLOCKED, "0", OK),
])
def test_every_rung_change(current: HeatState, heat: str, expected: HeatState) -> None:
    assert next_heat(current, D(heat), RULES) is expected


def test_a_blocked_session_must_cut_below_warn_before_it_can_add_again() -> None:
    # Given heat climbing through both levels
    rung = OK
    seen = []
    for heat in ("0.02", "0.06", "0.11", "0.09", "0.06", "0.0500", "0.049", "0.07"):
        rung = next_heat(rung, D(heat), RULES)
        seen.append(rung)
    # Then dipping just under block (0.09, 0.06, exactly 0.05) does not leave blocked; 0.049 does
    assert seen == [OK, WARNED, BLOCKED, BLOCKED, BLOCKED, BLOCKED, OK, WARNED]


def test_the_ladder_accepts_rung_names_as_stored() -> None:
    assert next_heat("blocked", D("0.07"), RULES) is BLOCKED  # type: ignore[arg-type]


@pytest.mark.parametrize("warn, block", [("0.10", "0.10"), ("0.2", "0.1"), ("0", "0.1"), ("-0.01", "0.1")])
def test_thresholds_that_make_no_ladder_are_refused(warn: str, block: str) -> None:
    with pytest.raises(HeatConfigError, match="warn_pct"):
        HeatThresholds(warn_pct=D(warn), block_pct=D(block))


def test_heat_is_an_exact_decimal_fraction_and_no_equity_is_infinitely_hot() -> None:
    assert heat_fraction(D("950"), D("1000000")) == D("0.00095")
    assert next_heat(OK, heat_fraction(D("1"), D("0")), RULES) is BLOCKED
    assert next_heat(OK, heat_fraction(D("0"), D("-5")), RULES) is BLOCKED
    assert describe(D("0.125"), D("125000"), D("1000000")) == "heat 12.50% (125000 at risk of 1000000 equity)"


# ---------------------------------------------------------------- open risk


def test_no_position_no_orders_no_risk() -> None:
    assert open_risk({}, [], RULES) == 0
    assert open_risk({ES: Holding(D(0))}, [], RULES) == 0


def test_without_a_stop_each_contract_costs_the_configured_risk_of_its_root() -> None:
    assert open_risk(long("2", "5000"), [], RULES) == D("4000")
    assert open_risk(long("-3", "1.08", E6), [], RULES) == D("7500")
    # a root with no entry of its own: the default
    assert open_risk(long("1", "75", "CLZ6"), [], RULES) == D("3000")


def test_a_protective_stop_prices_risk_by_its_distance_exactly() -> None:
    # long 2 ES at 5000.25, sell stop at 4990.75: 9.5 points × 2 × 50
    risk = open_risk(long("2", "5000.25"), [order("sell", "2", kind="stop", stop="4990.75")], RULES)
    assert risk == D("950.00") and str(heat_fraction(risk, D("1000000"))) == "0.00095"
    # short 2 6E at 1.08500, buy stop at 1.09000: 0.005 × 2 × 125000
    assert open_risk(long("-2", "1.08500", E6), [order("buy", "2", kind="stop", stop="1.09000", symbol=E6)],
                     RULES) == D("1250")


def test_stop_limit_protects_like_a_stop() -> None:
    stop_limit = order("sell", "1", kind="stop_limit", stop="4990", limit="4989")
    assert open_risk(long("1", "5000"), [stop_limit], RULES) == D("500")


def test_contracts_a_stop_does_not_cover_cost_the_per_contract_risk() -> None:
    # long 3, a stop for 1: 10 points × 50 for one, 2 × 2000 for the rest
    assert open_risk(long("3", "5000"), [order("sell", "1", kind="stop", stop="4990")], RULES) == D("4500")


def test_with_several_stops_the_farthest_cover_first() -> None:
    stops = [order("sell", "1", kind="stop", stop="4995", n=1), order("sell", "1", kind="stop", stop="4980", n=2)]
    assert open_risk(long("2", "5000"), stops, RULES) == D("1250")  # 20 + 5 points
    # long 2 with stops for 3: the far one covers first (100 + 5 points), not 2 × 5 points; the
    # reversal if both fire (short 1, unprotected: 2000) is smaller
    stops = [order("sell", "2", kind="stop", stop="4995", n=1), order("sell", "1", kind="stop", stop="4900", n=2)]
    assert open_risk(long("2", "5000"), stops, RULES) == D("5250")


def test_a_stop_past_the_entry_locks_in_a_gain() -> None:
    assert open_risk(long("1", "5000"), [order("sell", "1", kind="stop", stop="5010")], RULES) == 0


def test_open_orders_count_as_filled_in_full_like_adds_risk() -> None:
    # long 1, a resting buy limit 2 (only 1.5 left) → 2.5 contracts exposed
    buy = order("buy", "2", kind="limit", limit="4990", filled="0.5")
    assert open_risk(long("1", "5000"), [buy], RULES) == D("5000")
    # a sell that reduces shrinks it; an unknown order counts as live
    assert open_risk(long("2", "5000"), [order("sell", "1", status="unknown")], RULES) == D("2000")


def test_the_worst_entry_is_the_reference_for_the_stop_distance() -> None:
    # long 1 at 5000 and a buy limit at 5004: the stop at 4990 is 14 points from the worst entry
    orders = [order("buy", "1", kind="limit", limit="5004", n=1), order("sell", "2", kind="stop", stop="4990", n=2)]
    assert open_risk(long("1", "5000"), orders, RULES) == D("1400")


def test_flat_entry_with_a_bracket_stop_is_priced_from_the_entry_price() -> None:
    orders = [order("buy", "1", kind="limit", limit="5000", n=1), order("sell", "1", kind="stop", stop="4992", n=2)]
    assert open_risk({}, orders, RULES) == D("400")


def test_a_market_entry_from_flat_has_no_reference_so_the_stop_cannot_price_it() -> None:
    orders = [order("buy", "1", n=1), order("sell", "1", kind="stop", stop="4992", n=2)]
    assert open_risk({}, orders, RULES) == D("2000")


def test_stop_entries_on_both_sides_take_the_worse_direction() -> None:
    # flat with an OCO-like breakout: buy stop 5010, sell stop 4990 (2 contracts)
    orders = [order("buy", "1", kind="stop", stop="5010", n=1), order("sell", "2", kind="stop", stop="4990", n=2)]
    # up: long 1 from 5010 protected by the sell stop (20 points, 1 contract) = 1000
    # down: short 2 from 4990 protected by the buy stop for 1 contract (20 points) + 1 × 2000 = 3000
    assert open_risk({}, orders, RULES) == D("3000")


def test_a_stop_that_reverses_the_position_is_priced_as_the_reversal() -> None:
    # long 1, sell stop for 3: if it triggers the session is short 2 with nothing protecting it
    assert open_risk(long("1", "5000"), [order("sell", "3", kind="stop", stop="4990")], RULES) == D("4000")


def test_risk_is_summed_over_symbols() -> None:
    positions = {**long("1", "5000"), **long("2", "1.08", E6)}
    assert open_risk(positions, [order("buy", "1", symbol="NQZ6")], RULES) == D("2000") + D("5000") + D("3000")


# ---------------------------------------------------------------- configuration


def _load(tmp_path: Path, toml: str):
    (tmp_path / "tradebus.toml").write_text(toml)
    return load_config(tmp_path)


def test_defaults_keep_the_demo_far_below_warn(tmp_path: Path) -> None:
    risk = _load(tmp_path, "").risk
    assert risk.equity is None
    assert risk.thresholds.warn_pct == D("0.05") and risk.thresholds.block_pct == D("0.10")
    # the demo: ES ×1 and 6E ×2 on SIM1 with the simulator's 1 000 000 equity
    worst = open_risk({**long("1", "5000"), **long("2", "1.08", E6)}, [], risk.thresholds)
    assert heat_fraction(worst, D("1000000")) < risk.thresholds.warn_pct / 5


def test_risk_table_is_read_exactly(tmp_path: Path) -> None:
    risk = _load(tmp_path, '[risk]\nwarn_pct = 0.03\nblock_pct = "0.07"\nequity = 250000\n'
                           'default_risk_per_contract = "123.45"\n[risk.per_contract]\nES = 1500\n').risk
    assert risk.thresholds.warn_pct == D("0.03") and risk.thresholds.block_pct == D("0.07")
    assert risk.equity == D("250000")
    assert risk.thresholds.per_contract("ESZ6") == D("1500")
    assert risk.thresholds.per_contract("6EZ6") == D("2500")  # untouched default
    assert risk.thresholds.default_risk_per_contract == D("123.45")


@pytest.mark.parametrize("toml, message", [
    ('[risk]\nwarn_pct = 0.1\nblock_pct = 0.1\n', "warn_pct (0.1) must be below block_pct (0.1)"),
    ('[risk]\nwarn_pct = 5\n', "fraction of equity"),
    ('[risk]\nblock_pct = "lots"\n', "block_pct is not a number"),
    ('[risk]\nequity = 0\n', "equity must be > 0"),
    ('[risk]\nequity = true\n', "equity must be a number"),
    ('[risk]\nper_contract = 3\n', "per_contract must be a table"),
    ('[risk.per_contract]\nZZ = 1\n', "per_contract.ZZ: unknown root"),
    ('[risk.per_contract]\nES = -1\n', "per_contract.ES must be >= 0"),
    ('[risk]\nwarn = 0.1\n', "unknown key"),
])
def test_bad_risk_settings_are_named(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match="risk") as caught:
        _load(tmp_path, toml)
    assert message in str(caught.value)


# ---------------------------------------------------------------- equity: the simulator's ledger


def bar(index: int, price: str, symbol: str = ES) -> Bar:
    p = D(price)
    return Bar(symbol, "1m", index * 60, p, p, p, p, D(1), index)


@pytest.mark.parametrize("quantity, average, fill, price, points", [
    ("0", None, "1", "5000", "0"),            # opening
    ("1", "5000", "1", "5010", "0"),          # adding
    ("2", "5000", "-1", "5010.25", "10.25"),  # reducing a long at a gain
    ("-2", "5000", "3", "5004", "-8"),        # short 2 bought back 4 points higher, then 1 long opened
    ("1", "5000", "-3", "4990", "-10"),       # crossing through flat realizes only the contract closed
])
def test_realized_points(quantity: str, average: str | None, fill: str, price: str, points: str) -> None:
    assert realized_points(D(quantity), None if average is None else D(average), D(fill), D(price)) == D(points)


def test_venue_equity_is_starting_equity_plus_realized_pnl_in_currency() -> None:
    venue = Venue(["A", "B"], {ES: D("0.25")}, point_values={ES: D("50")}, starting_equity={"B": D("5000")})
    venue.on_bar(bar(0, "5000"))
    venue.submit("A", OrderRequest("a1", ES, Side.BUY, OrderType.MARKET, D(2)))
    venue.on_bar(bar(1, "5000.25"))
    venue.submit("A", OrderRequest("a2", ES, Side.SELL, OrderType.MARKET, D(1)))
    venue.on_bar(bar(2, "4990.50"))
    summary = venue.summary("A")
    assert summary.starting_equity == D("1000000")
    assert summary.realized_pnl == D("-487.50")  # 9.75 points × 1 × 50
    assert summary.equity == D("999512.50")
    assert venue.summary("B").equity == D("5000")  # untouched, its own start


# ---------------------------------------------------------------- equity: the account's cache


class FakeBroker:
    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.calls = 0

    def account_equity(self) -> Decimal:
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def cache(broker: FakeBroker, configured: str | None = None) -> tuple[account_main.EquityCache, Clock]:
    clock = Clock()
    return account_main.EquityCache(broker, None if configured is None else D(configured),
                                    logging.getLogger("test.heat"), clock=clock), clock


def test_equity_is_asked_of_the_broker_once_per_ttl() -> None:
    broker = FakeBroker(D("1000"), D("2000"))
    equity, clock = cache(broker)
    assert [equity.get(), equity.get()] == [D("1000"), D("1000")]
    assert broker.calls == 1
    clock.now += account_main.EQUITY_TTL_S
    assert equity.get() == D("2000") and broker.calls == 2


def test_a_broker_without_equity_falls_back_to_the_configured_figure_and_is_not_asked_again() -> None:
    broker = FakeBroker(NotSupported("x", "account equity"))
    equity, clock = cache(broker, configured="50000")
    assert equity.get() == D("50000")
    clock.now += 3600
    assert equity.get() == D("50000") and broker.calls == 1


def test_no_equity_anywhere_means_no_heat_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    equity, _ = cache(FakeBroker(NotSupported("x", "account equity")))
    with caplog.at_level(logging.WARNING, logger="test.heat"):
        assert equity.get() is None and equity.get() is None
    assert [r.action for r in caplog.records].count("heat_not_measured") == 1  # type: ignore[attr-defined]


def test_a_failing_broker_keeps_the_last_figure_and_is_not_hammered() -> None:
    broker = FakeBroker(D("1000"), Retryable("down", broker="x"))
    equity, clock = cache(broker, configured="1")
    assert equity.get() == D("1000")
    clock.now += account_main.EQUITY_TTL_S
    assert equity.get() == D("1000") and broker.calls == 2
    assert equity.get() == D("1000") and broker.calls == 2  # the failure is not retried before the TTL


def test_a_failing_broker_never_answered_uses_the_configured_figure() -> None:
    equity, _ = cache(FakeBroker(Retryable("down", broker="x")), configured="70000")
    assert equity.get() == D("70000")


def test_the_facade_answers_not_supported_for_a_broker_without_equity() -> None:
    from brokers.base import BrokerFacade, Capabilities, StaticRegistry
    from brokers.symbols import CanonicalSymbolAdapter

    class NoEquity:  # an execution role without the optional extra
        pass

    class WithEquity:
        def account_equity(self) -> Decimal:
            return D("42")

    caps = StaticRegistry("x", Capabilities(execution=True, market_data=False, lookup_by_client_id=True))
    without = BrokerFacade("x", "A", caps, CanonicalSymbolAdapter("x"), execution=NoEquity())  # type: ignore[arg-type]
    with pytest.raises(NotSupported, match="account equity"):
        without.account_equity()
    assert BrokerFacade("x", "A", caps, CanonicalSymbolAdapter("x"),
                        execution=WithEquity()).account_equity() == D("42")  # type: ignore[arg-type]
