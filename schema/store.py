"""The store: the only module that opens a SQLAlchemy ``Session``.

It turns rows into frozen domain objects (``OrderState``, ``SessionInfo``, ...) and driver errors
into the named errors of ``schema.errors``, raised ``from`` the original. Every method is one
transaction; every status change goes through its state machine's table before anything is
written, and is written together with its event (write-ahead, DESIGN §4).

Concurrency, on SQLite and PostgreSQL alike:
* optimistic locking: mutable rows carry ``version``; an UPDATE that finds another version raises
  ``ConcurrentUpdate``, and the methods that can safely do so retry from fresh state
  (``MAX_ATTEMPTS``);
* fencing: order writes may carry the writer's lease epoch and are refused (``FencedOut``) when the
  session has seen a newer one;
* on SQLite, write transactions begin IMMEDIATE (see ``schema.db``), so they queue for the lock
  instead of failing half-way.

No clock inside: every timestamp (``now_ns``) is passed in by the caller.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from schema import order_fsm, session_fsm
from schema.db import DEFERRED_PG_OPTIONS, make_engine, safe_url, write_engine
from schema.decimals import ZERO, money_str, optional_money, to_money
from schema.enums import (
    TERMINAL_ORDER_STATUSES,
    HeatState,
    JobStatus,
    OrderStatus,
    OrderType,
    RollPhase,
    SessionState,
    Side,
    TimeInForce,
)
from schema.errors import (
    ConcurrentUpdate,
    DuplicateClientOrderId,
    FencedOut,
    IllegalTransition,
    JobNotFound,
    NotAdmitted,
    OrderNotFound,
    SessionBusy,
    SessionExists,
    SessionNotFound,
    StaleVersion,
    StoreError,
    StoreUnavailable,
)
from schema.models import (
    UQ_BROKER_ACCOUNTS_NAME,
    UQ_FILLS_BROKER_FILL_ID,
    UQ_ORDERS_CLIENT_ORDER_ID,
    UQ_SESSIONS_NAME,
    Base,
    BrokerAccountRow,
    EventRow,
    FillRow,
    JobRow,
    LeaseRow,
    OrderRow,
    PositionRow,
    RollRow,
    SessionRow,
    StrategyStateRow,
    TokenRow,
)
from schema.order_fsm import OrderEvent, OrderState
from schema.positions import apply_fill
from schema.records import (
    BrokerAccount,
    EventRecord,
    FillInfo,
    FillResult,
    Job,
    Lease,
    Mismatch,
    PositionInfo,
    RiskView,
    RollInfo,
    SessionInfo,
    StrategySnapshot,
    TokenRecord,
)
from schema.session_fsm import SessionEvent

__all__ = [
    "ConcurrentUpdate",
    "DuplicateClientOrderId",
    "FencedOut",
    "IllegalTransition",
    "JobNotFound",
    "OrderNotFound",
    "SessionBusy",
    "SessionExists",
    "SessionNotFound",
    "StaleVersion",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "session_lease_name",
]

log = logging.getLogger("tradebus.schema.store")

if TYPE_CHECKING:
    from schema.pg_orders import PgOrderPath

T = TypeVar("T")

MAX_ATTEMPTS = 5
"""How often a method that lost an optimistic-locking race re-reads and tries again."""
DEFAULT_JOB_MAX_ATTEMPTS = 3
SESSION_LEASE_PREFIX = "account:"
"""The session lease is held by the session's order writer (its account process)."""
CLIENT_ORDER_ID_SEPARATOR = "."
ROLL_PHASE_ORDER = (
    RollPhase.CANCEL_WORKING,
    RollPhase.FLATTEN_OLD,
    RollPhase.OPEN_NEW,
    RollPhase.SWITCH_DATA,
    RollPhase.DONE,
)
# Keys a broker account's stored config may not have: secrets come from the environment.
_SECRET_KEY = re.compile(r"(^|_)(password|passphrase|secret|private_key|api_key|access_token|refresh_token)$")
_PG_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock detected
_OPEN_STATUSES = tuple(status.value for status in OrderStatus if status not in TERMINAL_ORDER_STATUSES)


def session_lease_name(session_name: str) -> str:
    """The name of the lease that fences a session's order writes."""
    return f"{SESSION_LEASE_PREFIX}{session_name}"


def order_aggregate(client_order_id: str) -> str:
    return f"order:{client_order_id}"


def session_aggregate(name: str) -> str:
    return f"session:{name}"


def position_aggregate(session: str, symbol: str) -> str:
    return f"position:{session}:{symbol}"


class DuplicateFill(StoreError):
    """Internal: the broker fill id is booked already (``record_fill`` answers ``None``)."""


