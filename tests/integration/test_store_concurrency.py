"""Races, on SQLite and PostgreSQL: optimistic locking, leases and job claims with two contenders.

Each contender is its own ``Store`` (its own engine and connections), as two processes would be.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal as D
from typing import TypeVar

import pytest

from schema import order_fsm
from schema import store as store_module
from schema.db import is_sqlite, migrate
from schema.enums import JobStatus, OrderStatus
from schema.errors import ConcurrentUpdate, FencedOut
from schema.order_fsm import OrderEvent, OrderState
from schema.store import Store

T = TypeVar("T")
SECOND = 1_000_000_000
CONTRACT = "ESZ6"
CONTENDERS = 4


@pytest.fixture
def stores(db_url: str) -> Iterator[tuple[Store, Store]]:
    migrate(db_url)
    with Store.from_url(db_url) as a, Store.from_url(db_url) as b:
        a.add_session("es1", strategy="s", params={}, symbol="ES", contract=CONTRACT, interval="1m",
                      account="sim", data_source="sim", now_ns=1)
        yield a, b


def accepted_order(store: Store, quantity: int = 3) -> str:
    order, _ = store.create_order("es1", signal=1, symbol=CONTRACT, side="buy", order_type="market",
                                  quantity=D(quantity), limit_price=None, stop_price=None, time_in_force="day",
                                  epoch=0, now_ns=2)
    store.apply_order_event(order.client_order_id, OrderEvent.accepted(3, broker_order_id="B-1"))
    return order.client_order_id


def all_at_once(calls: list[Callable[[], T]]) -> list[T]:
    """Run the calls on threads released together by a barrier."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


# ------------------------------------------------------------------------------------ optimistic locking


def test_a_decision_on_a_stale_version_is_refused(stores: tuple[Store, Store]) -> None:
    a, b = stores
    cid = accepted_order(a)
    seen = a.get_order(cid)  # Given process A looked at version 2
    b.apply_order_event(cid, OrderEvent.cancel_requested(4))  # When B changed it first
    with pytest.raises(ConcurrentUpdate):  # Then A's write conditional on version 2 is refused
        a.apply_order_event(cid, OrderEvent.cancelled(5), expected_version=seen.version)
    assert a.get_order(cid).status is OrderStatus.PENDING_CANCEL
    # ...and without a condition A's event applies to the fresh state.
    assert a.apply_order_event(cid, OrderEvent.cancelled(5)).status is OrderStatus.CANCELLED
    assert a.verify_orders() == []


@pytest.mark.parametrize("apply", [
    lambda store, cid, event: store.apply_order_event(cid, event),
    lambda store, cid, event: store.apply_order_events(cid, [event])[-1],  # raw psycopg on PostgreSQL
], ids=["apply_order_event", "apply_order_events"])
def test_a_lost_race_is_retried_from_fresh_state(stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch,
                                                 apply: Callable[..., OrderState]) -> None:
    a, b = stores
    if is_sqlite(a.engine):
        pytest.skip("SQLite write transactions begin IMMEDIATE: a second writer waits, so this race cannot happen")
    order, _ = a.create_order("es1", signal=1, symbol=CONTRACT, side="buy", order_type="market", quantity=D(1),
                              limit_price=None, stop_price=None, time_in_force="day", epoch=0, now_ns=2)
    cid = order.client_order_id
    real_apply = order_fsm.apply
    raced: list[int] = []

    def apply_after_a_rival_commits(state, event):
        if not raced:  # A has read version 1; B commits version 2 before A writes
            raced.append(state.version)
            b.apply_order_event(cid, OrderEvent.submit_sent(3))
        return real_apply(state, event)

    monkeypatch.setattr(order_fsm, "apply", apply_after_a_rival_commits)
    result = apply(a, cid, OrderEvent.accepted(4, broker_order_id="B-1"))
    assert raced == [1]
    assert (result.status, result.version) == (OrderStatus.ACCEPTED, 3)
    assert [e.kind for e in a.order_events(cid)] == ["created", "submit_sent", "accepted"]


def test_a_create_that_loses_the_insert_race_answers_the_winners_order(
        stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch) -> None:
    """A saw no order for the signal; B writes it before A's insert: A's insert meets the unique
    client order id, and A answers B's order as already written (created False), writing nothing."""
    a, b = stores
    if is_sqlite(a.engine):
        pytest.skip("SQLite write transactions begin IMMEDIATE: a second writer waits, so this race cannot happen")
    terms = dict(signal=7, symbol=CONTRACT, side="buy", order_type="market", quantity=D(1), limit_price=None,
                 stop_price=None, time_in_force="day", epoch=0, now_ns=2)
    real_admit = store_module._admit
    winners: list[tuple[OrderState, bool]] = []

    def admit_after_a_rival_commits(admit, view) -> None:  # noqa: ANN001
        monkeypatch.setattr(store_module, "_admit", real_admit)  # B's own create passes straight on
        winners.append(b.create_order("es1", **terms))
        real_admit(admit, view)

    monkeypatch.setattr(store_module, "_admit", admit_after_a_rival_commits)
    order, created = a.create_order("es1", **terms)
    assert [created for _, created in winners] == [True]
    assert not created and order == winners[0][0]
    assert [e.kind for e in a.order_events(order.client_order_id)] == ["created"]
    assert a.verify_orders() == []


