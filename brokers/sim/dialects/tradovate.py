"""Tradovate's wire dialect of the venue simulator (``--dialect tradovate``).

The simulator's ``Venue`` (orders, fills, positions, bars, fault plan) served through Tradovate's
REST API under ``/tradovate/v1/...`` and its WebSocket framing on the simulator's WebSocket port at
``/tradovate/md`` (market data) and ``/tradovate/trade`` (trading).

Credentials and accounts
------------------------
* ``POST /tradovate/v1/auth/accesstokenrequest`` accepts ``name`` ``demo`` with ``password``
  ``demo-password``; ``cid``/``sec`` are optional, but a ``sec`` that is given must be ``demo-sec``.
  ``appId``, ``appVersion``, ``deviceId`` are accepted as they come. Wrong credentials: HTTP 200
  ``{"errorText": …}``. The answer: ``accessToken``, ``mdAccessToken`` (two distinct tokens of the
  same user from ``app.tokens``), ``expirationTime`` (ISO), ``userId`` 1, ``name``.
* ``GET /tradovate/v1/auth/renewaccesstoken`` (Bearer) renews the session (``SimTokens.renew``):
  ``accessToken`` and ``expirationTime``, no ``mdAccessToken`` (as in Tradovate's documented
  renewal answer). A stale token → HTTP 401, empty body.
* The user ``demo`` owns every simulator account: ``accountId`` is the 1-based position of the sim
  account in ``--accounts``, ``accountSpec`` its name. Both sockets accept any live token of the user
  (access or market-data token).
* Any other route with a missing, unknown or expired token (``POST /v1/admin/expire-tokens``) →
  HTTP 401 with an empty body.

REST (prefix ``/tradovate/v1``; numbers are JSON numbers; business errors are HTTP 200)
--------------------------------------------------------------------------------------
=====  ================================  =======================================================
POST   /auth/accesstokenrequest          see above; penalty tickets via the admin route below
GET    /auth/renewaccesstoken            see above
GET    /account/list                     the user's accounts
GET    /contract/item?id= · /contract/find?name=   ``{id, name, …}``; 404 if unknown
POST   /order/placeorder                 ``{orderId}`` · ``{failureReason, failureText}`` · ``{violations}``
POST   /order/placeOSO                   entry + ``bracket1``/``bracket2`` → ``{orderId}`` (brackets below)
POST   /order/modifyorder                ``{orderId, orderQty, orderType, price?, stopPrice?}`` → ``{commandId}``
POST   /order/cancelorder                ``{orderId}`` → ``{commandId}`` · failure
GET    /order/list · /order/item?id= · /order/deps?masterid=<accountId>
GET    /position/list · /position/deps?masterid=<accountId>   ``netPos``, ``netPrice``
GET    /fill/list · /fill/deps?masterid=<orderId>             ``id, orderId, contractId, qty, price``
POST   /cashBalance/getcashbalancesnapshot  ``{accountId}`` → ``{totalCashValue, realizedPnL, …}``
=====  ================================  =======================================================

Simplifications, each a place where the real venue differs or is silent (*unconfirmed*):
order entities carry ``clOrdId``, ``orderType``, ``orderQty``, ``price``, ``stopPrice``,
``timeInForce``, ``filledQty``, ``avgPx`` and ``text`` themselves (Tradovate keeps these in
``orderVersion``/execution reports); ``placeorder`` insists on ``isAutomated: true``; a repeated
``clOrdId`` is refused by the simulator's venue (Tradovate documents nothing: never rely on it);
fill faults (delayed/duplicated fills) belong to the native fill *feed* — ``/fill/list`` is an
entity list and shows the venue's fills as they are; request faults (``/v1/admin/faults``) apply to
these routes under the calls ``submit`` (placeorder, placeOSO), ``cancel``, ``modify``, ``orders``
(order list/deps), ``lookup`` (order/item), ``positions``, ``fills``, ``auth`` (token request and
renewal) and ``stream`` (``md/getchart``).

Brackets: ``placeOSO`` places the entry at once and keeps its legs; when the entry fills, the legs
are placed (GTC, the entry's filled quantity; client ids from the leg's ``clOrdId`` or the entry's
id plus ``:b1``/``:b2``). With two legs they are one-cancels-other, enforced between bars: when one
has filled the other is cancelled before the next bar (both can fill within one bar, which a real
OCO would prevent). Legs wait invisibly until the entry fills (Tradovate lists them as Suspended).

WebSocket (one port; the path picks the socket)
-----------------------------------------------
Frames ``o``, ``h`` (every ``SERVER_HEARTBEAT_S`` when idle), ``a[…]``, ``c[code, reason]``; the
client authorises with ``authorize\\n<id>\\n\\n<token>`` → ``{"s":200,"i":id}`` or ``s: 401``; sends
``[]`` heartbeats (silent for ``CLIENT_TIMEOUT_S`` → closed). When the token that authorised a
socket stops being valid (expiry, ``expire-tokens``), the socket says so once with ``{"s":401,"i":<the
authorize id>,"d":"Access token expired"}`` and pauses its charts until it is authorised again; the
charts then resume where they stopped (*unconfirmed*: what the real venue does is undocumented).

``/tradovate/md``: ``md/getchart`` ``{symbol, chartDescription{underlyingType: MinuteBar|DailyBar,
elementSize, elementSizeUnit: UnderlyingUnits}, timeRange{closestTimestamp?, asFarAsTimestamp?,
asMuchAsElements?}}`` → ``{historicalId, realtimeId}``; the history as ``chart`` events of
``historicalId`` then ``{"id": historicalId, "eoh": true}``; then each new bar as a ``chart`` event
of ``realtimeId``. The simulator's bars are closed when made, so the dialect sends ONLY CLOSED BARS,
each once. Only the simulator's ``--interval`` is served (other sizes → ``s: 400``); an unknown
symbol → ``s: 404``. ``md/cancelchart {subscriptionId}`` ends a chart.
``/tradovate/trade``: any REST endpoint above as a request (``order/list\\n5\\n\\n``), answered
``{"s": status, "i": id, "d": body}``; no ``props`` events are pushed.

``demo_account(base_url, ws_url, sim_account)`` gives the broker config and secrets of an account
that trades ``sim_account`` through this dialect (the demo installation's seeding uses it).

Admin (no token): ``POST /tradovate/admin/penalty {"count": n, "p_time": s, "captcha": bool}`` — the
next n access-token requests answer with a penalty ticket (a resend with a ticket before its
``p_time`` has passed gets a new ticket for the rest of the wait); ``POST /tradovate/admin/rate-limit
{"count": n}`` — the next n REST requests answer HTTP 429 with an empty body; ``GET
/tradovate/admin/stats`` — counters (token requests, renewals, socket authorisations …).
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import re
import secrets
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import ConnectionClosed

from brokers.base import Bar, OrderRequest
from brokers.errors import UnknownSymbol
from brokers.instruments import INSTRUMENTS, canonical_root
from brokers.sim.dialects import Answer, BadRequest, Dialect, HttpRoute, Request
from brokers.sim.faults import Fault
from brokers.sim.venue import OrderRejected, UnknownOrder, VenueFill, VenueOrder
from brokers.symbols import tradovate as tradovate_symbols
from schema.enums import OrderStatus, OrderType, Side, TimeInForce

if TYPE_CHECKING:
    from brokers.sim.server import BarBook, SimApp

PREFIX = "/tradovate"
API = f"{PREFIX}/v1"
MD_PATH = f"{PREFIX}/md"
TRADE_PATH = f"{PREFIX}/trade"

DEMO_NAME = "demo"
DEMO_PASSWORD = "demo-password"
DEMO_SEC = "demo-sec"
USER_ID = 1
CONTRACT_ID_BASE = 2_700_000
"""Contract ids are this plus the symbol's position (served symbols first, others as met)."""
MAX_CLIENT_ORDER_ID_LEN = 64