class Store:
    """Durable state over one engine. Thread-safe: each call uses its own session."""

    def __init__(self, engine: Engine, *, owns_engine: bool = False) -> None:
        self._engine = engine
        self._owns_engine = owns_engine
        # A read transaction is one snapshot on every backend: SQLite's explicit BEGIN gives that
        # already; PostgreSQL's default (READ COMMITTED) gives each *statement* its own, so a
        # read of orders and then of their events could straddle a commit and see them disagree.
        # psycopg applies the level in its BEGIN: no extra round trip.
        self._read = sessionmaker(_snapshot_reads(engine), expire_on_commit=False, autoflush=False)
        self._write = sessionmaker(write_engine(engine), expire_on_commit=False, autoflush=False)
        # Writes that need not wait for their WAL flush (``_tx(durable=False)``) go through a pool
        # of their own whose connections have ``synchronous_commit = off`` (none is opened until
        # one is used): a ``SET LOCAL`` in each such transaction was one more round trip on the
        # order path, where four of the five commits per order are deferred.
        self._deferred_engine: Engine | None = None
        self._deferred = self._write
        # On PostgreSQL an order's hot transactions (write-ahead, acknowledgement, fill) run in
        # raw psycopg pipelines: see ``schema.pg_orders`` (SQLite keeps the ORM path, and the
        # store tests run on both).
        self._pg_orders: PgOrderPath | None = None
        if engine.dialect.name == "postgresql":
            from schema import pg_orders

            self._deferred_engine = make_engine(engine.url, connect_args={"options": DEFERRED_PG_OPTIONS})
            self._deferred = sessionmaker(self._deferred_engine, expire_on_commit=False, autoflush=False)
            self._pg_orders = pg_orders.PgOrderPath(engine, self._deferred_engine)

    @classmethod
    def from_url(cls, url: str | URL, **engine_kwargs: Any) -> Store:
        """A store with an engine of its own (disposed by ``close``). Does not migrate."""
        return cls(make_engine(url, **engine_kwargs), owns_engine=True)

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        if self._deferred_engine is not None:
            self._deferred_engine.dispose()
        if self._owns_engine:
            self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({safe_url(self._engine.url)})"

    # ================================================================================ sessions

    def add_session(
        self,
        name: str,
        *,
        strategy: str,
        params: Mapping[str, Any],
        symbol: str,
        contract: str,
        interval: str,
        account: str,
        data_source: str,
        now_ns: int,
    ) -> SessionInfo:
        """Write a new session, ``stopped`` until its processes start it. Raises ``SessionExists``."""
        if not name or CLIENT_ORDER_ID_SEPARATOR in name:
            # The name prefixes client order ids ("<name>.<id>.<signal>"), which must parse back.
            raise ValueError(f"session name {name!r} must be non-empty and contain no {CLIENT_ORDER_ID_SEPARATOR!r}")
        with self._tx() as s:
            row = SessionRow(
                name=name,
                strategy=strategy,
                params=dict(params),
                symbol=symbol,
                contract=contract,
                interval=interval,
                account=account,
                data_source=data_source,
                state=SessionState.STOPPED.value,
                state_reason="added",
                heat_state=HeatState.OK.value,
                roll_state=RollPhase.NONE.value,
                lease_owner=None,
                lease_epoch=0,
                fill_cursor=None,
                created_ns=now_ns,
                updated_ns=now_ns,
            )
            s.add(row)
            s.flush()
            self._append(s, session_aggregate(name), "added", {"id": row.id, "contract": contract}, now_ns)
            return _session_info(row)

    def get_session(self, name: str) -> SessionInfo:
        with self._tx(write=False) as s:
            return _session_info(_session_row(s, name))

    def find_session(self, name: str) -> SessionInfo | None:
        with self._tx(write=False) as s:
            row = s.scalar(sa.select(SessionRow).where(SessionRow.name == name))
            return None if row is None else _session_info(row)

    def list_sessions(self) -> list[SessionInfo]:
        with self._tx(write=False) as s:
            return [_session_info(row) for row in s.scalars(sa.select(SessionRow).order_by(SessionRow.id))]

    def remove_session(self, name: str, *, force: bool = False, now_ns: int | None = None) -> None:
        """Delete a session with its position rows, strategy state and rolls; orders, fills and
        events stay as history. Refused (``SessionBusy``) while it has open orders or a non-flat
        position, unless ``force``: forgetting live risk must be deliberate."""
        with self._tx() as s:
            row = _session_row(s, name)
            if not force:
                open_orders = s.scalar(
                    sa.select(sa.func.count())
                    .select_from(OrderRow)
                    .where(OrderRow.session == name, OrderRow.status.in_(_OPEN_STATUSES))
                )
                held = [p for p in s.scalars(sa.select(PositionRow).where(PositionRow.session == name))
                        if p.quantity != ZERO]
                if open_orders or held:
                    raise SessionBusy(
                        f"session {name} has {open_orders} open order(s) and {len(held)} open position(s)"
                    )
            ts = row.updated_ns if now_ns is None else now_ns
            s.execute(sa.delete(SessionRow).where(SessionRow.id == row.id))
            self._append(s, session_aggregate(name), "removed", {"id": row.id, "forced": force}, ts)

    def move_session(self, name: str, *, account: str, data_source: str, now_ns: int) -> SessionInfo:
        """Point a session at another broker account and data source (a configuration change: the
        strategy is untouched). Refused (``SessionBusy``) while it has open orders or a non-flat
        position — that risk lives at the old broker — and when ``account`` already has a session on
        the same contract."""

        def attempt() -> SessionInfo:
            with self._tx() as s:
                row = _session_row(s, name)
                open_orders = s.scalar(sa.select(sa.func.count()).select_from(OrderRow)
                                       .where(OrderRow.session == name, OrderRow.status.in_(_OPEN_STATUSES)))
                held = [p for p in s.scalars(sa.select(PositionRow).where(PositionRow.session == name))
                        if p.quantity != ZERO]
                if open_orders or held:
                    raise SessionBusy(f"session {name} has {open_orders} open order(s) and {len(held)} open "
                                      f"position(s) at {row.account}: flatten it before switching broker")
                clash = s.scalar(sa.select(SessionRow.name).where(
                    SessionRow.account == account, SessionRow.contract == row.contract, SessionRow.name != name))
                if clash is not None:
                    raise SessionBusy(f"session {clash} already trades {row.contract} on account {account}")
                before = {"account": row.account, "data_source": row.data_source}
                row.account, row.data_source, row.updated_ns = account, data_source, now_ns
                self._append(s, session_aggregate(name), "broker_switched",
                             {"from": before, "to": {"account": account, "data_source": data_source}}, now_ns)
                return _session_info(row)

        return self._retrying(f"move_session {name}", attempt)

    def transition_session(
        self, name: str, event: SessionEvent | str, *, reason: str, now_ns: int
    ) -> SessionInfo:
        """Apply a session event through ``session_fsm``; the row and a ``session:<name>`` event
        are written together. ``IllegalTransition`` leaves everything unchanged."""
        try:
            happened = SessionEvent(event)
        except ValueError:
            raise IllegalTransition(None, event, name) from None

        def attempt() -> SessionInfo:
            with self._tx() as s:
                row = _session_row(s, name)
                event, why = happened, reason
                roll = _active_roll_row(s, name) if happened is SessionEvent.START else None
                if roll is not None and SessionState(row.state) is not SessionState.STARTING:
                    # A restart that finds a roll mid-way must not guess which legs are done. (From
                    # ``starting`` it is the start that follows an operator's ``ack --resume-roll``.)
                    event = SessionEvent.ESCALATE
                    why = (f"restart found roll {roll.id} ({roll.from_contract} -> {roll.to_contract}) at phase "
                           f"{roll.phase}: ack with --resume-roll or --abort-roll")
                self._transition(s, row, event, why, now_ns)
                return _session_info(row)

        return self._retrying(f"transition_session {name}", attempt)

    def set_heat_state(self, name: str, heat: HeatState | str, *, reason: str, now_ns: int) -> SessionInfo:
        """Record the portfolio-heat rung (decided by the caller's risk rules) with an event."""
        level = HeatState(heat)

        def attempt() -> SessionInfo:
            with self._tx() as s:
                row = _session_row(s, name)
                before = row.heat_state
                if before != level.value:
                    row.heat_state = level.value
                    row.updated_ns = now_ns
                    s.flush()
                    self._append(s, session_aggregate(name), "heat",
                                 {"from": before, "to": level.value, "reason": reason}, now_ns)
                return _session_info(row)

        return self._retrying(f"set_heat_state {name}", attempt)

    def set_fill_cursor(self, name: str, cursor: str | None, *, now_ns: int | None = None) -> SessionInfo:
        """Remember the broker's fills watermark, so the next poll asks only for newer fills."""

        def attempt() -> SessionInfo:
            with self._tx() as s:
                row = _session_row(s, name)
                if row.fill_cursor != cursor:
                    row.fill_cursor = cursor
                    if now_ns is not None:
                        row.updated_ns = now_ns
                    s.flush()
                return _session_info(row)

        return self._retrying(f"set_fill_cursor {name}", attempt)

    # ================================================================================ orders

    @staticmethod
    def client_order_id_for(session: SessionInfo, signal: int) -> str:
        """The deterministic client order id of a session's ``signal``-th decision.

        The session's id (never reused) makes ids unique across a session removed and added again
        under the same name; no clock or randomness, so a retried request maps to the same id.
        """
        return CLIENT_ORDER_ID_SEPARATOR.join((session.name, str(session.id), str(int(signal))))

    def create_order(self, session_name: str, **terms: Any) -> tuple[OrderState, bool]:
        """``create_order_with_view`` (same keywords) without the view: (order, created)."""
        order, created, _view = self.create_order_with_view(session_name, **terms)
        return order, created

    def create_order_with_view(
        self,
        session_name: str,
        *,
        signal: int,
        symbol: str,
        side: Side | str,
        order_type: OrderType | str,
        quantity: Decimal | int | str,
        limit_price: Decimal | int | str | None,
        stop_price: Decimal | int | str | None,
        time_in_force: TimeInForce | str,
        epoch: int,
        now_ns: int,
        bracket_group: str | None = None,
        admit: Callable[[RiskView], str | None] | None = None,
    ) -> tuple[OrderState, bool, RiskView | None]:
        """Write an order ahead of sending it: the ``pending_submit`` row and its ``created`` event,
        in one transaction. Returns (order, True, view), or (the existing order, False, None) if
        this (session, signal) was written before with the same terms. Raises ``FencedOut`` if
        ``epoch`` is older than the session's lease epoch, ``DuplicateClientOrderId`` if the
        signal was used before for different terms.

        ``view``: the session's ``RiskView`` read in the same transaction, as it stands without the
        new order: the account's checks after the write-ahead cost no transaction of their own.
        ``admit``, for a new order, is called with that view before anything is written; a reason
        it returns raises ``NotAdmitted`` and nothing is written."""

        terms = dict(signal=signal, symbol=symbol, side=side, order_type=order_type, quantity=quantity,
                     limit_price=limit_price, stop_price=stop_price, time_in_force=time_in_force, epoch=epoch,
                     now_ns=now_ns, bracket_group=bracket_group)

        def attempt() -> tuple[OrderState, bool, RiskView | None]:
            if self._pg_orders is not None:
                return self._pg_orders.create_order_with_view(session_name, terms, admit)
            with self._tx() as s:
                session_row = _session_row(s, session_name)
                event, state = _new_order(session_row, **terms)
                existing = s.scalar(sa.select(OrderRow).where(OrderRow.client_order_id == state.client_order_id))
                if existing is not None:
                    return _known_order(_order_state(existing), state), False, None
                view = _risk_view(s, session_row)
                _admit(admit, view)
                row = OrderRow()
                _write_order(row, state)
                s.add(row)
                s.flush()
                self._append(s, order_aggregate(state.client_order_id), event.kind.value, dict(event.data),
                             event.ts_ns, version=state.version)
                return state, True, view

        for last in (False, True):
            try:
                return attempt()
            except DuplicateClientOrderId as exc:
                # A concurrent create of the same id won the insert; the second attempt reads it.
                if last or getattr(exc, "constraint", None) != UQ_ORDERS_CLIENT_ORDER_ID:
                    raise
        raise AssertionError("unreachable")

    def apply_order_event(
        self,
        client_order_id: str,
        event: OrderEvent,
        *,
        epoch: int | None = None,
        expected_version: int | None = None,
    ) -> OrderState:
        """Apply ``event`` through ``order_fsm`` and write the row and the event in one transaction.

        ``IllegalTransition`` (or ``Overfill``) writes nothing. A lost optimistic-locking race is
        retried from fresh state, unless ``expected_version`` is given: then the caller decided on
        that version, and any other raises ``ConcurrentUpdate`` at once. ``epoch`` (the writer's
        lease epoch) older than the session's raises ``FencedOut``.
        """

        def attempt() -> OrderState:
            with self._tx() as s:
                [state] = self._apply(s, client_order_id, [event], epoch=epoch, expected_version=expected_version)
                return state

        if expected_version is not None:
            return attempt()
        return self._retrying(f"apply_order_event {client_order_id}", attempt)

    def apply_order_events(
        self, client_order_id: str, events: Sequence[OrderEvent], *, epoch: int | None = None,
        durable: bool = True, known: OrderState | None = None,
    ) -> list[OrderState]:
        """Apply several events in order, in ONE transaction (one commit): the states after each.
        For events learned together (a broker's answer that says "received and accepted"). Any one
        illegal writes none of them. ``durable=False``: see ``_tx`` — for a broker's answer, which
        recovery asks the broker for again if a server crash loses it. ``known``: the order as the
        caller last wrote it; on PostgreSQL the events are first written onto it in one round trip,
        kept only if the row is still at its version (else read and applied as without it)."""

        def attempt() -> list[OrderState]:
            if self._pg_orders is not None:
                return self._pg_orders.apply_order_events(client_order_id, events, epoch=epoch, durable=durable,
                                                          known=known)
            with self._tx(durable=durable) as s:
                row = s.scalar(sa.select(OrderRow).where(OrderRow.client_order_id == client_order_id))
                if row is None:
                    raise OrderNotFound(client_order_id)
                return self._apply(s, client_order_id, events, epoch=epoch, row=row)

        return self._retrying(f"apply_order_events {client_order_id}", attempt)

    def get_order(self, client_order_id: str) -> OrderState:
        order = self.find_order(client_order_id)
        if order is None:
            raise OrderNotFound(client_order_id)
        return order

    def find_order(self, client_order_id: str) -> OrderState | None:
        with self._tx(write=False) as s:
            row = s.scalar(sa.select(OrderRow).where(OrderRow.client_order_id == client_order_id))
            return None if row is None else _order_state(row)

    def orders(
        self,
        session: str | None = None,
        *,
        statuses: Iterable[OrderStatus | str] | None = None,
        limit: int | None = None,
    ) -> list[OrderState]:
        """Orders oldest first; with ``limit``, the most recent ``limit`` of them (still oldest first)."""
        query = sa.select(OrderRow)
        if session is not None:
            query = query.where(OrderRow.session == session)
        if statuses is not None:
            query = query.where(OrderRow.status.in_([OrderStatus(status).value for status in statuses]))
        if limit is not None:
            query = query.order_by(OrderRow.id.desc()).limit(limit)
        else:
            query = query.order_by(OrderRow.id)
        with self._tx(write=False) as s:
            rows = list(s.scalars(query))
        if limit is not None:
            rows.reverse()
        return [_order_state(row) for row in rows]

    def risk_view(self, session: str) -> RiskView:
        """The session row, its open orders, its positions and its unfinished roll, in one read
        transaction: the account's checks before an order goes out see one consistent snapshot
        and cost one round of the database instead of five."""
        with self._tx(write=False) as s:
            return _risk_view(s, _session_row(s, session))

    def open_orders(self, session: str) -> list[OrderState]:
        """The session's orders that are not terminal (working, or waiting to be resolved)."""
        return self.orders(session, statuses=_OPEN_STATUSES)

    def order_events(self, client_order_id: str) -> list[OrderEvent]:
        return [
            OrderEvent(order_fsm.OrderEventKind(record.kind), record.ts_ns, record.data)
            for record in self.events(order_aggregate(client_order_id))
        ]

    def verify_orders(self, session: str | None = None) -> list[Mismatch]:
        """Every difference between an order's row and the fold of its events (empty: all agree)."""
        with self._tx(write=False) as s:
            query = sa.select(OrderRow).order_by(OrderRow.id)
            if session is not None:
                query = query.where(OrderRow.session == session)
            rows = {row.client_order_id: _order_state(row) for row in s.scalars(query)}
            events: dict[str, list[OrderEvent]] = {cid: [] for cid in rows}
            event_query = (
                sa.select(EventRow)
                .where(EventRow.aggregate.like("order:%"))
                .order_by(EventRow.aggregate, EventRow.aggregate_version)
            )
            for event_row in s.scalars(event_query):
                cid = event_row.aggregate.removeprefix("order:")
                if cid in events:
                    events[cid].append(
                        OrderEvent(order_fsm.OrderEventKind(event_row.kind), event_row.ts_ns, event_row.data)
                    )
        mismatches: list[Mismatch] = []
        for cid, row_state in rows.items():
            try:
                folded = order_fsm.fold(events[cid])
            except (ValueError, TypeError, KeyError, IllegalTransition) as exc:
                mismatches.append(Mismatch(cid, "events", None, f"{type(exc).__name__}: {exc}"))
                continue
            for field in fields(OrderState):
                row_value, fold_value = getattr(row_state, field.name), getattr(folded, field.name)
                if row_value != fold_value:
                    mismatches.append(Mismatch(cid, field.name, row_value, fold_value))
        return mismatches

    # ================================================================================ fills and positions

    def record_fill(
        self,
        session_name: str,
        *,
        broker_fill_id: str,
        client_order_id: str | None,
        symbol: str,
        side: Side | str,
        quantity: Decimal | int | str,
        price: Decimal | int | str,
        ts_ns: int,
        now_ns: int,
        durable: bool = True,
    ) -> FillResult | None:
        """Book one broker fill, once: the fill row, the order's ``fill`` event (if the order is
        ours) and the position with its event, in one transaction.

        ``durable=False`` (see ``_tx``): for a fill fetched from the broker behind a cursor that
        is saved durably afterwards. A server crash can lose only a suffix of the log: a lost
        fill takes the later cursor with it, and the broker hands the fill over again.

        Returns ``None`` (and changes nothing) if ``broker_fill_id`` was booked before. If the order
        cannot take the fill (``IllegalTransition``, ``Overfill``) nothing is booked and the error
        propagates: the books and the broker disagree, which is for the reconciler and an
        operator, not for a guess.
        """
        fill_side = Side(side)
        fill_quantity = to_money(quantity)
        fill_price = to_money(price)
        if fill_quantity <= ZERO:
            raise ValueError(f"fill quantity must be positive, got {fill_quantity}")

        def attempt() -> FillResult | None:
            if self._pg_orders is not None:
                return self._pg_orders.record_fill(
                    session_name, broker_fill_id=broker_fill_id, client_order_id=client_order_id, symbol=symbol,
                    side=fill_side, quantity=fill_quantity, price=fill_price, ts_ns=ts_ns, now_ns=now_ns,
                    durable=durable)
            with self._tx(durable=durable) as s:
                if s.scalar(sa.select(FillRow.id).where(FillRow.broker_fill_id == broker_fill_id)) is not None:
                    return None
                _session_row(s, session_name)
                fill = FillRow(
                    broker_fill_id=broker_fill_id,
                    client_order_id=client_order_id,
                    session=session_name,
                    symbol=symbol,
                    side=fill_side.value,
                    quantity=fill_quantity,
                    price=fill_price,
                    ts_ns=ts_ns,
                    recorded_ns=now_ns,
                )
                s.add(fill)
                s.flush()  # a concurrent booking of the same fill id stops here
                order: OrderState | None = None
                if client_order_id is not None:
                    order_row = s.scalar(sa.select(OrderRow).where(OrderRow.client_order_id == client_order_id))
                    if order_row is not None:
                        [order] = self._apply(
                            s,
                            client_order_id,
                            [_fill_event(order_row, broker_fill_id, fill_side, fill_quantity, fill_price, ts_ns)],
                            row=order_row,
                        )
                position = self._move_position(
                    s, session_name, symbol, fill_side, fill_quantity, fill_price, broker_fill_id, now_ns
                )
                return FillResult(fill=_fill_info(fill), order=order, position=position)

        try:
            return self._retrying(f"record_fill {broker_fill_id}", attempt)
        except DuplicateFill:
            return None

    def get_position(self, session: str, symbol: str) -> PositionInfo:
        """The position, or a flat one (version 0) if none was ever booked."""
        with self._tx(write=False) as s:
            row = _position_row(s, session, symbol)
            return PositionInfo(session, symbol) if row is None else _position_info(row)

    def positions(self, session: str | None = None) -> list[PositionInfo]:
        query = sa.select(PositionRow).order_by(PositionRow.session, PositionRow.symbol)
        if session is not None:
            query = query.where(PositionRow.session == session)
        with self._tx(write=False) as s:
            return [_position_info(row) for row in s.scalars(query)]

    def set_position(
        self,
        session: str,
        symbol: str,
        quantity: Decimal | int | str,
        average_price: Decimal | int | str | None,
        *,
        reason: str,
        now_ns: int,
    ) -> PositionInfo:
        """Overwrite a position with the broker's truth (the reconciler's repair), with an event."""
        new_quantity = to_money(quantity)
        new_average = None if new_quantity == ZERO else optional_money(average_price)

        def attempt() -> PositionInfo:
            with self._tx() as s:
                _session_row(s, session)
                row = _position_row(s, session, symbol)
                before = (ZERO, None) if row is None else (row.quantity, row.average_price)
                if row is None:
                    row = PositionRow(session=session, symbol=symbol)
                    s.add(row)
                row.quantity = new_quantity
                row.average_price = new_average
                row.updated_ns = now_ns
                s.flush()
                self._append(
                    s, position_aggregate(session, symbol), "set",
                    {
                        "quantity": money_str(new_quantity),
                        "average_price": money_str(new_average),
                        "previous_quantity": money_str(before[0]),
                        "previous_average_price": money_str(before[1]),
                        "reason": reason,
                    },
                    now_ns,
                )
                return _position_info(row)

        return self._retrying(f"set_position {session} {symbol}", attempt)

    def fills(self, session: str | None = None, since_ns: int | None = None) -> list[FillInfo]:
        """Booked fills in the order they happened (``ts_ns``), optionally from ``since_ns`` on."""
        query = sa.select(FillRow).order_by(FillRow.ts_ns, FillRow.id)
        if session is not None:
            query = query.where(FillRow.session == session)
        if since_ns is not None:
            query = query.where(FillRow.ts_ns >= since_ns)
        with self._tx(write=False) as s:
            return [_fill_info(row) for row in s.scalars(query)]

    # ================================================================================ strategy state

    def load_strategy_state(self, session: str) -> StrategySnapshot | None:
        with self._tx(write=False) as s:
            row = s.get(StrategyStateRow, session)
            return None if row is None else _snapshot(row)

    def save_strategy_state(
        self,
        session: str,
        state: Mapping[str, Any],
        outbox: Sequence[Any],
        now_ns: int,
        *,
        expected_version: int | None = None,
        epoch: int | None = None,
        durable: bool = True,
    ) -> StrategySnapshot:
        """Replace the session's strategy snapshot. ``Decimal`` values round-trip exactly.

        ``expected_version`` (the version loaded) makes it compare-and-set; ``epoch`` fences it
        like an order write. ``durable=False``: see ``_tx``.
        """

        def attempt() -> StrategySnapshot:
            if self._pg_orders is not None and expected_version is None and epoch is None:
                saved = self._pg_orders.save_strategy_state(session, dict(state), list(outbox), now_ns=now_ns,
                                                            durable=durable)
                if saved is not None:
                    return saved  # else: the first snapshot, inserted below
            with self._tx(durable=durable) as s:
                row = s.get(StrategyStateRow, session)
                # A state row implies its session (the foreign key cascades a removal): the
                # session row is read only to fence (``epoch``) or before the first snapshot.
                if epoch is not None or row is None:
                    session_row = _session_row(s, session)
                    if epoch is not None:
                        _check_epoch(session_row, epoch, "save_strategy_state")
                current = 0 if row is None else row.version
                if expected_version is not None and current != expected_version:
                    raise ConcurrentUpdate(
                        f"strategy state of {session} is at version {current}, not {expected_version}"
                    )
                if row is None:
                    row = StrategyStateRow(session=session)
                    s.add(row)
                row.state = dict(state)
                row.outbox = list(outbox)
                row.updated_ns = now_ns
                s.flush()
                return _snapshot(row)

        if expected_version is not None:
            return attempt()
        return self._retrying(f"save_strategy_state {session}", attempt)

    # ================================================================================ leases

    def acquire_lease(self, name: str, owner: str, *, ttl_ns: int, now_ns: int,
                      holder_is_dead: Callable[[str], bool] | None = None) -> Lease | None:
        """Take the lease if it is free, expired or ours already; ``None`` if someone else holds it.

        The epoch grows whenever the owner changes (not on renewal). Two contenders can never both
        win: the write is conditional on the version that was read. ``holder_is_dead``: as in
        ``acquire_session_lease``.
        """

        def attempt() -> Lease | None:
            with self._tx() as s:
                return self._take_lease(s, name, owner, ttl_ns, now_ns, holder_is_dead)

        try:
            return self._retrying(f"acquire_lease {name}", attempt)
        except ConcurrentUpdate:
            return None

    def acquire_session_lease(self, session_name: str, owner: str, ttl_ns: int, now_ns: int,
                              holder_is_dead: Callable[[str], bool] | None = None) -> Lease | None:
        """Take the session's lease (``session_lease_name``) and record owner and epoch on the
        session row, in one transaction; order writes are then fenced by that epoch.

        ``holder_is_dead(owner)``: asked about an unexpired holder other than ``owner``, in the
        transaction that read it; True (proof that it is gone, e.g. its process no longer exists
        on this host) takes the lease now rather than after it runs out. The epoch still grows, so
        anything that holder might still write is fenced; the lease's ``taken_from`` names it."""

        def attempt() -> Lease | None:
            with self._tx() as s:
                row = _session_row(s, session_name)
                lease = self._take_lease(s, session_lease_name(session_name), owner, ttl_ns, now_ns,
                                         holder_is_dead)
                if lease is not None and (row.lease_owner != owner or row.lease_epoch != lease.epoch):
                    row.lease_owner = owner
                    row.lease_epoch = max(row.lease_epoch, lease.epoch)
                    row.updated_ns = now_ns
                    s.flush()
                return lease

        try:
            return self._retrying(f"acquire_session_lease {session_name}", attempt)
        except ConcurrentUpdate:
            return None

    def renew_lease(self, name: str, owner: str, epoch: int, *, ttl_ns: int, now_ns: int) -> bool:
        """Extend a lease still held at ``epoch``. False: it was taken over (or released)."""
        with self._tx() as s:
            result = s.execute(
                sa.update(LeaseRow)
                .where(LeaseRow.name == name, LeaseRow.owner == owner, LeaseRow.epoch == epoch)
                .values(expires_ns=now_ns + ttl_ns, version=LeaseRow.version + 1)
                .execution_options(synchronize_session=False)
            )
            return result.rowcount == 1

    def release_lease(self, name: str, owner: str) -> bool:
        """Give the lease up (only if ``owner`` holds it). The epoch stays, so the next owner's is
        higher."""
        with self._tx() as s:
            result = s.execute(
                sa.update(LeaseRow)
                .where(LeaseRow.name == name, LeaseRow.owner == owner)
                .values(owner=None, expires_ns=0, version=LeaseRow.version + 1)
                .execution_options(synchronize_session=False)
            )
            return result.rowcount == 1

    def leases(self, prefix: str) -> list[Lease]:
        """Every lease whose name starts with ``prefix``, by name (held, expired or released)."""
        with self._tx(write=False) as s:
            rows = s.scalars(sa.select(LeaseRow).where(LeaseRow.name.startswith(prefix, autoescape=True))
                             .order_by(LeaseRow.name))
            return [_lease(row) for row in rows]

    def get_lease(self, name: str) -> Lease | None:
        with self._tx(write=False) as s:
            row = s.get(LeaseRow, name)
            return None if row is None else _lease(row)

    # ================================================================================ broker accounts

    def upsert_broker_account(self, name: str, broker: str, config: Mapping[str, Any]) -> BrokerAccount:
        """Create or update an account. ``config`` must hold no secrets (they come from the
        environment); keys that name one are refused."""
        secret = [key for key in _walk_keys(config) if _SECRET_KEY.search(key.lower())]
        if secret:
            raise ValueError(f"broker account config may not hold secrets: {sorted(set(secret))}")

        def attempt() -> BrokerAccount:
            with self._tx() as s:
                row = s.scalar(sa.select(BrokerAccountRow).where(BrokerAccountRow.name == name))
                if row is None:
                    row = BrokerAccountRow(name=name)
                    s.add(row)
                row.broker = broker
                row.config = dict(config)
                s.flush()
                return _account(row)

        return self._retrying(f"upsert_broker_account {name}", attempt)

    def list_broker_accounts(self) -> list[BrokerAccount]:
        with self._tx(write=False) as s:
            return [_account(row) for row in s.scalars(sa.select(BrokerAccountRow).order_by(BrokerAccountRow.name))]

    # ================================================================================ rolls

    def start_roll(self, session: str, *, from_contract: str, to_contract: str, reason: str, now_ns: int) -> RollInfo:
        """Begin a contract roll: the session goes ``trading → rolling`` (event ``roll_started``) and
        the roll row is written at its first phase, in one transaction — a crash can never leave a
        roll without its session state or the other way round. One unfinished roll per session."""

        def attempt() -> RollInfo:
            with self._tx() as s:
                session_row = _session_row(s, session)
                if _active_roll_row(s, session) is not None:
                    raise IllegalTransition(session_row.roll_state, "start_roll", session)
                if session_row.contract != from_contract:
                    raise IllegalTransition(session_row.contract, f"roll from {from_contract}", session)
                first = ROLL_PHASE_ORDER[0]
                roll = RollRow(session=session, from_contract=from_contract, to_contract=to_contract,
                               phase=first.value, started_ns=now_ns, updated_ns=now_ns)
                s.add(roll)
                self._transition(s, session_row, SessionEvent.ROLL_STARTED, reason, now_ns)
                session_row.roll_state = first.value
                s.flush()
                self._append(s, session_aggregate(session), "roll",
                             {"roll": roll.id, "from": from_contract, "to": to_contract, "phase": first.value},
                             now_ns)
                return _roll(roll)

        return self._retrying(f"start_roll {session}", attempt)

    def resume_roll(self, session: str, *, now_ns: int) -> RollInfo:
        """Take up the session's unfinished roll after an operator chose ``--resume-roll``: the
        session goes ``trading → rolling`` again; the roll continues from its committed phase."""

        def attempt() -> RollInfo:
            with self._tx() as s:
                session_row = _session_row(s, session)
                roll = _active_roll_row(s, session)
                if roll is None:
                    raise IllegalTransition(session_row.roll_state, "resume_roll (no roll in progress)", session)
                self._transition(s, session_row, SessionEvent.ROLL_STARTED,
                                 f"resuming roll {roll.id} at phase {roll.phase}", now_ns)
                return _roll(roll)

        return self._retrying(f"resume_roll {session}", attempt)

    def abort_roll(self, session: str, *, reason: str, now_ns: int) -> RollInfo:
        """An operator's decision to stop the session's unfinished roll where it is. Refused once
        the roll has begun opening the new contract: from then on a position may exist there, and
        only finishing the roll (``--resume-roll``) leaves the session consistent."""

        def attempt() -> RollInfo:
            with self._tx() as s:
                session_row = _session_row(s, session)
                roll = _active_roll_row(s, session)
                if roll is None:
                    raise IllegalTransition(session_row.roll_state, "abort_roll (no roll in progress)", session)
                phase = RollPhase(roll.phase)
                if ROLL_PHASE_ORDER.index(phase) >= ROLL_PHASE_ORDER.index(RollPhase.OPEN_NEW):
                    raise IllegalTransition(phase, "abort_roll (orders on the new contract may exist: resume it)",
                                            session)
                roll.phase = RollPhase.ABORTED.value
                roll.updated_ns = now_ns
                session_row.roll_state = RollPhase.NONE.value
                session_row.updated_ns = now_ns
                s.flush()
                self._append(s, session_aggregate(session), "roll",
                             {"roll": roll.id, "phase": RollPhase.ABORTED.value, "was": phase.value,
                              "reason": reason}, now_ns)
                return _roll(roll)

        return self._retrying(f"abort_roll {session}", attempt)

    def set_roll_phase(self, roll_id: int, phase: RollPhase | str, *, now_ns: int) -> RollInfo:
        """Advance a roll to ``phase`` (phases only move forward). At ``done`` the session's
        contract becomes the roll's target."""
        target = RollPhase(phase)

        def attempt() -> RollInfo:
            with self._tx() as s:
                roll = s.get(RollRow, roll_id)
                if roll is None:
                    raise LookupError(f"no roll {roll_id}")
                current = RollPhase(roll.phase)
                if target not in ROLL_PHASE_ORDER or ROLL_PHASE_ORDER.index(target) <= ROLL_PHASE_ORDER.index(current):
                    raise IllegalTransition(current, target, roll.session)
                session_row = _session_row(s, roll.session)
                roll.phase = target.value
                roll.updated_ns = now_ns
                if target is RollPhase.DONE:
                    session_row.contract = roll.to_contract
                    session_row.roll_state = RollPhase.NONE.value
                    self._transition(s, session_row, SessionEvent.ROLL_FINISHED,
                                     f"rolled {roll.from_contract} -> {roll.to_contract}", now_ns)
                else:
                    session_row.roll_state = target.value
                session_row.updated_ns = now_ns
                s.flush()
                self._append(s, session_aggregate(roll.session), "roll",
                             {"roll": roll.id, "phase": target.value}, now_ns)
                return _roll(roll)

        return self._retrying(f"set_roll_phase {roll_id}", attempt)

    def active_roll(self, session: str) -> RollInfo | None:
        """The session's unfinished roll, if any (a restart that finds one must not guess)."""
        with self._tx(write=False) as s:
            row = _active_roll_row(s, session)
            return None if row is None else _roll(row)

    # ================================================================================ jobs

    def enqueue_job(
        self,
        kind: str,
        payload: Mapping[str, Any],
        *,
        now_ns: int,
        run_after_ns: int | None = None,
        max_attempts: int = DEFAULT_JOB_MAX_ATTEMPTS,
    ) -> Job:
        with self._tx() as s:
            row = JobRow(kind=kind, payload=dict(payload), status=JobStatus.QUEUED.value, attempts=0,
                         max_attempts=max_attempts, run_after_ns=now_ns if run_after_ns is None else run_after_ns,
                         claimed_by=None, claimed_until_ns=None, error=None, result=None,
                         created_ns=now_ns, updated_ns=now_ns)
            s.add(row)
            s.flush()
            return _job(row)

    def claim_job(
        self, worker: str, *, claim_ns: int, now_ns: int, kinds: Iterable[str] | None = None
    ) -> Job | None:
        """Claim the next runnable job for ``claim_ns`` nanoseconds (``None``: nothing to do).

        Runnable: queued and due, or running under a claim that expired (its worker died). On
        PostgreSQL the row is locked ``FOR UPDATE SKIP LOCKED``, so workers never queue behind
        each other; on SQLite the write lock serialises claims. A job whose attempts are used up
        when its claim expires is marked failed instead.
        """
        wanted = None if kinds is None else list(kinds)

        def attempt() -> Job | None:
            with self._tx() as s:
                while True:
                    query = (
                        sa.select(JobRow)
                        .where(
                            sa.or_(
                                sa.and_(JobRow.status == JobStatus.QUEUED.value, JobRow.run_after_ns <= now_ns),
                                sa.and_(JobRow.status == JobStatus.RUNNING.value, JobRow.claimed_until_ns <= now_ns),
                            )
                        )
                        .order_by(JobRow.run_after_ns, JobRow.id)
                        .limit(1)
                        .with_for_update(skip_locked=True)
                    )
                    if wanted is not None:
                        query = query.where(JobRow.kind.in_(wanted))
                    row = s.scalar(query)
                    if row is None:
                        return None
                    row.updated_ns = now_ns
                    if row.status == JobStatus.RUNNING.value and row.attempts >= row.max_attempts:
                        row.status = JobStatus.FAILED.value
                        row.error = f"abandoned by {row.claimed_by} after {row.attempts} attempt(s)"
                        row.claimed_by = None
                        row.claimed_until_ns = None
                        s.flush()
                        continue
                    row.status = JobStatus.RUNNING.value
                    row.attempts += 1
                    row.claimed_by = worker
                    row.claimed_until_ns = now_ns + claim_ns
                    s.flush()
                    return _job(row)

        return self._retrying(f"claim_job {worker}", attempt)

    def complete_job(self, job_id: int, worker: str, *, result: Mapping[str, Any] | None, now_ns: int) -> Job:
        """Mark a claimed job done. ``FencedOut`` if the claim was lost to another worker."""
        with self._tx() as s:
            row = self._claimed_job(s, job_id, worker)
            row.status = JobStatus.DONE.value
            row.result = None if result is None else dict(result)
            row.error = None
            row.claimed_until_ns = None
            row.updated_ns = now_ns
            s.flush()
            return _job(row)

    def fail_job(self, job_id: int, worker: str, *, error: str, retry_at_ns: int | None, now_ns: int) -> Job:
        """Record a failed attempt: queued again at ``retry_at_ns`` (the caller's retry policy
        decides when) while attempts remain, else failed for good."""
        with self._tx() as s:
            row = self._claimed_job(s, job_id, worker)
            row.error = error
            row.claimed_by = None
            row.claimed_until_ns = None
            row.updated_ns = now_ns
            if retry_at_ns is not None and row.attempts < row.max_attempts:
                row.status = JobStatus.QUEUED.value
                row.run_after_ns = retry_at_ns
            else:
                row.status = JobStatus.FAILED.value
            s.flush()
            return _job(row)

    def get_job(self, job_id: int) -> Job:
        with self._tx(write=False) as s:
            row = s.get(JobRow, job_id)
            if row is None:
                raise JobNotFound(str(job_id))
            return _job(row)

    def jobs(self, status: JobStatus | str | None = None, *, limit: int | None = None) -> list[Job]:
        query = sa.select(JobRow).order_by(JobRow.id)
        if status is not None:
            query = query.where(JobRow.status == JobStatus(status).value)
        if limit is not None:
            query = query.limit(limit)
        with self._tx(write=False) as s:
            return [_job(row) for row in s.scalars(query)]

    # ================================================================================ tokens

    def put_token(self, account: str, kind: str, ciphertext: bytes, *, expires_ns: int | None, now_ns: int) -> TokenRecord:
        """Store an already-encrypted token (the tokens service encrypts; plaintext never gets here)."""
        if not isinstance(ciphertext, (bytes, bytearray)):
            raise TypeError("tokens are stored encrypted, as bytes")

        def attempt() -> TokenRecord:
            with self._tx() as s:
                row = s.get(TokenRow, account)
                if row is None:
                    row = TokenRow(account=account)
                    s.add(row)
                row.kind = kind
                row.ciphertext = bytes(ciphertext)
                row.expires_ns = expires_ns
                row.updated_ns = now_ns
                s.flush()
                return _token(row)

        return self._retrying(f"put_token {account}", attempt)

    def get_token(self, account: str) -> TokenRecord | None:
        with self._tx(write=False) as s:
            row = s.get(TokenRow, account)
            return None if row is None else _token(row)

    # ================================================================================ events

    def events(self, aggregate: str) -> list[EventRecord]:
        """One aggregate's events in order (``order:<cid>``, ``session:<name>``, ``position:<s>:<sym>``)."""
        query = (
            sa.select(EventRow).where(EventRow.aggregate == aggregate).order_by(EventRow.aggregate_version)
        )
        with self._tx(write=False) as s:
            return [
                EventRecord(row.aggregate, row.aggregate_version, row.kind, dict(row.data), row.ts_ns)
                for row in s.scalars(query)
            ]

    # ================================================================================ internals

    @contextmanager
    def _tx(self, *, write: bool = True, durable: bool = True) -> Iterator[Session]:
        """One transaction; driver errors leave as named errors.

        ``durable=False`` (PostgreSQL): the commit returns once the transaction is visible to every
        reader, without waiting for its WAL flush (a connection with ``synchronous_commit = off``;
        the server flushes it within a few hundred milliseconds). Only for writes that can be
        lost in a *server* crash without harm: what the broker or the bars can tell again (an
        acknowledgement, a strategy's indicators). Never for a write-ahead record. A later durable
        commit flushes every earlier one with it: the WAL is one sequence."""
        maker = (self._write if durable else self._deferred) if write else self._read
        try:
            with maker() as session, session.begin():
                yield session
        except StaleDataError as exc:
            raise ConcurrentUpdate(f"lost an optimistic-locking race: {exc}") from exc
        except sa_exc.DBAPIError as exc:
            error = store_error(exc, self._engine)
            if error is None:
                raise
            raise error from exc

    def _retrying(self, what: str, attempt: Callable[[], T]) -> T:
        for number in range(1, MAX_ATTEMPTS + 1):
            try:
                return attempt()
            except ConcurrentUpdate as exc:
                if number == MAX_ATTEMPTS:
                    raise
                log.debug(
                    "retrying after a lost race",
                    extra={"action": "retry", "fields": {"what": what, "attempt": number, "error": str(exc)}},
                )
        raise AssertionError("unreachable")

    def _apply(
        self,
        s: Session,
        client_order_id: str,
        events: Sequence[OrderEvent],
        *,
        epoch: int | None = None,
        expected_version: int | None = None,
        row: OrderRow | None = None,
    ) -> list[OrderState]:
        """Apply ``events`` in order: the states after each. The row is written once, with the
        last state (one ``UPDATE ... WHERE version = <read>``), and the events in one insert:
        events learned together cost one round trip each way, not one per event."""
        if row is None:
            row = s.scalar(sa.select(OrderRow).where(OrderRow.client_order_id == client_order_id))
            if row is None:
                raise OrderNotFound(client_order_id)
        if expected_version is not None and row.version != expected_version:
            raise ConcurrentUpdate(f"{client_order_id} is at version {row.version}, not {expected_version}")
        if epoch is not None:
            session_row = s.scalar(sa.select(SessionRow).where(SessionRow.name == row.session))
            if session_row is not None:  # a removed session has no lease holder to defer to
                _check_epoch(session_row, epoch, f"order event on {client_order_id}")
        states = _fold(_order_state(row), events)
        _write_order(row, states[-1])
        aggregate = order_aggregate(client_order_id)
        s.add_all([EventRow(aggregate=aggregate, aggregate_version=after.version, kind=event.kind.value,
                            data=dict(event.data), ts_ns=event.ts_ns) for event, after in zip(events, states)])
        s.flush()
        return states

    def _move_position(
        self,
        s: Session,
        session: str,
        symbol: str,
        side: Side,
        quantity: Decimal,
        price: Decimal,
        broker_fill_id: str,
        now_ns: int,
    ) -> PositionInfo:
        row = _position_row(s, session, symbol)
        if row is None:
            row = PositionRow(session=session, symbol=symbol, quantity=ZERO, average_price=None)
            s.add(row)
        new_quantity, new_average = apply_fill(row.quantity, row.average_price, side, quantity, price)
        row.quantity = new_quantity
        row.average_price = new_average
        row.updated_ns = now_ns
        s.flush()
        self._append(s, position_aggregate(session, symbol), POSITION_FILL_EVENT,
                     position_fill_data(broker_fill_id, side, quantity, price, new_quantity, new_average), now_ns)
        return _position_info(row)

    def _take_lease(self, s: Session, name: str, owner: str, ttl_ns: int, now_ns: int,
                    holder_is_dead: Callable[[str], bool] | None) -> Lease | None:
        row = s.get(LeaseRow, name)
        if row is None:
            row = LeaseRow(name=name, owner=owner, epoch=1, expires_ns=now_ns + ttl_ns)
            s.add(row)
            s.flush()  # a concurrent first acquire fails here (primary key): the retry re-reads
            return _lease(row)
        taken_from = None
        if row.owner != owner:
            if row.owner is not None and row.expires_ns > now_ns:
                if holder_is_dead is None or not holder_is_dead(row.owner):
                    return None
                taken_from = row.owner
            row.owner = owner
            row.epoch += 1
        row.expires_ns = now_ns + ttl_ns
        s.flush()  # UPDATE ... WHERE version = <read>: a concurrent taker makes this raise
        return replace(_lease(row), taken_from=taken_from)

    def _claimed_job(self, s: Session, job_id: int, worker: str) -> JobRow:
        row = s.get(JobRow, job_id)
        if row is None:
            raise JobNotFound(str(job_id))
        if row.status != JobStatus.RUNNING.value or row.claimed_by != worker:
            raise FencedOut(f"job {job_id} is not claimed by {worker} (status {row.status}, claimed by {row.claimed_by})")
        return row

    def _transition(self, s: Session, row: SessionRow, event: SessionEvent, reason: str, now_ns: int) -> None:
        before = SessionState(row.state)
        after = session_fsm.transition(before, event, row.name)
        row.state = after.value
        row.state_reason = reason
        row.updated_ns = now_ns
        s.flush()
        self._append(s, session_aggregate(row.name), event.value,
                     {"from": before.value, "to": after.value, "reason": reason}, now_ns)

    @staticmethod
    def _append(
        s: Session, aggregate: str, kind: str, data: dict[str, Any], ts_ns: int, *, version: int | None = None
    ) -> None:
        """Append one event. Without ``version``, it is the aggregate's next number (aggregates
        such as a session name can outlive their row). A concurrent append of the same number
        violates the unique (aggregate, aggregate_version) and becomes ``ConcurrentUpdate``."""
        if version is None:
            last = s.scalar(
                sa.select(sa.func.max(EventRow.aggregate_version)).where(EventRow.aggregate == aggregate)
            )
            version = (last or 0) + 1
        s.add(EventRow(aggregate=aggregate, aggregate_version=version, kind=kind, data=data, ts_ns=ts_ns))
        s.flush()


