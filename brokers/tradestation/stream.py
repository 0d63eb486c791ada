"""TradeStation market data: historical bars over REST, live bars over an HTTP-chunked stream.

Streaming (``GET /v3/marketdata/stream/barcharts/{symbol}?interval&unit&barsback``) sends one JSON
object per line: bars (``BarStatus: "Open"`` while forming, ``"Closed"`` once closed — only closed
bars are yielded), ``{"Heartbeat": n}`` after 5 idle seconds, ``{"StreamStatus": "EndSnapshot"}``
after the history part, ``{"StreamStatus": "GoAway"}`` when the server wants us elsewhere, and
``{"Error", "Message"}``.

A stream can silently drop frames while heartbeats continue (VENUES.md), so the stream is never
the only source:

* on every (re)connect with ``after_index``, the bars after it are first backfilled from the REST
  bars endpoint, then the stream is read and anything not newer than the last bar yielded is
  dropped;
* a closed bar that skips indices mends the hole from REST before it is yielded (a real session
  break simply finds nothing to mend).

GoAway, a stream the server ends, and transport failures raise ``Retryable``: the caller reconnects
with its last index and the backfill above resyncs. An auth refusal (HTTP 401 on connect, or an
in-stream ``Unauthorized``) is handled here: ``tokens.rejected`` and one reconnect; a second refusal
without a bar in between is ``AuthFailed``.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from urllib.parse import quote

import httpx

from brokers.base import Bar
from brokers.errors import (
    AuthFailed,
    NotSupported,
    RateLimited,
    Retryable,
    UnexpectedResponse,
    UnknownSymbol,
)
from brokers.intervals import interval_ns
from brokers.tradestation.api import (
    BROKER,
    RATE_LIMIT_DEFAULT_S,
    Api,
    excerpt,
    is_unauthorized,
    loads,
    raise_for_answer,
)
from brokers.tradestation.parse import (
    FormingBar,
    Heartbeat,
    StreamBar,
    StreamError,
    StreamStatus,
    bar_is_closed,
    bar_params,
    ns_to_iso,
    parse_bar,
    parse_stream_line,
    venue_error,
)

MAX_BARS_BACK = 57_600
"""TradeStation's limit for intraday ``barsback``."""
STREAM_BARS_BACK = 10
"""History the stream itself sends on connect: covers bars that closed between the REST backfill
and the stream's start (duplicates are dropped)."""
STREAM_READ_TIMEOUT_S = 15.0
"""Heartbeats come after 5 idle seconds: three missed ones mean the stream is dead."""
BACKFILL_LIMIT = MAX_BARS_BACK
_SHAPE_ERRORS = (KeyError, TypeError, ValueError, ArithmeticError, AttributeError)


def _params(interval: str) -> dict[str, str]:
    try:
        return bar_params(interval)
    except ValueError as exc:
        raise NotSupported(BROKER, f"{interval} bars", str(exc)) from None


