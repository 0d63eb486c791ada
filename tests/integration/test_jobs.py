"""Three jobs workers on one queue: every job runs to completion exactly once, and a job whose
worker died is taken over when its claim expires."""
from __future__ import annotations

import json
import signal
import subprocess
import time
import sys
from collections import Counter
from pathlib import Path

import pytest
from engine_tree import wait_until

from schema.errors import FencedOut
from schema.store import Store
from services.jobs.core import EOD_REPORT
from services.tree import prepare_root

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
WORKERS = 3
JOBS = 30


def test_three_workers_run_each_job_once_and_take_over_a_dead_workers_job(tmp_path: Path) -> None:
    env = prepare_root(tmp_path, f"[engine]\njob_workers = {WORKERS}\n")
    subprocess.run([str(BIN / "tradebus"), "init"], env=env, check=True, capture_output=True)
    store = Store.from_url(f"sqlite:///{tmp_path / 'state' / 'tradebus.db'}")
    # Given a job claimed by a worker that then died (its claim runs out in half a second)
    orphan = store.enqueue_job(EOD_REPORT, {"session": "es-sma", "day": "2026-01-01"}, now_ns=0)
    claimed = store.claim_job("dead-worker", claim_ns=500_000_000, now_ns=time.time_ns())
    assert claimed is not None and claimed.id == orphan.id
    # ... and many more jobs, including one that can never succeed
    ids = [store.enqueue_job(EOD_REPORT, {"session": "es-sma", "day": f"2026-03-{d:02d}"}, now_ns=0).id
           for d in range(1, JOBS + 1)]
    bad = store.enqueue_job(EOD_REPORT, {"session": "nobody", "day": "2026-02-01"}, now_ns=0).id
    procs = []
    try:
        for worker in range(WORKERS):
            out = open(tmp_path / f"jobs_{worker}.log", "wb")
            procs.append(subprocess.Popen([str(BIN / "tradebus"), "run", "jobs", "--worker", str(worker)],
                                          env=env, stdout=out, stderr=subprocess.STDOUT))
        # When the workers drain the queue
        wait_until(lambda: all(str(store.get_job(i).status) in ("done", "failed") for i in [orphan.id, *ids, bad]),
                   timeout=60, what="every job to finish")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=20)
    # Then every job was completed exactly once, by one of the live workers
    done = Counter()
    for worker in range(WORKERS):
        for line in (tmp_path / f"jobs_{worker}.log").read_text().splitlines():
            record = json.loads(line)
            if record.get("action") == "job_done":
                done[record["job"]] += 1
    assert all(done[i] == 1 for i in [orphan.id, *ids]), done
    assert str(store.get_job(orphan.id).status) == "done"
    # The dead worker's late completion is refused: the job cannot be completed twice
    with pytest.raises(FencedOut):
        store.complete_job(orphan.id, "dead-worker", result={}, now_ns=1)
    # And the impossible job failed at once, keeping its error
    failed = store.get_job(bad)
    assert str(failed.status) == "failed" and "no session" in (failed.error or "")
    assert (tmp_path / "state" / "reports" / "es-sma-2026-03-01.json").exists()
    store.close()
