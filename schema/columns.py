"""Column types that behave identically on SQLite and PostgreSQL.

* ``Money``: exact decimals. PostgreSQL stores ``NUMERIC(28, 10)``; SQLite has no exact decimal
  type (its NUMERIC affinity turns values into floats), so there the value is stored as text.
  Either way the value is validated on the way in (``to_money``: no floats, fits 28/10) and comes
  back in one canonical form, so ``Decimal("0.3")`` reads back as ``Decimal("0.3")`` on both.
  Never compare ``Money`` columns in SQL (text ordering on SQLite is not numeric); filter in Python.
* ``JsonDocument``: JSON that round-trips ``Decimal`` exactly, as ``{"$decimal": "1.25"}``.
* ``Id``: an auto-incrementing primary key: BIGINT on PostgreSQL, INTEGER (the rowid) on SQLite.
"""
from __future__ import annotations

from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from schema.decimals import MONEY_PRECISION, MONEY_SCALE, canonical, money_str, to_money

SQLITE = "sqlite"
DECIMAL_TAG = "$decimal"

Id = sa.BigInteger().with_variant(sa.Integer(), SQLITE)


class Money(TypeDecorator[Decimal]):
    impl = sa.Numeric(MONEY_PRECISION, MONEY_SCALE, asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == SQLITE:
            return dialect.type_descriptor(sa.Text())
        return dialect.type_descriptor(sa.Numeric(MONEY_PRECISION, MONEY_SCALE, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        amount = to_money(value)
        return money_str(amount) if dialect.name == SQLITE else amount

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return canonical(Decimal(value) if isinstance(value, str) else to_money(value))

    @property
    def python_type(self) -> type[Decimal]:
        return Decimal


def encode_json(value: Any) -> Any:
    """A JSON-safe copy of ``value`` with every ``Decimal`` tagged so it decodes exactly."""
    if isinstance(value, Decimal):
        return {DECIMAL_TAG: money_str(value) if value.is_finite() else str(value)}
    if isinstance(value, dict):
        return {str(key): encode_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_json(item) for item in value]
    return value


def decode_json(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and DECIMAL_TAG in value:
            return Decimal(value[DECIMAL_TAG])
        return {key: decode_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode_json(item) for item in value]
    return value


class JsonDocument(TypeDecorator[Any]):
    impl = sa.JSON(none_as_null=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else encode_json(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else decode_json(value)
