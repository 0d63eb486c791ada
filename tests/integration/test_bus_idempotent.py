"""Idempotent-only retries of RpcClient.call, against a real busd (ipc).

A request marked ``idempotent`` rides out a worker that registers late and a busd restart, within
the caller's deadline; one that is not raises at once. The moment to change the world (start the
worker, restart busd) is the caller's own ``retrying`` log record, so nothing sleeps.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from bus_harness import WAIT_S, BusdProcess, started_busd

from bus.client import BusClient
from bus.endpoints import Endpoints
from bus.errors import BusUnavailable, NoWorker
from schema import messages as m

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REQUEST = m.AccountSnapshotRequest(session="s1")


@pytest.fixture
def busd() -> Iterator[BusdProcess]:
    # A long startup grace makes an unregistered service ``no_worker`` (retryable), not unknown.
    with started_busd("tbidem", "--no-journal", "--startup-grace-s", "60") as process:
        yield process


class _Retries(logging.Handler):
    """Sets ``first`` on the caller's first ``retrying`` record."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.first = threading.Event()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "action", None) == "retrying":
            self.count += 1
            self.first.set()


@pytest.fixture
def retries() -> Iterator[_Retries]:
    client_logger = logging.getLogger("bus.client")
    handler, level = _Retries(), client_logger.level
    client_logger.addHandler(handler)
    client_logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        client_logger.removeHandler(handler)
        client_logger.setLevel(level)


def serve(endpoints: Endpoints, service: str, stop: threading.Event, served: list[str]) -> None:
    """A worker on its own thread (and its own BusClient), answering until ``stop``."""
    with BusClient(endpoints, "worker") as bus:
        worker = bus.rpc_worker(service)
        while not stop.is_set():
            request = worker.recv(timeout_ms=20)
            if request is not None:
                served.append(request.envelope.message_id)
                worker.reply(request, m.Alert(level="info", text="here", session=None))


def test_idempotent_request_waits_for_a_worker_that_appears_late(busd: BusdProcess, retries: _Retries) -> None:
    service = f"snap.{uuid.uuid4().hex[:8]}"
    stop, served = threading.Event(), []

    def late_worker() -> None:  # Given a worker that only starts once the caller has been told no_worker
        if retries.first.wait(WAIT_S):
            serve(busd.endpoints, service, stop, served)

    thread = threading.Thread(target=late_worker, daemon=True)
    thread.start()
    try:
        with BusClient(busd.endpoints, "caller") as bus:
            # When an idempotent request is made before any worker is there
            reply = bus.rpc_client().call(service, REQUEST, timeout_s=WAIT_S, idempotent=True)
        # Then it was retried and answered by the late worker, within the deadline
        assert isinstance(reply, m.Alert) and reply.text == "here"
        assert retries.count >= 1 and len(served) >= 1
    finally:
        stop.set()
        thread.join(WAIT_S)


def test_non_idempotent_request_raises_at_once(busd: BusdProcess, retries: _Retries) -> None:
    service = f"orders.{uuid.uuid4().hex[:8]}"
    with BusClient(busd.endpoints, "caller") as bus:
        started = time.monotonic()
        # When a request not marked idempotent finds no worker
        with pytest.raises(NoWorker):
            bus.rpc_client().call(service, m.CancelOrder(session="s1", client_order_id="x"), timeout_s=WAIT_S)
        # Then the error comes back at once, unretried, long before the deadline
        assert time.monotonic() - started < WAIT_S / 2
    assert retries.count == 0


def test_idempotent_request_survives_a_busd_restart(busd: BusdProcess, retries: _Retries) -> None:
    service = f"snap.{uuid.uuid4().hex[:8]}"
    stop, served = threading.Event(), []
    worker = threading.Thread(target=serve, args=(busd.endpoints, service, stop, served), daemon=True)
    worker.start()
    try:
        with BusClient(busd.endpoints, "caller") as bus:
            caller = bus.rpc_client()
            assert caller.call(service, REQUEST, timeout_s=WAIT_S, idempotent=True).text == "here"  # type: ignore[attr-defined]
            # Given busd dies, and comes back only after the caller's first attempt failed
            busd.kill()
            restarter = threading.Thread(target=lambda: retries.first.wait(WAIT_S) and busd.start(), daemon=True)
            restarter.start()
            # When an idempotent request is made meanwhile
            reply = caller.call(service, REQUEST, timeout_s=3 * WAIT_S, idempotent=True)
            restarter.join(WAIT_S)
        # Then it was retried across the restart and answered
        assert isinstance(reply, m.Alert) and reply.text == "here"
        assert busd.starts == 2 and retries.count >= 1
    finally:
        stop.set()
        worker.join(WAIT_S)


def test_non_idempotent_request_does_not_retry_while_busd_is_down(busd: BusdProcess, retries: _Retries) -> None:
    with BusClient(busd.endpoints, "caller") as bus:
        caller = bus.rpc_client()
        busd.kill()
        with pytest.raises(BusUnavailable):
            caller.call("orders.any", m.CancelOrder(session="s1", client_order_id="x"), timeout_s=0.5)
    assert retries.count == 0
