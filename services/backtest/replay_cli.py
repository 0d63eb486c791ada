"""``tradebus replay``: the command line of ``services.backtest.pipeline`` (loaded only when asked for)."""
from __future__ import annotations

import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import click

SWEEP_MARK = ".."
"""A ``--param`` value containing it is a range to sweep (``fast=2..5``), not one value."""
DEFAULT_OUT = "replay-out"


def _commission(ctx: click.Context, param: click.Parameter, value: str) -> Decimal:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise click.BadParameter(f"{value!r} is not an amount (e.g. 2.5)") from None
    if not amount.is_finite() or amount < 0:
        raise click.BadParameter(f"must be an amount >= 0, got {value}")
    return amount


@click.command("replay")
@click.option("--csv", "csv_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="OHLCV CSV with a Date (or timestamp) column: daily or intraday bars.")
@click.option("--journal", "journal_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A recorded journal folder: replay its session and check the orders against the recorded ones.")
@click.option("--symbol", required=True, help="Root (ES, 6E, …) or contract (ESZ6) the bars are of.")
@click.option("--strategy", required=True, help="Strategy name, e.g. sma_cross.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Strategy parameter (repeatable); a range such as fast=2..5 runs a sweep.")
@click.option("--session", default=None, help="With --journal: which recorded session (default: the one trading --symbol).")
@click.option("--interval", default=None, help="Bar interval of the CSV (default: inferred from its timestamps).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path(DEFAULT_OUT),
              show_default=True, help="Report folder: trades.csv, summary.json, equity.png.")
@click.option("--commission", default="0", show_default=True, callback=_commission,
              help="Commission per contract per fill, in the instrument's currency.")
@click.option("--slippage-ticks", default=0, show_default=True, type=click.IntRange(min=0),
              help="Market and stop fills this many ticks worse.")
@click.option("--db-url", default=None, help="A fresh database (e.g. PostgreSQL) instead of SQLite under --out.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def replay(csv_path: Path | None, journal_dir: Path | None, symbol: str, strategy: str, params: tuple[str, ...],
           session: str | None, interval: str | None, out_dir: Path, commission: Decimal, slippage_ticks: int,
           db_url: str | None, no_progress: bool) -> None:
    """Replay history through the real process pipeline (marketdata → strategy → account → venue
    simulator) in lockstep, and write a report."""
    from rich.console import Console

    from services.backtest.pipeline import ReplayError, ReplaySpec, render_result, run_replay
    from services.config import ConfigError
    from services.sessions import parse_params

    if (csv_path is None) == (journal_dir is None):
        raise click.UsageError("give exactly one of --csv FILE and --journal DIR")
    if session is not None and journal_dir is None:
        raise click.UsageError("--session picks a recorded session: it goes with --journal")
    if interval is not None and journal_dir is not None:
        raise click.UsageError("--interval is for --csv (a journal's bars say their interval)")
    try:
        parsed = parse_params(params)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--param") from None
    ranges = {key: value for key, value in parsed.items() if SWEEP_MARK in value}
    fixed = {key: value for key, value in parsed.items() if key not in ranges}
    spec = ReplaySpec(symbol=symbol, strategy=strategy, params=fixed if ranges else parsed, csv=csv_path,
                      journal=journal_dir, commission_per_contract=commission, slippage_ticks=slippage_ticks,
                      db_url=db_url, interval=interval, session=session)
    console = Console()
    if ranges:
        _sweep(spec, ranges, out_dir, progress=not no_progress)
        return
    try:
        result = run_replay(spec, out_dir, progress=not no_progress)
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(render_result(result), highlight=False, markup=False)
    if result.journal_check is not None and not result.journal_check.matches:
        sys.exit(1)


def _sweep(spec: Any, ranges: dict[str, str], out_dir: Path, *, progress: bool) -> None:
    """``--param`` ranges: the sweep runner's business (``services.backtest.sweep``)."""
    try:
        from services.backtest.sweep import SweepError, SweepSpecError, run_sweep
    except ImportError as exc:
        raise click.ClickException(f"--param {', '.join(f'{k}={v}' for k, v in ranges.items())} asks for a "
                                   f"parameter sweep, which this installation cannot run ({exc})") from None
    from services.strategy.core import ParamError

    try:
        result = run_sweep(spec, ranges, out_dir, progress=progress)
    except (SweepSpecError, ParamError, SweepError) as exc:
        raise click.ClickException(str(exc)) from None
    if not result.ok:
        sys.exit(1)
