"""``tradebus replay``: history through the real process pipeline, in lockstep.

The same processes that trade live — busd, the venue simulator, and one session's marketdata,
account and strategy — run in a private installation folder (``<out>/engine``: its own state
folder, bus, journal, logs and database; SQLite unless a database URL is given). The simulator
reads the bars from a CSV file and runs with ``--lockstep``: it produces bar t+1 only when this
module's coordinator releases it (``POST /v1/admin/release``), and the coordinator does so only
after the strategy has published ``BarProcessed`` for bar t — it has decided on the bar and the
account has answered every order it sent for it, which the account does only after the venue took
the order. When bar t+1 reaches the venue, the venue therefore holds exactly the orders of bar t,
whatever the speed of the machine; with the simulator's fill model (market orders at the next
bar's open, limits and stops when a later bar crosses) the fills, and so the trades, depend on
the data alone.

Every bar is live. A live session catches up on the history the market-data service holds at start
(indicators only, never trades); a CSV replay starts the simulator with no history, so the
catch-up is empty and the strategy meets each bar as it is released. A journal replay
(``--journal``) gives the simulator, as history, exactly the bars the live strategy caught up on,
so that it starts from the same indicators (``services.backtest.journal_feed``).

At the end the processes are stopped, the session's fills are read from the database, and the
report (``services.backtest.report``) is written into the output folder: ``trades.csv``,
``summary.json``, ``equity.png``. Commission is the report's; slippage is the simulator's.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import httpx

from brokers.base import Bar
from brokers.instruments import canonical_root, front_contract, instrument, is_contract, parse_contract
from brokers.intervals import NS_PER_SECOND, interval_ns
from brokers.sim.feed import CsvFeed, CsvFeedError
from bus import topics
from bus.client import BusClient
from bus.endpoints import BusSettings, Endpoints
from bus.errors import BusError, EndpointError
from schema import messages as m
from schema.enums import SessionState, Side
from services.backtest.journal_feed import (
    JournalCheck,
    JournalFeedError,
    OrderRecord,
    RecordedSession,
    compare,
    order_record,
    pick_session,
    read_session,
    write_bars_csv,
)
from services.backtest.report import (
    ExecFill,
    Trade,
    equity_curve,
    exposure_bars,
    render_summary,
    round_trips,
    summarize,
    write_report,
)
from services.config import DEMO_ACCOUNT, SUPERVISORD_CONF, validate_session_name
from services.strategy.core import ParamError
from services.strategy.registry import get_strategy

SESSION = "replay"
ACCOUNT = DEMO_ACCOUNT
ENGINE_DIR = "engine"
"""The replay's installation folder inside the output folder (replaced by each run)."""
JOURNAL_BARS_CSV = "journal-bars.csv"
"""A journal replay's bars, as the simulator was given them (in the output folder)."""
SHORT_ROOT_PARENT = "/tmp"
"""Where the installation runs when ``<out>/engine`` is too deep for the bus's unix sockets; it is
moved into ``<out>/engine`` once the processes are gone."""
VENUE_READY_FILE = "venue-sim.json"  # brokers.sim.server.READY_FILE
BUSD_READY = ("bus", "busd.ready")  # bus.endpoints: <state>/bus/busd.ready
SESSION_ROLES = ("marketdata", "account", "strategy")

START_TIMEOUT_S = 60.0
"""From the first process started to the session trading (five Python processes on a busy machine)."""
BAR_TIMEOUT_S = 30.0
"""A released bar not processed within this long: the pipeline is stuck (the error shows the logs)."""
SETTLE_TIMEOUT_S = 30.0
"""After the last bar: until the account has booked every fill the venue made."""
STOP_TIMEOUT_S = 15.0
POLL_S = 0.05
RECV_SLICE_MS = 200
HTTP_TIMEOUT_S = 5.0
LOG_TAIL_LINES = 25
SUBSCRIBE_TIMEOUT_S = 10.0

INTERVAL_UNITS = (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))


