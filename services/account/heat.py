"""Portfolio heat: how much of the account's equity a session has at risk, and the ladder it drives.

Pure: no I/O, no clock. The account process (``services.account.main``) fetches equity and the
session's positions and open orders, and asks these functions what they mean.

**Open risk** (currency) is counted per symbol, worst case, like ``core.adds_risk``: the position
plus every open order filled in full, ``unknown`` ones included.

* A *protective stop* is a stop or stop-limit order on the side opposite the exposure. It prices
  the contracts it covers at ``distance × quantity × point value``, where the distance runs from the
  reference price (the position's average price, or the price of a resting entry order, whichever
  is worse) to the stop price, and is never negative (a stop beyond the entry locks in a gain: no
  risk). With several stops the farthest cover first (worst case).
* Every contract no stop covers, and every contract when there is no reference price at all (a
  market entry from flat), costs the configured risk per contract of its root.
* Which stops will trigger is not known in advance, so both directions are priced: in the *up*
  scenario buy stops fill (they are entries) and sell stops protect; in the *down* scenario the
  reverse. A symbol's open risk is the larger of the two.

**Heat** is open risk divided by equity, a fraction (``Decimal("0.02")`` is 2 %). ``next_heat``
turns it into a rung of the ladder ``ok → warned → blocked``; see its docstring for the
hysteresis.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType

from brokers.instruments import canonical_root, instrument
from schema.enums import HeatState, OrderType, Side
from schema.order_fsm import OrderState
from services.account.core import signed_remaining

ZERO = Decimal(0)
DEFAULT_WARN_PCT = Decimal("0.05")
DEFAULT_BLOCK_PCT = Decimal("0.10")
DEFAULT_RISK_PER_CONTRACT = Decimal("2500")
"""Currency at risk per contract without a protective stop, for a root with no entry of its own."""
DEFAULT_RISK_PER_CONTRACT_BY_ROOT: Mapping[str, Decimal] = MappingProxyType({
    "ES": Decimal("2000"),     # 40 points × 50
    "NQ": Decimal("2000"),     # 100 points × 20
    "6E": Decimal("2500"),     # 0.02 × 125 000
    "CL": Decimal("3000"),     # 3.00 × 1 000
    "GC": Decimal("3000"),     # 30.0 × 100
    "BTC-PERPETUAL": Decimal("5"),  # half of a 10 USD contract
})
"""With the demo's 1- and 2-contract sessions on 1 000 000 of equity, heat stays well under 1 %."""

_STOPS = frozenset({OrderType.STOP, OrderType.STOP_LIMIT})


class HeatConfigError(ValueError):
    """Thresholds that cannot make a ladder (the message names the field)."""


@dataclass(frozen=True)
class HeatThresholds:
    """When a session is warned and when it is blocked, as fractions of account equity."""

    warn_pct: Decimal = DEFAULT_WARN_PCT
    block_pct: Decimal = DEFAULT_BLOCK_PCT
    risk_per_contract: Mapping[str, Decimal] = field(default_factory=lambda: DEFAULT_RISK_PER_CONTRACT_BY_ROOT)
    """Currency at risk per contract without a stop, by canonical root (``ES``)."""
    default_risk_per_contract: Decimal = DEFAULT_RISK_PER_CONTRACT
    """For a root missing from ``risk_per_contract``."""

    def __post_init__(self) -> None:
        for name in ("warn_pct", "block_pct", "default_risk_per_contract"):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or not value.is_finite():
                raise HeatConfigError(f"{name} must be a finite Decimal, got {value!r}")
        if not ZERO < self.warn_pct < self.block_pct:
            raise HeatConfigError(f"need 0 < warn_pct < block_pct, got warn_pct={self.warn_pct} "
                                  f"block_pct={self.block_pct}")
        if self.default_risk_per_contract < 0:
            raise HeatConfigError(f"default_risk_per_contract must be >= 0, got {self.default_risk_per_contract}")
        for root, value in self.risk_per_contract.items():
            if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
                raise HeatConfigError(f"risk_per_contract.{root} must be a Decimal >= 0, got {value!r}")

    def per_contract(self, symbol: str) -> Decimal:
        root = canonical_root(symbol)
        return self.risk_per_contract.get(root, self.default_risk_per_contract)


@dataclass(frozen=True)
class Holding:
    """A signed position and its average price (``None`` when flat) — what the store's
    ``PositionInfo`` carries."""

    quantity: Decimal
    average_price: Decimal | None = None


# ---------------------------------------------------------------- open risk


def open_risk(positions: Mapping[str, Holding], open_orders: Iterable[OrderState],
              thresholds: HeatThresholds) -> Decimal:
    """Worst-case currency at risk over every symbol held or with an open order (see module doc)."""
    by_symbol: dict[str, list[OrderState]] = {}
    for order in open_orders:
        by_symbol.setdefault(order.symbol, []).append(order)
    symbols = {s for s, h in positions.items() if h.quantity != 0} | set(by_symbol)
    return sum((symbol_risk(positions.get(s, Holding(ZERO)), by_symbol.get(s, []), s, thresholds)
                for s in sorted(symbols)), ZERO)


