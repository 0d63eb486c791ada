"""The strict number readers every adapter parses broker answers with."""
from __future__ import annotations

from decimal import Decimal

import pytest

from brokers.wire import decimal_of, int_of, optional_decimal


def test_numbers_and_decimal_strings_are_read_exactly() -> None:
    assert decimal_of(Decimal("5001.25")) == Decimal("5001.25")
    assert decimal_of(" 1.08255 ") == Decimal("1.08255")
    assert decimal_of(7) == Decimal(7)
    assert optional_decimal(None) is None and optional_decimal("2") == Decimal(2)
    assert int_of(3) == 3


@pytest.mark.parametrize(("value", "error", "words"), [
    (True, TypeError, "expected a number, got bool"),
    (1.5, TypeError, "expected a number, got float"),
    ("12abc", ValueError, "not a number: '12abc'"),   # never decimal.InvalidOperation
    ("NaN", ValueError, "not finite"),
    (Decimal("Infinity"), ValueError, "not finite"),
    (None, TypeError, "got NoneType"),
])
def test_anything_else_is_refused_with_a_clear_error(value: object, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words.replace("(", r"\(")):
        decimal_of(value)
    with pytest.raises(error, match="^price: "):
        decimal_of(value, "price")


def test_integers_refuse_bools_and_numbers_of_other_kinds() -> None:
    for bad in (True, 1.0, "1", Decimal(1)):
        with pytest.raises(TypeError, match="^orderId: expected an integer"):
            int_of(bad, "orderId")
