"""TradeStation's OAuth2 refresh grant: the authenticator the tokens service owns.

``POST {token_url}`` form-encoded ``grant_type=refresh_token&client_id&client_secret&refresh_token``
answers ``access_token``, ``expires_in`` (20 minutes), ``token_type`` and — when the app's refresh
tokens ROTATE — a new ``refresh_token``; the one just used then stops working. So:

* the authenticator always adopts a returned ``refresh_token`` and keeps the old one when none is
  returned (non-rotating apps);
* exactly one process may refresh (the tokens service; ``LocalTokenSource`` in tests and tools): a
  second refresher would use a token the first one already spent;
* an ``invalid_grant`` answer means the refresh token is dead (spent by someone else, revoked,
  or the answer carrying its successor was lost): only the operator's interactive login gives a new
  one → ``AuthNeedsOperator``. Wrong client credentials (``invalid_client``, ``access_denied``,
  ``unauthorized_client``) cannot heal by themselves either → ``AuthNeedsOperator``.

The token endpoint lives on another host than the API (``signin.tradestation.com``), hence its own
``token_url``. Secrets never appear in messages: error text carries the OAuth error code and a
redacted description only.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import httpx

from brokers.auth import Token, refresh_before_expiry
from brokers.errors import (
    AuthFailed,
    AuthNeedsOperator,
    RateLimited,
    Retryable,
    UnexpectedResponse,
    redact,
)
from brokers.http import make_client, retry_after_seconds, translate_errors
from brokers.secrets import Secrets

BROKER = "tradestation"
DEFAULT_TOKEN_URL = "https://signin.tradestation.com/oauth/token"
DEFAULT_AUTH_TIMEOUT_S = 10.0
DEFAULT_EXPIRES_IN_S = 1200
"""Access tokens last 20 minutes; used only if an answer omits ``expires_in``."""
RATE_LIMIT_DEFAULT_S = 300.0
"""TradeStation counts requests in 5-minute windows; without ``Retry-After`` wait one window."""
OPERATOR_ERRORS = frozenset({"invalid_grant", "invalid_client", "access_denied", "unauthorized_client"})
"""OAuth error codes no retry can fix: a human must log in again or fix the app's credentials."""
_FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}


