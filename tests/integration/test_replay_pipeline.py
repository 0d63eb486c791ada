"""``tradebus replay``: history through the real processes (busd, venue simulator in lockstep,
marketdata, account, strategy), checked against trades worked out by hand.

The CSV fixture (``tests/fixtures/replay/es_daily.csv``, 40 weekday bars of ES from 2025-01-02)
is built so that ``sma_cross`` with fast=2, slow=4 crosses exactly four times. Each bar opens 1.25
above the previous close, so a fill at the next bar's open is told apart from one at the close.

Closes: 5000 +10/bar to 5070 (bars 0-7), then −15/bar to 4950 (8-15), +20/bar to 5110 (16-23),
−20/bar to 4950 (24-31), +5/bar to 4990 (32-39). The crossings (mean of the last 2 closes against
the last 4, on this bar and on the one before):

* bar 9 (2025-01-15): fast 5062.50 > slow 5058.75 on bar 8, fast 5047.50 < slow 5056.25 now → sell 1;
  fills at bar 10's open (2025-01-16) 5041.25.
* bar 17 (2025-01-27): fast 4960 < slow 4966.25 on bar 16, fast 4980 > slow 4968.75 now → buy 2
  (close the short, open a long); fills at bar 18's open (2025-01-28) 4991.25.
* bar 25 (2025-02-06): fast 5100 > slow 5090 on bar 24, fast 5080 < slow 5090 now → sell 2;
  fills at bar 26's open (2025-02-07) 5071.25.
* bar 34 (2025-02-19): fast 4957.50 < slow 4958.75 on bar 33, fast 4962.50 > slow 4957.50 now → buy 2;
  fills at bar 35's open (2025-02-20) 4966.25. The long it opens is still open at the end.

ES is worth 50 USD a point; commission 2.50 per contract per fill, so 5.00 per one-lot round trip.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from services.backtest.pipeline import ReplayError, ReplayResult, ReplaySpec, run_replay
from services.backtest.report import Trade
from services.cli import main as cli

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
CSV = FIXTURES / "replay" / "es_daily.csv"
JOURNAL_DEMO = FIXTURES / "journal-demo"
PARAMS = {"fast": "2", "slow": "4", "qty": "1"}
COMMISSION = Decimal("2.5")
REPLAY_WALL_S = 30.0
"""Each replay (process start to report) must stay well under this on the shared 2-core machine."""


def day_ns(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()) * 10**9


D = Decimal
EXPECTED_TRADES = [
    # short 1 from 2025-01-16 @ 5041.25 to 2025-01-28 @ 4991.25: 50 points × 50 = 2500, less 5.00
    Trade(day_ns("2025-01-16"), day_ns("2025-01-28"), "short", D(1), D("5041.25"), D("4991.25"), D("2495"), D(5)),
    # long 1 from 2025-01-28 @ 4991.25 to 2025-02-07 @ 5071.25: 80 points × 50 = 4000, less 5.00
    Trade(day_ns("2025-01-28"), day_ns("2025-02-07"), "long", D(1), D("4991.25"), D("5071.25"), D("3995"), D(5)),
    # short 1 from 2025-02-07 @ 5071.25 to 2025-02-20 @ 4966.25: 105 points × 50 = 5250, less 5.00
    Trade(day_ns("2025-02-07"), day_ns("2025-02-20"), "short", D(1), D("5071.25"), D("4966.25"), D("5245"), D(5)),
]
EXPECTED_ORDERS = [("sell", D(1)), ("buy", D(2)), ("sell", D(2)), ("buy", D(2))]


def csv_spec(**over: object) -> ReplaySpec:
    fields: dict[str, object] = dict(symbol="ES", strategy="sma_cross", params=PARAMS, csv=CSV,
                                     commission_per_contract=COMMISSION)
    fields.update(over)
    return ReplaySpec(**fields)  # type: ignore[arg-type]


def replay(spec: ReplaySpec, out: Path) -> ReplayResult:
    result = run_replay(spec, out, progress=False)
    assert result.elapsed_s < REPLAY_WALL_S
    return result


@pytest.fixture(scope="module")
def sqlite_run(tmp_path_factory: pytest.TempPathFactory) -> ReplayResult:
    """One replay of the fixture on SQLite, shared by the tests that look at it."""
    return replay(csv_spec(), tmp_path_factory.mktemp("sqlite") / "out")


def test_replay_gives_the_trades_worked_out_by_hand(sqlite_run: ReplayResult) -> None:
    # Then: exactly the trades of the module docstring
    assert list(sqlite_run.trades) == EXPECTED_TRADES
    # And: the four orders went out as decided, and each filled at the open of the bar after its decision
    assert [(o.side, o.quantity, o.order_type) for o in sqlite_run.orders] == \
        [(side, qty, "market") for side, qty in EXPECTED_ORDERS]
    assert [(f.ts_ns, f.price) for f in sqlite_run.fills] == [
        (day_ns("2025-01-16"), D("5041.25")), (day_ns("2025-01-28"), D("4991.25")),
        (day_ns("2025-02-07"), D("5071.25")), (day_ns("2025-02-20"), D("4966.25"))]
    assert sqlite_run.bars == 40 and sqlite_run.interval == "1d"
    # And: trades.csv says the same, line by line
    rows = (sqlite_run.out_dir / "trades.csv").read_text().splitlines()
    assert rows[0].split(",")[:8] == ["entry_time", "exit_time", "side", "qty", "entry_price", "exit_price", "pnl",
                                      "commission"]
    parsed = [row.split(",") for row in rows[1:]]
    assert [(r[0][:10], r[1][:10], r[2], D(r[3]), D(r[4]), D(r[5]), D(r[6]), D(r[7])) for r in parsed] == [
        ("2025-01-16", "2025-01-28", "short", 1, D("5041.25"), D("4991.25"), 2495, 5),
        ("2025-01-28", "2025-02-07", "long", 1, D("4991.25"), D("5071.25"), 3995, 5),
        ("2025-02-07", "2025-02-20", "short", 1, D("5071.25"), D("4966.25"), 5245, 5),
    ]
    # And: the summary: 11735 closed, plus the open long from 4966.25 to the last close 4990 (23.75 × 50,
    # less its entry commission 2.50)
    summary = json.loads((sqlite_run.out_dir / "summary.json").read_text())
    assert (summary["trades"], D(summary["closed_pnl"]), D(summary["net_pnl"])) == (3, D(11735), D("12920"))
    assert (sqlite_run.out_dir / "equity.png").stat().st_size > 0


def test_the_same_replay_twice_gives_byte_identical_reports(sqlite_run: ReplayResult, tmp_path: Path) -> None:
    # When: the same CSV is replayed again
    again = replay(csv_spec(), tmp_path / "out")
    # Then: byte for byte the same trades and summary
    for name in ("trades.csv", "summary.json"):
        assert (again.out_dir / name).read_bytes() == (sqlite_run.out_dir / name).read_bytes(), name


def test_the_pipeline_agrees_with_the_in_process_core(sqlite_run: ReplayResult) -> None:
    core_run = pytest.importorskip("services.backtest.core_run")
    core = core_run.run_backtest(CSV, sqlite_run.contract, "sma_cross", PARAMS, None, interval="1d",
                                 commission_per_contract=COMMISSION)
    assert list(core.trades) == list(sqlite_run.trades)


@pytest.mark.postgres
def test_postgresql_gives_the_same_bytes_as_sqlite(sqlite_run: ReplayResult, pg_url: str, tmp_path: Path) -> None:
    # When: the same replay runs on a fresh PostgreSQL database
    on_pg = replay(csv_spec(db_url=pg_url), tmp_path / "out")
    # Then: the same trades, byte for byte
    for name in ("trades.csv", "summary.json"):
        assert (on_pg.out_dir / name).read_bytes() == (sqlite_run.out_dir / name).read_bytes(), name
    assert not (on_pg.out_dir / "engine" / "state" / "tradebus.db").exists()  # it really used PostgreSQL


def test_slippage_moves_market_fills_against_the_order(tmp_path: Path) -> None:
    # When: two ticks (0.50) of slippage
    result = replay(csv_spec(slippage_ticks=2), tmp_path / "out")
    # Then: sells fill 0.50 lower and buys 0.50 higher than the next bar's open
    assert [(f.side.value, f.price) for f in result.fills] == [
        ("sell", D("5040.75")), ("buy", D("4991.75")), ("sell", D("5070.75")), ("buy", D("4966.75"))]


def test_replaying_the_demo_journal_places_the_orders_the_live_run_placed(tmp_path: Path) -> None:
    # Given: the demo's recorded journal and the orders its es-sma session placed live
    recorded = json.loads((JOURNAL_DEMO / "orders.json").read_text())["sessions"]["es-sma"]
    # When: the journal is replayed through the processes
    result = replay(ReplaySpec(symbol="ES", strategy=recorded["strategy"], params=recorded["params"],
                               journal=JOURNAL_DEMO / "journal"), tmp_path / "out")
    # Then: the same orders, in order (the replay's database gave its session id 1, as the recording's did)
    assert result.session == "es-sma"
    assert [(o.client_order_id, o.signal, o.symbol, o.side, str(o.quantity), o.order_type) for o in result.orders] == \
        [(o["client_order_id"], o["signal"], o["symbol"], o["side"], o["quantity"], o["order_type"])
         for o in recorded["orders"]]
    # And: the replay's own check against the journal agrees
    check = result.journal_check
    assert check is not None and check.matches, check.differences()
    assert len(check.recorded) == len(recorded["orders"])
    # And: the fixture was only read
    assert sorted(p.name for p in (JOURNAL_DEMO / "journal").iterdir()) == ["journal-000000000001.seg"]


def test_cli_replays_a_csv_and_prints_the_summary(sqlite_run: ReplayResult, tmp_path: Path) -> None:
    out = tmp_path / "cli-out"
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli", "replay", "--csv", str(CSV), "--symbol", "ES", "--strategy",
         "sma_cross", "--param", "fast=2", "--param", "slow=4", "--param", "qty=1", "--commission", "2.5",
         "--out", str(out), "--no-progress"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "120"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "replayed 40 bars" in proc.stdout and "trades         3" in proc.stdout
    assert (out / "trades.csv").read_bytes() == (sqlite_run.out_dir / "trades.csv").read_bytes()


@pytest.mark.parametrize(("args", "message"), [
    (["--csv", str(CSV), "--journal", str(JOURNAL_DEMO / "journal")], "exactly one of --csv FILE and --journal DIR"),
    ([], "exactly one of --csv FILE and --journal DIR"),
    (["--csv", str(CSV), "--param", "fast"], "bad --param 'fast': expected key=value"),
    (["--csv", str(CSV), "--commission", "two"], "'two' is not an amount"),
    (["--csv", str(CSV), "--session", "es-sma"], "--session picks a recorded session"),
    (["--csv", str(CSV), "--slippage-ticks", "-1"], "--slippage-ticks"),
])
def test_cli_names_a_bad_argument(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["replay", "--symbol", "ES", "--strategy", "sma_cross", "--param", "slow=4",
                                      "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_cli_names_a_bad_strategy_parameter_before_starting_anything(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["replay", "--csv", str(CSV), "--symbol", "ES", "--strategy", "sma_cross",
                                      "--param", "fast=5", "--param", "slow=4", "--param", "qty=1",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "fast (5) must be smaller than slow (4)" in result.output
    assert not (tmp_path / "out" / "engine").exists()


def test_a_bad_csv_row_is_named_before_any_process_starts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("Date,Open,High,Low,Close\n2025-01-02,10,11,9,10\n2025-01-03,10,11,9,ten\n")
    with pytest.raises(ReplayError, match=r"bad.csv:3: Close is not a number"):
        run_replay(csv_spec(csv=bad), tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "engine").exists()
