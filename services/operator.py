"""Operator commands on sessions, in one place for the CLI and for the bus.

``tradebus sessions halt|resume|ack|flatten|roll|remove NAME`` call these functions directly;
``OperatorCommand`` messages sent to the ``control`` service (answered by any reconciler worker)
call the same ones, so a command means the same thing whichever way it arrives.

halt / resume / ack / remove are database transitions (plus supervisord for ack and remove);
flatten and roll are carried out by the session's strategy process — the one process that sends
the session's orders — and so need it running.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bus import topics
from bus.envelope import now_ns as clock_ns
from bus.errors import BusError, NoWorker, RemoteError, UnknownService
from schema import messages as m
from schema.enums import SessionState
from schema.errors import IllegalTransition, SessionNotFound
from schema.session_fsm import SessionEvent
from services import supervisor
from services.config import Config
from services.session_state import apply_session_event

COMMANDS = ("halt", "resume", "ack", "flatten", "roll", "remove")
ACK_CHOICES = ("resume_roll", "abort_roll")
STRATEGY_TIMEOUT_S = 30.0


class CommandRefused(Exception):
    """The command cannot be carried out; the message says why in an operator's words."""


@dataclass(frozen=True)
class Outcome:
    session: str
    state: str
    text: str

    def message(self) -> m.CommandDone:
        return m.CommandDone(session=self.session, state=self.state, text=self.text)


def _session(store: Any, name: str) -> Any:
    try:
        return store.get_session(name)
    except SessionNotFound:
        raise CommandRefused(f"no session named {name!r}") from None


def _event(store: Any, publisher: Any, name: str, event: SessionEvent, reason: str) -> str:
    _session(store, name)
    try:
        return str(apply_session_event(store, publisher, name, event, reason))
    except IllegalTransition as exc:
        raise CommandRefused(str(exc)) from None


def halt(store: Any, publisher: Any, name: str, reason: str = "halted by operator") -> Outcome:
    state = _event(store, publisher, name, SessionEvent.HALT, reason)
    return Outcome(name, state, f"session {name} is {state}: only cancels and risk-reducing orders go out")


def resume(store: Any, publisher: Any, name: str) -> Outcome:
    state = _event(store, publisher, name, SessionEvent.RESUME, "resumed by operator")
    return Outcome(name, state, f"session {name} is {state}")


def ack(config: Config, store: Any, publisher: Any, name: str, choice: str | None = None) -> Outcome:
    """Take a session out of ``needs_operator`` and restart its group (which reconciles again).

    With a roll mid-way the operator must choose: ``resume_roll`` (the restarted strategy finishes
    it from its committed phase) or ``abort_roll`` (the session stays on the old contract; refused
    once the new contract may hold a position).
    """
    session = _session(store, name)
    if str(session.state) != SessionState.NEEDS_OPERATOR:
        raise CommandRefused(f"session {name} is {session.state}, not needs_operator: nothing to ack")
    if choice is not None and choice not in ACK_CHOICES:
        raise CommandRefused(f"unknown ack choice {choice!r} (expected one of {', '.join(ACK_CHOICES)})")
    roll = store.active_roll(name)
    if roll is not None and choice is None:
        raise CommandRefused(f"session {name} has roll {roll.id} ({roll.from_contract} -> {roll.to_contract}) "
                             f"stopped at phase {roll.phase}: ack with --resume-roll or --abort-roll")
    if roll is None and choice is not None:
        raise CommandRefused(f"session {name} has no roll in progress: ack without --resume-roll/--abort-roll")
    what = ""
    if choice == "abort_roll":
        try:
            store.abort_roll(name, reason="aborted by operator", now_ns=clock_ns())
        except IllegalTransition as exc:
            raise CommandRefused(str(exc)) from None
        what = f"; roll {roll.id} aborted, the session stays on {roll.from_contract}"
    elif choice == "resume_roll":
        what = f"; roll {roll.id} resumes at phase {roll.phase} once reconciled"
    state = _event(store, publisher, name, SessionEvent.ACK,
                   f"acknowledged by operator{what} (was: {session.state_reason})")
    if supervisor.is_running(config):
        proxy = supervisor.rpc(config)
        proxy.supervisor.stopProcessGroup(supervisor.group_name(name), True)
        proxy.supervisor.startProcessGroup(supervisor.group_name(name), False)
        return Outcome(name, state, f"session {name} acknowledged{what}; its group is restarting")
    return Outcome(name, state, f"session {name} acknowledged{what}; it starts with `tradebus up`")


