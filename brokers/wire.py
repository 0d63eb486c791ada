"""Strict readers for numbers in broker answers, shared by every adapter.

Money, prices and quantities arrive as JSON numbers (decoded with ``parse_float=Decimal``) or as
decimal strings, depending on the venue; either is accepted. A boolean, a float, garbage or a
non-finite value raises ``TypeError``/``ValueError`` — the adapters turn those into
``UnexpectedResponse`` — never ``decimal.InvalidOperation`` leaking out as something else.
``name`` (optional) prefixes the message with the field it came from.
"""
from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any


def _where(name: str | None) -> str:
    return f"{name}: " if name else ""


def decimal_of(value: Any, name: str | None = None) -> Decimal:
    """A JSON number (int or Decimal) or a decimal string as a finite ``Decimal``."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
        raise TypeError(f"{_where(name)}expected a number, got {type(value).__name__}")
    try:
        result = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise ValueError(f"{_where(name)}not a number: {str(value)[:30]!r}") from None
    if not result.is_finite():
        raise ValueError(f"{_where(name)}not finite")
    return result


def optional_decimal(value: Any, name: str | None = None) -> Decimal | None:
    return None if value is None else decimal_of(value, name)


def int_of(value: Any, name: str | None = None) -> int:
    """A JSON integer (never a bool)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{_where(name)}expected an integer, got {type(value).__name__}")
    return value
