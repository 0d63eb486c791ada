"""A reconciler worker: keeps each session's database view equal to its broker's truth.

Several workers run (supervisord ``numprocs``); each session is reconciled by exactly one of them at
a time, the holder of the lease ``reconcile:<session>`` in the database. A round for a session:
fetch fills the account service may not have booked yet (idempotent: fill ids are unique), then
compare position and open orders with the broker. A position difference that survives a re-check
is repaired to the broker's number (the broker is the truth for positions) with a recorded event;
an order open locally but finished at the broker takes the broker's state. Everything changed is
announced on ``reconcile.<session>``.

Between rounds every worker also answers ``control``: operator commands sent over the bus
(``OperatorCommand``, carried out by ``services.operator`` exactly as the CLI does them).

Orders still being sent (``pending_submit``, ``submitted``, ``unknown``) belong to the account
service, which settles them by client order id; the reconciler leaves them alone.
"""
from __future__ import annotations

import logging
import time
from decimal import Decimal

import zmq

from brokers.errors import BrokerError
from bus import topics
from bus.envelope import now_ns
from bus.logs import log
from schema import messages as m
from schema.enums import OrderStatus
from services.account.core import WORKING, adoption_events
from schema.errors import StoreUnavailable
from schema.records import Lease
from services import operator
from services.reconciler.core import compare
from services.runtime import ProcessShell, owner_is_dead

RECHECKS = 3
LEASE_INTERVALS = 3  # a session lease outlives this many reconcile intervals
SESSION_LEASE_PREFIX = "reconcile:"
WORKER_LEASE_PREFIX = "reconciler-worker:"
CONTROL_POLL_MS = 200
# A broker's fill feed can lag its positions. A difference is repaired only once the very same
# difference has been seen for this long; a fill that was merely late arrives well within it.
REPAIR_AFTER_S = 3.0


