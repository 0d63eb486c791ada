"""``tradebus bench replay`` (also ``bench/replay.py``): backtest speed against established tools.

In one run, on one deterministic random-walk CSV (``--bars``, default 100,000 one-minute ES bars)
and the same ``sma_cross`` rules (fast/slow simple moving averages of closes; on a cross, a market
order to +qty or −qty, filled at the next bar's open; no commission or slippage), it measures bars
per second of:

* ``core``: the strategy core alone — ``decide`` over precomputed bar events, no venue, no fills
  (``services.backtest.core_run.time_core``);
* ``core_with_fills``: the in-process backtest — the core plus the simulator's matching engine and
  order updates (``run_core``), which is what sweeps run;
* ``backtesting_py``: backtesting.py's ``Backtest.run`` with an equivalent ``Strategy``;
* ``backtrader``: backtrader's ``Cerebro.run`` with an equivalent strategy (``order_target_size``);
* ``pipeline``: the full process tree in lockstep (``services.backtest.pipeline.run_replay``) on the
  first ``--pipeline-bars`` bars (default 5,000; the count is in the output, never extrapolated).
  Its ``bars_per_s`` is the replay's own: first bar released to last bar processed, process start-up
  excluded (``wall_s`` includes it). backtrader is also measured on those same bars for reference.

Reading the CSV is never timed (bars for the core; a DataFrame for the others). Each in-process
engine runs ``--repeats`` times; the best run counts and every run is listed. Every engine reports
its trade count and net P&L in points, as a check that they all traded the same crossings (the
moving averages of the other two are computed exactly — multiples of a tick summed in binary
floating point — so ties between the averages are ties everywhere). The pipeline's trade list is
compared with the in-process backtest's on the same bars.

Targets (the issue's): core >= 2 × backtesting.py and >= 200,000 bars/s; pipeline >= 1 × backtrader.
backtrader and backtesting.py come with the ``bench`` extra (``pip install -e '.[bench]'``); without
them the bench says so and exits non-zero.
"""
from __future__ import annotations

import gc
import importlib.metadata
import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from brokers.instruments import canonical_root, instrument
from brokers.intervals import interval_ns
from brokers.sim.feed import RandomWalkFeed
from services.backtest.core_run import bar_event, read_bars, run_core, time_core
from services.bench import bench, machine_info, ratio

DEFAULT_BARS = 100_000
DEFAULT_PIPELINE_BARS = 5_000
DEFAULT_REPEATS = 3
DEFAULT_FAST = 10
DEFAULT_SLOW = 30
DEFAULT_SEED = 7
SYMBOL = "ES"
INTERVAL = "1m"
START = datetime(2024, 1, 2, tzinfo=UTC)
START_PRICE = Decimal("4500")
STARTING_CASH = 100_000_000
"""Cash given to backtesting.py and backtrader: far more than one contract's price, so no order is
ever refused for margin."""
TARGET_CORE_VS_BACKTESTING = 2.0
TARGET_CORE_BARS_PER_S = 200_000
TARGET_PIPELINE_VS_BACKTRADER = 1.0
COMPETITORS = ("backtrader", "backtesting", "pandas", "numpy")


class BenchFailed(RuntimeError):
    """The bench could not measure something (the message says what)."""


class BenchUnavailable(BenchFailed):
    """A tool the bench compares against is not installed."""


# ---------------------------------------------------------------------------- data


