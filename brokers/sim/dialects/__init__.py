"""Wire dialects of the venue simulator: one matching engine, each venue's protocol.

``tradebus venue-sim --dialect tradovate`` serves the same ``Venue`` (orders, fills, positions, bar
books, fault plan, all under ``SimApp.lock``) through the routes and, where the venue streams that
way, the WebSocket of one venue. The simulator's own ``/v1`` API stays available next to any dialect
(tests read the truth from ``/v1/admin/...``).

A dialect module defines ``DIALECT = Dialect(...)``:

* ``routes`` — ``HttpRoute(method, pattern, handler, call)``: ``pattern`` is a regular expression for
  the whole path (named groups become ``req.params``); ``handler(app, req) -> Answer``; ``call`` is the
  fault-rule name (``submit``, ``cancel``, ``modify``, ``lookup``, ``orders``, ``positions``, ``fills``,
  ``bars``, ``stream``, ``auth``) so ``/v1/admin/faults`` rules apply to the dialect too, or None;
* ``websocket`` — ``handler(app, connection)`` run in its own thread per connection (a
  ``websockets.sync.server.ServerConnection``; ``connection.request.path`` is the path asked for),
  served on a second port whose URL is written to the ready file as ``ws_url``; None if the venue
  has no WebSocket.

Handlers raise ``BadRequest`` for malformed input (the server answers 400 in the simulator's own
shape; a dialect that has its own error shape answers it itself). Tokens: ``app.tokens`` is a
``SimTokens`` shared by every dialect (TTL from ``--token-ttl-s``; ``POST /v1/admin/expire-tokens``
expires every access token at once, as a venue that revoked them would).
"""
from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from brokers.sim.server import SimApp

DIALECTS: Mapping[str, str] = MappingProxyType({
    "tradovate": "brokers.sim.dialects.tradovate",
    "tradestation": "brokers.sim.dialects.tradestation",
    "schwab": "brokers.sim.dialects.schwab",
    "deribit": "brokers.sim.dialects.deribit",
})
"""Dialect name → module; ``sim`` (the simulator's own API) is always served."""


class BadRequest(Exception):
    """Malformed input: the server answers 400 naming what was wrong."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    params: Mapping[str, str]
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON (decimals kept exact); ``BadRequest`` if it is not JSON."""
        if not self.body:
            raise BadRequest("empty body; a JSON body is required")
        try:
            return json.loads(self.body, parse_float=Decimal)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(f"body is not valid JSON ({type(exc).__name__})") from None

    def form(self) -> dict[str, str]:
        """An ``application/x-www-form-urlencoded`` body (OAuth2 token requests)."""
        try:
            parsed = parse_qs(self.body.decode(), keep_blank_values=True, strict_parsing=bool(self.body))
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("body is not form-encoded") from None
        return {k: v[-1] for k, v in parsed.items()}

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def bearer(self) -> str | None:
        """The token of an ``Authorization: Bearer …`` header, if any."""
        value = self.headers.get("authorization") or self.headers.get("Authorization") or ""
        scheme, _, token = value.partition(" ")
        return token.strip() or None if scheme.lower() == "bearer" else None


@dataclass(frozen=True)
class Answer:
    """A JSON answer (``payload``), raw bytes (``body``), or a chunked stream (``lines``: each
    yielded bytes is written as one chunk; the server closes the generator when the client leaves
    or the venue stops)."""

    status: int = 200
    payload: Any = None
    body: bytes | None = None
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    lines: Iterator[bytes] | None = None


def json_answer(payload: Any, status: int = 200, **headers: str) -> Answer:
    return Answer(status=status, payload=payload, headers=MappingProxyType(headers))


Handler = Callable[["SimApp", Request], Answer]
WsHandler = Callable[["SimApp", Any], None]


@dataclass(frozen=True)
class HttpRoute:
    method: str
    pattern: str
    handler: Handler
    call: str | None = None


@dataclass(frozen=True)
class Dialect:
    name: str
    routes: tuple[HttpRoute, ...]
    websocket: WsHandler | None = None


def load_dialect(name: str) -> Dialect | None:
    """The dialect called ``name`` (None for ``sim``); ``ValueError`` naming the known ones."""
    if name == "sim":
        return None
    module = DIALECTS.get(name)
    if module is None:
        raise ValueError(f"unknown dialect {name!r}; known: sim, {', '.join(DIALECTS)}")
    return importlib.import_module(module).DIALECT
