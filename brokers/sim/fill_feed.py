"""The fill messages ``GET /fills`` serves: the venue's fills as a client sees them arrive.

Without faults the feed is the venue's fill list, one message per fill, with the same sequence
numbers. With fill faults (``brokers.sim.faults``) a message can arrive late or twice, as on a real
broker whose fill feed lags the order book or repeats itself, so the feed numbers messages itself:
a message gets the next ``seq`` when it becomes visible, never earlier. A client that reads with
``after_seq`` therefore never misses a late message, and a repeated one comes back with the same
``fill_id`` under a new ``seq``.

Pure state: time (monotonic seconds) comes in as an argument; the server calls in under its lock.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

from brokers.sim.venue import VenueFill


@dataclass(frozen=True)
class FeedMessage:
    seq: int
    """The feed's own sequence number (1, 2, …); message ``seq`` is ``published[seq - 1]``."""
    fill: VenueFill


class FillFeed:
    def __init__(self) -> None:
        self._published: list[FeedMessage] = []
        self._pending: list[tuple[float, int, VenueFill]] = []
        """A heap of (visible at, arrival order, fill): messages not yet visible."""
        self._arrivals = 0

    def publish(self, fill: VenueFill, *, now: float, delay_s: float = 0.0, repeat_after_s: float | None = None) -> None:
        """Queue a message for ``fill``, visible ``delay_s`` after ``now``; with ``repeat_after_s``,
        a second message for it that much after the first."""
        self.release_due(now)
        self._queue(now + delay_s, fill)
        if repeat_after_s is not None:
            self._queue(now + delay_s + repeat_after_s, fill)
        self.release_due(now)

    def release_due(self, now: float) -> None:
        """Make every message due by ``now`` visible, in the order they fell due."""
        while self._pending and self._pending[0][0] <= now:
            _, _, fill = heapq.heappop(self._pending)
            self._published.append(FeedMessage(len(self._published) + 1, fill))

    def since(self, account: str, seq: int = 0, limit: int | None = None) -> list[FeedMessage]:
        """Visible messages of ``account`` after ``seq``, oldest first (call ``release_due`` first)."""
        found = [m for m in self._published[max(0, seq):] if m.fill.account == account]
        return found if limit is None else found[:limit]

    @property
    def last_seq(self) -> int:
        return len(self._published)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def _queue(self, visible_at: float, fill: VenueFill) -> None:
        self._arrivals += 1
        heapq.heappush(self._pending, (visible_at, self._arrivals, fill))
