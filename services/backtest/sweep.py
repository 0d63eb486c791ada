"""Parameter sweeps: one backtest per combination of a grid, run by jobs workers.

``--param fast=5..20 --param slow=20..60:5`` is a grid: ``start..end`` is inclusive with a step of
1, ``start..end:step`` names the step; a plain ``name=value`` is fixed for every run. Numbers are
whole (``5..20``) or decimal (``0.5..2:0.25``, computed exactly with ``Decimal``).

``run_sweep`` puts one ``backtest`` job per combination on the durable job queue (the ``jobs``
table, through the ``Store``), starts N real jobs-worker processes (``tradebus run jobs``) against
that database — by default a private SQLite file in the output folder — waits for every job to
finish (polling, with a deadline, and noticing workers that died), then ranks the results by net
P&L (then Sharpe) into ``sweep.csv``, prints the top rows, and draws ``heatmap.png``. Every
combination also gets its own report folder under ``runs/``.

Combinations the strategy refuses (``sma_cross`` with fast >= slow) are not queued: they are
reported as skipped, with the strategy's reason. A job that fails is reported with its error.
"""
from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from schema.db import migrate
from schema.enums import JobStatus
from schema.store import Store
from services.backtest.core_run import DEFAULT_INTERVAL
from services.jobs.core import BACKTEST, BacktestRequest
from services.strategy.core import ParamError
from services.strategy.registry import get_strategy
from services.supervisor import tradebus_bin
from services.tree import prepare_root

DEFAULT_WORKERS = max(1, min(os.cpu_count() or 1, 8))
"""One jobs worker per core (a backtest is CPU-bound), at most eight."""
MAX_COMBINATIONS = 10_000
"""A grid larger than this is almost certainly a typo (``1..100000``): refused, not queued."""
POLL_S = 0.2
"""How often the sweep looks at the queue while workers run."""
DEFAULT_TIMEOUT_S = 3600.0
WORKER_STOP_TIMEOUT_S = 20.0
TOP_ROWS = 10
SWEEP_CSV = "sweep.csv"
SWEEP_JSON = "sweep.json"
HEATMAP_PNG = "heatmap.png"
RUNS_DIR = "runs"
SWEEP_DB = "sweep.db"
SWEEP_ROOT = ".sweep"
"""The workers' installation root inside the output folder (their state folder, logs, database)."""
METRICS = ("net_pnl", "trades", "win_rate", "max_drawdown", "sharpe", "exposure_pct")
TABLE_COLUMNS = {"net_pnl": "net P&L", "trades": "trades", "win_rate": "win %", "max_drawdown": "max DD",
                 "sharpe": "Sharpe", "exposure_pct": "exposure %"}


class SweepSpecError(ValueError):
    """A ``--param`` that is not ``name=value``, ``name=start..end`` or ``name=start..end:step``."""


class SweepError(RuntimeError):
    """The sweep could not finish: workers died, or the deadline passed."""


Number = int | Decimal


class SweepSpec(Protocol):
    """What a sweep runs (``tradebus replay``'s ``ReplaySpec`` has these attributes)."""

    csv: Path | None
    symbol: str
    strategy: str
    params: Mapping[str, Any]
    interval: str | None
    commission_per_contract: Decimal
    slippage_ticks: int
    db_url: str | None


@dataclass(frozen=True)
class CsvSweep:
    """A ``SweepSpec`` of its own, for callers without a ``ReplaySpec``."""

    csv: Path
    symbol: str
    strategy: str
    params: Mapping[str, Any] = field(default_factory=dict)
    interval: str | None = None
    commission_per_contract: Decimal = Decimal(0)
    slippage_ticks: int = 0
    db_url: str | None = None


# ---------------------------------------------------------------------------- grid (pure)


def is_range(value: str) -> bool:
    """Whether a ``--param`` value is a range (``5..20``, ``20..60:5``) rather than one value."""
    return ".." in value


def _number(text: str, what: str, spec: str) -> Number:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise SweepSpecError(f"{spec!r}: {what} {text!r} is not a number") from None
    if not value.is_finite():
        raise SweepSpecError(f"{spec!r}: {what} {text!r} is not a finite number")
    return value


