"""The envelope every bus message travels in.

The header says who sent what, when, and in reply to what; the body is one of the frozen message
types in ``schema.messages``. The field order here *is* the wire order (``bus.codec`` encodes an
Envelope as a msgpack array), so append new fields only with a schema version bump.

``seq`` numbers the messages one source publishes on one topic, starting at 1, in a stream that
restarts with every ``epoch`` (a fresh random id per process start). A subscriber that sees a jump
knows it missed messages; one that sees a new epoch knows the source restarted. Request and reply
envelopes are not part of any stream and carry ``seq = 0``.

The field types carry the wire constraints (non-empty strings, ``seq >= 0``) that ``bus.codec``
enforces when it decodes; constructing an Envelope in Python does not check them. ``Envelope`` is
generic in its body only so that ``bus.codec`` can decode ``Envelope[BarClosed]`` (say) in one pass
straight into an ``Envelope``; ``Envelope[X]`` is not a type of its own at run time.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Annotated, Generic, TypeVar

import msgspec

from schema.messages import Message

ID_BYTES = 12  # 96 random bits: collisions are not a practical concern
ID_POOL = 256  # ids drawn from the OS per refill (one getrandom call instead of one per id)

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
Seq = Annotated[int, msgspec.Meta(ge=0)]
B = TypeVar("B", bound=Message)


class Envelope(msgspec.Struct, Generic[B], frozen=True, array_like=True, forbid_unknown_fields=True):
    version: int
    type: NonEmpty
    topic: NonEmpty
    source: NonEmpty
    epoch: NonEmpty
    seq: Seq
    message_id: NonEmpty
    correlation_id: str | None
    causation_id: str | None
    session: str | None
    event_ns: int
    send_ns: int
    body: B


class _IdPool(threading.local):
    def __init__(self) -> None:
        self.ids: list[str] = []


_pool = _IdPool()


def _forget_pool() -> None:
    """A forked child must not hand out the ids its parent still holds."""
    global _pool
    _pool = _IdPool()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def new_id() -> str:
    """A fresh random id (hex), for message ids and process epochs.

    96 bits from ``os.urandom`` as before, but read ``ID_POOL`` ids at a time (per thread; the pool
    is dropped in a forked child): on the publish path the ``getrandom`` call per message was the
    single largest cost of building an envelope."""
    ids = _pool.ids
    if not ids:
        raw = os.urandom(ID_BYTES * ID_POOL).hex()
        step = 2 * ID_BYTES
        ids.extend([raw[i:i + step] for i in range(0, len(raw), step)])
    return ids.pop()


def now_ns() -> int:
    """Wall-clock UTC time in integer nanoseconds, the only time unit on the bus."""
    return time.time_ns()
