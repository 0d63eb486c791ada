"""busd on tcp with CURVE, as a real process: allowed clients talk, everyone else is refused.

Each test gets an installation folder of its own: ``tradebus.toml`` with ``[bus] transport =
"tcp"`` on free ports, keys made by ``bus.keys`` (what ``tradebus keys generate`` runs), and a
``python -m bus.busd`` subprocess. Readiness is busd's ready file; refusals are busd log lines.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import zmq
from engine_tree import free_port, wait_until

from bus.busd import EXIT_CONFIG
from bus.client import BusClient
from bus.endpoints import Endpoints
from bus.errors import BusUnavailable
from bus.keys import KeyStore
from schema import messages as m

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 10.0


class TcpBus:
    """An installation whose bus is tcp + CURVE, and its busd subprocess."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state"
        ports = set()
        while len(ports) < 3:
            ports.add(free_port())
        pub, sub, rpc = sorted(ports)
        (root / "tradebus.toml").write_text(
            f'[bus]\ntransport = "tcp"\nhost = "127.0.0.1"\npub_port = {pub}\nsub_port = {sub}\nrpc_port = {rpc}\n')
        self.keys = KeyStore.for_state_dir(self.state)
        self.proc: subprocess.Popen | None = None
        self.log_path = root / "busd.log"

    def generate_keys(self) -> None:
        self.keys.ensure_server()
        self.keys.create_client("engine")

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints.for_state_dir(self.state)

    def start(self) -> TcpBus:
        with open(self.log_path, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "bus.busd", "--state-dir", str(self.state),
                                          "--no-journal"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        proc, ready = self.proc, self.endpoints.ready_file
        assert ready is not None

        def is_ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"busd exited with {proc.returncode}: {self.log_path.read_text()}")
            return ready.exists() and ready.read_text().strip() == str(proc.pid)

        wait_until(is_ready, timeout=WAIT_S, what="busd's ready file", interval=0.01)
        return self

    def logs(self) -> list[dict]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines()
                if line.startswith("{") and line.endswith("}")]

    def refusals(self) -> list[dict]:
        return [r for r in self.logs() if r["action"] == "client_refused"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT_S)


@pytest.fixture
def tcp_bus() -> Iterator[TcpBus]:
    root = Path(tempfile.mkdtemp(prefix="tbcurve"))
    bus = TcpBus(root)
    try:
        bus.generate_keys()
        yield bus.start()
    finally:
        bus.stop()
        shutil.rmtree(root, ignore_errors=True)


def bar(i: int) -> m.BarClosed:
    return m.BarClosed(symbol="ESZ4", interval="1m", ts_ns=i, open=Decimal("4500.25"), high=Decimal("4501"),
                       low=Decimal("4499.75"), close=Decimal("4500"), volume=Decimal(i), index=i)


def stranger_endpoints(bus: TcpBus) -> tuple[Endpoints, str]:
    """The installation's endpoints with a valid CURVE keypair that busd does not allow."""
    public, secret = zmq.curve_keypair()
    endpoints = bus.endpoints
    assert endpoints.curve is not None
    curve = dataclasses.replace(endpoints.curve, client_name="stranger", client_public=public, client_secret=secret)
    return dataclasses.replace(endpoints, curve=curve), public.decode()


def serve_once(bus_client: BusClient, service: str) -> threading.Thread:
    worker = bus_client.rpc_worker(service)

    def run() -> None:
        request = worker.recv(timeout_ms=int(WAIT_S * 1000))
        if request is not None:
            worker.reply(request, m.Alert(level="info", text="pong", session=None))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_allowed_client_publishes_subscribes_and_calls_over_curve(tcp_bus: TcpBus) -> None:
    # Given the installation's own endpoints: tcp, with the "engine" client keypair
    endpoints = tcp_bus.endpoints
    assert endpoints.rpc.startswith("tcp://127.0.0.1:") and endpoints.curve is not None
    assert "client_secret" not in repr(endpoints), "secret keys never appear in a repr (or a log)"
    topic = f"md.ES{uuid.uuid4().hex[:6]}.bar.1m"
    with BusClient(endpoints, "curve-test") as client:
        publisher = client.publisher()
        subscriber = client.subscriber([topic])
        # When it subscribes and publishes through busd
        subscriber.wait_connected(publisher, timeout_s=WAIT_S)
        publisher.publish(topic, bar(1))
        # Then the message comes back, decrypted and valid
        received = subscriber.recv(timeout_ms=int(WAIT_S * 1000))
        assert received is not None and received.body == bar(1)
        # And an RPC round trip works through the CURVE router
        serving = serve_once(client, "curve.echo")
        caller = client.rpc_client()
        reply = caller.call("curve.echo", m.AccountSnapshotRequest(session="s1"), timeout_s=WAIT_S, idempotent=True)
        assert isinstance(reply, m.Alert) and reply.text == "pong"
        serving.join(WAIT_S)
    assert tcp_bus.refusals() == []


