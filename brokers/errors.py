"""The errors every broker adapter raises, whatever the venue.

Retry policy reads these *types*, never message text (see ``services.retry``). The one distinction
that matters most for money is between an error after which the broker certainly did NOT act
(``Retryable`` and its subclasses, ``Rejected``) and one after which it may have
(``OutcomeUnknown``): after the latter the caller must ask the broker for the order by its client
id, never resend blindly.

Messages are meant for logs and operators: they name the broker and the operation, and never carry
credentials, tokens or request headers. ``UnexpectedResponse`` keeps a short excerpt of the body,
with anything that looks like a secret masked (``redact``).
"""
from __future__ import annotations

import re

EXCERPT_MAX_CHARS = 200
"""How much of an unexpected body to keep: enough to recognise it, too little to leak much."""

_SECRET_KEYS = (
    r"access_?token|refresh_?token|md_?access_?token|id_?token|token|password|passwd|secret|"
    r"client_?secret|api_?key|authorization|sec|p-ticket"
)
# "key": "value" / key=value / Bearer xxx — mask the value, keep the key so the excerpt stays useful.
_SECRET_JSON = re.compile(rf'("(?:{_SECRET_KEYS})"\s*:\s*)"[^"]*"', re.IGNORECASE)
_SECRET_FORM = re.compile(rf"\b((?:{_SECRET_KEYS})=)[^&\s\"']+", re.IGNORECASE)
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)


def redact(text: str, limit: int = EXCERPT_MAX_CHARS) -> str:
    """A short, secret-free excerpt of ``text`` for an error message or a log line."""
    masked = _SECRET_JSON.sub(r'\1"***"', text)
    masked = _SECRET_FORM.sub(r"\1***", masked)
    masked = _BEARER.sub(r"\1 ***", masked)
    masked = " ".join(masked.split())
    if len(masked) > limit:
        masked = masked[:limit] + "…"
    return masked


class BrokerError(Exception):
    """Base of every error raised by ``brokers``. ``broker`` names the venue (e.g. ``"sim"``)."""

    def __init__(self, message: str, *, broker: str | None = None) -> None:
        self.broker = broker
        self.message = message
        super().__init__(f"{broker}: {message}" if broker else message)


class Retryable(BrokerError):
    """The broker did not act on the request: sending it again is safe (after a backoff)."""


class RateLimited(Retryable):
    """The broker refused the request for now; wait ``retry_after_s`` (if it said) and retry."""

    def __init__(self, message: str, *, broker: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message, broker=broker)
        self.retry_after_s = retry_after_s


class BrokerUnavailable(Retryable):
    """The request never reached the broker (connection refused, DNS failure, connect timeout)."""


class Rejected(BrokerError):
    """The broker answered and refused the order (or the cancel/modify). Resending the same thing
    will be refused again; ``reason`` is the broker's own words."""

    def __init__(self, reason: str, *, broker: str | None = None) -> None:
        super().__init__(f"rejected: {reason}", broker=broker)
        self.reason = reason


class OrderNotFound(BrokerError):
    """The broker answered and knows no order with the given id."""

    def __init__(self, order_ref: str, *, broker: str | None = None) -> None:
        super().__init__(f"no order {order_ref!r}", broker=broker)
        self.order_ref = order_ref


class AuthFailed(BrokerError):
    """Credentials or token refused (HTTP 401/403 or the venue's equivalent). Not retryable as is:
    the token owner must refresh, or the operator must log in again."""


class AuthNeedsOperator(AuthFailed):
    """No automated way forward: a captcha (Tradovate's ``p-captcha``), an expired refresh token that
    only an interactive login renews (Schwab's 7 days), missing credentials. The token owner alerts
    the operator and stops retrying."""


class OutcomeUnknown(BrokerError):
    """The request may have been acted on: timeout or connection loss after sending, or a 5xx on a
    request with side effects, or an unreadable answer to one. Look the order up by its client id
    (``order_by_client_id``); never resend blindly."""


class NotSupported(BrokerError):
    """The broker lacks a capability (e.g. order execution on a data-only broker)."""

    def __init__(self, broker: str, capability: str, detail: str = "") -> None:
        text = f"broker {broker!r} does not support {capability}"
        super().__init__(f"{text} ({detail})" if detail else text)
        self.broker = broker
        self.capability = capability


class UnexpectedResponse(BrokerError):
    """The broker answered with something of the wrong shape; ``excerpt`` is a redacted fragment."""

    def __init__(self, message: str, *, broker: str | None = None, excerpt: str = "") -> None:
        self.excerpt = redact(excerpt) if excerpt else ""
        super().__init__(f"{message}: {self.excerpt}" if self.excerpt else message, broker=broker)


class UnknownSymbol(BrokerError, ValueError):
    """A symbol that is neither a canonical instrument/contract nor a known broker form of one."""

    def __init__(self, symbol: str, *, broker: str | None = None, detail: str = "") -> None:
        where = f" for broker {broker!r}" if broker else ""
        text = f"unknown symbol {symbol!r}{where}"
        super().__init__(f"{text} ({detail})" if detail else text, broker=None)
        self.broker = broker
        self.symbol = symbol
