"""Tick-to-trade benchmark: ``tradebus bench tick-to-trade`` (JSON on stdout).

The real process tree (``services.tree.EngineTree``: supervisord, busd with its journal, the venue
simulator, one session's marketdata/strategy/account, the shared services) runs one session with
the ``every_bar`` strategy on ES: one market order of 1 on every live bar, alternating buy and sell.
The simulator paces bars at ``--pace`` seconds. Once enough orders were accepted by the venue the
tree is stopped, and the run is measured *after the fact* from what the tree records anyway — no
engine hot path is timed or changed:

* the busd journal: every BarClosed (``send_ns`` stamped by marketdata as it publishes; busd's
  ``recv_ns``), every SubmitOrder request (``send_ns`` stamped by the strategy), every OrderUpdated
  (``send_ns`` stamped by the account right after the change was committed: ``pending_submit`` =
  the write-ahead row, ``submitted`` = the venue's answer recorded, ``accepted`` = the acknowledgement
  in the database);
* the simulator's log: ``bars_streamed`` (``written_ns``, the moment the bar is written to the HTTP
  stream, logged only when ``TRADEBUS_SIM_TRACE_STREAMS=1``, which this bench sets) and
  ``order_accepted`` (``received_ns`` at the start of ``POST /orders``, ``accepted_ns`` once the
  venue took the order).

All stamps are ``time.time_ns()`` on one machine, so they compare directly. Hops of one order:

=====================  ============================================================================
venue_to_marketdata    bar written to the stream → marketdata publishes BarClosed (HTTP chunk,
                       parse, conversion, publish)
marketdata_to_strategy BarClosed published → strategy sends SubmitOrder (busd forwarding, decide,
                       strategy state + outbox committed, request built)
strategy_to_account    SubmitOrder sent → account commits the write-ahead row (busd routing,
                       session/roll look-ups, ``pending_submit`` insert)
account_to_venue       write-ahead committed → venue receives POST /orders (risk and heat checks:
                       database reads, equity; HTTP request)
venue                  venue receives the request → venue accepted the order
venue_to_account       venue accepted → acknowledgement committed (HTTP response, ``submitted``
                       commit, ``accepted`` commit); split in ``ack_response_commit`` (→ submitted)
                       and ``ack_accept_commit`` (submitted → accepted)
total                  bar written to the stream → acknowledgement committed
=====================  ============================================================================

``bus_marketdata_to_busd`` (BarClosed send → busd receive) is reported as well: part of the second hop.

Which bar made which order: the strategy takes bars one at a time and sends one request per live
bar, so requests map to bars in order. The bar of request *j* is the ``j + offset``-th bar, and it
must precede the request in the journal, so ``offset <= bars before request j - 1 - j`` for every
*j*; a request sent while no other bar was waiting makes that an equality. The offset is therefore
the smallest such figure over the measured orders (start-up bars that made no order are in it).
``max_queue_bars`` is the largest excess over it: how many bars at most were waiting for the
strategy. This assumes no bar after the warm-up went without an order, which happens only when the
strategy is more than 2 s behind (``lagging``) or mends a gap (``resynced``): the strategy's log
lines of those kinds are counted in ``strategy_lag_events`` and should be 0. The first ``warmup``
orders (start-up, catch-up) are dropped. ``queued_orders`` counts orders whose bar was published
before the previous order's acknowledgement: their time includes waiting behind that order. A pace
the tree cannot sustain shows as a growing ``max_queue_bars`` and ``orders_per_s`` below 1/pace.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from services.bench import bench, latency_stats_us, machine_info

SESSION = "ttt"
SYMBOL_ROOT = "ES"
QTY = 1
DEFAULT_ORDERS = 10_000
DEFAULT_PACE_S = 0.05
"""One bar (and one order) every 50 ms: on the shared 2-core machine it was measured on, 20 ms
already queued bars behind the strategy on SQLite (see bench/README.md)."""
DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://tradebus:tradebus@127.0.0.1:5432/postgres"
PG_URL_ENV = "TRADEBUS_BENCH_PG_URL"
TRACE_ENV = "TRADEBUS_SIM_TRACE_STREAMS"  # brokers.sim.server.TRACE_STREAMS_ENV
WARMUP_MAX = 200
PROGRESS_POLL_S = 1.0
STALL_TIMEOUT_S = 60.0
"""No new order accepted by the venue for this long: the run failed (diagnostics in the error)."""
KEPT_PACE_RATIO = 0.95
RECONCILE_INTERVAL_S = 5.0  # the product default (services.config)

# Targets from the issue (PostgreSQL, idle 2-core machine).
TARGET_PG_P50_US = 2_000.0
TARGET_PG_P99_US = 10_000.0

HOPS = ("venue_to_marketdata", "marketdata_to_strategy", "strategy_to_account", "account_to_venue", "venue",
        "venue_to_account")
DETAIL = ("bus_marketdata_to_busd", "ack_response_commit", "ack_accept_commit")


class BenchError(RuntimeError):
    """The tree did not produce a measurable run."""


# ============================================================================ collecting


@dataclass
class OrderTimes:
    signal: int
    request_seq: int
    request_send_ns: int
    client_order_id: str | None = None
    pending_ns: int | None = None
    submitted_ns: int | None = None
    accepted_ns: int | None = None


@dataclass
class BarTimes:
    index: int
    seq: int
    send_ns: int
    recv_ns: int


@dataclass
class RunRecords:
    bars: list[BarTimes] = field(default_factory=list)
    orders: list[OrderTimes] = field(default_factory=list)
    streamed_ns: dict[int, int] = field(default_factory=dict)  # bar index → written to the stream
    venue_ns: dict[str, tuple[int, int]] = field(default_factory=dict)  # cid → (received, accepted)
    symbol: str | None = None
    lag_events: int = 0  # strategy log lines saying a bar may have gone without an order


def _log_lines(logs: Path, name: str) -> Iterator[dict[str, Any]]:
    """JSON lines of ``name``.log and its rotated copies, oldest first."""
    paths = sorted(logs.glob(f"{name}.log.*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    for path in [*paths, logs / f"{name}.log"]:
        if not path.exists():
            continue
        with open(path, errors="replace") as f:
            for line in f:
                if line.startswith("{"):
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        continue


def read_records(state: Path) -> RunRecords:
    """Everything the measurement needs, from the journal and the simulator's log."""
    from bus import topics
    from bus.journal import JournalReader
    from schema import messages as m

    out = RunRecords()
    order_topic, account_service = topics.order(SESSION), topics.account_service(SESSION)
    by_signal: dict[int, OrderTimes] = {}
    by_cid: dict[str, OrderTimes] = {}
    bar_records = []
    for record in JournalReader(state / "journal", save_index=False).records(kinds=("pub", "req")):
        if record.kind == "req":
            if record.topic != account_service:
                continue
            envelope = record.envelope()
            body = envelope.body
            if isinstance(body, m.SubmitOrder) and body.signal not in by_signal:  # first try of a signal
                out.symbol = out.symbol or body.symbol
                by_signal[body.signal] = OrderTimes(body.signal, record.seq, envelope.send_ns)
                out.orders.append(by_signal[body.signal])
        elif record.topic == order_topic:
            envelope = record.envelope()
            body = envelope.body
            if not isinstance(body, m.OrderUpdated):
                continue
            order = by_cid.get(body.client_order_id) or by_signal.get(body.signal)
            if order is None:
                continue
            order.client_order_id = body.client_order_id
            by_cid[body.client_order_id] = order
            if body.status == "pending_submit" and order.pending_ns is None:
                order.pending_ns = envelope.send_ns
            elif body.status == "submitted" and order.submitted_ns is None:
                order.submitted_ns = envelope.send_ns
            elif body.status == "accepted" and order.accepted_ns is None:
                order.accepted_ns = envelope.send_ns
        elif record.topic.startswith("md.") and ".bar." in record.topic:
            bar_records.append(record)
    if out.symbol is None:
        return out
    bar_topic = topics.bar(out.symbol, "1m")
    seen: set[int] = set()
    for record in bar_records:
        if record.topic != bar_topic:
            continue
        envelope = record.envelope()
        if isinstance(envelope.body, m.BarClosed) and envelope.body.index not in seen:
            seen.add(envelope.body.index)
            out.bars.append(BarTimes(envelope.body.index, record.seq, envelope.send_ns, record.recv_ns))
    for line in _log_lines(state / "logs", "venue-sim"):
        action = line.get("action")
        if action == "bars_streamed" and line.get("symbol") == out.symbol:
            for index in range(int(line["first_index"]), int(line["last_index"]) + 1):
                out.streamed_ns.setdefault(index, int(line["written_ns"]))
        elif action == "order_accepted" and "accepted_ns" in line:
            out.venue_ns[str(line["client_order_id"])] = (int(line["received_ns"]), int(line["accepted_ns"]))
    out.lag_events = sum(1 for line in _log_lines(state / "logs", f"{SESSION}-strategy")
                         if line.get("action") in ("lagging", "resynced", "gap"))
    return out


