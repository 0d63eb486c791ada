"""The ``sim`` broker: the engine's adapter for the venue simulator's HTTP API.

It is a real adapter in every respect the engine can observe (HTTP, keep-alive, error translation
through ``brokers.http``, answers parsed into ``brokers.base`` types); only the wire dialect is the
simulator's own, which speaks canonical symbols, so the symbol adapter is the identity.

Status mapping on commands (submit, cancel, modify): 422 → ``Rejected`` (the venue refused), 400 →
``Rejected`` too (it refused the request as malformed and did not act), 404 → ``OrderNotFound``.
A 200 answer to a submit that cannot be parsed is ``OutcomeUnknown``: the order may exist.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

import httpx

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
from brokers.errors import (
    OrderNotFound,
    OutcomeUnknown,
    Rejected,
    Retryable,
    UnexpectedResponse,
    UnknownSymbol,
)
from brokers.http import make_client, raise_for_status, translate_errors
from brokers.symbols import CanonicalSymbolAdapter
from brokers.wire import decimal_of as _decimal
from brokers.wire import int_of as _int
from brokers.wire import optional_decimal as _optional_decimal
from schema.enums import OrderStatus, OrderType, Side

BROKER = "sim"
API = "/v1"
CAPABILITIES = Capabilities(execution=True, market_data=True, lookup_by_client_id=True, brackets=False, modify=True)
DEFAULT_TIMEOUT_S = 5.0
STREAM_READ_TIMEOUT_S = 5.0
"""The venue sends a heartbeat every second on an idle stream: five silent seconds mean it is gone."""
FILLS_PAGE = 1000


# ---------------------------------------------------------------- wire → domain


def parse_order(data: Any) -> BrokerOrder:
    return BrokerOrder(
        broker_order_id=str(data["order_id"]),
        client_order_id=str(data["client_order_id"]),
        symbol=str(data["symbol"]),
        side=Side(data["side"]),
        order_type=OrderType(data["order_type"]),
        quantity=_decimal(data["quantity"]),
        filled_quantity=_decimal(data["filled_quantity"]),
        average_price=_optional_decimal(data.get("average_price")),
        status=OrderStatus(data["status"]),
        limit_price=_optional_decimal(data.get("limit_price")),
        stop_price=_optional_decimal(data.get("stop_price")),
        reason=data.get("reason"),
        updated_ns=_int(data["updated_ns"]),
    )


def parse_fill(data: Any) -> BrokerFill:
    return BrokerFill(
        broker_fill_id=str(data["fill_id"]),
        broker_order_id=str(data["order_id"]),
        client_order_id=str(data["client_order_id"]),
        symbol=str(data["symbol"]),
        side=Side(data["side"]),
        quantity=_decimal(data["quantity"]),
        price=_decimal(data["price"]),
        ts_ns=_int(data["ts_ns"]),
    )


def parse_position(data: Any) -> BrokerPosition:
    return BrokerPosition(symbol=str(data["symbol"]), quantity=_decimal(data["quantity"]),
                          average_price=_optional_decimal(data.get("average_price")))


def parse_bar(data: Any) -> Bar:
    return Bar(
        symbol=str(data["symbol"]),
        interval=str(data["interval"]),
        ts_ns=_int(data["ts_ns"]),
        open=_decimal(data["open"]),
        high=_decimal(data["high"]),
        low=_decimal(data["low"]),
        close=_decimal(data["close"]),
        volume=_decimal(data["volume"]),
        index=_int(data["index"]),
    )


_SHAPE_ERRORS = (KeyError, TypeError, ValueError, InvalidOperation, AttributeError)


def _excerpt(data: Any) -> str:
    try:
        return json.dumps(data, default=str)
    except (TypeError, ValueError):
        return repr(data)


def _loads(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content, parse_float=Decimal)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnexpectedResponse(f"{response.request.method} {response.request.url.path}: body is not JSON",
                                 broker=BROKER, excerpt=response.text) from exc


def _parse(parser: Any, data: Any, what: str) -> Any:
    try:
        return parser(data)
    except _SHAPE_ERRORS as exc:
        raise UnexpectedResponse(f"malformed {what} ({type(exc).__name__}: {exc})", broker=BROKER,
                                 excerpt=_excerpt(data)) from exc


def _list(data: Any, key: str) -> list[Any]:
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise UnexpectedResponse(f"expected a list under {key!r}", broker=BROKER, excerpt=_excerpt(data))
    return items


def _error_text(data: Any, *keys: str) -> str:
    if isinstance(data, dict):
        for key in keys:
            if isinstance(data.get(key), str):
                return data[key]
    return "no reason given"


def _encode(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, default=lambda v: format(v, "f") if isinstance(v, Decimal) else str(v)).encode()


_JSON_HEADERS = {"Content-Type": "application/json"}


# ---------------------------------------------------------------- the roles


class SimExecution:
    """Order execution for one simulator account."""

    def __init__(self, client: httpx.Client, account: str) -> None:
        self._client = client
        self._account = account

    def _command(self, path: str, body: Mapping[str, Any], client_order_id: str) -> BrokerOrder:
        """A request with side effects: POST it, map refusals, parse the order it answers with."""
        with translate_errors(BROKER, sends_order=True):
            response = self._client.post(path, content=_encode(body), headers=_JSON_HEADERS)
        if response.status_code in (400, 422):
            data = _loads(response)
            raise Rejected(_error_text(data, "reason", "message"), broker=BROKER)
        if response.status_code == 404:
            raise OrderNotFound(client_order_id, broker=BROKER)
        raise_for_status(response, broker=BROKER, sends_order=True)
        try:
            return _parse(parse_order, _loads(response), "order")
        except UnexpectedResponse as exc:
            # The venue said 200: the command was acted on, but we cannot tell the result.
            raise OutcomeUnknown(f"unreadable answer to {path} ({exc.message}); look the order up", broker=BROKER) from exc

    def _get(self, path: str, params: Mapping[str, str]) -> Any:
        with translate_errors(BROKER, sends_order=False):
            response = self._client.get(path, params=params)
        raise_for_status(response, broker=BROKER, sends_order=False)
        return _loads(response)

    def submit_order(self, req: OrderRequest) -> BrokerOrder:
        body = {
            "account": self._account,
            "client_order_id": req.client_order_id,
            "symbol": req.symbol,
            "side": req.side.value,
            "order_type": req.order_type.value,
            "quantity": req.quantity,
            "limit_price": req.limit_price,
            "stop_price": req.stop_price,
            "time_in_force": req.time_in_force.value,
        }
        return self._command(f"{API}/orders", body, req.client_order_id)

    def cancel_order(self, client_order_id: str) -> BrokerOrder:
        path = f"{API}/orders/{quote(client_order_id, safe='')}/cancel"
        return self._command(path, {"account": self._account}, client_order_id)

    def modify_order(
        self,
        client_order_id: str,
        quantity: Decimal | None = None,
        limit_price: Decimal | None = None,
        stop_price: Decimal | None = None,
    ) -> BrokerOrder:
        body: dict[str, Any] = {"account": self._account}
        for name, value in (("quantity", quantity), ("limit_price", limit_price), ("stop_price", stop_price)):
            if value is not None:
                body[name] = value
        path = f"{API}/orders/{quote(client_order_id, safe='')}/modify"
        return self._command(path, body, client_order_id)

    def open_orders(self) -> list[BrokerOrder]:
        data = self._get(f"{API}/orders", {"account": self._account, "status": "open"})
        return [_parse(parse_order, item, "order") for item in _list(data, "orders")]

    def positions(self) -> list[BrokerPosition]:
        data = self._get(f"{API}/positions", {"account": self._account})
        return [_parse(parse_position, item, "position") for item in _list(data, "positions")]

    def fills_since(self, cursor: str | None) -> tuple[list[BrokerFill], str | None]:
        """The cursor is the venue's fill sequence number as text; pages are followed to the end."""
        if cursor is None:
            after_seq = 0
        elif cursor.isdigit():
            after_seq = int(cursor)
        else:
            raise ValueError(f"not a sim fills cursor: {cursor[:20]!r}")
        fills: list[BrokerFill] = []
        while True:
            data = self._get(f"{API}/fills", {"account": self._account, "after_seq": str(after_seq),
                                              "limit": str(FILLS_PAGE)})
            page = _list(data, "fills")
            fills.extend(_parse(parse_fill, item, "fill") for item in page)
            if page:
                seq = page[-1].get("seq") if isinstance(page[-1], dict) else None
                if not isinstance(seq, int) or isinstance(seq, bool) or seq <= after_seq:
                    raise UnexpectedResponse("fills page without an increasing seq", broker=BROKER,
                                             excerpt=_excerpt(page[-1]))
                after_seq = seq
                cursor = str(seq)
            if len(page) < FILLS_PAGE:
                return fills, cursor

    def account_equity(self) -> Decimal:
        """Starting equity plus realized P&L, as the venue keeps it (``GET /accounts/{account}/summary``)."""
        data = self._get(f"{API}/accounts/{quote(self._account, safe='')}/summary", {})
        try:
            return _decimal(data["equity"])
        except _SHAPE_ERRORS as exc:
            raise UnexpectedResponse(f"malformed account summary ({type(exc).__name__}: {exc})", broker=BROKER,
                                     excerpt=_excerpt(data)) from exc

    def order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        path = f"{API}/orders/by-client-id/{quote(client_order_id, safe='')}"
        with translate_errors(BROKER, sends_order=False):
            response = self._client.get(path, params={"account": self._account})
        if response.status_code == 404:
            data = _loads(response)
            # Only the venue's explicit "no such order" means None; any other 404 (a wrong base URL,
            # a proxy page) is doubt, and doubt must raise.
            if isinstance(data, dict) and data.get("error") == "not_found":
                return None
            raise UnexpectedResponse(f"GET {path}: 404 without a not-found answer", broker=BROKER,
                                     excerpt=_excerpt(data))
        raise_for_status(response, broker=BROKER, sends_order=False)
        return _parse(parse_order, _loads(response), "order")


