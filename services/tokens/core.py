"""What the token owner of one broker account does next: a small state machine over named states.

=================  ===========================================================================
``obtaining``      no usable token: obtain one from the account's credentials
``valid``          a token is in use; refresh it at ``due_ns`` (before expiry) or when a consumer
                   says the venue refused it
``backing_off``    the last attempt failed in a way worth retrying (venue down, rate limited, a
                   refresh refused): try again at ``due_ns``
``needs_operator`` only a human can help (captcha, dead refresh token, missing or wrong
                   credentials): no automated attempts; an alert has gone out
=================  ===========================================================================

Pure: ``after_success`` / ``after_failure`` map (state, outcome, now) to the next state; the service
does the I/O. A refresh refused (``AuthFailed``) falls back to obtaining from credentials; credentials
refused is the operator's business.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum

from brokers.auth import Token
from brokers.errors import AuthFailed, AuthNeedsOperator, BrokerError, RateLimited
from services.retry import Backoff

RETRY = Backoff(base_s=1.0, cap_s=60.0)


class OwnerState(StrEnum):
    OBTAINING = "obtaining"
    VALID = "valid"
    BACKING_OFF = "backing_off"
    NEEDS_OPERATOR = "needs_operator"


@dataclass(frozen=True)
class Owned:
    account: str
    state: OwnerState
    token: Token | None = None
    version: int = 0
    """Counts tokens issued for this account (the database row's version); consumers compare it."""
    due_ns: int = 0
    failures: int = 0
    reason: str | None = None

    def usable(self, now_ns: int) -> bool:
        return self.token is not None and not self.token.expired(now_ns) and self.state is not OwnerState.OBTAINING

    def next_attempt(self) -> str:
        """``obtain`` or ``refresh``: what to do when ``due_ns`` comes."""
        if self.state is OwnerState.OBTAINING or self.token is None:
            return "obtain"
        return "refresh"


def restored(account: str, token: Token | None, version: int, refresh_at_ns: int | None, now_ns: int) -> Owned:
    """The state on start: a stored token is refreshed when due (at once if its access token has
    expired: its refresh token may still be good, and with rotation it is the only good one)."""
    if token is None:
        return Owned(account, OwnerState.OBTAINING, due_ns=now_ns)
    due = now_ns if token.expired(now_ns) or refresh_at_ns is None else refresh_at_ns
    return Owned(account, OwnerState.VALID, token, version, due_ns=due)


def after_success(owned: Owned, token: Token, version: int, refresh_at_ns: int) -> Owned:
    return Owned(owned.account, OwnerState.VALID, token, version, due_ns=refresh_at_ns)


def refresh_now(owned: Owned, rejected_version: int, now_ns: int) -> Owned:
    """A consumer says the venue refused ``rejected_version``: refresh at once, unless a newer
    token exists already or an attempt is scheduled anyway."""
    if rejected_version < owned.version or owned.state is not OwnerState.VALID:
        return owned
    return dataclasses.replace(owned, due_ns=min(owned.due_ns, now_ns))


def after_failure(owned: Owned, exc: BaseException, attempted: str, now_ns: int,
                  jitter: float = 0.5) -> Owned:
    """The next state after ``attempted`` (``obtain``/``refresh``) failed with ``exc``."""
    reason = f"{attempted}: {type(exc).__name__}: {exc}"[:300]
    failures = owned.failures + 1
    if isinstance(exc, AuthNeedsOperator) or (isinstance(exc, AuthFailed) and attempted == "obtain"):
        return dataclasses.replace(owned, state=OwnerState.NEEDS_OPERATOR, failures=failures, reason=reason)
    if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
        delay_s = exc.retry_after_s
    else:
        delay_s = RETRY.delay(failures, jitter=lambda: jitter) or RETRY.cap_s
    if isinstance(exc, AuthFailed):
        # The refresh token was refused: obtain afresh from credentials (rotation lost, revoked …).
        return dataclasses.replace(owned, state=OwnerState.OBTAINING, failures=failures, reason=reason,
                                   due_ns=now_ns + int(delay_s * 1e9))
    if not isinstance(exc, BrokerError):
        reason = f"{attempted}: unexpected {type(exc).__name__}"
    return dataclasses.replace(owned, state=OwnerState.BACKING_OFF, failures=failures, reason=reason,
                               due_ns=now_ns + int(delay_s * 1e9))