def symbol_risk(holding: Holding, orders: list[OrderState], symbol: str, thresholds: HeatThresholds) -> Decimal:
    """Open risk of one symbol: the worse of the up and down scenarios."""
    point_value = instrument(canonical_root(symbol)).point_value
    per_contract = thresholds.per_contract(symbol)
    plain = [o for o in orders if OrderType(o.order_type) not in _STOPS]
    stops = [o for o in orders if OrderType(o.order_type) in _STOPS]
    base = holding.quantity + sum((signed_remaining(o) for o in plain), ZERO)
    worst = ZERO
    for triggered in (Side.BUY, Side.SELL):
        entries = [o for o in stops if Side(o.side) is triggered]
        protective = [o for o in stops if Side(o.side) is not triggered]
        exposure = base + sum((signed_remaining(o) for o in entries), ZERO)
        if exposure == 0:
            continue
        direction = Side.BUY if exposure > 0 else Side.SELL
        if direction is triggered:
            reference = _reference_price(holding, [*plain, *entries], direction)
        else:
            protective, reference = [], None  # the stops that would protect this side are counted as filled
        worst = max(worst, _priced(abs(exposure), direction, protective, reference, point_value, per_contract))
    return worst


def _reference_price(holding: Holding, orders: list[OrderState], direction: Side) -> Decimal | None:
    """The worst known entry of ``direction`` (highest for a long, lowest for a short), or None."""
    candidates: list[Decimal] = []
    if holding.average_price is not None and (holding.quantity > 0) == (direction is Side.BUY) and holding.quantity:
        candidates.append(holding.average_price)
    for order in orders:
        if Side(order.side) is not direction:
            continue
        price = order.limit_price if order.limit_price is not None else order.stop_price
        if price is not None:
            candidates.append(price)
    if not candidates:
        return None
    return max(candidates) if direction is Side.BUY else min(candidates)


def _priced(contracts: Decimal, direction: Side, protective: list[OrderState], reference: Decimal | None,
            point_value: Decimal, per_contract: Decimal) -> Decimal:
    """Currency at risk of ``contracts`` held in ``direction``: stops first (farthest first), the
    rest at the per-contract risk."""
    risk = ZERO
    uncovered = contracts
    if reference is not None:
        distances = []
        for stop in protective:
            assert stop.stop_price is not None
            adverse = reference - stop.stop_price if direction is Side.BUY else stop.stop_price - reference
            distances.append((max(adverse, ZERO), abs(signed_remaining(stop))))
        for distance, quantity in sorted(distances, key=lambda d: d[0], reverse=True):
            covered = min(quantity, uncovered)
            risk += covered * distance * point_value
            uncovered -= covered
            if uncovered == 0:
                break
    return risk + uncovered * per_contract


def heat_fraction(risk: Decimal, equity: Decimal) -> Decimal:
    """``risk / equity``; an account with no equity left (zero or negative) is infinitely hot."""
    if equity <= 0:
        return Decimal("Infinity")
    return risk / equity


# ---------------------------------------------------------------- the ladder


def next_heat(current: HeatState, heat: Decimal, thresholds: HeatThresholds) -> HeatState:
    """The rung after measuring ``heat`` (a fraction of equity) while at ``current``.

    Going up is immediate: ``heat >= block_pct`` → ``blocked`` from any rung; ``heat >= warn_pct``
    → ``warned`` from ``ok``.

    Coming down has hysteresis: a rung is left only when heat falls below the *warn* level, and
    then straight to ``ok``. So ``warned`` holds for ``warn_pct <= heat``, and ``blocked`` holds for
    ``warn_pct <= heat`` too — a session pushed to the block level must cut its risk below the warn
    level before it may add risk again; dipping just under ``block_pct`` does not re-open it (that
    would let it flap at the limit). ``blocked → warned`` therefore never happens. In full:

    =========  =====================  =====================  ==================
    current    heat < warn            warn <= heat < block   block <= heat
    =========  =====================  =====================  ==================
    ok         ok                     warned                 blocked
    warned     ok                     warned                 blocked
    blocked    ok                     blocked                blocked
    =========  =====================  =====================  ==================
    """
    current = HeatState(current)
    if heat >= thresholds.block_pct:
        return HeatState.BLOCKED
    if heat < thresholds.warn_pct:
        return HeatState.OK
    return HeatState.BLOCKED if current is HeatState.BLOCKED else HeatState.WARNED


def describe(heat: Decimal, risk: Decimal, equity: Decimal) -> str:
    """``"heat 12.50% (125000 at risk of 1000000 equity)"`` — for refusals, logs and alerts."""
    percent = "inf" if not heat.is_finite() else f"{(heat * 100).quantize(Decimal('0.01'))}%"
    return f"heat {percent} ({risk} at risk of {equity} equity)"


def pct(fraction: Decimal) -> str:
    return f"{(fraction * 100).normalize():f}%"