# ==================================================================================== row <-> domain


def _snapshot_reads(engine: Engine) -> Engine:
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="REPEATABLE READ")
    return engine


def _session_row(s: Session, name: str) -> SessionRow:
    row = s.scalar(sa.select(SessionRow).where(SessionRow.name == name))
    if row is None:
        raise SessionNotFound(name)
    return row


def _risk_view(s: Session, session_row: SessionRow) -> RiskView:
    session = session_row.name
    orders = s.scalars(sa.select(OrderRow).where(OrderRow.session == session, OrderRow.status.in_(_OPEN_STATUSES))
                       .order_by(OrderRow.id))
    open_orders = tuple(_order_state(o) for o in orders)
    positions = s.scalars(sa.select(PositionRow).where(PositionRow.session == session).order_by(PositionRow.symbol))
    held = tuple(_position_info(p) for p in positions)
    roll = _active_roll_row(s, session)
    return RiskView(session=_session_info(session_row), open_orders=open_orders, positions=held,
                    roll=None if roll is None else _roll(roll))


def _position_row(s: Session, session: str, symbol: str) -> PositionRow | None:
    return s.scalar(sa.select(PositionRow).where(PositionRow.session == session, PositionRow.symbol == symbol))


def _active_roll_row(s: Session, session: str) -> RollRow | None:
    return s.scalar(
        sa.select(RollRow)
        .where(RollRow.session == session, RollRow.phase.not_in((RollPhase.DONE.value, RollPhase.ABORTED.value)))
        .order_by(RollRow.id.desc())
        .limit(1)
    )