def parse_range(value: str, *, spec: str | None = None) -> list[Number]:
    """``"5..20"`` → [5, 6, …, 20]; ``"20..60:5"`` → [20, 25, …, 60]; end inclusive."""
    spec = spec or value
    bounds, _, step_text = value.partition(":")
    start_text, sep, end_text = bounds.partition("..")
    if not sep or not start_text.strip() or not end_text.strip():
        raise SweepSpecError(f"{spec!r}: a range is start..end or start..end:step, e.g. 5..20 or 20..60:5")
    start, end = _number(start_text, "start", spec), _number(end_text, "end", spec)
    step: Number = _number(step_text, "step", spec) if step_text.strip() else 1
    if step <= 0:
        raise SweepSpecError(f"{spec!r}: step must be positive, got {step}")
    if end < start:
        raise SweepSpecError(f"{spec!r}: end {end} is below start {start}")
    count = int((Decimal(end) - Decimal(start)) // Decimal(step)) + 1
    if count > MAX_COMBINATIONS:
        raise SweepSpecError(f"{spec!r}: {count} values is more than {MAX_COMBINATIONS}")
    return [start + i * step for i in range(count)]


def grid(ranges: Mapping[str, Sequence[Number]]) -> list[dict[str, Number]]:
    """Every combination, the first parameter varying slowest."""
    names = list(ranges)
    combos = [dict(zip(names, values)) for values in itertools.product(*(ranges[n] for n in names))]
    if len(combos) > MAX_COMBINATIONS:
        raise SweepSpecError(f"{len(combos)} combinations is more than {MAX_COMBINATIONS}")
    return combos


def _json_value(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value


def rank_key(summary: Mapping[str, Any]) -> tuple[Decimal, float]:
    """Sort key of a run's summary, best first: higher net P&L, then higher Sharpe (undefined
    counts lowest)."""
    sharpe = summary.get("sharpe")
    return -Decimal(summary["net_pnl"]), float("inf") if sharpe is None else -sharpe


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SweepRun:
    params: dict[str, Any]
    """The varying parameters of this combination."""
    job_id: int
    summary: dict[str, Any]
    out_dir: str | None


@dataclass
class SweepResult:
    names: list[str]
    ranked: list[SweepRun]
    skipped: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    failed: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    jobs: int = 0
    workers: int = 0
    elapsed_s: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


# ---------------------------------------------------------------------------- the sweep


def run_sweep(spec: SweepSpec, ranges: Mapping[str, str | Sequence[Number]], out_dir: str | Path, *,
              workers: int = DEFAULT_WORKERS, timeout_s: float = DEFAULT_TIMEOUT_S, reports: bool = True,
              progress: bool = True, console: Console | None = None) -> SweepResult:
    """Run the grid of ``ranges`` — range texts (``"5..20"``, ``"20..60:5"``) or value lists — with
    ``spec.params`` fixed in every run, on ``workers`` jobs workers; see the module docstring.

    ``spec`` is a ``SweepSpec`` or anything with the same attributes (``tradebus replay`` passes its
    ``ReplaySpec``). Raises ``SweepSpecError`` for a bad grid or spec, ``ParamError`` when no
    combination is runnable, ``SweepError`` when the workers cannot finish.
    """
    console = console or Console()
    if getattr(spec, "journal", None) is not None or spec.csv is None:
        raise SweepSpecError("a parameter sweep runs over a CSV file (--csv), not a journal")
    if not ranges:
        raise SweepSpecError("a sweep needs at least one parameter range (name=start..end)")
    if workers < 1:
        raise SweepSpecError(f"workers must be >= 1, got {workers}")
    fixed_params = dict(spec.params)
    overlap = set(fixed_params) & set(ranges)
    if overlap:
        raise SweepSpecError(f"parameter(s) both fixed and swept: {sorted(overlap)}")
    values = {name: parse_range(v, spec=f"{name}={v}") if isinstance(v, str) else list(v)
              for name, v in ranges.items()}
    csv_path = Path(spec.csv).resolve()
    if not csv_path.is_file():
        raise SweepSpecError(f"no CSV file at {csv_path}")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = list(values)
    strategy = spec.strategy
    model = get_strategy(strategy)

    runnable: list[dict[str, Any]] = []
    result = SweepResult(names=names, ranked=[])
    for combo in grid(values):
        params = {k: _json_value(v) for k, v in {**fixed_params, **combo}.items()}
        try:
            model.initial_state(params)
        except ParamError as exc:
            result.skipped.append((combo, str(exc)))
            continue
        runnable.append(combo)
    if not runnable:
        raise ParamError(f"every one of the {len(result.skipped)} combinations is refused by {strategy}: "
                         f"{result.skipped[0][1]}")

    root = out / SWEEP_ROOT
    private_db = root / "state" / SWEEP_DB
    if spec.db_url is None:
        private_db.unlink(missing_ok=True)  # a fresh queue for each sweep into this folder
    url = spec.db_url or f"sqlite:///{private_db}"
    env = {**prepare_root(root, ""), "TRADEBUS_DB_URL": url}
    (root / "state" / "logs").mkdir(parents=True, exist_ok=True)
    migrate(url)
    started = time.monotonic()
    with Store.from_url(url) as store:
        jobs: dict[int, dict[str, Any]] = {}
        for combo in runnable:
            params = {k: _json_value(v) for k, v in {**fixed_params, **combo}.items()}
            request = BacktestRequest(
                csv=str(csv_path), symbol=spec.symbol, strategy=strategy, params=params,
                interval=spec.interval or DEFAULT_INTERVAL, slippage_ticks=spec.slippage_ticks,
                commission_per_contract=spec.commission_per_contract,
                out_dir=str(out / RUNS_DIR / run_label(combo)) if reports else None)
            job = store.enqueue_job(BACKTEST, request.to_payload(), now_ns=time.time_ns())
            jobs[job.id] = combo
        result.jobs, result.workers = len(jobs), min(workers, len(jobs))
        with _workers(root, env, result.workers) as procs:
            finished = _wait(store, list(jobs), procs, root, timeout_s=timeout_s,
                             progress=progress, console=console)
    result.elapsed_s = time.monotonic() - started

    runs: list[SweepRun] = []
    for job_id, combo in jobs.items():
        job = finished[job_id]
        if job.status is JobStatus.DONE and job.result is not None:
            runs.append(SweepRun(dict(combo), job_id, job.result["summary"], job.result.get("out_dir")))
        else:
            result.failed.append((combo, job.error or f"job {job_id} ended {job.status}"))
    result.ranked = sorted(runs, key=lambda r: (*rank_key(r.summary), _sort_params(r.params)))
    result.files = write_sweep(out, result)
    render_table(result, console)
    return result


def run_label(combo: Mapping[str, Any]) -> str:
    """``fast=5_slow=20``: a run's folder name under ``runs/``."""
    return "_".join(f"{k}={v}" for k, v in combo.items())


def _sort_params(params: Mapping[str, Any]) -> tuple:
    return tuple(Decimal(str(v)) for v in params.values())


@contextmanager
def _workers(root: Path, env: Mapping[str, str], count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` jobs workers (``tradebus run jobs --worker i``) of the installation at ``root``;
    stopped with SIGTERM (they finish the job in hand first), killed if they do not stop in time."""
    exe = tradebus_bin()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(count):
            with (root / "state" / "logs" / f"jobs_{i:02d}.log").open("wb") as log_file:
                procs.append(subprocess.Popen([exe, "run", "jobs", "--worker", str(i)], env=env, cwd=root,
                                              stdout=log_file, stderr=subprocess.STDOUT))
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait(store: Store, job_ids: list[int], procs: Sequence[subprocess.Popen[bytes]], root: Path, *,
          timeout_s: float, progress: bool, console: Console) -> dict[int, Any]:
    """Poll the queue until every job is done or failed; returns the final jobs by id."""
    deadline = time.monotonic() + timeout_s
    wanted = set(job_ids)
    finished: dict[int, Any] = {}
    bar = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, disable=not progress, transient=True)
    with bar:
        task = bar.add_task("jobs", total=len(wanted))
        while True:
            for job in store.jobs():
                if job.id in wanted and job.id not in finished and job.status in (JobStatus.DONE, JobStatus.FAILED):
                    finished[job.id] = job
            bar.update(task, completed=len(finished))
            if len(finished) == len(wanted):
                return finished
            if all(proc.poll() is not None for proc in procs):
                raise SweepError(f"every jobs worker exited with {len(wanted) - len(finished)} job(s) left; "
                                 f"see {root / 'state' / 'logs'}: {_log_tail(root)}")
            if time.monotonic() > deadline:
                raise SweepError(f"{len(wanted) - len(finished)} of {len(wanted)} job(s) not finished after "
                                 f"{timeout_s:.0f} s")
            time.sleep(POLL_S)


def _log_tail(root: Path, lines: int = 3) -> str:
    logs = sorted((root / "state" / "logs").glob("jobs_*.log"))
    if not logs:
        return "(no worker log)"
    return " | ".join(logs[0].read_text(errors="replace").splitlines()[-lines:])


# ---------------------------------------------------------------------------- output


def _row(rank: int, names: Sequence[str], run: SweepRun) -> dict[str, Any]:
    row: dict[str, Any] = {"rank": rank, **{n: run.params[n] for n in names}}
    row.update({m: run.summary.get(m) for m in METRICS})
    row["job_id"] = run.job_id
    row["report"] = run.out_dir or ""
    return row


def write_sweep(out: Path, result: SweepResult) -> dict[str, str]:
    """``sweep.csv`` (ranked), ``sweep.json`` (everything, skipped and failed included) and
    ``heatmap.png``; returns their paths."""
    rows = [_row(i + 1, result.names, run) for i, run in enumerate(result.ranked)]
    csv_path = out / SWEEP_CSV
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["rank", *result.names, *METRICS, "job_id", "report"], lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    json_path = out / SWEEP_JSON
    json_path.write_text(json.dumps({
        "parameters": result.names,
        "jobs": result.jobs,
        "workers": result.workers,
        "elapsed_s": round(result.elapsed_s, 3),
        "ranked": [{**row, "summary": run.summary} for row, run in zip(rows, result.ranked)],
        "skipped": [{"params": {k: _json_value(v) for k, v in c.items()}, "reason": why} for c, why in result.skipped],
        "failed": [{"params": {k: _json_value(v) for k, v in c.items()}, "error": e} for c, e in result.failed],
    }, indent=2, default=str) + "\n", encoding="utf-8")
    files = {"csv": str(csv_path), "json": str(json_path)}
    if result.ranked:
        heatmap = out / HEATMAP_PNG
        write_heatmap(heatmap, result.names, result.ranked)
        files["heatmap"] = str(heatmap)
    return files


def write_heatmap(path: Path, names: Sequence[str], runs: Sequence[SweepRun], *, metric: str = "net_pnl") -> None:
    """Net P&L over the grid: a heatmap of the first two parameters (the best value over any
    further ones), or a bar chart when only one parameter varies. Skipped or failed cells stay
    blank."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    def value(run: SweepRun) -> float:
        return float(Decimal(str(run.summary[metric])))

    figure = Figure(figsize=(8.0, 6.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    first = names[0]
    xs = sorted({Decimal(str(r.params[first])) for r in runs})
    if len(names) == 1:
        by_x = {Decimal(str(r.params[first])): value(r) for r in runs}
        heights = [by_x[x] for x in xs]
        axes.bar([str(x) for x in xs], heights,
                 color=["tab:green" if h >= 0 else "tab:red" for h in heights])
        axes.set_xlabel(first)
        axes.set_ylabel(metric)
        axes.axhline(0, color="grey", linewidth=0.5)
    else:
        second = names[1]
        ys = sorted({Decimal(str(r.params[second])) for r in runs})
        best: dict[tuple[Decimal, Decimal], float] = {}
        for r in runs:
            key = (Decimal(str(r.params[first])), Decimal(str(r.params[second])))
            best[key] = max(best.get(key, float("-inf")), value(r))
        cells = [[best.get((x, y), float("nan")) for x in xs] for y in ys]
        low, high = min(best.values()), max(best.values())
        # Losses red, profits green: zero sits at the colour map's middle when both occur.
        norm = TwoSlopeNorm(0.0, low, high) if low < 0 < high else None
        image = axes.imshow(cells, origin="lower", aspect="auto", cmap="RdYlGn", interpolation="nearest", norm=norm)
        axes.set_xticks(range(len(xs)), [str(x) for x in xs])
        axes.set_yticks(range(len(ys)), [str(y) for y in ys])
        axes.set_xlabel(first)
        axes.set_ylabel(second)
        label = metric if len(names) == 2 else f"{metric} (best over {', '.join(names[2:])})"
        figure.colorbar(image, ax=axes, label=label)
        if len(xs) * len(ys) <= 400:
            for j, row in enumerate(cells):
                for i, cell in enumerate(row):
                    if cell == cell:  # not NaN
                        axes.text(i, j, f"{cell:.0f}", ha="center", va="center", fontsize=7)
    axes.set_title(f"Sweep: {metric} by {' × '.join(names[:2])}")
    figure.tight_layout()
    figure.savefig(path, format="png", metadata={"Software": None})


def _cell(metric: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if metric == "win_rate":
        return f"{value * 100:.1f}"
    if metric in ("sharpe", "exposure_pct"):
        return f"{value:.2f}"
    return str(value)


def render_table(result: SweepResult, console: Console, *, top: int = TOP_ROWS) -> None:
    """The best ``top`` runs as a rich table, then what was skipped or failed."""
    table = Table(title=f"Sweep: {len(result.ranked)} run(s) ranked by net P&L, then Sharpe")
    table.add_column("#", justify="right")
    for name in result.names:
        table.add_column(name, justify="right")
    for metric in METRICS:
        table.add_column(TABLE_COLUMNS[metric], justify="right")
    for i, run in enumerate(result.ranked[:top]):
        cells = [str(i + 1), *(str(run.params[n]) for n in result.names)]
        cells += [_cell(m, run.summary.get(m)) for m in METRICS]
        table.add_row(*cells)
    console.print(table)
    if result.skipped:
        console.print(f"skipped {len(result.skipped)} combination(s) the strategy refuses, e.g. "
                      f"{run_label(result.skipped[0][0])}: {result.skipped[0][1]}")
    for combo, error in result.failed:
        console.print(f"[red]failed[/red] {run_label(combo)}: {error}")
    if result.files:
        console.print("wrote " + ", ".join(result.files.values()))