SERVER_HEARTBEAT_S = 1.0
"""The dialect's ``h`` cadence when it has nothing else to send (the real venue's is about 2.5 s)."""
CLIENT_TIMEOUT_S = 15.0
"""A socket whose client sent nothing (not even ``[]``) for this long is closed."""
TOKEN_CHECK_S = 0.2
HISTORY_CHUNK = 100
"""Bars per history ``chart`` event (keeps frames small)."""
BRACKET_WATCH_S = 0.5

_STATUS = MappingProxyType({
    OrderStatus.ACCEPTED: "Working", OrderStatus.PARTIALLY_FILLED: "Working", OrderStatus.FILLED: "Filled",
    OrderStatus.CANCELLED: "Canceled", OrderStatus.REJECTED: "Rejected", OrderStatus.EXPIRED: "Expired",
})
_ACTIONS = MappingProxyType({Side.BUY: "Buy", Side.SELL: "Sell"})
_SIDES = MappingProxyType({v: k for k, v in _ACTIONS.items()})
_TYPES = MappingProxyType({"Market": OrderType.MARKET, "Limit": OrderType.LIMIT, "Stop": OrderType.STOP,
                           "StopLimit": OrderType.STOP_LIMIT})
_TYPE_NAMES = MappingProxyType({v: k for k, v in _TYPES.items()})
_TIFS = MappingProxyType({"Day": TimeInForce.DAY, "GTC": TimeInForce.GTC, "IOC": TimeInForce.IOC})
_TIF_NAMES = MappingProxyType({v: k for k, v in _TIFS.items()})
_SYMBOLS = tradovate_symbols()

# ---------------------------------------------------------------- JSON with numbers

_MARK = "\x00tv-dec:"
_MARKED = re.compile(r'"\\u0000tv-dec:(-?[0-9]+(?:\.[0-9]+)?)"')


def _number(value: object) -> object:
    if isinstance(value, Decimal) and value.is_finite():
        return _MARK + format(value, "f")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(payload: Any) -> str:
    """Tradovate writes prices and quantities as JSON numbers: Decimals become exact numbers."""
    return _MARKED.sub(r"\1", json.dumps(payload, default=_number, separators=(",", ":")))


def _answer(payload: Any, status: int = 200) -> Answer:
    return Answer(status=status, body=dumps(payload).encode())


def _empty(status: int) -> Answer:
    return Answer(status=status, body=b"")


def _iso(ts_ns: int) -> str:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ts_ns // 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _parse_iso(value: Any) -> int:
    if not isinstance(value, str):
        raise ValueError("a timestamp must be an ISO string")
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def _trade_date(ts_ns: int) -> dict[str, int]:
    day = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ts_ns // 1000)).date()
    return {"year": day.year, "month": day.month, "day": day.day}


def _td(ts_ns: int) -> int:
    d = _trade_date(ts_ns)
    return d["year"] * 10_000 + d["month"] * 100 + d["day"]


def _num_id(venue_id: str) -> int:
    """``O12`` / ``F3`` → 12 / 3: Tradovate's entity ids are numbers."""
    return int(venue_id[1:])


# ---------------------------------------------------------------- per-simulator state


@dataclass
class _BracketGroup:
    account: str
    entry_client_id: str
    legs: list[OrderRequest]
    placed: list[str] = field(default_factory=list)


class _State:
    """What the dialect keeps beside the venue: penalty and rate-limit knobs, contract ids, the
    brackets waiting for their entries, counters. Brackets are guarded by ``app.lock`` (they move
    with the venue); the rest by ``self.lock``."""

    def __init__(self, app: SimApp) -> None:
        self.lock = threading.Lock()
        self.penalty_count = 0
        self.penalty_time = Decimal(0)
        self.penalty_captcha = False
        self.tickets: dict[str, float] = {}
        """Penalty ticket → monotonic time from which a resend with it is accepted."""
        self.rate_limited = 0
        self.contract_ids: dict[str, int] = {s: CONTRACT_ID_BASE + i for i, s in enumerate(app.config.symbols)}
        self.brackets: list[_BracketGroup] = []
        self.watcher: threading.Thread | None = None
        self.commands = itertools.count(1)
        self.chart_ids = itertools.count(1)
        self.stats: collections.Counter[str] = collections.Counter()

    def count(self, name: str, by: int = 1) -> None:
        with self.lock:
            self.stats[name] += by

    def take_rate_limit(self) -> bool:
        with self.lock:
            if self.rate_limited > 0:
                self.rate_limited -= 1
                self.stats["rate_limited"] += 1
                return True
            return False

    def contract_id(self, symbol: str) -> int:
        with self.lock:
            if symbol not in self.contract_ids:
                self.contract_ids[symbol] = CONTRACT_ID_BASE + len(self.contract_ids)
            return self.contract_ids[symbol]

    def symbol_of(self, contract_id: int) -> str | None:
        with self.lock:
            return next((s for s, i in self.contract_ids.items() if i == contract_id), None)


