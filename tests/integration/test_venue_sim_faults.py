"""Injected faults, end to end: the venue simulator as a real process, the real ``sim`` adapter.

For each fault: what the adapter raises (the engine's retry policy reads only that), and what the
venue holds afterwards (what the engine finds when it looks the order up).
"""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import pytest

from brokers.base import BrokerFacade, BrokerFill, BrokerOrder, OrderRequest
from brokers.errors import BrokerUnavailable, OutcomeUnknown, Rejected, Retryable
from brokers.registry import build_facade
from schema.enums import OrderStatus, OrderType, Side

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_DEADLINE_S = 20.0
DEADLINE_S = 10.0
POLL_S = 0.02
CLIENT_TIMEOUT_S = 1.0
SYMBOL = "ESZ6"
FAR_BELOW = Decimal("1000")
"""A buy limit the random walk from 5000 never reaches: the order rests."""
_ids = count(1)


@dataclass(frozen=True)
class VenueProcess:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def faults_logged(self) -> list[dict[str, Any]]:
        lines = (json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip())
        return [line for line in lines if line.get("action") == "fault_injected"]


def start_venue(tmp_path: Path, *extra: str) -> VenueProcess:
    state_dir = tmp_path / "state"
    log_path = tmp_path / "venue-sim.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "brokers.sim.server", "--port", "0", "--state-dir", str(state_dir),
             "--pace", "0.05", "--symbols", SYMBOL, "--accounts", "SIM1,SIM2", "--history", "20", "--seed", "11",
             *extra],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
    ready = state_dir / "venue-sim.json"
    deadline = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"venue-sim exited with {process.returncode}:\n{log_path.read_text()}")
        if ready.exists():
            return VenueProcess(process, json.loads(ready.read_text())["url"], log_path)
        time.sleep(POLL_S)
    process.kill()
    process.wait(timeout=10)
    pytest.fail(f"venue-sim not ready within {READY_DEADLINE_S}s:\n{log_path.read_text()}")


def stop_venue(venue: VenueProcess) -> None:
    if venue.process.poll() is None:
        venue.process.kill()
        venue.process.wait(timeout=10)


@pytest.fixture(scope="module")
def venue_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VenueProcess]:
    venue = start_venue(tmp_path_factory.mktemp("venue"))
    try:
        yield venue
    finally:
        stop_venue(venue)


@pytest.fixture
def admin(venue_sim: VenueProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=venue_sim.url, timeout=5) as client:
        client.delete("/v1/admin/faults").raise_for_status()
        yield client
        client.delete("/v1/admin/faults").raise_for_status()


@pytest.fixture
def broker(venue_sim: VenueProcess, admin: httpx.Client) -> Iterator[BrokerFacade]:
    facade = build_facade({"broker": "sim", "base_url": venue_sim.url, "account": "SIM1",
                           "timeout_s": CLIENT_TIMEOUT_S})
    yield facade
    facade.close()


def set_faults(admin: httpx.Client, *rules: dict[str, Any], seed: int = 1) -> dict[str, Any]:
    response = admin.post("/v1/admin/faults", json={"seed": seed, "rules": list(rules)})
    assert response.status_code == 200, response.text
    return response.json()


def submissions(admin: httpx.Client, cid: str) -> int:
    return int(admin.get("/v1/admin/stats").json()["submissions"].get(cid, 0))


def new_id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


def resting(cid: str) -> OrderRequest:
    return OrderRequest(cid, SYMBOL, Side.BUY, OrderType.LIMIT, Decimal(1), limit_price=FAR_BELOW)


def market(cid: str, side: Side = Side.BUY) -> OrderRequest:
    return OrderRequest(cid, SYMBOL, side, OrderType.MARKET, Decimal(1))


