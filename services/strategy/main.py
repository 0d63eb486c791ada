"""The strategy process of one session: the strategy core plus everything temporal around it.

Loop: a closed bar (or an order update) becomes an event; the core decides; the new state and the
instructions it produced are committed together (the *outbox*) before any instruction is sent; each
instruction is then executed through ``account.<session>`` and removed from the outbox once the
account answers. A crash anywhere in between is harmless: at start the outbox is executed again,
and the account service turns a repeated signal into the same single order. Once a bar is decided
on and the account has answered everything it asked for, ``BarProcessed`` goes out on
``strategy.processed.<session>`` (what a lockstep replay waits for before the next bar).

Start: restore the persisted state → subscribe to bars and order updates → ask the account for its
snapshot (position and working orders) → catch up on bars missed while down (history: indicators
only, never trades) → take up a roll an operator chose to resume → trade on live bars.

The process also answers ``strategy.<session>``: ``RollRequest`` and ``FlattenRequest`` (operator
commands). Contract rolls (``services.rolls``) run here because the strategy is the one process
that sends a session's orders; a roll also starts by itself on the first live bar of the roll date.
"""
from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import zmq

from bus import topics
from bus.envelope import now_ns
from bus.errors import BusError, UnknownService
from bus.logs import log
from bus.resync import Resync, Snapshot, field_mark, rpc_snapshot
from schema import messages as m
from schema.enums import RollPhase, SessionState
from schema.records import RollInfo
from services import rolls
from services.convert import bar_event, order_event, snapshot_event
from services.retry import Backoff
from services.runtime import ProcessShell, Stopping
from services.session_state import announce, apply_session_event, escalate
from services.testhooks import crash_point
from schema.errors import IllegalTransition, StoreUnavailable
from schema.session_fsm import SessionEvent
from services.strategy.core import Cancel, ContractRolled, Event, Flatten, Instruction, Log, Submit
from services.strategy.registry import get_strategy

