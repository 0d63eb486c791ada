"""Every recovery branch of the account service, each reached by stopping the process at that
exact point (a named crash point armed through ``TRADEBUS_CRASH_AT``, which dies like kill -9).

Each test runs real processes — busd, the venue simulator and the account process of one session —
in a root of its own, and talks to the account over the bus as the strategy would.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from engine_tree import free_port, wait_until

from services.tree import prepare_root

from bus.client import BusClient
from bus.endpoints import Endpoints
from bus.errors import BusError, RemoteError
from schema import messages as m
from schema.errors import FencedOut
from schema.store import Store
from services.testhooks import CRASH_ENV, CRASH_EXIT_CODE

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
SESSION = "es-sma"


class Parts:
    """busd + venue-sim + account processes of one session, started by hand."""

    def __init__(self, root: Path, extra_toml: str = "") -> None:
        self.root = root
        self.port = free_port()
        self.env = prepare_root(root, f"[venue_sim]\nport = {self.port}\npace_s = 0.1\nhistory_bars = 20\n"
                                      + extra_toml)
        self.env.pop(CRASH_ENV, None)
        subprocess.run([str(BIN / "tradebus"), "init"], env=self.env, check=True, capture_output=True)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.store = Store.from_url(f"sqlite:///{root / 'state' / 'tradebus.db'}")
        self.session = self.store.get_session(SESSION)
        # No strategy process here: put the session where its strategy would have, trading.
        for event in ("start", "reconcile", "reconciled"):
            self.store.transition_session(SESSION, event, reason="test", now_ns=1)
        self.bus = BusClient(Endpoints.for_state_dir(root / "state"), source="test")
        self.rpc = self.bus.rpc_client()
        self.venue = httpx.Client(base_url=f"http://127.0.0.1:{self.port}/v1", timeout=5)

    def spawn(self, name: str, *args: str, crash_at: str | None = None) -> subprocess.Popen[bytes]:
        env = dict(self.env)
        if crash_at:
            env[CRASH_ENV] = crash_at
        out = open(self.root / f"{name}.log", "ab")
        proc = subprocess.Popen([str(BIN / "tradebus"), "run", *args], env=env, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def start_infrastructure(self) -> None:
        self.spawn("busd", "busd")
        self.spawn("venue-sim", "venue-sim")
        wait_until(lambda: (self.root / "state" / "bus" / "busd.ready").exists(), timeout=20, what="busd ready")
        wait_until(lambda: (self.root / "state" / "venue-sim.json").exists(), timeout=20, what="venue-sim ready")

    def start_account(self, crash_at: str | None = None, log: str = "account") -> subprocess.Popen[bytes]:
        seen = len(self.log(log))
        proc = self.spawn(log, "account", "--session", SESSION, crash_at=crash_at)
        wait_until(lambda: '"action":"serving"' in self.log(log)[seen:] or proc.poll() is not None, timeout=30,
                   what=f"{log} to serve")
        return proc

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def submit(self, signal_no: int, side: str = "buy", qty: str = "1", timeout_s: float = 10,
               symbol: str | None = None) -> m.Message:
        return self.rpc.call(f"account.{SESSION}", m.SubmitOrder(
            session=SESSION, signal=signal_no, symbol=symbol or self.session.contract, side=side, order_type="market",
            quantity=Decimal(qty)), timeout_s=timeout_s)

    def submit_expecting_no_answer(self, signal_no: int) -> None:
        with pytest.raises(BusError):
            self.submit(signal_no, timeout_s=3)

    def cid(self, signal_no: int) -> str:
        return self.store.client_order_id_for(self.session, signal_no)

    def submissions(self, cid: str) -> int:
        return int(self.venue.get("/admin/stats").json()["submissions"].get(cid, 0))

    def at_venue(self, cid: str) -> bool:
        return self.venue.get(f"/orders/by-client-id/{cid}", params={"account": "SIM1"}).status_code == 200

    def faults(self, *rules: dict) -> None:
        response = self.venue.post("/admin/faults", json={"seed": 1, "rules": list(rules)})
        assert response.status_code == 200, response.text

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
        self.bus.close()
        self.venue.close()
        self.store.close()


@pytest.fixture
def parts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Parts]:
    p = Parts(tmp_path_factory.mktemp("rec"))
    try:
        p.start_infrastructure()
        yield p
    except BaseException:
        for name in ("busd", "venue-sim", "account", "account2"):
            print(f"--- {name}\n" + "\n".join(p.log(name).splitlines()[-20:]))
        raise
    finally:
        p.close()


def wait_status(parts: Parts, cid: str, *statuses: str, timeout: float = 20) -> None:
    wait_until(lambda: str(parts.store.get_order(cid).status) in statuses, timeout=timeout,
               what=f"{cid} to reach {statuses} (now {parts.store.find_order(cid) and parts.store.get_order(cid).status})")


def test_crash_after_write_ahead_then_restart_sends_the_order_exactly_once(parts: Parts) -> None:
    # Given an account that dies right after committing the order, before calling the broker
    crashed = parts.start_account(crash_at="account.after_write_ahead")
    parts.submit_expecting_no_answer(1)
    assert crashed.wait(timeout=10) == CRASH_EXIT_CODE
    cid = parts.cid(1)
    assert str(parts.store.get_order(cid).status) == "pending_submit"
    assert not parts.at_venue(cid)
    # When it starts again
    parts.start_account()
    # Then recovery finds the order provably absent at the broker and sends it, once
    wait_status(parts, cid, "accepted", "filled")
    assert parts.submissions(cid) == 1
    # And the strategy retrying the same signal gets the same order, not a second one
    reply = parts.submit(1)
    assert isinstance(reply, m.OrderReply) and reply.order.client_order_id == cid
    assert parts.submissions(cid) == 1


def test_crash_after_the_broker_accepted_then_restart_adopts_without_resending(parts: Parts) -> None:
    crashed = parts.start_account(crash_at="account.after_broker_accept")
    parts.submit_expecting_no_answer(1)
    assert crashed.wait(timeout=10) == CRASH_EXIT_CODE
    cid = parts.cid(1)
    assert str(parts.store.get_order(cid).status) == "pending_submit"
    assert parts.submissions(cid) == 1  # the broker has it; our row does not know yet
    parts.start_account()
    wait_status(parts, cid, "accepted", "filled")
    wait_status(parts, cid, "filled")
    assert parts.submissions(cid) == 1
    assert parts.store.get_position(SESSION, parts.session.contract).quantity == Decimal(1)


def test_crash_between_booking_a_fill_and_saving_the_watermark_books_it_once(parts: Parts) -> None:
    crashed = parts.start_account(crash_at="account.before_fill_cursor")
    cid = parts.cid(1)
    reply = parts.submit(1, qty="2")
    assert isinstance(reply, m.OrderReply)
    assert crashed.wait(timeout=20) == CRASH_EXIT_CODE  # died after booking the fill
    assert str(parts.store.get_order(cid).status) == "filled"
    parts.start_account()  # fetches the same fill again from the old watermark
    wait_until(lambda: parts.store.get_session(SESSION).fill_cursor is not None, timeout=20,
               what="the watermark to be saved")
    assert len([f for f in parts.store.fills(SESSION) if f.client_order_id == cid]) == 1
    assert parts.store.get_position(SESSION, parts.session.contract).quantity == Decimal(2)
    assert parts.store.verify_orders() == []


def test_lost_acknowledgement_makes_the_order_unknown_until_the_broker_is_asked(parts: Parts) -> None:
    parts.start_account()
    parts.faults({"call": "submit", "fault": "ack_lost", "count": 1, "delay_s": 30})
    reply = parts.submit(1, timeout_s=20)
    cid = parts.cid(1)
    assert isinstance(reply, m.OrderReply)
    events = [e.kind for e in parts.store.order_events(cid)]
    assert "outcome_unknown" in [str(k) for k in events]
    wait_status(parts, cid, "accepted", "filled")
    assert parts.submissions(cid) == 1


def test_request_lost_before_the_broker_acted_is_resolved_absent_not_resent(parts: Parts) -> None:
    parts.start_account()
    parts.faults({"call": "submit", "fault": "reset_before", "count": 1})
    reply = parts.submit(1, timeout_s=20)
    cid = parts.cid(1)
    assert isinstance(reply, m.OrderReply)
    order = parts.store.get_order(cid)
    assert str(order.status) == "rejected" and "absent at broker" in (order.reason or "")
    assert parts.submissions(cid) == 0


def test_broker_that_cannot_answer_at_recovery_sends_the_session_to_the_operator(parts: Parts) -> None:
    crashed = parts.start_account(crash_at="account.after_write_ahead")
    parts.submit_expecting_no_answer(1)
    assert crashed.wait(timeout=10) == CRASH_EXIT_CODE
    cid = parts.cid(1)
    parts.faults({"call": "lookup", "fault": "error_500"})
    parts.start_account()
    session = parts.store.get_session(SESSION)
    assert str(session.state) == "needs_operator"
    assert cid in (session.state_reason or "")
    # Nothing was guessed: the order was neither sent nor given up
    assert str(parts.store.get_order(cid).status) == "pending_submit"
    assert parts.submissions(cid) == 0
    # And while the session waits for an operator, new orders are refused without reaching the broker
    reply = parts.submit(2)
    assert isinstance(reply, m.OrderReply) and reply.order.status == "rejected"
    assert parts.submissions(parts.cid(2)) == 0


def test_a_second_copy_of_the_account_waits_and_is_fenced(parts: Parts) -> None:
    first = parts.start_account()
    epoch = parts.store.get_session(SESSION).lease_epoch
    second = parts.spawn("account2", "account", "--session", SESSION)
    wait_until(lambda: '"action":"waiting_for_lease"' in parts.log("account2"), timeout=20,
               what="the second copy to wait for the lease")
    assert '"action":"serving"' not in parts.log("account2")
    # When the first copy dies, the second takes over with a newer epoch ...
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    wait_until(lambda: '"action":"serving"' in parts.log("account2"), timeout=30, what="the second copy to serve")
    assert parts.store.get_session(SESSION).lease_epoch > epoch
    # ... and a write carrying the dead copy's epoch is refused
    with pytest.raises(FencedOut):
        parts.store.create_order(SESSION, signal=99, symbol=parts.session.contract, side="buy",
                                 order_type="market", quantity=Decimal(1), limit_price=None, stop_price=None,
                                 time_in_force="day", epoch=epoch, now_ns=1)
    assert second.poll() is None


def test_a_restart_after_kill_9_takes_the_dead_processes_lease_at_once(parts: Parts) -> None:
    first = parts.start_account()
    epoch = parts.store.get_session(SESSION).lease_epoch
    lease = parts.store.get_lease(f"account:{SESSION}")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    assert lease.expires_ns > time.time_ns()  # still valid: a plain acquire would have to wait
    parts.start_account(log="account2")
    # Taken because its holder was proven dead, not waited out.
    assert f'"taken_from_dead_process":"{lease.owner}"' in parts.log("account2")
    assert '"action":"waiting_for_lease"' not in parts.log("account2")
    assert parts.store.get_session(SESSION).lease_epoch > epoch


def test_a_halted_session_sends_only_risk_reducing_orders(parts: Parts) -> None:
    parts.start_account()
    assert isinstance(parts.submit(1, qty="2"), m.OrderReply)
    wait_status(parts, parts.cid(1), "filled")
    result = subprocess.run([str(BIN / "tradebus"), "sessions", "halt", SESSION, "--reason", "test halt"],
                            env=parts.env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    adding = parts.submit(2, side="buy", qty="1")
    assert adding.order.status == "rejected" and "halted" in (adding.order.reason or "")
    assert parts.submissions(parts.cid(2)) == 0
    reducing = parts.submit(3, side="sell", qty="1")
    assert reducing.order.status in ("accepted", "filled")
    subprocess.run([str(BIN / "tradebus"), "sessions", "resume", SESSION], env=parts.env, check=True,
                   capture_output=True)
    assert parts.submit(4, side="buy", qty="1").order.status in ("accepted", "filled")


def test_an_order_for_a_symbol_the_session_does_not_trade_is_refused_and_never_written(parts: Parts) -> None:
    parts.start_account()
    with pytest.raises(RemoteError) as refused:
        parts.submit(1, symbol="NQZ9")
    assert refused.value.code == "unknown_symbol"
    assert parts.session.contract in refused.value.message and "NQZ9" in refused.value.message
    assert parts.store.find_order(parts.cid(1)) is None and parts.submissions(parts.cid(1)) == 0
    # The signal was not used up: the same one for the session's own contract goes out.
    assert parts.submit(1).order.status in ("accepted", "filled")
    assert parts.submissions(parts.cid(1)) == 1
    # A retry of it is answered from its row, not sent again.
    again = parts.submit(1)
    assert isinstance(again, m.OrderReply) and again.order.client_order_id == parts.cid(1)
    assert parts.submissions(parts.cid(1)) == 1
