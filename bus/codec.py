"""Envelope <-> bytes, validating everything on the way in.

Wire form (msgpack, never pickle): one array of the twelve header fields in ``Envelope`` order,
then the body as a map keyed by field name::

    [version, type, topic, source, epoch, seq, message_id, correlation_id, causation_id,
     session, event_ns, send_ns, {body fields}]

``decode`` first decodes the header with the body left raw, checks the schema version and the
message type, then decodes the body with that type's cached decoder. Anything wrong raises
``MalformedMessage`` whose reason names the problem (size, not msgpack, which field, which type).

Fast path (same checks, one pass): when the first bytes are a 13-element array, this schema version
and a short type string of a known type, the whole message is decoded in one go, straight into an
``Envelope``, with that type's wire decoder (``Envelope[Type]``: the header fields with the same
constraints as ``_Header``, the body typed). Only if that fails does the two-step decode above run,
to find and name the problem; so a message passes the fast path only if the two-step decode would
pass it too. ``check`` is the same for busd, which only needs to know that a message is valid and a
few header fields.

Money: msgspec writes ``Decimal`` as a string. It would also *accept* a float for a Decimal field
(and a careless ``Struct(...)`` call can hold one, since Structs do not type-check on init), so
both directions refuse floats explicitly: ``encode`` checks Decimal fields hold Decimal (or int),
``decode`` refuses any float inside the body of a type that declares no float field.

This module is the hot path of the whole engine; decoders and checkers are built once per type.
"""
from __future__ import annotations

import re
from operator import attrgetter
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec
from msgspec import inspect as mi

from bus.envelope import Envelope, NonEmpty, Seq
from bus.errors import MalformedMessage
from schema.messages import MESSAGE_TYPES, SCHEMA_VERSION, Message

MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB: far above any real message; stops memory abuse early

_NonEmpty = NonEmpty  # the same constraints as the Envelope's fields (the fast path decodes those)


class _Header(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """The envelope as it is on the wire, with the body not yet decoded."""

    version: int
    type: _NonEmpty
    topic: _NonEmpty
    source: _NonEmpty
    epoch: _NonEmpty
    seq: Seq
    message_id: _NonEmpty
    correlation_id: str | None
    causation_id: str | None
    session: str | None
    event_ns: int
    send_ns: int
    body: msgspec.Raw


HEADER_FIELDS: tuple[str, ...] = _Header.__struct_fields__
assert HEADER_FIELDS == Envelope.__struct_fields__, "wire header and Envelope must agree"
assert [f.type for f in msgspec.structs.fields(_Header)][:-1] == \
    [f.type for f in msgspec.structs.fields(Envelope)][:-1], "wire header and Envelope must agree on types"

_ENCODER = msgspec.msgpack.Encoder()
_HEADER_DECODER = msgspec.msgpack.Decoder(_Header)
_GENERIC_DECODER = msgspec.msgpack.Decoder()
_INDEX_PATH = re.compile(r"`\$\[(\d+)\]")

# A checker returns None when the value is fine (the hot path: no allocation), else
# (relative path, name of the offending value's type) for the error message.
Checker = Callable[[Any], "tuple[str, str] | None"]


class _BodyCodec:
    """Everything decode/encode need for one message type, built once."""

    __slots__ = ("cls", "decoder", "check_encode", "refuse_floats")

    def __init__(self, cls: type[Message]) -> None:
        info = mi.type_info(cls)
        self.cls = cls
        self.decoder = msgspec.msgpack.Decoder(cls)
        self.check_encode: Checker | None = _decimal_checker(info, {})
        # Only Decimal fields let a float through msgspec's typed decode; a float anywhere else is
        # already rejected. So the (rarely needed) float scan runs only for types with Decimals.
        self.refuse_floats = self.check_encode is not None and not _declares_float(info, set())


_BODIES: dict[str, _BodyCodec] = {}  # filled at the end of the module, once the checkers exist


def _body_codec(type_name: str) -> _BodyCodec | None:
    codec = _BODIES.get(type_name)
    if codec is None and type_name in MESSAGE_TYPES:  # a type registered after import
        codec = _BODIES[type_name] = _BodyCodec(MESSAGE_TYPES[type_name])
    return codec


# ------------------------------------------------------------------------------------ encode


def encode(envelope: Envelope) -> bytes:
    """Bytes for the wire. Refuses a body whose type is not the envelope's registered type, a
    float where money belongs, and a result larger than ``MAX_MESSAGE_BYTES``."""
    body = envelope.body
    codec = _body_codec(envelope.type)
    if codec is None or type(body) is not codec.cls:
        raise MalformedMessage(
            f"body type {type(body).__name__} ({getattr(body, 'TYPE', '?')!r}) does not match "
            f"envelope type {envelope.type!r}",
            source=envelope.source, type=envelope.type, message_id=envelope.message_id,
        )
    if codec.check_encode is not None and (bad := codec.check_encode(body)) is not None:
        raise MalformedMessage(
            f"`body{bad[0]}` is {bad[1]}, not Decimal: money and prices must be Decimal, never floats",
            source=envelope.source, type=envelope.type, message_id=envelope.message_id)
    data = _ENCODER.encode(envelope)
    if len(data) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"message too large: {len(data)} bytes (limit {MAX_MESSAGE_BYTES})",
                               source=envelope.source, type=envelope.type, message_id=envelope.message_id)
    return data


