"""The Schwab dialect of the venue simulator: OAuth2, ``userPreference``, ``pricehistory`` and the
streamer WebSocket (``CHART_FUTURES``), over the simulator's own bar books.

Schwab is a market-data source here (its Trader API cannot place futures orders), so the dialect
serves no order routes; the matching engine is untouched by it.

Credentials it accepts
----------------------
* app key ``sim-app-key``, app secret ``sim-app-secret`` (HTTP Basic on the token endpoint);
* refresh token ``sim-refresh-<account>`` for every ``--accounts`` entry (seeded when the first
  token request arrives), living 7 days from then; it never rotates (Schwab's refresh grant returns
  the same refresh token: ``SimTokens.refresh(rotate=False)``);
* authorization code ``sim-code-<account>`` (any ``redirect_uri``; reusable, unlike Schwab's
  single-use codes) → a NEW refresh token for that account, 7 days from then.

The token's subject is the sim account; the streamer's ``schwabClientCustomerId`` is
``sim-customer-<account>``, its ``schwabClientCorrelId`` a random id per account and run.

Routes (prefix ``/schwab``)
---------------------------
=======  =====================================  ===============================================
POST     /schwab/v1/oauth/token                 form ``grant_type=refresh_token|authorization_code``;
                                                200 ``{access_token, refresh_token, expires_in,
                                                token_type, scope, id_token}``; 401
                                                ``invalid_client``; 400 ``invalid_grant`` (dead or
                                                unknown refresh token / code), ``invalid_request``,
                                                ``unsupported_grant_type``
GET      /schwab/trader/v1/userPreference       Bearer; ``{accounts, streamerInfo: [{streamerSocketUrl,
                                                schwabClientCustomerId, schwabClientCorrelId,
                                                schwabClientChannel, schwabClientFunctionId}], offers}``
GET      /schwab/marketdata/v1/pricehistory     Bearer; ``symbol`` (``/ESZ26``, ``/ES``), ``frequencyType=minute``,
                                                ``frequency`` (the simulator's interval only),
                                                ``startDate``/``endDate`` (ms) → ``{candles, symbol, empty}``
WS       /schwab/stream                         the streamer (below)
POST     /schwab/admin/refresh-expiry           ``{"days_left": n, "account"?}``: the venue-side expiry of
                                                the account's refresh tokens becomes now + n days
                                                (n ≤ 0: dead now, refresh grants get ``invalid_grant``)
POST     /schwab/admin/stream-notify            ``{"code": n, "msg"?, "close"?}``: every logged-in
                                                streamer connection gets ``{"notify": [{service:
                                                ADMIN, content: {code, msg}}]}`` (closed after if
                                                ``close``, default for codes 3, 12, 30)
GET      /schwab/admin/stats                    counters: token grants, connections, logins,
                                                re-logins, login denials, kicks
=======  =====================================  ===============================================

A stale or unknown access token on REST → 401 ``{"errors": [{id, status, title, detail}]}``.
Faults: ``pricehistory`` is call ``bars``, ``userPreference`` is call ``stream`` (the first step of
every stream); the token route has no fault call (``brokers.sim.faults`` has no ``auth`` call).

Time: the simulator's bar clock runs ahead of the wall clock (one interval per ``--pace``), so an
``endDate`` at or after the wall clock's now (``END_DATE_SLACK_MS`` of transit allowed) — or none —
means "up to the latest bar". An unknown or unserved symbol gets ``{"candles": [], "empty": true}``.

The streamer
------------
Frames as VENUES.md states them. ``ADMIN LOGIN`` (``parameters.Authorization`` = the raw access
token, ``SchwabClientCustomerId`` must match it) → code 0, or code 3 LOGIN_DENIED and the socket
closes. A second LOGIN on a logged-in socket re-authorises it with the new token. Commands before
LOGIN or with other customer/correlation ids → code 20; unreadable frames or commands → 21;
services other than ``CHART_FUTURES`` → 11; SUBS without keys → 22. ``CHART_FUTURES SUBS|ADD``
(keys = Schwab symbols) sends the latest closed bar at once, then each bar when it completes —
one message per bar, sent once (the real service may resend a forming bar; the adapter copes) —
as ``{"data": [{service, timestamp, command, content: [{key, seq, "0".."6"}]}]}`` with JSON numbers.
Heartbeats ``{"notify": [{"heartbeat": ms}]}`` every ``HEARTBEAT_S`` when idle.

When the access token the socket logged in with expires (TTL or ``POST /v1/admin/expire-tokens``)
the connection gets ``{"response": [{service: ADMIN, command: LOGIN, content: {code: 3, …}}]}``
and is closed. One streamer connection per user, as Schwab allows: a new LOGIN of the same
account closes the older connection with code 12 CLOSE_CONNECTION (which side Schwab closes is
*unconfirmed*).
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from brokers.base import Bar
from brokers.errors import UnknownSymbol
from brokers.instruments import INSTRUMENTS, canonical_root
from brokers.sim.dialects import Answer, Dialect, HttpRoute, Request, json_answer
from brokers.symbols import schwab as schwab_symbols

if TYPE_CHECKING:
    from brokers.sim.server import SimApp

PREFIX = "/schwab"
STREAM_PATH = f"{PREFIX}/stream"
APP_KEY = "sim-app-key"
APP_SECRET = "sim-app-secret"  # noqa: S105 - a fixed demo credential of the simulator
REFRESH_TOKEN_PREFIX = "sim-refresh-"
AUTH_CODE_PREFIX = "sim-code-"
CUSTOMER_PREFIX = "sim-customer-"
REFRESH_TOKEN_LIFETIME_S = 7 * 86400.0
HEARTBEAT_S = 1.0
READ_POLL_S = 0.5
"""How often a connection's reader looks up from ``recv`` to notice the venue stopping."""
END_DATE_SLACK_MS = 5_000
MAX_CANDLES = 200_000
WRITER_JOIN_S = 5.0
READY_FILE = "venue-sim.json"
"""Mirrors ``brokers.sim.server.READY_FILE`` (not imported: the server may be running as ``__main__``)."""
CHART_FIELDS = tuple(range(7))
SEVERING_CODES = frozenset({3, 12, 30})

