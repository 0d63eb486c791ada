"""``tradebus chaos``: kill engine processes at random while both demo sessions trade, then check
that nothing was lost or doubled.

A run starts a whole tree (``services.tree.EngineTree``) in a temporary folder with bars every
50 ms, waits until both demo sessions have fills, turns on the simulator's faults and, for the
given duration, ``kill -9``s a random engine process (a session's account, strategy or marketdata;
a reconciler; busd) at random instants, all drawn from ``random.Random(seed)``. Then it clears the
faults, waits for every process to run again, stops the strategies (an administrative stop, so no
new orders and no group restart), lets the open orders resolve and reconciliation finish, and
checks the invariants against the venue's own records:

* no client order id reached the venue twice;
* every venue order is in the database, and a database order the venue never saw is ``rejected``;
* every venue fill is in the database exactly once, and the database has no other fill;
* per account and contract, the sessions' positions add up to the venue's position;
* every order row equals the fold of its events;
* every order's filled quantity equals the venue's;
* no order is left open (working or unresolved) once the run has settled.

``check_invariants`` is a pure function of two plain snapshots (``VenueTruth``, ``DbTruth``), so
each invariant is unit-tested on hand-made data; ``run_chaos`` is the imperative shell.
"""
from __future__ import annotations

import json
import random
import shutil
import signal
import sys
import tempfile
import time
import xmlrpc.client
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from schema.enums import TERMINAL_ORDER_STATUSES

if TYPE_CHECKING:
    from schema.store import Store
    from services.tree import EngineTree

# ---------------------------------------------------------------------------- tunables

PACE_S = 0.05
"""Wall seconds between bars: both sessions trade fast."""
RESTARTS = 100_000
"""sessionguard's restart intensity: high enough that it never gives a group up during a run."""
RECONCILE_INTERVAL_S = 0.5
RECONCILERS = 2
START_TIMEOUT_S = 90.0
FIRST_FILLS_TIMEOUT_S = 120.0
RECOVER_TIMEOUT_S = 120.0
"""After the storm: every process RUNNING again."""
SETTLE_TIMEOUT_S = 120.0
"""After the strategies stop: open orders resolved and the invariants holding."""
SETTLE_POLL_S = 1.0
KILL_INTERVAL_S = (0.5, 3.0)
DETAIL_LIMIT = 12
"""At most this many ids named in an invariant's detail (the count is always complete)."""
VENUE_PAGE = 1000

TERMINAL_STATUSES = frozenset(str(s) for s in TERMINAL_ORDER_STATUSES)

KILL_KINDS = ("account", "strategy", "marketdata", "reconciler", "busd")
SESSION_ROLES = ("marketdata", "account", "strategy")

FAULT_RULES: tuple[dict[str, Any], ...] = (
    {"call": "submit", "fault": "ack_lost", "probability": 0.05, "count": None, "delay_s": 8},
    {"call": "submit", "fault": "reset_before", "probability": 0.05, "count": None},
    {"call": "submit", "fault": "accept_then_500", "probability": 0.05, "count": None},
    {"call": "submit", "fault": "error_500", "probability": 0.05, "count": None},
    {"call": "fills", "fault": "duplicate_fill", "probability": 0.1, "count": None},
    {"call": "fills", "fault": "delay_fill", "probability": 0.1, "count": None, "delay_s": 1},
    {"call": "lookup", "fault": "error_500", "probability": 0.05, "count": None},
    {"call": "positions", "fault": "error_500", "probability": 0.05, "count": None},
)

console = Console(width=None if sys.stdout.isatty() else 200)


# ---------------------------------------------------------------------------- the two truths


@dataclass(frozen=True)
class OrderAtVenue:
    client_order_id: str
    account: str
    symbol: str
    status: str
    filled_quantity: Decimal


@dataclass(frozen=True)
class FillAtVenue:
    fill_id: str
    client_order_id: str
    account: str
    symbol: str
    quantity: Decimal


