"""REST requests to Schwab with the token rules every adapter follows.

Each request sends ``Authorization: Bearer <access token>`` from ``tokens.current()``. On HTTP 401
the token is reported with ``tokens.rejected(token)`` and the request is sent ONCE more with the
token that returns; a second 401 is ``AuthFailed``. Only reads go through here (the Trader API
cannot place futures orders), so a lost answer is ``Retryable``, never ``OutcomeUnknown``.

Error mapping (after ``brokers.http.translate_errors`` for transport failures): 401 twice →
``AuthFailed``; 403 → ``AuthFailed`` (the app lacks the API product or the account the entitlement:
refreshing cannot help); 429 → ``RateLimited`` (``Retry-After``); 5xx → ``Retryable``; other 4xx →
``UnexpectedResponse`` with the venue's redacted ``errors[].title/detail``; a 200 body that is not
JSON → ``UnexpectedResponse``. Messages carry the method and path only, never the query (it holds
nothing secret here, but the rule is uniform) or headers.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from brokers.auth import Token, TokenSource
from brokers.errors import AuthFailed, UnexpectedResponse
from brokers.http import raise_for_status, translate_errors
from brokers.schwab.parse import BROKER, loads, rest_error_text


class SchwabRest:
    def __init__(self, client: httpx.Client, tokens: TokenSource) -> None:
        self._client = client
        self._tokens = tokens

    def _get(self, path: str, params: Mapping[str, str], token: Token) -> httpx.Response:
        with translate_errors(BROKER, sends_order=False):
            return self._client.get(path, params=dict(params), headers={"Authorization": f"Bearer {token.access_token}",
                                                                        "Accept": "application/json"})

    def get_json(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        params = params or {}
        token = self._tokens.current()
        response = self._get(path, params, token)
        if response.status_code == 401:
            token = self._tokens.rejected(token)
            response = self._get(path, params, token)
            if response.status_code == 401:
                reason = _reason(response)
                raise AuthFailed(f"GET {path}: the access token was refused again after a refresh (HTTP 401"
                                 f"{': ' + reason if reason else ''})", broker=BROKER)
        _raise_for_error(response, path)
        try:
            return loads(response.content)
        except ValueError as exc:
            raise UnexpectedResponse(f"GET {path}: body is not JSON", broker=BROKER, excerpt=response.text) from exc


def _reason(response: httpx.Response) -> str:
    try:
        return rest_error_text(loads(response.content)) if response.content else ""
    except ValueError:
        return ""


def _raise_for_error(response: httpx.Response, path: str) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    if status == 403:
        reason = _reason(response)
        raise AuthFailed(f"GET {path}: forbidden (HTTP 403{': ' + reason if reason else ''}); does the app have "
                         f"the Market Data product and the account the entitlement?", broker=BROKER)
    if 400 <= status < 500 and status != 429:
        reason = _reason(response)
        raise UnexpectedResponse(f"GET {path}: HTTP {status}{': ' + reason if reason else ''}", broker=BROKER)
    raise_for_status(response, broker=BROKER, sends_order=False)