# ------------------------------------------------------------------------------------ decode

_ARRAY_13 = 0x9D  # msgpack fixarray of 13 elements: the twelve header fields and the body
_FIXSTR, _FIXSTR_MAX_LEN = 0xA0, 0x1F
# Type name (UTF-8) -> (decoder of the whole message, refuse_floats); see ``_wire_codec``.
_WIRE: dict[bytes, tuple[msgspec.msgpack.Decoder, bool]] = {}


def _wire_codec(type_name: bytes) -> tuple[msgspec.msgpack.Decoder, bool] | None:
    """The one-pass decoder for messages of ``type_name``: ``Envelope`` with the body typed (it
    decodes to a plain ``Envelope``; the header fields have the same constraints as ``_Header``)."""
    found = _WIRE.get(type_name)
    if found is not None:
        return found
    try:
        codec = _body_codec(type_name.decode())
    except UnicodeDecodeError:
        return None
    if codec is None:
        return None
    found = _WIRE[type_name] = (msgspec.msgpack.Decoder(Envelope[codec.cls]), codec.refuse_floats)
    return found


def _fast(data: bytes) -> Envelope | None:
    """The decoded Envelope of a valid message of a known type, or None: ask the slow path
    (which either accepts the message too, or names what is wrong with it)."""
    if len(data) < 4 or data[0] != _ARRAY_13 or data[1] != SCHEMA_VERSION:
        return None
    n = data[2] - _FIXSTR
    if not 0 <= n <= _FIXSTR_MAX_LEN:
        return None
    codec = _WIRE.get(data[3:3 + n]) or _wire_codec(data[3:3 + n])
    if codec is None:
        return None
    decoder, refuse_floats = codec
    try:
        wire = decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):  # ValidationError is a DecodeError
        return None
    if refuse_floats and (data.find(b"\xcb", 3 + n) >= 0 or data.find(b"\xca", 3 + n) >= 0):
        return wire if _no_float_in_body(data) else None  # None: decode names the float
    return wire


def _no_float_in_body(data: bytes) -> bool:
    """True if the body of ``data`` (a message the typed decoder accepted) holds no float. A float
    marker byte turns up anywhere in about one message in four (inside the header's nanosecond
    stamps, ids and sequence numbers), so look at the body's own bytes, then at its values."""
    raw = _HEADER_DECODER.decode(data).body  # cannot fail: the whole message just decoded
    start = len(data) - len(raw)  # the body is the last element: its bytes end the message
    if data.find(b"\xcb", start) < 0 and data.find(b"\xca", start) < 0:
        return True
    return _find_float(_GENERIC_DECODER.decode(raw), "body") is None  # the marker may be inside an int


def check(data: bytes, *, max_size: int = MAX_MESSAGE_BYTES) -> Any:
    """Fully validate one envelope: returns it (an ``Envelope``, or an object with the same header
    attributes: ``type``, ``topic``, ``message_id``, ``session``, ...), or raises
    ``MalformedMessage`` exactly as ``decode`` does."""
    if len(data) <= max_size:
        wire = _fast(data)
        if wire is not None:
            return wire
    return decode(data, max_size=max_size)



def _is_utf8_error(exc: msgspec.DecodeError) -> bool:
    return "UTF-8" in str(exc)


