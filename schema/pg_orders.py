"""The hot transactions of an order on PostgreSQL, in raw psycopg.

An order costs two transactions: the write-ahead (the ``pending_submit`` row and its ``created``
event, with the session's fence, the order already written for that signal and the risk view read
in the same transaction) and the acknowledgement (the broker's answer folded into the row, its
events appended); then its fill (the fill row, the order's ``fill`` event, the position and its
event). Through the ORM the first two were thirteen statements, each a round trip and 0.6-1 ms of
client CPU on a 2-core machine: 13 ms per order, where one insert-and-commit costs 0.7 ms.

Here every read of a transaction goes in one pipeline (one round trip), then the decision is
made in Python with the same functions the ORM path uses (``schema.store``: ``_new_order``,
``_known_order``, ``_admit``, ``_fold``, the row converters). Same rows, same events, same checks
and the same errors as ``Store`` gives on SQLite, where the ORM path stays (the store tests run on
both). The write-ahead and the acknowledgement each write in ONE statement (data-modifying CTEs),
run in autocommit mode: a statement is atomic alone, and there is no BEGIN or COMMIT to wait for
(on this machine a pipeline's COMMIT cost two round trips more than the statement: 298 µs against
102 µs for the same UPDATE). The optimistic lock of the acknowledgement is in its statement: the
events are inserted only if the ``UPDATE ... WHERE version = <read>`` matched, so a lost race
writes nothing and is retried from fresh state, as ``StaleDataError`` is. A fill has two such
writes (order, position) and the fill id it claims first: it stays one transaction, committed
only after seeing both writes matched.

Two writes on the order's path need no read at all: the acknowledgement, when the caller holds
the order as it wrote it ahead (``known``: the write is tried against that version and the lease
epoch in SQL, and only a miss reads), and the strategy's per-bar snapshot (one ``UPDATE`` that
counts the version). One round trip each.

Connections come from the store's own pools (``engine.connect()``: checkout ping, invalidation),
values go through the columns' own SQLAlchemy type processors, and driver errors become the
store's named errors exactly as in ``Store._tx``.
"""
from __future__ import annotations

import dataclasses
import functools
from collections import namedtuple
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, NoReturn

import psycopg
from psycopg.types.json import Json
from sqlalchemy import Table
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from schema import store as _store
from schema.columns import encode_json
from schema.decimals import ZERO
from schema.enums import RollPhase, Side
from schema.errors import ConcurrentUpdate, IllegalTransition, OrderNotFound, SessionNotFound, StoreError
from schema.models import OrderRow, PositionRow, RollRow, SessionRow
from schema.order_fsm import OrderEvent, OrderState
from schema.positions import apply_fill
from schema.records import FillInfo, FillResult, PositionInfo, RiskView, StrategySnapshot


class _Reader:
    """Rows of one table as attribute tuples, every value through its column's result processor
    (what the ORM hands ``_order_state`` and the other converters)."""

    def __init__(self, table: Table, engine: Engine) -> None:
        names = [column.name for column in table.columns]
        self.columns = ", ".join(map(_quoted, names))
        self.table = table.name
        self._row = namedtuple(f"{table.name}_row", names)  # type: ignore[misc]
        self._processors = [(i, p) for i, column in enumerate(table.columns)
                            if (p := column.type.result_processor(engine.dialect, None)) is not None]

    def row(self, raw: Sequence[Any] | None) -> Any:
        if raw is None:
            return None
        values = list(raw)
        for i, process in self._processors:
            if values[i] is not None:
                values[i] = process(values[i])
        return self._row(*values)

    def select(self, where: str, tail: str = "") -> str:
        return f'SELECT {self.columns} FROM "{self.table}" WHERE {where}{tail}'


def _quoted(name: str) -> str:
    return f'"{name}"'


_ORDER_COLUMNS = [column.name for column in OrderRow.__table__.columns if column.name != "id"]
_EVENT_ROW = "(%(a{i})s::varchar, %(v{i})s::bigint, %(k{i})s::varchar, %(d{i})s::json, %(t{i})s::bigint)"
_INSERT_EVENT = ("INSERT INTO events (aggregate, aggregate_version, kind, data, ts_ns) VALUES "
                 + _EVENT_ROW.format(i=0))
