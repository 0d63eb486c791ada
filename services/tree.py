"""A whole tradebus process tree under supervisord, in a folder of its own.

``EngineTree`` copies the repository's ``supervisord.conf`` into a root folder, writes a
``tradebus.toml`` (fast bars, a free venue port, the given database), runs ``tradebus up`` as a
subprocess and waits — by polling supervisord over XML-RPC with a deadline, never by sleeping —
until every process is RUNNING. ``stop()`` shuts supervisord down and kills anything left of this
tree, whatever happened before. The integration tests and ``tradebus chaos`` both drive it.
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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from supervisor.xmlrpc import SupervisorTransport

if TYPE_CHECKING:
    from schema.store import Store

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
T = TypeVar("T")

START_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 40.0
VENUE_TIMEOUT_S = 5.0
LOG_TAIL_LINES = 15

DEFAULT_TOML = """
[engine]
reconcilers = {reconcilers}
reconcile_interval_s = {reconcile_interval_s}
restarts = {restarts}
restart_window_s = {restart_window_s}
{db_line}

[venue_sim]
port = {port}
pace_s = {pace}
history_bars = 30
{seed_line}
{venue_lines}
{extra}
"""


class TreeError(Exception):
    """The tree did not do what it was asked (start, stop, answer) in time."""


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
        except TreeError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep polling; reported at the deadline
            last_error = exc
        time.sleep(interval)
    raise TreeError(f"timed out after {timeout:g} s waiting for {what}"
                    + (f" (last error: {last_error!r})" if last_error else ""))


def prepare_root(root: Path, toml: str) -> dict[str, str]:
    """Make ``root`` an installation (the repository's supervisord.conf and the given
    tradebus.toml) and return the environment its processes and CLI calls run with."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "supervisord.conf", root / "supervisord.conf")
    (root / "tradebus.toml").write_text(toml)
    env = {**os.environ, "TRADEBUS_ROOT": str(root), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("TRADEBUS_DB_URL", None)  # the toml (or the SQLite default) decides
    return env


class EngineTree:
    def __init__(self, root: Path, *, pace: float = 0.1, reconcilers: int = 2, restarts: int = 5,
                 restart_window_s: float = 60.0, reconcile_interval_s: float = 1.0,
                 db_url: str | None = None, venue_seed: int | None = None, venue_lines: str = "",
                 extra_toml: str = "") -> None:
        """``venue_lines`` go into ``[venue_sim]`` (e.g. ``dialect = "tradovate"``); ``extra_toml`` is
        appended after it (more sections)."""
        self.root = Path(root).resolve()
        self.venue_port = free_port()
        self._db_url = db_url
        self.env = prepare_root(self.root, DEFAULT_TOML.format(
            reconcilers=reconcilers, reconcile_interval_s=float(reconcile_interval_s), restarts=restarts,
            restart_window_s=float(restart_window_s), port=self.venue_port, pace=pace,
            db_line=f'db_url = "{db_url}"' if db_url else "",
            seed_line="" if venue_seed is None else f"seed = {int(venue_seed)}",
            venue_lines=venue_lines, extra=extra_toml))
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen_pids: set[int] = set()

    # ------------------------------------------------------------------ control

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def venue_url(self) -> str:
        return f"http://127.0.0.1:{self.venue_port}"

    @property
    def db_url(self) -> str:
        return self._db_url or f"sqlite:///{self.state / 'tradebus.db'}"

    def start(self, *, expect: set[str] | None = None, timeout: float = START_TIMEOUT_S) -> None:
        with open(self.root / "up.out", "wb") as out:
            self.proc = subprocess.Popen([str(BIN / "tradebus"), "up"], cwd=self.root, env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_running(expect=expect, timeout=timeout)

    def wait_running(self, *, expect: set[str] | None = None, timeout: float = START_TIMEOUT_S) -> dict[str, int]:
        """Wait until every process is RUNNING (and at least ``expect`` exist); their pids."""
        expected = expect or set()

        def all_running() -> dict[str, int] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise TreeError(f"tradebus up exited with {self.proc.returncode}: {self.tail('up.out')}")
            infos = self.processes()
            names = {name for name, info in infos.items() if info["statename"] == "RUNNING"}
            if infos and all(i["statename"] == "RUNNING" for i in infos.values()) and expected <= names:
                return self.pids()
            return None

        return wait_until(all_running, timeout=timeout,
                          what=f"every process RUNNING (expected at least {sorted(expected)})")

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    self.pids()
                    self.rpc().supervisor.shutdown()
                except Exception:  # noqa: BLE001 - fall through to the kill below
                    pass
                try:
                    self.proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
        finally:
            for pid in self.seen_pids:  # anything supervisord could not stop
                if self.owns(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass

    def stop_program(self, name: str, *, wait: bool = True) -> None:
        """An administrative stop (STOPPED, not EXITED: sessionguard leaves it stopped)."""
        self.rpc().supervisor.stopProcess(name, wait)

    def start_program(self, name: str, *, wait: bool = True) -> None:
        self.rpc().supervisor.startProcess(name, wait)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int | None:
        """Send ``sig`` to program ``name`` if it is RUNNING; its pid, or None when it was not."""
        pid = self.pids().get(name)
        if pid is None or not self.owns(pid):
            return None
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return None
        return pid

    def owns(self, pid: int) -> bool:
        """Whether ``pid`` is (still) a process of this tree: a pid seen here once may since have
        been reused by an unrelated process, which must never be killed."""
        environ = Path(f"/proc/{pid}/environ")
        if not Path("/proc/self/environ").exists():
            return True  # no procfs: trust supervisord's answer
        try:
            return f"TRADEBUS_ROOT={self.root}".encode() in environ.read_bytes().split(b"\0")
        except OSError:
            return False

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

    def store(self) -> Store:
        """A store on the tree's database; the caller closes it."""
        from schema.store import Store

        return Store.from_url(self.db_url)

    def venue(self, path: str, params: Mapping[str, str] | None = None, *, method: str = "GET",
              json: Any = None, timeout: float = VENUE_TIMEOUT_S) -> httpx.Response:
        """One HTTP call to the tree's venue simulator (``path`` under its root, e.g. ``/v1/health``)."""
        return httpx.request(method, f"{self.venue_url}{path}", params=params, json=json, timeout=timeout)

    def venue_json(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET ``path`` from the venue; its JSON body (an HTTP error status raises)."""
        response = self.venue(path, params)
        response.raise_for_status()
        return response.json()

    def tradebus(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(BIN / "tradebus"), *args], cwd=self.root, env=self.env, text=True,
                                capture_output=True, timeout=timeout)
        if check and result.returncode != 0:
            raise TreeError(f"tradebus {' '.join(args)} failed ({result.returncode}):\n"
                            f"{result.stdout}\n{result.stderr}")
        return result

    def log(self, name: str) -> str:
        path = self.state / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def tail(self, filename: str, lines: int = 40) -> str:
        path = self.root / filename
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def diagnostics(self, lines: int = LOG_TAIL_LINES) -> str:
        """Last lines of every log, for a failing run's report."""
        parts = []
        for path in sorted((self.state / "logs").glob("*.log")):
            tail = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            parts.append(f"--- {path.name}\n{tail}")
        return "\n".join(parts)