PERSIST_EVERY_BARS = 20
"""A bar that gives no instruction changes only indicators, which the bars after the last saved one
rebuild at restart (catch-up from the market-data book, far deeper than this): so the state is
written with every instruction and order update, and otherwise once per this many bars — not a
database commit per bar on the hot path."""
RPC_TIMEOUT_S = 5.0
POLL_MS = 100
OPERATOR_POLL_S = 1.0
OUTBOX_RETRY = Backoff(base_s=0.2, cap_s=5.0)
ROLL_POLL_S = 0.1
ROLL_STEP_TIMEOUT_S = 60.0
"""A roll phase that makes no progress for this long (an order that never fills, a market-data
process that never answers) sends the session to the operator instead of waiting forever."""
FLATTEN_CANCEL_TIMEOUT_S = 15.0


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
        self.subscriber: Any = None
        self.worker: Any = None
        self.resync: Resync | None = None
        self.roll_checked: tuple[Any, str] | None = None
        self.unsaved_bars = 0
        """Bars decided on since the state was last written (see ``PERSIST_EVERY_BARS``)."""
        self.processed: m.BarProcessed | None = None
        """The last bar's ``BarProcessed``, held back until the account has answered its orders."""

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        subscriber = self.subscriber = self.bus.subscriber([self.bar_topic, topics.order(self.session.name)],
                                                           on_gap=self._on_gap)
        self.worker = self.bus.rpc_worker(topics.strategy_service(self.session.name))
        try:
            while not self._reconciled() or not self._resume_roll():
                pass  # escalated to needs_operator: wait for the operator again
            self._track_gaps(subscriber)
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

    def _track_gaps(self, subscriber) -> None:
        """From now on a sequence gap or a restarted publisher is mended from a snapshot: bars
        from the market-data book (indicators only, never trades), the position and working
        orders from the account; updates the snapshot already covers are dropped."""
        self.resync = Resync(subscriber)
        self.resync.track(self.bar_topic, self._bars_snapshot, self._apply_bars, mark=field_mark("ts_ns"),
                          current=Snapshot(None, getattr(self.state, "last_bar_ts", 0)))
        self.resync.track(topics.order(self.session.name),
                          rpc_snapshot(self.rpc, self.account, m.AccountSnapshotRequest(session=self.session.name),
                                       session=self.session.name),
                          lambda snap: self._decide(snapshot_event(snap.value), persist=True),
                          current=Snapshot(None, 0))

    def _bars_snapshot(self) -> Snapshot:
        request = self._bars_request()
        reply = self.rpc.call(topics.marketdata_service(self.session.name), request,
                              timeout_s=RPC_TIMEOUT_S, session=self.session.name, idempotent=True)
        return Snapshot(reply, reply.bars[-1].ts_ns if reply.bars else request.after_ts_ns)

    def _apply_bars(self, snapshot: Snapshot) -> None:
        self._history(snapshot.value.bars, "resynced")

    def _loop(self, subscriber) -> None:
        poller = zmq.Poller()
        poller.register(subscriber.socket, zmq.POLLIN)
        poller.register(self.worker.socket, zmq.POLLIN)
        while not self.shell.stopping:
            ready = dict(poller.poll(POLL_MS))
            try:
                # Every turn, not only when readable: a snapshot that failed is retried from here.
                while (envelope := self.resync.recv(timeout_ms=0)) is not None:
                    self._on_message(envelope.body)
                if self.worker.socket in ready:
                    self._serve_requests()
                self.worker.heartbeat()
                if self.outbox and time.monotonic() >= self.outbox_due:
                    self._drain_outbox(block=False)
                self._announce_processed()
            except StoreUnavailable as exc:
                # No decision is taken without its state stored: wait for the database (a bar
                # missed meanwhile is caught up from the market-data book on the next one).
                self.shell.outage.down(exc, "deciding")
                self.shell.through_outage("waiting for the database", lambda: self.store.get_session(self.session.name))

    def _on_message(self, body: m.Message) -> None:
        if isinstance(body, m.BarClosed):
            if body.symbol == self.session.contract and body.interval == self.session.interval:
                # Stale data (a consumer far behind, or a gap not mended yet) updates indicators
                # but never trades.
                live = self.resync.in_sync and not self.subscriber.lagging
                instructions = self._decide(bar_event(body, live=live), persist=False)
                self.unsaved_bars += 1
                if self.unsaved_bars >= PERSIST_EVERY_BARS and not instructions:
                    self._persist()
                self._roll_if_due(body.ts_ns)
                self.processed = m.BarProcessed(
                    session=self.session.name, symbol=body.symbol, interval=body.interval, ts_ns=body.ts_ns,
                    index=body.index, live=live, orders_sent=sum(isinstance(i, Submit) for i in instructions))
                self._announce_processed()
        elif isinstance(body, m.OrderUpdated) and body.session == self.session.name:
            if not rolls.is_roll_signal(body.signal):  # roll legs are not the strategy's orders
                self._decide(order_event(body), persist=True)

    # ------------------------------------------------------------------ operator requests

    def _serve_requests(self) -> None:
        after: list[Any] = []
        while (request := self.worker.recv(timeout_ms=0)) is not None:
            body = request.envelope.body
            try:
                if isinstance(body, m.RollRequest):
                    reply, then = self._begin_roll_request(body)
                elif isinstance(body, m.FlattenRequest):
                    reply, then = self._flatten(body.reason), None
                else:
                    reply, then = m.ErrorReply(code="unsupported",
                                               message=f"strategy does not handle {body.TYPE!r}"), None
            except (ValueError, IllegalTransition) as exc:
                reply, then = m.ErrorReply(code="refused", message=str(exc)), None
            self.worker.reply(request, reply)
            if then is not None:
                after.append(then)
        for work in after:  # long work (a roll) runs after its requester has its answer
            work()

    def _begin_roll_request(self, body: m.RollRequest) -> tuple[m.Message, Any]:
        if body.session != self.session.name:
            raise ValueError(f"this is strategy.{self.session.name}, not {body.session}")
        target = rolls.check_roll_target(self.session.contract, body.to_contract)
        roll = self._begin_roll(target, "roll requested by operator")
        return (m.CommandDone(session=self.session.name, state="rolling",
                              text=f"roll {roll.id} {roll.from_contract} -> {roll.to_contract} started"),
                lambda: self._run_roll(roll))

    def _flatten(self, reason: str) -> m.Message:
        """Halt, cancel every working order (and wait until they are gone), then close the position
        through the strategy's own book, so its target stays the truth."""
        state = SessionState(self.store.get_session(self.session.name).state)
        if state is SessionState.TRADING:
            self._event(SessionEvent.HALT, f"flatten: {reason}")
        elif state is not SessionState.HALTED:
            raise ValueError(f"session {self.session.name} is {state}: flatten needs trading or halted")
        open_orders = [o for o in self.store.open_orders(self.session.name) if not rolls.is_roll_signal(o.signal)]
        for order in open_orders:
            self._order_reply(self._call_until_answered(
                self.account, m.CancelOrder(session=self.session.name, client_order_id=order.client_order_id)))
        deadline = time.monotonic() + FLATTEN_CANCEL_TIMEOUT_S
        while self.store.open_orders(self.session.name):
            if time.monotonic() > deadline:
                raise ValueError(f"orders still open {FLATTEN_CANCEL_TIMEOUT_S:.0f} s after cancelling; "
                                 "the session stays halted — look at `tradebus orders`")
            self.shell.pause(ROLL_POLL_S)
        snapshot = self._call_until_answered(self.account, m.AccountSnapshotRequest(session=self.session.name))
        self._decide(snapshot_event(snapshot), persist=True)
        self._decide(Flatten(symbol=self.session.contract, reason=reason), persist=True)
        return m.CommandDone(session=self.session.name, state="halted",
                             text=f"cancelled {len(open_orders)} order(s); closing position {snapshot.position} "
                                  f"{self.session.contract}; the session stays halted until `resume`")

    def _order_reply(self, reply: m.Message) -> None:
        if isinstance(reply, m.OrderReply) and not rolls.is_roll_signal(reply.order.signal):
            self._decide(order_event(reply.order), persist=True)

    # ------------------------------------------------------------------ contract rolls

    def _roll_if_due(self, bar_ts_ns: int) -> None:
        day = datetime.fromtimestamp(bar_ts_ns / 1e9, tz=UTC).date()
        if (day, self.session.contract) == self.roll_checked:
            return  # one look per day and contract: the answer only changes with the date
        target = rolls.roll_target(self.session.contract, day)
        if target is None:
            self.roll_checked = (day, self.session.contract)
            return
        if SessionState(self.store.get_session(self.session.name).state) is not SessionState.TRADING:
            return  # (halted on the roll date: the roll starts on the first bar after resume)
        self._run_roll(self._begin_roll(target, f"roll date of {self.session.contract} reached ({day})"))

    def _begin_roll(self, target: str, reason: str) -> RollInfo:
        roll = self.store.start_roll(self.session.name, from_contract=self.session.contract, to_contract=target,
                                     reason=reason, now_ns=now_ns())
        self._announce("rolling", "trading", reason)
        log(self.log, "roll_started", roll=roll.id, from_contract=roll.from_contract, to_contract=roll.to_contract,
            reason=reason)
        return roll

    def _resume_roll(self) -> bool:
        """After reconciling: take up a roll an operator chose to resume (``ack --resume-roll``).
        False if the roll got stuck and the session went back to the operator."""
        roll = self.store.active_roll(self.session.name)
        if roll is None:
            return True
        roll = self.store.resume_roll(self.session.name, now_ns=now_ns())
        self._announce("rolling", "trading", f"resuming roll {roll.id} at phase {roll.phase}")
        log(self.log, "roll_resumed", roll=roll.id, phase=str(roll.phase))
        return self._run_roll(roll)

    def _run_roll(self, roll: RollInfo) -> bool:
        """Execute the roll's steps until it is done (True) or stuck (False: needs_operator)."""
        crash_point(f"strategy.roll.{roll.phase}")  # a boundary: the phase is committed, no step taken
        data_switched = False
        progress_at = time.monotonic()
        waiting = ""
        while not self.shell.stopping:
            self.worker.heartbeat()
            facts = self._roll_facts(roll, data_switched)
            step = rolls.next_step(facts)
            if isinstance(step, rolls.Advance):
                roll = self.store.set_roll_phase(roll.id, step.to, now_ns=now_ns())
                log(self.log, "roll_phase", roll=roll.id, phase=str(roll.phase))
                progress_at, waiting = time.monotonic(), ""
                if roll.phase is RollPhase.DONE:
                    self._announce("trading", "rolling", f"rolled {roll.from_contract} -> {roll.to_contract}")
                    self._switched_to(roll.to_contract)
                    crash_point("strategy.roll.done")
                    return True
                crash_point(f"strategy.roll.{roll.phase}")
            elif isinstance(step, rolls.CancelOrders):
                for cid in step.client_order_ids:
                    self._order_reply(self._call_until_answered(
                        self.account, m.CancelOrder(session=self.session.name, client_order_id=cid)))
                self.shell.pause(ROLL_POLL_S)
            elif isinstance(step, rolls.SubmitLeg):
                log(self.log, "roll_leg", roll=roll.id, leg=step.leg.name.lower(), symbol=step.symbol,
                    side=str(step.side), quantity=str(step.quantity))
                self._call_until_answered(self.account, m.SubmitOrder(
                    session=self.session.name, signal=step.signal, symbol=step.symbol, side=str(step.side),
                    order_type="market", quantity=step.quantity))
                crash_point(f"strategy.roll.{step.leg.name.lower()}_sent")
            elif isinstance(step, rolls.SwitchData):
                reply = self._call_until_answered(topics.marketdata_service(self.session.name),
                                                  m.SwitchContract(session=self.session.name, symbol=step.symbol))
                log(self.log, "roll_data_switched", symbol=reply.symbol, bars=reply.bars)
                data_switched = True
            elif isinstance(step, rolls.Wait):
                if step.why != waiting:
                    log(self.log, "roll_waiting", roll=roll.id, phase=str(roll.phase), why=step.why)
                    progress_at, waiting = time.monotonic(), step.why
                if time.monotonic() - progress_at > ROLL_STEP_TIMEOUT_S:
                    return self._roll_stuck(roll, f"no progress for {ROLL_STEP_TIMEOUT_S:.0f} s: {step.why}")
                self.shell.pause(ROLL_POLL_S)
            else:
                return self._roll_stuck(roll, step.why)
        return False

    def _roll_facts(self, roll: RollInfo, data_switched: bool) -> rolls.RollFacts:
        name = self.session.name
        roll = self.store.active_roll(name) or roll
        legs = {leg: self.store.find_order(self.store.client_order_id_for(self.session, rolls.roll_signal(roll.id, leg)))
                for leg in rolls.Leg}
        return rolls.RollFacts(
            roll=roll,
            old_position=self.store.get_position(name, roll.from_contract).quantity,
            new_position=self.store.get_position(name, roll.to_contract).quantity,
            open_orders=tuple(o for o in self.store.open_orders(name) if not rolls.is_roll_signal(o.signal)),
            flatten_order=legs[rolls.Leg.FLATTEN_OLD],
            open_order=legs[rolls.Leg.OPEN_NEW],
            data_switched=data_switched,
        )

    def _roll_stuck(self, roll: RollInfo, why: str) -> bool:
        reason = f"roll {roll.id} ({roll.from_contract} -> {roll.to_contract}) stuck at {roll.phase}: {why}"
        log(self.log, "roll_stuck", level=logging.CRITICAL, roll=roll.id, why=why)
        escalate(self.store, self.session.name, reason, now_ns(), publisher=self.publisher)
        self.publisher.publish(topics.ALERT, m.Alert(level="critical", text=reason, session=self.session.name),
                               session=self.session.name)
        return False

    def _switched_to(self, contract: str) -> None:
        """The roll is done: listen to the new contract's bars and refill the indicators from them."""
        old_topic = self.bar_topic
        self.session = self.store.get_session(self.session.name)
        self.bar_topic = topics.bar(contract, self.session.interval)
        self.subscriber.subscribe(self.bar_topic)
        self.subscriber.unsubscribe(old_topic)
        self._decide(ContractRolled(symbol=contract), persist=True)
        self._catch_up()
        if self.resync is not None:
            self.resync.untrack(old_topic)
            self.resync.track(self.bar_topic, self._bars_snapshot, self._apply_bars, mark=field_mark("ts_ns"),
                              current=Snapshot(None, getattr(self.state, "last_bar_ts", 0)))

    def _announce(self, state: str, previous: str, reason: str) -> None:
        announce(self.publisher, self.session.name, state, previous, reason)

    def _on_gap(self, source: str, expected: int, got: int) -> None:
        # Mended by ``self.resync`` (see ``_track_gaps``); said here in the strategy's own log too.
        log(self.log, "gap", level=logging.WARNING, source=source, expected=expected, got=got)

    def _catch_up(self) -> None:
        reply = self._call_until_answered(topics.marketdata_service(self.session.name), self._bars_request())
        self._history(reply.bars, "caught_up")

    def _bars_request(self) -> m.BarsRequest:
        """The bars after the last one decided on (catch-up at start, mending after a gap)."""
        return m.BarsRequest(symbol=self.session.contract, interval=self.session.interval,
                             after_ts_ns=getattr(self.state, "last_bar_ts", 0))

    def _history(self, bars: list[m.BarClosed], action: str) -> None:
        """Bars seen late move the indicators but never trade; one state write for all of them."""
        for bar in bars:
            self._decide(bar_event(bar, live=False), persist=False)
        self._persist()
        log(self.log, action, bars=len(bars))

    # ------------------------------------------------------------------ deciding

    def _decide(self, event: Event, *, persist: bool) -> tuple[Instruction, ...]:
        before = self.state
        self.state, instructions = self.strategy.decide(self.state, event)
        for instruction in instructions:
            if isinstance(instruction, Log):
                log(self.log, "strategy_log", text=instruction.text)
            else:
                self.outbox.append(_encode(instruction))
        if instructions or (persist and self.state != before):
            self._persist()
        if instructions:
            self._drain_outbox(block=False)
        return instructions

    def _announce_processed(self) -> None:
        """Say the last bar is done once nothing it asked for is still waiting for the account:
        a replay in lockstep (``services.backtest.pipeline``) releases the next bar on it."""
        if self.processed is not None and not self.outbox:
            self.publisher.publish(topics.bar_processed(self.session.name), self.processed,
                                   session=self.session.name, event_ns=self.processed.ts_ns)
            self.processed = None

    def _persist(self) -> None:
        self.unsaved_bars = 0
        state, outbox = self.strategy.to_json(self.state), list(self.outbox)
        # Not waited on for its disk flush: a server crash can lose only instructions no broker has
        # seen (the account's write-ahead commit, which is durable, flushes this one with it).
        self.shell.through_outage("saving strategy state", lambda: self.store.save_strategy_state(
            self.session.name, state, outbox, now_ns=now_ns(), durable=False))

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
                self._order_reply(reply)

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
        if self.unsaved_bars:
            try:
                self._persist()
            except Stopping:
                pass
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