def wait_for(what: str, probe: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(POLL_S)
    pytest.fail(f"not within {DEADLINE_S}s: {what}")


def position(broker: BrokerFacade) -> Decimal:
    return sum((p.quantity for p in broker.positions() if p.symbol == SYMBOL), Decimal(0))


def filled(broker: BrokerFacade, cid: str) -> BrokerOrder | None:
    order = broker.order_by_client_id(cid)
    return order if order is not None and order.status is OrderStatus.FILLED else None


def fills_of(fills: list[BrokerFill], cid: str) -> list[str]:
    return [f.broker_fill_id for f in fills if f.client_order_id == cid]


def fill_ids_since(broker: BrokerFacade, cursor: str | None, cid: str) -> tuple[list[str], str | None]:
    fills, next_cursor = broker.fills_since(cursor)
    return fills_of(fills, cid), next_cursor


# ---------------------------------------------------------------- commands: OutcomeUnknown, then look it up

COMMAND_FAULTS = [
    # fault, did the venue act?
    ("error_500", False),
    ("accept_then_500", True),
    ("ack_lost", True),
    ("reset_before", False),
    ("reset_after_accept", True),
]


@pytest.mark.parametrize(("fault", "acts"), COMMAND_FAULTS)
def test_a_faulted_submit_is_outcome_unknown_and_the_lookup_tells(
        venue_sim: VenueProcess, admin: httpx.Client, broker: BrokerFacade, fault: str, acts: bool) -> None:
    cid = new_id(f"submit-{fault}")
    set_faults(admin, {"call": "submit", "fault": fault, "count": 1})
    # When the engine submits
    with pytest.raises(OutcomeUnknown):
        broker.submit_order(resting(cid))
    # Then asking the venue (while an ack_lost connection is still held open) tells what happened
    found = broker.order_by_client_id(cid)
    if acts:
        assert found is not None and found.status is OrderStatus.ACCEPTED
        assert submissions(admin, cid) == 1
    else:
        assert found is None
        assert submissions(admin, cid) == 0
    assert admin.get("/v1/admin/faults").json()["rules"][0]["hits"] == 1
    [logged] = [line for line in venue_sim.faults_logged() if line["client_order_id"] == cid]
    assert (logged["call"], logged["fault"], logged["rule"]) == ("submit", fault, 0)
    # And the rule is spent: the next submit goes through untouched
    assert broker.submit_order(resting(new_id("after"))).status is OrderStatus.ACCEPTED


@pytest.mark.parametrize(("fault", "acts"), COMMAND_FAULTS)
def test_a_faulted_cancel_or_modify_is_outcome_unknown(
        admin: httpx.Client, broker: BrokerFacade, fault: str, acts: bool) -> None:
    to_cancel, to_modify = new_id(f"cancel-{fault}"), new_id(f"modify-{fault}")
    broker.submit_order(resting(to_cancel))
    broker.submit_order(resting(to_modify))
    set_faults(admin, {"call": "cancel", "fault": fault, "count": 1}, {"call": "modify", "fault": fault, "count": 1})

    with pytest.raises(OutcomeUnknown):
        broker.cancel_order(to_cancel)
    with pytest.raises(OutcomeUnknown):
        broker.modify_order(to_modify, limit_price=FAR_BELOW - 1)

    cancelled, modified = broker.order_by_client_id(to_cancel), broker.order_by_client_id(to_modify)
    assert cancelled is not None and modified is not None
    assert cancelled.status is (OrderStatus.CANCELLED if acts else OrderStatus.ACCEPTED)
    assert modified.limit_price == (FAR_BELOW - 1 if acts else FAR_BELOW)
    assert [r["hits"] for r in admin.get("/v1/admin/faults").json()["rules"]] == [1, 1]


def test_a_resent_submit_after_a_lost_ack_counts_twice(admin: httpx.Client, broker: BrokerFacade) -> None:
    # What the chaos checker looks for: an engine that resends blindly is caught by submissions.
    cid = new_id("blind")
    set_faults(admin, {"call": "submit", "fault": "reset_after_accept", "count": 1})
    with pytest.raises(OutcomeUnknown):
        broker.submit_order(resting(cid))
    with pytest.raises(Rejected, match="duplicate client order id"):
        broker.submit_order(resting(cid))
    assert submissions(admin, cid) == 2
    assert [o["client_order_id"] for o in admin.get("/v1/admin/orders").json()["orders"]].count(cid) == 1


# ---------------------------------------------------------------- reads: Retryable

READS: dict[str, Callable[[BrokerFacade], object]] = {
    "lookup": lambda b: b.order_by_client_id("anything"),
    "orders": lambda b: b.open_orders(),
    "positions": lambda b: b.positions(),
    "fills": lambda b: b.fills_since(None),
    "bars": lambda b: b.historical_bars(SYMBOL, "1m"),
}


@pytest.mark.parametrize("fault", [fault for fault, _ in COMMAND_FAULTS])
@pytest.mark.parametrize("call", list(READS))
def test_a_faulted_read_is_retryable(admin: httpx.Client, broker: BrokerFacade, call: str, fault: str) -> None:
    set_faults(admin, {"call": call, "fault": fault, "count": 1})
    with pytest.raises(Retryable) as info:
        READS[call](broker)
    assert not isinstance(info.value, BrokerUnavailable)  # it reached the venue
    READS[call](broker)  # the rule is spent


@pytest.mark.parametrize("fault", ["error_500", "reset_before", "reset_after_accept"])
def test_a_faulted_stream_is_retryable(admin: httpx.Client, broker: BrokerFacade, fault: str) -> None:
    set_faults(admin, {"call": "stream", "fault": fault, "count": 1})
    received = []
    with pytest.raises(Retryable):
        for item in broker.stream_bars(SYMBOL, "1m", after_index=None):
            received.append(item)
    # A reset after the stream started drops the line mid-stream: the latest bar got through.
    assert len(received) == (1 if fault == "reset_after_accept" else 0)


def test_star_faults_every_trading_call_but_not_health_or_admin(admin: httpx.Client, broker: BrokerFacade) -> None:
    set_faults(admin, {"call": "*", "fault": "error_500"})
    with pytest.raises(Retryable):
        broker.positions()
    with pytest.raises(OutcomeUnknown):
        broker.submit_order(resting(new_id("star")))
    assert admin.get("/v1/health").status_code == 200
    assert admin.get("/v1/admin/stats").json()["faults_hit"] == [2]


def test_connection_refused_is_broker_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nobody = build_facade({"broker": "sim", "base_url": f"http://127.0.0.1:{port}", "account": "SIM1",
                           "timeout_s": CLIENT_TIMEOUT_S})
    try:
        with pytest.raises(BrokerUnavailable):
            nobody.submit_order(resting("never-sent"))
        with pytest.raises(BrokerUnavailable):
            nobody.positions()
    finally:
        nobody.close()


# ---------------------------------------------------------------- the fill feed


def test_a_duplicated_fill_arrives_twice_with_one_fill_id(admin: httpx.Client, broker: BrokerFacade) -> None:
    _, cursor = broker.fills_since(None)
    before = position(broker)
    cid = new_id("dup")
    set_faults(admin, {"call": "fills", "fault": "duplicate_fill", "count": 1})
    broker.submit_order(market(cid))

    def twice() -> list[str] | None:
        ids, _ = fill_ids_since(broker, cursor, cid)
        return ids if len(ids) == 2 else None

    # Then the feed carries the one fill twice, under two seqs …
    [fill_id] = set(wait_for("the fill, twice", twice))
    raw = admin.get("/v1/fills", params={"account": "SIM1", "after_seq": cursor}).json()["fills"]
    assert len({m["seq"] for m in raw if m["fill_id"] == fill_id}) == 2
    # … while the venue made it once and moved the position once
    assert [f["fill_id"] for f in admin.get("/v1/admin/fills").json()["fills"]].count(fill_id) == 1
    assert position(broker) == before + 1


def test_a_delayed_fill_shows_in_the_position_first_and_in_the_feed_later(
        admin: httpx.Client, broker: BrokerFacade) -> None:
    _, cursor = broker.fills_since(None)
    before = position(broker)
    late, prompt = new_id("late"), new_id("prompt")
    set_faults(admin, {"call": "fills", "fault": "delay_fill", "count": 1})  # default delay: 2 s
    # Given an order whose fill the feed holds back
    broker.submit_order(market(late))
    wait_for("the late order filled", lambda: filled(broker, late))
    filled_at = time.monotonic()
    # Then the order and the position show the fill at once, the feed does not
    assert position(broker) == before + 1
    assert fill_ids_since(broker, cursor, late)[0] == []
    # When a later fill is not held back, the engine reads it and moves its cursor past it
    broker.submit_order(market(prompt, Side.SELL))

    def prompt_seen() -> str | None:
        ids, next_cursor = fill_ids_since(broker, cursor, prompt)
        return next_cursor if ids else None

    after_prompt = wait_for("the prompt fill", prompt_seen)
    assert fill_ids_since(broker, cursor, late)[0] == []
    assert time.monotonic() - filled_at < 1.8, "too slow to observe the delay; the checks above prove nothing"
    # Then the late fill still arrives, after the cursor the engine holds: nothing is missed
    ids = wait_for("the late fill", lambda: fill_ids_since(broker, after_prompt, late)[0])
    assert time.monotonic() - filled_at >= 1.5
    assert len(ids) == 1 and position(broker) == before


def test_admin_views_cover_every_account(admin: httpx.Client, venue_sim: VenueProcess) -> None:
    other = build_facade({"broker": "sim", "base_url": venue_sim.url, "account": "SIM2", "timeout_s": 5})
    try:
        cid = new_id("sim2")
        other.submit_order(market(cid, Side.SELL))
        wait_for("the SIM2 fill", lambda: filled(other, cid))
    finally:
        other.close()
    orders = admin.get("/v1/admin/orders").json()["orders"]
    assert {o["account"] for o in orders} == {"SIM1", "SIM2"}
    assert [f["client_order_id"] for f in admin.get("/v1/admin/fills").json()["fills"] if f["account"] == "SIM2"] == [cid]
    assert {"account": "SIM2", "symbol": SYMBOL, "quantity": "-1"}.items() <= \
        next(p for p in admin.get("/v1/admin/positions").json()["positions"] if p["account"] == "SIM2").items()


# ---------------------------------------------------------------- the admin API


def test_rules_are_replaced_reported_and_cleared(admin: httpx.Client) -> None:
    set_faults(admin, {"call": "orders", "fault": "error_500"})
    answer = set_faults(admin, {"call": "bars", "fault": "ack_lost", "probability": 0.25}, seed=3)
    assert answer == admin.get("/v1/admin/faults").json() == {"seed": 3, "rules": [
        {"call": "bars", "fault": "ack_lost", "probability": 0.25, "count": None, "delay_s": 30.0, "hits": 0}]}
    bad = admin.post("/v1/admin/faults", json={"rules": [{"call": "bars", "fault": "ack_lost", "count": "2"}]})
    assert bad.status_code == 400 and "rules[0].count" in bad.json()["message"]
    assert len(admin.get("/v1/admin/faults").json()["rules"]) == 1  # a bad config changes nothing
    assert admin.delete("/v1/admin/faults").json()["rules"] == []


def test_the_same_seed_and_requests_give_the_same_faults(admin: httpx.Client, broker: BrokerFacade) -> None:
    def run() -> list[bool]:
        set_faults(admin, {"call": "orders", "fault": "error_500", "probability": 0.5}, seed=2024)
        pattern = []
        for _ in range(30):
            try:
                broker.open_orders()
                pattern.append(False)
            except Retryable:
                pattern.append(True)
        assert admin.get("/v1/admin/faults").json()["rules"][0]["hits"] == sum(pattern)
        return pattern

    first = run()
    assert 5 < sum(first) < 25
    assert run() == first


def test_an_unanswered_request_does_not_hold_up_shutdown(tmp_path: Path) -> None:
    venue = start_venue(tmp_path, "--faults", str(_write(tmp_path / "f.json", {"rules": [
        {"call": "submit", "fault": "ack_lost", "delay_s": 600}]})))
    broker = build_facade({"broker": "sim", "base_url": venue.url, "account": "SIM1", "timeout_s": CLIENT_TIMEOUT_S})
    try:
        with pytest.raises(OutcomeUnknown):
            broker.submit_order(resting("held"))
        assert broker.order_by_client_id("held") is not None
        started = time.monotonic()
        venue.process.send_signal(signal.SIGTERM)
        assert venue.process.wait(timeout=5) == 0
        assert time.monotonic() - started < 3.0
    finally:
        broker.close()
        stop_venue(venue)


def _write(path: Path, payload: object) -> Path:
    path.write_text(json.dumps(payload))
    return path
