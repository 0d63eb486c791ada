"""The venue simulator as a real HTTP server in its own process.

``python -m brokers.sim.server --port 0 --state-dir DIR`` (or ``tradebus venue-sim``) serves the
pure ``Venue`` over JSON/HTTP so the engine's processes never share its memory: killing an engine
process is an honest test. A producer thread emits one bar per symbol every ``--pace`` wall seconds
(simulated bar time advances by ``--interval`` per bar) and feeds it to the venue; one lock guards
the venue and the bar books, and a condition on that lock wakes bar streams.

Readiness: once listening, ``<state-dir>/venue-sim.json`` (``{"url", "pid"}``) is written
atomically. SIGTERM/SIGINT shut down in order (stop intake, stop the producer, end streams, remove
the readiness file) and exit 0. Logs are JSON lines on stdout.

Endpoints (prefix ``/v1``; bodies and answers are JSON, Decimals as strings):

=======  ==========================================  ==================================================
GET      /health                                     ``{"status": "ok", "symbols", "last_index", "exhausted"}``
                                                     (``"lockstep": {released, produced, exhausted}`` with --lockstep)
GET      /instruments                                served symbols with tick size, point value …
POST     /orders                                     200 order · 422 ``{"error": "rejected", "reason"}``
GET      /orders?account=&status=open                ``{"orders": [...]}`` (status omitted: all)
GET      /orders/by-client-id/{cid}?account=         200 order · 404 ``{"error": "not_found"}``
POST     /orders/{cid}/cancel                        body ``{account}``; 200 · 404 · 422
POST     /orders/{cid}/modify                        body ``{account, quantity?, limit_price?, stop_price?}``
GET      /positions?account=                         ``{"positions": [...]}``
GET      /fills?account=&after_seq=&limit=           ``{"fills": [...], "last_seq": n}``
GET      /accounts/{account}/summary                 ``{"account", "starting_equity", "realized_pnl", "equity"}``;
                                                     404 ``{"error": "unknown_account"}``
GET      /bars/{symbol}?interval=&after_ts_ns=&limit=  ``{"bars": [...]}`` oldest first; no cursor: the latest
GET      /bars/{symbol}/stream?interval=&after_index=  chunked NDJSON: bars, ``{"heartbeat": n}`` when idle;
                                                     409 if after_index is past the latest bar (venue restarted)
GET      /admin/stats                                ``submissions`` per client id, ``faults_hit`` per rule, counts
GET      /admin/orders                               ``{"orders": [...]}`` every order of every account
GET      /admin/fills                                ``{"fills": [...]}`` every fill once (the truth, not the feed)
GET      /admin/positions                            ``{"positions": [...]}`` non-flat, every account
GET      /admin/faults                               ``{"rules": [{call, fault, probability, count, delay_s, hits}], "seed"}``
POST     /admin/faults                               body ``{"seed"?, "rules": [...]}`` replaces all rules; 400 names the bad field
DELETE   /admin/faults                               clears the rules
POST     /admin/release                              --lockstep only: body ``{"index": n}`` lets bar rounds up to n
                                                     be produced (``brokers.sim.lockstep``); 409 without --lockstep
=======  ==========================================  ==================================================

Fault injection (``brokers.sim.faults``): rules, set over HTTP or with ``--faults FILE`` at start,
make requests fail (500, an answer that never comes, a reset connection; before or after the venue
acted) and make the fill feed that ``GET /fills`` serves lag or repeat itself (``brokers.sim.fill_feed``);
orders, positions and the admin views always show the truth at once. Each fault fired is logged
as ``fault_injected``. ``submissions`` counts only submits the venue acted on.

Bad JSON or fields → 400 naming the field; unknown path → 404 ``{"error": "no_route"}`` (distinct
from an order's ``not_found`` so a wrong URL is never read as "no such order"); any internal error
→ 500 with no details. The server never dies on a request.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, MappingProxyType
from typing import IO, Any
from urllib.parse import parse_qs, unquote, urlsplit

from brokers.base import Bar, OrderRequest
from brokers.instruments import INSTRUMENTS, canonical_root, front_contract, instrument, is_contract, parse_contract
from brokers.intervals import interval_ns
from brokers.sim.dialects import Answer, Dialect, Request, load_dialect
from brokers.sim.dialects import BadRequest as DialectBadRequest
from brokers.sim.dialects.tokens import DEFAULT_TTL_S as DEFAULT_TOKEN_TTL_S
from brokers.sim.dialects.tokens import SimTokens
from brokers.sim.faults import Fault, FaultConfigError, FaultPlan, FaultRule, Fired, parse_fault_config
from brokers.sim.feed import CsvFeed, RandomWalkFeed
from brokers.sim.lockstep import LockstepGate, Lookahead, run_lockstep
from brokers.sim.fill_feed import FeedMessage, FillFeed
from brokers.sim.venue import (
    DEFAULT_STARTING_EQUITY,
    AccountSummary,
    OrderRejected,
    UnknownAccount,
    UnknownOrder,
    Venue,
    VenueFill,
    VenueOrder,
    VenuePosition,
)
from schema.enums import OrderType, Side, TimeInForce

PROCESS_NAME = "venue-sim"
READY_FILE = "venue-sim.json"
API_PREFIX = "/v1"

DEFAULT_PORT = 8765
DEFAULT_INTERVAL = "1m"
DEFAULT_PACE_S = 1.0
DEFAULT_SEED = 7
DEFAULT_HISTORY = 50
DEFAULT_ACCOUNTS = "SIM1"
DEFAULT_STATE_DIR = "state"
DEFAULT_SYMBOL_ROOTS = ("ES", "6E")
"""Without ``--symbols``: today's front contracts of these roots."""

HEARTBEAT_INTERVAL_S = 1.0
"""A stream with no new bar for this long sends ``{"heartbeat": n}`` so clients can tell idle from dead."""
MAX_BODY_BYTES = 64 * 1024
MAX_CLIENT_ORDER_ID_LEN = 64
"""The strictest venue we mirror (Deribit's ``label``) allows 64 characters."""
MAX_BARS_KEPT = 200_000
"""Per symbol; older bars are dropped (a day at pace 0.5 s is ~170k bars)."""
DEFAULT_BARS_LIMIT = 500
MAX_BARS_LIMIT = 10_000
DEFAULT_FILLS_LIMIT = 1000
CONNECTION_IDLE_TIMEOUT_S = 60.0
"""An idle keep-alive connection (or a stalled stream write) is dropped after this long."""
SHUTDOWN_JOIN_S = 5.0
TRACE_STREAMS_ENV = "TRADEBUS_SIM_TRACE_STREAMS"
"""Set to ``1``: log ``bars_streamed`` (with the write time in ns) for every batch a bar stream sends,
so a benchmark can time the hop from the venue to the market-data process. Off by default."""
MAIN_LOOP_POLL_S = 0.1
"""How often the main thread checks for a stop signal (and the HTTP loop for shutdown)."""

