"""Tradovate tokens: username/password with penalty tickets, and session renewal.

* ``obtain`` — ``POST /auth/accesstokenrequest`` with ``name, password, appId, appVersion,
  deviceId`` and, when the account has them, ``cid, sec``. Wrong credentials come back as HTTP 200
  with ``errorText`` → ``AuthFailed``. A penalty ticket (HTTP 200 with ``p-ticket, p-time,
  p-captcha``) is waited out (``p-time`` seconds, through the injectable ``sleep``) and the SAME body
  is resent with ``p-ticket`` added, for at most ``MAX_PENALTY_ROUNDS`` rounds and
  ``MAX_PENALTY_WAIT_S`` seconds in all; past that budget → ``RateLimited(retry_after_s=p-time)``.
  ``p-captcha: true`` → ``AuthNeedsOperator`` at once (no automated retry is possible for about an
  hour). HTTP 429 (empty body) → ``RateLimited``.
* ``refresh`` — ``GET /auth/renewaccesstoken`` with the current token as Bearer: the same session
  with a later expiry. A new access-token request would open a second session (and can kick the
  first), so it is made only when the venue REFUSES the renewal (HTTP 401/403 or an ``errorText``:
  the token is dead, e.g. revoked), never while the session is valid. Transport failures and 5xx
  propagate (``Retryable``/``BrokerUnavailable``): that is not a refusal.
* ``refresh_at_ns`` — ``RENEW_MARGIN_S`` before ``expirationTime`` (at most half the lifetime).

Token extras: ``mdAccessToken`` (authorises the market-data socket; a renewal answer does not carry
one — then the access token is used there, *unconfirmed*) and ``userId``. Nothing here logs or puts
a credential or token into an exception message.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import httpx

from brokers.auth import Token, refresh_before_expiry
from brokers.errors import AuthFailed, AuthNeedsOperator, RateLimited, UnexpectedResponse, redact
from brokers.http import raise_for_status, translate_errors
from brokers.secrets import Secrets
from brokers.tradovate.parse import (
    BROKER,
    SHAPE_ERRORS,
    Penalty,
    TokenAnswer,
    business_error,
    decode_json,
    encode_json,
    parse_token_answer,
    penalty_of,
)

TOKEN_PATH = "/auth/accesstokenrequest"
RENEW_PATH = "/auth/renewaccesstoken"
MAX_PENALTY_ROUNDS = 5
MAX_PENALTY_WAIT_S = 120.0
"""The most an ``obtain`` waits on penalty tickets in total before handing back ``RateLimited``."""
RENEW_MARGIN_S = 15 * 60.0
"""Renew this long before expiry (Tradovate's own example renews within 15 minutes of it)."""
DEFAULT_APP_ID = "tradebus"
DEFAULT_APP_VERSION = "0.1"
MD_TOKEN = "mdAccessToken"
USER_ID = "userId"
_JSON = {"Content-Type": "application/json", "Accept": "application/json"}


@dataclass(frozen=True, repr=False)
class Credentials:
    """What an access-token request carries. ``repr`` names no value."""

    name: str
    password: str
    app_id: str
    app_version: str
    device_id: str
    cid: str | None = None
    sec: str | None = None

    def __repr__(self) -> str:
        return f"Credentials(app_id={self.app_id!r}, cid={'set' if self.cid else 'unset'}, ***)"

    __str__ = __repr__

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name, "password": self.password, "appId": self.app_id,
                                "appVersion": self.app_version, "deviceId": self.device_id}
        if self.cid is not None:
            # cid is the API key's numeric id; sent as a number when it is one.
            body["cid"] = int(self.cid) if self.cid.isdigit() else self.cid
        if self.sec is not None:
            body["sec"] = self.sec
        return body


def credentials_from(secrets: Secrets, config: Mapping[str, Any]) -> Credentials:
    """``name``/``password`` (required secrets); ``cid``/``sec`` (optional secrets: the API key);
    ``app_id``/``device_id`` from the secrets or the config; ``device_id`` defaults to a stable id
    derived from the account name, so the venue sees one device per account, not a new one per run."""
    account = str(config.get("account"))
    device_id = secrets.get("device_id") or config.get("device_id") or str(
        uuid.uuid5(uuid.NAMESPACE_URL, f"tradebus:{BROKER}:{account}"))
    return Credentials(
        name=secrets["name"],
        password=secrets["password"],
        app_id=str(secrets.get("app_id") or config.get("app_id") or DEFAULT_APP_ID),
        app_version=str(config.get("app_version") or DEFAULT_APP_VERSION),
        device_id=str(device_id),
        cid=secrets.get("cid"),
        sec=secrets.get("sec"),
    )


