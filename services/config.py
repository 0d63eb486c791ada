"""Where an installation keeps its files, and its configuration.

An installation is a *root* folder holding ``supervisord.conf`` (the process tree), an optional
``tradebus.toml`` (settings) and the ``state/`` folder (database, journal, logs, sockets,
generated supervisord include files). The root is ``$TRADEBUS_ROOT`` when set (supervisord sets it
for every child), else the current folder. Every setting has a default, so a fresh clone runs the
demo with no configuration at all.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from decimal import Decimal, InvalidOperation
from typing import Any

from brokers.instruments import INSTRUMENTS
from bus.endpoints import BusSettings
from bus.errors import EndpointError
from services.account.heat import (
    DEFAULT_BLOCK_PCT,
    DEFAULT_RISK_PER_CONTRACT,
    DEFAULT_RISK_PER_CONTRACT_BY_ROOT,
    DEFAULT_WARN_PCT,
    HeatThresholds,
)

ROOT_ENV = "TRADEBUS_ROOT"
DB_URL_ENV = "TRADEBUS_DB_URL"
CONFIG_FILE = "tradebus.toml"
SUPERVISORD_CONF = "supervisord.conf"

SESSION_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,23}$")

DEFAULT_VENUE_PORT = 47650
DEFAULT_PACE_S = 1.0
DEFAULT_SEED = 7
DEFAULT_HISTORY_BARS = 60
DEFAULT_RECONCILERS = 2
DEFAULT_JOB_WORKERS = 2
DEFAULT_RECONCILE_INTERVAL_S = 5.0
DEFAULT_RESTARTS = 5
DEFAULT_RESTART_WINDOW_S = 60.0
DEMO_ACCOUNT = "SIM1"


class ConfigError(Exception):
    """A configuration problem, named precisely enough to fix it."""


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def journal(self) -> Path:
        return self.state / "journal"

    @property
    def groups(self) -> Path:
        """Generated supervisord include files (shared services and one file per session)."""
        return self.state / "supervisor"

    @property
    def supervisord_conf(self) -> Path:
        return self.root / SUPERVISORD_CONF

    @property
    def supervisor_socket(self) -> Path:
        return self.state / "supervisor.sock"

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def sqlite_db(self) -> Path:
        return self.state / "tradebus.db"

    def session_group_file(self, session: str) -> Path:
        return self.groups / f"session-{session}.conf"


@dataclass(frozen=True)
class VenueSimConfig:
    port: int = DEFAULT_VENUE_PORT
    pace_s: float = DEFAULT_PACE_S
    seed: int = DEFAULT_SEED
    history_bars: int = DEFAULT_HISTORY_BARS
    interval: str = "1m"
    csv: dict[str, str] = field(default_factory=dict)
    dialect: str = "sim"
    """The venue wire protocol the simulator serves next to its own: sim, tradovate, tradestation,
    schwab or deribit. With a venue dialect the demo sessions trade through that venue's adapter."""
    ws_port: int = 0
    """The simulator's WebSocket port (dialects that stream over WebSocket); 0: ``port + 1``."""
    token_ttl_s: float = 1200.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port or self.port + 1}"


@dataclass(frozen=True)
class DemoSession:
    name: str
    symbol: str
    strategy: str
    params: dict[str, Any]


DEMO_SESSIONS = (
    DemoSession("es-sma", "ES", "sma_cross", {"fast": 3, "slow": 8, "qty": 1}),
    DemoSession("6e-sma", "6E", "sma_cross", {"fast": 3, "slow": 8, "qty": 2}),
)


@dataclass(frozen=True)
class RiskConfig:
    """``[risk]``: portfolio-heat thresholds, and the equity to measure against when the broker
    cannot tell (``None``: ask the broker only; a broker that cannot answer means no heat)."""

    thresholds: HeatThresholds = field(default_factory=HeatThresholds)
    equity: Decimal | None = None


