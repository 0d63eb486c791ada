"""The codec: every message type round-trips exactly; every kind of bad input is named."""
from __future__ import annotations

from decimal import Decimal

import msgpack
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus import codec
from bus.codec import HEADER_FIELDS, MAX_MESSAGE_BYTES, decode, encode
from bus.envelope import Envelope, new_id, now_ns
from bus.errors import MalformedMessage
from schema import messages as m
from schema.messages import MESSAGE_TYPES, SCHEMA_VERSION

# Decimals that a float would mangle: exactness is the point.
D = Decimal


def _order(**over: object) -> m.OrderUpdated:
    fields = dict(session="s1", client_order_id="s1-7", broker_order_id=None, symbol="ESZ4",
                  side="buy", order_type="limit", quantity=D("3"), limit_price=D("4500.25"),
                  status="accepted", filled_quantity=D("0"), signal=7, version=2)
    fields.update(over)
    return m.OrderUpdated(**fields)  # type: ignore[arg-type]


def _bar(i: int = 1, **over: object) -> m.BarClosed:
    fields = dict(symbol="ESZ4", interval="1m", ts_ns=1_700_000_000_000_000_000 + i, open=D("0.1"),
                  high=D("12345678901234567890.123456789"), low=D("-0.000000001"), close=D("1E+3"),
                  volume=D("7"), index=i)
    fields.update(over)
    return m.BarClosed(**fields)  # type: ignore[arg-type]


SAMPLES: dict[str, m.Message] = {
    "md.bar": _bar(),
    "order.updated": _order(),
    "fill.recorded": m.FillRecorded(session="s1", broker_fill_id="f1", client_order_id="s1-7", symbol="ESZ4",
                                    side="sell", quantity=D("1.5"), price=D("0.30000000000000004"), ts_ns=5),
    "position.changed": m.PositionChanged(session="s1", symbol="BTC-PERP", quantity=D("-0.001"),
                                          average_price=D("65000.5"), reason="fill"),
    "session.state": m.SessionStateChanged(session="s1", state="trading", previous="reconciling", reason="ok"),
    "reconcile.report": m.ReconcileReport(session="s1", changes=["a", "b"], broker_position=D("2"),
                                          db_position=D("2.0"), ok=True),
    "strategy.processed": m.BarProcessed(session="s1", symbol="ESZ4", interval="1d", ts_ns=7, index=3, live=True,
                                         orders_sent=1),
    "heartbeat": m.Heartbeat(process="s1-account", pid=42, state="serving"),
    "alert": m.Alert(level="warning", text="héllo ✓", session=None),
    "order.submit": m.SubmitOrder(session="s1", signal=8, symbol="ESZ4", side="buy", order_type="stop_limit",
                                  quantity=D("1"), limit_price=D("4501.75"), stop_price=D("4501.5")),
    "order.cancel": m.CancelOrder(session="s1", client_order_id="s1-7"),
    "order.reply": m.OrderReply(order=_order(average_price=D("4500.125"))),
    "account.snapshot": m.AccountSnapshotRequest(session="s1"),
    "account.snapshot.reply": m.AccountSnapshot(session="s1", symbol="ESZ4", position=D("-2"),
                                                open_orders=[_order(), _order(client_order_id="s1-8")]),
    "md.bars": m.BarsRequest(symbol="ESZ4", interval="1m", after_ts_ns=0),
    "md.bars.reply": m.BarsReply(bars=[_bar(1), _bar(2)]),
    "md.switch": m.SwitchContract(session="es-sma", symbol="ESH7"),
    "md.switch.reply": m.ContractSwitched(symbol="ESH7", bars=20),
    "session.roll": m.RollRequest(session="es-sma", to_contract="ESH7"),
    "session.flatten": m.FlattenRequest(session="es-sma"),
    "operator.command": m.OperatorCommand(command="ack", session="es-sma", choice="resume_roll"),
    "operator.done": m.CommandDone(session="es-sma", state="starting", text="session es-sma acknowledged"),
    "auth.token": m.TokenIssued(account="TS-1", version=3, expires_ns=1_700_000_000_000_000_000,
                                ciphertext=b"gAAAA-opaque"),
    "auth.get": m.TokenRequest(account="TS-1"),
    "auth.rejected": m.TokenRejected(account="TS-1", version=3),
    "error": m.ErrorReply(code="no_worker", message="nobody home"),
}


def envelope_of(body: m.Message, **over: object) -> Envelope:
    fields = dict(version=SCHEMA_VERSION, type=body.TYPE, topic="t.x", source="tester", epoch=new_id(), seq=1,
                  message_id=new_id(), correlation_id=None, causation_id=None, session="s1",
                  event_ns=now_ns(), send_ns=now_ns(), body=body)
    fields.update(over)
    return Envelope(**fields)  # type: ignore[arg-type]