# ---------------------------------------------------------------- wire JSON (numbers, not strings)

_NUMBER_MARK = "\u0000num:"
_MARKED_NUMBER = re.compile(r'"\\u0000num:(-?[0-9]+(?:\.[0-9]+)?)"')


def wire_json(payload: Any) -> str:
    """JSON with ``Decimal`` written as an exact JSON number, as Schwab sends prices."""

    def default(value: object) -> object:
        if isinstance(value, Decimal):
            return _NUMBER_MARK + format(value, "f")
        raise TypeError(f"not JSON serialisable: {type(value).__name__}")

    return _MARKED_NUMBER.sub(r"\1", json.dumps(payload, default=default, separators=(",", ":")))


def _wire_answer(payload: Any, status: int = 200) -> Answer:
    return Answer(status=status, body=wire_json(payload).encode())


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------- per-simulator state


@dataclass
class _RefreshGrant:
    subject: str
    expires_at: float
    """Wall-clock seconds."""


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    seeded: bool = False
    refresh: dict[str, _RefreshGrant] = field(default_factory=dict)
    correl: dict[str, str] = field(default_factory=dict)
    connections: set[_Connection] = field(default_factory=set)
    ws_url: str | None = None
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("refresh_grants", "code_grants", "grants_refused", "connections", "logins", "relogins", "login_denied",
         "kicked", "subscriptions"), 0))

    def count(self, name: str) -> None:
        with self.lock:
            self.stats[name] += 1


_STATES: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def _state(app: SimApp) -> _State:
    with _STATES_LOCK:
        state = _STATES.get(app)
        if state is None:
            state = _STATES[app] = _State()
    with state.lock:
        if not state.seeded:
            for account in app.config.accounts:
                token = REFRESH_TOKEN_PREFIX + account
                app.tokens.seed_refresh(account, token)
                state.refresh[token] = _RefreshGrant(account, time.time() + REFRESH_TOKEN_LIFETIME_S)
            state.seeded = True
    return state


def _customer_id(subject: str) -> str:
    return CUSTOMER_PREFIX + subject