@dataclass(frozen=True)
class VenueTruth:
    """What the venue holds, read from its admin API once the run has settled."""

    submissions: Mapping[str, int]
    """Submit attempts per client order id (duplicates included)."""
    orders: Sequence[OrderAtVenue]
    fills: Sequence[FillAtVenue]
    """Each fill once, all accounts."""
    positions: Mapping[tuple[str, str], Decimal]
    """Net quantity per (account, contract); flat positions may be absent."""


@dataclass(frozen=True)
class OrderInDb:
    client_order_id: str
    session: str
    status: str
    filled_quantity: Decimal
    broker_order_id: str | None = None


@dataclass(frozen=True)
class FillInDb:
    broker_fill_id: str
    client_order_id: str | None
    session: str


@dataclass(frozen=True)
class PositionInDb:
    session: str
    account: str
    """The session's broker account: positions are compared per (account, contract)."""
    symbol: str
    quantity: Decimal


@dataclass(frozen=True)
class DbTruth:
    """What the database holds once the run has settled."""

    orders: Sequence[OrderInDb]
    fills: Sequence[FillInDb]
    positions: Sequence[PositionInDb]
    mismatches: Sequence[str]
    """``Store.verify_orders()``: each order whose row differs from the fold of its events."""
    repairs: Sequence[str] = ()
    """Positions the reconciler overwrote with the broker's number. Fills alone must explain every
    position; a repair would hide a fill booked twice or lost, so none may have been needed."""


# ---------------------------------------------------------------------------- the check (pure)


@dataclass(frozen=True)
class Invariant:
    name: str
    expected: int | str
    actual: int | str
    ok: bool
    detail: str = ""


def check_invariants(venue: VenueTruth, db: DbTruth) -> list[Invariant]:
    """Every invariant, in a fixed order, each saying what it expected and what it found."""
    return [
        _sent_at_most_once(venue),
        _venue_orders_in_db(venue, db),
        _unsent_orders_rejected(venue, db),
        _venue_fills_booked_once(venue, db),
        _db_fills_at_venue(venue, db),
        _positions_match(venue, db),
        _rows_equal_events(db),
        _filled_quantities_match(venue, db),
        _orders_resolved(db),
        _no_repairs(db),
    ]


def _no_repairs(db: DbTruth) -> Invariant:
    return Invariant("positions the reconciler had to repair", 0, len(db.repairs), not db.repairs,
                     _listing(db.repairs, len(db.repairs)))


def _sent_at_most_once(venue: VenueTruth) -> Invariant:
    worst = max(venue.submissions.values(), default=0)
    twice = sorted((cid for cid, n in venue.submissions.items() if n > 1), key=lambda c: -venue.submissions[c])
    return Invariant("max submissions per client order id", "≤ 1", worst, worst <= 1,
                     _listing((f"{cid}×{venue.submissions[cid]}" for cid in twice), len(twice)))


def _venue_orders_in_db(venue: VenueTruth, db: DbTruth) -> Invariant:
    known = {o.client_order_id for o in db.orders}
    missing = [o.client_order_id for o in venue.orders if o.client_order_id not in known]
    found = len(venue.orders) - len(missing)
    return Invariant("venue orders in the database", len(venue.orders), found, not missing,
                     _listing(missing, len(missing), "not in the database"))


def _unsent_orders_rejected(venue: VenueTruth, db: DbTruth) -> Invariant:
    at_venue = {o.client_order_id for o in venue.orders}
    wrong = [o for o in db.orders if o.client_order_id not in at_venue and o.status != "rejected"]
    return Invariant("orders never at the venue and not rejected", 0, len(wrong), not wrong,
                     _listing((f"{o.client_order_id} ({o.status})" for o in wrong), len(wrong)))


def _venue_fills_booked_once(venue: VenueTruth, db: DbTruth) -> Invariant:
    booked = Counter(f.broker_fill_id for f in db.fills)
    missing = [f.fill_id for f in venue.fills if booked[f.fill_id] == 0]
    doubled = [f.fill_id for f in venue.fills if booked[f.fill_id] > 1]
    once = len(venue.fills) - len(missing) - len(doubled)
    parts = [_listing(missing, len(missing), "not booked"),
             _listing((f"{fid}×{booked[fid]}" for fid in doubled), len(doubled), "booked more than once")]
    return Invariant("venue fills booked exactly once", len(venue.fills), once, not missing and not doubled,
                     "; ".join(p for p in parts if p))


