"""The account process of one session: the order lifecycle against its broker account.

Order of work for a submit (the write-ahead rule): commit the order as ``pending_submit`` with its
``created`` event, *then* call the broker, then commit what the broker said. An answer that may
hide an accepted order (timeout after send, connection reset, 5xx) makes the order ``unknown``
and is resolved only by asking the broker for the client order id — never by sending again.

At start, before serving anyone, every unresolved order of the session is settled with the broker
and fills missed while down are fetched from the broker's ledger (applied once each: broker fill
ids are unique in the database).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from decimal import Decimal


import zmq

from brokers.errors import AuthFailed, BrokerError, NotSupported, OutcomeUnknown, Rejected, Retryable, UnknownSymbol
from bus import topics
from bus.client import Publisher, RpcWorker
from bus.errors import CODE_UNAVAILABLE
from bus.envelope import now_ns
from bus.logs import log
from schema import messages as m
from schema.enums import HeatState, OrderStatus, SessionState, UNRESOLVED_ORDER_STATUSES
from schema.errors import NotAdmitted, StoreUnavailable
from schema.records import RiskView
from schema import order_fsm
from schema.order_fsm import IllegalTransition, OrderEvent, OrderEventKind, OrderState
from services.account.core import Resolution, adoption_events, resolve
from services.convert import order_message
from services.retry import Backoff
from services.account.core import adds_risk
from services.account import heat as heat_rules
from services.rolls import is_roll_signal
from services.runtime import ProcessShell, Stopping, owner_is_dead
from services.session_state import escalate
from services.testhooks import crash_point

FILL_POLL_S = 0.2
RESOLVE_EVERY_S = 2.0
LEASE_TTL_S = 6.0
LEASE_RENEW_S = 1.0
POLL_MS = 50
RECOVERY_LOOKUPS = 5
RESOLVE_BACKOFF = Backoff(base_s=0.2, cap_s=2.0)
EQUITY_TTL_S = 5.0
"""How long an equity figure from the broker is reused before asking again (monotonic clock)."""


class FencedOut(Exception):
    """Another copy of this session's account process holds a newer lease."""


