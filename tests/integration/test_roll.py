"""Contract rolls end to end: a session long ES rolls to the next contract; the strategy process is
killed (like kill -9, through a named crash point) at each phase boundary and in the middle of a
leg. Each time the restarted session stops in ``needs_operator``; ``sessions ack --resume-roll``
finishes the roll with the position intact and every order sent exactly once.

Real processes (busd, the venue simulator, the session's account, market-data and strategy
processes) in a root of their own; the test plays sessionguard's part by starting the killed
strategy process again.
"""
from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, timezone
from collections.abc import Iterator
from decimal import Decimal

import pytest
import sqlalchemy as sa
from engine_tree import wait_until
from test_recovery import BIN, SESSION, Parts

from brokers.instruments import front_contract, next_contract, roll_date
from bus.envelope import now_ns
from schema import messages as m
from schema.enums import OrderStatus, SessionState
from services.rolls import Leg, roll_signal
from services.sessions import today_utc
from services.testhooks import CRASH_EXIT_CODE

pytestmark = pytest.mark.integration


class RollParts(Parts):
    def __init__(self, root, extra_toml: str = "") -> None:
        super().__init__(root, extra_toml)
        # A slow average this long never crosses during a test: every order here is the test's or
        # the roll's own, so positions can be checked exactly.
        with self.store.engine.begin() as conn:
            conn.execute(sa.text("UPDATE sessions SET params = :p WHERE name = :n"),
                         {"p": json.dumps({"fast": 3, "slow": 5000, "qty": 1}), "n": SESSION})

    def start_session(self, crash_at: str | None = None) -> None:
        self.start_account()
        self.spawn("marketdata", "marketdata", "--session", SESSION)
        self.strategy = self.spawn("strategy", "strategy", "--session", SESSION, crash_at=crash_at)
        # (The harness put the session in trading by hand: wait for the strategy's own reconciliation.)
        wait_until(lambda: '"event":"reconciled"' in self.log("strategy"), timeout=30,
                   what="the strategy to reconcile")

    def state(self) -> SessionState:
        return SessionState(self.store.get_session(SESSION).state)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "tradebus"), *args], env=self.env, capture_output=True, text=True,
                              timeout=60)

    def position(self, symbol: str) -> Decimal:
        return self.store.get_position(SESSION, symbol).quantity

    def venue_position(self, symbol: str) -> Decimal:
        rows = self.venue.get("/positions", params={"account": "SIM1"}).json()["positions"]
        return sum((Decimal(r["quantity"]) for r in rows if r["symbol"] == symbol), Decimal(0))


@pytest.fixture
def parts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RollParts]:
    p = RollParts(tmp_path_factory.mktemp("roll"))
    try:
        p.start_infrastructure()
        yield p
    except BaseException:
        for name in ("busd", "venue-sim", "account", "marketdata", "strategy"):
            print(f"--- {name}\n" + "\n".join(p.log(name).splitlines()[-25:]))
        raise
    finally:
        p.close()


def hold_long_with_a_working_order(parts: RollParts) -> tuple[str, str]:
    """Session trading with a long position of 2 and a resting buy limit far below the market."""
    wait_until(lambda: parts.state() is SessionState.TRADING, timeout=30, what="the session to trade")
    contract = parts.session.contract
    reply = parts.submit(500, qty="2")
    assert isinstance(reply, m.OrderReply)
    wait_until(lambda: parts.position(contract) == 2, timeout=20, what="the long position to be booked")
    resting = parts.rpc.call(f"account.{SESSION}", m.SubmitOrder(
        session=SESSION, signal=501, symbol=contract, side="buy", order_type="limit", quantity=Decimal(1),
        limit_price=Decimal("100.00")), timeout_s=10)
    assert resting.order.status == "accepted"
    return reply.order.client_order_id, resting.order.client_order_id


BOUNDARIES = [
    "strategy.roll.cancel_working",  # roll begun, nothing done yet
    "strategy.roll.flatten_old",     # working orders cancelled
    "strategy.roll.flatten_old_sent",  # mid-leg: the closing order sent, its phase not yet advanced
    "strategy.roll.open_new",        # old contract flat
    "strategy.roll.switch_data",     # new contract held, data still on the old one
]


