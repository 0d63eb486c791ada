"""Build a broker facade from configuration: the one place that knows which brokers exist.

Every broker module (``brokers.<name>.adapter``) exports the same few names:

* ``BROKER`` — its name; ``CAPABILITIES`` — what it can do; ``CREDENTIALS`` — the secret keys it needs
  (see ``brokers.secrets``; empty for the simulator);
* ``build(config, *, transport=None, tokens=None) -> BrokerFacade`` — ``tokens`` is the
  ``brokers.auth.TokenSource`` to use (the tokens service's, in a running installation); without one
  the adapter owns an in-process ``LocalTokenSource`` (tests, one-off tools);
* ``authenticator(config, *, transport=None) -> Authenticator | None`` — for the tokens service; None
  when the broker needs no tokens.

Modules are imported when first asked for, so a broken or missing optional dependency of one venue
cannot stop the others.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import Any

import httpx

from brokers.auth import Authenticator, TokenSource
from brokers.base import BrokerFacade, Capabilities
from brokers.secrets import configured

MODULES: Mapping[str, str] = MappingProxyType({
    "sim": "brokers.sim.adapter",
    "tradovate": "brokers.tradovate.adapter",
    "tradestation": "brokers.tradestation.adapter",
    "schwab": "brokers.schwab.adapter",
    "deribit": "brokers.deribit.adapter",
})
"""Broker name → the module that implements it."""


def known_brokers() -> tuple[str, ...]:
    return tuple(MODULES)


def broker_module(broker: object) -> ModuleType:
    module = MODULES.get(broker) if isinstance(broker, str) else None
    if module is None:
        raise ValueError(f"unknown broker {broker!r}; known brokers: {', '.join(MODULES)}")
    return importlib.import_module(module)


def build_facade(config: Mapping[str, Any], *, transport: httpx.BaseTransport | None = None,
                 tokens: TokenSource | None = None) -> BrokerFacade:
    """A facade for ``config["broker"]``, e.g. ``{"broker": "sim", "base_url": …, "account": "SIM1",
    "timeout_s": 5}``. ``transport`` replaces the network (tests pass ``httpx.MockTransport``)."""
    module = broker_module(config.get("broker"))
    if tokens is None:
        return module.build(config, transport=transport)
    return module.build(config, transport=transport, tokens=tokens)


def build_authenticator(config: Mapping[str, Any], *, transport: httpx.BaseTransport | None = None) -> Authenticator | None:
    """The authenticator of ``config``'s broker account (None: the broker needs no tokens)."""
    module = broker_module(config.get("broker"))
    factory = getattr(module, "authenticator", None)
    return None if factory is None else factory(config, transport=transport)


def needs_tokens(broker: str) -> bool:
    return getattr(broker_module(broker), "authenticator", None) is not None


@dataclass(frozen=True)
class BrokerInfo:
    name: str
    capabilities: Capabilities | None
    credentials: tuple[str, ...]
    error: str | None = None
    """Why the module could not be loaded (a missing optional dependency …)."""


def broker_info(name: str) -> BrokerInfo:
    try:
        module = broker_module(name)
    except ImportError as exc:
        return BrokerInfo(name, None, (), error=f"{type(exc).__name__}: {exc}")
    return BrokerInfo(name, module.CAPABILITIES, tuple(getattr(module, "CREDENTIALS", ())))


def credentials_configured(account: str, config: Mapping[str, Any]) -> bool:
    info = broker_info(str(config.get("broker")))
    return info.error is None and configured(account, config, info.credentials)