def _db_fills_at_venue(venue: VenueTruth, db: DbTruth) -> Invariant:
    at_venue = {f.fill_id for f in venue.fills}
    unknown = [f"{f.broker_fill_id} ({f.session})" for f in db.fills if f.broker_fill_id not in at_venue]
    return Invariant("database fills the venue never made", 0, len(unknown), not unknown,
                     _listing(unknown, len(unknown)))


def _positions_match(venue: VenueTruth, db: DbTruth) -> Invariant:
    db_sum: dict[tuple[str, str], Decimal] = {}
    parts: dict[tuple[str, str], list[str]] = {}
    for p in db.positions:
        key = (p.account, p.symbol)
        db_sum[key] = db_sum.get(key, Decimal(0)) + p.quantity
        parts.setdefault(key, []).append(f"{p.session} {_num(p.quantity)}")
    keys = sorted(set(db_sum) | {k for k, q in venue.positions.items()})
    wrong = [k for k in keys if db_sum.get(k, Decimal(0)) != venue.positions.get(k, Decimal(0))]
    detail = _listing((f"{a} {s}: database {_num(db_sum.get((a, s), Decimal(0)))}"
                       f" ({', '.join(parts.get((a, s), [])) or 'no rows'}) venue {_num(venue.positions.get((a, s), Decimal(0)))}"
                       for a, s in wrong), len(wrong))
    return Invariant("positions equal to the venue's (account, contract)", len(keys), len(keys) - len(wrong),
                     not wrong, detail)


def _rows_equal_events(db: DbTruth) -> Invariant:
    return Invariant("order rows differing from their events", 0, len(db.mismatches), not db.mismatches,
                     _listing(db.mismatches, len(db.mismatches)))


def _filled_quantities_match(venue: VenueTruth, db: DbTruth) -> Invariant:
    rows = {o.client_order_id: o for o in db.orders}
    compared = [o for o in venue.orders if o.client_order_id in rows]
    wrong = [o for o in compared if rows[o.client_order_id].filled_quantity != o.filled_quantity]
    detail = _listing((f"{o.client_order_id}: database {_num(rows[o.client_order_id].filled_quantity)}"
                       f" ({rows[o.client_order_id].status}) venue {_num(o.filled_quantity)} ({o.status})"
                       for o in wrong), len(wrong))
    return Invariant("filled quantity equal to the venue's", len(compared), len(compared) - len(wrong),
                     not wrong, detail)


def _orders_resolved(db: DbTruth) -> Invariant:
    unresolved = [f"{o.client_order_id} ({o.status})" for o in db.orders if o.status not in TERMINAL_STATUSES]
    return Invariant("orders still open after settling", 0, len(unresolved), not unresolved,
                     _listing(unresolved, len(unresolved)))


def _listing(items: Iterable[str], count: int, what: str = "") -> str:
    if not count:
        return ""
    shown = []
    for item in items:
        if len(shown) == DETAIL_LIMIT:
            break
        shown.append(item)
    more = f" … and {count - len(shown)} more" if count > len(shown) else ""
    return f"{count} {what + ': ' if what else ''}{', '.join(shown)}{more}"


def _num(value: Decimal) -> str:
    return format(value.normalize(), "f") if value == value.to_integral_value() else str(value)


# ---------------------------------------------------------------------------- victims (pure)


def victim_kind(process: str) -> str | None:
    """The kind of engine process a supervisord name is (``None``: not a chaos victim)."""
    group, _, program = process.rpartition(":")
    if program == "busd" and not group:
        return "busd"
    if group == "reconciler" or program.startswith("reconciler_"):
        return "reconciler"
    if group.startswith("session-"):
        session = group.removeprefix("session-")
        for role in SESSION_ROLES:
            if program == f"{session}-{role}":
                return role
    return None


