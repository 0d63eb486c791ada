"""The tokens process: the one owner of every broker account's tokens in an installation.

For each broker account whose broker needs tokens (``brokers.registry.needs_tokens``) a thread runs
the account's ``Authenticator``: it obtains a token from the credentials, refreshes it before expiry
(``Authenticator.refresh_at_ns``) and whenever a consumer reports that the venue refused it
(``TokenRejected``), stores it encrypted (``tokens`` table) and announces it on ``auth.<account>``
(``TokenIssued``, encrypted too). Account and market-data processes never refresh themselves: two
refreshers would break rotating refresh tokens (TradeStation) and open competing sessions
(Tradovate). The main thread serves ``tokens`` (``TokenRequest``, ``TokenRejected``) and publishes.

On start a stored token is restored, so a restart neither logs in again nor loses a rotated refresh
token. An account that only a human can fix (captcha, dead refresh token, wrong credentials) goes to
``needs_operator`` with a critical alert; fix it and ``supervisorctl restart tokens``. Operator
notices from the authenticator (e.g. Schwab's weekly re-login) become warning alerts, once a day each.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import zmq

from brokers.auth import Authenticator, Token
from brokers.registry import build_authenticator, needs_tokens
from bus import topics
from bus.logs import log
from schema import messages as m
from services.runtime import ProcessShell
from services.sessions import account_config
from services.tokens.core import Owned, OwnerState, after_failure, after_success, refresh_now, restored
from services.tokens.crypto import TokenKeyError, load_or_create_key, seal, unseal

POLL_MS = 100
REJECTED_WAIT_S = 10.0
"""How long a ``TokenRejected`` may wait for the refresh it caused before it is answered ``unavailable``."""
NOTICE_EVERY_NS = 24 * 3600 * 10**9


class AccountOwner(threading.Thread):
    """One account's token loop. Its state is read by the main thread under ``lock``."""

    def __init__(self, service: TokensService, account: str, authenticator: Authenticator, owned: Owned) -> None:
        super().__init__(name=f"tokens-{account}", daemon=True)
        self.service = service
        self.account = account
        self.auth = authenticator
        self.lock = threading.Lock()
        self.owned = owned
        self.wake = threading.Event()
        self.notices_sent: dict[str, int] = {}

    def snapshot(self) -> Owned:
        with self.lock:
            return self.owned

    def rejected(self, version: int) -> None:
        with self.lock:
            self.owned = refresh_now(self.owned, version, time.time_ns())
        self.wake.set()

    def run(self) -> None:
        stop = self.service.shell
        while not stop.stopping:
            owned = self.snapshot()
            now = time.time_ns()
            if owned.state is OwnerState.NEEDS_OPERATOR or owned.due_ns > now:
                wait_s = 1.0 if owned.state is OwnerState.NEEDS_OPERATOR else min(1.0, (owned.due_ns - now) / 1e9)
                self.wake.wait(max(0.0, wait_s))
                self.wake.clear()
                continue
            self._attempt(owned)

    def _attempt(self, owned: Owned) -> None:
        attempted = owned.next_attempt()
        try:
            token = self.auth.obtain() if attempted == "obtain" else self.auth.refresh(owned.token)
        except Exception as exc:  # noqa: BLE001 - every failure has a next state; none kills the loop
            nxt = after_failure(owned, exc, attempted, time.time_ns())
            with self.lock:
                self.owned = nxt
            self.service.failed(self, owned, nxt)
            return
        if token.issued_ns == 0:
            token = dataclasses.replace(token, issued_ns=time.time_ns())
        version = self.service.store_token(self.account, self.auth.broker, token)
        nxt = after_success(owned, token, version, self.auth.refresh_at_ns(token))
        with self.lock:
            self.owned = nxt
        log(self.service.log, "token_issued", account=self.account, how=attempted, version=version,
            expires_in_s=round((token.expires_ns - time.time_ns()) / 1e9, 1))
        self.service.issued.put(nxt)
        self._notices(token)

    def _notices(self, token: Token) -> None:
        now = time.time_ns()
        for text in self.auth.notices(token, now):
            if now - self.notices_sent.get(text, 0) >= NOTICE_EVERY_NS:
                self.notices_sent[text] = now
                self.service.alerts.put(("warning", f"{self.account}: {text}"))


@dataclass
class Pending:
    request: Any
    account: str
    version: int
    deadline: float


