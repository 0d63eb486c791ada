"""The ``schwab`` broker module: Charles Schwab's Trader API, market data only (futures).

Capabilities: ``execution=False`` (the Trader API cannot place futures orders: the facade is built
without an execution role, so ``submit_order`` and every other order call raise ``NotSupported``
naming ``schwab`` and order execution), ``market_data=True``, ``lookup_by_client_id=False``
(Schwab has no client order id at all).

Config keys (never secrets):

* ``account`` — the engine's account name; also the secrets key (required);
* ``base_url`` — the API host including any path prefix: ``https://api.schwabapi.com`` live, the
  simulator's ``url + "/schwab"`` in tests (required). Paths used: ``/v1/oauth/token``,
  ``/trader/v1/userPreference``, ``/marketdata/v1/pricehistory``;
* ``timeout_s`` — HTTP timeout (default 10);
* ``token_url`` — override of ``base_url + /v1/oauth/token``;
* ``refresh_token_issued_ns`` — UTC ns when the stored refresh token was obtained by logging in
  (its 7 days count from then; default: from the adapter's first use of it);
* ``refresh_warning_hours`` — warn this long before the refresh token expires (default 48);
* ``secrets_file`` — see ``brokers.secrets``;
* ``ws_url`` is NOT used: Schwab names its streamer socket in ``userPreference`` and that is what
  the adapter connects to (the simulator's dialect answers with its own WebSocket URL).

Credentials (``brokers.secrets``): ``app_key``, ``app_secret``, ``refresh_token``.

Bars: ``Bar.index = ts_ns // interval_ns(interval)``; only closed bars (``brokers.schwab.bars``).
History (``pricehistory``) serves 1m, 5m, 10m, 15m, 30m (``frequencyType=minute``) and 1d
(``daily``); anything else is ``NotSupported``. ``after_ts_ns=0`` (no cursor) asks for the last
``limit`` intervals up to now rather than the venue's first bar ever; with a cursor the window runs
from the cursor to now, oldest first, cut at ``limit`` (page on with the last bar's ``ts_ns``).
Streaming serves 1m only (``CHART_FUTURES`` is one-minute); other intervals are ``NotSupported``
— aggregate 1m bars or poll the history instead.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import httpx

from brokers.auth import LocalTokenSource, TokenSource
from brokers.base import Bar, BrokerFacade, Capabilities, StaticRegistry
from brokers.errors import NotSupported
from brokers.http import make_client
from brokers.intervals import interval_ns
from brokers.schwab.auth import CREDENTIALS as _CREDENTIALS
from brokers.schwab.auth import DEFAULT_TIMEOUT_S, SchwabAuthenticator
from brokers.schwab.bars import CLOSE_GRACE_NS, closed_bars
from brokers.schwab.client import SchwabRest
from brokers.schwab.parse import BROKER as _BROKER
from brokers.schwab.parse import NS_PER_MS, parse_price_history
from brokers.schwab.streamer import STREAM_INTERVAL, ChartStreamer, SocketFactory, httpx_ws_connector
from brokers.symbols import symbol_adapter

BROKER = _BROKER
CAPABILITIES = Capabilities(execution=False, market_data=True, lookup_by_client_id=False, brackets=False, modify=False)
CREDENTIALS: tuple[str, ...] = _CREDENTIALS

PRICE_HISTORY_PATH = "/marketdata/v1/pricehistory"
HISTORY_INTERVALS: Mapping[str, tuple[str, str, int]] = MappingProxyType({
    # engine interval: (periodType, frequencyType, frequency) as pricehistory takes them
    "1m": ("day", "minute", 1),
    "5m": ("day", "minute", 5),
    "10m": ("day", "minute", 10),
    "15m": ("day", "minute", 15),
    "30m": ("day", "minute", 30),
    "1d": ("year", "daily", 1),
})


class SchwabMarketData:
    """Historical bars over REST, streaming bars over the streamer WebSocket."""

    def __init__(self, rest: SchwabRest, tokens: TokenSource, connect: SocketFactory, *, timeout_s: float,
                 clock_ns: Callable[[], int] = time.time_ns, grace_ns: int = CLOSE_GRACE_NS,
                 **streamer_options: Any) -> None:
        self._rest = rest
        self._clock_ns = clock_ns
        self._grace_ns = grace_ns
        self.streamer = ChartStreamer(rest, tokens, self._candles_after, connect, reply_timeout_s=timeout_s,
                                      clock_ns=clock_ns, grace_ns=grace_ns, **streamer_options)

    def historical_bars(self, symbol: str, interval: str, *, after_ts_ns: int = 0, limit: int = 500) -> list[Bar]:
        if limit <= 0:
            raise ValueError("limit must be positive")
        step = self._interval_ns(interval)
        now = self._clock_ns()
        if after_ts_ns <= 0:
            after_ts_ns = max(0, now - (limit + 1) * step)
        bars = self._candles(symbol, interval, after_ts_ns, now)
        return closed_bars(bars, step, now, self._grace_ns)[:limit]

    def stream_bars(self, symbol: str, interval: str, *, after_index: int | None) -> Iterator[Bar | None]:
        if interval != STREAM_INTERVAL:
            raise NotSupported(BROKER, f"{interval} bar streaming",
                               "CHART_FUTURES streams one-minute bars only: stream 1m and aggregate, or poll "
                               "historical_bars")
        return self.streamer.stream(symbol, after_index)

    def _interval_ns(self, interval: str) -> int:
        if interval not in HISTORY_INTERVALS:
            raise NotSupported(BROKER, f"{interval} bars",
                               f"pricehistory serves {', '.join(HISTORY_INTERVALS)}")
        return interval_ns(interval)

    def _candles_after(self, symbol: str, after_ts_ns: int) -> list[Bar]:
        return self._candles(symbol, STREAM_INTERVAL, after_ts_ns, self._clock_ns())

    def _candles(self, symbol: str, interval: str, after_ts_ns: int, now_ns: int) -> list[Bar]:
        """Every candle after ``after_ts_ns`` up to now, the forming one included."""
        step = self._interval_ns(interval)
        period_type, frequency_type, frequency = HISTORY_INTERVALS[interval]
        start_ms = after_ts_ns // NS_PER_MS + 1
        # endDate is required in practice: without it Schwab ends at the previous business day's close.
        end_ms = max(now_ns // NS_PER_MS, start_ms)
        params = {"symbol": symbol, "periodType": period_type, "frequencyType": frequency_type,
                  "frequency": str(frequency), "startDate": str(start_ms), "endDate": str(end_ms)}
        bars = parse_price_history(self._rest.get_json(PRICE_HISTORY_PATH, params), symbol, interval, step)
        return [b for b in bars if b.ts_ns > after_ts_ns]


def authenticator(config: Mapping[str, Any], *, transport: httpx.BaseTransport | None = None) -> SchwabAuthenticator:
    return SchwabAuthenticator(config, transport=transport)


def build(config: Mapping[str, Any], *, transport: httpx.BaseTransport | None = None,
          tokens: TokenSource | None = None) -> BrokerFacade:
    """A data-only facade for one Schwab login (see the module docstring for ``config``)."""
    account = config.get("account")
    if not isinstance(account, str) or not account:
        raise ValueError("schwab broker config needs 'account' (the engine's account name; also the secrets key)")
    base_url = config.get("base_url")
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError("schwab broker config needs 'base_url', e.g. https://api.schwabapi.com")
    timeout_s = float(config.get("timeout_s", DEFAULT_TIMEOUT_S))
    owned: SchwabAuthenticator | None = None
    if tokens is None:
        owned = authenticator(config, transport=transport)
        tokens = LocalTokenSource(owned)
    client = make_client(base_url.rstrip("/"), timeout_s, transport)
    # The streamer's own client: httpx-ws needs a real network stream (a MockTransport cannot upgrade).
    ws_client = httpx.Client(timeout=httpx.Timeout(timeout_s))
    market_data = SchwabMarketData(SchwabRest(client, tokens), tokens, httpx_ws_connector(ws_client),
                                   timeout_s=timeout_s)

    def close() -> None:
        client.close()
        ws_client.close()
        if owned is not None:
            owned.close()

    return BrokerFacade(
        name=BROKER,
        account=account,
        registry=StaticRegistry(BROKER, CAPABILITIES),
        symbols=symbol_adapter(BROKER),
        execution=None,
        market_data=market_data,
        on_close=close,
    )
