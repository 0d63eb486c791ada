"""Getting back in step: a snapshot first, then only the updates that are newer than it.

Pub/sub loses messages (slow joiners, high-water marks, busd restarts). ``Subscriber`` notices a
sequence gap or a source restart; ``Resync`` does something about it, the same way for a late
joiner as for a gap:

1. subscribe first (the ``Subscriber`` exists, ideally proven live with ``wait_connected``);
2. take a snapshot from the owner of the topic (an RPC, or the database), meanwhile holding back
   the updates of that topic;
3. hand the snapshot to the consumer (``apply``), then the held-back and later updates that are
   newer than the snapshot; older ones are dropped (the snapshot already reflects them).

The contract (one per tracked topic prefix), in one sentence: **a snapshot reflects every update
whose mark is <= its watermark and none whose mark is greater**. ``mark(envelope) -> int`` and
``Snapshot.watermark`` are in the same units; two kinds are useful:

* a domain mark that the owner's data carries, e.g. a bar's ``ts_ns``: the snapshot's watermark
  is the ``ts_ns`` of the newest bar it holds (``field_mark("ts_ns")``). Exact, and independent
  of clocks and threads. Prefer it whenever the updates are ordered by such a field.
* the owner's send time (``send_mark``, the default) with the snapshot taken over RPC by
  ``rpc_snapshot``: the watermark is the reply envelope's send time, and ``Snapshot.epoch`` the
  owner's epoch, so only updates from that same process life are compared (an update of another
  epoch is never dropped: a restart is a gap of its own). This holds when the owner publishes the
  updates and answers the snapshot request on one thread of one ``BusClient`` (as the account
  service does): every update published before the reply was built was stamped before it, every
  later one after it.

While a prefix waits for its snapshot (at the start, after a gap, or while the owner cannot be
reached: ``retry_on`` errors are logged and retried with a capped backoff) its updates are held
back, at most ``max_held`` of them: dropping the oldest loses nothing, because the snapshot is
taken after they arrived and so reflects them. ``in_sync`` is False meanwhile: do not trade.

A gap is resynchronised once: gaps seen before the snapshot is taken are covered by it.
Topics under no tracked prefix pass straight through.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from bus import topics as topic_names
from bus.envelope import Envelope
from bus.errors import BusError
from bus.logs import log
from schema.messages import Message

if TYPE_CHECKING:
    from bus.client import Publisher, RpcClient, Subscriber

T = TypeVar("T")

MAX_HELD = 100_000  # updates held back per prefix while its snapshot is pending
RETRY_BASE_S = 0.1  # after a failed snapshot, wait this long before the next attempt...
RETRY_CAP_S = 5.0  # ...doubling up to this
SNAPSHOT_TIMEOUT_S = 5.0
WAIT_CONNECTED_S = 5.0

logger = logging.getLogger("bus.resync")


@dataclass(frozen=True, slots=True)
class Snapshot(Generic[T]):
    """What the owner said (``value``) and which updates it reflects: every one whose mark is
    <= ``watermark``; with an ``epoch``, only updates of that source epoch are compared."""

    value: T
    watermark: int
    epoch: str | None = None

    def covers(self, envelope: Envelope, mark: int) -> bool:
        """True if the update (whose mark is ``mark``) is already reflected here: drop it."""
        return mark <= self.watermark and (self.epoch is None or envelope.epoch == self.epoch)


SnapshotFn = Callable[[], Snapshot[Any]]
Mark = Callable[[Envelope], int]
Apply = Callable[[Snapshot[Any]], None]


def send_mark(envelope: Envelope) -> int:
    """The update's send time (UTC ns); pairs with ``rpc_snapshot``."""
    return envelope.send_ns


def field_mark(name: str) -> Mark:
    """A mark read from the body, e.g. ``field_mark("ts_ns")`` for bars."""

    def mark(envelope: Envelope) -> int:
        return getattr(envelope.body, name)

    return mark


def rpc_snapshot(rpc: RpcClient, service: str, request: Message, *, timeout_s: float = SNAPSHOT_TIMEOUT_S,
                 session: str | None = None) -> SnapshotFn:
    """A snapshot function that asks ``service`` (an idempotent read, retried within ``timeout_s``)
    and stamps the reply with the owner's send time and epoch (see the module's contract).

    The watermark is one nanosecond before the reply was stamped, so an update stamped in the very
    same nanosecond is delivered: at worst a duplicate, never a loss."""

    def take() -> Snapshot[Message]:
        reply = rpc.call_envelope(service, request, timeout_s=timeout_s, session=session, idempotent=True)
        return Snapshot(reply.body, reply.send_ns - 1, reply.epoch)

    return take


