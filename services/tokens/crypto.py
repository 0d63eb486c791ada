"""The installation's token key: tokens are encrypted before they reach the database or the bus.

One Fernet key (AES-128-CBC + HMAC-SHA256, from ``cryptography``) in ``<state>/keys/tokens.key``,
mode 0600 in a 0700 folder, created on first use. Every engine process of the installation runs as
the same user and reads it; nothing else should. A key file readable by group or others is refused.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from brokers.auth import Token

KEY_FILE = "tokens.key"


class TokenKeyError(Exception):
    """The key file is unusable (wrong mode, corrupt) or a ciphertext does not decrypt with it."""


def key_path(state_dir: Path) -> Path:
    return Path(state_dir) / "keys" / KEY_FILE


def load_or_create_key(state_dir: Path) -> Fernet:
    path = key_path(state_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as f:
            f.write(Fernet.generate_key())
    return load_key(state_dir)


def load_key(state_dir: Path) -> Fernet:
    path = key_path(state_dir)
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TokenKeyError(f"{path} is readable by group or others (chmod 600 it); refusing to use it")
        return Fernet(path.read_bytes().strip())
    except FileNotFoundError:
        raise TokenKeyError(f"{path} does not exist; the tokens service creates it on start") from None
    except (ValueError, OSError) as exc:
        raise TokenKeyError(f"{path} is not a usable token key ({type(exc).__name__})") from None


def seal(key: Fernet, token: Token) -> bytes:
    return key.encrypt(token.to_bytes())


def unseal(key: Fernet, ciphertext: bytes) -> Token:
    try:
        return Token.from_bytes(key.decrypt(bytes(ciphertext)))
    except (InvalidToken, ValueError, KeyError) as exc:
        raise TokenKeyError(f"a token does not decrypt with this installation's key ({type(exc).__name__})") from None