class SimMarketData:
    """Historical and streaming bars from the simulator."""

    def __init__(self, client: httpx.Client, timeout_s: float) -> None:
        self._client = client
        self._timeout_s = timeout_s

    def _raise_for_bars(self, response: httpx.Response, symbol: str) -> None:
        if response.status_code == 404:
            data = _loads(response)
            if isinstance(data, dict) and data.get("error") == "unknown_symbol":
                raise UnknownSymbol(symbol, broker=BROKER, detail=_error_text(data, "message"))
        if response.status_code in (400, 409):
            # 409: our after_index is past the venue's latest bar — it restarted; resync from history.
            raise UnexpectedResponse(f"bar request refused (HTTP {response.status_code})", broker=BROKER,
                                     excerpt=response.text)
        raise_for_status(response, broker=BROKER, sends_order=False)

    def historical_bars(self, symbol: str, interval: str, *, after_ts_ns: int = 0, limit: int = 500) -> list[Bar]:
        params = {"interval": interval, "after_ts_ns": str(after_ts_ns), "limit": str(limit)}
        with translate_errors(BROKER, sends_order=False):
            response = self._client.get(f"{API}/bars/{quote(symbol, safe='')}", params=params)
        self._raise_for_bars(response, symbol)
        return [_parse(parse_bar, item, "bar") for item in _list(_loads(response), "bars")]

    def stream_bars(self, symbol: str, interval: str, *, after_index: int | None) -> Iterator[Bar | None]:
        params = {"interval": interval}
        if after_index is not None:
            params["after_index"] = str(after_index)
        timeout = httpx.Timeout(self._timeout_s, read=STREAM_READ_TIMEOUT_S)
        path = f"{API}/bars/{quote(symbol, safe='')}/stream"
        with translate_errors(BROKER, sends_order=False):
            with self._client.stream("GET", path, params=params, timeout=timeout) as response:
                if response.status_code != 200:
                    response.read()
                    self._raise_for_bars(response, symbol)
                    raise UnexpectedResponse(f"GET {path}: HTTP {response.status_code}", broker=BROKER)
                for line in response.iter_lines():
                    if line.strip():
                        yield _stream_item(line)
        raise Retryable(f"GET {path}: the venue ended the stream", broker=BROKER)