def _check_epoch(session_row: SessionRow, epoch: int, what: str) -> None:
    if epoch < session_row.lease_epoch:
        raise FencedOut(
            f"{what} for session {session_row.name} at epoch {epoch} refused: "
            f"epoch {session_row.lease_epoch} ({session_row.lease_owner}) is newer"
        )


def _session_info(row: SessionRow) -> SessionInfo:
    return SessionInfo(
        id=row.id,
        name=row.name,
        strategy=row.strategy,
        params=dict(row.params),
        symbol=row.symbol,
        contract=row.contract,
        interval=row.interval,
        account=row.account,
        data_source=row.data_source,
        state=SessionState(row.state),
        state_reason=row.state_reason,
        heat_state=HeatState(row.heat_state),
        roll_state=RollPhase(row.roll_state),
        lease_owner=row.lease_owner,
        lease_epoch=row.lease_epoch,
        fill_cursor=row.fill_cursor,
        created_ns=row.created_ns,
        updated_ns=row.updated_ns,
        version=row.version,
    )


def _order_state(row: OrderRow) -> OrderState:
    return OrderState(
        client_order_id=row.client_order_id,
        session=row.session,
        signal=row.signal,
        symbol=row.symbol,
        side=Side(row.side),
        order_type=OrderType(row.order_type),
        quantity=row.quantity,
        limit_price=row.limit_price,
        stop_price=row.stop_price,
        time_in_force=TimeInForce(row.time_in_force),
        status=OrderStatus(row.status),
        previous_status=None if row.previous_status is None else OrderStatus(row.previous_status),
        broker_order_id=row.broker_order_id,
        filled_quantity=row.filled_quantity,
        average_price=row.average_price,
        reason=row.reason,
        version=row.version,
        bracket_group=row.bracket_group,
        epoch=row.epoch,
        created_ns=row.created_ns,
        updated_ns=row.updated_ns,
    )


