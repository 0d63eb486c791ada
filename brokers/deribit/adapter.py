"""The ``deribit`` broker: BTC-PERPETUAL on Deribit API v2 (JSON-RPC 2.0 over HTTP and WebSocket).

Config (never secrets): ``base_url`` — the JSON-RPC base incl. ``/api/v2`` (``https://www.deribit.com/api/v2``;
the simulator's is ``<url>/deribit/api/v2``); ``ws_url`` — the WebSocket (``wss://www.deribit.com/ws/api/v2``;
needed for streaming bars only); ``account`` — the engine's account name and secrets key (without one the
facade is data-only, which needs no credentials); ``timeout_s``; ``heartbeat_s`` (``public/set_heartbeat``
interval, default 10 = Deribit's minimum); ``subject_id`` (trade in this subaccount: exchange the token on
obtain); ``session_name`` (fork the token into this named session on obtain); ``track_subject_ids`` (other
subaccounts whose orders, fills and positions this account must keep seeing, e.g. after a
``switch_subaccount`` and a restart); ``secrets_file``. Credentials: ``client_id``, ``client_secret``.

Execution. Orders go in with ``label`` = the engine's client order id (≤ 64 characters), ``amount`` in
USD (contracts × 10, see ``parse``). Deribit does NOT reject a repeated label: the engine looks the
label up before any resend, so ``order_by_client_id`` asks every tracked subaccount
(``private/get_order_state_by_label``) and answers None only when all of them answered with an empty
list; more than one order under a label is ``UnexpectedResponse`` (the engine never reuses a label,
so two orders mean a duplicate was sent — doubt, never a guess). Cancel and modify find the order
by label first (reads, safe to retry), then act on its ``order_id`` (``private/cancel``,
``private/edit``), so they answer with the order.

Sessions. Orders belong to a (sub)account, not to a token: a refresh, a forked named session
(``session_name``) or new token from the tokens service sees the same orders. ``switch_subaccount``
moves NEW orders to another subaccount; the role keeps a token source per subaccount it has used
(the one it was given for the configured account, its own for the others) and answers
``open_orders``, ``order_by_client_id``, ``positions`` (summed per instrument) and ``fills_since``
across all of them, so nothing placed before the switch is lost. ``account_equity`` is the equity of
the subaccount new orders go to, in its currency (BTC for BTC-PERPETUAL, as Deribit reports it).

Market data. ``historical_bars`` reads ``public/get_tradingview_chart_data`` up to the venue's clock
(``public/get_time``) and keeps only bars that had ended by then (the answer includes the forming
one). With ``after_ts_ns`` 0 it answers the latest ``limit`` closed bars (a venue with years of history
has no useful "from the beginning"). ``stream_bars`` subscribes to ``chart.trades.<instrument>.<res>``
on a WebSocket — public data, so the socket needs no token and a token renewal does not touch it —
answers ``test_request`` heartbeats with ``public/test``, replays history after ``after_index`` over
HTTP, and yields a bar only once a newer tick arrives (the channel re-sends the forming bar as it
updates; see ``parse.ClosedBars``). A closed socket raises ``Retryable``, 10028 ``RateLimited``: the
caller reconnects with its last index, and the replay fills the gap without duplicates.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx

from brokers.auth import Authenticator, LocalTokenSource, TokenSource
from brokers.base import (
    Bar,
    BrokerFacade,
    BrokerFill,
    BrokerOrder,
    BrokerPosition,
    Capabilities,
    OrderRequest,
    StaticRegistry,
)
from brokers.deribit import parse
from brokers.deribit.auth import CREDENTIALS, DeribitAuthenticator, SubaccountAuthenticator, TokenCalls
from brokers.deribit.rpc import BROKER, RpcHttp, excerpt, exception_for
from brokers.deribit.ws import answer_error, open_session
from brokers.errors import (
    AuthFailed,
    NotSupported,
    OrderNotFound,
    OutcomeUnknown,
    Rejected,
    Retryable,
    UnexpectedResponse,
    UnknownSymbol,
)
from brokers.http import make_client
from brokers.intervals import interval_ns
from brokers.secrets import load_secrets
from brokers.symbols import symbol_adapter

__all__ = ["BROKER", "CAPABILITIES", "CREDENTIALS", "DeribitFacade", "authenticator", "build"]

CAPABILITIES = Capabilities(execution=True, market_data=True, lookup_by_client_id=True, brackets=False, modify=True)
DATA_ONLY = Capabilities(execution=False, market_data=True, lookup_by_client_id=False, brackets=False, modify=False)
INSTRUMENTS: tuple[str, ...] = ("BTC-PERPETUAL",)
"""What this adapter trades (brokers.symbols.deribit carries the same one)."""

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_HEARTBEAT_S = 10
"""Deribit's smallest ``set_heartbeat`` interval."""
TRADES_PAGE = 100
CHART_CHUNK_BARS = 1000
"""Bars asked per chart request (Deribit caps an answer; the exact cap is *unconfirmed*)."""
BACKFILL_PAGE = 1000
STREAM_POLL_S = 0.25
STREAM_KEEPALIVE_S = 1.0
"""A stream yields None at least this often so its caller can check deadlines."""