class TradovateAuthenticator:
    """One account's tokens (see the module docstring). Only the tokens service calls it in a
    running installation; ``sleep`` and ``clock_ns`` are test seams."""

    broker = BROKER

    def __init__(self, client: httpx.Client, credentials: Credentials, *,
                 sleep: Callable[[float], None] = time.sleep, clock_ns: Callable[[], int] = time.time_ns,
                 max_penalty_wait_s: float = MAX_PENALTY_WAIT_S) -> None:
        self._client = client
        self._credentials = credentials
        self._sleep = sleep
        self._clock_ns = clock_ns
        self._max_penalty_wait_s = max_penalty_wait_s
        self.token_requests = 0
        """Access-token requests sent (each penalty resend counts): new sessions asked for."""
        self.renewals = 0

    def __repr__(self) -> str:
        return f"TradovateAuthenticator(base_url={str(self._client.base_url)!r})"

    def close(self) -> None:
        self._client.close()

    # -- the Authenticator protocol

    def obtain(self) -> Token:
        body = self._credentials.body()
        waited = 0.0
        for attempt in range(MAX_PENALTY_ROUNDS + 1):
            data = self._token_request(body)
            penalty = self._penalty(data)
            if penalty is None:
                return self._token(data, what="access token request")
            if penalty.captcha:
                raise AuthNeedsOperator("access token request answered with a captcha penalty: no automated retry "
                                        "is possible (about an hour); log in interactively", broker=BROKER)
            if not penalty.ticket:
                raise UnexpectedResponse("penalty answer without a p-ticket", broker=BROKER)
            if attempt == MAX_PENALTY_ROUNDS or waited + penalty.wait_s > self._max_penalty_wait_s:
                raise RateLimited(f"access token request penalised {attempt + 1} times (waited {waited:.1f}s); "
                                  f"wait p-time and try again", broker=BROKER, retry_after_s=penalty.wait_s)
            self._sleep(penalty.wait_s)
            waited += penalty.wait_s
            body = {**body, "p-ticket": penalty.ticket}
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def refresh(self, token: Token) -> Token:
        """Renew the session; a new access-token request only if the venue refuses the renewal."""
        with translate_errors(BROKER, sends_order=False):
            response = self._client.get(RENEW_PATH, headers={**_JSON, "Authorization": f"Bearer {token.access_token}"})
        self.renewals += 1
        if response.status_code in (401, 403):
            return self.obtain()
        raise_for_status(response, broker=BROKER, sends_order=False)
        data = _json(response, RENEW_PATH)
        if self._penalty(data) is not None or business_error(data) is not None:
            return self.obtain()  # refused (or throttled as a new login would be): start a new session
        return self._token(data, what="token renewal", previous=token)

    def refresh_at_ns(self, token: Token) -> int:
        return refresh_before_expiry(token, RENEW_MARGIN_S)

    def notices(self, token: Token, now_ns: int) -> list[str]:
        return []  # renewal needs no human: nothing to warn about ahead of time

    # -- internals

    def _token_request(self, body: Mapping[str, Any]) -> Any:
        with translate_errors(BROKER, sends_order=False):
            response = self._client.post(TOKEN_PATH, content=encode_json(body).encode(), headers=_JSON)
        self.token_requests += 1
        raise_for_status(response, broker=BROKER, sends_order=False)
        return _json(response, TOKEN_PATH)

    @staticmethod
    def _penalty(data: Any) -> Penalty | None:
        try:
            return penalty_of(data)
        except SHAPE_ERRORS as exc:
            raise UnexpectedResponse(f"malformed penalty ticket ({type(exc).__name__})", broker=BROKER) from exc

    def _token(self, data: Any, *, what: str, previous: Token | None = None) -> Token:
        refusal = business_error(data)
        if refusal is not None:
            raise AuthFailed(f"{what} refused: {redact(refusal)}", broker=BROKER)
        try:
            answer: TokenAnswer = parse_token_answer(data)
        except SHAPE_ERRORS as exc:
            # Never quote the body: it holds the tokens (redact would mask them, but why risk it).
            raise UnexpectedResponse(f"malformed {what} answer ({type(exc).__name__})", broker=BROKER) from exc
        extras: dict[str, Any] = {}
        if answer.md_access_token:
            extras[MD_TOKEN] = answer.md_access_token
        user_id = answer.user_id if answer.user_id is not None else (previous.extras.get(USER_ID) if previous else None)
        if user_id is not None:
            extras[USER_ID] = user_id
        return Token(access_token=answer.access_token, expires_ns=answer.expires_ns, refresh_token=None,
                     extras=MappingProxyType(extras), issued_ns=self._clock_ns())


def _json(response: httpx.Response, path: str) -> Any:
    try:
        return decode_json(response.content)
    except (UnicodeDecodeError, ValueError) as exc:
        raise UnexpectedResponse(f"{path}: answer is not JSON", broker=BROKER, excerpt=response.text) from exc
