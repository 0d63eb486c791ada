"""Shared pieces of the bus integration tests: busd as a real process, polling with a deadline,
and hand-made messages. (Imported by the test modules; not a test module itself.)"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import pytest

from bus.client import Subscriber
from bus.codec import encode
from bus.endpoints import Endpoints
from bus.envelope import Envelope, new_id
from schema import messages as m
from schema.messages import SCHEMA_VERSION

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 10.0
POLL_S = 0.01
T = TypeVar("T")


def wait_until(predicate: Callable[[], T | None], what: str, timeout_s: float = WAIT_S) -> T:
    """Poll ``predicate`` until it returns something truthy, or fail saying what never happened."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(POLL_S)


@dataclass
class BusdProcess:
    state: Path
    args: tuple[str, ...]
    proc: subprocess.Popen | None = None
    log_paths: list[Path] = field(default_factory=list)

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints.for_state_dir(self.state)

    def start(self) -> BusdProcess:
        log_path = self.state / f"busd-{len(self.log_paths)}.log"
        self.log_paths.append(log_path)
        with open(log_path, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bus.busd", "--state-dir", str(self.state), *self.args],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        proc, ready = self.proc, self.endpoints.ready_file
        assert ready is not None

        def is_ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"busd exited with {proc.returncode}: {log_path.read_text()}")
            try:  # the file can go between a look and a read (a busd stopping): not ready
                return ready.read_text().strip() == str(proc.pid)
            except FileNotFoundError:
                return False

        wait_until(is_ready, "busd's ready file")
        return self

    def logs(self) -> list[dict]:
        """Every JSON log line of the current busd process."""
        if not self.log_paths or not self.log_paths[-1].exists():
            return []
        return [json.loads(line) for line in self.log_paths[-1].read_text().splitlines()
                if line.startswith("{") and line.endswith("}")]

    def wait_log(self, what: str, predicate: Callable[[dict], bool], count: int = 1) -> list[dict]:
        def found() -> list[dict] | None:
            lines = [r for r in self.logs() if predicate(r)]
            return lines if len(lines) >= count else None

        return wait_until(found, f"busd log: {what}")  # type: ignore[return-value]

    @property
    def starts(self) -> int:
        """How many times this busd was started (restarts included)."""
        return len(self.log_paths)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(WAIT_S)

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit code (None if it was not running)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT_S)
        return self.proc.returncode


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def bar(i: int, symbol: str = "ESZ4") -> m.BarClosed:
    return m.BarClosed(symbol=symbol, interval="1m", ts_ns=i, open=Decimal("4500.25"), high=Decimal("4501"),
                       low=Decimal("4499.75"), close=Decimal("0.1"), volume=Decimal(i), index=i)


def raw_envelope(topic: str, body: m.Message, *, source: str = "raw", epoch: str = "e1", seq: int = 1,
                 message_id: str | None = None, version: int = SCHEMA_VERSION) -> bytes:
    return encode(Envelope(version, body.TYPE, topic, source, epoch, seq, message_id or new_id(), None, None,
                           None, 1, 1, body))


def drain(sub: Subscriber, timeout_ms: int = 300) -> list[Envelope]:
    out = []
    while (envelope := sub.recv(timeout_ms)) is not None:
        out.append(envelope)
    return out


@contextmanager
def started_busd(prefix: str, *args: str) -> Iterator[BusdProcess]:
    """A busd in a fresh short state folder (ipc paths are length-limited), stopped and removed after."""
    state = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    process = BusdProcess(state, args)
    try:
        yield process.start()
    finally:
        process.stop()
        shutil.rmtree(state, ignore_errors=True)
