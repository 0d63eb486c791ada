"""Where busd listens and everyone else connects.

By default three ipc sockets under ``<state>/bus/``, a folder only the owner can enter: ipc
sockets have no authentication, so file permissions are the access control. Across machines use
``Endpoints.tcp`` (and CURVE, configured by the caller).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bus.errors import EndpointError

BUS_DIR = "bus"
PUB_IN = "pub.in"
PUB_OUT = "pub.out"
RPC = "rpc"
READY_FILE = "busd.ready"
LOCK_FILE = "busd.lock"
DIR_MODE = 0o700
# sockaddr_un.sun_path is 108 bytes on Linux including the terminating NUL (104 on macOS/BSD).
IPC_PATH_MAX = 107


@dataclass(frozen=True, slots=True)
class Endpoints:
    pub_in: str
    pub_out: str
    rpc: str
    bus_dir: Path | None = None  # set for ipc endpoints: holds the sockets, ready and lock files

    @classmethod
    def for_state_dir(cls, state_dir: Path | str) -> Endpoints:
        """ipc endpoints under ``<state_dir>/bus``. Raises ``EndpointError`` if a path is too long."""
        bus_dir = Path(os.path.abspath(state_dir)) / BUS_DIR
        paths = [bus_dir / name for name in (PUB_IN, PUB_OUT, RPC)]
        for path in paths:
            size = len(os.fsencode(path))
            if size > IPC_PATH_MAX:
                raise EndpointError(
                    f"ipc socket path is {size} bytes, over the {IPC_PATH_MAX}-byte limit of unix "
                    f"sockets: {path} (use a shorter state folder)")
        return cls(*(f"ipc://{p}" for p in paths), bus_dir=bus_dir)

    @classmethod
    def tcp(cls, host: str, base_port: int) -> Endpoints:
        """tcp endpoints on three consecutive ports (busd binds ``host``; clients connect to it)."""
        return cls(f"tcp://{host}:{base_port}", f"tcp://{host}:{base_port + 1}",
                   f"tcp://{host}:{base_port + 2}")

    @property
    def ready_file(self) -> Path | None:
        """busd writes its pid here once bound, so a supervisor or a test can wait for it."""
        return self.bus_dir / READY_FILE if self.bus_dir else None

    @property
    def lock_file(self) -> Path | None:
        return self.bus_dir / LOCK_FILE if self.bus_dir else None

    def ensure_dir(self) -> None:
        """Create the bus folder owner-only (0700), tightening it if it already exists."""
        if self.bus_dir is None:
            return
        self.bus_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(self.bus_dir, DIR_MODE)
