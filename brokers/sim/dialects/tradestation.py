"""TradeStation API v3 as the venue simulator speaks it, under ``/tradestation``.

The same matching engine (``app.venue`` under ``app.lock``) through TradeStation's wire protocol:

* **Auth** — ``POST /tradestation/oauth/token`` (form ``grant_type=refresh_token&client_id&
  client_secret&refresh_token``). Accepted client: ``client_id=sim-client``,
  ``client_secret=sim-secret``. Each sim account ``A`` (``--accounts``) has the seeded refresh token
  ``sim-refresh-A`` — the one "the operator got by logging in". Refresh tokens ROTATE by default
  (each refresh answers a new one and the old one dies; Auth0-style, an answer without rotation
  carries no ``refresh_token``); ``POST /tradestation/admin/rotation {"rotate": bool}`` switches.
  Refusals: ``invalid_grant`` (403) for an unknown/spent refresh token, ``access_denied`` (401) for
  a wrong client. Access tokens last ``--token-ttl-s``; expired ones (also after
  ``POST /v1/admin/expire-tokens``) get 401 ``{"Error": "Unauthorized", "Message"}``.
* **Accounts** — TradeStation's ``AccountID`` is the sim account name; a token grants the account
  its refresh token was seeded for (other AccountIDs come back in ``Errors``, ``Forbidden``).
* **Symbols** — TradeStation's forms (``ESZ26``, ``ECZ26`` for 6E, ``@ES`` continuous) ↔ the books'
  canonical codes (``ESZ6``) through ``brokers.symbols.tradestation``; ``@ES`` bars are the served ES
  contract's. Orders on a continuous symbol are refused, as TradeStation does.
* **Orders** — ``POST/PUT/DELETE /tradestation/v3/orderexecution/orders[/{id}]``; ``OrderID`` is a
  number the dialect assigns; ``OrderConfirmID`` (≤ 22 characters here) becomes the venue's client
  order id and is echoed in order answers (whether TradeStation echoes it is unconfirmed). A
  repeated ``OrderConfirmID`` is refused by the venue (``Errors: [{Error: "FAILED", Message:
  "duplicate …"}]``; each attempt counts in ``/v1/admin/stats`` submissions). Business refusals
  answer 200 with ``Errors``; malformed requests 400 ``{"Error": "BadRequest"}``.
* **Brackets** — an order with ``OSOs: [{Type: "BRK", Orders: [limit, stop]}]`` (entry plus
  bracket: the children wait as ``OSO`` until the entry fills, then go to the venue) and
  ``POST /tradestation/v3/orderexecution/ordergroups`` ``{Type: "BRK", Orders: [limit, stop]}``
  (both live at once). When one leg fills, the other is cancelled (status ``BRC``); a cancelled or
  refused entry cancels its waiting children. Simplification: the venue fills whole bars, so a
  single bar that reaches both legs fills both — a real venue fills whichever traded first.
  Bracket upkeep runs after every bar (a watcher thread) and before every order request.
* **Queries** — ``/tradestation/v3/brokerage/accounts/{ids}/orders`` (today's by the venue's bar
  clock, plus working ones), ``/historicalorders?since=YYYY-MM-DD`` (closed ones), ``/orders/{ids}``,
  ``/positions``, ``/balances`` (``Equity`` = starting equity + realized P&L). Pages:
  ``pageSize``/``nextToken``.
* **Bars** — ``GET /tradestation/v3/marketdata/barcharts/{symbol}?interval&unit&barsback|firstdate
  [&lastdate]`` (``TimeStamp`` is a bar's END; the bar still forming comes last with ``BarStatus:
  "Open"``) and the chunked stream ``/tradestation/v3/marketdata/stream/barcharts/{symbol}`` (history,
  ``{"StreamStatus": "EndSnapshot"}``, then each closed bar followed by the next one forming,
  ``{"Heartbeat": n}`` after 5 idle seconds). A stream whose token has expired says
  ``{"Error": "Unauthorized"}`` and ends (the harsher of the possible real behaviours).
* **Admin** (no auth): ``POST /tradestation/admin/rotation {"rotate"}``, ``POST
  /tradestation/admin/goaway`` (every open bar stream sends ``{"StreamStatus": "GoAway"}`` and
  ends), ``POST /tradestation/admin/drop {"bars": n}`` (every open bar stream silently drops its
  next n bars; heartbeats go on), ``GET /tradestation/admin/state``.
"""
from __future__ import annotations

import dataclasses
import json
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from brokers.base import Bar, OrderRequest
from brokers.errors import UnknownSymbol
from brokers.instruments import INSTRUMENTS, canonical_root, instrument
from brokers.sim.dialects import Answer, BadRequest, Dialect, HttpRoute, Request, json_answer
from brokers.sim.venue import DUPLICATE_CLIENT_ID, OrderRejected, UnknownOrder, VenueOrder
from brokers.symbols import tradestation as tradestation_symbols
from schema.enums import OrderStatus, OrderType, Side, TimeInForce

if TYPE_CHECKING:
    from brokers.sim.server import SimApp

PREFIX = "/tradestation"
CLIENT_ID = "sim-client"
CLIENT_SECRET = "sim-secret"
SEEDED_REFRESH_PREFIX = "sim-refresh-"
MAX_ORDER_CONFIRM_ID_LEN = 22
ORDER_ID_BASE = 700_000_000
HEARTBEAT_IDLE_S = 5.0
STREAM_WAKE_S = 0.25
"""How often an idle stream looks at its flags (GoAway, token) and the heartbeat clock."""
WATCH_WAKE_S = 1.0
MAX_BARS_BACK = 57_600
MAX_PAGE_SIZE = 600
STREAM_CONTENT_TYPE = "application/vnd.tradestation.streams.v2+json"

_SYMBOLS = tradestation_symbols()
_TYPES_IN = {"Market": OrderType.MARKET, "Limit": OrderType.LIMIT, "StopMarket": OrderType.STOP,
             "StopLimit": OrderType.STOP_LIMIT}
