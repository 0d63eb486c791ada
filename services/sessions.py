"""Creating and describing trading sessions: validation lives here, not in the CLI."""
from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

from brokers.instruments import canonical_root, front_contract, instrument, next_contract
from services.config import DEMO_ACCOUNT, DEMO_SESSIONS, Config, ConfigError, validate_session_name
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
    """On a fresh database: the simulator account and the demo sessions. Returns names added."""
    store.upsert_broker_account(DEMO_ACCOUNT, "sim", {"base_url": config.venue_sim.base_url, "timeout_s": 5})
    if store.list_sessions() or not config.demo:
        return []
    added = []
    for demo in DEMO_SESSIONS:
        add_session(store, name=demo.name, strategy=demo.strategy, symbol=demo.symbol, params=demo.params,
                    account=DEMO_ACCOUNT, data_source=DEMO_ACCOUNT, interval=config.venue_sim.interval,
                    now_ns=now_ns)
        added.append(demo.name)
    return added


def venue_symbols(now_ns: int) -> list[str]:
    """The contracts the demo simulator lists: the front month of each canonical futures root and
    the one after it (the contract a roll moves to)."""
    symbols = []
    for root in ("ES", "NQ", "6E", "CL", "GC"):
        front = front_contract(root, today_utc(now_ns))
        symbols += [front, next_contract(front)]
    return symbols
