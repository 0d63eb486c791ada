"""The bus benchmarks run end to end with tiny counts and print well-formed JSON.

No speed assertions: the figures depend on the machine and on whatever else runs on it. What is
checked is the shape of the document, that every variant moved every message, and that the
latencies are positive. One test goes through the script in ``bench/`` (a real subprocess, JSON on
stdout); the others call the click commands in this process.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from services.bench import bench

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
VARIANTS = ("raw_bytes", "raw_msgpack", "tradebus")


def _check_common(doc: dict, name: str, count: int) -> None:
    assert doc["bench"] == name
    assert doc["count"] == count
    machine = doc["machine"]
    assert machine["cpu_count"] >= 1 and machine["python"] and machine["platform"]
    assert set(doc["results"]) == set(VARIANTS)
    for result in doc["results"].values():
        assert 0 < result["p50_us"] <= result["p99_us"] <= result["max_us"]
    for target in doc["targets"].values():
        assert set(target) == {"target", "measured", "met"}
        assert isinstance(target["met"], bool)
    assert all(value is None or value > 0 for value in doc["ratios"].values())


def _check_bus(doc: dict, count: int) -> None:
    _check_common(doc, "bus", count)
    for result in doc["results"].values():
        assert result["sent"] == result["received"] == count
        assert result["lost"] == 0
        assert result["msgs_per_s"] > 0
    tradebus = doc["results"]["tradebus"]
    assert tradebus["gaps"] == 0 and tradebus["malformed"] == 0
    assert tradebus["journal"] is True and tradebus["journal_bytes"] > 0
    assert tradebus["busd_exit"] == 0
    assert doc["targets"]["pubsub_zero_gaps"]["met"] is True
    assert doc["ratios"]["tradebus_vs_raw_msgpack_msgs_per_s"] > 0
    ratios = sorted(r["ratio"] for r in doc["rounds"])
    assert doc["ratios"]["tradebus_vs_raw_msgpack_msgs_per_s"] == ratios[(len(ratios) - 1) // 2]  # the median
    assert all(r["tradebus_gaps"] == r["tradebus_lost"] == 0 for r in doc["rounds"])


def _check_rpc(doc: dict, count: int) -> None:
    _check_common(doc, "rpc", count)
    for result in doc["results"].values():
        assert result["calls"] == count
        assert result["errors"] == 0
        assert result["calls_per_s"] > 0
    tradebus = doc["results"]["tradebus"]
    assert tradebus["stale"] == 0 and tradebus["malformed"] == 0
    assert tradebus["busd_exit"] == 0
    assert doc["ratios"]["tradebus_vs_raw_bytes_p50"] > 0


def _invoke(*args: str) -> dict:
    result = CliRunner().invoke(bench, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_bench_bus_command() -> None:
    doc = _invoke("bus", "--count", "2000", "--window", "200", "--rounds", "3")
    _check_bus(doc, 2000)
    assert len(doc["rounds"]) == 3


def test_bench_rpc_command() -> None:
    _check_rpc(_invoke("rpc", "--count", "300"), 300)


def test_bench_rpc_script_prints_json() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "rpc.py"), "--count", "100"],
                          cwd=REPO, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr
    _check_rpc(json.loads(proc.stdout), 100)


def test_no_helper_left_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every helper process (router, workers, busd) has exited and the temp folder is gone."""
    import tempfile

    import services.bench as impl

    started: list[subprocess.Popen] = []
    real_start = impl.start_process

    def recording_start(args: list[str], log_path: Path) -> subprocess.Popen:
        proc = real_start(args, log_path)
        started.append(proc)
        return proc

    monkeypatch.setattr(impl, "start_process", recording_start)
    before = set(Path(tempfile.gettempdir()).glob("tbb-*"))
    _invoke("rpc", "--count", "20")
    assert len(started) == 6  # router + worker, twice; busd + worker
    assert all(proc.poll() is not None for proc in started)
    assert set(Path(tempfile.gettempdir()).glob("tbb-*")) <= before
