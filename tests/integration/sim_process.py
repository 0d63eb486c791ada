"""Shared pieces of the venue dialect integration tests: the venue simulator as a real process
(``python -m brokers.sim.server --dialect X``), reading bars off a stream with a deadline, a token
source that counts refusals, and credentials in the environment. (Imported by the test modules;
not a test module itself.)"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import pytest
from bus_harness import REPO

from brokers.auth import LocalTokenSource, Token
from brokers.base import Bar
from brokers.sim.server import READY_FILE
from services.bench import stop_process

READY_DEADLINE_S = 20.0
ADMIN_TIMEOUT_S = 5.0
DEADLINE_S = 10.0
POLL_S = 0.02
LOG_TAIL_LINES = 40


class SimProcess:
    """One simulator process speaking ``dialect``, in ``root`` (``root/state`` holds its ready file,
    ``root/venue-sim.log`` its output). ``with`` starts it, waits until it is ready and always stops
    it, whatever the test did. Subclass it for a dialect's own views (its config, its admin calls)."""

    def __init__(self, root: Path, dialect: str, *, accounts: Iterable[str], symbols: Iterable[str],
                 pace_s: float = 0.2, history: int = 20, token_ttl_s: float | None = None,
                 seed: int | None = None, extra_args: Iterable[str] = ()) -> None:
        self.dialect = dialect
        self.state_dir = root / "state"
        self.log_path = root / "venue-sim.log"
        self.args = ["--port", "0", "--state-dir", str(self.state_dir), "--dialect", dialect,
                     "--pace", str(pace_s), "--history", str(history), "--accounts", ",".join(accounts),
                     "--symbols", ",".join(symbols)]
        if token_ttl_s is not None:
            self.args += ["--token-ttl-s", str(token_ttl_s)]
        if seed is not None:
            self.args += ["--seed", str(seed)]
        self.args += list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self._info: dict[str, Any] | None = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def start(self) -> Self:
        """Start the process and wait (``READY_DEADLINE_S``) for the ready file naming its pid."""
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "brokers.sim.server", *self.args],
                                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + READY_DEADLINE_S
            while (info := self._ready_info()) is None:
                if time.monotonic() > deadline:
                    pytest.fail(f"venue-sim ({self.dialect}) not ready within {READY_DEADLINE_S:g}s:\n"
                                f"{self.log_tail()}")
                time.sleep(POLL_S)
        except BaseException:
            self.stop()
            raise
        self._info = info
        return self

    def _ready_info(self) -> dict[str, Any] | None:
        """The ready file's contents once it is this process's (an older one's is not)."""
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"venue-sim ({self.dialect}) exited with {self.process.returncode}:\n{self.log_tail()}")
        try:
            info = json.loads((self.state_dir / READY_FILE).read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) and info.get("pid") == self.process.pid else None

    def stop(self) -> int | None:
        """SIGTERM to the process's pid, SIGKILL if it lingers; the exit code (None: never started)."""
        return stop_process(self.process)

    @property
    def info(self) -> dict[str, Any]:
        """The ready file: ``url``, ``pid``, ``dialect`` and, for a dialect with a WebSocket, ``ws_url``."""
        assert self._info is not None, "the simulator is not started"
        return self._info

    @property
    def url(self) -> str:
        return str(self.info["url"])

    @property
    def ws_url(self) -> str:
        ws_url = self.info.get("ws_url")
        assert isinstance(ws_url, str), f"the {self.dialect} dialect serves no WebSocket"
        return ws_url

    @property
    def pid(self) -> int:
        return int(self.info["pid"])

    @property
    def base_url(self) -> str:
        """Where the dialect's own endpoints live."""
        return f"{self.url}/{self.dialect}"

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        """``method path`` (``/v1/admin/...``, ``/<dialect>/admin/...``, any simulator path) with a JSON
        body; the JSON answer, which must be a 200."""
        response = httpx.request(method, self.url + path, json=body, timeout=ADMIN_TIMEOUT_S)
        assert response.status_code == 200, response.text
        return response.json()

    def stats(self) -> dict[str, Any]:
        """The simulator's own counts (``/v1/admin/stats``)."""
        return self.admin("GET", "/v1/admin/stats")

    def dialect_stats(self) -> dict[str, Any]:
        """The dialect's counts (``/<dialect>/admin/stats``)."""
        return self.admin("GET", f"/{self.dialect}/admin/stats")

    def submissions(self, client_order_id: str) -> int:
        """How many times an order with this client id reached the venue."""
        return int(self.stats()["submissions"].get(client_order_id, 0))

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the process's output, for a failure message."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"


@contextmanager
def environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """These environment variables set (None: removed) while inside, and put back after."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in values.items():
            if value is None:
                patch.delenv(name, raising=False)
            else:
                patch.setenv(name, value)
        yield


def collect_bars(stream: Iterator[Bar | None], count: int, deadline_s: float = DEADLINE_S) -> list[Bar]:
    """``count`` bars from a stream, keep-alives (None) skipped; fails, rather than hangs, past the deadline."""
    bars: list[Bar] = []
    deadline = time.monotonic() + deadline_s
    for item in stream:
        if item is not None:
            bars.append(item)
            if len(bars) >= count:
                return bars
        if time.monotonic() > deadline:
            pytest.fail(f"only {len(bars)} of {count} bars within {deadline_s:g}s")
    pytest.fail(f"the stream ended after {len(bars)} of {count} bars")


class CountingTokens:
    """A ``TokenSource`` that counts how often the venue refused a token."""

    def __init__(self, inner: LocalTokenSource) -> None:
        self.inner = inner
        self.rejections = 0

    def current(self) -> Token:
        return self.inner.current()

    def rejected(self, token: Token) -> Token:
        self.rejections += 1
        return self.inner.rejected(token)

    def on_new_token(self, callback: Callable[[Token], None]) -> None:
        self.inner.on_new_token(callback)
