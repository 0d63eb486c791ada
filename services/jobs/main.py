"""A jobs worker: runs heavy work from the durable queue, never inside a trading loop.

Several workers run (supervisord ``numprocs``). Each claims one job at a time with a time-limited
claim (``FOR UPDATE SKIP LOCKED`` on PostgreSQL); a worker that dies loses its claim when it
expires and another worker takes the job over. A job is completed by exactly one worker: the
store refuses a completion from a worker whose claim was taken over (``FencedOut``).
"""
from __future__ import annotations

import json
import logging
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

from brokers.errors import UnknownSymbol
from brokers.instruments import canonical_root, instrument
from brokers.sim.feed import CsvFeedError
from bus.envelope import now_ns
from bus.logs import log
from schema.errors import FencedOut, SessionNotFound, StoreUnavailable
from services.jobs.core import (
    BACKTEST,
    EOD_REPORT,
    RETRY,
    BacktestRequest,
    FillRow,
    PermanentJobError,
    day_bounds_ns,
    eod_report,
    parse_day,
)
from services.backtest.core_run import run_backtest
from services.runtime import ProcessShell
from services.strategy.core import ParamError

CLAIM_S = 60.0
IDLE_POLL_S = 0.5


class JobsWorker:
    def __init__(self, shell: ProcessShell, worker: int) -> None:
        self.shell = shell
        self.log = shell.log
        self.worker = worker
        self.store = shell.store()
        self.reports = shell.config.paths.state / "reports"

    def run(self) -> None:
        try:
            while not self.shell.stopping:
                try:
                    job = self.store.claim_job(self.shell.owner, claim_ns=int(CLAIM_S * 1e9), now_ns=now_ns())
                    if job is None:
                        self.shell.pause(IDLE_POLL_S)
                        continue
                    self.run_one(job)
                    self.shell.outage.up()
                except StoreUnavailable as exc:
                    # A claim not completed expires and the job runs again: jobs are written to be
                    # repeatable (a report is rewritten whole).
                    self.shell.outage.down(exc, "running jobs")
                    self.shell.pause(IDLE_POLL_S)
        finally:
            self.store.close()

    def run_one(self, job: Any) -> None:
        log(self.log, "job_started", job=job.id, kind=job.kind, attempt=job.attempts)
        try:
            result = self.handle(job.kind, job.payload)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on the job
            permanent = isinstance(exc, PermanentJobError)
            delay = None if permanent else RETRY.delay(job.attempts)
            retry_at = None if delay is None else now_ns() + int(delay * 1e9)
            error = f"{type(exc).__name__}: {exc}"
            try:
                self.store.fail_job(job.id, self.shell.owner, error=error, retry_at_ns=retry_at, now_ns=now_ns())
            except FencedOut:
                log(self.log, "job_claim_lost", level=logging.WARNING, job=job.id)
                return
            log(self.log, "job_failed", level=logging.WARNING, job=job.id, kind=job.kind, error=error,
                retry_in_s=None if delay is None else round(delay, 3))
            return
        try:
            self.store.complete_job(job.id, self.shell.owner, result=result, now_ns=now_ns())
        except FencedOut:
            log(self.log, "job_claim_lost", level=logging.WARNING, job=job.id)
            return
        log(self.log, "job_done", job=job.id, kind=job.kind)

    def handle(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        if kind == EOD_REPORT:
            return self.eod_report(payload)
        if kind == BACKTEST:
            return backtest(BacktestRequest.from_payload(payload))
        raise PermanentJobError(f"no handler for job kind {kind!r}")

    def eod_report(self, payload: dict[str, Any]) -> dict[str, Any]:
        day = parse_day(payload)
        try:
            session = self.store.get_session(str(payload.get("session")))
        except SessionNotFound as exc:
            raise PermanentJobError(f"no session {payload.get('session')!r}") from exc
        start_ns, end_ns = day_bounds_ns(day)
        fills = [f for f in self.store.fills(session.name) if f.symbol == session.contract]
        before = [f for f in fills if f.ts_ns < start_ns]
        opening = sum(((f.quantity if str(f.side) == "buy" else -f.quantity) for f in before), Decimal(0))
        spec = instrument(canonical_root(session.contract))
        report = eod_report(
            session=session.name, symbol=session.contract, day=day, point_value=spec.point_value,
            fee_per_contract=Decimal(str(payload.get("fee_per_contract", "0"))),
            opening_position=opening, opening_average=_average(before) if opening else None,
            fills=[FillRow(f.ts_ns, str(f.side), f.quantity, f.price) for f in fills if start_ns <= f.ts_ns < end_ns])
        self.reports.mkdir(parents=True, exist_ok=True)
        path = self.reports / f"{session.name}-{day.isoformat()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, path)
        return {**report, "file": str(path)}


def backtest(request: BacktestRequest) -> dict[str, Any]:
    """Run one backtest in this process; the report (when asked for) is written whole, so a rerun
    after a lost claim just rewrites it."""
    try:
        result = run_backtest(request.csv, request.symbol, request.strategy, request.params,
                              None if request.out_dir is None else Path(request.out_dir), interval=request.interval,
                              slippage_ticks=request.slippage_ticks,
                              commission_per_contract=request.commission_per_contract)
    except (ParamError, CsvFeedError, UnknownSymbol, FileNotFoundError) as exc:
        raise PermanentJobError(f"{type(exc).__name__}: {exc}") from exc
    return {"params": request.params, "summary": result.summary, "out_dir": request.out_dir,
            "bars_per_s": round(result.bars_per_s, 1)}


def _average(fills: list[Any]) -> Decimal | None:
    """Average entry price of the position the earlier fills leave (replayed through the report)."""
    report = eod_report(session="", symbol="", day=parse_day({"day": "1970-01-01"}), point_value=Decimal(1),
                        fee_per_contract=Decimal(0), opening_position=Decimal(0), opening_average=None,
                        fills=[FillRow(f.ts_ns, str(f.side), f.quantity, f.price) for f in fills])
    return None if report["closing_average"] is None else Decimal(report["closing_average"])


def run(shell: ProcessShell, worker: int) -> None:
    JobsWorker(shell, worker).run()
