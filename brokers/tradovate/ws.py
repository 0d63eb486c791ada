"""Tradovate's market-data WebSocket: framing, authorisation, charts (``httpx-ws``).

Framing (VENUES.md): the server sends ``o`` (open), ``h`` (heartbeat), ``a[...]`` (a JSON array of
responses ``{"s", "i", "d"}`` and events ``{"e", "d"}``) and ``c`` (close). The client sends
``endpoint\\nid\\nquery\\nbody`` requests, ``authorize\\n0\\n\\n<token>`` first, and ``[]`` as its
heartbeat every ``CLIENT_HEARTBEAT_S``.

Authorisation: with the token's ``mdAccessToken`` when it carries one, else the access token
(*unconfirmed* that the latter works on the real market-data socket; a renewal answer carries no md
token). ``s: 401`` to an ``authorize`` — also one the venue sends later, unasked, when the socket's
token has expired (*unconfirmed*: the real venue's behaviour then is undocumented; the simulator's
dialect does this) — makes the socket ask ``tokens.rejected`` for a newer token and authorise again
on the same connection; a fresh token refused too → ``AuthFailed``. A new token announced through
``tokens.on_new_token`` (the owner renewed) re-authorises every live socket.

Bars (``md/getchart``): the chart events of the subscription's ``historicalId``/``realtimeId``;
``eoh`` ends the history. Only closed bars are yielded (``parse.BarCloser``). ``historical_bars``
uses the same request with ``asFarAsTimestamp``/``asMuchAsElements`` and stops at ``eoh``: when more
than ``limit`` bars qualify, these are the NEWEST ``limit`` (a chart walks back from now).

Failures: cannot connect → ``BrokerUnavailable``; the socket closes, drops, says ``c`` or a
``shutdown`` event, or goes silent for ``SILENCE_S`` → ``Retryable`` (the caller reconnects with its
last index).
"""
from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import httpx
from httpx_ws import HTTPXWSException, WebSocketDisconnect, WebSocketSession, WebSocketUpgradeError, connect_ws
from wsproto.utilities import LocalProtocolError

from brokers.auth import Token, TokenSource
from brokers.base import Bar
from brokers.errors import (
    AuthFailed,
    BrokerUnavailable,
    RateLimited,
    Retryable,
    UnexpectedResponse,
    UnknownSymbol,
    redact,
)
from brokers.http import retry_after_seconds, translate_errors
from brokers.intervals import interval_ns
from brokers.tradovate.parse import (
    BROKER,
    HEARTBEAT,
    SHAPE_ERRORS,
    BarCloser,
    Frame,
    chart_description,
    chart_updates,
    encode_json,
    encode_request,
    ns_to_iso,
    parse_bar,
    parse_frame,
)

MD_TOKEN = "mdAccessToken"
CLIENT_HEARTBEAT_S = 2.5
POLL_S = 0.1
KEEPALIVE_S = 1.0
"""A stream yields ``None`` at least this often when no bar arrives."""
SILENCE_S = 10.0
"""No frame at all (the venue sends ``h`` every few seconds) for this long: the socket is dead."""
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_REPLAY_BARS = 10_000
"""How many bars a stream asks to replay after ``after_index`` at most."""
LIVE_EDGE_BARS = 2
"""A stream without ``after_index`` starts with the latest closed bar: ask for the last two (the
newest may still be forming)."""


def _excerpt(data: Any) -> str:
    try:
        return encode_json(data)
    except (TypeError, ValueError):
        return repr(data)


