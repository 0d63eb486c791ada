"""The ``tradovate`` broker module (the registry's contract; see ``brokers.registry``).

Config keys (never secrets):

* ``account`` — the engine's account name; also the key of its secrets;
* ``base_url`` — the REST base including ``/v1`` (``https://demo.tradovateapi.com/v1``; against the
  simulator ``http://127.0.0.1:PORT/tradovate/v1``);
* ``md_ws_url`` (or ``ws_url``) — the market-data WebSocket (``wss://md.tradovateapi.com/v1/websocket``;
  simulator ``ws://127.0.0.1:PORT2/tradovate/md``); without it the facade has no market data;
* ``account_spec`` — the Tradovate account name (required for execution; without it the facade is
  data-only); ``account_id`` — its numeric id (optional: looked up by name in ``/account/list``);
* ``timeout_s`` (default ``DEFAULT_TIMEOUT_S``), ``app_id``, ``app_version``, ``device_id``
  (optional), ``secrets_file`` (optional, see ``brokers.secrets``).

Credentials (``brokers.secrets``): ``name`` and ``password`` (required); ``cid`` and ``sec`` — the
API key, which Tradovate requires for API access on live accounts — plus ``app_id``/``device_id``
are optional (``OPTIONAL_CREDENTIALS``).

Capabilities: execution, market data, lookup by client id (by listing orders: ``execution``),
modify (``/order/modifyorder``) and brackets (``/order/placeOSO`` through
``BrokerFacade.submit_bracket``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from brokers.auth import LocalTokenSource, TokenSource
from brokers.base import BrokerFacade, Capabilities, MarketData, StaticRegistry
from brokers.http import make_client
from brokers.secrets import load_secrets
from brokers.symbols import symbol_adapter
from brokers.tradovate.auth import Credentials, TradovateAuthenticator, credentials_from
from brokers.tradovate.execution import ContractNames, TradovateExecution
from brokers.tradovate.parse import BROKER
from brokers.tradovate.rest import TradovateRest
from brokers.tradovate.ws import TradovateMarketData

CAPABILITIES = Capabilities(execution=True, market_data=True, lookup_by_client_id=True, brackets=True, modify=True)
CREDENTIALS: tuple[str, ...] = ("name", "password")
OPTIONAL_CREDENTIALS: tuple[str, ...] = ("cid", "sec", "app_id", "device_id")
DEFAULT_TIMEOUT_S = 10.0

__all__ = ["BROKER", "CAPABILITIES", "CREDENTIALS", "OPTIONAL_CREDENTIALS", "authenticator",
           "build"]


def _base_url(config: Mapping[str, Any]) -> str:
    base_url = config.get("base_url")
    if not isinstance(base_url, str) or not base_url:
        raise ValueError("tradovate config needs 'base_url', e.g. https://demo.tradovateapi.com/v1")
    return base_url.rstrip("/")


def _timeout(config: Mapping[str, Any]) -> float:
    return float(config.get("timeout_s", DEFAULT_TIMEOUT_S))


def _credentials(config: Mapping[str, Any]) -> Credentials:
    account = config.get("account")
    if not isinstance(account, str) or not account:
        raise ValueError("tradovate config needs 'account' (the engine's account name; it keys the secrets)")
    return credentials_from(load_secrets(account, config, CREDENTIALS, OPTIONAL_CREDENTIALS), config)


def authenticator(config: Mapping[str, Any], *, transport: httpx.BaseTransport | None = None,
                  sleep: Any = None) -> TradovateAuthenticator:
    """The account's authenticator; ``sleep`` replaces ``time.sleep`` for penalty waits (tests)."""
    client = make_client(_base_url(config), _timeout(config), transport)
    extra = {} if sleep is None else {"sleep": sleep}
    try:
        return TradovateAuthenticator(client, _credentials(config), **extra)
    except BaseException:
        client.close()
        raise


def build(config: Mapping[str, Any], *, transport: httpx.BaseTransport | None = None,
          tokens: TokenSource | None = None) -> BrokerFacade:
    """A facade for one Tradovate account (see the module docstring for ``config``)."""
    base_url = _base_url(config)
    timeout_s = _timeout(config)
    account_spec = config.get("account_spec")
    if account_spec is not None and (not isinstance(account_spec, str) or not account_spec):
        raise ValueError("tradovate config: 'account_spec' must be the account's name")
    account_id = config.get("account_id")
    if account_id is not None and (isinstance(account_id, bool) or not isinstance(account_id, int)):
        raise ValueError("tradovate config: 'account_id' must be an integer")
    md_url = config.get("md_ws_url") or config.get("ws_url")
    if md_url is not None and not isinstance(md_url, str):
        raise ValueError("tradovate config: 'md_ws_url' must be a URL")

    owned_auth: TradovateAuthenticator | None = None
    if tokens is None:
        owned_auth = authenticator(config, transport=transport)
        tokens = LocalTokenSource(owned_auth)
    client = make_client(base_url, timeout_s, transport)
    ws_client = make_client("", timeout_s, transport)
    rest = TradovateRest(client, tokens)
    execution = TradovateExecution(rest, account_spec, account_id, ContractNames(rest)) if account_spec else None
    market_data: MarketData | None = (
        TradovateMarketData(md_url, tokens, ws_client, timeout_s=timeout_s) if md_url else None)
    capabilities = Capabilities(
        execution=execution is not None, market_data=market_data is not None,
        lookup_by_client_id=execution is not None and CAPABILITIES.lookup_by_client_id,
        brackets=execution is not None and CAPABILITIES.brackets,
        modify=execution is not None and CAPABILITIES.modify)

    def close() -> None:
        client.close()
        ws_client.close()
        if owned_auth is not None:
            owned_auth.close()

    return BrokerFacade(
        name=BROKER,
        account=config.get("account") if isinstance(config.get("account"), str) else None,
        registry=StaticRegistry(BROKER, capabilities),
        symbols=symbol_adapter(BROKER),
        execution=execution,
        market_data=market_data,
        on_close=close,
    )
