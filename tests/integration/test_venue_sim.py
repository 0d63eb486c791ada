"""The venue simulator as a real process, driven through the real ``sim`` adapter."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from brokers.base import BrokerFacade, BrokerPosition, OrderRequest
from brokers.errors import Rejected
from brokers.registry import build_facade
from schema.enums import OrderStatus, OrderType, Side

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_DEADLINE_S = 20.0
FILL_DEADLINE_S = 10.0
POLL_S = 0.02
SYMBOL = "ESZ6"


@dataclass(frozen=True)
class VenueProcess:
    process: subprocess.Popen[bytes]
    url: str
    state_dir: Path
    log_path: Path

    def log_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]


def _wait_ready(ready_file: Path, process: subprocess.Popen[bytes], log_path: Path) -> str:
    """Poll for the readiness file with a deadline; fail early if the process died."""
    deadline = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"venue-sim exited with {process.returncode}:\n{log_path.read_text()}")
        if ready_file.exists():
            info = json.loads(ready_file.read_text())
            assert info["pid"] == process.pid
            return str(info["url"])
        time.sleep(POLL_S)
    pytest.fail(f"venue-sim not ready within {READY_DEADLINE_S}s:\n{log_path.read_text()}")


@pytest.fixture
def venue_sim(tmp_path: Path) -> Iterator[VenueProcess]:
    state_dir = tmp_path / "state"
    log_path = tmp_path / "venue-sim.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "brokers.sim.server", "--port", "0", "--state-dir", str(state_dir),
             "--pace", "0.05", "--symbols", SYMBOL, "--accounts", "SIM1", "--history", "20", "--seed", "11"],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            url = _wait_ready(state_dir / "venue-sim.json", process, log_path)
            yield VenueProcess(process, url, state_dir, log_path)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


@pytest.fixture
def broker(venue_sim: VenueProcess) -> Iterator[BrokerFacade]:
    facade = build_facade({"broker": "sim", "base_url": venue_sim.url, "account": "SIM1", "timeout_s": 5})
    yield facade
    facade.close()


def _await_fills(broker: BrokerFacade, cursor: str | None) -> tuple[list, str | None]:
    """Stream bars (the venue's clock) until fills_since reports something, with a deadline."""
    deadline = time.monotonic() + FILL_DEADLINE_S
    stream = broker.stream_bars(SYMBOL, "1m", after_index=None)
    try:
        for _ in stream:  # a bar or a heartbeat: either way, look again
            fills, next_cursor = broker.fills_since(cursor)
            if fills:
                return fills, next_cursor
            if time.monotonic() > deadline:
                pytest.fail("no fill within the deadline")
    finally:
        stream.close()
    pytest.fail("stream ended")


def test_market_order_round_trip_through_a_real_venue_process(venue_sim: VenueProcess, broker: BrokerFacade) -> None:
    # Given a running venue with history, when a market buy is submitted,
    accepted = broker.submit_order(OrderRequest("it-buy-1", SYMBOL, Side.BUY, OrderType.MARKET, Decimal(1)))
    assert accepted.status is OrderStatus.ACCEPTED and accepted.symbol == SYMBOL

    # then it fills at the open of the bar after the one that was latest at submission.
    fills, cursor = _await_fills(broker, None)
    [fill] = fills
    assert (fill.client_order_id, fill.side, fill.quantity, fill.broker_order_id) == (
        "it-buy-1", Side.BUY, Decimal(1), accepted.broker_order_id)
    bars = broker.historical_bars(SYMBOL, "1m", limit=10_000)
    by_ts = {b.ts_ns: b for b in bars}
    latest_at_submission = by_ts[accepted.updated_ns]  # the venue's clock is its latest bar
    fill_bar = next(b for b in bars if b.index == latest_at_submission.index + 1)
    assert fill.ts_ns == fill_bar.ts_ns
    assert fill.price == fill_bar.open
    assert broker.fills_since(cursor) == ([], cursor)

    assert broker.positions() == [BrokerPosition(SYMBOL, Decimal(1), fill.price)]
    found = broker.order_by_client_id("it-buy-1")
    assert found is not None and found.status is OrderStatus.FILLED and found.average_price == fill.price
    assert broker.order_by_client_id("never-sent") is None
    assert broker.open_orders() == []

    # A resend of the same client id is refused, and the venue counted both attempts.
    with pytest.raises(Rejected, match="duplicate client order id"):
        broker.submit_order(OrderRequest("it-buy-1", SYMBOL, Side.BUY, OrderType.MARKET, Decimal(1)))
    stats = httpx.get(f"{venue_sim.url}/v1/admin/stats", timeout=5).json()
    assert stats["submissions"] == {"it-buy-1": 2} and stats["orders"] == 1 and stats["fills"] == 1


def test_malformed_requests_get_400_and_the_venue_keeps_serving(venue_sim: VenueProcess, broker: BrokerFacade) -> None:
    with httpx.Client(base_url=venue_sim.url, timeout=5) as raw:
        bad_json = raw.post("/v1/orders", content=b"{not json", headers={"Content-Type": "application/json"})
        assert bad_json.status_code == 400 and "JSON" in bad_json.json()["message"]
        missing = raw.post("/v1/orders", json={"account": "SIM1", "client_order_id": "x", "symbol": SYMBOL,
                                               "order_type": "market", "quantity": "1"})
        assert missing.status_code == 400 and "'side'" in missing.json()["message"]
        bad_value = raw.post("/v1/orders", json={"account": "SIM1", "client_order_id": "x", "symbol": SYMBOL,
                                                 "side": "up", "order_type": "market", "quantity": "1"})
        assert bad_value.status_code == 400 and "'side'" in bad_value.json()["message"]
        not_an_object = raw.post("/v1/orders", json=[1, 2])
        assert not_an_object.status_code == 400
        missing_param = raw.get("/v1/positions")
        assert missing_param.status_code == 400 and "'account'" in missing_param.json()["message"]
        unknown = raw.get("/v1/nowhere")
        assert unknown.status_code == 404 and unknown.json()["error"] == "no_route"
        assert raw.delete("/v1/orders").status_code == 405
        # The same keep-alive connection still works after all of that.
        assert raw.get("/v1/health").json()["status"] == "ok"

    # A request too broken to parse gets a JSON 400 too, not a crash.
    host, port = venue_sim.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):  # the venue closes the connection after a broken request
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400") and b'"error":"bad_request"' in reply

    # And the venue still trades.
    accepted = broker.submit_order(OrderRequest("it-after-garbage", SYMBOL, Side.SELL, OrderType.MARKET, Decimal(2)))
    assert accepted.status is OrderStatus.ACCEPTED
    fills, _ = _await_fills(broker, None)
    assert [f.client_order_id for f in fills] == ["it-after-garbage"]
    assert broker.positions()[0].quantity == Decimal(-2)
    assert venue_sim.process.poll() is None


def test_sigterm_stops_cleanly(venue_sim: VenueProcess) -> None:
    venue_sim.process.send_signal(signal.SIGTERM)
    assert venue_sim.process.wait(timeout=10) == 0
    assert not (venue_sim.state_dir / "venue-sim.json").exists()
    lines = venue_sim.log_lines()
    assert all(line["process"] == "venue-sim" and "action" in line and "ts" in line for line in lines)
    assert lines[0]["action"] == "started" and lines[-1]["action"] == "stopped"