def decode(data: bytes, *, max_size: int = MAX_MESSAGE_BYTES) -> Envelope:
    """Decode and fully validate one envelope, or raise ``MalformedMessage`` saying why."""
    size = len(data)
    if size > max_size:
        raise MalformedMessage(f"message too large: {size} bytes (limit {max_size})")
    envelope = _fast(data)
    if envelope is not None:
        return envelope
    try:
        h = _HEADER_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise _bad_header(data, exc) from None
    except msgspec.DecodeError as exc:
        if _is_utf8_error(exc):  # msgspec >= 0.19 reports bad UTF-8 this way
            raise MalformedMessage("bad envelope: a string is not valid UTF-8", **_salvage(data)) from None
        raise MalformedMessage(f"not msgpack: {exc}") from None
    except UnicodeDecodeError as exc:
        raise MalformedMessage(f"bad envelope: a string is not valid UTF-8 ({exc.reason} at byte "
                               f"{exc.start} of that string)", **_salvage(data)) from None
    except RecursionError:
        raise MalformedMessage("not msgpack: nested too deeply") from None
    if h.version != SCHEMA_VERSION:
        raise _unsupported_version(h.version, _claims(h))
    codec = _body_codec(h.type)
    if codec is None:
        raise MalformedMessage(f"unknown message type {h.type!r}", **_claims(h))
    raw = h.body
    try:
        body = codec.decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise MalformedMessage(f"bad body for type {h.type!r}: {_body_path(str(exc))}",
                               **_claims(h)) from None
    except UnicodeDecodeError as exc:
        raise MalformedMessage(f"bad body for type {h.type!r}: a string is not valid UTF-8 "
                               f"({exc.reason})", **_claims(h)) from None
    except msgspec.DecodeError as exc:
        what = "a string is not valid UTF-8" if _is_utf8_error(exc) else f"not msgpack ({exc})"
        raise MalformedMessage(f"bad body for type {h.type!r}: {what}", **_claims(h)) from None
    except RecursionError:  # cannot happen after the header pass skipped the body; kept for safety
        raise MalformedMessage(f"bad body for type {h.type!r}: nested too deeply", **_claims(h)) from None
    if codec.refuse_floats:
        start = size - len(raw)  # the body is the last element, so its bytes end the message
        if data.find(b"\xcb", start) >= 0 or data.find(b"\xca", start) >= 0:
            # The marker byte may just be inside a string or an integer: look properly.
            where = _find_float(_GENERIC_DECODER.decode(raw), "body")  # typed decode passed: safe
            if where is not None:
                raise MalformedMessage(
                    f"float at `{where}` in body of type {h.type!r}: money and prices must be "
                    "Decimal strings, never floats", **_claims(h))
    return Envelope(h.version, h.type, h.topic, h.source, h.epoch, h.seq, h.message_id,
                    h.correlation_id, h.causation_id, h.session, h.event_ns, h.send_ns, body)


def _bad_header(data: bytes, exc: msgspec.ValidationError) -> MalformedMessage:
    """Name the bad header field, and salvage what we can for logs and error replies."""
    claimed = _salvage(data)
    version = claimed.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version != SCHEMA_VERSION:
        return _unsupported_version(version, claimed)
    claimed.pop("version", None)
    text = _INDEX_PATH.sub(lambda m: "`" + _field_name(int(m.group(1))), str(exc))
    return MalformedMessage(f"bad envelope: {text}", **claimed)


def _field_name(index: int) -> str:
    return HEADER_FIELDS[index] if index < len(HEADER_FIELDS) else f"$[{index}]"


def _salvage(data: bytes) -> dict[str, Any]:
    """Claimed header fields (source, type, ids) from a message whose header failed validation."""
    try:
        items = _GENERIC_DECODER.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return {}
    if not isinstance(items, list):
        return {}
    out: dict[str, Any] = {}
    for name, value in zip(HEADER_FIELDS, items):
        if name == "version" and isinstance(value, int):
            out[name] = value
        elif name in _CLAIMS and isinstance(value, str) and value:
            out[name] = value
    return out


_CLAIMS = ("source", "type", "message_id", "correlation_id")


def _claims(h: _Header) -> dict[str, Any]:
    return {"source": h.source, "type": h.type, "message_id": h.message_id,
            "correlation_id": h.correlation_id}


def _unsupported_version(version: int, claimed: dict[str, Any]) -> MalformedMessage:
    claimed = {k: v for k, v in claimed.items() if k in _CLAIMS}
    return MalformedMessage(
        f"unsupported schema version {version} (this process speaks {SCHEMA_VERSION})", **claimed)


def _body_path(text: str) -> str:
    return text.replace("`$", "`body")