_STATES: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def _state(app: SimApp) -> _State:
    with _STATES_LOCK:
        state = _STATES.get(app)
        if state is None:
            state = _STATES[app] = _State(app)
        return state


# ---------------------------------------------------------------- mapping helpers


def _account_id(app: SimApp, account: str) -> int:
    return app.config.accounts.index(account) + 1


def _account_named(app: SimApp, account_id: Any) -> str | None:
    if isinstance(account_id, bool) or not isinstance(account_id, int):
        return None
    accounts = app.config.accounts
    return accounts[account_id - 1] if 1 <= account_id <= len(accounts) else None


def _canonical(app: SimApp, raw: str) -> str:
    """Tradovate's ``ESZ6`` (or ``ESZ26``, or a root) → the simulator's canonical contract; what
    cannot be read goes to the venue as it came (the venue then refuses an unknown symbol)."""
    try:
        canonical = _SYMBOLS.to_canonical(raw)
    except UnknownSymbol:
        return raw
    if canonical in INSTRUMENTS:  # a root: the served contract of it, if there is exactly one
        served = [s for s in app.books if canonical_root(s) == canonical]
        return served[0] if len(served) == 1 else canonical
    return canonical


def _tv_symbol(symbol: str) -> str:
    try:
        return _SYMBOLS.to_broker(symbol)
    except UnknownSymbol:
        return symbol


def _venue_order(app: SimApp, order_id: Any) -> VenueOrder | None:
    """Call under ``app.lock``."""
    if isinstance(order_id, bool) or not isinstance(order_id, int):
        return None
    wanted = f"O{order_id}"
    return next((o for o in app.venue.all_orders() if o.order_id == wanted), None)


def _order_entity(app: SimApp, state: _State, order: VenueOrder) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "id": _num_id(order.order_id),
        "accountId": _account_id(app, order.account),
        "contractId": state.contract_id(order.symbol),
        "timestamp": _iso(order.updated_ns),
        "action": _ACTIONS[order.side],
        "ordStatus": _STATUS.get(order.status, "Unknown"),
        "clOrdId": order.client_order_id,
        "orderType": _TYPE_NAMES[order.order_type],
        "orderQty": order.quantity,
        "timeInForce": _TIF_NAMES[order.time_in_force],
        "filledQty": order.filled_quantity,
        "archived": False,
        "admin": False,
    }
    for key, value in (("price", order.limit_price), ("stopPrice", order.stop_price),
                       ("avgPx", order.average_price), ("text", order.reason)):
        if value is not None:
            entity[key] = value
    return entity


def _fill_entity(state: _State, fill: VenueFill) -> dict[str, Any]:
    return {"id": _num_id(fill.fill_id), "orderId": _num_id(fill.order_id), "contractId": state.contract_id(fill.symbol),
            "timestamp": _iso(fill.ts_ns), "tradeDate": _trade_date(fill.ts_ns), "action": _ACTIONS[fill.side],
            "qty": fill.quantity, "price": fill.price, "active": True, "finallyPaired": 0}


def _bar_json(bar: Bar) -> dict[str, Any]:
    up = (bar.volume / 2).to_integral_value(rounding=ROUND_FLOOR)
    return {"timestamp": _iso(bar.ts_ns), "open": bar.open, "high": bar.high, "low": bar.low, "close": bar.close,
            "upVolume": up, "downVolume": bar.volume - up, "upTicks": 0, "downTicks": 0,
            "bidVolume": 0, "offerVolume": 0}


def _violations(*problems: tuple[str, str]) -> Answer:
    return _answer({"violations": [{"constraint": c, "description": d} for c, d in problems]})


def _failure(text: str, reason: str = "UnknownReason") -> Answer:
    return _answer({"failureReason": reason, "failureText": text})


def _object(req: Request) -> dict[str, Any]:
    body = req.json()
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, Decimal)) and not isinstance(value, bool)


# ---------------------------------------------------------------- auth


def _issue_ticket(state: _State, wait: Decimal, captcha: bool) -> Answer:
    ticket = secrets.token_urlsafe(18)
    with state.lock:
        state.tickets[ticket] = time.monotonic() + float(wait)
        state.stats["penalties"] += 1
    return _answer({"p-ticket": ticket, "p-time": wait, "p-captcha": captcha})


def access_token_request(app: SimApp, req: Request) -> Answer:
    state = _state(app)
    if state.take_rate_limit():
        return _empty(429)
    body = _object(req)
    state.count("token_requests")
    ticket = body.get("p-ticket")
    with state.lock:
        ready_at = state.tickets.pop(ticket, None) if isinstance(ticket, str) else None
        early = ready_at is not None and time.monotonic() < ready_at
        penalise = not early and state.penalty_count > 0
        if penalise:
            state.penalty_count -= 1
        wait, captcha = state.penalty_time, state.penalty_captcha
    if early:
        assert ready_at is not None
        remaining = Decimal(str(round(ready_at - time.monotonic(), 3))).max(Decimal(0))
        app.log("tradovate_penalty", level="warning", reason="ticket used early", p_time=remaining)
        return _issue_ticket(state, remaining, False)
    if penalise:
        app.log("tradovate_penalty", level="warning", reason="admin", p_time=wait, captcha=captcha)
        return _issue_ticket(state, wait, captcha)
    name, password, sec = body.get("name"), body.get("password"), body.get("sec")
    if name != DEMO_NAME or password != DEMO_PASSWORD:
        state.count("token_refused")
        app.log("tradovate_auth_refused", level="warning", reason="credentials")
        return _answer({"errorText": "Incorrect username or password. Please try again, noting that passwords "
                                     "are case-sensitive."})
    if sec is not None and sec != DEMO_SEC:
        state.count("token_refused")
        app.log("tradovate_auth_refused", level="warning", reason="api key")
        return _answer({"errorText": "The app is not registered"})
    access = app.tokens.issue(DEMO_NAME)
    md = app.tokens.issue(DEMO_NAME)
    state.count("tokens_issued")
    app.log("tradovate_token_issued", user=DEMO_NAME)
    return _answer({"accessToken": access.access_token, "mdAccessToken": md.access_token,
                    "expirationTime": _iso(int(access.expires_at * 1e9)), "userStatus": "Active",
                    "userId": USER_ID, "name": DEMO_NAME, "hasLive": False})