def test_a_fill_being_booked_makes_a_second_booking_of_it_wait_then_find_it_booked(
        stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch) -> None:
    """The fill id is claimed before the order and position are read: the reconciler booking the
    same fill meanwhile waits for the account's transaction, then answers None (booked already)."""
    a, b = stores
    cid = accepted_order(a, quantity=1)
    real_fill_event = store_module._fill_event
    rival: list[threading.Thread] = []
    rival_results: list[object] = []

    def fill(store: Store) -> object:
        return store.record_fill("es1", broker_fill_id="F-1", client_order_id=cid, symbol=CONTRACT, side="buy",
                                 quantity=D(1), price=D("4500.25"), ts_ns=10, now_ns=11)

    def fill_event_while_a_rival_books_the_same_fill(*args):  # noqa: ANN002
        if not rival:
            rival.append(threading.Thread(target=lambda: rival_results.append(fill(b)), daemon=True))
            rival[0].start()
            rival[0].join(0.5)
            assert rival[0].is_alive(), "the rival booked the fill while A held its claim"
        return real_fill_event(*args)

    monkeypatch.setattr(store_module, "_fill_event", fill_event_while_a_rival_books_the_same_fill)
    result = fill(a)
    rival[0].join(30)
    assert result is not None and result.order is not None and result.order.status is OrderStatus.FILLED
    assert rival_results == [None]
    assert [e.kind for e in a.order_events(cid)] == ["created", "accepted", "fill"]
    assert a.verify_orders() == []


def test_concurrent_fills_on_one_order_all_count_once(stores: tuple[Store, Store]) -> None:
    a, b = stores
    per_writer = 6
    cid = accepted_order(a, quantity=2 * per_writer)

    def book(store: Store, prefix: str) -> Callable[[], None]:
        def run() -> None:
            for number in range(per_writer):
                while True:  # a caller that lost every retry tries again, as a real one would
                    try:
                        store.record_fill("es1", broker_fill_id=f"{prefix}{number}", client_order_id=cid,
                                          symbol=CONTRACT, side="buy", quantity=D(1), price=D(100 + number),
                                          ts_ns=10 + number, now_ns=20 + number)
                        break
                    except ConcurrentUpdate:
                        continue
        return run

    all_at_once([book(a, "a"), book(b, "b")])
    order = a.get_order(cid)
    assert (order.status, order.filled_quantity, order.version) == (OrderStatus.FILLED, 2 * per_writer, 2 + 2 * per_writer)
    assert a.get_position("es1", CONTRACT).quantity == 2 * per_writer
    assert [e.aggregate_version for e in a.events(f"order:{cid}")] == list(range(1, order.version + 1))
    assert a.verify_orders() == []


# ------------------------------------------------------------------------------------ leases


