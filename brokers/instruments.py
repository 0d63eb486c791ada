"""Canonical instruments and contracts: the only symbols the engine ever speaks.

A canonical *root* is the exchange code (``ES``, ``6E``, ``BTC-PERPETUAL``); a canonical *contract*
is root + month code + ONE-digit year (``ESZ6``), as on CME Globex. Two-digit years (``ESZ26``) are
accepted on input. A one-digit year is resolved to a full year relative to a reference year (by
default the current UTC year): see ``resolve_year``.

Expiry rules follow the exchanges' published last-trade rules, with one simplification stated
here once: **business days are Monday–Friday; exchange holidays are ignored.** Around holidays the
computed date can therefore be a day late; roll dates sit days before expiry, so that slack is
harmless for rolling, but do not use ``expiry`` as a settlement calendar.

Perpetuals (``BTC-PERPETUAL``) have no months and never expire: they are not "contracts" here
(``is_contract`` is False), and ``front_contract`` returns the perpetual's own symbol.
"""
from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType

from brokers.errors import UnknownSymbol

MONTH_CODES = "FGHJKMNQUVXZ"
"""Futures month codes, January … December."""

QUARTERLY = "HMUZ"
ALL_MONTHS = MONTH_CODES

DEFAULT_ROLL_DAYS_INDEX = 8
"""Calendar days before expiry to roll equity-index and currency futures (volume moves ~a week
before the quarterly expiry)."""
DEFAULT_ROLL_DAYS_COMMODITY = 3
"""Calendar days before expiry to roll CL/GC, whose last trade day already sits before delivery."""

ONE_DIGIT_YEAR_PAST = 2
ONE_DIGIT_YEAR_FUTURE = 7
"""A one-digit year resolves into [reference − PAST, reference + FUTURE]: contracts are listed
at most a few years out for these products, and expired ones are only looked at shortly after."""

FRONT_SEARCH_MONTHS = 36
"""How far ahead ``front_contract`` looks for a listed month (far more than any listing gap)."""


class ExpiryRule(StrEnum):
    """How a contract's last trading day follows from its month (see the module docstring)."""

    THIRD_FRIDAY = "third_friday"
    """ES, NQ: the third Friday of the contract month."""
    TWO_BUSINESS_DAYS_BEFORE_THIRD_WEDNESDAY = "two_business_days_before_third_wednesday"
    """6E (CME FX): two business days before the third Wednesday of the contract month."""
    CL_CRUDE = "cl_crude"
    """CL: three business days before the 25th of the month BEFORE the contract month; if the 25th
    is not a business day, three business days before the last business day preceding the 25th."""
    THIRD_LAST_BUSINESS_DAY = "third_last_business_day"
    """GC: the third-last business day of the contract month."""
    NEVER = "never"
    """Perpetual swaps."""


@dataclass(frozen=True)
class Instrument:
    root: str
    description: str
    exchange: str
    tick_size: Decimal
    point_value: Decimal
    """Currency value of a one-point move for one contract (ES: 50 USD)."""
    currency: str
    months: str
    """Listed month codes, e.g. ``"HMUZ"``; empty for a perpetual."""
    expiry_rule: ExpiryRule
    roll_days_before_expiry: int

    @property
    def is_perpetual(self) -> bool:
        return self.expiry_rule is ExpiryRule.NEVER

    @property
    def listed_months(self) -> tuple[int, ...]:
        return tuple(MONTH_CODES.index(code) + 1 for code in self.months)


@dataclass(frozen=True)
class Contract:
    """One dated futures contract. ``year`` is the full year (2026), ``month`` 1–12."""

    root: str
    month: int
    year: int

    @property
    def code(self) -> str:
        """The canonical code, one-digit year: ``ESZ6``."""
        return f"{self.root}{MONTH_CODES[self.month - 1]}{self.year % 10}"

    @property
    def code2(self) -> str:
        """The code with a two-digit year: ``ESZ26`` (what several brokers use)."""
        return f"{self.root}{MONTH_CODES[self.month - 1]}{self.year % 100:02d}"

    def __str__(self) -> str:
        return self.code


