"""The token owner's state machine, the token key, tokens' reprs and the credentials lookup."""
from __future__ import annotations

import os
import threading

import pytest

from brokers.auth import LocalTokenSource, StaticTokenSource, Token, refresh_before_expiry
from brokers.errors import AuthFailed, AuthNeedsOperator, BrokerUnavailable, RateLimited
from brokers.secrets import Secrets, configured, env_name, load_secrets
from services.tokens.core import OwnerState, after_failure, after_success, refresh_now, restored
from services.tokens.crypto import TokenKeyError, load_key, load_or_create_key, seal, unseal

S = 10**9


def token(access: str = "acc-SECRET", expires_ns: int = 100 * S, issued_ns: int = 0, refresh: str | None = "ref-SECRET") -> Token:
    return Token(access_token=access, expires_ns=expires_ns, refresh_token=refresh, issued_ns=issued_ns)


def test_a_token_never_shows_its_secrets() -> None:
    t = Token(access_token="acc-SECRET", expires_ns=5, refresh_token="ref-SECRET", extras={"md": "md-SECRET"})
    for text in (repr(t), str(t), f"{t}", repr([t])):
        assert "SECRET" not in text
    assert Token.from_bytes(t.to_bytes()) == t


def test_refresh_is_due_before_expiry_but_never_before_half_the_lifetime() -> None:
    assert refresh_before_expiry(token(expires_ns=1200 * S, issued_ns=0), margin_s=120) == 1080 * S
    short = token(expires_ns=110 * S, issued_ns=100 * S)  # a 10 s token: refresh at 5 s, not -110 s
    assert refresh_before_expiry(short, margin_s=120) == 105 * S


def test_restored_token_is_refreshed_at_once_when_its_access_token_has_expired() -> None:
    assert restored("A", None, 0, None, now_ns=50 * S).state is OwnerState.OBTAINING
    live = restored("A", token(expires_ns=100 * S), 3, refresh_at_ns=90 * S, now_ns=50 * S)
    assert (live.state, live.version, live.due_ns) == (OwnerState.VALID, 3, 90 * S)
    assert live.next_attempt() == "refresh"
    stale = restored("A", token(expires_ns=40 * S), 3, refresh_at_ns=30 * S, now_ns=50 * S)
    assert (stale.state, stale.due_ns, stale.usable(50 * S)) == (OwnerState.VALID, 50 * S, False)


def test_failures_choose_the_next_state_by_error_type() -> None:
    valid = after_success(restored("A", None, 0, None, 0), token(), 1, refresh_at_ns=90 * S)
    assert valid.state is OwnerState.VALID and valid.usable(10 * S)
    down = after_failure(valid, BrokerUnavailable("venue down"), "refresh", now_ns=10 * S, jitter=0)
    assert down.state is OwnerState.BACKING_OFF and down.due_ns == 10 * S + int(0.5 * S)
    assert down.next_attempt() == "refresh" and down.token == valid.token
    limited = after_failure(valid, RateLimited("slow down", retry_after_s=30), "refresh", now_ns=10 * S)
    assert limited.due_ns == 40 * S
    refused = after_failure(valid, AuthFailed("refresh token revoked"), "refresh", now_ns=10 * S)
    assert refused.state is OwnerState.OBTAINING and refused.next_attempt() == "obtain"
    wrong_password = after_failure(refused, AuthFailed("bad credentials"), "obtain", now_ns=10 * S)
    assert wrong_password.state is OwnerState.NEEDS_OPERATOR
    captcha = after_failure(valid, AuthNeedsOperator("captcha"), "refresh", now_ns=10 * S)
    assert captcha.state is OwnerState.NEEDS_OPERATOR and "captcha" in captcha.reason


def test_a_rejected_token_is_refreshed_once_not_per_reporter() -> None:
    valid = after_success(restored("A", None, 0, None, 0), token(), 4, refresh_at_ns=90 * S)
    assert refresh_now(valid, 4, now_ns=10 * S).due_ns == 10 * S
    assert refresh_now(valid, 3, now_ns=10 * S) is valid  # an older token: a newer one exists already


def test_token_key_round_trip_and_refusals(tmp_path) -> None:
    key = load_or_create_key(tmp_path)
    assert (tmp_path / "keys" / "tokens.key").stat().st_mode & 0o777 == 0o600
    t = token()
    sealed = seal(key, t)
    assert b"SECRET" not in sealed
    assert unseal(load_key(tmp_path), sealed) == t
    other = tmp_path / "other"
    with pytest.raises(TokenKeyError, match="does not decrypt"):
        unseal(load_or_create_key(other), sealed)
    os.chmod(tmp_path / "keys" / "tokens.key", 0o644)
    with pytest.raises(TokenKeyError, match="readable by group or others"):
        load_key(tmp_path)


def test_credentials_come_from_env_then_an_owner_only_file(tmp_path, monkeypatch) -> None:
    assert env_name("TS-1", "client_secret") == "TRADEBUS_SECRET_TS_1_CLIENT_SECRET"
    path = tmp_path / "secrets.toml"
    path.write_text('["TS-1"]\nclient_id = "cid"\nclient_secret = "file-hunter2"\n')
    os.chmod(path, 0o600)
    monkeypatch.setenv("TRADEBUS_SECRET_TS_1_CLIENT_SECRET", "env-hunter2")
    secrets = load_secrets("TS-1", {"secrets_file": str(path)}, ("client_id", "client_secret"))
    assert dict(secrets) == {"client_id": "cid", "client_secret": "env-hunter2"}
    assert "hunter2" not in repr(secrets) and isinstance(secrets, Secrets)
    with pytest.raises(AuthNeedsOperator) as missing:
        load_secrets("TS-1", {"secrets_file": str(path)}, ("client_id", "refresh_token"))
    assert "refresh_token" in str(missing.value) and "TRADEBUS_SECRET_TS_1_REFRESH_TOKEN" in str(missing.value)
    assert "hunter2" not in str(missing.value)
    os.chmod(path, 0o644)
    monkeypatch.delenv("TRADEBUS_SECRET_TS_1_CLIENT_SECRET")
    assert not configured("TS-1", {"secrets_file": str(path)}, ("client_id",))
    path.write_text('["TS-1"]\nclient_id = "unterminated-hunter2\n')
    os.chmod(path, 0o600)
    with pytest.raises(AuthNeedsOperator) as broken:
        load_secrets("TS-1", {"secrets_file": str(path)}, ("client_id",))
    assert "hunter2" not in str(broken.value)


class CountingAuth:
    broker = "test"

    def __init__(self) -> None:
        self.obtained = 0
        self.refreshed = 0

    def obtain(self) -> Token:
        self.obtained += 1
        return token(access=f"o{self.obtained}", expires_ns=10**30)

    def refresh(self, t: Token) -> Token:
        self.refreshed += 1
        return token(access=f"r{self.refreshed}", expires_ns=10**30)

    def refresh_at_ns(self, t: Token) -> int:
        return t.expires_ns - S

    def notices(self, t: Token, now_ns: int) -> list[str]:
        return []


def test_local_source_refreshes_once_for_many_rejections_of_one_token() -> None:
    auth = CountingAuth()
    source = LocalTokenSource(auth)
    seen: list[Token] = []
    source.on_new_token(seen.append)
    first = source.current()
    assert first.access_token == "o1" and source.current() is first
    threads = [threading.Thread(target=source.rejected, args=(first,)) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert auth.refreshed == 1 and source.current().access_token == "r1"
    assert [t.access_token for t in seen] == ["o1", "r1"]
    with pytest.raises(AuthFailed):
        StaticTokenSource(first).rejected(first)
