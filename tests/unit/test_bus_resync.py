"""Lag detection and resynchronisation, with no sockets: ``LagMonitor`` is pure, and ``Resync`` runs
over a scripted stand-in for the subscriber that reports gaps the way ``Subscriber`` does."""
from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from decimal import Decimal

import pytest

from bus.client import LAG_LOG_EVERY_S, Gap, GapHandler, LagMonitor
from bus.envelope import Envelope
from bus.errors import BusUnavailable
from bus.resync import RETRY_BASE_S, Resync, Snapshot, field_mark, send_mark
from schema import messages as m
from schema.messages import SCHEMA_VERSION

S = 1_000_000_000  # one second in ns
TOPIC = "md.ESZ4.bar.1m"
ORDERS = "order.s1"


# ---------------------------------------------------------------------------------- factories


def bar(i: int, *, seq: int | None = None, epoch: str = "e1", source: str = "md", topic: str = TOPIC,
        send_ns: int | None = None) -> Envelope:
    body = m.BarClosed(symbol="ESZ4", interval="1m", ts_ns=i, open=Decimal(1), high=Decimal(1), low=Decimal(1),
                       close=Decimal(1), volume=Decimal(1), index=i)
    sent = send_ns if send_ns is not None else 1000 + i
    return Envelope(SCHEMA_VERSION, body.TYPE, topic, source, epoch, seq if seq is not None else i, f"id{i}",
                    None, None, None, sent, sent, body)


def alert(text: str, *, topic: str, seq: int, epoch: str = "e1", source: str = "acct", send_ns: int = 0) -> Envelope:
    body = m.Alert(level="info", text=text)
    return Envelope(SCHEMA_VERSION, body.TYPE, topic, source, epoch, seq, f"id-{text}", None, None, None,
                    send_ns, send_ns, body)


class ScriptedSubscriber:
    """Hands out queued envelopes and reports gaps and restarts like ``Subscriber`` does: per
    (source, topic) stream, ``on_gap`` before the revealing message is handed out."""

    def __init__(self, on_gap: GapHandler | None = None) -> None:
        self.on_gap = on_gap
        self.last_gap: Gap | None = None
        self.queue: deque[Envelope] = deque()
        self.streams: dict[tuple[str, str], tuple[str, int]] = {}
        self.connected_via: list[object] = []

    def feed(self, *envelopes: Envelope) -> None:
        self.queue.extend(envelopes)

    def recv(self, timeout_ms: int | None = 0) -> Envelope | None:
        if not self.queue:
            return None
        envelope = self.queue.popleft()
        key = (envelope.source, envelope.topic)
        previous = self.streams.get(key)
        self.streams[key] = (envelope.epoch, envelope.seq)
        if previous is not None and previous != (envelope.epoch, envelope.seq - 1):
            restarted = previous[0] != envelope.epoch
            self.last_gap = Gap(envelope.source, envelope.topic, previous[1] + 1, envelope.seq, restarted)
            if self.on_gap is not None:
                self.on_gap(envelope.source, previous[1] + 1, envelope.seq)
        return envelope

    def wait_connected(self, publisher: object, timeout_s: float = 5.0) -> None:
        self.connected_via.append(publisher)


class Owner:
    """The owner's snapshot function: returns what ``book`` holds now, recording each call."""

    def __init__(self, book: list[int], *, epoch: str | None = None, failures: int = 0) -> None:
        self.book = book
        self.epoch = epoch
        self.failures = failures
        self.calls = 0

    def __call__(self) -> Snapshot[list[int]]:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise BusUnavailable("owner unreachable")
        return Snapshot(list(self.book), max(self.book, default=0), self.epoch)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def drain(resync: Resync) -> list[int]:
    out = []
    while (envelope := resync.recv(0)) is not None:
        out.append(envelope.body.index)  # type: ignore[attr-defined]
    return out


def recorder() -> tuple[list[Snapshot[list[int]]], Callable[[Snapshot[list[int]]], None]]:
    applied: list[Snapshot[list[int]]] = []
    return applied, applied.append


# ---------------------------------------------------------------------------------- LagMonitor


