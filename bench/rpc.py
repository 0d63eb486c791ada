"""RPC benchmark: ``python bench/rpc.py [--count N]`` (same as ``tradebus bench rpc``)."""
import common  # noqa: F401  (makes the repo importable when run from a checkout)

from services.bench import bench_rpc

if __name__ == "__main__":
    bench_rpc(prog_name="bench/rpc.py")