def _correl_id(state: _State, subject: str) -> str:
    with state.lock:
        return state.correl.setdefault(subject, uuid.uuid4().hex)


def _ws_base(app: SimApp, state: _State) -> str | None:
    """The simulator's WebSocket URL: ``app.ws_url`` if the server sets one, else its ready file."""
    url = getattr(app, "ws_url", None) or state.ws_url
    if isinstance(url, str) and url:
        return url
    try:
        info = json.loads((app.config.state_dir / READY_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("pid") != os.getpid() or not isinstance(info.get("ws_url"), str):
        return None
    state.ws_url = info["ws_url"]
    return state.ws_url


def _book_symbol(app: SimApp, symbol: str) -> str | None:
    """The simulator's book for a Schwab symbol (``/ESZ26`` → ``ESZ6``; ``/ES`` → the first served ES
    contract), or None."""
    try:
        canonical = schwab_symbols().to_canonical(symbol.strip().upper())
    except UnknownSymbol:
        return None
    if canonical in app.books:
        return canonical
    if canonical in INSTRUMENTS:
        for book in app.books:
            if canonical_root(book) == canonical:
                return book
    return None


# ---------------------------------------------------------------- REST answers


def _oauth_error(status: int, error: str, description: str) -> Answer:
    return json_answer({"error": error, "error_description": description}, status)


def _errors(status: int, title: str, detail: str) -> Answer:
    return json_answer({"errors": [{"id": str(uuid.uuid4()), "status": status, "title": title, "detail": detail}]},
                       status)


def _unauthorized() -> Answer:
    return _errors(401, "Unauthorized", "Client not authorized")


def _basic_client(req: Request) -> tuple[str, str] | None:
    scheme, _, value = (req.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        key, sep, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return (key, secret) if sep else None


def _token_answer(access_token: str, refresh_token: str, expires_in_s: int) -> Answer:
    return json_answer({"expires_in": max(1, expires_in_s), "token_type": "Bearer", "scope": "api",
                        "refresh_token": refresh_token, "access_token": access_token,
                        "id_token": secrets.token_urlsafe(24)})


def post_token(app: SimApp, req: Request) -> Answer:
    state = _state(app)
    if _basic_client(req) != (APP_KEY, APP_SECRET):
        state.count("grants_refused")
        return _oauth_error(401, "invalid_client", "Client authentication failed")
    form = req.form()
    grant = form.get("grant_type")
    if grant == "refresh_token":
        refresh_token = form.get("refresh_token")
        if not refresh_token:
            return _oauth_error(400, "invalid_request", "refresh_token is required")
        with state.lock:
            entry = state.refresh.get(refresh_token)
            alive = entry is not None and entry.expires_at > time.time()
        issued = app.tokens.refresh(refresh_token, rotate=False) if alive else None
        if issued is None:
            state.count("grants_refused")
            app.log("schwab_refresh_refused", level="warning")
            return _oauth_error(400, "invalid_grant", "The refresh token is invalid or expired; log in again")
        state.count("refresh_grants")
        return _token_answer(issued.access_token, issued.refresh_token, issued.expires_in_s)
    if grant == "authorization_code":
        code, redirect_uri = form.get("code"), form.get("redirect_uri")
        if not code or not redirect_uri:
            return _oauth_error(400, "invalid_request", "code and redirect_uri are required")
        subject = code[len(AUTH_CODE_PREFIX):] if code.startswith(AUTH_CODE_PREFIX) else ""
        if subject not in app.config.accounts:
            state.count("grants_refused")
            return _oauth_error(400, "invalid_grant", "The authorization code is invalid or expired")
        issued = app.tokens.issue(subject)
        with state.lock:
            state.refresh[issued.refresh_token] = _RefreshGrant(subject, time.time() + REFRESH_TOKEN_LIFETIME_S)
        state.count("code_grants")
        return _token_answer(issued.access_token, issued.refresh_token, issued.expires_in_s)
    return _oauth_error(400, "unsupported_grant_type", "grant_type must be authorization_code or refresh_token")


def get_user_preference(app: SimApp, req: Request) -> Answer:
    state = _state(app)
    subject = app.tokens.subject_of(req.bearer())
    if subject is None:
        return _unauthorized()
    ws_url = _ws_base(app, state)
    if ws_url is None:
        return _errors(503, "Service Unavailable", "the streamer is not ready")
    return json_answer({
        "accounts": [{"accountNumber": f"SIM-{subject}", "primaryAccount": True, "type": "BROKERAGE",
                      "nickName": subject, "displayAcctId": f"...{subject[-3:]}", "autoPositionEffect": False,
                      "accountColor": "Green"}],
        "streamerInfo": [{"streamerSocketUrl": ws_url + STREAM_PATH, "schwabClientCustomerId": _customer_id(subject),
                          "schwabClientCorrelId": _correl_id(state, subject), "schwabClientChannel": "N9",
                          "schwabClientFunctionId": "APIAPP"}],
        "offers": [{"level2Permissions": False, "mktDataPermission": "NP"}],
    })


def _int_arg(req: Request, name: str) -> int | None:
    raw = req.arg(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        return -1


def _candle(bar: Bar) -> dict[str, Any]:
    return {"open": bar.open, "high": bar.high, "low": bar.low, "close": bar.close, "volume": bar.volume,
            "datetime": bar.ts_ns // 1_000_000}


def get_price_history(app: SimApp, req: Request) -> Answer:
    _state(app)
    if app.tokens.subject_of(req.bearer()) is None:
        return _unauthorized()
    symbol = req.arg("symbol")
    if not symbol:
        return _errors(400, "Bad Request", "symbol is required")
    frequency_type = req.arg("frequencyType", "minute")
    frequency = _int_arg(req, "frequency") or 1
    if frequency_type != "minute" or frequency * 60 * 1_000_000_000 != app.interval_ns:
        return _errors(400, "Bad Request", f"frequencyType={frequency_type} frequency={frequency} is not served; "
                                           f"the simulator has {app.config.interval} bars only")
    start_ms, end_ms = _int_arg(req, "startDate"), _int_arg(req, "endDate")
    if (start_ms is not None and start_ms < 0) or (end_ms is not None and end_ms < 0):
        return _errors(400, "Bad Request", "startDate and endDate must be epoch milliseconds")
    book = _book_symbol(app, symbol)
    if book is None:
        return _wire_answer({"candles": [], "symbol": symbol, "empty": True})
    open_ended = end_ms is None or end_ms >= _now_ms() - END_DATE_SLACK_MS
    with app.lock:
        bars = app.books[book].after_ts((start_ms or 0) * 1_000_000 - 1, MAX_CANDLES)
    if not open_ended:
        bars = [b for b in bars if b.ts_ns // 1_000_000 <= end_ms]  # type: ignore[operator]
    candles = [_candle(b) for b in bars]
    return _wire_answer({"candles": candles, "symbol": symbol, "empty": not candles})


# ---------------------------------------------------------------- admin


def _number(body: Mapping[str, Any], name: str) -> Decimal:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise ValueError(name)
    return Decimal(value)


def post_refresh_expiry(app: SimApp, req: Request) -> Answer:
    state = _state(app)
    body = req.json()
    try:
        if not isinstance(body, dict):
            raise ValueError("body")
        days = _number(body, "days_left")
    except (ValueError, InvalidOperation):
        return json_answer({"error": "bad_request", "message": "body must be {\"days_left\": number, \"account\"?: str}"},
                           400)
    account = body.get("account")
    if account is not None and account not in app.config.accounts:
        return json_answer({"error": "bad_request", "message": f"unknown account {account!r}"}, 400)
    expires_at = time.time() + float(days) * 86400
    with state.lock:
        updated = [g for g in state.refresh.values() if account is None or g.subject == account]
        for grant in updated:
            grant.expires_at = expires_at
    app.log("schwab_refresh_expiry_set", level="warning", account=account, days_left=float(days), tokens=len(updated))
    return json_answer({"updated": len(updated), "expires_at_ms": int(expires_at * 1000)})


def post_stream_notify(app: SimApp, req: Request) -> Answer:
    state = _state(app)
    body = req.json()
    code = body.get("code") if isinstance(body, dict) else None
    if isinstance(code, bool) or not isinstance(code, int):
        return json_answer({"error": "bad_request", "message": "body must be {\"code\": int, \"msg\"?, \"close\"?}"}, 400)
    msg = body.get("msg") if isinstance(body.get("msg"), str) else f"code {code}"
    close = body.get("close")
    close = code in SEVERING_CODES if not isinstance(close, bool) else close
    with state.lock:
        live = [c for c in state.connections if c.subject is not None]
    with app.lock:
        for conn in live:
            conn.notices.append((code, msg, close))
        app.new_bar.notify_all()
    app.log("schwab_stream_notify", level="warning", code=code, close=close, connections=len(live))
    return json_answer({"notified": len(live)})


def get_stats(app: SimApp, req: Request) -> Answer:
    state = _state(app)
    with state.lock:
        stats = dict(state.stats)
        stats["live_connections"] = len(state.connections)
    return json_answer(stats)


# ---------------------------------------------------------------- the streamer WebSocket


@dataclass
class _Subscription:
    book: str
    sent: int
    fields: tuple[int, ...]


class _Connection:
    """One streamer socket: the handler thread reads commands, a writer thread sends bars,
    heartbeats and notices. ``token``/``subject``/``subs``/``notices`` are guarded by ``app.lock``
    (whose condition, ``app.new_bar``, wakes the writer)."""

    def __init__(self, app: SimApp, state: _State, ws: Any) -> None:
        self.app = app
        self.state = state
        self.ws = ws
        self.send_lock = threading.Lock()
        self.closed = threading.Event()
        self.token: str | None = None
        self.subject: str | None = None
        self.login_request_id = "0"
        self.subs: dict[str, _Subscription] = {}
        self.notices: list[tuple[int, str, bool]] = []
        self.seq = 0

    # -- lifecycle

    def run(self) -> None:
        with self.state.lock:
            self.state.connections.add(self)
            self.state.stats["connections"] += 1
        writer = threading.Thread(target=self._write_loop, name="schwab-stream-writer", daemon=True)
        writer.start()
        try:
            self._read_loop()
        finally:
            self.closed.set()
            with self.app.lock:
                self.app.new_bar.notify_all()
            writer.join(WRITER_JOIN_S)
            with self.state.lock:
                self.state.connections.discard(self)
            self._close(1000, "bye")

    def _close(self, code: int, reason: str) -> None:
        self.closed.set()
        try:
            self.ws.close(code, reason)
        except Exception:  # noqa: BLE001 - closing a connection that is already gone
            pass

    def _send(self, payload: Any) -> bool:
        try:
            with self.send_lock:
                self.ws.send(wire_json(payload))
            return True
        except Exception:  # noqa: BLE001 - the client left (ConnectionClosed, OSError …)
            self.closed.set()
            return False

    def _reply(self, service: str, command: str, request_id: str | None, code: int, msg: str) -> None:
        self._send({"response": [{"service": service, "command": command, "requestid": request_id,
                                  "SchwabClientCorrelId": _correl_id(self.state, self.subject) if self.subject else None,
                                  "timestamp": _now_ms(), "content": {"code": code, "msg": msg}}]})

    # -- reading commands

    def _read_loop(self) -> None:
        while not self.closed.is_set() and not self.app.stopping.is_set():
            try:
                raw = self.ws.recv(timeout=READ_POLL_S)
            except TimeoutError:
                continue
            except Exception:  # noqa: BLE001 - ConnectionClosed and friends: the client left
                return
            self._on_frame(raw)

    def _on_frame(self, raw: str | bytes) -> None:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            self._reply("ADMIN", "UNKNOWN", None, 21, "BAD_COMMAND_FORMAT: the frame is not JSON")
            return
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            self._reply("ADMIN", "UNKNOWN", None, 21, "BAD_COMMAND_FORMAT: expected {\"requests\": [...]}")
            return
        for request in requests:
            self._on_request(request)

    def _on_request(self, request: Any) -> None:
        if not isinstance(request, dict):
            self._reply("ADMIN", "UNKNOWN", None, 21, "BAD_COMMAND_FORMAT: a request must be an object")
            return
        service, command, rid = request.get("service"), request.get("command"), request.get("requestid")
        params = request.get("parameters", {})
        if not isinstance(service, str) or not isinstance(command, str) or rid is None or not isinstance(params, dict):
            self._reply(str(service), str(command), None if rid is None else str(rid), 21,
                        "BAD_COMMAND_FORMAT: service, command, requestid and parameters are required")
            return
        rid = str(rid)
        if (service, command) == ("ADMIN", "LOGIN"):
            self._login(rid, request, params)
            return
        if self.subject is None:
            self._reply(service, command, rid, 20, "STREAM_CONN_NOT_FOUND: LOGIN first")
            return
        if (request.get("SchwabClientCustomerId") != _customer_id(self.subject)
                or request.get("SchwabClientCorrelId") != _correl_id(self.state, self.subject)):
            self._reply(service, command, rid, 20, "STREAM_CONN_NOT_FOUND: customer or correlation id does not match")
            return
        if service == "ADMIN":
            if command == "LOGOUT":
                self._reply(service, command, rid, 0, "SUCCESS")
                self._close(1000, "logout")
            else:
                self._reply(service, command, rid, 21, f"BAD_COMMAND_FORMAT: unknown ADMIN command {command[:20]}")
            return
        if service != "CHART_FUTURES":
            self._reply(service, command, rid, 11, "SERVICE_NOT_AVAILABLE: the simulator streams CHART_FUTURES only")
            return
        if command in ("SUBS", "ADD"):
            self._subscribe(command, rid, params)
        elif command == "UNSUBS":
            keys = params.get("keys")
            with self.app.lock:
                for key in (keys.split(",") if isinstance(keys, str) else []):
                    self.subs.pop(key.strip(), None)
            self._reply(service, command, rid, 0, "UNSUBS command succeeded")
        else:
            self._reply(service, command, rid, 21, f"BAD_COMMAND_FORMAT: unknown command {command[:20]}")

    def _login(self, rid: str, request: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        token = params.get("Authorization")
        subject = self.app.tokens.subject_of(token) if isinstance(token, str) else None
        reason = None
        if subject is None:
            reason = "the access token is invalid or expired"
        elif request.get("SchwabClientCustomerId") != _customer_id(subject):
            reason = "SchwabClientCustomerId does not match the access token"
        elif self.subject not in (None, subject):
            reason = "this connection belongs to another user"
        if reason is not None:
            self.state.count("login_denied")
            self.app.log("schwab_login_denied", level="warning", reason=reason)
            self._reply("ADMIN", "LOGIN", rid, 3, f"Login denied: {reason}")
            self._close(1000, "login denied")
            return
        assert subject is not None
        relogin = self.subject is not None
        with self.app.lock:
            self.token, self.subject, self.login_request_id = token, subject, rid  # type: ignore[assignment]
            self.app.new_bar.notify_all()
        self.state.count("relogins" if relogin else "logins")
        self._reply("ADMIN", "LOGIN", rid, 0, "server=venue-sim;status=NP")
        if not relogin:
            self._kick_others(subject)

    def _kick_others(self, subject: str) -> None:
        with self.state.lock:
            others = [c for c in self.state.connections if c is not self and c.subject == subject]
            self.state.stats["kicked"] += len(others)
        with self.app.lock:
            for other in others:
                other.notices.append((12, "CLOSE_CONNECTION: another streamer connection of this user logged in",
                                      True))
            self.app.new_bar.notify_all()

    def _subscribe(self, command: str, rid: str, params: Mapping[str, Any]) -> None:
        keys = params.get("keys")
        wanted = [k.strip() for k in keys.split(",") if k.strip()] if isinstance(keys, str) else []
        if not wanted:
            self._reply("CHART_FUTURES", command, rid, 22, f"FAILED_COMMAND_{command}: no keys")
            return
        fields = CHART_FIELDS
        raw_fields = params.get("fields")
        if raw_fields is not None:
            try:
                fields = tuple(sorted({int(f) for f in str(raw_fields).split(",") if f.strip()}))
            except ValueError:
                self._reply("CHART_FUTURES", command, rid, 21, "BAD_COMMAND_FORMAT: fields must be numbers")
                return
        with self.app.lock:
            if command == "SUBS":
                self.subs = {}
            for key in wanted:
                book = _book_symbol(self.app, key)
                if book is None:
                    continue  # like the venue: an unknown symbol simply never sends data
                # The latest closed bar goes out at once (the snapshot), then each new one.
                self.subs[key] = _Subscription(book, self.app.books[book].last_index - 1, fields)
            self.app.new_bar.notify_all()
        self.state.count("subscriptions")
        self._reply("CHART_FUTURES", command, rid, 0, f"{command} command succeeded")

    # -- writing bars, heartbeats, notices

    def _has_news(self) -> bool:
        if self.closed.is_set() or self.app.stopping.is_set() or self.notices:
            return True
        return any(self.app.books[s.book].last_index > s.sent for s in self.subs.values())

    def _write_loop(self) -> None:
        app = self.app
        last_sent = time.monotonic()
        while not self.closed.is_set() and not app.stopping.is_set():
            with app.lock:
                app.new_bar.wait_for(self._has_news, timeout=HEARTBEAT_S)
                notices, self.notices = self.notices, []
                token, login_rid = self.token, self.login_request_id
                items = []
                for key, sub in self.subs.items():
                    for bar in app.books[sub.book].after_index(sub.sent):
                        items.append(self._item(key, bar, sub.fields))
                        sub.sent = bar.index
            if self.closed.is_set() or app.stopping.is_set():
                return
            for code, msg, close in notices:
                self._send({"notify": [{"service": "ADMIN", "timestamp": _now_ms(),
                                        "content": {"code": code, "msg": msg}}]})
                if close:
                    self._close(1000, f"code {code}")
                    return
            if token is not None and app.tokens.subject_of(token) is None:
                self.state.count("login_denied")
                app.log("schwab_stream_token_expired", level="warning", subject=self.subject)
                self._reply("ADMIN", "LOGIN", login_rid, 3, "Login denied: the access token expired")
                self._close(1000, "login denied")
                return
            if items:
                self._send({"data": [{"service": "CHART_FUTURES", "timestamp": _now_ms(), "command": "SUBS",
                                      "content": items}]})
                last_sent = time.monotonic()
            elif time.monotonic() - last_sent >= HEARTBEAT_S:
                self._send({"notify": [{"heartbeat": str(_now_ms())}]})
                last_sent = time.monotonic()

    def _item(self, key: str, bar: Bar, fields: tuple[int, ...]) -> dict[str, Any]:
        self.seq += 1
        values: dict[int, Any] = {0: key, 1: bar.ts_ns // 1_000_000, 2: bar.open, 3: bar.high, 4: bar.low,
                                  5: bar.close, 6: bar.volume}
        item: dict[str, Any] = {"seq": self.seq, "key": key}
        item.update({str(f): values[f] for f in fields if f in values})
        return item


def websocket(app: SimApp, connection: Any) -> None:
    path = urlsplit(connection.request.path).path
    if path != STREAM_PATH:
        connection.close(1008, f"no streamer at {path[:60]}")
        return
    _Connection(app, _state(app), connection).run()


DIALECT = Dialect(
    name="schwab",
    routes=(
        HttpRoute("POST", rf"{PREFIX}/v1/oauth/token", post_token, "auth"),
        HttpRoute("GET", rf"{PREFIX}/trader/v1/userPreference", get_user_preference, "stream"),
        HttpRoute("GET", rf"{PREFIX}/marketdata/v1/pricehistory", get_price_history, "bars"),
        HttpRoute("POST", rf"{PREFIX}/admin/refresh-expiry", post_refresh_expiry, None),
        HttpRoute("POST", rf"{PREFIX}/admin/stream-notify", post_stream_notify, None),
        HttpRoute("GET", rf"{PREFIX}/admin/stats", get_stats, None),
    ),
    websocket=websocket,
)


def demo_account(sim_url: str, ws_url: str, sim_account: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The broker-account config and (simulator-only) credentials that reach this dialect: what
    ``tradebus init`` seeds when ``[venue_sim] dialect = "schwab"``. The socket URL comes from
    ``userPreference``, as with the real venue."""
    del ws_url
    return ({"base_url": f"{sim_url}/schwab", "timeout_s": 5},
            {"app_key": APP_KEY, "app_secret": APP_SECRET, "refresh_token": f"{REFRESH_TOKEN_PREFIX}{sim_account}"})