# The write-ahead's one write: the order row and its ``created`` event, one statement (atomic alone).
_INSERT_ORDER_AND_EVENT = (
    f"WITH created AS (INSERT INTO orders ({', '.join(map(_quoted, _ORDER_COLUMNS))}) "
    f"VALUES ({', '.join(f'%({c})s' for c in _ORDER_COLUMNS)}) RETURNING id) "
    "INSERT INTO events (aggregate, aggregate_version, kind, data, ts_ns) "
    f"SELECT * FROM (VALUES {_EVENT_ROW.format(i=0)}) AS v WHERE EXISTS (SELECT 1 FROM created)")
_FINISHED_ROLLS = (RollPhase.DONE.value, RollPhase.ABORTED.value)
_CLAIM_FILL = ("INSERT INTO fills (broker_fill_id, client_order_id, session, symbol, side, quantity, price, ts_ns, "
               "recorded_ns) VALUES (%(broker_fill_id)s, %(client_order_id)s, %(session)s, %(symbol)s, %(side)s, "
               "%(quantity)s, %(price)s, %(ts_ns)s, %(recorded_ns)s) ON CONFLICT (broker_fill_id) DO NOTHING "
               "RETURNING id")
_INSERT_POSITION = ("INSERT INTO positions (session, symbol, quantity, average_price, updated_ns, version) "
                    "VALUES (%(session)s, %(symbol)s, %(quantity)s, %(average_price)s, %(updated_ns)s, %(version)s)")
_UPDATE_POSITION = ("UPDATE positions SET quantity = %(quantity)s, average_price = %(average_price)s, "
                    "updated_ns = %(updated_ns)s, version = %(version)s WHERE id = %(id)s AND version = %(read_version)s")


_SAVE_STRATEGY_STATE = ("UPDATE strategy_state SET state = %(state)s, outbox = %(outbox)s, "
                        "updated_ns = %(now_ns)s, version = version + 1 WHERE session = %(session)s "
                        "RETURNING version")


@functools.cache
def _update_then_events(count: int, *, fenced: bool = False) -> str:
    """The acknowledgement's one write: the row under its version, and ``count`` events only if
    that matched (a data-modifying CTE runs once, whether or not its rows are used). ``fenced``:
    and only while the session's lease epoch is not newer than ``%(fence_epoch)s`` (``_check_epoch``;
    not ``epoch``, which is the order's own column)."""
    sets = ", ".join(f"{_quoted(c)} = %({c})s" for c in _ORDER_COLUMNS)
    rows = ", ".join(_EVENT_ROW.format(i=i) for i in range(count))
    fence = (" AND EXISTS (SELECT 1 FROM sessions WHERE sessions.name = orders.session "
             "AND sessions.lease_epoch <= %(fence_epoch)s)") if fenced else ""
    return (f"WITH updated AS (UPDATE orders SET {sets} WHERE client_order_id = %(cid)s "
            f"AND version = %(read_version)s{fence} RETURNING id) "
            "INSERT INTO events (aggregate, aggregate_version, kind, data, ts_ns) "
            f"SELECT * FROM (VALUES {rows}) AS v WHERE EXISTS (SELECT 1 FROM updated)")