def write_random_walk_csv(path: Path, bars: int, *, seed: int = DEFAULT_SEED, symbol: str = SYMBOL,
                          interval: str = INTERVAL) -> Path:
    """``bars`` rows of ``Timestamp,Open,High,Low,Close,Volume``: the simulator's seeded random walk
    on the instrument's tick, so the same arguments always give the same bytes."""
    tick = instrument(canonical_root(symbol)).tick_size
    start_ns = int(START.timestamp()) * 10**9
    feed = RandomWalkFeed(symbol, seed, START_PRICE, tick, interval_ns(interval), start_ns, interval)
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("Timestamp,Open,High,Low,Close,Volume\n")
        for _ in range(bars):
            bar = next(feed)
            moment = datetime.fromtimestamp(bar.ts_ns // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            f.write(f"{moment},{bar.open},{bar.high},{bar.low},{bar.close},{bar.volume}\n")
    return path


def _head_csv(source: Path, target: Path, rows: int) -> Path:
    """The header and the first ``rows`` rows of ``source``."""
    with source.open(encoding="utf-8") as f, target.open("w", encoding="utf-8", newline="") as out:
        for i, line in enumerate(f):
            if i > rows:
                break
            out.write(line)
    return target


def _require_competitors() -> dict[str, str]:
    versions: dict[str, str] = {}
    missing = []
    for name in COMPETITORS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        raise BenchUnavailable(f"`tradebus bench replay` compares against backtrader and backtesting.py, and "
                               f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: "
                               f"pip install -e '.[bench]'")
    return versions


# ---------------------------------------------------------------------------- timing


def _best_of(repeats: int, run: Callable[[], tuple[float, dict[str, Any]]], bars: int) -> dict[str, Any]:
    """Run ``run`` (→ seconds, facts) ``repeats`` times; the fastest run's facts, plus every time."""
    runs: list[tuple[float, dict[str, Any]]] = []
    for _ in range(repeats):
        gc.collect()
        runs.append(run())
    seconds, facts = min(runs, key=lambda r: r[0])
    return {"bars": bars, "bars_per_s": round(bars / seconds, 1), "seconds": round(seconds, 4),
            "runs_s": [round(s, 4) for s, _ in runs], **facts}


def _sma(values: Sequence[float], n: int) -> Any:
    """Simple moving average, exact for prices on a binary-representable tick (0.25): prefix sums
    of such prices are exact in float64, so equal averages compare equal (as Decimals do)."""
    import numpy as np

    prices = np.asarray(values, dtype=float)
    sums = np.concatenate(([0.0], np.cumsum(prices)))
    out = np.full(len(prices), np.nan)
    out[n - 1:] = (sums[n:] - sums[:-n]) / n
    return out


def _frame(csv_path: Path) -> Any:
    import pandas as pd

    return pd.read_csv(csv_path, parse_dates=["Timestamp"], index_col="Timestamp")


def time_backtesting_py(frame: Any, fast: int, slow: int, qty: int) -> tuple[float, dict[str, Any]]:
    from backtesting import Backtest, Strategy
    from backtesting.lib import crossover

    class SmaCross(Strategy):
        def init(self) -> None:
            self.fast = self.I(_sma, self.data.Close, fast)
            self.slow = self.I(_sma, self.data.Close, slow)

        def next(self) -> None:
            # sma_cross moves to a target: a second cross the same way (a tie between the averages
            # hides the cross in between) leaves the position as it is.
            if crossover(self.fast, self.slow):
                if not self.position.is_long:
                    self.position.close()
                    self.buy(size=qty)
            elif crossover(self.slow, self.fast):
                if not self.position.is_short:
                    self.position.close()
                    self.sell(size=qty)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        stats = Backtest(frame, SmaCross, cash=STARTING_CASH, commission=0.0).run()
        seconds = time.perf_counter() - started
    return seconds, {"trades": int(stats["# Trades"]),
                     "net_points": round(float(stats["Equity Final [$]"]) - STARTING_CASH, 6)}


def time_backtrader(frame: Any, fast: int, slow: int, qty: int) -> tuple[float, dict[str, Any]]:
    import backtrader as bt

    class SmaCross(bt.Strategy):
        def __init__(self) -> None:
            self.fast = bt.indicators.SMA(self.data.close, period=fast)
            self.slow = bt.indicators.SMA(self.data.close, period=slow)
            self.closed_trades = 0

        def notify_trade(self, trade: Any) -> None:
            if trade.isclosed:
                self.closed_trades += 1

        def next(self) -> None:
            if len(self) <= slow:  # as sma_cross: the previous bar's slow average must exist
                return
            fast_prev, slow_prev, fast_now, slow_now = self.fast[-1], self.slow[-1], self.fast[0], self.slow[0]
            if fast_prev < slow_prev and fast_now > slow_now:
                self.order_target_size(target=qty)
            elif fast_prev > slow_prev and fast_now < slow_now:
                self.order_target_size(target=-qty)

    started = time.perf_counter()
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.PandasData(dataname=frame))
    cerebro.addstrategy(SmaCross)
    cerebro.broker.setcash(STARTING_CASH)
    strategy = cerebro.run()[0]
    seconds = time.perf_counter() - started
    return seconds, {"trades": strategy.closed_trades,
                     "net_points": round(cerebro.broker.getvalue() - STARTING_CASH, 6)}


