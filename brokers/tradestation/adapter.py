"""The ``tradestation`` broker: TradeStation API v3 for one futures account.

Module contract (``brokers.registry``): ``BROKER``, ``CAPABILITIES``, ``CREDENTIALS``, ``build``,
``authenticator``.

Config keys (never secrets): ``account`` (the engine's account name; also the secrets key),
``base_url`` (the API host, e.g. ``https://sim-api.tradestation.com`` or
``https://api.tradestation.com``; paths ``/v3/...`` are appended), ``token_url`` (default
``https://signin.tradestation.com/oauth/token``), ``account_id`` (TradeStation's AccountID; without
it the facade is data-only), ``timeout_s``, ``secrets_file`` (optional).

Credentials (``brokers.secrets``): ``client_id``, ``client_secret``, ``refresh_token`` (the initial
refresh token from the operator's interactive login; see ``brokers.tradestation.auth``).

Orders. ``OrderConfirmID`` carries our client order id (hashed when too long, see
``parse.order_confirm_id``). The place answer ``{Orders: [{OrderID, Message}], Errors: [...]}`` says
only that the order was sent, so ``submit_order`` answers ``ACCEPTED``; what the venue does with a
repeated ``OrderConfirmID`` is *unconfirmed*, so an error naming a duplicate is answered by looking
the order up (and returning it) rather than by trusting either reading. Cancel (``DELETE``) and
replace (``PUT``) answer only an acknowledgement, so the order is read back by id afterwards (if
that read fails, the order is returned as ``PENDING_CANCEL``/``PENDING_REPLACE``).

Lookup by client id searches today's and open orders, then recent historical orders, for the
``OrderConfirmID``; whether query answers carry that field is *unconfirmed*: "not found" is
answered as None only when the answers show the field (``parse.lookup_is_conclusive``) — otherwise
it raises, since doubt must never read as "no such order". Orders this process placed are also
recognised by their ``OrderID``.

Fills come from orders' legs (``ExecQuantity``, ``ExecutionPrice``): see
``parse.fills_from_orders`` for the cursor and the fill ids.

Brackets (``brackets=True``): ``BrokerFacade.submit_bracket(entry, take_profit, stop_loss)``
(``TradeStationExecution.submit_bracket``, the ``brokers.base.BracketExecution`` role) sends the
entry with its exits as OSOs that go live when the entry fills — a ``BRK`` group (one cancels the
other) when both prices are given; the legs' client ids are the entry's plus ``:tp`` / ``:sl``
(``bracket_legs``). TradeStation-only: ``submit_exit_bracket(facade, take_profit, stop_loss)`` posts a
``BRK`` order group (``/v3/orderexecution/ordergroups``) around a position already held.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from datetime import date, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx

from brokers.auth import Authenticator, LocalTokenSource, TokenSource
from brokers.base import (
    BrokerFacade,
    BrokerFill,
    BrokerOrder,
    BrokerPosition,
    Capabilities,
    OrderRequest,
    StaticRegistry,
)
from brokers.errors import (
    BrokerError,
    NotSupported,
    OrderNotFound,
    OutcomeUnknown,
    Rejected,
    UnexpectedResponse,
    UnknownSymbol,
    redact,
)
from brokers.http import make_client
from brokers.secrets import load_secrets
from brokers.symbols import symbol_adapter
from brokers.tradestation import parse
from brokers.tradestation.api import BROKER, Api, excerpt, loads, raise_for_answer
from brokers.tradestation.auth import TradeStationAuthenticator, token_url_of
from brokers.tradestation.stream import TradeStationMarketData
from schema.enums import OrderStatus, OrderType, TimeInForce

CAPABILITIES = Capabilities(execution=True, market_data=True, lookup_by_client_id=True, brackets=True, modify=True)
DATA_ONLY = Capabilities(execution=False, market_data=True, lookup_by_client_id=False, brackets=False, modify=False)
CREDENTIALS: tuple[str, ...] = ("client_id", "client_secret", "refresh_token")
DEFAULT_TIMEOUT_S = 10.0
ORDERS_PAGE_SIZE = 600
"""TradeStation's largest ``pageSize`` for order queries."""
MAX_PAGES = 50
"""A runaway ``NextToken`` chain is a bad answer, not a reason to loop forever."""
FIRST_FILLS_LOOKBACK_DAYS = 7
"""``fills_since(None)``: a venue has no "beginning"; start this many days back."""
LOOKUP_LOOKBACK_DAYS = 7
"""How far back ``order_by_client_id`` searches historical orders (the venue allows 90 days)."""
MAX_HISTORY_DAYS = 89
"""``historicalorders?since=`` is limited to 90 days before today."""
TAKE_PROFIT_SUFFIX = ":tp"
STOP_LOSS_SUFFIX = ":sl"
"""A bracket leg's client id is its entry's plus one of these — as on Tradovate
(``brokers.tradovate.execution``), so a leg has the same id on every venue."""


