"""The Deribit API v2 dialect: the simulator's venue as JSON-RPC 2.0 over HTTP and WebSocket.

Start with ``--dialect deribit --symbols BTC-PERPETUAL`` (canonical = Deribit's instrument name;
books that are not Deribit instruments are refused as unknown instruments).

Endpoints
=========
``GET  /deribit/api/v2/<scope>/<method>?<params>``  Deribit's documented HTTP form; params are query
                                                   strings; private methods want ``Authorization: Bearer``.
``POST /deribit/api/v2``                          a JSON-RPC body ``{"jsonrpc": "2.0", "id", "method",
                                                   "params"}``: any method (token requests come this way).
``WS   /deribit/ws/api/v2``                       JSON-RPC over the WebSocket: any method; private ones
                                                   take ``params.access_token`` or the connection's
                                                   ``public/auth``; ``public/subscribe`` chart channels;
                                                   ``public/set_heartbeat``.
``POST /deribit/admin/rate-limit``                ``{"count": n, "scope": "private" | "ws"}``: the next n
                                                   private calls (any transport), or the next n WebSocket
                                                   requests of any kind, answer 10028; on a WebSocket
                                                   that ends the session (the server closes it).

Credentials and accounts
========================
``public/auth`` with ``client_id`` ``sim-client`` / ``client_secret`` ``sim-secret`` gives a token for the FIRST
account of ``--accounts`` (Deribit account id 1, the main account). ``public/exchange_token
{refresh_token, subject_id: N}`` gives one for the N-th account of ``--accounts`` (1-based; account id
N; ``--accounts SIM1,SIM2``: subject 2 is SIM2). ``public/fork_token {refresh_token, session_name}``
keeps the account and names the session (``scope`` says ``session:<name>``). Orders belong to the
account, whichever session placed them. Refresh tokens rotate on ``grant_type=refresh_token``;
``fork_token``/``exchange_token`` do not consume theirs (*unconfirmed* on the real venue). Access
tokens live ``--token-ttl-s``; a stale one (``POST /v1/admin/expire-tokens``) answers 13009.

Wire
====
Numbers are JSON numbers (Decimals written exactly). ``amount`` is USD: a multiple of the contract
size 10 (one sim contract = 10 USD); ``contracts`` is accepted too. Labels (≤ 64 characters) are NOT
unique, as on Deribit: a repeated label makes a second order (the venue's own client id gets a
private suffix; ``/v1/admin/stats`` ``submissions`` still counts it under the label, so a test sees the
duplicate). ``trade_seq`` is the venue's fill sequence; trades come from the venue's truth, so the fill
feed's ``delay_fill``/``duplicate_fill`` faults do not apply here. Errors are ``{"error": {code,
message, data}}`` with HTTP 400 (429 for 10028; the real statuses are *unconfirmed*): 13004
invalid_credentials, 13009 unauthorized, 10028 too_many_requests, 10004 order_not_found, 10043
price_wrong_tick, 11044 not_open_order, -32602 invalid params (``data: {param, reason}``), -32601
method not found, -32600 invalid request (batches, requests without id). Fault-plan call names:
buy/sell ``submit``, cancel/cancel_by_label ``cancel``, edit ``modify``, get_order_state(_by_label)
``lookup``, get_open_orders_by_instrument ``orders``, get_positions ``positions``,
get_user_trades_by_instrument ``fills``, get_tradingview_chart_data ``bars``, token methods and the
POST form (which the adapter uses for token requests only) ``auth``.

Bars
====
A chart tick is the bar's open time (ms). ``public/get_time`` is the venue's clock: the close of its
latest bar. ``public/get_tradingview_chart_data`` answers the bars with ticks in ``[start, end]``
plus, like the real venue, the bar still forming (the tick after the latest, flat at the last
close, volume 0) when ``end`` reaches it. ``chart.trades.<instrument>.<res>`` sends, for each bar
that closes, a forming version (open price throughout, half the volume), the previous bar's final
version again (a stale repeat), then the closed bar's final version; on subscription, the latest
bar. A client must yield a bar only once a newer tick arrives, and never twice.

Heartbeats: after ``public/set_heartbeat {interval}`` the server sends ``{"method": "heartbeat",
"params": {"type": "test_request"}}`` every interval; a client that has not called ``public/test``
within the interval after one is disconnected. Deviation: the real minimum interval is 10 s; the
simulator accepts 1 s so tests run fast.
"""
from __future__ import annotations

import json
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from websockets.exceptions import ConnectionClosed

from brokers.base import Bar, OrderRequest
from brokers.deribit.rpc import dumps
from brokers.errors import UnknownSymbol
from brokers.instruments import instrument as instrument_info
from brokers.sim.dialects import Answer, BadRequest, Dialect, HttpRoute, Request, json_answer
from brokers.sim.venue import OrderRejected, UnknownOrder, VenueOrder
from brokers.symbols import deribit as deribit_symbols
from schema.enums import OrderStatus, OrderType, Side, TimeInForce

if TYPE_CHECKING:
    from brokers.sim.server import SimApp

PREFIX = "/deribit"
API_PATH = f"{PREFIX}/api/v2"
WS_PATH = f"{PREFIX}/ws/api/v2"
CLIENT_ID = "sim-client"
CLIENT_SECRET = "sim-secret"  # noqa: S105 - the simulator's published demo credential
CONTRACT_SIZE = Decimal(10)
MAX_LABEL_CHARS = 64
MIN_HEARTBEAT_S = 1
API_VERSION = "1.2.26"
DEFAULT_TRADES_COUNT = 10
MAX_TRADES_COUNT = 1000
MAX_CHART_BARS = 10_000
WS_RECV_POLL_S = 0.2
PUSH_TICK_S = 0.1
PUSHER_JOIN_S = 2.0
NS_PER_MS = 1_000_000
DUPLICATE_SEPARATOR = "\x1f"
"""Between a repeated label and its number in the venue's own client id."""

# JSON-RPC and Deribit error codes
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
TOO_MANY_REQUESTS = 10028
ORDER_NOT_FOUND = 10004
PRICE_WRONG_TICK = 10043
NOT_OPEN_ORDER = 11044
UNAUTHORIZED = 13009
INVALID_CREDENTIALS = 13004
FORBIDDEN = 13021

