"""Topic and service names, built in one place so publishers and subscribers cannot drift apart.

Topics are dot-separated and subscribed by prefix. ZeroMQ matches raw byte prefixes, so a
subscription to ``order.s1`` would also deliver ``order.s10``; ``matches`` is the segment-aware
test the bus client applies on top (``order.s1`` matches ``order.s1`` and ``order.s1.x`` only).
That is also why a name segment may not contain a dot, whitespace or be empty.
"""
from __future__ import annotations

ALERT = "alert"
SEPARATOR = "."


def _seg(kind: str, value: str) -> str:
    if not value or SEPARATOR in value or any(ch.isspace() for ch in value):
        raise ValueError(f"invalid {kind} for a topic segment: {value!r} (non-empty, no dots, no spaces)")
    return value


def bar(symbol: str, interval: str) -> str:
    """Closed bars: ``md.<SYMBOL>.bar.<interval>`` (symbol as the canonical instrument spells it)."""
    return f"md.{_seg('symbol', symbol)}.bar.{_seg('interval', interval)}"


def quote(symbol: str) -> str:
    return f"md.{_seg('symbol', symbol)}.quote"


def order(session: str) -> str:
    return f"order.{_seg('session', session)}"


def fill(session: str) -> str:
    return f"fill.{_seg('session', session)}"


def position(session: str) -> str:
    return f"position.{_seg('session', session)}"


def session(session: str) -> str:
    """Session state changes."""
    return f"session.{_seg('session', session)}"


def bar_processed(session: str) -> str:
    """The session's strategy has finished with a bar (``BarProcessed``): what lockstep replay waits for."""
    return f"strategy.processed.{_seg('session', session)}"


def reconcile(session: str) -> str:
    return f"reconcile.{_seg('session', session)}"


def auth(account: str) -> str:
    return f"auth.{_seg('account', account)}"


def heartbeat(process: str) -> str:
    return f"heartbeat.{_seg('process', process)}"


# ------------------------------------------------------------------ request/reply service names


def account_service(session: str) -> str:
    """The account process of a session answers ``SubmitOrder``, ``CancelOrder``, snapshots."""
    return f"account.{_seg('session', session)}"


def marketdata_service(session: str) -> str:
    """The market-data process of a session answers ``BarsRequest``."""
    return f"marketdata.{_seg('session', session)}"


def strategy_service(session: str) -> str:
    """The strategy process of a session answers ``RollRequest`` and ``FlattenRequest``."""
    return f"strategy.{_seg('session', session)}"


TOKENS_SERVICE = "tokens"
"""Broker tokens (``TokenRequest``, ``TokenRejected``): the one tokens process of the installation."""

CONTROL_SERVICE = "control"
"""Operator commands (``OperatorCommand``), answered by any reconciler worker."""


# ------------------------------------------------------------------ matching


def matches(prefix: str, topic: str) -> bool:
    """True if a subscription to ``prefix`` should deliver ``topic``, at segment boundaries.

    ``""`` matches everything; a prefix ending in ``.`` matches any topic it prefixes.
    """
    if not prefix or topic == prefix:
        return True
    if prefix[-1] == SEPARATOR:
        return topic.startswith(prefix)
    return topic.startswith(prefix) and topic[len(prefix)] == SEPARATOR
