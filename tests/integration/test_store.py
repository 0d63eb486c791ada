"""The store against a real database, SQLite and PostgreSQL alike (``db_url``)."""
from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal as D

import pytest
import sqlalchemy as sa
from sqlalchemy import event as sa_event

from schema.enums import OrderStatus, RollPhase, SessionState
from schema.errors import (
    ConcurrentUpdate,
    DuplicateClientOrderId,
    FencedOut,
    IllegalTransition,
    NotAdmitted,
    OrderNotFound,
    Overfill,
    SessionBusy,
    SessionExists,
    SessionNotFound,
)
from schema.db import migrate
from schema.order_fsm import OrderEvent, fold
from schema.store import Store

SECOND = 1_000_000_000
CONTRACT = "ESZ6"


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    migrate(db_url)
    with Store.from_url(db_url) as opened:
        yield opened


def add_session(store: Store, name: str = "es1", now_ns: int = 1):
    return store.add_session(name, strategy="sma_cross", params={"fast": 5, "band": D("0.25")}, symbol="ES",
                             contract=CONTRACT, interval="1m", account="sim", data_source="sim", now_ns=now_ns)


def create(store: Store, signal: int = 1, *, session: str = "es1", epoch: int = 0, quantity: D = D(3), **terms):
    values = dict(symbol=CONTRACT, side="buy", order_type="limit", quantity=quantity, limit_price=D("4500.25"),
                  stop_price=None, time_in_force="day", epoch=epoch, now_ns=10 + signal)
    values.update(terms)
    return store.create_order(session, signal=signal, **values)


def fill(store: Store, fill_id: str, cid: str | None, side: str, quantity, price, *, ts: int = 100):
    return store.record_fill("es1", broker_fill_id=fill_id, client_order_id=cid, symbol=CONTRACT, side=side,
                             quantity=D(quantity), price=D(price), ts_ns=ts, now_ns=ts + 1)


# ------------------------------------------------------------------------------------ sessions


def test_sessions_are_added_read_listed_and_removed(store: Store) -> None:
    added = add_session(store)
    assert added.state is SessionState.STOPPED and added.lease_epoch == 0
    assert added.params == {"fast": 5, "band": D("0.25")}
    assert store.get_session("es1") == added
    assert [s.name for s in store.list_sessions()] == ["es1"]
    with pytest.raises(SessionExists):
        add_session(store)
    with pytest.raises(SessionNotFound):
        store.get_session("nope")
    with pytest.raises(ValueError):
        add_session(store, "has.dot")
    store.remove_session("es1", now_ns=5)
    assert store.list_sessions() == [] and store.find_session("es1") is None
    assert [e.kind for e in store.events("session:es1")] == ["added", "removed"]


def test_a_session_added_again_gets_new_client_order_ids(store: Store) -> None:
    first = add_session(store)
    old, _ = create(store)
    store.apply_order_event(old.client_order_id, OrderEvent.rejected(20, reason="test"))
    store.remove_session("es1")
    again = add_session(store, now_ns=30)
    assert again.id != first.id
    new, created = create(store)
    assert created and new.client_order_id != old.client_order_id
    assert new.client_order_id == store.client_order_id_for(again, 1) == f"es1.{again.id}.1"


def test_removing_a_session_with_live_risk_needs_force(store: Store) -> None:
    add_session(store)
    create(store)
    with pytest.raises(SessionBusy):
        store.remove_session("es1")
    store.remove_session("es1", force=True)
    assert store.find_session("es1") is None


def test_session_transitions_go_through_the_table_with_an_event(store: Store) -> None:
    add_session(store)
    started = store.transition_session("es1", "start", reason="process started", now_ns=5)
    assert (started.state, started.state_reason, started.updated_ns) == (SessionState.STARTING, "process started", 5)
    with pytest.raises(IllegalTransition):
        store.transition_session("es1", "resume", reason="nope", now_ns=6)
    after = store.get_session("es1")
    assert after == started  # nothing written
    assert [(e.kind, e.data) for e in store.events("session:es1")][-1] == (
        "start", {"from": "stopped", "to": "starting", "reason": "process started"})


