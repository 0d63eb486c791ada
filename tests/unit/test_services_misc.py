from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from services.config import ConfigError, load_config
from services.reconciler.core import compare
from services.retry import Backoff
from services.supervisor import session_group_conf


def root_with(tmp_path: Path, toml: str | None) -> Path:
    (tmp_path / "supervisord.conf").write_text("")
    if toml is not None:
        (tmp_path / "tradebus.toml").write_text(toml)
    return tmp_path


def test_defaults_need_no_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRADEBUS_DB_URL", raising=False)
    config = load_config(root_with(tmp_path, None))
    assert config.db_url == f"sqlite:///{tmp_path / 'state' / 'tradebus.db'}"
    assert config.reconcilers >= 1


@pytest.mark.parametrize("toml, message", [
    ("[engine]\nreconcilers = 0\n", "reconcilers must be 1..16"),
    ("[engine]\nbogus = 1\n", "unknown key"),
    ("[nope]\n", "unknown section"),
    ("[engine\n", "not valid TOML"),
    ("[venue_sim]\nport = 'x'\n", "bad value"),
])
def test_broken_config_is_named_precisely(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(root_with(tmp_path, toml))


def test_backoff_is_capped_jittered_and_can_give_up() -> None:
    policy = Backoff(base_s=1, cap_s=8, max_attempts=6)
    assert [policy.delay(n, jitter=lambda: 1.0) for n in range(1, 7)] == [1, 2, 4, 8, 8, None]
    assert policy.delay(3, jitter=lambda: 0.0) == 2  # never below half the ceiling


def test_reconcile_compare_sees_positions_and_orders_both_ways() -> None:
    d = compare(broker_position=Decimal(2), db_position=Decimal(1), broker_open=["s.1.3", "other.2.1"],
                db_open=["s.1.2"], our_prefix="s.")
    assert d.position_mismatch and d.missing_at_broker == ("s.1.2",) and d.unknown_to_db == ("s.1.3",)
    assert not d.clean and len(d.describe()) == 3
    assert compare(broker_position=Decimal(0), db_position=Decimal(0), broker_open=[], db_open=[],
                   our_prefix="s.").clean


def test_session_group_file_restarts_nothing_by_itself(tmp_path: Path) -> None:
    config = load_config(root_with(tmp_path, None))
    text = session_group_conf(config, "es", "/venv/bin/tradebus")
    assert "[group:session-es]\nprograms=es-marketdata,es-account,es-strategy" in text
    assert text.count("autorestart=false") == 3
    assert "command=/venv/bin/tradebus run account --session es" in text
