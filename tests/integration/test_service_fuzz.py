"""Hostile input at the services' endpoints, through a real busd.

One session's processes (account, marketdata) plus a reconciler (``control``), busd and the venue
simulator. Hypothesis throws at them (a) raw frames on busd's RPC router socket — random bytes,
truncated envelopes, msgpack of the wrong shape, unknown types, bodies of the wrong type, an
oversized frame — addressed to ``account.<session>``, ``marketdata.<session>`` and ``control``;
(b) well-formed envelopes of the wrong message type, or with absurd field values, through the
ordinary ``RpcClient``. Every request is answered (an error reply, or a sane reply) before its
deadline or, when nothing can be salvaged to answer, counted and logged by busd; every process
stays up; and nothing is written to the database.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import msgpack
import pytest
import sqlalchemy as sa
import zmq
from engine_tree import free_port, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus import topics
from bus.busd import DEADLINE_BYTES, PROTOCOL, REP, REQ
from bus.client import BusClient
from bus.codec import MAX_MESSAGE_BYTES, decode, encode
from bus.endpoints import Endpoints
from bus.envelope import Envelope, new_id, now_ns
from bus.errors import MalformedMessage, RemoteError
from schema import messages as m
from schema.messages import SCHEMA_VERSION
from schema.store import Store
from services.tree import prepare_root

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
SESSION = "es-sma"
OTHER = "6e-sma"  # a session of the same database whose processes are not running
SERVICES = (topics.account_service(SESSION), topics.marketdata_service(SESSION), topics.CONTROL_SERVICE)
CALL_TIMEOUT_S = 5.0
FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
WATCHED_TABLES = ("orders", "fills", "positions", "events", "rolls", "jobs", "strategy_state")


class Engine:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.env = prepare_root(root, f"[engine]\nreconcile_interval_s = 0.5\n"
                                      f"[venue_sim]\nport = {self.port}\npace_s = 0.2\nhistory_bars = 5\n")
        subprocess.run([str(BIN / "tradebus"), "init"], env=self.env, check=True, capture_output=True)
        self.db = root / "state" / "tradebus.db"
        self.store = Store.from_url(f"sqlite:///{self.db}")
        self.session = self.store.get_session(SESSION)
        for event in ("start", "reconcile", "reconciled"):  # where its strategy would have put it
            self.store.transition_session(SESSION, event, reason="test", now_ns=now_ns())
        self.sql = sa.create_engine(f"sqlite:///{self.db}")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.bus = BusClient(Endpoints.for_state_dir(root / "state"), source="fuzzer")
        self.rpc = self.bus.rpc_client()

    def spawn(self, name: str, *args: str) -> None:
        with open(self.root / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen([str(BIN / "tradebus"), "run", *args], env=self.env, stdout=out,
                                                stderr=subprocess.STDOUT)

    def start(self) -> None:
        self.spawn("busd", "busd")
        self.spawn("venue-sim", "venue-sim")
        wait_until(lambda: (self.root / "state" / "bus" / "busd.ready").exists(), timeout=20, what="busd ready")
        wait_until(lambda: (self.root / "state" / "venue-sim.json").exists(), timeout=20, what="venue-sim ready")
        self.spawn("account", "account", "--session", SESSION)
        self.spawn("marketdata", "marketdata", "--session", SESSION)
        self.spawn("reconciler", "reconciler", "--worker", "0")
        wait_until(lambda: set(SERVICES) <= self.registered(), timeout=30, what=f"{SERVICES} to register")
        # The marketdata process serves once its history is loaded: ask until it answers.
        wait_until(lambda: isinstance(self.rpc.call(SERVICES[1], m.BarsRequest(
            symbol=self.session.contract, interval=self.session.interval), timeout_s=2), m.BarsReply),
            timeout=30, what="marketdata to answer")

    def registered(self) -> set[str]:
        return {s for r in self.records("busd", "worker_ready") for s in r.get("services", [])}

    def records(self, name: str, action: str | None = None) -> list[dict]:
        path = self.root / f"{name}.log"
        out = []
        for line in (path.read_text(errors="replace") if path.exists() else "").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if action is None or record.get("action") == action:
                out.append(record)
        return out

    def fingerprint(self) -> dict[str, object]:
        """What a rejected request must not change: row counts, and every session's state and contract."""
        with self.sql.connect() as conn:
            counts = {t: conn.execute(sa.text(f"select count(*) from {t}")).scalar_one() for t in WATCHED_TABLES}
            sessions = conn.execute(sa.text("select name, state, contract, fill_cursor from sessions "
                                            "order by name")).all()
        return {**counts, "sessions": [tuple(r) for r in sessions]}

    def assert_alive(self) -> None:
        dead = {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}
        assert not dead, f"processes died: {dead}"

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait(timeout=10)
        self.bus.close()
        self.sql.dispose()
        self.store.close()

    def diagnostics(self) -> str:
        return "\n".join(f"--- {name} (rc {p.poll()})\n" + "\n".join(
            (self.root / f"{name}.log").read_text(errors="replace").splitlines()[-15:])
            for name, p in self.procs.items())


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    e = Engine(tmp_path_factory.mktemp("fuzz"))
    try:
        e.start()
        yield e
    except BaseException:
        print(e.diagnostics())
        raise
    finally:
        e.close()


