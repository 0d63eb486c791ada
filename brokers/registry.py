"""Build a broker facade from configuration: the one place that knows which brokers exist."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import httpx

from brokers.base import BrokerFacade
from brokers.sim import adapter as sim_adapter

FacadeBuilder = Callable[..., BrokerFacade]

BUILDERS: Mapping[str, FacadeBuilder] = MappingProxyType({
    "sim": sim_adapter.build,
})
"""Builders by broker name; each takes ``(config, *, transport)``."""


def known_brokers() -> tuple[str, ...]:
    return tuple(BUILDERS)


def build_facade(config: Mapping[str, Any], *, transport: httpx.BaseTransport | None = None) -> BrokerFacade:
    """A facade for ``config["broker"]``, e.g. ``{"broker": "sim", "base_url": …, "account": "SIM1",
    "timeout_s": 5}``. ``transport`` replaces the network (tests pass ``httpx.MockTransport``)."""
    broker = config.get("broker")
    builder = BUILDERS.get(broker) if isinstance(broker, str) else None
    if builder is None:
        raise ValueError(f"unknown broker {broker!r}; known brokers: {', '.join(BUILDERS)}")
    return builder(config, transport=transport)
