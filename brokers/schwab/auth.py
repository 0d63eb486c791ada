"""Schwab OAuth2: access tokens from a refresh token the operator obtained by logging in.

Token endpoint ``POST {base_url}/v1/oauth/token`` (or config ``token_url``), client authentication
by HTTP Basic (``app_key:app_secret``), form grants ``refresh_token`` and ``authorization_code``.
Access tokens last 30 minutes (the answer's ``expires_in`` is used). The refresh token lasts 7 days
and cannot be renewed programmatically: only an interactive login (the authorization-code flow in
a browser) yields a new one. Hence:

* ``obtain()`` uses the ``refresh_token`` credential (``brokers.secrets``: ``app_key``,
  ``app_secret``, ``refresh_token``) — the operator stores it after logging in;
* ``refresh()`` uses the token's refresh token; Schwab does not rotate it on a refresh (if an
  answer ever carries a different one, it is adopted and its 7 days start then). If the operator
  stored a NEW credential since (a weekly re-login), that one is used instead — detected by a
  fingerprint of the credential kept in ``Token.extras`` — so a restored stale token cannot hide
  the operator's fix;
* the refresh token's expiry is tracked in ``Token.extras["refresh_expires_ns"]``: 7 days after
  config ``refresh_token_issued_ns`` (UTC ns when the operator logged in) if set, otherwise 7 days
  after this adapter first used the token ("first use" — optimistic: set the config key when you
  store a new refresh token so the warning is on time). A ``refresh_token_expires_in`` in an answer
  (*unconfirmed*; TD Ameritrade sent one) overrides the estimate;
* ``notices(token, now_ns)`` warns when the refresh token expires within config
  ``refresh_warning_hours`` (default 48) and says how to log in again;
* a refused refresh token (``invalid_grant`` and the shapes in
  ``brokers.schwab.parse.DEAD_REFRESH_TOKEN_ERRORS``) → ``AuthNeedsOperator`` naming the re-login;
  refused app key/secret (``invalid_client``, HTTP 401) → ``AuthNeedsOperator`` too.

``exchange_code(code, redirect_uri)`` is the second half of the interactive login, for an operator
tool: it trades the ``code`` from the redirect URL for a token (its refresh token is the one to
store as the credential).
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import httpx

from brokers.auth import Token, refresh_before_expiry
from brokers.errors import (
    AuthFailed,
    AuthNeedsOperator,
    BrokerError,
    RateLimited,
    Retryable,
    UnexpectedResponse,
)
from brokers.http import make_client, raise_for_status, retry_after_seconds, translate_errors
from brokers.intervals import NS_PER_SECOND
from brokers.schwab.parse import (
    BAD_CLIENT_ERRORS,
    BROKER,
    TokenAnswer,
    is_dead_refresh_token,
    loads,
    parse_oauth_error,
    parse_token_answer,
)
from brokers.secrets import env_name, load_secrets

TOKEN_PATH = "/v1/oauth/token"
AUTHORIZE_URL = "https://api.schwabapi.com/v1/oauth/authorize"
"""Where the operator logs in (the authorization-code flow starts here)."""
CREDENTIALS = ("app_key", "app_secret", "refresh_token")
REFRESH_TOKEN_LIFETIME_S = 7 * 86400
REFRESH_TOKEN_LIFETIME_NS = REFRESH_TOKEN_LIFETIME_S * NS_PER_SECOND
DEFAULT_REFRESH_WARNING_HOURS = 48.0
DEFAULT_TIMEOUT_S = 10.0

EXTRA_REFRESH_EXPIRES_NS = "refresh_expires_ns"
EXTRA_REFRESH_EXPIRY_SOURCE = "refresh_expiry_source"
"""``config`` (refresh_token_issued_ns), ``first_use``, ``venue`` (refresh_token_expires_in) or ``login``."""
EXTRA_CREDENTIAL_FP = "credential_fp"


def _fingerprint(secret: str) -> str:
    """Enough of a hash to notice that the stored credential changed; not the credential."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / NS_PER_SECOND, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _duration(ns: int) -> str:
    minutes = max(0, ns) // (60 * NS_PER_SECOND)
    days, rest = divmod(minutes, 1440)
    hours, minutes = divmod(rest, 60)
    return f"{days}d {hours}h {minutes:02d}m" if days else f"{hours}h {minutes:02d}m"


def relogin_hint(account: str) -> str:
    return (f"log in to Schwab again (authorization-code flow at {AUTHORIZE_URL}) and store the new refresh "
            f"token as {env_name(account, 'refresh_token')} or refresh_token in [{account}] of the secrets file")


