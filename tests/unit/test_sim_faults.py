"""Fault rules of the venue simulator without sockets: parsing, matching, the seeded decision,
the fill feed that lags or repeats, and the app wiring them together on a fake clock."""
from __future__ import annotations

import io
import json
import random
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from brokers.base import OrderRequest
from brokers.sim.faults import (
    ANY_CALL,
    DEFAULT_DELAY_S,
    REQUEST_CALLS,
    Fault,
    FaultConfigError,
    FaultPlan,
    FaultRule,
    parse_fault_config,
)
from brokers.sim.fill_feed import FillFeed
from brokers.sim.server import JsonLog, SimApp, parse_args
from brokers.sim.venue import VenueFill
from schema.enums import OrderType, Side

TODAY = date(2026, 11, 22)
D = Decimal


def rule(call: str, fault: Fault, **fields: object) -> FaultRule:
    return FaultRule(call=call, fault=fault, **fields)  # type: ignore[arg-type]


def fired_indices(plan: FaultPlan, call: str, n: int) -> list[int | None]:
    return [None if (f := plan.for_request(call)) is None else f.index for _ in range(n)]


# ---------------------------------------------------------------- parsing


def test_a_config_gets_per_fault_defaults_and_the_default_seed() -> None:
    plan = parse_fault_config({"rules": [{"call": "submit", "fault": "ack_lost"},
                                         {"call": "*", "fault": "delay_fill", "probability": D("0.2"), "count": 3},
                                         {"call": "fills", "fault": "duplicate_fill", "delay_s": 1}]},
                              default_seed=7)
    assert plan.seed == 7
    assert plan.to_json() == {"seed": 7, "rules": [
        {"call": "submit", "fault": "ack_lost", "probability": 1.0, "count": None, "delay_s": 30.0, "hits": 0},
        {"call": "*", "fault": "delay_fill", "probability": 0.2, "count": 3, "delay_s": 2.0, "hits": 0},
        {"call": "fills", "fault": "duplicate_fill", "probability": 1.0, "count": None, "delay_s": 1.0, "hits": 0},
    ]}
    assert parse_fault_config({"seed": 1, "rules": []}, default_seed=7).to_json() == {"rules": [], "seed": 1}
    assert set(DEFAULT_DELAY_S) == set(Fault)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body must be a JSON object"),
        ({"rules": [], "sed": 1}, "'sed'"),
        ({"seed": 1}, "'rules'"),
        ({"seed": "1", "rules": []}, "'seed'"),
        ({"seed": True, "rules": []}, "'seed'"),
        ({"rules": ["submit"]}, "'rules[0]'"),
        ({"rules": [{"call": "submit", "fault": "error_500", "probabilty": 1}]}, "'rules[0].probabilty'"),
        ({"rules": [{"call": "submit", "fault": "boom"}]}, "'rules[0].fault'"),
        ({"rules": [{"call": "submit"}]}, "'rules[0].fault'"),
        ({"rules": [{"call": "submit", "fault": "error_500"}, {"call": "admin", "fault": "error_500"}]}, "'rules[1].call'"),
        ({"rules": [{"call": "submit", "fault": "delay_fill"}]}, "'rules[0].call'"),
        ({"rules": [{"call": "lookup", "fault": "duplicate_fill"}]}, "'rules[0].call'"),
        ({"rules": [{"call": "submit", "fault": "error_500", "probability": 1.5}]}, "'rules[0].probability'"),
        ({"rules": [{"call": "submit", "fault": "error_500", "probability": "0.5"}]}, "'rules[0].probability'"),
        ({"rules": [{"call": "submit", "fault": "error_500", "probability": True}]}, "'rules[0].probability'"),
        ({"rules": [{"call": "submit", "fault": "error_500", "count": -1}]}, "'rules[0].count'"),
        ({"rules": [{"call": "submit", "fault": "error_500", "count": 1.5}]}, "'rules[0].count'"),
        ({"rules": [{"call": "submit", "fault": "ack_lost", "delay_s": -1}]}, "'rules[0].delay_s'"),
        ({"rules": [{"call": "submit", "fault": "ack_lost", "delay_s": 1e9}]}, "'rules[0].delay_s'"),
    ],
)
def test_a_bad_config_names_the_field(body: object, field: str) -> None:
    with pytest.raises(FaultConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_fault_config(body, default_seed=0)


# ---------------------------------------------------------------- matching and firing


def test_probability_is_decided_by_the_seeded_generator_alone() -> None:
    # Given a rule that fires with probability 0.3, seed 42
    plan = FaultPlan([rule("submit", Fault.ERROR_500, probability=0.3)], seed=42)
    # When 1000 submits arrive
    pattern = [plan.for_request("submit") is not None for _ in range(1000)]
    # Then each decision is exactly the next draw of random.Random(42), reproducibly
    draws = random.Random(42)
    assert pattern == [draws.random() < 0.3 for _ in range(1000)]
    assert 250 < sum(pattern) < 350 and plan.hits == [sum(pattern)]
    again = FaultPlan([rule("submit", Fault.ERROR_500, probability=0.3)], seed=42)
    assert [again.for_request("submit") is not None for _ in range(1000)] == pattern
    other = FaultPlan([rule("submit", Fault.ERROR_500, probability=0.3)], seed=43)
    assert [other.for_request("submit") is not None for _ in range(1000)] != pattern


def test_a_counted_rule_is_exhausted_after_count_hits() -> None:
    plan = FaultPlan([rule("cancel", Fault.RESET_BEFORE, count=2)])
    assert fired_indices(plan, "cancel", 4) == [0, 0, None, None]
    assert plan.hits == [2]
    assert fired_indices(FaultPlan([rule("cancel", Fault.RESET_BEFORE, count=0)]), "cancel", 2) == [None, None]


def test_the_first_matching_rule_that_fires_wins() -> None:
    plan = FaultPlan([
        rule("lookup", Fault.ERROR_500),                 # does not match submits
        rule("submit", Fault.ACK_LOST, count=1),         # fires first, once
        rule("submit", Fault.ERROR_500, probability=0),  # matches but never fires
        rule(ANY_CALL, Fault.RESET_AFTER_ACCEPT),        # the fallback for every call
    ])
    assert fired_indices(plan, "submit", 3) == [1, 3, 3]
    assert fired_indices(plan, "lookup", 1) == [0]
    assert fired_indices(plan, "stream", 1) == [3]
    assert plan.hits == [1, 1, 0, 3]


def test_star_matches_every_call_and_fill_faults_never_match_requests() -> None:
    plan = FaultPlan([rule(ANY_CALL, Fault.DELAY_FILL), rule(ANY_CALL, Fault.ERROR_500)])
    assert [plan.for_request(call).index for call in REQUEST_CALLS] == [1] * len(REQUEST_CALLS)  # type: ignore[union-attr]
    fired = plan.for_fill()
    assert fired is not None and (fired.index, fired.fault, fired.delay_s) == (0, Fault.DELAY_FILL, 2.0)
    assert FaultPlan([rule("fills", Fault.ERROR_500)]).for_fill() is None
    with pytest.raises(ValueError, match="health"):
        plan.for_request("health")


def test_rules_that_cannot_fire_consume_no_randomness() -> None:
    # An exhausted rule and a certain rule in front must not change the draws of the one behind.
    plain = FaultPlan([rule("fills", Fault.ERROR_500, probability=0.5)], seed=5)
    crowded = FaultPlan([rule("fills", Fault.ERROR_500, probability=0.5, count=0),
                         rule("orders", Fault.ERROR_500),
                         rule("fills", Fault.ERROR_500, probability=0.5)], seed=5)
    assert [f is not None for f in (plain.for_request("fills") for _ in range(50))] == \
           [f is not None for f in (crowded.for_request("fills") for _ in range(50))]


# ---------------------------------------------------------------- the fill feed


def vfill(seq: int, account: str = "SIM1") -> VenueFill:
    return VenueFill(seq=seq, fill_id=f"F{seq}", order_id=f"O{seq}", account=account, client_order_id=f"c{seq}",
                     symbol="ESZ6", side=Side.BUY, quantity=D(1), price=D(5000), ts_ns=seq, bar_index=seq)


def feed_view(feed: FillFeed, account: str = "SIM1", after: int = 0) -> list[tuple[int, str]]:
    return [(m.seq, m.fill.fill_id) for m in feed.since(account, after)]


def test_without_faults_the_feed_is_the_venue_list() -> None:
    feed = FillFeed()
    for seq in (1, 2, 3):
        feed.publish(vfill(seq, "SIM2" if seq == 2 else "SIM1"), now=0.0)
    assert feed_view(feed) == [(1, "F1"), (3, "F3")]
    assert feed_view(feed, "SIM2") == [(2, "F2")]
    assert feed_view(feed, after=1) == [(3, "F3")] and feed.since("SIM1", 0, limit=1)[0].seq == 1


def test_a_delayed_fill_gets_a_seq_when_it_becomes_visible() -> None:
    feed = FillFeed()
    feed.publish(vfill(1), now=10.0, delay_s=2.0)
    feed.publish(vfill(2), now=10.5)
    feed.release_due(11.9)
    assert feed_view(feed) == [(1, "F2")] and feed.pending_count == 1
    # A client that read up to seq 1 still gets the late fill: it comes after its cursor.
    feed.release_due(12.0)
    assert feed_view(feed, after=1) == [(2, "F1")] and feed.pending_count == 0


def test_a_duplicated_fill_is_carried_twice_under_two_seqs() -> None:
    feed = FillFeed()
    feed.publish(vfill(1), now=0.0, repeat_after_s=0.0)
    feed.publish(vfill(2), now=0.0, repeat_after_s=5.0)
    feed.publish(vfill(3), now=1.0)
    assert feed_view(feed) == [(1, "F1"), (2, "F1"), (3, "F2"), (4, "F3")]
    feed.release_due(5.0)
    assert feed_view(feed, after=4) == [(5, "F2")]


# ---------------------------------------------------------------- the app, on a fake clock


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_app(tmp_path: Path, clock: Clock, *extra: str) -> tuple[SimApp, io.StringIO]:
    out = io.StringIO()
    config = parse_args(["--state-dir", str(tmp_path), "--symbols", "ESZ6", "--history", "3", *extra], today=TODAY)
    app = SimApp(config, JsonLog(out), now_ns=0, monotonic=clock)
    for _ in range(config.history):
        app.produce_one_round()
    return app, out


def market(cid: str) -> OrderRequest:
    return OrderRequest(cid, "ESZ6", Side.BUY, OrderType.MARKET, D(1))


def test_fill_faults_change_the_feed_not_the_truth(tmp_path: Path) -> None:
    clock = Clock()
    app, out = make_app(tmp_path, clock)
    # Given: the first fill is repeated, the second delayed by 2 s, the third untouched
    app.faults = FaultPlan([rule("fills", Fault.DUPLICATE_FILL, count=1), rule(ANY_CALL, Fault.DELAY_FILL, count=1)])
    for cid in ("a", "b", "c"):
        app.venue.submit("SIM1", market(cid))
        app.produce_one_round()
    # Then the venue holds three fills and a position of three at once …
    assert [f.client_order_id for f in app.venue.all_fills()] == ["a", "b", "c"]
    assert app.venue.positions("SIM1")[0].quantity == 3
    # … while the feed shows a twice and b not yet
    app.fill_feed.release_due(clock.now)
    assert [(m.seq, m.fill.client_order_id) for m in app.fill_feed.since("SIM1")] == [(1, "a"), (2, "a"), (3, "c")]
    clock.now += DEFAULT_DELAY_S[Fault.DELAY_FILL]
    app.fill_feed.release_due(clock.now)
    assert [(m.seq, m.fill.client_order_id) for m in app.fill_feed.since("SIM1", 3)] == [(4, "b")]
    logged = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["fault"], r["rule"], r["client_order_id"]) for r in logged if r["action"] == "fault_injected"] == [
        ("duplicate_fill", 0, "a"), ("delay_fill", 1, "b")]


def test_faults_file_sets_rules_from_the_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "faults.json"
    path.write_text(json.dumps({"rules": [{"call": "fills", "fault": "duplicate_fill", "probability": 0.5}]}))
    app, _ = make_app(tmp_path, Clock(), "--faults", str(path), "--seed", "9")
    assert app.faults.to_json() == {"seed": 9, "rules": [
        {"call": "fills", "fault": "duplicate_fill", "probability": 0.5, "count": None, "delay_s": 0.0, "hits": 0}]}
    plain, _ = make_app(tmp_path, Clock())
    assert plain.faults.rules == ()

    path.write_text(json.dumps({"rules": [{"call": "fills", "fault": "error_500", "count": "x"}]}))
    with pytest.raises(SystemExit) as info:
        parse_args(["--state-dir", str(tmp_path), "--faults", str(path)], today=TODAY)
    assert info.value.code == 2 and "rules[0].count" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--state-dir", str(tmp_path), "--faults", str(tmp_path / "missing.json")], today=TODAY)
    assert "cannot read" in capsys.readouterr().err