def match_bars(bars: list[BarTimes], orders: list[OrderTimes], *, skip: int = 0) -> tuple[list[BarTimes | None], int]:
    """The bar each request answered (see the module docstring), or None when none can be; and the
    largest number of bars that were waiting. The offset is pinned by requests ``skip`` on."""
    bar_seqs = [b.seq for b in bars]
    slack, k = [], 0
    for j, order in enumerate(orders):  # both in journal order
        while k < len(bar_seqs) and bar_seqs[k] < order.request_seq:
            k += 1
        slack.append(k - 1 - j)
    pinning = slack[skip:] or slack
    if not pinning:
        return [], 0
    offset = min(pinning)
    matched = [bars[j + offset] if 0 <= j + offset < len(bars) else None for j in range(len(orders))]
    return matched, max(pinning) - offset


# ============================================================================ measuring


def hop_stats(values_ns: list[int]) -> dict[str, float]:
    return {"n": len(values_ns), **latency_stats_us(values_ns)} if values_ns else {"n": 0}


def measure(records: RunRecords, *, warmup: int) -> dict[str, Any]:
    matched, max_queue = match_bars(records.bars, records.orders, skip=warmup)
    samples: dict[str, list[int]] = {name: [] for name in (*HOPS, *DETAIL, "total")}
    incomplete = queued = 0
    previous_ack: int | None = None
    for i, (order, bar) in enumerate(zip(records.orders, matched)):
        venue = records.venue_ns.get(order.client_order_id or "")
        written = records.streamed_ns.get(bar.index) if bar is not None else None
        stamps = (written, order.pending_ns, order.submitted_ns, order.accepted_ns, venue)
        if i < warmup:
            previous_ack = order.accepted_ns
            continue
        if bar is None or any(s is None for s in stamps):
            incomplete += 1
            previous_ack = order.accepted_ns
            continue
        assert written is not None and venue is not None and order.pending_ns is not None
        assert order.submitted_ns is not None and order.accepted_ns is not None
        received, accepted_at_venue = venue
        if previous_ack is not None and bar.send_ns < previous_ack:
            queued += 1
        previous_ack = order.accepted_ns
        samples["venue_to_marketdata"].append(bar.send_ns - written)
        samples["marketdata_to_strategy"].append(order.request_send_ns - bar.send_ns)
        samples["strategy_to_account"].append(order.pending_ns - order.request_send_ns)
        samples["account_to_venue"].append(received - order.pending_ns)
        samples["venue"].append(accepted_at_venue - received)
        samples["venue_to_account"].append(order.accepted_ns - accepted_at_venue)
        samples["bus_marketdata_to_busd"].append(bar.recv_ns - bar.send_ns)
        samples["ack_response_commit"].append(order.submitted_ns - accepted_at_venue)
        samples["ack_accept_commit"].append(order.accepted_ns - order.submitted_ns)
        samples["total"].append(order.accepted_ns - written)
    measured = len(samples["total"])
    hops = {name: hop_stats(samples[name]) for name in HOPS}
    total = hop_stats(samples["total"])
    mean_total = sum(samples["total"]) / measured if measured else 0
    share = {name: round(100 * sum(samples[name]) / measured / mean_total, 1) if mean_total else None
             for name in HOPS}
    return {
        "orders_seen": len(records.orders),
        "warmup_orders": min(warmup, len(records.orders)),
        "orders_measured": measured,
        "incomplete_orders": incomplete,
        "queued_orders": queued,
        "max_queue_bars": max_queue,
        "strategy_lag_events": records.lag_events,
        "bars_on_bus": len(records.bars),
        "total": total,
        "hops": hops,
        "mean_share_pct": share,
        "detail": {name: hop_stats(samples[name]) for name in DETAIL},
    }


