"""Replay a recorded journal into a fresh strategy core, the way the live strategy process saw it.

The live process (``services.strategy.main``) subscribes to bars and its order updates first, then
asks the account for its snapshot, then the market-data service for catch-up bars (history: no
trading), and only then reads what the subscription buffered meanwhile. So, in journal order:

* ``account.snapshot.reply`` → ``PositionSnapshot``;
* ``md.bars.reply`` → its bars as history (``live=False``);
* published ``md.bar`` of the session's contract/interval and ``order.updated`` of the session →
  live events, *held back* until the catch-up reply has been fed, as the subscription buffer did;
* ``order.reply`` (the account's answer to each submit) → an ``OrderEvent`` (the live process fed it
  too; repeats are harmless to the core).

Error replies (e.g. the account not up yet) are skipped, as the live process retried them.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from bus.replay import Replayed, session_records
from schema import messages as m
from services.convert import bar_event, order_event, snapshot_event
from services.strategy.core import Cancel, Event, Instruction, Log, Submit
from services.strategy.registry import get_strategy


@dataclass(frozen=True)
class ReplayedInstruction:
    seq: int  # journal sequence of the record whose event produced it
    recv_ns: int
    instruction: Instruction


def session_events(items: Iterator[Replayed], session: str, *, symbol: str | None = None,
                   interval: str | None = None) -> Iterator[tuple[Replayed, Event]]:
    """Strategy events in the order the live process decided on them. ``symbol``/``interval`` pick the
    session's bars; when None they are learnt from the session's ``md.bars.reply``."""
    caught_up = False
    held: list[Replayed] = []

    def live(item: Replayed) -> Iterator[tuple[Replayed, Event]]:
        body = item.envelope.body
        if isinstance(body, m.BarClosed):
            if body.symbol == symbol and (interval is None or body.interval == interval):
                yield item, bar_event(body, live=True)
        elif isinstance(body, m.OrderUpdated) and body.session == session:
            yield item, order_event(body)

    for item in items:
        body = item.envelope.body
        if item.record.kind == "rep":
            if isinstance(body, m.AccountSnapshot):
                yield item, snapshot_event(body)
                symbol = symbol or body.symbol
            elif isinstance(body, m.BarsReply):
                if body.bars and symbol is None:
                    symbol = body.bars[0].symbol
                if body.bars and interval is None:
                    interval = body.bars[0].interval
                for bar in body.bars:
                    yield item, bar_event(bar, live=False)
                if not caught_up:
                    caught_up = True
                    for h in held:
                        yield from live(h)
                    held.clear()
            elif isinstance(body, m.OrderReply) and body.order.session == session:
                yield item, order_event(body.order)
        elif not caught_up:
            held.append(item)
        else:
            yield from live(item)


def replay_session(journal_dir: Path | str, session: str, strategy_name: str, params: Mapping[str, Any], *,
                   symbol: str | None = None, interval: str | None = None) -> list[ReplayedInstruction]:
    """Feed the session's recorded events into a fresh core; the instructions it produced, in order."""
    strategy = get_strategy(strategy_name)
    state = strategy.initial_state(params)
    out: list[ReplayedInstruction] = []
    for item, event in session_events(session_records(journal_dir, session), session,
                                      symbol=symbol, interval=interval):
        state, instructions = strategy.decide(state, event)
        out.extend(ReplayedInstruction(item.record.seq, item.record.recv_ns, i) for i in instructions)
    return out


def instruction_json(instruction: Instruction, session: str | None = None,
                     session_id: int | None = None) -> dict[str, Any]:
    def s(v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, Decimal):
            return str(v)
        return str(getattr(v, "value", v))

    if isinstance(instruction, Submit):
        d: dict[str, Any] = {"kind": "submit", "signal": instruction.signal, "symbol": instruction.symbol,
                             "side": s(instruction.side), "order_type": s(instruction.order_type),
                             "quantity": s(instruction.quantity), "limit_price": s(instruction.limit_price),
                             "stop_price": s(instruction.stop_price), "reason": instruction.reason}
        if session is not None and session_id is not None:
            d["client_order_id"] = f"{session}.{session_id}.{instruction.signal}"
        return d
    if isinstance(instruction, Cancel):
        return {"kind": "cancel", "client_order_id": instruction.client_order_id}
    if isinstance(instruction, Log):
        return {"kind": "log", "text": instruction.text}
    raise TypeError(f"unknown instruction {instruction!r}")
