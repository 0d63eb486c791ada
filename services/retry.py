"""Retry policy as a pure function of (attempt, error) → delay or give up.

Whether an error may be retried is carried by its type (``brokers.errors.Retryable``,
``bus.errors.RequestTimeout`` …), never by matching message text. Delays are capped, jittered
exponential backoff; the jitter source is injected so tests are deterministic.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

BASE_DELAY_S = 0.2
MAX_DELAY_S = 10.0


@dataclass(frozen=True)
class Backoff:
    base_s: float = BASE_DELAY_S
    cap_s: float = MAX_DELAY_S
    max_attempts: int | None = None

    def delay(self, attempt: int, jitter: Callable[[], float] = random.random) -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` (attempts count from 1); None = give up."""
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return None
        ceiling = min(self.cap_s, self.base_s * (2 ** (attempt - 1)))
        # "Equal jitter": never less than half the ceiling, so a crowd of retries still spreads out
        # while no single retry hammers a dependency that just failed.
        return ceiling / 2 + (ceiling / 2) * jitter()