def _instruments() -> Mapping[str, Instrument]:
    table = [
        Instrument("ES", "E-mini S&P 500", "CME", Decimal("0.25"), Decimal("50"), "USD", QUARTERLY,
                   ExpiryRule.THIRD_FRIDAY, DEFAULT_ROLL_DAYS_INDEX),
        Instrument("NQ", "E-mini Nasdaq-100", "CME", Decimal("0.25"), Decimal("20"), "USD", QUARTERLY,
                   ExpiryRule.THIRD_FRIDAY, DEFAULT_ROLL_DAYS_INDEX),
        Instrument("6E", "Euro FX", "CME", Decimal("0.00005"), Decimal("125000"), "USD", QUARTERLY,
                   ExpiryRule.TWO_BUSINESS_DAYS_BEFORE_THIRD_WEDNESDAY, DEFAULT_ROLL_DAYS_INDEX),
        Instrument("CL", "Crude Oil (WTI)", "NYMEX", Decimal("0.01"), Decimal("1000"), "USD", ALL_MONTHS,
                   ExpiryRule.CL_CRUDE, DEFAULT_ROLL_DAYS_COMMODITY),
        Instrument("GC", "Gold", "COMEX", Decimal("0.10"), Decimal("100"), "USD", "GJMQVZ",
                   ExpiryRule.THIRD_LAST_BUSINESS_DAY, DEFAULT_ROLL_DAYS_COMMODITY),
        # An inverse contract: the amount is in USD (10 USD per contract) and P&L is paid in BTC,
        # so "point value" is not linear; 1 is a placeholder meaning "one USD of notional".
        Instrument("BTC-PERPETUAL", "Bitcoin perpetual (inverse)", "DERIBIT", Decimal("0.5"), Decimal("1"),
                   "USD", "", ExpiryRule.NEVER, 0),
    ]
    return MappingProxyType({i.root: i for i in table})


INSTRUMENTS: Mapping[str, Instrument] = _instruments()
"""Read-only table of canonical instruments by root (constant data, not mutable state)."""

# Longest roots first so a root that is a prefix of another can never shadow it.
_ROOTS_LONGEST_FIRST = tuple(sorted(INSTRUMENTS, key=len, reverse=True))
_SUFFIX = re.compile(rf"^([{MONTH_CODES}])(\d{{1,2}})$")


def instrument(root: str) -> Instrument:
    """The canonical instrument for ``root``; ``UnknownSymbol`` names the known ones otherwise."""
    try:
        return INSTRUMENTS[root]
    except KeyError:
        raise UnknownSymbol(root, detail=f"known roots: {', '.join(INSTRUMENTS)}") from None


def current_utc_year() -> int:
    """The default reference year for one-digit contract years (the one place that reads a clock)."""
    return datetime.now(UTC).year


def resolve_year(digits: str, reference_year: int | None = None) -> int:
    """The full year of a contract-code year: two digits are 20xx; one digit is the year ending in
    that digit within [reference − ONE_DIGIT_YEAR_PAST, reference + ONE_DIGIT_YEAR_FUTURE]."""
    if len(digits) == 2:
        return 2000 + int(digits)
    if len(digits) != 1 or not digits.isdigit():
        raise ValueError(f"contract year must be 1 or 2 digits, got {digits!r}")
    ref = current_utc_year() if reference_year is None else reference_year
    for year in range(ref - ONE_DIGIT_YEAR_PAST, ref + ONE_DIGIT_YEAR_FUTURE + 1):
        if year % 10 == int(digits):
            return year
    raise AssertionError("unreachable: the window spans ten years")  # pragma: no cover


def parse_contract(code: str, *, reference_year: int | None = None) -> Contract:
    """``"ESZ6"`` / ``"ESZ26"`` → ``Contract("ES", 12, 2026)``. Rejects unknown roots, unlisted
    months and perpetuals with ``UnknownSymbol`` (a ``ValueError``)."""
    for root in _ROOTS_LONGEST_FIRST:
        if not code.startswith(root):
            continue
        match = _SUFFIX.match(code[len(root):])
        if match is None:
            continue
        inst = INSTRUMENTS[root]
        if inst.is_perpetual:
            break
        month_code, digits = match.groups()
        if month_code not in inst.months:
            raise UnknownSymbol(code, detail=f"{root} lists months {inst.months} only")
        return Contract(root, MONTH_CODES.index(month_code) + 1, resolve_year(digits, reference_year))
    raise UnknownSymbol(code, detail="not a canonical contract code like ESZ6")


def is_contract(code: str) -> bool:
    """True for a dated canonical contract code (``ESZ6``, also ``ESZ26``); False otherwise."""
    try:
        parse_contract(code, reference_year=2000)  # the year does not matter for the shape
    except ValueError:
        return False
    return True


def canonical_root(symbol: str) -> str:
    """The root of a canonical root or contract code (``ESZ6`` → ``ES``, ``ES`` → ``ES``)."""
    if symbol in INSTRUMENTS:
        return symbol
    return parse_contract(symbol, reference_year=2000).root


