"""Where busd listens and everyone else connects.

By default three ipc sockets under ``<state>/bus/``, a folder only the owner can enter: ipc
sockets have no authentication, so file permissions are the access control.

Across machines the bus runs on tcp, and tcp always goes with CURVE: busd's sockets are CURVE
servers and every client proves a keypair that busd's allow-list (``<state>/keys/allowed``)
holds; see ``bus.keys``. The choice is the ``[bus]`` table of the installation's
``tradebus.toml`` (beside the state folder), read here so that every process that calls
``Endpoints.for_state_dir`` follows it unchanged::

    [bus]
    transport = "tcp"        # "ipc" (default) or "tcp"
    host = "10.0.0.5"        # busd binds it; clients connect to it
    pub_port = 47660         # pub.in  (publishers)
    sub_port = 47661         # pub.out (subscribers)
    rpc_port = 47662         # rpc     (callers and workers)
    client_key = "engine"    # which <state>/keys/clients/<name> keypair this machine's clients use
"""
from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

CONFIG_FILE = "tradebus.toml"  # <root>/tradebus.toml beside <root>/state
BUS_TABLE = "bus"
IPC = "ipc"
TCP = "tcp"
TRANSPORTS = (IPC, TCP)
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PUB_PORT = 47660
DEFAULT_SUB_PORT = 47661
DEFAULT_RPC_PORT = 47662
DEFAULT_CLIENT_KEY = "engine"