@dataclass(frozen=True)
class Config:
    paths: Paths
    db_url: str
    venue_sim: VenueSimConfig
    reconcilers: int = DEFAULT_RECONCILERS
    job_workers: int = DEFAULT_JOB_WORKERS
    reconcile_interval_s: float = DEFAULT_RECONCILE_INTERVAL_S
    restarts: int = DEFAULT_RESTARTS
    restart_window_s: float = DEFAULT_RESTART_WINDOW_S
    demo: bool = True
    risk: RiskConfig = field(default_factory=RiskConfig)
    bus: BusSettings = field(default_factory=BusSettings)  # [bus]: ipc (default) or tcp with CURVE
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``[accounts.NAME]``: broker accounts (``broker = "…"`` plus its options, never secrets), written
    to the database by ``tradebus init``/``up``; credentials come from the environment or a secrets file."""


def _accounts(raw: Any, paths: Paths) -> dict[str, dict[str, Any]]:
    """``[accounts.NAME]`` tables: each names its ``broker``; the rest is the adapter's options."""
    from brokers.registry import known_brokers

    if not isinstance(raw, dict):
        raise ConfigError(f"{paths.config_file}: [accounts] must hold one table per account")
    accounts: dict[str, dict[str, Any]] = {}
    for name, table in raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{paths.config_file}: accounts.{name} must be a table")
        broker = table.get("broker")
        if broker not in known_brokers():
            raise ConfigError(f"{paths.config_file}: accounts.{name}.broker must be one of "
                              f"{', '.join(known_brokers())}; got {broker!r}")
        accounts[str(name)] = dict(table)
    return accounts


def find_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    raw = explicit or os.environ.get(ROOT_ENV) or os.getcwd()
    root = Path(raw).resolve()
    if not (root / SUPERVISORD_CONF).is_file():
        raise ConfigError(
            f"{root} holds no {SUPERVISORD_CONF}: run tradebus from the installation folder "
            f"or set {ROOT_ENV}"
        )
    return root


