"""``sma_cross``: trade the crossing of a fast and a slow simple moving average of closes.

At each closed live bar: when the fast average crosses above the slow one (previous bar fast <
slow, this bar fast > slow) the strategy closes any short and goes long ``qty``; when it crosses
below, it closes any long and goes short ``qty``. Market orders. Closing and reversing is one order
for the difference, so there is never a moment with two orders racing each other.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from services.strategy.core import (
    BarEvent,
    ContractRolled,
    Event,
    Flatten,
    Instruction,
    OrderEvent,
    PositionSnapshot,
    TargetPosition,
    check_known,
    decimal_param,
    int_param,
)
from services.strategy.core import ParamError

PARAMS = {"fast", "slow", "qty"}


@dataclass(frozen=True)
class SmaState:
    fast: int
    slow: int
    qty: Decimal
    closes: tuple[Decimal, ...] = ()
    last_bar_ts: int = 0
    book: TargetPosition = TargetPosition()


def _mean(values: tuple[Decimal, ...]) -> Decimal:
    return sum(values, Decimal(0)) / len(values)


class SmaCross:
    name = "sma_cross"

    def initial_state(self, params: Mapping[str, Any]) -> SmaState:
        check_known(params, PARAMS, self.name)
        fast = int_param(params, "fast")
        slow = int_param(params, "slow", minimum=2)
        if fast >= slow:
            raise ParamError(f"fast ({fast}) must be smaller than slow ({slow})")
        return SmaState(fast=fast, slow=slow, qty=decimal_param(params, "qty"))

    def decide(self, state: SmaState, event: Event) -> tuple[SmaState, tuple[Instruction, ...]]:
        if isinstance(event, PositionSnapshot):
            return replace(state, book=state.book.on_snapshot(event)), ()
        if isinstance(event, OrderEvent):
            return replace(state, book=state.book.on_order(event)), ()
        if isinstance(event, ContractRolled):
            return replace(state, closes=(), last_bar_ts=0), ()
        if isinstance(event, Flatten):
            book, instructions = state.book.move_to(Decimal(0), event.symbol, event.reason)
            return replace(state, book=book), instructions
        if not isinstance(event, BarEvent) or event.ts_ns <= state.last_bar_ts:
            return state, ()  # a bar seen before (catch-up overlap, resend): already decided on
        closes = (state.closes + (event.close,))[-(state.slow + 1):]
        state = replace(state, closes=closes, last_bar_ts=event.ts_ns)
        if len(closes) <= state.slow or not event.live:
            return state, ()
        fast_now, slow_now = _mean(closes[-state.fast:]), _mean(closes[-state.slow:])
        prev = closes[:-1]
        fast_prev, slow_prev = _mean(prev[-state.fast:]), _mean(prev[-state.slow:])
        if fast_prev < slow_prev and fast_now > slow_now:
            desired, why = state.qty, "fast crossed above slow"
        elif fast_prev > slow_prev and fast_now < slow_now:
            desired, why = -state.qty, "fast crossed below slow"
        else:
            return state, ()
        book, instructions = state.book.move_to(desired, event.symbol, why)
        return replace(state, book=book), instructions

    def to_json(self, state: SmaState) -> dict[str, Any]:
        return {
            "fast": state.fast,
            "slow": state.slow,
            "qty": str(state.qty),
            "closes": [str(c) for c in state.closes],
            "last_bar_ts": state.last_bar_ts,
            "book": state.book.to_json(),
        }

    def from_json(self, data: Mapping[str, Any]) -> SmaState:
        return SmaState(
            fast=int(data["fast"]),
            slow=int(data["slow"]),
            qty=Decimal(data["qty"]),
            closes=tuple(Decimal(c) for c in data["closes"]),
            last_bar_ts=int(data["last_bar_ts"]),
            book=TargetPosition.from_json(data["book"]),
        )
