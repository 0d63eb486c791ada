"""Pub/sub benchmark: ``python bench/bus.py [--count N] [--window W]`` (same as ``tradebus bench bus``)."""
import common  # noqa: F401  (makes the repo importable when run from a checkout)

from services.bench import bench_bus

if __name__ == "__main__":
    bench_bus(prog_name="bench/bus.py")