def _write_order(row: OrderRow, state: OrderState) -> None:
    for column, value in order_values(state).items():
        setattr(row, column, value)


def order_values(state: OrderState) -> dict[str, Any]:
    """The ``orders`` row of ``state``, column by column (all but ``id``)."""
    return {
        "client_order_id": state.client_order_id,
        "session": state.session,
        "signal": state.signal,
        "symbol": state.symbol,
        "side": state.side.value,
        "order_type": state.order_type.value,
        "quantity": state.quantity,
        "limit_price": state.limit_price,
        "stop_price": state.stop_price,
        "time_in_force": state.time_in_force.value,
        "status": state.status.value,
        "previous_status": None if state.previous_status is None else state.previous_status.value,
        "broker_order_id": state.broker_order_id,
        "filled_quantity": state.filled_quantity,
        "average_price": state.average_price,
        "reason": state.reason,
        "bracket_group": state.bracket_group,
        "epoch": state.epoch,
        "created_ns": state.created_ns,
        "updated_ns": state.updated_ns,
        "version": state.version,
    }


def _new_order(session_row: Any, *, signal: int, symbol: str, side: Side | str, order_type: OrderType | str,
               quantity: Decimal | int | str, limit_price: Decimal | int | str | None,
               stop_price: Decimal | int | str | None, time_in_force: TimeInForce | str, epoch: int, now_ns: int,
               bracket_group: str | None) -> tuple[OrderEvent, OrderState]:
    """The ``created`` event of a new order of this session, and the state it makes. Raises
    ``FencedOut`` if ``epoch`` is older than the session's lease epoch."""
    _check_epoch(session_row, epoch, "create_order")
    event = OrderEvent.created(
        now_ns,
        client_order_id=Store.client_order_id_for(_session_info(session_row), signal),
        session=session_row.name,
        signal=signal,
        symbol=symbol,
        side=Side(side),
        order_type=OrderType(order_type),
        quantity=to_money(quantity),
        limit_price=optional_money(limit_price),
        stop_price=optional_money(stop_price),
        time_in_force=TimeInForce(time_in_force),
        bracket_group=bracket_group,
        epoch=epoch,
    )
    return event, order_fsm.apply(None, event)


