"""Translations between the engine's domain objects and bus message bodies, in one place."""
from __future__ import annotations

from decimal import Decimal
from typing import Any

from schema import messages as m
from services.strategy.core import BarEvent, OrderEvent, PositionSnapshot


def _str(value: Any) -> str:
    return str(getattr(value, "value", value))


def order_message(order: Any) -> m.OrderUpdated:
    """``order`` is a ``schema.order_fsm.OrderState``."""
    return m.OrderUpdated(
        session=order.session,
        client_order_id=order.client_order_id,
        broker_order_id=order.broker_order_id,
        symbol=order.symbol,
        side=_str(order.side),
        order_type=_str(order.order_type),
        quantity=order.quantity,
        limit_price=order.limit_price,
        stop_price=order.stop_price,
        status=_str(order.status),
        filled_quantity=order.filled_quantity,
        average_price=order.average_price,
        reason=order.reason,
        signal=order.signal,
        version=order.version,
    )


def bar_message(bar: Any) -> m.BarClosed:
    """``bar`` is a ``brokers.base.Bar``."""
    return m.BarClosed(
        symbol=bar.symbol,
        interval=bar.interval,
        ts_ns=bar.ts_ns,
        open=bar.open,
        high=bar.high,
        low=bar.low,
        close=bar.close,
        volume=bar.volume,
        index=bar.index,
    )


def bar_event(bar: m.BarClosed, *, live: bool) -> BarEvent:
    return BarEvent(
        symbol=bar.symbol,
        interval=bar.interval,
        ts_ns=bar.ts_ns,
        open=bar.open,
        high=bar.high,
        low=bar.low,
        close=bar.close,
        volume=bar.volume,
        live=live,
    )


def order_event(update: m.OrderUpdated) -> OrderEvent:
    return OrderEvent(
        client_order_id=update.client_order_id,
        signal=update.signal,
        side=update.side,
        quantity=update.quantity,
        filled_quantity=update.filled_quantity,
        status=update.status,
    )


def snapshot_event(snapshot: m.AccountSnapshot) -> PositionSnapshot:
    working = Decimal(0)
    for order in snapshot.open_orders:
        sign = 1 if order.side == "buy" else -1
        working += sign * (order.quantity - order.filled_quantity)
    return PositionSnapshot(position=snapshot.position, working=working)
