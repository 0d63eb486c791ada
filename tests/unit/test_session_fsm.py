"""The session state machine: every legal transition, and every other pair refused."""
from __future__ import annotations

import pytest

from schema.enums import SessionState as St
from schema.session_fsm import TRANSITIONS, IllegalTransition, SessionEvent as Ev, events_to, legal_events, transition

# Written by hand from DESIGN §5, independently of the table.
EXPECTED: dict[tuple[St, Ev], St] = {
    (St.STOPPED, Ev.START): St.STARTING,
    (St.STARTING, Ev.START): St.STARTING,  # crash restarts: reconcile again before trading
    (St.RECONCILING, Ev.START): St.STARTING,
    (St.TRADING, Ev.START): St.STARTING,
    (St.STOPPING, Ev.START): St.STARTING,
    (St.HALTED, Ev.START): St.HALTED,  # a halt outlives a restart
    (St.ROLLING, Ev.START): St.NEEDS_OPERATOR,  # a roll found mid-way: do not guess
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
    (St.ROLLING, Ev.STOP): St.STOPPING,
    (St.STOPPING, Ev.STOPPED): St.STOPPED,
    (St.NEEDS_OPERATOR, Ev.ACK): St.STARTING,
    **{(state, Ev.ESCALATE): St.NEEDS_OPERATOR for state in St},
}


def test_the_table_lists_exactly_the_expected_transitions() -> None:
    assert dict(TRANSITIONS) == EXPECTED


@pytest.mark.parametrize(("state", "event"), list(EXPECTED), ids=[f"{s}-{e}" for s, e in EXPECTED])
def test_every_legal_transition(state: St, event: Ev) -> None:
    assert transition(state, event) is EXPECTED[(state, event)]
    assert transition(state.value, event.value) is EXPECTED[(state, event)]  # strings work too


ILLEGAL = [(state, event) for state in St for event in Ev if (state, event) not in EXPECTED]


@pytest.mark.parametrize(("state", "event"), ILLEGAL, ids=[f"{s}-{e}" for s, e in ILLEGAL])
def test_every_other_pair_is_refused(state: St, event: Ev) -> None:
    with pytest.raises(IllegalTransition) as raised:
        transition(state, event, "es1")
    assert (raised.value.state, raised.value.event, raised.value.subject) == (state, event, "es1")


def test_only_an_operator_ack_leaves_needs_operator() -> None:
    assert legal_events(St.NEEDS_OPERATOR) == {Ev.ACK, Ev.ESCALATE}
    assert transition(St.NEEDS_OPERATOR, Ev.ESCALATE) is St.NEEDS_OPERATOR


def test_the_normal_life_of_a_session() -> None:
    state = St.STOPPED
    for event in (Ev.START, Ev.RECONCILE, Ev.RECONCILED, Ev.HALT, Ev.RESUME, Ev.ROLL_STARTED,
                  Ev.ROLL_FINISHED, Ev.STOP, Ev.STOPPED):
        state = transition(state, event)
    assert state is St.STOPPED


def test_unknown_event_names_are_illegal_not_crashes() -> None:
    with pytest.raises(IllegalTransition):
        transition(St.TRADING, "explode")


def test_events_to_names_the_event_that_reaches_a_state() -> None:
    assert events_to(St.STOPPED, St.STARTING) == {Ev.START}
    assert events_to(St.NEEDS_OPERATOR, St.STARTING) == {Ev.ACK}
    assert events_to(St.RECONCILING, St.TRADING) == {Ev.RECONCILED}
    assert events_to(St.STOPPED, St.TRADING) == frozenset()