def test_lag_is_reported_on_the_first_late_message_then_rate_limited_then_recovered_once() -> None:
    monitor = LagMonitor(threshold_ns=2 * S, log_every_ns=10 * S)

    assert monitor.observe(sent_ns=100 * S, now_ns=101 * S) is None  # 1 s: in time
    assert not monitor.lagging
    # Given messages that arrive 3 s after they were sent
    assert monitor.observe(sent_ns=100 * S, now_ns=103 * S) == LagMonitor.LAGGING
    monitor.logged()
    assert monitor.lagging and monitor.lag_ns == 3 * S
    # Then while it lasts it is logged again only every 10 s, counting what went unlogged
    assert [monitor.observe(sent_ns=t * S, now_ns=(t + 4) * S) for t in range(101, 108)] == [None] * 7
    assert monitor.observe(sent_ns=109 * S, now_ns=113 * S) == LagMonitor.LAGGING
    assert (monitor.unlogged, monitor.max_lag_ns, monitor.late, monitor.episodes) == (8, 4 * S, 9, 1)
    # When a message arrives in time again, the recovery is reported once
    assert monitor.observe(sent_ns=114 * S, now_ns=114 * S + 1) == LagMonitor.RECOVERED
    assert monitor.observe(sent_ns=115 * S, now_ns=115 * S + 1) is None
    assert not monitor.lagging and monitor.lasted_ns == 114 * S + 1 - 103 * S


def test_lag_exactly_at_the_threshold_is_in_time_and_clock_skew_is_not_negative_lag() -> None:
    monitor = LagMonitor(threshold_ns=2 * S)
    assert monitor.observe(sent_ns=0, now_ns=2 * S) is None
    assert monitor.observe(sent_ns=5 * S, now_ns=1 * S) is None  # sent "in the future"
    assert monitor.lag_ns == 0 and not monitor.lagging
    with pytest.raises(ValueError):
        LagMonitor(threshold_ns=0)


def test_a_new_episode_logs_at_once_even_within_the_rate_limit() -> None:
    monitor = LagMonitor(threshold_ns=S, log_every_ns=int(LAG_LOG_EVERY_S * S))
    assert monitor.observe(0, 5 * S) == LagMonitor.LAGGING
    assert monitor.observe(6 * S, 6 * S) == LagMonitor.RECOVERED
    assert monitor.observe(6 * S, 8 * S) == LagMonitor.LAGGING
    assert monitor.episodes == 2


# ---------------------------------------------------------------------------------- Resync: late join


def test_late_joiner_gets_the_snapshot_first_then_only_newer_updates() -> None:
    # Given a subscriber that already holds updates 3..7 when the snapshot (of 1..5) is taken
    sub = ScriptedSubscriber()
    sub.feed(*(bar(i) for i in range(3, 8)))
    owner = Owner([1, 2, 3, 4, 5])
    applied, apply = recorder()
    resync = Resync(sub)  # type: ignore[arg-type]
    resync.track(TOPIC, owner, apply, mark=field_mark("ts_ns"))
    assert not resync.in_sync and resync.pending == [TOPIC]

    # When it is read, and later updates arrive
    first = drain(resync)
    sub.feed(bar(8))
    later = drain(resync)

    # Then the snapshot came first and exactly once, then 6, 7, 8: no duplicates, no loss
    assert owner.calls == 1 and [s.value for s in applied] == [[1, 2, 3, 4, 5]]
    assert first == [6, 7] and later == [8]
    assert applied[0].value + first + later == list(range(1, 9))
    assert resync.stale == 3 and resync.in_sync


def test_sync_proves_the_subscription_first_and_takes_the_snapshot_before_any_update() -> None:
    sub = ScriptedSubscriber()
    owner = Owner([1, 2])
    applied, apply = recorder()
    resync = Resync(sub)  # type: ignore[arg-type]
    resync.track(TOPIC, owner, apply, mark=field_mark("ts_ns"))
    publisher = object()

    assert resync.sync(connected_via=publisher) is True  # type: ignore[arg-type]

    assert sub.connected_via == [publisher] and owner.calls == 1
    sub.feed(bar(2), bar(3))
    assert drain(resync) == [3]


def test_a_consumer_that_took_its_own_first_snapshot_passes_it_as_current() -> None:
    sub = ScriptedSubscriber()
    owner = Owner([])
    resync = Resync(sub)  # type: ignore[arg-type]
    resync.track(TOPIC, owner, lambda s: None, mark=field_mark("ts_ns"), current=Snapshot([1, 2, 3], 3))
    sub.feed(bar(2, seq=10), bar(3, seq=11), bar(4, seq=12))
    assert resync.in_sync
    assert drain(resync) == [4]
    assert owner.calls == 0


# ---------------------------------------------------------------------------------- Resync: gaps