SIM_START_PRICES: Mapping[str, Decimal] = MappingProxyType({
    "ES": Decimal("5000"),
    "NQ": Decimal("18000"),
    "6E": Decimal("1.08"),
    "CL": Decimal("75"),
    "GC": Decimal("2000"),
    "BTC-PERPETUAL": Decimal("60000"),
})
"""Where each random walk starts (by root); roughly realistic so the numbers read naturally."""


# ---------------------------------------------------------------- logging


class JsonLog:
    """One JSON object per line on a stream (stdout): ts, level, process, action, fields.

    A local helper on purpose: ``brokers`` must not import ``bus`` (where the shared one lives).
    """

    def __init__(self, stream: IO[str], process: str = PROCESS_NAME) -> None:
        self._stream = stream
        self._process = process
        self._lock = threading.Lock()

    def __call__(self, action: str, level: str = "info", **fields: Any) -> None:
        record = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                  "level": level, "process": self._process, "action": action, **fields}
        line = json.dumps(record, default=_json_default)
        with self._lock:
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass  # stdout gone (supervisor restarting its pipe): logging must never kill the venue


# ---------------------------------------------------------------- JSON shapes


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return format(value, "f")  # never exponent notation, never a float
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _dumps(payload: object) -> bytes:
    return json.dumps(payload, default=_json_default, separators=(",", ":")).encode()


def order_json(order: VenueOrder) -> dict[str, Any]:
    fields = asdict(order)
    fields.pop("triggered", None)
    fields.pop("submitted_after_index", None)
    return fields


def fill_json(fill: VenueFill) -> dict[str, Any]:
    return asdict(fill)


def feed_message_json(message: FeedMessage) -> dict[str, Any]:
    """A fill as the feed carries it: ``seq`` is the feed's, not the venue's."""
    return {**asdict(message.fill), "seq": message.seq}


def position_json(position: VenuePosition) -> dict[str, Any]:
    return {"symbol": position.symbol, "quantity": position.quantity, "average_price": position.average_price}


def account_position_json(position: VenuePosition) -> dict[str, Any]:
    return {"account": position.account, **position_json(position)}


def summary_json(summary: AccountSummary) -> dict[str, Any]:
    return asdict(summary)


def bar_json(bar: Bar) -> dict[str, Any]:
    return asdict(bar)


# ---------------------------------------------------------------- request parsing


class BadRequest(Exception):
    """A malformed request: answered 400 with this message (which names the field)."""


def _decimal_field(body: Mapping[str, Any], name: str, *, required: bool) -> Decimal | None:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"missing field {name!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise BadRequest(f"field {name!r} must be a decimal string")
    try:
        result = Decimal(value)
    except InvalidOperation:
        raise BadRequest(f"field {name!r} is not a decimal: {str(value)[:40]!r}") from None
    if not result.is_finite():
        raise BadRequest(f"field {name!r} must be finite")
    return result


def _str_field(body: Mapping[str, Any], name: str, *, required: bool = True, default: str | None = None) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"missing field {name!r}")
        return default
    if not isinstance(value, str) or not value:
        raise BadRequest(f"field {name!r} must be a non-empty string")
    return value


def _enum_field(body: Mapping[str, Any], name: str, enum: type[Any], *, default: Any = None) -> Any:
    raw = _str_field(body, name, required=default is None)
    if raw is None:
        return default
    try:
        return enum(raw)
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise BadRequest(f"field {name!r} must be one of {allowed}") from None


def parse_order_request(body: Mapping[str, Any]) -> tuple[str, OrderRequest]:
    """(account, request) from a POST /orders body, or ``BadRequest`` naming the field."""
    account = _str_field(body, "account")
    client_order_id = _str_field(body, "client_order_id")
    assert account is not None and client_order_id is not None
    if len(client_order_id) > MAX_CLIENT_ORDER_ID_LEN:
        raise BadRequest(f"field 'client_order_id' is longer than {MAX_CLIENT_ORDER_ID_LEN} characters")
    symbol = _str_field(body, "symbol")
    assert symbol is not None
    request = OrderRequest(
        client_order_id=client_order_id,
        symbol=symbol,
        side=_enum_field(body, "side", Side),
        order_type=_enum_field(body, "order_type", OrderType),
        quantity=_decimal_field(body, "quantity", required=True),  # type: ignore[arg-type]
        limit_price=_decimal_field(body, "limit_price", required=False),
        stop_price=_decimal_field(body, "stop_price", required=False),
        time_in_force=_enum_field(body, "time_in_force", TimeInForce, default=TimeInForce.DAY),
    )
    return account, request


def _int_param(query: Mapping[str, list[str]], name: str, default: int | None) -> int | None:
    values = query.get(name)
    if not values or values[-1] == "":
        return default
    try:
        return int(values[-1])
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be an integer") from None


def _str_param(query: Mapping[str, list[str]], name: str, *, required: bool) -> str | None:
    values = query.get(name)
    if not values or values[-1] == "":
        if required:
            raise BadRequest(f"missing query parameter {name!r}")
        return None
    return values[-1]


# ---------------------------------------------------------------- bar storage


class BarBook:
    """The closed bars of one symbol, by index (oldest dropped past ``MAX_BARS_KEPT``).

    Not locked itself: the app's lock guards it together with the venue.
    """

    def __init__(self, symbol: str, keep: int = MAX_BARS_KEPT) -> None:
        self.symbol = symbol
        self._bars: list[Bar] = []
        self._keep = keep

    def append(self, bar: Bar) -> None:
        if self._bars and bar.index != self._bars[-1].index + 1:
            raise ValueError(f"{self.symbol}: bar {bar.index} does not follow {self._bars[-1].index}")
        self._bars.append(bar)
        if len(self._bars) > self._keep:
            del self._bars[: len(self._bars) - self._keep]

    @property
    def last(self) -> Bar | None:
        return self._bars[-1] if self._bars else None

    @property
    def last_index(self) -> int:
        return self._bars[-1].index if self._bars else -1

    def after_index(self, index: int) -> list[Bar]:
        if not self._bars:
            return []
        start = max(0, index + 1 - self._bars[0].index)
        return self._bars[start:]

    def latest(self, limit: int) -> list[Bar]:
        return self._bars[-limit:] if limit > 0 else []

    def after_ts(self, ts_ns: int, limit: int) -> list[Bar]:
        lo, hi = 0, len(self._bars)
        while lo < hi:  # first bar with ts_ns > the cursor (bars are in time order)
            mid = (lo + hi) // 2
            if self._bars[mid].ts_ns <= ts_ns:
                lo = mid + 1
            else:
                hi = mid
        return self._bars[lo: lo + limit]


