"""Schwab's streamer (WebSocket) as an iterator of closed one-minute bars.

One stream = one connection:

1. ``GET /trader/v1/userPreference`` → ``streamerInfo`` (socket URL, customer id, correlation id,
   channel, function id); it is asked on every (re)connect;
2. connect, send ``ADMIN LOGIN`` with the raw access token, wait for its reply (code 0);
3. send ``CHART_FUTURES SUBS`` for the symbol (fields 0–6), wait for its reply;
4. if the caller gave ``after_index`` (or this is a reconnect), replay the bars after it from
   ``pricehistory`` (the streamer has no replay), then go on with the live bars; duplicates and
   bars at or before the last one handed out are dropped (``brokers.schwab.bars.BarAssembler``,
   which also decides when a bar is closed);
5. yield ``None`` (keep-alive) for every heartbeat and at least every ``KEEPALIVE_S`` while idle.

Tokens: the streamer registers ``tokens.on_new_token`` and also asks ``tokens.current()`` every
``TOKEN_POLL_S`` (so an in-process token source refreshes before expiry). When a newer token
appears, it sends a second ``ADMIN LOGIN`` with it on the live socket — re-authorising without a
reconnect. Whether the real streamer accepts a second LOGIN on a logged-in connection is
*unconfirmed*; if it answers anything but success the usual code mapping applies (a denial leads to
a reconnect, any other code is an error naming it).

Login denied (code 3) — at LOGIN, on a re-LOGIN, or as an unsolicited notice (the simulator sends
one when the access token it logged in with expires and then closes the socket): the token is
reported with ``tokens.rejected(token)`` and the stream reconnects and LOGINs with the newer token,
continuing after the last bar handed out, so the caller sees no gap and no duplicate. A LOGIN
denied right after such a refresh is ``AuthFailed``.

Every other failure ends the iterator with an error the caller acts on (``Retryable`` /
``BrokerUnavailable`` for a lost or closed connection, a silent one, or a recoverable code;
``UnexpectedResponse`` for an unknown code or an unreadable frame, naming what was seen): the
caller reconnects with its last index. Schwab allows ONE streamer connection per user (code 12
closes the older or refuses the newer, *unconfirmed* which): run one stream per Schwab login.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import Protocol

import httpx
import wsproto.events
from httpx_ws import HTTPXWSException, WebSocketDisconnect, WebSocketNetworkError, WebSocketUpgradeError, connect_ws

from brokers.auth import Token, TokenSource
from brokers.base import Bar
from brokers.errors import AuthFailed, BrokerError, Retryable
from brokers.http import translate_errors
from brokers.intervals import interval_ns
from brokers.schwab.bars import CLOSE_GRACE_NS, BarAssembler
from brokers.schwab.client import SchwabRest
from brokers.schwab.parse import (
    BROKER,
    CHART_FUTURES,
    LOGIN_DENIED,
    StreamerInfo,
    StreamMessage,
    StreamReply,
    chart_item_key,
    chart_subs_request,
    encode_requests,
    login_request,
    logout_request,
    parse_chart_item,
    parse_stream_message,
    parse_streamer_info,
    stream_code_error,
)

USER_PREFERENCE_PATH = "/trader/v1/userPreference"
STREAM_INTERVAL = "1m"
"""``CHART_FUTURES`` carries one-minute bars only."""
STREAM_INTERVAL_NS = interval_ns(STREAM_INTERVAL)
KEEPALIVE_S = 1.0
"""Longest wait for a frame before yielding a keep-alive ``None``."""
SILENCE_S = 30.0
"""No frame at all (not even a heartbeat) for this long: the connection is presumed dead. How often
the real streamer sends heartbeats is *unconfirmed* (public clients see one every ~10-20 s)."""
TOKEN_POLL_S = 1.0
"""How often a live stream asks ``tokens.current()`` (cheap; lets an in-process source refresh in time)."""
TOKEN_POLL_BACKOFF_S = 60.0
"""After a failed ``tokens.current()`` (refresh refused or unreachable), ask again only this late:
the socket's session does not depend on it and the venue will say if the token goes stale."""
PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 20.0


