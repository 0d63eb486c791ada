"""The ``tradebus`` command: operating an installation, and the entry point supervisord runs.

Every command names what went wrong in plain words (a bad argument, a missing state folder,
supervisord not running) and exits non-zero; none prints a stack trace for an operator's mistake.
"""
from __future__ import annotations

import json
import os
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from services.config import ConfigError, Config, find_root, load_config

DOWN_TIMEOUT_S = 60.0
POLL_S = 0.2

console = Console(width=None if sys.stdout.isatty() else 200)


def _config(root: str | None) -> Config:
    try:
        return load_config(find_root(root))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _store(config: Config):
    from schema.store import Store

    if not config.paths.state.is_dir():
        raise click.ClickException(f"no state folder at {config.paths.state}: run `tradebus init` first")
    return Store.from_url(config.db_url)


def _now_ns() -> int:
    return time.time_ns()


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "value"):
        return value.value
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


root_option = click.option("--root", envvar="TRADEBUS_ROOT", default=None,
                           help="Installation folder holding supervisord.conf (default: current folder).")


class _Commands(click.Group):
    """Tool commands (benchmarks, chaos, journal) are imported only when asked for: every engine
    process starts through this module, and should not pay for them."""

    LAZY = {"bench": "services.bench", "chaos": "services.chaos", "journal": "services.journal_cli",
            "keys": "services.keys_cli", "replay": "services.backtest.replay_cli"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.LAZY))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.LAZY:
            import importlib

            return getattr(importlib.import_module(self.LAZY[name]), name)
        return super().get_command(ctx, name)


@click.group(cls=_Commands)
def main() -> None:
    """tradebus: a live trading engine on a ZeroMQ bus, supervised by supervisord."""


# ---------------------------------------------------------------------------- init / up / down


def initialise(config: Config) -> list[str]:
    from schema.db import migrate
    from services.tokens.crypto import load_or_create_key
    from services import supervisor
    from services.sessions import seed_demo

    for folder in (config.paths.state, config.paths.logs, config.paths.journal, config.paths.groups):
        folder.mkdir(parents=True, exist_ok=True)
    config.paths.state.chmod(0o700)
    load_or_create_key(config.paths.state)
    migrate(config.db_url)
    store = _store(config)
    try:
        added = seed_demo(store, config, _now_ns())
        supervisor.write_shared(config)
        for session in store.list_sessions():
            supervisor.write_session_group(config, session.name)
    finally:
        store.close()
    return added


@main.command()
@root_option
def init(root: str | None) -> None:
    """Create the state folder and database (migrations), and the demo sessions on a fresh one."""
    config = _config(root)
    added = initialise(config)
    console.print(f"initialised {config.paths.state}" + (f"; demo sessions: {', '.join(added)}" if added else ""))


@main.command()
@root_option
def up(root: str | None) -> None:
    """Initialise if needed, then run supervisord in the foreground (Ctrl-C stops everything)."""
    from services import supervisor

    config = _config(root)
    if supervisor.is_running(config):
        raise click.ClickException(f"tradebus is already running under {config.paths.root}")
    initialise(config)
    env = dict(os.environ)
    bin_dir = str(Path(supervisor.tradebus_bin()).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["TRADEBUS_ROOT"] = str(config.paths.root)
    exe = Path(bin_dir) / "supervisord"
    argv = [str(exe) if exe.exists() else "supervisord", "-n", "-c", str(config.paths.supervisord_conf)]
    console.print(f"starting supervisord for {config.paths.root} (Ctrl-C to stop)")
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)


@main.command()
@root_option
def down(root: str | None) -> None:
    """Stop every process and supervisord itself, in order."""
    from services import supervisor

    config = _config(root)
    if not supervisor.is_running(config):
        console.print("tradebus is not running")
        return
    supervisor.rpc(config).supervisor.shutdown()
    deadline = time.monotonic() + DOWN_TIMEOUT_S
    while supervisor.is_running(config):
        if time.monotonic() > deadline:
            raise click.ClickException("supervisord did not stop within the timeout")
        time.sleep(POLL_S)
    console.print("stopped")


# ---------------------------------------------------------------------------- status / orders / positions