# ---------------------------------------------------------------- the application (locked state)


@dataclass(frozen=True)
class SimConfig:
    host: str
    port: int
    state_dir: Path
    symbols: tuple[str, ...]
    interval: str
    pace_s: float
    seed: int
    csv: Mapping[str, Path]
    accounts: tuple[str, ...]
    history: int
    faults: tuple[FaultRule, ...] = ()
    """Fault rules active from the start (``--faults FILE``)."""
    fault_seed: int | None = None
    """Their generator's seed; None: ``seed``."""
    starting_equity: Mapping[str, Decimal] = field(default_factory=lambda: MappingProxyType({}))
    """Equity of each account before any fill (``--equity``); missing: the venue's default."""
    trace_streams: bool = False
    """Log every batch a bar stream writes (``TRACE_STREAMS_ENV``)."""
    dialect: str = "sim"
    """Which venue's wire protocol is served next to the simulator's own (``brokers.sim.dialects``)."""
    token_ttl_s: float = DEFAULT_TOKEN_TTL_S
    """Lifetime of the access tokens the dialects issue."""
    ws_port: int = 0
    """The dialect's WebSocket port (0: any free port; the ready file says which)."""
    lockstep: bool = False
    """Produce a bar round only once released (``POST /v1/admin/release``), never on the pace timer."""
    slippage_ticks: int = 0
    """Market and stop fills move this many ticks against the order (``Venue``)."""


class SimApp:
    """The venue, the bar books, the feeds, the fill feed and the fault plan, under one lock; the
    producer thread's loop."""

    def __init__(self, config: SimConfig, log: JsonLog, *, now_ns: int,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.log = log
        self.monotonic = monotonic
        """Wall time for fill-feed delays (a test seam)."""
        self.faults = FaultPlan(config.faults, config.seed if config.fault_seed is None else config.fault_seed)
        self.fill_feed = FillFeed()
        self.interval_ns = interval_ns(config.interval)
        self.lock = threading.Lock()
        self.new_bar = threading.Condition(self.lock)
        self.stopping = threading.Event()
        ticks = {s: instrument(canonical_root(s)).tick_size for s in config.symbols}
        point_values = {s: instrument(canonical_root(s)).point_value for s in config.symbols}
        self.venue = Venue(config.accounts, ticks, point_values=point_values,
                           starting_equity=config.starting_equity, slippage_ticks=config.slippage_ticks)
        self.books = {s: BarBook(s) for s in config.symbols}
        self.dialect: Dialect | None = load_dialect(config.dialect)
        self.dialect_routes = tuple((re.compile(f"^{r.pattern}$"), r) for r in self.dialect.routes) if self.dialect else ()
        self.tokens = SimTokens(config.token_ttl_s)
        self.ws_url: str | None = None
        """The dialect's WebSocket URL once it listens (a venue names it in answers, e.g. Schwab's
        ``userPreference``)."""
        start_ns = now_ns // self.interval_ns * self.interval_ns - config.history * self.interval_ns
        self.feeds: dict[str, Iterator[Bar]] = {s: iter(self._feed(s, start_ns)) for s in config.symbols}
        self._exhausted: set[str] = set()
        self.gate: LockstepGate | None = None
        if config.lockstep:  # finite feeds, read one bar ahead so their end is known with their last bar
            self.feeds = {s: Lookahead(feed) for s, feed in self.feeds.items()}
            self.gate = LockstepGate(produced=config.history - 1)  # main() produces the history rounds

    def _feed(self, symbol: str, start_ns: int) -> RandomWalkFeed | CsvFeed:
        if symbol in self.config.csv:
            return CsvFeed(self.config.csv[symbol], symbol, self.config.interval)
        root = canonical_root(symbol)
        return RandomWalkFeed(symbol, self.config.seed, SIM_START_PRICES[root], instrument(root).tick_size,
                              self.interval_ns, start_ns, interval=self.config.interval)

    def produce_one_round(self) -> None:
        """One bar per symbol: book it, let the venue fill against it, wake the streams."""
        for symbol, feed in self.feeds.items():
            if symbol in self._exhausted:
                continue
            bar = next(feed, None)  # a CsvFeedError propagates: the producer logs it and stops
            if bar is None:
                self._exhausted.add(symbol)
                self.log("feed_exhausted", symbol=symbol)
                continue
            with self.lock:
                self.books[symbol].append(bar)
                fills = self.venue.on_bar(bar)
                now = self.monotonic()
                faulted = [(fill, self._publish(fill, now)) for fill in fills]
                self.new_bar.notify_all()
            for fill, fired in faulted:
                self.log("order_filled", account=fill.account, client_order_id=fill.client_order_id,
                         order_id=fill.order_id, fill_id=fill.fill_id, symbol=fill.symbol, side=fill.side,
                         quantity=fill.quantity, price=fill.price, bar_index=fill.bar_index)
                if fired is not None:
                    self.log("fault_injected", level="warning", call="fills", fault=fired.fault, rule=fired.index,
                             client_order_id=fill.client_order_id, fill_id=fill.fill_id, delay_s=fired.delay_s)

    def _publish(self, fill: VenueFill, now: float) -> Fired | None:
        """Put a fill the venue just made on the fill feed, lagging or repeated if a rule says so.
        Call under the lock."""
        fired = self.faults.for_fill()
        if fired is None:
            self.fill_feed.publish(fill, now=now)
        elif fired.fault is Fault.DELAY_FILL:
            self.fill_feed.publish(fill, now=now, delay_s=fired.delay_s)
        else:
            self.fill_feed.publish(fill, now=now, repeat_after_s=fired.delay_s)
        return fired

    def feeds_exhausted(self) -> bool:
        """Every feed has given its last bar. Producer thread only (a lockstep feed reads ahead)."""
        return all(s in self._exhausted or (isinstance(f, Lookahead) and f.exhausted) for s, f in self.feeds.items())

    def run_producer(self) -> None:
        """Emit a round every ``pace`` seconds on the monotonic clock (no drift, no catch-up burst
        after a stall: a late round simply resets the schedule). In lockstep, a round whenever the
        next one is released."""
        next_at = time.monotonic() + self.config.pace_s
        try:
            if self.gate is not None:
                run_lockstep(self.gate, produce_round=self.produce_one_round, exhausted=self.feeds_exhausted,
                             stopping=self.stopping, log=self.log)
                return
            while not self.stopping.wait(max(0.0, next_at - time.monotonic())):
                self.produce_one_round()
                next_at += self.config.pace_s
                if next_at < time.monotonic():
                    next_at = time.monotonic() + self.config.pace_s
        except Exception as exc:  # noqa: BLE001 - a dead producer must be visible, not silent
            self.log("producer_failed", level="error", error=f"{type(exc).__name__}: {exc}")
            self.stopping.set()

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            self.new_bar.notify_all()


# ---------------------------------------------------------------- HTTP


class VenueHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], app: SimApp) -> None:
        self.app = app
        super().__init__(address, VenueRequestHandler)

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        """A connection that failed outside a handler (client reset mid-request …): one JSON log
        line instead of socketserver's traceback on stderr."""
        exc = sys.exc_info()[1]
        self.app.log("connection_error", level="warning", client=f"{client_address[0]}:{client_address[1]}",
                     error=f"{type(exc).__name__}: {exc}")


