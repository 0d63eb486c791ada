"""Per-broker symbol adapters: canonical ↔ broker form, and nothing else.

Canonical symbols are roots (``ES``, meaning the continuous/front series where a broker has one)
and contract codes with a ONE-digit year (``ESZ6``); see ``brokers.instruments``. Each broker's
forms come from VENUES.md:

=============  ======================  =====================  ===========================
broker         root (continuous)        contract               notes
=============  ======================  =====================  ===========================
tradestation   ``@ES`` / ``@EC``        ``ESZ25`` / ``ECZ25``  2-digit year; 6E is ``EC``
tradovate      ``ES``                   ``ESZ5``               1-digit year
schwab         ``/ES`` / ``/6E``        ``/ESZ25``             2-digit year
deribit        ``BTC-PERPETUAL``        —                      perpetual only
sim            canonical                canonical              identity
=============  ======================  =====================  ===========================

Inputs are read tolerantly (both year widths everywhere); outputs are always the broker's
documented form. An unknown symbol raises ``UnknownSymbol`` (a ``ValueError``) naming the broker.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from brokers.errors import UnknownSymbol
from brokers.instruments import INSTRUMENTS, MONTH_CODES, Contract, instrument, parse_contract, resolve_year

_CONTRACT_SUFFIX = re.compile(rf"^([{MONTH_CODES}])(\d{{1,2}})$")


@dataclass(frozen=True)
class FuturesSymbolAdapter:
    """A table-driven adapter for brokers whose forms are ``prefix + root [+ month + year]``.

    ``roots`` maps canonical roots to the broker's roots (only the instruments the broker carries);
    ``continuous_prefix``/``contract_prefix`` are prepended to the broker root; ``year_digits`` is
    the width the broker expects. ``reference_year`` pins the decade used for one-digit years
    (None = the current UTC year), so tests are deterministic.
    """

    broker: str
    roots: Mapping[str, str]
    continuous_prefix: str = ""
    contract_prefix: str = ""
    year_digits: int = 1
    reference_year: int | None = None
    _canonical_roots: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_canonical_roots", MappingProxyType({b: c for c, b in self.roots.items()}))

    def to_broker(self, symbol: str) -> str:
        if symbol in self.roots:
            return self.continuous_prefix + self.roots[symbol]
        try:
            contract = parse_contract(symbol, reference_year=self.reference_year)
        except UnknownSymbol:
            raise UnknownSymbol(symbol, broker=self.broker, detail="not a canonical symbol") from None
        if contract.root not in self.roots:
            raise UnknownSymbol(symbol, broker=self.broker, detail=f"{self.broker} does not carry {contract.root}")
        year = contract.year % 100 if self.year_digits == 2 else contract.year % 10
        month = MONTH_CODES[contract.month - 1]
        return f"{self.contract_prefix}{self.roots[contract.root]}{month}{year:0{self.year_digits}d}"

    def to_canonical(self, broker_symbol: str) -> str:
        if self.continuous_prefix and broker_symbol.startswith(self.continuous_prefix):
            root = self._canonical_roots.get(broker_symbol[len(self.continuous_prefix):])
            if root is not None:
                return root
        if not self.continuous_prefix and broker_symbol in self._canonical_roots:
            return self._canonical_roots[broker_symbol]
        body = broker_symbol
        if self.contract_prefix:
            if not body.startswith(self.contract_prefix):
                raise UnknownSymbol(broker_symbol, broker=self.broker)
            body = body[len(self.contract_prefix):]
        # Longest broker root first, so a root that prefixes another cannot shadow it.
        for broker_root in sorted(self._canonical_roots, key=len, reverse=True):
            if not body.startswith(broker_root):
                continue
            match = _CONTRACT_SUFFIX.match(body[len(broker_root):])
            if match is None:
                continue
            root = self._canonical_roots[broker_root]
            month_code, digits = match.groups()
            if month_code not in instrument(root).months:
                break
            year = resolve_year(digits, self.reference_year)
            return Contract(root, MONTH_CODES.index(month_code) + 1, year).code
        raise UnknownSymbol(broker_symbol, broker=self.broker)


@dataclass(frozen=True)
class PerpetualSymbolAdapter:
    """Brokers that carry only perpetuals under their canonical names (Deribit). Deribit's dated
    futures (``BTC-27DEC25``) are not canonical instruments yet and are refused."""

    broker: str
    symbols: frozenset[str]

    def to_broker(self, symbol: str) -> str:
        if symbol not in self.symbols:
            raise UnknownSymbol(symbol, broker=self.broker, detail=f"carries only {', '.join(sorted(self.symbols))}")
        return symbol

    def to_canonical(self, broker_symbol: str) -> str:
        if broker_symbol not in self.symbols:
            raise UnknownSymbol(broker_symbol, broker=self.broker)
        return broker_symbol


@dataclass(frozen=True)
class CanonicalSymbolAdapter:
    """The venue simulator speaks canonical symbols: identity, but still validated both ways so a
    typo fails here rather than as an order for a symbol nobody trades."""

    broker: str = "sim"
    reference_year: int | None = None

    def _check(self, symbol: str) -> str:
        if symbol in INSTRUMENTS:
            return symbol
        try:
            return parse_contract(symbol, reference_year=self.reference_year).code
        except UnknownSymbol:
            raise UnknownSymbol(symbol, broker=self.broker) from None

    def to_broker(self, symbol: str) -> str:
        return self._check(symbol)

    def to_canonical(self, broker_symbol: str) -> str:
        return self._check(broker_symbol)


_FUTURES_ROOTS = ("ES", "NQ", "6E", "CL", "GC")


def tradestation(reference_year: int | None = None) -> FuturesSymbolAdapter:
    # TradeStation lists Euro FX under its own root EC (@EC continuous). Its contract form
    # ECZ25 is *unconfirmed* in the public material; it follows the pattern of ESZ25.
    roots = {r: r for r in _FUTURES_ROOTS} | {"6E": "EC"}
    return FuturesSymbolAdapter("tradestation", MappingProxyType(roots), continuous_prefix="@",
                                year_digits=2, reference_year=reference_year)


def tradovate(reference_year: int | None = None) -> FuturesSymbolAdapter:
    # Tradovate documents ESZ5 (one-digit year), but one public example shows ESM24: that form is
    # *unconfirmed*, so input accepts both widths; output is always the documented one-digit form.
    return FuturesSymbolAdapter("tradovate", MappingProxyType({r: r for r in _FUTURES_ROOTS}),
                                year_digits=1, reference_year=reference_year)


def schwab(reference_year: int | None = None) -> FuturesSymbolAdapter:
    return FuturesSymbolAdapter("schwab", MappingProxyType({r: r for r in _FUTURES_ROOTS}),
                                continuous_prefix="/", contract_prefix="/", year_digits=2,
                                reference_year=reference_year)


def deribit(reference_year: int | None = None) -> PerpetualSymbolAdapter:
    del reference_year  # perpetuals have no years
    return PerpetualSymbolAdapter("deribit", frozenset({"BTC-PERPETUAL"}))


def sim(reference_year: int | None = None) -> CanonicalSymbolAdapter:
    return CanonicalSymbolAdapter("sim", reference_year=reference_year)


SymbolAdapterFactory = Callable[[int | None], "FuturesSymbolAdapter | PerpetualSymbolAdapter | CanonicalSymbolAdapter"]

SYMBOL_ADAPTERS: Mapping[str, SymbolAdapterFactory] = MappingProxyType({
    "tradestation": tradestation,
    "tradovate": tradovate,
    "schwab": schwab,
    "deribit": deribit,
    "sim": sim,
})
"""Factories by broker name (constant table; each call builds a fresh adapter)."""


def symbol_adapter(broker: str, *, reference_year: int | None = None) -> FuturesSymbolAdapter | PerpetualSymbolAdapter | CanonicalSymbolAdapter:
    """The symbol adapter for ``broker``; ``ValueError`` lists the known brokers otherwise."""
    try:
        factory = SYMBOL_ADAPTERS[broker]
    except KeyError:
        raise ValueError(f"no symbol adapter for broker {broker!r}; known: {', '.join(SYMBOL_ADAPTERS)}") from None
    return factory(reference_year)
