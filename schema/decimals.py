"""Exact money: parsing, validation and one canonical form for ``Decimal`` values.

Every price, quantity and amount in tradebus is a ``Decimal`` that fits ``NUMERIC(28, 10)`` (the
PostgreSQL column type), so it reads back identically from SQLite (stored as text) and PostgreSQL.
A value that would not fit is refused here, loudly, rather than rounded silently by one database
and not the other. Floats are refused outright: ``0.1`` as a float is not one tenth.
"""
from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

MONEY_PRECISION = 28
"""Total significant digits of a stored amount (PostgreSQL ``NUMERIC(28, 10)``)."""
MONEY_SCALE = 10
"""Digits after the decimal point of a stored amount."""
MONEY_QUANTUM = Decimal(1).scaleb(-MONEY_SCALE)
MAX_INTEGER_DIGITS = MONEY_PRECISION - MONEY_SCALE
ZERO = Decimal(0)


def to_decimal(value: object) -> Decimal:
    """Parse ``value`` (``Decimal``, ``int`` or numeric ``str``) into a finite ``Decimal``.

    Floats and bools are refused: a float has already lost the exact value, and a bool is almost
    certainly a bug upstream.
    """
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError(f"money must be Decimal, int or str, not {type(value).__name__} ({value!r})")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, (int, str)):
        try:
            result = Decimal(value)
        except InvalidOperation as exc:
            raise ValueError(f"not a number: {value!r}") from exc
    else:
        raise TypeError(f"money must be Decimal, int or str, not {type(value).__name__} ({value!r})")
    if not result.is_finite():
        raise ValueError(f"money must be finite, got {value!r}")
    return result


def canonical(value: Decimal) -> Decimal:
    """The one representation of a value: no trailing zeros, never an exponent above zero.

    ``1.1000000000`` (as PostgreSQL returns ``NUMERIC(28, 10)``) and ``1.10`` both become ``1.1``;
    ``100.0`` becomes ``100``, not ``1E+2``. Equal values then also print identically.
    """
    if value.is_zero():
        return ZERO
    normal = value.normalize()
    if normal.as_tuple().exponent > 0:  # type: ignore[operator]
        return normal.quantize(Decimal(1))
    return normal


def to_money(value: object) -> Decimal:
    """Parse and validate an amount that will be stored: exact, and fits ``NUMERIC(28, 10)``."""
    result = canonical(to_decimal(value))
    exponent = result.as_tuple().exponent
    assert isinstance(exponent, int)
    if -exponent > MONEY_SCALE:
        raise ValueError(f"{value!r} has more than {MONEY_SCALE} digits after the point")
    if result.adjusted() >= MAX_INTEGER_DIGITS:
        raise ValueError(f"{value!r} has more than {MAX_INTEGER_DIGITS} digits before the point")
    return result


def optional_money(value: object) -> Decimal | None:
    return None if value is None else to_money(value)


def quantize_money(value: Decimal) -> Decimal:
    """Round a computed amount (an average price) to the stored scale, half to even.

    Averages are the only computed amounts; rounding them in one place, before anything is stored
    or compared, keeps a row and the fold of its events identical on every database.
    """
    return canonical(value.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN))


def money_str(value: Decimal | None) -> str | None:
    """A JSON-safe string for an amount (plain notation, never an exponent)."""
    return None if value is None else format(canonical(value), "f")
