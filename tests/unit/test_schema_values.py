"""Exact money, position arithmetic and the JSON document encoding: pure, no database."""
from __future__ import annotations

from decimal import Decimal as D

import pytest

from schema.columns import decode_json, encode_json
from schema.decimals import canonical, money_str, quantize_money, to_money
from schema.enums import Side
from schema.positions import apply_fill


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(D("1.1000000000"), "1.1"), (D("100.0"), "100"), (D("1E+2"), "100"), (D("-0.000"), "0"), (D("1E-7"), "0.0000001")],
)
def test_canonical_form_prints_plainly(raw: D, expected: str) -> None:
    assert canonical(raw) == D(expected)
    assert money_str(raw) == expected  # plain notation, never an exponent
    if "E" not in str(D(expected)):
        assert str(canonical(raw)) == expected


def test_money_refuses_floats_and_what_does_not_fit_numeric_28_10() -> None:
    assert to_money("0.1") + to_money(D("0.2")) == D("0.3")
    assert to_money(3) == D(3)
    for bad in (0.1, True, None, [1]):
        with pytest.raises(TypeError):
            to_money(bad)
    for bad in ("abc", "NaN", "Infinity", "0.00000000001", "1" * 19):
        with pytest.raises(ValueError):
            to_money(bad)
    assert to_money("1" * 18 + ".0123456789") == D("1" * 18 + ".0123456789")


def test_quantize_money_rounds_half_to_even_at_ten_places() -> None:
    assert quantize_money(D(1) / D(3)) == D("0.3333333333")
    assert quantize_money(D("0.00000000005")) == D("0")
    assert quantize_money(D("0.00000000015")) == D("0.0000000002")


@pytest.mark.parametrize(
    ("start", "side", "qty", "price", "expected"),
    [
        ((D(0), None), Side.BUY, D(2), D(100), (D(2), D(100))),  # open long
        ((D(0), None), Side.SELL, D(3), D(50), (D(-3), D(50))),  # open short
        ((D(2), D(100)), Side.BUY, D(2), D(102), (D(4), D(101))),  # add: VWAP
        ((D(-2), D(100)), Side.SELL, D(1), D(103), (D(-3), D(101))),  # add to a short: VWAP
        ((D(4), D(101)), Side.SELL, D(1), D(200), (D(3), D(101))),  # reduce: average kept
        ((D(3), D(101)), Side.SELL, D(3), D(90), (D(0), None)),  # close: flat has no average
        ((D(3), D(101)), Side.SELL, D(5), D(90), (D(-2), D(90))),  # flip: the fill's price
        ((D(-1), D(90)), Side.BUY, D("1.5"), D(95), (D("0.5"), D(95))),  # flip back, fractional
    ],
)
def test_position_arithmetic(start, side, qty, price, expected) -> None:
    assert apply_fill(start[0], start[1], side, qty, price) == expected


def test_position_fill_must_be_positive() -> None:
    with pytest.raises(ValueError):
        apply_fill(D(0), None, Side.BUY, D(0), D(1))


def test_json_documents_round_trip_decimals_exactly() -> None:
    doc = {"a": D("0.1"), "b": [D("1E+2"), {"c": D("-3.50")}], "f": 1.5, "n": None, "t": (1, 2)}
    encoded = encode_json(doc)
    assert encoded["a"] == {"$decimal": "0.1"}
    assert decode_json(encoded) == {"a": D("0.1"), "b": [D(100), {"c": D("-3.5")}], "f": 1.5, "n": None, "t": [1, 2]}
