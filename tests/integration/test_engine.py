"""The whole engine, end to end: real supervisord, real processes, real bus, database and HTTP.

One process tree serves the tests of this module, in order; each test leaves it running.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from decimal import Decimal

import httpx
import msgspec
import pytest
import zmq

from schema.store import Store
from engine_tree import EngineTree, wait_until

pytestmark = pytest.mark.integration

SESSIONS = ("es-sma", "6e-sma")
ROLES = ("marketdata", "account", "strategy")


def group_programs(session: str) -> set[str]:
    return {f"session-{session}:{session}-{role}" for role in ROLES}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineTree]:
    engine = EngineTree(tmp_path_factory.mktemp("tree"))
    try:
        engine.start(expect=group_programs("es-sma") | group_programs("6e-sma") | {"busd", "venue-sim"})
        yield engine
    except BaseException:
        print(engine.diagnostics())
        raise
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def store(tree: EngineTree) -> Iterator[Store]:
    s = Store.from_url(f"sqlite:///{tree.state / 'tradebus.db'}")
    yield s
    s.close()


def venue_fills(tree: EngineTree) -> dict[str, dict]:
    response = httpx.get(f"{tree.venue_url}/v1/fills", params={"account": "SIM1"}, timeout=5)
    response.raise_for_status()
    body = response.json()
    fills = body["fills"] if isinstance(body, dict) else body
    return {f["fill_id"] if "fill_id" in f else f["broker_fill_id"]: f for f in fills}


def test_orders_placed_by_sessions_reach_the_venue_and_come_back_as_fills(tree: EngineTree, store: Store) -> None:
    # Given the demo tree trading on fast bars
    # When the sessions have traded for a while
    def both_sessions_filled() -> bool:
        return all(store.fills(session) for session in SESSIONS)

    wait_until(both_sessions_filled, timeout=90, what="fills in the database for both demo sessions")
    # Then every fill in the database is a fill the venue made, for an order the venue has
    at_venue = venue_fills(tree)
    for session in SESSIONS:
        for fill in store.fills(session):
            assert fill.broker_fill_id in at_venue, f"{fill.broker_fill_id} not at the venue"
            venue_fill = at_venue[fill.broker_fill_id]
            assert Decimal(str(venue_fill["price"])) == fill.price
            assert Decimal(str(venue_fill["quantity"])) == fill.quantity
            order = store.get_order(fill.client_order_id)
            assert order.session == session
            assert order.broker_order_id is not None
            lookup = httpx.get(f"{tree.venue_url}/v1/orders/by-client-id/{order.client_order_id}",
                               params={"account": "SIM1"}, timeout=5)
            assert lookup.status_code == 200, lookup.text


def test_kill_9_of_one_session_process_restarts_its_whole_group_only(tree: EngineTree) -> None:
    # Given every process running
    before = tree.pids()
    victim = "session-es-sma:es-sma-account"
    # When one process of the es-sma group is killed outright
    os.kill(before[victim], signal.SIGKILL)

    # Then every process of that group comes back with a new pid ...
    def group_restarted() -> dict[str, int] | None:
        now = tree.pids()
        fresh = all(name in now and now[name] != before[name] for name in group_programs("es-sma"))
        return now if fresh else None

    after = wait_until(group_restarted, timeout=60, what="all es-sma processes to restart with new pids")
    # ... while every other process (the other session, busd, the simulator) keeps its pid
    for name, pid in before.items():
        if name not in group_programs("es-sma"):
            assert after.get(name) == pid, f"{name} was restarted ({pid} -> {after.get(name)})"


def test_sessions_add_starts_a_new_group_without_restarting_anything(tree: EngineTree, store: Store) -> None:
    before = tree.pids()
    result = tree.tradebus("sessions", "add", "nq-sma", "--strategy", "sma_cross", "--symbol", "NQ",
                           "--param", "fast=2", "--param", "slow=5", "--param", "qty=1")
    assert "nq-sma" in result.stdout

    def new_group_running() -> dict[str, int] | None:
        now = tree.pids()
        return now if group_programs("nq-sma") <= set(now) else None

    after = wait_until(new_group_running, timeout=60, what="the nq-sma group to be RUNNING")
    for name, pid in before.items():
        assert after.get(name) == pid, f"{name} was restarted by sessions add"
    assert store.get_session("nq-sma").contract.startswith("NQ")


def test_bad_cli_input_is_refused_with_a_clear_message(tree: EngineTree) -> None:
    result = tree.tradebus("sessions", "add", "bad", "--strategy", "sma_cross", "--symbol", "ES",
                           "--param", "fast=9", "--param", "slow=3", "--param", "qty=1", check=False)
    assert result.returncode != 0
    assert "fast (9) must be smaller than slow (3)" in result.stderr
    assert "Traceback" not in result.stderr
    unknown = tree.tradebus("sessions", "add", "bad", "--strategy", "nope", "--symbol", "ES", check=False)
    assert unknown.returncode != 0 and "unknown strategy 'nope'" in unknown.stderr


def test_malformed_messages_are_rejected_logged_and_survived(tree: EngineTree, store: Store) -> None:
    before = tree.pids()
    fills_before = len(store.fills("6e-sma"))
    ctx = zmq.Context.instance()
    bus_dir = tree.state / "bus"
    # Given junk published straight into busd's pub.in
    pub = ctx.socket(zmq.PUB)
    pub.connect(f"ipc://{bus_dir / 'pub.in'}")
    # ... and a junk request addressed to the account service through busd's router
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"ipc://{bus_dir / 'rpc'}")
    try:
        def busd_logged_malformed_pub() -> bool:
            pub.send_multipart([b"order.6e-sma", b"\x93\xc1not msgpack at all"])
            return '"malformed"' in tree.log("busd")

        wait_until(busd_logged_malformed_pub, timeout=20, what="busd to log the malformed publication")
        request = msgspec.msgpack.encode([1, "order.submit", "", "attacker", "x", 1, "id-1", None, None,
                                          "6e-sma", 0, 0, {"session": "6e-sma", "signal": "not-an-int"}])
        dealer.send_multipart(_client_request_frames(tree, "account.6e-sma", request))
        assert dealer.poll(10_000), "no answer at all to a malformed request"
        reply = dealer.recv_multipart()
        assert b"malformed" in b"".join(reply)
    finally:
        pub.close(0)
        dealer.close(0)
    # Then nothing restarted and the session still trades
    assert tree.pids() == before
    wait_until(lambda: len(store.fills("6e-sma")) > fills_before, timeout=60,
               what="6e-sma to keep trading after the junk")


def _client_request_frames(tree: EngineTree, service: str, envelope: bytes) -> list[bytes]:
    from bus.busd import PROTOCOL, REQ

    no_deadline = (0).to_bytes(8, "big")
    return [PROTOCOL, REQ, service.encode(), no_deadline, envelope]


def test_sessions_remove_stops_only_that_group(tree: EngineTree, store: Store) -> None:
    before = tree.pids()
    tree.tradebus("sessions", "remove", "nq-sma", "--force")

    def group_gone() -> dict[str, int] | None:
        now = tree.pids()
        return None if group_programs("nq-sma") & set(now) else now

    after = wait_until(group_gone, timeout=30, what="the nq-sma group to be gone")
    for name, pid in before.items():
        if name not in group_programs("nq-sma"):
            assert after.get(name) == pid, f"{name} was restarted by sessions remove"
    assert store.find_session("nq-sma") is None
    assert not (tree.state / "supervisor" / "session-nq-sma.conf").exists()


def test_every_order_row_equals_the_fold_of_its_events(tree: EngineTree, store: Store) -> None:
    assert store.orders(limit=1), "no orders to check"
    assert store.verify_orders() == []