def test_gap_calls_the_snapshot_once_drops_what_it_covers_and_logs_the_gap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a resync in step, and a user on_gap that must still be told
    told: list[tuple[str, int, int]] = []
    sub = ScriptedSubscriber(on_gap=lambda *g: told.append(g))
    owner = Owner([])
    applied, apply = recorder()
    resync = Resync(sub)  # type: ignore[arg-type]
    resync.track(TOPIC, owner, apply, mark=field_mark("ts_ns"), current=Snapshot([], 0))
    sub.feed(bar(1), bar(2))
    assert drain(resync) == [1, 2]

    # When seqs 3 and 4 are lost, the owner holds 1..6, and 5, 6, 7 arrive
    owner.book = [1, 2, 3, 4, 5, 6]
    sub.feed(bar(5), bar(6), bar(7))
    with caplog.at_level(logging.INFO, logger="bus.resync"):
        got = drain(resync)

    # Then one snapshot was taken, 5 and 6 (covered) were dropped, 7 delivered
    assert owner.calls == 1 and [s.value for s in applied] == [[1, 2, 3, 4, 5, 6]]
    assert got == [7] and resync.stale == 2
    assert told == [("md", 3, 5)]
    needed = [r for r in caplog.records if getattr(r, "action", "") == "resync_needed"]
    assert len(needed) == 1
    assert {k: needed[0].fields[k] for k in ("source", "topic", "expected", "got", "reason")} == {  # type: ignore[attr-defined]
        "source": "md", "topic": TOPIC, "expected": 3, "got": 5, "reason": "gap"}
    assert [r.levelno for r in caplog.records if getattr(r, "action", "") == "resynced"] == [logging.WARNING]


def test_each_gap_gets_its_own_snapshot_and_other_topics_pass_through() -> None:
    sub = ScriptedSubscriber()
    owner = Owner([])
    resync = Resync(sub)  # type: ignore[arg-type]
    resync.track(TOPIC, owner, lambda s: None, mark=field_mark("ts_ns"), current=Snapshot([], 0))
    other = alert("x", topic="alert", seq=1)
    sub.feed(bar(1), other, bar(3), bar(4), bar(6), bar(7))

    got = []
    while (envelope := resync.recv(0)) is not None:
        got.append(envelope.body.index if isinstance(envelope.body, m.BarClosed) else envelope.body.text)
    # The book stays empty (watermark 0): nothing is covered, two gaps -> two snapshots
    assert got == [1, "x", 3, 4, 6, 7]
    assert owner.calls == 2 and resync.snapshots == 2


def test_source_restart_resyncs_with_an_epoch_scoped_snapshot() -> None:
    # Given orders from the account (epoch a1), with send-time marks
    sub = ScriptedSubscriber()
    resync = Resync(sub)  # type: ignore[arg-type]
    snapshots = iter([Snapshot("first", 100, "a1"), Snapshot("after restart", 250, "a2")])
    taken: list[str] = []
    resync.track(ORDERS, lambda: next(snapshots), lambda s: taken.append(s.value), mark=send_mark)
    sub.feed(alert("old-covered", topic=ORDERS, seq=1, epoch="a1", send_ns=90),
             alert("a1-new", topic=ORDERS, seq=2, epoch="a1", send_ns=110))
    assert [e.body.text for e in iter(lambda: resync.recv(0), None)] == ["a1-new"]  # type: ignore[attr-defined]

    # When the account restarts (a2): one update before its snapshot reply, one after
    sub.feed(alert("a2-covered", topic=ORDERS, seq=1, epoch="a2", send_ns=200),
             alert("a2-new", topic=ORDERS, seq=2, epoch="a2", send_ns=300),
             # and an update from another process on the topic, stamped earlier on its own clock
             alert("other", topic=ORDERS, seq=1, epoch="x9", source="other", send_ns=5))

    # Then the snapshot of the new life is applied, and the covered update dropped
    assert [e.body.text for e in iter(lambda: resync.recv(0), None)] == ["a2-new", "other"]  # type: ignore[attr-defined]
    assert taken == ["first", "after restart"]


def test_restart_first_seen_mid_stream_in_another_epoch_triggers_a_resync() -> None:
    # Given a late joiner whose snapshot came from epoch a1 and which never saw an a1 update
    sub = ScriptedSubscriber()
    snapshots = iter([Snapshot("a1", 100, "a1"), Snapshot("a2", 500, "a2")])
    taken: list[str] = []
    resync = Resync(sub)  # type: ignore[arg-type]
    resync.track(ORDERS, lambda: next(snapshots), lambda s: taken.append(s.value))
    resync.sync()
    # When the first update it sees is seq 3 of a new epoch (seqs 1-2 of a2 were missed)
    sub.feed(alert("a2-3", topic=ORDERS, seq=3, epoch="a2", send_ns=400),
             alert("a2-4", topic=ORDERS, seq=4, epoch="a2", send_ns=600))
    # Then it resyncs from the owner before delivering
    assert [e.body.text for e in iter(lambda: resync.recv(0), None)] == ["a2-4"]  # type: ignore[attr-defined]
    assert taken == ["a1", "a2"]


