"""A recorded live journal as a replay's input: the session's bars, and the orders it placed.

``tradebus replay --journal DIR`` runs the recorded bars through the real processes again and
checks that the strategy places the orders the live session placed. What the live strategy saw,
in the order ``services.replay`` explains:

* its first catch-up (``md.bars.reply`` from its market-data service): bars that moved its
  indicators but could never trade — the replay hands the simulator exactly these as *history*
  (``--history``), so they reach the strategy the same way, as catch-up;
* after them, the bars published on ``md.<contract>.bar.<interval>``: live bars, one at a time
  in the replay's lockstep.

The orders it placed are read from the journal too (``order.updated`` facts and the account's
``order.reply`` answers), first appearance of each client order id, in journal order.

Client order ids are ``<session>.<session id>.<signal>``. A replay writes its session into a fresh
database, where the id is whatever that database gives; so orders are compared on everything but
that id (session name, signal, symbol, side, type, quantity, prices — ``OrderRecord.key``), and
both ids are shown.
"""
from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from brokers.instruments import canonical_root
from bus import topics
from bus.journal import JournalReader
from bus.replay import envelopes, session_records
from schema import messages as m
from schema.store import CLIENT_ORDER_ID_SEPARATOR

BAR_COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")
"""The CSV the simulator is given: ``timestamp`` in integer UTC nanoseconds (``brokers.sim.feed``
reads a plain number as an epoch time), prices exactly as recorded."""


class JournalFeedError(ValueError):
    """The journal holds no usable recording of the asked session (the message says what is missing)."""


@dataclass(frozen=True)
class OrderRecord:
    """One order as placed: what a replay must reproduce."""

    client_order_id: str
    signal: int
    symbol: str
    side: str
    order_type: str
    quantity: Decimal
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None

    @property
    def session(self) -> str:
        return self.client_order_id.rsplit(CLIENT_ORDER_ID_SEPARATOR, 2)[0]

    def key(self) -> tuple[Any, ...]:
        """Everything but the database's session id (see the module docstring)."""
        return (self.session, self.signal, self.symbol, self.side, self.order_type, self.quantity,
                self.limit_price, self.stop_price)

    def describe(self) -> str:
        prices = "".join(f" {name} {value}" for name, value in (("limit", self.limit_price), ("stop", self.stop_price))
                         if value is not None)
        return f"{self.client_order_id} {self.side} {self.quantity} {self.symbol} {self.order_type}{prices}"


@dataclass(frozen=True)
class RecordedSession:
    session: str
    contract: str
    interval: str
    history: tuple[m.BarClosed, ...]
    """The bars of the strategy's first catch-up (indicators only)."""
    live: tuple[m.BarClosed, ...]
    """The bars published after them, which the strategy could trade on."""
    orders: tuple[OrderRecord, ...]

    @property
    def bars(self) -> tuple[m.BarClosed, ...]:
        return self.history + self.live


@dataclass(frozen=True)
class JournalCheck:
    """The orders a replay placed against the orders the live session placed."""

    session: str
    recorded: tuple[OrderRecord, ...]
    replayed: tuple[OrderRecord, ...]

    @property
    def matches(self) -> bool:
        return [o.key() for o in self.recorded] == [o.key() for o in self.replayed]

    def differences(self) -> list[str]:
        """One line per position where the two lists differ (empty when they match)."""
        lines = []
        for i in range(max(len(self.recorded), len(self.replayed))):
            recorded = self.recorded[i] if i < len(self.recorded) else None
            replayed = self.replayed[i] if i < len(self.replayed) else None
            if recorded is None or replayed is None or recorded.key() != replayed.key():
                lines.append(f"order {i + 1}: recorded {recorded.describe() if recorded else '(none)'}; "
                             f"replayed {replayed.describe() if replayed else '(none)'}")
        return lines


def order_record(order: Any) -> OrderRecord:
    """From an ``m.OrderUpdated`` or a ``schema.order_fsm.OrderState``."""
    def text(value: Any) -> str:
        return str(getattr(value, "value", value))

    return OrderRecord(client_order_id=order.client_order_id, signal=int(order.signal), symbol=order.symbol,
                       side=text(order.side), order_type=text(order.order_type), quantity=order.quantity,
                       limit_price=order.limit_price, stop_price=order.stop_price)