def choose_victim(rng: random.Random, running: Iterable[str]) -> str | None:
    """One running engine process, drawn from ``rng`` (sorted first, so a seed means the same)."""
    candidates = sorted(name for name in running if victim_kind(name) is not None)
    return rng.choice(candidates) if candidates else None


def faults_hit(body: Any) -> int | None:
    """How many faults fired, from ``GET /v1/admin/faults`` (``None``: the answer does not say)."""
    if not isinstance(body, Mapping):
        return None
    for key in ("hits", "fired", "hit"):
        if isinstance(body.get(key), int):
            return int(body[key])
    rules = body.get("rules")
    if not isinstance(rules, list):
        return None
    counts = [next((r[k] for k in ("hits", "fired", "hit") if isinstance(r.get(k), int)), None)
              for r in rules if isinstance(r, Mapping)]
    known = [c for c in counts if c is not None]
    return sum(known) if known else None


# ---------------------------------------------------------------------------- the report


@dataclass
class ChaosReport:
    seed: int
    duration_s: float
    invariants: list[Invariant] = field(default_factory=list)
    kills: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KILL_KINDS, 0))
    faults_enabled: bool = False
    faults_hit: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)
    """Each session's state at the end."""
    storm_s: float = 0.0
    settle_s: float = 0.0
    root: str | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.invariants) and all(i.ok for i in self.invariants)

    @property
    def kills_total(self) -> int:
        return sum(self.kills.values())

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "seed": self.seed, "duration_s": self.duration_s, "storm_s": round(self.storm_s, 1),
                "settle_s": round(self.settle_s, 1), "kills": dict(self.kills), "kills_total": self.kills_total,
                "faults_enabled": self.faults_enabled, "faults_hit": self.faults_hit, "counts": dict(self.counts),
                "sessions": dict(self.sessions), "invariants": [asdict(i) for i in self.invariants],
                "notes": list(self.notes), "error": self.error, "root": self.root}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


def print_report(report: ChaosReport, out: Console) -> None:
    table = Table(title=f"chaos seed {report.seed}: invariants", title_justify="left")
    for column in ("invariant", "expected", "actual", "ok"):
        table.add_column(column, overflow="fold")
    for inv in report.invariants:
        table.add_row(inv.name, str(inv.expected), str(inv.actual), "[green]ok[/]" if inv.ok else "[red]BROKEN[/]")
    out.print(table)
    for inv in report.invariants:
        if not inv.ok and inv.detail:
            out.print(f"[red]{inv.name}[/]: {inv.detail}", soft_wrap=True)
    run = Table(title="run", title_justify="left")
    run.add_column("count")
    run.add_column("value", overflow="fold")
    rows: list[tuple[str, Any]] = [("duration (s)", report.duration_s), ("storm (s)", f"{report.storm_s:.1f}"),
                                   ("settle (s)", f"{report.settle_s:.1f}")]
    rows += [(f"kills: {kind}", n) for kind, n in report.kills.items()]
    rows += [("kills: total", report.kills_total),
             ("faults hit", "off" if not report.faults_enabled else
              ("?" if report.faults_hit is None else report.faults_hit))]
    rows += list(report.counts.items())
    rows += [(f"session {name}", state) for name, state in report.sessions.items()]
    for name, value in rows:
        run.add_row(name, str(value))
    out.print(run)
    for note in report.notes:
        out.print(f"note: {note}", soft_wrap=True)
    if report.error:
        out.print(f"[red]error[/]: {report.error}", soft_wrap=True)
    out.print("[green]all invariants hold[/]" if report.ok else "[red]chaos run FAILED[/]")


# ---------------------------------------------------------------------------- reading the truths