def _fill_event(order_row: Any, broker_fill_id: str, side: Side, quantity: Decimal, price: Decimal,
                ts_ns: int) -> OrderEvent:
    """The ``fill`` event of a broker fill on our order (raises if the sides disagree)."""
    if Side(order_row.side) is not side:
        raise ValueError(f"fill {broker_fill_id} is a {side} but order {order_row.client_order_id} is a {order_row.side}")
    return OrderEvent.fill(ts_ns, broker_fill_id=broker_fill_id, quantity=quantity, price=price)


POSITION_FILL_EVENT = "fill"


def position_fill_data(broker_fill_id: str, side: Side, quantity: Decimal, price: Decimal, position_quantity: Decimal,
                       average_price: Decimal | None) -> dict[str, Any]:
    """The data of a position's ``fill`` event."""
    return {
        "broker_fill_id": broker_fill_id,
        "side": side.value,
        "quantity": money_str(quantity),
        "price": money_str(price),
        "position_quantity": money_str(position_quantity),
        "average_price": money_str(average_price),
    }


def _known_order(known: OrderState, wanted: OrderState) -> OrderState:
    """An order written before for the same (session, signal): it, if its terms are the same."""
    if not _same_terms(known, wanted):
        raise DuplicateClientOrderId(f"{known.client_order_id} exists with other terms (signal {known.signal} reused?)")
    return known