def recorded_sessions(journal_dir: Path) -> dict[str, str]:
    """Session name → contract, for every session whose account answered a snapshot request."""
    reader = JournalReader(journal_dir, save_index=False)  # a recording is read, never written to
    found: dict[str, str] = {}
    for item in envelopes(reader.records(kinds=("rep",)), skip_undecodable=True):
        body = item.envelope.body
        if isinstance(body, m.AccountSnapshot) and item.record.topic == topics.account_service(body.session):
            found.setdefault(body.session, body.symbol)
    return found


def pick_session(journal_dir: Path, symbol: str, session: str | None) -> str:
    """The recorded session to replay: ``session`` if given, else the one session trading ``symbol``'s root."""
    sessions = recorded_sessions(journal_dir)
    if not sessions:
        raise JournalFeedError(f"{journal_dir}: no session recorded (no account snapshot in the journal)")
    if session is not None:
        if session not in sessions:
            raise JournalFeedError(f"{journal_dir}: no session {session!r} recorded; recorded: {sorted(sessions)}")
        return session
    root = canonical_root(symbol)
    matching = sorted(name for name, contract in sessions.items() if canonical_root(contract) == root)
    if len(matching) != 1:
        listing = ", ".join(f"{name} ({contract})" for name, contract in sorted(sessions.items()))
        raise JournalFeedError(
            f"{journal_dir}: {'no' if not matching else len(matching)} recorded session(s) trade {root}; "
            f"name one with --session (recorded: {listing})")
    return matching[0]


def read_session(journal_dir: Path, session: str) -> RecordedSession:
    """The recorded bars and orders of ``session`` (see the module docstring)."""
    reader = JournalReader(journal_dir, save_index=False)
    catch_up: list[m.BarClosed] | None = None
    published: list[m.BarClosed] = []
    orders: dict[str, OrderRecord] = {}
    contract: str | None = None
    for item in session_records(journal_dir, session, reader=reader):
        body = item.envelope.body
        if isinstance(body, m.AccountSnapshot) and contract is None:
            contract = body.symbol
        elif isinstance(body, m.BarsReply) and catch_up is None:
            catch_up = list(body.bars)
        elif isinstance(body, m.BarClosed) and item.record.kind == "pub":
            published.append(body)
        elif isinstance(body, m.OrderUpdated) and body.session == session:
            orders.setdefault(body.client_order_id, order_record(body))
        elif isinstance(body, m.OrderReply) and body.order.session == session:
            orders.setdefault(body.order.client_order_id, order_record(body.order))
    if contract is None or catch_up is None:
        raise JournalFeedError(f"{journal_dir}: session {session} has no recorded start "
                               "(account snapshot and market-data catch-up)")
    interval = catch_up[0].interval if catch_up else next(
        (b.interval for b in published if b.symbol == contract), None)
    if interval is None:
        raise JournalFeedError(f"{journal_dir}: no bar of {contract} recorded for session {session}")
    history = sorted((b for b in catch_up if b.symbol == contract and b.interval == interval), key=lambda b: b.ts_ns)
    last_ns = history[-1].ts_ns if history else -1
    live: dict[int, m.BarClosed] = {}
    for bar in published:
        if bar.symbol == contract and bar.interval == interval and bar.ts_ns > last_ns:
            live.setdefault(bar.ts_ns, bar)
    return RecordedSession(session=session, contract=contract, interval=interval, history=tuple(history),
                           live=tuple(live[ts] for ts in sorted(live)), orders=tuple(orders.values()))


def write_bars_csv(path: Path, bars: Iterable[m.BarClosed]) -> Path:
    """The bars as the simulator's CSV feed reads them (exact: ns timestamps, decimal strings)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(BAR_COLUMNS)
        for bar in bars:
            writer.writerow((bar.ts_ns, *(format(v, "f") for v in (bar.open, bar.high, bar.low, bar.close, bar.volume))))
    return path


def compare(session: str, recorded: Sequence[OrderRecord], replayed: Sequence[OrderRecord]) -> JournalCheck:
    return JournalCheck(session=session, recorded=tuple(recorded), replayed=tuple(replayed))