def test_fill_cursor_heat_and_rolls(store: Store) -> None:
    add_session(store)
    assert store.set_fill_cursor("es1", "cursor-42").fill_cursor == "cursor-42"
    assert store.set_heat_state("es1", "warned", reason="drawdown", now_ns=3).heat_state == "warned"
    with pytest.raises(IllegalTransition):  # a roll begins only while trading
        store.start_roll("es1", from_contract=CONTRACT, to_contract="ESH7", reason="due", now_ns=4)
    assert store.active_roll("es1") is None
    for event in ("start", "reconcile", "reconciled"):
        store.transition_session("es1", event, reason="test", now_ns=4)
    roll = store.start_roll("es1", from_contract=CONTRACT, to_contract="ESH7", reason="due", now_ns=4)
    session = store.get_session("es1")
    assert store.active_roll("es1") == roll and session.roll_state is RollPhase.CANCEL_WORKING
    assert session.state is SessionState.ROLLING
    with pytest.raises(IllegalTransition):
        store.start_roll("es1", from_contract=CONTRACT, to_contract="ESH7", reason="due", now_ns=5)
    with pytest.raises(IllegalTransition):
        store.set_roll_phase(roll.id, RollPhase.CANCEL_WORKING, now_ns=5)  # phases only move forward
    store.set_roll_phase(roll.id, RollPhase.OPEN_NEW, now_ns=6)
    with pytest.raises(IllegalTransition):  # orders on the new contract may exist: only resuming is safe
        store.abort_roll("es1", reason="operator", now_ns=6)
    assert store.set_roll_phase(roll.id, "done", now_ns=7).is_done
    session = store.get_session("es1")
    assert (session.contract, session.roll_state, store.active_roll("es1")) == ("ESH7", RollPhase.NONE, None)
    assert session.state is SessionState.TRADING  # done and roll_finished in one transaction


def test_a_restart_that_finds_a_roll_midway_escalates_and_an_operator_decides(store: Store) -> None:
    add_session(store)
    for event in ("start", "reconcile", "reconciled"):
        store.transition_session("es1", event, reason="test", now_ns=1)
    roll = store.start_roll("es1", from_contract=CONTRACT, to_contract="ESH7", reason="due", now_ns=2)
    store.transition_session("es1", "stop", reason="down", now_ns=3)
    store.transition_session("es1", "stopped", reason="down", now_ns=3)
    # Even an orderly stop and start: the start finds the roll and asks for an operator.
    after = store.transition_session("es1", "start", reason="process started", now_ns=4)
    assert after.state is SessionState.NEEDS_OPERATOR and "--resume-roll" in after.state_reason
    store.transition_session("es1", "ack", reason="operator: resume", now_ns=5)
    # The start right after the ack goes ahead; the roll resumes from its committed phase.
    assert store.transition_session("es1", "start", reason="process started", now_ns=6).state is SessionState.STARTING
    for event in ("reconcile", "reconciled"):
        store.transition_session("es1", event, reason="test", now_ns=7)
    assert store.resume_roll("es1", now_ns=8) == roll
    assert store.get_session("es1").state is SessionState.ROLLING
    store.set_roll_phase(roll.id, RollPhase.FLATTEN_OLD, now_ns=9)
    with pytest.raises(IllegalTransition):
        store.resume_roll("es1", now_ns=9)  # already rolling


def test_abort_roll_before_the_new_contract_is_touched(store: Store) -> None:
    add_session(store)
    for event in ("start", "reconcile", "reconciled"):
        store.transition_session("es1", event, reason="test", now_ns=1)
    roll = store.start_roll("es1", from_contract=CONTRACT, to_contract="ESH7", reason="due", now_ns=2)
    store.set_roll_phase(roll.id, RollPhase.FLATTEN_OLD, now_ns=3)
    store.transition_session("es1", "escalate", reason="killed", now_ns=4)
    aborted = store.abort_roll("es1", reason="operator", now_ns=5)
    assert aborted.phase is RollPhase.ABORTED and store.active_roll("es1") is None
    session = store.get_session("es1")
    assert (session.contract, session.roll_state) == (CONTRACT, RollPhase.NONE)
    with pytest.raises(IllegalTransition):
        store.abort_roll("es1", reason="again", now_ns=6)