def contract_code(root: str, year: int, month: int) -> str:
    """The canonical code for ``root``, full ``year`` and ``month`` (1–12): ``ESZ6``."""
    inst = instrument(root)
    if inst.is_perpetual:
        raise ValueError(f"{root} is a perpetual and has no contract months")
    if not 1 <= month <= 12 or MONTH_CODES[month - 1] not in inst.months:
        raise ValueError(f"{root} does not list month {month} (listed: {inst.months})")
    return Contract(root, month, year).code


def _as_contract(contract: Contract | str, reference_year: int | None) -> Contract:
    return contract if isinstance(contract, Contract) else parse_contract(contract, reference_year=reference_year)


# ---------------------------------------------------------------- calendar helpers (Mon–Fri)


def _is_business_day(day: date) -> bool:
    return day.weekday() < 5  # holidays ignored, see the module docstring


def _business_days_before(day: date, count: int) -> date:
    while count:
        day -= timedelta(days=1)
        if _is_business_day(day):
            count -= 1
    return day


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> date:
    first = date(year, month, 1)
    return first + timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))


def _third_friday(year: int, month: int) -> date:
    return _nth_weekday(year, month, calendar.FRIDAY, 3)


def _two_business_days_before_third_wednesday(year: int, month: int) -> date:
    return _business_days_before(_nth_weekday(year, month, calendar.WEDNESDAY, 3), 2)


def _cl_crude(year: int, month: int) -> date:
    prior_year, prior_month = (year - 1, 12) if month == 1 else (year, month - 1)
    anchor = date(prior_year, prior_month, 25)
    while not _is_business_day(anchor):
        anchor -= timedelta(days=1)
    return _business_days_before(anchor, 3)


def _third_last_business_day(year: int, month: int) -> date:
    day = date(year, month, calendar.monthrange(year, month)[1])
    seen = 0
    while True:
        if _is_business_day(day):
            seen += 1
            if seen == 3:
                return day
        day -= timedelta(days=1)


_EXPIRY_RULES: Mapping[ExpiryRule, Callable[[int, int], date]] = MappingProxyType({
    ExpiryRule.THIRD_FRIDAY: _third_friday,
    ExpiryRule.TWO_BUSINESS_DAYS_BEFORE_THIRD_WEDNESDAY: _two_business_days_before_third_wednesday,
    ExpiryRule.CL_CRUDE: _cl_crude,
    ExpiryRule.THIRD_LAST_BUSINESS_DAY: _third_last_business_day,
})


# ---------------------------------------------------------------- expiry, roll, front


def expiry(contract: Contract | str, *, reference_year: int | None = None) -> date:
    """The last trading day of a dated contract (Mon–Fri calendar, holidays ignored)."""
    c = _as_contract(contract, reference_year)
    inst = instrument(c.root)
    if inst.is_perpetual:
        raise ValueError(f"{c.root} is a perpetual and never expires")
    return _EXPIRY_RULES[inst.expiry_rule](c.year, c.month)


def roll_date(contract: Contract | str, *, reference_year: int | None = None) -> date:
    """``expiry − roll_days_before_expiry`` calendar days: from this day on, trade the next one."""
    c = _as_contract(contract, reference_year)
    return expiry(c) - timedelta(days=instrument(c.root).roll_days_before_expiry)


def front_contract(root: str, at: date) -> str:
    """The contract to trade on day ``at``: the nearest listed contract whose roll date is after
    ``at``. For a perpetual, the perpetual itself."""
    inst = instrument(root)
    if inst.is_perpetual:
        return inst.root
    year, month = at.year, at.month
    for _ in range(FRONT_SEARCH_MONTHS):
        if MONTH_CODES[month - 1] in inst.months:
            candidate = Contract(root, month, year)
            if roll_date(candidate) > at:
                return candidate.code
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    raise AssertionError(f"no listed {root} month within {FRONT_SEARCH_MONTHS} months")  # pragma: no cover


def next_contract(code: str, *, reference_year: int | None = None) -> str:
    """The next listed contract after ``code`` (``ESZ6`` → ``ESH7``), in canonical form."""
    return next_contract_of(parse_contract(code, reference_year=reference_year)).code


def next_contract_of(contract: Contract) -> Contract:
    """Like ``next_contract`` but keeps the full year (no one-digit ambiguity)."""
    months = instrument(contract.root).listed_months
    later = [m for m in months if m > contract.month]
    if later:
        return Contract(contract.root, later[0], contract.year)
    return Contract(contract.root, months[0], contract.year + 1)