def wire(envelope: Envelope) -> list:
    """The envelope as a plain msgpack structure, for tampering."""
    return msgpack.unpackb(encode(envelope))


def test_samples_cover_every_message_type() -> None:
    assert set(SAMPLES) == set(MESSAGE_TYPES)


@pytest.mark.parametrize("type_name", sorted(MESSAGE_TYPES))
def test_every_message_type_round_trips_exactly(type_name: str) -> None:
    body = SAMPLES[type_name]
    original = envelope_of(body, correlation_id=new_id(), causation_id=new_id())

    decoded = decode(encode(original))

    assert decoded == original
    assert type(decoded.body) is MESSAGE_TYPES[type_name]


def test_decimals_are_strings_on_the_wire_and_exact_after() -> None:
    data = encode(envelope_of(_bar()))
    body = msgpack.unpackb(data)[-1]
    assert body["open"] == "0.1" and body["high"] == "12345678901234567890.123456789"
    assert decode(data).body.high == D("12345678901234567890.123456789")
    assert b"\xcb" not in data[len(data) - len(msgpack.packb(body)):]  # no float64 in the body


def test_wire_form_is_header_array_then_body_map() -> None:
    env = envelope_of(SAMPLES["heartbeat"])
    items = wire(env)
    assert len(items) == len(HEADER_FIELDS) == 13
    assert items[:12] == [getattr(env, f) for f in HEADER_FIELDS[:12]]
    assert items[12] == {"process": "s1-account", "pid": 42, "state": "serving"}


# ------------------------------------------------------------------------------------- malformed


def bad(data: bytes, **kw: object) -> MalformedMessage:
    with pytest.raises(MalformedMessage) as info:
        decode(data, **kw)  # type: ignore[arg-type]
    return info.value


def test_too_large() -> None:
    exc = bad(b"\x00" * (MAX_MESSAGE_BYTES + 1))
    assert "too large" in exc.reason and str(MAX_MESSAGE_BYTES) in exc.reason
    assert "too large" in bad(encode(envelope_of(SAMPLES["heartbeat"])), max_size=10).reason


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x9d\x01", b"\x9d\x01\xa5ab"])
def test_not_msgpack(data: bytes) -> None:
    assert bad(data).reason.startswith("not msgpack")


def test_trailing_bytes_are_not_msgpack() -> None:
    assert "not msgpack" in bad(encode(envelope_of(SAMPLES["heartbeat"])) + b"\x00").reason


def test_not_an_array() -> None:
    assert "bad envelope" in bad(msgpack.packb({"version": 1})).reason


def test_wrong_header_field_type_names_the_field_and_salvages_claims() -> None:
    env = envelope_of(SAMPLES["heartbeat"])
    items = wire(env)
    items[5] = "seven"  # seq
    exc = bad(msgpack.packb(items))
    assert "`seq`" in exc.reason and "Expected `int`, got `str`" in exc.reason
    assert (exc.source, exc.type, exc.message_id) == ("tester", "heartbeat", env.message_id)


def test_negative_seq_and_empty_source_are_refused() -> None:
    items = wire(envelope_of(SAMPLES["heartbeat"]))
    items[5] = -1
    assert "`seq`" in bad(msgpack.packb(items)).reason
    items = wire(envelope_of(SAMPLES["heartbeat"]))
    items[3] = ""
    assert "`source`" in bad(msgpack.packb(items)).reason


def test_wrong_number_of_header_fields() -> None:
    items = wire(envelope_of(SAMPLES["heartbeat"]))
    assert "length" in bad(msgpack.packb(items[:-1])).reason
    assert "length" in bad(msgpack.packb(items + [1])).reason


def test_unknown_message_type() -> None:
    items = wire(envelope_of(SAMPLES["heartbeat"]))
    items[1] = "order.teleport"
    exc = bad(msgpack.packb(items))
    assert exc.reason == "unknown message type 'order.teleport'"
    assert exc.message_id == items[6]


def test_unsupported_schema_version_even_if_the_header_changed_shape() -> None:
    items = wire(envelope_of(SAMPLES["heartbeat"]))
    items[0] = SCHEMA_VERSION + 1
    assert bad(msgpack.packb(items)).reason.startswith(f"unsupported schema version {SCHEMA_VERSION + 1}")
    items.insert(12, "a new header field")
    exc = bad(msgpack.packb(items))
    assert exc.reason.startswith("unsupported schema version") and exc.source == "tester"


def test_body_of_another_type_is_refused() -> None:
    items = wire(envelope_of(SAMPLES["heartbeat"]))
    items[12] = msgpack.unpackb(msgspec.msgpack.encode(SAMPLES["alert"]))  # an Alert body, claimed heartbeat
    exc = bad(msgpack.packb(items))
    assert exc.reason.startswith("bad body for type 'heartbeat'")