@dataclass(slots=True)
class _Track:
    prefix: str
    snapshot: SnapshotFn
    apply: Apply
    mark: Mark
    current: Snapshot[Any] | None = None
    needed: str | None = "late_join"  # why a snapshot is due; None: in sync
    held: deque[Envelope] = field(default_factory=deque)
    attempts: int = 0  # failed attempts since the snapshot became due
    retry_at: float = 0.0  # monotonic


class Resync:
    """Wraps a ``Subscriber``: ``recv`` hands out updates in step with the snapshots it takes.

    It installs itself as the subscriber's ``on_gap`` (an ``on_gap`` set before is still called).
    Counters: ``snapshots`` taken, ``stale`` updates dropped, ``failures`` of snapshot attempts,
    ``overflowed`` held updates dropped while waiting.
    """

    def __init__(self, subscriber: Subscriber, *, retry_on: tuple[type[BaseException], ...] = (BusError,),
                 max_held: int = MAX_HELD, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.subscriber = subscriber
        self.retry_on = retry_on
        self.max_held = max_held
        self._monotonic = monotonic
        self._forward_gap = subscriber.on_gap
        subscriber.on_gap = self._on_gap
        self._tracks: list[_Track] = []
        self._ready: deque[Envelope] = deque()
        self._seen: set[tuple[str, str]] = set()  # (source, topic) streams seen under a tracked prefix
        self.snapshots = 0
        self.stale = 0
        self.failures = 0
        self.overflowed = 0

    # ------------------------------------------------------------------ configuration

    def track(self, prefix: str, snapshot: SnapshotFn, apply: Apply, *, mark: Mark = send_mark,
              current: Snapshot[Any] | None = None) -> None:
        """Keep ``prefix`` (one of the subscriber's topic prefixes) in step with ``snapshot``.
        Without ``current`` the first snapshot is due now (a late joiner); with it, the consumer
        already holds that snapshot and only updates newer than it are delivered."""
        if any(t.prefix == prefix for t in self._tracks):
            raise ValueError(f"{prefix!r} is already tracked")
        self._tracks.append(_Track(prefix, snapshot, apply, mark, current=current,
                                   needed=None if current is not None else "late_join"))

    def untrack(self, prefix: str) -> None:
        """Stop tracking ``prefix``; its held-back updates are discarded (e.g. after a contract roll)."""
        self._tracks = [t for t in self._tracks if t.prefix != prefix]

    def invalidate(self, prefix: str | None = None, reason: str = "requested") -> None:
        """Make a snapshot due for ``prefix`` (None: every tracked prefix), e.g. before trading
        resumes after an operator's intervention; updates are held until it is taken."""
        for track in self._tracks:
            if (prefix is None or track.prefix == prefix) and track.needed is None:
                track.needed, track.attempts, track.retry_at = reason, 0, 0.0

    # ------------------------------------------------------------------ state

    @property
    def in_sync(self) -> bool:
        """False while any tracked prefix waits for a snapshot: its data is incomplete."""
        return all(t.needed is None for t in self._tracks)

    @property
    def pending(self) -> list[str]:
        return [t.prefix for t in self._tracks if t.needed is not None]

    def watermark(self, prefix: str) -> Snapshot[Any] | None:
        """The snapshot ``prefix`` is in step with, if any."""
        return next((t.current for t in self._tracks if t.prefix == prefix), None)

    # ------------------------------------------------------------------ flow

    def sync(self, *, connected_via: Publisher | None = None, timeout_s: float = WAIT_CONNECTED_S) -> bool:
        """Take every due snapshot now (ignoring retry backoff); True if all prefixes are in step.
        For a late joiner pass ``connected_via`` (any publisher of this process): the subscription
        is proven live at busd first, so no update can fall between subscription and snapshot."""
        if connected_via is not None:
            self.subscriber.wait_connected(connected_via, timeout_s)
        for track in self._tracks:
            if track.needed is not None:
                self._take(track)
        return self.in_sync

    def recv(self, timeout_ms: int | None = 0) -> Envelope | None:
        """The next update to act on, or None after ``timeout_ms`` (0: don't wait; None: forever).
        Due snapshots are taken (and applied) first; updates they cover are dropped."""
        deadline = None if timeout_ms is None else self._monotonic() + timeout_ms / 1000
        while True:
            self._take_due()
            if self._ready:
                return self._ready.popleft()
            wait_ms = self._wait_ms(deadline)
            envelope = self.subscriber.recv(wait_ms)
            if envelope is None:
                if deadline is not None and self._monotonic() >= deadline:
                    return None
                continue  # a retry came due before the deadline
            track = self._track_for(envelope.topic)
            if track is None:
                return envelope
            if track.needed is None:
                self._check_first_sight(track, envelope)
            else:
                self._seen.add((envelope.source, envelope.topic))  # the coming snapshot covers its past
            if track.needed is not None:
                self._hold(track, envelope)
            elif self._covered(track, envelope):
                continue
            else:
                return envelope

    # ------------------------------------------------------------------ internals

    def _on_gap(self, source: str, expected: int, got: int) -> None:
        gap = self.subscriber.last_gap
        track = self._track_for(gap.topic) if gap is not None else None
        if track is not None and gap is not None:
            reason = "source_restarted" if gap.restarted else "gap"
            log(logger, "resync_needed", logging.WARNING, prefix=track.prefix, reason=reason, source=source,
                topic=gap.topic, expected=expected, got=got, already_pending=track.needed is not None)
            if track.needed is None:
                track.needed, track.attempts, track.retry_at = reason, 0, 0.0
        if self._forward_gap is not None:
            self._forward_gap(source, expected, got)

    def _track_for(self, topic: str) -> _Track | None:
        best: _Track | None = None
        for track in self._tracks:
            if topic_names.matches(track.prefix, topic) and (best is None or len(track.prefix) > len(best.prefix)):
                best = track
        return best

    def _check_first_sight(self, track: _Track, envelope: Envelope) -> None:
        """The subscriber reports gaps only in streams it has seen before. A stream first seen
        mid-way (seq > 1) in an epoch other than the snapshot's means the owner restarted after
        the snapshot and we missed the start of its new life: resync."""
        key = (envelope.source, envelope.topic)
        if key in self._seen:
            return
        self._seen.add(key)
        current = track.current
        if envelope.seq > 1 and current is not None and current.epoch is not None and envelope.epoch != current.epoch:
            log(logger, "resync_needed", logging.WARNING, prefix=track.prefix, reason="unseen_epoch",
                source=envelope.source, topic=envelope.topic, expected=1, got=envelope.seq, already_pending=False)
            track.needed, track.attempts, track.retry_at = "unseen_epoch", 0, 0.0

    def _hold(self, track: _Track, envelope: Envelope) -> None:
        if len(track.held) >= self.max_held:
            track.held.popleft()  # the coming snapshot reflects it: nothing is lost
            self.overflowed += 1
        track.held.append(envelope)

    def _covered(self, track: _Track, envelope: Envelope) -> bool:
        if track.current is not None and track.current.covers(envelope, track.mark(envelope)):
            self.stale += 1
            return True
        return False

    def _take_due(self) -> None:
        now = self._monotonic()
        for track in self._tracks:
            if track.needed is not None and now >= track.retry_at:
                self._take(track)

    def _take(self, track: _Track) -> None:
        """One snapshot attempt; on success apply it and release the held updates it does not cover."""
        started = self._monotonic()
        try:
            snapshot = track.snapshot()
        except self.retry_on as exc:
            self.failures += 1
            track.attempts += 1
            delay = min(RETRY_CAP_S, RETRY_BASE_S * 2 ** (track.attempts - 1))
            track.retry_at = self._monotonic() + delay
            log(logger, "resync_failed", logging.ERROR, prefix=track.prefix, reason=track.needed,
                attempt=track.attempts, error=type(exc).__name__, detail=str(exc), retry_in_s=delay,
                held=len(track.held))
            return
        track.apply(snapshot)
        self.snapshots += 1
        reason, track.needed, track.current, track.attempts = track.needed, None, snapshot, 0
        held, track.held = track.held, deque()
        released = 0
        for envelope in held:
            if not self._covered(track, envelope):
                self._ready.append(envelope)
                released += 1
        log(logger, "resynced", logging.WARNING if reason != "late_join" else logging.INFO, prefix=track.prefix,
            reason=reason, watermark=snapshot.watermark, epoch=snapshot.epoch, held=len(held), released=released,
            took_ms=round((self._monotonic() - started) * 1000, 1))

    def _wait_ms(self, deadline: float | None) -> int | None:
        """How long the subscriber may block: until the deadline or the next snapshot retry."""
        now = self._monotonic()
        until = deadline
        for track in self._tracks:
            if track.needed is not None:
                until = track.retry_at if until is None else min(until, track.retry_at)
        if until is None:
            return None
        return max(0, int((until - now) * 1000 + 0.999))
