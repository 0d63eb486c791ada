"""Schwab's wire shapes → domain types and ``brokers.errors``: pure functions, no I/O, no clock.

What is here (VENUES.md "Charles Schwab Trader API" is the authority; facts it does not state are
marked *unconfirmed* where they are used):

* the OAuth2 token answer (``access_token``, ``expires_in``, ``refresh_token`` …) and the token
  endpoint's error answers (``{"error", "error_description"}``);
* REST error bodies (``{"errors": [{"status", "title", "detail"}]}``);
* ``GET /marketdata/v1/pricehistory`` → ``Bar`` (``{"candles": [{datetime (ms), open, high, low,
  close, volume}], "symbol", "empty"}``);
* ``GET /trader/v1/userPreference`` → ``StreamerInfo``;
* streamer requests (``{"requests": [...]}``) and messages (``response`` / ``notify`` / ``data``),
  ``CHART_FUTURES`` items → ``Bar``, and the streamer's response codes → error types.

JSON numbers are read as ``Decimal`` (``parse_float=Decimal``), never as floats.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

from brokers.base import Bar
from brokers.errors import (
    AuthFailed,
    BrokerError,
    BrokerUnavailable,
    Retryable,
    UnexpectedResponse,
    redact,
)
from brokers.wire import decimal_of as _decimal
from brokers.wire import int_of as _int

BROKER = "schwab"

NS_PER_MS = 1_000_000
MAX_REASON_CHARS = 160
"""Venue text kept in an error message (after redaction)."""

# ---------------------------------------------------------------- JSON


def loads(raw: str | bytes) -> Any:
    """JSON with exact decimals; ``ValueError`` (``JSONDecodeError``/``UnicodeDecodeError``) if not JSON."""
    return json.loads(raw, parse_float=Decimal)


_SHAPE_ERRORS = (KeyError, TypeError, ValueError, InvalidOperation, AttributeError, IndexError)


def _excerpt(data: Any) -> str:
    try:
        return json.dumps(data, default=str)
    except (TypeError, ValueError):
        return repr(data)


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name}: expected a non-empty string")
    return value


_TOKEN_DIGEST = re.compile(r"tokenDigest=[^,\]\s\"\\]+", re.IGNORECASE)


def venue_text(text: str) -> str:
    """Venue-supplied text fit for an error message: secrets and token digests masked, short."""
    return redact(_TOKEN_DIGEST.sub("tokenDigest=***", text), MAX_REASON_CHARS)


# ---------------------------------------------------------------- OAuth2 token endpoint


@dataclass(frozen=True, repr=False)
class TokenAnswer:
    access_token: str
    expires_in_s: int
    refresh_token: str | None
    refresh_expires_in_s: int | None
    """``refresh_token_expires_in`` if the venue says it. Schwab's answers seen in public clients
    do not carry it (TD Ameritrade's did): *unconfirmed*, used only when present."""

    def __repr__(self) -> str:
        return f"TokenAnswer(expires_in_s={self.expires_in_s}, access_token=***)"


def parse_token_answer(data: Any) -> TokenAnswer:
    """A 200 answer of ``POST /v1/oauth/token``. Never echoes the body (it holds the tokens):
    a bad shape names the keys present only."""
    if not isinstance(data, dict):
        raise UnexpectedResponse("token answer is not a JSON object", broker=BROKER)
    keys = ", ".join(sorted(str(k) for k in data)[:12])
    try:
        access = _text(data["access_token"], "access_token")
        expires_in = _int(data["expires_in"], "expires_in")
        if expires_in <= 0:
            raise ValueError("expires_in: must be positive")
        token_type = data.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise ValueError("token_type: expected Bearer")
        refresh = data.get("refresh_token")
        if refresh is not None:
            refresh = _text(refresh, "refresh_token")
        refresh_in = data.get("refresh_token_expires_in")
        if refresh_in is not None:
            refresh_in = _int(refresh_in, "refresh_token_expires_in")
    except _SHAPE_ERRORS as exc:
        # The exception text names a field, never a value.
        raise UnexpectedResponse(f"malformed token answer ({type(exc).__name__}: {exc}; keys: {keys})",
                                 broker=BROKER) from None
    return TokenAnswer(access, expires_in, refresh, refresh_in)


@dataclass(frozen=True)
class OAuthError:
    error: str
    description: str
    """Redacted, short."""


def parse_oauth_error(data: Any) -> OAuthError | None:
    """``{"error": code, "error_description": text}`` (RFC 6749 §5.2) or None if not that shape."""
    if not isinstance(data, dict) or not isinstance(data.get("error"), str):
        return None
    description = data.get("error_description")
    return OAuthError(data["error"], venue_text(description) if isinstance(description, str) else "")


DEAD_REFRESH_TOKEN_ERRORS = frozenset({"invalid_grant", "refresh_token_authentication_error",
                                       "unsupported_token_type"})
"""A refresh grant answered with one of these: the refresh token is dead (expired after 7 days,
revoked, or replaced by a newer login). ``invalid_grant`` is OAuth2's code; Schwab has been seen to
answer HTTP 400 ``unsupported_token_type`` wrapping ``refresh_token_authentication_error`` (public
client issues; *unconfirmed* by VENUES.md), so all three mean the same here."""

BAD_CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client"})
"""The app key/secret (HTTP Basic) were refused: a configuration problem only the operator fixes."""


def is_dead_refresh_token(error: OAuthError) -> bool:
    return error.error in DEAD_REFRESH_TOKEN_ERRORS or "refresh_token_authentication_error" in error.description


# ---------------------------------------------------------------- REST error bodies


def rest_error_text(data: Any) -> str:
    """The venue's reason from a REST error body, redacted; "" when there is none.

    Schwab answers ``{"errors": [{"id", "status", "title", "detail", "source"}]}``; some gateways
    answer ``{"message": …}`` or an OAuth-style ``{"error", "error_description"}`` (*unconfirmed*
    which endpoints use which), so all three are read.
    """
    parts: list[str] = []
    if isinstance(data, dict):
        errors = data.get("errors")
        if isinstance(errors, list):
            for item in errors[:3]:
                if isinstance(item, dict):
                    title, detail = item.get("title"), item.get("detail")
                    text = ": ".join(str(p) for p in (title, detail) if isinstance(p, str) and p)
                    if text:
                        parts.append(text)
        for key in ("message", "error_description", "error"):
            if not parts and isinstance(data.get(key), str):
                parts.append(data[key])
    return venue_text("; ".join(parts)) if parts else ""


# ---------------------------------------------------------------- price history


def parse_price_history(data: Any, symbol: str, interval: str, interval_ns: int) -> list[Bar]:
    """``GET /marketdata/v1/pricehistory`` → bars in time order (every candle, the forming one
    included: deciding which are closed is ``brokers.schwab.bars``' business).

    ``symbol`` labels the bars (the facade relabels them canonically). The answer's own ``symbol``
    is not compared: whether Schwab echoes ``/ES`` or the contract it maps to is *unconfirmed*.
    """
    if not isinstance(data, dict):
        raise UnexpectedResponse("price history is not a JSON object", broker=BROKER, excerpt=_excerpt(data))
    candles = data.get("candles")
    if candles is None and data.get("empty") is True:
        return []
    if not isinstance(candles, list):
        raise UnexpectedResponse("price history without a 'candles' list", broker=BROKER, excerpt=_excerpt(data))
    bars: list[Bar] = []
    for candle in candles:
        try:
            ts_ns = _int(candle["datetime"], "datetime") * NS_PER_MS
            bar = Bar(symbol=symbol, interval=interval, ts_ns=ts_ns,
                      open=_decimal(candle["open"], "open"), high=_decimal(candle["high"], "high"),
                      low=_decimal(candle["low"], "low"), close=_decimal(candle["close"], "close"),
                      volume=_decimal(candle["volume"], "volume"), index=ts_ns // interval_ns)
        except _SHAPE_ERRORS as exc:
            raise UnexpectedResponse(f"malformed candle ({type(exc).__name__}: {exc})", broker=BROKER,
                                     excerpt=_excerpt(candle)) from exc
        if bars and bar.ts_ns <= bars[-1].ts_ns:
            raise UnexpectedResponse("candles out of time order", broker=BROKER, excerpt=_excerpt(candle))
        bars.append(bar)
    return bars


# ---------------------------------------------------------------- streamer info (userPreference)


@dataclass(frozen=True)
class StreamerInfo:
    socket_url: str
    customer_id: str
    correl_id: str
    channel: str
    function_id: str


def parse_streamer_info(data: Any) -> StreamerInfo:
    """``streamerInfo`` of ``GET /trader/v1/userPreference``. Public clients read it as a list
    and use the first entry; a bare object is accepted too (*unconfirmed* which one Schwab sends)."""
    info = data.get("streamerInfo") if isinstance(data, dict) else None
    if isinstance(info, list) and info:
        info = info[0]
    try:
        if not isinstance(info, dict):
            raise TypeError("streamerInfo: expected an object or a non-empty list of objects")
        url = _text(info["streamerSocketUrl"], "streamerSocketUrl")
        if not url.startswith(("ws://", "wss://")):
            raise ValueError("streamerSocketUrl: expected a ws:// or wss:// URL")
        return StreamerInfo(socket_url=url,
                            customer_id=_text(info["schwabClientCustomerId"], "schwabClientCustomerId"),
                            correl_id=_text(info["schwabClientCorrelId"], "schwabClientCorrelId"),
                            channel=_text(info["schwabClientChannel"], "schwabClientChannel"),
                            function_id=_text(info["schwabClientFunctionId"], "schwabClientFunctionId"))
    except _SHAPE_ERRORS as exc:
        raise UnexpectedResponse(f"malformed user preferences ({type(exc).__name__}: {exc})", broker=BROKER,
                                 excerpt=_excerpt(info if info is not None else data)) from exc


# ---------------------------------------------------------------- streamer requests

CHART_FUTURES = "CHART_FUTURES"
CHART_FUTURES_FIELDS = "0,1,2,3,4,5,6"
"""0 symbol, 1 time (ms, the bar's open), 2 open, 3 high, 4 low, 5 close, 6 volume."""


def stream_request(info: StreamerInfo, service: str, command: str, request_id: int,
                   parameters: Mapping[str, str]) -> dict[str, Any]:
    return {"service": service, "command": command, "requestid": str(request_id),
            "SchwabClientCustomerId": info.customer_id, "SchwabClientCorrelId": info.correl_id,
            "parameters": dict(parameters)}


def login_request(info: StreamerInfo, access_token: str, request_id: int) -> dict[str, Any]:
    """LOGIN carries the raw access token (no ``Bearer`` prefix)."""
    return stream_request(info, "ADMIN", "LOGIN", request_id,
                          {"Authorization": access_token, "SchwabClientChannel": info.channel,
                           "SchwabClientFunctionId": info.function_id})


def chart_subs_request(info: StreamerInfo, symbol: str, request_id: int) -> dict[str, Any]:
    return stream_request(info, CHART_FUTURES, "SUBS", request_id, {"keys": symbol, "fields": CHART_FUTURES_FIELDS})


def logout_request(info: StreamerInfo, request_id: int) -> dict[str, Any]:
    return stream_request(info, "ADMIN", "LOGOUT", request_id, {})


def encode_requests(*requests: Mapping[str, Any]) -> str:
    return json.dumps({"requests": list(requests)})


# ---------------------------------------------------------------- streamer messages


@dataclass(frozen=True)
class StreamReply:
    """A ``response`` item (answer to one of our requests) or a ``notify`` item carrying a code
    (an unsolicited notice such as code 30 STOP_STREAMING)."""

    service: str
    command: str
    request_id: str | None
    code: int
    msg: str


@dataclass(frozen=True)
class StreamData:
    service: str
    items: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class StreamMessage:
    replies: tuple[StreamReply, ...] = ()
    notices: tuple[StreamReply, ...] = ()
    heartbeats: int = 0
    data: tuple[StreamData, ...] = ()


def _reply(item: Any, where: str) -> StreamReply:
    try:
        content = item["content"]
        code = _int(content["code"], "content.code")
        msg = content.get("msg", "")
        request_id = item.get("requestid")
        return StreamReply(service=str(item.get("service", "")), command=str(item.get("command", "")),
                           request_id=None if request_id is None else str(request_id), code=code,
                           msg=venue_text(msg) if isinstance(msg, str) else "")
    except _SHAPE_ERRORS as exc:
        raise UnexpectedResponse(f"malformed streamer {where} ({type(exc).__name__}: {exc})", broker=BROKER,
                                 excerpt=_excerpt(item)) from exc


def parse_stream_message(raw: str) -> StreamMessage:
    """One streamer frame: ``{"response": [...]}``, ``{"notify": [...]}``, ``{"data": [...]}`` (a
    frame may carry several of them). Anything else is ``UnexpectedResponse``, never a crash."""
    try:
        data = loads(raw)
    except ValueError as exc:
        raise UnexpectedResponse("streamer frame is not JSON", broker=BROKER, excerpt=raw) from exc
    if not isinstance(data, dict) or not ({"response", "notify", "data"} & data.keys()):
        raise UnexpectedResponse("streamer frame without response, notify or data", broker=BROKER,
                                 excerpt=_excerpt(data))
    replies: list[StreamReply] = []
    notices: list[StreamReply] = []
    heartbeats = 0
    blocks: list[StreamData] = []
    for key in ("response", "notify", "data"):
        items = data.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            raise UnexpectedResponse(f"streamer '{key}' is not a list", broker=BROKER, excerpt=_excerpt(data))
        for item in items:
            if not isinstance(item, dict):
                raise UnexpectedResponse(f"streamer '{key}' item is not an object", broker=BROKER,
                                         excerpt=_excerpt(item))
            if key == "response":
                replies.append(_reply(item, "response"))
            elif key == "notify":
                if "heartbeat" in item:
                    heartbeats += 1
                else:
                    notices.append(_reply(item, "notice"))
            else:
                content = item.get("content")
                if not isinstance(item.get("service"), str) or not isinstance(content, list):
                    raise UnexpectedResponse("malformed streamer data", broker=BROKER, excerpt=_excerpt(item))
                blocks.append(StreamData(item["service"], tuple(content)))
    return StreamMessage(tuple(replies), tuple(notices), heartbeats, tuple(blocks))


def chart_item_key(item: Any) -> str | None:
    """The symbol a ``CHART_FUTURES`` item is for: ``key``, else field ``0``."""
    if not isinstance(item, dict):
        return None
    key = item.get("key", item.get("0"))
    return key if isinstance(key, str) else None


def parse_chart_item(item: Any, symbol: str, interval: str, interval_ns: int) -> Bar:
    """A ``CHART_FUTURES`` content item (fields by number) → ``Bar``. Schwab's docs say streamers
    send only changed fields for LEVELONE services; chart items are read as complete here and an
    item missing a field is ``UnexpectedResponse`` (*unconfirmed* that chart updates are never partial)."""
    try:
        if not isinstance(item, dict):
            raise TypeError("chart item: expected an object")
        ts_ns = _int(item["1"], "1 (time)") * NS_PER_MS
        return Bar(symbol=symbol, interval=interval, ts_ns=ts_ns, open=_decimal(item["2"], "2 (open)"),
                   high=_decimal(item["3"], "3 (high)"), low=_decimal(item["4"], "4 (low)"),
                   close=_decimal(item["5"], "5 (close)"), volume=_decimal(item["6"], "6 (volume)"),
                   index=ts_ns // interval_ns)
    except _SHAPE_ERRORS as exc:
        raise UnexpectedResponse(f"malformed {CHART_FUTURES} item ({type(exc).__name__}: {exc})", broker=BROKER,
                                 excerpt=_excerpt(item)) from exc


# ---------------------------------------------------------------- streamer response codes

STREAM_CODES: Mapping[int, str] = MappingProxyType({
    0: "SUCCESS",
    3: "LOGIN_DENIED",
    9: "UNKNOWN_FAILURE",
    11: "SERVICE_NOT_AVAILABLE",
    12: "CLOSE_CONNECTION",
    19: "REACHED_SYMBOL_LIMIT",
    20: "STREAM_CONN_NOT_FOUND",
    21: "BAD_COMMAND_FORMAT",
    22: "FAILED_COMMAND_SUBS",
    23: "FAILED_COMMAND_UNSUBS",
    24: "FAILED_COMMAND_ADD",
    25: "FAILED_COMMAND_VIEW",
    26: "SUCCEEDED_COMMAND_SUBS",
    27: "SUCCEEDED_COMMAND_UNSUBS",
    28: "SUCCEEDED_COMMAND_ADD",
    29: "SUCCEEDED_COMMAND_VIEW",
    30: "STOP_STREAMING",
})
"""Schwab's streamer response codes. VENUES.md states only "code 0 = ok"; the rest is Schwab's
streamer guide as restated by public clients (*unconfirmed* here)."""

SUCCESS_CODES = frozenset({0, 26, 27, 28, 29})
LOGIN_DENIED = 3

_CODE_ERRORS: Mapping[int, tuple[type[BrokerError], str]] = MappingProxyType({
    LOGIN_DENIED: (AuthFailed, "the streamer refused the access token"),
    9: (Retryable, "the streamer failed"),
    11: (BrokerUnavailable, "the streamer service is not available"),
    12: (Retryable, "the streamer closed this connection: Schwab allows one streamer connection per user "
                    "and another one took over"),
    19: (Retryable, "the streamer's symbol limit was reached"),
    20: (Retryable, "the streamer lost this connection's session"),
    21: (UnexpectedResponse, "the streamer could not read our command"),
    22: (Retryable, "the streamer failed the subscription"),
    23: (Retryable, "the streamer failed the unsubscription"),
    24: (Retryable, "the streamer failed the ADD command"),
    25: (Retryable, "the streamer failed the VIEW command"),
    30: (Retryable, "the streamer stopped streaming"),
})


def stream_code_error(reply: StreamReply) -> BrokerError | None:
    """None for a success code; otherwise the error to raise, naming the code (and its name when
    known). An unknown code is ``UnexpectedResponse`` — reported, never a crash."""
    if reply.code in SUCCESS_CODES:
        return None
    what = f"{reply.service} {reply.command}".strip() or "streamer"
    detail = f" ({reply.msg})" if reply.msg else ""
    known = _CODE_ERRORS.get(reply.code)
    if known is None:
        return UnexpectedResponse(f"{what}: unexpected streamer code {reply.code}{detail}", broker=BROKER)
    error_type, meaning = known
    return error_type(f"{what}: {meaning} (code {reply.code} {STREAM_CODES[reply.code]}){detail}", broker=BROKER)

