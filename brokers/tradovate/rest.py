"""Tradovate's REST API with a token: one request path for every call, one error mapping.

* Every request carries ``Authorization: Bearer <tokens.current()>``. HTTP 401 (or an ``errorText``
  that says the token was refused) → ``tokens.rejected(token)`` and ONE retry with the newer token —
  a refused token means the venue did not act, so this is safe for orders too; a second refusal →
  ``AuthFailed``.
* HTTP 429 (empty body) → ``RateLimited``; 5xx and lost answers → ``OutcomeUnknown`` for commands,
  ``Retryable`` for reads (``brokers.http``).
* Business errors come as HTTP 200: ``{failureReason, failureText}``, ``{errorText}`` or
  ``{violations: [...]}`` → ``Rejected`` with the venue's words. An HTTP 400 to a command is a
  refusal too (the venue did not act) → ``Rejected``.
* A command answered 200 with something unreadable → ``OutcomeUnknown`` (it may have acted); a read
  → ``UnexpectedResponse``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from brokers.auth import TokenSource
from brokers.errors import AuthFailed, OutcomeUnknown, Rejected, UnexpectedResponse, redact
from brokers.http import raise_for_status, translate_errors
from brokers.tradovate.parse import BROKER, business_error, decode_json, encode_json, is_auth_refusal

_HEADERS = {"Accept": "application/json"}
_JSON_BODY = {"Content-Type": "application/json"}


class TradovateRest:
    def __init__(self, client: httpx.Client, tokens: TokenSource) -> None:
        self._client = client
        self._tokens = tokens

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """A read (``/order/list``, ``/contract/item`` …)."""
        return self._call("GET", path, params=params, body=None, sends_order=False)

    def post_read(self, path: str, body: Mapping[str, Any]) -> Any:
        """A POST without side effects (``/cashBalance/getcashbalancesnapshot``)."""
        return self._call("POST", path, params=None, body=body, sends_order=False)

    def command(self, path: str, body: Mapping[str, Any]) -> Any:
        """A POST with side effects (place, modify, cancel)."""
        return self._call("POST", path, params=None, body=body, sends_order=True)

    def _call(self, method: str, path: str, *, params: Mapping[str, str] | None, body: Mapping[str, Any] | None,
              sends_order: bool) -> Any:
        content = None if body is None else encode_json(body).encode()
        headers = dict(_HEADERS) if body is None else {**_HEADERS, **_JSON_BODY}
        token = self._tokens.current()
        for attempt in (1, 2):
            with translate_errors(BROKER, sends_order=sends_order):
                response = self._client.request(method, path, params=params, content=content,
                                                headers={**headers, "Authorization": f"Bearer {token.access_token}"})
            data: Any = None
            refused = response.status_code == 401
            if response.status_code == 200:
                data = self._decode(response, sends_order=sends_order)
                error_text = data.get("errorText") if isinstance(data, dict) else None
                refused = isinstance(error_text, str) and is_auth_refusal(error_text)
            if refused:
                if attempt == 2:
                    raise AuthFailed(f"{method} {path}: the venue refused a fresh token too", broker=BROKER)
                token = self._tokens.rejected(token)
                continue
            if response.status_code == 400 and sends_order:
                raise Rejected(f"HTTP 400 {redact(response.text)}", broker=BROKER)
            raise_for_status(response, broker=BROKER, sends_order=sends_order)
            refusal = business_error(data)
            if refusal is not None:
                raise Rejected(redact(refusal), broker=BROKER)
            return data
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _decode(response: httpx.Response, *, sends_order: bool) -> Any:
        try:
            return decode_json(response.content)
        except (UnicodeDecodeError, ValueError) as exc:
            where = f"{response.request.method} {response.request.url.path}"
            if sends_order:
                raise OutcomeUnknown(f"{where}: unreadable answer; look the order up by client id before any "
                                     f"resend", broker=BROKER) from exc
            raise UnexpectedResponse(f"{where}: answer is not JSON", broker=BROKER, excerpt=response.text) from exc