_SHAPE_ERRORS = (KeyError, TypeError, ValueError, ArithmeticError, AttributeError, UnknownSymbol)


def _parsed(parser: Callable[[Any], Any], data: Any, what: str, *, command: bool = False) -> Any:
    """Parse or raise: a bad answer to a command may hide an order (``OutcomeUnknown``)."""
    try:
        return parser(data)
    except _SHAPE_ERRORS as exc:
        if command:
            raise OutcomeUnknown(f"unreadable answer to {what} ({type(exc).__name__}); look the order up by label "
                                 "before any resend", broker=BROKER) from exc
        raise UnexpectedResponse(f"malformed {what} ({type(exc).__name__}: {exc})", broker=BROKER,
                                 excerpt=excerpt(data)) from exc


def _list(data: Any, what: str) -> list[Any]:
    if not isinstance(data, list):
        raise UnexpectedResponse(f"{what}: expected a list", broker=BROKER, excerpt=excerpt(data))
    return data


def _order_of_answer(data: Any) -> BrokerOrder:
    """``{order, trades}`` (buy, sell, edit) → the order."""
    if not isinstance(data, dict):
        raise TypeError("answer is not an object")
    return parse.parse_order(data["order"])


# ---------------------------------------------------------------- execution


@dataclass
class _Session:
    """One (sub)account this role has traded in: its token source, and its Deribit account id
    (``private/get_account_summary`` ``id``; learned on first need)."""

    tokens: TokenSource
    subject_id: int | None
    account_id: int | None = None