def _order_row(order: Any) -> dict[str, Any]:
    return {
        "client_order_id": order.client_order_id,
        "session": order.session,
        "symbol": order.symbol,
        "side": str(order.side),
        "type": str(order.order_type),
        "quantity": order.quantity,
        "filled": order.filled_quantity,
        "avg_price": order.average_price,
        "status": str(order.status),
        "broker_order_id": order.broker_order_id,
        "reason": order.reason,
    }


def _position_row(position: Any) -> dict[str, Any]:
    return {"session": position.session, "symbol": position.symbol, "quantity": position.quantity,
            "avg_price": position.average_price}


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")  # ids are never cut short
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    return table


def _emit(rows: list[dict[str, Any]], as_json: bool, title: str, columns: list[str]) -> None:
    """Rows as one JSON document, or as a table of the given columns."""
    if as_json:
        click.echo(json.dumps(rows, default=_json_default, indent=2))
    else:
        console.print(_table(title, rows, columns))


@main.command()
@root_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
def status(root: str | None, as_json: bool) -> None:
    """Processes, sessions with their state, positions and open orders."""
    from services import supervisor

    config = _config(root)
    procs: list[dict[str, Any]] = []
    running = supervisor.is_running(config)
    if running:
        procs = [{"name": f"{p['group']}:{p['name']}" if p["group"] != p["name"] else p["name"],
                  "state": p["statename"], "pid": p["pid"], "description": p["description"]}
                 for p in supervisor.processes(config)]
    store = _store(config)
    try:
        sessions = [{"name": s.name, "state": str(s.state), "heat": str(s.heat_state), "reason": s.state_reason,
                     "strategy": s.strategy,
                     "contract": s.contract, "account": s.account, "data_source": s.data_source}
                    for s in store.list_sessions()]
        positions = [_position_row(p) for p in store.positions()]
        orders = [_order_row(o) for s in sessions for o in store.open_orders(s["name"])]
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({"supervisord": "running" if running else "stopped", "processes": procs,
                               "sessions": sessions, "positions": positions, "open_orders": orders},
                              default=_json_default, indent=2))
        return
    console.print(f"supervisord: {'running' if running else 'stopped'} ({config.paths.root})")
    if procs:
        console.print(_table("Processes", procs, ["name", "state", "pid", "description"]))
    console.print(_table("Sessions", sessions, ["name", "state", "heat", "reason", "strategy", "contract",
                                                "account"]))
    console.print(_table("Positions", positions, ["session", "symbol", "quantity", "avg_price"]))
    console.print(_table("Open orders", orders, ["client_order_id", "symbol", "side", "quantity", "filled",
                                                 "status"]))