def map_token_error(status: int, data: Any, *, account: str, grant: str, retry_after_s: float | None) -> BrokerError | None:
    """The error for a non-2xx token-endpoint answer (None: leave it to ``raise_for_status``).
    Messages carry the venue's error code and a redacted description, never a credential."""
    error = parse_oauth_error(data)
    where = f"account {account}: token request ({grant} grant)"
    if status == 429:
        return RateLimited(f"{where}: rate limited (HTTP 429)", broker=BROKER, retry_after_s=retry_after_s)
    if status >= 500:
        return Retryable(f"{where}: HTTP {status}", broker=BROKER)
    if error is None:
        if status == 401:
            return AuthNeedsOperator(f"{where}: app key/secret refused (HTTP 401); check app_key and app_secret "
                                     f"({env_name(account, 'app_key')}, {env_name(account, 'app_secret')})",
                                     broker=BROKER)
        return None
    said = f"{error.error}{': ' + error.description if error.description else ''}"
    if error.error in BAD_CLIENT_ERRORS or status == 401:
        return AuthNeedsOperator(f"{where}: app key/secret refused ({said}); check app_key and app_secret "
                                 f"({env_name(account, 'app_key')}, {env_name(account, 'app_secret')})",
                                 broker=BROKER)
    if grant == "refresh_token" and is_dead_refresh_token(error):
        return AuthNeedsOperator(f"{where}: the refresh token was refused ({said}); Schwab refresh tokens last "
                                 f"7 days and only an interactive login renews them: {relogin_hint(account)}",
                                 broker=BROKER)
    if grant == "authorization_code" and error.error == "invalid_grant":
        return AuthNeedsOperator(f"{where}: the authorization code was refused ({said}); codes are single-use "
                                 f"and expire within seconds: {relogin_hint(account)}", broker=BROKER)
    return AuthFailed(f"{where}: refused (HTTP {status}, {said})", broker=BROKER)