Route = tuple[str, re.Pattern[str], str, str | None]
_ROUTES: tuple[Route, ...] = tuple(
    (method, re.compile(f"^{API_PREFIX}{pattern}$"), handler, call)
    for method, pattern, handler, call in (
        # method, path, handler, call (the name fault rules use; None: never faulted)
        ("GET", r"/health", "get_health", None),
        ("GET", r"/instruments", "get_instruments", None),
        ("POST", r"/orders", "post_order", "submit"),
        ("GET", r"/orders", "get_orders", "orders"),
        ("GET", r"/orders/by-client-id/(?P<cid>[^/]+)", "get_order_by_client_id", "lookup"),
        ("POST", r"/orders/(?P<cid>[^/]+)/cancel", "post_cancel", "cancel"),
        ("POST", r"/orders/(?P<cid>[^/]+)/modify", "post_modify", "modify"),
        ("GET", r"/positions", "get_positions", "positions"),
        ("GET", r"/fills", "get_fills", "fills"),
        ("GET", r"/accounts/(?P<account>[^/]+)/summary", "get_account_summary", None),
        ("GET", r"/bars/(?P<symbol>[^/]+)", "get_bars", "bars"),
        ("GET", r"/bars/(?P<symbol>[^/]+)/stream", "get_bar_stream", "stream"),
        ("GET", r"/admin/stats", "get_stats", None),
        ("GET", r"/admin/orders", "get_admin_orders", None),
        ("GET", r"/admin/fills", "get_admin_fills", None),
        ("GET", r"/admin/positions", "get_admin_positions", None),
        ("GET", r"/admin/faults", "get_faults", None),
        ("POST", r"/admin/faults", "post_faults", None),
        ("DELETE", r"/admin/faults", "delete_faults", None),
        ("POST", r"/admin/release", "post_release", None),
        ("POST", r"/admin/expire-tokens", "post_expire_tokens", None),
    )
)


class _Answered(Exception):
    """Raised by a handler that has already written its full answer (e.g. an error mid-parse)."""


class VenueRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tradebus-venue-sim"
    sys_version = ""
    timeout = CONNECTION_IDLE_TIMEOUT_S
    # Headers and body go out in separate writes; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms per request on Linux). A venue must answer in well under a millisecond.
    disable_nagle_algorithm = True
    server: VenueHTTPServer

    # Per request (a keep-alive connection reuses the handler): a fault that waits for the venue
    # to act and then strikes in place of the answer, the call it struck, the parsed body.
    _pending_fault: Fired | None = None
    _call: str | None = None
    _params: Mapping[str, str] = MappingProxyType({})
    _body: Any = None

    # -- plumbing

    @property
    def app(self) -> SimApp:
        return self.server.app

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        """Silence the base class's stderr access log; we log what matters as JSON."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Requests too broken to route (bad request line, oversized headers) still get JSON."""
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            # The base class treats an unparsable request line as HTTP/0.9 and would answer with a
            # bare body; nobody speaks 0.9, so answer with a proper status line.
            self.request_version = "HTTP/1.1"
        try:
            self._send_json(code, {"error": "bad_request" if code < 500 else "internal",
                                   "message": message or HTTPStatus(code).phrase}, close=True)
        except OSError:
            pass
        self.app.log("http_error", level="warning", status=code, message=message or "")

    def _send_json(self, status: int, payload: object, *, close: bool = False) -> None:
        """Answer, unless a fault is waiting for this moment (the venue has acted): then strike."""
        fired, self._pending_fault = self._pending_fault, None
        if fired is not None:
            self._strike(fired)
            return
        self._write_json(status, payload, close=close)

    def _write_json(self, status: int, payload: object, *, close: bool = False) -> None:
        body = _dumps(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(body)

    def _dispatch(self) -> None:
        self._pending_fault, self._call, self._params, self._body = None, None, MappingProxyType({}), None
        parts = urlsplit(self.path)
        path = parts.path
        query = parse_qs(parts.query, keep_blank_values=True)
        try:
            if self.app.dialect_routes and self._dispatch_dialect(path, query):
                return
            allowed = []
            for method, pattern, name, call in _ROUTES:
                match = pattern.match(path)
                if match is None:
                    continue
                if method != self.command:
                    allowed.append(method)
                    continue
                params = {k: unquote(v) for k, v in match.groupdict().items()}
                self._call, self._params = call, params
                if method in ("GET", "DELETE"):
                    self._discard_body()  # keep the keep-alive connection in step
                if call is not None and self._fault_before_acting(call):
                    return
                getattr(self, name)(query, **params)
                return
            self._discard_body()
            if allowed:
                self._send_json(405, {"error": "method_not_allowed", "message": f"use {', '.join(allowed)}"})
            else:
                self._send_json(404, {"error": "no_route", "message": f"no endpoint {self.command} {path}"})
        except _Answered:
            return
        except (BadRequest, DialectBadRequest) as exc:
            self.app.log("bad_request", level="warning", method=self.command, path=path, message=str(exc))
            self._send_json(400, {"error": "bad_request", "message": str(exc)})
        except UnknownAccount as exc:
            self._send_json(400, {"error": "bad_request", "message": f"field 'account': {exc}"})
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - never a stack trace to the client, never a crash
            self.app.log("internal_error", level="error", method=self.command, path=path,
                         error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc(limit=8))
            try:
                self._send_json(500, {"error": "internal", "message": "internal error"}, close=True)
            except OSError:
                self.close_connection = True

    def _dispatch_dialect(self, path: str, query: Mapping[str, list[str]]) -> bool:
        """Serve ``path`` from the dialect's routes; False if none matches (the native API may)."""
        for pattern, route in self.app.dialect_routes:
            match = pattern.match(path)
            if match is None or route.method != self.command:
                continue
            params = {k: unquote(v) for k, v in match.groupdict().items()}
            self._call, self._params = route.call, params
            if route.call is not None and self._fault_before_acting(route.call):
                return True
            body = self._raw_body()
            headers = {k.lower(): v for k, v in self.headers.items()}
            answer = route.handler(self.app, Request(self.command, path, params, query, headers, body))
            self._send_answer(answer)
            return True
        return False

    def _raw_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            self._send_json(400, {"error": "bad_request", "message": "chunked request bodies are not supported"}, close=True)
            raise _Answered
        raw_length = self.headers.get("Content-Length", "0")
        if not raw_length.isdigit() or int(raw_length) > MAX_BODY_BYTES:
            self._send_json(413, {"error": "bad_request", "message": f"bad Content-Length or body over {MAX_BODY_BYTES} bytes"},
                            close=True)
            raise _Answered
        body = self.rfile.read(int(raw_length)) if int(raw_length) else b""
        self._body = _loads_quietly(body)
        return body

    def _send_answer(self, answer: Answer) -> None:
        if answer.lines is None:
            fired, self._pending_fault = self._pending_fault, None
            if fired is not None:
                self._strike(fired)
                return
            body = answer.body if answer.body is not None else (b"" if answer.payload is None else _dumps(answer.payload))
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in answer.headers.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        for key, value in answer.headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.close_connection = True
        try:
            for chunk in answer.lines:
                if self.app.stopping.is_set():
                    break
                self._write_chunk(chunk)
            else:
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
            pass  # the client left
        finally:
            close = getattr(answer.lines, "close", None)
            if close is not None:
                close()

    def _discard_body(self) -> None:
        length = self.headers.get("Content-Length")
        if length and length.isdigit() and int(length) <= MAX_BODY_BYTES:
            self.rfile.read(int(length))
        elif length or self.headers.get("Transfer-Encoding"):
            self.close_connection = True

    def _json_body(self) -> dict[str, Any]:
        if self.headers.get("Transfer-Encoding"):
            self._send_json(400, {"error": "bad_request", "message": "chunked request bodies are not supported"}, close=True)
            raise _Answered
        raw_length = self.headers.get("Content-Length", "0")
        if not raw_length.isdigit():
            self._send_json(400, {"error": "bad_request", "message": "bad Content-Length"}, close=True)
            raise _Answered
        length = int(raw_length)
        if length > MAX_BODY_BYTES:
            self._send_json(413, {"error": "bad_request", "message": f"body over {MAX_BODY_BYTES} bytes"}, close=True)
            raise _Answered
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw, parse_float=Decimal) if raw else None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(f"body is not valid JSON ({exc.__class__.__name__} at position {getattr(exc, 'pos', '?')})") from None
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object")
        self._body = body
        return body

    # -- fault injection

    def _fault_before_acting(self, call: str) -> bool:
        """Ask the plan about this request. A fault that strikes before the venue acts is carried
        out now (True: the request is answered); one that strikes after is kept for ``_send_json``."""
        with self.app.lock:
            fired = self.app.faults.for_request(call)
        if fired is None:
            return False
        if fired.fault.acts:
            self._pending_fault = fired
            return False
        if self.command == "POST":
            self._body = self._read_body_quietly()
        self._strike(fired)
        return True

    def _read_body_quietly(self) -> Any:
        """The body of a request a fault answers instead of the handler: read (to keep the
        connection in step) and parsed for the log, never answered for."""
        length = self.headers.get("Content-Length", "0")
        if self.headers.get("Transfer-Encoding") or not length.isdigit() or int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            return None
        raw = self.rfile.read(int(length)) if int(length) else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def _strike(self, fired: Fired) -> None:
        """Carry out a fault: log it, wait its delay (cut short at shutdown), then answer 500, say
        nothing, or reset the connection."""
        cid = self._params.get("cid")
        if cid is None and isinstance(self._body, dict) and isinstance(self._body.get("client_order_id"), str):
            cid = self._body["client_order_id"]
        self.app.log("fault_injected", level="warning", call=self._call, fault=fired.fault, rule=fired.index,
                     client_order_id=cid, method=self.command, path=urlsplit(self.path).path, delay_s=fired.delay_s)
        self.close_connection = True  # whatever happens next, this connection is done
        if fired.delay_s > 0 and self.app.stopping.wait(fired.delay_s):
            return  # the venue is stopping: just close
        if fired.fault is Fault.ACK_LOST:
            return  # no answer ever: the client timed out long ago
        if fired.fault.resets:
            self._reset_connection()
            return
        self._write_json(500, {"error": "internal", "message": "injected fault"}, close=True)

    def _reset_connection(self) -> None:
        """Drop the connection with a TCP reset (SO_LINGER 0), like a crashed gateway."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()
            self.connection.close()  # the last reference: the socket closes now, with an RST
        except OSError:
            pass

    def _symbol(self, symbol: str) -> str:
        if symbol not in self.app.books:
            self._send_json(404, {"error": "unknown_symbol",
                                  "message": f"not served here: {symbol}; served: {', '.join(self.app.books)}"})
            raise _Answered
        return symbol

    def _check_interval(self, query: Mapping[str, list[str]]) -> None:
        wanted = _str_param(query, "interval", required=False)
        if wanted is not None and wanted != self.app.config.interval:
            raise BadRequest(f"query parameter 'interval': this venue serves {self.app.config.interval} bars only")

    # -- endpoints

    def get_health(self, query: Mapping[str, list[str]]) -> None:
        with self.app.lock:
            last = {s: b.last_index for s, b in self.app.books.items()}
        status = "stopping" if self.app.stopping.is_set() else "ok"
        gate = self.app.gate
        pacing = {"lockstep": gate.view(), "exhausted": gate.exhausted} if gate is not None else {
            "exhausted": len(self.app._exhausted) == len(self.app.books)}
        self._send_json(200, {"status": status, "symbols": list(self.app.books), "last_index": last,
                              "interval": self.app.config.interval, **pacing})

    def get_instruments(self, query: Mapping[str, list[str]]) -> None:
        rows = []
        for symbol in self.app.books:
            inst = instrument(canonical_root(symbol))
            rows.append({"symbol": symbol, "root": inst.root, "description": inst.description,
                         "exchange": inst.exchange, "tick_size": inst.tick_size, "point_value": inst.point_value,
                         "currency": inst.currency, "interval": self.app.config.interval})
        self._send_json(200, {"instruments": rows})

    def post_order(self, query: Mapping[str, list[str]]) -> None:
        received_ns = time.time_ns()
        account, request = parse_order_request(self._json_body())
        try:
            with self.app.lock:
                order = self.app.venue.submit(account, request)
            accepted_ns = time.time_ns()
        except OrderRejected as exc:
            self.app.log("order_rejected", level="warning", account=account,
                         client_order_id=request.client_order_id, reason=exc.reason)
            payload: dict[str, Any] = {"error": "rejected", "reason": exc.reason}
            if exc.order is not None:
                payload["order"] = order_json(exc.order)
            self._send_json(422, payload)
            return
        self.app.log("order_accepted", account=account, client_order_id=order.client_order_id,
                     order_id=order.order_id, symbol=order.symbol, side=order.side, order_type=order.order_type,
                     quantity=order.quantity, after_index=order.submitted_after_index,
                     received_ns=received_ns, accepted_ns=accepted_ns)
        self._send_json(200, order_json(order))

    def get_orders(self, query: Mapping[str, list[str]]) -> None:
        account = _str_param(query, "account", required=True)
        status = _str_param(query, "status", required=False)
        if status not in (None, "open", "all"):
            raise BadRequest("query parameter 'status' must be open or all")
        with self.app.lock:
            orders = self.app.venue.orders(account or "", open_only=status == "open")
        self._send_json(200, {"orders": [order_json(o) for o in orders]})

    def get_order_by_client_id(self, query: Mapping[str, list[str]], cid: str) -> None:
        account = _str_param(query, "account", required=True)
        with self.app.lock:
            order = self.app.venue.order_by_client_id(account or "", cid)
        if order is None:
            self._send_json(404, {"error": "not_found", "client_order_id": cid})
        else:
            self._send_json(200, order_json(order))

    def post_cancel(self, query: Mapping[str, list[str]], cid: str) -> None:
        account = _str_field(self._json_body(), "account")
        try:
            with self.app.lock:
                order = self.app.venue.cancel(account or "", cid)
        except UnknownOrder:
            self._send_json(404, {"error": "not_found", "client_order_id": cid})
            return
        except OrderRejected as exc:
            self.app.log("cancel_rejected", level="warning", account=account, client_order_id=cid, reason=exc.reason)
            self._send_json(422, {"error": "rejected", "reason": exc.reason})
            return
        self.app.log("order_cancelled", account=account, client_order_id=cid, order_id=order.order_id)
        self._send_json(200, order_json(order))

    def post_modify(self, query: Mapping[str, list[str]], cid: str) -> None:
        body = self._json_body()
        account = _str_field(body, "account")
        quantity = _decimal_field(body, "quantity", required=False)
        limit_price = _decimal_field(body, "limit_price", required=False)
        stop_price = _decimal_field(body, "stop_price", required=False)
        if quantity is None and limit_price is None and stop_price is None:
            raise BadRequest("nothing to modify: give quantity, limit_price and/or stop_price")
        try:
            with self.app.lock:
                order = self.app.venue.modify(account or "", cid, quantity=quantity,
                                              limit_price=limit_price, stop_price=stop_price)
        except UnknownOrder:
            self._send_json(404, {"error": "not_found", "client_order_id": cid})
            return
        except OrderRejected as exc:
            self.app.log("modify_rejected", level="warning", account=account, client_order_id=cid, reason=exc.reason)
            self._send_json(422, {"error": "rejected", "reason": exc.reason})
            return
        self.app.log("order_modified", account=account, client_order_id=cid, order_id=order.order_id,
                     quantity=order.quantity, limit_price=order.limit_price, stop_price=order.stop_price)
        self._send_json(200, order_json(order))

    def get_positions(self, query: Mapping[str, list[str]]) -> None:
        account = _str_param(query, "account", required=True)
        with self.app.lock:
            positions = self.app.venue.positions(account or "")
        self._send_json(200, {"positions": [position_json(p) for p in positions]})

    def get_fills(self, query: Mapping[str, list[str]]) -> None:
        account = _str_param(query, "account", required=True)
        after_seq = _int_param(query, "after_seq", 0) or 0
        limit = _int_param(query, "limit", DEFAULT_FILLS_LIMIT)
        if limit is None or limit <= 0:
            raise BadRequest("query parameter 'limit' must be positive")
        with self.app.lock:
            if account not in self.app.venue.accounts:
                raise UnknownAccount(f"unknown account {account!r}")
            self.app.fill_feed.release_due(self.app.monotonic())
            messages = self.app.fill_feed.since(account, after_seq, limit)
        last_seq = messages[-1].seq if messages else after_seq
        self._send_json(200, {"fills": [feed_message_json(m) for m in messages], "last_seq": last_seq})

    def get_account_summary(self, query: Mapping[str, list[str]], account: str) -> None:
        with self.app.lock:
            try:
                summary = self.app.venue.summary(account)
            except UnknownAccount as exc:
                self._send_json(404, {"error": "unknown_account", "message": str(exc)})
                return
        self._send_json(200, summary_json(summary))

    def get_bars(self, query: Mapping[str, list[str]], symbol: str) -> None:
        symbol = self._symbol(symbol)
        self._check_interval(query)
        after_ts_ns = _int_param(query, "after_ts_ns", 0) or 0
        limit = _int_param(query, "limit", DEFAULT_BARS_LIMIT)
        if limit is None or not 0 < limit <= MAX_BARS_LIMIT:
            raise BadRequest(f"query parameter 'limit' must be in 1..{MAX_BARS_LIMIT}")
        with self.app.lock:
            book = self.app.books[symbol]
            # No cursor: the latest ``limit`` bars, as the venues' history calls give (a history
            # load that got the oldest ones would then stream every bar since as a burst).
            bars = book.after_ts(after_ts_ns, limit) if after_ts_ns > 0 else book.latest(limit)
        self._send_json(200, {"bars": [bar_json(b) for b in bars]})

    def get_bar_stream(self, query: Mapping[str, list[str]], symbol: str) -> None:
        """Chunked NDJSON until the client leaves or the venue stops. With ``after_index``, bars
        after it are replayed first; without, the stream starts with the latest closed bar."""
        symbol = self._symbol(symbol)
        self._check_interval(query)
        after_index = _int_param(query, "after_index", None)
        app = self.app
        book = app.books[symbol]
        with app.lock:
            last_index = book.last_index
        if after_index is not None and after_index > last_index:
            # Indices come from this venue, so a client cannot have seen one we have not made: it
            # is talking to a restarted venue. Say so rather than stream heartbeats forever.
            self._send_json(409, {"error": "ahead_of_venue",
                                  "message": f"after_index {after_index} is past the latest bar {last_index}"})
            return
        # A stream has no single answer for a fault to replace: a reset comes after the first
        # batch (the line drops mid-stream); the other faults strike before the stream starts.
        fired, self._pending_fault = self._pending_fault, None
        if fired is not None and fired.fault is not Fault.RESET_AFTER_ACCEPT:
            self._strike(fired)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")  # a stream owns its connection until the end
        self.end_headers()
        self.close_connection = True
        with app.lock:
            if after_index is None:
                sent = book.last_index - 1 if book.last is not None else -1
            else:
                sent = after_index
        heartbeats = 0
        app.log("stream_opened", symbol=symbol, after_index=after_index)
        try:
            while not app.stopping.is_set():
                with app.lock:
                    app.new_bar.wait_for(lambda: book.last_index > sent or app.stopping.is_set(),
                                         timeout=HEARTBEAT_INTERVAL_S)
                    pending = book.after_index(sent)
                if app.stopping.is_set():
                    break
                if pending:
                    chunk = b"".join(_dumps(bar_json(b)) + b"\n" for b in pending)
                    written_ns = time.time_ns()
                    self._write_chunk(chunk)
                    sent = pending[-1].index
                    if app.config.trace_streams:
                        app.log("bars_streamed", symbol=symbol, first_index=pending[0].index, last_index=sent,
                                written_ns=written_ns)
                else:
                    heartbeats += 1
                    self._write_chunk(_dumps({"heartbeat": heartbeats}) + b"\n")
                if fired is not None:
                    self._strike(fired)  # the line drops mid-stream: no end-of-stream chunk
                    break
            if fired is None:
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
            pass  # the client left: nothing to tell anyone
        app.log("stream_closed", symbol=symbol, last_index=sent)

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def get_stats(self, query: Mapping[str, list[str]]) -> None:
        with self.app.lock:
            venue = self.app.venue
            stats = {"submissions": dict(venue.submissions), "orders": venue.order_count, "fills": venue.fill_count,
                     "last_index": {s: b.last_index for s, b in self.app.books.items()},
                     "accounts": sorted(venue.accounts), "faults_hit": list(self.app.faults.hits),
                     "fill_messages_pending": self.app.fill_feed.pending_count}
        self._send_json(200, stats)

    def get_admin_orders(self, query: Mapping[str, list[str]]) -> None:
        with self.app.lock:
            orders = self.app.venue.all_orders()
        self._send_json(200, {"orders": [order_json(o) for o in orders]})

    def get_admin_fills(self, query: Mapping[str, list[str]]) -> None:
        with self.app.lock:
            fills = self.app.venue.all_fills()
        self._send_json(200, {"fills": [fill_json(f) for f in fills]})

    def get_admin_positions(self, query: Mapping[str, list[str]]) -> None:
        with self.app.lock:
            positions = self.app.venue.all_positions()
        self._send_json(200, {"positions": [account_position_json(p) for p in positions]})

    def get_faults(self, query: Mapping[str, list[str]]) -> None:
        with self.app.lock:
            plan = self.app.faults.to_json()
        self._send_json(200, plan)

    def post_faults(self, query: Mapping[str, list[str]]) -> None:
        try:
            plan = parse_fault_config(self._json_body(), default_seed=self.app.config.seed)
        except FaultConfigError as exc:
            raise BadRequest(str(exc)) from None
        self._set_faults(plan)

    def delete_faults(self, query: Mapping[str, list[str]]) -> None:
        self._set_faults(FaultPlan((), self.app.faults.seed))

    def post_expire_tokens(self, query: Mapping[str, list[str]]) -> None:
        expired = self.app.tokens.expire_all()
        self.app.log("tokens_expired", level="warning", count=expired)
        self._send_json(200, {"expired": expired})

    def post_release(self, query: Mapping[str, list[str]]) -> None:
        """Lockstep: let bar rounds up to ``index`` be produced; answers the gate's view."""
        index = self._json_body().get("index")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise BadRequest("field 'index' must be a bar index (an integer >= 0)")
        gate = self.app.gate
        if gate is None:
            self._send_json(409, {"error": "not_lockstep",
                                  "message": "this simulator paces bars by time; start it with --lockstep"})
            return
        gate.release(index)
        self._send_json(200, gate.view())

    def _set_faults(self, plan: FaultPlan) -> None:
        """Replace every rule (and the generator, and the hit counts). Fill messages already
        delayed or repeated stay scheduled: those fills happened under the old rules."""
        with self.app.lock:
            self.app.faults = plan
            answer = plan.to_json()
        self.app.log("faults_set", rules=answer["rules"], seed=answer["seed"])
        self._send_json(200, answer)


