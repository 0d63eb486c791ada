"""Order execution for one Tradovate account over REST.

Account: ``accountSpec`` (the account's name) and ``accountId`` (its numeric id) go with every
order; the id comes from the config or, when absent, from ``/account/list`` by name.

Client order ids: the engine's id travels as ``clOrdId``. Tradovate documents no lookup by
``clOrdId`` and no duplicate protection, so:

* ``order_by_client_id`` lists the orders (``/order/list``) and searches them for the ``clOrdId``
  (*unconfirmed*: that the real order entity carries ``clOrdId``; the simulator's dialect does).
  None only when the list was read and the id is not in it;
* the adapter never relies on the venue to refuse a repeated ``clOrdId``: a submit of an id this
  adapter has already sent (answered or not) asks the venue first and returns the order it has,
  sending only when the venue provably has none.

Orders are placed, modified and cancelled by ``orderId``; the venue answers a command with
``{orderId}`` / ``{commandId}`` or ``{failureReason, failureText}``. After a modify or cancel the
order is read back (``/order/item``) for its status; if that read fails the command's effect is
unknown to us → ``OutcomeUnknown`` (look it up).

Symbols arrive as contract ids on orders, positions and fills; names come from ``/contract/item``
(cached). Fills (``/fill/list``) carry ``orderId`` only: the account and client id come from the
order. The fills cursor is the highest fill id seen (*unconfirmed*: that Tradovate's entity ids grow
monotonically; they do in every public example).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from brokers.base import BrokerFill, BrokerOrder, BrokerPosition, OrderRequest
from brokers.errors import BrokerError, OrderNotFound, OutcomeUnknown, UnexpectedResponse
from brokers.tradovate.parse import (
    ACTIONS,
    BROKER,
    ORDER_TYPES,
    SHAPE_ERRORS,
    TIME_IN_FORCE,
    decimal,
    encode_json,
    integer,
    parse_fill,
    parse_order,
    parse_position,
    text,
)
from brokers.tradovate.rest import TradovateRest
from schema.enums import OrderStatus, OrderType, Side, TimeInForce

TAKE_PROFIT_SUFFIX = ":tp"
STOP_LOSS_SUFFIX = ":sl"
"""Client ids of a bracket's legs: the entry's id plus these (*unconfirmed*: whether Tradovate keeps
a ``clOrdId`` given on an OSO leg)."""


def _excerpt(data: Any) -> str:
    try:
        return encode_json(data)
    except (TypeError, ValueError):
        return repr(data)


def _shape(parser: Callable[..., Any], *args: Any, what: str) -> Any:
    try:
        return parser(*args)
    except SHAPE_ERRORS as exc:
        raise UnexpectedResponse(f"malformed {what} ({type(exc).__name__}: {exc})", broker=BROKER,
                                 excerpt=_excerpt(args[0])) from exc


def _entities(data: Any, what: str) -> list[Mapping[str, Any]]:
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise UnexpectedResponse(f"{what}: expected a list of entities", broker=BROKER, excerpt=_excerpt(data))
    return data


def _integral(value: Decimal) -> int | Decimal:
    """Quantities go out as JSON integers when whole (the venue refuses fractions itself)."""
    return int(value) if value == value.to_integral_value() else value


class ContractNames:
    """Contract id → name (``ESZ6``), asked once per id (``/contract/item``)."""

    def __init__(self, rest: TradovateRest) -> None:
        self._rest = rest
        self._names: dict[int, str] = {}
        self._lock = threading.Lock()

    def name(self, contract_id: Any) -> str:
        key = _shape(integer, contract_id, what="contractId")
        with self._lock:
            known = self._names.get(key)
        if known is not None:
            return known
        data = self._rest.get("/contract/item", {"id": str(key)})
        name = _shape(lambda d: text(d["name"]), data, what="contract")
        with self._lock:
            self._names[key] = name
        return name


class TradovateExecution:
    """``brokers.base.Execution`` (plus ``account_equity`` and ``submit_bracket``) for one account."""

    def __init__(self, rest: TradovateRest, account_spec: str, account_id: int | None,
                 contracts: ContractNames) -> None:
        self._rest = rest
        self._account_spec = account_spec
        self._account_id = account_id
        self._contracts = contracts
        self._lock = threading.Lock()
        self._order_ids: dict[str, int] = {}
        """Client id → orderId of every order this adapter placed and the venue answered."""
        self._in_doubt: set[str] = set()
        """Client ids sent without an answer (OutcomeUnknown): look up before any resend."""

    # -- account

    def account_id(self) -> int:
        with self._lock:
            if self._account_id is not None:
                return self._account_id
        accounts = _entities(self._rest.get("/account/list"), "/account/list")
        for account in accounts:
            if account.get("name") == self._account_spec:
                found = _shape(integer, account.get("id"), what="account id")
                with self._lock:
                    self._account_id = found
                return found
        raise UnexpectedResponse(f"account {self._account_spec!r} is not among this user's accounts", broker=BROKER)

    # -- commands

    def submit_order(self, req: OrderRequest) -> BrokerOrder:
        existing = self._already_sent(req.client_order_id)
        if existing is not None:
            return existing
        return self._place("/order/placeorder", self._order_body(req), req)

    def submit_bracket(self, entry: OrderRequest, take_profit: Decimal | None,
                       stop_loss: Decimal | None) -> BrokerOrder:
        """An entry with a take-profit limit and/or a stop-loss stop on the opposite side, placed as
        one OSO (``/order/placeOSO``): the legs work once the entry fills, and with both given the
        venue cancels one when the other fills. Returns the entry order."""
        if take_profit is None and stop_loss is None:
            return self.submit_order(entry)
        existing = self._already_sent(entry.client_order_id)
        if existing is not None:
            return existing
        body = self._order_body(entry)
        exit_action = ACTIONS[entry.side.opposite]
        legs = []
        if take_profit is not None:
            legs.append({"action": exit_action, "clOrdId": entry.client_order_id + TAKE_PROFIT_SUFFIX,
                         "orderType": "Limit", "price": take_profit, "timeInForce": "GTC"})
        if stop_loss is not None:
            legs.append({"action": exit_action, "clOrdId": entry.client_order_id + STOP_LOSS_SUFFIX,
                         "orderType": "Stop", "stopPrice": stop_loss, "timeInForce": "GTC"})
        for number, leg in enumerate(legs, start=1):
            body[f"bracket{number}"] = leg
        return self._place("/order/placeOSO", body, entry)

    def cancel_order(self, client_order_id: str) -> BrokerOrder:
        order_id = self._order_id(client_order_id)
        answer = self._rest.command("/order/cancelorder", {"orderId": order_id, "isAutomated": True})
        self._command_id(answer, "/order/cancelorder")
        return self._read_back(order_id, "cancel")

    def modify_order(
        self,
        client_order_id: str,
        quantity: Decimal | None = None,
        limit_price: Decimal | None = None,
        stop_price: Decimal | None = None,
    ) -> BrokerOrder:
        """``/order/modifyorder`` restates the order: unchanged fields are taken from the venue's
        current version of it."""
        order_id = self._order_id(client_order_id)
        current = self._order_item(order_id)
        try:
            body: dict[str, Any] = {
                "orderId": order_id,
                "orderQty": _integral(quantity) if quantity is not None else current["orderQty"],
                "orderType": text(current["orderType"]),
                "timeInForce": current.get("timeInForce") or "Day",
                "isAutomated": True,
            }
        except SHAPE_ERRORS as exc:
            raise UnexpectedResponse(f"malformed order ({type(exc).__name__})", broker=BROKER,
                                     excerpt=_excerpt(current)) from exc
        price = limit_price if limit_price is not None else current.get("price")
        stop = stop_price if stop_price is not None else current.get("stopPrice")
        if price is not None:
            body["price"] = price
        if stop is not None:
            body["stopPrice"] = stop
        answer = self._rest.command("/order/modifyorder", body)
        self._command_id(answer, "/order/modifyorder")
        return self._read_back(order_id, "modify")

    # -- reads

    def open_orders(self) -> list[BrokerOrder]:
        orders = [self._parse_order(o) for o in self._account_orders()]
        return [o for o in orders if not o.status.is_terminal]

    def order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        for entity in self._account_orders():
            if entity.get("clOrdId") == client_order_id:
                order = self._parse_order(entity)
                with self._lock:
                    self._order_ids[client_order_id] = int(order.broker_order_id)
                    self._in_doubt.discard(client_order_id)
                return order
        return None

    def positions(self) -> list[BrokerPosition]:
        account_id = self.account_id()
        found = []
        for entity in _entities(self._rest.get("/position/list"), "/position/list"):
            if entity.get("accountId") != account_id:
                continue
            position = _shape(parse_position, entity, self._contracts.name(entity.get("contractId")), what="position")
            if position.quantity != 0:
                found.append(position)
        return found

    def fills_since(self, cursor: str | None) -> tuple[list[BrokerFill], str | None]:
        """Fills with an id above the cursor (the highest fill id seen), oldest first. Fills are
        listed BEFORE orders, so every fill's order is in the order list read after it."""
        if cursor is None:
            after = 0
        elif cursor.isdigit():
            after = int(cursor)
        else:
            raise ValueError(f"not a tradovate fills cursor: {cursor[:20]!r}")
        fills = _entities(self._rest.get("/fill/list"), "/fill/list")
        fresh: dict[int, Mapping[str, Any]] = {}
        for entity in fills:
            fill_id = _shape(integer, entity.get("id"), what="fill id")
            if fill_id > after:
                fresh.setdefault(fill_id, entity)  # a repeated fill is one fill
        if not fresh:
            return [], cursor
        account_id = self.account_id()
        orders = {o.get("id"): o for o in _entities(self._rest.get("/order/list"), "/order/list")}
        result = []
        for fill_id in sorted(fresh):
            entity = fresh[fill_id]
            order = orders.get(entity.get("orderId"))
            if order is None:  # not in the list (archived?): ask for it by id
                order = self._order_item(_shape(integer, entity.get("orderId"), what="fill orderId"))
            if order.get("accountId") != account_id:
                continue  # another account of the same user
            symbol = self._contracts.name(entity.get("contractId", order.get("contractId")))
            client_id = order.get("clOrdId") if isinstance(order.get("clOrdId"), str) else ""
            result.append(_shape(parse_fill, entity, symbol, client_id, what="fill"))
        return result, str(max(fresh))

    def account_equity(self) -> Decimal:
        """``totalCashValue`` of the cash-balance snapshot (*unconfirmed*: whether it includes open
        P&L; ``netLiq`` would, where the venue sends it)."""
        data = self._rest.post_read("/cashBalance/getcashbalancesnapshot", {"accountId": self.account_id()})
        return _shape(lambda d: decimal(d["netLiq"] if "netLiq" in d else d["totalCashValue"]), data,
                      what="cash balance snapshot")

    # -- internals

    def _order_body(self, req: OrderRequest) -> dict[str, Any]:
        try:
            body: dict[str, Any] = {
                "accountSpec": self._account_spec,
                "accountId": self.account_id(),
                "clOrdId": req.client_order_id,
                "action": ACTIONS[Side(req.side)],
                "symbol": req.symbol,
                "orderQty": _integral(req.quantity),
                "orderType": ORDER_TYPES[OrderType(req.order_type)],
                "timeInForce": TIME_IN_FORCE[TimeInForce(req.time_in_force)],
                "isAutomated": True,
            }
        except (KeyError, ValueError) as exc:
            raise ValueError(f"cannot express {req.client_order_id!r} for tradovate: {exc}") from None
        if req.limit_price is not None:
            body["price"] = req.limit_price
        if req.stop_price is not None:
            body["stopPrice"] = req.stop_price
        return body

    def _already_sent(self, client_order_id: str) -> BrokerOrder | None:
        """The venue's order for an id this adapter sent before, or None if it is safe to send."""
        with self._lock:
            sent = client_order_id in self._order_ids or client_order_id in self._in_doubt
            answered = client_order_id in self._order_ids
        if not sent:
            return None
        found = self.order_by_client_id(client_order_id)
        if found is None and answered:
            raise UnexpectedResponse(f"{client_order_id!r} was accepted earlier but the venue no longer lists it; "
                                     f"not resent", broker=BROKER)
        return found

    def _place(self, path: str, body: Mapping[str, Any], req: OrderRequest) -> BrokerOrder:
        try:
            answer = self._rest.command(path, body)
        except OutcomeUnknown:
            with self._lock:
                self._in_doubt.add(req.client_order_id)
            raise
        order_id = answer.get("orderId") if isinstance(answer, dict) else None
        if isinstance(order_id, bool) or not isinstance(order_id, int):
            with self._lock:
                self._in_doubt.add(req.client_order_id)
            raise OutcomeUnknown(f"{path}: answer without an orderId ({_excerpt(answer)[:80]}); look the order up",
                                 broker=BROKER)
        with self._lock:
            self._order_ids[req.client_order_id] = order_id
            self._in_doubt.discard(req.client_order_id)
        return BrokerOrder(
            broker_order_id=str(order_id), client_order_id=req.client_order_id, symbol=req.symbol, side=req.side,
            order_type=req.order_type, quantity=req.quantity, filled_quantity=Decimal(0), average_price=None,
            status=OrderStatus.ACCEPTED, limit_price=req.limit_price, stop_price=req.stop_price,
        )

    @staticmethod
    def _command_id(answer: Any, path: str) -> None:
        command_id = answer.get("commandId") if isinstance(answer, dict) else None
        if isinstance(command_id, bool) or not isinstance(command_id, int):
            raise OutcomeUnknown(f"{path}: answer without a commandId; look the order up", broker=BROKER)

    def _order_id(self, client_order_id: str) -> int:
        with self._lock:
            known = self._order_ids.get(client_order_id)
        if known is not None:
            return known
        found = self.order_by_client_id(client_order_id)
        if found is None:
            raise OrderNotFound(client_order_id, broker=BROKER)
        return int(found.broker_order_id)

    def _order_item(self, order_id: int) -> Mapping[str, Any]:
        data = self._rest.get("/order/item", {"id": str(order_id)})
        if not isinstance(data, dict):
            raise UnexpectedResponse("/order/item: expected an order", broker=BROKER, excerpt=_excerpt(data))
        return data

    def _read_back(self, order_id: int, what: str) -> BrokerOrder:
        try:
            return self._parse_order(self._order_item(order_id))
        except BrokerError as exc:
            raise OutcomeUnknown(f"{what} of order {order_id} accepted but its state could not be read back "
                                 f"({type(exc).__name__}); look it up", broker=BROKER) from exc

    def _account_orders(self) -> list[Mapping[str, Any]]:
        account_id = self.account_id()
        return [o for o in _entities(self._rest.get("/order/list"), "/order/list") if o.get("accountId") == account_id]

    def _parse_order(self, entity: Mapping[str, Any]) -> BrokerOrder:
        symbol = self._contracts.name(entity.get("contractId"))
        return _shape(parse_order, entity, symbol, what="order")