class StreamClosed(Exception):
    """The WebSocket closed (by the venue or the network)."""

    def __init__(self, code: int | None, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"code {code}: {reason}" if code is not None else reason)


class StreamSocket(Protocol):
    def send_text(self, text: str) -> None:
        """``StreamClosed`` if the connection is gone."""
        ...

    def receive_text(self, timeout_s: float) -> str | None:
        """The next text frame; None when nothing came within ``timeout_s``; ``StreamClosed``."""
        ...


SocketFactory = Callable[[str], AbstractContextManager[StreamSocket]]
"""``url → context manager of a connected socket`` (the WebSocket seam; tests pass a fake)."""


# ---------------------------------------------------------------- httpx-ws, the real socket


class _HttpxWsSocket:
    def __init__(self, ws: object) -> None:
        self._ws = ws

    def send_text(self, text: str) -> None:
        try:
            self._ws.send_text(text)  # type: ignore[attr-defined]
        except (WebSocketNetworkError, httpx.TransportError, OSError) as exc:
            raise StreamClosed(None, f"send failed ({type(exc).__name__})") from exc

    def receive_text(self, timeout_s: float) -> str | None:
        try:
            event = self._ws.receive(timeout=timeout_s)  # type: ignore[attr-defined]
        except queue.Empty:
            return None
        except WebSocketDisconnect as exc:
            raise StreamClosed(exc.code, exc.reason or "closed by the venue") from exc
        except WebSocketNetworkError as exc:
            raise StreamClosed(None, "network error") from exc
        if isinstance(event, wsproto.events.TextMessage):
            return event.data
        if isinstance(event, wsproto.events.BytesMessage):
            return bytes(event.data).decode("utf-8", errors="replace")
        return None


def httpx_ws_connector(client: httpx.Client) -> SocketFactory:
    """Open streamer sockets with ``httpx_ws.connect_ws`` over ``client``."""

    @contextmanager
    def connect(url: str) -> Iterator[StreamSocket]:
        with ExitStack() as stack:
            try:
                with translate_errors(BROKER, sends_order=False):
                    ws = stack.enter_context(connect_ws(url, client, keepalive_ping_interval_seconds=PING_INTERVAL_S,
                                                        keepalive_ping_timeout_seconds=PING_TIMEOUT_S))
            except WebSocketUpgradeError as exc:
                raise Retryable(f"streamer: WebSocket upgrade refused (HTTP {exc.response.status_code})",
                                broker=BROKER) from exc
            except HTTPXWSException as exc:
                raise Retryable(f"streamer: could not open the WebSocket ({type(exc).__name__})", broker=BROKER) from exc
            yield _HttpxWsSocket(ws)

    return connect


# ---------------------------------------------------------------- the stream


class _LoginDenied(Exception):
    def __init__(self, token: Token, *, at_login: bool, reply: StreamReply) -> None:
        super().__init__("login denied")
        self.token = token
        self.at_login = at_login
        self.reply = reply


@dataclass
class _Run:
    """One ``stream`` call: survives reconnects."""

    symbol: str
    assembler: BarAssembler
    after_denial: bool = False
    """The last LOGIN was denied and the token refreshed since: one more denial is final."""


@dataclass
class _Connection:
    socket: StreamSocket
    info: StreamerInfo
    token: Token
    next_request_id: int = 0
    pending_relogin: str | None = None
    next_token_poll: float = 0.0

    def request_id(self) -> int:
        rid = self.next_request_id
        self.next_request_id += 1
        return rid


@dataclass
class StreamerStats:
    connections: int = 0
    logins: int = 0
    relogins: int = 0
    login_denied: int = 0


HistoryFetcher = Callable[[str, int], list[Bar]]
"""``(symbol, after_ts_ns) → one-minute bars after it, up to now (the forming one included)``."""