# ---------------------------------------------------------------- process shell


def _loads_quietly(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _canonical_symbols(text: str) -> tuple[str, ...]:
    symbols = []
    for raw in (s.strip() for s in text.split(",")):
        if not raw:
            continue
        if raw in INSTRUMENTS:
            if not instrument(raw).is_perpetual:
                raise ValueError(f"{raw} is a root; give a contract such as {raw}Z6")
            symbols.append(raw)
        elif is_contract(raw):
            symbols.append(parse_contract(raw).code)
        else:
            raise ValueError(f"unknown symbol {raw!r}; roots: {', '.join(INSTRUMENTS)}")
    if not symbols:
        raise ValueError("no symbols given")
    return tuple(dict.fromkeys(symbols))


def parse_args(argv: Sequence[str] | None, *, today: date) -> SimConfig:
    parser = argparse.ArgumentParser(prog="venue-sim", description="The tradebus venue simulator (HTTP).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument("--state-dir", type=Path, default=Path(DEFAULT_STATE_DIR), help="where venue-sim.json is written")
    default_symbols = ",".join(front_contract(r, today) for r in DEFAULT_SYMBOL_ROOTS)
    parser.add_argument("--symbols", default=None, help=f"default {default_symbols} (with --lockstep: the --csv symbols)")
    parser.add_argument("--interval", default=DEFAULT_INTERVAL)
    parser.add_argument("--pace", type=float, default=DEFAULT_PACE_S, help="wall seconds between bars")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--csv", action="append", default=[], metavar="SYMBOL=PATH")
    parser.add_argument("--accounts", default=DEFAULT_ACCOUNTS)
    parser.add_argument("--history", type=int, default=DEFAULT_HISTORY, help="bars generated instantly at start")
    parser.add_argument("--equity", action="append", default=[], metavar="[ACCOUNT=]AMOUNT",
                        help="starting equity of every account (AMOUNT) or of one (ACCOUNT=AMOUNT); "
                             f"default {DEFAULT_STARTING_EQUITY}")
    parser.add_argument("--dialect", default="sim", help="serve this venue's wire protocol too: sim, tradovate, "
                                                           "tradestation, schwab, deribit")
    parser.add_argument("--ws-port", type=int, default=0, help="the dialect's WebSocket port (0 picks a free one)")
    parser.add_argument("--token-ttl-s", type=float, default=DEFAULT_TOKEN_TTL_S,
                        help="lifetime of the access tokens a dialect issues")
    parser.add_argument("--lockstep", action="store_true",
                        help="produce a bar round only when POST /v1/admin/release allows it (every symbol needs --csv)")
    parser.add_argument("--slippage-ticks", type=int, default=0, help="market/stop fills this many ticks worse")
    parser.add_argument("--faults", type=Path, metavar="FILE",
                        help='fault rules active from the start: JSON {"seed"?, "rules": [...]} as POST /v1/admin/faults')
    args = parser.parse_args(argv)
    try:
        interval_ns(args.interval)
        if args.pace <= 0:
            raise ValueError("--pace must be positive")
        if args.history < 0:
            raise ValueError("--history must be >= 0")
        csv_files: dict[str, Path] = {}
        for item in args.csv:
            symbol, sep, path = item.partition("=")
            if not sep or not path:
                raise ValueError(f"--csv expects SYMBOL=PATH, got {item!r}")
            (code,) = _canonical_symbols(symbol)
            if not Path(path).is_file():
                raise ValueError(f"--csv {code}: no such file {path}")
            csv_files[code] = Path(path)
        listed = (_canonical_symbols(args.symbols) if args.symbols is not None
                  else () if args.lockstep and csv_files else _canonical_symbols(default_symbols))
        symbols = tuple(dict.fromkeys(listed + tuple(csv_files)))
        if args.lockstep and (missing := [s for s in symbols if s not in csv_files]):
            raise ValueError(f"--lockstep replays finite CSV feeds: give --csv for {', '.join(missing)}")
        if args.slippage_ticks < 0:
            raise ValueError("--slippage-ticks must be >= 0")
        accounts = tuple(a.strip() for a in args.accounts.split(",") if a.strip())
        if not accounts:
            raise ValueError("--accounts: at least one account")
        faults = FaultPlan() if args.faults is None else _read_faults_file(args.faults, default_seed=args.seed)
        starting_equity = _starting_equity(args.equity, accounts)
        load_dialect(args.dialect)
        if args.token_ttl_s <= 0:
            raise ValueError("--token-ttl-s must be positive")
    except ValueError as exc:  # FaultConfigError is one
        parser.error(str(exc))
    return SimConfig(host=args.host, port=args.port, state_dir=args.state_dir, symbols=symbols,
                     interval=args.interval, pace_s=args.pace, seed=args.seed, csv=MappingProxyType(csv_files),
                     accounts=accounts, history=args.history, faults=faults.rules,
                     fault_seed=None if args.faults is None else faults.seed,
                     starting_equity=MappingProxyType(starting_equity),
                     trace_streams=os.environ.get(TRACE_STREAMS_ENV) == "1",
                     dialect=args.dialect, token_ttl_s=args.token_ttl_s, ws_port=args.ws_port,
                     lockstep=args.lockstep, slippage_ticks=args.slippage_ticks)


def _starting_equity(items: Sequence[str], accounts: Sequence[str]) -> dict[str, Decimal]:
    """``--equity`` values, later ones winning: ``AMOUNT`` for every account, ``ACCOUNT=AMOUNT`` for one."""
    equity: dict[str, Decimal] = {}
    for item in items:
        account, sep, raw = item.rpartition("=")
        try:
            amount = Decimal(raw)
        except InvalidOperation:
            raise ValueError(f"--equity {item!r}: {raw!r} is not an amount") from None
        if not amount.is_finite() or amount <= 0:
            raise ValueError(f"--equity {item!r}: the amount must be positive")
        if not sep:
            equity.update({a: amount for a in accounts})
        elif account in accounts:
            equity[account] = amount
        else:
            raise ValueError(f"--equity {item!r}: unknown account {account!r} (accounts: {', '.join(accounts)})")
    return equity


def _read_faults_file(path: Path, *, default_seed: int) -> FaultPlan:
    try:
        body = json.loads(path.read_text(), parse_float=Decimal)
    except OSError as exc:
        raise ValueError(f"--faults: cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--faults {path}: not JSON ({exc})") from None
    try:
        return parse_fault_config(body, default_seed=default_seed)
    except FaultConfigError as exc:
        raise ValueError(f"--faults {path}: {exc}") from None


def _write_ready_file(state_dir: Path, payload: Mapping[str, Any]) -> Path:
    """Write atomically (tmp + rename): a reader never sees a half-written file."""
    state_dir.mkdir(parents=True, exist_ok=True)
    final = state_dir / READY_FILE
    tmp = state_dir / f".{READY_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, final)
    return final


def _remove_ready_file(path: Path) -> None:
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def _start_websocket(app: SimApp, host: str) -> Any:
    """The dialect's WebSocket server on a free port, in a thread; None if the dialect has none."""
    if app.dialect is None or app.dialect.websocket is None:
        return None
    from websockets.sync.server import serve

    handler = app.dialect.websocket

    def on_connection(connection: Any) -> None:
        try:
            handler(app, connection)
        except Exception as exc:  # noqa: BLE001 - one bad connection must not take the venue down
            app.log("ws_handler_failed", level="error", error=f"{type(exc).__name__}: {exc}",
                    trace=traceback.format_exc(limit=8))

    ws_server = serve(on_connection, host, app.config.ws_port, max_size=MAX_BODY_BYTES)
    threading.Thread(target=ws_server.serve_forever, name="venue-sim-ws", daemon=True).start()
    return ws_server


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until SIGTERM/SIGINT; 0 on a clean stop, non-zero on a fatal error."""
    log = JsonLog(sys.stdout)
    config = parse_args(argv, today=datetime.now(UTC).date())
    app = SimApp(config, log, now_ns=time.time_ns())
    try:
        for _ in range(config.history):
            app.produce_one_round()
        server = VenueHTTPServer((config.host, config.port), app)
    except Exception as exc:  # noqa: BLE001 - a fatal start-up error: say what, exit non-zero
        log("start_failed", level="error", error=f"{type(exc).__name__}: {exc}")
        return 1

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    host, port = server.server_address[:2]
    url = f"http://{host}:{port}"
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": MAIN_LOOP_POLL_S},
                               name="venue-sim-http", daemon=True)
    producer = threading.Thread(target=app.run_producer, name="venue-sim-bars", daemon=True)
    serving.start()
    ws_server = _start_websocket(app, config.host)
    producer.start()
    ready_info: dict[str, Any] = {"url": url, "pid": os.getpid(), "dialect": config.dialect}
    if ws_server is not None:
        ws_host, ws_port = ws_server.socket.getsockname()[:2]
        ready_info["ws_url"] = app.ws_url = f"ws://{ws_host}:{ws_port}"
    ready = _write_ready_file(config.state_dir, ready_info)
    log("started", url=url, symbols=list(config.symbols), interval=config.interval, pace_s=config.pace_s,
        seed=config.seed, accounts=list(config.accounts), history=config.history,
        faults=app.faults.to_json()["rules"])
    exit_code = 0
    try:
        while not stop.wait(MAIN_LOOP_POLL_S):
            if app.stopping.is_set():  # the producer died: fatal, let the supervisor see it
                exit_code = 1
                break
    finally:
        # Shutdown order: stop intake, stop producing, end streams, then release the port.
        log("stopping", reason="signal" if stop.is_set() else "producer_failed")
        server.shutdown()
        if ws_server is not None:
            ws_server.shutdown()
        app.stop()
        producer.join(SHUTDOWN_JOIN_S)
        server.server_close()
        _remove_ready_file(ready)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log("stopped", exit_code=exit_code)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
