"""Tokens: what an adapter needs to talk to its venue, and who may renew them.

Auth models differ by venue (OAuth2 refresh with rotating refresh tokens, username/password with
penalty tickets and renewal, JSON-RPC tokens with forks), but every one yields a ``Token``: an access
token with its expiry, perhaps a refresh token and venue extras. Two roles keep them apart:

* an ``Authenticator`` (one per venue) obtains and refreshes tokens. Only the ``tokens`` service calls
  it in a running installation: two refreshers would break rotating refresh tokens;
* a ``TokenSource`` is what an adapter holds: ``current()`` gives the token to use, ``rejected(t)``
  says the venue refused ``t`` (HTTP 401 or its equivalent) and returns a newer one or raises
  ``AuthFailed``, ``on_new_token`` lets a live socket re-authorise when a new token is announced.

``LocalTokenSource`` owns an authenticator in-process (the tokens service itself, contract tests);
the bus-backed source used by account and market-data processes lives in ``services.tokens``.

A ``Token``'s repr never shows secrets, so it can be logged or put in an exception by mistake
without leaking anything.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from brokers.errors import AuthFailed

REFRESH_MARGIN_S = 120.0
"""Refresh this long before expiry by default (an access token lasts 20–90 minutes)."""


@dataclass(frozen=True, repr=False)
class Token:
    access_token: str
    expires_ns: int
    """UTC ns when the access token stops working (as the venue said, converted)."""
    refresh_token: str | None = None
    extras: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Venue-specific values that travel with the token (Tradovate ``mdAccessToken``/``userId``,
    Schwab's refresh-token expiry, Deribit's session name …). May hold secrets: never logged."""
    issued_ns: int = 0

    def __repr__(self) -> str:
        return f"Token(expires_ns={self.expires_ns}, issued_ns={self.issued_ns}, access_token=***)"

    __str__ = __repr__

    def expired(self, now_ns: int) -> bool:
        return now_ns >= self.expires_ns

    def to_bytes(self) -> bytes:
        """Plain bytes for the token owner to encrypt; never stored or sent as they are."""
        return json.dumps({"access_token": self.access_token, "expires_ns": self.expires_ns,
                           "refresh_token": self.refresh_token, "extras": dict(self.extras),
                           "issued_ns": self.issued_ns}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Token:
        raw = json.loads(data)
        return cls(access_token=str(raw["access_token"]), expires_ns=int(raw["expires_ns"]),
                   refresh_token=raw.get("refresh_token"), extras=MappingProxyType(dict(raw.get("extras") or {})),
                   issued_ns=int(raw.get("issued_ns", 0)))


@runtime_checkable
class Authenticator(Protocol):
    """Obtains and refreshes one account's tokens. Raises ``AuthFailed`` (refused),
    ``AuthNeedsOperator`` (only a human can fix it), ``RateLimited`` (wait ``retry_after_s``),
    ``BrokerUnavailable``/``Retryable`` (try again)."""

    broker: str

    def obtain(self) -> Token:
        """A first token from the account's credentials (or its seeded refresh token)."""
        ...

    def refresh(self, token: Token) -> Token:
        """A newer token before ``token`` expires (renewal, refresh grant, …)."""
        ...

    def refresh_at_ns(self, token: Token) -> int:
        """When the owner should refresh ``token``."""
        ...

    def notices(self, token: Token, now_ns: int) -> list[str]:
        """Operator warnings due now (e.g. an interactive re-login needed within days)."""
        ...


@runtime_checkable
class TokenSource(Protocol):
    def current(self) -> Token:
        """The token to use now; ``AuthFailed`` when there is none."""
        ...

    def rejected(self, token: Token) -> Token:
        """The venue refused ``token``: a newer one (the owner refreshes if nobody has yet), or
        ``AuthFailed``."""
        ...

    def on_new_token(self, callback: Callable[[Token], None]) -> None:
        """Call ``callback`` with each newer token (a live socket re-authorises)."""
        ...


def refresh_before_expiry(token: Token, margin_s: float = REFRESH_MARGIN_S) -> int:
    """The usual refresh time: ``margin_s`` before expiry, but never before half the lifetime."""
    lifetime = max(0, token.expires_ns - token.issued_ns)
    margin_ns = int(min(margin_s * 1e9, lifetime / 2)) if token.issued_ns else int(margin_s * 1e9)
    return token.expires_ns - margin_ns


class StaticTokenSource:
    """A fixed token (tests, or a venue that needs none). ``rejected`` cannot help: ``AuthFailed``."""

    def __init__(self, token: Token, broker: str = "static") -> None:
        self._token = token
        self._broker = broker

    def current(self) -> Token:
        return self._token

    def rejected(self, token: Token) -> Token:
        raise AuthFailed("the venue refused the token and this source cannot renew it", broker=self._broker)

    def on_new_token(self, callback: Callable[[Token], None]) -> None:
        pass


class LocalTokenSource:
    """Owns an ``Authenticator`` in this process: obtains on first use, refreshes when due or when
    the venue refused the current token (once per token: a second rejection of the same token after
    a refresh does not refresh again). Thread-safe."""

    def __init__(self, authenticator: Authenticator, *, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._auth = authenticator
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._token: Token | None = None
        self._callbacks: list[Callable[[Token], None]] = []

    def current(self) -> Token:
        with self._lock:
            token = self._token
            if token is None:
                token = self._auth.obtain()
            elif self._clock_ns() >= self._auth.refresh_at_ns(token):
                token = self._auth.refresh(token)
            else:
                return token
            self._token = token
        self._announce(token)
        return token

    def rejected(self, token: Token) -> Token:
        with self._lock:
            if self._token is not None and self._token is not token:
                return self._token  # someone refreshed meanwhile
            fresh = self._auth.refresh(token) if token.refresh_token or self._token is not None else self._auth.obtain()
            self._token = fresh
        self._announce(fresh)
        return fresh

    def set(self, token: Token) -> None:
        """Adopt a token obtained elsewhere (restored from storage)."""
        with self._lock:
            self._token = token
        self._announce(token)

    def on_new_token(self, callback: Callable[[Token], None]) -> None:
        self._callbacks.append(callback)

    def _announce(self, token: Token) -> None:
        for callback in list(self._callbacks):
            callback(token)
