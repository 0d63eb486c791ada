"""The chaos run in its reduced CI form: `tradebus chaos --duration 25 --seed 7 --json` as a
subprocess, on the real tree, with kills and simulator faults; every invariant must hold."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

DURATION_S = 25
SEED = 7
RUN_TIMEOUT_S = 240
TEARDOWN_TIMEOUT_S = 90


def run_chaos_command(*args: str) -> tuple[int, str, str]:
    proc = subprocess.Popen([sys.executable, "-m", "services.chaos", *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the command stops its tree on an interrupt
        try:
            out, err = proc.communicate(timeout=TEARDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"chaos ran longer than {RUN_TIMEOUT_S} s\n{err[-20000:]}")
    return proc.returncode, out, err


def test_kills_and_faults_leave_no_order_doubled_or_lost() -> None:
    # Given the demo tree trading fast, when processes are killed and the venue misbehaves for 25 s
    code, out, err = run_chaos_command("--duration", str(DURATION_S), "--seed", str(SEED), "--json")
    report = json.loads(out) if out.strip() else {}
    context = f"stdout:\n{out}\nstderr:\n{err[-20000:]}"
    # Then the storm really happened ...
    assert report, f"no JSON report (exit {code})\n{context}"
    assert report["error"] is None, context
    assert report["kills_total"] >= 5, context
    assert report["faults_enabled"] and (report["faults_hit"] or 0) >= 1, context
    assert report["counts"]["venue fills"] > 0, context
    # ... and afterwards every invariant holds, and the command says so
    broken = [inv for inv in report["invariants"] if not inv["ok"]]
    assert broken == [], context
    assert report["ok"] is True and code == 0, context