def test_failed_snapshot_holds_updates_and_retries_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    # Given an owner that fails twice
    clock = Clock()
    sub = ScriptedSubscriber()
    owner = Owner([1, 2], failures=2)
    applied, apply = recorder()
    resync = Resync(sub, monotonic=clock)  # type: ignore[arg-type]
    resync.track(TOPIC, owner, apply, mark=field_mark("ts_ns"))
    sub.feed(bar(2), bar(3))

    with caplog.at_level(logging.ERROR, logger="bus.resync"):
        # When read: the first attempt fails, and nothing is delivered meanwhile
        assert resync.recv(0) is None
        assert (owner.calls, resync.in_sync, resync.failures) == (1, False, 1)
        assert resync.recv(0) is None and owner.calls == 1  # not before the backoff
        clock.now += RETRY_BASE_S
        assert resync.recv(0) is None and owner.calls == 2  # second failure: backoff doubles
        clock.now += RETRY_BASE_S
        assert resync.recv(0) is None and owner.calls == 2
        clock.now += RETRY_BASE_S
        got = drain(resync)

    # Then once it succeeds, the held updates newer than the snapshot come out
    assert owner.calls == 3 and got == [3] and resync.in_sync
    assert [s.value for s in applied] == [[1, 2]]
    assert [r.fields["attempt"] for r in caplog.records if r.action == "resync_failed"] == [1, 2]  # type: ignore[attr-defined]


def test_held_updates_are_bounded_and_the_snapshot_still_covers_the_dropped_ones() -> None:
    sub = ScriptedSubscriber()
    owner = Owner(list(range(1, 8)))
    resync = Resync(sub, max_held=3)  # type: ignore[arg-type]
    resync.track(TOPIC, owner, lambda s: None, mark=field_mark("ts_ns"), current=Snapshot([], 0))
    sub.feed(bar(1), bar(3), bar(4), bar(5), bar(6), bar(7), bar(8), bar(9))
    owner.failures = 1

    assert resync.recv(0).body.index == 1  # type: ignore[union-attr]
    assert resync.recv(0) is None  # the snapshot failed; 3..9 are read and held (at most 3)
    assert resync.overflowed == 4
    assert resync.sync() is True
    assert drain(resync) == [8, 9]


def test_untracked_prefix_is_forgotten_with_what_it_held() -> None:
    sub = ScriptedSubscriber()
    owner = Owner([], failures=1)
    resync = Resync(sub)  # type: ignore[arg-type]
    resync.track(TOPIC, owner, lambda s: None, mark=field_mark("ts_ns"))
    sub.feed(bar(1))
    assert resync.recv(0) is None and not resync.in_sync
    resync.untrack(TOPIC)
    assert resync.in_sync
    sub.feed(bar(2))
    assert drain(resync) == [2]
    with pytest.raises(ValueError):
        resync.track("alert", owner, lambda s: None)
        resync.track("alert", owner, lambda s: None)


def test_longest_tracked_prefix_wins() -> None:
    sub = ScriptedSubscriber()
    resync = Resync(sub)  # type: ignore[arg-type]
    wide, narrow = Owner([]), Owner([1, 2, 3])
    resync.track("md.", wide, lambda s: None, mark=field_mark("ts_ns"), current=Snapshot([], 0))
    resync.track(TOPIC, narrow, lambda s: None, mark=field_mark("ts_ns"), current=Snapshot([1, 2, 3], 3))
    sub.feed(bar(3), bar(4), bar(5, topic="md.NQZ4.bar.1m"))
    assert drain(resync) == [4, 5]


def test_invalidate_makes_a_fresh_snapshot_due_and_holds_updates_until_it_is_taken() -> None:
    sub = ScriptedSubscriber()
    owner = Owner([1, 2])
    resync = Resync(sub)  # type: ignore[arg-type]
    resync.track(TOPIC, owner, lambda s: None, mark=field_mark("ts_ns"), current=Snapshot([1], 1))
    resync.invalidate()
    assert resync.pending == [TOPIC]
    sub.feed(bar(2), bar(3))
    assert drain(resync) == [3]
    assert owner.calls == 1 and resync.in_sync
