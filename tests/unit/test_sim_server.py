"""The simulator's process shell without sockets: arguments, bar books, CSV-fed venues, JSON."""
from __future__ import annotations

import io
import json
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from brokers.base import Bar
from brokers.sim.server import (
    BadRequest,
    BarBook,
    JsonLog,
    SimApp,
    _dumps,
    _write_ready_file,
    parse_args,
    parse_order_request,
)
from schema.enums import OrderType, Side, TimeInForce

TODAY = date(2026, 11, 22)


def test_defaults_trade_todays_front_contracts(tmp_path: Path) -> None:
    config = parse_args(["--state-dir", str(tmp_path)], today=TODAY)
    assert config.symbols == ("ESZ6", "6EZ6")
    assert (config.port, config.interval, config.pace_s, config.seed, config.history, config.accounts) == (
        8765, "1m", 1.0, 7, 50, ("SIM1",))


def test_symbols_are_normalised_and_csv_symbols_added(tmp_path: Path) -> None:
    csv = tmp_path / "cl.csv"
    csv.write_text("Date,Open,High,Low,Close\n2025-01-02,70,71,69,70.5\n")
    config = parse_args(["--state-dir", str(tmp_path), "--symbols", "ESZ26, BTC-PERPETUAL",
                         "--csv", f"CLF7={csv}", "--accounts", "A,B"], today=TODAY)
    assert config.symbols == ("ESZ6", "BTC-PERPETUAL", "CLF7")
    assert config.csv == {"CLF7": csv} and config.accounts == ("A", "B")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--symbols", "ES"], "is a root"),
        (["--symbols", "XYZ"], "unknown symbol"),
        (["--pace", "0"], "--pace must be positive"),
        (["--interval", "1 minute"], "bad interval"),
        (["--csv", "ESZ6"], "SYMBOL=PATH"),
        (["--csv", "ESZ6=/no/such/file.csv"], "no such file"),
        (["--accounts", ","], "at least one account"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(["--state-dir", str(tmp_path), *args], today=TODAY)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_csv_feed_drives_the_venue_until_exhausted(tmp_path: Path) -> None:
    csv = tmp_path / "es.csv"
    csv.write_text("Date,Open,High,Low,Close,Volume\n" + "".join(
        f"2025-01-0{d},{100 + d},{101 + d},{99 + d},{100 + d},10\n" for d in range(1, 6)))
    out = io.StringIO()
    config = parse_args(["--state-dir", str(tmp_path), "--symbols", "ESH5", "--csv", f"ESH5={csv}",
                         "--interval", "1d", "--history", "3"], today=TODAY)
    app = SimApp(config, JsonLog(out), now_ns=0)
    for _ in range(7):
        app.produce_one_round()
    book = app.books["ESH5"]
    assert book.last_index == 4 and book.last is not None and book.last.open == Decimal(105)
    assert [json.loads(line)["action"] for line in out.getvalue().splitlines()] == ["feed_exhausted"]


def test_bar_book_replay_and_time_cursor() -> None:
    book = BarBook("ESZ6", keep=3)
    for i in range(5):
        book.append(Bar("ESZ6", "1m", i * 10, Decimal(1), Decimal(1), Decimal(1), Decimal(1), Decimal(0), i))
    assert [b.index for b in book.after_index(-1)] == [2, 3, 4]  # older bars were dropped
    assert [b.index for b in book.after_index(3)] == [4]
    assert [b.index for b in book.after_ts(25, limit=10)] == [3, 4]
    assert [b.index for b in book.after_ts(0, limit=1)] == [2]
    with pytest.raises(ValueError, match="does not follow"):
        book.append(Bar("ESZ6", "1m", 99, Decimal(1), Decimal(1), Decimal(1), Decimal(1), Decimal(0), 9))


def test_order_bodies_are_validated_field_by_field() -> None:
    body = {"account": "SIM1", "client_order_id": "c1", "symbol": "ESZ6", "side": "buy", "order_type": "limit",
            "quantity": "2", "limit_price": Decimal("5000.25")}
    account, request = parse_order_request(body)
    assert account == "SIM1" and request.side is Side.BUY and request.order_type is OrderType.LIMIT
    assert request.limit_price == Decimal("5000.25") and request.time_in_force is TimeInForce.DAY
    for field, value, message in [
        ("quantity", None, "missing field 'quantity'"),
        ("quantity", True, "'quantity' must be a decimal"),
        ("quantity", "NaN", "'quantity' must be finite"),
        ("quantity", "two", "'quantity' is not a decimal"),
        ("side", "long", "'side' must be one of buy, sell"),
        ("time_in_force", "forever", "'time_in_force' must be one of"),
        ("client_order_id", "x" * 65, "longer than 64"),
        ("account", 7, "'account' must be a non-empty string"),
    ]:
        with pytest.raises(BadRequest, match=message):
            parse_order_request(body | {field: value})


def test_json_decimals_are_plain_strings() -> None:
    assert json.loads(_dumps({"p": Decimal("1E+1"), "q": Decimal("0.00005")})) == {"p": "10", "q": "0.00005"}


def test_ready_file_is_written_atomically(tmp_path: Path) -> None:
    path = _write_ready_file(tmp_path / "state", {"url": "http://127.0.0.1:1", "pid": 1})
    assert json.loads(path.read_text()) == {"url": "http://127.0.0.1:1", "pid": 1}
    assert [p.name for p in path.parent.iterdir()] == ["venue-sim.json"]