class AccountService:
    def __init__(self, shell: ProcessShell, session_name: str) -> None:
        self.shell = shell
        self.log = shell.log
        self.store = shell.store()
        self.session = self.store.get_session(session_name)
        self.broker = shell.broker(self.store, self.session.account)
        self.epoch = 0
        self.fill_cursor: str | None = None
        self.publisher: Publisher | None = None
        self.worker: RpcWorker | None = None
        self.equity = EquityCache(self.broker, shell.config.risk.equity, self.log)

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        self.epoch = self._acquire_lease()
        # Read only now: a copy that waited for the lease must not start from an old watermark.
        self.fill_cursor = self.store.get_session(self.session.name).fill_cursor
        bus = self.shell.bus()
        self.publisher = bus.publisher()
        self.worker = bus.rpc_worker(topics.account_service(self.session.name))
        try:
            self.recover()
            self.poll_fills()
            log(self.log, "serving", session=self.session.name, epoch=self.epoch)
            self._loop()
        finally:
            self.store.release_lease(self._lease_name, self.shell.owner)
            bus.close()
            self.broker.close()

    @property
    def _lease_name(self) -> str:
        return f"account:{self.session.name}"

    def _acquire_lease(self) -> int:
        while True:
            # A holder killed on this host (a restart after kill -9) is not waited out.
            lease = self.store.acquire_session_lease(
                self.session.name, self.shell.owner, ttl_ns=int(LEASE_TTL_S * 1e9), now_ns=now_ns(),
                holder_is_dead=owner_is_dead)
            if lease is not None:
                log(self.log, "lease_acquired", session=self.session.name, epoch=lease.epoch,
                    taken_from_dead_process=lease.taken_from)
                return lease.epoch
            holder = getattr(self.store.get_lease(self._lease_name), "owner", None)
            log(self.log, "waiting_for_lease", level=logging.WARNING, session=self.session.name, holder=holder)
            self.shell.pause(LEASE_RENEW_S)

    def _loop(self) -> None:
        assert self.worker is not None
        poller = zmq.Poller()
        poller.register(self.worker.socket, zmq.POLLIN)
        next_fills = next_resolve = next_renew = time.monotonic()
        while not self.shell.stopping:
            events = dict(poller.poll(POLL_MS))
            if self.worker.socket in events:
                self._serve_pending()
            self.worker.heartbeat()
            now = time.monotonic()
            try:
                if now >= next_renew:
                    next_renew = now + LEASE_RENEW_S
                    self._renew_lease()
                    self.shell.outage.up()  # the renewal always reaches the database
                if now >= next_fills:
                    next_fills = now + FILL_POLL_S
                    self.poll_fills(serve_between=True)
                if now >= next_resolve:
                    next_resolve = now + RESOLVE_EVERY_S
                    self.resolve_unknown()
            except StoreUnavailable as exc:
                # A database outage must not become a restart loop: keep answering (with
                # ``unavailable``) and try again on the next turn. Nothing goes to the broker
                # meanwhile, because every order is written before it is sent.
                self.shell.outage.down(exc, "periodic work")

    def _renew_lease(self) -> None:
        ok = self.store.renew_lease(self._lease_name, self.shell.owner, self.epoch,
                                    ttl_ns=int(LEASE_TTL_S * 1e9), now_ns=now_ns())
        if not ok:
            log(self.log, "fenced_out", level=logging.CRITICAL, session=self.session.name, epoch=self.epoch)
            raise FencedOut(f"lease {self._lease_name} lost at epoch {self.epoch}")

    # ------------------------------------------------------------------ requests

    def _serve_pending(self) -> None:
        assert self.worker is not None
        while (request := self.worker.recv(timeout_ms=0)) is not None:
            body = request.envelope.body
            try:
                reply = self._handle(body)
            except Stopping:
                raise
            except FencedOut:
                raise
            except StoreUnavailable as exc:
                # Each store call is one transaction: nothing is half-written. A repeated request is
                # safe (same client order id; an order already at the broker is found by lookup).
                self.shell.outage.down(exc, f"answering {body.TYPE}")
                reply = m.ErrorReply(code=CODE_UNAVAILABLE, message="database unavailable; ask again later")
            except Exception as exc:  # noqa: BLE001 - answer the caller, keep serving
                self.log.exception("request failed")
                reply = m.ErrorReply(code="internal", message=f"{type(exc).__name__}: {exc}")
            self.worker.reply(request, reply)

    def _handle(self, body: m.Message) -> m.Message:
        if isinstance(body, m.SubmitOrder):
            if body.session != self.session.name:
                return m.ErrorReply(code="wrong_session",
                                    message=f"this is account.{self.session.name}, not {body.session}")
            try:
                return m.OrderReply(order=order_message(self.submit(body)))
            except NotAdmitted as exc:
                return m.ErrorReply(code="unknown_symbol", message=str(exc))
        if isinstance(body, m.CancelOrder):
            order = self.store.find_order(body.client_order_id)
            if body.session != self.session.name or (order is not None and order.session != self.session.name):
                return m.ErrorReply(code="wrong_session", message=f"this is account.{self.session.name}: it cancels "
                                    "only its own session's orders")
            if order is None:
                return m.ErrorReply(code="not_found", message=f"no order {body.client_order_id!r}")
            return m.OrderReply(order=order_message(self.cancel(body.client_order_id)))
        if isinstance(body, m.AccountSnapshotRequest):
            return self.snapshot()
        return m.ErrorReply(code="unsupported", message=f"account service does not handle {body.TYPE!r}")

    def _untradable(self, request: m.SubmitOrder) -> Callable[[RiskView], str | None]:
        """The write-ahead's admission check: why a *new* order's symbol is not this session's to
        trade, or None. Checked inside the write-ahead transaction, before the row: a symbol the
        broker cannot take would leave a ``pending_submit`` row that no broker answer ever
        settles. (A signal written before never reaches it: it is answered from its row.)"""

        def check(view: RiskView) -> str | None:
            tradable = {view.session.contract}
            if view.roll is not None:
                tradable |= {view.roll.from_contract, view.roll.to_contract}
            if request.symbol in tradable:
                return None
            return f"session {self.session.name} trades {', '.join(sorted(tradable))}, not {request.symbol[:40]!r}"

        return check

    def snapshot(self) -> m.AccountSnapshot:
        contract = self.store.get_session(self.session.name).contract  # a roll changes it
        position = self.store.get_position(self.session.name, contract)
        open_orders = [order_message(o) for o in self.store.open_orders(self.session.name) if o.symbol == contract]
        return m.AccountSnapshot(session=self.session.name, symbol=contract,
                                 position=position.quantity, open_orders=open_orders)

    # ------------------------------------------------------------------ orders

    def submit(self, request: m.SubmitOrder) -> OrderState:
        """Write the order ahead, check it, send it. The symbol check and the session's risk view
        for the checks after the write are read in the write-ahead's own transaction: one
        transaction before the broker is asked, not two. Raises ``NotAdmitted`` (nothing
        written) for a symbol the session does not trade."""
        order, created, view = self.store.create_order_with_view(
            self.session.name,
            signal=request.signal,
            symbol=request.symbol,
            side=request.side,
            order_type=request.order_type,
            quantity=request.quantity,
            limit_price=request.limit_price,
            stop_price=request.stop_price,
            time_in_force=request.time_in_force,
            epoch=self.epoch,
            now_ns=now_ns(),
            admit=self._untradable(request),
        )
        if created:
            log(self.log, "order_written", client_order_id=order.client_order_id, signal=request.signal)
            self._publish_order(order)
            crash_point("account.after_write_ahead")
            refusal = self._refusal(order, new=True, view=view)
            if refusal is not None:
                return self._apply(order, OrderEvent(OrderEventKind.REJECTED, now_ns(), {"reason": refusal}))
            return self._send(order)
        # The same signal again (a retried request, or a restarted strategy re-executing its
        # outbox). Whatever state the order is in, it is not sent again without asking.
        if OrderStatus(order.status) in UNRESOLVED_ORDER_STATUSES:
            return self._settle(order)
        return order

    def _refusal(self, order: OrderState, *, new: bool, view: RiskView | None = None) -> str | None:
        """Why a written order must not go to the broker, or None.

        ``new``: the order was just asked for. Those are sent only while the session trades (or,
        halted, when they reduce risk). An order found written-but-never-sent at recovery was
        decided while trading and is sent as the write-ahead promised, unless the rules below
        forbid it.

        While any order of the session is ``unknown`` its whole quantity is open exposure, and the
        session may not add risk on that symbol until the broker has been asked and answered. A
        session waiting for an operator sends nothing at all.
        """
        view = view or self.store.risk_view(self.session.name)
        session = view.session
        state = SessionState(session.state)
        if state is SessionState.NEEDS_OPERATOR:
            return f"session needs an operator: {session.state_reason}"
        others = [o for o in view.open_orders
                  if o.client_order_id != order.client_order_id and o.symbol == order.symbol]
        position = view.position(order.symbol)
        if new and state is SessionState.ROLLING and is_roll_signal(order.signal):
            # A roll's own legs: only on the two contracts of the roll under way.
            roll = view.roll
            if roll is None or order.symbol not in (roll.from_contract, roll.to_contract):
                return f"roll order {order.client_order_id} for {order.symbol} matches no roll under way"
        elif new and state is not SessionState.TRADING:
            # Halted: cancels and risk-reducing orders only. Any other state: nothing new.
            if state is not SessionState.HALTED:
                return f"session is {state}, not trading"
            if adds_risk(position, others, order):
                return f"session is halted ({session.state_reason}): only risk-reducing orders"
        unknown = [o.client_order_id for o in others if OrderStatus(o.status) is OrderStatus.UNKNOWN]
        if unknown and adds_risk(position, others, order):
            return f"adds risk while {', '.join(unknown)} is unresolved"
        return self._heat_refusal(order, view) if new else None

    def _escalate(self, reason: str) -> None:
        log(self.log, "needs_operator", level=logging.CRITICAL, session=self.session.name, reason=reason)
        escalate(self.store, self.session.name, reason, now_ns(), publisher=self.publisher)
        self._publish(topics.ALERT, m.Alert(level="critical", text=reason, session=self.session.name))

    # ------------------------------------------------------------------ portfolio heat

    def _heat_refusal(self, order: OrderState, view: RiskView) -> str | None:
        """Measure heat with ``order`` filled in full, move the session's rung, and refuse the order
        if the rung is ``blocked`` and it adds risk (``heat_rules`` decides; risk-reducing orders
        always pass). Without an equity figure heat is not measured and the rung stays as it is."""
        equity = self.equity.get()
        if equity is None:
            return None
        current = HeatState(view.session.heat_state)
        rules = self.shell.config.risk.thresholds
        others = [o for o in view.open_orders if o.client_order_id != order.client_order_id]
        holdings = {p.symbol: heat_rules.Holding(p.quantity, p.average_price) for p in view.positions}
        risk = heat_rules.open_risk(holdings, [*others, order], rules)
        fraction = heat_rules.heat_fraction(risk, equity)
        rung = heat_rules.next_heat(current, fraction, rules)
        figure = heat_rules.describe(fraction, risk, equity)
        if rung is not current:
            self._heat_changed(current, rung, f"{figure} with {order.client_order_id}; "
                                              f"warn at {heat_rules.pct(rules.warn_pct)}, "
                                              f"block at {heat_rules.pct(rules.block_pct)}")
        if rung is not HeatState.BLOCKED:
            return None
        position = holdings.get(order.symbol, heat_rules.Holding(Decimal(0))).quantity
        if not adds_risk(position, [o for o in others if o.symbol == order.symbol], order):
            return None
        return (f"portfolio heat blocked: {figure} with this order, block level "
                f"{heat_rules.pct(rules.block_pct)}; only risk-reducing orders until heat is below "
                f"{heat_rules.pct(rules.warn_pct)}")

    def _heat_changed(self, before: HeatState, after: HeatState, reason: str) -> None:
        self.store.set_heat_state(self.session.name, after, reason=reason, now_ns=now_ns())
        level, severity = {HeatState.OK: ("info", logging.INFO), HeatState.WARNED: ("warning", logging.WARNING),
                           HeatState.BLOCKED: ("critical", logging.CRITICAL)}[after]
        log(self.log, "heat_changed", level=severity, session=self.session.name,
            before=str(before), after=str(after), reason=reason)
        self._publish(topics.ALERT, m.Alert(level=level, text=f"heat {before} → {after}: {reason}",
                                            session=self.session.name))

    def _send(self, order: OrderState) -> OrderState:
        try:
            answer = self.broker.submit_order(_order_request(order))
        except Rejected as exc:
            return self._apply(order, OrderEvent(OrderEventKind.REJECTED, now_ns(), {"reason": str(exc)}))
        except OutcomeUnknown as exc:
            log(self.log, "outcome_unknown", level=logging.WARNING, client_order_id=order.client_order_id,
                error=str(exc))
            order = self._apply(order, OrderEvent(OrderEventKind.OUTCOME_UNKNOWN, now_ns(), {"reason": str(exc)}))
            return self._settle(order)
        except (Retryable, AuthFailed) as exc:
            # The request never reached the broker, or the broker refused our token and did not act
            # (the tokens service is renewing it): the order stays pending_submit and is sent (after
            # a lookup) when the caller retries or at the next resolve round.
            log(self.log, "send_deferred", level=logging.ERROR if isinstance(exc, AuthFailed) else logging.WARNING,
                client_order_id=order.client_order_id, error=f"{type(exc).__name__}: {exc}")
            return order
        except (NotSupported, UnknownSymbol) as exc:
            return self._apply(order, OrderEvent(OrderEventKind.REJECTED, now_ns(), {"reason": str(exc)}))
        except BrokerError as exc:
            # Anything else (an answer nobody could read …) may have followed the broker acting on
            # it: the same as an unknown outcome — ask, never resend blindly.
            log(self.log, "outcome_unknown", level=logging.WARNING, client_order_id=order.client_order_id,
                error=f"{type(exc).__name__}: {exc}")
            order = self._apply(order, OrderEvent(OrderEventKind.OUTCOME_UNKNOWN, now_ns(), {"reason": str(exc)}))
            return self._settle(order)
        crash_point("account.after_broker_accept")
        # "It reached the broker" and what the broker said are known together: one commit for both,
        # not waited on for its disk flush (``durable=False``): the write-ahead row is durable
        # already, and recovery asks the broker for this answer again if a server crash loses it.
        sent = OrderEvent(OrderEventKind.SUBMIT_SENT, now_ns(), {})
        events = [sent, *adoption_events(order_fsm.apply(order, sent), OrderStatus(answer.status),
                                         broker_order_id=answer.broker_order_id, reason=answer.reason,
                                         ts_ns=now_ns())]
        return self._apply_all(order, events, durable=False)

    def _settle(self, order: OrderState, *, attempts: int = 1) -> OrderState:
        """Resolve an unresolved order by asking the broker for its client order id.

        With ``attempts`` > 1 (recovery at start) a broker that cannot answer is asked again with
        backoff; if it still cannot tell, the session goes to ``needs_operator`` rather than guess.
        """
        for attempt in range(1, attempts + 1):
            try:
                found = self.broker.order_by_client_id(order.client_order_id)
                break
            except BrokerError as exc:
                log(self.log, "resolve_failed", level=logging.WARNING, client_order_id=order.client_order_id,
                    attempt=attempt, error=f"{type(exc).__name__}: {exc}")
                if attempt == attempts:
                    if attempts > 1:
                        self._escalate(f"cannot tell whether {order.client_order_id} ({order.status}) reached "
                                       f"the broker: lookup failed {attempts} times ({type(exc).__name__})")
                    return order
                self.shell.pause(RESOLVE_BACKOFF.delay(attempt) or RESOLVE_BACKOFF.cap_s)
        step = resolve(order, found=found is not None)
        log(self.log, "resolve", client_order_id=order.client_order_id, status=str(order.status),
            resolution=str(step.resolution), why=step.why)
        if step.resolution is Resolution.ADOPT:
            return self._adopt(order, found)
        if step.resolution is Resolution.SEND:
            refusal = self._refusal(order, new=False)
            if refusal is not None:
                return self._apply(order, OrderEvent(OrderEventKind.REJECTED, now_ns(), {"reason": refusal}))
            return self._send(order)
        if step.resolution is Resolution.ABSENT:
            return self._apply(order, OrderEvent(OrderEventKind.RESOLVED_ABSENT, now_ns(), {"reason": step.why}))
        self._escalate(f"{order.client_order_id}: {step.why}")
        return order

    def _adopt(self, order: OrderState, broker_order) -> OrderState:
        for event in adoption_events(order, OrderStatus(broker_order.status),
                                     broker_order_id=broker_order.broker_order_id,
                                     reason=broker_order.reason, ts_ns=now_ns()):
            order = self._apply(order, event)
        return order

    def cancel(self, client_order_id: str) -> OrderState:
        order = self.store.get_order(client_order_id)
        if OrderStatus(order.status).is_terminal:
            return order
        order = self._apply(order, OrderEvent(OrderEventKind.CANCEL_REQUESTED, now_ns(), {}))
        try:
            answer = self.broker.cancel_order(client_order_id)
        except OutcomeUnknown:
            return self._settle_cancel(order)
        except BrokerError as exc:
            return self._apply(order, OrderEvent(OrderEventKind.CANCEL_REJECTED, now_ns(), {"reason": str(exc)}))
        return self._adopt(order, answer)

    def _settle_cancel(self, order: OrderState) -> OrderState:
        try:
            found = self.broker.order_by_client_id(order.client_order_id)
        except BrokerError:
            return order
        if found is None:
            return order
        if OrderStatus(found.status) in (OrderStatus.CANCELLED, OrderStatus.EXPIRED):
            return self._adopt(order, found)
        return self._apply(order, OrderEvent(OrderEventKind.CANCEL_REJECTED, now_ns(),
                                             {"reason": f"still {found.status} at broker"}))

    def _apply_all(self, order: OrderState, events: list[OrderEvent], *, durable: bool = True) -> OrderState:
        try:
            states = self.store.apply_order_events(order.client_order_id, events, epoch=self.epoch,
                                                   durable=durable, known=order)
        except IllegalTransition as exc:
            log(self.log, "illegal_transition", level=logging.ERROR, client_order_id=order.client_order_id,
                status=str(order.status), event="+".join(str(e.kind) for e in events), error=str(exc))
            return self.store.get_order(order.client_order_id)
        for state in states:
            self._publish_order(state)
        return states[-1]

    def _apply(self, order: OrderState, event: OrderEvent) -> OrderState:
        try:
            updated = self.store.apply_order_event(order.client_order_id, event, epoch=self.epoch)
        except IllegalTransition as exc:
            log(self.log, "illegal_transition", level=logging.ERROR, client_order_id=order.client_order_id,
                status=str(order.status), event=str(event.kind), error=str(exc))
            return self.store.get_order(order.client_order_id)
        self._publish_order(updated)
        return updated

    # ------------------------------------------------------------------ recovery and fills

    def recover(self) -> None:
        """Settle every unresolved order with the broker before serving anyone."""
        for order in self.store.orders(self.session.name, statuses=sorted(UNRESOLVED_ORDER_STATUSES)):
            self._settle(order, attempts=RECOVERY_LOOKUPS)

    def resolve_unknown(self) -> None:
        for order in self.store.orders(self.session.name, statuses=[OrderStatus.UNKNOWN, OrderStatus.PENDING_SUBMIT]):
            self._settle(order)

    def poll_fills(self, *, serve_between: bool = False) -> None:
        """Book the fills the broker reports after the watermark, then move the watermark.
        ``serve_between`` (the serving loop): answer waiting requests after each fill; not at
        start, where every fill missed while down is booked before anything is served."""
        # The account is the only writer of its session's watermark: kept in memory after start,
        # so the 5-per-second poll costs no database read.
        try:
            fills, cursor = self.broker.fills_since(self.fill_cursor)
        except BrokerError as exc:
            log(self.log, "fills_poll_failed", level=logging.WARNING, error=f"{type(exc).__name__}: {exc}")
            return
        booked = 0
        for fill in fills:
            if not (fill.client_order_id or "").startswith(f"{self.session.name}."):
                # Another session's order on a shared account, or a trade made outside the engine:
                # not ours to book. The reconciler repairs positions to the broker's truth.
                continue
            result = self.store.record_fill(
                self.session.name,
                broker_fill_id=fill.broker_fill_id,
                client_order_id=fill.client_order_id,
                symbol=fill.symbol,
                side=str(fill.side),
                quantity=fill.quantity,
                price=fill.price,
                ts_ns=fill.ts_ns,
                now_ns=now_ns(),
                durable=False,  # the cursor, saved durably below, flushes it; lost, it is fetched again
            )
            if result is None:
                continue  # already in the ledger
            booked += 1
            log(self.log, "fill_recorded", broker_fill_id=fill.broker_fill_id,
                client_order_id=fill.client_order_id, quantity=str(fill.quantity), price=str(fill.price))
            self._publish(topics.fill(self.session.name), m.FillRecorded(
                session=self.session.name, broker_fill_id=fill.broker_fill_id,
                client_order_id=fill.client_order_id or "", symbol=fill.symbol, side=str(fill.side),
                quantity=fill.quantity, price=fill.price, ts_ns=fill.ts_ns), event_ns=fill.ts_ns)
            if result.order is not None:
                self._publish_order(result.order)
            self._publish(topics.position(self.session.name), m.PositionChanged(
                session=self.session.name, symbol=result.position.symbol, quantity=result.position.quantity,
                average_price=result.position.average_price, reason=f"fill {fill.broker_fill_id}"))
            if serve_between:
                # A strategy's order that came in meanwhile goes first: it would otherwise wait
                # behind every fill of the batch (each one a transaction), and the fill a bar made
                # is often booked just as that bar's order arrives.
                self._serve_pending()
        if booked:
            crash_point("account.before_fill_cursor")
        if cursor != self.fill_cursor and cursor is not None:
            self.store.set_fill_cursor(self.session.name, cursor)
            self.fill_cursor = cursor

    # ------------------------------------------------------------------ publishing

    def _publish_order(self, order: OrderState) -> None:
        self._publish(topics.order(self.session.name), order_message(order))

    def _publish(self, topic: str, body: m.Message, event_ns: int | None = None) -> None:
        assert self.publisher is not None
        self.publisher.publish(topic, body, session=self.session.name, event_ns=event_ns)