RESOLUTIONS: Mapping[str, str] = {
    "1m": "1", "3m": "3", "5m": "5", "10m": "10", "15m": "15", "30m": "30",
    "1h": "60", "2h": "120", "3h": "180", "6h": "360", "12h": "720", "1d": "1D",
}
ORDER_TYPES: Mapping[str, OrderType] = {
    "market": OrderType.MARKET, "limit": OrderType.LIMIT,
    "stop_market": OrderType.STOP, "stop_limit": OrderType.STOP_LIMIT,
}
_ORDER_TYPE_NAMES = {v: k for k, v in ORDER_TYPES.items()}
TIME_IN_FORCE: Mapping[str, TimeInForce] = {
    "good_til_cancelled": TimeInForce.GTC, "good_til_day": TimeInForce.DAY,
    "immediate_or_cancel": TimeInForce.IOC,
}
_TIME_IN_FORCE_NAMES = {v: k for k, v in TIME_IN_FORCE.items()}


class RpcFailure(Exception):
    """An error answer; ``ends_session``: on a WebSocket, close it after answering."""

    def __init__(self, code: int, message: str, data: Any = None, *, ends_session: bool = False) -> None:
        super().__init__(f"{code} {message}")
        self.code, self.message, self.data, self.ends_session = code, message, data, ends_session

    def error(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def _invalid(param: str, reason: str) -> RpcFailure:
    return RpcFailure(INVALID_PARAMS, "Invalid params", {"param": param, "reason": reason})


# ---------------------------------------------------------------- per-simulator state


class _State:
    """What the dialect adds to the venue: label bookkeeping (under ``app.lock``) and the
    rate-limit knobs (under ``lock``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.limit_private = 0
        self.limit_ws = 0
        self.by_label: dict[tuple[str, str], list[str]] = {}
        """(account, label) → the venue's client ids of its orders, oldest first."""
        self.label_of: dict[tuple[str, str], str] = {}
        """(account, venue client id) → label."""
        self.by_order_id: dict[str, tuple[str, str]] = {}
        """order_id → (account, venue client id)."""
        self.unlabelled = 0

    def take(self, scope: str) -> bool:
        with self.lock:
            if scope == "ws" and self.limit_ws > 0:
                self.limit_ws -= 1
                return True
            if scope == "private" and self.limit_private > 0:
                self.limit_private -= 1
                return True
            return False


_STATES: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def _state(app: SimApp) -> _State:
    """The dialect's state of one simulator (a process may hold several in tests)."""
    with _STATES_LOCK:
        state = _STATES.get(app)
        if state is None:
            state = _STATES[app] = _State()
        return state


def _subject(account: str, session: str) -> str:
    return json.dumps([account, session])


def _account_session(subject: str) -> tuple[str, str]:
    account, session = json.loads(subject)
    return account, session


# ---------------------------------------------------------------- call context and params


@dataclass
class _WsConn:
    connection: Any
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: threading.Event = field(default_factory=threading.Event)
    access_token: str | None = None
    heartbeat_s: int | None = None
    next_test_at: float = 0.0
    test_deadline: float | None = None
    charts: dict[str, _Chart] = field(default_factory=dict)
    """channel → what was sent (under ``app.lock``)."""

    def send(self, payload: Any) -> bool:
        text = dumps(payload)
        with self.send_lock:
            try:
                self.connection.send(text)
            except (ConnectionClosed, OSError, RuntimeError):
                self.closed.set()
                return False
        return True

    def close(self, code: int, reason: str) -> None:
        self.closed.set()
        try:
            self.connection.close(code, reason)
        except Exception:  # noqa: BLE001 - closing a connection already gone
            pass


@dataclass
class _Chart:
    symbol: str
    sent: int
    last_final: Bar | None = None


@dataclass(frozen=True)
class _Ctx:
    transport: str
    bearer: str | None = None
    conn: _WsConn | None = None
    account: str = ""
    session: str = ""


def _p_str(params: Mapping[str, Any], name: str, *, required: bool = True, default: str | None = None) -> str | None:
    value = params.get(name)
    if value is None:
        if required:
            raise _invalid(name, "required")
        return default
    if not isinstance(value, str):
        raise _invalid(name, "must be a string")
    return value


def _p_decimal(params: Mapping[str, Any], name: str, *, required: bool) -> Decimal | None:
    value = params.get(name)
    if value is None:
        if required:
            raise _invalid(name, "required")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
        raise _invalid(name, "must be a number")
    try:
        result = Decimal(value)
    except InvalidOperation:
        raise _invalid(name, "must be a number") from None
    if not result.is_finite():
        raise _invalid(name, "must be finite")
    return result


def _p_int(params: Mapping[str, Any], name: str, *, required: bool, default: int | None = None) -> int | None:
    value = params.get(name)
    if value is None:
        if required:
            raise _invalid(name, "required")
        return default
    if isinstance(value, bool):
        raise _invalid(name, "must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    raise _invalid(name, "must be an integer")


def _p_bool(params: Mapping[str, Any], name: str, default: bool) -> bool:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise _invalid(name, "must be true or false")


def _ms(ns: int) -> int:
    return ns // NS_PER_MS


# ---------------------------------------------------------------- instruments and shapes


def _instrument(app: SimApp, name: str | None, param: str = "instrument_name") -> str:
    try:
        symbol = deribit_symbols().to_canonical(name or "")
    except UnknownSymbol:
        raise _invalid(param, f"unknown instrument {str(name)[:40]!r}") from None
    if symbol not in app.books:
        raise _invalid(param, f"instrument {symbol} is not served by this simulator")
    return symbol


def _currency(symbol: str) -> str:
    return symbol.split("-", 1)[0]


def _check_currency(params: Mapping[str, Any], *, required: bool) -> str | None:
    currency = _p_str(params, "currency", required=required)
    if currency is not None and currency not in ("BTC", "ETH", "USDC", "USDT", "EURR", "any"):
        raise _invalid("currency", f"unknown currency {currency[:10]!r}")
    return currency


def _tick(symbol: str) -> Decimal:
    return instrument_info(symbol).tick_size


def _order_json(order: VenueOrder, label: str) -> dict[str, Any]:
    stop = order.order_type in (OrderType.STOP, OrderType.STOP_LIMIT)
    if order.status is OrderStatus.ACCEPTED:
        state = "untriggered" if stop and not order.triggered else "open"
    elif order.status is OrderStatus.FILLED:
        state = "filled"
    elif order.status is OrderStatus.REJECTED:
        state = "rejected"
    else:  # CANCELLED, EXPIRED (an IOC the next bar did not fill)
        state = "cancelled"
    amount = order.quantity * CONTRACT_SIZE
    data: dict[str, Any] = {
        "order_id": order.order_id,
        "order_state": state,
        "order_type": _ORDER_TYPE_NAMES[order.order_type],
        "direction": order.side.value,
        "instrument_name": order.symbol,
        "amount": amount,
        "contracts": order.quantity,
        "filled_amount": order.filled_quantity * CONTRACT_SIZE,
        "average_price": order.average_price if order.average_price is not None else Decimal(0),
        "price": order.limit_price if order.limit_price is not None else "market_price",
        "label": label,
        "time_in_force": _TIME_IN_FORCE_NAMES[order.time_in_force],
        "reduce_only": False,
        "post_only": False,
        "api": True,
        "web": False,
        "is_liquidation": False,
        "replaced": order.updated_ns != order.created_ns and order.status is OrderStatus.ACCEPTED,
        "max_show": amount,
        "creation_timestamp": _ms(order.created_ns),
        "last_update_timestamp": _ms(order.updated_ns),
    }
    if stop:
        data.update({"trigger_price": order.stop_price, "trigger": "last_price", "triggered": order.triggered})
    if order.status is OrderStatus.CANCELLED:
        data["cancel_reason"] = "user_request"
    elif order.status is OrderStatus.EXPIRED:
        data["cancel_reason"] = "immediate_or_cancel"
    elif order.status is OrderStatus.REJECTED and order.reason:
        data["reject_reason"] = order.reason
    return data


def _label_of(state: _State, account: str, venue_cid: str) -> str:
    return state.label_of.get((account, venue_cid), venue_cid)


def _token_result(issued: Any, account_index: int, session: str) -> dict[str, Any]:
    scope = "account:read_write trade:read_write wallet:read"
    scope += f" session:{session}" if session else " connection"
    if account_index == 0:
        scope += " mainaccount"
    return {"access_token": issued.access_token, "refresh_token": issued.refresh_token,
            "expires_in": issued.expires_in_s, "token_type": "bearer", "scope": scope, "enabled_features": []}


def _now_ms(app: SimApp) -> int:
    """The venue's clock: the close of its latest bar (sim time runs at ``--pace``)."""
    with app.lock:
        lasts = [b.last.ts_ns for b in app.books.values() if b.last is not None]
    if not lasts:
        return time.time_ns() // NS_PER_MS
    return _ms(max(lasts) + app.interval_ns)


# ---------------------------------------------------------------- public methods


def _public_auth(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> Any:
    grant = _p_str(params, "grant_type")
    if grant == "client_credentials":
        if params.get("client_id") != CLIENT_ID or params.get("client_secret") != CLIENT_SECRET:
            raise RpcFailure(INVALID_CREDENTIALS, "invalid_credentials")
        session = ""
        scope = params.get("scope")
        if isinstance(scope, str):
            for part in scope.split():
                if part.startswith("session:"):
                    session = part[len("session:"):]
        account = app.config.accounts[0]
        issued = app.tokens.issue(_subject(account, session))
    elif grant == "refresh_token":
        issued = app.tokens.refresh(_p_str(params, "refresh_token") or "", rotate=True)
        if issued is None:
            raise RpcFailure(UNAUTHORIZED, "unauthorized", {"reason": "invalid or expired refresh token"})
        account, session = _account_session(issued.subject)
    else:
        raise _invalid("grant_type", "client_credentials or refresh_token")
    if ctx.conn is not None:
        ctx.conn.access_token = issued.access_token  # the connection is authorised from now on
    app.log("deribit_auth", grant_type=grant, account=account, session=session)
    return _token_result(issued, app.config.accounts.index(account), session)


def _parent(app: SimApp, params: Mapping[str, Any]) -> tuple[str, str]:
    """(account, session) of a live refresh token, without consuming it."""
    issued = app.tokens.refresh(_p_str(params, "refresh_token") or "", rotate=False)
    if issued is None:
        raise RpcFailure(UNAUTHORIZED, "unauthorized", {"reason": "invalid or expired refresh token"})
    return _account_session(issued.subject)


def _fork_token(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> Any:
    session = _p_str(params, "session_name") or ""
    if not session or len(session) > 64:
        raise _invalid("session_name", "1..64 characters")
    account, _ = _parent(app, params)
    issued = app.tokens.issue(_subject(account, session))
    app.log("deribit_fork_token", account=account, session=session)
    return _token_result(issued, app.config.accounts.index(account), session)


def _exchange_token(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> Any:
    subject_id = _p_int(params, "subject_id", required=True)
    assert subject_id is not None
    _parent(app, params)
    accounts = app.config.accounts
    if not 1 <= subject_id <= len(accounts):
        raise RpcFailure(FORBIDDEN, "forbidden", {"reason": f"no subaccount {subject_id}"})
    account = accounts[subject_id - 1]
    issued = app.tokens.issue(_subject(account, ""))
    app.log("deribit_exchange_token", account=account, subject_id=subject_id)
    return _token_result(issued, subject_id - 1, "")


def _get_time(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> Any:
    return _now_ms(app)


def _test(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> Any:
    if ctx.conn is not None:
        with ctx.conn.lock:
            ctx.conn.test_deadline = None
    return {"version": API_VERSION}


def _ws_only(ctx: _Ctx, method: str) -> _WsConn:
    if ctx.conn is None:
        raise RpcFailure(METHOD_NOT_FOUND, "Method not found", {"reason": f"{method} is available over WebSocket only"})
    return ctx.conn


def _set_heartbeat(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> Any:
    conn = _ws_only(ctx, "public/set_heartbeat")
    interval = _p_int(params, "interval", required=True)
    assert interval is not None
    if interval < MIN_HEARTBEAT_S:
        raise _invalid("interval", f"at least {MIN_HEARTBEAT_S} (Deribit: 10)")
    with conn.lock:
        conn.heartbeat_s = interval
        conn.next_test_at = time.monotonic() + interval
        conn.test_deadline = None
    return "ok"


def _disable_heartbeat(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> Any:
    conn = _ws_only(ctx, "public/disable_heartbeat")
    with conn.lock:
        conn.heartbeat_s = None
        conn.test_deadline = None
    return "ok"


def _channels(params: Mapping[str, Any]) -> list[str]:
    channels = params.get("channels")
    if not isinstance(channels, list) or not channels or not all(isinstance(c, str) for c in channels):
        raise _invalid("channels", "a non-empty list of channel names")
    return channels


def _subscribe(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> Any:
    conn = _ws_only(ctx, "public/subscribe")
    channels = _channels(params)
    wanted = RESOLUTIONS.get(app.config.interval)
    charts = {}
    for channel in channels:
        parts = channel.split(".")
        if len(parts) != 4 or parts[:2] != ["chart", "trades"]:
            raise _invalid("channels", f"this simulator serves chart.trades channels only, not {channel[:60]!r}")
        symbol = _instrument(app, parts[2], "channels")
        if parts[3] != wanted:
            raise _invalid("channels", f"resolution {parts[3][:8]!r}: this simulator makes {wanted} bars")
        charts[channel] = symbol
    with app.lock:
        for channel, symbol in charts.items():
            if channel not in conn.charts:
                book = app.books[symbol]
                # The latest bar goes out first (the real channel starts with the bar forming).
                conn.charts[channel] = _Chart(symbol, sent=book.last_index - 1)
        app.new_bar.notify_all()
    return channels


def _unsubscribe(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> Any:
    conn = _ws_only(ctx, "public/unsubscribe")
    channels = _channels(params)
    with app.lock:
        for channel in channels:
            conn.charts.pop(channel, None)
    return channels


def _get_instrument(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> Any:
    symbol = _instrument(app, _p_str(params, "instrument_name"))
    return {"instrument_name": symbol, "kind": "future", "settlement_period": "perpetual", "is_active": True,
            "base_currency": _currency(symbol), "quote_currency": "USD", "settlement_currency": _currency(symbol),
            "contract_size": CONTRACT_SIZE, "min_trade_amount": CONTRACT_SIZE, "tick_size": _tick(symbol),
            "instrument_id": 1}


def _chart_data(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> Any:
    symbol = _instrument(app, _p_str(params, "instrument_name"))
    start_ms = _p_int(params, "start_timestamp", required=True)
    end_ms = _p_int(params, "end_timestamp", required=True)
    res = _p_str(params, "resolution")
    assert start_ms is not None and end_ms is not None
    if res not in RESOLUTIONS.values():
        raise _invalid("resolution", f"one of {', '.join(RESOLUTIONS.values())}")
    if res != RESOLUTIONS.get(app.config.interval):
        raise _invalid("resolution", f"this simulator makes {RESOLUTIONS.get(app.config.interval)} bars only")
    if end_ms < start_ms:
        raise _invalid("end_timestamp", "before start_timestamp")
    with app.lock:
        book = app.books[symbol]
        bars = [b for b in book.after_ts(start_ms * NS_PER_MS - 1, MAX_CHART_BARS) if _ms(b.ts_ns) <= end_ms]
        last = book.last
    rows = [(_ms(b.ts_ns), b.open, b.high, b.low, b.close, b.volume) for b in bars]
    if last is not None:
        forming_ms = _ms(last.ts_ns + app.interval_ns)
        if start_ms <= forming_ms <= end_ms and len(rows) < MAX_CHART_BARS:
            rows.append((forming_ms, last.close, last.close, last.close, last.close, Decimal(0)))
    columns: dict[str, Any] = {name: [row[i] for row in rows]
                               for i, name in enumerate(("ticks", "open", "high", "low", "close", "volume"))}
    columns["cost"] = [row[5] * row[4] for row in rows]
    columns["status"] = "ok" if rows else "no_data"
    return columns


# ---------------------------------------------------------------- private methods


def _side(method: str) -> Side:
    return Side.BUY if method.endswith("buy") else Side.SELL


def _quantity(params: Mapping[str, Any], *, required: bool) -> Decimal | None:
    """Whole contracts from ``amount`` (USD) and/or ``contracts``."""
    amount = _p_decimal(params, "amount", required=False)
    contracts = _p_decimal(params, "contracts", required=False)
    if amount is None and contracts is None:
        if required:
            raise _invalid("amount", "amount or contracts is required")
        return None
    if amount is not None:
        if amount <= 0 or amount % CONTRACT_SIZE != 0:
            raise _invalid("amount", f"must be a positive multiple of the contract size {CONTRACT_SIZE}")
        from_amount = amount / CONTRACT_SIZE
        if contracts is not None and contracts != from_amount:
            raise _invalid("contracts", "does not match amount")
        return from_amount.quantize(Decimal(1))
    assert contracts is not None
    if contracts <= 0 or contracts != contracts.to_integral_value():
        raise _invalid("contracts", "must be a positive whole number")
    return contracts.quantize(Decimal(1))


def _check_price(symbol: str, name: str, price: Decimal) -> None:
    if price <= 0:
        raise _invalid(name, "must be positive")
    if price % _tick(symbol) != 0:
        raise RpcFailure(PRICE_WRONG_TICK, "price_wrong_tick",
                         {"param": name, "reason": f"{price} is not a multiple of the tick {_tick(symbol)}"})


def _place(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any], side: Side) -> Any:
    symbol = _instrument(app, _p_str(params, "instrument_name"))
    quantity = _quantity(params, required=True)
    type_name = _p_str(params, "type", required=False, default="limit")
    order_type = ORDER_TYPES.get(type_name or "")
    if order_type is None:
        raise _invalid("type", f"one of {', '.join(ORDER_TYPES)}")
    label = _p_str(params, "label", required=False, default="") or ""
    if len(label) > MAX_LABEL_CHARS:
        raise _invalid("label", f"at most {MAX_LABEL_CHARS} characters")
    tif_name = _p_str(params, "time_in_force", required=False, default="good_til_cancelled")
    time_in_force = TIME_IN_FORCE.get(tif_name or "")
    if time_in_force is None:
        raise _invalid("time_in_force", f"the simulator supports {', '.join(TIME_IN_FORCE)}")
    for flag in ("reduce_only", "post_only"):
        if _p_bool(params, flag, False):
            raise _invalid(flag, "not simulated; send false")
    price = _p_decimal(params, "price", required=order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT))
    stop = order_type in (OrderType.STOP, OrderType.STOP_LIMIT)
    trigger_price = _p_decimal(params, "trigger_price", required=stop)
    if stop and _p_str(params, "trigger") != "last_price":
        raise _invalid("trigger", "the simulator's stops trigger on last_price")
    limit_price = price if order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT) else None
    stop_price = trigger_price if stop else None
    for name, value in (("price", limit_price), ("trigger_price", stop_price)):
        if value is not None:
            _check_price(symbol, name, value)
    assert quantity is not None
    with app.lock:
        if label:
            earlier = state.by_label.setdefault((ctx.account, label), [])
            venue_cid = label if not earlier else f"{label}{DUPLICATE_SEPARATOR}{len(earlier) + 1}"
        else:
            state.unlabelled += 1
            venue_cid = f"{DUPLICATE_SEPARATOR}unlabelled{state.unlabelled}"
        request = OrderRequest(venue_cid, symbol, side, order_type, quantity, limit_price=limit_price,
                               stop_price=stop_price, time_in_force=time_in_force)
        try:
            order = app.venue.submit(ctx.account, request)
            rejection = None
        except OrderRejected as exc:
            order, rejection = exc.order, exc.reason
        finally:
            if venue_cid != label and label:
                # A repeated label: count it under the label, where a test looks for duplicates.
                venue = app.venue
                venue.submissions[label] = venue.submissions.get(label, 0) + venue.submissions.pop(venue_cid, 0)
        if order is not None:
            if label:
                state.by_label[(ctx.account, label)].append(venue_cid)
            state.label_of[(ctx.account, venue_cid)] = label
            state.by_order_id[order.order_id] = (ctx.account, venue_cid)
    if rejection is not None:
        app.log("order_rejected", level="warning", dialect="deribit", account=ctx.account, label=label,
                reason=rejection)
        raise RpcFailure(INVALID_PARAMS, "Invalid params", {"reason": rejection})
    assert order is not None
    app.log("order_accepted", dialect="deribit", account=ctx.account, client_order_id=label, order_id=order.order_id,
            symbol=symbol, side=side, order_type=order_type, quantity=quantity, duplicate_label=venue_cid != label)
    return {"order": _order_json(order, label), "trades": []}


def _buy(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> Any:
    return _place(app, state, ctx, params, Side.BUY)


def _sell(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> Any:
    return _place(app, state, ctx, params, Side.SELL)


def _owned(state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> str:
    """The venue client id of ``params.order_id`` if it is the caller's; 10004 otherwise."""
    order_id = _p_str(params, "order_id") or ""
    owner = state.by_order_id.get(order_id)
    if owner is None or owner[0] != ctx.account:
        raise RpcFailure(ORDER_NOT_FOUND, "order_not_found", {"order_id": order_id[:40]})
    return owner[1]


def _cancel(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> Any:
    with app.lock:
        venue_cid = _owned(state, ctx, params)
        try:
            order = app.venue.cancel(ctx.account, venue_cid)
        except UnknownOrder:
            raise RpcFailure(ORDER_NOT_FOUND, "order_not_found") from None
        except OrderRejected as exc:
            raise RpcFailure(NOT_OPEN_ORDER, "not_open_order", {"reason": exc.reason}) from None
        label = _label_of(state, ctx.account, venue_cid)
    app.log("order_cancelled", dialect="deribit", account=ctx.account, client_order_id=label, order_id=order.order_id)
    return _order_json(order, label)


def _cancel_by_label(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> Any:
    label = _p_str(params, "label") or ""
    _check_currency(params, required=False)
    cancelled = 0
    with app.lock:
        for venue_cid in state.by_label.get((ctx.account, label), []):
            order = app.venue.order_by_client_id(ctx.account, venue_cid)
            if order is not None and order.is_working:
                app.venue.cancel(ctx.account, venue_cid)
                cancelled += 1
    return cancelled


def _edit(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> Any:
    quantity = _quantity(params, required=True)
    price = _p_decimal(params, "price", required=False)
    trigger_price = _p_decimal(params, "trigger_price", required=False)
    with app.lock:
        venue_cid = _owned(state, ctx, params)
        current = app.venue.order_by_client_id(ctx.account, venue_cid)
        assert current is not None
        if price is not None and current.limit_price is None:
            raise _invalid("price", f"a {_ORDER_TYPE_NAMES[current.order_type]} order has no price")
        if trigger_price is not None and current.stop_price is None:
            raise _invalid("trigger_price", f"a {_ORDER_TYPE_NAMES[current.order_type]} order has no trigger")
        for name, value in (("price", price), ("trigger_price", trigger_price)):
            if value is not None:
                _check_price(current.symbol, name, value)
        try:
            order = app.venue.modify(ctx.account, venue_cid, quantity=quantity, limit_price=price,
                                     stop_price=trigger_price)
        except UnknownOrder:
            raise RpcFailure(ORDER_NOT_FOUND, "order_not_found") from None
        except OrderRejected as exc:
            if exc.order is not None and not exc.order.is_working:
                raise RpcFailure(NOT_OPEN_ORDER, "not_open_order", {"reason": exc.reason}) from None
            raise RpcFailure(INVALID_PARAMS, "Invalid params", {"reason": exc.reason}) from None
        label = _label_of(state, ctx.account, venue_cid)
    app.log("order_modified", dialect="deribit", account=ctx.account, client_order_id=label, order_id=order.order_id,
            quantity=order.quantity, limit_price=order.limit_price, stop_price=order.stop_price)
    return {"order": _order_json(order, label), "trades": []}


def _get_order_state(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> Any:
    with app.lock:
        venue_cid = _owned(state, ctx, params)
        order = app.venue.order_by_client_id(ctx.account, venue_cid)
        assert order is not None
        return _order_json(order, _label_of(state, ctx.account, venue_cid))


def _get_order_state_by_label(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> Any:
    currency = _check_currency(params, required=True)
    label = _p_str(params, "label") or ""
    found = []
    with app.lock:
        for venue_cid in state.by_label.get((ctx.account, label), []):
            order = app.venue.order_by_client_id(ctx.account, venue_cid)
            if order is not None and currency in (_currency(order.symbol), "any"):
                found.append(_order_json(order, label))
    return found


def _open_orders(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> Any:
    symbol = _instrument(app, _p_str(params, "instrument_name"))
    kind = _p_str(params, "type", required=False, default="all")
    kinds = {"all": None, "limit": {OrderType.LIMIT}, "stop_all": {OrderType.STOP, OrderType.STOP_LIMIT},
             "trigger_all": {OrderType.STOP, OrderType.STOP_LIMIT}, "stop_limit": {OrderType.STOP_LIMIT},
             "stop_market": {OrderType.STOP}}
    if kind not in kinds:
        raise _invalid("type", f"one of {', '.join(kinds)}")
    wanted = kinds[kind]
    with app.lock:
        orders = app.venue.open_orders(ctx.account)
        return [_order_json(o, _label_of(state, ctx.account, o.client_order_id)) for o in orders
                if o.symbol == symbol and (wanted is None or o.order_type in wanted)]


def _positions(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> Any:
    currency = _check_currency(params, required=True)
    kind = _p_str(params, "kind", required=False, default="future")
    if kind not in ("future", "option", "spot", "future_combo", "option_combo", "any"):
        raise _invalid("kind", "future, option, … or any")
    if kind not in ("future", "any"):
        return []
    with app.lock:
        positions = app.venue.positions(ctx.account)
        marks = {p.symbol: app.books[p.symbol].last for p in positions if p.symbol in app.books}
    rows = []
    for position in positions:
        if not _is_deribit(position.symbol) or currency not in (_currency(position.symbol), "any"):
            continue
        mark = marks.get(position.symbol)
        rows.append({"instrument_name": position.symbol, "kind": "future",
                     "size": position.quantity * CONTRACT_SIZE,
                     "direction": "buy" if position.quantity > 0 else "sell",
                     "average_price": position.average_price,
                     "mark_price": mark.close if mark is not None else position.average_price,
                     "floating_profit_loss": Decimal(0), "realized_profit_loss": Decimal(0),
                     "total_profit_loss": Decimal(0)})
    return rows


def _is_deribit(symbol: str) -> bool:
    try:
        deribit_symbols().to_canonical(symbol)
    except UnknownSymbol:
        return False
    return True


def _user_trades(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> Any:
    symbol = _instrument(app, _p_str(params, "instrument_name"))
    start_seq = _p_int(params, "start_seq", required=False)
    end_seq = _p_int(params, "end_seq", required=False)
    count = _p_int(params, "count", required=False, default=DEFAULT_TRADES_COUNT)
    assert count is not None
    if not 1 <= count <= MAX_TRADES_COUNT:
        raise _invalid("count", f"1..{MAX_TRADES_COUNT}")
    sorting = _p_str(params, "sorting", required=False, default="default")
    if sorting not in ("asc", "desc", "default"):
        raise _invalid("sorting", "asc, desc or default")
    _p_bool(params, "include_old", False)
    with app.lock:
        fills = [f for f in app.venue.fills_since(ctx.account) if f.symbol == symbol
                 and (start_seq is None or f.seq >= start_seq) and (end_seq is None or f.seq <= end_seq)]
        labels = {f.fill_id: _label_of(state, ctx.account, f.client_order_id) for f in fills}
    if sorting != "asc":  # "default" is newest first (*unconfirmed*)
        fills.reverse()
    page, has_more = fills[:count], len(fills) > count
    trades = [{"trade_id": f.fill_id, "trade_seq": f.seq, "order_id": f.order_id, "label": labels[f.fill_id],
               "instrument_name": f.symbol, "direction": f.side.value, "amount": f.quantity * CONTRACT_SIZE,
               "price": f.price, "index_price": f.price, "mark_price": f.price, "timestamp": _ms(f.ts_ns),
               "state": "filled", "liquidity": "T", "fee": Decimal(0), "fee_currency": _currency(f.symbol),
               "tick_direction": 0, "matching_id": None} for f in page]
    return {"trades": trades, "has_more": has_more}


def _account_summary(app: SimApp, state: _State, ctx: _Ctx, params: Mapping[str, Any]) -> Any:
    currency = _check_currency(params, required=True)
    with app.lock:
        summary = app.venue.summary(ctx.account)
    index = app.config.accounts.index(ctx.account)
    return {"currency": currency, "equity": summary.equity, "balance": summary.equity,
            "margin_balance": summary.equity, "available_funds": summary.equity,
            "realized_pnl": summary.realized_pnl, "id": index + 1, "username": ctx.account,
            "system_name": ctx.account, "type": "main" if index == 0 else "subaccount"}


# ---------------------------------------------------------------- dispatch

Method = Callable[["SimApp", _State, _Ctx, Mapping[str, Any]], Any]


@dataclass(frozen=True)
class _Entry:
    handler: Method
    private: bool
    call: str | None


METHODS: Mapping[str, _Entry] = {
    "public/auth": _Entry(_public_auth, False, "auth"),
    "public/fork_token": _Entry(_fork_token, False, "auth"),
    "public/exchange_token": _Entry(_exchange_token, False, "auth"),
    "public/get_time": _Entry(_get_time, False, None),
    "public/test": _Entry(_test, False, None),
    "public/set_heartbeat": _Entry(_set_heartbeat, False, None),
    "public/disable_heartbeat": _Entry(_disable_heartbeat, False, None),
    "public/subscribe": _Entry(_subscribe, False, None),
    "public/unsubscribe": _Entry(_unsubscribe, False, None),
    "public/get_instrument": _Entry(_get_instrument, False, None),
    "public/get_tradingview_chart_data": _Entry(_chart_data, False, "bars"),
    "private/buy": _Entry(_buy, True, "submit"),
    "private/sell": _Entry(_sell, True, "submit"),
    "private/edit": _Entry(_edit, True, "modify"),
    "private/cancel": _Entry(_cancel, True, "cancel"),
    "private/cancel_by_label": _Entry(_cancel_by_label, True, "cancel"),
    "private/get_order_state": _Entry(_get_order_state, True, "lookup"),
    "private/get_order_state_by_label": _Entry(_get_order_state_by_label, True, "lookup"),
    "private/get_open_orders_by_instrument": _Entry(_open_orders, True, "orders"),
    "private/get_positions": _Entry(_positions, True, "positions"),
    "private/get_user_trades_by_instrument": _Entry(_user_trades, True, "fills"),
    "private/get_account_summary": _Entry(_account_summary, True, None),
}


def dispatch(app: SimApp, method: str, params: dict[str, Any], ctx: _Ctx) -> Any:
    """Run one JSON-RPC call; ``RpcFailure`` is the error answer."""
    state = _state(app)
    entry = METHODS.get(method)
    if ctx.transport == "ws" and state.take("ws"):
        raise RpcFailure(TOO_MANY_REQUESTS, "too_many_requests", ends_session=True)
    if entry is None:
        raise RpcFailure(METHOD_NOT_FOUND, "Method not found", {"method": method[:60]})
    if entry.private:
        if state.take("private"):
            raise RpcFailure(TOO_MANY_REQUESTS, "too_many_requests", ends_session=True)
        token = ctx.bearer
        if ctx.conn is not None:
            given = params.pop("access_token", None)
            token = given if isinstance(given, str) else ctx.conn.access_token
        subject = app.tokens.subject_of(token)
        if subject is None:
            raise RpcFailure(UNAUTHORIZED, "unauthorized", {"reason": "invalid or expired access token"})
        account, session = _account_session(subject)
        ctx = _Ctx(ctx.transport, ctx.bearer, ctx.conn, account, session)
    return entry.handler(app, state, ctx, params)


def _envelope(us_in: int, rpc_id: Any = None, *, result: Any = None, failure: RpcFailure | None = None,
              with_id: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {"jsonrpc": "2.0"}
    if with_id:
        payload["id"] = rpc_id
    if failure is not None:
        payload["error"] = failure.error()
    else:
        payload["result"] = result
    us_out = time.time_ns() // 1000
    payload.update({"usIn": us_in, "usOut": us_out, "usDiff": us_out - us_in, "testnet": True})
    return payload


def _http(app: SimApp, method: str, params: dict[str, Any], *, bearer: str | None, rpc_id: Any,
          with_id: bool) -> Answer:
    us_in = time.time_ns() // 1000
    try:
        result = dispatch(app, method, params, _Ctx("http", bearer))
    except RpcFailure as failure:
        app.log("deribit_error", level="warning", method=method[:60], code=failure.code, message=failure.message)
        status = 429 if failure.code == TOO_MANY_REQUESTS else 400
        return Answer(status=status, body=dumps(_envelope(us_in, rpc_id, failure=failure, with_id=with_id)).encode())
    return Answer(status=200, body=dumps(_envelope(us_in, rpc_id, result=result, with_id=with_id)).encode())


def _get_handler(method: str) -> Callable[[SimApp, Request], Answer]:
    def handler(app: SimApp, req: Request) -> Answer:
        params = {name: values[-1] for name, values in req.query.items() if values}
        return _http(app, method, params, bearer=req.bearer(), rpc_id=None, with_id=False)
    return handler


def _unknown_get(app: SimApp, req: Request) -> Answer:
    return _http(app, req.params.get("method", ""), {}, bearer=None, rpc_id=None, with_id=False)


def _request_of(message: Any) -> tuple[Any, str, dict[str, Any]]:
    """(id, method, params) of one JSON-RPC request object, or ``RpcFailure``."""
    if isinstance(message, list):
        raise RpcFailure(INVALID_REQUEST, "Invalid Request", {"reason": "batch requests are not supported"})
    if not isinstance(message, dict):
        raise RpcFailure(INVALID_REQUEST, "Invalid Request")
    rpc_id = message.get("id")
    if rpc_id is None or isinstance(rpc_id, bool) or not isinstance(rpc_id, (int, str)):
        raise RpcFailure(INVALID_REQUEST, "Invalid Request", {"reason": "an id is required"})
    method = message.get("method")
    if message.get("jsonrpc") != "2.0" or not isinstance(method, str):
        raise RpcFailure(INVALID_REQUEST, "Invalid Request", {"reason": "jsonrpc 2.0 and a method are required"})
    params = message.get("params", {})
    if not isinstance(params, dict):
        raise _invalid("params", "named params only (an object)")
    return rpc_id, method, params


def _post_handler(app: SimApp, req: Request) -> Answer:
    us_in = time.time_ns() // 1000
    try:
        message = json.loads(req.body, parse_float=Decimal)
    except (UnicodeDecodeError, ValueError):
        failure = RpcFailure(PARSE_ERROR, "Parse error")
        return Answer(status=400, body=dumps(_envelope(us_in, None, failure=failure, with_id=True)).encode())
    rpc_id = message.get("id") if isinstance(message, dict) else None
    try:
        rpc_id, method, params = _request_of(message)
    except RpcFailure as failure:
        return Answer(status=400, body=dumps(_envelope(us_in, rpc_id, failure=failure, with_id=True)).encode())
    return _http(app, method, params, bearer=req.bearer(), rpc_id=rpc_id, with_id=True)


def _admin_rate_limit(app: SimApp, req: Request) -> Answer:
    body = req.json()
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    count, scope = body.get("count"), body.get("scope", "private")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise BadRequest("field 'count' must be a non-negative integer")
    if scope not in ("private", "ws"):
        raise BadRequest("field 'scope' must be private or ws")
    state = _state(app)
    with state.lock:
        if scope == "private":
            state.limit_private = count
        else:
            state.limit_ws = count
        answer = {"private": state.limit_private, "ws": state.limit_ws}
    app.log("deribit_rate_limit_set", level="warning", **answer)
    return json_answer(answer)


# ---------------------------------------------------------------- WebSocket


def _final(bar: Bar) -> dict[str, Any]:
    return {"tick": _ms(bar.ts_ns), "open": bar.open, "high": bar.high, "low": bar.low, "close": bar.close,
            "volume": bar.volume, "cost": bar.volume * bar.close}


def _forming(bar: Bar) -> dict[str, Any]:
    volume = bar.volume / 2
    return {"tick": _ms(bar.ts_ns), "open": bar.open, "high": bar.open, "low": bar.open, "close": bar.open,
            "volume": volume, "cost": volume * bar.open}


def _notification(channel: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "subscription", "params": {"channel": channel, "data": data}}


def _chart_messages(app: SimApp, conn: _WsConn) -> list[dict[str, Any]]:
    """What the subscribed channels owe the client (call under ``app.lock``)."""
    out = []
    for channel, chart in conn.charts.items():
        for bar in app.books[chart.symbol].after_index(chart.sent):
            out.append(_notification(channel, _forming(bar)))
            if chart.last_final is not None:
                out.append(_notification(channel, _final(chart.last_final)))  # a stale repeat
            out.append(_notification(channel, _final(bar)))
            chart.sent, chart.last_final = bar.index, bar
    return out


def _has_news(app: SimApp, conn: _WsConn) -> bool:
    return any(app.books[c.symbol].last_index > c.sent for c in conn.charts.values())


def _heartbeat_due(app: SimApp, conn: _WsConn) -> bool:
    """Send a test_request when due; False (and the connection closed) if one went unanswered."""
    now = time.monotonic()
    with conn.lock:
        if conn.heartbeat_s is None:
            return True
        if conn.test_deadline is not None and now > conn.test_deadline:
            missed = True
        else:
            missed = False
            due = now >= conn.next_test_at
            if due:
                conn.next_test_at = now + conn.heartbeat_s
                if conn.test_deadline is None:
                    conn.test_deadline = now + conn.heartbeat_s
    if missed:
        app.log("deribit_heartbeat_missed", level="warning")
        conn.close(4000, "heartbeat: test_request not answered")
        return False
    if due:
        return conn.send({"jsonrpc": "2.0", "method": "heartbeat", "params": {"type": "test_request"}})
    return True


def _push(app: SimApp, conn: _WsConn) -> None:
    """The connection's writer of notifications: chart updates and heartbeats."""
    while not conn.closed.is_set() and not app.stopping.is_set():
        with app.lock:
            app.new_bar.wait_for(lambda: conn.closed.is_set() or app.stopping.is_set() or _has_news(app, conn),
                                 timeout=PUSH_TICK_S)
            messages = [] if conn.closed.is_set() else _chart_messages(app, conn)
        for message in messages:
            if not conn.send(message):
                return
        if not _heartbeat_due(app, conn):
            return


def _ws_message(app: SimApp, conn: _WsConn, raw: Any) -> tuple[dict[str, Any], bool]:
    """The answer to one client message and whether the session ends after it."""
    us_in = time.time_ns() // 1000
    rpc_id = None
    try:
        if not isinstance(raw, str):
            raise RpcFailure(PARSE_ERROR, "Parse error", {"reason": "text frames only"})
        try:
            message = json.loads(raw, parse_float=Decimal)
        except ValueError:
            raise RpcFailure(PARSE_ERROR, "Parse error") from None
        rpc_id = message.get("id") if isinstance(message, dict) else None
        rpc_id, method, params = _request_of(message)
        result = dispatch(app, method, params, _Ctx("ws", None, conn))
    except RpcFailure as failure:
        if failure.code == TOO_MANY_REQUESTS:
            app.log("deribit_error", level="warning", transport="ws", code=failure.code, message=failure.message)
        return _envelope(us_in, rpc_id, failure=failure, with_id=True), failure.ends_session
    return _envelope(us_in, rpc_id, result=result, with_id=True), False


def _websocket(app: SimApp, connection: Any) -> None:
    path = urlsplit(connection.request.path).path
    if path != WS_PATH:
        connection.close(1008, f"no WebSocket at {path[:60]}; use {WS_PATH}")
        return
    conn = _WsConn(connection)
    pusher = threading.Thread(target=_push, args=(app, conn), name="deribit-ws-push", daemon=True)
    pusher.start()
    app.log("ws_opened", dialect="deribit")
    try:
        while not conn.closed.is_set() and not app.stopping.is_set():
            try:
                raw = connection.recv(timeout=WS_RECV_POLL_S)
            except TimeoutError:
                continue
            except ConnectionClosed:
                break
            answer, ends = _ws_message(app, conn, raw)
            conn.send(answer)
            if ends:
                conn.close(1000, "too_many_requests: session ended")
                break
    finally:
        conn.closed.set()
        with app.lock:
            app.new_bar.notify_all()
        pusher.join(PUSHER_JOIN_S)
        if app.stopping.is_set():
            conn.close(1001, "venue stopping")
        app.log("ws_closed", dialect="deribit")


# ---------------------------------------------------------------- the dialect


def _routes() -> tuple[HttpRoute, ...]:
    routes = [HttpRoute("POST", f"{API_PATH}/?", _post_handler, "auth"),  # the adapter POSTs token requests only
              HttpRoute("POST", f"{PREFIX}/admin/rate-limit", _admin_rate_limit, None)]
    for name, entry in METHODS.items():
        routes.append(HttpRoute("GET", f"{API_PATH}/{name}", _get_handler(name), entry.call))
    routes.append(HttpRoute("GET", f"{API_PATH}/(?P<method>.+)", _unknown_get, None))
    return tuple(routes)


DIALECT = Dialect(name="deribit", routes=_routes(), websocket=_websocket)


def demo_account(base_url: str, ws_url: str, sim_account: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(broker config, simulator-only credentials) of a deribit account that trades in ``sim_account``
    through this dialect (``services.sessions.seed_dialect_account``). The demo's simulator accounts
    are ``SIM1``, ``SIM2`` … in that order, and subaccount N is the N-th: the credentials log in to
    the first, ``subject_id`` moves the token to the one asked for."""
    number = int(sim_account.removeprefix("SIM")) if sim_account.removeprefix("SIM").isdigit() else 1
    config: dict[str, Any] = {"base_url": f"{base_url.rstrip('/')}{API_PATH}", "ws_url": f"{ws_url.rstrip('/')}{WS_PATH}",
                              "timeout_s": 5}
    if number != 1:
        config["subject_id"] = number
    return config, {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
