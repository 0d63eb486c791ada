"""Broker credentials: from environment variables or an owner-only secrets file, never from the
database, never logged.

Lookup for account ``TS-1`` and key ``client_secret``, first hit wins:

1. environment ``TRADEBUS_SECRET_TS_1_CLIENT_SECRET`` (account and key upper-cased, anything not
   a letter or digit replaced by ``_``);
2. the secrets file — ``config["secrets_file"]`` or ``$TRADEBUS_SECRETS_FILE`` — a TOML file with one
   table per account (``[TS-1]`` then ``client_secret = "…"``). The file must not be readable by group
   or others: a world-readable secrets file is refused, not used.

A missing key raises ``AuthNeedsOperator`` naming the account, the key and both places to put it —
never a value. ``Secrets`` reprs as key names only.
"""
from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from brokers.errors import AuthNeedsOperator

ENV_PREFIX = "TRADEBUS_SECRET_"
SECRETS_FILE_ENV = "TRADEBUS_SECRETS_FILE"
_NOT_WORD = re.compile(r"[^A-Za-z0-9]")


def env_name(account: str, key: str) -> str:
    return ENV_PREFIX + _NOT_WORD.sub("_", account).upper() + "_" + _NOT_WORD.sub("_", key).upper()


class Secrets(Mapping[str, str]):
    def __init__(self, account: str, values: Mapping[str, str]) -> None:
        self.account = account
        self._values = dict(values)

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Secrets(account={self.account!r}, keys={sorted(self._values)})"

    __str__ = __repr__


def _secrets_file(config: Mapping[str, Any]) -> Path | None:
    raw = config.get("secrets_file") or os.environ.get(SECRETS_FILE_ENV)
    return Path(str(raw)).expanduser() if raw else None


def _file_table(path: Path, account: str) -> Mapping[str, Any]:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise AuthNeedsOperator(f"secrets file {path} does not exist") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuthNeedsOperator(f"secrets file {path} is readable by group or others (chmod 600 it); not used")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        # The parser's message may quote the offending line, which may hold a secret: name the file only.
        raise AuthNeedsOperator(f"secrets file {path} cannot be read as TOML ({type(exc).__name__})") from None
    table = data.get(account, {})
    if not isinstance(table, dict):
        raise AuthNeedsOperator(f"secrets file {path}: [{account}] must be a table")
    return table


def load_secrets(account: str, config: Mapping[str, Any], required: Sequence[str],
                 optional: Sequence[str] = ()) -> Secrets:
    """The ``required`` (and any present ``optional``) credentials of ``account``."""
    values: dict[str, str] = {}
    table: Mapping[str, Any] | None = None
    path = _secrets_file(config)
    missing = []
    for key in (*required, *optional):
        value = os.environ.get(env_name(account, key))
        if value is None and path is not None:
            if table is None:
                table = _file_table(path, account)
            raw = table.get(key)
            value = None if raw is None else str(raw)
        if value is None or value == "":
            if key in required:
                missing.append(key)
            continue
        values[key] = value
    if missing:
        where = ", ".join(env_name(account, k) for k in missing)
        file_hint = f" or [{account}] in {path}" if path else f" or a secrets file (${SECRETS_FILE_ENV})"
        raise AuthNeedsOperator(f"account {account}: missing credentials {', '.join(missing)}; set {where}{file_hint}")
    return Secrets(account, values)


def configured(account: str, config: Mapping[str, Any], required: Sequence[str]) -> bool:
    """Whether every required credential can be found (without reading any value out)."""
    try:
        load_secrets(account, config, required)
    except AuthNeedsOperator:
        return False
    return True
