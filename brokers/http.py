"""The HTTP seam every REST adapter shares: one client factory, one error translation.

The translation's single question is *could the broker have acted?*

* the request never reached it (connect refused, DNS, connect/pool timeout) → ``BrokerUnavailable``;
* it may have reached it and the request has side effects (``sends_order=True``: submit, cancel,
  modify) and then the answer was lost (read timeout, reset, protocol error) or was a 5xx →
  ``OutcomeUnknown``: look the order up, never resend blindly;
* the same on a read → ``Retryable``;
* 429 → ``RateLimited`` with the ``Retry-After`` delay; 401/403 → ``AuthFailed``.

Exceptions are raised ``from`` the httpx exception. Messages carry the method and URL *path* only:
never the query string, headers or body, which is where tokens live.
"""
from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from brokers.errors import (
    AuthFailed,
    BrokerError,
    BrokerUnavailable,
    OutcomeUnknown,
    RateLimited,
    Retryable,
    UnexpectedResponse,
)

MAX_KEEPALIVE_CONNECTIONS = 4
"""One account's traffic is a few concurrent requests at most (orders, a poll, a stream)."""
KEEPALIVE_EXPIRY_S = 30.0


def make_client(
    base_url: str,
    timeout: float,
    transport: httpx.BaseTransport | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> httpx.Client:
    """An ``httpx.Client`` with keep-alive; ``transport`` is the test seam (``MockTransport``)."""
    return httpx.Client(
        base_url=base_url,
        timeout=httpx.Timeout(timeout),
        transport=transport,
        headers=headers,
        limits=httpx.Limits(max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS, keepalive_expiry=KEEPALIVE_EXPIRY_S),
    )


def _where(request: httpx.Request | None) -> str:
    if request is None:
        return "request"
    return f"{request.method} {request.url.path}"


def _request_of(exc: httpx.RequestError) -> httpx.Request | None:
    try:
        return exc.request
    except RuntimeError:  # httpx raises when the exception was built without a request
        return None


@contextmanager
def translate_errors(broker: str, *, sends_order: bool) -> Iterator[None]:
    """Map httpx transport exceptions raised inside the block to ``brokers.errors``.

    ``sends_order`` marks a request with side effects: after it may have been sent, a lost answer
    means ``OutcomeUnknown`` rather than ``Retryable``.
    """
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        # Nothing was written to the broker: the request cannot have been acted on.
        where = _where(_request_of(exc))
        raise BrokerUnavailable(f"{where}: could not connect ({type(exc).__name__})", broker=broker) from exc
    except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
        # Our side refused to build/send the request: a configuration or programming error.
        raise BrokerError(f"{_where(_request_of(exc))}: request not sent ({type(exc).__name__})", broker=broker) from exc
    except httpx.TransportError as exc:
        # ReadTimeout, WriteTimeout, ReadError, WriteError, RemoteProtocolError, …: the request may
        # have (partly) reached the broker and been acted on.
        where = _where(_request_of(exc))
        if sends_order:
            raise OutcomeUnknown(
                f"{where}: answer lost ({type(exc).__name__}); look the order up by client id before any resend",
                broker=broker,
            ) from exc
        raise Retryable(f"{where}: answer lost ({type(exc).__name__})", broker=broker) from exc
    except httpx.DecodingError as exc:
        where = _where(_request_of(exc))
        if sends_order:
            raise OutcomeUnknown(f"{where}: unreadable answer ({type(exc).__name__})", broker=broker) from exc
        raise UnexpectedResponse(f"{where}: unreadable answer ({type(exc).__name__})", broker=broker) from exc


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date; None if absent/garbled."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def raise_for_status(response: httpx.Response, *, broker: str, sends_order: bool) -> None:
    """Raise the ``brokers.errors`` type for a non-2xx answer the adapter did not handle itself.

    Adapters handle their venue's meaningful 4xx answers (404 not found, 422 rejected …) first and
    call this for the rest.
    """
    status = response.status_code
    if 200 <= status < 300:
        return
    where = _where(response.request)
    if status == 429:
        delay = retry_after_seconds(response.headers.get("Retry-After"))
        raise RateLimited(f"{where}: rate limited (HTTP 429)", broker=broker, retry_after_s=delay)
    if status in (401, 403):
        raise AuthFailed(f"{where}: not authorised (HTTP {status})", broker=broker)
    if status >= 500:
        if sends_order:
            raise OutcomeUnknown(
                f"{where}: HTTP {status}; look the order up by client id before any resend", broker=broker
            )
        raise Retryable(f"{where}: HTTP {status}", broker=broker)
    raise UnexpectedResponse(f"{where}: HTTP {status}", broker=broker, excerpt=_body_excerpt(response))


def _body_excerpt(response: httpx.Response) -> str:
    try:
        return response.text
    except (httpx.ResponseNotRead, UnicodeDecodeError, httpx.DecodingError):
        return ""