def read_venue_truth(tree: EngineTree) -> VenueTruth:
    stats = tree.venue_json("/v1/admin/stats")
    accounts = [str(a) for a in stats.get("accounts", [])]
    orders = [OrderAtVenue(str(o["client_order_id"]), str(o["account"]), str(o["symbol"]), str(o["status"]),
                           Decimal(str(o["filled_quantity"])))
              for o in _venue_rows(tree, "orders", accounts)]
    fills = [FillAtVenue(str(f["fill_id"]), str(f["client_order_id"]), str(f["account"]), str(f["symbol"]),
                         Decimal(str(f["quantity"])))
             for f in _venue_rows(tree, "fills", accounts)]
    positions: dict[tuple[str, str], Decimal] = {}
    for p in _venue_rows(tree, "positions", accounts):
        key = (str(p["account"]), str(p["symbol"]))
        positions[key] = positions.get(key, Decimal(0)) + Decimal(str(p["quantity"]))
    return VenueTruth({str(k): int(v) for k, v in stats["submissions"].items()}, orders, fills, positions)


def _venue_rows(tree: EngineTree, what: str, accounts: Sequence[str]) -> list[dict[str, Any]]:
    """All accounts' ``what`` from ``/v1/admin/<what>``; on a simulator without it, account by
    account from the public endpoints (fills paged, each once)."""
    response = tree.venue(f"/v1/admin/{what}")
    if response.status_code != 404:
        response.raise_for_status()
        body = response.json()
        return list(body[what] if isinstance(body, Mapping) else body)
    rows: list[dict[str, Any]] = []
    for account in accounts:
        if what == "fills":
            after = 0
            while True:
                page = tree.venue_json("/v1/fills", {"account": account, "after_seq": str(after),
                                                     "limit": str(VENUE_PAGE)})
                if not page["fills"]:
                    break
                rows += page["fills"]
                after = int(page["last_seq"])
            continue
        params = {"account": account} if what == "positions" else {"account": account, "status": "all"}
        rows += [{"account": account, **row} for row in tree.venue_json(f"/v1/{what}", params)[what]]
    return rows


def read_db_truth(store: Store) -> DbTruth:
    from schema.store import position_aggregate

    accounts = {s.name: s.account for s in store.list_sessions()}
    orders = [OrderInDb(o.client_order_id, o.session, str(o.status), o.filled_quantity, o.broker_order_id)
              for o in store.orders()]
    fills = [FillInDb(f.broker_fill_id, f.client_order_id, f.session) for f in store.fills()]
    positions = [PositionInDb(p.session, accounts.get(p.session, f"<no session {p.session}>"), p.symbol, p.quantity)
                 for p in store.positions()]
    mismatches = [f"{m.client_order_id}.{m.field}: row {m.row!r} ≠ fold {m.folded!r}" for m in store.verify_orders()]
    repairs = [f"{p.session} {p.symbol}: {e.data.get('reason', 'set')}"
               for p in store.positions()
               for e in store.events(position_aggregate(p.session, p.symbol)) if e.kind == "set"]
    return DbTruth(orders, fills, positions, mismatches, repairs)


# ---------------------------------------------------------------------------- the run (imperative shell)


def run_chaos(*, duration_s: float, seed: int, root: Path | None = None, keep: bool = False,
              db_url: str | None = None, kill_interval: tuple[float, float] = KILL_INTERVAL_S,
              faults: bool = True, out: Console = console,
              settle_timeout_s: float = SETTLE_TIMEOUT_S) -> ChaosReport:
    """Run the storm and the check; the tree is stopped at the end unless ``keep``."""
    from services.tree import EngineTree

    if db_url:
        _refuse_used_database(db_url)
    report = ChaosReport(seed=seed, duration_s=duration_s)
    made_root = root is None
    root = Path(tempfile.mkdtemp(prefix=f"tradebus-chaos-{seed}-")) if root is None else Path(root)
    report.root = str(root)
    tree: EngineTree | None = None
    store: Store | None = None
    try:
        tree = EngineTree(root, pace=PACE_S, reconcilers=RECONCILERS, restarts=RESTARTS,
                          reconcile_interval_s=RECONCILE_INTERVAL_S, db_url=db_url, venue_seed=seed)
        out.print(f"chaos: seed {seed}, {duration_s:g} s, tree in {root}")
        tree.start(timeout=START_TIMEOUT_S)
        store = tree.store()
        _wait_for_trading(tree, store, out)
        report.faults_enabled = _enable_faults(tree, seed, out) if faults else False
        if not faults:
            report.notes.append("simulator faults off (--no-faults)")
        elif not report.faults_enabled:
            report.notes.append("the simulator has no faults API: ran without faults")
        _storm(tree, report, random.Random(seed), duration_s, kill_interval, out)
        _settle(tree, store, report, settle_timeout_s, out)
    except KeyboardInterrupt:
        report.error = "interrupted"
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the run is reported, never a traceback
        report.error = f"{type(exc).__name__}: {exc}"
    finally:
        if store is not None:
            store.close()
        if not report.ok and tree is not None:
            out.print("[red]chaos run failed[/]; the last lines of each log:")
            out.print(tree.diagnostics(), soft_wrap=True, markup=False, highlight=False)
        if keep:
            out.print(f"kept the tree running in {root} (logs in {root / 'state' / 'logs'}); "
                      f"stop it with: tradebus down --root {root}")
        else:
            if tree is not None:
                tree.stop()
            if made_root:
                shutil.rmtree(root, ignore_errors=True)
                report.root = None
    return report