class DeribitExecution:
    def __init__(self, rpc: RpcHttp, tokens: TokenSource, calls: TokenCalls, *,
                 track_subject_ids: Sequence[int] = ()) -> None:
        self._rpc = rpc
        self._calls = calls
        self._lock = threading.Lock()
        self._sessions: list[_Session] = [_Session(tokens, None)]
        self._active = self._sessions[0]
        self._homes: dict[str, _Session] = {}
        self._to_track = list(track_subject_ids)
        self._currencies = tuple(dict.fromkeys(parse.currency_of(i) for i in INSTRUMENTS))

    # -- the auth path: every private call goes through here

    def _call(self, session: _Session, method: str, params: Mapping[str, Any], *, sends_order: bool,
              order_ref: str | None = None) -> Any:
        token = session.tokens.current()
        reply = self._rpc.get(method, params, access_token=token.access_token, sends_order=sends_order)
        if reply.auth_refused:
            # The venue did not act on a refused token: renew it and send once more.
            token = session.tokens.rejected(token)
            reply = self._rpc.get(method, params, access_token=token.access_token, sends_order=sends_order)
            if reply.auth_refused:
                why = reply.error.describe() if reply.error is not None else f"HTTP {reply.http_status}"
                raise AuthFailed(f"{method}: the venue refused a renewed token too ({why})", broker=BROKER)
        if reply.error is not None:
            raise exception_for(reply.error, where=method, command=sends_order, order_ref=order_ref,
                                retry_after_s=reply.retry_after_s)
        return reply.result

    # -- sessions

    def _all_sessions(self) -> list[_Session]:
        while True:
            with self._lock:
                if not self._to_track:
                    return list(self._sessions)
                subject_id = self._to_track[0]
            self._add_subaccount(subject_id, activate=False)
            with self._lock:
                if self._to_track and self._to_track[0] == subject_id:
                    self._to_track.pop(0)

    def _account_id(self, session: _Session) -> int:
        if session.account_id is None:
            data = self._call(session, "private/get_account_summary", {"currency": self._currencies[0]},
                              sends_order=False)
            session.account_id = _parsed(parse.parse_account_id, data, "account summary")
        return session.account_id

    def _add_subaccount(self, subject_id: int, *, activate: bool) -> _Session:
        primary = self._sessions[0]
        candidate = _Session(LocalTokenSource(SubaccountAuthenticator(self._calls, primary.tokens, subject_id)),
                             subject_id)
        account_id = self._account_id(candidate)
        for session in list(self._sessions):
            if self._account_id(session) == account_id:
                chosen = session  # already tracked (e.g. switching back): keep its token source
                break
        else:
            chosen = candidate
            with self._lock:
                self._sessions.append(candidate)
        if activate:
            with self._lock:
                self._active = chosen
        return chosen

    def switch_subaccount(self, subject_id: int) -> int:
        """Send new orders to subaccount ``subject_id`` (``public/exchange_token``); every order placed
        before stays tracked. Returns the Deribit account id now trading."""
        if isinstance(subject_id, bool) or not isinstance(subject_id, int) or subject_id <= 0:
            raise ValueError(f"subject_id must be a positive integer, got {subject_id!r}")
        self._all_sessions()
        return self._account_id(self._add_subaccount(subject_id, activate=True))

    # -- commands

    def submit_order(self, req: OrderRequest) -> BrokerOrder:
        try:
            method, params = parse.order_request(req)
        except (ValueError, UnknownSymbol) as exc:
            raise Rejected(f"not sent: {exc}", broker=BROKER) from exc
        self._all_sessions()
        with self._lock:
            session = self._active
            # Remember where it went before sending: an unknown outcome is looked up there first.
            self._homes[req.client_order_id] = session
        result = self._call(session, method, params, sends_order=True, order_ref=req.client_order_id)
        return _parsed(_order_of_answer, result, method, command=True)

    def cancel_order(self, client_order_id: str) -> BrokerOrder:
        session, order = self._locate(client_order_id)
        result = self._call(session, "private/cancel", {"order_id": order.broker_order_id}, sends_order=True,
                            order_ref=client_order_id)
        return _parsed(parse.parse_order, result, "private/cancel", command=True)

    def modify_order(self, client_order_id: str, quantity: Decimal | None = None, limit_price: Decimal | None = None,
                     stop_price: Decimal | None = None) -> BrokerOrder:
        session, order = self._locate(client_order_id)
        try:
            params = parse.edit_request(order, quantity, limit_price, stop_price)
        except (ValueError, UnknownSymbol) as exc:
            raise Rejected(f"not sent: {exc}", broker=BROKER) from exc
        result = self._call(session, "private/edit", params, sends_order=True, order_ref=client_order_id)
        return _parsed(_order_of_answer, result, "private/edit", command=True)

    def _locate(self, client_order_id: str) -> tuple[_Session, BrokerOrder]:
        found = self._find(client_order_id)
        if found is None:
            raise OrderNotFound(client_order_id, broker=BROKER)
        return found

    def _find(self, label: str) -> tuple[_Session, BrokerOrder] | None:
        """The one order under ``label`` in any tracked subaccount; None only if every one of them
        answered with an empty list."""
        sessions = self._all_sessions()
        with self._lock:
            home = self._homes.get(label)
        if home is not None:  # ask where it was placed first (same answer, clearer logs)
            sessions.sort(key=lambda s: s is not home)
        found: list[tuple[_Session, BrokerOrder]] = []
        for session in sessions:
            for currency in self._currencies:
                data = self._call(session, "private/get_order_state_by_label", {"currency": currency, "label": label},
                                  sends_order=False)
                for item in _list(data, "private/get_order_state_by_label"):
                    order = _parsed(parse.parse_order, item, "order")
                    if order.client_order_id != label:
                        raise UnexpectedResponse(f"asked for label {label!r}, got an order labelled "
                                                 f"{order.client_order_id!r}", broker=BROKER)
                    found.append((session, order))
        if len(found) > 1:
            ids = ", ".join(o.broker_order_id for _, o in found)
            raise UnexpectedResponse(f"label {label!r} names {len(found)} orders ({ids}); the engine never reuses a "
                                     "label, so one was sent twice: the operator must decide", broker=BROKER)
        return found[0] if found else None

    # -- reads

    def order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        found = self._find(client_order_id)
        return None if found is None else found[1]

    def open_orders(self) -> list[BrokerOrder]:
        orders: dict[str, BrokerOrder] = {}
        for session in self._all_sessions():
            for instrument in INSTRUMENTS:
                data = self._call(session, "private/get_open_orders_by_instrument",
                                  {"instrument_name": instrument, "type": "all"}, sends_order=False)
                for item in _list(data, "private/get_open_orders_by_instrument"):
                    order = _parsed(parse.parse_order, item, "order")
                    orders.setdefault(order.broker_order_id, order)
        return list(orders.values())

    def positions(self) -> list[BrokerPosition]:
        parts: list[BrokerPosition] = []
        for session in self._all_sessions():
            for currency in self._currencies:
                data = self._call(session, "private/get_positions", {"currency": currency, "kind": "future"},
                                  sends_order=False)
                for item in _list(data, "private/get_positions"):
                    position = _parsed(parse.parse_position, item, "position")
                    if position is not None and position.symbol in INSTRUMENTS:
                        parts.append(position)
        return parse.merge_positions(parts)

    def fills_since(self, cursor: str | None) -> tuple[list[BrokerFill], str | None]:
        """Trades after the cursor, which holds the last ``trade_seq`` seen per (account,
        instrument): a trade is never returned twice, pages are followed to the end. A subaccount
        new to the cursor starts from its first trade."""
        seqs = parse.decode_cursor(cursor)
        fills: list[BrokerFill] = []
        seen: set[str] = set()
        for session in self._all_sessions():
            account_id = self._account_id(session)
            for instrument in INSTRUMENTS:
                key = f"{account_id}/{instrument}"
                after = seqs.get(key, 0)
                while True:
                    data = self._call(session, "private/get_user_trades_by_instrument",
                                      {"instrument_name": instrument, "start_seq": after + 1, "count": TRADES_PAGE,
                                       "sorting": "asc", "include_old": True}, sends_order=False)
                    trades, has_more = _parsed(_trades_page, data, "trades page")
                    progressed = False
                    for trade in trades:
                        if trade.seq <= after:
                            continue
                        after, progressed = trade.seq, True
                        if trade.fill.broker_fill_id not in seen:
                            seen.add(trade.fill.broker_fill_id)
                            fills.append(trade.fill)
                    if not has_more:
                        break
                    if not progressed:
                        raise UnexpectedResponse("trades page says has_more but brings nothing newer", broker=BROKER,
                                                 excerpt=excerpt(data))
                if after:
                    seqs[key] = after
        if not fills:
            return [], cursor
        fills.sort(key=lambda f: f.ts_ns)
        return fills, parse.encode_cursor(seqs)

    def account_equity(self) -> Decimal:
        with self._lock:
            session = self._active
        data = self._call(session, "private/get_account_summary", {"currency": self._currencies[0]}, sends_order=False)
        return _parsed(parse.parse_equity, data, "account summary")