class Reconciler:
    def __init__(self, shell: ProcessShell, worker: int) -> None:
        self.shell = shell
        self.log = shell.log
        self.worker = worker
        self.store = shell.store()
        self.bus = shell.bus()
        self.publisher = self.bus.publisher()
        self.interval_s = shell.config.reconcile_interval_s
        self.brokers: dict[str, object] = {}
        # session -> (broker position, database position, monotonic time first seen)
        self.suspect: dict[str, tuple[Decimal, Decimal, float]] = {}

    def run(self) -> None:
        self.control = self.bus.rpc_worker(topics.CONTROL_SERVICE)
        self.rpc = self.bus.rpc_client()
        try:
            while not self.shell.stopping:
                started = time.monotonic()
                try:
                    self.round()
                    self.shell.outage.up()
                except StoreUnavailable as exc:
                    self.shell.outage.down(exc, "reconciling")  # next round; never a restart loop
                self._serve_control(until=started + self.interval_s)
        finally:
            if self.shell.stopping:  # an orderly stop hands its sessions over at once
                for lease in self.store.leases(SESSION_LEASE_PREFIX) + self.store.leases(WORKER_LEASE_PREFIX):
                    if lease.owner == self.shell.owner:
                        self.store.release_lease(lease.name, self.shell.owner)
            for broker in self.brokers.values():
                broker.close()
            self.bus.close()
            self.store.close()

    def _quota(self, sessions: int, ttl_ns: int) -> int:
        """This worker's fair share: sessions ÷ live workers, rounded up. A worker is live while its
        presence lease (renewed every round, same lifetime as the session leases) holds, so a dead
        worker's share returns to the others when its leases run out."""
        now = now_ns()
        self._acquire(f"{WORKER_LEASE_PREFIX}{self.worker:02d}", ttl_ns, now)
        live = sum(1 for lease in self.store.leases(WORKER_LEASE_PREFIX) if lease.owner and lease.expires_ns > now)
        return max(1, -(-sessions // max(1, live)))

    def _acquire(self, name: str, ttl_ns: int, now: int) -> Lease | None:
        """Take ``name``; a holder proven dead (killed on this host: a restart after kill -9 finds
        its own predecessor there) is not waited out — the epoch still grows and fences it."""
        lease = self.store.acquire_lease(name, self.shell.owner, ttl_ns=ttl_ns, now_ns=now,
                                         holder_is_dead=owner_is_dead)
        if lease is not None and lease.taken_from is not None:
            log(self.log, "lease_taken_from_dead_process", lease=name, holder=lease.taken_from, epoch=lease.epoch)
        return lease

    def _serve_control(self, *, until: float) -> None:
        """Answer operator commands until the monotonic time ``until``."""
        poller = zmq.Poller()
        poller.register(self.control.socket, zmq.POLLIN)
        while not self.shell.stopping:
            self.control.heartbeat()
            left_ms = int((until - time.monotonic()) * 1000)
            if left_ms <= 0:
                return
            if not dict(poller.poll(min(left_ms, CONTROL_POLL_MS))):
                continue
            while (request := self.control.recv(timeout_ms=0)) is not None:
                self.control.reply(request, self._command(request.envelope.body))

    def _command(self, body: m.Message) -> m.Message:
        if not isinstance(body, m.OperatorCommand):
            return m.ErrorReply(code="unsupported", message=f"control does not handle {body.TYPE!r}")
        try:
            outcome = operator.execute(self.shell.config, self.store, self.publisher, self.rpc, body)
        except operator.CommandRefused as exc:
            log(self.log, "command_refused", level=logging.WARNING, command=body.command, session=body.session,
                error=str(exc))
            return m.ErrorReply(code="refused", message=str(exc))
        log(self.log, "command_done", level=logging.WARNING, command=body.command, session=body.session,
            text=outcome.text)
        return outcome.message()

    def round(self) -> None:
        sessions = self.store.list_sessions()
        ttl_ns = int(self.interval_s * LEASE_INTERVALS * 1e9)
        quota = self._quota(len(sessions), ttl_ns)
        mine = {lease.name for lease in self.store.leases(SESSION_LEASE_PREFIX)
                if lease.held_by(self.shell.owner, now_ns())}
        for name in sorted(mine)[quota:]:
            # More than a fair share (a worker joined, or this one started first): give the rest
            # up; the newcomer takes them within a round.
            self.store.release_lease(name, self.shell.owner)
            mine.discard(name)
            log(self.log, "lease_released", session=name.removeprefix(SESSION_LEASE_PREFIX),
                owner=self.shell.owner, released_ns=now_ns(), quota=quota)
        # Start at a different session per worker so the first claims spread out.
        offset = self.worker % max(1, len(sessions))
        for session in sessions[offset:] + sessions[:offset]:
            if self.shell.stopping:
                return
            name = f"{SESSION_LEASE_PREFIX}{session.name}"
            if name not in mine and len(mine) >= quota:
                continue  # a fair share held already: leave this one to another worker
            started_ns = now_ns()
            lease = self._acquire(name, ttl_ns, started_ns)
            if lease is None:
                continue
            mine.add(name)
            try:
                self.reconcile(session)
            except BrokerError as exc:
                log(self.log, "reconcile_deferred", level=logging.WARNING, session=session.name,
                    error=f"{type(exc).__name__}: {exc}")
            finally:
                # One line per session and round: who reconciled it under which lease epoch, and
                # when (wall-clock ns, the lease's own clock). The evidence that no two workers
                # ever reconcile one session at once.
                log(self.log, "reconcile_round", session=session.name, worker=self.worker,
                    owner=self.shell.owner, epoch=lease.epoch, lease_expires_ns=lease.expires_ns,
                    started_ns=started_ns, ended_ns=now_ns())

    def _broker(self, account: str):
        if account not in self.brokers:
            self.brokers[account] = self.shell.broker(self.store, account)
        return self.brokers[account]

    def reconcile(self, session) -> None:
        broker = self._broker(session.account)
        prefix = f"{session.name}."
        changes: list[str] = []
        discrepancy = None
        for _ in range(RECHECKS):
            # Broker first, then its fills: every fill inside the broker's position is then booked
            # before the database is read, so a difference left over is real or a fill that landed
            # between the reads (the database is then ahead) — which the next pass settles.
            broker_position = _net(broker.positions(), session.contract)
            broker_open = [o.client_order_id for o in broker.open_orders() if o.symbol == session.contract]
            changes += self._book_missing_fills(session, broker, prefix)
            db_position = self.store.get_position(session.name, session.contract).quantity
            db_open = [o.client_order_id for o in self.store.open_orders(session.name)
                       if OrderStatus(o.status) in WORKING and o.symbol == session.contract]
            discrepancy = compare(broker_position=broker_position, db_position=db_position,
                                  broker_open=broker_open, db_open=db_open, our_prefix=prefix)
            if discrepancy.clean:
                break
        assert discrepancy is not None
        if not discrepancy.position_mismatch:
            self.suspect.pop(session.name, None)
        if discrepancy.position_mismatch and not self._persistent(session.name, discrepancy):
            changes.append(f"position {discrepancy.db_position} in database, {discrepancy.broker_position} "
                           "at broker: watching")
        elif discrepancy.position_mismatch:
            self.suspect.pop(session.name, None)
            position = self.store.set_position(session.name, session.contract, discrepancy.broker_position, None,
                                               reason="reconciled to broker", now_ns=now_ns())
            self._publish(session.name, topics.position(session.name), m.PositionChanged(
                session=session.name, symbol=session.contract, quantity=position.quantity,
                average_price=position.average_price, reason="reconciled to broker"))
            changes.append(f"position repaired: {discrepancy.db_position} -> {discrepancy.broker_position}")
        for cid in discrepancy.missing_at_broker:
            changes += self._adopt_finished(session, broker, cid)
        for cid in discrepancy.unknown_to_db:
            changes.append(f"{cid} is open at the broker but unknown to the database")
            self._publish(session.name, topics.ALERT, m.Alert(
                level="critical", text=f"order {cid} open at broker, unknown to tradebus", session=session.name))
        report = m.ReconcileReport(session=session.name, changes=changes,
                                   broker_position=discrepancy.broker_position,
                                   db_position=discrepancy.db_position, ok=not changes)
        self._publish(session.name, topics.reconcile(session.name), report)
        log(self.log, "reconciled", level=logging.WARNING if changes else logging.DEBUG,
            session=session.name, changes=changes, position=str(discrepancy.broker_position))

    def _persistent(self, session: str, d) -> bool:
        seen = self.suspect.get(session)
        now = time.monotonic()
        if seen is None or seen[:2] != (d.broker_position, d.db_position):
            self.suspect[session] = (d.broker_position, d.db_position, now)
            return False
        return now - seen[2] >= max(REPAIR_AFTER_S, self.interval_s * 2)

    def _book_missing_fills(self, session, broker, prefix: str) -> list[str]:
        fresh = self.store.get_session(session.name)
        fills, _cursor = broker.fills_since(fresh.fill_cursor)
        booked = []
        for fill in fills:
            if not (fill.client_order_id or "").startswith(prefix):
                continue
            result = self.store.record_fill(
                session.name, broker_fill_id=fill.broker_fill_id, client_order_id=fill.client_order_id,
                symbol=fill.symbol, side=str(fill.side), quantity=fill.quantity, price=fill.price,
                ts_ns=fill.ts_ns, now_ns=now_ns())
            if result is not None:
                booked.append(f"fill {fill.broker_fill_id} booked by reconciler")
        return booked

    def _adopt_finished(self, session, broker, cid: str) -> list[str]:
        found = broker.order_by_client_id(cid)
        order = self.store.get_order(cid)
        if found is None:
            self._publish(session.name, topics.ALERT, m.Alert(
                level="critical", text=f"order {cid} ({order.status}) is unknown to the broker", session=session.name))
            return [f"{cid} unknown to the broker"]
        changes = []
        for event in adoption_events(order, OrderStatus(found.status), broker_order_id=found.broker_order_id,
                                     reason=found.reason, ts_ns=now_ns()):
            order = self.store.apply_order_event(cid, event)
            changes.append(f"{cid} -> {order.status} (broker says {found.status})")
        return changes

    def _publish(self, session: str, topic: str, body: m.Message) -> None:
        self.publisher.publish(topic, body, session=session)


def _net(positions, symbol: str) -> Decimal:
    return sum((p.quantity for p in positions if p.symbol == symbol), Decimal(0))


def run(shell: ProcessShell, worker: int) -> None:
    Reconciler(shell, worker).run()
