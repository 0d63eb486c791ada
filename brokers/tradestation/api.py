"""Authorised requests to the TradeStation API and the translation of its answers to errors.

Every request carries ``Authorization: Bearer <token>`` from the ``TokenSource``. An "unauthorized"
answer (HTTP 401, or TradeStation's ``{"Error": "Unauthorized"}``) means the venue did not act, so
the request is sent once more with ``tokens.rejected(token)``'s newer token — even an order; a
second refusal is ``AuthFailed``.

TradeStation's error shape is ``{"Error": "BadRequest|Unauthorized|Forbidden|NotFound|
TooManyRequests|InternalServerError|ServiceUnavailable|GatewayTimeout|…", "Message": …}``:

=========================  =====================================  ===============================
answer                     command (submit, cancel, replace)      read
=========================  =====================================  ===============================
400/422 BadRequest         ``Rejected`` (Message)                 ``UnexpectedResponse``
401 Unauthorized           refresh and resend once, then          same
                           ``AuthFailed``
403 Forbidden              ``AuthFailed``                         ``AuthFailed``
404 NotFound               ``OrderNotFound``                      ``UnexpectedResponse`` (callers
                                                                  map it where it means something)
429 TooManyRequests        ``RateLimited`` (Retry-After, else     same
                           the 5-minute window: 300 s)
5xx                        ``OutcomeUnknown``                     ``Retryable``
transport failures         ``brokers.http.translate_errors``      same
=========================  =====================================  ===============================
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import httpx

from brokers.auth import Token, TokenSource
from brokers.errors import (
    AuthFailed,
    OrderNotFound,
    OutcomeUnknown,
    RateLimited,
    Rejected,
    Retryable,
    UnexpectedResponse,
)
from brokers.http import retry_after_seconds, translate_errors
from brokers.tradestation.parse import venue_error

BROKER = "tradestation"
RATE_LIMIT_DEFAULT_S = 300.0
"""HTTP 429 without ``Retry-After``: TradeStation's quotas are 5-minute windows, wait one."""
_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def loads(response: httpx.Response) -> Any:
    """The body as JSON with exact decimals; ``UnexpectedResponse`` if it is not JSON."""
    try:
        return json.loads(response.content, parse_float=Decimal)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnexpectedResponse(f"{_where(response)}: body is not JSON", broker=BROKER,
                                 excerpt=_text(response)) from exc


def excerpt(data: Any) -> str:
    """Decoded JSON back as JSON text, so ``redact`` (which knows JSON's quoting) can mask secrets."""
    try:
        return json.dumps(data, default=str)
    except (TypeError, ValueError):
        return ""


def _text(response: httpx.Response) -> str:
    try:
        return response.text
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        return ""


def _where(response: httpx.Response) -> str:
    return f"{response.request.method} {response.request.url.path}"


def _quiet_json(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content, parse_float=Decimal) if response.content else None
    except (UnicodeDecodeError, json.JSONDecodeError, httpx.ResponseNotRead):
        return None


def is_unauthorized(response: httpx.Response) -> bool:
    if response.status_code == 401:
        return True
    error = venue_error(_quiet_json(response)) if response.status_code >= 400 else None
    return error is not None and error[0] == "Unauthorized"


def raise_for_answer(response: httpx.Response, *, sends_order: bool, order_ref: str | None = None) -> None:
    """Raise the ``brokers.errors`` type for a non-2xx answer (see the module table)."""
    status = response.status_code
    if 200 <= status < 300:
        return
    where = _where(response)
    data = _quiet_json(response)
    kind, message = venue_error(data) or ("", "")
    detail = f"{kind}: {message}" if kind else f"HTTP {status}"
    if status == 429 or kind == "TooManyRequests":
        delay = retry_after_seconds(response.headers.get("Retry-After"))
        raise RateLimited(f"{where}: rate limited ({detail})", broker=BROKER,
                          retry_after_s=RATE_LIMIT_DEFAULT_S if delay is None else delay)
    if status in (401, 403):
        raise AuthFailed(f"{where}: not authorised (HTTP {status}; {kind or 'no reason given'})", broker=BROKER)
    if status >= 500:
        if sends_order:
            raise OutcomeUnknown(f"{where}: HTTP {status} ({kind or 'no reason given'}); look the order up by "
                                 "client id before any resend", broker=BROKER)
        raise Retryable(f"{where}: HTTP {status} ({kind or 'no reason given'})", broker=BROKER)
    if sends_order and status == 404 and order_ref is not None:
        raise OrderNotFound(order_ref, broker=BROKER)
    if sends_order and status in (400, 422):
        raise Rejected(message or kind or f"HTTP {status}", broker=BROKER)
    raise UnexpectedResponse(f"{where}: HTTP {status}", broker=BROKER, excerpt=_text(response))


class Api:
    """One account's authorised HTTP access to the TradeStation API."""

    def __init__(self, client: httpx.Client, tokens: TokenSource) -> None:
        self.client = client
        self.tokens = tokens

    def request(self, method: str, path: str, *, sends_order: bool, params: Mapping[str, str] | None = None,
                body: Mapping[str, Any] | None = None) -> httpx.Response:
        """Send with the current token; on an auth refusal, once more with a newer one."""
        content = None if body is None else json.dumps(body).encode()
        token = self.tokens.current()
        for attempt in (1, 2):
            with translate_errors(BROKER, sends_order=sends_order):
                response = self.client.request(method, path, params=params, content=content,
                                               headers=_headers(token, json_body=body is not None))
            if not is_unauthorized(response):
                return response
            if attempt == 2:
                break
            token = self.tokens.rejected(token)
        raise AuthFailed(f"{method} {path}: refused the token twice (a fresh one too)", broker=BROKER)

    @contextmanager
    def stream(self, path: str, params: Mapping[str, str], token: Token,
               timeout: httpx.Timeout) -> Iterator[httpx.Response]:
        """A streaming GET with ``token`` (the stream owner handles refusals: it must reconnect)."""
        with translate_errors(BROKER, sends_order=False):
            with self.client.stream("GET", path, params=params, headers=_headers(token, json_body=False),
                                    timeout=timeout) as response:
                yield response


def _headers(token: Token, *, json_body: bool) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token.access_token}", "Accept": "application/json"}
    if json_body:
        headers.update(_JSON_HEADERS)
    return headers