def renew_access_token(app: SimApp, req: Request) -> Answer:
    state = _state(app)
    if state.take_rate_limit():
        return _empty(429)
    token = req.bearer()
    issued = app.tokens.renew(token) if token else None
    if issued is None:
        state.count("renewals_refused")
        return _empty(401)
    state.count("renewals")
    app.log("tradovate_token_renewed", user=issued.subject)
    return _answer({"accessToken": issued.access_token, "expirationTime": _iso(int(issued.expires_at * 1e9)),
                    "userStatus": "Active", "userId": USER_ID, "name": issued.subject, "hasLive": False})


def _authed(handler: Callable[[SimApp, Request, _State], Answer]) -> Callable[[SimApp, Request], Answer]:
    def guarded(app: SimApp, req: Request) -> Answer:
        state = _state(app)
        if state.take_rate_limit():
            return _empty(429)
        if app.tokens.subject_of(req.bearer()) is None:
            return _empty(401)
        return handler(app, req, state)

    return guarded


# ---------------------------------------------------------------- reads


def _int_arg(req: Request, name: str) -> int:
    raw = req.arg(name)
    if raw is None or not raw.lstrip("-").isdigit():
        raise BadRequest(f"query parameter {name!r} must be an integer")
    return int(raw)


def account_list(app: SimApp, req: Request, state: _State) -> Answer:
    return _answer([{"id": i + 1, "name": a, "userId": USER_ID, "accountType": "Customer", "active": True,
                     "marginAccountType": "Speculator", "legalStatus": "Individual", "archived": False}
                    for i, a in enumerate(app.config.accounts)])


def _contract(state: _State, contract_id: int, symbol: str) -> dict[str, Any]:
    entity: dict[str, Any] = {"id": contract_id, "name": _tv_symbol(symbol), "contractMaturityId": contract_id - 1_000,
                              "status": "DefinitionChecked"}
    try:
        entity["providerTickSize"] = INSTRUMENTS[canonical_root(symbol)].tick_size
    except (UnknownSymbol, ValueError, KeyError):
        pass  # a symbol only a refused order ever named
    return entity


def contract_item(app: SimApp, req: Request, state: _State) -> Answer:
    contract_id = _int_arg(req, "id")
    symbol = state.symbol_of(contract_id)
    return _empty(404) if symbol is None else _answer(_contract(state, contract_id, symbol))


def contract_find(app: SimApp, req: Request, state: _State) -> Answer:
    name = req.arg("name") or ""
    symbol = _canonical(app, name)
    if symbol not in app.books:
        return _empty(404)
    return _answer(_contract(state, state.contract_id(symbol), symbol))


def order_list(app: SimApp, req: Request, state: _State) -> Answer:
    with app.lock:
        orders = app.venue.all_orders()
    return _answer([_order_entity(app, state, o) for o in orders])


def order_deps(app: SimApp, req: Request, state: _State) -> Answer:
    account = _account_named(app, _int_arg(req, "masterid"))
    with app.lock:
        orders = [] if account is None else app.venue.orders(account)
    return _answer([_order_entity(app, state, o) for o in orders])


def order_item(app: SimApp, req: Request, state: _State) -> Answer:
    with app.lock:
        order = _venue_order(app, _int_arg(req, "id"))
    return _empty(404) if order is None else _answer(_order_entity(app, state, order))


def _position_entities(app: SimApp, state: _State, account: str | None) -> list[dict[str, Any]]:
    with app.lock:
        positions = app.venue.all_positions()
        now_ns = app.venue.now_ns
    return [{"id": n + 1, "accountId": _account_id(app, p.account), "contractId": state.contract_id(p.symbol),
             "timestamp": _iso(now_ns), "tradeDate": _trade_date(now_ns), "netPos": p.quantity,
             **({"netPrice": p.average_price} if p.average_price is not None else {}), "prevPos": 0}
            for n, p in enumerate(positions) if account is None or p.account == account]


def position_list(app: SimApp, req: Request, state: _State) -> Answer:
    return _answer(_position_entities(app, state, None))


def position_deps(app: SimApp, req: Request, state: _State) -> Answer:
    account = _account_named(app, _int_arg(req, "masterid"))
    return _answer([] if account is None else _position_entities(app, state, account))


def fill_list(app: SimApp, req: Request, state: _State) -> Answer:
    with app.lock:
        fills = app.venue.all_fills()
    return _answer([_fill_entity(state, f) for f in fills])


def fill_deps(app: SimApp, req: Request, state: _State) -> Answer:
    order_id = f"O{_int_arg(req, 'masterid')}"
    with app.lock:
        fills = [f for f in app.venue.all_fills() if f.order_id == order_id]
    return _answer([_fill_entity(state, f) for f in fills])


def cash_balance_snapshot(app: SimApp, req: Request, state: _State) -> Answer:
    account = _account_named(app, _object(req).get("accountId"))
    if account is None:
        return _answer({"errorText": "Access is denied: unknown accountId"})
    with app.lock:
        summary = app.venue.summary(account)
    return _answer({"accountId": _account_id(app, account), "totalCashValue": summary.equity,
                    "realizedPnL": summary.realized_pnl, "initialMargin": 0, "openPnL": 0})


# ---------------------------------------------------------------- commands


