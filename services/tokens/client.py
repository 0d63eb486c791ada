"""The consumer side of the tokens service: a ``TokenSource`` over the bus, and the one way engine
processes build a broker facade.

``BusTokenSource`` asks ``tokens`` for the account's token (``TokenRequest``), reports a token the
venue refused (``TokenRejected``: the tokens service refreshes once, however many processes report
it) and listens on ``auth.<account>`` so a live socket re-authorises as soon as a new token is
announced. It never refreshes by itself. Tokens arrive encrypted with the installation's key; the
plaintext lives only in this process's memory.

When no token can be had (tokens service down, login failing) calls raise ``BrokerUnavailable``: the
venue was not asked, so nothing was done and the caller may retry later.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brokers.auth import Token
from brokers.base import BrokerFacade
from brokers.errors import BrokerUnavailable
from brokers.registry import build_facade, needs_tokens
from bus import topics
from bus.client import BusClient
from bus.endpoints import Endpoints
from bus.errors import BusError
from bus.logs import log
from schema import messages as m
from services.sessions import account_config

if TYPE_CHECKING:  # ``cryptography`` costs ~8 MB per process: loaded only where tokens are used
    from cryptography.fernet import Fernet

CALL_TIMEOUT_S = 12.0
"""Longer than the tokens service's own wait for a refresh (``REJECTED_WAIT_S``)."""
EXPIRY_MARGIN_NS = 5 * 10**9
"""A cached token this close to expiry is asked for again rather than used."""
LISTEN_POLL_MS = 200

logger = logging.getLogger(__name__)


class BusTokenSource:
    def __init__(self, endpoints: Endpoints, source: str, account: str, key: Fernet) -> None:
        self.account = account
        self._key = key
        self._bus = BusClient(endpoints, source=f"{source}-tokens")
        self._rpc = self._bus.rpc_client()
        self._lock = threading.Lock()
        self._token: Token | None = None
        self._version = 0
        self._callbacks: list[Callable[[Token], None]] = []
        self._closed = threading.Event()
        self._listener = threading.Thread(target=self._listen, name=f"auth-{account}", daemon=True)
        self._listener.start()

    # -- TokenSource

    def current(self) -> Token:
        with self._lock:
            token = self._token
            if token is not None and time.time_ns() < token.expires_ns - EXPIRY_MARGIN_NS:
                return token
            reply = self._call(m.TokenRequest(account=self.account), idempotent=True)
            return self._adopt_locked(reply)[0]

    def rejected(self, token: Token) -> Token:
        with self._lock:
            if self._token is not None and self._token is not token and not self._token.expired(time.time_ns()):
                return self._token  # a newer one came meanwhile
            version = self._version if self._token is token else 0
            reply = self._call(m.TokenRejected(account=self.account, version=version), idempotent=False)
            fresh, is_new = self._adopt_locked(reply)
        if is_new:
            self._announce(fresh)
        return fresh

    def on_new_token(self, callback: Callable[[Token], None]) -> None:
        self._callbacks.append(callback)

    def close(self) -> None:
        self._closed.set()
        self._listener.join(timeout=2)
        self._bus.close()

    # -- internals

    def _call(self, body: m.Message, *, idempotent: bool) -> m.TokenIssued:
        try:
            reply = self._rpc.call(topics.TOKENS_SERVICE, body, timeout_s=CALL_TIMEOUT_S, idempotent=idempotent)
        except BusError as exc:
            raise BrokerUnavailable(f"no token for account {self.account}: the tokens service did not give one "
                                    f"({type(exc).__name__}: {str(exc)[:200]})") from None
        if not isinstance(reply, m.TokenIssued) or reply.account != self.account:
            raise BrokerUnavailable(f"no token for account {self.account}: unexpected reply {reply.TYPE}")
        return reply

    def _adopt_locked(self, message: m.TokenIssued) -> tuple[Token, bool]:
        from services.tokens.crypto import TokenKeyError, unseal

        if self._token is not None and message.version <= self._version:
            return self._token, False
        try:
            token = unseal(self._key, message.ciphertext)
        except TokenKeyError as exc:
            raise BrokerUnavailable(f"account {self.account}: {exc}") from None
        self._token, self._version = token, message.version
        return token, True

    def _announce(self, token: Token) -> None:
        for callback in list(self._callbacks):
            try:
                callback(token)
            except Exception as exc:  # noqa: BLE001 - a consumer's failure must not stop the others
                log(logger, "token_callback_failed", logging.WARNING, account=self.account,
                    error=f"{type(exc).__name__}: {str(exc)[:200]}")

    def _listen(self) -> None:
        sub = self._bus.subscriber([topics.auth(self.account)], lag_threshold_s=None)
        try:
            while not self._closed.is_set():
                envelope = sub.recv(timeout_ms=LISTEN_POLL_MS)
                if envelope is None or not isinstance(envelope.body, m.TokenIssued):
                    continue
                if envelope.body.account != self.account:
                    continue
                with self._lock:
                    try:
                        token, is_new = self._adopt_locked(envelope.body)
                    except BrokerUnavailable as exc:
                        log(logger, "token_unreadable", logging.WARNING, account=self.account, reason=str(exc))
                        continue
                if is_new:
                    log(logger, "token_received", account=self.account, version=self._version)
                    self._announce(token)
        finally:
            sub.close()


def broker_facade(store: Any, account: str, *, endpoints: Endpoints, state_dir: Path, source: str) -> BrokerFacade:
    """The facade for ``account`` as engine processes use it: tokens from the tokens service."""
    config = account_config(store, account)
    if not needs_tokens(config["broker"]):
        return build_facade(config)
    from services.tokens.crypto import TokenKeyError, load_key

    try:
        key = load_key(state_dir)
    except TokenKeyError as exc:
        raise BrokerUnavailable(f"account {account}: {exc}") from None
    tokens = BusTokenSource(endpoints, source, account, key)
    try:
        facade = build_facade(config, tokens=tokens)
    except BaseException:
        tokens.close()
        raise
    facade.close_with(tokens.close)
    return facade
