"""When a Schwab bar counts as closed: pure rules, time passed in.

Neither ``pricehistory`` nor the ``CHART_FUTURES`` stream marks a bar as final. The price history
may end with the minute still forming, and the streamer may send a minute's bar again as it
updates (*unconfirmed* how often the real service does; the simulator sends each bar once, when
complete). The rule used everywhere in this adapter:

    a bar is closed once the venue has shown a LATER bar of the same series, or once the wall
    clock has passed the bar's end by ``CLOSE_GRACE_S`` (a quiet market may send no later bar for
    a while; the grace leaves room for the last update of the minute to arrive).

The first half makes closing independent of clocks (the simulator's bar time runs ahead of the
wall clock, so there only a later bar closes one; against the real venue the clock half also
closes the last bar of a quiet minute). A bar's updates replace one another until it is closed;
it is yielded exactly once; an update arriving after it was yielded is dropped (the engine's bars
are immutable).
"""
from __future__ import annotations

from collections.abc import Sequence

from brokers.base import Bar
from brokers.intervals import NS_PER_SECOND

CLOSE_GRACE_S = 5.0
CLOSE_GRACE_NS = int(CLOSE_GRACE_S * NS_PER_SECOND)


def closed_by_clock(bar: Bar, interval_ns: int, now_ns: int, grace_ns: int = CLOSE_GRACE_NS) -> bool:
    return now_ns >= bar.ts_ns + interval_ns + grace_ns


def closed_bars(bars: Sequence[Bar], interval_ns: int, now_ns: int, grace_ns: int = CLOSE_GRACE_NS) -> list[Bar]:
    """The closed bars of a time-ordered history answer: every bar but the last has a later one;
    the last is closed only by the clock."""
    if not bars:
        return []
    if closed_by_clock(bars[-1], interval_ns, now_ns, grace_ns):
        return list(bars)
    return list(bars[:-1])


class BarAssembler:
    """Turns a series of bar versions (history candles, stream updates, in arrival order) into
    closed bars, each once, in increasing ``index``.

    ``last_index``: the newest bar handed out (or the caller's ``after_index``): nothing at or
    before it is handed out again.
    """

    def __init__(self, interval_ns: int, *, last_index: int | None = None, grace_ns: int = CLOSE_GRACE_NS) -> None:
        self.interval_ns = interval_ns
        self.grace_ns = grace_ns
        self.last_index = last_index
        self._pending: Bar | None = None
        self.dropped_late = 0
        """Updates of bars already handed out (counted, not yielded)."""

    @property
    def pending(self) -> Bar | None:
        """The newest bar seen, not yet closed."""
        return self._pending

    def offer(self, bar: Bar) -> list[Bar]:
        """A bar version arrived; the bars it closes (0, 1)."""
        if self.last_index is not None and bar.index <= self.last_index:
            self.dropped_late += 1
            return []
        pending = self._pending
        if pending is None or bar.index == pending.index:
            self._pending = bar  # the newest version of the newest minute wins
            return []
        if bar.index > pending.index:
            self._pending = bar
            return self._hand_out(pending)
        # Older than the pending bar but newer than anything handed out: a later bar exists, so
        # it is closed; handing it out now keeps the order.
        return self._hand_out(bar)

    def tick(self, now_ns: int) -> list[Bar]:
        """The clock moved on: the pending bar, if its minute (plus grace) has passed."""
        pending = self._pending
        if pending is not None and closed_by_clock(pending, self.interval_ns, now_ns, self.grace_ns):
            self._pending = None
            return self._hand_out(pending)
        return []

    def _hand_out(self, bar: Bar) -> list[Bar]:
        self.last_index = bar.index
        return [bar]