@dataclass(frozen=True, slots=True)
class BusSettings:
    """The ``[bus]`` table, validated. Defaults mean: ipc, exactly as without a table."""

    transport: str = IPC
    host: str = DEFAULT_HOST
    pub_port: int = DEFAULT_PUB_PORT
    sub_port: int = DEFAULT_SUB_PORT
    rpc_port: int = DEFAULT_RPC_PORT
    client_key: str = DEFAULT_CLIENT_KEY

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> BusSettings:
        """Validate a ``[bus]`` table; raises ``EndpointError`` naming the bad key."""
        if not isinstance(table, Mapping):
            raise EndpointError("[bus] must be a table")
        allowed = {f for f in cls.__dataclass_fields__}
        unknown = set(table) - allowed
        if unknown:
            raise EndpointError(f"unknown key(s) in [bus]: {sorted(unknown)}")
        transport = table.get("transport", IPC)
        if transport not in TRANSPORTS:
            raise EndpointError(f"bus.transport must be one of {list(TRANSPORTS)}, got {transport!r}")
        host = table.get("host", DEFAULT_HOST)
        if not isinstance(host, str) or not host or any(ch.isspace() or ch in "/:" for ch in host):
            raise EndpointError(f"bus.host must be a host name or IPv4 address, got {host!r}")
        ports = {}
        for key, default in (("pub_port", DEFAULT_PUB_PORT), ("sub_port", DEFAULT_SUB_PORT),
                             ("rpc_port", DEFAULT_RPC_PORT)):
            value = table.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
                raise EndpointError(f"bus.{key} must be a port number 1..65535, got {value!r}")
            ports[key] = value
        if len(set(ports.values())) != len(ports):
            raise EndpointError(f"bus ports must differ, got {ports}")
        client_key = table.get("client_key", DEFAULT_CLIENT_KEY)
        if not isinstance(client_key, str):
            raise EndpointError(f"bus.client_key must be a key name, got {client_key!r}")
        from bus.keys import validate_client_name

        validate_client_name(client_key)
        return cls(transport, host, ports["pub_port"], ports["sub_port"], ports["rpc_port"], client_key)

    @classmethod
    def for_state_dir(cls, state_dir: Path | str) -> BusSettings:
        """The ``[bus]`` table of ``tradebus.toml`` beside ``state_dir``; defaults if there is none."""
        path = Path(os.path.abspath(state_dir)).parent / CONFIG_FILE
        if not path.is_file():
            return cls()
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise EndpointError(f"{path}: cannot read the [bus] table: {exc}") from exc
        try:
            return cls.from_table(raw.get(BUS_TABLE, {}))
        except EndpointError as exc:
            raise EndpointError(f"{path}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Curve:
    """CURVE key material (z85) for tcp endpoints. busd reads its own secret from ``keys_dir``;
    clients use ``client_public``/``client_secret``. Secrets never appear in ``repr``."""

    keys_dir: Path
    server_public: bytes
    client_name: str = DEFAULT_CLIENT_KEY
    client_public: bytes | None = None
    client_secret: bytes | None = field(default=None, repr=False)

    @classmethod
    def for_keys_dir(cls, keys_dir: Path | str, client_name: str = DEFAULT_CLIENT_KEY) -> Curve:
        """Load the server's public key (required) and client ``client_name``'s keypair (if present:
        busd itself needs none; a client without one is refused when it makes a socket)."""
        from bus.keys import KeyFileError, KeyStore

        store = KeyStore(keys_dir)
        server_public = store.server_public()
        try:
            client_public, client_secret = store.client_keys(client_name)
        except KeyFileError:
            client_public = client_secret = None
        return cls(store.dir, server_public, client_name, client_public, client_secret)

    def client_keys(self) -> tuple[bytes, bytes]:
        if self.client_public is None or self.client_secret is None:
            raise EndpointError(
                f"no client key {self.client_name!r} in {self.keys_dir}/clients: run "
                f"`tradebus keys generate --name {self.client_name}` (the bus is tcp, so CURVE is required)")
        return self.client_public, self.client_secret


@dataclass(frozen=True, slots=True)
class Endpoints:
    pub_in: str
    pub_out: str
    rpc: str
    bus_dir: Path | None = None  # holds the ready and lock files (and, for ipc, the sockets)
    curve: Curve | None = None  # set for tcp: busd is a CURVE server, clients are CURVE clients

    @classmethod
    def for_state_dir(cls, state_dir: Path | str, settings: BusSettings | None = None) -> Endpoints:
        """The endpoints of the bus of this state folder, as ``[bus]`` in ``tradebus.toml`` says
        (``settings`` overrides the file). ipc: sockets under ``<state_dir>/bus``; tcp: CURVE keys
        from ``<state_dir>/keys``. Raises ``EndpointError`` (an ipc path too long, a bad ``[bus]``
        table, no server key)."""
        if settings is None:
            settings = BusSettings.for_state_dir(state_dir)
        bus_dir = Path(os.path.abspath(state_dir)) / BUS_DIR
        if settings.transport == TCP:
            from bus.keys import KEYS_DIR

            curve = Curve.for_keys_dir(Path(os.path.abspath(state_dir)) / KEYS_DIR, settings.client_key)
            host = settings.host
            return cls(f"tcp://{host}:{settings.pub_port}", f"tcp://{host}:{settings.sub_port}",
                       f"tcp://{host}:{settings.rpc_port}", bus_dir=bus_dir, curve=curve)
        paths = [bus_dir / name for name in (PUB_IN, PUB_OUT, RPC)]
        for path in paths:
            size = len(os.fsencode(path))
            if size > IPC_PATH_MAX:
                raise EndpointError(
                    f"ipc socket path is {size} bytes, over the {IPC_PATH_MAX}-byte limit of unix "
                    f"sockets: {path} (use a shorter state folder)")
        return cls(*(f"ipc://{p}" for p in paths), bus_dir=bus_dir)

    @classmethod
    def tcp(cls, host: str, base_port: int, *, curve: Curve | None = None) -> Endpoints:
        """tcp endpoints on three consecutive ports (busd binds ``host``; clients connect to it).
        busd refuses to bind tcp without ``curve``."""
        return cls(f"tcp://{host}:{base_port}", f"tcp://{host}:{base_port + 1}",
                   f"tcp://{host}:{base_port + 2}", curve=curve)

    @property
    def is_tcp(self) -> bool:
        return any(e.startswith("tcp://") for e in (self.pub_in, self.pub_out, self.rpc))

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
