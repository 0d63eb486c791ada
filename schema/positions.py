"""Position arithmetic: a signed quantity and its average entry price, moved by fills. Pure.

Rules (the usual ones for futures books):
* opening from flat, or adding in the same direction: the average is volume-weighted;
* reducing: the average entry price of what is left does not change;
* closing exactly: flat, and a flat position has no average price (``None``);
* crossing through zero: what remains was opened by this fill, so the average is its price.
"""
from __future__ import annotations

from decimal import Decimal

from schema.decimals import ZERO, canonical, quantize_money, to_money
from schema.enums import Side


def apply_fill(
    quantity: Decimal, average_price: Decimal | None, side: Side | str, fill_quantity: Decimal, price: Decimal
) -> tuple[Decimal, Decimal | None]:
    """(new signed quantity, new average price) after one fill."""
    fill_quantity = to_money(fill_quantity)
    price = to_money(price)
    if fill_quantity <= ZERO:
        raise ValueError(f"fill quantity must be positive, got {fill_quantity}")
    delta = Side(side).sign * fill_quantity
    new_quantity = canonical(quantity + delta)
    if new_quantity == ZERO:
        return ZERO, None
    if quantity == ZERO:
        return new_quantity, price
    same_direction = (quantity > ZERO) == (delta > ZERO)
    if same_direction:
        held = abs(quantity)
        cost = (average_price if average_price is not None else price) * held + price * fill_quantity
        return new_quantity, quantize_money(cost / (held + fill_quantity))
    if (quantity > ZERO) == (new_quantity > ZERO):
        return new_quantity, average_price  # reduced, not crossed
    return new_quantity, price  # crossed zero