@pytest.fixture
def unchanged(engine: Engine) -> Iterator[None]:
    """The test's input must leave the database as it found it, and every process running."""
    before = engine.fingerprint()
    try:
        yield
    except BaseException:
        print(engine.diagnostics())
        raise
    engine.assert_alive()
    assert engine.fingerprint() == before


# ---------------------------------------------------------------------------------- (a) raw frames


def valid_envelope(service: str) -> bytes:
    body = m.AccountSnapshotRequest(session=SESSION)
    return encode(Envelope(SCHEMA_VERSION, body.TYPE, service, "fuzzer", new_id(), 1, new_id(), None, None, SESSION,
                           now_ns(), now_ns(), body))


def header(service: str, type_name: str, body: object) -> bytes:
    return msgpack.packb([SCHEMA_VERSION, type_name, service, "fuzzer", new_id(), 1, new_id(), None, None, SESSION,
                          now_ns(), now_ns(), body])


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20)


@st.composite
def garbage(draw: st.DrawFn, service: str) -> bytes:
    kind = draw(st.sampled_from(["bytes", "truncated", "msgpack", "unknown_type", "wrong_body", "flipped"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "truncated":
        data = valid_envelope(service)
        return data[:draw(st.integers(0, len(data) - 1))]
    if kind == "msgpack":
        return msgpack.packb(draw(msgpack_values))
    if kind == "unknown_type":
        return header(service, draw(st.text(min_size=1, max_size=30).filter(lambda t: t not in m.MESSAGE_TYPES)), {})
    if kind == "wrong_body":
        return header(service, draw(st.sampled_from(sorted(m.MESSAGE_TYPES))), draw(msgpack_values))
    data = bytearray(valid_envelope(service))
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


class RawCaller:
    """A DEALER speaking TBRPC1 to busd's router with whatever envelope bytes it is given."""

    def __init__(self, engine: Engine) -> None:
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(engine.bus.endpoints.rpc)

    def send(self, service: str, data: bytes) -> None:
        deadline = (now_ns() + int(CALL_TIMEOUT_S * 1e9)).to_bytes(DEADLINE_BYTES, "big")
        self.socket.send_multipart([PROTOCOL, REQ, service.encode(), deadline, data])

    def reply(self, correlation_id: str) -> Envelope:
        until = time.monotonic() + CALL_TIMEOUT_S
        while (left := until - time.monotonic()) > 0:
            if not self.socket.poll(int(left * 1000) + 1):
                break
            frames = self.socket.recv_multipart()
            assert frames[:2] == [PROTOCOL, REP] and len(frames) == 3, frames[:2]
            reply = decode(frames[2])
            if reply.correlation_id == correlation_id:
                return reply
        raise AssertionError(f"no reply to {correlation_id} within {CALL_TIMEOUT_S}s")

    def close(self) -> None:
        self.socket.close()


def busd_malformed_total(engine: Engine) -> int:
    stats = engine.records("busd", "stats")
    return stats[-1]["malformed"] if stats else 0


def test_raw_garbage_on_the_router_is_refused_counted_and_answered_when_it_can_be(
        engine: Engine, unchanged: None) -> None:
    raw = RawCaller(engine)
    sent = 0
    try:
        counted_before = busd_malformed_total(engine)
        stats_seen = len(engine.records("busd", "stats"))
        # One of each kind first, while busd's per-interval log budget (it logs at most 50
        # malformed messages per stats interval, then only counts) is certainly not spent: an
        # oversized frame is refused before any decoding; then garbage and an unknown type.
        for payload in (header(SERVICES[0], "account.snapshot", {"session": "x" * MAX_MESSAGE_BYTES}),
                        b"\xc1 not msgpack", header(SERVICES[0], "no.such.type", {})):
            raw.send(SERVICES[0], payload)
            sent += 1
        wait_until(lambda: {"not msgpack", "unknown message type", "message too large"} <= {
            next((k for k in ("not msgpack", "unknown message type", "message too large") if k in r["reason"]), "")
            for r in engine.records("busd", "malformed")}, timeout=15, what="busd to log one of each kind")

        @FUZZ
        @given(service=st.sampled_from(SERVICES), data=st.data())
        def throw(service: str, data: st.DataObject) -> None:
            nonlocal sent
            payload = data.draw(garbage(service))
            raw.send(service, payload)
            sent += 1
            try:
                envelope = decode(payload)
            except MalformedMessage as exc:
                if exc.message_id:  # busd can tell which request it was: it must answer it
                    reply = raw.reply(exc.message_id)
                    assert isinstance(reply.body, m.ErrorReply) and reply.body.code == "malformed", reply.body
                return
            # Survived decoding (a flipped byte inside a string): a valid request, answered normally.
            reply = raw.reply(envelope.message_id)
            assert isinstance(reply.body, (m.ErrorReply, m.AccountSnapshot)), reply.body

        throw()
    finally:
        raw.close()
    # Then busd counted every bad request (its stats line comes every 10 s) ...
    wait_until(lambda: len(engine.records("busd", "stats")) > stats_seen
               and busd_malformed_total(engine) - counted_before >= sent - 5,  # minus the few that decoded
               timeout=15, what=f"busd to count {sent} malformed requests")
    # ... and every service still answers a good request
    assert isinstance(engine.rpc.call(SERVICES[0], m.AccountSnapshotRequest(session=SESSION), timeout_s=5),
                      m.AccountSnapshot)


def test_raw_garbage_published_is_dropped_counted_and_never_reaches_a_subscriber(
        engine: Engine, unchanged: None) -> None:
    """The pub/sub side: garbage pushed into busd's publication socket on a topic the session's own
    processes listen to (an order topic) is dropped and counted; subscribers see only what was valid."""
    topic = f"order.{SESSION}"
    publisher = zmq.Context.instance().socket(zmq.PUB)
    publisher.setsockopt(zmq.LINGER, 0)
    publisher.connect(engine.bus.endpoints.pub_in)
    listener = engine.bus.subscriber([topic])
    sent = 0
    try:
        listener.wait_connected(engine.bus.publisher(), 10)
        counted_before = busd_malformed_total(engine)
        stats_seen = len(engine.records("busd", "stats"))

        @FUZZ
        @given(data=st.data())
        def throw(data: st.DataObject) -> None:
            nonlocal sent
            payload = data.draw(garbage(topic))
            try:
                decode(payload)
            except MalformedMessage:
                publisher.send_multipart([topic.encode(), payload])
                sent += 1

        throw()
        publisher.send_multipart([topic.encode(), b"\x00" * (MAX_MESSAGE_BYTES + 1)])
        sent += 1
        # Nothing malformed gets through: whatever the subscriber receives decoded and validated.
        while (envelope := listener.recv(timeout_ms=500)) is not None:
            assert envelope.source != "fuzzer", envelope
    finally:
        publisher.close()
    wait_until(lambda: len(engine.records("busd", "stats")) > stats_seen
               and busd_malformed_total(engine) - counted_before >= sent,
               timeout=15, what=f"busd to count {sent} malformed publications")


# ---------------------------------------------------------------------------------- (b) typed envelopes

names = st.one_of(st.sampled_from(["", "no-such", OTHER, "ES", "x" * 1000]), st.text(max_size=40))
amounts = st.sampled_from([Decimal(0), Decimal(-1), Decimal("-0.0001"), Decimal("1E-20"), Decimal("1E+40"),
                           Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
huge = st.integers(min_value=-(2**63), max_value=2**64 - 1)
big_text = st.sampled_from(["y" * (MAX_MESSAGE_BYTES - 2_000), "\u2603" * 200_000])


def absurd_submit(contract: str) -> st.SearchStrategy[m.SubmitOrder]:
    """An order request whose session, quantity or terms are wrong (never all plausible at once)."""
    bad_terms = st.builds(
        m.SubmitOrder, session=st.just(SESSION), signal=st.integers(1, 1_000), symbol=st.just(contract),
        side=st.sampled_from(["buy", "sell"]), order_type=st.just("market"), quantity=amounts)
    bad_words = st.builds(
        m.SubmitOrder, session=st.just(SESSION), signal=huge, symbol=st.just(contract),
        side=st.sampled_from(["", "sideways", "BUY"]) | st.text(max_size=10).filter(lambda s: s not in ("buy", "sell")),
        order_type=st.sampled_from(["teleport", ""]), quantity=st.just(Decimal(1)),
        time_in_force=st.sampled_from(["forever", ""]))
    bad_session = st.builds(
        m.SubmitOrder, session=names.filter(lambda s: s != SESSION), signal=huge, symbol=st.just(contract),
        side=st.just("buy"), order_type=st.just("market"), quantity=st.just(Decimal(1)))
    bad_symbol = st.builds(
        m.SubmitOrder, session=st.just(SESSION), signal=st.integers(1_001, 2_000),
        symbol=names.filter(lambda s: s != contract) | big_text, side=st.just("buy"), order_type=st.just("market"),
        quantity=st.just(Decimal(1)))
    return st.one_of(bad_terms, bad_words, bad_session, bad_symbol)


def other_requests(contract: str) -> st.SearchStrategy[m.Message]:
    wrong_type = st.sampled_from([
        m.Alert(level="info", text="not a request"), m.ErrorReply(code="x", message="y"),
        m.BarsReply(bars=[]), m.CommandDone(session=SESSION, state="halted", text="z"),
        m.Heartbeat(process="p", pid=1, state="up"), m.FlattenRequest(session=SESSION),
        m.RollRequest(session=SESSION, to_contract="ESZ9")])
    return st.one_of(
        wrong_type,
        st.builds(m.CancelOrder, session=names | st.just(SESSION), client_order_id=names | big_text),
        st.builds(m.AccountSnapshotRequest, session=names | big_text),
        st.builds(m.BarsRequest, symbol=names | st.just(contract), interval=names | st.just("1m"), after_ts_ns=huge),
        st.builds(m.SwitchContract, session=names | st.just(SESSION), symbol=names | big_text),
        st.builds(m.OperatorCommand, command=st.sampled_from(["halt", "resume", "ack", "flatten", "roll", "remove",
                                                              "explode", ""]),
                  session=names, reason=st.text(max_size=20) | big_text, choice=st.none() | names,
                  force=st.booleans(), to_contract=st.none() | names))


def call(engine: Engine, service: str, body: m.Message) -> m.Message | RemoteError:
    started = time.monotonic()
    try:
        return engine.rpc.call(service, body, timeout_s=CALL_TIMEOUT_S)
    except RemoteError as exc:
        return exc
    finally:
        assert time.monotonic() - started < CALL_TIMEOUT_S + 1


def test_absurd_orders_are_refused_before_anything_is_written(engine: Engine, unchanged: None) -> None:
    contract = engine.session.contract

    @FUZZ
    @given(body=absurd_submit(contract))
    def throw(body: m.SubmitOrder) -> None:
        answer = call(engine, SERVICES[0], body)
        assert isinstance(answer, RemoteError), f"{body!r} was accepted: {answer!r}"
        assert engine.procs["account"].poll() is None

    throw()


def test_wrong_types_and_absurd_requests_to_every_service_are_refused(engine: Engine, unchanged: None) -> None:
    contract = engine.session.contract

    @FUZZ
    @given(service=st.sampled_from(SERVICES), body=other_requests(contract))
    def throw(service: str, body: m.Message) -> None:
        answer = call(engine, service, body)
        if isinstance(answer, RemoteError):
            return
        # The only sane answers: read-only ones about this session's own contract
        assert isinstance(answer, (m.AccountSnapshot, m.BarsReply, m.ContractSwitched)), (body, answer)
        if isinstance(answer, m.AccountSnapshot):
            assert answer.session == SESSION and answer.symbol == contract
        if isinstance(answer, m.ContractSwitched):
            assert answer.symbol == contract, f"{body!r} switched the data stream to {answer.symbol}"

    throw()
    # And a normal request still gets its normal answer from each
    assert isinstance(engine.rpc.call(SERVICES[1], m.BarsRequest(symbol=contract, interval="1m"), timeout_s=5),
                      m.BarsReply)


def test_an_account_never_touches_another_sessions_order(engine: Engine) -> None:
    # Given an open order of another session (whose account process is not running)
    order, _ = engine.store.create_order(OTHER, signal=1, symbol=engine.store.get_session(OTHER).contract, side="buy",
                                         order_type="market", quantity=Decimal(1), limit_price=None, stop_price=None,
                                         time_in_force="day", epoch=0, now_ns=now_ns())
    before = engine.fingerprint()
    # When es-sma's account is asked to cancel it, under either session's name
    for session in (SESSION, OTHER):
        answer = call(engine, SERVICES[0], m.CancelOrder(session=session, client_order_id=order.client_order_id))
        # Then it refuses, the order is untouched, and the account keeps serving
        assert isinstance(answer, RemoteError) and answer.code == "wrong_session", answer
    assert str(engine.store.get_order(order.client_order_id).status) == "pending_submit"
    assert engine.fingerprint() == before
    engine.assert_alive()


def test_marketdata_refuses_to_switch_to_a_contract_it_cannot_stream(engine: Engine, unchanged: None) -> None:
    contract = engine.session.contract
    for symbol in ("ZZZ9", "", "NQ" + contract[2:], "x" * 10_000):
        answer = call(engine, SERVICES[1], m.SwitchContract(session=SESSION, symbol=symbol))
        assert isinstance(answer, RemoteError), f"switched to {symbol[:20]!r}: {answer!r}"
    # And it still streams and serves its own contract
    bars = engine.rpc.call(SERVICES[1], m.BarsRequest(symbol=contract, interval="1m"), timeout_s=5)
    assert isinstance(bars, m.BarsReply) and bars.bars
