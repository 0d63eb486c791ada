"""The strategy process of one session: the strategy core plus everything temporal around it.

Loop: a closed bar (or an order update) becomes an event; the core decides; the new state and the
instructions it produced are committed together (the *outbox*) before any instruction is sent; each
instruction is then executed through ``account.<session>`` and removed from the outbox once the
account answers. A crash anywhere in between is harmless: at start the outbox is executed again,
and the account service turns a repeated signal into the same single order.

Start: restore the persisted state → subscribe to bars and order updates → ask the account for its
snapshot (position and working orders) → catch up on bars missed while down (history: indicators
only, never trades) → trade on live bars.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from bus import topics
from bus.envelope import now_ns
from bus.errors import BusError, UnknownService
from bus.logs import log
from schema import messages as m
from schema.enums import SessionState
from services.convert import bar_event, order_event, snapshot_event
from services.retry import Backoff
from services.runtime import ProcessShell
from services.session_state import apply_session_event
from schema.errors import IllegalTransition
from schema.session_fsm import SessionEvent
from services.strategy.core import Cancel, Event, Instruction, Log, Submit
from services.strategy.registry import get_strategy

RPC_TIMEOUT_S = 5.0
POLL_MS = 100
OPERATOR_POLL_S = 1.0
OUTBOX_RETRY = Backoff(base_s=0.2, cap_s=5.0)


class StrategyService:
    def __init__(self, shell: ProcessShell, session_name: str) -> None:
        self.shell = shell
        self.log = shell.log
        self.store = shell.store()
        self.session = self.store.get_session(session_name)
        self.strategy = get_strategy(self.session.strategy)
        saved = self.store.load_strategy_state(session_name)
        if saved is not None:
            self.state = self.strategy.from_json(saved.state)
            self.outbox: list[dict[str, Any]] = list(saved.outbox)
            log(self.log, "state_restored", session=session_name, outbox=len(self.outbox))
        else:
            self.state = self.strategy.initial_state(self.session.params)
            self.outbox = []
        self.bus = shell.bus()
        self.rpc = self.bus.rpc_client()
        self.publisher = self.bus.publisher()
        self.bar_topic = topics.bar(self.session.contract, self.session.interval)
        self.account = topics.account_service(session_name)
        self.outbox_attempt = 0
        self.outbox_due = 0.0

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        subscriber = self.bus.subscriber([self.bar_topic, topics.order(self.session.name)],
                                         on_gap=self._on_gap)
        try:
            while not self._reconciled():
                pass  # escalated to needs_operator while reconciling: wait for the operator again
            self._loop(subscriber)
        finally:
            if self.shell.stopping:
                self._stop_cleanly()
            self.bus.close()
            self.store.close()

    def _reconciled(self) -> bool:
        """Start, take the account's snapshot, catch up on bars. False if the session was sent to
        ``needs_operator`` meanwhile (e.g. the account could not settle an order with the broker)."""
        state = self._start()
        try:
            if state is SessionState.STARTING:
                self._event(SessionEvent.RECONCILE, "asking the account for its snapshot")
            self._drain_outbox(block=True)
            snapshot = self._call_until_answered(self.account, m.AccountSnapshotRequest(session=self.session.name))
            self._decide(snapshot_event(snapshot), persist=True)
            self._catch_up()
            if state is SessionState.STARTING:
                self._event(SessionEvent.RECONCILED, "snapshot taken, bars caught up")
        except IllegalTransition:
            if SessionState(self.store.get_session(self.session.name).state) is SessionState.NEEDS_OPERATOR:
                return False
            raise
        return True

    def _loop(self, subscriber) -> None:
        poller = zmq.Poller()
        poller.register(subscriber.socket, zmq.POLLIN)
        while not self.shell.stopping:
            if dict(poller.poll(POLL_MS)):
                while (envelope := subscriber.recv(timeout_ms=0)) is not None:
                    self._on_message(envelope.body)
            if self.outbox and time.monotonic() >= self.outbox_due:
                self._drain_outbox(block=False)

    def _on_message(self, body: m.Message) -> None:
        if isinstance(body, m.BarClosed):
            if body.symbol == self.session.contract and body.interval == self.session.interval:
                self._decide(bar_event(body, live=True), persist=True)
        elif isinstance(body, m.OrderUpdated) and body.session == self.session.name:
            self._decide(order_event(body), persist=True)

    def _on_gap(self, source: str, expected: int, got: int) -> None:
        # A missed bar is caught up from the market-data service's book on the next bar's arrival
        # (bars older than the last decided one are ignored by the core).
        log(self.log, "gap", level=logging.WARNING, source=source, expected=expected, got=got)

    def _catch_up(self) -> None:
        reply = self._call_until_answered(
            topics.marketdata_service(self.session.name),
            m.BarsRequest(symbol=self.session.contract, interval=self.session.interval,
                          after_ts_ns=getattr(self.state, "last_bar_ts", 0)))
        for bar in reply.bars:
            self._decide(bar_event(bar, live=False), persist=False)
        self._persist()
        log(self.log, "caught_up", bars=len(reply.bars))

    # ------------------------------------------------------------------ deciding

    def _decide(self, event: Event, *, persist: bool) -> None:
        before = self.state
        self.state, instructions = self.strategy.decide(self.state, event)
        for instruction in instructions:
            if isinstance(instruction, Log):
                log(self.log, "strategy_log", text=instruction.text)
            else:
                self.outbox.append(_encode(instruction))
        if persist and (self.state != before or instructions):
            self._persist()
        if instructions:
            self._drain_outbox(block=False)

    def _persist(self) -> None:
        self.store.save_strategy_state(self.session.name, self.strategy.to_json(self.state), list(self.outbox),
                                       now_ns=now_ns())

    def _drain_outbox(self, *, block: bool) -> None:
        """Execute the outbox in order; stop at the first instruction the account could not take."""
        while self.outbox and not self.shell.stopping:
            item = self.outbox[0]
            try:
                reply = self.rpc.call(self.account, _request(self.session.name, item), timeout_s=RPC_TIMEOUT_S,
                                      session=self.session.name)
            except BusError as exc:
                if not _worth_retrying(exc):
                    # The account answered and refused: retrying cannot help. Log loudly, drop it;
                    # the order update (if any) adjusts the strategy's target.
                    log(self.log, "instruction_refused", level=logging.ERROR, instruction=item,
                        code=getattr(exc, "code", type(exc).__name__), error=str(exc))
                    self.outbox.pop(0)
                    self._persist()
                    continue
                self.outbox_attempt += 1
                delay = OUTBOX_RETRY.delay(self.outbox_attempt) or OUTBOX_RETRY.cap_s
                self.outbox_due = time.monotonic() + delay
                log(self.log, "instruction_deferred", level=logging.WARNING, instruction=item,
                    error=f"{type(exc).__name__}: {exc}", retry_in_s=round(delay, 3))
                if not block:
                    return
                self.shell.pause(delay)
                continue
            self.outbox_attempt = 0
            self.outbox.pop(0)
            self._persist()
            if isinstance(reply, m.OrderReply):
                log(self.log, "instruction_done", client_order_id=reply.order.client_order_id,
                    status=reply.order.status)
                self._decide(order_event(reply.order), persist=True)

    # ------------------------------------------------------------------ helpers

    def _call_until_answered(self, service: str, body: m.Message) -> Any:
        attempt = 0
        while True:
            attempt += 1
            try:
                return self.rpc.call(service, body, timeout_s=RPC_TIMEOUT_S, session=self.session.name)
            except BusError as exc:
                if not _worth_retrying(exc):
                    raise
                delay = OUTBOX_RETRY.delay(attempt) or OUTBOX_RETRY.cap_s
                log(self.log, "waiting_for", level=logging.INFO if attempt < 5 else logging.WARNING,
                    service=service, error=f"{type(exc).__name__}: {exc}", retry_in_s=round(delay, 3))
                self.shell.pause(delay)

    def _start(self) -> SessionState:
        """Record the start. A session in ``needs_operator`` (or sent there by the start itself,
        e.g. a roll found half done) does nothing until ``tradebus sessions ack``."""
        state = self._event(SessionEvent.START, "process started")
        announced = False
        while state is SessionState.NEEDS_OPERATOR:
            if not announced:
                log(self.log, "needs_operator", level=logging.CRITICAL, session=self.session.name,
                    reason=self.store.get_session(self.session.name).state_reason)
                announced = True
            self.shell.pause(OPERATOR_POLL_S)
            state = SessionState(self.store.get_session(self.session.name).state)
        return state

    def _stop_cleanly(self) -> None:
        for event, reason in ((SessionEvent.STOP, "stop requested"), (SessionEvent.STOPPED, "stopped cleanly")):
            try:
                self._event(event, reason)
            except IllegalTransition:
                return  # e.g. needs_operator: stays where the operator will find it

    def _event(self, event: SessionEvent, reason: str) -> SessionState:
        try:
            return apply_session_event(self.store, self.publisher, self.session.name, event, reason, log_to=self.log)
        except IllegalTransition:
            state = SessionState(self.store.get_session(self.session.name).state)
            if event is SessionEvent.START and state is SessionState.NEEDS_OPERATOR:
                return state
            raise


def _worth_retrying(exc: BusError) -> bool:
    """Retry what the bus says is retryable, and an unknown service too: the account process may
    be restarting, and busd forgets a service whose last worker went away."""
    return exc.retryable or isinstance(exc, UnknownService)


def _encode(instruction: Instruction) -> dict[str, Any]:
    if isinstance(instruction, Submit):
        return {
            "kind": "submit",
            "signal": instruction.signal,
            "symbol": instruction.symbol,
            "side": str(instruction.side),
            "order_type": str(instruction.order_type),
            "quantity": str(instruction.quantity),
            "limit_price": None if instruction.limit_price is None else str(instruction.limit_price),
            "stop_price": None if instruction.stop_price is None else str(instruction.stop_price),
            "reason": instruction.reason,
        }
    if isinstance(instruction, Cancel):
        return {"kind": "cancel", "client_order_id": instruction.client_order_id}
    raise TypeError(f"cannot queue instruction {instruction!r}")


def _request(session: str, item: dict[str, Any]) -> m.Message:
    from decimal import Decimal

    if item["kind"] == "submit":
        return m.SubmitOrder(
            session=session,
            signal=int(item["signal"]),
            symbol=item["symbol"],
            side=item["side"],
            order_type=item["order_type"],
            quantity=Decimal(item["quantity"]),
            limit_price=None if item["limit_price"] is None else Decimal(item["limit_price"]),
            stop_price=None if item["stop_price"] is None else Decimal(item["stop_price"]),
        )
    return m.CancelOrder(session=session, client_order_id=item["client_order_id"])


def run(shell: ProcessShell, session: str) -> None:
    StrategyService(shell, session).run()
