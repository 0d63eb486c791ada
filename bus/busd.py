"""busd: the one bus process. Pub/sub proxy, request/reply service router and journal writer.

Run it as ``python -m bus.busd --state-dir DIR [--no-journal]`` (or ``bus.busd.main(argv)``); the
``[bus]`` table of ``tradebus.toml`` beside DIR chooses ipc (default) or tcp with CURVE.
One thread, one ``zmq.Poller`` loop over three bound sockets:

* ``pub.in``  XSUB  publishers connect (PUB) and send ``[topic, envelope]``;
* ``pub.out`` XPUB  subscribers connect (SUB); subscriptions are forwarded upstream;
* ``rpc``     ROUTER clients and workers connect, both with DEALER sockets.

Every published message is decoded and validated before it is forwarded and journaled; a
malformed one is counted, logged (action ``malformed``, with the reason and the *claimed* source)
and dropped. With the journal on, busd subscribes upstream to everything, so messages nobody
listens to are still recorded.

RPC protocol (every frame list starts with the protocol tag, so a peer speaking something else
is detected, not misread)::

    PROTOCOL = b"TBRPC1"

    client -> busd   [PROTOCOL, b"REQ", service, deadline, envelope]
    busd -> worker   [PROTOCOL, b"REQ", client_route, service, deadline, envelope]
    worker -> busd   [PROTOCOL, b"REP", client_route, envelope]
    busd -> client   [PROTOCOL, b"REP", envelope]
    worker -> busd   [PROTOCOL, b"READY", service, ...]   registration and heartbeat, every
                                                          HEARTBEAT_S; idempotent
    worker -> busd   [PROTOCOL, b"BYE"]                   clean shutdown: forget me now

``service`` is UTF-8; ``deadline`` is 8 bytes big-endian, the wall-clock ns after which the
caller has given up (0: none); ``client_route`` is the ROUTER identity busd saw for the client,
opaque to the worker. The reply envelope's ``correlation_id`` is the request's ``message_id``.

Routing: a request goes to the least recently used live worker of its service. A worker is live
until WORKER_EXPIRY_S pass without a READY or REP from it. If the service has never been
registered, the answer is an immediate ``ErrorReply`` ``unknown_service`` (``no_worker`` during
the first seconds after busd starts, while workers re-register); if none is live, ``no_worker``;
if the request is past its deadline, ``deadline``; if it does not decode, ``malformed`` when its
message id can be salvaged (else it is dropped and counted). Never a hang. Requests and replies,
including busd's own error replies, are journaled (kinds ``req``/``rep``).

Security: ipc sockets live in an owner-only folder (see ``bus.endpoints``). On tcp busd's three
sockets are CURVE servers with busd's keypair from ``<state>/keys``, and a ZAP authenticator
(``zmq.auth.thread.ThreadAuthenticator``) admits only clients whose public key is in
``<state>/keys/allowed`` (re-read every ALLOWED_RELOAD_S). A refused client is counted
(``refused``) and logged as ``client_refused`` with its public key and address (a key that is
not allowed), or with the endpoint and reason (a client with no CURVE key at all, seen through
a socket monitor); repeats are logged at most once per REFUSED_LOG_EVERY_S per client. busd
refuses to bind tcp without CURVE.

Lifecycle: a lock file makes a second busd on the same state folder exit at once; once bound,
busd logs ``ready`` and writes its pid to ``<state>/bus/busd.ready``. SIGTERM/SIGINT: stop
intake, flush and close the journal, close the sockets, remove the ready file, exit 0.
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import zmq
from zmq.utils.monitor import parse_monitor_message

from bus.codec import check, encode
from bus.endpoints import Endpoints
from bus.envelope import Envelope, new_id, now_ns
from bus.errors import (
    CODE_DEADLINE,
    CODE_MALFORMED,
    CODE_NO_WORKER,
    CODE_UNKNOWN_SERVICE,
    BusError,
    EndpointError,
    MalformedMessage,
)
from bus.journal import JournalWriter
from bus.logs import configure_logging, log
from schema.messages import SCHEMA_VERSION, ErrorReply

if TYPE_CHECKING:
    from bus.zap import AllowListAuthenticator

# ---------------------------------------------------------------------------- protocol

PROTOCOL = b"TBRPC1"
REQ = b"REQ"
REP = b"REP"
READY = b"READY"
BYE = b"BYE"
DEADLINE_BYTES = 8
NO_DEADLINE = 0
MAX_SERVICE_NAME = 200

# ---------------------------------------------------------------------------- tunables

HEARTBEAT_S = 1.0  # workers send READY this often
WORKER_EXPIRY_S = 3.0  # ...and are forgotten after this much silence
STARTUP_GRACE_S = WORKER_EXPIRY_S  # say no_worker, not unknown_service, while workers re-register
EXPIRE_CHECK_S = 0.25
STATS_EVERY_S = 10.0
POLL_MS = 100  # upper bound on how long a stop request or a timer waits
BATCH = 512  # messages read from one socket before looking at the others
FORWARD_RUN = 32  # validated publications forwarded together (bounds the delay this adds: ~FORWARD_RUN x 5 us)
JOURNAL_FLUSH_S = 0.2
MALFORMED_LOGS_PER_INTERVAL = 50  # a flood of garbage must not become a flood of logs
XSUB_RCVHWM = 100_000
XPUB_SNDHWM = 100_000  # per subscriber; past it, that slow subscriber loses messages (and sees a gap)
ROUTER_HWM = 10_000
CLOSE_LINGER_MS = 200
LOG_TOPIC_CHARS = 120
ALLOWED_RELOAD_S = 5.0  # how soon a new or revoked client key takes effect
REFUSED_LOG_EVERY_S = 60.0  # a refused client reconnects on its own: log it once per interval
# Monitor events that mean "a peer failed the CURVE handshake" (no key, wrong server key, ...).
# Refusals by the allow-list (HANDSHAKE_FAILED_AUTH) are logged by the ZAP handler, with the key.
HANDSHAKE_FAILURES = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
# Send/recv flags as plain ints: pyzmq's enum flags cost an enum operation per frame, and
# ``send_multipart``/``recv_multipart`` cost a Python-level option lookup per frame; on the hot
# path busd receives frames with ``copy=False`` (whose ``more`` comes with the frame) and sends
# them one by one.
NOBLOCK = int(zmq.NOBLOCK)
NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
RCVMORE = int(zmq.RCVMORE)
SERVICE_NAME_CACHE = 1024  # validated service names kept (bytes -> str); cleared when full

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_CONFIG = 78
SOURCE = "busd"

logger = logging.getLogger("busd")


class AlreadyRunning(BusError):
    """Another busd holds the lock on this state folder."""


class RefusalLog:
    """Counts refused peers and logs each one at most once per ``every_s`` (with how many
    refusals it folded in). Thread-safe: the ZAP thread and the loop both report. Time comes in."""

    def __init__(self, counters: Counters, clock: Callable[[], float], every_s: float = REFUSED_LOG_EVERY_S) -> None:
        self.counters = counters
        self.every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}  # who -> (logged at, refusals since)

    def refused(self, who: str, **fields: object) -> None:
        now = self._clock()
        with self._lock:
            self.counters.refused += 1
            logged_at, folded = self._last.get(who, (-math.inf, 0))
            if now - logged_at < self.every_s:
                self._last[who] = (logged_at, folded + 1)
                return
            self._last[who] = (now, 0)
        log(logger, "client_refused", logging.WARNING, repeats=folded, **fields)


# ---------------------------------------------------------------------------- the service table


class ServiceTable:
    """Which workers serve which service, who is alive, who is next. Pure: time comes in.

    Each service keeps its live workers in least-recently-used order: a new worker goes to the
    front (never used), a worker that is given a request goes to the back.
    """

    def __init__(self, *, expiry_s: float = WORKER_EXPIRY_S, started_at: float,
                 startup_grace_s: float = STARTUP_GRACE_S) -> None:
        self.expiry_s = expiry_s
        self.started_at = started_at
        self.startup_grace_s = startup_grace_s
        self._queues: dict[str, OrderedDict[bytes, None]] = {}
        self._workers: dict[bytes, tuple[tuple[str, ...], float]] = {}  # id -> (services, expires_at)
        self._known: set[str] = set()

    def __len__(self) -> int:
        return len(self._workers)

    def services(self, worker: bytes) -> tuple[str, ...]:
        return self._workers[worker][0] if worker in self._workers else ()

    def ready(self, worker: bytes, services: tuple[str, ...], now: float) -> bool:
        """Register or refresh a worker. True if it is new (or its service list changed)."""
        current = self._workers.get(worker)
        if current is not None and current[0] == services:
            self._workers[worker] = (services, now + self.expiry_s)
            return False
        if current is not None:
            self.remove(worker)
        self._workers[worker] = (services, now + self.expiry_s)
        for service in services:
            queue = self._queues.setdefault(service, OrderedDict())
            queue[worker] = None
            queue.move_to_end(worker, last=False)
            self._known.add(service)
        return True

    def seen(self, worker: bytes, now: float) -> None:
        """Any traffic from a registered worker proves it alive."""
        current = self._workers.get(worker)
        if current is not None:
            self._workers[worker] = (current[0], now + self.expiry_s)

    def remove(self, worker: bytes) -> tuple[str, ...]:
        services, _ = self._workers.pop(worker, ((), 0.0))
        for service in services:
            queue = self._queues.get(service)
            if queue is not None:
                queue.pop(worker, None)
                if not queue:
                    del self._queues[service]
        return services

    def expire(self, now: float) -> list[tuple[bytes, tuple[str, ...]]]:
        dead = [w for w, (_, expires_at) in self._workers.items() if expires_at <= now]
        return [(w, self.remove(w)) for w in dead]

    def candidates(self, service: str, now: float) -> list[bytes]:
        """Live workers of ``service``, least recently used first."""
        queue = self._queues.get(service)
        if not queue:
            return []
        return [w for w in queue if self._workers[w][1] > now]

    def used(self, worker: bytes, service: str) -> None:
        queue = self._queues.get(service)
        if queue is not None and worker in queue:
            queue.move_to_end(worker)

    def unavailable(self, service: str, now: float) -> tuple[str, str]:
        """The (code, message) to answer a request for ``service`` that has no live worker."""
        if service in self._known or now - self.started_at < self.startup_grace_s:
            return CODE_NO_WORKER, f"no live worker for service {service!r}"
        return CODE_UNKNOWN_SERVICE, f"no worker has registered service {service!r}"


# ---------------------------------------------------------------------------- the daemon


@dataclass
class Counters:
    forwarded: int = 0
    malformed: int = 0
    requests: int = 0
    replies: int = 0
    errors: int = 0  # error replies busd itself sent
    undeliverable: int = 0  # replies whose client had gone
    subscriptions: int = 0
    refused: int = 0  # tcp peers refused: a key not in the allow-list, or no/invalid CURVE handshake
    malformed_unlogged: int = field(default=0, repr=False)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Busd:
    """The daemon's state and loop. ``bind`` then ``run`` (or ``run_once`` from a test)."""

    def __init__(self, endpoints: Endpoints, *, journal_dir: Path | None,
                 context: zmq.Context | None = None, clock: Callable[[], float] = time.monotonic,
                 worker_expiry_s: float = WORKER_EXPIRY_S, startup_grace_s: float = STARTUP_GRACE_S) -> None:
        self.endpoints = endpoints
        self.journal_dir = journal_dir
        self.counters = Counters()
        self.epoch = new_id()
        self._clock = clock
        self._own_context = context is None
        self._context = context if context is not None else zmq.Context()
        self._stop = False
        self._lock_fd: int | None = None
        self._journal: JournalWriter | None = None
        self._sockets: list[zmq.Socket] = []
        self.table = ServiceTable(expiry_s=worker_expiry_s, started_at=clock(),
                                  startup_grace_s=startup_grace_s)
        self._malformed_logged = 0
        self._wrote_ready = False
        self._closed = False
        self.refusals = RefusalLog(self.counters, clock)
        self._auth: AllowListAuthenticator | None = None
        self._monitors: dict[zmq.Socket, str] = {}  # monitor socket -> the endpoint it watches
        self._services: dict[bytes, str] = {}  # service names already validated

    # ------------------------------------------------------------------ lifecycle

    def bind(self) -> None:
        self.endpoints.ensure_dir()
        self._take_lock()
        ready_file = self.endpoints.ready_file
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)  # a stale one from a killed busd must not look ready
        server_keys = self._server_keys()  # before anything is bound: no key, no tcp
        if self.journal_dir is not None:
            self._journal = JournalWriter(self.journal_dir)
        self.xsub = self._socket(zmq.XSUB, rcvhwm=XSUB_RCVHWM)
        self.xpub = self._socket(zmq.XPUB, sndhwm=XPUB_SNDHWM)
        self.router = self._socket(zmq.ROUTER, sndhwm=ROUTER_HWM, rcvhwm=ROUTER_HWM)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # tell us when a worker/client is gone
        self._poller = zmq.Poller()
        if server_keys is not None:
            self._secure(server_keys)
        self.xsub.bind(self.endpoints.pub_in)
        self.xpub.bind(self.endpoints.pub_out)
        self.router.bind(self.endpoints.rpc)
        if self._journal is not None:
            self.xsub.send(b"\x01")  # subscribe upstream to everything: the journal records it all
        for sock in (self.xsub, self.xpub, self.router):
            self._poller.register(sock, zmq.POLLIN)
        now = self._clock()
        self._next_allowed_reload = now + ALLOWED_RELOAD_S
        self.table.started_at = now
        self._next_expire = now + EXPIRE_CHECK_S
        self._next_stats = now + STATS_EVERY_S
        self._next_flush = now + JOURNAL_FLUSH_S
        if ready_file is not None:
            tmp = ready_file.with_suffix(".tmp")
            tmp.write_text(f"{os.getpid()}\n")
            tmp.replace(ready_file)
            self._wrote_ready = True
        log(logger, "ready", pub_in=self.endpoints.pub_in, pub_out=self.endpoints.pub_out,
            rpc=self.endpoints.rpc, journal=str(self.journal_dir) if self.journal_dir else None,
            epoch=self.epoch, curve=server_keys is not None)

    def _server_keys(self) -> tuple[bytes, bytes] | None:
        """busd's CURVE keypair for tcp endpoints (None for ipc). Raises ``EndpointError``."""
        curve = self.endpoints.curve
        if curve is None:
            if self.endpoints.is_tcp:
                raise EndpointError("busd does not bind tcp without CURVE: configure [bus] transport = "
                                    "\"tcp\" and run `tradebus keys generate`")
            return None
        from bus.keys import KeyStore

        return KeyStore(curve.keys_dir).server_keys()

    def _secure(self, server_keys: tuple[bytes, bytes]) -> None:
        """Make the three sockets CURVE servers behind the allow-list, and watch their handshakes.
        The authenticator must be running before anything binds, or CURVE admits any key."""
        assert self.endpoints.curve is not None
        allowed_dir = self.endpoints.curve.keys_dir / "allowed"
        if not allowed_dir.is_dir():
            raise EndpointError(f"no allow-list folder {allowed_dir}: run `tradebus keys generate`")
        from bus.zap import AllowListAuthenticator  # only tcp pays for importing asyncio

        self._auth = AllowListAuthenticator(self._context, self.refusals)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(allowed_dir))
        public, secret = server_keys
        for sock, endpoint in ((self.xsub, self.endpoints.pub_in), (self.xpub, self.endpoints.pub_out),
                               (self.router, self.endpoints.rpc)):
            sock.curve_server = True
            sock.curve_publickey = public
            sock.curve_secretkey = secret
            monitor = sock.get_monitor_socket(HANDSHAKE_FAILURES)
            self._monitors[monitor] = endpoint
            self._poller.register(monitor, zmq.POLLIN)

    def request_stop(self) -> None:
        """Safe to call from a signal handler: the loop notices within POLL_MS."""
        self._stop = True

    def run(self) -> None:
        try:
            while not self._stop:
                self.run_once(POLL_MS)
        finally:
            self.close()

    def close(self) -> None:
        """Stop intake, persist, then close: journal first, sockets after, ready file last."""
        if self._closed:
            return
        self._closed = True
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        for sock in self._sockets:
            if self._monitors:
                sock.disable_monitor()
            sock.close(linger=CLOSE_LINGER_MS)
        self._sockets = []
        for monitor in self._monitors:
            monitor.close(linger=0)
        self._monitors = {}
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_context:
            self._context.term()
        ready_file = self.endpoints.ready_file
        if ready_file is not None and self._wrote_ready:
            ready_file.unlink(missing_ok=True)
            self._wrote_ready = False
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        log(logger, "stopped", **self.counters.as_dict())

    # ------------------------------------------------------------------ the loop

    def run_once(self, timeout_ms: int) -> None:
        events = dict(self._poller.poll(timeout_ms))
        if self.xsub in events:
            self._drain_pub()
        if self.xpub in events:
            self._drain_subscriptions()
        if self.router in events:
            self._drain_rpc()
        for monitor in self._monitors:
            if monitor in events:
                self._drain_monitor(monitor)
        now = self._clock()
        if self._auth is not None and now >= self._next_allowed_reload:
            self._next_allowed_reload = now + ALLOWED_RELOAD_S
            assert self.endpoints.curve is not None
            self._auth.configure_curve(domain="*", location=str(self.endpoints.curve.keys_dir / "allowed"))
        if now >= self._next_expire:
            self._next_expire = now + EXPIRE_CHECK_S
            for worker, services in self.table.expire(now):
                log(logger, "worker_expired", logging.WARNING, worker=worker.hex(), services=list(services))
        if self._journal is not None and (not events or now >= self._next_flush):
            self._journal.flush()
            self._next_flush = now + JOURNAL_FLUSH_S
        if now >= self._next_stats:
            self._next_stats = now + STATS_EVERY_S
            self._log_stats()

    def _drain_pub(self) -> None:
        """Up to BATCH publications: validate each, then journal and forward them in runs of up to
        FORWARD_RUN (one journal write and one receive stamp per run). The common case (two
        frames, a valid envelope) stays in this loop; anything else goes to ``_bad_pub`` or
        ``_malformed`` and is neither journaled nor forwarded."""
        recv, more = self.xsub.recv, self.xsub.getsockopt
        run: list[bytes] = []  # validated [topic, envelope, topic, envelope, ...] not yet forwarded
        topics: list[str] = []  # the envelopes' topics, for the journal
        try:
            for _ in range(BATCH):
                try:
                    topic = recv(NOBLOCK)  # small frames: a copy costs less than a zmq.Frame
                except zmq.Again:
                    return
                if not more(RCVMORE):
                    self._bad_pub([topic])
                    continue
                data = recv(NOBLOCK)  # a multipart message arrives whole: no Again
                if more(RCVMORE):
                    self._bad_pub([topic, data, *_rest(self.xsub)])
                    continue
                try:
                    wire = check(data)
                except MalformedMessage as exc:
                    self._malformed("pub", exc.reason, source=exc.source, type=exc.type,
                                    topic=_printable(topic), size=len(data))
                    continue
                if wire.topic.encode() != topic:
                    self._malformed("pub", f"topic frame {_printable(topic)!r} differs from envelope "
                                    f"topic {wire.topic!r}", source=wire.source, type=wire.type, size=len(data))
                    continue
                run.append(topic)
                run.append(data)
                topics.append(wire.topic)
                if len(topics) >= FORWARD_RUN:
                    self._forward(run, topics)
                    run, topics = [], []
        finally:
            if topics:
                self._forward(run, topics)

    def _forward(self, run: list[bytes], topics: list[str]) -> None:
        """Journal validated publications, then send them back to back: ZeroMQ then wakes its I/O
        thread once per run rather than once per message, which on a busy machine is most of the
        cost of a send."""
        if self._journal is not None:
            self._journal.append_many(now_ns(), "pub", zip(topics, run[1::2]))
        send = self.xpub.send
        for i in range(0, len(run), 2):
            try:
                send(run[i], NOBLOCK_MORE)
                send(run[i + 1], NOBLOCK)
            except zmq.Again:  # XPUB drops rather than blocks (never mid-message); belt and braces
                pass
        self.counters.forwarded += len(topics)

    def _bad_pub(self, frames: list[bytes]) -> None:
        self._malformed("pub", f"expected 2 frames [topic, envelope], got {len(frames)}",
                        size=sum(len(f) for f in frames))

    def _drain_subscriptions(self) -> None:
        for _ in range(BATCH):
            try:
                message = self.xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.counters.subscriptions += 1
            if message and message[0] in (0, 1):
                self.xsub.send(message)
                log(logger, "subscription", logging.DEBUG, subscribe=bool(message[0]),
                    topic=_printable(message[1:]))

    def _drain_monitor(self, monitor: zmq.Socket) -> None:
        """A peer failed the CURVE handshake before the allow-list was asked (e.g. it has no key).
        libzmq names only the listening endpoint here, not the peer."""
        for _ in range(BATCH):
            try:
                frames = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            event = parse_monitor_message(frames)
            if not event["event"] & HANDSHAKE_FAILURES:
                continue
            endpoint = self._monitors[monitor]
            value = int(event["value"])
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                detail = _event_name(value)  # a ZMQ_PROTOCOL_ERROR_* code, e.g. mechanism mismatch
            else:
                detail = errno.errorcode.get(value, str(value))  # NO_DETAIL carries an errno
            reason = _event_name(event["event"])
            self.refusals.refused(f"{endpoint}:{reason}", endpoint=endpoint, reason=reason, detail=detail,
                                  msg="a peer failed the CURVE handshake (no key or a wrong server key?)")

    def _drain_rpc(self) -> None:
        recv = self.router.recv
        for _ in range(BATCH):
            try:
                frame = recv(NOBLOCK, copy=False)
            except zmq.Again:
                return
            frames = [frame.bytes]
            while frame.more:  # the rest of a multipart message is already here
                frame = recv(NOBLOCK, copy=False)
                frames.append(frame.bytes)
            self._on_rpc(frames)

    # ------------------------------------------------------------------ rpc

    def _on_rpc(self, frames: list[bytes]) -> None:
        peer = frames[0]
        if len(frames) < 3 or frames[1] != PROTOCOL:
            self._malformed("rpc", "not a TBRPC1 frame list (wrong protocol tag or too few frames)",
                            peer=peer.hex(), size=sum(len(f) for f in frames[1:]))
            return
        command, rest = frames[2], frames[3:]
        if command == REQ:
            self._on_request(peer, rest)
        elif command == REP:
            self._on_reply(peer, rest)
        elif command == READY:
            self._on_ready(peer, rest)
        elif command == BYE:
            services = self.table.remove(peer)
            if services:
                log(logger, "worker_left", worker=peer.hex(), services=list(services))
        else:
            self._malformed("rpc", f"unknown command {_printable(command)!r}", peer=peer.hex())

    def _on_request(self, client: bytes, rest: list[bytes]) -> None:
        if len(rest) != 3:
            self._bad_request(client, rest[-1] if rest else b"",
                              f"request must be [service, deadline, envelope], got {len(rest)} frames")
            return
        service_b, deadline_b, data = rest
        service = self._services.get(service_b)
        if service is None:
            try:
                service = _service_name(service_b)
            except ValueError as exc:
                self._bad_request(client, data, str(exc))
                return
            if len(self._services) >= SERVICE_NAME_CACHE:
                self._services.clear()
            self._services[service_b] = service
        if len(deadline_b) != DEADLINE_BYTES:
            self._bad_request(client, data, f"deadline frame must be {DEADLINE_BYTES} bytes", service)
            return
        try:
            request = check(data)
        except MalformedMessage as exc:
            self._bad_request(client, data, exc.reason, service, exc)
            return
        self.counters.requests += 1
        if self._journal is not None:
            self._journal.append(now_ns(), "req", service, data)
        deadline = int.from_bytes(deadline_b, "big")
        if deadline != NO_DEADLINE and now_ns() > deadline:
            self._send_error(client, service, request.message_id, request.session, CODE_DEADLINE,
                             "request arrived after its deadline")
            return
        now = self._clock()
        for worker in self.table.candidates(service, now):
            try:
                self._send_frames([worker, PROTOCOL, REQ, client, service_b, deadline_b, data])
            except zmq.Again:  # this worker is saturated: try the next one
                continue
            except zmq.ZMQError as exc:
                if exc.errno != errno.EHOSTUNREACH:
                    raise
                log(logger, "worker_gone", logging.WARNING, worker=worker.hex(),
                    services=list(self.table.remove(worker)))
                continue
            self.table.used(worker, service)
            return
        code, message = self.table.unavailable(service, now)
        self._send_error(client, service, request.message_id, request.session, code, message)

    def _on_reply(self, worker: bytes, rest: list[bytes]) -> None:
        self.table.seen(worker, self._clock())
        if len(rest) != 2:
            self._malformed("rpc", f"reply must be [client_route, envelope], got {len(rest)} frames",
                            peer=worker.hex())
            return
        client, data = rest
        try:
            reply = check(data)
        except MalformedMessage as exc:
            self._malformed("rpc", f"reply: {exc.reason}", source=exc.source, type=exc.type,
                            peer=worker.hex(), size=len(data))
            if exc.correlation_id:
                self._send_error(client, "rpc", exc.correlation_id, None, CODE_MALFORMED,
                                 f"the worker's reply was malformed: {exc.reason}")
            return
        self.counters.replies += 1
        if self._journal is not None:
            self._journal.append(now_ns(), "rep", reply.topic, data)
        self._send_to_client(client, data)

    def _on_ready(self, worker: bytes, rest: list[bytes]) -> None:
        try:
            services = tuple(_service_name(s) for s in rest)
        except ValueError as exc:
            self._malformed("rpc", f"READY: {exc}", peer=worker.hex())
            return
        if not services:
            self._malformed("rpc", "READY names no service", peer=worker.hex())
            return
        if self.table.ready(worker, services, self._clock()):
            log(logger, "worker_ready", worker=worker.hex(), services=list(services))

    def _bad_request(self, client: bytes, data: bytes, reason: str, service: str | None = None,
                     exc: MalformedMessage | None = None) -> None:
        """Answer a request that cannot be routed with ``malformed``, if we can tell which it was."""
        if exc is None:
            try:
                message_id: str | None = check(data).message_id
            except MalformedMessage as salvage:
                exc = salvage
                message_id = salvage.message_id
        else:
            message_id = exc.message_id
        self._malformed("rpc", f"request: {reason}", source=exc.source if exc else None,
                        type=exc.type if exc else None, peer=client.hex(), size=len(data))
        if message_id:
            self._send_error(client, service or "rpc", message_id, None, CODE_MALFORMED, reason)

    def _send_error(self, client: bytes, service: str, correlation_id: str, session: str | None,
                    code: str, message: str) -> None:
        stamp = now_ns()
        body = ErrorReply(code=code, message=message)
        envelope = Envelope(SCHEMA_VERSION, body.TYPE, service, SOURCE, self.epoch, 0, new_id(),
                            correlation_id, correlation_id, session, stamp, stamp, body)
        data = encode(envelope)
        self.counters.errors += 1
        log(logger, "error_reply", logging.INFO if code != CODE_MALFORMED else logging.WARNING,
            service=service, code=code, correlation_id=correlation_id, client=client.hex())
        if self._journal is not None:
            self._journal.append(stamp, "rep", service, data)
        self._send_to_client(client, data)

    def _send_frames(self, frames: list[bytes]) -> None:
        """One message out of the ROUTER, frame by frame. The ROUTER refuses a message (Again: the
        peer's queue is full; EHOSTUNREACH: no such peer) at its first frame, never midway."""
        send = self.router.send
        last = len(frames) - 1
        for i in range(last):
            send(frames[i], NOBLOCK_MORE)
        send(frames[last], NOBLOCK)

    def _send_to_client(self, client: bytes, data: bytes) -> None:
        try:
            self._send_frames([client, PROTOCOL, REP, data])
        except zmq.Again:
            self.counters.undeliverable += 1
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                raise
            self.counters.undeliverable += 1  # the client went away (e.g. timed out and closed)

    # ------------------------------------------------------------------ bookkeeping

    def _malformed(self, channel: str, reason: str, **claimed: object) -> None:
        self.counters.malformed += 1
        if self._malformed_logged >= MALFORMED_LOGS_PER_INTERVAL:
            self.counters.malformed_unlogged += 1
            return
        self._malformed_logged += 1
        log(logger, "malformed", logging.WARNING, channel=channel, reason=reason,
            **{k: v for k, v in claimed.items() if v is not None})

    def _log_stats(self) -> None:
        self._malformed_logged = 0
        stats = self.counters.as_dict()
        stats["workers"] = len(self.table)
        if self._journal is not None:
            stats["journal_next_seq"] = self._journal.next_seq
        log(logger, "stats", **stats)

    def _socket(self, kind: int, **options: int) -> zmq.Socket:
        sock = self._context.socket(kind)
        self._sockets.append(sock)
        sock.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name.upper()), value)
        return sock

    def _take_lock(self) -> None:
        lock_file = self.endpoints.lock_file
        if lock_file is None:
            return
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(f"another busd holds {lock_file}") from None
        self._lock_fd = fd


