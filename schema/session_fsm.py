"""The trading-session state machine (DESIGN §5): one table of (state, event) -> next state.

    starting -> reconciling -> trading <-> halted
    trading -> rolling -> trading
    any live state -> stopping -> stopped -> starting
    any state -> needs_operator -> starting   (only by an operator's ack)

A transition is the only place a session's state changes; an event the table does not list for
the current state raises ``IllegalTransition``. Pure: no I/O, no clock.
"""
from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from schema.enums import SessionState
from schema.errors import IllegalTransition

__all__ = ["IllegalTransition", "SessionEvent", "TRANSITIONS", "events_to", "legal_events", "transition"]


class SessionEvent(StrEnum):
    START = "start"  # a session process (re)started
    RECONCILE = "reconcile"  # reconciliation against the broker began
    RECONCILED = "reconciled"  # the database agrees with the broker: trading may begin
    HALT = "halt"  # stop opening risk (operator or a risk rule); working state is kept
    RESUME = "resume"
    ROLL_STARTED = "roll_started"  # a contract roll began
    ROLL_FINISHED = "roll_finished"
    STOP = "stop"  # an orderly stop was asked for
    STOPPED = "stopped"  # the session's processes finished stopping
    ESCALATE = "escalate"  # a discrepancy a program must not guess about
    ACK = "ack"  # an operator looked and said: start again (``tradebus sessions ack``)


St = SessionState
Ev = SessionEvent

_TABLE: dict[tuple[SessionState, SessionEvent], SessionState] = {
    (St.STOPPED, Ev.START): St.STARTING,
    # A process that crashed is restarted by sessionguard and starts again from wherever the row
    # was left. It must reconcile before it trades again, so each of these goes back to starting.
    (St.STARTING, Ev.START): St.STARTING,
    (St.RECONCILING, Ev.START): St.STARTING,
    (St.TRADING, Ev.START): St.STARTING,
    # An operator's start overrides a stop that never finished (the stopping process died).
    (St.STOPPING, Ev.START): St.STARTING,
    # A halt is an operator's or a risk rule's decision; it outlives a restart. Only resume ends it.
    (St.HALTED, Ev.START): St.HALTED,
    # A restart that finds a roll mid-way refuses to resume rather than guess which leg is done.
    (St.ROLLING, Ev.START): St.NEEDS_OPERATOR,
    (St.STARTING, Ev.RECONCILE): St.RECONCILING,
    (St.RECONCILING, Ev.RECONCILED): St.TRADING,
    (St.TRADING, Ev.HALT): St.HALTED,
    (St.HALTED, Ev.RESUME): St.TRADING,
    (St.TRADING, Ev.ROLL_STARTED): St.ROLLING,
    (St.ROLLING, Ev.ROLL_FINISHED): St.TRADING,
    (St.STARTING, Ev.STOP): St.STOPPING,
    (St.RECONCILING, Ev.STOP): St.STOPPING,
    (St.TRADING, Ev.STOP): St.STOPPING,
    (St.HALTED, Ev.STOP): St.STOPPING,
    # Stopping mid-roll is allowed; the roll row stays, and the next start escalates (see above).
    (St.ROLLING, Ev.STOP): St.STOPPING,
    (St.STOPPING, Ev.STOPPED): St.STOPPED,
    # needs_operator is deliberately absent from stop/start: only an operator's ack leaves it.
    (St.NEEDS_OPERATOR, Ev.ACK): St.STARTING,
    **{(state, Ev.ESCALATE): St.NEEDS_OPERATOR for state in St},
    # (escalating an escalated session again is accepted: it records the newer reason)
}
del St, Ev

TRANSITIONS: Mapping[tuple[SessionState, SessionEvent], SessionState] = MappingProxyType(_TABLE)


def transition(state: SessionState | str, event: SessionEvent | str, subject: str | None = None) -> SessionState:
    """The state after ``event``; raises ``IllegalTransition`` if the table does not allow it.

    ``subject`` (the session's name) only makes the error message useful.
    """
    current = SessionState(state)
    try:
        happened = SessionEvent(event)
    except ValueError:
        raise IllegalTransition(current, event, subject) from None
    target = _TABLE.get((current, happened))
    if target is None:
        raise IllegalTransition(current, happened, subject)
    return target


def legal_events(state: SessionState | str) -> frozenset[SessionEvent]:
    current = SessionState(state)
    return frozenset(event for (source, event) in _TABLE if source is current)


def events_to(state: SessionState | str, target: SessionState | str) -> frozenset[SessionEvent]:
    """The events that take ``state`` to ``target`` (empty if none does).

    For callers that think in target states ("we are trading now"): they still go through the
    table, by naming the event that gets there.
    """
    current, wanted = SessionState(state), SessionState(target)
    return frozenset(event for (source, event), to in _TABLE.items() if source is current and to is wanted)