# ------------------------------------------------------------------------------------ orders


def test_create_order_writes_ahead_and_is_idempotent(store: Store) -> None:
    add_session(store)
    order, created = create(store, signal=7)
    assert created and order.status is OrderStatus.PENDING_SUBMIT and order.version == 1
    assert store.get_order(order.client_order_id) == order
    assert [e.kind for e in store.order_events(order.client_order_id)] == ["created"]
    # The same (session, signal) again: the same order, nothing new written.
    again, created_again = create(store, signal=7)
    assert (again, created_again) == (order, False)
    assert len(store.order_events(order.client_order_id)) == 1
    # The same signal for different terms is a bug upstream, not a new order.
    with pytest.raises(DuplicateClientOrderId):
        create(store, signal=7, quantity=D(4))
    with pytest.raises(SessionNotFound):
        create(store, session="nope")
    with pytest.raises(OrderNotFound):
        store.get_order("es1.1.999")
    assert store.find_order("es1.1.999") is None


def test_applied_events_fold_to_the_row(store: Store) -> None:
    add_session(store)
    order, _ = create(store)
    cid = order.client_order_id
    for event in (
        OrderEvent.submit_sent(20),
        OrderEvent.accepted(21, broker_order_id="B-1"),
        OrderEvent.cancel_requested(22),
        OrderEvent.cancel_rejected(23, reason="busy"),
        OrderEvent.replace_requested(24, quantity=D(5), limit_price=D("4499.5"), stop_price=None),
        OrderEvent.replaced(25, quantity=D(5), limit_price=D("4499.5"), stop_price=None),
    ):
        order = store.apply_order_event(cid, event)
    assert (order.status, order.quantity, order.limit_price, order.version) == (
        OrderStatus.ACCEPTED, D(5), D("4499.5"), 7)
    assert store.get_order(cid) == order == fold(store.order_events(cid))
    assert store.verify_orders() == []


def test_events_learned_together_are_applied_in_one_transaction(store: Store) -> None:
    add_session(store)
    order, _ = create(store)
    cid = order.client_order_id
    states = store.apply_order_events(cid, [OrderEvent.submit_sent(20), OrderEvent.accepted(21, broker_order_id="B")])
    assert [s.status for s in states] == [OrderStatus.SUBMITTED, OrderStatus.ACCEPTED]
    assert store.get_order(cid) == states[-1] == fold(store.order_events(cid))
    # One illegal event among them: none is written.
    with pytest.raises(IllegalTransition):
        store.apply_order_events(cid, [OrderEvent.cancel_requested(22), OrderEvent.submit_sent(23)])
    assert store.get_order(cid) == states[-1] and len(store.order_events(cid)) == 3