def _admit(admit: Callable[[RiskView], str | None] | None, view: RiskView) -> None:
    if admit is not None and (reason := admit(view)) is not None:
        raise NotAdmitted(reason)


def _fold(state: OrderState, events: Sequence[OrderEvent]) -> list[OrderState]:
    """The states after each of ``events`` applied in order (raises as ``order_fsm.apply``)."""
    states: list[OrderState] = []
    for event in events:
        state = order_fsm.apply(state, event)
        states.append(state)
    return states


def _same_terms(a: OrderState, b: OrderState) -> bool:
    return (a.symbol, a.side, a.order_type, a.quantity, a.limit_price, a.stop_price, a.time_in_force) == (
        b.symbol, b.side, b.order_type, b.quantity, b.limit_price, b.stop_price, b.time_in_force
    )


def _fill_info(row: FillRow) -> FillInfo:
    return FillInfo(
        broker_fill_id=row.broker_fill_id,
        client_order_id=row.client_order_id,
        session=row.session,
        symbol=row.symbol,
        side=Side(row.side),
        quantity=row.quantity,
        price=row.price,
        ts_ns=row.ts_ns,
        recorded_ns=row.recorded_ns,
    )


def _position_info(row: PositionRow) -> PositionInfo:
    return PositionInfo(
        session=row.session,
        symbol=row.symbol,
        quantity=row.quantity,
        average_price=row.average_price,
        updated_ns=row.updated_ns,
        version=row.version,
    )