class ReplayError(Exception):
    """The replay could not be run, or did not finish: the message says what and where to look."""


# ============================================================================ what to replay


@dataclass(frozen=True)
class ReplaySpec:
    """One replay. Exactly one of ``csv`` and ``journal``.

    ``symbol`` is a root (``ES``) or a contract (``ESZ6``); a CSV replay of a root trades the front
    contract of the later of today and the last bar's day, so no contract roll starts mid-replay.
    ``session`` picks the recorded session of a journal that holds several of ``symbol``'s root.
    """

    symbol: str
    strategy: str
    params: Mapping[str, Any] = field(default_factory=dict)
    csv: Path | None = None
    journal: Path | None = None
    commission_per_contract: Decimal = Decimal(0)
    slippage_ticks: int = 0
    db_url: str | None = None
    interval: str | None = None
    session: str | None = None

    def check(self) -> None:
        """Refuse a spec that cannot run, before anything starts (``ReplayError`` says why)."""
        if (self.csv is None) == (self.journal is None):
            raise ReplayError("give exactly one of a CSV file and a journal folder")
        if self.csv is not None and not Path(self.csv).is_file():
            raise ReplayError(f"no such CSV file: {self.csv}")
        if self.journal is not None and not Path(self.journal).is_dir():
            raise ReplayError(f"no such journal folder: {self.journal}")
        try:
            canonical_root(self.symbol)
        except ValueError:
            raise ReplayError(f"unknown symbol {self.symbol!r}") from None
        try:
            get_strategy(self.strategy).initial_state(dict(self.params))
        except ParamError as exc:
            raise ReplayError(str(exc)) from None
        if not self.commission_per_contract.is_finite() or self.commission_per_contract < 0:
            raise ReplayError(f"commission per contract must be >= 0, got {self.commission_per_contract}")
        if self.slippage_ticks < 0:
            raise ReplayError(f"slippage must be >= 0 ticks, got {self.slippage_ticks}")
        if self.interval is not None:
            try:
                interval_ns(self.interval)
            except ValueError as exc:
                raise ReplayError(str(exc)) from None


@dataclass(frozen=True)
class ReplayResult:
    out_dir: Path
    session: str
    contract: str
    interval: str
    bars: int
    """Bars replayed live (a journal's catch-up bars not counted)."""
    orders: tuple[OrderRecord, ...]
    fills: tuple[ExecFill, ...]
    trades: tuple[Trade, ...]
    summary: dict[str, Any]
    elapsed_s: float
    """Wall time from the first bar released to the last one processed."""
    journal_check: JournalCheck | None = None

    @property
    def bars_per_s(self) -> float:
        return self.bars / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(frozen=True)
class _Plan:
    """What the simulator is given and how the session is set up."""

    session: str
    contract: str
    interval: str
    feed_csv: Path
    bars: tuple[Bar, ...]
    """Every bar the simulator will produce, oldest first (``history`` of them at start)."""
    history: int
    recorded: RecordedSession | None = None

    @property
    def live_bars(self) -> tuple[Bar, ...]:
        return self.bars[self.history:]