class MdSocket:
    """One authorised market-data WebSocket. Not thread-safe except ``offer_token``."""

    def __init__(self, url: str, tokens: TokenSource, client: httpx.Client, *, timeout_s: float,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._url = url
        self._tokens = tokens
        self._client = client
        self._timeout_s = timeout_s
        self._monotonic = monotonic
        self._stack = contextlib.ExitStack()
        self._ws: WebSocketSession | None = None
        self._ids = itertools.count(1)
        self._token: Token | None = None
        self._auth_ids: set[int] = set()
        self._pending_auth: int | None = None
        self._refused_in_a_row = 0
        self._offered: Token | None = None
        self._offer_lock = threading.Lock()
        self._last_sent = 0.0
        self._last_heard = 0.0
        self.authorisations = 0

    # -- lifecycle

    def open(self) -> None:
        """Connect, wait for ``o``, authorise; raises on failure (the socket is then closed)."""
        try:
            with translate_errors(BROKER, sends_order=False):
                self._ws = self._stack.enter_context(connect_ws(
                    self._url, self._client, keepalive_ping_interval_seconds=None,
                    max_message_size_bytes=MAX_MESSAGE_BYTES))
        except WebSocketUpgradeError as exc:
            self.close()
            raise _upgrade_error(exc.response) from exc
        except BaseException:
            self.close()
            raise
        try:
            self._last_heard = self._monotonic()
            deadline = self._monotonic() + self._timeout_s
            frame = self._receive(deadline - self._monotonic())
            if frame is None or frame.kind != "o":
                raise Retryable(f"market-data socket did not open (got {frame.kind if frame else 'nothing'})",
                                broker=BROKER)
            self._authorize(self._tokens.current())
            while self._pending_auth is not None:
                if self._monotonic() > deadline:
                    raise Retryable("market-data socket: no answer to authorize", broker=BROKER)
                for item in self.poll(min(POLL_S, max(0.0, deadline - self._monotonic()))):
                    raise UnexpectedResponse("market-data socket: data before authorisation", broker=BROKER,
                                             excerpt=_excerpt(item))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            self._stack.close()
        except (HTTPXWSException, LocalProtocolError, httpx.HTTPError, OSError, RuntimeError):
            pass  # closing a broken socket: nothing more to tell
        self._ws = None

    # -- requests

    def request(self, endpoint: str, body: Mapping[str, Any] | None = None, query: str = "") -> int:
        request_id = next(self._ids)
        self._send(encode_request(endpoint, request_id, query, body))
        return request_id

    def offer_token(self, token: Token) -> None:
        """A newer token announced by the owner (any thread): authorise with it at the next poll."""
        with self._offer_lock:
            self._offered = token

    def poll(self, timeout: float) -> list[Mapping[str, Any]]:
        """Frames for up to ``timeout`` seconds: authorisation answers are handled here; the other
        responses and events are returned. Sends the heartbeat when due."""
        with self._offer_lock:
            offered, self._offered = self._offered, None
        if offered is not None and offered is not self._token:
            self._authorize(offered)
        now = self._monotonic()
        if now - self._last_sent >= CLIENT_HEARTBEAT_S:
            self._send(HEARTBEAT)
        if now - self._last_heard > SILENCE_S:
            raise Retryable(f"market-data socket silent for {SILENCE_S:.0f}s", broker=BROKER)
        frame = self._receive(timeout)
        if frame is None:
            return []
        if frame.kind == "c":
            raise Retryable(f"market-data socket closed by the venue {redact(_excerpt(list(frame.items)))}",
                            broker=BROKER)
        items: list[Mapping[str, Any]] = []
        for item in frame.items:
            if not isinstance(item, dict):
                raise UnexpectedResponse("market-data frame item is not an object", broker=BROKER,
                                         excerpt=_excerpt(item))
            if item.get("i") in self._auth_ids and "e" not in item:
                self._on_auth_answer(item)
                continue
            if item.get("e") == "shutdown":
                raise Retryable(f"market-data socket shut down by the venue: {redact(_excerpt(item.get('d')))}",
                                broker=BROKER)
            items.append(item)
        return items

    # -- internals

    def _md_token(self, token: Token) -> str:
        md = token.extras.get(MD_TOKEN)
        return md if isinstance(md, str) and md else token.access_token

    def _authorize(self, token: Token) -> None:
        self._token = token
        request_id = next(self._ids)
        self._auth_ids.add(request_id)
        self._pending_auth = request_id
        self.authorisations += 1
        self._send(encode_request("authorize", request_id, "", self._md_token(token)))

    def _on_auth_answer(self, item: Mapping[str, Any]) -> None:
        status = item.get("s")
        if status == 200:
            if item.get("i") == self._pending_auth:
                self._pending_auth = None
                self._refused_in_a_row = 0
            return
        if status == 401:
            # Refused now, or the venue says a token it accepted earlier is no longer good.
            self._refused_in_a_row += 1
            if self._refused_in_a_row > 1:
                raise AuthFailed("market-data socket refused a fresh token too", broker=BROKER)
            assert self._token is not None
            self._authorize(self._tokens.rejected(self._token))
            return
        if status == 429:
            raise RateLimited("market-data socket: authorize rate limited", broker=BROKER)
        raise UnexpectedResponse(f"market-data socket: authorize answered {status}", broker=BROKER,
                                 excerpt=_excerpt(item.get("d")))

    def _send(self, message: str) -> None:
        if self._ws is None:
            raise Retryable("market-data socket is closed", broker=BROKER)
        try:
            self._ws.send_text(message)
        except (HTTPXWSException, LocalProtocolError, httpx.HTTPError, OSError, RuntimeError) as exc:
            raise Retryable(f"market-data socket send failed ({type(exc).__name__})", broker=BROKER) from exc
        self._last_sent = self._monotonic()

    def _receive(self, timeout: float) -> Frame | None:
        if self._ws is None:
            raise Retryable("market-data socket is closed", broker=BROKER)
        try:
            raw = self._ws.receive_text(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        except WebSocketDisconnect as exc:
            raise Retryable(f"market-data socket closed ({exc.code})", broker=BROKER) from exc
        except (HTTPXWSException, OSError, RuntimeError) as exc:
            raise Retryable(f"market-data socket dropped ({type(exc).__name__})", broker=BROKER) from exc
        self._last_heard = self._monotonic()
        try:
            return parse_frame(raw)
        except SHAPE_ERRORS as exc:
            raise UnexpectedResponse(f"market-data frame unreadable ({type(exc).__name__})", broker=BROKER,
                                     excerpt=raw) from exc


def _upgrade_error(response: httpx.Response) -> Exception:
    status = response.status_code
    if status in (401, 403):
        return AuthFailed(f"market-data socket refused (HTTP {status})", broker=BROKER)
    if status == 429:
        return RateLimited("market-data socket rate limited (HTTP 429)", broker=BROKER,
                           retry_after_s=retry_after_seconds(response.headers.get("Retry-After")))
    if status >= 500:
        return Retryable(f"market-data socket: HTTP {status}", broker=BROKER)
    return BrokerUnavailable(f"market-data socket: no WebSocket here (HTTP {status})", broker=BROKER)


def _chart_error(item: Mapping[str, Any], symbol: str) -> Exception:
    status = item.get("s")
    detail = item.get("d")
    if status == 404:
        return UnknownSymbol(symbol, broker=BROKER, detail=redact(str(detail)))
    if status == 429:
        return RateLimited("md/getchart rate limited", broker=BROKER)
    if isinstance(status, int) and status >= 500:
        return Retryable(f"md/getchart: {status}", broker=BROKER)
    return UnexpectedResponse(f"md/getchart answered {status}", broker=BROKER, excerpt=_excerpt(detail))


class Chart:
    """One ``md/getchart`` subscription on a socket: its ids, and the bars of its events."""

    def __init__(self, socket: MdSocket, symbol: str, interval: str, time_range: Mapping[str, Any]) -> None:
        self.symbol = symbol
        self.interval = interval
        self._socket = socket
        self._ids: tuple[int, ...] | None = None
        self._early: list[Mapping[str, Any]] = []
        self.historical_id: int | None = None
        self.end_of_history = False
        self._request_id = socket.request("md/getchart", {
            "symbol": symbol, "chartDescription": chart_description(interval), "timeRange": dict(time_range)})

    def bars(self, timeout: float) -> list[Bar]:
        """Bars (any version, closed or not) that arrived within ``timeout``."""
        found: list[Bar] = []
        for item in self._socket.poll(timeout):
            if item.get("i") == self._request_id and "e" not in item:
                self._on_answer(item)
                early, self._early = self._early, []
                for event in early:
                    found.extend(self._event_bars(event))
            elif item.get("e") == "chart":
                if self._ids is None:
                    self._early.append(item)  # before our answer: keep until we know our ids
                else:
                    found.extend(self._event_bars(item))
        return found

    def cancel(self) -> None:
        if self.historical_id is not None:
            with contextlib.suppress(Retryable):
                self._socket.request("md/cancelchart", {"subscriptionId": self.historical_id})

    def _on_answer(self, item: Mapping[str, Any]) -> None:
        if item.get("s") != 200:
            raise _chart_error(item, self.symbol)
        data = item.get("d")
        try:
            historical = data["historicalId"]
            realtime = data.get("realtimeId")
            ids = tuple(i for i in (historical, realtime) if i is not None)
            if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise TypeError("subscription ids must be integers")
        except SHAPE_ERRORS as exc:
            raise UnexpectedResponse(f"md/getchart answer malformed ({type(exc).__name__})", broker=BROKER,
                                     excerpt=_excerpt(data)) from exc
        self.historical_id = historical
        self._ids = ids

    def _event_bars(self, event: Mapping[str, Any]) -> list[Bar]:
        assert self._ids is not None
        try:
            update = chart_updates(event["d"], self._ids)
            if update.end_of_history:
                self.end_of_history = True
            return [parse_bar(raw, self.symbol, self.interval) for raw in update.bars]
        except SHAPE_ERRORS as exc:
            raise UnexpectedResponse(f"malformed chart event ({type(exc).__name__}: {exc})", broker=BROKER,
                                     excerpt=_excerpt(event)) from exc


class TradovateMarketData:
    """``brokers.base.MarketData`` over the market-data WebSocket at ``url``."""

    def __init__(self, url: str, tokens: TokenSource, client: httpx.Client, *, timeout_s: float,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._url = url
        self._tokens = tokens
        self._client = client
        self._timeout_s = timeout_s
        self._clock_ns = clock_ns
        self._live: weakref.WeakSet[MdSocket] = weakref.WeakSet()
        self._live_lock = threading.Lock()
        # One registration for the life of this object (TokenSource has no way to unregister):
        # it forwards each new token to whichever sockets are open then.
        tokens.on_new_token(self._on_new_token)

    def _on_new_token(self, token: Token) -> None:
        with self._live_lock:
            sockets = list(self._live)
        for socket in sockets:
            socket.offer_token(token)

    @contextlib.contextmanager
    def _socket(self) -> Iterator[MdSocket]:
        socket = MdSocket(self._url, self._tokens, self._client, timeout_s=self._timeout_s)
        socket.open()
        with self._live_lock:
            self._live.add(socket)
        try:
            yield socket
        finally:
            with self._live_lock:
                self._live.discard(socket)
            socket.close()

    def historical_bars(self, symbol: str, interval: str, *, after_ts_ns: int = 0, limit: int = 500) -> list[Bar]:
        if limit <= 0:
            return []
        length = interval_ns(interval)
        chart_description(interval)  # NotSupported before any I/O
        time_range: dict[str, Any] = {"asMuchAsElements": limit + 1}  # +1: the newest may be forming
        if after_ts_ns > 0:
            time_range["asFarAsTimestamp"] = ns_to_iso(after_ts_ns)
        closer = BarCloser(length, after_ts_ns)
        with self._socket() as socket:
            chart = Chart(socket, symbol, interval, time_range)
            deadline = time.monotonic() + max(self._timeout_s, 1.0) * 3
            while not chart.end_of_history:
                if time.monotonic() > deadline:
                    raise Retryable(f"md/getchart {symbol}: no end of history in time", broker=BROKER)
                for bar in chart.bars(POLL_S):
                    closer.add(bar)
            chart.cancel()
        return closer.closed(self._clock_ns())[-limit:]

    def stream_bars(self, symbol: str, interval: str, *, after_index: int | None) -> Iterator[Bar | None]:
        length = interval_ns(interval)
        chart_description(interval)  # NotSupported now, not at the first next()
        if after_index is None:
            return self._stream(symbol, interval, {"asMuchAsElements": LIVE_EDGE_BARS}, BarCloser(length))
        after_ts = after_index * length
        time_range = {"asFarAsTimestamp": ns_to_iso(after_ts + length), "asMuchAsElements": MAX_REPLAY_BARS}
        return self._stream(symbol, interval, time_range, BarCloser(length, after_ts))

    def _stream(self, symbol: str, interval: str, time_range: Mapping[str, Any],
                closer: BarCloser) -> Iterator[Bar | None]:
        with self._socket() as socket:
            chart = Chart(socket, symbol, interval, time_range)
            last_yield = time.monotonic()
            try:
                while True:
                    for bar in chart.bars(POLL_S):
                        closer.add(bar)
                    for bar in closer.closed(self._clock_ns()):
                        yield bar
                        last_yield = time.monotonic()
                    if time.monotonic() - last_yield >= KEEPALIVE_S:
                        yield None
                        last_yield = time.monotonic()
            finally:
                chart.cancel()