def _rest(sock: zmq.Socket) -> list[bytes]:
    """The remaining frames of a message whose frames so far ended with ``more`` set."""
    frames = []
    while True:
        frame = sock.recv(NOBLOCK, copy=False)
        frames.append(frame.bytes)
        if not frame.more:
            return frames


def _service_name(raw: bytes) -> str:
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("service name is not UTF-8") from None
    if not name or len(name) > MAX_SERVICE_NAME or any(ch.isspace() for ch in name):
        raise ValueError(f"invalid service name {name[:LOG_TOPIC_CHARS]!r}")
    return name


def _event_name(code: int) -> str:
    """A monitor event (or protocol error) code as a readable name, e.g. ``handshake_failed_protocol``."""
    try:
        name = zmq.Event(code).name
    except ValueError:
        name = None
    return name.lower() if name else str(int(code))


def _printable(raw: bytes) -> str:
    """A topic or command frame, safe to put in a log line (truncated, never raises)."""
    return raw[:LOG_TOPIC_CHARS].decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------- entry point


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="busd", description="The tradebus bus daemon.")
    parser.add_argument("--state-dir", required=True, type=Path, help="the state folder (sockets in <state>/bus)")
    parser.add_argument("--no-journal", action="store_true", help="do not record messages")
    parser.add_argument("--journal-dir", type=Path, default=None, help="default: <state>/journal")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--worker-expiry-s", type=float, default=WORKER_EXPIRY_S,
                        help=f"forget a worker after this much silence (workers beat every {HEARTBEAT_S}s)")
    parser.add_argument("--startup-grace-s", type=float, default=STARTUP_GRACE_S,
                        help="answer no_worker rather than unknown_service this long after start")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run busd until SIGTERM/SIGINT; returns the process exit code."""
    args = parse_args(argv)
    configure_logging(SOURCE, args.log_level)
    try:
        endpoints = Endpoints.for_state_dir(args.state_dir)
    except EndpointError as exc:
        log(logger, "config_error", logging.CRITICAL, error=str(exc))
        return EXIT_CONFIG
    journal_dir = None if args.no_journal else (args.journal_dir or Path(args.state_dir) / "journal")
    busd = Busd(endpoints, journal_dir=journal_dir, worker_expiry_s=args.worker_expiry_s,
                startup_grace_s=args.startup_grace_s)

    def request_stop(signum: int, _frame: object) -> None:
        log(logger, "stop_requested", signal=signal.Signals(signum).name)
        busd.request_stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        busd.bind()
    except AlreadyRunning as exc:
        log(logger, "already_running", logging.CRITICAL, error=str(exc))
        busd.close()
        return EXIT_FATAL
    except EndpointError as exc:  # tcp without CURVE, no server key, no allow-list
        log(logger, "config_error", logging.CRITICAL, error=str(exc))
        busd.close()
        return EXIT_CONFIG
    except (zmq.ZMQError, OSError) as exc:
        log(logger, "bind_failed", logging.CRITICAL, error=f"{type(exc).__name__}: {exc}")
        busd.close()
        return EXIT_FATAL
    try:
        busd.run()
    except Exception as exc:  # noqa: BLE001 - last line of defence: log it, exit non-zero
        log(logger, "fatal", logging.CRITICAL, error=f"{type(exc).__name__}: {exc}", exc_info=True)
        return EXIT_FATAL
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
