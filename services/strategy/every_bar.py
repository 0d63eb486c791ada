"""``every_bar``: one market order on every closed live bar — a load generator, not a trading idea.

It exists for ``tradebus bench tick-to-trade``: every live bar becomes exactly one order of ``qty``,
so each bar can be followed through the whole tree. Orders alternate between buying and selling:
a flat (or short) target is moved up by ``qty``, a long one down by ``qty``, so from a flat start
the target goes ``qty, 0, qty, 0, …`` and the position never grows. A target inherited from a
snapshot walks back into that band ``qty`` at a time, still one order of ``qty`` per bar.

Pure like every strategy: the decision depends only on the state and the event.
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
)

PARAMS = {"qty"}


@dataclass(frozen=True)
class EveryBarState:
    qty: Decimal
    last_bar_ts: int = 0
    book: TargetPosition = TargetPosition()


class EveryBar:
    name = "every_bar"

    def initial_state(self, params: Mapping[str, Any]) -> EveryBarState:
        check_known(params, PARAMS, self.name)
        return EveryBarState(qty=decimal_param(params, "qty"))

    def decide(self, state: EveryBarState, event: Event) -> tuple[EveryBarState, tuple[Instruction, ...]]:
        if isinstance(event, PositionSnapshot):
            return replace(state, book=state.book.on_snapshot(event)), ()
        if isinstance(event, OrderEvent):
            return replace(state, book=state.book.on_order(event)), ()
        if isinstance(event, ContractRolled):
            return replace(state, last_bar_ts=0), ()
        if isinstance(event, Flatten):
            book, instructions = state.book.move_to(Decimal(0), event.symbol, event.reason)
            return replace(state, book=book), instructions
        if not isinstance(event, BarEvent) or event.ts_ns <= state.last_bar_ts:
            return state, ()  # a bar seen before (catch-up overlap, resend): already decided on
        state = replace(state, last_bar_ts=event.ts_ns)
        if not event.live:
            return state, ()
        if state.book.target > 0:
            desired, why = state.book.target - state.qty, f"every bar: sell {state.qty}"
        else:
            desired, why = state.book.target + state.qty, f"every bar: buy {state.qty}"
        book, instructions = state.book.move_to(desired, event.symbol, why)
        return replace(state, book=book), instructions

    def to_json(self, state: EveryBarState) -> dict[str, Any]:
        return {"qty": str(state.qty), "last_bar_ts": state.last_bar_ts, "book": state.book.to_json()}

    def from_json(self, data: Mapping[str, Any]) -> EveryBarState:
        return EveryBarState(qty=Decimal(data["qty"]), last_bar_ts=int(data["last_bar_ts"]),
                             book=TargetPosition.from_json(data["book"]))
