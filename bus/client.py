"""What processes use to talk on the bus: publish, subscribe, call, serve.

``BusClient`` is the one seam: it holds the ZeroMQ context, the process's source name and its
epoch, and makes the four kinds of endpoint. Nothing here is a global; a process makes one
BusClient and closes it on the way out. ZeroMQ sockets belong to one thread each: make a
Publisher per thread that publishes (they share the client's sequence counters, under a lock).

All of it survives a busd restart without the owner doing anything: ZeroMQ reconnects, SUB
sockets resend their subscriptions, workers re-register with their next heartbeat, and callers
get a clear error (never a hang) meanwhile.

Sequence numbers count per (source, topic) stream. A per-source counter would make a subscriber
of only some of a source's topics see false gaps for every message on the others.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import zmq

from bus import topics as topic_names
from bus.busd import BYE, DEADLINE_BYTES, HEARTBEAT_S, NO_DEADLINE, PROTOCOL, READY, REP, REQ
from bus.codec import decode, encode
from bus.endpoints import Endpoints
from bus.envelope import Envelope, new_id, now_ns
from bus.errors import (
    CODE_DEADLINE,
    CODE_MALFORMED,
    CODE_UNKNOWN_SERVICE,
    BusError,
    BusUnavailable,
    MalformedMessage,
    RemoteError,
    RequestTimeout,
)
from bus.logs import log
from schema.messages import SCHEMA_VERSION, ErrorReply, Heartbeat, Message

PUB_SNDHWM = 100_000  # a burst this large waits in memory; beyond it, ZeroMQ drops (subscribers see a gap)
PUB_LINGER_MS = 1_000  # on close, how long queued publications may still go out
SUB_RCVHWM = 100_000
RPC_HWM = 1_000
SEND_RETRY_S = 0.05  # poll slice while waiting for busd to accept a request
PROBE_PREFIX = "_probe."  # private topics used by Subscriber.wait_connected
PROBE_EVERY_S = 0.05
WORKER_CLOSE_LINGER_MS = 100  # enough for the BYE to leave
IDEMPOTENT_ATTEMPTS = 4  # an idempotent call's deadline is split into at least this many attempts...
IDEMPOTENT_ATTEMPT_MIN_S = 0.25  # ...each waiting at least this long for its reply
RETRY_BASE_S = 0.05  # backoff between attempts: doubles from here...
RETRY_CAP_S = 0.5  # ...up to here
LAG_THRESHOLD_S = 2.0  # a message delivered this long after it was sent is stale: the consumer is lagging
LAG_LOG_EVERY_S = 10.0  # while lagging, say so again at most this often (the first time: at once)
TOPIC_CACHE = 4096  # topic frames (bytes -> str) remembered per Publisher/Subscriber; cleared when full

# Hot path, as in busd: flags as plain ints (pyzmq's enum flags cost an enum operation per frame),
# frames sent one by one with ``send`` (``send_multipart`` type-checks every part and ORs enum
# flags in Python), received with ``copy=False`` (``recv_multipart`` asks for RCVMORE with a
# Python-level getsockopt per frame; a Frame carries ``more``), and ``zmq_poll`` on one socket
# instead of ``Socket.poll`` (which builds a Poller each time). ZeroMQ delivers multipart messages
# atomically: once the first frame of a message is accepted, the rest are too.
NOBLOCK = int(zmq.NOBLOCK)
NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
POLLIN = int(zmq.POLLIN)
_zmq_poll = zmq.zmq_poll
_time_ns = time.time_ns
_monotonic = time.monotonic

logger = logging.getLogger("bus.client")

GapHandler = Callable[[str, int, int], None]
LagHandler = Callable[[str, int], None]  # (topic, lag_ns)


class _Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=_Closable)


def _rest(recv: Callable[..., zmq.Frame]) -> list[bytes]:
    """The remaining frames of a message whose last frame so far said ``more``."""
    frames = []
    while True:
        frame = recv(NOBLOCK, copy=False)
        frames.append(frame.bytes)
        if not frame.more:
            return frames


def _recv_frames(recv: Callable[..., zmq.Frame]) -> list[bytes]:
    """One whole message, without waiting (raises ``zmq.Again`` if none is queued)."""
    frame = recv(NOBLOCK, copy=False)
    if not frame.more:
        return [frame.bytes]
    return [frame.bytes, *_rest(recv)]


def _send_frames(send: Callable[..., object], frames: list[bytes]) -> None:
    """Send one message without waiting; raises ``zmq.Again`` (nothing sent) if it is refused."""
    last = len(frames) - 1
    for i in range(last):
        send(frames[i], NOBLOCK_MORE)
    send(frames[last], NOBLOCK)


class BusClient:
    """One process's connection to the bus (holds context, source name, epoch)."""

    def __init__(self, endpoints: Endpoints, source: str, *, context: zmq.Context | None = None) -> None:
        if not source:
            raise ValueError("source (the process name) must not be empty")
        self.endpoints = endpoints
        self.source = source
        self.epoch = new_id()
        self.context = context if context is not None else zmq.Context()
        self._own_context = context is None
        self._lock = threading.Lock()
        self._seqs: dict[str, int] = {}
        self._children: list[_Closable] = []
        self._closed = False

    # ------------------------------------------------------------------ factories

    def publisher(self) -> Publisher:
        return self._adopt(Publisher(self))

    def subscriber(self, topics: Iterable[str], *, on_gap: GapHandler | None = None,
                   on_lag: LagHandler | None = None,
                   lag_threshold_s: float | None = LAG_THRESHOLD_S) -> Subscriber:
        return self._adopt(Subscriber(self, topics, on_gap=on_gap, on_lag=on_lag,
                                      lag_threshold_s=lag_threshold_s))

    def rpc_client(self) -> RpcClient:
        return self._adopt(RpcClient(self))

    def rpc_worker(self, *services: str) -> RpcWorker:
        return self._adopt(RpcWorker(self, services))

    def close(self) -> None:
        """Close every endpoint made here (close those of other threads on their thread first),
        then the context if this client made it."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            children, self._children = self._children, []
        for child in children:
            child.close()
        if self._own_context:
            self.context.term()

    def __enter__(self) -> BusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ shared helpers

    def envelope(self, topic: str, body: Message, *, seq: int = 0, session: str | None = None,
                 event_ns: int | None = None, correlation_id: str | None = None,
                 causation_id: str | None = None) -> Envelope:
        """A new envelope from this process (ids and send time filled in)."""
        stamp = _time_ns()
        return Envelope(SCHEMA_VERSION, body.TYPE, topic, self.source, self.epoch, seq, new_id(),
                        correlation_id, causation_id, session,
                        stamp if event_ns is None else event_ns, stamp, body)

    def _release_seq(self, topic: str, seq: int) -> None:
        """Give back a number that was never sent, so subscribers see no false gap."""
        with self._lock:
            if self._seqs.get(topic) == seq:
                self._seqs[topic] = seq - 1

    def _socket(self, kind: int, **options: int) -> zmq.Socket:
        if self._closed:
            raise RuntimeError("bus client is closed")
        curve = self.endpoints.curve
        client_keys = curve.client_keys() if curve is not None else None  # raises if there is none
        sock = self.context.socket(kind)
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name.upper()), value)
        if curve is not None and client_keys is not None:
            sock.curve_serverkey = curve.server_public
            sock.curve_publickey, sock.curve_secretkey = client_keys
        return sock

    def _adopt(self, child: C) -> C:
        with self._lock:
            self._children.append(child)
        return child


# ---------------------------------------------------------------------------- pub/sub


class Publisher:
    """Publishes facts. Never blocks: past the high-water mark ZeroMQ drops, and the sequence
    numbers let subscribers notice."""

    def __init__(self, bus: BusClient) -> None:
        self.bus = bus
        self.socket = bus._socket(zmq.PUB, sndhwm=PUB_SNDHWM, linger=PUB_LINGER_MS)
        self.socket.connect(bus.endpoints.pub_in)
        self.published = 0
        self._topics: dict[str, bytes] = {}  # topic -> its frame

    def publish(self, topic: str, body: Message, *, session: str | None = None,
                event_ns: int | None = None, correlation_id: str | None = None,
                causation_id: str | None = None) -> Envelope:
        """Send ``body`` on ``topic``; returns the envelope as sent. Raises ``MalformedMessage``
        (nothing sent) if the body cannot go on the wire (e.g. a float where money belongs)."""
        # The hot path of every producer: the topic frame cached, the sequence counted per topic.
        topic_b = self._topics.get(topic)
        if topic_b is None:
            topic_b = self._topic_frame(topic)
        bus = self.bus
        seqs = bus._seqs
        with bus._lock:
            seq = seqs.get(topic, 0) + 1
            seqs[topic] = seq
        envelope = bus.envelope(topic, body, seq=seq, session=session, event_ns=event_ns,
                                correlation_id=correlation_id, causation_id=causation_id)
        try:
            data = encode(envelope)
        except MalformedMessage:
            bus._release_seq(topic, seq)
            raise
        send = self.socket.send
        send(topic_b, NOBLOCK_MORE)  # PUB never refuses a message: past the HWM it drops it whole
        send(data, NOBLOCK)
        self.published += 1
        return envelope

    def _topic_frame(self, topic: str) -> bytes:
        if not topic:
            raise ValueError("topic must not be empty")
        if len(self._topics) >= TOPIC_CACHE:
            self._topics.clear()
        topic_b = self._topics[topic] = topic.encode()
        return topic_b

    def close(self) -> None:
        if not self.socket.closed:
            self.socket.close()


@dataclass(frozen=True, slots=True)
class Gap:
    """What the subscriber noticed last: ``restarted`` means a new epoch (the source restarted)."""

    source: str
    topic: str
    expected: int
    got: int
    restarted: bool


class LagMonitor:
    """Is the consumer working on stale data? Pure: each delivered message's send time and the
    time of delivery come in as arguments (integer UTC ns), so it is tested without a clock.

    A message is *late* when ``now - sent > threshold``. The monitor is ``lagging`` from the
    first late message until the first message that is not late. ``observe`` says when to log:
    ``LAGGING`` on the first late message and then at most every ``log_every_ns`` while it lasts
    (with how many late messages went by unlogged), ``RECOVERED`` once when it ends.

    Lag includes any clock difference between the publisher's machine and this one.
    """

    LAGGING = "lagging"
    RECOVERED = "lag_recovered"

    def __init__(self, threshold_ns: int, log_every_ns: int = int(LAG_LOG_EVERY_S * 1e9)) -> None:
        if threshold_ns <= 0:
            raise ValueError(f"lag threshold must be positive, got {threshold_ns} ns")
        self.threshold_ns = threshold_ns
        self.log_every_ns = log_every_ns
        self.lagging = False
        self.lag_ns = 0  # of the last message observed
        self.late = 0  # late messages, ever
        self.episodes = 0  # times the consumer started lagging
        self.since_ns: int | None = None  # when the current episode started
        self.max_lag_ns = 0  # worst lag of the current (or last) episode
        self.unlogged = 0  # late messages since the last LAGGING log line
        self.lasted_ns = 0  # how long the last finished episode lasted
        self._logged_ns = 0

    def observe(self, sent_ns: int, now_ns: int) -> str | None:
        """Record one delivered message; returns ``LAGGING``, ``RECOVERED`` or None (say nothing)."""
        lag = self.lag_ns = max(0, now_ns - sent_ns)
        if lag > self.threshold_ns:
            self.late += 1
            self.unlogged += 1
            if not self.lagging:
                self.lagging, self.since_ns, self.max_lag_ns = True, now_ns, lag
                self.episodes += 1
            else:
                self.max_lag_ns = max(self.max_lag_ns, lag)
                if now_ns - self._logged_ns < self.log_every_ns:
                    return None
            self._logged_ns = now_ns
            return self.LAGGING
        if self.lagging:
            self.lagging = False
            self.lasted_ns = now_ns - (self.since_ns if self.since_ns is not None else now_ns)
            return self.RECOVERED
        return None

    def logged(self) -> None:
        self.unlogged = 0


class Subscriber:
    """Receives facts on topic prefixes (segment-aware, see ``topics.matches``) and checks each
    (source, topic) stream for gaps and restarts, and each delivered message for lag.

    ``on_gap(source, expected, got)`` is called before the message that revealed the gap is
    returned: the owner should resync from the source (snapshot) or the database (``bus.resync``
    does it). A restart (new epoch) calls it too, with ``expected`` from the old epoch.
    ``last_gap`` says which topic.

    Lag is ``now - send_ns`` when ``recv`` hands a message out. Above ``lag_threshold_s`` (None:
    never checked) the subscriber is ``lagging``: it logs an error (rate-limited, see
    ``LagMonitor``) and calls ``on_lag(topic, lag_ns)`` for each such message, until a message
    arrives in time again (logged once). A consumer must not trade while ``lagging``.
    """

    def __init__(self, bus: BusClient, topics: Iterable[str], *, on_gap: GapHandler | None = None,
                 on_lag: LagHandler | None = None, lag_threshold_s: float | None = LAG_THRESHOLD_S,
                 clock: Callable[[], int] = now_ns) -> None:
        self.bus = bus
        self.on_gap = on_gap
        self.on_lag = on_lag
        self.lag = LagMonitor(int(lag_threshold_s * 1e9)) if lag_threshold_s is not None else None
        self._clock = clock
        self.socket = bus._socket(zmq.SUB, rcvhwm=SUB_RCVHWM, linger=0)
        self.socket.connect(bus.endpoints.pub_out)
        self._prefixes: list[str] = []
        for topic in topics:
            self.subscribe(topic)
        self.received = 0
        self.malformed = 0
        self.gaps = 0  # messages known to be missed
        self.restarts = 0  # sources seen with a new epoch
        self.out_of_order = 0
        self.last_gap: Gap | None = None
        self._streams: dict[tuple[str, str], tuple[str, int]] = {}  # (source, topic) -> (epoch, seq)
        self._ours: dict[bytes, str] = {}  # topic frames known to match a subscription -> topic
        self._pending: deque[Envelope] = deque()
        self._probe: str | None = None
        self._probe_seen = False
        self._probe_ids = itertools.count(1)

    @property
    def lagging(self) -> bool:
        """True while the messages handed out are older than the lag threshold (stale data)."""
        return self.lag is not None and self.lag.lagging

    def subscribe(self, topic: str) -> None:
        if topic not in self._prefixes:
            self._prefixes.append(topic)
            self.socket.subscribe(topic.encode())

    def unsubscribe(self, topic: str) -> None:
        if topic in self._prefixes:
            self._prefixes.remove(topic)
            self._ours.clear()  # messages still queued for the old prefix must not pass as ours
            self.socket.unsubscribe(topic.encode())

    def recv(self, timeout_ms: int | None = 0) -> Envelope | None:
        """The next valid message, or None after ``timeout_ms`` (0: don't wait; None: forever).
        Malformed messages are counted in ``malformed``, logged and skipped."""
        envelope = self._next(timeout_ms)
        if envelope is not None and (monitor := self.lag) is not None:
            now = self._clock()
            lag = now - envelope.send_ns
            if lag <= monitor.threshold_ns and not monitor.lagging:
                monitor.lag_ns = lag if lag > 0 else 0  # LagMonitor.observe's whole effect here
            else:
                self._observe_lag(envelope, monitor, now)
        return envelope

    def _next(self, timeout_ms: int | None) -> Envelope | None:
        if self._pending:
            return self._pending.popleft()
        sock = self.socket
        recv = sock.recv
        deadline = None  # taken at the first wait, so a message already queued costs no clock call
        while True:
            try:
                first = recv(NOBLOCK, copy=False)
            except zmq.Again:
                if timeout_ms is None:
                    _zmq_poll([(sock, POLLIN)], -1)
                    continue
                if deadline is None:
                    deadline = _monotonic() + timeout_ms / 1000
                remaining = deadline - _monotonic()
                if remaining <= 0 or not _zmq_poll([(sock, POLLIN)], math.ceil(remaining * 1000)):
                    return None
                continue
            envelope = self._accept_frames(first, recv)
            if envelope is not None:
                return envelope
            if self._pending:
                return self._pending.popleft()

    def wait_connected(self, publisher: Publisher, timeout_s: float = 5.0) -> None:
        """Prove that this subscriber's subscriptions are live at busd, by publishing probes on a
        private topic through ``publisher`` until one comes back. Messages that arrive meanwhile
        are kept for ``recv``. Raises ``BusUnavailable`` on timeout."""
        probe = f"{PROBE_PREFIX}{self.bus.epoch}.{id(self):x}.{next(self._probe_ids)}"
        self._probe, self._probe_seen = probe, False
        self.socket.subscribe(probe.encode())
        deadline = time.monotonic() + timeout_s
        body = Heartbeat(process=self.bus.source, pid=os.getpid(), state="probe")
        try:
            while time.monotonic() < deadline:
                publisher.publish(probe, body)
                until = min(deadline, time.monotonic() + PROBE_EVERY_S)
                while not self._probe_seen and (remaining := until - time.monotonic()) > 0:
                    if self.socket.poll(math.ceil(remaining * 1000)):
                        self._read_available()
                if self._probe_seen:
                    return
            raise BusUnavailable(f"no probe came back through busd within {timeout_s}s")
        finally:
            self.socket.unsubscribe(probe.encode())
            self._probe = None

    def close(self) -> None:
        if not self.socket.closed:
            self.socket.close()

    # ------------------------------------------------------------------ internals

    def _observe_lag(self, envelope: Envelope, monitor: LagMonitor, now: int | None = None) -> None:
        verdict = monitor.observe(envelope.send_ns, self._clock() if now is None else now)
        if verdict == LagMonitor.LAGGING:
            log(logger, "lagging", logging.ERROR, topic=envelope.topic, source=envelope.source,
                lag_ms=monitor.lag_ns // 1_000_000, max_lag_ms=monitor.max_lag_ns // 1_000_000,
                threshold_ms=monitor.threshold_ns // 1_000_000, late_messages=monitor.unlogged,
                msg="consuming stale data: do not trade on it")
            monitor.logged()
        elif verdict == LagMonitor.RECOVERED:
            log(logger, "lag_recovered", logging.WARNING, topic=envelope.topic, lag_ms=monitor.lag_ns // 1_000_000,
                max_lag_ms=monitor.max_lag_ns // 1_000_000, lagged_ms=monitor.lasted_ns // 1_000_000)
        if monitor.lagging and self.on_lag is not None:
            # Keep the message if the handler raises: recv will hand it out next time.
            self._pending.appendleft(envelope)
            self.on_lag(envelope.topic, monitor.lag_ns)
            self._pending.popleft()

    def _read_available(self) -> None:
        recv = self.socket.recv
        while True:
            try:
                first = recv(NOBLOCK, copy=False)
            except zmq.Again:
                return
            envelope = self._accept_frames(first, recv)
            if envelope is not None:
                self._pending.append(envelope)

    def _accept_frames(self, first: zmq.Frame, recv: Callable[..., zmq.Frame]) -> Envelope | None:
        """``_accept`` for a message whose first frame has just been received (the rest follow)."""
        if not first.more:
            return self._accept([first.bytes])
        second = recv(NOBLOCK, copy=False)  # a multipart message arrives whole: no Again
        if second.more:
            return self._accept([first.bytes, second.bytes, *_rest(recv)])
        return self._accept2(first.bytes, second.bytes)

    def _accept(self, frames: list[bytes]) -> Envelope | None:
        """Validate one message and track its stream; None if it is not for the owner."""
        if len(frames) != 2:
            self._malformed(f"expected 2 frames [topic, envelope], got {len(frames)}", None)
            return None
        return self._accept2(frames[0], frames[1])

    def _accept2(self, topic_b: bytes, data: bytes) -> Envelope | None:
        topic = self._ours.get(topic_b)
        if topic is None:
            try:
                topic = topic_b.decode("utf-8")
            except UnicodeDecodeError:
                self._malformed("topic frame is not UTF-8", None)
                return None
            if topic.startswith(PROBE_PREFIX):
                if topic == self._probe:
                    self._probe_seen = True
                return None
            if not any(topic_names.matches(prefix, topic) for prefix in self._prefixes):
                return None  # a byte-prefix match only (order.s10 for order.s1): not ours
            if len(self._ours) >= TOPIC_CACHE:
                self._ours.clear()
            self._ours[topic_b] = topic
        try:
            envelope = decode(data)
        except MalformedMessage as exc:
            self._malformed(exc.reason, exc.source, topic=topic)
            return None
        if envelope.topic != topic:
            self._malformed(f"topic frame {topic!r} differs from envelope topic {envelope.topic!r}",
                            envelope.source)
            return None
        self.received += 1
        # ``_track``'s common case inline: the next message of a known stream, same epoch.
        key = (envelope.source, topic)
        previous = self._streams.get(key)
        seq = envelope.seq
        if previous is not None and seq == previous[1] + 1 and previous[0] == envelope.epoch:
            self._streams[key] = (previous[0], seq)
        else:
            self._track(envelope)
        return envelope

    def _track(self, envelope: Envelope) -> None:
        key = (envelope.source, envelope.topic)
        previous = self._streams.get(key)
        seq = envelope.seq
        if previous is None:
            self._streams[key] = (envelope.epoch, seq)
            return
        epoch, last = previous
        if epoch == envelope.epoch:
            if seq == last + 1:
                self._streams[key] = (epoch, seq)
                return
            if seq <= last:
                self.out_of_order += 1
                return
            self._streams[key] = (epoch, seq)
            self.gaps += seq - last - 1
            restarted = False
        else:
            self._streams[key] = (envelope.epoch, seq)
            self.restarts += 1
            self.gaps += max(0, seq - 1)  # what we missed of the new epoch; the old one is unknowable
            restarted = True
        self.last_gap = Gap(envelope.source, envelope.topic, last + 1, seq, restarted)
        log(logger, "source_restarted" if restarted else "gap", logging.WARNING, source=envelope.source,
            topic=envelope.topic, expected=last + 1, got=seq)
        if self.on_gap is not None:
            # Keep the message if the handler raises: recv will hand it out next time.
            self._pending.append(envelope)
            self.on_gap(envelope.source, last + 1, seq)
            self._pending.pop()

    def _malformed(self, reason: str, source: str | None, **fields: object) -> None:
        self.malformed += 1
        log(logger, "malformed", logging.WARNING, channel="sub", reason=reason, source=source, **fields)


# ---------------------------------------------------------------------------- request/reply


class RpcClient:
    """Calls services through busd. One call at a time per client (it is synchronous)."""

    def __init__(self, bus: BusClient) -> None:
        self.bus = bus
        # IMMEDIATE: never queue a request while busd is unreachable, so it cannot be carried out
        # long after the caller gave up; the caller gets BusUnavailable instead.
        self.socket = bus._socket(zmq.DEALER, linger=0, immediate=1, sndhwm=RPC_HWM, rcvhwm=RPC_HWM)
        self.socket.connect(bus.endpoints.rpc)
        self.stale = 0  # replies to earlier, timed-out calls
        self.malformed = 0
        self._early: Envelope | None = None  # a late reply caught while backing off

    def call(self, service: str, body: Message, *, timeout_s: float, session: str | None = None,
             causation_id: str | None = None, idempotent: bool = False) -> Message:
        """Send ``body`` to ``service`` and return the reply body.

        Raises ``RemoteError`` (by code: ``NoWorker``, ``UnknownService``, ...) for an error reply,
        ``RequestTimeout`` when no reply came in time (outcome unknown), ``BusUnavailable`` when
        the request could not even be sent (outcome known: nothing happened).

        ``idempotent=True`` says that carrying the request out twice does no harm (snapshots,
        bars, other reads). Only such requests are retried here, and only within ``timeout_s``
        (the caller's deadline for the whole call): after an error whose type is ``retryable``
        (``NoWorker`` while a worker restarts or appears late, ``BusUnavailable`` or
        ``RequestTimeout`` while busd restarts and the request was lost with it), with a short
        capped backoff. Each attempt waits at most ``timeout_s / IDEMPOTENT_ATTEMPTS`` (not less
        than ``IDEMPOTENT_ATTEMPT_MIN_S``) for its reply, and a late reply to any attempt is
        accepted. When time runs out the last error is raised.

        The default (``False``) sends exactly once and raises at once: a command such as
        ``SubmitOrder`` must not be resent blindly. Its callers retry explicitly, after asking
        for the state or with a deterministic client order id that makes the resend safe.
        """
        return self.call_envelope(service, body, timeout_s=timeout_s, session=session,
                                  causation_id=causation_id, idempotent=idempotent).body

    def call_envelope(self, service: str, body: Message, *, timeout_s: float,
                      session: str | None = None, causation_id: str | None = None,
                      idempotent: bool = False) -> Envelope:
        """Like ``call`` but returns the whole reply envelope."""
        deadline = time.monotonic() + timeout_s
        deadline_ns = max(NO_DEADLINE + 1, _time_ns() + int(timeout_s * 1e9))
        if not idempotent:
            return self._attempt(service, body, session, causation_id, deadline, deadline_ns, timeout_s, set())
        attempt_s = max(IDEMPOTENT_ATTEMPT_MIN_S, timeout_s / IDEMPOTENT_ATTEMPTS)
        sent: set[str] = set()  # message ids of every attempt: a late reply to any of them will do
        attempt = 0
        while True:
            attempt += 1
            attempt_deadline = min(deadline, time.monotonic() + attempt_s)
            try:
                return self._attempt(service, body, session, causation_id, attempt_deadline, deadline_ns,
                                     timeout_s, sent)
            except BusError as exc:
                delay = retry_delay(attempt, exc)
                if delay is None or time.monotonic() + delay >= deadline:
                    if attempt > 1:
                        log(logger, "retries_exhausted", logging.WARNING, service=service, type=body.TYPE,
                            attempts=attempt, error=type(exc).__name__)
                    raise
                log(logger, "retrying", logging.INFO, service=service, type=body.TYPE, attempt=attempt,
                    error=type(exc).__name__, retry_in_s=round(delay, 3))
            self._wait_for_reply(sent, delay)
            if self._early is not None:
                reply, self._early = self._early, None
                return reply

    def close(self) -> None:
        if not self.socket.closed:
            self.socket.close()

    def _attempt(self, service: str, body: Message, session: str | None, causation_id: str | None,
                 deadline: float, deadline_ns: int, timeout_s: float, sent: set[str]) -> Envelope:
        """Send once and wait for the reply to this or an earlier attempt until ``deadline``."""
        request = self.bus.envelope(service, body, session=session, causation_id=causation_id)
        data = encode(request)
        frames = [PROTOCOL, REQ, service.encode(), deadline_ns.to_bytes(DEADLINE_BYTES, "big"), data]
        self._send(frames, deadline, service, timeout_s)
        sent.add(request.message_id)
        sock = self.socket
        recv = sock.recv
        while True:
            remaining = deadline - _monotonic()
            if remaining <= 0 or not _zmq_poll([(sock, POLLIN)], math.ceil(remaining * 1000)):
                raise RequestTimeout(f"no reply from {service!r} within {timeout_s}s "
                                     f"(request {request.message_id}); outcome unknown")
            try:
                reply_frames = _recv_frames(recv)
            except zmq.Again:
                continue
            reply = self._reply(reply_frames, sent)
            if reply is None:
                continue
            if isinstance(reply.body, ErrorReply):
                raise RemoteError.from_reply(reply.body.code, reply.body.message)
            return reply

    def _wait_for_reply(self, sent: set[str], seconds: float) -> None:
        """Back off for ``seconds``, but keep a (late) good reply to an earlier attempt in ``_early``."""
        until = time.monotonic() + seconds
        while (remaining := until - time.monotonic()) > 0:
            if not self.socket.poll(math.ceil(remaining * 1000)):
                return
            try:
                frames = _recv_frames(self.socket.recv)
            except zmq.Again:
                continue
            try:
                reply = self._reply(frames, sent)
            except RemoteError:
                continue  # a malformed late reply: the next attempt asks again
            if reply is not None and not isinstance(reply.body, ErrorReply):
                self._early = reply
                return

    def _send(self, frames: list[bytes], deadline: float, service: str, timeout_s: float) -> None:
        while True:
            try:
                _send_frames(self.socket.send, frames)
                return
            except zmq.Again:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BusUnavailable(f"could not hand the request for {service!r} to busd within "
                                         f"{timeout_s}s (is busd running?); nothing was sent") from None
                self.socket.poll(math.ceil(min(remaining, SEND_RETRY_S) * 1000), zmq.POLLOUT)

    def _reply(self, frames: list[bytes], message_ids: set[str]) -> Envelope | None:
        if len(frames) != 3 or frames[0] != PROTOCOL or frames[1] != REP:
            self.malformed += 1
            log(logger, "malformed", logging.WARNING, channel="rpc_client",
                reason="not a [PROTOCOL, REP, envelope] reply")
            return None
        try:
            reply = decode(frames[2])
        except MalformedMessage as exc:
            self.malformed += 1
            log(logger, "malformed", logging.WARNING, channel="rpc_client", reason=exc.reason, source=exc.source)
            if exc.correlation_id in message_ids:
                raise RemoteError.from_reply(CODE_MALFORMED, f"the reply was malformed: {exc.reason}") from None
            return None
        if reply.correlation_id not in message_ids:
            self.stale += 1
            return None
        return reply


def retry_delay(attempt: int, exc: BusError) -> float | None:
    """How long to wait before attempt ``attempt + 1`` of an idempotent call, or None: give up.
    Pure; whether to retry at all is the exception type's ``retryable``."""
    if not exc.retryable:
        return None
    return min(RETRY_CAP_S, RETRY_BASE_S * 2 ** (attempt - 1))


@dataclass(frozen=True, slots=True)
class Request:
    """A request as a worker sees it: the envelope and where the reply must go."""

    envelope: Envelope
    service: str
    route: bytes  # busd's identity for the caller; opaque
    deadline_ns: int  # wall-clock ns after which the caller has given up; 0: none

    @property
    def body(self) -> Message:
        return self.envelope.body

    def expired(self, at_ns: int) -> bool:
        return self.deadline_ns != NO_DEADLINE and at_ns > self.deadline_ns


class RpcWorker:
    """Serves one or more services. The owner polls ``socket``, drains ``recv`` and answers each
    request with ``reply``; it must call ``heartbeat`` from its loop at least every second or so
    (``recv`` does it too), otherwise busd stops routing to it after WORKER_EXPIRY_S.

    Requests already past their deadline are answered ``deadline`` here and never returned: the
    caller has stopped waiting and will ask for the state instead.
    """

    def __init__(self, bus: BusClient, services: Iterable[str]) -> None:
        self.services = tuple(services)
        if not self.services or any(not s or any(ch.isspace() for ch in s) for s in self.services):
            raise ValueError(f"a worker needs one or more valid service names, got {self.services!r}")
        self.bus = bus
        # Not IMMEDIATE (unlike RpcClient): a READY sent before the connection is up, or while busd
        # restarts, waits in the queue and registers the worker the moment busd is reachable.
        self.socket = bus._socket(zmq.DEALER, linger=0, sndhwm=RPC_HWM, rcvhwm=RPC_HWM)
        self.socket.connect(bus.endpoints.rpc)
        self._ready = [PROTOCOL, READY, *(s.encode() for s in self.services)]
        self._last_heartbeat = -math.inf
        self.registered_at: float | None = None  # monotonic time of the last READY that went out
        self.malformed = 0
        self.expired = 0
        self.undeliverable = 0
        self.heartbeat()

    def heartbeat(self, *, force: bool = False) -> None:
        """Register/refresh with busd, at most every HEARTBEAT_S. Cheap: call it every loop turn.
        After a busd restart, the next one re-registers this worker."""
        now = _monotonic()
        if not force and now - self._last_heartbeat < HEARTBEAT_S:
            return
        try:
            self.socket.send_multipart(self._ready, zmq.NOBLOCK)
        except zmq.Again:
            return  # not connected (yet): the next call tries again, not a second later
        self._last_heartbeat = now
        self.registered_at = now

    def recv(self, timeout_ms: int | None = 0) -> Request | None:
        """The next valid request, or None after ``timeout_ms`` (0: don't wait; None: forever).
        Heartbeats keep going while it waits."""
        deadline = None if timeout_ms is None else _monotonic() + timeout_ms / 1000
        sock = self.socket
        recv = sock.recv
        while True:
            self.heartbeat()
            try:
                frames = _recv_frames(recv)
            except zmq.Again:
                # Until a READY has gone out, look again soon; afterwards, once per heartbeat.
                slice_s = HEARTBEAT_S if self.registered_at is not None else SEND_RETRY_S
                wait_s = slice_s if deadline is None else min(slice_s, deadline - _monotonic())
                if wait_s <= 0:
                    return None
                _zmq_poll([(sock, POLLIN)], math.ceil(wait_s * 1000))
                continue
            request = self._accept(frames)
            if request is not None:
                return request

    def reply(self, request: Request, body: Message) -> Envelope:
        """Answer ``request``. A body that cannot be encoded is logged and answered ``malformed``
        instead, so the caller is not left waiting for a timeout."""
        try:
            return self._send_reply(request, body)
        except MalformedMessage as exc:
            log(logger, "bad_reply", logging.ERROR, service=request.service, type=getattr(body, "TYPE", "?"),
                reason=exc.reason)
            return self._send_reply(request, ErrorReply(
                code=CODE_MALFORMED, message=f"the worker could not encode its reply: {exc.reason}"))

    def close(self) -> None:
        if self.socket.closed:
            return
        try:
            self.socket.send_multipart([PROTOCOL, BYE], zmq.NOBLOCK)
        except zmq.Again:
            pass
        self.socket.close(linger=WORKER_CLOSE_LINGER_MS)

    # ------------------------------------------------------------------ internals

    def _send_reply(self, request: Request, body: Message) -> Envelope:
        message_id = request.envelope.message_id
        envelope = self.bus.envelope(request.service, body, session=request.envelope.session,
                                     correlation_id=message_id, causation_id=message_id)
        self._send_raw(request.route, encode(envelope))
        return envelope

    def _send_raw(self, route: bytes, data: bytes) -> None:
        try:
            _send_frames(self.socket.send, [PROTOCOL, REP, route, data])
        except zmq.Again:
            self.undeliverable += 1
            log(logger, "reply_undeliverable", logging.WARNING, reason="busd unreachable")

    def _answer_error(self, route: bytes, service: str, correlation_id: str, session: str | None,
                      code: str, message: str) -> None:
        envelope = self.bus.envelope(service, ErrorReply(code=code, message=message), session=session,
                                     correlation_id=correlation_id, causation_id=correlation_id)
        self._send_raw(route, encode(envelope))

    def _accept(self, frames: list[bytes]) -> Request | None:
        if len(frames) != 6 or frames[0] != PROTOCOL or frames[1] != REQ or len(frames[4]) != DEADLINE_BYTES:
            self._malformed("not a [PROTOCOL, REQ, route, service, deadline, envelope] request", None)
            return None
        _, _, route, service_b, deadline_b, data = frames
        service = service_b.decode("utf-8", errors="replace")
        try:
            envelope = decode(data)
        except MalformedMessage as exc:
            self._malformed(exc.reason, exc.source)
            if exc.message_id:
                self._answer_error(route, service if service in self.services else "rpc", exc.message_id,
                                   None, CODE_MALFORMED, exc.reason)
            return None
        if service not in self.services:
            self._answer_error(route, "rpc", envelope.message_id, envelope.session, CODE_UNKNOWN_SERVICE,
                               f"this worker does not serve {service!r}")
            return None
        request = Request(envelope, service, route, int.from_bytes(deadline_b, "big"))
        if request.expired(_time_ns()):
            self.expired += 1
            log(logger, "request_expired", logging.WARNING, service=service, type=envelope.type,
                source=envelope.source)
            self._answer_error(route, service, envelope.message_id, envelope.session, CODE_DEADLINE,
                               "the caller's deadline passed before the worker got to it")
            return None
        return request

    def _malformed(self, reason: str, source: str | None) -> None:
        self.malformed += 1
        log(logger, "malformed", logging.WARNING, channel="rpc_worker", reason=reason, source=source)