def _trades_page(data: Any) -> tuple[list[parse.Trade], bool]:
    if not isinstance(data, dict):
        raise TypeError("trades answer is not an object")
    items, has_more = data["trades"], data.get("has_more", False)
    if not isinstance(items, list) or not isinstance(has_more, bool):
        raise TypeError("trades must be a list and has_more a boolean")
    trades = [parse.parse_trade(item) for item in items]
    trades.sort(key=lambda t: t.seq)
    return trades, has_more


# ---------------------------------------------------------------- market data


class DeribitMarketData:
    def __init__(self, rpc: RpcHttp, ws_url: str | None, *, timeout_s: float, heartbeat_s: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rpc = rpc
        self._ws_url = ws_url
        self._timeout_s = timeout_s
        self._heartbeat_s = heartbeat_s
        self._clock = clock

    def _public(self, method: str, params: Mapping[str, Any]) -> Any:
        reply = self._rpc.get(method, params, access_token=None, sends_order=False)
        if reply.error is not None:
            raise exception_for(reply.error, where=method, command=False, retry_after_s=reply.retry_after_s)
        if reply.auth_refused:
            raise AuthFailed(f"{method}: refused (HTTP {reply.http_status}) although public", broker=BROKER)
        return reply.result

    def server_time_ms(self) -> int:
        return _parsed(parse.int_of, self._public("public/get_time", {}), "server time")

    def historical_bars(self, symbol: str, interval: str, *, after_ts_ns: int = 0, limit: int = 500) -> list[Bar]:
        res = parse.resolution(interval)
        length_ms = parse.interval_ms(interval)
        if limit <= 0:
            return []
        now_ms = self.server_time_ms()
        if after_ts_ns <= 0:
            start_ms = max(0, now_ms - limit * length_ms)
        else:
            start_ms = after_ts_ns // parse.NS_PER_MS + 1
        bars: list[Bar] = []
        while start_ms <= now_ms and len(bars) < limit:
            end_ms = min(now_ms, start_ms + CHART_CHUNK_BARS * length_ms - 1)
            data = self._public("public/get_tradingview_chart_data",
                                {"instrument_name": symbol, "start_timestamp": start_ms, "end_timestamp": end_ms,
                                 "resolution": res})
            chunk = _parsed(lambda d: parse.closed_bars(d, symbol, interval, now_ms=now_ms), data, "chart data")
            for bar in chunk:
                if bar.ts_ns > after_ts_ns and (not bars or bar.ts_ns > bars[-1].ts_ns):
                    bars.append(bar)
            start_ms = end_ms + 1
        return bars[:limit]

    def stream_bars(self, symbol: str, interval: str, *, after_index: int | None) -> Iterator[Bar | None]:
        if not self._ws_url:
            raise NotSupported(BROKER, "streaming bars", "configure ws_url")
        channel = parse.chart_channel(symbol, interval)  # NotSupported for an interval Deribit lacks
        return self._stream(self._ws_url, channel, symbol, interval, after_index)

    def _stream(self, ws_url: str, channel: str, symbol: str, interval: str,
                after_index: int | None) -> Iterator[Bar | None]:
        closer = parse.ClosedBars(after_index)
        with open_session(ws_url, self._timeout_s) as ws:
            ws.call("public/set_heartbeat", {"interval": self._heartbeat_s}, timeout_s=self._timeout_s)
            subscribed = ws.call("public/subscribe", {"channels": [channel]}, timeout_s=self._timeout_s)
            if not isinstance(subscribed, list) or channel not in subscribed:
                raise UnexpectedResponse(f"public/subscribe did not confirm {channel}", broker=BROKER,
                                         excerpt=excerpt(subscribed))
            # Subscribed first, then replay: a bar closing meanwhile is both replayed and streamed,
            # and ClosedBars drops the second copy; none falls in between.
            if after_index is not None:
                after_ts = after_index * interval_ns(interval)
                while True:
                    page = self.historical_bars(symbol, interval, after_ts_ns=after_ts, limit=BACKFILL_PAGE)
                    for bar in page:
                        closer.replayed(bar)
                        yield bar
                    if len(page) < BACKFILL_PAGE:
                        break
                    after_ts = page[-1].ts_ns
            silence_limit_s = 2 * self._heartbeat_s + self._timeout_s
            last_heard = last_yield = self._clock()
            while True:
                message = ws.next(STREAM_POLL_S)
                now = self._clock()
                if message is None:
                    if now - last_heard > silence_limit_s:
                        raise Retryable(f"no heartbeat or data for {silence_limit_s:g}s on {channel}", broker=BROKER)
                else:
                    last_heard = now
                    version = self._on_message(ws, message, channel, symbol, interval)
                    closed = None if version is None else closer.update(version)
                    if closed is not None:
                        last_yield = now
                        yield closed
                        continue
                if now - last_yield >= STREAM_KEEPALIVE_S:
                    last_yield = now
                    yield None

    @staticmethod
    def _on_message(ws: Any, message: dict[str, Any], channel: str, symbol: str, interval: str) -> Bar | None:
        method = message.get("method")
        params = message.get("params")
        if method == "heartbeat":
            if isinstance(params, dict) and params.get("type") == "test_request":
                ws.send("public/test", {})  # or the venue disconnects us
            return None
        if method == "subscription":
            if not isinstance(params, dict) or params.get("channel") != channel:
                return None
            return _parsed(lambda d: parse.parse_chart_update(d, symbol, interval), params.get("data"), "chart update")
        if "id" in message:  # the answer to one of our public/test calls
            error = answer_error(message)
            if error is not None:
                raise exception_for(error, where="WebSocket", command=False)
        return None


# ---------------------------------------------------------------- wiring


class DeribitFacade(BrokerFacade):
    """The common facade plus Deribit's session switch (callers that know they hold a Deribit
    account may move its new orders to another subaccount)."""

    def switch_subaccount(self, subject_id: int) -> int:
        """See ``DeribitExecution.switch_subaccount``."""
        execution = self._require_execution("switch_subaccount")
        assert isinstance(execution, DeribitExecution)
        return execution.switch_subaccount(subject_id)


def _base_url(config: Mapping[str, Any]) -> str:
    base_url = config.get("base_url")
    if not isinstance(base_url, str) or not base_url:
        raise ValueError("deribit broker config needs 'base_url', e.g. https://www.deribit.com/api/v2")
    return base_url


def _optional_positive_int(config: Mapping[str, Any], key: str) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"deribit broker config: {key!r} must be a positive integer")
    return value