def test_lease_lifecycle_and_epochs(stores: tuple[Store, Store]) -> None:
    a, b = stores
    first = a.acquire_lease("reconcile:es1", "a", ttl_ns=SECOND, now_ns=0)
    assert (first.owner, first.epoch) == ("a", 1)
    assert b.acquire_lease("reconcile:es1", "b", ttl_ns=SECOND, now_ns=SECOND // 2) is None  # held
    assert a.acquire_lease("reconcile:es1", "a", ttl_ns=SECOND, now_ns=SECOND // 2).epoch == 1  # ours: same epoch
    assert a.renew_lease("reconcile:es1", "a", 1, ttl_ns=SECOND, now_ns=SECOND)
    taken = b.acquire_lease("reconcile:es1", "b", ttl_ns=SECOND, now_ns=3 * SECOND)  # expired: taken over
    assert (taken.owner, taken.epoch) == ("b", 2)
    assert not a.renew_lease("reconcile:es1", "a", 1, ttl_ns=SECOND, now_ns=3 * SECOND)  # a is fenced out
    assert not a.release_lease("reconcile:es1", "a")  # not a's to release
    assert b.release_lease("reconcile:es1", "b")
    assert a.get_lease("reconcile:es1").owner is None
    assert a.acquire_lease("reconcile:es1", "a", ttl_ns=SECOND, now_ns=3 * SECOND).epoch == 3
    assert a.get_lease("nothing") is None


def test_an_unexpired_lease_is_taken_only_from_a_holder_proven_dead(stores: tuple[Store, Store]) -> None:
    """``holder_is_dead`` is asked about the holder read in the acquiring transaction: proof that
    it is gone takes its lease now (epoch + 1, ``taken_from`` naming it); no proof, no lease."""
    a, b = stores
    a.acquire_session_lease("es1", "account:1", ttl_ns=60 * SECOND, now_ns=0)
    asked: list[str] = []

    def alive(owner: str) -> bool:
        asked.append(owner)
        return False

    assert b.acquire_session_lease("es1", "account:2", ttl_ns=SECOND, now_ns=SECOND, holder_is_dead=alive) is None
    taken = b.acquire_session_lease("es1", "account:2", ttl_ns=SECOND, now_ns=SECOND,
                                    holder_is_dead=lambda owner: owner == "account:1")
    assert (taken.owner, taken.epoch, taken.taken_from, asked) == ("account:2", 2, "account:1", ["account:1"])
    assert b.get_session("es1").lease_epoch == 2  # order writes of the dead holder's epoch are fenced
    again = b.acquire_session_lease("es1", "account:2", ttl_ns=SECOND, now_ns=SECOND, holder_is_dead=alive)
    assert (again.epoch, again.taken_from, asked) == (2, None, ["account:1"])  # ours: nobody asked about


@pytest.mark.parametrize("situation", ["free", "expired"])
def test_only_one_contender_wins_a_lease(stores: tuple[Store, Store], situation: str) -> None:
    a, b = stores
    if situation == "expired":
        a.acquire_lease("jobs", "old", ttl_ns=SECOND, now_ns=0)
    now = 5 * SECOND
    calls = [
        (lambda owner=f"w{n}", store=(a, b)[n % 2]: store.acquire_lease("jobs", owner, ttl_ns=SECOND, now_ns=now))
        for n in range(CONTENDERS)
    ]
    winners = [lease for lease in all_at_once(calls) if lease is not None]
    assert len(winners) == 1
    assert winners[0].epoch == (1 if situation == "free" else 2)
    assert a.get_lease("jobs") == winners[0]


def test_only_one_contender_wins_a_session_lease(stores: tuple[Store, Store]) -> None:
    a, b = stores
    calls = [
        (lambda owner=f"p{n}", store=(a, b)[n % 2]: store.acquire_session_lease("es1", owner, SECOND, 0))
        for n in range(CONTENDERS)
    ]
    winners = [lease for lease in all_at_once(calls) if lease is not None]
    assert len(winners) == 1
    session = a.get_session("es1")
    assert (session.lease_owner, session.lease_epoch) == (winners[0].owner, winners[0].epoch)


# ------------------------------------------------------------------------------------ jobs


def test_each_job_is_claimed_by_exactly_one_worker(stores: tuple[Store, Store]) -> None:
    a, b = stores
    ids = {a.enqueue_job("report", {"n": n, "x": D("0.1")}, now_ns=n).id for n in range(6)}

    def drain(store: Store, worker: str) -> Callable[[], list[int]]:
        def run() -> list[int]:
            mine = []
            while (job := store.claim_job(worker, claim_ns=SECOND, now_ns=100)) is not None:
                mine.append(job.id)
                store.complete_job(job.id, worker, result={"ok": True}, now_ns=101)
            return mine
        return run

    claimed = all_at_once([drain(a, "w1"), drain(b, "w2")])
    assert sorted(claimed[0] + claimed[1]) == sorted(ids)
    assert {job.status for job in a.jobs()} == {JobStatus.DONE}
    assert a.get_job(min(ids)).payload == {"n": 0, "x": D("0.1")}


def test_a_dead_workers_claim_expires_and_its_late_answer_is_refused(stores: tuple[Store, Store]) -> None:
    a, b = stores
    job = a.enqueue_job("export", {}, now_ns=0, max_attempts=3)
    assert a.claim_job("w1", claim_ns=SECOND, now_ns=0).attempts == 1
    assert b.claim_job("w2", claim_ns=SECOND, now_ns=SECOND // 2) is None  # still claimed
    again = b.claim_job("w2", claim_ns=SECOND, now_ns=2 * SECOND)  # w1 presumed dead
    assert (again.id, again.claimed_by, again.attempts) == (job.id, "w2", 2)
    with pytest.raises(FencedOut):
        a.complete_job(job.id, "w1", result=None, now_ns=2 * SECOND)
    retried = b.fail_job(job.id, "w2", error="boom", retry_at_ns=5 * SECOND, now_ns=2 * SECOND)
    assert (retried.status, retried.run_after_ns) == (JobStatus.QUEUED, 5 * SECOND)
    assert a.claim_job("w1", claim_ns=SECOND, now_ns=4 * SECOND) is None  # not due yet
    last = a.claim_job("w1", claim_ns=SECOND, now_ns=5 * SECOND)
    assert last.attempts == 3
    final = a.fail_job(job.id, "w1", error="boom again", retry_at_ns=6 * SECOND, now_ns=5 * SECOND)
    assert (final.status, final.error) == (JobStatus.FAILED, "boom again")  # attempts used up
