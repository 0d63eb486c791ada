"""Deribit's JSON-RPC 2.0 over HTTP: encoding, the error table, one call = one request.

Transport (VENUES.md "Deribit API v2"): every method is reachable as ``GET <base>/<method>?<params>``
(Deribit documents this form in all its HTTP examples) and as ``POST <base>`` with a JSON-RPC body
``{"jsonrpc": "2.0", "id", "method", "params"}``. Reads and order commands go as GET with the access
token in ``Authorization: Bearer`` (a path per method, so a proxy log or the simulator's fault plan
can tell a submit from a read); token requests (``public/auth``, ``fork_token``, ``exchange_token``)
go as POST so client secrets and refresh tokens travel in the body, never in a URL.

Numbers: Deribit sends and expects JSON numbers. Answers are parsed with ``parse_float=Decimal`` so
no price is ever a float; requests write Decimals as plain JSON numbers (``60000.5``), never in
exponent form and never via float.

The error table (``exception_for``) is the one place that turns a venue error code into a
``brokers.errors`` type; *could the venue have acted?* decides, as in ``brokers.http``:

=========================  =============================================  ==========================
code                       command (buy, sell, edit, cancel)              read
=========================  =============================================  ==========================
13009, 13004, 10000        auth path: ``tokens.rejected``, retry once, then ``AuthFailed``
10028 too_many_requests    ``RateLimited`` (Deribit ends the session)     ``RateLimited``
10004 order_not_found      ``OrderNotFound``                              ``OrderNotFound``
10009, 10043, any other    ``Rejected`` (code and message as reason)      ``UnexpectedResponse``
HTTP 5xx, lost answer      ``OutcomeUnknown``                             ``Retryable``
unreadable 2xx answer      ``OutcomeUnknown``                             ``UnexpectedResponse``
=========================  =============================================  ==========================

The HTTP status Deribit pairs with an error object is *unconfirmed* (400 for most, perhaps 401/429
for some): the error object decides whatever the 4xx status; a 4xx without one falls back to the
status (401/403 → auth path, 429 → ``RateLimited`` with ``Retry-After``).
"""
from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx

from brokers.errors import (
    AuthFailed,
    BrokerError,
    OrderNotFound,
    OutcomeUnknown,
    RateLimited,
    Rejected,
    UnexpectedResponse,
    redact,
)
from brokers.http import raise_for_status, retry_after_seconds, translate_errors

BROKER = "deribit"
JSONRPC = "2.0"

TOO_MANY_REQUESTS = 10028
ORDER_NOT_FOUND = 10004
NOT_ENOUGH_FUNDS = 10009
PRICE_WRONG_TICK = 10043
UNAUTHORIZED = 13009
INVALID_CREDENTIALS = 13004
AUTHORIZATION_REQUIRED = 10000
AUTH_CODES = frozenset({UNAUTHORIZED, INVALID_CREDENTIALS, AUTHORIZATION_REQUIRED})
"""A refusal of the token or credentials: the venue did not act, so one retry with a newer token is
safe even for an order."""

_HTTP_AUTH = frozenset({401, 403})


# ---------------------------------------------------------------- JSON with exact numbers


def _encode(value: Any, out: list[str]) -> None:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("cannot send a non-finite number")
        out.append(format(value, "f"))
    elif isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        out.append(json.dumps(value))
    elif isinstance(value, float):
        raise TypeError("floats are never sent: use Decimal")
    elif isinstance(value, Mapping):
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            if i:
                out.append(",")
            out.append(json.dumps(str(key)))
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(value: Any) -> str:
    """JSON text with Decimals as plain JSON numbers (``60000.5``), never floats or exponents."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out)


def loads(raw: bytes | str) -> Any:
    """JSON with every non-integer number as a Decimal."""
    return json.loads(raw, parse_float=Decimal)


def query_value(value: Any) -> str:
    """A parameter as Deribit reads it in a GET query (``true``/``false``, plain decimals)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (int, str)):
        return str(value)
    raise TypeError(f"cannot send {type(value).__name__} in a query string")


def excerpt(data: Any) -> str:
    try:
        return dumps(data)
    except (TypeError, ValueError):
        return repr(data)


# ---------------------------------------------------------------- answers and errors


@dataclass(frozen=True)
class RpcError:
    code: int
    message: str
    data: Any = None

    def describe(self) -> str:
        """``"10043 price_wrong_tick"`` plus a redacted excerpt of ``data``: an operator's reason."""
        text = f"{self.code} {self.message}"
        if self.data is not None:
            text += f" ({redact(excerpt(self.data), limit=120)})"
        return redact(text)


@dataclass(frozen=True)
class Reply:
    """What one HTTP exchange gave: a result, or the venue's error object, or an auth refusal."""

    result: Any = None
    error: RpcError | None = None
    http_status: int = 200
    retry_after_s: float | None = None

    @property
    def auth_refused(self) -> bool:
        if self.error is not None:
            return self.error.code in AUTH_CODES
        return self.http_status in _HTTP_AUTH