class TradeStationMarketData:
    def __init__(self, api: Api, timeout_s: float) -> None:
        self._api = api
        self._timeout_s = timeout_s

    # -- REST

    def historical_bars(self, symbol: str, interval: str, *, after_ts_ns: int = 0, limit: int = 500) -> list[Bar]:
        """Closed bars with ``ts_ns > after_ts_ns``, oldest first, at most ``limit``.

        With ``after_ts_ns`` 0 these are the LATEST ``limit`` closed bars (``barsback``; a venue has
        no "beginning"); otherwise the first ``limit`` after it (``firstdate``)."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        params = _params(interval)
        if after_ts_ns <= 0:
            params["barsback"] = str(min(limit + 1, MAX_BARS_BACK))  # +1: the bar still forming may count
        else:
            params["firstdate"] = ns_to_iso(after_ts_ns)
        path = f"/v3/marketdata/barcharts/{quote(symbol, safe='@')}"
        response = self._api.request("GET", path, params=params, sends_order=False)
        if response.status_code == 404:
            error = venue_error(_maybe_json(response))
            raise UnknownSymbol(symbol, broker=BROKER, detail=error[1] if error else "not found")
        raise_for_answer(response, sends_order=False)
        data = loads(response)
        try:
            raw = data["Bars"]
            if not isinstance(raw, list):
                raise TypeError("Bars is not a list")
            bars = sorted((parse_bar(b, symbol, interval) for b in raw if bar_is_closed(b)), key=lambda b: b.ts_ns)
        except _SHAPE_ERRORS as exc:
            raise UnexpectedResponse(f"malformed bars answer ({type(exc).__name__}: {exc})", broker=BROKER,
                                     excerpt=excerpt(data)) from exc
        unique: dict[int, Bar] = {}
        for bar in bars:
            if bar.ts_ns > after_ts_ns:
                unique[bar.index] = bar
        ordered = list(unique.values())
        return ordered[-limit:] if after_ts_ns <= 0 else ordered[:limit]

    def _backfill(self, symbol: str, interval: str, after_index: int, before_index: int | None = None) -> list[Bar]:
        step = interval_ns(interval)
        bars = self.historical_bars(symbol, interval, after_ts_ns=after_index * step, limit=BACKFILL_LIMIT)
        return [b for b in bars if b.index > after_index and (before_index is None or b.index < before_index)]

    # -- streaming

    def stream_bars(self, symbol: str, interval: str, *, after_index: int | None) -> Iterator[Bar | None]:
        """Closed bars as they close (see the module docstring); None on heartbeats and other
        control lines so the caller can check its deadlines."""
        # Without after_index the caller wants what closes from now on: the stream starts with the
        # latest closed bar. With one, a few bars of the stream's own history cover the race with
        # the REST backfill.
        params = _params(interval) | {"barsback": "1" if after_index is None else str(STREAM_BARS_BACK)}
        path = f"/v3/marketdata/stream/barcharts/{quote(symbol, safe='@')}"
        timeout = httpx.Timeout(self._timeout_s, read=STREAM_READ_TIMEOUT_S)
        last = after_index
        token = self._api.tokens.current()
        refused_since_bar = False
        while True:
            if last is not None:
                for bar in self._backfill(symbol, interval, last):
                    refused_since_bar = False
                    last = bar.index
                    yield bar
            refused: str | None = None
            with self._api.stream(path, params, token, timeout) as response:
                if response.status_code != 200:
                    response.read()
                    if is_unauthorized(response):
                        refused = f"HTTP {response.status_code}"
                    elif response.status_code == 404:
                        error = venue_error(_maybe_json(response))
                        raise UnknownSymbol(symbol, broker=BROKER, detail=error[1] if error else "not found")
                    else:
                        raise_for_answer(response, sends_order=False)
                        raise UnexpectedResponse(f"GET {path}: HTTP {response.status_code}", broker=BROKER)
                else:
                    for line in response.iter_lines():
                        if not line.strip():
                            continue
                        item = _item(line, symbol, interval)
                        if isinstance(item, StreamBar):
                            bar = item.bar
                            if last is not None and bar.index <= last:
                                continue  # already yielded (backfill, or the stream's own history)
                            if last is not None and bar.index > last + 1:
                                for missing in self._backfill(symbol, interval, last, before_index=bar.index):
                                    last = missing.index
                                    yield missing
                            refused_since_bar = False
                            last = bar.index
                            yield bar
                        elif isinstance(item, StreamError):
                            if item.error == "Unauthorized":
                                refused = f"in-stream {item.error}"
                                break
                            if item.error == "TooManyRequests":
                                raise RateLimited(f"bar stream: {item.error} ({item.message})", broker=BROKER,
                                                  retry_after_s=RATE_LIMIT_DEFAULT_S)
                            raise Retryable(f"bar stream error {item.error}: {item.message}", broker=BROKER)
                        elif isinstance(item, StreamStatus) and item.status == "GoAway":
                            raise Retryable("bar stream: the server said GoAway; reconnect", broker=BROKER)
                        else:  # Heartbeat, EndSnapshot, a forming bar: alive
                            yield None
            if refused is None:
                raise Retryable(f"GET {path}: the venue ended the stream", broker=BROKER)
            if refused_since_bar:
                raise AuthFailed(f"bar stream: token refused again after a refresh ({refused})", broker=BROKER)
            refused_since_bar = True
            token = self._api.tokens.rejected(token)


def _item(line: str, symbol: str, interval: str) -> StreamBar | FormingBar | Heartbeat | StreamStatus | StreamError:
    try:
        return parse_stream_line(line, symbol, interval)
    except _SHAPE_ERRORS as exc:  # json.JSONDecodeError is a ValueError
        raise UnexpectedResponse(f"malformed stream line ({type(exc).__name__})", broker=BROKER, excerpt=line) from exc


def _maybe_json(response: httpx.Response) -> object:
    try:
        return json.loads(response.content, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError):
        return None