def remove(config: Config, store: Any, name: str, *, force: bool = False) -> Outcome:
    """Stop and remove a session's group (other groups untouched); its history stays.

    Refused while the session has open orders or a position, unless ``force``: a session removed
    with live risk would leave that risk with nobody watching it.
    """
    session = _session(store, name)
    open_orders = store.open_orders(name)
    positions = [p for p in store.positions(name) if p.quantity]
    if (open_orders or positions) and not force:
        held = ", ".join(f"{p.quantity} {p.symbol}" for p in positions) or "none"
        raise CommandRefused(f"session {name} has {len(open_orders)} open order(s) and position(s) {held}: "
                             "flatten it first, or pass --force")
    if supervisor.is_running(config):
        supervisor.remove_group(config, name)
    config.paths.session_group_file(name).unlink(missing_ok=True)
    store.remove_session(name, force=force, now_ns=clock_ns())
    return Outcome(name, "removed", f"session {name} removed ({session.contract}); its history stays in the database")


def switch(config: Config, store: Any, name: str, *, account: str, data_source: str | None = None) -> Outcome:
    """Move a session to another broker account (and data source; default: the same account): a
    configuration change, the strategy untouched. Refused while the session holds risk at its
    current broker, or when the accounts cannot do their part (orders / bars)."""
    from brokers.registry import broker_info
    from schema.errors import SessionBusy

    session = _session(store, name)
    data_source = data_source or account
    accounts = {a.name: a for a in store.list_broker_accounts()}
    for role, wanted, capability in (("orders", account, "execution"), ("data", data_source, "market_data")):
        if wanted not in accounts:
            raise CommandRefused(f"no broker account named {wanted!r} (known: {', '.join(accounts) or 'none'})")
        info = broker_info(accounts[wanted].broker)
        if info.capabilities is None or not getattr(info.capabilities, capability):
            raise CommandRefused(f"account {wanted} ({accounts[wanted].broker}) cannot serve {role}: "
                                 f"its broker lacks {capability.replace('_', ' ')}")
    if (session.account, session.data_source) == (account, data_source):
        return Outcome(name, str(session.state), f"session {name} already uses {account} (data {data_source})")
    try:
        moved = store.move_session(name, account=account, data_source=data_source, now_ns=clock_ns())
    except SessionBusy as exc:
        raise CommandRefused(str(exc)) from None
    text = (f"session {name}: orders on {account}, data from {data_source} "
            f"(was {session.account} / {session.data_source})")
    if supervisor.is_running(config):
        proxy = supervisor.rpc(config)
        proxy.supervisor.stopProcessGroup(supervisor.group_name(name), True)
        proxy.supervisor.startProcessGroup(supervisor.group_name(name), False)
        return Outcome(name, str(moved.state), text + "; its group is restarting and reconciles with the new broker")
    return Outcome(name, str(moved.state), text)


def _ask_strategy(rpc: Any, name: str, body: m.Message) -> Outcome:
    try:
        reply = rpc.call(topics.strategy_service(name), body, timeout_s=STRATEGY_TIMEOUT_S, session=name)
    except (UnknownService, NoWorker):
        raise CommandRefused(f"strategy.{name} is not running (the session's strategy process must be up to "
                             "carry this out); see `tradebus status`") from None
    except RemoteError as exc:
        raise CommandRefused(f"strategy.{name} refused: {exc}") from None
    except BusError as exc:
        raise CommandRefused(f"strategy.{name} did not answer ({type(exc).__name__}: {exc}); is the session "
                             "running? see `tradebus status`") from None
    if isinstance(reply, m.ErrorReply):
        raise CommandRefused(f"strategy.{name} refused: {reply.message}")
    return Outcome(reply.session, reply.state, reply.text)


def flatten(store: Any, rpc: Any, name: str, reason: str = "flatten requested by operator") -> Outcome:
    _session(store, name)
    return _ask_strategy(rpc, name, m.FlattenRequest(session=name, reason=reason))


def roll(store: Any, rpc: Any, name: str, to_contract: str | None = None) -> Outcome:
    _session(store, name)
    return _ask_strategy(rpc, name, m.RollRequest(session=name, to_contract=to_contract))


def execute(config: Config, store: Any, publisher: Any, rpc: Any, command: m.OperatorCommand) -> Outcome:
    """Carry out an ``OperatorCommand`` that arrived over the bus."""
    name = command.session
    if command.command == "halt":
        return halt(store, publisher, name, command.reason or "halted by operator")
    if command.command == "resume":
        return resume(store, publisher, name)
    if command.command == "ack":
        return ack(config, store, publisher, name, command.choice)
    if command.command == "remove":
        return remove(config, store, name, force=command.force)
    if command.command == "flatten":
        return flatten(store, rpc, name, command.reason or "flatten requested by operator")
    if command.command == "roll":
        return roll(store, rpc, name, command.to_contract)
    raise CommandRefused(f"unknown command {command.command!r} (expected one of {', '.join(COMMANDS)})")