def _order_fields(app: SimApp, body: Mapping[str, Any], *, side_required: bool = True,
                  default_tif: str = "Day") -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The fields of an order (entry or bracket leg) and the violations found."""
    problems: list[tuple[str, str]] = []
    fields: dict[str, Any] = {}
    action = body.get("action")
    if action in _SIDES:
        fields["side"] = _SIDES[action]
    elif side_required or action is not None:
        problems.append(("action", "action must be Buy or Sell"))
    order_type = body.get("orderType")
    if order_type in _TYPES:
        fields["order_type"] = _TYPES[order_type]
    else:
        problems.append(("orderType", "orderType must be Market, Limit, Stop or StopLimit"))
    for key, name in (("price", "limit_price"), ("stopPrice", "stop_price")):
        value = body.get(key)
        if value is None:
            fields[name] = None
        elif _is_number(value):
            fields[name] = Decimal(value)
        else:
            problems.append((key, f"{key} must be a number"))
    tif = body.get("timeInForce", default_tif)
    if tif in _TIFS:
        fields["time_in_force"] = _TIFS[tif]
    else:
        problems.append(("timeInForce", "timeInForce must be Day, GTC or IOC here"))
    client_id = body.get("clOrdId")
    if client_id is not None and (not isinstance(client_id, str) or not client_id
                                  or len(client_id) > MAX_CLIENT_ORDER_ID_LEN):
        problems.append(("clOrdId", f"clOrdId must be a string of 1..{MAX_CLIENT_ORDER_ID_LEN} characters"))
    fields["client_order_id"] = client_id
    quantity = body.get("orderQty")
    if quantity is not None and not _is_number(quantity):
        problems.append(("orderQty", "orderQty must be a number"))
    fields["quantity"] = None if quantity is None else Decimal(quantity) if _is_number(quantity) else None
    return fields, problems


def _entry(app: SimApp, body: Mapping[str, Any]) -> tuple[str | None, OrderRequest | None, list[tuple[str, str]]]:
    fields, problems = _order_fields(app, body)
    account = _account_named(app, body.get("accountId"))
    spec = body.get("accountSpec")
    if account is None and isinstance(spec, str) and spec in app.config.accounts and body.get("accountId") is None:
        account = spec
    if account is None:
        problems.append(("accountId", "accountId must name one of the user's accounts"))
    elif spec is not None and spec != account:
        problems.append(("accountSpec", "accountSpec does not match accountId"))
    symbol = body.get("symbol")
    if not isinstance(symbol, str) or not symbol:
        problems.append(("symbol", "symbol is required"))
    if fields["quantity"] is None:
        problems.append(("orderQty", "orderQty is required"))
    if body.get("isAutomated") is not True:
        problems.append(("isAutomated", "orders placed by a program must say isAutomated: true"))
    if problems:
        return None, None, problems
    request = OrderRequest(
        client_order_id=fields["client_order_id"] or f"tv-{uuid.uuid4().hex[:20]}",
        symbol=_canonical(app, str(symbol)), side=fields["side"], order_type=fields["order_type"],
        quantity=fields["quantity"], limit_price=fields["limit_price"], stop_price=fields["stop_price"],
        time_in_force=fields["time_in_force"])
    return account, request, []


def _submit(app: SimApp, account: str, request: OrderRequest) -> VenueOrder | Answer:
    try:
        with app.lock:
            order = app.venue.submit(account, request)
    except OrderRejected as exc:
        app.log("order_rejected", level="warning", account=account, client_order_id=request.client_order_id,
                reason=exc.reason, dialect="tradovate")
        return _failure(exc.reason)
    app.log("order_accepted", account=account, client_order_id=order.client_order_id, order_id=order.order_id,
            symbol=order.symbol, side=order.side, order_type=order.order_type, quantity=order.quantity,
            after_index=order.submitted_after_index, dialect="tradovate")
    return order


def place_order(app: SimApp, req: Request, state: _State) -> Answer:
    account, request, problems = _entry(app, _object(req))
    if problems:
        return _violations(*problems)
    assert account is not None and request is not None
    placed = _submit(app, account, request)
    return placed if isinstance(placed, Answer) else _answer({"orderId": _num_id(placed.order_id)})


def place_oso(app: SimApp, req: Request, state: _State) -> Answer:
    body = _object(req)
    account, request, problems = _entry(app, body)
    legs: list[OrderRequest] = []
    raw_legs = [(n, body.get(f"bracket{n}")) for n in (1, 2)]
    if all(raw is None for _, raw in raw_legs):
        problems.append(("bracket1", "an OSO needs bracket1 and/or bracket2"))
    for number, raw in raw_legs:
        if raw is None:
            continue
        if not isinstance(raw, dict):
            problems.append((f"bracket{number}", "must be an object"))
            continue
        fields, leg_problems = _order_fields(app, raw, default_tif="GTC")
        problems.extend((f"bracket{number}.{c}", d) for c, d in leg_problems)
        if request is not None and not leg_problems:
            if fields["side"] is request.side:
                problems.append((f"bracket{number}.action", "a bracket works against its entry (opposite action)"))
                continue
            legs.append(OrderRequest(
                client_order_id=fields["client_order_id"] or f"{request.client_order_id}:b{number}",
                symbol=request.symbol, side=fields["side"], order_type=fields["order_type"],
                quantity=fields["quantity"] or request.quantity, limit_price=fields["limit_price"],
                stop_price=fields["stop_price"], time_in_force=fields["time_in_force"]))
    if problems:
        return _violations(*problems)
    assert account is not None and request is not None
    placed = _submit(app, account, request)
    if isinstance(placed, Answer):
        return placed
    with app.lock:
        state.brackets.append(_BracketGroup(account, request.client_order_id, legs))
    _ensure_bracket_watcher(app, state)
    app.log("tradovate_oso_placed", account=account, client_order_id=request.client_order_id,
            legs=[leg.client_order_id for leg in legs])
    return _answer({"orderId": _num_id(placed.order_id)})


def cancel_order(app: SimApp, req: Request, state: _State) -> Answer:
    body = _object(req)
    with app.lock:
        order = _venue_order(app, body.get("orderId"))
        if order is None:
            return _failure("order not found")
        try:
            app.venue.cancel(order.account, order.client_order_id)
        except (OrderRejected, UnknownOrder) as exc:
            reason = exc.reason if isinstance(exc, OrderRejected) else "order not found"
            app.log("cancel_rejected", level="warning", account=order.account,
                    client_order_id=order.client_order_id, reason=reason, dialect="tradovate")
            return _failure(reason)
    app.log("order_cancelled", account=order.account, client_order_id=order.client_order_id,
            order_id=order.order_id, dialect="tradovate")
    return _answer({"commandId": next(state.commands)})


def modify_order(app: SimApp, req: Request, state: _State) -> Answer:
    body = _object(req)
    fields, problems = _order_fields(app, body, side_required=False)
    if fields["quantity"] is None:
        problems.append(("orderQty", "orderQty is required"))
    if body.get("isAutomated") is not True:
        problems.append(("isAutomated", "orders changed by a program must say isAutomated: true"))
    if problems:
        return _violations(*problems)
    with app.lock:
        order = _venue_order(app, body.get("orderId"))
        if order is None:
            return _failure("order not found")
        if fields["order_type"] is not order.order_type:
            return _failure("the order type cannot be changed")
        try:
            changed = app.venue.modify(order.account, order.client_order_id, quantity=fields["quantity"],
                                       limit_price=fields["limit_price"], stop_price=fields["stop_price"])
        except (OrderRejected, UnknownOrder) as exc:
            reason = exc.reason if isinstance(exc, OrderRejected) else "order not found"
            app.log("modify_rejected", level="warning", account=order.account,
                    client_order_id=order.client_order_id, reason=reason, dialect="tradovate")
            return _failure(reason)
    app.log("order_modified", account=changed.account, client_order_id=changed.client_order_id,
            order_id=changed.order_id, quantity=changed.quantity, limit_price=changed.limit_price,
            stop_price=changed.stop_price, dialect="tradovate")
    return _answer({"commandId": next(state.commands)})


# ---------------------------------------------------------------- brackets


def _ensure_bracket_watcher(app: SimApp, state: _State) -> None:
    with state.lock:
        if state.watcher is not None:
            return
        state.watcher = threading.Thread(target=_watch_brackets, args=(app, state), name="tradovate-brackets",
                                         daemon=True)
    state.watcher.start()


def _watch_brackets(app: SimApp, state: _State) -> None:
    """After every bar (or every ``BRACKET_WATCH_S``): place the legs of filled entries, cancel the
    other leg of a filled one."""
    try:
        while not app.stopping.is_set():
            with app.lock:
                app.new_bar.wait(timeout=BRACKET_WATCH_S)
                if app.stopping.is_set():
                    return
                events = _advance_brackets(app, state)
            for action, fields in events:
                app.log(action, dialect="tradovate", **fields)
    except Exception as exc:  # noqa: BLE001 - the watcher dying must be visible in the log
        app.log("tradovate_bracket_watcher_failed", level="error", error=f"{type(exc).__name__}: {exc}")


def _advance_brackets(app: SimApp, state: _State) -> list[tuple[str, dict[str, Any]]]:
    """Call under ``app.lock``; returns log lines to write after releasing it."""
    events: list[tuple[str, dict[str, Any]]] = []
    venue = app.venue
    for group in list(state.brackets):
        entry = venue.order_by_client_id(group.account, group.entry_client_id)
        if entry is None:
            state.brackets.remove(group)
            continue
        if not group.placed:
            if entry.status is OrderStatus.FILLED:
                for leg in group.legs:
                    try:
                        venue.submit(group.account, dataclasses.replace(leg, quantity=entry.filled_quantity))
                        group.placed.append(leg.client_order_id)
                        events.append(("tradovate_bracket_leg_placed", {"client_order_id": leg.client_order_id}))
                    except OrderRejected as exc:
                        events.append(("tradovate_bracket_leg_rejected",
                                       {"client_order_id": leg.client_order_id, "reason": exc.reason}))
                if not group.placed:
                    state.brackets.remove(group)
            elif entry.status.is_terminal:
                state.brackets.remove(group)
            continue
        legs = [venue.order_by_client_id(group.account, cid) for cid in group.placed]
        if any(leg is not None and leg.status is OrderStatus.FILLED for leg in legs):
            for leg in legs:
                if leg is not None and leg.is_working:
                    venue.cancel(group.account, leg.client_order_id)
                    events.append(("tradovate_bracket_leg_cancelled", {"client_order_id": leg.client_order_id,
                                                                        "why": "the other leg filled"}))
            state.brackets.remove(group)
        elif not any(leg is not None and leg.is_working for leg in legs):
            state.brackets.remove(group)
    return events


# ---------------------------------------------------------------- admin


def admin_penalty(app: SimApp, req: Request) -> Answer:
    body = _object(req)
    count, p_time, captcha = body.get("count"), body.get("p_time", 1), body.get("captcha", False)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise BadRequest("field 'count' must be a non-negative integer")
    if not _is_number(p_time) or Decimal(p_time) < 0 or Decimal(p_time) > 3600:
        raise BadRequest("field 'p_time' must be a number of seconds in 0..3600")
    if not isinstance(captcha, bool):
        raise BadRequest("field 'captcha' must be a boolean")
    state = _state(app)
    with state.lock:
        state.penalty_count, state.penalty_time, state.penalty_captcha = count, Decimal(p_time), captcha
    app.log("tradovate_penalty_set", count=count, p_time=p_time, captcha=captcha)
    return _answer({"count": count, "p_time": Decimal(p_time), "captcha": captcha})


def admin_rate_limit(app: SimApp, req: Request) -> Answer:
    count = _object(req).get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise BadRequest("field 'count' must be a non-negative integer")
    state = _state(app)
    with state.lock:
        state.rate_limited = count
    app.log("tradovate_rate_limit_set", count=count)
    return _answer({"count": count})


def admin_stats(app: SimApp, req: Request) -> Answer:
    state = _state(app)
    with app.lock:
        pending = len(state.brackets)
    with state.lock:
        stats = dict(state.stats)
    return _answer({**stats, "tokens": app.tokens.stats(), "brackets_pending": pending})


# ---------------------------------------------------------------- routes


def _route(method: str, path: str, handler: Callable[..., Answer], call: str | None = None, *,
           authed: bool = True) -> HttpRoute:
    return HttpRoute(method, re.escape(API + path) if authed else re.escape(path),
                     _authed(handler) if authed else handler, call)


ROUTES: tuple[HttpRoute, ...] = (
    _route("POST", f"{API}/auth/accesstokenrequest", access_token_request, "auth", authed=False),
    _route("GET", f"{API}/auth/renewaccesstoken", renew_access_token, "auth", authed=False),
    _route("GET", "/account/list", account_list),
    _route("GET", "/contract/item", contract_item),
    _route("GET", "/contract/find", contract_find),
    _route("POST", "/order/placeorder", place_order, "submit"),
    _route("POST", "/order/placeOSO", place_oso, "submit"),
    _route("POST", "/order/modifyorder", modify_order, "modify"),
    _route("POST", "/order/cancelorder", cancel_order, "cancel"),
    _route("GET", "/order/list", order_list, "orders"),
    _route("GET", "/order/deps", order_deps, "orders"),
    _route("GET", "/order/item", order_item, "lookup"),
    _route("GET", "/position/list", position_list, "positions"),
    _route("GET", "/position/deps", position_deps, "positions"),
    _route("GET", "/fill/list", fill_list, "fills"),
    _route("GET", "/fill/deps", fill_deps, "fills"),
    _route("POST", "/cashBalance/getcashbalancesnapshot", cash_balance_snapshot),
    _route("POST", f"{PREFIX}/admin/penalty", admin_penalty, authed=False),
    _route("POST", f"{PREFIX}/admin/rate-limit", admin_rate_limit, authed=False),
    _route("GET", f"{PREFIX}/admin/stats", admin_stats, authed=False),
)
_API_ROUTES = {route.pattern: route for route in ROUTES if route.pattern.startswith(re.escape(API))}


# ---------------------------------------------------------------- WebSocket


class _Drop(Exception):
    """End the connection without a close frame (an injected reset)."""


@dataclass
class _Chart:
    historical_id: int
    realtime_id: int
    symbol: str
    book: BarBook
    sent: int


class _Session:
    """One WebSocket connection: a reader thread fills the inbox; this loop answers requests and
    sends chart bars, waking on new bars (``app.new_bar``) or on client frames."""

    def __init__(self, app: SimApp, connection: Any, *, market_data: bool) -> None:
        self.app = app
        self.state = _state(app)
        self.connection = connection
        self.market_data = market_data
        self.inbox: collections.deque[str] = collections.deque()
        self.closed = threading.Event()
        self.token: str | None = None
        self.auth_id: int | None = None
        self.charts: dict[int, _Chart] = {}
        self.last_client = time.monotonic()
        self.last_sent = time.monotonic()
        self.last_token_check = time.monotonic()

    def run(self) -> None:
        reader = threading.Thread(target=self._read, name="tradovate-ws-reader", daemon=True)
        reader.start()
        kind = "md" if self.market_data else "trade"
        self.app.log("tradovate_ws_opened", socket=kind)
        try:
            self._send("o")
            while not self.app.stopping.is_set() and not self.closed.is_set():
                with self.app.lock:
                    self.app.new_bar.wait_for(
                        lambda: self.app.stopping.is_set() or self.closed.is_set() or bool(self.inbox)
                        or self._bars_due(), timeout=TOKEN_CHECK_S)
                    updates = self._pending_bars()
                while self.inbox:
                    self._handle(self.inbox.popleft())
                self._check_token()
                for chart, bars in updates:
                    self._send_bars(chart.realtime_id, bars)
                now = time.monotonic()
                if now - self.last_sent >= SERVER_HEARTBEAT_S:
                    self._send("h")
                if now - self.last_client > CLIENT_TIMEOUT_S:
                    self._send("c" + dumps([4000, "no heartbeat from the client"]))
                    break
        except _Drop:
            self._drop()
            return
        except (ConnectionClosed, OSError):
            pass  # the client left
        finally:
            self.app.log("tradovate_ws_closed", socket=kind)
        try:
            self.connection.close()
        except Exception:  # noqa: BLE001 - already gone
            pass

    # -- plumbing

    def _read(self) -> None:
        try:
            for message in self.connection:
                self.inbox.append(message if isinstance(message, str) else message.decode(errors="replace"))
                self.last_client = time.monotonic()
                with self.app.lock:
                    self.app.new_bar.notify_all()
        except Exception:  # noqa: BLE001 - the connection ended (closed, reset): the loop sees it
            pass
        finally:
            self.closed.set()
            with self.app.lock:
                self.app.new_bar.notify_all()

    def _send(self, frame: str) -> None:
        self.connection.send(frame)
        self.last_sent = time.monotonic()

    def _respond(self, request_id: int, status: int, data: Any = None) -> None:
        item: dict[str, Any] = {"s": status, "i": request_id}
        if data is not None:
            item["d"] = data
        self._send("a" + dumps([item]))

    def _event(self, name: str, data: Any) -> None:
        self._send("a" + dumps([{"e": name, "d": data}]))

    def _drop(self) -> None:
        try:
            self.connection.socket.close()
        except OSError:
            pass

    # -- requests

    def _handle(self, message: str) -> None:
        if message.strip() == "[]":
            return  # the client's heartbeat
        parts = message.split("\n", 3)
        if len(parts) < 2 or not parts[1].strip().lstrip("-").isdigit():
            self._respond(-1, 400, "malformed request: endpoint\\nid\\nquery\\nbody expected")
            return
        endpoint, request_id = parts[0].strip(), int(parts[1])
        query = parts[2] if len(parts) > 2 else ""
        body = parts[3] if len(parts) > 3 else ""
        if endpoint == "authorize":
            self._authorize(request_id, body.strip())
            return
        if self.token is None:
            self._respond(request_id, 401, "Access is denied")
            return
        if self.market_data:
            if endpoint.lower() == "md/getchart":
                self._get_chart(request_id, body)
            elif endpoint.lower() == "md/cancelchart":
                self._cancel_chart(request_id, body)
            else:
                self._respond(request_id, 404, f"Not found: {endpoint}")
            return
        self._trade_request(endpoint, request_id, query, body)

    def _authorize(self, request_id: int, token: str) -> None:
        if token and self.app.tokens.subject_of(token) is not None:
            self.token, self.auth_id = token, request_id
            self.state.count("ws_authorized")
            self._respond(request_id, 200)
        else:
            self.state.count("ws_refused")
            self._respond(request_id, 401, "Access is denied")

    def _check_token(self) -> None:
        if self.token is None or time.monotonic() - self.last_token_check < TOKEN_CHECK_S:
            return
        self.last_token_check = time.monotonic()
        if self.app.tokens.subject_of(self.token) is None:
            self.token = None
            self.state.count("ws_token_expired")
            self.app.log("tradovate_ws_token_expired", level="warning", socket="md" if self.market_data else "trade")
            self._respond(self.auth_id if self.auth_id is not None else 0, 401, "Access token expired")

    def _json_body(self, request_id: int, body: str) -> dict[str, Any] | None:
        try:
            data = json.loads(body, parse_float=Decimal) if body.strip() else None
        except ValueError:
            data = None
        if not isinstance(data, dict):
            self._respond(request_id, 400, "the body must be a JSON object")
            return None
        return data

    def _get_chart(self, request_id: int, raw: str) -> None:
        with self.app.lock:
            fired = self.app.faults.for_request("stream")
        if fired is not None:
            self.app.log("fault_injected", level="warning", call="stream", fault=fired.fault, rule=fired.index,
                         path=MD_PATH, dialect="tradovate")
            if fired.fault.resets:
                raise _Drop
            if fired.fault is Fault.ACK_LOST:
                return  # the answer never comes
            self._respond(request_id, 500, "injected fault")
            return
        body = self._json_body(request_id, raw)
        if body is None:
            return
        symbol = body.get("symbol")
        book = self.app.books.get(_canonical(self.app, symbol)) if isinstance(symbol, str) else None
        if book is None:
            self._respond(request_id, 404, f"Unknown symbol: {str(symbol)[:40]}")
            return
        try:
            wanted_ns = _element_ns(body.get("chartDescription"))
            closest, farthest, count = _time_range(body.get("timeRange"))
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            self._respond(request_id, 400, f"bad chart request: {exc}")
            return
        if wanted_ns != self.app.interval_ns:
            self._respond(request_id, 400, f"this venue serves {self.app.config.interval} bars only")
            return
        with self.app.lock:
            history = [b for b in book.after_index(-1)
                       if (closest is None or b.ts_ns <= closest) and (farthest is None or b.ts_ns >= farthest)]
            sent = book.last_index
        if count is not None:
            history = history[-count:] if count > 0 else []
        chart = _Chart(next(self.state.chart_ids) * 2 + 100_000, 0, str(symbol), book, sent)
        chart.realtime_id = chart.historical_id + 1
        self.charts[chart.historical_id] = chart
        self._respond(request_id, 200, {"historicalId": chart.historical_id, "realtimeId": chart.realtime_id})
        for start in range(0, len(history), HISTORY_CHUNK):
            self._send_bars(chart.historical_id, history[start:start + HISTORY_CHUNK])
        self._event("chart", {"charts": [{"id": chart.historical_id, "eoh": True}]})

    def _cancel_chart(self, request_id: int, raw: str) -> None:
        body = self._json_body(request_id, raw)
        if body is None:
            return
        wanted = body.get("subscriptionId")
        for key, chart in list(self.charts.items()):
            if wanted in (chart.historical_id, chart.realtime_id):
                del self.charts[key]
        self._respond(request_id, 200)

    def _bars_due(self) -> bool:
        """Call under ``app.lock``."""
        return self.token is not None and any(c.book.last_index > c.sent for c in self.charts.values())

    def _pending_bars(self) -> list[tuple[_Chart, list[Bar]]]:
        """Call under ``app.lock``: the new bars of every chart (none while unauthorised)."""
        if self.token is None:
            return []
        updates = []
        for chart in self.charts.values():
            bars = chart.book.after_index(chart.sent)
            if bars:
                chart.sent = bars[-1].index
                updates.append((chart, bars))
        return updates

    def _send_bars(self, chart_id: int, bars: list[Bar]) -> None:
        if bars:
            self._event("chart", {"charts": [{"id": chart_id, "td": _td(bars[-1].ts_ns),
                                              "bars": [_bar_json(b) for b in bars]}]})

    def _trade_request(self, endpoint: str, request_id: int, query: str, body: str) -> None:
        path = f"{API}/{endpoint.strip('/')}"
        route = next((r for pattern, r in _API_ROUTES.items() if re.fullmatch(pattern, path)), None)
        if route is None:
            self._respond(request_id, 404, f"Not found: {endpoint}")
            return
        request = Request(route.method, path, {}, parse_qs(query, keep_blank_values=True),
                          {"authorization": f"Bearer {self.token}"}, body.encode())
        try:
            answer = route.handler(self.app, request)
        except BadRequest as exc:
            self._respond(request_id, 400, str(exc))
            return
        data = json.loads(answer.body, parse_float=Decimal) if answer.body else None
        self._respond(request_id, answer.status, data)


def _element_ns(description: Any) -> int:
    if not isinstance(description, dict):
        raise TypeError("chartDescription must be an object")
    size = description["elementSize"]
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError("elementSize must be a positive integer")
    if description.get("elementSizeUnit", "UnderlyingUnits") != "UnderlyingUnits":
        raise ValueError("elementSizeUnit must be UnderlyingUnits")
    unit = {"MinuteBar": 60, "DailyBar": 86_400}.get(description.get("underlyingType"))
    if unit is None:
        raise ValueError("underlyingType must be MinuteBar or DailyBar here")
    return size * unit * 1_000_000_000


def _time_range(raw: Any) -> tuple[int | None, int | None, int | None]:
    if not isinstance(raw, dict):
        raise TypeError("timeRange must be an object")
    closest = raw.get("closestTimestamp")
    farthest = raw.get("asFarAsTimestamp")
    count = raw.get("asMuchAsElements")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise ValueError("asMuchAsElements must be a non-negative integer")
    if closest is None and farthest is None and count is None:
        raise ValueError("timeRange needs closestTimestamp, asFarAsTimestamp or asMuchAsElements")
    return (None if closest is None else _parse_iso(closest), None if farthest is None else _parse_iso(farthest),
            count)


def websocket(app: SimApp, connection: Any) -> None:
    """Both Tradovate sockets on the simulator's one WebSocket port, told apart by the path."""
    path = urlsplit(connection.request.path).path
    if path not in (MD_PATH, TRADE_PATH):
        connection.close(code=1008, reason=f"no socket at {path[:60]}")
        return
    _Session(app, connection, market_data=path == MD_PATH).run()


def demo_account(base_url: str, ws_url: str, sim_account: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(broker config, secrets) of a tradovate account that reaches ``sim_account`` through this
    dialect on a simulator at ``base_url``/``ws_url`` (``services.sessions.seed_dialect_account``).
    The account id is left out: the adapter finds it by name in ``/account/list``."""
    config = {"base_url": f"{base_url.rstrip('/')}{API}", "md_ws_url": f"{ws_url.rstrip('/')}{MD_PATH}",
              "account_spec": sim_account, "timeout_s": 5}
    return config, {"name": DEMO_NAME, "password": DEMO_PASSWORD}


DIALECT = Dialect(name="tradovate", routes=ROUTES, websocket=websocket)