def test_bad_body_field_names_the_path() -> None:
    items = wire(envelope_of(SAMPLES["md.bars.reply"]))
    items[12]["bars"][1]["index"] = "two"
    assert "`body.bars[1].index`" in bad(msgpack.packb(items)).reason


def test_float_for_money_is_refused_on_decode() -> None:
    env = envelope_of(_bar())
    items = wire(env)
    items[12]["close"] = 4500.25
    exc = bad(msgpack.packb(items))
    assert "float at `body.close`" in exc.reason
    assert exc.correlation_id is None and exc.message_id == env.message_id


def test_float_for_money_is_refused_on_decode_when_nested() -> None:
    items = wire(envelope_of(SAMPLES["account.snapshot.reply"]))
    items[12]["open_orders"][1]["limit_price"] = 1.5
    assert "float at `body.open_orders[1].limit_price`" in bad(msgpack.packb(items)).reason


def test_float_marker_bytes_inside_ints_and_strings_are_not_floats() -> None:
    # 0xcb / 0xca bytes inside an int64 and a string must not trip the float check.
    body = _bar(ts_ns=0x7FCBCACBCACBCACB, symbol="x\xcb")
    assert decode(encode(envelope_of(body))).body == body


def test_float_marker_bytes_in_the_header_keep_the_fast_path_and_still_catch_a_body_float() -> None:
    # Nanosecond stamps hold 0xcb/0xca bytes in about one message in four: the fast path must look
    # at the body's bytes only, yet never let a float through because the header also had one.
    env = envelope_of(_bar())
    items = wire(env)
    items[10] = items[11] = 0x17CBCACBCACBCACB  # event_ns, send_ns
    clean = msgpack.packb(items)
    assert codec._fast(clean) is not None and decode(clean).body == env.body
    items[12]["ts_ns"] = 0x17CBCACBCACBCACB  # a marker byte in a body int: still no float
    assert codec._fast(msgpack.packb(items)) is not None
    items[12]["low"] = 4499.75
    assert codec._fast(msgpack.packb(items)) is None
    assert "float at `body.low`" in bad(msgpack.packb(items)).reason


def test_float_for_money_is_refused_on_encode() -> None:
    with pytest.raises(MalformedMessage, match=r"`body.open` is float"):
        encode(envelope_of(_bar(open=4500.25)))
    with pytest.raises(MalformedMessage, match=r"`body.order.limit_price` is float"):
        encode(envelope_of(m.OrderReply(order=_order(limit_price=1.1))))
    with pytest.raises(MalformedMessage, match=r"`body.bars\[1\].volume` is float"):
        encode(envelope_of(m.BarsReply(bars=[_bar(1), _bar(2, volume=1.0)])))


def test_body_type_must_match_envelope_type_on_encode() -> None:
    with pytest.raises(MalformedMessage, match="does not match envelope type 'alert'"):
        encode(envelope_of(SAMPLES["heartbeat"], type="alert"))


def test_oversized_message_is_refused_on_encode() -> None:
    with pytest.raises(MalformedMessage, match="too large"):
        encode(envelope_of(m.Alert(level="info", text="x" * MAX_MESSAGE_BYTES)))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_crash_decode(data: bytes) -> None:
    try:
        decode(data)
    except MalformedMessage as exc:
        assert exc.reason


VALID = encode(envelope_of(SAMPLES["order.reply"]))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, len(VALID)))
def test_corrupted_valid_messages_decode_or_are_refused(edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(VALID)
    for index, value in edits:
        data[index] = value
    try:
        envelope = decode(bytes(data[:cut]) if cut else bytes(data))
    except MalformedMessage as exc:
        assert exc.reason
    else:
        assert type(envelope.body).TYPE == envelope.type


def test_invalid_utf8_is_named() -> None:
    data = bytearray(encode(envelope_of(SAMPLES["heartbeat"], topic="abc")))
    data[data.index(b"abc")] = 0xFF
    assert "not valid UTF-8" in bad(bytes(data)).reason


@pytest.mark.parametrize("data", [b"\x91" * 100_000, b"\x9d" + b"\x91" * 100_000])
def test_deep_nesting_is_refused_not_a_crash(data: bytes) -> None:
    assert bad(data).reason.startswith("bad envelope: Expected")


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)
                    | st.binary(max_size=8),
                    lambda inner: st.lists(inner, max_size=14) | st.dictionaries(st.text(max_size=6), inner,
                                                                                  max_size=5),
                    max_leaves=40))
def test_random_msgpack_structures_never_crash_decode(value: object) -> None:
    try:
        decode(msgpack.packb(value))
    except MalformedMessage as exc:
        assert exc.reason
