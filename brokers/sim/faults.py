"""Faults the venue simulator injects on demand: which rule fires for a request or a fill.

Pure state, no I/O and no clock: the server asks under its venue lock and carries the fault out
itself. One ``random.Random(seed)`` decides every probabilistic rule, so the same sequence of
requests and fills under the same rules gives the same faults.

A rule is ``{"call", "fault", "probability", "count", "delay_s"}``:

* ``call`` — which requests it applies to: ``submit`` (POST /orders), ``cancel``, ``modify``,
  ``lookup`` (GET /orders/by-client-id), ``orders`` (GET /orders), ``positions``, ``fills``,
  ``bars`` (GET /bars/{symbol}), ``stream`` (the bar stream), or ``*`` (any of those; never the
  admin endpoints, ``/health`` or ``/instruments``).
* ``fault`` — request faults (what the client sees):

  ======================  =========  ======================================================
  fault                   acts?      then
  ======================  =========  ======================================================
  ``error_500``           no         answers 500
  ``accept_then_500``     yes        answers 500
  ``ack_lost``            yes        holds the connection ``delay_s`` unanswered, closes it
  ``reset_before``        no         resets the connection (RST), no answer
  ``reset_after_accept``  yes        resets the connection (RST), no answer
  ======================  =========  ======================================================

  and fill faults, which apply to fills the venue makes while the rule is active (``call`` must be
  ``fills`` or ``*``): ``delay_fill`` (the fill reaches the fill feed ``delay_s`` after it
  happened; orders and positions show it at once) and ``duplicate_fill`` (the feed carries it
  twice, the repeat ``delay_s`` after the original).
* ``probability`` (0..1, default 1) — chance the rule fires when it matches.
* ``count`` (default null: unlimited) — the rule fires at most this many times.
* ``delay_s`` — seconds; default per fault (``DEFAULT_DELAY_S``). For ``error_500``,
  ``accept_then_500`` and the resets it is a wait before the fault is carried out.

Rules are tried in order; the first that matches and fires wins (one fault per request or fill).
A rule that does not fire does not count as hit; an exhausted rule (``count`` reached) is skipped
without consuming randomness, as is a rule of probability 0 or 1.
"""
from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any


class Fault(enum.StrEnum):
    ERROR_500 = "error_500"
    ACCEPT_THEN_500 = "accept_then_500"
    ACK_LOST = "ack_lost"
    RESET_BEFORE = "reset_before"
    RESET_AFTER_ACCEPT = "reset_after_accept"
    DELAY_FILL = "delay_fill"
    DUPLICATE_FILL = "duplicate_fill"

    @property
    def is_fill_fault(self) -> bool:
        return self in (Fault.DELAY_FILL, Fault.DUPLICATE_FILL)

    @property
    def acts(self) -> bool:
        """A request fault that lets the venue act on the request before it strikes."""
        return self in (Fault.ACCEPT_THEN_500, Fault.ACK_LOST, Fault.RESET_AFTER_ACCEPT)

    @property
    def resets(self) -> bool:
        return self in (Fault.RESET_BEFORE, Fault.RESET_AFTER_ACCEPT)


ANY_CALL = "*"
REQUEST_CALLS = ("submit", "cancel", "modify", "lookup", "orders", "positions", "fills", "bars", "stream", "auth")
"""``auth``: the token endpoints of the venue dialects (``brokers.sim.dialects``)."""
FILL_FAULT_CALLS = ("fills", ANY_CALL)

DEFAULT_DELAY_S: Mapping[Fault, float] = MappingProxyType({
    Fault.ERROR_500: 0.0,
    Fault.ACCEPT_THEN_500: 0.0,
    Fault.ACK_LOST: 30.0,  # longer than any client timeout: the client gives up first
    Fault.RESET_BEFORE: 0.0,
    Fault.RESET_AFTER_ACCEPT: 0.0,
    Fault.DELAY_FILL: 2.0,
    Fault.DUPLICATE_FILL: 0.0,
})
MAX_DELAY_S = 3600.0
"""A longer delay is a typo, not a test."""

_RULE_FIELDS = frozenset({"call", "fault", "probability", "count", "delay_s"})
_CONFIG_FIELDS = frozenset({"seed", "rules"})


class FaultConfigError(ValueError):
    """An invalid fault configuration; the message names the field (``rules[1].probability``)."""


@dataclass(frozen=True)
class FaultRule:
    call: str
    fault: Fault
    probability: float = 1.0
    count: int | None = None
    delay_s: float | None = None
    """None: ``DEFAULT_DELAY_S[fault]``."""

    @property
    def delay(self) -> float:
        return DEFAULT_DELAY_S[self.fault] if self.delay_s is None else self.delay_s

    def matches_request(self, call: str) -> bool:
        return not self.fault.is_fill_fault and self.call in (call, ANY_CALL)

    def to_json(self) -> dict[str, Any]:
        return {"call": self.call, "fault": self.fault.value, "probability": self.probability,
                "count": self.count, "delay_s": self.delay}


