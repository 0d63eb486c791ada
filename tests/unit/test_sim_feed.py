from __future__ import annotations

from decimal import Decimal
from itertools import islice
from pathlib import Path

import pytest

from brokers.sim.feed import CsvFeed, CsvFeedError, RandomWalkFeed

MINUTE = 60_000_000_000


def walk(seed: int = 7, symbol: str = "ESZ6", tick: str = "0.25", start: str = "5000") -> RandomWalkFeed:
    return RandomWalkFeed(symbol, seed, Decimal(start), Decimal(tick), MINUTE, 1_000 * MINUTE, interval="1m")


def test_random_walk_is_deterministic_per_seed_and_symbol() -> None:
    first = list(islice(walk(), 200))
    assert first == list(islice(walk(), 200))
    assert first != list(islice(walk(seed=8), 200))
    other = list(islice(walk(symbol="NQZ6"), 200))
    assert [b.close for b in first] != [b.close for b in other]


@pytest.mark.parametrize(("tick", "start"), [("0.25", "5000"), ("0.00005", "1.08"), ("0.01", "0.05")])
def test_random_walk_bars_are_consistent_tick_multiples(tick: str, start: str) -> None:
    tick_size = Decimal(tick)
    bars = list(islice(walk(tick=tick, start=start), 500))
    for i, bar in enumerate(bars):
        assert bar.index == i and bar.ts_ns == (1_000 + i) * MINUTE and bar.interval == "1m"
        assert bar.low <= min(bar.open, bar.close) <= max(bar.open, bar.close) <= bar.high
        assert bar.low >= tick_size  # never at or below zero
        for price in (bar.open, bar.high, bar.low, bar.close):
            assert isinstance(price, Decimal) and price % tick_size == 0
    # opens stay near the previous close (small gaps) so fills at the open are meaningful
    assert any(b.open != a.close for a, b in zip(bars, bars[1:]))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bars.csv"
    path.write_text(text)
    return path


def test_csv_feed_reads_daily_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "Date,Open,High,Low,Close,Volume\n2025-01-02,100,101.5,99,100.25,1200\n2025-01-03,100.25,102,100,101,900\n")
    bars = list(CsvFeed(path, "ESH5", "1d"))
    assert [(b.index, b.open, b.high, b.low, b.close, b.volume) for b in bars] == [
        (0, Decimal("100"), Decimal("101.5"), Decimal("99"), Decimal("100.25"), Decimal("1200")),
        (1, Decimal("100.25"), Decimal("102"), Decimal("100"), Decimal("101"), Decimal("900")),
    ]
    assert bars[0].ts_ns == 1735776000 * 1_000_000_000  # 2025-01-02T00:00Z
    assert bars[0].symbol == "ESH5" and bars[0].interval == "1d"


def test_csv_feed_reads_intraday_timestamps_and_optional_volume(tmp_path: Path) -> None:
    path = write(tmp_path, "Timestamp,Open,High,Low,Close\n2025-01-02T14:30:00Z,1,2,1,2\n2025-01-02 14:31:00,2,2,1,1\n")
    bars = list(CsvFeed(path, "ESH5", "1m"))
    assert bars[1].ts_ns - bars[0].ts_ns == MINUTE
    assert bars[0].volume == Decimal(0)
    path = write(tmp_path, "Datetime,Open,High,Low,Close,Volume\n01/02/2025 14:30,1,2,1,2,5\n")
    assert list(CsvFeed(path, "ESH5", "1m"))[0].ts_ns == bars[0].ts_ns


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Open,High,Low,Close\n1,2,1,2\n", r"bars.csv:1: missing column\(s\) Date/Timestamp/Datetime"),
        ("Date,Open,High,Close\n2025-01-02,1,2,2\n", r"bars.csv:1: missing column\(s\) Low"),
        ("Date,Open,High,Low,Close\n2025-01-02,1,2,1,2\n2025-01-03,1,x,1,2\n", r"bars.csv:3: High is not a number"),
        ("Date,Open,High,Low,Close\nyesterday,1,2,1,2\n", r"bars.csv:2: bad date 'yesterday'"),
        ("Date,Open,High,Low,Close\n2025-01-02,1,2,1,2\n2025-01-03,3,2,1,2\n", r"bars.csv:3: inconsistent OHLC"),
        ("Date,Open,High,Low,Close\n2025-01-03,1,2,1,2\n2025-01-02,1,2,1,2\n", r"bars.csv:3: timestamp is not after"),
    ],
)
def test_csv_feed_errors_name_the_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CsvFeedError, match=message):
        list(CsvFeed(write(tmp_path, text), "ESH5", "1d"))