_TYPES_OUT = {v: k for k, v in _TYPES_IN.items()}
_DURATIONS_IN = {"DAY": TimeInForce.DAY, "GTC": TimeInForce.GTC, "IOC": TimeInForce.IOC}
_DURATIONS_OUT = {v: k for k, v in _DURATIONS_IN.items()}
_ACTIONS_IN = {"BUY": Side.BUY, "SELL": Side.SELL}
_DESCRIPTIONS = {"ACK": "Received", "OPN": "Sent", "FLL": "Filled", "CAN": "Canceled", "REJ": "Rejected",
                 "EXP": "Expired", "OSO": "OSO Order", "BRC": "Bracket Canceled"}
_UNIT_NS = {"Minute": 60_000_000_000, "Daily": 86_400_000_000_000}


# ---------------------------------------------------------------- dialect state (guarded by app.lock)


@dataclass
class _TsOrder:
    """The dialect's view of one TradeStation order; the truth of a placed order is the venue's."""

    order_id: str
    account: str
    cid: str
    """The venue's client order id: the OrderConfirmID, or ``#<OrderID>`` when none was sent."""
    confirm_id: str | None
    opened_ns: int
    held: OrderRequest | None = None
    """An OSO child not at the venue yet (its entry has not filled)."""
    held_status: str | None = None
    """``CAN``/``REJ`` once a held child will never go out; its reason in ``reason``."""
    reason: str | None = None
    closed_ns: int | None = None
    bracket_cancelled: bool = False


@dataclass
class _Group:
    legs: tuple[str, str]
    parent: str | None = None
    """The entry's OrderID (OSO); None for an ``ordergroups`` bracket, live at once."""
    active: bool = False
    done: bool = False


@dataclass
class _Stream:
    goaway: bool = False
    drop: int = 0


@dataclass
class _State:
    rotate: bool = True
    next_id: int = ORDER_ID_BASE
    orders: dict[str, _TsOrder] = field(default_factory=dict)
    by_cid: dict[tuple[str, str], str] = field(default_factory=dict)
    groups: list[_Group] = field(default_factory=list)
    streams: list[_Stream] = field(default_factory=list)
    watcher: threading.Thread | None = None


_states: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()


def _state(app: SimApp) -> _State:
    with _states_lock:
        state = _states.get(app)
        if state is None:
            state = _State()
            for account in sorted(app.venue.accounts):
                app.tokens.seed_refresh(account, SEEDED_REFRESH_PREFIX + account)
            _states[app] = state
        return state


# ---------------------------------------------------------------- answers


