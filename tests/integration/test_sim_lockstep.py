"""The simulator in lockstep: a bar round only when released, the end of the feed said at once.

The pieces (``brokers.sim.lockstep``) with no threads first, then the HTTP server in-process with
its real producer thread, driven over ``POST /v1/admin/release``.
"""
from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from types import MappingProxyType

import httpx
import pytest

from brokers.sim.feed import CsvFeed
from brokers.sim.lockstep import LockstepGate, Lookahead, run_lockstep
from brokers.sim.server import JsonLog, SimApp, SimConfig, VenueHTTPServer, parse_args
from services.backtest.pipeline import infer_interval

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SYMBOL = "ESZ6"
DEADLINE_S = 10.0


def poll(predicate, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if (value := predicate()):
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def write_csv(path: Path, rows: int) -> Path:
    lines = ["timestamp,open,high,low,close,volume"]
    for i in range(rows):  # epoch seconds, one minute apart
        lines.append(f"{1_735_776_000 + 60 * i},{5000 + i},{5001 + i},{4999 + i},{5000.25 + i},{10 + i}")
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- pure pieces


def test_lookahead_knows_the_end_with_the_last_item() -> None:
    items = Lookahead(iter([1, 2]))
    assert not items.exhausted
    assert next(items) == 1 and not items.exhausted
    assert next(items) == 2 and items.exhausted
    assert next(items, None) is None


def test_the_gate_only_moves_forward() -> None:
    gate = LockstepGate(produced=4)
    assert gate.release(3) == 4  # a late, smaller release changes nothing
    assert gate.release(6) == 6
    stopping = threading.Event()
    assert gate.wait_released(6, stopping)
    stopping.set()
    assert not gate.wait_released(7, stopping)  # not released and stopping: gives up


def test_run_lockstep_produces_released_rounds_then_says_the_feed_ended() -> None:
    feed = Lookahead(iter(range(3)))
    produced: list[int] = []
    gate, stopping = LockstepGate(), threading.Event()
    worker = threading.Thread(target=run_lockstep, args=(gate,), daemon=True, kwargs=dict(
        produce_round=lambda: produced.append(next(feed)), exhausted=lambda: feed.exhausted, stopping=stopping,
        log=lambda *a, **k: None))
    worker.start()
    try:
        gate.release(1)
        poll(lambda: gate.produced == 1, "rounds 0 and 1")
        assert produced == [0, 1] and not gate.exhausted
        gate.release(5)  # past the end
        poll(lambda: gate.exhausted, "the end of the feed")
        assert produced == [0, 1, 2] and gate.produced == 2
    finally:
        stopping.set()
        worker.join(5)
    assert not worker.is_alive()


def test_epoch_timestamps_and_interval_inference(tmp_path: Path) -> None:
    bars = list(CsvFeed(write_csv(tmp_path / "m.csv", 3), SYMBOL, "1m"))
    assert [b.ts_ns for b in bars] == [1_735_776_000_000_000_000 + 60_000_000_000 * i for i in range(3)]
    assert infer_interval([b.ts_ns for b in bars]) == "1m"
    # a compact date is still a date, not an epoch number; milliseconds are told by their size
    (tmp_path / "d.csv").write_text("DATE,OPEN,HIGH,LOW,CLOSE\n20250102,1,1,1,1\n1735862400000,1,1,1,1\n")
    assert [b.ts_ns for b in CsvFeed(tmp_path / "d.csv", SYMBOL, "1d")] == [1_735_776_000 * 10**9, 1_735_862_400 * 10**9]
    week = [d * 86_400 * 10**9 for d in (0, 1, 2, 3, 4, 7, 8)]  # weekdays with a weekend
    assert infer_interval(week) == "1d"
    assert infer_interval([0, 300 * 10**9, 900 * 10**9]) == "5m"


def test_lockstep_needs_a_csv_for_every_symbol(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--lockstep", "--symbols", SYMBOL], today=date(2026, 12, 1))
    assert "--lockstep replays finite CSV feeds: give --csv for ESZ6" in capsys.readouterr().err


def test_lockstep_serves_only_the_csv_symbols(tmp_path: Path) -> None:
    config = parse_args(["--lockstep", "--csv", f"{SYMBOL}={write_csv(tmp_path / 'm.csv', 2)}", "--interval", "1m",
                         "--slippage-ticks", "1"], today=date(2026, 12, 1))
    assert (config.symbols, config.lockstep, config.slippage_ticks) == ((SYMBOL,), True, 1)


# ---------------------------------------------------------------- over HTTP, with the producer thread


@pytest.fixture
def lockstep_venue(tmp_path: Path) -> Iterator[tuple[SimApp, httpx.Client]]:
    config = SimConfig(host="127.0.0.1", port=0, state_dir=tmp_path, symbols=(SYMBOL,), interval="1m", pace_s=0.01,
                       seed=3, csv=MappingProxyType({SYMBOL: write_csv(tmp_path / "bars.csv", 5)}),
                       accounts=("SIM1",), history=2, lockstep=True)
    app = SimApp(config, JsonLog(io.StringIO()), now_ns=0)
    for _ in range(config.history):
        app.produce_one_round()
    server = VenueHTTPServer(("127.0.0.1", 0), app)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    producer = threading.Thread(target=app.run_producer, daemon=True)
    serving.start()
    producer.start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{server.server_address[1]}", timeout=5)
    try:
        yield app, client
    finally:
        client.close()
        app.stop()
        server.shutdown()
        server.server_close()
        producer.join(5)
        serving.join(5)


def test_bars_come_only_when_released_and_the_end_is_reported(lockstep_venue: tuple[SimApp, httpx.Client]) -> None:
    app, client = lockstep_venue
    # Given: the two history bars, and a pace timer that would have produced many more by now
    health = client.get("/v1/health").json()
    assert health["last_index"] == {SYMBOL: 1} and health["exhausted"] is False
    assert health["lockstep"] == {"released": 1, "produced": 1, "exhausted": False}
    time.sleep(0.1)  # ten paces: lockstep must ignore the timer (asserting an absence needs a wait)
    assert app.books[SYMBOL].last_index == 1
    # When: bar 2 is released
    answer = client.post("/v1/admin/release", json={"index": 2})
    assert answer.status_code == 200
    poll(lambda: app.books[SYMBOL].last_index == 2, "bar 2")
    assert not client.get("/v1/health").json()["exhausted"]
    # When: the rest is released; Then: the feed's end is said with its last bar
    client.post("/v1/admin/release", json={"index": 4}).raise_for_status()
    health = poll(lambda: (h := client.get("/v1/health").json())["exhausted"] and h, "the end of the feed")
    assert health["last_index"] == {SYMBOL: 4} and health["lockstep"]["produced"] == 4


def test_release_names_a_bad_index(lockstep_venue: tuple[SimApp, httpx.Client]) -> None:
    _, client = lockstep_venue
    for body in ({}, {"index": -1}, {"index": "3"}, {"index": True}):
        answer = client.post("/v1/admin/release", json=body)
        assert answer.status_code == 400 and "index" in answer.json()["message"], body


def test_release_without_lockstep_is_refused(tmp_path: Path) -> None:
    config = SimConfig(host="127.0.0.1", port=0, state_dir=tmp_path, symbols=(SYMBOL,), interval="1m", pace_s=1.0,
                       seed=3, csv=MappingProxyType({}), accounts=("SIM1",), history=1)
    app = SimApp(config, JsonLog(io.StringIO()), now_ns=0)
    server = VenueHTTPServer(("127.0.0.1", 0), app)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    serving.start()
    try:
        answer = httpx.post(f"http://127.0.0.1:{server.server_address[1]}/v1/admin/release", json={"index": 1})
        assert answer.status_code == 409 and answer.json()["error"] == "not_lockstep"
    finally:
        app.stop()
        server.shutdown()
        server.server_close()
        serving.join(5)
