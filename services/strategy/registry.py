"""The strategies a session can run, by name."""
from __future__ import annotations

from services.strategy.core import ParamError, Strategy
from services.strategy.every_bar import EveryBar
from services.strategy.sma_cross import SmaCross

STRATEGIES: dict[str, Strategy] = {s.name: s for s in (SmaCross(), EveryBar())}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ParamError(f"unknown strategy {name!r}; known: {sorted(STRATEGIES)}") from None