class _Refused(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


def _route(handler: Callable[[SimApp, Request], Answer]) -> Callable[[SimApp, Request], Answer]:
    """TradeStation's error shape for every refusal a handler raises."""
    def wrapped(app: SimApp, req: Request) -> Answer:
        try:
            return handler(app, req)
        except _Refused as exc:
            return json_answer({"Error": exc.error, "Message": exc.message}, exc.status)
        except BadRequest as exc:
            return json_answer({"Error": "BadRequest", "Message": str(exc)}, 400)
    wrapped.__name__ = handler.__name__
    return wrapped


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _line(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, default=_json_default, separators=(",", ":")).encode() + b"\n"


def _iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _date(ts_ns: int) -> date:
    return datetime.fromtimestamp(ts_ns // 1_000_000_000, UTC).date()


def _money(value: Decimal) -> str:
    return format(value, "f")


# ---------------------------------------------------------------- auth


def _subject(app: SimApp, req: Request) -> str:
    _state(app)
    subject = app.tokens.subject_of(req.bearer())
    if subject is None:
        raise _Refused(401, "Unauthorized", "Access token is missing, invalid or expired")
    return subject


@_route
def token(app: SimApp, req: Request) -> Answer:
    state = _state(app)
    try:
        form = req.form()
    except BadRequest:
        return json_answer({"error": "invalid_request", "error_description": "form-encoded body expected"}, 400)
    if form.get("grant_type") != "refresh_token":
        return json_answer({"error": "unsupported_grant_type",
                            "error_description": "only grant_type=refresh_token is served here"}, 400)
    if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
        app.log("ts_token_refused", level="warning", reason="client")
        return json_answer({"error": "access_denied", "error_description": "Unauthorized"}, 401)
    refresh_token = form.get("refresh_token")
    if not refresh_token:
        return json_answer({"error": "invalid_request", "error_description": "refresh_token is required"}, 400)
    rotate = state.rotate
    issued = app.tokens.refresh(refresh_token, rotate=rotate)
    if issued is None:
        app.log("ts_token_refused", level="warning", reason="invalid_grant")
        return json_answer({"error": "invalid_grant", "error_description": "Unknown or invalid refresh token."}, 403)
    app.log("ts_token_issued", subject=issued.subject, rotated=rotate, expires_in_s=issued.expires_in_s)
    answer: dict[str, Any] = {"access_token": issued.access_token, "expires_in": issued.expires_in_s,
                              "token_type": "Bearer", "scope": "openid offline_access MarketData ReadAccount Trade"}
    if rotate:
        answer["refresh_token"] = issued.refresh_token
    return json_answer(answer)


# ---------------------------------------------------------------- parsing requests


def _book_symbol(app: SimApp, ts_symbol: str) -> str | None:
    """The served book for a TradeStation symbol (``@ES`` → the served ES contract)."""
    try:
        canonical = _SYMBOLS.to_canonical(ts_symbol)
    except UnknownSymbol:
        return None
    if canonical in app.books:
        return canonical
    if canonical in INSTRUMENTS:
        for symbol in app.books:
            if canonical_root(symbol) == canonical:
                return symbol
    return None


def _ts_symbol(symbol: str) -> str:
    try:
        return _SYMBOLS.to_broker(symbol)
    except UnknownSymbol:
        return symbol


def _field(body: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise _Refused(400, "BadRequest", f"{name} is required")
        return None
    if not isinstance(value, str) or not value:
        raise _Refused(400, "BadRequest", f"{name} must be a non-empty string")
    return value


def _decimal(body: Mapping[str, Any], name: str, *, required: bool = False) -> Decimal | None:
    raw = _field(body, name, required=required)
    if raw is None:
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise _Refused(400, "BadRequest", f"{name} is not a number: {raw[:20]!r}") from None
    if not value.is_finite():
        raise _Refused(400, "BadRequest", f"{name} must be finite")
    return value


def _choice(body: Mapping[str, Any], name: str, choices: Mapping[str, Any]) -> Any:
    raw = _field(body, name)
    if raw not in choices:
        raise _Refused(400, "BadRequest", f"{name} must be one of {', '.join(choices)}")
    return choices[raw]


def _owned(subject: str, account: str) -> None:
    if account != subject:
        raise _Refused(403, "Forbidden", f"account {account} is not accessible with this token")


def _parse_order(body: Any, subject: str) -> tuple[str, OrderRequest, str | None]:
    """(account, request without a client id yet, OrderConfirmID) from one order of a request."""
    if not isinstance(body, dict):
        raise _Refused(400, "BadRequest", "an order must be a JSON object")
    account = _field(body, "AccountID")
    assert account is not None
    _owned(subject, account)
    confirm = _field(body, "OrderConfirmID", required=False)
    if confirm is not None and len(confirm) > MAX_ORDER_CONFIRM_ID_LEN:
        raise _Refused(400, "BadRequest", f"OrderConfirmID must be 1 to {MAX_ORDER_CONFIRM_ID_LEN} characters")
    tif = body.get("TimeInForce")
    if not isinstance(tif, dict):
        raise _Refused(400, "BadRequest", "TimeInForce {Duration} is required")
    quantity = _decimal(body, "Quantity", required=True)
    assert quantity is not None
    symbol = _field(body, "Symbol")
    assert symbol is not None
    try:
        canonical = _SYMBOLS.to_canonical(symbol)
    except UnknownSymbol:
        canonical = symbol  # the venue refuses it: "unknown symbol"
    request = OrderRequest(
        client_order_id="", symbol=canonical, side=_choice(body, "TradeAction", _ACTIONS_IN),
        order_type=_choice(body, "OrderType", _TYPES_IN), quantity=quantity,
        limit_price=_decimal(body, "LimitPrice"), stop_price=_decimal(body, "StopPrice"),
        time_in_force=_choice(tif, "Duration", _DURATIONS_IN))
    return account, request, confirm


# ---------------------------------------------------------------- orders: the dialect's bookkeeping


def _new_id(state: _State) -> str:
    state.next_id += 1
    return str(state.next_id)


def _register(state: _State, account: str, cid: str, confirm: str | None, opened_ns: int,
              order_id: str | None = None) -> _TsOrder:
    order = _TsOrder(order_id or _new_id(state), account, cid, confirm, opened_ns)
    state.orders[order.order_id] = order
    state.by_cid[(account, cid)] = order.order_id
    return order


def _taken(app: SimApp, state: _State, account: str, cid: str) -> bool:
    return (account, cid) in state.by_cid or app.venue.order_by_client_id(account, cid) is not None


def _place(app: SimApp, state: _State, account: str, request: OrderRequest, confirm: str | None
           ) -> tuple[_TsOrder | None, str | None]:
    """Send one order to the venue: (its record, None) or (record or None, the refusal)."""
    order_id = None if confirm is not None else _new_id(state)
    cid = confirm if confirm is not None else f"#{order_id}"
    try:
        app.venue.submit(account, dataclasses.replace(request, client_order_id=cid))
    except OrderRejected as exc:
        if exc.order is None:  # refused before recording: a duplicate OrderConfirmID
            reason = "duplicate OrderConfirmID: an order with this id was already placed" \
                if exc.reason == DUPLICATE_CLIENT_ID else exc.reason
            return None, reason
        return _register(state, account, cid, confirm, app.venue.now_ns, order_id), exc.reason
    return _register(state, account, cid, confirm, app.venue.now_ns, order_id), None


def _record_of(state: _State, venue_order: VenueOrder) -> _TsOrder:
    """Orders placed through another door (the native API) get an OrderID when first shown."""
    order_id = state.by_cid.get((venue_order.account, venue_order.client_order_id))
    if order_id is not None:
        return state.orders[order_id]
    return _register(state, venue_order.account, venue_order.client_order_id, None, venue_order.created_ns)


def _sent_message(request: OrderRequest, symbol: str) -> str:
    price = {OrderType.MARKET: "Market", OrderType.LIMIT: f"Limit @ {request.limit_price}",
             OrderType.STOP: f"Stop Market @ {request.stop_price}",
             OrderType.STOP_LIMIT: f"Stop Limit @ {request.stop_price}/{request.limit_price}"}[request.order_type]
    return f"Sent order: {request.side.value.upper()} {request.quantity} {symbol} {price}"


# ---------------------------------------------------------------- brackets


def _check_bracket(legs: list[tuple[str, OrderRequest, str | None]]) -> None:
    if len(legs) != 2:
        raise _Refused(400, "BadRequest", "a BRK group has exactly two orders: a limit and a stop")
    (acct_a, a, _), (acct_b, b, _) = legs
    if acct_a != acct_b or a.symbol != b.symbol or a.side != b.side:
        raise _Refused(400, "BadRequest", "BRK orders must be for the same account, symbol and side")
    kinds = {a.order_type, b.order_type}
    if OrderType.LIMIT not in kinds or not kinds & {OrderType.STOP, OrderType.STOP_LIMIT}:
        raise _Refused(400, "BadRequest", "a BRK group brackets with one Limit and one StopMarket/StopLimit order")


def _settle(app: SimApp, state: _State) -> None:
    """Bracket upkeep, under ``app.lock``: release children of filled entries, cancel children of
    dead entries, cancel the other leg of a filled one."""
    venue = app.venue
    for group in state.groups:
        if group.done:
            continue
        legs = [state.orders[oid] for oid in group.legs]
        if not group.active:
            assert group.parent is not None
            parent = state.orders[group.parent]
            entry = venue.order_by_client_id(parent.account, parent.cid)
            if entry is None or entry.status is OrderStatus.ACCEPTED:
                continue
            if entry.status is OrderStatus.FILLED:
                for leg in legs:
                    if leg.held is None or leg.held_status is not None:
                        continue
                    try:
                        venue.submit(leg.account, dataclasses.replace(leg.held, client_order_id=leg.cid))
                        leg.held = None
                    except OrderRejected as exc:
                        leg.held_status, leg.reason, leg.closed_ns = "REJ", exc.reason, venue.now_ns
                group.active = True
                app.log("ts_bracket_released", entry=parent.order_id, legs=list(group.legs))
            else:
                for leg in legs:
                    if leg.held is not None and leg.held_status is None:
                        leg.held_status, leg.reason, leg.closed_ns = "CAN", f"entry {entry.status.value}", venue.now_ns
                group.done = True
            continue
        at_venue = [(leg, venue.order_by_client_id(leg.account, leg.cid)) for leg in legs if leg.held is None]
        if any(v is not None and v.status is OrderStatus.FILLED for _, v in at_venue):
            for leg, v in at_venue:
                if v is not None and v.is_working:
                    venue.cancel(leg.account, leg.cid)
                    leg.bracket_cancelled = True
                    app.log("ts_bracket_cancelled", order_id=leg.order_id, reason="other leg filled")
            group.done = True
        elif all(v is None or not v.is_working for _, v in at_venue):
            group.done = True


def _watch(app_ref: weakref.ref[Any]) -> None:
    """After every bar, bracket upkeep (the venue itself knows nothing of brackets)."""
    seen = None
    while True:
        app = app_ref()
        if app is None or app.stopping.is_set():
            return
        state = _state(app)
        with app.lock:
            app.new_bar.wait_for(lambda: _progress(app) != seen or app.stopping.is_set(), timeout=WATCH_WAKE_S)
            seen = _progress(app)
            _settle(app, state)
        del app


def _progress(app: SimApp) -> int:
    return sum(book.last_index for book in app.books.values())


def _start_watcher(app: SimApp, state: _State) -> None:
    if state.watcher is None:
        state.watcher = threading.Thread(target=_watch, args=(weakref.ref(app),), name="ts-brackets", daemon=True)
        state.watcher.start()


# ---------------------------------------------------------------- order answers


def _status_code(app: SimApp, record: _TsOrder, order: VenueOrder) -> str:
    if order.status is OrderStatus.ACCEPTED:
        last = app.venue.last_bar(order.symbol)
        return "OPN" if last is not None and last.index > order.submitted_after_index else "ACK"
    if order.status is OrderStatus.CANCELLED and record.bracket_cancelled:
        return "BRC"
    return {OrderStatus.FILLED: "FLL", OrderStatus.CANCELLED: "CAN", OrderStatus.REJECTED: "REJ",
            OrderStatus.EXPIRED: "EXP"}[order.status]


def _order_json(app: SimApp, record: _TsOrder) -> dict[str, Any]:
    if record.held is not None:
        request = record.held
        status = record.held_status or "OSO"
        filled, average, symbol = Decimal(0), None, request.symbol
        closed_ns = record.closed_ns
        reason = record.reason
    else:
        order = app.venue.order_by_client_id(record.account, record.cid)
        assert order is not None
        request = OrderRequest(order.client_order_id, order.symbol, order.side, order.order_type, order.quantity,
                               order.limit_price, order.stop_price, order.time_in_force)
        status = _status_code(app, record, order)
        filled, average, symbol = order.filled_quantity, order.average_price, order.symbol
        closed_ns = None if order.is_working else order.updated_ns
        reason = order.reason
    payload: dict[str, Any] = {
        "AccountID": record.account,
        "OrderID": record.order_id,
        "Status": status,
        "StatusDescription": _DESCRIPTIONS.get(status, status),
        "OrderType": _TYPES_OUT[request.order_type],
        "Duration": _DURATIONS_OUT[request.time_in_force],
        "OpenedDateTime": _iso(record.opened_ns),
        "FilledPrice": _money(average) if average is not None else "0",
        "Legs": [{
            "AssetType": "FUTURE",
            "BuyOrSell": "Buy" if request.side is Side.BUY else "Sell",
            "Symbol": _ts_symbol(symbol),
            "QuantityOrdered": _money(request.quantity),
            "ExecQuantity": _money(filled),
            "QuantityRemaining": _money(request.quantity - filled),
            "ExecutionPrice": _money(average) if average is not None else "0",
        }],
    }
    if record.confirm_id is not None:
        payload["OrderConfirmID"] = record.confirm_id
    if request.limit_price is not None:
        payload["LimitPrice"] = _money(request.limit_price)
    if request.stop_price is not None:
        payload["StopPrice"] = _money(request.stop_price)
    if closed_ns is not None:
        payload["ClosedDateTime"] = _iso(closed_ns)
    if reason and status in ("REJ", "CAN", "EXP"):
        payload["RejectReason"] = reason
    return payload


def _is_open(app: SimApp, record: _TsOrder) -> bool:
    if record.held is not None:
        return record.held_status is None
    order = app.venue.order_by_client_id(record.account, record.cid)
    return order is not None and order.is_working


def _closed_ns(app: SimApp, record: _TsOrder) -> int:
    if record.held is not None:
        return record.closed_ns or record.opened_ns
    order = app.venue.order_by_client_id(record.account, record.cid)
    return order.updated_ns if order is not None else record.opened_ns


def _records(app: SimApp, state: _State, account: str) -> list[_TsOrder]:
    """Every order of ``account`` (venue orders, plus held bracket children), by OrderID."""
    for order in app.venue.orders(account):
        _record_of(state, order)
    return sorted((r for r in state.orders.values() if r.account == account), key=lambda r: int(r.order_id))


def _accounts(subject: str, ids: str) -> tuple[list[str], list[dict[str, str]]]:
    wanted = [a for a in ids.split(",") if a]
    errors = [{"AccountID": a, "Error": "Forbidden", "Message": "account not accessible with this token"}
              for a in wanted if a != subject]
    return [a for a in wanted if a == subject], errors


def _page(req: Request, items: list[dict[str, Any]], key: str, errors: list[dict[str, str]]) -> Answer:
    raw_size = req.arg("pageSize", str(MAX_PAGE_SIZE)) or str(MAX_PAGE_SIZE)
    raw_next = req.arg("nextToken", "0") or "0"
    if not raw_size.isdigit() or not 1 <= int(raw_size) <= MAX_PAGE_SIZE:
        raise _Refused(400, "BadRequest", f"pageSize must be 1..{MAX_PAGE_SIZE}")
    if not raw_next.isdigit():
        raise _Refused(400, "BadRequest", "nextToken is not one this server gave")
    start, size = int(raw_next), int(raw_size)
    payload: dict[str, Any] = {key: items[start:start + size], "Errors": errors}
    if start + size < len(items):
        payload["NextToken"] = str(start + size)
    return json_answer(payload)


# ---------------------------------------------------------------- order execution routes


@_route
def place_order(app: SimApp, req: Request) -> Answer:
    subject = _subject(app, req)
    body = req.json()
    state = _state(app)
    with app.lock:
        _settle(app, state)
        account, request, confirm = _parse_order(body, subject)
        osos = body.get("OSOs")
        if osos is None:
            record, refusal = _place(app, state, account, request, confirm)
            return _place_answer(app, [(record, refusal, request)])
        return _place_with_bracket(app, state, account, request, confirm, osos, subject)


def _place_answer(app: SimApp, results: list[tuple[_TsOrder | None, str | None, OrderRequest]]) -> Answer:
    orders, errors = [], []
    for record, refusal, request in results:
        if refusal is None and record is not None:
            orders.append({"OrderID": record.order_id, "Message": _sent_message(request, _ts_symbol(request.symbol))})
        else:
            errors.append({"OrderID": record.order_id if record else "", "Error": "FAILED", "Message": refusal or ""})
            app.log("ts_order_refused", level="warning", reason=refusal)
    return json_answer({"Orders": orders, "Errors": errors})


def _bracket_legs(osos: Any, subject: str) -> list[tuple[str, OrderRequest, str | None]]:
    if (not isinstance(osos, list) or len(osos) != 1 or not isinstance(osos[0], dict)
            or osos[0].get("Type") != "BRK" or not isinstance(osos[0].get("Orders"), list)):
        raise _Refused(400, "BadRequest", "this simulator takes OSOs as one {Type: BRK, Orders: [limit, stop]}")
    return [_parse_order(o, subject) for o in osos[0]["Orders"]]


def _check_ids(app: SimApp, state: _State, account: str, confirms: list[str | None]) -> str | None:
    given = [c for c in confirms if c is not None]
    if len(set(given)) != len(given):
        return "duplicate OrderConfirmID within the request"
    for confirm in given:
        if _taken(app, state, account, confirm):
            return f"duplicate OrderConfirmID {confirm}: an order with this id was already placed"
    return None


def _place_with_bracket(app: SimApp, state: _State, account: str, request: OrderRequest, confirm: str | None,
                        osos: Any, subject: str) -> Answer:
    legs = _bracket_legs(osos, subject)
    _check_bracket(legs)
    if legs[0][0] != account or legs[0][1].symbol != request.symbol or legs[0][1].side is request.side:
        raise _Refused(400, "BadRequest", "bracket orders close the entry: same account and symbol, other side")
    # The children wait here, not at the venue: their ids are checked here; the entry's by the venue.
    children_ids = [c for _, _, c in legs]
    duplicate = _check_ids(app, state, account, children_ids)
    if duplicate is None and confirm is not None and confirm in children_ids:
        duplicate = "duplicate OrderConfirmID within the request"
    if duplicate is not None:
        return _place_answer(app, [(None, duplicate, request)])
    entry, refusal = _place(app, state, account, request, confirm)
    if refusal is not None or entry is None:
        return _place_answer(app, [(entry, refusal, request)])
    children = []
    for _, leg, leg_confirm in legs:
        order_id = _new_id(state)
        record = _register(state, account, leg_confirm or f"#{order_id}", leg_confirm, app.venue.now_ns, order_id)
        record.held = leg
        children.append(record)
    state.groups.append(_Group(legs=(children[0].order_id, children[1].order_id), parent=entry.order_id))
    _start_watcher(app, state)
    app.log("ts_bracket_placed", entry=entry.order_id, legs=[c.order_id for c in children])
    return _place_answer(app, [(entry, None, request), *((c, None, c.held) for c in children)])


@_route
def place_group(app: SimApp, req: Request) -> Answer:
    subject = _subject(app, req)
    body = req.json()
    if not isinstance(body, dict) or body.get("Type") != "BRK" or not isinstance(body.get("Orders"), list):
        raise _Refused(400, "BadRequest", "this simulator takes order groups of Type BRK with Orders [limit, stop]")
    state = _state(app)
    with app.lock:
        _settle(app, state)
        legs = [_parse_order(o, subject) for o in body["Orders"]]
        _check_bracket(legs)
        account = legs[0][0]
        duplicate = _check_ids(app, state, account, [c for _, _, c in legs])
        if duplicate is not None:
            return _place_answer(app, [(None, duplicate, legs[0][1])])
        first, refusal = _place(app, state, account, legs[0][1], legs[0][2])
        if refusal is not None or first is None:
            return _place_answer(app, [(first, refusal, legs[0][1])])
        second, refusal = _place(app, state, account, legs[1][1], legs[1][2])
        if refusal is not None or second is None:
            app.venue.cancel(account, first.cid)  # all or nothing
            return _place_answer(app, [(second, refusal, legs[1][1])])
        state.groups.append(_Group(legs=(first.order_id, second.order_id), active=True))
        _start_watcher(app, state)
        return _place_answer(app, [(first, None, legs[0][1]), (second, None, legs[1][1])])


def _own_record(state: _State, subject: str, order_id: str) -> _TsOrder:
    record = state.orders.get(order_id)
    if record is None or record.account != subject:
        raise _Refused(404, "NotFound", f"order {order_id} not found")
    return record


def _open_record(app: SimApp, state: _State, subject: str, order_id: str, verb: str) -> _TsOrder:
    """The client's order, settled first, refused if it is a held bracket leg already closed
    (``verb``: "cancelled", "replaced"). Call with ``app.lock`` held."""
    _settle(app, state)
    record = _own_record(state, subject, order_id)
    if record.held is not None and record.held_status is not None:
        raise _Refused(400, "BadRequest", f"order is not open and cannot be {verb}")
    return record


@contextmanager
def _venue_refusals(record: _TsOrder, verb: str) -> Iterator[None]:
    """The venue's refusal to change ``record`` (``verb``: "cancelled", "replaced") in TradeStation's words."""
    try:
        yield
    except UnknownOrder:
        raise _Refused(404, "NotFound", f"order {record.order_id} not found") from None
    except OrderRejected as exc:
        raise _Refused(400, "BadRequest", f"order cannot be {verb} ({exc.reason})") from None


@_route
def cancel_order(app: SimApp, req: Request) -> Answer:
    subject = _subject(app, req)
    state = _state(app)
    with app.lock:
        record = _open_record(app, state, subject, req.params["order_id"], "cancelled")
        if record.held is not None:
            record.held_status, record.reason, record.closed_ns = "CAN", "cancelled by the client", app.venue.now_ns
        else:
            with _venue_refusals(record, "cancelled"):
                app.venue.cancel(record.account, record.cid)
        _settle(app, state)
    app.log("ts_order_cancelled", order_id=record.order_id)
    return json_answer({"OrderID": record.order_id, "Message": "Cancel request sent"})


@_route
def replace_order(app: SimApp, req: Request) -> Answer:
    subject = _subject(app, req)
    body = req.json()
    if not isinstance(body, dict):
        raise _Refused(400, "BadRequest", "body must be a JSON object")
    if "OrderType" in body:
        raise _Refused(400, "BadRequest", "this simulator does not convert order types on replace")
    quantity, limit, stop = _decimal(body, "Quantity"), _decimal(body, "LimitPrice"), _decimal(body, "StopPrice")
    if quantity is None and limit is None and stop is None:
        raise _Refused(400, "BadRequest", "nothing to replace: give Quantity, LimitPrice and/or StopPrice")
    state = _state(app)
    with app.lock:
        record = _open_record(app, state, subject, req.params["order_id"], "replaced")
        if record.held is not None:
            record.held = dataclasses.replace(
                record.held, quantity=quantity if quantity is not None else record.held.quantity,
                limit_price=limit if limit is not None else record.held.limit_price,
                stop_price=stop if stop is not None else record.held.stop_price)
        else:
            with _venue_refusals(record, "replaced"):
                app.venue.modify(record.account, record.cid, quantity=quantity, limit_price=limit, stop_price=stop)
    return json_answer({"OrderID": record.order_id, "Message": "Cancel/Replace order sent"})


# ---------------------------------------------------------------- brokerage routes


@_route
def get_orders(app: SimApp, req: Request) -> Answer:
    subject = _subject(app, req)
    accounts, errors = _accounts(subject, req.params["ids"])
    state = _state(app)
    with app.lock:
        _settle(app, state)
        today = _date(app.venue.now_ns)
        items = [_order_json(app, r) for a in accounts for r in _records(app, state, a)
                 if _is_open(app, r) or _date(r.opened_ns) == today or _date(_closed_ns(app, r)) == today]
    return _page(req, items, "Orders", errors)


@_route
def get_orders_by_id(app: SimApp, req: Request) -> Answer:
    subject = _subject(app, req)
    accounts, errors = _accounts(subject, req.params["ids"])
    state = _state(app)
    with app.lock:
        _settle(app, state)
        for account in accounts:
            _records(app, state, account)
        items = []
        for order_id in (o for o in req.params["order_ids"].split(",") if o):
            record = state.orders.get(order_id)
            if record is None or record.account not in accounts:
                errors.append({"AccountID": ",".join(accounts), "OrderID": order_id, "Error": "NotFound",
                               "Message": "order not found"})
            else:
                items.append(_order_json(app, record))
    return json_answer({"Orders": items, "Errors": errors})


@_route
def get_historical_orders(app: SimApp, req: Request) -> Answer:
    subject = _subject(app, req)
    accounts, errors = _accounts(subject, req.params["ids"])
    raw = req.arg("since")
    try:
        since = date.fromisoformat(raw or "")
    except ValueError:
        raise _Refused(400, "BadRequest", "since must be a date, e.g. 2026-01-13") from None
    state = _state(app)
    with app.lock:
        _settle(app, state)
        if since < _date(app.venue.now_ns) - timedelta(days=90):
            raise _Refused(400, "BadRequest", "since is limited to 90 days before today")
        items = [_order_json(app, r) for a in accounts for r in _records(app, state, a)
                 if not _is_open(app, r) and _date(_closed_ns(app, r)) >= since]
    return _page(req, items, "Orders", errors)


@_route
def get_positions(app: SimApp, req: Request) -> Answer:
    subject = _subject(app, req)
    accounts, errors = _accounts(subject, req.params["ids"])
    items = []
    with app.lock:
        for account in accounts:
            for position in app.venue.positions(account):
                last = app.venue.last_bar(position.symbol)
                point_value = instrument(canonical_root(position.symbol)).point_value
                average = position.average_price or Decimal(0)
                mark = last.close if last is not None else average
                items.append({
                    "AccountID": account, "AssetType": "FUTURE", "PositionID": f"{account}-{position.symbol}",
                    "Symbol": _ts_symbol(position.symbol), "Quantity": _money(position.quantity),
                    "LongShort": "Long" if position.quantity > 0 else "Short", "AveragePrice": _money(average),
                    "Last": _money(mark), "Timestamp": _iso(app.venue.now_ns),
                    "UnrealizedProfitLoss": _money((mark - average) * position.quantity * point_value),
                })
    return json_answer({"Positions": items, "Errors": errors})


@_route
def get_balances(app: SimApp, req: Request) -> Answer:
    subject = _subject(app, req)
    accounts, errors = _accounts(subject, req.params["ids"])
    with app.lock:
        summaries = [app.venue.summary(a) for a in accounts]
    items = [{"AccountID": s.account, "AccountType": "Futures", "Equity": _money(s.equity),
              "CashBalance": _money(s.equity), "BuyingPower": _money(s.equity), "MarketValue": "0",
              "TodaysProfitLoss": _money(s.realized_pnl)} for s in summaries]
    return json_answer({"Balances": items, "Errors": errors})


# ---------------------------------------------------------------- bars


def _bar_json(bar: Bar, interval_ns: int, *, closed: bool = True, end_of_history: bool = False,
              realtime: bool = False) -> dict[str, Any]:
    end_ns = bar.ts_ns + interval_ns
    return {"High": _money(bar.high), "Low": _money(bar.low), "Open": _money(bar.open), "Close": _money(bar.close),
            "TimeStamp": _iso(end_ns), "Epoch": end_ns // 1_000_000, "TotalVolume": _money(bar.volume),
            "DownTicks": 0, "DownVolume": 0, "UpTicks": 0, "UpVolume": 0, "TotalTicks": 0, "OpenInterest": "0",
            "IsRealtime": realtime, "IsEndOfHistory": end_of_history, "BarStatus": "Closed" if closed else "Open"}


def _forming(bar: Bar, interval_ns: int) -> dict[str, Any]:
    """The bar after ``bar``, just opened: all prices at ``bar``'s close, no volume yet."""
    nxt = Bar(bar.symbol, bar.interval, bar.ts_ns + interval_ns, bar.close, bar.close, bar.close, bar.close,
              Decimal(0), bar.index + 1)
    return _bar_json(nxt, interval_ns, closed=False, realtime=True)


def _bars_request(app: SimApp, req: Request) -> str:
    """The served book for the request's symbol, checking its interval; refusals as TradeStation."""
    symbol = _book_symbol(app, req.params["symbol"])
    if symbol is None:
        raise _Refused(404, "NotFound", f"symbol {req.params['symbol']} is not served here")
    raw_interval, unit = req.arg("interval", "1") or "1", req.arg("unit", "Daily") or "Daily"
    if not raw_interval.isdigit() or unit not in _UNIT_NS:
        raise _Refused(400, "BadRequest", "interval must be a number and unit one of Minute, Daily")
    if int(raw_interval) * _UNIT_NS[unit] != app.interval_ns:
        raise _Refused(400, "BadRequest", f"this simulator serves {app.config.interval} bars only")
    return symbol


def _arg_any_case(req: Request, name: str) -> str | None:
    for key, values in req.query.items():
        if key.lower() == name.lower() and values:
            return values[-1]
    return None


def _bars_back(req: Request, default: int) -> int:
    raw = _arg_any_case(req, "barsback")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_BARS_BACK:
        raise _Refused(400, "BadRequest", f"barsback must be 1..{MAX_BARS_BACK}")
    return int(raw)


def _iso_arg(req: Request, name: str) -> int | None:
    raw = _arg_any_case(req, name)
    if raw is None:
        return None
    try:
        parsed = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith("Z") else raw)
    except ValueError:
        raise _Refused(400, "BadRequest", f"{name} must be a date or an ISO 8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp()) * 1_000_000_000


@_route
def get_bars(app: SimApp, req: Request) -> Answer:
    _subject(app, req)
    symbol = _bars_request(app, req)
    step = app.interval_ns
    first, last = _iso_arg(req, "firstdate"), _iso_arg(req, "lastdate")
    if first is not None and _arg_any_case(req, "barsback") is not None:
        raise _Refused(400, "BadRequest", "barsback and firstdate are mutually exclusive")
    with app.lock:
        book = app.books[symbol]
        if first is not None:
            bars = book.after_ts(first - step - 1, MAX_BARS_BACK)  # TimeStamp (end) >= firstdate
        else:
            back = _bars_back(req, 1)
            bars = book.after_index(book.last_index - back)  # the forming bar counts as one of them
            bars = bars[1:] if len(bars) >= back else bars
    if last is not None:
        bars = [b for b in bars if b.ts_ns + step <= last]
    items = [_bar_json(b, step) for b in bars]
    if last is None and bars:
        items.append(_forming(bars[-1], step))
    return json_answer({"Bars": items})


@_route
def stream_bars(app: SimApp, req: Request) -> Answer:
    bearer = req.bearer()
    _subject(app, req)
    symbol = _bars_request(app, req)
    back = _bars_back(req, 1)
    app.log("ts_stream_opened", symbol=symbol, barsback=back)
    return Answer(lines=_stream_lines(app, _state(app), symbol, back, bearer or ""), content_type=STREAM_CONTENT_TYPE)


def _stream_lines(app: SimApp, state: _State, symbol: str, back: int, bearer: str) -> Iterator[bytes]:
    step = app.interval_ns
    book = app.books[symbol]
    stream = _Stream()
    reason = "client_left"
    try:
        with app.lock:
            state.streams.append(stream)
            history = book.after_index(book.last_index - back)
            sent = book.last_index
        if history:
            yield b"".join(_line(_bar_json(b, step, end_of_history=b is history[-1])) for b in history) \
                + _line(_forming(history[-1], step))
        yield _line({"StreamStatus": "EndSnapshot"})
        last_write = time.monotonic()
        beats = 0
        while not app.stopping.is_set():
            with app.lock:
                app.new_bar.wait_for(lambda: book.last_index > sent or stream.goaway or app.stopping.is_set(),
                                     timeout=STREAM_WAKE_S)
                pending = book.after_index(sent)
                goaway = stream.goaway
                shown = []
                for bar in pending:
                    if stream.drop > 0:
                        stream.drop -= 1  # silently lost: no gap marker, heartbeats go on
                    else:
                        shown.append(bar)
            if goaway:
                reason = "goaway"
                yield _line({"StreamStatus": "GoAway"})
                return
            if app.tokens.subject_of(bearer) is None:
                reason = "token_expired"
                yield _line({"Error": "Unauthorized", "Message": "Access token expired"})
                return
            if pending:
                sent = pending[-1].index
            if shown:
                yield b"".join(_line(_bar_json(b, step, realtime=True)) for b in shown) + _line(_forming(shown[-1], step))
                last_write = time.monotonic()
            elif time.monotonic() - last_write >= HEARTBEAT_IDLE_S:
                beats += 1
                yield _line({"Heartbeat": beats, "Timestamp": _iso(time.time_ns())})
                last_write = time.monotonic()
        reason = "stopping"
    finally:
        with app.lock:
            if stream in state.streams:
                state.streams.remove(stream)
        app.log("ts_stream_closed", symbol=symbol, reason=reason)


# ---------------------------------------------------------------- admin


def _admin_body(req: Request) -> dict[str, Any]:
    body = req.json() if req.body else {}
    if not isinstance(body, dict):
        raise _Refused(400, "BadRequest", "body must be a JSON object")
    return body


@_route
def admin_rotation(app: SimApp, req: Request) -> Answer:
    body = _admin_body(req)
    rotate = body.get("rotate")
    if not isinstance(rotate, bool):
        raise _Refused(400, "BadRequest", "rotate must be true or false")
    _state(app).rotate = rotate
    app.log("ts_rotation_set", rotate=rotate)
    return json_answer({"rotate": rotate})


@_route
def admin_goaway(app: SimApp, req: Request) -> Answer:
    state = _state(app)
    with app.lock:
        for stream in state.streams:
            stream.goaway = True
        count = len(state.streams)
        app.new_bar.notify_all()
    app.log("ts_goaway", streams=count)
    return json_answer({"streams": count})


@_route
def admin_drop(app: SimApp, req: Request) -> Answer:
    bars = _admin_body(req).get("bars")
    if isinstance(bars, bool) or not isinstance(bars, int) or bars < 0:
        raise _Refused(400, "BadRequest", "bars must be a whole number >= 0")
    state = _state(app)
    with app.lock:
        for stream in state.streams:
            stream.drop = bars
        count = len(state.streams)
    app.log("ts_drop", level="warning", streams=count, bars=bars)
    return json_answer({"streams": count, "bars": bars})


@_route
def admin_state(app: SimApp, req: Request) -> Answer:
    state = _state(app)
    with app.lock:
        streams = len(state.streams)
        groups = [{"legs": list(g.legs), "parent": g.parent, "active": g.active, "done": g.done} for g in state.groups]
    return json_answer({"rotate": state.rotate, "streams": streams, "groups": groups, "tokens": app.tokens.stats()})


_ACCOUNTS = rf"{PREFIX}/v3/brokerage/accounts/(?P<ids>[^/]+)"

DIALECT = Dialect(
    name="tradestation",
    routes=(
        HttpRoute("POST", rf"{PREFIX}/oauth/token", token, "auth"),
        HttpRoute("POST", rf"{PREFIX}/v3/orderexecution/orders", place_order, "submit"),
        HttpRoute("POST", rf"{PREFIX}/v3/orderexecution/ordergroups", place_group, "submit"),
        HttpRoute("PUT", rf"{PREFIX}/v3/orderexecution/orders/(?P<order_id>[^/]+)", replace_order, "modify"),
        HttpRoute("DELETE", rf"{PREFIX}/v3/orderexecution/orders/(?P<order_id>[^/]+)", cancel_order, "cancel"),
        HttpRoute("GET", rf"{_ACCOUNTS}/orders", get_orders, "orders"),
        HttpRoute("GET", rf"{_ACCOUNTS}/orders/(?P<order_ids>[^/]+)", get_orders_by_id, "orders"),
        HttpRoute("GET", rf"{_ACCOUNTS}/historicalorders", get_historical_orders, "orders"),
        HttpRoute("GET", rf"{_ACCOUNTS}/positions", get_positions, "positions"),
        HttpRoute("GET", rf"{_ACCOUNTS}/balances", get_balances, None),
        HttpRoute("GET", rf"{PREFIX}/v3/marketdata/barcharts/(?P<symbol>[^/]+)", get_bars, "bars"),
        HttpRoute("GET", rf"{PREFIX}/v3/marketdata/stream/barcharts/(?P<symbol>[^/]+)", stream_bars, "stream"),
        HttpRoute("POST", rf"{PREFIX}/admin/rotation", admin_rotation, None),
        HttpRoute("POST", rf"{PREFIX}/admin/goaway", admin_goaway, None),
        HttpRoute("POST", rf"{PREFIX}/admin/drop", admin_drop, None),
        HttpRoute("GET", rf"{PREFIX}/admin/state", admin_state, None),
    ),
)


def demo_account(base_url: str, ws_url: str, sim_account: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(broker config, simulator-only credentials) of a tradestation account that reaches
    ``sim_account`` through this dialect (``services.sessions.seed_dialect_account``). TradeStation
    streams over HTTP: no WebSocket URL."""
    del ws_url
    root = base_url.rstrip("/")
    config = {"base_url": f"{root}{PREFIX}", "token_url": f"{root}{PREFIX}/oauth/token",
              "account_id": sim_account, "timeout_s": 5}
    return config, {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                    "refresh_token": f"{SEEDED_REFRESH_PREFIX}{sim_account}"}