def _refuse_used_database(db_url: str) -> None:
    from schema.store import Store

    try:
        with Store.from_url(db_url) as store:
            used = bool(store.list_sessions() or store.orders(limit=1))
    except Exception:  # noqa: BLE001 - no tables yet (or unreachable: the tree will say so)
        return
    if used:
        raise click.ClickException(f"{db_url.split('@')[-1]} already holds sessions or orders: "
                                   "chaos compares it with a fresh venue, so it needs an empty database")


def _wait_for_trading(tree: EngineTree, store: Store, out: Console) -> None:
    from services.tree import wait_until

    names = [s.name for s in store.list_sessions()]
    wait_until(lambda: names and all(store.fills(n) for n in names), timeout=FIRST_FILLS_TIMEOUT_S,
               what=f"fills in the database for every session ({', '.join(names)})", interval=0.5)
    out.print(f"chaos: sessions trading: {', '.join(names)}")


def _enable_faults(tree: EngineTree, seed: int, out: Console) -> bool:
    probe = tree.venue("/v1/admin/faults")
    if probe.status_code == 404:
        out.print("[yellow]chaos: the simulator has no /v1/admin/faults: running without faults[/]")
        return False
    probe.raise_for_status()
    response = tree.venue("/v1/admin/faults", method="POST", json={"seed": seed, "rules": list(FAULT_RULES)})
    response.raise_for_status()
    out.print(f"chaos: {len(FAULT_RULES)} fault rules on")
    return True


def _storm(tree: EngineTree, report: ChaosReport, rng: random.Random, duration_s: float,
           kill_interval: tuple[float, float], out: Console) -> None:
    started = time.monotonic()
    end = started + duration_s
    while True:
        # A random pause between kills is the point of the storm, not a wait for readiness.
        pause = rng.uniform(*kill_interval)
        if time.monotonic() + pause >= end:
            time.sleep(max(0.0, end - time.monotonic()))
            break
        time.sleep(pause)
        try:
            running = tree.pids()
        except (OSError, xmlrpc.client.Error) as exc:
            report.notes.append(f"supervisord did not answer at t={time.monotonic() - started:.1f}s: {exc}")
            continue
        victim = choose_victim(rng, running)
        if victim is None:
            continue
        pid = tree.kill(victim)
        if pid is None:
            continue
        kind = victim_kind(victim) or "?"
        report.kills[kind] = report.kills.get(kind, 0) + 1
        out.print(f"chaos: t={time.monotonic() - started:5.1f}s kill -9 {victim} (pid {pid})", highlight=False)
    report.storm_s = time.monotonic() - started


