"""Shared helpers for the scripts in ``bench/``.

The implementation lives in ``services/bench.py`` (an installed package, so ``tradebus bench``
can use it); this module only makes sure the repository is importable when a script is run from a
checkout without the editable install, and re-exports the helpers.
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from services.bench import (  # noqa: E402
    Workspace,
    latency_stats_us,
    machine_info,
    percentile,
    run_bus,
    run_rpc,
    start_process,
    stop_process,
    wait_for,
)

__all__ = ["Workspace", "latency_stats_us", "machine_info", "percentile", "run_bus", "run_rpc",
           "start_process", "stop_process", "wait_for"]
