"""Grouped restarts with a limit: a crash-looping session ends in needs_operator, alone."""
from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from engine_tree import EngineTree, wait_until

pytestmark = pytest.mark.integration

RESTARTS = 4  # the fifth death within the window is one too many
ROLES = ("marketdata", "account", "strategy")


def programs(session: str) -> set[str]:
    return {f"session-{session}:{session}-{role}" for role in ROLES}


@pytest.fixture
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineTree]:
    engine = EngineTree(tmp_path_factory.mktemp("guard"), restarts=RESTARTS, restart_window_s=120)
    try:
        engine.start(expect=programs("es-sma") | programs("6e-sma"))
        yield engine
    except BaseException:
        print(engine.diagnostics())
        raise
    finally:
        engine.stop()


def test_a_session_killed_five_times_quickly_waits_for_an_operator_while_the_other_trades(tree: EngineTree) -> None:
    store = tree.store()
    victim = "session-es-sma:es-sma-strategy"
    others = {name: pid for name, pid in tree.pids().items() if name not in programs("es-sma")}
    fills_before = len(store.fills("6e-sma"))
    # When one process of es-sma dies five times, each time right after its group came back
    for death in range(RESTARTS + 1):
        pid = tree.pids()[victim]
        os.kill(pid, signal.SIGKILL)
        if death < RESTARTS:
            wait_until(lambda: (p := tree.pids()).get(victim) not in (None, pid)
                       and programs("es-sma") <= set(p), timeout=60, what=f"restart #{death + 1} of es-sma")
    # Then the group stays stopped and the session needs an operator, saying why
    wait_until(lambda: str(store.get_session("es-sma").state) == "needs_operator", timeout=60,
               what="es-sma to need an operator")
    assert "died too often" in (store.get_session("es-sma").state_reason or "")
    states = {name: info["statename"] for name, info in tree.processes().items() if name in programs("es-sma")}
    assert all(state in ("STOPPED", "EXITED") for state in states.values()), states
    # And the other session was never restarted and kept trading throughout
    now = tree.pids()
    assert {name: now.get(name) for name in others} == others
    wait_until(lambda: len(store.fills("6e-sma")) > fills_before, timeout=60, what="6e-sma to keep trading")
    # When an operator acknowledges, the session comes back and trades again
    tree.tradebus("sessions", "ack", "es-sma")
    wait_until(lambda: str(store.get_session("es-sma").state) == "trading", timeout=60,
               what="es-sma trading again after ack")
    # supervisord calls a process RUNNING only after its startsecs: the session can trade before that
    wait_until(lambda: programs("es-sma") <= set(tree.pids()), timeout=30, what="es-sma's processes running")
    store.close()
