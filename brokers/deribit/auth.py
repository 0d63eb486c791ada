"""Deribit tokens: ``public/auth`` (client credentials, refresh), ``fork_token``, ``exchange_token``.

* ``obtain``: ``public/auth`` with ``grant_type=client_credentials`` (``client_id``, ``client_secret``);
  then, if configured, ``public/exchange_token {refresh_token, subject_id}`` (trade in a subaccount)
  and ``public/fork_token {refresh_token, session_name}`` (a named session, so the installation's
  tokens are told apart from a human's).
* ``refresh``: ``public/auth`` with ``grant_type=refresh_token``. Refresh tokens rotate (each answer
  brings a new one); the refresh token belongs to its session and subject, so a refresh stays in the
  same named session and subaccount. A refused refresh token (rotated away, expired) falls back to
  the client credentials, which this authenticator holds.
* Wrong client credentials (13004 or another auth code on the client-credentials grant) need the
  operator: ``AuthNeedsOperator``. 10028 is ``RateLimited``.

Orders on Deribit belong to the (sub)account, not to the session or token that placed them: a fork
or a refresh changes nothing about which orders a token sees. A switch of subaccount does, which is
why the execution role keeps one token source per subaccount it has traded in
(``SubaccountAuthenticator``).

*Unconfirmed*: whether ``fork_token``/``exchange_token`` consume the refresh token they are given.
We assume they do not (the source session lives on); the simulator behaves that way.

Token ``extras``: ``scope`` (as the venue said), ``session_name``, ``subject_id``. None of these is a
secret, but extras are never logged anyway (``Token`` hides its contents).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from brokers.auth import Token, TokenSource, refresh_before_expiry
from brokers.deribit.rpc import BROKER, TOO_MANY_REQUESTS, RpcHttp
from brokers.errors import AuthFailed, AuthNeedsOperator, RateLimited, UnexpectedResponse
from brokers.secrets import Secrets

CREDENTIALS = ("client_id", "client_secret")
NS_PER_S = 1_000_000_000


def token_from(result: Any, *, now_ns: int, extras: Mapping[str, Any]) -> Token:
    """A ``Token`` from a ``public/auth``/``fork_token``/``exchange_token`` result."""
    if not isinstance(result, dict):
        raise UnexpectedResponse("token answer is not an object", broker=BROKER)
    access, refresh, expires_in = result.get("access_token"), result.get("refresh_token"), result.get("expires_in")
    if not isinstance(access, str) or not access or not isinstance(refresh, str) or not refresh:
        raise UnexpectedResponse("token answer without access_token/refresh_token", broker=BROKER)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in <= 0:
        raise UnexpectedResponse("token answer without a positive integer expires_in", broker=BROKER)
    scope = result.get("scope")
    merged = {**dict(extras), "scope": scope if isinstance(scope, str) else ""}
    return Token(access_token=access, expires_ns=now_ns + expires_in * NS_PER_S, refresh_token=refresh,
                 extras=MappingProxyType(merged), issued_ns=now_ns)


class TokenCalls:
    """The token methods over HTTP, with their errors mapped for an authenticator."""

    def __init__(self, rpc: RpcHttp, *, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._rpc = rpc
        self.clock_ns = clock_ns

    def call(self, method: str, params: Mapping[str, Any], *, extras: Mapping[str, Any]) -> Token:
        reply = self._rpc.post(method, params)
        if reply.error is not None:
            if reply.error.code == TOO_MANY_REQUESTS:
                raise RateLimited(f"{method}: {reply.error.describe()}", broker=BROKER,
                                  retry_after_s=reply.retry_after_s)
            # Any other refusal of a token request is an auth failure (the venue issued nothing).
            raise AuthFailed(f"{method}: refused ({reply.error.describe()})", broker=BROKER)
        if reply.auth_refused:
            raise AuthFailed(f"{method}: refused (HTTP {reply.http_status})", broker=BROKER)
        return token_from(reply.result, now_ns=self.clock_ns(), extras=extras)

    def refreshed(self, token: Token) -> Token:
        if not token.refresh_token:
            raise AuthFailed("the token has no refresh token", broker=BROKER)
        return self.call("public/auth", {"grant_type": "refresh_token", "refresh_token": token.refresh_token},
                         extras=token.extras)

    def exchanged(self, token: Token, subject_id: int) -> Token:
        if not token.refresh_token:
            raise AuthNeedsOperator("cannot switch subaccount: the token has no refresh token", broker=BROKER)
        extras = {**dict(token.extras), "subject_id": subject_id, "session_name": None}
        return self.call("public/exchange_token", {"refresh_token": token.refresh_token, "subject_id": subject_id},
                         extras=extras)

    def forked(self, token: Token, session_name: str) -> Token:
        if not token.refresh_token:
            raise AuthNeedsOperator("cannot fork a session: the token has no refresh token", broker=BROKER)
        extras = {**dict(token.extras), "session_name": session_name}
        return self.call("public/fork_token", {"refresh_token": token.refresh_token, "session_name": session_name},
                         extras=extras)


class _RefreshingAuthenticator:
    """What both authenticators share: a refresh grant on ``public/auth``; a refused refresh token
    falls back to ``obtain`` (the credentials, or the primary's token), an operator's refusal does not."""

    broker = BROKER
    _calls: TokenCalls

    def obtain(self) -> Token:
        raise NotImplementedError

    def refresh(self, token: Token) -> Token:
        try:
            return self._calls.refreshed(token)
        except AuthNeedsOperator:
            raise
        except AuthFailed:
            return self.obtain()

    def refresh_at_ns(self, token: Token) -> int:
        return refresh_before_expiry(token)

    def notices(self, token: Token, now_ns: int) -> list[str]:
        return []


class DeribitAuthenticator(_RefreshingAuthenticator):
    """One account's tokens from its API key (``client_id``/``client_secret``)."""

    def __init__(self, calls: TokenCalls, secrets: Secrets, *, session_name: str | None = None,
                 subject_id: int | None = None) -> None:
        self._calls = calls
        self._secrets = secrets
        self.session_name = session_name
        self.subject_id = subject_id

    def __repr__(self) -> str:
        return (f"DeribitAuthenticator(account={self._secrets.account!r}, session_name={self.session_name!r}, "
                f"subject_id={self.subject_id!r})")

    def obtain(self) -> Token:
        params = {"grant_type": "client_credentials", "client_id": self._secrets["client_id"],
                  "client_secret": self._secrets["client_secret"]}
        try:
            token = self._calls.call("public/auth", params, extras={"session_name": None, "subject_id": None})
        except AuthNeedsOperator:
            raise
        except AuthFailed as exc:
            raise AuthNeedsOperator(f"account {self._secrets.account}: the venue refused the API key "
                                    f"({exc.message}); check client_id/client_secret", broker=BROKER) from exc
        if self.subject_id is not None:
            token = self._calls.exchanged(token, self.subject_id)
        if self.session_name:
            token = self._calls.forked(token, self.session_name)
        return token


class SubaccountAuthenticator(_RefreshingAuthenticator):
    """Tokens for another subaccount, derived from the account's own token source with
    ``public/exchange_token``. Used by the execution role after ``switch_subaccount``: this process
    alone holds these tokens, so refreshing them here races nobody."""

    def __init__(self, calls: TokenCalls, primary: TokenSource, subject_id: int) -> None:
        self._calls = calls
        self._primary = primary
        self.subject_id = subject_id

    def __repr__(self) -> str:
        return f"SubaccountAuthenticator(subject_id={self.subject_id!r})"

    def obtain(self) -> Token:
        primary = self._primary.current()
        try:
            return self._calls.exchanged(primary, self.subject_id)
        except AuthNeedsOperator:
            raise
        except AuthFailed:
            # The primary's refresh token was refused: let its owner renew it, then once more.
            return self._calls.exchanged(self._primary.rejected(primary), self.subject_id)
