"""Gaps, restarts, late joins and lag, through a real busd process.

The owner of a topic is played by ``Owner``: one thread that, like the account service, first
records an update in its book, then publishes it, and between updates answers snapshot requests
with the book. Messages are lost the way they are in production: a raw socket skips sequence
numbers, or the owner restarts with a new epoch. Nothing sleeps to wait for readiness: the
owner proves its publisher through busd, subscribers prove their subscriptions, and everything
else is polled with a deadline.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest
from bus_harness import WAIT_S, BusdProcess, started_busd, unique, wait_until
import zmq

from bus.client import BusClient, Subscriber
from bus.codec import encode
from bus.endpoints import Endpoints
from bus.envelope import Envelope, new_id, now_ns
from bus.resync import Resync, Snapshot, field_mark, rpc_snapshot
from schema import messages as m
from schema.messages import SCHEMA_VERSION

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

def bar(i: int, symbol: str = "ESZ4") -> m.BarClosed:
    return m.BarClosed(symbol=symbol, interval="1m", ts_ns=i, open=Decimal(1), high=Decimal(1), low=Decimal(1),
                       close=Decimal(1), volume=Decimal(i), index=i)


def raw(topic: str, body: m.Message, *, source: str = "raw", epoch: str = "e1", seq: int = 1,
        send_ns: int | None = None) -> list[bytes]:
    sent = now_ns() if send_ns is None else send_ns
    envelope = Envelope(SCHEMA_VERSION, body.TYPE, topic, source, epoch, seq, new_id(), None, None, None, sent, sent,
                        body)
    return [topic.encode(), encode(envelope)]


# ---------------------------------------------------------------------------------- processes


@pytest.fixture(scope="module")
def busd() -> Iterator[BusdProcess]:
    # A long startup grace: a service whose worker has not registered yet is "no worker"
    # (retried by idempotent calls), not "unknown".
    with started_busd("tbrs", "--no-journal", "--startup-grace-s", "60") as process:
        yield process


@pytest.fixture
def clients(busd: BusdProcess) -> Iterator[Callable[[str], BusClient]]:
    made: list[BusClient] = []

    def make(source: str) -> BusClient:
        made.append(BusClient(busd.endpoints, source))
        return made[-1]

    try:
        yield make
    finally:
        for client in made:
            client.close()


class Owner:
    """Owns ``topic``: publishes bars 1, 2, 3, ... (book first, then the bus) until ``publish_to``
    says stop, and answers ``service`` with the whole book — all on one thread. ``book`` may be
    shared with an earlier life of the same owner (a restart keeps the durable state)."""

    def __init__(self, endpoints: Endpoints, source: str, topic: str, service: str, book: list[int]) -> None:
        self.bus = BusClient(endpoints, source)
        self.topic, self.service, self.book = topic, service, book
        self.until = len(book)
        self.served: list[int] = []  # the book's length at each snapshot served
        self.failed: BaseException | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(WAIT_S):
            pytest.fail(f"owner {source} did not come up: {self.failed!r}")

    @property
    def epoch(self) -> str:
        return self.bus.epoch

    def publish_to(self, n: int) -> None:
        self.until = n

    def _run(self) -> None:
        try:
            publisher = self.bus.publisher()
            worker = self.bus.rpc_worker(self.service)
            probe = self.bus.subscriber([])
            probe.wait_connected(publisher)  # this publisher's path through busd is up
            probe.close()
            self._ready.set()
            while not self._stop.is_set():
                request = worker.recv(timeout_ms=1)
                if request is not None:
                    self.served.append(len(self.book))
                    worker.reply(request, m.BarsReply(bars=[bar(i) for i in self.book]))
                if len(self.book) < self.until:
                    n = len(self.book) + 1
                    self.book.append(n)
                    publisher.publish(self.topic, bar(n))
            worker.close()
            publisher.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.failed = exc
            raise

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT_S)
        self.bus.close()
        assert self.failed is None, self.failed


@pytest.fixture
def owners() -> Iterator[Callable[..., Owner]]:
    made: list[Owner] = []

    def make(*args: object) -> Owner:
        made.append(Owner(*args))  # type: ignore[arg-type]
        return made[-1]

    try:
        yield make
    finally:
        for owner in made:
            if not owner._stop.is_set():
                owner.stop()


def read_until(resync: Resync, done: Callable[[list[int]], bool], what: str) -> list[int]:
    """Bar numbers handed out by ``resync`` until ``done`` says enough."""
    got: list[int] = []

    def more() -> bool:
        while (envelope := resync.recv(10)) is not None:
            got.append(envelope.body.index)  # type: ignore[attr-defined]
        return done(got)

    wait_until(more, what)
    return got


# ---------------------------------------------------------------------------------- gaps


def test_sequence_gap_takes_one_snapshot_drops_stale_updates_and_logs_the_gap(
    busd: BusdProcess, clients: Callable[[str], BusClient], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a strategy-like consumer in step with bars of `topic`, whose owner serves snapshots
    topic, warm, service = f"md.{unique('ES')}.bar.1m", unique("warm."), unique("marketdata.")
    owner_bus, consumer = clients("marketdata"), clients("strategy")
    worker = owner_bus.rpc_worker(service)
    book = [1, 2, 3, 4, 5, 6]  # what the owner holds when asked: bars 3 and 4 never reach the bus
    served: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            request = worker.recv(timeout_ms=10)
            if request is not None:
                served.append(len(book))
                worker.reply(request, m.BarsReply(bars=[bar(i) for i in book]))
        worker.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    rpc = consumer.rpc_client()

    def bars_snapshot() -> Snapshot[m.BarsReply]:
        reply = rpc.call(service, m.BarsRequest(symbol="ES", interval="1m"), timeout_s=5, idempotent=True)
        assert isinstance(reply, m.BarsReply)
        return Snapshot(reply, reply.bars[-1].ts_ns if reply.bars else 0)

    applied: list[list[int]] = []
    told: list[tuple[str, int, int]] = []
    sub = consumer.subscriber([topic, warm], on_gap=lambda *g: told.append(g))
    resync = Resync(sub)
    resync.track(topic, bars_snapshot, lambda s: applied.append([b.index for b in s.value.bars]),
                 mark=field_mark("ts_ns"), current=Snapshot(None, 0))
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(busd.endpoints.pub_in)
    try:
        wait_until(lambda: sock.send_multipart(raw(warm, m.Alert(level="i", text="w"))) or resync.recv(50),
                   "the raw publisher to reach the subscriber")
        while resync.recv(50) is not None:
            pass

        # When seqs 3 and 4 are lost on the way
        with caplog.at_level(logging.INFO):
            for seq in (1, 2, 5, 6, 7):
                sock.send_multipart(raw(topic, bar(seq), source="md-feed", seq=seq))
            got = read_until(resync, lambda g: 7 in g, "bar 7")
    finally:
        sock.close()
        stop.set()
        server.join(WAIT_S)

    # Then one snapshot (of 1..6) was taken and applied, 5 and 6 were dropped as stale, 7 delivered
    assert got == [1, 2, 7]
    assert served == [6] and applied == [[1, 2, 3, 4, 5, 6]]
    assert (resync.snapshots, resync.stale, resync.in_sync) == (1, 2, True)
    # And the gap was reported to the consumer's own on_gap and logged with where it was
    assert told == [("md-feed", 3, 5)]
    gap_logs = [r.fields for r in caplog.records if getattr(r, "action", "") == "resync_needed"]  # type: ignore[attr-defined]
    assert [(f["source"], f["topic"], f["expected"], f["got"], f["reason"]) for f in gap_logs] == [
        ("md-feed", topic, 3, 5, "gap")]


def test_owner_restart_resyncs_once_from_the_new_life_and_loses_nothing(
    busd: BusdProcess, clients: Callable[[str], BusClient], owners: Callable[..., Owner]
) -> None:
    # Given an owner publishing bars 1, 2 and a consumer in step with it (snapshot over RPC)
    topic, service, source = f"md.{unique('NQ')}.bar.1m", unique("account."), unique("acct-")
    book: list[int] = []
    first = owners(busd.endpoints, source, topic, service, book)
    consumer = clients("strategy")
    applied: list[tuple[list[int], str | None]] = []
    sub = consumer.subscriber([topic])
    resync = Resync(sub)
    resync.track(topic, rpc_snapshot(consumer.rpc_client(), service, m.BarsRequest(symbol="NQ", interval="1m")),
                 lambda s: applied.append(([b.index for b in s.value.bars], s.epoch)))
    assert resync.sync(connected_via=consumer.publisher())
    first.publish_to(2)
    assert read_until(resync, lambda g: 2 in g, "bars 1 and 2") == [1, 2]

    # When the owner restarts (a new epoch, the same durable book) and publishes 3..6
    first.stop()
    second = owners(busd.endpoints, source, topic, service, book)
    second.publish_to(6)
    after = read_until(resync, lambda g: 6 in g or applied[-1][0][-1:] == [6], "bar 6, as an update or in a snapshot")

    # Then exactly one snapshot came from the new life, and snapshot + newer updates = 3..6 exactly
    assert len(applied) == 2 and len(second.served) == 1
    snapshot_bars, epoch = applied[-1]
    assert epoch == second.epoch != first.epoch
    assert snapshot_bars == list(range(1, len(snapshot_bars) + 1))
    assert snapshot_bars + after == [1, 2, 3, 4, 5, 6]
    assert sub.restarts == 1 and resync.snapshots == 2


def test_late_joiner_gets_the_snapshot_then_every_newer_update_exactly_once(
    busd: BusdProcess, clients: Callable[[str], BusClient], owners: Callable[..., Owner]
) -> None:
    # Given an owner that is already streaming when the consumer joins
    topic, service = f"md.{unique('CL')}.bar.1m", unique("marketdata.")
    owner = owners(busd.endpoints, unique("md-"), topic, service, [])
    owner.publish_to(10_000)
    wait_until(lambda: len(owner.book) >= 50, "the owner to be streaming")

    # When a consumer subscribes, proves its subscription, then takes the snapshot
    consumer = clients("late")
    applied: list[list[int]] = []
    sub = consumer.subscriber([topic])
    resync = Resync(sub)
    resync.track(topic, rpc_snapshot(consumer.rpc_client(), service, m.BarsRequest(symbol="CL", interval="1m")),
                 lambda s: applied.append([b.index for b in s.value.bars]))
    assert resync.sync(connected_via=consumer.publisher())
    last = len(owner.book) + 200
    owner.publish_to(last)
    got = read_until(resync, lambda g: last in g, f"bar {last}")

    # Then: the snapshot first, then every later bar once, in order, none missing
    assert len(applied) == 1 and len(owner.served) == 1
    assert len(applied[0]) >= 50 and len(got) >= 200
    assert applied[0] + got == list(range(1, last + 1))
    assert sub.gaps == 0


# ---------------------------------------------------------------------------------- lag


def test_messages_older_than_the_threshold_make_the_subscriber_lag_loudly_then_recover(
    busd: BusdProcess, clients: Callable[[str], BusClient], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a subscriber with a 1 s lag threshold and a connected raw publisher
    topic = unique("lag.")
    lags: list[tuple[str, int]] = []
    sub = clients("slow").subscriber([topic], on_lag=lambda t, lag: lags.append((t, lag)), lag_threshold_s=1.0)
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(busd.endpoints.pub_in)
    alert = m.Alert(level="info", text="x")
    try:
        wait_until(lambda: sock.send_multipart(raw(topic, alert, seq=0)) or sub.recv(50),
                   "the raw publisher to reach the subscriber")
        while sub.recv(50) is not None:
            pass
        assert not sub.lagging

        # When three messages arrive that were sent 5 s ago (a consumer that fell behind)
        with caplog.at_level(logging.INFO, logger="bus.client"):
            for seq in (1, 2, 3):
                sock.send_multipart(raw(topic, alert, seq=seq, send_ns=now_ns() - 5_000_000_000))
            stale = [wait_until(lambda: sub.recv(50), f"stale message {i}") for i in range(3)]
            # Then it is lagging: told for each, logged once as an error
            assert sub.lagging
            assert [t for t, _ in lags] == [topic] * 3 and all(lag >= 5_000_000_000 for _, lag in lags)

            # When a fresh message arrives
            sock.send_multipart(raw(topic, alert, seq=4))
            fresh = wait_until(lambda: sub.recv(50), "the fresh message")
    finally:
        sock.close()

    # Then it has recovered, said so once, and no message was lost along the way
    assert not sub.lagging and len(lags) == 3
    assert [e.seq for e in stale] + [fresh.seq] == [1, 2, 3, 4]  # type: ignore[union-attr]
    actions = [(r.action, r.levelno) for r in caplog.records if r.name == "bus.client"  # type: ignore[attr-defined]
               and getattr(r, "action", "") in ("lagging", "lag_recovered")]
    assert actions == [("lagging", logging.ERROR), ("lag_recovered", logging.WARNING)]
    assert sub.lag is not None and sub.lag.episodes == 1 and sub.lag.late == 3


def test_a_paused_consumer_is_lagging_and_catches_up(busd: BusdProcess, clients: Callable[[str], BusClient]) -> None:
    # Given a subscriber (threshold 0.3 s) and a publisher whose path is proven
    topic = unique("pause.")
    bus = clients("paused")
    pub = bus.publisher()
    sub: Subscriber = bus.subscriber([topic], lag_threshold_s=0.3)
    sub.wait_connected(pub)
    probe = bus.subscriber([topic], lag_threshold_s=None)
    probe.wait_connected(pub)

    # When a message waits in the queue while the consumer is busy for 1 s (its handler is slow)
    pub.publish(topic, m.Alert(level="info", text="old"))
    wait_until(lambda: probe.recv(10), "the message to be through busd")
    time.sleep(1.0)  # the simulated slow handler, not a wait for readiness
    assert sub.recv(1000) is not None
    assert sub.lagging and sub.lag is not None and sub.lag.lag_ns >= 1_000_000_000

    # Then once it handles a fresh message it is in time again
    pub.publish(topic, m.Alert(level="info", text="new"))
    assert sub.recv(int(WAIT_S * 1000)) is not None
    assert not sub.lagging

