"""Bar intervals as strings (``"1m"``) and their length in nanoseconds."""
from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

NS_PER_SECOND = 1_000_000_000

_UNITS: Mapping[str, int] = MappingProxyType({
    "s": NS_PER_SECOND,
    "m": 60 * NS_PER_SECOND,
    "h": 3600 * NS_PER_SECOND,
    "d": 86400 * NS_PER_SECOND,
})
_INTERVAL = re.compile(r"^([1-9]\d*)([smhd])$")


def interval_ns(interval: str) -> int:
    """``"1m"`` → 60_000_000_000. Units: s, m, h, d. ``ValueError`` on anything else."""
    match = _INTERVAL.match(interval)
    if match is None:
        raise ValueError(f"bad interval {interval!r}: expected e.g. 30s, 1m, 5m, 1h, 1d")
    count, unit = match.groups()
    return int(count) * _UNITS[unit]