class PgOrderPath:
    """``Store.create_order_with_view``, ``Store.apply_order_events`` and ``Store.record_fill`` on
    PostgreSQL."""

    def __init__(self, engine: Engine, deferred_engine: Engine) -> None:
        self._engine = engine
        self._deferred_engine = deferred_engine
        self._orders = _Reader(OrderRow.__table__, engine)
        self._sessions = _Reader(SessionRow.__table__, engine)
        self._positions = _Reader(PositionRow.__table__, engine)
        self._rolls = _Reader(RollRow.__table__, engine)
        self._order_binds = {c.name: p for c in OrderRow.__table__.columns
                       if (p := c.type.bind_processor(engine.dialect)) is not None}
        # The order already written for this (session, signal), found by the id it must have
        # (``Store.client_order_id_for``: name, session id, signal; checked against it below).
        self._sql_existing = self._orders.select(
            "client_order_id = (SELECT name || %(sep)s || id || %(sep)s || %(signal)s "
            "FROM sessions WHERE name = %(session)s)")
        self._sql_session = self._sessions.select("name = %(session)s")
        self._sql_open = self._orders.select("session = %(session)s AND status = ANY(%(open)s)", " ORDER BY id")
        self._sql_positions = self._positions.select("session = %(session)s", " ORDER BY symbol")
        self._sql_roll = self._rolls.select("session = %(session)s AND NOT (phase = ANY(%(finished)s))",
                                            " ORDER BY id DESC LIMIT 1")
        self._sql_order = self._orders.select("client_order_id = %(cid)s")
        self._sql_position = self._positions.select("session = %(session)s AND symbol = %(symbol)s")
        self._sql_order_session = self._sessions.select(
            "name = (SELECT session FROM orders WHERE client_order_id = %(cid)s)")

    # ------------------------------------------------------------------ the write-ahead

    def create_order_with_view(self, session_name: str, terms: dict[str, Any],
                               admit: Callable[[RiskView], str | None] | None,
                               ) -> tuple[OrderState, bool, RiskView | None]:
        key = {"session": session_name, "signal": int(terms["signal"]), "sep": _store.CLIENT_ORDER_ID_SEPARATOR,
               "open": list(_store._OPEN_STATUSES),
               "finished": list(_FINISHED_ROLLS)}
        with self._connection(self._engine, autocommit=True) as conn:
            with conn.pipeline():
                session = conn.execute(self._sql_session, key)
                existing = conn.execute(self._sql_existing, key)
                open_orders = conn.execute(self._sql_open, key)
                positions = conn.execute(self._sql_positions, key)
                roll = conn.execute(self._sql_roll, key)
            session_row = self._sessions.row(session.fetchone())
            if session_row is None:
                raise SessionNotFound(session_name)
            event, state = _store._new_order(session_row, **terms)
            known = self._orders.row(existing.fetchone())
            if known is not None:
                if known.client_order_id != state.client_order_id:  # the SQL above and the Python disagree
                    raise StoreError(f"found {known.client_order_id} for {state.client_order_id}")
                return _store._known_order(_store._order_state(known), state), False, None
            roll_row = self._rolls.row(roll.fetchone())
            view = RiskView(
                session=_store._session_info(session_row),
                open_orders=tuple(_store._order_state(self._orders.row(r)) for r in open_orders.fetchall()),
                positions=tuple(_store._position_info(self._positions.row(r)) for r in positions.fetchall()),
                roll=None if roll_row is None else _store._roll(roll_row))
            _store._admit(admit, view)
            conn.execute(_INSERT_ORDER_AND_EVENT,
                         {**self._order_params(state), **_event_params(state.client_order_id, [(event, state)])})
            return state, True, view

    # ------------------------------------------------------------------ the acknowledgement

    def apply_order_events(self, client_order_id: str, events: Sequence[OrderEvent], *, epoch: int | None,
                           durable: bool, known: OrderState | None = None) -> list[OrderState]:
        if known is not None:
            states = self._write_onto(known, client_order_id, events, epoch=epoch, durable=durable)
            if states is not None:
                return states
        key = {"cid": client_order_id}
        with self._connection(self._engine if durable else self._deferred_engine, autocommit=True) as conn:
            with conn.pipeline():
                order = conn.execute(self._sql_order, key)
                session = conn.execute(self._sql_order_session, key) if epoch is not None else None
            row = self._orders.row(order.fetchone())
            if row is None:
                raise OrderNotFound(client_order_id)
            if session is not None and (session_row := self._sessions.row(session.fetchone())) is not None:
                _store._check_epoch(session_row, epoch, f"order event on {client_order_id}")  # type: ignore[arg-type]
            states = _store._fold(_store._order_state(row), events)
            write = conn.execute(_update_then_events(len(events)),
                                 self._update_params(client_order_id, row.version, events, states))
            if write.rowcount != len(events):
                raise ConcurrentUpdate(f"lost an optimistic-locking race: {client_order_id} is no longer at "
                                       f"version {row.version}")
            return states

    def _write_onto(self, known: OrderState, client_order_id: str, events: Sequence[OrderEvent], *,
                    epoch: int | None, durable: bool) -> list[OrderState] | None:
        """The acknowledgement in one round trip, when the caller holds the order as it last wrote
        it (the account, straight after its write-ahead): ``events`` folded onto ``known`` and
        written only if the row is still at ``known.version`` and the lease not taken over. None
        if not (nothing was written: a fill or a newer epoch got there first, or ``known`` does
        not take these events): the caller reads the row and decides as without ``known``."""
        if known.client_order_id != client_order_id:
            return None
        try:
            states = _store._fold(known, events)
        except IllegalTransition:
            return None  # maybe not on the row as it is now: the read path decides (and says why)
        params = {**self._update_params(client_order_id, known.version, events, states), "fence_epoch": epoch}
        with self._connection(self._engine if durable else self._deferred_engine, autocommit=True) as conn:
            write = conn.execute(_update_then_events(len(events), fenced=epoch is not None), params)
        return states if write.rowcount == len(events) else None

    # ------------------------------------------------------------------ the strategy's snapshot

    def save_strategy_state(self, session_name: str, state: dict[str, Any], outbox: list[Any], *, now_ns: int,
                            durable: bool) -> StrategySnapshot | None:
        """``Store.save_strategy_state`` without a version to compare or an epoch to fence: one
        statement in autocommit, one round trip (the ORM path reads the row first). The version
        still counts every write. None if the session has no snapshot yet (nothing written)."""
        params = {"session": session_name, "state": Json(encode_json(state)), "outbox": Json(encode_json(outbox)),
                  "now_ns": now_ns}
        with self._connection(self._engine if durable else self._deferred_engine, autocommit=True) as conn:
            row = conn.execute(_SAVE_STRATEGY_STATE, params).fetchone()
        if row is None:
            return None
        return StrategySnapshot(session=session_name, state=state, outbox=outbox, version=row[0], updated_ns=now_ns)

    # ------------------------------------------------------------------ a fill

    def record_fill(self, session_name: str, *, broker_fill_id: str, client_order_id: str | None, symbol: str,
                    side: Side, quantity: Decimal, price: Decimal, ts_ns: int, now_ns: int,
                    durable: bool) -> FillResult | None:
        """``Store.record_fill``'s transaction: the fill id claimed and the reads in one pipeline,
        the writes in a second, then the COMMIT once every version-checked write is seen to have
        matched (three round trips; the ORM path took eleven statements)."""
        position_aggregate = _store.position_aggregate(session_name, symbol)
        key = {"session": session_name, "symbol": symbol, "cid": client_order_id,
               "aggregate": position_aggregate}
        fill = FillInfo(broker_fill_id, client_order_id, session_name, symbol, side, quantity, price, ts_ns, now_ns)
        with self._connection(self._engine if durable else self._deferred_engine) as conn:
            with conn.pipeline():
                # The fill id is claimed first, as the ORM path's flush does: a concurrent booking
                # of it (the reconciler's) then waits for this transaction, and every read below
                # comes after the claim. (Read first, a booking committed between two of the reads
                # showed the fill as new and its order as already filled by it.)
                claimed = conn.execute(_CLAIM_FILL, {**dataclasses.asdict(fill), "side": side.value})
                session = conn.execute("SELECT 1 FROM sessions WHERE name = %(session)s", key)
                order = conn.execute(self._sql_order, key) if client_order_id is not None else None
                position = conn.execute(self._sql_position, key)
                last_event = conn.execute(
                    "SELECT max(aggregate_version) FROM events WHERE aggregate = %(aggregate)s", key)
            if claimed.fetchone() is None:
                return None  # booked before
            if session.fetchone() is None:
                raise SessionNotFound(session_name)
            order_row = None if order is None else self._orders.row(order.fetchone())
            order_states: list[OrderState] = []
            if order_row is not None:
                fill_event = _store._fill_event(order_row, broker_fill_id, side, quantity, price, ts_ns)
                order_states = _store._fold(_store._order_state(order_row), [fill_event])
            before = self._positions.row(position.fetchone())
            new_quantity, new_average = apply_fill(ZERO if before is None else before.quantity,
                                                   None if before is None else before.average_price,
                                                   side, quantity, price)
            after = PositionInfo(session_name, symbol, new_quantity, new_average, now_ns,
                                 1 if before is None else before.version + 1)
            (last,) = last_event.fetchone()
            position_event = {"a0": position_aggregate, "v0": (last or 0) + 1, "k0": _store.POSITION_FILL_EVENT,
                              "d0": Json(encode_json(_store.position_fill_data(
                                  broker_fill_id, side, quantity, price, new_quantity, new_average))),
                              "t0": now_ns}
            with conn.pipeline():
                order_write = None
                if order_row is not None:
                    order_write = conn.execute(_update_then_events(1), self._update_params(
                        order_row.client_order_id, order_row.version, [fill_event], order_states))
                values = {"session": session_name, "symbol": symbol, "quantity": new_quantity,
                          "average_price": new_average, "updated_ns": now_ns, "version": after.version}
                if before is None:
                    position_write = conn.execute(_INSERT_POSITION, values)
                else:
                    position_write = conn.execute(_UPDATE_POSITION, {**values, "id": before.id,
                                                                     "read_version": before.version})
                conn.execute(_INSERT_EVENT, position_event)
            if (order_write is not None and order_write.rowcount != 1) or position_write.rowcount != 1:
                conn.rollback()
                raise ConcurrentUpdate(f"lost an optimistic-locking race booking fill {broker_fill_id}")
            conn.commit()
            return FillResult(fill=fill, order=order_states[-1] if order_states else None, position=after)

    # ------------------------------------------------------------------ internals

    def _update_params(self, client_order_id: str, read_version: int, events: Sequence[OrderEvent],
                       states: Sequence[OrderState]) -> dict[str, Any]:
        """The parameters of ``_update_then_events``: the row after ``events`` (whose states are
        ``states``), written only over ``read_version``, and the events themselves."""
        return {**self._order_params(states[-1]), "cid": client_order_id, "read_version": read_version,
                **_event_params(client_order_id, list(zip(events, states)))}

    def _order_params(self, state: OrderState) -> dict[str, Any]:
        values = _store.order_values(state)
        for column, process in self._order_binds.items():
            if values[column] is not None:
                values[column] = process(values[column])
        return values

    @contextmanager
    def _connection(self, engine: Engine, *, autocommit: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection's psycopg connection. Whatever is not committed is rolled back;
        a driver error leaves as the store's named error, a broken connection is not pooled again.

        ``autocommit``: every statement is its own transaction, for work whose one write is one
        statement: no BEGIN and no COMMIT to wait for (a pipeline's COMMIT costs a round trip of
        its own, and an explicit transaction one more). Reads then each see the latest commit,
        as they do inside a READ COMMITTED transaction (which takes no locks on what it reads)."""
        try:
            pooled = engine.connect()
        except sa_exc.DBAPIError as exc:  # the server is down: no connection to be had
            _raise_store_error(exc, engine)
        with pooled:
            conn = pooled.connection.driver_connection
            try:
                if autocommit:
                    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                        conn.rollback()  # e.g. the checkout's ping
                    conn.autocommit = True
                yield conn
            except psycopg.Error as exc:
                _give_back(pooled, conn)
                _raise_store_error(sa_exc.DBAPIError.instance(None, None, exc, psycopg.Error,
                                                              connection_invalidated=pooled.invalidated), engine)
            except BaseException:
                _give_back(pooled, conn)
                raise
            else:
                _give_back(pooled, conn)  # also ends a read that decided nothing needs writing


def _raise_store_error(exc: sa_exc.DBAPIError, engine: Engine) -> NoReturn:
    """Raise the store's named error for ``exc`` (as ``Store._tx`` does), or ``exc`` itself."""
    error = _store.store_error(exc, engine)
    if error is None:
        raise exc.orig if isinstance(exc.orig, BaseException) else exc
    raise error from exc.orig


def _give_back(pooled: Connection, conn: psycopg.Connection[Any]) -> None:
    """Roll back what is open on ``conn`` and leave it in transaction mode; a connection that
    cannot is invalidated (never pooled again). What was read before stays good."""
    if not (conn.broken or conn.closed):
        try:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
            conn.autocommit = False  # the pool's other users work in transactions
            return
        except psycopg.Error:
            pass
    if not pooled.invalidated:
        pooled.invalidate()


def _event_params(client_order_id: str, applied: Sequence[tuple[OrderEvent, OrderState]]) -> dict[str, Any]:
    aggregate = _store.order_aggregate(client_order_id)
    params: dict[str, Any] = {}
    for i, (event, after) in enumerate(applied):
        params.update({f"a{i}": aggregate, f"v{i}": after.version, f"k{i}": event.kind.value,
                       f"d{i}": Json(encode_json(dict(event.data))), f"t{i}": event.ts_ns})
    return params
