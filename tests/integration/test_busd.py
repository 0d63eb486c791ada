"""busd as a real process: pub/sub, RPC routing, malformed input, restarts.

Every busd is a subprocess (``python -m bus.busd``); readiness is its ready file holding its pid,
polled with a deadline. Each test uses its own topic/service names so the shared busd cannot
mix them up.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import msgpack
import pytest
import zmq
from bus_harness import REPO, WAIT_S, BusdProcess, bar, drain, raw_envelope, unique, wait_until

from bus import topics
from bus.busd import PROTOCOL, READY, REP, REQ
from bus.client import BusClient, RpcWorker
from bus.codec import decode, encode
from bus.envelope import Envelope, new_id, now_ns
from bus.errors import BusUnavailable, DeadlineExceeded, MalformedRequest, NoWorker, RequestTimeout, UnknownService
from bus.journal import JournalReader
from schema import messages as m
from schema.messages import SCHEMA_VERSION

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def make_busd() -> Iterator[Callable[..., BusdProcess]]:
    """Start busds in short state folders (ipc paths are length-limited); stop them all after."""
    started: list[BusdProcess] = []
    folders: list[Path] = []

    def make(*args: str, state: Path | None = None) -> BusdProcess:
        if state is None:
            state = Path(tempfile.mkdtemp(prefix="tb", dir="/tmp"))
            folders.append(state)
        busd = BusdProcess(state, args)
        started.append(busd)
        return busd.start()

    try:
        yield make
    finally:
        for busd in started:
            busd.stop()
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def busd() -> Iterator[BusdProcess]:
    """One busd for the tests that do not restart it (no startup grace: unknown means unknown)."""
    state = Path(tempfile.mkdtemp(prefix="tb", dir="/tmp"))
    process = BusdProcess(state, ("--startup-grace-s", "0"))
    try:
        process.start()
        yield process
        assert process.stop() == 0, "busd must exit 0 on SIGTERM"
        ready = process.endpoints.ready_file
        assert ready is not None and not ready.exists(), "busd removes its ready file on the way out"
        assert process.logs()[-1]["action"] == "stopped"
    finally:
        process.stop()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def clients(busd: BusdProcess) -> Iterator[Callable[[str], BusClient]]:
    made: list[BusClient] = []

    def make(source: str) -> BusClient:
        client = BusClient(busd.endpoints, source)
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            client.close()




class Serving:
    """A worker answering on its own thread with Alert(text=name), recording what it served."""

    def __init__(self, worker: RpcWorker, name: str) -> None:
        self.worker, self.name = worker, name
        self.served: list[Envelope] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            request = self.worker.recv(timeout_ms=20)
            if request is not None:
                self.served.append(request.envelope)
                self.worker.reply(request, m.Alert(level="info", text=self.name, session=request.envelope.session))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT_S)


MakeClient = Callable[[str], BusClient]
MakeServing = Callable[[RpcWorker, str], Serving]
MakeBusd = Callable[..., BusdProcess]


@pytest.fixture
def serving() -> Iterator[Callable[[RpcWorker, str], Serving]]:
    made: list[Serving] = []

    def make(worker: RpcWorker, name: str) -> Serving:
        made.append(Serving(worker, name))
        return made[-1]

    try:
        yield make
    finally:
        for s in made:
            s.stop()


def registered(busd: BusdProcess, service: str, count: int = 1) -> None:
    busd.wait_log(f"{count} worker(s) of {service}",
                  lambda r: r["action"] == "worker_ready" and service in r["services"], count)


# ---------------------------------------------------------------------------------- pub/sub


def test_pub_sub_through_busd_without_gaps_and_journaled(busd: BusdProcess, clients: MakeClient) -> None:
    # Given a subscriber whose subscription is proven live
    symbol = unique("ES")
    topic = topics.bar(symbol, "1m")
    publisher_bus, subscriber_bus = clients("md-feed"), clients("strategy")
    pub = publisher_bus.publisher()
    gaps: list[tuple[str, int, int]] = []
    sub = subscriber_bus.subscriber([topic], on_gap=lambda *g: gaps.append(g))
    sub.wait_connected(publisher_bus.publisher())
    pub_probe = subscriber_bus.subscriber([topic])
    pub_probe.wait_connected(pub)  # and the real publisher's path to busd is up too

    # When 300 bars are published
    sent = [pub.publish(topic, bar(i, symbol), session="s1") for i in range(300)]

    # Then all arrive, in order, exactly as sent, with no gap
    got = drain(sub)
    assert [e.seq for e in got] == list(range(1, 301))
    assert got == sent
    assert (sub.gaps, sub.malformed, gaps) == (0, 0, [])
    # And busd journaled every one of them
    reader = JournalReader(busd.state / "journal")
    records = wait_until(lambda: (r := list(reader.records(topic_prefix=topic))) and len(r) == 300 and r,
                         "300 journal records")
    assert [r.envelope() for r in records] == sent  # type: ignore[union-attr]
    assert {r.kind for r in records} == {"pub"}  # type: ignore[union-attr]


def test_messages_nobody_subscribes_to_are_still_journaled(busd: BusdProcess, clients: MakeClient) -> None:
    bus = clients("lonely")
    pub = bus.publisher()
    watch = bus.subscriber([topics.heartbeat("lonely")])
    watch.wait_connected(pub)
    topic = topics.ALERT + "." + unique("x")
    envelope = pub.publish(topic, m.Alert(level="info", text="nobody listens"))
    reader = JournalReader(busd.state / "journal")
    wait_until(lambda: [r for r in reader.records(topic_prefix=topic) if r.envelope() == envelope],
               "the unsubscribed message in the journal")


def test_subscriptions_match_whole_segments(busd: BusdProcess, clients: MakeClient) -> None:
    bus = clients("account")
    session = unique("s")
    pub = bus.publisher()
    sub = bus.subscriber([topics.order(session)])
    sub.wait_connected(pub)
    pub.publish(topics.order(session + "0"), m.Alert(level="info", text="other session"))
    mine = pub.publish(topics.order(session), m.Alert(level="info", text="mine"))
    assert drain(sub) == [mine]


def test_subscriber_reports_gaps_and_restarts_per_source_and_topic(busd: BusdProcess, clients: MakeClient) -> None:
    # Given a raw publisher whose connection is proven by a warm-up message
    topic, warm = unique("gap."), unique("warm.")
    calls: list[tuple[str, int, int]] = []
    sub = clients("watcher").subscriber([topic, warm], on_gap=lambda *g: calls.append(g))
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.PUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(busd.endpoints.pub_in)
    try:
        def warmed() -> bool:
            raw.send_multipart([warm.encode(), raw_envelope(warm, m.Alert(level="i", text="w"), seq=1)])
            return sub.recv(50) is not None

        wait_until(warmed, "the raw publisher to reach the subscriber")
        # When a source skips seqs 3-4, then restarts (new epoch) and skips seq 2
        for epoch, seq in [("e1", 1), ("e1", 2), ("e1", 5), ("e2", 1), ("e2", 3)]:
            body = m.Alert(level="info", text=f"{epoch}/{seq}")
            raw.send_multipart([topic.encode(), raw_envelope(topic, body, source="src", epoch=epoch, seq=seq)])
        got = [e for e in drain(sub) if e.topic == topic]
    finally:
        raw.close()

    # Then every message is delivered, and the gaps and the restart are reported
    assert [(e.epoch, e.seq) for e in got] == [("e1", 1), ("e1", 2), ("e1", 5), ("e2", 1), ("e2", 3)]
    assert calls == [("src", 3, 5), ("src", 6, 1), ("src", 2, 3)]
    assert (sub.gaps, sub.restarts) == (3, 1)
    assert sub.last_gap is not None and sub.last_gap.topic == topic


# ---------------------------------------------------------------------------------- rpc


def test_rpc_round_trip_least_recently_used_across_two_workers(
    busd: BusdProcess, clients: MakeClient, serving: MakeServing
) -> None:
    # Given two workers of one service
    service = unique("svc.")
    a = serving(clients("worker-a").rpc_worker(service), "a")
    b = serving(clients("worker-b").rpc_worker(service), "b")
    registered(busd, service, 2)
    caller = clients("caller").rpc_client()

    # When six requests are made one after the other
    replies = [caller.call(service, m.AccountSnapshotRequest(session="s1"), timeout_s=2, session="s1")
               for _ in range(6)]

    # Then they alternate between the workers, and replies carry the request's context
    names = [r.text for r in replies]  # type: ignore[attr-defined]
    assert sorted(names) == ["a", "a", "a", "b", "b", "b"]
    assert all(x != y for x, y in zip(names, names[1:])), names
    assert len(a.served) == len(b.served) == 3
    assert all(r.session == "s1" for r in replies)  # type: ignore[attr-defined]
    reply = caller.call_envelope(service, m.AccountSnapshotRequest(session="s1"), timeout_s=2)
    request = (a.served + b.served)[-1]
    assert reply.correlation_id == request.message_id and reply.source in ("worker-a", "worker-b")
    # And requests and replies are journaled
    reader = JournalReader(busd.state / "journal")
    wait_until(lambda: [r.kind for r in reader.records(topic_prefix=service)].count("rep") == 7,
               "7 replies in the journal")
    assert [r.kind for r in reader.records(topic_prefix=service)].count("req") == 7


def test_unknown_service_is_an_immediate_error(busd: BusdProcess, clients: MakeClient) -> None:
    caller = clients("caller").rpc_client()
    started = time.monotonic()
    with pytest.raises(UnknownService) as info:
        caller.call(unique("nobody."), m.CancelOrder(session="s1", client_order_id="x"), timeout_s=5)
    assert time.monotonic() - started < 1.0
    assert info.value.code == "unknown_service"


def test_no_live_worker_is_an_immediate_error(busd: BusdProcess, clients: MakeClient) -> None:
    # Given a service whose only worker has left
    service = unique("gone.")
    worker = clients("worker").rpc_worker(service)
    registered(busd, service)
    worker.close()
    busd.wait_log("the worker's goodbye", lambda r: r["action"] == "worker_left" and service in r["services"])
    caller = clients("caller").rpc_client()
    started = time.monotonic()
    with pytest.raises(NoWorker):
        caller.call(service, m.CancelOrder(session="s1", client_order_id="x"), timeout_s=5)
    assert time.monotonic() - started < 1.0


def test_silent_worker_times_out_then_expires_and_socket_stays_usable(make_busd: MakeBusd) -> None:
    # Given a worker that registered once and then went silent (a hung process)
    busd = make_busd("--worker-expiry-s", "0.5", "--startup-grace-s", "0")
    service = unique("hung.")
    ctx = zmq.Context.instance()
    hung = ctx.socket(zmq.DEALER)
    hung.setsockopt(zmq.LINGER, 0)
    hung.connect(busd.endpoints.rpc)
    bus = BusClient(busd.endpoints, "caller")
    try:
        hung.send_multipart([PROTOCOL, READY, service.encode()])
        registered(busd, service)
        caller = bus.rpc_client()

        # When a call reaches it, the caller gets RequestTimeout, not a hang
        with pytest.raises(RequestTimeout):
            caller.call(service, m.CancelOrder(session="s1", client_order_id="x"), timeout_s=0.3)
        frames = hung.recv_multipart()
        assert frames[:2] == [PROTOCOL, REQ] and frames[3] == service.encode()
        late = decode(frames[5])
        # The hung worker answers late: that reply must not be taken for the next call's
        reply = Envelope(SCHEMA_VERSION, "alert", service, "hung", "e", 0, new_id(), late.message_id, None, None,
                         1, 1, m.Alert(level="info", text="late"))
        hung.send_multipart([PROTOCOL, REP, frames[2], encode(reply)])
        assert caller.socket.poll(int(WAIT_S * 1000)), "the late reply reaches the caller"

        # Then once busd expires the silent worker, the same client gets an immediate NoWorker
        busd.wait_log("the worker expiring", lambda r: r["action"] == "worker_expired" and service in r["services"])
        with pytest.raises(NoWorker):
            caller.call(service, m.CancelOrder(session="s1", client_order_id="y"), timeout_s=2)
        assert caller.stale == 1
    finally:
        hung.close()
        bus.close()


def test_request_past_its_deadline_is_answered_deadline(busd: BusdProcess) -> None:
    ctx = zmq.Context.instance()
    client = ctx.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(busd.endpoints.rpc)
    try:
        request = raw_envelope("svc", m.CancelOrder(session="s1", client_order_id="x"), seq=0)
        past = (now_ns() - 1_000_000_000).to_bytes(8, "big")
        client.send_multipart([PROTOCOL, REQ, b"svc", past, request])
        assert client.poll(int(WAIT_S * 1000))
        tag, command, data = client.recv_multipart()
        reply = decode(data)
    finally:
        client.close()
    assert (tag, command) == (PROTOCOL, REP)
    assert isinstance(reply.body, m.ErrorReply) and reply.body.code == "deadline"
    assert reply.correlation_id == decode(request).message_id
    assert DeadlineExceeded.CODE == "deadline"


# ---------------------------------------------------------------------------------- malformed input


def test_malformed_publications_are_logged_dropped_and_busd_keeps_serving(
    busd: BusdProcess, clients: MakeClient, serving: MakeServing
) -> None:
    # Given a subscriber and a raw publisher that is connected
    topic = unique("bad.")
    sub = clients("watcher").subscriber([topic])
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.PUB)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(busd.endpoints.pub_in)
    t = topic.encode()
    good = m.Alert(level="info", text="good")
    try:
        wait_until(lambda: raw.send_multipart([t, raw_envelope(topic, good, source="warm")]) or sub.recv(50),
                   "the raw publisher to be connected")
        drain(sub, 100)

        # When it sends garbage of every kind, then one good message
        float_money = msgpack.unpackb(raw_envelope(topic, bar(1)))
        float_money[2], float_money[12]["close"] = topic, 4500.25
        raw.send_multipart([t, b"\xc1 this is not msgpack"])
        raw.send_multipart([t, raw_envelope(topic, good), b"extra"])
        raw.send_multipart([t, raw_envelope(topic + ".elsewhere", good, source="liar")])
        raw.send_multipart([t, raw_envelope(topic, good, source="future", version=SCHEMA_VERSION + 1)])
        raw.send_multipart([t, msgpack.packb(float_money)])
        raw.send_multipart([t, raw_envelope(topic, good, source="marker")])
        got = drain(sub)
    finally:
        raw.close()

    # Then only the good message was forwarded...
    assert [e.source for e in got] == ["marker"]
    assert sub.malformed == 0
    # ...and each bad one was logged with its reason and claimed source
    lines = busd.wait_log("5 malformed publications", lambda r: r["action"] == "malformed" and r["channel"] == "pub"
                          and (r.get("topic", topic).startswith(topic)), 5)
    reasons = " | ".join(r["reason"] for r in lines)
    for expected in ("not msgpack", "expected 2 frames", "differs from envelope topic",
                     "unsupported schema version", "float at `body.close`"):
        assert expected in reasons
    assert {"liar", "future"} <= {r.get("source") for r in lines}
    # And busd still serves
    service = unique("alive.")
    serving(clients("worker").rpc_worker(service), "w")
    registered(busd, service)
    assert clients("caller").rpc_client().call(service, good, timeout_s=2).text == "w"  # type: ignore[attr-defined]


def test_malformed_rpc_frames_are_rejected_and_answered_when_possible(
    busd: BusdProcess, clients: MakeClient, serving: MakeServing
) -> None:
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(busd.endpoints.rpc)
    service = unique("rpcbad.")
    no_deadline = (0).to_bytes(8, "big")
    # A request whose header is fine but whose body is not a CancelOrder: its id can be answered.
    bad_body = msgpack.unpackb(raw_envelope(service, m.CancelOrder(session="s1", client_order_id="x")))
    bad_body[12] = {"session": 5}
    bad_id = bad_body[6]
    short_deadline = raw_envelope(service, m.CancelOrder(session="s1", client_order_id="y"))
    try:
        raw.send_multipart([b"GET / HTTP/1.1", b"x", b"y"])
        raw.send_multipart([PROTOCOL, b"TELEPORT"])
        raw.send_multipart([PROTOCOL, READY])
        raw.send_multipart([PROTOCOL, REQ, service.encode(), no_deadline, b"\xc1garbage"])
        raw.send_multipart([PROTOCOL, REQ, service.encode(), no_deadline, msgpack.packb(bad_body)])
        raw.send_multipart([PROTOCOL, REQ, service.encode(), b"\x01", short_deadline])
        replies = []
        for _ in range(2):
            assert raw.poll(int(WAIT_S * 1000)), "an error reply for each answerable bad request"
            replies.append(decode(raw.recv_multipart()[2]))
    finally:
        raw.close()

    assert [(r.correlation_id, r.body.code) for r in replies] == [  # type: ignore[attr-defined]
        (bad_id, "malformed"), (decode(short_deadline).message_id, "malformed")]
    assert "`body.session`" in replies[0].body.message  # type: ignore[attr-defined]
    lines = busd.wait_log("6 malformed rpc frames", lambda r: r["action"] == "malformed" and r["channel"] == "rpc"
                          and r.get("peer"), 6)
    reasons = " | ".join(r["reason"] for r in lines)
    for expected in ("not a TBRPC1 frame list", "unknown command", "READY names no service",
                     "not msgpack", "bad body for type 'order.cancel'", "deadline frame"):
        assert expected in reasons
    # And busd still routes
    serving(clients("worker").rpc_worker(service), "w")
    registered(busd, service)
    assert clients("caller").rpc_client().call(service, m.CancelOrder(session="s1", client_order_id="z"),
                                               timeout_s=2).text == "w"  # type: ignore[attr-defined]


def test_worker_answers_an_unencodable_reply_with_an_error(busd: BusdProcess, clients: MakeClient) -> None:
    service = unique("floaty.")
    worker = clients("worker").rpc_worker(service)
    registered(busd, service)
    caller = clients("caller").rpc_client()
    result: list[Exception] = []

    def call() -> None:
        try:
            caller.call(service, m.BarsRequest(symbol="ES", interval="1m"), timeout_s=5)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            result.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    request = worker.recv(timeout_ms=int(WAIT_S * 1000))
    assert request is not None
    float_close = m.BarClosed(symbol="ES", interval="1m", ts_ns=1, open=Decimal(1), high=Decimal(1),
                              low=Decimal(1), close=1.5, volume=Decimal(1), index=1)  # type: ignore[arg-type]
    worker.reply(request, m.BarsReply(bars=[float_close]))
    thread.join(WAIT_S)
    assert len(result) == 1 and isinstance(result[0], MalformedRequest)
    assert "`body.bars[0].close` is float" in result[0].message  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------- lifecycle


def test_everything_recovers_when_busd_is_killed_and_restarted(make_busd: MakeBusd, serving: MakeServing) -> None:
    # Given a worker, a caller, a publisher and a subscriber, all working
    busd = make_busd()
    service, topic = unique("acct."), unique("fact.")
    worker_bus, caller_bus = BusClient(busd.endpoints, "worker"), BusClient(busd.endpoints, "caller")
    server: Serving | None = None
    try:
        server = serving(worker_bus.rpc_worker(service), "w")
        registered(busd, service)
        caller = caller_bus.rpc_client()
        body = m.AccountSnapshotRequest(session="s1")
        assert caller.call(service, body, timeout_s=2).text == "w"  # type: ignore[attr-defined]
        pub = worker_bus.publisher()
        sub = caller_bus.subscriber([topic])
        sub.wait_connected(pub)
        first = pub.publish(topic, m.Alert(level="info", text="before"))
        assert drain(sub) == [first]

        # When busd is killed, calls fail fast and clearly instead of hanging...
        busd.kill()
        with pytest.raises((BusUnavailable, RequestTimeout)):
            caller.call(service, body, timeout_s=0.3)

        # ...and when it is started again on the same state folder
        busd.start()

        # Then the worker re-registers by itself and calls succeed again
        def call_ok() -> bool:
            try:
                return caller.call(service, body, timeout_s=0.5).text == "w"  # type: ignore[attr-defined]
            except (NoWorker, BusUnavailable, RequestTimeout):
                return False

        wait_until(call_ok, "a successful call after the restart", timeout_s=5)
        registered(busd, service)
        # And pub/sub works again, with the sequence still telling what was (or was not) missed
        sub.wait_connected(pub)
        last = pub.publish(topic, m.Alert(level="info", text="after"))
        got = drain(sub)
        assert got[-1] == last
        assert [e.seq for e in got] == sorted(e.seq for e in got)
        assert sub.gaps == last.seq - 1 - len(got)  # every seq is either received or counted missing
    finally:
        if server is not None:
            server.stop()  # its thread owns the worker socket: stop it before closing the client
        worker_bus.close()
        caller_bus.close()
    assert busd.stop() == 0


def test_second_busd_on_the_same_state_folder_refuses_to_start(busd: BusdProcess) -> None:
    proc = subprocess.run([sys.executable, "-m", "bus.busd", "--state-dir", str(busd.state)], cwd=REPO,
                          capture_output=True, text=True, timeout=WAIT_S)
    assert proc.returncode == 1
    assert "already_running" in [json.loads(line)["action"] for line in proc.stdout.splitlines()]
    ready = busd.endpoints.ready_file
    assert ready is not None and ready.read_text().strip() == str(busd.proc.pid)  # type: ignore[union-attr]


def test_too_long_state_path_is_a_config_error(tmp_path: Path) -> None:
    state = tmp_path / ("x" * 120)
    proc = subprocess.run([sys.executable, "-m", "bus.busd", "--state-dir", str(state)], cwd=REPO,
                          capture_output=True, text=True, timeout=WAIT_S)
    assert proc.returncode == 78
    assert json.loads(proc.stdout.splitlines()[-1])["action"] == "config_error"