class ChartStreamer:
    def __init__(self, rest: SchwabRest, tokens: TokenSource, fetch_history: HistoryFetcher, connect: SocketFactory,
                 *, reply_timeout_s: float, clock_ns: Callable[[], int] = time.time_ns,
                 monotonic: Callable[[], float] = time.monotonic, keepalive_s: float = KEEPALIVE_S,
                 silence_s: float = SILENCE_S, grace_ns: int = CLOSE_GRACE_NS, token_poll_s: float = TOKEN_POLL_S) -> None:
        self._rest = rest
        self._tokens = tokens
        self._fetch_history = fetch_history
        self._connect = connect
        self._reply_timeout_s = reply_timeout_s
        self._clock_ns = clock_ns
        self._monotonic = monotonic
        self._keepalive_s = keepalive_s
        self._silence_s = silence_s
        self._grace_ns = grace_ns
        self._token_poll_s = token_poll_s
        self._lock = threading.Lock()
        self._newest: Token | None = None
        self.stats = StreamerStats()
        tokens.on_new_token(self._on_new_token)

    def _on_new_token(self, token: Token) -> None:
        with self._lock:
            if self._newest is None or token.expires_ns >= self._newest.expires_ns:
                self._newest = token

    def stream(self, symbol: str, after_index: int | None) -> Iterator[Bar | None]:
        run = _Run(symbol, BarAssembler(STREAM_INTERVAL_NS, last_index=after_index, grace_ns=self._grace_ns))
        while True:
            try:
                yield from self._session(run)
            except _LoginDenied as denied:
                self.stats.login_denied += 1
                if denied.at_login and run.after_denial:
                    raise AuthFailed(f"streamer LOGIN denied again with a refreshed access token (code "
                                     f"{denied.reply.code}{': ' + denied.reply.msg if denied.reply.msg else ''})",
                                     broker=BROKER) from None
                self._tokens.rejected(denied.token)
                run.after_denial = True

    # -- one connection

    def _session(self, run: _Run) -> Iterator[Bar | None]:
        info = parse_streamer_info(self._rest.get_json(USER_PREFERENCE_PATH))
        token = self._tokens.current()
        with self._connect(info.socket_url) as socket:
            self.stats.connections += 1
            conn = _Connection(socket, info, token, next_token_poll=self._monotonic() + self._token_poll_s)
            rid = conn.request_id()
            self._send(conn, login_request(info, token.access_token, rid))
            self._await_reply(conn, "LOGIN", rid)
            self.stats.logins += 1
            run.after_denial = False
            try:
                rid = conn.request_id()
                self._send(conn, chart_subs_request(info, run.symbol, rid))
                backlog = self._await_reply(conn, "SUBS", rid)
                out: list[Bar] = []
                if run.assembler.last_index is not None:
                    after_ts_ns = (run.assembler.last_index + 1) * STREAM_INTERVAL_NS - 1
                    for bar in self._fetch_history(run.symbol, after_ts_ns):
                        out.extend(run.assembler.offer(bar))
                for message in backlog:
                    out.extend(self._handle(conn, message, run))
                out.extend(run.assembler.tick(self._clock_ns()))
                yield from out
                yield from self._receive_loop(conn, run)
            except GeneratorExit:
                self._logout_quietly(conn)
                raise

    def _send(self, conn: _Connection, request: dict[str, object]) -> None:
        try:
            conn.socket.send_text(encode_requests(request))
        except StreamClosed as exc:
            raise Retryable(f"streamer: the connection closed ({exc})", broker=BROKER) from exc

    def _receive(self, conn: _Connection, timeout_s: float) -> str | None:
        try:
            return conn.socket.receive_text(timeout_s)
        except StreamClosed as exc:
            raise Retryable(f"streamer: the connection closed ({exc})", broker=BROKER) from exc

    def _await_reply(self, conn: _Connection, command: str, rid: int) -> list[StreamMessage]:
        """Wait for the reply to request ``rid``; data frames meanwhile are kept for later."""
        deadline = self._monotonic() + self._reply_timeout_s
        backlog: list[StreamMessage] = []
        while True:
            left = deadline - self._monotonic()
            if left <= 0:
                raise Retryable(f"streamer: no answer to {command} within {self._reply_timeout_s:g}s", broker=BROKER)
            raw = self._receive(conn, min(left, self._keepalive_s))
            if raw is None:
                continue
            message = parse_stream_message(raw)
            answered = False
            for reply in message.replies:
                if reply.request_id != str(rid):
                    self._check_reply(conn, reply)
                    continue
                answered = True
                if reply.code == LOGIN_DENIED:
                    raise _LoginDenied(conn.token, at_login=command == "LOGIN", reply=reply)
                error = stream_code_error(reply)
                if error is not None:
                    raise error
            for notice in message.notices:
                self._check_reply(conn, notice)
            if message.data:
                backlog.append(StreamMessage(data=message.data))
            if answered:
                return backlog

    def _check_reply(self, conn: _Connection, reply: StreamReply) -> None:
        """Any reply or notice other than the one awaited: a denial, an error code, or the answer
        to a re-LOGIN."""
        if reply.code == LOGIN_DENIED:
            raise _LoginDenied(conn.token, at_login=False, reply=reply)
        error = stream_code_error(reply)
        if error is not None:
            raise error
        if conn.pending_relogin is not None and reply.request_id == conn.pending_relogin:
            conn.pending_relogin = None

    def _handle(self, conn: _Connection, message: StreamMessage, run: _Run) -> list[Bar]:
        for reply in (*message.replies, *message.notices):
            self._check_reply(conn, reply)
        out: list[Bar] = []
        wanted = run.symbol.upper()
        for block in message.data:
            if block.service != CHART_FUTURES:
                continue
            for item in block.items:
                key = chart_item_key(item)
                if key is None or key.upper() != wanted:
                    continue
                out.extend(run.assembler.offer(parse_chart_item(item, run.symbol, STREAM_INTERVAL, STREAM_INTERVAL_NS)))
        return out

    def _receive_loop(self, conn: _Connection, run: _Run) -> Iterator[Bar | None]:
        last_heard = self._monotonic()
        while True:
            self._maybe_relogin(conn)
            raw = self._receive(conn, self._keepalive_s)
            out: list[Bar] = []
            now = self._monotonic()
            if raw is None:
                if now - last_heard > self._silence_s:
                    raise Retryable(f"streamer: nothing heard for {self._silence_s:g}s; the connection is presumed "
                                    f"dead", broker=BROKER)
            else:
                last_heard = now
                out = self._handle(conn, parse_stream_message(raw), run)
            out.extend(run.assembler.tick(self._clock_ns()))
            if out:
                yield from out
            else:
                yield None

    def _maybe_relogin(self, conn: _Connection) -> None:
        """Re-LOGIN on the live socket when a newer token exists."""
        candidates: list[Token] = []
        now = self._monotonic()
        if now >= conn.next_token_poll:
            try:
                candidates.append(self._tokens.current())  # an in-process source refreshes when due
                conn.next_token_poll = now + self._token_poll_s
            except BrokerError:
                conn.next_token_poll = now + TOKEN_POLL_BACKOFF_S
        with self._lock:
            if self._newest is not None:
                candidates.append(self._newest)
        newer = [t for t in candidates
                 if t.access_token != conn.token.access_token and t.expires_ns >= conn.token.expires_ns]
        if not newer:
            return
        token = max(newer, key=lambda t: t.expires_ns)
        rid = conn.request_id()
        self._send(conn, login_request(conn.info, token.access_token, rid))
        conn.token = token
        conn.pending_relogin = str(rid)
        self.stats.relogins += 1

    def _logout_quietly(self, conn: _Connection) -> None:
        try:
            conn.socket.send_text(encode_requests(logout_request(conn.info, conn.request_id())))
        except (StreamClosed, OSError):
            pass