def _pg_statements(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements the order path sends through psycopg directly (PostgreSQL: schema.pg_orders)."""
    sent: list[str] = []
    if store.engine.dialect.name == "postgresql":
        import psycopg

        execute = psycopg.Connection.execute

        def counting(conn, query, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            sent.append(str(query))
            return execute(conn, query, *args, **kwargs)

        monkeypatch.setattr(psycopg.Connection, "execute", counting)
    return sent


def test_an_acknowledgement_onto_the_order_as_last_written(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """``known``, the order as the account wrote it ahead: the events go onto it in one statement
    while the row is still at its version; once it is not (something else wrote since), they go
    onto the row as it is now; a newer lease fences them out either way, writing nothing."""
    add_session(store)
    order, _ = create(store, epoch=0)  # written before the lease below: the row keeps its epoch 0
    lease = store.acquire_session_lease("es1", "proc-a", ttl_ns=SECOND, now_ns=0)
    cid = order.client_order_id
    sent = _pg_statements(store, monkeypatch)
    states = store.apply_order_events(cid, [OrderEvent.submit_sent(20), OrderEvent.accepted(21, broker_order_id="B")],
                                      epoch=lease.epoch, durable=False, known=order)
    assert [(s.status, s.version) for s in states] == [(OrderStatus.SUBMITTED, 2), (OrderStatus.ACCEPTED, 3)]
    assert store.get_order(cid) == states[-1] == fold(store.order_events(cid))
    if store.engine.dialect.name == "postgresql":
        assert len(sent) == 1 and sent[0].startswith("WITH updated AS (UPDATE orders")  # no read first

    stale, _ = create(store, 2, epoch=lease.epoch)
    moved = store.apply_order_event(stale.client_order_id, OrderEvent.submit_sent(30), epoch=lease.epoch)
    [accepted] = store.apply_order_events(stale.client_order_id, [OrderEvent.accepted(31, broker_order_id="C")],
                                          epoch=lease.epoch, known=stale)
    assert (accepted.status, accepted.version) == (OrderStatus.ACCEPTED, moved.version + 1)  # onto the row
    assert store.get_order(stale.client_order_id) == accepted == fold(store.order_events(stale.client_order_id))

    fresh, _ = create(store, 3, epoch=lease.epoch)
    store.acquire_session_lease("es1", "proc-b", ttl_ns=SECOND, now_ns=2 * SECOND)  # a's lease expired
    with pytest.raises(FencedOut):
        store.apply_order_events(fresh.client_order_id, [OrderEvent.submit_sent(40)], epoch=lease.epoch,
                                 known=fresh)
    assert store.get_order(fresh.client_order_id) == fresh and len(store.order_events(fresh.client_order_id)) == 1
    assert store.verify_orders() == []


@pytest.mark.postgres
def test_the_order_path_gives_its_connections_back_in_transaction_mode(pg_url: str) -> None:
    """schema.pg_orders runs single-statement writes in autocommit mode; a pooled connection
    must come back to the ORM in transaction mode, after a success and after a refusal alike,
    or the ORM's multi-statement transactions would silently commit statement by statement."""
    migrate(pg_url)
    with Store.from_url(pg_url) as store:
        add_session(store)
        order, _ = create(store)
        with pytest.raises(NotAdmitted):
            create(store, 2, admit=lambda _view: "no")
        store.apply_order_events(order.client_order_id, [OrderEvent.submit_sent(20)], durable=False, known=order)
        store.save_strategy_state("es1", {"n": 1}, [], 7)
        store.save_strategy_state("es1", {"n": 2}, [], 8, durable=False)
        for engine in (store.engine, store._deferred_engine):
            assert engine.pool.checkedout() == 0
            with engine.connect() as conn:
                assert conn.connection.driver_connection.autocommit is False


def test_an_illegal_event_writes_nothing(store: Store) -> None:
    add_session(store)
    order, _ = create(store)
    with pytest.raises(IllegalTransition):
        store.apply_order_event(order.client_order_id, OrderEvent.cancelled(20))
    assert store.get_order(order.client_order_id) == order
    assert len(store.order_events(order.client_order_id)) == 1


def test_order_queries(store: Store) -> None:
    add_session(store)
    first, _ = create(store, 1)
    second, _ = create(store, 2)
    third, _ = create(store, 3)
    store.apply_order_event(second.client_order_id, OrderEvent.rejected(20, reason="margin"))
    assert [o.client_order_id for o in store.open_orders("es1")] == [first.client_order_id, third.client_order_id]
    assert [o.signal for o in store.orders("es1", statuses=["rejected"])] == [2]
    assert [o.signal for o in store.orders(limit=2)] == [2, 3]
    assert store.orders("other") == []


def test_a_stale_epoch_is_fenced_out(store: Store) -> None:
    add_session(store)
    old = store.acquire_session_lease("es1", "proc-a", ttl_ns=SECOND, now_ns=0)
    new = store.acquire_session_lease("es1", "proc-b", ttl_ns=SECOND, now_ns=2 * SECOND)  # a's lease expired
    assert (old.epoch, new.epoch) == (1, 2)
    session = store.get_session("es1")
    assert (session.lease_owner, session.lease_epoch) == ("proc-b", 2)
    with pytest.raises(FencedOut):
        create(store, 1, epoch=old.epoch)
    assert store.orders("es1") == []
    order, _ = create(store, 1, epoch=new.epoch)
    with pytest.raises(FencedOut):
        store.apply_order_event(order.client_order_id, OrderEvent.submit_sent(20), epoch=old.epoch)
    assert store.get_order(order.client_order_id).status is OrderStatus.PENDING_SUBMIT
    assert store.apply_order_event(order.client_order_id, OrderEvent.submit_sent(20), epoch=new.epoch).version == 2
    with pytest.raises(FencedOut):
        store.save_strategy_state("es1", {}, [], 30, epoch=old.epoch)


# ------------------------------------------------------------------------------------ fills and positions


def test_a_fill_is_booked_once_with_its_order_and_position(store: Store) -> None:
    add_session(store)
    order, _ = create(store)
    cid = order.client_order_id
    store.apply_order_event(cid, OrderEvent.submit_sent(20))
    store.apply_order_event(cid, OrderEvent.accepted(21, broker_order_id="B-1"))
    result = fill(store, "F-1", cid, "buy", 1, "4500.25")
    assert result.order.status is OrderStatus.PARTIALLY_FILLED and result.order.filled_quantity == 1
    assert (result.position.quantity, result.position.average_price) == (D(1), D("4500.25"))
    assert fill(store, "F-1", cid, "buy", 1, "4500.25") is None  # the same fill again: nothing
    assert store.get_order(cid).filled_quantity == 1 and store.get_position("es1", CONTRACT).quantity == 1
    result = fill(store, "F-2", cid, "buy", 2, "4500.5", ts=200)
    assert result.order.status is OrderStatus.FILLED
    assert result.order.average_price == result.position.average_price == D("4500.4166666667")
    assert [f.broker_fill_id for f in store.fills("es1")] == ["F-1", "F-2"]
    assert [f.broker_fill_id for f in store.fills(since_ns=150)] == ["F-2"]
    assert store.verify_orders() == []


def test_a_fill_the_order_cannot_take_books_nothing(store: Store) -> None:
    add_session(store)
    order, _ = create(store)
    store.apply_order_event(order.client_order_id, OrderEvent.accepted(20, broker_order_id="B"))
    with pytest.raises(Overfill):
        fill(store, "F-9", order.client_order_id, "buy", 4, "1")
    assert store.fills() == [] and store.positions() == []
    assert store.get_order(order.client_order_id).filled_quantity == 0


def test_a_fill_of_an_order_we_do_not_know_still_moves_the_position(store: Store) -> None:
    add_session(store)
    result = fill(store, "F-1", "elsewhere.1", "sell", 2, "100")
    assert result.order is None and result.position.quantity == D(-2)


def test_position_math_open_add_reduce_flip_flat(store: Store) -> None:
    add_session(store)
    steps = [
        ("buy", 2, "100", D(2), D(100)),  # open
        ("buy", 2, "102", D(4), D(101)),  # add: volume-weighted
        ("sell", 1, "200", D(3), D(101)),  # reduce: average kept
        ("sell", 5, "90", D(-2), D(90)),  # flip: the fill's price
        ("buy", 2, "80", D(0), None),  # flat: no average
    ]
    for number, (side, qty, price, quantity, average) in enumerate(steps):
        position = fill(store, f"F-{number}", None, side, qty, price, ts=100 + number).position
        assert (position.quantity, position.average_price) == (quantity, average)
    assert store.get_position("es1", CONTRACT).is_flat
    assert len(store.events(f"position:es1:{CONTRACT}")) == len(steps)
    assert store.get_position("es1", "NQZ6").version == 0  # never booked: flat


def test_set_position_repairs_with_an_event(store: Store) -> None:
    add_session(store)
    repaired = store.set_position("es1", CONTRACT, D(-3), D("99.5"), reason="broker says -3", now_ns=5)
    assert (repaired.quantity, repaired.average_price) == (D(-3), D("99.5"))
    assert store.positions("es1") == [repaired]
    assert store.set_position("es1", CONTRACT, 0, D(1), reason="flat", now_ns=6).average_price is None
    assert store.events(f"position:es1:{CONTRACT}")[0].data["reason"] == "broker says -3"


def test_decimals_are_exact_on_both_databases(store: Store) -> None:
    add_session(store)
    price = D("0.1") + D("0.2")
    assert fill(store, "F-1", None, "buy", "0.1", price).fill.price == D("0.3")
    stored = store.fills()[0]
    assert (str(stored.price), str(stored.quantity)) == ("0.3", "0.1")
    big = D("12345678901234567.1234567891")
    assert store.set_position("es1", CONTRACT, big, big, reason="fits", now_ns=2).quantity == big
    assert str(store.get_position("es1", CONTRACT).average_price) == str(big)
    with pytest.raises(ValueError):  # would be rounded by NUMERIC(28, 10): refused instead
        store.set_position("es1", CONTRACT, D("0.00000000001"), None, reason="too fine", now_ns=3)
    with pytest.raises(TypeError):
        store.set_position("es1", CONTRACT, 0.1, None, reason="float", now_ns=3)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ strategy state, accounts, tokens


def test_strategy_state_round_trips(store: Store) -> None:
    add_session(store)
    assert store.load_strategy_state("es1") is None
    state = {"last_bar_ts": 123, "ema": D("4500.123456789"), "nested": {"xs": [D("0.1"), 2, "s", None, 1.5]}}
    outbox = [{"kind": "submit", "signal": 3, "quantity": "1"}]
    saved = store.save_strategy_state("es1", state, outbox, 7)
    loaded = store.load_strategy_state("es1")
    assert loaded == saved and (loaded.state, loaded.outbox, loaded.version) == (state, outbox, 1)
    store.save_strategy_state("es1", {"n": 2}, [], 8, expected_version=1)
    with pytest.raises(ConcurrentUpdate):
        store.save_strategy_state("es1", {"n": 3}, [], 9, expected_version=1)
    assert store.load_strategy_state("es1").state == {"n": 2}
    with pytest.raises(SessionNotFound):
        store.save_strategy_state("nope", {"n": 1}, [], 10)  # the first snapshot checks the session
    store.remove_session("es1", now_ns=11)
    assert store.load_strategy_state("es1") is None  # removed with its session: no orphan to update
    with pytest.raises(SessionNotFound):
        store.save_strategy_state("es1", {"n": 4}, [], 12)


def test_a_strategy_snapshot_replaced_each_bar_counts_versions(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The strategy's per-bar write (no version to compare, no epoch): one statement on
    PostgreSQL once the first snapshot exists, the version counted all the same."""
    add_session(store)
    first = store.save_strategy_state("es1", {"n": 1}, [], 7, durable=False)
    sent = _pg_statements(store, monkeypatch)
    state = {"ema": D("4500.123456789"), "closes": [D("0.1"), D("0.2")]}
    outbox = [{"kind": "submit", "signal": 4, "quantity": D("1.5")}]
    saved = store.save_strategy_state("es1", state, outbox, 8, durable=False)
    assert (saved.state, saved.outbox, saved.version, saved.updated_ns) == (state, outbox, first.version + 1, 8)
    if store.engine.dialect.name == "postgresql":
        assert len(sent) == 1 and sent[0].startswith("UPDATE strategy_state")
    assert store.load_strategy_state("es1") == saved
    store.save_strategy_state("es1", {"n": 3}, [], 9, expected_version=saved.version)  # still compare-and-set
    with pytest.raises(ConcurrentUpdate):
        store.save_strategy_state("es1", {"n": 4}, [], 10, expected_version=saved.version)
    assert store.load_strategy_state("es1").version == saved.version + 1


def test_broker_accounts_hold_no_secrets(store: Store) -> None:
    store.upsert_broker_account("sim", "sim", {"base_url": "http://127.0.0.1:1", "timeout_s": 5, "token_url": "x"})
    store.upsert_broker_account("sim", "sim", {"base_url": "http://127.0.0.1:2"})
    assert [(a.name, a.config) for a in store.list_broker_accounts()] == [("sim", {"base_url": "http://127.0.0.1:2"})]
    for secret in ({"password": "x"}, {"auth": {"client_secret": "x"}}, {"refresh_token": "x"}):
        with pytest.raises(ValueError):
            store.upsert_broker_account("live", "tradovate", secret)


def test_tokens_are_stored_as_ciphertext_only(store: Store) -> None:
    assert store.get_token("acct") is None
    record = store.put_token("acct", "oauth2", b"\x00\x01opaque", expires_ns=10, now_ns=1)
    assert store.get_token("acct") == record and record.ciphertext == b"\x00\x01opaque"
    assert "opaque" not in repr(record)
    with pytest.raises(TypeError):
        store.put_token("acct", "oauth2", "plaintext", expires_ns=None, now_ns=2)  # type: ignore[arg-type]


def test_only_writes_recoverable_elsewhere_skip_the_flush_wait(store: Store) -> None:
    """An acknowledgement, a strategy snapshot and a fill fetched behind a cursor commit without
    waiting for the disk on PostgreSQL (on connections whose ``synchronous_commit`` is off); the
    write-ahead order row waits. The setting is read on every connection each write checks out
    (the order's hot transactions use the pools' psycopg connections directly: schema.pg_orders)."""
    session = add_session(store)
    flush_setting: list[str] = []

    def capture(dbapi_connection, _record, _proxy) -> None:  # noqa: ANN001 - SQLAlchemy's event signature
        if store.engine.dialect.name == "postgresql":
            probe = dbapi_connection.cursor()
            probe.execute("SHOW synchronous_commit")
            flush_setting.append(probe.fetchone()[0])
            probe.close()
            dbapi_connection.rollback()  # the probe's own transaction: the write begins afresh

    def settings(write) -> set[str]:  # noqa: ANN001
        flush_setting.clear()
        write()
        return set(flush_setting)

    sa_event.listen(sa.pool.Pool, "checkout", capture)
    try:
        order, _ = create(store)
        write_ahead = settings(lambda: create(store, signal=9))
        ack = settings(lambda: store.apply_order_events(
            order.client_order_id, [OrderEvent.submit_sent(20), OrderEvent.accepted(21, broker_order_id="B")],
            durable=False))
        snapshot = settings(lambda: store.save_strategy_state(session.name, {"n": 1}, [], 30, durable=False))
        fill = settings(lambda: store.record_fill(
            session.name, broker_fill_id="F-deferred", client_order_id=order.client_order_id, symbol=CONTRACT,
            side="buy", quantity=D(3), price=D("4500.25"), ts_ns=40, now_ns=41, durable=False))
        durable_again = settings(lambda: store.apply_order_event(Store.client_order_id_for(session, 9),
                                                                 OrderEvent.submit_sent(50)))
    finally:
        sa_event.remove(sa.pool.Pool, "checkout", capture)
    assert store.get_order(order.client_order_id).status == "filled"
    assert store.load_strategy_state(session.name).state == {"n": 1}
    assert store.verify_orders() == []
    if store.engine.dialect.name == "postgresql":
        assert [write_ahead, ack, snapshot, fill, durable_again] == [{"on"}, {"off"}, {"off"}, {"off"}, {"on"}]
    else:  # SQLite has no per-transaction flush setting: nothing to probe
        assert [write_ahead, ack, snapshot, fill, durable_again] == [set()] * 5


def test_verify_orders_reads_rows_and_events_from_one_snapshot(store: Store, db_url: str) -> None:
    """A fill committed between verify's read of the order rows and its read of their events must
    not show as a mismatch: both reads belong to one snapshot (PostgreSQL's default isolation
    gives each statement its own)."""
    add_session(store)
    order, _ = create(store)
    cid = order.client_order_id
    store.apply_order_events(cid, [OrderEvent.submit_sent(20), OrderEvent.accepted(21, broker_order_id="B")])
    committed: list[object] = []

    def fill_after_the_orders_read(_conn, _cursor, statement: str, *_args) -> None:
        if not committed and "FROM orders" in statement:
            with Store.from_url(db_url) as other:
                committed.append(fill(other, "F-mid", cid, "buy", 3, "4500.25"))

    sa_event.listen(store.engine, "after_cursor_execute", fill_after_the_orders_read)
    try:
        assert store.verify_orders() == []
    finally:
        sa_event.remove(store.engine, "after_cursor_execute", fill_after_the_orders_read)
    assert committed, "the concurrent fill never ran: the test proved nothing"
    assert store.get_order(cid).status is OrderStatus.FILLED
    assert store.verify_orders() == []


def test_the_write_ahead_admits_on_a_view_read_in_its_own_transaction(store: Store) -> None:
    add_session(store)
    first, _ = create(store)
    seen = []

    def admit(view):
        seen.append(view)
        return None if view.session.contract == CONTRACT else "wrong contract"

    order, created, view = store.create_order_with_view("es1", signal=2, symbol=CONTRACT, side="sell",
                                                        order_type="market", quantity=D(1), limit_price=None,
                                                        stop_price=None, time_in_force="day", epoch=0, now_ns=20,
                                                        admit=admit)
    assert created and seen == [view]
    assert [o.client_order_id for o in view.open_orders] == [first.client_order_id]  # without the new one
    assert view.session == store.get_session("es1") and view.positions == () and view.roll is None
    again, created_again, no_view = store.create_order_with_view(
        "es1", signal=2, symbol=CONTRACT, side="sell", order_type="market", quantity=D(1), limit_price=None,
        stop_price=None, time_in_force="day", epoch=0, now_ns=21, admit=lambda _v: "never asked")
    assert (again, created_again, no_view) == (order, False, None)
    with pytest.raises(NotAdmitted, match="not today"):
        create(store, signal=3, admit=lambda _v: "not today")
    assert store.find_order(Store.client_order_id_for(store.get_session("es1"), 3)) is None
    assert store.verify_orders() == []


def test_the_order_path_says_unavailable_when_postgresql_cannot_be_reached() -> None:
    """The order's own psycopg transactions (schema.pg_orders) answer a server that is down with
    ``StoreUnavailable``, as every other store call does: services wait that out, never die of it."""
    from schema.errors import StoreUnavailable

    with Store.from_url("postgresql+psycopg://tradebus:unused@127.0.0.1:9/nowhere",
                        connect_args={"connect_timeout": 2}) as store:
        with pytest.raises(StoreUnavailable):
            create(store)
        with pytest.raises(StoreUnavailable):
            store.apply_order_events("es1.1.1", [OrderEvent.submit_sent(1)], durable=False)
        with pytest.raises(StoreUnavailable):
            fill(store, "F-1", "es1.1.1", "buy", D(1), D(1))


@pytest.mark.postgres
def test_a_connection_killed_on_the_server_is_pinged_away_after_idling_and_costs_one_request_if_fresh(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle pooled connection is pinged on checkout and replaced if dead (no failed request);
    one used a moment ago is not pinged, so a server-side kill costs the one request that meets
    it (``StoreUnavailable``) and the next is served on a fresh connection."""
    import sqlalchemy as sa

    from schema import db
    from schema.errors import StoreUnavailable

    migrate(pg_url)
    with Store.from_url(pg_url) as store, sa.create_engine(pg_url, isolation_level="AUTOCOMMIT").connect() as admin:
        add_session(store)

        def kill_pooled_connection(engine: sa.Engine = store.engine) -> None:
            with engine.connect() as conn:
                pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            assert engine.pool.checkedin() == 1, "the pool's one connection"
            assert admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()

        monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)  # every checkout counts as after idling
        kill_pooled_connection()
        assert store.get_session("es1").name == "es1"

        monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 3600.0)  # every checkout counts as fresh
        kill_pooled_connection()
        with pytest.raises(StoreUnavailable):
            store.get_session("es1")
        assert store.get_session("es1").name == "es1"

        # The order's hot transactions use the pools' psycopg connections directly: same rules.
        kill_pooled_connection()
        with pytest.raises(StoreUnavailable):
            create(store)
        order, created = create(store)  # the failed attempt wrote nothing
        kill_pooled_connection(store._deferred_engine)
        ack = [OrderEvent.submit_sent(20), OrderEvent.accepted(21, broker_order_id="B-1")]
        with pytest.raises(StoreUnavailable):
            store.apply_order_events(order.client_order_id, ack, durable=False)
        assert store.apply_order_events(order.client_order_id, ack, durable=False)[-1].status is OrderStatus.ACCEPTED
        assert created and store.verify_orders() == []