@dataclass(frozen=True)
class Fired:
    """A rule that fired: its index in the plan, and the rule."""

    index: int
    rule: FaultRule

    @property
    def fault(self) -> Fault:
        return self.rule.fault

    @property
    def delay_s(self) -> float:
        return self.rule.delay


class FaultPlan:
    """The active rules, how often each fired, and the seeded generator that decides."""

    def __init__(self, rules: Sequence[FaultRule] = (), seed: int = 0) -> None:
        self.rules: tuple[FaultRule, ...] = tuple(rules)
        self.seed = seed
        self.hits: list[int] = [0] * len(self.rules)
        self._random = random.Random(seed)

    def for_request(self, call: str) -> Fired | None:
        """The fault for one request of kind ``call`` (one of ``REQUEST_CALLS``), if any."""
        if call not in REQUEST_CALLS:
            raise ValueError(f"not a faultable call: {call!r}")
        return self._first_firing(lambda rule: rule.matches_request(call))

    def for_fill(self) -> Fired | None:
        """The fault for one fill the venue just made, if any."""
        return self._first_firing(lambda rule: rule.fault.is_fill_fault)

    @property
    def has_fill_rules(self) -> bool:
        return any(rule.fault.is_fill_fault for rule in self.rules)

    def _first_firing(self, applies: Any) -> Fired | None:
        for index, rule in enumerate(self.rules):
            if not applies(rule) or (rule.count is not None and self.hits[index] >= rule.count):
                continue
            if rule.probability >= 1.0 or (rule.probability > 0.0 and self._random.random() < rule.probability):
                self.hits[index] += 1
                return Fired(index, rule)
        return None

    def to_json(self) -> dict[str, Any]:
        return {"rules": [{**rule.to_json(), "hits": hits} for rule, hits in zip(self.rules, self.hits, strict=True)],
                "seed": self.seed}


# ---------------------------------------------------------------- parsing


def parse_fault_config(body: Any, *, default_seed: int) -> FaultPlan:
    """A fresh plan from ``{"seed", "rules"}`` (a POST body or a ``--faults`` file), or
    ``FaultConfigError`` naming the first bad field."""
    if not isinstance(body, Mapping):
        raise FaultConfigError("body must be a JSON object with 'rules' (and optionally 'seed')")
    unknown = sorted(set(body) - _CONFIG_FIELDS)
    if unknown:
        raise FaultConfigError(f"unknown field {unknown[0]!r}; expected seed, rules")
    seed = body.get("seed", default_seed)
    if seed is None:
        seed = default_seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise FaultConfigError("field 'seed' must be an integer")
    rules = body.get("rules")
    if not isinstance(rules, list):
        raise FaultConfigError("field 'rules' must be a list (empty to clear)")
    return FaultPlan([_parse_rule(raw, f"rules[{i}]") for i, raw in enumerate(rules)], seed)


def _parse_rule(raw: Any, where: str) -> FaultRule:
    if not isinstance(raw, Mapping):
        raise FaultConfigError(f"field {where!r} must be an object")
    unknown = sorted(set(raw) - _RULE_FIELDS)
    if unknown:
        raise FaultConfigError(f"unknown field '{where}.{unknown[0]}'; expected {', '.join(sorted(_RULE_FIELDS))}")
    fault_text = raw.get("fault")
    try:
        fault = Fault(fault_text)
    except ValueError:
        raise FaultConfigError(f"field '{where}.fault' must be one of {', '.join(Fault)}") from None
    call = raw.get("call")
    if call not in (*REQUEST_CALLS, ANY_CALL):
        raise FaultConfigError(f"field '{where}.call' must be one of {', '.join((*REQUEST_CALLS, ANY_CALL))}")
    if fault.is_fill_fault and call not in FILL_FAULT_CALLS:
        raise FaultConfigError(f"field '{where}.call': {fault} applies to fills the venue makes; use 'fills' or '*'")
    probability = _number(raw, "probability", where, default=1.0)
    if not 0.0 <= probability <= 1.0:
        raise FaultConfigError(f"field '{where}.probability' must be between 0 and 1")
    count = raw.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise FaultConfigError(f"field '{where}.count' must be null or a non-negative integer")
    delay_s = None if raw.get("delay_s") is None else _number(raw, "delay_s", where, default=0.0)
    if delay_s is not None and not 0.0 <= delay_s <= MAX_DELAY_S:
        raise FaultConfigError(f"field '{where}.delay_s' must be between 0 and {MAX_DELAY_S:g} seconds")
    return FaultRule(call=call, fault=fault, probability=probability, count=count, delay_s=delay_s)


def _number(raw: Mapping[str, Any], name: str, where: str, *, default: float) -> float:
    value = raw.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise FaultConfigError(f"field '{where}.{name}' must be a number")
    result = float(value)
    if not math.isfinite(result):
        raise FaultConfigError(f"field '{where}.{name}' must be finite")
    return result