@main.group(invoke_without_command=True)
@root_option
@click.option("--session", default=None, help="Only this session.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def orders(ctx: click.Context, root: str | None, session: str | None, limit: int, as_json: bool) -> None:
    """Recent orders, newest first (`orders verify` checks them against their events)."""
    if ctx.invoked_subcommand is not None:
        return
    config = _config(root)
    store = _store(config)
    try:
        rows = [_order_row(o) for o in store.orders(session, limit=limit)]
    finally:
        store.close()
    _emit(rows, as_json, "Orders", ["client_order_id", "session", "symbol", "side", "type", "quantity",
                                              "filled", "avg_price", "status", "reason"])


@orders.command("verify")
@root_option
@click.option("--session", default=None, help="Only this session.")
@click.option("--json", "as_json", is_flag=True)
def orders_verify(root: str | None, session: str | None, as_json: bool) -> None:
    """Fold every order's events and compare with its row; exit 1 on any mismatch."""
    config = _config(root)
    store = _store(config)
    try:
        checked = len(store.orders(session))
        mismatches = store.verify_orders(session)
    finally:
        store.close()
    rows = [{"client_order_id": m.client_order_id, "field": m.field, "row": str(m.row), "folded": str(m.folded)}
            for m in mismatches]
    if as_json:
        click.echo(json.dumps({"checked": checked, "mismatches": rows}, indent=2))
    else:
        console.print(f"{checked} order(s) checked, {len(rows)} mismatch(es)")
        if rows:
            console.print(_table("Orders whose row differs from the fold of their events", rows,
                                 ["client_order_id", "field", "row", "folded"]))
    if rows:
        sys.exit(1)


@main.command()
@root_option
@click.option("--json", "as_json", is_flag=True)
def positions(root: str | None, as_json: bool) -> None:
    """Positions per session and contract, as the database holds them."""
    config = _config(root)
    store = _store(config)
    try:
        rows = [_position_row(p) for p in store.positions()]
    finally:
        store.close()
    _emit(rows, as_json, "Positions", ["session", "symbol", "quantity", "avg_price"])


# ---------------------------------------------------------------------------- sessions


@main.group()
def sessions() -> None:
    """Add, list and remove trading sessions."""


@sessions.command("list")
@root_option
@click.option("--json", "as_json", is_flag=True)
def sessions_list(root: str | None, as_json: bool) -> None:
    config = _config(root)
    store = _store(config)
    try:
        rows = [{"name": s.name, "state": str(s.state), "strategy": s.strategy, "params": dict(s.params),
                 "contract": s.contract, "account": s.account, "data_source": s.data_source}
                for s in store.list_sessions()]
    finally:
        store.close()
    _emit(rows, as_json, "Sessions", ["name", "state", "strategy", "params", "contract", "account"])


@sessions.command("add")
@root_option
@click.argument("name")
@click.option("--strategy", required=True, help="Strategy name, e.g. sma_cross.")
@click.option("--symbol", required=True, help="Canonical symbol, e.g. ES, 6E, NQ, CL, GC.")
@click.option("--param", "params", multiple=True, help="Strategy parameter key=value (repeatable).")
@click.option("--account", default="SIM1", show_default=True, help="Broker account that executes orders.")
@click.option("--data-source", default=None, help="Broker account for market data (default: --account).")
@click.option("--interval", default="1m", show_default=True)
def sessions_add(root: str | None, name: str, strategy: str, symbol: str, params: tuple[str, ...], account: str,
                 data_source: str | None, interval: str) -> None:
    """Add a session and start its group, touching no other process."""
    from services import supervisor
    from services.sessions import add_session, parse_params

    config = _config(root)
    store = _store(config)
    try:
        try:
            session = add_session(store, name=name, strategy=strategy, symbol=symbol, params=parse_params(params),
                                  account=account, data_source=data_source or account, interval=interval,
                                  now_ns=_now_ns())
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        path = supervisor.write_session_group(config, session.name)
    finally:
        store.close()
    if supervisor.is_running(config):
        supervisor.add_group(config, session.name)
        console.print(f"session {session.name} added ({session.contract}) and started: {path}")
    else:
        console.print(f"session {session.name} added ({session.contract}); it starts with `tradebus up`")


def _operate(root: str | None, action) -> None:
    """Run an operator command (``services.operator``) and print what it did."""
    from bus.client import BusClient
    from bus.endpoints import Endpoints
    from services.operator import CommandRefused

    config = _config(root)
    store = _store(config)
    bus = BusClient(Endpoints.for_state_dir(config.paths.state), source="cli")
    try:
        publisher = bus.publisher() if (config.paths.state / "bus" / "busd.ready").exists() else None
        outcome = action(config, store, publisher, bus.rpc_client())
    except CommandRefused as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        bus.close()
        store.close()
    console.print(outcome.text)


@sessions.command("halt")
@root_option
@click.argument("name")
@click.option("--reason", default="halted by operator", show_default=True)
def sessions_halt(root: str | None, name: str, reason: str) -> None:
    """Stop adding risk: only cancels and risk-reducing orders go out until `resume`."""
    from services import operator

    _operate(root, lambda config, store, pub, rpc: operator.halt(store, pub, name, reason))


@sessions.command("resume")
@root_option
@click.argument("name")
def sessions_resume(root: str | None, name: str) -> None:
    """Leave a halt: the session trades again."""
    from services import operator

    _operate(root, lambda config, store, pub, rpc: operator.resume(store, pub, name))


@sessions.command("ack")
@root_option
@click.argument("name")
@click.option("--resume-roll", "choice", flag_value="resume_roll", help="A roll was mid-way: finish it.")
@click.option("--abort-roll", "choice", flag_value="abort_roll",
              help="A roll was mid-way: stop it and stay on the old contract (only before the new one is traded).")
def sessions_ack(root: str | None, name: str, choice: str | None) -> None:
    """An operator has looked: take the session out of needs_operator and restart its group, which
    reconciles with the broker again before it trades (and escalates again if still in doubt)."""
    from services import operator

    _operate(root, lambda config, store, pub, rpc: operator.ack(config, store, pub, name, choice))


@sessions.command("flatten")
@root_option
@click.argument("name")
@click.option("--reason", default="flatten requested by operator", show_default=True)
def sessions_flatten(root: str | None, name: str, reason: str) -> None:
    """Halt the session, cancel its working orders and close its position (needs it running)."""
    from services import operator

    _operate(root, lambda config, store, pub, rpc: operator.flatten(store, rpc, name, reason))


@sessions.command("roll")
@root_option
@click.argument("name")
@click.option("--to", "to_contract", default=None, help="Target contract (default: the next listed one).")
def sessions_roll(root: str | None, name: str, to_contract: str | None) -> None:
    """Roll the session's position to the next contract now (rolls also start by themselves on the
    instrument's roll date)."""
    from services import operator

    _operate(root, lambda config, store, pub, rpc: operator.roll(store, rpc, name, to_contract))


@sessions.command("switch")
@root_option
@click.argument("name")
@click.option("--account", required=True, help="The broker account that takes the session's orders.")
@click.option("--data-source", default=None, help="The broker account its bars come from (default: --account).")
def sessions_switch(root: str | None, name: str, account: str, data_source: str | None) -> None:
    """Move a session to another broker (a configuration change; the strategy is untouched).

    Refused while the session has open orders or a position: flatten it first.
    """
    from services import operator

    _operate(root, lambda config, store, pub, rpc: operator.switch(config, store, name, account=account,
                                                                     data_source=data_source))


@main.command("brokers")
@root_option
@click.option("--json", "as_json", is_flag=True)
def brokers_cmd(root: str | None, as_json: bool) -> None:
    """Brokers with their capabilities, and the configured accounts with whether credentials are set."""
    from brokers.registry import broker_info, credentials_configured, known_brokers

    config = _config(root)
    store = _store(config)
    try:
        accounts = store.list_broker_accounts()
    finally:
        store.close()
    rows = []
    for name in known_brokers():
        info = broker_info(name)
        caps = info.capabilities
        mine = [a for a in accounts if a.broker == name]
        rows.append({
            "broker": name,
            "execution": None if caps is None else caps.execution,
            "market_data": None if caps is None else caps.market_data,
            "lookup_by_client_id": None if caps is None else caps.lookup_by_client_id,
            "brackets": None if caps is None else caps.brackets,
            "modify": None if caps is None else caps.modify,
            "credentials": ", ".join(info.credentials) or "-",
            "accounts": ", ".join(
                f"{a.name} ({'credentials set' if credentials_configured(a.name, {**dict(a.config), 'broker': name}) else 'credentials MISSING'})"
                for a in mine) or "-",
            "error": info.error,
        })
    _emit(rows, as_json, "brokers", ["broker", "execution", "market_data", "lookup_by_client_id", "brackets",
                                     "modify", "credentials", "accounts"])


@sessions.command("remove")
@root_option
@click.argument("name")
@click.option("--force", is_flag=True, help="Remove even with open orders or a position (forgets live risk).")
def sessions_remove(root: str | None, name: str, force: bool) -> None:
    """Stop and remove a session's group (other groups untouched); its history stays in the database.

    Refused while the session has open orders or a position, unless --force: a session removed
    with live risk would leave that risk with nobody watching it.
    """
    from services import operator

    _operate(root, lambda config, store, pub, rpc: operator.remove(config, store, name, force=force))


# ---------------------------------------------------------------------------- processes


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("service", type=click.Choice(["busd", "venue-sim", "marketdata", "account", "strategy",
                                              "reconciler", "jobs", "sessionguard", "tokens"]))
@click.option("--session", default=None)
@click.option("--worker", default=0, type=int)
def run(service: str, session: str | None, worker: int) -> None:
    """Run one engine process (supervisord calls this)."""
    from services.runtime import run_process

    config = _config(None)
    if service == "busd":
        from bus import busd

        sys.exit(busd.main(["--state-dir", str(config.paths.state)]))
    if service == "venue-sim":
        from brokers.sim import server
        from services.sessions import DIALECT_SIM_ACCOUNT, venue_symbols

        sim = config.venue_sim
        argv = ["--port", str(sim.port), "--state-dir", str(config.paths.state), "--pace", str(sim.pace_s),
                "--seed", str(sim.seed), "--interval", sim.interval, "--history", str(sim.history_bars),
                "--accounts", "SIM1" if sim.dialect == "sim" else f"SIM1,{DIALECT_SIM_ACCOUNT}", "--symbols", ",".join(venue_symbols(_now_ns(), sim.dialect)),
                "--dialect", sim.dialect, "--token-ttl-s", str(sim.token_ttl_s)]
        if sim.dialect != "sim":
            argv += ["--ws-port", str(sim.ws_url.rsplit(":", 1)[1])]
        for symbol, path in sim.csv.items():
            argv += ["--csv", f"{symbol}={path}"]
        sys.exit(server.main(argv))
    if service in ("marketdata", "account", "strategy") and not session:
        raise click.UsageError(f"`tradebus run {service}` needs --session")
    name = f"{session}-{service}" if session else (
        f"{service}_{worker:02d}" if service in ("reconciler", "jobs") else service)
    body = _service_body(service, session, worker)
    if service == "sessionguard":
        # stdout is the event-listener protocol channel: logs go to stderr.
        sys.exit(run_process(name, body, log_stream=sys.stderr, interrupt_on_stop=True))
    sys.exit(run_process(name, body))


def _service_body(service: str, session: str | None, worker: int):
    if service == "marketdata":
        from services.marketdata.main import run as body
    elif service == "account":
        from services.account.main import run as body
    elif service == "strategy":
        from services.strategy.main import run as body
    elif service == "reconciler":
        from services.reconciler.main import run as reconcile

        return lambda shell: reconcile(shell, worker)
    elif service == "jobs":
        from services.jobs.main import run as work

        return lambda shell: work(shell, worker)
    elif service == "tokens":
        from services.tokens.main import run as own_tokens

        return own_tokens
    else:
        from services.sessionguard.main import run as guard

        return guard
    return lambda shell: body(shell, session)


@main.command("venue-sim", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def venue_sim(ctx: click.Context) -> None:
    """Run the venue simulator by hand (arguments as `python -m brokers.sim.server --help`)."""
    from brokers.sim import server

    sys.exit(server.main(list(ctx.args)))


@main.group(invoke_without_command=True)
@root_option
@click.option("--status", type=click.Choice(["queued", "running", "done", "failed"]), default=None)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs(ctx: click.Context, root: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """The durable job queue: heavy work kept out of trading loops (failed jobs keep their error)."""
    if ctx.invoked_subcommand is not None:
        return
    config = _config(root)
    store = _store(config)
    try:
        rows = [{"id": j.id, "kind": j.kind, "status": str(j.status), "attempts": j.attempts,
                 "payload": json.dumps(j.payload), "claimed_by": j.claimed_by, "error": j.error,
                 "result": j.result} for j in store.jobs(status)][-limit:]
    finally:
        store.close()
    _emit(rows, as_json, "Jobs", ["id", "kind", "status", "attempts", "payload", "error"])


@jobs.command("report")
@root_option
@click.argument("session")
@click.option("--day", default=None, help="UTC day YYYY-MM-DD (default: today).")
@click.option("--fee-per-contract", default="0", show_default=True)
def jobs_report(root: str | None, session: str, day: str | None, fee_per_contract: str) -> None:
    """Queue an end-of-day report (trades, PnL, fees) for SESSION; a jobs worker writes it."""
    from datetime import date as date_cls

    from schema.errors import SessionNotFound
    from services.jobs.core import EOD_REPORT
    from services.sessions import today_utc as time_to_day

    try:
        when = date_cls.fromisoformat(day) if day else time_to_day(_now_ns())
        Decimal(fee_per_contract)
    except (ValueError, ArithmeticError) as exc:
        raise click.BadParameter(str(exc)) from None
    config = _config(root)
    store = _store(config)
    try:
        store.get_session(session)
        job = store.enqueue_job(EOD_REPORT, {"session": session, "day": when.isoformat(),
                                             "fee_per_contract": fee_per_contract}, now_ns=_now_ns())
    except SessionNotFound:
        raise click.ClickException(f"no session named {session!r}") from None
    finally:
        store.close()
    console.print(f"queued job {job.id}: {EOD_REPORT} for {session} on {when.isoformat()}")



if __name__ == "__main__":
    main()