class EquityCache:
    """The account's equity for heat, asked of the broker at most every ``EQUITY_TTL_S``.

    Source, in order: the broker (``BrokerFacade.account_equity``); if it does not support that,
    ``[risk] equity`` from tradebus.toml; if that is not set either, there is no equity and heat is
    not measured (logged once; the session's rung stays where it is, ``ok`` for a new session).
    A broker that supports it but fails to answer: the last figure it gave (however old), else the
    configured one, else none for this order.
    """

    def __init__(self, broker, configured: Decimal | None, logger: logging.Logger,
                 clock=time.monotonic) -> None:
        self._broker = broker
        self._configured = configured
        self._log = logger
        self._clock = clock
        self._last: Decimal | None = None
        self._asked_at: float | None = None
        self._unsupported = False
        self._said_none = False

    def get(self) -> Decimal | None:
        if self._unsupported:
            return self._fallback()
        now = self._clock()
        if self._asked_at is not None and now - self._asked_at < EQUITY_TTL_S:
            return self._last if self._last is not None else self._fallback()
        self._asked_at = now  # a failed lookup is not retried before the TTL either: it may be slow
        try:
            self._last = self._broker.account_equity()
            return self._last
        except NotSupported as exc:
            self._unsupported = True
            log(self._log, "equity_unsupported", level=logging.WARNING, error=str(exc),
                configured=None if self._configured is None else str(self._configured))
            return self._fallback()
        except BrokerError as exc:
            log(self._log, "equity_failed", level=logging.WARNING, error=f"{type(exc).__name__}: {exc}",
                last=None if self._last is None else str(self._last))
            return self._last if self._last is not None else self._fallback()

    def _fallback(self) -> Decimal | None:
        if self._configured is None and not self._said_none:
            self._said_none = True
            log(self._log, "heat_not_measured", level=logging.WARNING,
                reason="the broker cannot tell the account's equity and [risk] equity is not configured")
        return self._configured


def _order_request(order: OrderState):
    from brokers.base import OrderRequest
    from schema.enums import OrderType, Side, TimeInForce

    return OrderRequest(
        client_order_id=order.client_order_id,
        symbol=order.symbol,
        side=Side(order.side),
        order_type=OrderType(order.order_type),
        quantity=order.quantity,
        limit_price=order.limit_price,
        stop_price=order.stop_price,
        time_in_force=TimeInForce(order.time_in_force),
    )


def run(shell: ProcessShell, session: str) -> None:
    AccountService(shell, session).run()


