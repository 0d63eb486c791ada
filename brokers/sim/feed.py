"""Bar sources for the simulator: a seeded random walk, or a CSV file.

A feed is an iterator of closed ``Bar`` objects with consecutive ``index`` values from 0. Feeds are
pure data producers: pacing (wall-clock time between bars) is the server's business.
"""
from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from brokers.base import Bar
from brokers.intervals import NS_PER_SECOND

GAP_MAX_TICKS = 1
"""A bar may open up to this many ticks away from the previous close (so "fills at the open of the
next bar" is distinguishable from "fills at the last close")."""
STEPS_PER_BAR = 4
MAX_TICKS_PER_STEP = 4
VOLUME_RANGE = (100, 1000)

TIMESTAMP_COLUMNS = ("Date", "Timestamp", "Datetime", "DateTime", "Time")
PRICE_COLUMNS = ("Open", "High", "Low", "Close")


class RandomWalkFeed:
    """An endless, deterministic random walk: the same (seed, symbol) always gives the same bars.

    Each bar opens within ``GAP_MAX_TICKS`` of the previous close and takes ``STEPS_PER_BAR`` steps
    of up to ``MAX_TICKS_PER_STEP`` ticks; high/low are the extremes of that path, so OHLC is always
    consistent. Prices are Decimal multiples of ``tick_size`` and never fall below one tick.
    """

    def __init__(self, symbol: str, seed: int | str, start_price: Decimal, tick_size: Decimal,
                 interval_ns: int, start_ns: int, interval: str = "") -> None:
        if tick_size <= 0:
            raise ValueError("tick_size must be positive")
        if interval_ns <= 0:
            raise ValueError("interval_ns must be positive")
        self.symbol = symbol
        self.interval = interval
        self.tick_size = tick_size
        self.interval_ns = interval_ns
        self.start_ns = start_ns
        self._rng = random.Random(f"{seed}:{symbol}")
        self._ticks = max(1, int((start_price / tick_size).to_integral_value()))
        self._index = 0

    def __iter__(self) -> Iterator[Bar]:
        return self

    def __next__(self) -> Bar:
        rng = self._rng
        open_ticks = max(1, self._ticks + rng.randint(-GAP_MAX_TICKS, GAP_MAX_TICKS))
        path = [open_ticks]
        for _ in range(STEPS_PER_BAR):
            path.append(max(1, path[-1] + rng.randint(-MAX_TICKS_PER_STEP, MAX_TICKS_PER_STEP)))
        self._ticks = path[-1]
        tick = self.tick_size
        bar = Bar(
            symbol=self.symbol,
            interval=self.interval,
            ts_ns=self.start_ns + self._index * self.interval_ns,
            open=open_ticks * tick,
            high=max(path) * tick,
            low=min(path) * tick,
            close=path[-1] * tick,
            volume=Decimal(rng.randint(*VOLUME_RANGE)),
            index=self._index,
        )
        self._index += 1
        return bar


class CsvFeedError(ValueError):
    """A CSV row (or header) the feed cannot read; the message names the file and line."""


class CsvFeed:
    """Bars from an OHLCV CSV: ``Date,Open,High,Low,Close,Volume`` (or ``Timestamp``/``Datetime``).

    Dates may be daily (``2025-01-31``) or intraday ISO (``2025-01-31 14:30:00``, ``…T14:30Z``);
    naive times are taken as UTC. A plain number is a Unix epoch time, its unit read from its size
    (see ``epoch_ns``). Column names are matched case-insensitively. Volume is optional (0). Rows
    must be in time order. A bad row raises ``CsvFeedError`` naming the file and line when it is
    reached.
    """

    def __init__(self, path: str | Path, symbol: str, interval: str) -> None:
        self.path = Path(path)
        self.symbol = symbol
        self.interval = interval

    def __iter__(self) -> Iterator[Bar]:
        with self.path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = {name.strip().lower(): name for name in (reader.fieldnames or [])}
            ts_column = next((columns[c.lower()] for c in TIMESTAMP_COLUMNS if c.lower() in columns), None)
            missing = [c for c in PRICE_COLUMNS if c.lower() not in columns]
            if ts_column is None or missing:
                wanted = ", ".join(([] if ts_column else ["Date/Timestamp/Datetime"]) + missing)
                raise CsvFeedError(f"{self.path}:1: missing column(s) {wanted}")
            volume_column = columns.get("volume")
            previous_ts: int | None = None
            for index, row in enumerate(reader):
                line = reader.line_num
                ts_ns = self._timestamp(row.get(ts_column), line)
                if previous_ts is not None and ts_ns <= previous_ts:
                    raise CsvFeedError(f"{self.path}:{line}: timestamp is not after the previous row's")
                previous_ts = ts_ns
                o, h, l, c = (self._decimal(row.get(columns[p.lower()]), p, line) for p in PRICE_COLUMNS)
                volume = self._decimal(row.get(volume_column), "Volume", line) if volume_column else Decimal(0)
                if not (l <= min(o, c) and h >= max(o, c) and l <= h):
                    raise CsvFeedError(f"{self.path}:{line}: inconsistent OHLC (open {o}, high {h}, low {l}, close {c})")
                yield Bar(self.symbol, self.interval, ts_ns, o, h, l, c, volume, index)

    def _decimal(self, text: str | None, column: str, line: int) -> Decimal:
        try:
            value = Decimal((text or "").strip())
        except InvalidOperation:
            raise CsvFeedError(f"{self.path}:{line}: {column} is not a number: {text!r}") from None
        if not value.is_finite():
            raise CsvFeedError(f"{self.path}:{line}: {column} is not finite: {text!r}")
        return value

    def _timestamp(self, text: str | None, line: int) -> int:
        raw = (text or "").strip()
        epoch = epoch_ns(raw)
        if epoch is not None:
            return epoch
        moment = _parse_moment(raw)
        if moment is None:
            raise CsvFeedError(f"{self.path}:{line}: bad date {raw!r} (expected ISO, e.g. 2025-01-31 or 2025-01-31 14:30:00)")
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86400 + delta.seconds) * NS_PER_SECOND + delta.microseconds * 1000


EPOCH_UNITS_NS = ((10**11, NS_PER_SECOND), (10**14, 10**6), (10**17, 10**3))
"""An epoch number below 1e11 counts seconds, below 1e14 milliseconds, below 1e17 microseconds, else
nanoseconds (1e11 s is the year 5138; 1e11 ms is 1973): every date from 1973 on reads right."""
EPOCH_MIN_DIGITS = 9
"""Fewer digits before the point is not an epoch time but, e.g., a compact date (``20250131``)."""


def epoch_ns(raw: str) -> int | None:
    """A Unix epoch time written as a plain number (``1735689600``, ``1735689600000``,
    ``1735689600.5``) in integer nanoseconds; None when ``raw`` is not such a number."""
    whole, _, fraction = raw.partition(".")
    if len(whole) < EPOCH_MIN_DIGITS or not whole.isdigit() or not (fraction == "" or fraction.isdigit()):
        return None
    value = Decimal(raw)
    for below, scale in EPOCH_UNITS_NS:
        if value < below:
            return int(value * scale)
    return int(value)


_FALLBACK_FORMATS = ("%m/%d/%Y", "%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S", "%Y%m%d", "%Y%m%d %H:%M:%S")
"""Non-ISO layouts common in vendor exports (US dates, compact dates)."""


def _parse_moment(raw: str) -> datetime | None:
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        pass
    for layout in _FALLBACK_FORMATS:
        try:
            return datetime.strptime(raw, layout)
        except ValueError:
            continue
    return None