def _snapshot(row: StrategyStateRow) -> StrategySnapshot:
    return StrategySnapshot(
        session=row.session, state=row.state, outbox=row.outbox, version=row.version, updated_ns=row.updated_ns
    )


def _lease(row: LeaseRow) -> Lease:
    return Lease(name=row.name, owner=row.owner, epoch=row.epoch, expires_ns=row.expires_ns)


def _account(row: BrokerAccountRow) -> BrokerAccount:
    return BrokerAccount(name=row.name, broker=row.broker, config=dict(row.config))


def _roll(row: RollRow) -> RollInfo:
    return RollInfo(
        id=row.id,
        session=row.session,
        from_contract=row.from_contract,
        to_contract=row.to_contract,
        phase=RollPhase(row.phase),
        started_ns=row.started_ns,
        updated_ns=row.updated_ns,
        version=row.version,
    )


def _job(row: JobRow) -> Job:
    return Job(
        id=row.id,
        kind=row.kind,
        payload=row.payload,
        status=JobStatus(row.status),
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        run_after_ns=row.run_after_ns,
        claimed_by=row.claimed_by,
        claimed_until_ns=row.claimed_until_ns,
        error=row.error,
        result=row.result,
        created_ns=row.created_ns,
        updated_ns=row.updated_ns,
        version=row.version,
    )


def _token(row: TokenRow) -> TokenRecord:
    return TokenRecord(
        account=row.account,
        kind=row.kind,
        ciphertext=row.ciphertext,
        expires_ns=row.expires_ns,
        updated_ns=row.updated_ns,
        version=row.version,
    )


def _walk_keys(value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key)
            yield from _walk_keys(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _walk_keys(item)


# ==================================================================================== driver errors

_UNIQUE_COLUMNS_TO_CONSTRAINT: dict[str, str] = {}
for _table in Base.metadata.tables.values():
    for _constraint in _table.constraints:
        if isinstance(_constraint, (sa.UniqueConstraint, sa.PrimaryKeyConstraint)) and _constraint.name:
            _columns = ", ".join(f"{_table.name}.{column.name}" for column in _constraint.columns)
            _UNIQUE_COLUMNS_TO_CONSTRAINT[_columns] = str(_constraint.name)
del _table, _constraint, _columns

_SQLITE_UNIQUE = re.compile(r"UNIQUE constraint failed: (?P<columns>[\w., ]+)")


def _constraint_name(exc: sa_exc.IntegrityError) -> str | None:
    diag = getattr(exc.orig, "diag", None)
    if diag is not None and getattr(diag, "constraint_name", None):
        return str(diag.constraint_name)
    match = _SQLITE_UNIQUE.search(str(exc.orig))
    if match:
        return _UNIQUE_COLUMNS_TO_CONSTRAINT.get(match.group("columns").strip())
    return None


def store_error(exc: sa_exc.DBAPIError, engine: Engine) -> Exception | None:
    """The store's named error for a driver error on ``engine``, or None (leave it as it is)."""
    if isinstance(exc, sa_exc.IntegrityError):
        return _integrity_error(exc)
    if isinstance(exc, sa_exc.OperationalError):
        if getattr(exc.orig, "sqlstate", None) in _PG_RETRYABLE_SQLSTATES:
            return ConcurrentUpdate(f"transaction conflict: {type(exc.orig).__name__}")
        return StoreUnavailable(f"database {safe_url(engine.url)} unavailable: {type(exc.orig).__name__}: {exc.orig}")
    if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError):
        return StoreUnavailable(f"database {safe_url(engine.url)} connection lost: {type(exc.orig).__name__}")
    return None


def _integrity_error(exc: sa_exc.IntegrityError) -> StoreError:
    """The named error for a constraint violation (the constraint name is kept on it)."""
    constraint = _constraint_name(exc)
    error: StoreError
    if constraint == UQ_ORDERS_CLIENT_ORDER_ID:
        error = DuplicateClientOrderId("client order id exists already")
    elif constraint == UQ_SESSIONS_NAME:
        error = SessionExists("a session of that name exists already")
    elif constraint == UQ_FILLS_BROKER_FILL_ID:
        error = DuplicateFill("broker fill id booked already")
    elif constraint == UQ_BROKER_ACCOUNTS_NAME or (constraint and constraint.startswith(("uq_", "pk_"))):
        error = ConcurrentUpdate(f"a concurrent writer inserted the same key first ({constraint})")
    elif "FOREIGN KEY" in str(exc.orig) or (constraint and constraint.startswith("fk_")):
        error = SessionNotFound(f"no such session ({constraint or 'foreign key'})")
    else:
        error = StoreError(f"integrity error: {type(exc.orig).__name__}")
    error.constraint = constraint  # type: ignore[attr-defined]
    return error