class TokensService:
    def __init__(self, shell: ProcessShell) -> None:
        self.shell = shell
        self.log = shell.log
        self.store = shell.store()
        self.key = load_or_create_key(shell.config.paths.state)
        self.bus = shell.bus()
        self.publisher = self.bus.publisher()
        self.issued: queue.Queue[Owned] = queue.Queue()
        self.alerts: queue.Queue[tuple[str, str]] = queue.Queue()
        self.owners: dict[str, AccountOwner] = {}
        self.broken: dict[str, str] = {}
        """Accounts whose authenticator could not even be built (why), answered ``unavailable``."""
        self.pending: list[Pending] = []
        self.store_lock = threading.Lock()

    # -- called from owner threads

    def store_token(self, account: str, broker: str, token: Token) -> int:
        with self.store_lock:
            record = self.shell.through_outage(
                f"storing the token of {account}",
                lambda: self.store.put_token(account, broker, seal(self.key, token), expires_ns=token.expires_ns,
                                             now_ns=time.time_ns()))
        return record.version

    def failed(self, owner: AccountOwner, before: Owned, after: Owned) -> None:
        level = logging.CRITICAL if after.state is OwnerState.NEEDS_OPERATOR else logging.WARNING
        log(self.log, "token_failed", level=level, account=owner.account, state=after.state, reason=after.reason,
            retry_in_s=None if after.state is OwnerState.NEEDS_OPERATOR else round((after.due_ns - time.time_ns()) / 1e9, 1))
        if after.state is OwnerState.NEEDS_OPERATOR and before.state is not OwnerState.NEEDS_OPERATOR:
            self.alerts.put(("critical", f"{owner.account}: broker login needs the operator ({after.reason}); "
                                         "fix it, then `supervisorctl restart tokens`"))

    # -- the main thread

    def start_owners(self) -> None:
        for row in self.store.list_broker_accounts():
            if not needs_tokens(row.broker):
                continue
            try:
                authenticator = build_authenticator(account_config(self.store, row.name))
            except Exception as exc:  # noqa: BLE001 - one broken account must not stop the others
                # Missing credentials, a bad option: nothing to retry until the operator fixes it.
                reason = f"{type(exc).__name__}: {str(exc)[:300]}"
                self.broken[row.name] = reason
                log(self.log, "account_unusable", level=logging.CRITICAL, account=row.name, broker=row.broker,
                    reason=reason)
                self.alerts.put(("critical", f"{row.name}: broker account unusable ({reason}); fix it, then "
                                             "`supervisorctl restart tokens`"))
                continue
            if authenticator is None:
                continue
            record = self.store.get_token(row.name)
            token = None
            if record is not None:
                try:
                    token = unseal(self.key, record.ciphertext)
                except TokenKeyError as exc:
                    log(self.log, "token_unreadable", level=logging.WARNING, account=row.name, reason=str(exc))
            now = time.time_ns()
            owned = restored(row.name, token, record.version if record else 0,
                             None if token is None else authenticator.refresh_at_ns(token), now)
            owner = AccountOwner(self, row.name, authenticator, owned)
            self.owners[row.name] = owner
            log(self.log, "account_owned", account=row.name, broker=row.broker, state=owned.state,
                restored=token is not None)
            if owned.usable(now):
                self.issued.put(owned)
            owner.start()

    def run(self) -> None:
        self.start_owners()
        worker = self.bus.rpc_worker(topics.TOKENS_SERVICE)
        poller = zmq.Poller()
        poller.register(worker.socket, zmq.POLLIN)
        try:
            while not self.shell.stopping:
                if dict(poller.poll(POLL_MS)):
                    while (request := worker.recv(timeout_ms=0)) is not None:
                        self._answer(worker, request)
                worker.heartbeat()
                self._drain(worker)
        finally:
            self.shell.request_stop()
            for owner in self.owners.values():
                owner.wake.set()
                owner.join(timeout=5)
            self.bus.close()
            self.store.close()

    def _issued_message(self, owned: Owned) -> m.TokenIssued:
        assert owned.token is not None
        return m.TokenIssued(account=owned.account, version=owned.version, expires_ns=owned.token.expires_ns,
                             ciphertext=seal(self.key, owned.token))

    def _answer(self, worker: Any, request: Any) -> None:
        body = request.envelope.body
        if not isinstance(body, (m.TokenRequest, m.TokenRejected)):
            worker.reply(request, m.ErrorReply(code="bad_request", message=f"tokens does not answer {body.TYPE}"))
            return
        owner = self.owners.get(body.account)
        if owner is None and body.account in self.broken:
            worker.reply(request, m.ErrorReply(code="unavailable", message=f"account {body.account} is unusable: "
                                                                          f"{self.broken[body.account]}"))
            return
        if owner is None:
            worker.reply(request, m.ErrorReply(code="unknown_account",
                                               message=f"no tokens are owned for account {body.account!r}"))
            return
        if isinstance(body, m.TokenRejected):
            owned = owner.snapshot()
            if owned.version > body.version and owned.usable(time.time_ns()):
                worker.reply(request, self._issued_message(owned))
                return
            log(self.log, "token_rejected_by_venue", account=body.account, version=body.version)
            owner.rejected(body.version)
            self.pending.append(Pending(request, body.account, body.version, time.monotonic() + REJECTED_WAIT_S))
            return
        owned = owner.snapshot()
        if owned.usable(time.time_ns()):
            worker.reply(request, self._issued_message(owned))
        else:
            worker.reply(request, m.ErrorReply(code="unavailable",
                                               message=f"no usable token for {body.account} yet ({owned.state}: "
                                                       f"{owned.reason or 'obtaining'})"))

    def _drain(self, worker: Any) -> None:
        while True:
            try:
                owned = self.issued.get_nowait()
            except queue.Empty:
                break
            message = self._issued_message(owned)
            self.publisher.publish(topics.auth(owned.account), message)
            still = []
            for p in self.pending:
                if p.account == owned.account and owned.version > p.version:
                    worker.reply(p.request, message)
                else:
                    still.append(p)
            self.pending = still
        while True:
            try:
                level, text = self.alerts.get_nowait()
            except queue.Empty:
                break
            self.publisher.publish(topics.ALERT, m.Alert(level=level, text=text))
        now = time.monotonic()
        for p in [p for p in self.pending if p.deadline <= now]:
            owned = self.owners[p.account].snapshot()
            worker.reply(p.request, m.ErrorReply(code="unavailable", message=f"no newer token for {p.account} "
                                                 f"within {REJECTED_WAIT_S:.0f} s ({owned.state}: {owned.reason})"))
            self.pending.remove(p)


def run(shell: ProcessShell) -> None:
    TokensService(shell).run()