def _pipeline(csv_path: Path, work: Path, params: dict[str, Any], point_value: Decimal) -> dict[str, Any]:
    """The full process tree in lockstep over ``csv_path``, and its trades against the core's."""
    from services.backtest.pipeline import ReplayError, ReplaySpec, run_replay

    spec = ReplaySpec(symbol=SYMBOL, strategy="sma_cross", params=params, csv=csv_path, interval=INTERVAL)
    started = time.perf_counter()
    try:
        result = run_replay(spec, work / "pipeline", progress=False)
    except ReplayError as exc:
        raise BenchFailed(f"the full pipeline did not finish: {exc}") from exc
    wall = time.perf_counter() - started
    core = run_core(read_bars(csv_path, SYMBOL, INTERVAL), "sma_cross", params, symbol=SYMBOL)
    return {"bars": result.bars, "bars_per_s": round(result.bars_per_s, 1), "seconds": round(result.elapsed_s, 4),
            "wall_s": round(wall, 3), "trades": len(result.trades),
            "net_points": float(Decimal(result.summary["net_pnl"]) / point_value),
            "core_trades_same_bars": len(core.trades),
            "trades_match_core": list(result.trades) == list(core.trades)}


# ---------------------------------------------------------------------------- the bench


def run_bench_replay(bars: int = DEFAULT_BARS, pipeline_bars: int = DEFAULT_PIPELINE_BARS, *,
                     fast: int = DEFAULT_FAST, slow: int = DEFAULT_SLOW, seed: int = DEFAULT_SEED,
                     repeats: int = DEFAULT_REPEATS, say: Callable[[str], None] = lambda _text: None) -> dict[str, Any]:
    """Measure everything (see the module docstring) and return the JSON document."""
    versions = _require_competitors()
    if pipeline_bars > bars:
        raise ValueError(f"pipeline bars ({pipeline_bars}) cannot exceed bars ({bars})")
    params = {"fast": fast, "slow": slow, "qty": 1}
    point_value = instrument(canonical_root(SYMBOL)).point_value
    machine = {**machine_info(), "versions": versions}
    work = Path(tempfile.mkdtemp(prefix="tradebus-bench-replay-"))
    try:
        csv_path = write_random_walk_csv(work / "bars.csv", bars, seed=seed)
        read_started = time.perf_counter()
        history = read_bars(csv_path, SYMBOL, INTERVAL)
        read_s = time.perf_counter() - read_started
        events = [bar_event(b) for b in history]
        frame = _frame(csv_path)
        results: dict[str, Any] = {}

        say(f"strategy core alone over {bars} bars")

        def core() -> tuple[float, dict[str, Any]]:
            seconds, orders = time_core(events, "sma_cross", params)
            return seconds, {"orders": orders}

        results["core"] = _best_of(repeats, core, bars)

        say("strategy core with the simulator's matching engine")

        def core_with_fills() -> tuple[float, dict[str, Any]]:
            run = run_core(history, "sma_cross", params, symbol=SYMBOL)
            return run.elapsed_s, {"orders": run.instructions, "trades": len(run.trades),
                                   "net_points": float(Decimal(run.summary["net_pnl"]) / point_value)}

        results["core_with_fills"] = _best_of(repeats, core_with_fills, bars)

        say("backtesting.py")
        results["backtesting_py"] = _best_of(repeats, lambda: time_backtesting_py(frame, fast, slow, 1), bars)

        say("backtrader")
        results["backtrader"] = _best_of(repeats, lambda: time_backtrader(frame, fast, slow, 1), bars)

        if pipeline_bars > 0:
            head = _head_csv(csv_path, work / "pipeline-bars.csv", pipeline_bars)
            say(f"backtrader over the pipeline's {pipeline_bars} bars")
            results["backtrader_pipeline_bars"] = _best_of(
                repeats, lambda: time_backtrader(frame.iloc[:pipeline_bars], fast, slow, 1), pipeline_bars)
            say(f"full process pipeline in lockstep over {pipeline_bars} bars")
            results["pipeline"] = _pipeline(head, work, params, point_value)
        else:
            results["pipeline"] = {"bars": 0, "skipped": "--pipeline-bars 0"}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    core_rate, bt_py_rate = results["core"]["bars_per_s"], results["backtesting_py"]["bars_per_s"]
    pipeline_rate = results["pipeline"].get("bars_per_s")
    ratios = {
        "core_vs_backtesting_py": ratio(core_rate, bt_py_rate),
        "core_with_fills_vs_backtesting_py": ratio(results["core_with_fills"]["bars_per_s"], bt_py_rate),
        "core_vs_backtrader": ratio(core_rate, results["backtrader"]["bars_per_s"]),
        "pipeline_vs_backtrader": ratio(pipeline_rate, results["backtrader"]["bars_per_s"]),
        "pipeline_vs_backtrader_same_bars": ratio(
            pipeline_rate, results.get("backtrader_pipeline_bars", {}).get("bars_per_s")),
    }
    pipeline_ratio = ratios["pipeline_vs_backtrader"]
    targets = {
        "core_vs_backtesting_py": {"target": f">= {TARGET_CORE_VS_BACKTESTING}",
                                   "measured": ratios["core_vs_backtesting_py"],
                                   "met": (ratios["core_vs_backtesting_py"] or 0) >= TARGET_CORE_VS_BACKTESTING},
        "core_bars_per_s": {"target": f">= {TARGET_CORE_BARS_PER_S}", "measured": core_rate,
                            "met": core_rate >= TARGET_CORE_BARS_PER_S},
        "pipeline_vs_backtrader": {"target": f">= {TARGET_PIPELINE_VS_BACKTRADER}", "measured": pipeline_ratio,
                                   "met": None if pipeline_ratio is None
                                   else pipeline_ratio >= TARGET_PIPELINE_VS_BACKTRADER},
    }
    trade_counts = {name: r.get("trades") for name, r in results.items() if r.get("trades") is not None}
    return {
        "bench": "replay",
        "machine": machine,
        "data": {"bars": bars, "pipeline_bars": pipeline_bars, "symbol": SYMBOL, "interval": INTERVAL,
                 "seed": seed, "strategy": "sma_cross", "params": params, "repeats": repeats,
                 "csv_read_s": round(read_s, 3)},
        "method": "one seeded random-walk CSV; CSV reading not timed; in-process engines best of `repeats` "
                  "(perf_counter); core = decide() over precomputed BarEvents; core_with_fills = core + "
                  "brokers.sim.venue.Venue fills; backtesting.py Backtest.run and backtrader Cerebro.run with the "
                  "same rules (exact SMAs, strict crossings, market orders at the next open, reversal to +-qty); "
                  "pipeline = services.backtest.pipeline.run_replay on the first pipeline_bars bars, bars/s from "
                  "first bar released to last processed",
        "results": results,
        "trade_counts": trade_counts,
        "ratios": ratios,
        "targets": targets,
    }


