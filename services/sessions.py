"""Creating and describing trading sessions: validation lives here, not in the CLI."""
from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

from brokers.instruments import canonical_root, front_contract, instrument, next_contract
from services.config import DEMO_ACCOUNT, DEMO_SESSIONS, Config, ConfigError, DemoSession, validate_session_name
from services.strategy.core import ParamError
from services.strategy.registry import get_strategy


def today_utc(now_ns: int) -> date:
    return datetime.fromtimestamp(now_ns / 1e9, tz=timezone.utc).date()


def account_config(store: Any, account: str) -> dict[str, Any]:
    """The broker configuration of one account, as stored (never secrets: those come from env)."""
    for row in store.list_broker_accounts():
        if row.name == account:
            return {**dict(row.config), "broker": row.broker, "account": row.name}
    raise ConfigError(f"unknown broker account {account!r}")


def parse_params(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad --param {pair!r}: expected key=value")
        params[key.strip()] = value.strip()
    return params


def add_session(store: Any, *, name: str, strategy: str, symbol: str, params: dict[str, Any],
                account: str, data_source: str, interval: str, now_ns: int) -> Any:
    """Validate everything first; only a session that could run is written."""
    validate_session_name(name)
    try:
        get_strategy(strategy).initial_state(params)
    except ParamError as exc:
        raise ConfigError(f"session {name}: {exc}") from exc
    try:
        root = canonical_root(symbol)
        instrument(root)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"session {name}: unknown symbol {symbol!r}") from exc
    for acct in {account, data_source}:
        account_config(store, acct)
    contract = front_contract(root, today_utc(now_ns))
    for other in store.list_sessions():
        if other.name == name:
            raise ConfigError(f"session {name!r} exists already")
        if other.account == account and other.contract == contract:
            raise ConfigError(
                f"session {other.name!r} already trades {contract} on account {account}: positions "
                "per account and contract could not be told apart"
            )
    return store.add_session(name, strategy=strategy, params=params, symbol=root, contract=contract,
                             interval=interval, account=account, data_source=data_source, now_ns=now_ns)


def seed_demo(store: Any, config: Config, now_ns: int) -> list[str]:
    """The simulator account, the ``[accounts.*]`` of tradebus.toml, the simulator's dialect account
    (when it speaks a venue's protocol) and — on a fresh database — the demo sessions. Returns the
    names of the sessions added."""
    store.upsert_broker_account(DEMO_ACCOUNT, "sim", {"base_url": config.venue_sim.base_url, "timeout_s": 5})
    for name, table in config.accounts.items():
        store.upsert_broker_account(name, table["broker"], {k: v for k, v in table.items() if k != "broker"})
    orders, data = DEMO_ACCOUNT, DEMO_ACCOUNT
    if config.venue_sim.dialect != "sim":
        orders, data = seed_dialect_account(store, config)
    if store.list_sessions() or not config.demo:
        return []
    added = []
    for demo in demo_sessions(config):
        add_session(store, name=demo.name, strategy=demo.strategy, symbol=demo.symbol, params=demo.params,
                    account=orders, data_source=data, interval=config.venue_sim.interval,
                    now_ns=now_ns)
        added.append(demo.name)
    return added


DEMO_CRYPTO_SESSION = DemoSession("btc-sma", "BTC-PERPETUAL", "sma_cross", {"fast": 3, "slow": 8, "qty": 1})


def demo_sessions(config: Config) -> tuple[DemoSession, ...]:
    """Deribit carries no futures: its demo session trades the BTC perpetual instead. Schwab allows
    one streamer connection per login, so one demo session streams from it (a second market-data
    process on the same login would knock the first off, and so on)."""
    if config.venue_sim.dialect == "deribit":
        return (DEMO_CRYPTO_SESSION,)
    if config.venue_sim.dialect == "schwab":
        return DEMO_SESSIONS[:1]
    return DEMO_SESSIONS


DIALECT_SIM_ACCOUNT = "SIM2"
"""The simulator account behind the dialect's demo account: apart from ``SIM1`` (the simulator's own
API), so what went through which adapter is plain at the venue."""


def dialect_account_name(dialect: str) -> str:
    return f"DEMO-{dialect.upper()}"


def seed_dialect_account(store: Any, config: Config) -> tuple[str, str]:
    """The broker account that reaches the simulator through its venue dialect, with the dialect's
    demo credentials in an owner-only secrets file (``state/secrets.toml``); returns the accounts for
    (orders, data). A data-only venue (Schwab) serves the bars; orders stay on the simulator."""
    import importlib

    from brokers.registry import broker_info

    dialect = config.venue_sim.dialect
    module = importlib.import_module(f"brokers.sim.dialects.{dialect}")
    name = dialect_account_name(dialect)
    broker_config, secrets = module.demo_account(config.venue_sim.base_url, config.venue_sim.ws_url, DIALECT_SIM_ACCOUNT)
    secrets_file = config.paths.state / "secrets.toml"
    write_secrets(secrets_file, name, secrets)
    store.upsert_broker_account(name, dialect, {**broker_config, "secrets_file": str(secrets_file)})
    caps = broker_info(dialect).capabilities
    return (name if caps is not None and caps.execution else DEMO_ACCOUNT), name


def write_secrets(path: Any, account: str, secrets: dict[str, str]) -> None:
    """Set ``[account]`` in an owner-only TOML secrets file (other accounts' tables are kept)."""
    import json
    import os
    import tomllib

    existing: dict[str, Any] = {}
    if path.exists():
        existing = tomllib.loads(path.read_text())
    existing[account] = dict(secrets)
    lines = []
    for acct, table in existing.items():
        lines.append(f"[{json.dumps(acct)}]")
        lines += [f"{key} = {json.dumps(str(value))}" for key, value in table.items()]
        lines.append("")
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines))
    os.replace(tmp, path)


def venue_symbols(now_ns: int, dialect: str = "sim") -> list[str]:
    """The contracts the demo simulator lists: the front month of each canonical futures root and
    the one after it (the contract a roll moves to); the BTC perpetual too when it speaks Deribit."""
    symbols = []
    for root in ("ES", "NQ", "6E", "CL", "GC"):
        front = front_contract(root, today_utc(now_ns))
        symbols += [front, next_contract(front)]
    if dialect == "deribit":
        symbols.append("BTC-PERPETUAL")
    return symbols