# ============================================================================ running


class _AcceptCounter:
    """Counts ``order_accepted`` lines in the simulator's log as it grows (no load on the engine)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.count = 0
        self.partial = b""

    def poll(self) -> int:
        if not self.path.exists():
            return self.count
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = self.partial + f.read()
        self.offset += len(data) - len(self.partial)
        lines = data.split(b"\n")
        self.partial = lines.pop()
        self.count += sum(1 for line in lines if b'"order_accepted"' in line)
        return self.count


def _trade(tree: Any, db: str, wanted: int, progress: Any) -> float:
    """Start the tree, wait until the venue accepted ``wanted`` orders, stop it (always); the
    seconds from the first accepted order to the last."""
    from services.tree import TreeError

    started = time.monotonic()
    try:
        tree.tradebus("init")
        tree.tradebus("sessions", "add", SESSION, "--strategy", "every_bar", "--symbol", SYMBOL_ROOT,
                      "--param", f"qty={QTY}")
        tree.start()
        counter = _AcceptCounter(tree.state / "logs" / "venue-sim.log")
        last, last_change = 0, time.monotonic()
        trading_from = None
        while (count := counter.poll()) < wanted:
            now = time.monotonic()
            if count != last:
                if trading_from is None:
                    trading_from = now
                last, last_change = count, now
                if progress is not None:
                    progress(db, count, wanted)
            elif now - last_change > STALL_TIMEOUT_S:
                raise BenchError(f"{db}: no order accepted for {STALL_TIMEOUT_S:g} s ({count}/{wanted});\n"
                                 + tree.diagnostics())
            time.sleep(PROGRESS_POLL_S)
        return time.monotonic() - (trading_from or started)
    except TreeError as exc:
        raise BenchError(f"{db}: {exc}\n{tree.diagnostics()}") from exc
    finally:
        tree.stop()


def run_one(db: str, *, orders: int, pace: float, warmup: int, pg_admin_url: str, keep: bool = False,
            progress: Any = None) -> dict[str, Any]:
    """One tree on ``db`` ("sqlite" or "postgres") until ``warmup + orders`` orders were accepted."""
    from services.tree import EngineTree

    root = Path(tempfile.mkdtemp(prefix=f"tradebus-ttt-{db}-"))
    from services.bench_engine import BenchDatabases  # (here: bench_engine imports services.bench)

    databases = BenchDatabases(pg_admin_url) if db == "postgres" else None
    db_url = databases.create("ttt") if databases is not None else None
    try:
        tree = EngineTree(root, pace=pace, reconcile_interval_s=RECONCILE_INTERVAL_S, db_url=db_url)
        toml = root / "tradebus.toml"
        toml.write_text(toml.read_text().replace("[engine]\n", "[engine]\ndemo = false\n", 1))
        tree.env[TRACE_ENV] = "1"
        trading_s = _trade(tree, db, warmup + orders, progress)
        result = measure(read_records(tree.state), warmup=warmup)
    finally:
        if databases is not None:
            databases.close()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    result.update({"db": db, "pace_s": pace, "trading_s": round(trading_s, 1),
                   "orders_per_s": round(result["orders_seen"] / trading_s, 1) if trading_s else None,
                   # fewer orders per second than bars: bars waited for the strategy, and the
                   # figures include that wait (see max_queue_bars)
                   "kept_pace": bool(trading_s) and result["orders_seen"] / trading_s >= KEPT_PACE_RATIO / pace,
                   "root": str(root) if keep else None})
    if result["orders_measured"] == 0:
        raise BenchError(f"{db}: no order could be measured: {json.dumps(result)}")
    return result


def run_tick_to_trade(dbs: tuple[str, ...], *, orders: int, pace: float, warmup: int | None,
                      pg_admin_url: str, keep: bool = False, progress: Any = None) -> dict[str, Any]:
    warm = warmup if warmup is not None else min(WARMUP_MAX, max(5, orders // 10))
    doc: dict[str, Any] = {"bench": "tick-to-trade", "machine": machine_info(), "orders": orders,
                           "warmup_orders": warm, "pace_s": pace, "session": SESSION,
                           "strategy": "every_bar", "symbol": SYMBOL_ROOT, "results": {}, "targets": {}}
    for db in dbs:
        doc["results"][db] = run_one(db, orders=orders, pace=pace, warmup=warm, pg_admin_url=pg_admin_url,
                                     keep=keep, progress=progress)
    if "postgres" in doc["results"]:
        total = doc["results"]["postgres"]["total"]
        doc["targets"] = {
            "postgres_p50_us": {"target": TARGET_PG_P50_US, "measured": total["p50_us"],
                                "met": total["p50_us"] <= TARGET_PG_P50_US},
            "postgres_p99_us": {"target": TARGET_PG_P99_US, "measured": total["p99_us"],
                                "met": total["p99_us"] <= TARGET_PG_P99_US},
        }
    return doc


# ============================================================================ the command


@bench.command("tick-to-trade")
@click.option("--orders", type=click.IntRange(min=1), default=DEFAULT_ORDERS, show_default=True,
              help="Orders measured per database (after the warm-up).")
@click.option("--db", "db", type=click.Choice(["sqlite", "postgres", "both"]), default="both", show_default=True)
@click.option("--pace", type=click.FloatRange(min=0.001), default=DEFAULT_PACE_S, show_default=True,
              help="Simulator seconds between bars (one order per bar).")
@click.option("--warmup", type=click.IntRange(min=0), default=None,
              help=f"Orders dropped at the start [default: orders/10, 5..{WARMUP_MAX}].")
@click.option("--pg-url", default=lambda: os.environ.get(PG_URL_ENV, DEFAULT_PG_ADMIN_URL),
              help=f"PostgreSQL admin URL; a fresh database is created and dropped [env {PG_URL_ENV}].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the JSON document to this file.")
@click.option("--keep", is_flag=True, help="Keep each run's root folder (journal, logs) and print where.")
def bench_tick_to_trade(orders: int, db: str, pace: float, warmup: int | None, pg_url: str, out: Path | None,
                        keep: bool) -> None:
    """Bar written by the venue simulator → order acknowledgement committed, per hop, on the real tree."""
    dbs = ("sqlite", "postgres") if db == "both" else (db,)

    said: dict[str, int] = {}

    def progress(name: str, count: int, wanted: int) -> None:
        if count // 1000 > said.get(name, 0):  # about every thousand orders, on stderr
            said[name] = count // 1000
            click.echo(f"{name}: {count}/{wanted} orders", err=True)

    try:
        doc = run_tick_to_trade(dbs, orders=orders, pace=pace, warmup=warmup, pg_admin_url=pg_url, keep=keep,
                                progress=progress)
    except BenchError as exc:
        raise click.ClickException(str(exc)) from None
    text = json.dumps(doc, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    click.echo(text)
