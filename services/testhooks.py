"""Named crash points, for tests that must stop a process at an exact instant.

``TRADEBUS_CRASH_AT=account.after_write_ahead`` (comma-separated for several) makes the process
die at that point as abruptly as ``kill -9`` would: no cleanup, no flush, no lease release. With
the variable unset (always, in production) a crash point costs one set lookup.
"""
from __future__ import annotations

import os
import sys

CRASH_ENV = "TRADEBUS_CRASH_AT"
CRASH_EXIT_CODE = 86
_ARMED = frozenset(p.strip() for p in os.environ.get(CRASH_ENV, "").split(",") if p.strip())


def crash_point(name: str) -> None:
    if name in _ARMED:
        sys.stdout.write(f'{{"action":"crash_point","point":"{name}"}}\n')
        sys.stdout.flush()
        os._exit(CRASH_EXIT_CODE)