@bench.command("replay")
@click.option("--bars", type=click.IntRange(min=100), default=DEFAULT_BARS, show_default=True,
              help="Bars in the generated CSV (every in-process engine runs all of them).")
@click.option("--pipeline-bars", type=click.IntRange(min=0), default=DEFAULT_PIPELINE_BARS, show_default=True,
              help="The first N bars go through the full process pipeline (0: skip it).")
@click.option("--fast", type=click.IntRange(min=1), default=DEFAULT_FAST, show_default=True)
@click.option("--slow", type=click.IntRange(min=2), default=DEFAULT_SLOW, show_default=True)
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True, help="Random walk seed.")
@click.option("--repeats", type=click.IntRange(min=1), default=DEFAULT_REPEATS, show_default=True,
              help="Runs per in-process engine; the best counts.")
def bench_replay(bars: int, pipeline_bars: int, fast: int, slow: int, seed: int, repeats: int) -> None:
    """Backtest speed: strategy core and full pipeline vs backtesting.py and backtrader, JSON on stdout."""
    if fast >= slow:
        raise click.UsageError(f"--fast ({fast}) must be smaller than --slow ({slow})")
    if pipeline_bars > bars:
        raise click.UsageError(f"--pipeline-bars ({pipeline_bars}) cannot exceed --bars ({bars})")
    try:
        doc = run_bench_replay(bars, pipeline_bars, fast=fast, slow=slow, seed=seed, repeats=repeats,
                               say=lambda text: click.echo(f"bench replay: {text}", err=True))
    except BenchFailed as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(doc, indent=2))