def infer_interval(timestamps: Sequence[int]) -> str:
    """The bar interval of a series: its smallest step, in the largest unit that divides it
    (daily bars with weekends → ``1d``). A single bar counts as daily."""
    steps = [b - a for a, b in zip(timestamps, timestamps[1:]) if b > a]
    if not steps:
        return "1d"
    seconds = max(1, min(steps) // NS_PER_SECOND)
    for unit, size in INTERVAL_UNITS:
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    raise AssertionError("unreachable: every step is whole seconds")  # pragma: no cover


def read_csv_bars(path: Path, symbol: str, interval: str | None) -> tuple[str, tuple[Bar, ...]]:
    """(interval, bars) of an OHLCV CSV, every row checked now rather than mid-replay."""
    try:
        bars = tuple(CsvFeed(path, symbol, interval or "1d"))
    except (CsvFeedError, OSError, UnicodeDecodeError) as exc:
        raise ReplayError(f"cannot read {path}: {exc}") from None
    if not bars:
        raise ReplayError(f"{path} holds no bars")
    if interval is None:
        interval = infer_interval([b.ts_ns for b in bars])
        bars = tuple(dataclasses.replace(b, interval=interval) for b in bars)
    return interval, bars


def replay_contract(symbol: str, last_bar_ns: int, now_ns: int) -> str:
    """The contract a CSV replay of ``symbol`` trades (see ``ReplaySpec``)."""
    if is_contract(symbol):
        return parse_contract(symbol).code
    root = canonical_root(symbol)
    day = datetime.fromtimestamp(max(last_bar_ns, now_ns) // NS_PER_SECOND, tz=UTC).date()
    return front_contract(root, day)


def _plan(spec: ReplaySpec, out_dir: Path) -> _Plan:
    if spec.csv is not None:
        csv_path = Path(spec.csv).resolve()
        interval, bars = read_csv_bars(csv_path, "X", spec.interval)
        contract = replay_contract(spec.symbol, bars[-1].ts_ns, time.time_ns())
        bars = tuple(dataclasses.replace(b, symbol=contract) for b in bars)
        return _Plan(session=SESSION, contract=contract, interval=interval, feed_csv=csv_path, bars=bars, history=0)
    assert spec.journal is not None
    journal = Path(spec.journal).resolve()
    try:
        session = pick_session(journal, spec.symbol, spec.session)
        recorded = read_session(journal, session)
    except JournalFeedError as exc:
        raise ReplayError(str(exc)) from None
    if canonical_root(recorded.contract) != canonical_root(spec.symbol):
        raise ReplayError(f"session {session} traded {recorded.contract}, not {spec.symbol}")
    if not recorded.live:
        raise ReplayError(f"{journal}: session {session} received no live bar")
    feed_csv = write_bars_csv(out_dir / JOURNAL_BARS_CSV, recorded.bars)
    interval, bars = read_csv_bars(feed_csv, recorded.contract, recorded.interval)
    return _Plan(session=session, contract=recorded.contract, interval=interval, feed_csv=feed_csv, bars=bars,
                 history=len(recorded.history), recorded=recorded)


# ============================================================================ the installation


def _ipc_fits(state: Path) -> bool:
    try:
        Endpoints.for_state_dir(state, BusSettings())
    except EndpointError:
        return False
    return True


@contextmanager
def _installation(out_dir: Path) -> Iterator[Path]:
    """An empty installation root for this run; ends up as ``<out>/engine`` whatever happens."""
    final = out_dir / ENGINE_DIR
    if final.exists():
        shutil.rmtree(final)
    if _ipc_fits(final / "state"):
        final.mkdir(parents=True)
        yield final
        return
    parent = SHORT_ROOT_PARENT if Path(SHORT_ROOT_PARENT).is_dir() else None
    root = Path(tempfile.mkdtemp(prefix="tbr-", dir=parent))
    try:
        yield root
    finally:
        shutil.move(str(root), str(final))


def _prepare(root: Path, db_url: str | None) -> tuple[str, dict[str, str]]:
    """Marker and settings files, state folders, migrated database; (database URL, environment)."""
    (root / SUPERVISORD_CONF).write_text(
        "; a replay installation: its processes are started by services.backtest.pipeline, not supervisord\n")
    db_line = "" if db_url is None else f"db_url = {_toml_string(db_url)}\n"
    (root / "tradebus.toml").write_text(f"[engine]\ndemo = false\n{db_line}")
    state = root / "state"
    for folder in (state, state / "logs", state / "journal"):
        folder.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    url = db_url or f"sqlite:///{state / 'tradebus.db'}"
    from schema.db import migrate

    migrate(url)
    env = {**os.environ, "TRADEBUS_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    for name in ("TRADEBUS_DB_URL", "TRADEBUS_SIM_TRACE_STREAMS"):
        env.pop(name, None)  # the installation's own settings decide
    return url, env


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _seed(url: str, plan: _Plan, spec: ReplaySpec, venue_url: str) -> None:
    from schema.errors import SessionExists
    from schema.store import Store

    store = Store.from_url(url)
    try:
        store.upsert_broker_account(ACCOUNT, "sim", {"base_url": venue_url, "timeout_s": HTTP_TIMEOUT_S})
        try:
            validate_session_name(plan.session)
            store.add_session(plan.session, strategy=spec.strategy, params=dict(spec.params),
                              symbol=canonical_root(plan.contract), contract=plan.contract, interval=plan.interval,
                              account=ACCOUNT, data_source=ACCOUNT, now_ns=time.time_ns())
        except SessionExists:
            raise ReplayError(f"the database already holds a session named {plan.session!r}: "
                              "a replay needs a fresh database") from None
    finally:
        store.close()


# ============================================================================ the processes


class _Processes:
    """The replay's processes, each in a session of its own (a terminal's Ctrl-C reaches only
    us), logging to ``state/logs/<name>.log``; ``stop`` ends every one of them, by pid."""

    def __init__(self, root: Path, env: Mapping[str, str]) -> None:
        self.root = root
        self.env = dict(env)
        self.logs = root / "state" / "logs"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[IO[bytes]] = []

    def start(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        out = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self._files.append(out)
        proc = subprocess.Popen(list(argv), cwd=self.root, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_tradebus(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        return self.start(name, [sys.executable, "-m", "services.cli", *args])

    def check(self) -> None:
        """Raise if any process has exited: nothing of a replay may stop on its own."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ReplayError(f"{name} exited with code {proc.returncode} during the replay\n{self.tail(name)}")

    def tail(self, name: str, lines: int = LOG_TAIL_LINES) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"--- {path}\n" + "\n".join(text.splitlines()[-lines:])

    def diagnostics(self) -> str:
        return "\n".join(self.tail(name) for name in self.procs)

    def stop(self) -> None:
        """SIGTERM in order — the session's processes, then the venue, then busd (so the others can
        still publish while stopping) — waiting for each group; SIGKILL whatever outlives it."""
        names = list(self.procs)
        groups = [[n for n in names if n not in ("venue-sim", "busd")], ["venue-sim"], ["busd"]]
        try:
            for group in groups:
                running = [self.procs[n] for n in group if n in self.procs and self.procs[n].poll() is None]
                for proc in running:
                    proc.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + STOP_TIMEOUT_S
                for proc in running:
                    try:
                        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(timeout=STOP_TIMEOUT_S)
        finally:
            for proc in self.procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=STOP_TIMEOUT_S)
            for out in self._files:
                out.close()


def _wait(what: str, predicate: Callable[[], Any], procs: _Processes, timeout: float) -> Any:
    """Poll ``predicate`` until truthy, failing at once if a process died, or at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        procs.check()
        if time.monotonic() > deadline:
            raise ReplayError(f"timed out after {timeout:g} s waiting for {what}\n{procs.diagnostics()}")
        time.sleep(POLL_S)


def _venue_url(state: Path, pid: int) -> str | None:
    import json

    try:
        ready = json.loads((state / VENUE_READY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return ready.get("url") if ready.get("pid") == pid else None


def _start_tree(procs: _Processes, plan: _Plan, spec: ReplaySpec, url: str) -> str:
    """busd and the venue, then the session's processes once the venue's address is stored;
    returns the venue's URL."""
    state = procs.root / "state"
    procs.start_tradebus("busd", "run", "busd")
    venue = procs.start("venue-sim", [
        sys.executable, "-m", "brokers.sim.server", "--port", "0", "--state-dir", str(state), "--lockstep",
        "--symbols", plan.contract, "--csv", f"{plan.contract}={plan.feed_csv}", "--interval", plan.interval,
        "--history", str(plan.history), "--accounts", ACCOUNT, "--slippage-ticks", str(spec.slippage_ticks)])
    venue_url = _wait("the venue simulator", lambda: _venue_url(state, venue.pid), procs, START_TIMEOUT_S)
    _wait("busd", lambda: state.joinpath(*BUSD_READY).exists(), procs, START_TIMEOUT_S)
    _seed(url, plan, spec, venue_url)
    return venue_url


def _start_session(procs: _Processes, session: str) -> None:
    for role in SESSION_ROLES:
        procs.start_tradebus(f"{session}-{role}", "run", role, "--session", session)


# ============================================================================ the coordinator


class _Coordinator:
    """Releases bars one at a time and waits for the strategy to finish each."""

    def __init__(self, state: Path, session: str, venue_url: str, procs: _Processes) -> None:
        self.session = session
        self.procs = procs
        self.bus = BusClient(Endpoints.for_state_dir(state), source="replay")
        self.http = httpx.Client(base_url=venue_url, timeout=HTTP_TIMEOUT_S)
        try:
            self.subscriber = self.bus.subscriber([topics.bar_processed(session)], lag_threshold_s=None)
            self.subscriber.wait_connected(self.bus.publisher(), timeout_s=SUBSCRIBE_TIMEOUT_S)
        except BusError as exc:
            self.close()
            raise ReplayError(f"cannot listen on the replay's bus: {exc}") from None
        self.orders_sent = 0

    def release(self, index: int) -> None:
        try:
            response = self.http.post("/v1/admin/release", json={"index": index})
        except httpx.HTTPError as exc:
            self.procs.check()
            raise ReplayError(f"the venue did not take the release of bar {index}: {exc}") from None
        if response.status_code != 200:
            raise ReplayError(f"the venue refused the release of bar {index}: {response.status_code} {response.text}")

    def wait_processed(self, index: int) -> m.BarProcessed:
        deadline = time.monotonic() + BAR_TIMEOUT_S
        while True:
            envelope = self.subscriber.recv(timeout_ms=RECV_SLICE_MS)
            if envelope is None:
                self.procs.check()
                if time.monotonic() > deadline:
                    raise ReplayError(f"bar {index} was released but not processed within {BAR_TIMEOUT_S:g} s\n"
                                      f"{self.procs.diagnostics()}")
                continue
            body = envelope.body
            if isinstance(body, m.BarProcessed) and body.session == self.session and body.index >= index:
                if not body.live:
                    raise ReplayError(f"bar {body.index} reached the strategy stale (it could not trade on it): "
                                      f"the replay would depend on machine speed\n{self.procs.diagnostics()}")
                self.orders_sent += body.orders_sent
                return body

    def venue_fills(self) -> int:
        response = self.http.get("/v1/admin/fills")
        response.raise_for_status()
        return sum(1 for fill in response.json()["fills"] if fill["account"] == ACCOUNT)

    def close(self) -> None:
        self.http.close()
        self.bus.close()


class _Progress:
    """A rich progress bar with the rate in bars per second, on stderr; silent when disabled."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self.enabled = enabled
        self.started = time.monotonic()
        self.done = 0
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[rate]} bars/s"), TimeElapsedColumn(),
                                     console=Console(stderr=True), transient=False)
            self.task = self.progress.add_task(label, total=total, rate="-")

    def __enter__(self) -> _Progress:
        if self.enabled:
            self.progress.start()
        self.started = time.monotonic()
        return self

    def advance(self) -> None:
        self.done += 1
        if self.enabled:
            elapsed = time.monotonic() - self.started
            rate = f"{self.done / elapsed:,.0f}" if elapsed > 0 else "-"
            self.progress.update(self.task, advance=1, rate=rate)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.stop()


def _lockstep(coordinator: _Coordinator, plan: _Plan, progress: bool) -> float:
    """Release every live bar in turn; the wall time it took."""
    started = time.monotonic()
    with _Progress(progress, len(plan.live_bars), f"replay {plan.contract} {plan.interval}") as bar:
        for index in range(plan.history, len(plan.bars)):
            coordinator.release(index)
            coordinator.wait_processed(index)
            bar.advance()
    return time.monotonic() - started


# ============================================================================ the run


def run_replay(spec: ReplaySpec, out_dir: Path, *, progress: bool = True) -> ReplayResult:
    """Replay ``spec`` through the real processes and write the report into ``out_dir``."""
    from schema.store import Store

    spec.check()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = _plan(spec, out_dir)
    with _installation(out_dir) as root:
        url, env = _prepare(root, spec.db_url)
        procs = _Processes(root, env)
        store = None
        try:
            venue_url = _start_tree(procs, plan, spec, url)
            store = Store.from_url(url)
            coordinator = _Coordinator(root / "state", plan.session, venue_url, procs)
            try:
                _start_session(procs, plan.session)
                _wait(f"session {plan.session} trading",
                      lambda: SessionState(store.get_session(plan.session).state) is SessionState.TRADING,
                      procs, START_TIMEOUT_S)
                elapsed = _lockstep(coordinator, plan, progress)
                _wait("the account to book every fill the venue made",
                      lambda: coordinator.venue_fills() == len(store.fills(plan.session)), procs, SETTLE_TIMEOUT_S)
            finally:
                coordinator.close()
        finally:
            procs.stop()
            if store is not None:
                store.close()
        store = Store.from_url(url)
        try:
            fills = [ExecFill(ts_ns=f.ts_ns, side=Side(f.side), quantity=f.quantity, price=f.price)
                     for f in store.fills(plan.session)]
            orders = [order_record(o) for o in store.orders(plan.session)]
        finally:
            store.close()
    return _report(spec, plan, out_dir, fills, orders, elapsed)


def _report(spec: ReplaySpec, plan: _Plan, out_dir: Path, fills: list[ExecFill], orders: list[OrderRecord],
            elapsed: float) -> ReplayResult:
    point_value = instrument(canonical_root(plan.contract)).point_value
    commission = spec.commission_per_contract
    closes = [(bar.ts_ns, bar.close) for bar in plan.live_bars]
    trades = round_trips(fills, point_value=point_value, commission_per_contract=commission)
    curve = equity_curve(closes, fills, point_value=point_value, commission_per_contract=commission)
    summary = summarize(trades, curve, bars=len(closes), exposure_bars=exposure_bars(closes, fills))
    summary["replay"] = {  # what was replayed; nothing of the run itself (times, paths), so runs compare
        "symbol": canonical_root(plan.contract), "strategy": spec.strategy,
        "params": {str(k): str(v) for k, v in sorted(dict(spec.params).items())},
        "interval": plan.interval, "commission_per_contract": str(commission),
        "slippage_ticks": spec.slippage_ticks, "orders": len(orders), "fills": len(fills),
        "source": "journal" if plan.recorded is not None else "csv",
    }
    write_report(out_dir, trades, curve, summary)
    check = None if plan.recorded is None else compare(plan.session, plan.recorded.orders, orders)
    return ReplayResult(out_dir=out_dir, session=plan.session, contract=plan.contract, interval=plan.interval,
                        bars=len(closes), orders=tuple(orders), fills=tuple(fills), trades=tuple(trades),
                        summary=summary, elapsed_s=elapsed, journal_check=check)


def render_result(result: ReplayResult) -> str:
    """The terminal's summary of a replay (the report's, plus speed and the journal check)."""
    lines = [f"replayed {result.bars} bars of {result.contract} ({result.interval}) in {result.elapsed_s:.1f} s "
             f"({result.bars_per_s:,.0f} bars/s): {len(result.orders)} orders, {len(result.fills)} fills",
             render_summary(result.summary),
             f"report in {result.out_dir}"]
    check = result.journal_check
    if check is not None:
        if check.matches:
            lines.append(f"journal check: the {len(check.replayed)} orders equal the {len(check.recorded)} "
                         f"recorded for session {check.session}")
        else:
            lines.append(f"journal check FAILED for session {check.session}:")
            lines.extend(f"  {line}" for line in check.differences())
    return "\n".join(lines)