def _settle(tree: EngineTree, store: Store, report: ChaosReport, timeout_s: float, out: Console) -> None:
    started = time.monotonic()
    if report.faults_enabled:
        try:
            report.faults_hit = faults_hit(tree.venue_json("/v1/admin/faults"))
        finally:
            tree.venue("/v1/admin/faults", method="DELETE").raise_for_status()
        out.print(f"chaos: faults cleared ({'?' if report.faults_hit is None else report.faults_hit} hit)")
    from services.tree import TreeError

    try:
        tree.wait_running(timeout=RECOVER_TIMEOUT_S)
    except TreeError as exc:
        not_running = {n: i["statename"] for n, i in tree.processes().items() if i["statename"] != "RUNNING"}
        report.invariants.append(Invariant("processes not RUNNING after the storm", 0, len(not_running), False,
                                           f"{exc}: {not_running}"))
    strategies = [n for n in tree.processes() if victim_kind(n) == "strategy"]
    for name in strategies:
        _stop_quietly(tree, name)
    out.print(f"chaos: strategies stopped; waiting for open orders to resolve (≤ {timeout_s:g} s)")
    # Market orders fill at the next bar and bars keep coming, so open orders resolve; then the
    # reconcilers and the fill feed catch up. Poll until every invariant holds, or report as is.
    deadline = time.monotonic() + timeout_s
    invariants: list[Invariant] = []
    while True:
        for name, info in tree.processes().items():  # a late group restart would start one again
            if name in strategies and info["statename"] in ("RUNNING", "STARTING", "BACKOFF"):
                report.notes.append(f"{name} was started again after its stop; stopped it again")
                _stop_quietly(tree, name)
        try:
            invariants = check_invariants(read_venue_truth(tree), read_db_truth(store))
        except Exception as exc:  # noqa: BLE001 - a transient read failure: poll again
            note = f"settle read failed: {type(exc).__name__}: {exc}"
            if note not in report.notes:
                report.notes.append(note)
        if invariants and all(i.ok for i in invariants):
            break
        if time.monotonic() > deadline:
            invariants = check_invariants(read_venue_truth(tree), read_db_truth(store))
            break
        time.sleep(SETTLE_POLL_S)
    report.invariants += invariants
    report.settle_s = time.monotonic() - started
    venue, db = read_venue_truth(tree), read_db_truth(store)
    report.counts = {"sessions": len(store.list_sessions()), "venue submissions": sum(venue.submissions.values()),
                     "venue orders": len(venue.orders), "venue fills": len(venue.fills),
                     "database orders": len(db.orders), "database fills": len(db.fills)}
    by_status = Counter(o.status for o in db.orders)
    report.counts.update({f"database orders {status}": n for status, n in sorted(by_status.items())})
    report.sessions = {s.name: str(s.state) + (f" ({s.state_reason})" if s.state_reason else "")
                       for s in store.list_sessions()}


def _stop_quietly(tree: EngineTree, name: str) -> None:
    try:
        tree.stop_program(name)
    except xmlrpc.client.Fault as fault:
        if "NOT_RUNNING" not in fault.faultString:
            raise


# ---------------------------------------------------------------------------- the command


@click.command()
@click.option("--duration", "duration_s", type=click.FloatRange(min=1), default=60, show_default=True,
              metavar="SECONDS", help="How long the storm of kills and faults lasts.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seeds kill instants, victims and faults.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
@click.option("--keep", is_flag=True, help="Leave the tree running in its folder and print the folder.")
@click.option("--db-url", default=None, help="Run the tree on this (empty) database, e.g. PostgreSQL.")
@click.option("--no-faults", is_flag=True, help="Kill processes only; no simulator faults.")
def chaos(duration_s: float, seed: int, as_json: bool, keep: bool, db_url: str | None, no_faults: bool) -> None:
    """Kill engine processes at random while the demo sessions trade, then check that no order
    was sent twice and the database agrees with the venue. Exits 1 if an invariant is broken."""
    progress = Console(stderr=True) if as_json else console
    # SIGTERM tears the tree down like Ctrl-C does, instead of orphaning it
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run_chaos(duration_s=duration_s, seed=seed, keep=keep, db_url=db_url, faults=not no_faults,
                           out=progress)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if as_json:
        click.echo(report.to_json())
    else:
        print_report(report, console)
    sys.exit(0 if report.ok else 1)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


if __name__ == "__main__":
    chaos()
