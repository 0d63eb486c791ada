"""Regression: replaying a recorded run of the demo sessions into fresh strategy cores reproduces
the orders the live run placed, exactly and in order.

The fixture (``tests/fixtures/journal-demo``) is a real run of the process tree recorded by
``tests/fixtures/record_journal_demo.py``: busd's journal plus the orders the database held.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from services.config import DEMO_SESSIONS
from services.journal_cli import journal
from services.replay import instruction_json, replay_session

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "journal-demo"
RECORDED = json.loads((FIXTURE / "orders.json").read_text())["sessions"]


@pytest.fixture()
def journal_dir(tmp_path: Path) -> Path:
    # a copy: readers save rebuilt indexes next to the segments
    return Path(shutil.copytree(FIXTURE / "journal", tmp_path / "journal"))


def _live(session: str) -> list[dict]:
    return [{k: o[k] for k in ("client_order_id", "signal", "side", "quantity", "order_type", "symbol")}
            for o in RECORDED[session]["orders"]]


@pytest.mark.parametrize("demo", DEMO_SESSIONS, ids=lambda d: d.name)
def test_replay_reproduces_the_live_orders_exactly(demo, journal_dir: Path) -> None:
    recorded = RECORDED[demo.name]
    assert recorded["params"] == demo.params and recorded["strategy"] == demo.strategy
    assert len(recorded["orders"]) >= 3
    produced = replay_session(journal_dir, demo.name, demo.strategy, demo.params)
    got = [instruction_json(p.instruction, demo.name, recorded["session_id"]) for p in produced]
    assert [{k: g[k] for k in ("client_order_id", "signal", "side", "quantity", "order_type", "symbol")}
            for g in got] == _live(demo.name)


def test_replay_is_deterministic(journal_dir: Path) -> None:
    demo = DEMO_SESSIONS[0]
    first = replay_session(journal_dir, demo.name, demo.strategy, demo.params)
    assert replay_session(journal_dir, demo.name, demo.strategy, demo.params) == first


def test_cli_replay_prints_the_same_instructions_as_json_lines(journal_dir: Path) -> None:
    demo = DEMO_SESSIONS[0]
    recorded = RECORDED[demo.name]
    args = ["replay", "--journal-dir", str(journal_dir), "--into-strategy", demo.name,
            "--strategy", demo.strategy, "--session-id", str(recorded["session_id"])]
    for k, v in demo.params.items():
        args += ["--param", f"{k}={v}"]
    result = CliRunner().invoke(journal, args)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [(x["client_order_id"], x["side"], x["quantity"]) for x in lines] == \
        [(o["client_order_id"], o["side"], o["quantity"]) for o in recorded["orders"]]


def test_cli_ls_cat_stats(journal_dir: Path) -> None:
    runner = CliRunner()
    ls = runner.invoke(journal, ["ls", "--journal-dir", str(journal_dir), "--json"])
    assert ls.exit_code == 0, ls.output
    seg = json.loads(ls.output.splitlines()[0])
    assert seg["first_seq"] == 1 and seg["records"] == seg["last_seq"] and seg["damage"] is None

    cat = runner.invoke(journal, ["cat", "--journal-dir", str(journal_dir), "--topic", "order.es-sma",
                                  "--kind", "pub", "--json"])
    assert cat.exit_code == 0, cat.output
    rows = [json.loads(line) for line in cat.output.splitlines()]
    assert rows and all(r["topic"] == "order.es-sma" and r["kind"] == "pub" for r in rows)
    assert isinstance(rows[0]["envelope"]["body"]["quantity"], str)  # Decimals as strings

    since = rows[2]["recv_ns"]
    later = runner.invoke(journal, ["cat", "--journal-dir", str(journal_dir), "--since", str(since), "--json"])
    assert all(json.loads(line)["recv_ns"] >= since for line in later.output.splitlines())

    stats = runner.invoke(journal, ["stats", "--journal-dir", str(journal_dir), "--json"])
    assert stats.exit_code == 0, stats.output
    out = json.loads(stats.output)
    assert out["records"] == seg["records"] and out["by_kind"]["pub"] > 0 and out["by_type"]["md.bar"] > 0
