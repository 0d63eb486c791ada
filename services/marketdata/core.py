"""Pure part of the market-data service: which bars are new, and what a late joiner gets."""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from threading import Lock

from schema.messages import BarClosed

BARS_KEPT = 5_000


@dataclass
class BarBook:
    """Recent bars of one symbol, oldest first, deduplicated by bar index.

    The streaming thread appends; the RPC loop reads. A lock keeps the two consistent; both sides
    hold it only for a copy or an append.
    """

    kept: int = BARS_KEPT
    _bars: deque[BarClosed] = field(default_factory=deque)
    _lock: Lock = field(default_factory=Lock)

    @property
    def last_index(self) -> int | None:
        with self._lock:
            return self._bars[-1].index if self._bars else None

    def add(self, bar: BarClosed) -> bool:
        """Keep ``bar`` if it is newer than everything held; False for a repeat."""
        with self._lock:
            if self._bars and bar.index <= self._bars[-1].index:
                return False
            self._bars.append(bar)
            while len(self._bars) > self.kept:
                self._bars.popleft()
            return True

    def extend(self, bars: Iterable[BarClosed]) -> list[BarClosed]:
        return [bar for bar in bars if self.add(bar)]

    def after(self, ts_ns: int) -> list[BarClosed]:
        with self._lock:
            return [bar for bar in self._bars if bar.ts_ns > ts_ns]