def test_valid_key_not_in_the_allow_list_is_refused_and_logged(tcp_bus: TcpBus) -> None:
    topic = f"md.NQ{uuid.uuid4().hex[:6]}.bar.1m"
    stranger_ep, stranger_key = stranger_endpoints(tcp_bus)
    with BusClient(tcp_bus.endpoints, "insider") as insider, BusClient(stranger_ep, "stranger") as stranger:
        insider_pub = insider.publisher()
        listener = insider.subscriber([topic])
        listener.wait_connected(insider_pub, timeout_s=WAIT_S)
        # When a client with a well-formed keypair that busd never allowed publishes
        stranger_pub = stranger.publisher()
        for i in range(1, 6):
            stranger_pub.publish(topic, bar(i))
        # Then busd logs the refusal, naming the client's public key and address
        lines = wait_until(lambda: [r for r in tcp_bus.refusals() if r.get("client_key") == stranger_key],
                           timeout=WAIT_S, what="client_refused naming the stranger's key", interval=0.01)
        assert lines[0]["address"] == "127.0.0.1" and lines[0]["level"] == "WARNING"
        # And nothing of it was delivered: a later message from an allowed publisher is the first to arrive
        insider_pub.publish(topic, bar(100))
        first = listener.recv(timeout_ms=int(WAIT_S * 1000))
        assert first is not None and first.source == "insider"
        # And it cannot even hand busd a request (the connection never completes its handshake)
        with pytest.raises(BusUnavailable):
            stranger.rpc_client().call("curve.echo", m.AccountSnapshotRequest(session="s1"), timeout_s=0.5)


def test_client_without_a_key_cannot_talk(tcp_bus: TcpBus) -> None:
    topic = f"md.CL{uuid.uuid4().hex[:6]}.bar.1m"
    no_key = dataclasses.replace(tcp_bus.endpoints, curve=None)
    with BusClient(tcp_bus.endpoints, "insider") as insider, BusClient(no_key, "plain") as plain:
        insider_pub = insider.publisher()
        listener = insider.subscriber([topic])
        listener.wait_connected(insider_pub, timeout_s=WAIT_S)
        # When a client speaks plain ZeroMQ (no CURVE) to busd's tcp endpoints
        plain_pub = plain.publisher()
        plain_pub.publish(topic, bar(1))
        with pytest.raises(BusUnavailable):
            plain.rpc_client().call("curve.echo", m.AccountSnapshotRequest(session="s1"), timeout_s=0.5)
        # Then busd logs the failed handshake
        wait_until(lambda: [r for r in tcp_bus.refusals() if r.get("reason") == "handshake_failed_protocol"],
                   timeout=WAIT_S, what="client_refused for a handshake without CURVE", interval=0.01)
        # And none of its messages got through
        insider_pub.publish(topic, bar(100))
        first = listener.recv(timeout_ms=int(WAIT_S * 1000))
        assert first is not None and first.source == "insider"


def test_tcp_without_keys_is_a_config_error(tmp_path: Path) -> None:
    # Given [bus] transport = "tcp" but no `tradebus keys generate` yet
    bus = TcpBus(tmp_path)
    # When busd starts, Then it exits EX_CONFIG and says what to run, rather than listen unauthenticated
    proc = subprocess.run([sys.executable, "-m", "bus.busd", "--state-dir", str(bus.state), "--no-journal"],
                          cwd=REPO, capture_output=True, text=True, timeout=WAIT_S)
    assert proc.returncode == EXIT_CONFIG
    assert "tradebus keys generate" in proc.stdout


def test_a_client_without_its_keypair_gets_a_clear_error(tcp_bus: TcpBus) -> None:
    (tcp_bus.keys.client_secret_file("engine")).unlink()
    with BusClient(tcp_bus.endpoints, "keyless") as client:
        with pytest.raises(ValueError, match="tradebus keys generate --name engine"):
            client.publisher()