def _session_name(config: Mapping[str, Any]) -> str | None:
    value = config.get("session_name")
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 64:
        raise ValueError("deribit broker config: 'session_name' must be a string of 1..64 characters")
    return value


def _authenticator(config: Mapping[str, Any], rpc: RpcHttp) -> DeribitAuthenticator:
    account = config.get("account")
    if not isinstance(account, str) or not account:
        raise ValueError("deribit broker config needs 'account' (the secrets key) to authenticate")
    secrets = load_secrets(account, config, CREDENTIALS)
    return DeribitAuthenticator(TokenCalls(rpc), secrets, session_name=_session_name(config),
                                subject_id=_optional_positive_int(config, "subject_id"))


def authenticator(config: Mapping[str, Any], *, transport: httpx.BaseTransport | None = None) -> Authenticator:
    """The account's authenticator (for the tokens service); its HTTP client lives as long as it."""
    base_url = _base_url(config)
    client = make_client(base_url, float(config.get("timeout_s", DEFAULT_TIMEOUT_S)), transport)
    return _authenticator(config, RpcHttp(client, base_url))


def build(config: Mapping[str, Any], *, transport: httpx.BaseTransport | None = None,
          tokens: TokenSource | None = None) -> DeribitFacade:
    base_url = _base_url(config)
    ws_url = config.get("ws_url")
    if ws_url is not None and (not isinstance(ws_url, str) or not ws_url):
        raise ValueError("deribit broker config: 'ws_url' must be a URL such as wss://www.deribit.com/ws/api/v2")
    account = config.get("account")
    if account is not None and (not isinstance(account, str) or not account):
        raise ValueError("deribit broker config: 'account' must be a non-empty string")
    timeout_s = float(config.get("timeout_s", DEFAULT_TIMEOUT_S))
    heartbeat_s = _optional_positive_int(config, "heartbeat_s") or DEFAULT_HEARTBEAT_S
    tracked = config.get("track_subject_ids") or ()
    if not isinstance(tracked, (list, tuple)) or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0
                                                     for s in tracked):
        raise ValueError("deribit broker config: 'track_subject_ids' must be a list of positive integers")
    client = make_client(base_url, timeout_s, transport)
    try:
        rpc = RpcHttp(client, base_url)
        execution = None
        if account:
            source = tokens if tokens is not None else LocalTokenSource(_authenticator(config, rpc))
            execution = DeribitExecution(rpc, source, TokenCalls(rpc), track_subject_ids=tuple(tracked))
        market_data = DeribitMarketData(rpc, ws_url, timeout_s=timeout_s, heartbeat_s=heartbeat_s)
    except BaseException:
        client.close()
        raise
    return DeribitFacade(
        name=BROKER,
        account=account,
        registry=StaticRegistry(BROKER, CAPABILITIES if account else DATA_ONLY),
        symbols=symbol_adapter(BROKER),
        execution=execution,
        market_data=market_data,
        on_close=client.close,
    )