class TradeStationExecution:
    """Orders, positions, fills and balances of one TradeStation account."""

    def __init__(self, api: Api, account_id: str, *, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._api = api
        self._account_id = account_id
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._client_ids: dict[str, str] = {}
        """OrderID / OrderConfirmID → the engine's client order id, for the orders this process has
        placed or looked up (a hashed OrderConfirmID cannot be turned back otherwise)."""

    # -- plumbing

    @property
    def _accounts(self) -> str:
        return f"/v3/brokerage/accounts/{quote(self._account_id, safe='')}"

    def _learn(self, client_order_id: str, order_id: str | None = None) -> None:
        with self._lock:
            self._client_ids[parse.order_confirm_id(client_order_id)] = client_order_id
            if order_id:
                self._client_ids[order_id] = client_order_id

    def _client_id_of(self, order: Mapping[str, Any]) -> str:
        """The engine's id for an order of an answer: known by OrderID or OrderConfirmID, else the
        OrderConfirmID itself (plain ids are the engine's own), else "" (not placed by us)."""
        with self._lock:
            known = self._client_ids.get(parse.order_id_of(order))
            confirm = parse.confirm_id_of(order)
            if known is None and isinstance(confirm, str):
                known = self._client_ids.get(confirm, confirm)
        return known or ""

    def _read(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        response = self._api.request("GET", path, params=params, sends_order=False)
        raise_for_answer(response, sends_order=False)
        return loads(response)

    def _orders(self, which: str, **params: str) -> list[Mapping[str, Any]]:
        """Every order of ``/orders`` or ``/historicalorders``, following ``NextToken`` pages."""
        orders: list[Mapping[str, Any]] = []
        query = {"pageSize": str(ORDERS_PAGE_SIZE), **params}
        for _ in range(MAX_PAGES):
            data = self._read(f"{self._accounts}/{which}", query)
            orders.extend(self._listed(data, "Orders"))
            next_token = data.get("NextToken")
            if not next_token:
                return orders
            query = {**query, "nextToken": str(next_token)}
        raise UnexpectedResponse(f"{which}: more than {MAX_PAGES} pages", broker=BROKER)

    def _listed(self, data: Any, key: str) -> list[Mapping[str, Any]]:
        """The list under ``key``; an ``Errors`` entry for our account means the answer is incomplete."""
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise UnexpectedResponse(f"expected a list under {key!r}", broker=BROKER, excerpt=excerpt(data))
        errors = data.get("Errors") or []
        if not isinstance(errors, list):
            raise UnexpectedResponse("Errors is not a list", broker=BROKER, excerpt=excerpt(data))
        for error in errors:
            if isinstance(error, dict) and str(error.get("AccountID", self._account_id)) == self._account_id:
                raise UnexpectedResponse(f"account {self._account_id}: {redact(str(error.get('Error')))} "
                                         f"({redact(str(error.get('Message')))})", broker=BROKER)
        items = data[key]
        if not all(isinstance(i, dict) for i in items):
            raise UnexpectedResponse(f"{key} holds a non-object", broker=BROKER, excerpt=excerpt(items))
        return items

    def _parse_order(self, data: Mapping[str, Any], client_order_id: str | None = None) -> BrokerOrder:
        try:
            return parse.parse_order(data, client_order_id if client_order_id is not None else self._client_id_of(data))
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise UnexpectedResponse(f"malformed order ({type(exc).__name__}: {exc})", broker=BROKER,
                                     excerpt=excerpt(data)) from exc

    def _today(self) -> date:
        return parse.utc_date(self._clock_ns())

    def _since(self, days: int) -> str:
        return (self._today() - timedelta(days=days)).isoformat()

    # -- commands

    def _place(self, path: str, body: Mapping[str, Any], requests: list[OrderRequest]) -> list[BrokerOrder]:
        """POST an order (or a group) and read ``{Orders, Errors}``; one BrokerOrder per request."""
        response = self._api.request("POST", path, body=body, sends_order=True)
        if response.status_code in (400, 422):
            data = _quiet(response)
            if isinstance(data, dict) and ({"Orders", "Errors"} & data.keys()):
                return self._placed(data, requests)  # a refusal in the place-answer shape
        raise_for_answer(response, sends_order=True)
        try:
            data = loads(response)
        except UnexpectedResponse as exc:
            raise OutcomeUnknown(f"unreadable answer to POST {path} ({exc.message}); look the order up",
                                 broker=BROKER) from exc
        return self._placed(data, requests)

    def _placed(self, data: Any, requests: list[OrderRequest]) -> list[BrokerOrder]:
        try:
            placed, errors = parse.parse_place_answer(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise OutcomeUnknown(f"unreadable answer to an order ({type(exc).__name__}: {exc}); look the order up",
                                 broker=BROKER) from exc
        if errors:
            if all(e.is_duplicate for e in errors) and not placed:
                return self._duplicates(requests, errors)
            if placed:
                ids = ", ".join(p.order_id for p in placed)
                raise OutcomeUnknown(f"only part of the group was accepted (orders {ids}); refused: "
                                     f"{errors[0].message or errors[0].error}; look each leg up", broker=BROKER)
            raise Rejected(errors[0].message or errors[0].error or "refused without a reason", broker=BROKER)
        if len(placed) != len(requests):
            raise OutcomeUnknown(f"{len(placed)} order ids for {len(requests)} orders; look the orders up",
                                 broker=BROKER)
        # A group's answer is read in the order the orders were sent (entry, then its OSO children);
        # that TradeStation keeps this order is *unconfirmed*, and the only evidence either way.
        orders = []
        for request, answer in zip(requests, placed, strict=True):
            self._learn(request.client_order_id, answer.order_id)
            orders.append(BrokerOrder(
                broker_order_id=answer.order_id, client_order_id=request.client_order_id, symbol=request.symbol,
                side=request.side, order_type=request.order_type, quantity=request.quantity,
                filled_quantity=Decimal(0), average_price=None, status=OrderStatus.ACCEPTED,
                limit_price=request.limit_price, stop_price=request.stop_price, updated_ns=self._clock_ns()))
        return orders

    def _duplicates(self, requests: list[OrderRequest], errors: list[parse.PlaceError]) -> list[BrokerOrder]:
        """The venue says it has these client ids already: answer with what it has. If it cannot be
        read now, the order exists but its state is unknown: ``OutcomeUnknown`` (look it up later)."""
        found = []
        for request in requests:
            try:
                order = self.order_by_client_id(request.client_order_id)
            except BrokerError as exc:
                raise OutcomeUnknown(f"the venue has {request.client_order_id!r} already (duplicate) but it "
                                     f"cannot be read now ({type(exc).__name__}); look it up", broker=BROKER) from exc
            if order is None:
                raise Rejected(errors[0].message or "duplicate order", broker=BROKER)
            found.append(order)
        return found

    def submit_order(self, req: OrderRequest) -> BrokerOrder:
        self._learn(req.client_order_id)
        [order] = self._place("/v3/orderexecution/orders", parse.order_body(req, self._account_id), [req])
        return order

    def submit_bracket(self, entry: OrderRequest, take_profit: Decimal | None,
                       stop_loss: Decimal | None) -> BrokerOrder:
        """``brokers.base.BracketExecution``: the entry with a take-profit limit and/or a stop-loss
        stop on the opposite side (same quantity, GTC, client ids ``bracket_legs``), posted as ONE
        order whose OSOs go live when the entry fills (all or nothing); with both, one cancels the
        other. Returns the entry order; with neither price it is a plain ``submit_order``."""
        take, stop = bracket_legs(entry, take_profit, stop_loss)
        if take is None and stop is None:
            return self.submit_order(entry)
        return self._submit_with_osos(entry, take, stop)[0]

    def _submit_with_osos(self, entry: OrderRequest, take_profit: OrderRequest | None,
                          stop_loss: OrderRequest | None) -> list[BrokerOrder]:
        """The entry and its OSO legs as placed, in the order sent (entry, take-profit, stop-loss)."""
        requests = [entry, *(leg for leg in (take_profit, stop_loss) if leg is not None)]
        for req in requests:
            self._learn(req.client_order_id)
        body = parse.bracket_body(entry, take_profit, stop_loss, self._account_id)
        return self._place("/v3/orderexecution/orders", body, requests)

    def submit_exit_bracket(self, take_profit: OrderRequest, stop_loss: OrderRequest) -> tuple[BrokerOrder, BrokerOrder]:
        """A ``BRK`` order group around a position already held: when one fills the other is cancelled."""
        for req in (take_profit, stop_loss):
            self._learn(req.client_order_id)
        body = parse.exit_bracket_body(take_profit, stop_loss, self._account_id)
        first, second = self._place("/v3/orderexecution/ordergroups", body, [take_profit, stop_loss])
        return first, second

    def _known(self, client_order_id: str) -> BrokerOrder:
        order = self.order_by_client_id(client_order_id)
        if order is None:
            raise OrderNotFound(client_order_id, broker=BROKER)
        return order

    def _read_back(self, order: BrokerOrder, fallback: OrderStatus, **changes: Any) -> BrokerOrder:
        """The order as the venue now reports it; if that read fails, what we know it became."""
        try:
            data = self._read(f"{self._accounts}/orders/{quote(order.broker_order_id, safe='')}")
            for item in self._listed(data, "Orders"):
                if parse.order_id_of(item) == order.broker_order_id:
                    return self._parse_order(item, order.client_order_id)
        except BrokerError:
            pass
        return dataclasses.replace(order, status=fallback, **changes)

    def _command(self, method: str, order: BrokerOrder, body: Mapping[str, Any] | None) -> None:
        path = f"/v3/orderexecution/orders/{quote(order.broker_order_id, safe='')}"
        response = self._api.request(method, path, body=body, sends_order=True)
        raise_for_answer(response, sends_order=True, order_ref=order.client_order_id)
        data = _quiet(response)
        error = parse.venue_error(data)
        if error is not None and error[0]:
            # A 200 that names an error: the venue refused (TradeStation answers cancels with
            # {OrderID, Error?, Message?} — the field's use on success is unconfirmed; an Error is a refusal).
            raise Rejected(error[1] or error[0], broker=BROKER)

    def cancel_order(self, client_order_id: str) -> BrokerOrder:
        order = self._known(client_order_id)
        self._command("DELETE", order, None)
        return self._read_back(order, OrderStatus.PENDING_CANCEL)

    def modify_order(self, client_order_id: str, quantity: Decimal | None = None, limit_price: Decimal | None = None,
                     stop_price: Decimal | None = None) -> BrokerOrder:
        body = parse.replace_body(quantity, limit_price, stop_price)
        order = self._known(client_order_id)
        self._command("PUT", order, body)
        changes = {k: v for k, v in (("quantity", quantity), ("limit_price", limit_price),
                                     ("stop_price", stop_price)) if v is not None}
        return self._read_back(order, OrderStatus.PENDING_REPLACE, **changes)

    # -- queries

    def open_orders(self) -> list[BrokerOrder]:
        orders = (self._parse_order(o) for o in self._orders("orders"))
        return [o for o in orders if o.status in parse.WORKING_STATUSES]

    def positions(self) -> list[BrokerPosition]:
        data = self._read(f"{self._accounts}/positions")
        result = []
        for item in self._listed(data, "Positions"):
            try:
                position = parse.parse_position(item)
            except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
                raise UnexpectedResponse(f"malformed position ({type(exc).__name__}: {exc})", broker=BROKER,
                                         excerpt=excerpt(item)) from exc
            if position.quantity != 0:
                result.append(position)
        return result

    def account_equity(self) -> Decimal:
        data = self._read(f"{self._accounts}/balances")
        try:
            return parse.parse_equity(data, self._account_id)
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise UnexpectedResponse(f"malformed balances ({type(exc).__name__}: {exc})", broker=BROKER,
                                     excerpt=excerpt(data)) from exc

    def fills_since(self, cursor: str | None) -> tuple[list[BrokerFill], str | None]:
        """Fills derived from the orders' executed quantities (``parse.fills_from_orders``).

        Every poll reads today's and open orders; historical orders are read too when the day has
        changed since the cursor was written (or on the first poll), or when an order the cursor
        saw open is no longer among today's — so one poll is usually one request."""
        state = parse.FillCursor.decode(cursor)
        today = self._today()
        current = self._orders("orders")
        present = {parse.order_id_of(o) for o in current}
        answers = [current]
        if state.day != today or not state.open_orders() <= present:
            since = state.history_since(today, FIRST_FILLS_LOOKBACK_DAYS, MAX_HISTORY_DAYS)
            answers.append(self._orders("historicalorders", since=since.isoformat()))
        try:
            fills, following = parse.fills_from_orders(parse.merge_orders(*answers), state, today=today,
                                                       now_ns=self._clock_ns(), client_id_of=self._client_id_of)
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise UnexpectedResponse(f"malformed order in the fills poll ({type(exc).__name__}: {exc})",
                                     broker=BROKER) from exc
        encoded = following.encode()
        return fills, (cursor if encoded == cursor else encoded)

    def order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        confirm = parse.order_confirm_id(client_order_id)
        with self._lock:
            known_ids = {oid for oid, cid in self._client_ids.items() if cid == client_order_id and oid != confirm}
        searched: list[Mapping[str, Any]] = []
        for which, params in (("orders", {}), ("historicalorders", {"since": self._since(LOOKUP_LOOKBACK_DAYS)})):
            orders = self._orders(which, **params)
            searched.extend(orders)
            for order in orders:
                if parse.confirm_id_of(order) == confirm or parse.order_id_of(order) in known_ids:
                    found = self._parse_order(order, client_order_id)
                    self._learn(client_order_id, found.broker_order_id)
                    return found
        if not parse.lookup_is_conclusive(searched):
            raise UnexpectedResponse(f"cannot tell whether {client_order_id!r} exists: the venue's order answers "
                                     "carry no OrderConfirmID", broker=BROKER)
        return None


def _quiet(response: httpx.Response) -> Any:
    try:
        return loads(response)
    except UnexpectedResponse:
        return None


def bracket_legs(entry: OrderRequest, take_profit: Decimal | None,
                 stop_loss: Decimal | None) -> tuple[OrderRequest | None, OrderRequest | None]:
    """The exit orders of an entry's bracket: opposite side, same symbol and quantity, GTC; a
    take-profit LIMIT at ``take_profit`` (client id + ``TAKE_PROFIT_SUFFIX``) and a stop-loss STOP at
    ``stop_loss`` (+ ``STOP_LOSS_SUFFIX``) — the same ids Tradovate's legs get, so an engine finds a
    leg by the same id on either venue (they travel hashed here: see ``parse.order_confirm_id``)."""
    exit_side = entry.side.opposite
    take = None if take_profit is None else OrderRequest(
        entry.client_order_id + TAKE_PROFIT_SUFFIX, entry.symbol, exit_side, OrderType.LIMIT, entry.quantity,
        limit_price=take_profit, time_in_force=TimeInForce.GTC)
    stop = None if stop_loss is None else OrderRequest(
        entry.client_order_id + STOP_LOSS_SUFFIX, entry.symbol, exit_side, OrderType.STOP, entry.quantity,
        stop_price=stop_loss, time_in_force=TimeInForce.GTC)
    return take, stop


def submit_exit_bracket(facade: BrokerFacade, take_profit: OrderRequest,
                        stop_loss: OrderRequest) -> tuple[BrokerOrder, BrokerOrder]:
    """TradeStation's exit bracket through a facade from ``build``: a ``BRK`` order group around a
    position already held (when one leg fills the venue cancels the other), in canonical symbols
    like every facade call. ``NotSupported`` when the facade cannot place TradeStation brackets
    (data-only, capability off, or another broker's facade)."""
    execution = facade._require_execution("submit_exit_bracket")
    if not facade.capabilities.brackets or not isinstance(execution, TradeStationExecution):
        raise NotSupported(facade.name, "exit brackets", "place the protective orders separately")
    sent = [dataclasses.replace(req, symbol=facade.to_broker_symbol(req.symbol)) for req in (take_profit, stop_loss)]
    first, second = execution.submit_exit_bracket(*sent)
    return _canonical(facade, first), _canonical(facade, second)


def _canonical(facade: BrokerFacade, order: BrokerOrder) -> BrokerOrder:
    """A symbol in the venue's answer we cannot map is a bad answer, not a caller error."""
    try:
        symbol = facade.to_canonical(order.symbol)
    except UnknownSymbol as exc:
        raise UnexpectedResponse(f"broker answered with an unknown symbol ({exc})", broker=facade.name) from exc
    return dataclasses.replace(order, symbol=symbol)


# ---------------------------------------------------------------- wiring


def _base_url(config: Mapping[str, Any]) -> str:
    base_url = config.get("base_url")
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ValueError("tradestation config needs 'base_url', e.g. https://sim-api.tradestation.com")
    return base_url.rstrip("/")


def _account(config: Mapping[str, Any]) -> str:
    account = config.get("account")
    if not isinstance(account, str) or not account:
        raise ValueError("tradestation config needs 'account' (the engine's account name; the secrets key)")
    return account


def authenticator(config: Mapping[str, Any], *, transport: httpx.BaseTransport | None = None) -> TradeStationAuthenticator:
    """The account's OAuth2 refresh authenticator (credentials from ``brokers.secrets``)."""
    secrets = load_secrets(_account(config), config, CREDENTIALS)
    return TradeStationAuthenticator(secrets, token_url=token_url_of(config),
                                     timeout_s=float(config.get("timeout_s", DEFAULT_TIMEOUT_S)), transport=transport)


def build(config: Mapping[str, Any], *, transport: httpx.BaseTransport | None = None,
          tokens: TokenSource | None = None) -> BrokerFacade:
    """A facade for one TradeStation account (see the module docstring for ``config``)."""
    account = _account(config)
    base_url = _base_url(config)
    account_id = config.get("account_id")
    if account_id is not None and (not isinstance(account_id, str) or not account_id):
        raise ValueError("tradestation config: 'account_id' must be a non-empty string")
    timeout_s = float(config.get("timeout_s", DEFAULT_TIMEOUT_S))
    owned: Authenticator | None = None
    if tokens is None:
        owned = authenticator(config, transport=transport)
        tokens = LocalTokenSource(owned)
    client = make_client(base_url, timeout_s, transport)
    api = Api(client, tokens)

    def close() -> None:
        client.close()
        if isinstance(owned, TradeStationAuthenticator):
            owned.close()

    return BrokerFacade(
        name=BROKER,
        account=account,
        registry=StaticRegistry(BROKER, CAPABILITIES if account_id else DATA_ONLY),
        symbols=symbol_adapter(BROKER),
        execution=TradeStationExecution(api, account_id) if account_id else None,
        market_data=TradeStationMarketData(api, timeout_s),
        on_close=close,
    )
