"""Access and refresh tokens as the simulated venues issue them.

Random opaque strings (``secrets.token_urlsafe``) with a lifetime (``--token-ttl-s``). Refresh tokens
either rotate (each use returns a new one and kills the old: TradeStation, Schwab, Deribit) or not;
``renew`` extends a session with a new access token (Tradovate's ``renewaccesstoken``). ``expire_all``
makes every access token stale at once (the admin endpoint a test calls to force expiry mid-run).
Thread-safe; the clock is wall time because venues state expiry as wall time.
"""
from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_TTL_S = 1200.0


@dataclass(frozen=True)
class Issued:
    subject: str
    access_token: str
    refresh_token: str
    expires_in_s: int
    expires_at: float
    """Wall-clock seconds."""


class SimTokens:
    def __init__(self, ttl_s: float = DEFAULT_TTL_S, *, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._access: dict[str, tuple[str, float]] = {}   # access token → (subject, expires_at)
        self._refresh: dict[str, str] = {}                # live refresh token → subject
        self.issued = 0
        self.refreshed = 0
        self.refused = 0

    def issue(self, subject: str, *, refresh_token: str | None = None) -> Issued:
        """A new access token for ``subject``; a new refresh token unless one is given to keep."""
        with self._lock:
            return self._issue(subject, refresh_token)

    def _issue(self, subject: str, refresh_token: str | None) -> Issued:
        access = secrets.token_urlsafe(24)
        expires_at = self._clock() + self.ttl_s
        self._access[access] = (subject, expires_at)
        if refresh_token is None:
            refresh_token = secrets.token_urlsafe(24)
        self._refresh[refresh_token] = subject
        self.issued += 1
        return Issued(subject, access, refresh_token, int(self.ttl_s), expires_at)

    def subject_of(self, access_token: str | None) -> str | None:
        """Whose live token this is; None if unknown or expired (counted as refused)."""
        with self._lock:
            entry = self._access.get(access_token or "")
            if entry is None or entry[1] <= self._clock():
                self.refused += 1
                return None
            return entry[0]

    def seed_refresh(self, subject: str, refresh_token: str) -> None:
        """A refresh token the operator obtained by logging in (OAuth2 authorization-code flows)."""
        with self._lock:
            self._refresh[refresh_token] = subject

    def refresh(self, refresh_token: str, *, rotate: bool) -> Issued | None:
        """A new access token for a live refresh token; None if the refresh token is unknown (or was
        rotated away). With ``rotate`` the old refresh token dies and a new one is returned."""
        with self._lock:
            subject = self._refresh.get(refresh_token)
            if subject is None:
                self.refused += 1
                return None
            if rotate:
                del self._refresh[refresh_token]
            self.refreshed += 1
            return self._issue(subject, None if rotate else refresh_token)

    def renew(self, access_token: str) -> Issued | None:
        """Same session, new access token (the old one keeps working until it expires)."""
        with self._lock:
            entry = self._access.get(access_token)
            if entry is None or entry[1] <= self._clock():
                self.refused += 1
                return None
            self.refreshed += 1
            access = secrets.token_urlsafe(24)
            expires_at = self._clock() + self.ttl_s
            self._access[access] = (entry[0], expires_at)
            return Issued(entry[0], access, "", int(self.ttl_s), expires_at)

    def expire_all(self) -> int:
        with self._lock:
            now = self._clock()
            live = [t for t, (_, exp) in self._access.items() if exp > now]
            for token in live:
                subject, _ = self._access[token]
                self._access[token] = (subject, now)
            return len(live)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"issued": self.issued, "refreshed": self.refreshed, "refused": self.refused}