class TradeStationAuthenticator:
    """Obtains and refreshes one TradeStation login's tokens (see the module docstring)."""

    broker = BROKER

    def __init__(self, secrets: Secrets, *, token_url: str = DEFAULT_TOKEN_URL,
                 timeout_s: float = DEFAULT_AUTH_TIMEOUT_S, transport: httpx.BaseTransport | None = None,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._client_id = secrets["client_id"]
        self._client_secret = secrets["client_secret"]
        self._refresh_token = secrets["refresh_token"]
        """The newest refresh token this authenticator knows: the operator's initial one, then each
        rotated successor (so ``obtain`` after a rotation does not reuse a spent token)."""
        self._token_url = token_url
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._client = make_client("", timeout_s, transport, headers=_FORM_HEADERS)

    def __repr__(self) -> str:
        return f"TradeStationAuthenticator(token_url={self._token_url!r})"

    def close(self) -> None:
        self._client.close()

    # -- the Authenticator protocol

    def obtain(self) -> Token:
        """A first token from the newest refresh token known (the operator's, at first)."""
        with self._lock:
            return self._grant(self._refresh_token)

    def refresh(self, token: Token) -> Token:
        """A new access token from ``token``'s refresh token (or the newest known)."""
        with self._lock:
            return self._grant(token.refresh_token or self._refresh_token)

    def refresh_at_ns(self, token: Token) -> int:
        return refresh_before_expiry(token)

    def notices(self, token: Token, now_ns: int) -> list[str]:
        # TradeStation refresh tokens do not expire on a schedule we could warn about; a dead one
        # is reported as AuthNeedsOperator when it is used.
        return []

    # -- the grant

    def _grant(self, refresh_token: str) -> Token:
        form = {"grant_type": "refresh_token", "client_id": self._client_id,
                "client_secret": self._client_secret, "refresh_token": refresh_token}
        issued_ns = self._clock_ns()
        with translate_errors(BROKER, sends_order=False):
            response = self._client.post(self._token_url, data=form)
        data = _json(response)
        if response.status_code != 200:
            raise _refusal(response, data, secrets=(self._client_secret, refresh_token, self._client_id))
        token = parse_token(data, issued_ns=issued_ns, previous_refresh_token=refresh_token)
        self._refresh_token = token.refresh_token or refresh_token
        return token


def parse_token(data: Any, *, issued_ns: int, previous_refresh_token: str) -> Token:
    """A token answer → ``Token``: a returned refresh token replaces the previous one (rotation),
    none keeps it."""
    try:
        if not isinstance(data, dict):
            raise TypeError("not an object")
        access = data["access_token"]
        if not isinstance(access, str) or not access:
            raise ValueError("empty access_token")
        expires_in = data.get("expires_in", DEFAULT_EXPIRES_IN_S)
        if isinstance(expires_in, bool) or not isinstance(expires_in, (int, str, Decimal)):
            raise TypeError("expires_in is not a number")
        lifetime_s = int(Decimal(expires_in))
        if lifetime_s <= 0:
            raise ValueError("expires_in must be positive")
        token_type = data.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise ValueError("token_type is not Bearer")
        rotated = data.get("refresh_token")
        if rotated is not None and (not isinstance(rotated, str) or not rotated):
            raise ValueError("empty refresh_token")
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise UnexpectedResponse(f"token answer of the wrong shape ({type(exc).__name__}: {exc})", broker=BROKER,
                                 excerpt=json.dumps(data, default=str) if data is not None else "") from exc
    return Token(access_token=access, expires_ns=issued_ns + lifetime_s * 1_000_000_000,
                 refresh_token=rotated or previous_refresh_token, issued_ns=issued_ns)


def _json(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content, parse_float=Decimal) if response.content else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def _scrub(value: str, secrets: tuple[str, ...]) -> str:
    """``redact`` masks ``key=value`` shapes; a venue echoing a bare secret in free text is masked here."""
    for secret in secrets:
        if secret:
            value = value.replace(secret, "***")
    return redact(value)


def _refusal(response: httpx.Response, data: Any, *, secrets: tuple[str, ...]) -> Exception:
    """The error for a non-200 token answer. Never includes the request (it holds the secrets), and
    the venue's description only with our secrets masked."""
    status = response.status_code
    code = data.get("error") if isinstance(data, dict) and isinstance(data.get("error"), str) else ""
    code = _scrub(code, secrets)
    description = data.get("error_description") if isinstance(data, dict) else None
    detail = f"{code}: {_scrub(str(description), secrets)}" if description else code or f"HTTP {status}"
    if status == 429:
        delay = retry_after_seconds(response.headers.get("Retry-After"))
        return RateLimited(f"token refresh rate limited ({detail})", broker=BROKER,
                           retry_after_s=RATE_LIMIT_DEFAULT_S if delay is None else delay)
    if status >= 500:
        return Retryable(f"token endpoint answered HTTP {status}", broker=BROKER)
    if code in OPERATOR_ERRORS:
        what = ("the refresh token is no longer valid (spent, revoked or rotated away); the operator must "
                "log in to TradeStation again and store the new refresh token"
                if code == "invalid_grant" else "the app's client credentials were refused; fix client_id/client_secret")
        return AuthNeedsOperator(f"token refresh refused ({detail}): {what}", broker=BROKER)
    return AuthFailed(f"token refresh refused (HTTP {status}; {detail})", broker=BROKER)


def token_url_of(config: Mapping[str, Any]) -> str:
    url = config.get("token_url", DEFAULT_TOKEN_URL)
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError("tradestation config: 'token_url' must be an http(s) URL")
    return url