def exception_for(error: RpcError, *, where: str, command: bool, order_ref: str | None = None,
                  retry_after_s: float | None = None) -> BrokerError:
    """The ``brokers.errors`` type for a venue error object (see the module docstring's table)."""
    if error.code == TOO_MANY_REQUESTS:
        # Deribit does not say how long to wait: None lets the caller's backoff decide.
        return RateLimited(f"{where}: {error.describe()}; the venue ended the session", broker=BROKER,
                           retry_after_s=retry_after_s)
    if error.code in AUTH_CODES:
        return AuthFailed(f"{where}: not authorised ({error.describe()})", broker=BROKER)
    if error.code == ORDER_NOT_FOUND:
        return OrderNotFound(order_ref or where, broker=BROKER)
    if command:
        return Rejected(error.describe(), broker=BROKER)
    return UnexpectedResponse(f"{where}: venue error", broker=BROKER, excerpt=error.describe())


def parse_error(data: Any) -> RpcError | None:
    """The error object of an answer, None if there is none; ``ValueError`` if it is malformed."""
    if not isinstance(data, dict) or "error" not in data:
        return None
    raw = data["error"]
    if not isinstance(raw, dict):
        raise ValueError("error is not an object")
    code, message = raw.get("code"), raw.get("message", "")
    if isinstance(code, bool) or not isinstance(code, int) or not isinstance(message, str):
        raise ValueError("error without an integer code and a message")
    return RpcError(code, message, raw.get("data"))


# ---------------------------------------------------------------- the HTTP client


class RpcHttp:
    """Sends one JSON-RPC call over HTTP and classifies the answer; no retries, no token logic
    (the caller owns the auth path). ``rpc_url`` is the API base (``…/api/v2``)."""

    def __init__(self, client: httpx.Client, rpc_url: str) -> None:
        self._client = client
        self._url = rpc_url.rstrip("/")
        self._ids = itertools.count(1)
        self._ids_lock = threading.Lock()

    def _next_id(self) -> int:
        with self._ids_lock:
            return next(self._ids)

    def get(self, method: str, params: Mapping[str, Any], *, access_token: str | None,
            sends_order: bool) -> Reply:
        query = {name: query_value(value) for name, value in params.items() if value is not None}
        headers = {"Authorization": f"Bearer {access_token}"} if access_token else None
        with translate_errors(BROKER, sends_order=sends_order):
            response = self._client.get(f"{self._url}/{method}", params=query, headers=headers)
        return self._reply(response, method, sends_order=sends_order, request_id=None)

    def post(self, method: str, params: Mapping[str, Any]) -> Reply:
        """A JSON-RPC body (token requests: their secrets stay out of URLs)."""
        request_id = self._next_id()
        body = dumps({"jsonrpc": JSONRPC, "id": request_id, "method": method,
                      "params": {k: v for k, v in params.items() if v is not None}})
        with translate_errors(BROKER, sends_order=False):
            response = self._client.post(self._url, content=body.encode(),
                                          headers={"Content-Type": "application/json"})
        return self._reply(response, method, sends_order=False, request_id=request_id)

    def _reply(self, response: httpx.Response, method: str, *, sends_order: bool, request_id: int | None) -> Reply:
        status = response.status_code
        where = method
        if status >= 500:
            raise_for_status(response, broker=BROKER, sends_order=sends_order)
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        try:
            data = loads(response.content)
            error = parse_error(data)
        except (UnicodeDecodeError, ValueError):
            data, error = None, None
            readable = False
        else:
            readable = isinstance(data, dict)
        if error is not None:
            return Reply(error=error, http_status=status, retry_after_s=retry_after)
        if 200 <= status < 300 and readable and "result" in data and self._id_matches(data, request_id):
            return Reply(result=data["result"], http_status=status)
        # No usable error object and no usable result.
        if status in _HTTP_AUTH:
            return Reply(http_status=status)
        if status == 429:
            raise RateLimited(f"{where}: rate limited (HTTP 429)", broker=BROKER, retry_after_s=retry_after)
        text = redact(response.text) if response.content else ""
        if 200 <= status < 300:
            if sends_order:
                raise OutcomeUnknown(f"{where}: unreadable answer (HTTP {status}); look the order up by label "
                                     "before any resend", broker=BROKER)
            raise UnexpectedResponse(f"{where}: unreadable answer (HTTP {status})", broker=BROKER, excerpt=text)
        if sends_order:
            # A 4xx is a refusal: the venue did not act, even if it did not say why in its own shape.
            raise Rejected(f"HTTP {status} without an error object", broker=BROKER)
        raise UnexpectedResponse(f"{where}: HTTP {status} without an error object", broker=BROKER, excerpt=text)

    @staticmethod
    def _id_matches(data: Mapping[str, Any], request_id: int | None) -> bool:
        if request_id is None:
            return True  # a GET carries no id; Deribit's answer may or may not echo one
        return data.get("id") == request_id