class SchwabAuthenticator:
    """``brokers.auth.Authenticator`` for one Schwab login (config ``account``)."""

    broker = BROKER

    def __init__(self, config: Mapping[str, Any], *, transport: httpx.BaseTransport | None = None,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        account = config.get("account")
        if not isinstance(account, str) or not account:
            raise ValueError("schwab broker config needs 'account' (the engine's account name; also the secrets key)")
        self.account = account
        self._config = MappingProxyType(dict(config))
        token_url = config.get("token_url")
        if token_url is None:
            base_url = config.get("base_url")
            if not isinstance(base_url, str) or not base_url:
                raise ValueError("schwab broker config needs 'base_url', e.g. https://api.schwabapi.com")
            token_url = base_url.rstrip("/") + TOKEN_PATH
        if not isinstance(token_url, str) or not token_url.startswith(("http://", "https://")):
            raise ValueError("schwab broker config: 'token_url' must be an http(s) URL")
        self.token_url = token_url
        issued = config.get("refresh_token_issued_ns")
        if issued is not None and (isinstance(issued, bool) or not isinstance(issued, int) or issued <= 0):
            raise ValueError("schwab broker config: 'refresh_token_issued_ns' must be a positive integer (UTC ns)")
        self._issued_ns: int | None = issued
        hours = float(config.get("refresh_warning_hours", DEFAULT_REFRESH_WARNING_HOURS))
        if hours < 0:
            raise ValueError("schwab broker config: 'refresh_warning_hours' must be >= 0")
        self.warning_margin_ns = int(hours * 3600 * NS_PER_SECOND)
        self._clock_ns = clock_ns
        self._client = make_client("", float(config.get("timeout_s", DEFAULT_TIMEOUT_S)), transport,
                                   headers={"Accept": "application/json"})

    def __repr__(self) -> str:
        return f"SchwabAuthenticator(account={self.account!r}, token_url={self.token_url!r})"

    def close(self) -> None:
        self._client.close()

    # -- the Authenticator protocol

    def obtain(self) -> Token:
        """A first token from the stored ``refresh_token`` credential."""
        secrets = load_secrets(self.account, self._config, CREDENTIALS)
        return self._from_credential(secrets["refresh_token"], secrets["app_key"], secrets["app_secret"])

    def refresh(self, token: Token) -> Token:
        secrets = load_secrets(self.account, self._config, CREDENTIALS)
        credential = secrets["refresh_token"]
        recorded = token.extras.get(EXTRA_CREDENTIAL_FP)
        if token.refresh_token is None or (recorded is not None and recorded != _fingerprint(credential)):
            # The operator stored a new refresh token (logged in again) since this token was made.
            return self._from_credential(credential, secrets["app_key"], secrets["app_secret"])
        now = self._clock_ns()
        answer = self._grant({"grant_type": "refresh_token", "refresh_token": token.refresh_token},
                             secrets["app_key"], secrets["app_secret"])
        kept = answer.refresh_token in (None, token.refresh_token)
        previous = token.extras.get(EXTRA_REFRESH_EXPIRES_NS)
        if answer.refresh_expires_in_s is not None:
            expires, source = now + answer.refresh_expires_in_s * NS_PER_SECOND, "venue"
        elif kept and isinstance(previous, int):
            expires, source = previous, str(token.extras.get(EXTRA_REFRESH_EXPIRY_SOURCE, "first_use"))
        else:
            expires, source = now + REFRESH_TOKEN_LIFETIME_NS, "first_use"
        return self._token(answer, answer.refresh_token or token.refresh_token, expires, source,
                           recorded if isinstance(recorded, str) else _fingerprint(credential), now)

    def refresh_at_ns(self, token: Token) -> int:
        return refresh_before_expiry(token)

    def notices(self, token: Token, now_ns: int) -> list[str]:
        """A warning when the refresh token expires within the margin (or has expired)."""
        expires = token.extras.get(EXTRA_REFRESH_EXPIRES_NS)
        if isinstance(expires, bool) or not isinstance(expires, int):
            return []
        left = expires - now_ns
        estimate = ""
        if token.extras.get(EXTRA_REFRESH_EXPIRY_SOURCE) == "first_use":
            estimate = " (estimated from first use; set refresh_token_issued_ns for an exact date)"
        if left <= 0:
            return [f"schwab account {self.account}: the refresh token expired {_duration(-left)} ago "
                    f"(at {_iso(expires)}){estimate}; {relogin_hint(self.account)}"]
        if left <= self.warning_margin_ns:
            return [f"schwab account {self.account}: the refresh token expires in {_duration(left)} "
                    f"(at {_iso(expires)}){estimate}; before then, {relogin_hint(self.account)}"]
        return []

    # -- the interactive login's second half (operator tools)

    def exchange_code(self, code: str, redirect_uri: str) -> Token:
        """Trade an authorization ``code`` (from the login redirect) for a token."""
        secrets = load_secrets(self.account, self._config, ("app_key", "app_secret"), optional=("refresh_token",))
        now = self._clock_ns()
        answer = self._grant({"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri},
                             secrets["app_key"], secrets["app_secret"])
        if answer.refresh_token is None:
            raise UnexpectedResponse("authorization-code answer without a refresh_token", broker=BROKER)
        expires = now + (answer.refresh_expires_in_s or REFRESH_TOKEN_LIFETIME_S) * NS_PER_SECOND
        credential = secrets.get("refresh_token")
        return self._token(answer, answer.refresh_token, expires, "login",
                           None if credential is None else _fingerprint(credential), now)

    # -- plumbing

    def _from_credential(self, refresh_token: str, app_key: str, app_secret: str) -> Token:
        now = self._clock_ns()
        answer = self._grant({"grant_type": "refresh_token", "refresh_token": refresh_token}, app_key, app_secret)
        if answer.refresh_expires_in_s is not None:
            expires, source = now + answer.refresh_expires_in_s * NS_PER_SECOND, "venue"
        elif self._issued_ns is not None:
            expires, source = self._issued_ns + REFRESH_TOKEN_LIFETIME_NS, "config"
        else:
            expires, source = now + REFRESH_TOKEN_LIFETIME_NS, "first_use"
        if answer.refresh_token not in (None, refresh_token):
            # A rotated refresh token (not Schwab's documented behaviour): its 7 days start now.
            expires, source = now + REFRESH_TOKEN_LIFETIME_NS, "first_use"
        return self._token(answer, answer.refresh_token or refresh_token, expires, source,
                           _fingerprint(refresh_token), now)

    def _token(self, answer: TokenAnswer, refresh_token: str, refresh_expires_ns: int, source: str,
               credential_fp: str | None, now: int) -> Token:
        extras: dict[str, Any] = {EXTRA_REFRESH_EXPIRES_NS: refresh_expires_ns, EXTRA_REFRESH_EXPIRY_SOURCE: source}
        if credential_fp is not None:
            extras[EXTRA_CREDENTIAL_FP] = credential_fp
        return Token(access_token=answer.access_token, expires_ns=now + answer.expires_in_s * NS_PER_SECOND,
                     refresh_token=refresh_token, extras=MappingProxyType(extras), issued_ns=now)

    def _grant(self, form: Mapping[str, str], app_key: str, app_secret: str) -> TokenAnswer:
        grant = form["grant_type"]
        with translate_errors(BROKER, sends_order=False):
            response = self._client.post(self.token_url, data=dict(form), auth=httpx.BasicAuth(app_key, app_secret))
        try:
            data = loads(response.content) if response.content else None
        except ValueError:
            data = None
        if response.status_code != 200:
            error = map_token_error(response.status_code, data, account=self.account, grant=grant,
                                    retry_after_s=retry_after_seconds(response.headers.get("Retry-After")))
            if error is not None:
                raise error
            raise_for_status(response, broker=BROKER, sends_order=False)
            raise UnexpectedResponse(f"token request: HTTP {response.status_code}", broker=BROKER)
        if data is None:
            # No excerpt: a half-readable token answer may hold a token.
            raise UnexpectedResponse(f"account {self.account}: token answer is not JSON", broker=BROKER)
        return parse_token_answer(data)