def _stream_item(line: str) -> Bar | None:
    try:
        data = json.loads(line, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise UnexpectedResponse("stream line is not JSON", broker=BROKER, excerpt=line) from exc
    if isinstance(data, dict) and "heartbeat" in data:
        return None
    return _parse(parse_bar, data, "bar")


# ---------------------------------------------------------------- wiring


def build(config: Mapping[str, Any], *, transport: httpx.BaseTransport | None = None) -> BrokerFacade:
    """A facade for one simulator account.

    ``config``: ``base_url`` (required), ``account`` (without one the facade is data-only),
    ``timeout_s`` (default ``DEFAULT_TIMEOUT_S``).
    """
    base_url = config.get("base_url")
    if not isinstance(base_url, str) or not base_url:
        raise ValueError("sim broker config needs 'base_url', e.g. http://127.0.0.1:8765")
    account = config.get("account")
    if account is not None and (not isinstance(account, str) or not account):
        raise ValueError("sim broker config: 'account' must be a non-empty string")
    timeout_s = float(config.get("timeout_s", DEFAULT_TIMEOUT_S))
    client = make_client(base_url, timeout_s, transport)
    execution = SimExecution(client, account) if account else None
    capabilities = CAPABILITIES if account else Capabilities(
        execution=False, market_data=True, lookup_by_client_id=False, brackets=False, modify=False)
    return BrokerFacade(
        name=BROKER,
        account=account,
        registry=StaticRegistry(BROKER, capabilities),
        symbols=CanonicalSymbolAdapter(BROKER),
        execution=execution,
        market_data=SimMarketData(client, timeout_s),
        on_close=client.close,
    )
