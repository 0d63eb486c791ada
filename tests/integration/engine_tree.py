"""A real tradebus process tree under supervisord, in a folder of its own, for tests.

``EngineTree`` copies the repository's ``supervisord.conf`` into a temporary root, writes a
``tradebus.toml`` with fast bars and a free port, runs ``tradebus up`` as a subprocess and waits —
by polling supervisord over XML-RPC with a deadline, never by sleeping — until every process is
RUNNING. ``stop()`` shuts supervisord down and kills anything left, whatever the test did.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from supervisor.xmlrpc import SupervisorTransport

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
T = TypeVar("T")

DEFAULT_TOML = """
[engine]
reconcilers = {reconcilers}
reconcile_interval_s = 1.0
restarts = {restarts}
restart_window_s = 60
{db_line}

[venue_sim]
port = {port}
pace_s = {pace}
history_bars = 30
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - keep polling; reported at the deadline
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}"
                         + (f" (last error: {last_error!r})" if last_error else ""))


class EngineTree:
    def __init__(self, root: Path, *, pace: float = 0.1, reconcilers: int = 2, restarts: int = 5,
                 db_url: str | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "supervisord.conf", root / "supervisord.conf")
        self.venue_port = free_port()
        db_line = f'db_url = "{db_url}"' if db_url else ""
        (root / "tradebus.toml").write_text(DEFAULT_TOML.format(
            reconcilers=reconcilers, restarts=restarts, port=self.venue_port, pace=pace, db_line=db_line))
        self.env = {**os.environ, "TRADEBUS_ROOT": str(root), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        self.env.pop("TRADEBUS_DB_URL", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen_pids: set[int] = set()

    # ------------------------------------------------------------------ control

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def venue_url(self) -> str:
        return f"http://127.0.0.1:{self.venue_port}"

    def start(self, *, expect: set[str] | None = None, timeout: float = 60.0) -> None:
        out = open(self.root / "up.out", "wb")
        self.proc = subprocess.Popen([str(BIN / "tradebus"), "up"], cwd=self.root, env=self.env,
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        expected = expect or set()

        def all_running() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"tradebus up exited with {self.proc.returncode}: {self.tail('up.out')}")
            infos = self.processes()
            names = {name for name, info in infos.items() if info["statename"] == "RUNNING"}
            return bool(infos) and all(i["statename"] == "RUNNING" for i in infos.values()) and expected <= names

        wait_until(all_running, timeout=timeout, what=f"every process RUNNING (expected at least {sorted(expected)})")

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    self.pids()
                    self.rpc().supervisor.shutdown()
                except Exception:  # noqa: BLE001 - fall through to the kill below
                    pass
                try:
                    self.proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
        finally:
            for pid in self.seen_pids:  # anything supervisord could not stop
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    # ------------------------------------------------------------------ looking

    def rpc(self) -> Any:
        url = f"unix://{self.state / 'supervisor.sock'}"
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=SupervisorTransport(None, None, url))

    def processes(self) -> dict[str, dict[str, Any]]:
        infos = self.rpc().supervisor.getAllProcessInfo()
        return {(i["name"] if i["group"] == i["name"] else f"{i['group']}:{i['name']}"): i for i in infos}

    def pids(self) -> dict[str, int]:
        pids = {name: info["pid"] for name, info in self.processes().items() if info["statename"] == "RUNNING"}
        self.seen_pids.update(pids.values())
        return pids

    def tradebus(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(BIN / "tradebus"), *args], cwd=self.root, env=self.env, text=True,
                                capture_output=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"tradebus {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def log(self, name: str) -> str:
        path = self.state / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def tail(self, filename: str, lines: int = 40) -> str:
        path = self.root / filename
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def diagnostics(self) -> str:
        """Last lines of every log, for a failing test's report."""
        parts = []
        for path in sorted((self.state / "logs").glob("*.log")):
            tail = "\n".join(path.read_text(errors="replace").splitlines()[-15:])
            parts.append(f"--- {path.name}\n{tail}")
        return "\n".join(parts)
