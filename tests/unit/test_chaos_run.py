"""The pure parts of the chaos run around the checker: choosing victims, reading fault counts,
the report, and the command's exit status."""
from __future__ import annotations

import json
import random
from typing import Any

import pytest
from click.testing import CliRunner

from services import chaos as chaos_module
from services.chaos import ChaosReport, Invariant, choose_victim, faults_hit, victim_kind

PROCESSES = [
    "busd", "venue-sim", "sessionguard",
    "reconciler:reconciler_00", "reconciler:reconciler_01",
    "session-es-sma:es-sma-account", "session-es-sma:es-sma-strategy", "session-es-sma:es-sma-marketdata",
    "session-6e-sma:6e-sma-account", "session-6e-sma:6e-sma-strategy", "session-6e-sma:6e-sma-marketdata",
]


@pytest.mark.parametrize(("name", "kind"), [
    ("busd", "busd"),
    ("reconciler:reconciler_00", "reconciler"),
    ("reconciler:reconciler_11", "reconciler"),
    ("session-es-sma:es-sma-account", "account"),
    ("session-6e-sma:6e-sma-strategy", "strategy"),
    ("session-6e-sma:6e-sma-marketdata", "marketdata"),
    ("venue-sim", None),  # the venue stands in for the broker: killing it is not an engine crash
    ("sessionguard", None),
    ("session-es-sma:6e-sma-account", None),
])
def test_victim_kinds(name: str, kind: str | None) -> None:
    assert victim_kind(name) == kind


def test_victims_are_engine_processes_drawn_from_the_seed() -> None:
    first = [choose_victim(random.Random(5), PROCESSES) for _ in range(3)]
    assert len(set(first)) == 1, "one seed, one victim"
    drawn = {choose_victim(random.Random(seed), reversed(PROCESSES)) for seed in range(200)}
    assert drawn == {n for n in PROCESSES if victim_kind(n)}
    assert choose_victim(random.Random(1), ["venue-sim", "sessionguard"]) is None


@pytest.mark.parametrize(("body", "hits"), [
    ({"hits": 4, "rules": []}, 4),
    ({"rules": [{"fault": "error_500", "hits": 2}, {"fault": "ack_lost", "hits": 3}]}, 5),
    ({"rules": [{"fault": "error_500", "fired": 1}]}, 1),
    ({"rules": [{"fault": "error_500"}]}, None),
    ({"seed": 1}, None),
    ([], None),
])
def test_faults_hit_reads_what_the_simulator_says(body: Any, hits: int | None) -> None:
    assert faults_hit(body) == hits


def report(*oks: bool, error: str | None = None) -> ChaosReport:
    r = ChaosReport(seed=3, duration_s=5)
    r.invariants = [Invariant(f"inv{i}", 0, 0 if ok else 1, ok, "" if ok else "x") for i, ok in enumerate(oks)]
    r.kills["busd"] = 2
    r.error = error
    return r


def test_the_report_is_ok_only_when_every_invariant_holds_and_nothing_failed() -> None:
    assert report(True, True).ok
    assert not report(True, False).ok
    assert not report(True, error="TreeError: timed out").ok
    assert not report().ok, "a run that checked nothing proves nothing"
    doc = json.loads(report(True, False).to_json())
    assert doc["ok"] is False and doc["kills_total"] == 2
    assert doc["invariants"][1] == {"name": "inv1", "expected": 0, "actual": 1, "ok": False, "detail": "x"}


@pytest.mark.parametrize(("oks", "code"), [((True, True), 0), ((True, False), 1)])
def test_the_command_exits_non_zero_when_an_invariant_breaks(monkeypatch: pytest.MonkeyPatch,
                                                              oks: tuple[bool, ...], code: int) -> None:
    calls: list[dict[str, Any]] = []

    def fake_run(**kwargs: Any) -> ChaosReport:
        calls.append(kwargs)
        return report(*oks)

    monkeypatch.setattr(chaos_module, "run_chaos", fake_run)
    result = CliRunner().invoke(chaos_module.chaos, ["--duration", "7", "--seed", "9", "--json"])
    assert result.exit_code == code, result.output
    assert json.loads(result.stdout)["ok"] is (code == 0)
    assert calls[0]["duration_s"] == 7 and calls[0]["seed"] == 9 and calls[0]["faults"] is True
    table = CliRunner().invoke(chaos_module.chaos, ["--duration", "7"])
    assert table.exit_code == code
    assert "inv1" in table.output and ("BROKEN" in table.output) is (code == 1)
