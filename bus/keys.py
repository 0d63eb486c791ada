"""CURVE key material for the tcp bus: where keypairs live and how they are made and read.

Layout under ``<state>/keys/`` (owner-only, 0700; every secret file 0600)::

    server.key  server.key_secret           busd's keypair (its public key goes to every client)
    clients/<name>.key  <name>.key_secret   one keypair per client identity (default "engine")
    allowed/<name>.key                      public keys busd accepts (its ZAP allow-list)

Files are ZeroMQ certificates (``zmq.auth.create_certificates``). A client is allowed while its
public key is in ``allowed/``; removing the file revokes it (busd re-reads the folder every few
seconds). Secret keys are never logged or printed: only public keys leave this module as text.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq.auth

from bus.errors import EndpointError

KEYS_DIR = "keys"
CLIENTS_DIR = "clients"
ALLOWED_DIR = "allowed"
SERVER_NAME = "server"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
DIR_MODE = 0o700
SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
CLIENT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


class KeyFileError(EndpointError):
    """Key material is missing, unreadable or asked for under a bad name."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What ``keys list`` shows: never a secret."""

    name: str
    role: str  # "server" or "client"
    public_key: str  # z85
    allowed: bool  # clients only: is the public key in the allow-list


def validate_client_name(name: str) -> str:
    if name == SERVER_NAME or not CLIENT_NAME.match(name):
        raise KeyFileError(f"bad client key name {name!r}: use 1-40 characters, lowercase letters, digits, "
                        f"'-' and '_', starting with a letter or digit (and not {SERVER_NAME!r})")
    return name


class KeyStore:
    """The ``<state>/keys`` folder. Reading methods raise ``KeyFileError`` with a fix in the message."""

    def __init__(self, keys_dir: Path | str) -> None:
        self.dir = Path(os.path.abspath(keys_dir))

    @classmethod
    def for_state_dir(cls, state_dir: Path | str) -> KeyStore:
        return cls(Path(state_dir) / KEYS_DIR)

    @property
    def clients_dir(self) -> Path:
        return self.dir / CLIENTS_DIR

    @property
    def allowed_dir(self) -> Path:
        """busd's allow-list: ``configure_curve(location=...)`` reads every ``*.key`` here."""
        return self.dir / ALLOWED_DIR

    @property
    def server_public_file(self) -> Path:
        return self.dir / f"{SERVER_NAME}{PUBLIC_SUFFIX}"

    @property
    def server_secret_file(self) -> Path:
        return self.dir / f"{SERVER_NAME}{SECRET_SUFFIX}"

    def client_public_file(self, name: str) -> Path:
        return self.clients_dir / f"{validate_client_name(name)}{PUBLIC_SUFFIX}"

    def client_secret_file(self, name: str) -> Path:
        return self.clients_dir / f"{validate_client_name(name)}{SECRET_SUFFIX}"

    # ------------------------------------------------------------------ making keys

    def ensure_dirs(self) -> None:
        """Create the folders owner-only (0700), tightening any that already exist."""
        for folder in (self.dir, self.clients_dir, self.allowed_dir):
            folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            os.chmod(folder, DIR_MODE)

    def ensure_server(self) -> tuple[bytes, bool]:
        """busd's public key, making the keypair if there is none. Returns (public z85, created).
        An existing server key is kept: replacing it would cut off every client holding its public key."""
        self.ensure_dirs()
        if self.server_secret_file.exists():
            return self.server_keys()[0], False
        public_file, secret_file = zmq.auth.create_certificates(self.dir, SERVER_NAME)
        _tighten(Path(public_file), Path(secret_file))
        return self.server_keys()[0], True

    def create_client(self, name: str) -> bytes:
        """Make client ``name``'s keypair and allow it; returns its public key (z85).
        Raises ``KeyFileError`` if that client already has a key (revoke and remove it first)."""
        validate_client_name(name)
        self.ensure_dirs()
        if self.client_secret_file(name).exists() or self.client_public_file(name).exists():
            raise KeyFileError(f"client key {name!r} already exists in {self.clients_dir}")
        public_file, secret_file = zmq.auth.create_certificates(self.clients_dir, name)
        _tighten(Path(public_file), Path(secret_file))
        allowed = self.allowed_dir / Path(public_file).name
        shutil.copyfile(public_file, allowed)
        os.chmod(allowed, PUBLIC_MODE)
        return self.client_keys(name)[0]

    # ------------------------------------------------------------------ reading keys

    def server_public(self) -> bytes:
        return _load(self.server_public_file, secret=False)[0]

    def server_keys(self) -> tuple[bytes, bytes]:
        """(public, secret) for busd."""
        public, secret = _load(self.server_secret_file, secret=True)
        assert secret is not None
        return public, secret

    def client_keys(self, name: str) -> tuple[bytes, bytes]:
        """(public, secret) for a client of this installation."""
        public, secret = _load(self.client_secret_file(name), secret=True)
        assert secret is not None
        return public, secret

    def list(self) -> list[KeyInfo]:
        """Server first, then clients by name; public keys only."""
        out: list[KeyInfo] = []
        if self.server_public_file.exists():
            out.append(KeyInfo(SERVER_NAME, "server", self.server_public().decode(), False))
        allowed = set()
        if self.allowed_dir.is_dir():
            allowed = {_load(p, secret=False)[0] for p in self.allowed_dir.glob(f"*{PUBLIC_SUFFIX}")}
        if self.clients_dir.is_dir():
            for path in sorted(self.clients_dir.glob(f"*{PUBLIC_SUFFIX}")):
                public = _load(path, secret=False)[0]
                out.append(KeyInfo(path.name[: -len(PUBLIC_SUFFIX)], "client", public.decode(), public in allowed))
        return out


def _tighten(public_file: Path, secret_file: Path) -> None:
    os.chmod(secret_file, SECRET_MODE)
    os.chmod(public_file, PUBLIC_MODE)


def _load(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.exists():
        raise KeyFileError(f"no key file {path}: run `tradebus keys generate` on this installation "
                        f"(or copy the key here)")
    if secret and stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise KeyFileError(f"secret key file {path} is readable by others: chmod 600 it")
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"unreadable key file {path}: {exc}") from exc
    if secret and secret_key is None:
        raise KeyFileError(f"key file {path} holds no secret key")
    return public, secret_key