def load_config(root: Path | None = None) -> Config:
    """Read ``tradebus.toml`` (optional) under the root; unknown keys are errors, not ignored."""
    paths = Paths(root or find_root())
    raw: dict[str, Any] = {}
    if paths.config_file.is_file():
        try:
            raw = tomllib.loads(paths.config_file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{paths.config_file}: not valid TOML: {exc}") from exc
    engine = _section(raw, "engine", {"db_url", "reconcilers", "job_workers", "reconcile_interval_s", "restarts",
                                      "restart_window_s", "demo"}, paths)
    venue = _section(raw, "venue_sim", {"port", "pace_s", "seed", "history_bars", "interval", "csv", "dialect",
                                        "ws_port", "token_ttl_s"}, paths)
    accounts = _accounts(raw.get("accounts", {}), paths)
    risk = _risk_config(_section(raw, "risk", {"warn_pct", "block_pct", "equity", "default_risk_per_contract",
                                               "per_contract"}, paths), paths)
    bus_settings = _bus_settings(raw, paths)
    unknown = set(raw) - {"engine", "venue_sim", "risk", "bus", "accounts"}
    if unknown:
        raise ConfigError(f"{paths.config_file}: unknown section(s) {sorted(unknown)}")
    db_url = os.environ.get(DB_URL_ENV) or engine.get("db_url") or f"sqlite:///{paths.sqlite_db}"
    try:
        venue_cfg = VenueSimConfig(
            port=int(venue.get("port", DEFAULT_VENUE_PORT)),
            pace_s=float(venue.get("pace_s", DEFAULT_PACE_S)),
            seed=int(venue.get("seed", DEFAULT_SEED)),
            history_bars=int(venue.get("history_bars", DEFAULT_HISTORY_BARS)),
            interval=str(venue.get("interval", "1m")),
            csv={str(k): str(v) for k, v in dict(venue.get("csv", {})).items()},
            dialect=str(venue.get("dialect", "sim")),
            ws_port=int(venue.get("ws_port", 0)),
            token_ttl_s=float(venue.get("token_ttl_s", 1200.0)),
        )
        config = Config(
            paths=paths,
            db_url=db_url,
            venue_sim=venue_cfg,
            reconcilers=int(engine.get("reconcilers", DEFAULT_RECONCILERS)),
            job_workers=int(engine.get("job_workers", DEFAULT_JOB_WORKERS)),
            reconcile_interval_s=float(engine.get("reconcile_interval_s", DEFAULT_RECONCILE_INTERVAL_S)),
            restarts=int(engine.get("restarts", DEFAULT_RESTARTS)),
            restart_window_s=float(engine.get("restart_window_s", DEFAULT_RESTART_WINDOW_S)),
            demo=bool(engine.get("demo", True)),
            risk=risk,
            bus=bus_settings,
            accounts=accounts,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{paths.config_file}: bad value: {exc}") from exc
    if not 1 <= config.reconcilers <= 16:
        raise ConfigError(f"{paths.config_file}: engine.reconcilers must be 1..16, got {config.reconcilers}")
    if not 1 <= config.job_workers <= 16:
        raise ConfigError(f"{paths.config_file}: engine.job_workers must be 1..16, got {config.job_workers}")
    if config.venue_sim.pace_s <= 0:
        raise ConfigError(f"{paths.config_file}: venue_sim.pace_s must be > 0")
    if config.venue_sim.token_ttl_s <= 0:
        raise ConfigError(f"{paths.config_file}: venue_sim.token_ttl_s must be > 0")
    from brokers.sim.dialects import DIALECTS

    if config.venue_sim.dialect not in ("sim", *DIALECTS):
        raise ConfigError(f"{paths.config_file}: venue_sim.dialect must be one of sim, {', '.join(DIALECTS)}; "
                          f"got {config.venue_sim.dialect!r}")
    return config


def _risk_config(section: dict[str, Any], paths: Paths) -> RiskConfig:
    """``[risk]``, every figure checked: ``warn_pct``/``block_pct`` are fractions of equity (0.05 is
    5 %) with warn < block; ``per_contract`` maps known roots to currency at risk per contract."""
    where = f"{paths.config_file}: [risk]"

    def money(value: Any, name: str) -> Decimal:
        # TOML floats are read back through their shortest text, so 0.05 stays exactly 0.05.
        if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
            raise ConfigError(f"{where} {name} must be a number or a decimal string, got {value!r}")
        try:
            result = Decimal(str(value))
        except InvalidOperation:
            raise ConfigError(f"{where} {name} is not a number: {value!r}") from None
        if not result.is_finite():
            raise ConfigError(f"{where} {name} must be finite, got {value!r}")
        return result

    warn = money(section.get("warn_pct", DEFAULT_WARN_PCT), "warn_pct")
    block = money(section.get("block_pct", DEFAULT_BLOCK_PCT), "block_pct")
    for name, value in (("warn_pct", warn), ("block_pct", block)):
        if not 0 < value <= 1:
            raise ConfigError(f"{where} {name} is a fraction of equity in (0, 1] (0.05 means 5%), got {value}")
    if warn >= block:
        raise ConfigError(f"{where} warn_pct ({warn}) must be below block_pct ({block})")
    default = money(section.get("default_risk_per_contract", DEFAULT_RISK_PER_CONTRACT), "default_risk_per_contract")
    if default < 0:
        raise ConfigError(f"{where} default_risk_per_contract must be >= 0, got {default}")
    per_contract_raw = section.get("per_contract", {})
    if not isinstance(per_contract_raw, dict):
        raise ConfigError(f"{where} per_contract must be a table of root = amount, e.g. ES = 2000")
    per_contract = dict(DEFAULT_RISK_PER_CONTRACT_BY_ROOT)
    for root, value in per_contract_raw.items():
        if root not in INSTRUMENTS:
            raise ConfigError(f"{where} per_contract.{root}: unknown root; known roots: {', '.join(INSTRUMENTS)}")
        amount = money(value, f"per_contract.{root}")
        if amount < 0:
            raise ConfigError(f"{where} per_contract.{root} must be >= 0, got {amount}")
        per_contract[root] = amount
    equity = None
    if "equity" in section:
        equity = money(section["equity"], "equity")
        if equity <= 0:
            raise ConfigError(f"{where} equity must be > 0, got {equity}")
    thresholds = HeatThresholds(warn_pct=warn, block_pct=block, risk_per_contract=MappingProxyType(per_contract),
                                default_risk_per_contract=default)
    return RiskConfig(thresholds=thresholds, equity=equity)


def _section(raw: dict[str, Any], name: str, allowed: set[str], paths: Paths) -> dict[str, Any]:
    section = raw.get(name, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{paths.config_file}: [{name}] must be a table")
    unknown = set(section) - allowed
    if unknown:
        raise ConfigError(f"{paths.config_file}: unknown key(s) in [{name}]: {sorted(unknown)}")
    return section


def _bus_settings(raw: dict[str, Any], paths: Paths) -> BusSettings:
    """``[bus]``: transport ("ipc" | "tcp"), host, pub_port/sub_port/rpc_port, client_key. The rules
    live in ``bus.endpoints.BusSettings`` (busd and clients read the same table through it)."""
    try:
        return BusSettings.from_table(raw.get("bus", {}))
    except EndpointError as exc:
        raise ConfigError(f"{paths.config_file}: {exc}") from None


def validate_session_name(name: str) -> str:
    if not SESSION_NAME.match(name):
        raise ConfigError(
            f"bad session name {name!r}: use 1-24 characters, lowercase letters, digits and '-', "
            "starting with a letter or digit"
        )
    return name