def _find_float(value: Any, path: str) -> str | None:
    if isinstance(value, float):
        return path
    if isinstance(value, dict):
        for key, item in value.items():
            found = _find_float(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _find_float(item, f"{path}[{i}]")
            if found:
                return found
    return None


# ------------------------------------------------------------------------ per-type checkers

def _decimal_checker(t: mi.Type, memo: dict[type, Checker | None]) -> Checker | None:
    """A function that finds a non-Decimal held where the type says Decimal (at any depth),
    or None when the type holds no Decimal at all (nothing to check)."""
    if isinstance(t, mi.DecimalType):
        return _check_decimal
    if isinstance(t, mi.UnionType):
        members = [m for m in t.types if not isinstance(m, mi.NoneType)]
        inner = _decimal_checker(members[0], memo) if len(members) == 1 else None
        if inner is None:
            return None
        if inner is _check_decimal:
            return _check_optional
        return lambda value: None if value is None else inner(value)
    if isinstance(t, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)):
        item = _decimal_checker(t.item_type, memo)
        if item is None:
            return None

        def check_items(value: Any) -> tuple[str, str] | None:
            for i, element in enumerate(value):
                bad = item(element)
                if bad is not None:
                    return f"[{i}]{bad[0]}", bad[1]
            return None

        return check_items
    if isinstance(t, mi.DictType):
        val = _decimal_checker(t.value_type, memo)
        if val is None:
            return None

        def check_values(value: Any) -> tuple[str, str] | None:
            for key, element in value.items():
                bad = val(element)
                if bad is not None:
                    return f".{key}{bad[0]}", bad[1]
            return None

        return check_values
    if isinstance(t, mi.StructType):
        if t.cls in memo:  # recursive type: defer to the finished checker
            cls = t.cls
            return lambda value: (memo[cls] or _no_check)(value)
        memo[t.cls] = None
        fields = [(f.name, c) for f in t.fields if (c := _decimal_checker(f.type, memo)) is not None]
        if not fields:
            return None
        # Fast path: one C-level pass over the type()s of all plain Decimal fields. None passes
        # here on purpose: a missing required value is the receiver's validation error, not a float.
        leaves = tuple(name for name, c in fields if c is _check_decimal or c is _check_optional)
        nested = [(name, c) for name, c in fields if name not in leaves]
        get_leaves = attrgetter(*leaves) if len(leaves) > 1 else (
            (lambda v, _n=leaves[0]: (getattr(v, _n),)) if leaves else (lambda v: ()))

        def check_struct(value: Any) -> tuple[str, str] | None:
            if not _LEAF_OK.issuperset(map(type, get_leaves(value))):
                for name, check in fields:
                    if name in leaves and (bad := check(getattr(value, name))) is not None:
                        return f".{name}{bad[0]}", bad[1]
            for name, check in nested:
                bad = check(getattr(value, name))
                if bad is not None:
                    return f".{name}{bad[0]}", bad[1]
            return None

        memo[t.cls] = check_struct
        return check_struct
    return None


_LEAF_OK = frozenset({Decimal, int, type(None)})


def _check_decimal(value: Any) -> tuple[str, str] | None:
    if isinstance(value, Decimal):
        return None
    if isinstance(value, int) and not isinstance(value, bool):  # exact, so harmless
        return None
    return "", type(value).__name__


def _check_optional(value: Any) -> tuple[str, str] | None:
    return None if value is None else _check_decimal(value)


def _no_check(value: Any) -> tuple[str, str] | None:
    return None


def _declares_float(t: mi.Type, seen: set[type]) -> bool:
    if isinstance(t, mi.FloatType):
        return True
    if isinstance(t, mi.UnionType):
        return any(_declares_float(m, seen) for m in t.types)
    if isinstance(t, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)):
        return _declares_float(t.item_type, seen)
    if isinstance(t, mi.TupleType):
        return any(_declares_float(m, seen) for m in t.item_types)
    if isinstance(t, mi.DictType):
        return _declares_float(t.key_type, seen) or _declares_float(t.value_type, seen)
    if isinstance(t, mi.StructType):
        if t.cls in seen:
            return False
        seen.add(t.cls)
        return any(_declares_float(f.type, seen) for f in t.fields)
    return isinstance(t, mi.AnyType)


for _name, _cls in MESSAGE_TYPES.items():
    _BODIES[_name] = _BodyCodec(_cls)
    _wire_codec(_name.encode())
