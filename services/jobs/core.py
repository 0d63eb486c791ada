"""Pure job handlers and the jobs' retry policy. No I/O: handlers get data, return results.

A job is (kind, payload). ``HANDLERS`` names what each kind needs from the database and computes
its result; the worker loop does the reading, writing and retrying. A handler that finds its
payload unusable raises ``PermanentJobError`` (retrying cannot help); anything else is retried
with capped, jittered backoff until the job's attempts are used up.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from services.retry import Backoff

RETRY = Backoff(base_s=1.0, cap_s=60.0)
EOD_REPORT = "eod_report"
BACKTEST = "backtest"
"""One in-process backtest of a CSV (``services.backtest.core_run``): one job per combination of a
parameter sweep (``services.backtest.sweep``)."""


class PermanentJobError(Exception):
    """The job can never succeed as given (bad payload, unknown session)."""


@dataclass(frozen=True)
class FillRow:
    ts_ns: int
    side: str
    quantity: Decimal
    price: Decimal


def day_bounds_ns(day: date) -> tuple[int, int]:
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    return int(start.timestamp()) * 10**9, int((start + timedelta(days=1)).timestamp()) * 10**9


def parse_day(payload: Mapping[str, Any]) -> date:
    try:
        return date.fromisoformat(str(payload["day"]))
    except (KeyError, ValueError) as exc:
        raise PermanentJobError(f"payload needs day=YYYY-MM-DD, got {payload.get('day')!r}") from exc


def eod_report(*, session: str, symbol: str, day: date, point_value: Decimal, fee_per_contract: Decimal,
               opening_position: Decimal, opening_average: Decimal | None, fills: Iterable[FillRow]) -> dict[str, Any]:
    """Trades, realised PnL and fees of one session for one UTC day (average-cost accounting).

    Realised PnL books the price difference against the running average cost whenever a fill
    reduces the position; money is in the instrument's currency (price points × point value).
    """
    position, average = opening_position, opening_average
    realised = Decimal(0)
    trades = 0
    contracts = Decimal(0)
    for fill in sorted(fills, key=lambda f: f.ts_ns):
        trades += 1
        contracts += fill.quantity
        signed = fill.quantity if fill.side == "buy" else -fill.quantity
        if position == 0 or (position > 0) == (signed > 0):
            cost = (average or Decimal(0)) * abs(position) + fill.price * abs(signed)
            position += signed
            average = cost / abs(position)
            continue
        closing = min(abs(signed), abs(position))
        direction = 1 if position > 0 else -1
        realised += (fill.price - (average or fill.price)) * closing * direction * point_value
        position += signed
        if position == 0:
            average = None
        elif (position > 0) != (direction > 0):
            average = fill.price  # crossed through flat: the rest opened at this price
    fees = contracts * fee_per_contract
    return {
        "session": session,
        "symbol": symbol,
        "day": day.isoformat(),
        "trades": trades,
        "contracts": str(contracts),
        "realised_pnl": str(realised),
        "fees": str(fees),
        "net_pnl": str(realised - fees),
        "closing_position": str(position),
        "closing_average": None if average is None else str(average),
    }


@dataclass(frozen=True)
class BacktestRequest:
    """The payload of a ``backtest`` job: what to run, and where to write its report (optional)."""

    csv: str
    symbol: str
    strategy: str
    params: dict[str, Any]
    interval: str = "1d"
    slippage_ticks: int = 0
    commission_per_contract: Decimal = Decimal(0)
    out_dir: str | None = None

    def to_payload(self) -> dict[str, Any]:
        return {"csv": self.csv, "symbol": self.symbol, "strategy": self.strategy, "params": dict(self.params),
                "interval": self.interval, "slippage_ticks": self.slippage_ticks,
                "commission_per_contract": str(self.commission_per_contract), "out_dir": self.out_dir}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> "BacktestRequest":
        try:
            params = payload["params"]
            if not isinstance(params, Mapping):
                raise TypeError(f"params must be an object, got {type(params).__name__}")
            out_dir = payload.get("out_dir")
            return cls(csv=str(payload["csv"]), symbol=str(payload["symbol"]), strategy=str(payload["strategy"]),
                       params=dict(params), interval=str(payload.get("interval", "1d")),
                       slippage_ticks=int(payload.get("slippage_ticks", 0)),
                       commission_per_contract=Decimal(str(payload.get("commission_per_contract", "0"))),
                       out_dir=None if out_dir is None else str(out_dir))
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise PermanentJobError(f"bad backtest payload: {type(exc).__name__}: {exc}") from exc
