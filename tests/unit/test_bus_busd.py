"""busd's service table: registration, least-recently-used routing, expiry. No sockets."""
from __future__ import annotations

from bus.busd import ServiceTable
from bus.errors import CODE_NO_WORKER, CODE_UNKNOWN_SERVICE

A, B, C = b"A", b"B", b"C"


def table(now: float = 100.0) -> ServiceTable:
    return ServiceTable(expiry_s=3.0, started_at=now, startup_grace_s=3.0)


def route(t: ServiceTable, service: str, now: float) -> bytes | None:
    """What busd does per request: first live candidate, then mark it used."""
    candidates = t.candidates(service, now)
    if not candidates:
        return None
    t.used(candidates[0], service)
    return candidates[0]


def test_least_recently_used_worker_gets_the_next_request() -> None:
    t = table()
    t.ready(A, ("svc",), 100.0)
    t.ready(B, ("svc",), 100.1)

    served = [route(t, "svc", 100.2) for _ in range(5)]

    assert served[0] == B  # a newly registered worker has never been used: it goes first
    assert served == [B, A, B, A, B]


def test_heartbeats_do_not_reorder_but_keep_workers_alive() -> None:
    t = table()
    t.ready(A, ("svc",), 100.0)
    t.ready(B, ("svc",), 100.0)
    assert route(t, "svc", 100.0) == B
    for now in (101.0, 102.0, 103.0, 104.0):
        assert t.ready(A, ("svc",), now) is False  # not new
        t.ready(B, ("svc",), now)
    assert route(t, "svc", 106.0) == A
    assert route(t, "svc", 106.0) == B


def test_silent_worker_is_skipped_then_expired() -> None:
    t = table()
    t.ready(A, ("svc",), 100.0)
    t.ready(B, ("svc",), 100.0)
    t.ready(B, ("svc",), 102.5)  # B keeps beating, A falls silent

    assert t.candidates("svc", 103.1) == [B]  # A is past its expiry even before the sweep
    assert t.expire(103.1) == [(A, ("svc",))]
    assert len(t) == 1


def test_one_worker_many_services_and_removal() -> None:
    t = table()
    t.ready(A, ("x", "y"), 100.0)
    t.ready(B, ("y",), 100.0)
    assert t.candidates("x", 100.0) == [A]
    assert set(t.candidates("y", 100.0)) == {A, B}
    assert t.remove(A) == ("x", "y")
    assert t.candidates("x", 100.0) == []
    assert t.candidates("y", 100.0) == [B]


def test_service_list_change_re_registers() -> None:
    t = table()
    t.ready(A, ("x",), 100.0)
    assert t.ready(A, ("y",), 100.5) is True
    assert t.candidates("x", 100.5) == [] and t.candidates("y", 100.5) == [A]


def test_unknown_service_versus_no_live_worker() -> None:
    t = table(now=100.0)
    t.ready(A, ("svc",), 100.0)
    t.remove(A)

    assert t.unavailable("svc", 110.0)[0] == CODE_NO_WORKER  # known, nobody alive
    assert t.unavailable("other", 110.0)[0] == CODE_UNKNOWN_SERVICE
    # Right after a (re)start workers may not have re-registered yet: don't call it unknown.
    assert t.unavailable("other", 101.0)[0] == CODE_NO_WORKER
    assert C not in t.candidates("svc", 110.0)