@pytest.mark.parametrize("crash_at", BOUNDARIES)
def test_a_roll_killed_at_a_boundary_waits_for_the_operator_and_resumes_exactly(
        parts: RollParts, crash_at: str) -> None:
    parts.start_session(crash_at=crash_at)
    old = parts.session.contract
    new = next_contract(old)
    _entry, resting = hold_long_with_a_working_order(parts)

    started = parts.cli("sessions", "roll", SESSION)
    # The strategy answers, then dies at once (like kill -9): on a loaded machine its answer can die
    # with it, still queued in its socket. The operator is then told the outcome is unknown — also
    # right. Either way the roll row is committed before the answer is sent.
    if started.returncode == 0:
        assert f"{old} -> {new}" in started.stdout
    else:
        assert "did not answer" in started.stderr and "outcome unknown" in started.stderr, started.stderr
    assert parts.strategy.wait(timeout=60) == CRASH_EXIT_CODE
    assert parts.store.active_roll(SESSION) is not None

    # sessionguard would restart the group; the start finds the roll mid-way and refuses to guess.
    parts.strategy = parts.spawn("strategy", "strategy", "--session", SESSION)
    wait_until(lambda: parts.state() is SessionState.NEEDS_OPERATOR, timeout=30, what="needs_operator")
    assert "--resume-roll" in parts.store.get_session(SESSION).state_reason
    assert parts.store.active_roll(SESSION) is not None
    refused = parts.cli("sessions", "ack", SESSION)  # a roll is mid-way: the operator must choose
    assert refused.returncode != 0 and "--resume-roll" in refused.stderr

    acked = parts.cli("sessions", "ack", SESSION, "--resume-roll")
    assert acked.returncode == 0, acked.stderr
    wait_until(lambda: parts.store.get_session(SESSION).contract == new
               and parts.state() is SessionState.TRADING, timeout=60, what="the roll to finish")

    assert parts.store.active_roll(SESSION) is None
    assert (parts.position(old), parts.position(new)) == (0, 2)
    assert (parts.venue_position(old), parts.venue_position(new)) == (0, 2)
    assert parts.store.get_order(resting).status is OrderStatus.CANCELLED
    legs = [parts.store.get_order(parts.cid(roll_signal(1, leg))) for leg in Leg]
    assert [(o.symbol, str(o.side), o.quantity, o.filled_quantity) for o in legs] == [
        (old, "sell", 2, 2), (new, "buy", 2, 2)]
    for order in legs:
        assert parts.submissions(order.client_order_id) == 1, order.client_order_id
    # The strategy listens to the new contract now: its market-data process switched.
    wait_until(lambda: '"action":"contract_switched"' in parts.log("marketdata"), timeout=10,
               what="market data on the new contract")


def test_abort_before_the_new_contract_is_touched_stays_on_the_old_one(parts: RollParts) -> None:
    parts.start_session(crash_at="strategy.roll.flatten_old")
    old = parts.session.contract
    hold_long_with_a_working_order(parts)
    assert parts.cli("sessions", "roll", SESSION).returncode == 0
    assert parts.strategy.wait(timeout=60) == CRASH_EXIT_CODE
    parts.strategy = parts.spawn("strategy", "strategy", "--session", SESSION)
    wait_until(lambda: parts.state() is SessionState.NEEDS_OPERATOR, timeout=30, what="needs_operator")

    acked = parts.cli("sessions", "ack", SESSION, "--abort-roll")
    assert acked.returncode == 0, acked.stderr
    wait_until(lambda: parts.state() is SessionState.TRADING, timeout=30, what="trading again")
    assert parts.store.get_session(SESSION).contract == old
    assert parts.store.active_roll(SESSION) is None
    assert parts.position(old) == 2  # nothing was closed: the roll stopped before its first leg
    assert parts.store.find_order(parts.cid(roll_signal(1, Leg.FLATTEN_OLD))) is None


def test_flatten_halts_cancels_and_closes(parts: RollParts) -> None:
    parts.start_session()
    old = parts.session.contract
    _entry, resting = hold_long_with_a_working_order(parts)
    done = parts.cli("sessions", "flatten", SESSION)
    assert done.returncode == 0, done.stderr
    assert "halted" in done.stdout
    wait_until(lambda: parts.position(old) == 0, timeout=20, what="the position to be closed")
    assert parts.state() is SessionState.HALTED
    assert parts.store.get_order(resting).status is OrderStatus.CANCELLED
    assert parts.venue_position(old) == 0


def test_a_roll_starts_by_itself_on_the_roll_date(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Bars dated on the contract's roll date (from a CSV the simulator replays) start the roll."""

    root = tmp_path_factory.mktemp("autoroll")
    contract = front_contract("ES", today_utc(now_ns()))
    day = roll_date(contract)
    start = datetime(day.year, day.month, day.day, 14, 0, tzinfo=timezone.utc)
    rows = ["Date,Open,High,Low,Close,Volume"]
    for i in range(120):
        t = start + timedelta(minutes=i)
        rows.append(f"{t:%Y-%m-%d %H:%M:%S},5000.00,5001.00,4999.00,5000.25,100")
    (root / "es.csv").write_text("\n".join(rows) + "\n")

    parts = RollParts(root, f'[venue_sim.csv]\n{contract} = "{root / "es.csv"}"\n')
    try:
        parts.start_infrastructure()
        parts.start_session()
        wait_until(lambda: parts.store.get_session(SESSION).contract == next_contract(contract)
                   and parts.state() is SessionState.TRADING, timeout=60, what="the roll on its roll date")
        assert f"roll date of {contract} reached ({day})" in parts.log("strategy")
        assert parts.store.active_roll(SESSION) is None
    except BaseException:
        for name in ("venue-sim", "account", "marketdata", "strategy"):
            print(f"--- {name}\n" + "\n".join(parts.log(name).splitlines()[-25:]))
        raise
    finally:
        parts.close()
