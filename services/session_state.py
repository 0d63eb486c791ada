"""Moving a session through its state machine, recording and announcing each step.

The table itself is ``schema.session_fsm``; this module commits a named event (with its reason,
recorded as an event row by the store) and announces the new state on ``session.<name>``.
"""
from __future__ import annotations

import logging
from typing import Any

from bus import topics
from bus.envelope import now_ns as clock_ns
from bus.logs import log
from schema import messages as m
from schema.enums import SessionState
from schema.session_fsm import SessionEvent


def apply_session_event(store: Any, publisher: Any, name: str, event: SessionEvent, reason: str, *,
                        log_to: logging.Logger | None = None, now_ns: int | None = None) -> SessionState:
    """Commit ``event`` for session ``name``; returns the new state (IllegalTransition if refused)."""
    previous = SessionState(store.get_session(name).state)
    updated = store.transition_session(name, event, reason=reason, now_ns=now_ns or clock_ns())
    state = SessionState(updated.state)
    if log_to is not None:
        log(log_to, "session_state", session=name, state=str(state), previous=str(previous),
            event=str(event), reason=reason)
    if publisher is not None:
        announce(publisher, name, str(state), str(previous), reason)
    return state


def announce(publisher: Any, name: str, state: str, previous: str, reason: str) -> None:
    """Publish a committed state change on ``session.<name>`` (for changes the store made as part
    of a larger transaction, such as a roll's first and last phase)."""
    publisher.publish(topics.session(name), m.SessionStateChanged(
        session=name, state=state, previous=previous, reason=reason), session=name)


def escalate(store: Any, name: str, reason: str, now_ns: int, publisher: Any = None) -> SessionState:
    """Any state → needs_operator, with the reason an operator will read in ``tradebus status``."""
    return apply_session_event(store, publisher, name, SessionEvent.ESCALATE, reason, now_ns=now_ns)
