"""Backtest speed benchmark: ``python bench/replay.py [--bars N] [--pipeline-bars N]`` (same as ``tradebus bench replay``)."""
import common  # noqa: F401  (makes the repo importable when run from a checkout)

from services.backtest.bench_replay import bench_replay

if __name__ == "__main__":
    bench_replay(prog_name="bench/replay.py")
