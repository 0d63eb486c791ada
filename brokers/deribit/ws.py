"""JSON-RPC over Deribit's WebSocket (``httpx_ws``): requests with ids, answers matched to them,
notifications (``subscription``, ``heartbeat``) handed out in arrival order.

Errors at this edge: a closed or broken socket is ``Retryable`` (nothing was asked that could have
acted: the WebSocket carries public market-data calls only); an error answer goes through the same
table as HTTP (``rpc.exception_for``; 10028 → ``RateLimited``, the venue then ends the session).
"""
from __future__ import annotations

import itertools
import queue
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx
from httpx_ws import HTTPXWSException, WebSocketDisconnect, WebSocketNetworkError, WebSocketSession, connect_ws
from wsproto.utilities import LocalProtocolError

from brokers.deribit.rpc import BROKER, JSONRPC, RpcError, dumps, exception_for, loads, parse_error
from brokers.errors import Retryable, UnexpectedResponse, redact
from brokers.http import translate_errors

MAX_MESSAGE_BYTES = 1 << 20


def http_url(ws_url: str) -> str:
    """httpx speaks http(s): the upgrade request goes to the same host and path."""
    if ws_url.startswith("wss://"):
        return "https://" + ws_url[len("wss://"):]
    if ws_url.startswith("ws://"):
        return "http://" + ws_url[len("ws://"):]
    return ws_url


@contextmanager
def open_session(ws_url: str, timeout_s: float) -> Iterator[WsRpc]:
    """A connected ``WsRpc``; connection failures are ``BrokerUnavailable``/``Retryable``."""
    client = httpx.Client(timeout=httpx.Timeout(timeout_s))
    try:
        with translate_errors(BROKER, sends_order=False):
            try:
                context = connect_ws(http_url(ws_url), client, max_message_size_bytes=MAX_MESSAGE_BYTES,
                                     keepalive_ping_interval_seconds=None)
                session = context.__enter__()
            except HTTPXWSException as exc:
                raise Retryable(f"WebSocket upgrade refused ({type(exc).__name__})", broker=BROKER) from exc
        try:
            yield WsRpc(session)
        finally:
            try:
                context.__exit__(None, None, None)
            except (HTTPXWSException, LocalProtocolError, httpx.HTTPError, OSError):
                pass  # closing a socket the venue already dropped
    finally:
        client.close()


class WsRpc:
    def __init__(self, session: WebSocketSession) -> None:
        self._ws = session
        self._ids = itertools.count(1)
        self._backlog: deque[dict[str, Any]] = deque()

    def send(self, method: str, params: Mapping[str, Any]) -> int:
        request_id = next(self._ids)
        try:
            self._ws.send_text(dumps({"jsonrpc": JSONRPC, "id": request_id, "method": method, "params": dict(params)}))
        except (HTTPXWSException, LocalProtocolError, httpx.HTTPError, OSError) as exc:
            # LocalProtocolError: the venue's close frame arrived first (the socket is closing).
            raise Retryable(f"WebSocket {method}: not sent, the connection is closing or gone ({type(exc).__name__})",
                            broker=BROKER) from exc
        return request_id

    def call(self, method: str, params: Mapping[str, Any], *, timeout_s: float) -> Any:
        """Send and wait for the answer; notifications meanwhile are kept for ``next``."""
        request_id = self.send(method, params)
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            message = self._receive(max(0.0, remaining)) if remaining > 0 else None
            if message is None:
                raise Retryable(f"WebSocket {method}: no answer within {timeout_s:g}s", broker=BROKER)
            if message.get("id") != request_id:
                self._backlog.append(message)
                continue
            error = answer_error(message)
            if error is not None:
                raise exception_for(error, where=f"WebSocket {method}", command=False)
            if "result" not in message:
                raise UnexpectedResponse(f"WebSocket {method}: answer without result", broker=BROKER)
            return message["result"]

    def next(self, timeout_s: float) -> dict[str, Any] | None:
        """The next message (a notification or an answer), or None after ``timeout_s`` of silence."""
        if self._backlog:
            return self._backlog.popleft()
        return self._receive(timeout_s)

    def _receive(self, timeout_s: float) -> dict[str, Any] | None:
        try:
            text = self._ws.receive_text(timeout=timeout_s)
        except queue.Empty:
            return None
        except WebSocketDisconnect as exc:
            why = f"{exc.code} {redact(exc.reason, limit=80)}".strip()
            raise Retryable(f"the venue closed the WebSocket ({why})", broker=BROKER) from exc
        except WebSocketNetworkError as exc:
            raise Retryable("the WebSocket connection broke", broker=BROKER) from exc
        except HTTPXWSException as exc:
            raise UnexpectedResponse(f"WebSocket: unexpected frame ({type(exc).__name__})", broker=BROKER) from exc
        try:
            message = loads(text)
        except ValueError as exc:
            raise UnexpectedResponse("WebSocket message is not JSON", broker=BROKER, excerpt=text) from exc
        if not isinstance(message, dict):
            raise UnexpectedResponse("WebSocket message is not an object", broker=BROKER, excerpt=text)
        return message


def answer_error(message: Mapping[str, Any]) -> RpcError | None:
    try:
        return parse_error(message)
    except ValueError as exc:
        raise UnexpectedResponse(f"WebSocket: malformed error ({exc})", broker=BROKER) from exc
