from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from brokers.errors import UnknownSymbol
from brokers.instruments import (
    INSTRUMENTS,
    Contract,
    canonical_root,
    contract_code,
    expiry,
    front_contract,
    instrument,
    is_contract,
    next_contract,
    parse_contract,
    resolve_year,
    roll_date,
)


def test_instrument_table_has_the_canonical_roots_with_decimal_specs() -> None:
    assert set(INSTRUMENTS) == {"ES", "NQ", "6E", "CL", "GC", "BTC-PERPETUAL"}
    es = instrument("ES")
    assert (es.tick_size, es.point_value, es.currency, es.exchange) == (Decimal("0.25"), Decimal("50"), "USD", "CME")
    assert instrument("6E").tick_size == Decimal("0.00005")
    assert instrument("CL").months == "FGHJKMNQUVXZ"
    assert instrument("GC").months == "GJMQVZ"
    assert instrument("NQ").months == "HMUZ"
    assert [instrument(r).roll_days_before_expiry for r in ("ES", "NQ", "6E", "CL", "GC")] == [8, 8, 8, 3, 3]
    assert all(isinstance(i.tick_size, Decimal) and isinstance(i.point_value, Decimal) for i in INSTRUMENTS.values())


def test_unknown_root_names_the_known_ones() -> None:
    with pytest.raises(UnknownSymbol, match="known roots: ES"):
        instrument("ZZ")


@pytest.mark.parametrize(
    ("code", "reference_year", "expected"),
    [
        ("ESZ6", 2026, Contract("ES", 12, 2026)),
        ("ESZ26", None, Contract("ES", 12, 2026)),
        ("ESM24", None, Contract("ES", 6, 2024)),
        ("6EH7", 2026, Contract("6E", 3, 2027)),
        ("CLF0", 2026, Contract("CL", 1, 2030)),
        ("ESZ5", 2026, Contract("ES", 12, 2025)),
        ("GCZ9", 2021, Contract("GC", 12, 2019)),
    ],
)
def test_parse_contract(code: str, reference_year: int | None, expected: Contract) -> None:
    assert parse_contract(code, reference_year=reference_year) == expected


@pytest.mark.parametrize("code", ["ES", "ESZ", "ESZ123", "ESF6", "GCH6", "XXZ6", "BTC-PERPETUAL", "esz6", ""])
def test_parse_contract_refuses_what_is_not_a_listed_contract(code: str) -> None:
    with pytest.raises(ValueError):
        parse_contract(code, reference_year=2026)
    assert not is_contract(code)


def test_one_digit_years_resolve_near_the_reference_year() -> None:
    assert [resolve_year(str(d), 2026) for d in range(10)] == [2030, 2031, 2032, 2033, 2024, 2025, 2026, 2027, 2028, 2029]
    assert resolve_year("26", 1999) == 2026


def test_codes_are_one_digit_canonical() -> None:
    assert contract_code("ES", 2026, 12) == "ESZ6"
    assert contract_code("6E", 2030, 3) == "6EH0"
    assert Contract("ES", 12, 2026).code2 == "ESZ26"
    with pytest.raises(ValueError, match="does not list month 1"):
        contract_code("ES", 2026, 1)
    with pytest.raises(ValueError, match="perpetual"):
        contract_code("BTC-PERPETUAL", 2026, 1)


def test_canonical_root_of_roots_and_contracts() -> None:
    assert canonical_root("ES") == "ES"
    assert canonical_root("ESZ6") == "ES"
    assert canonical_root("6EZ25") == "6E"
    assert canonical_root("BTC-PERPETUAL") == "BTC-PERPETUAL"
    with pytest.raises(UnknownSymbol):
        canonical_root("@ES")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("ESZ5", date(2025, 12, 19)),   # third Friday
        ("ESH6", date(2026, 3, 20)),
        ("NQM6", date(2026, 6, 19)),
        ("ESZ6", date(2026, 12, 18)),
        ("6EZ5", date(2025, 12, 15)),   # 3rd Wednesday Dec 17 − 2 business days
        ("6EH6", date(2026, 3, 16)),    # 3rd Wednesday Mar 18 − 2 business days
        ("CLZ5", date(2025, 11, 20)),   # Nov 25 2025 (Tue) − 3 business days
        ("CLX5", date(2025, 10, 21)),   # Oct 25 2025 is a Saturday: from Fri Oct 24, − 3 business days
        ("CLF7", date(2026, 12, 22)),   # Dec 25 2026 is a Friday: holidays are ignored by design
        ("GCZ5", date(2025, 12, 29)),   # third-last business day of December
        ("GCG6", date(2026, 2, 25)),    # Feb 2026 ends on a Saturday: 27, 26, 25
    ],
)
def test_expiry_rules_with_real_dates(code: str, expected: date) -> None:
    assert expiry(code, reference_year=2026) == expected
    assert expiry(parse_contract(code, reference_year=2026)) == expected


def test_roll_date_is_expiry_minus_calendar_roll_days() -> None:
    assert roll_date("ESZ6", reference_year=2026) == date(2026, 12, 10)
    assert roll_date("CLZ5", reference_year=2026) == date(2025, 11, 17)


@pytest.mark.parametrize(
    ("root", "at", "expected"),
    [
        ("ES", date(2026, 11, 22), "ESZ6"),  # roll date 2026-12-10 is after the 22nd
        ("ES", date(2026, 12, 9), "ESZ6"),
        ("ES", date(2026, 12, 10), "ESH7"),  # on the roll date itself we already trade the next
        ("ES", date(2026, 12, 11), "ESH7"),
        ("ES", date(2026, 12, 31), "ESH7"),
        ("6E", date(2025, 12, 6), "6EZ5"),   # roll date 2025-12-07
        ("6E", date(2025, 12, 7), "6EH6"),
        ("CL", date(2026, 11, 22), "CLF7"),  # CLZ6 stopped trading on 2026-11-20
        ("CL", date(2025, 11, 16), "CLZ5"),
        ("CL", date(2025, 11, 17), "CLF6"),
        ("GC", date(2026, 11, 22), "GCZ6"),
        ("GC", date(2026, 12, 27), "GCG7"),
        ("BTC-PERPETUAL", date(2026, 11, 22), "BTC-PERPETUAL"),
    ],
)
def test_front_contract(root: str, at: date, expected: str) -> None:
    assert front_contract(root, at) == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [("ESZ6", "ESH7"), ("ESH7", "ESM7"), ("ESZ9", "ESH0"), ("CLF7", "CLG7"), ("GCZ6", "GCG7"), ("GCG7", "GCJ7")],
)
def test_next_contract(code: str, expected: str) -> None:
    assert next_contract(code, reference_year=2026) == expected


def test_perpetuals_never_expire() -> None:
    with pytest.raises(ValueError, match="never expires"):
        expiry(Contract("BTC-PERPETUAL", 1, 2026))
    with pytest.raises(ValueError):
        expiry("BTC-PERPETUAL")
    assert instrument("BTC-PERPETUAL").is_perpetual and not is_contract("BTC-PERPETUAL")
