from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from services.jobs.core import FillRow, PermanentJobError, eod_report, parse_day


def fill(t: int, side: str, qty: str, price: str) -> FillRow:
    return FillRow(t, side, Decimal(qty), Decimal(price))


def test_eod_report_books_realised_pnl_at_average_cost_through_a_reversal() -> None:
    # buy 1 @100, buy 1 @102 (avg 101), sell 3 @105: closes 2 (+4 pts each... 2 × 4 = 8 points),
    # opens short 1 @105; buy 1 @103 closes it (+2 points). ES-like point value 50.
    report = eod_report(session="s", symbol="ESZ6", day=date(2026, 11, 22), point_value=Decimal(50),
                        fee_per_contract=Decimal("2.5"), opening_position=Decimal(0), opening_average=None,
                        fills=[fill(1, "buy", "1", "100"), fill(2, "buy", "1", "102"),
                               fill(3, "sell", "3", "105"), fill(4, "buy", "1", "103")])
    assert report["trades"] == 4
    assert Decimal(report["realised_pnl"]) == Decimal(50) * (8 + 2)
    assert Decimal(report["fees"]) == Decimal("2.5") * 6
    assert Decimal(report["net_pnl"]) == Decimal(500) - Decimal(15)
    assert Decimal(report["closing_position"]) == 0 and report["closing_average"] is None


def test_bad_day_is_a_permanent_error() -> None:
    with pytest.raises(PermanentJobError, match="day=YYYY-MM-DD"):
        parse_day({"day": "yesterday"})
