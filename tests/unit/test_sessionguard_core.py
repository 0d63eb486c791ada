from __future__ import annotations

from services.sessionguard.core import RestartLimiter, Verdict, is_trigger, parse_event


def event(name: str, group: str = "session-es", expected: str = "0"):
    return parse_event(name, {"processname": "es-account", "groupname": group, "expected": expected,
                              "pid": "42", "from_state": "RUNNING"})


def test_unexpected_exit_and_fatal_of_a_session_process_trigger_a_restart() -> None:
    assert is_trigger(event("PROCESS_STATE_EXITED"))
    assert is_trigger(event("PROCESS_STATE_FATAL"))
    assert event("PROCESS_STATE_EXITED").pid == 42


def test_expected_exits_stops_and_global_processes_do_not_trigger() -> None:
    assert not is_trigger(event("PROCESS_STATE_EXITED", expected="1"))
    assert not is_trigger(event("PROCESS_STATE_STOPPED"))
    assert not is_trigger(event("PROCESS_STATE_EXITED", group="busd"))


def test_restart_intensity_gives_up_past_the_limit_and_forgets_old_restarts() -> None:
    limiter = RestartLimiter(max_restarts=3, window_s=10)
    assert [limiter.decide("g", t) for t in (0, 1, 2)] == [Verdict.RESTART] * 3
    assert limiter.decide("g", 3) is Verdict.GIVE_UP
    assert limiter.decide("other", 3) is Verdict.RESTART  # groups are counted apart
    assert limiter.decide("g", 10.5) is Verdict.RESTART  # the restart at 0 left the window
