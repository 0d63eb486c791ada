"""The envelope every bus message travels in.

The header says who sent what, when, and in reply to what; the body is one of the frozen message
types in ``schema.messages``. The field order here *is* the wire order (``bus.codec`` encodes an
Envelope as a msgpack array), so append new fields only with a schema version bump.

``seq`` numbers the messages one source publishes on one topic, starting at 1, in a stream that
restarts with every ``epoch`` (a fresh random id per process start). A subscriber that sees a jump
knows it missed messages; one that sees a new epoch knows the source restarted. Request and reply
envelopes are not part of any stream and carry ``seq = 0``.
"""
from __future__ import annotations

import os
import time

import msgspec

from schema.messages import Message

ID_BYTES = 12  # 96 random bits: collisions are not a practical concern


class Envelope(msgspec.Struct, frozen=True, array_like=True):
    version: int
    type: str
    topic: str
    source: str
    epoch: str
    seq: int
    message_id: str
    correlation_id: str | None
    causation_id: str | None
    session: str | None
    event_ns: int
    send_ns: int
    body: Message


def new_id() -> str:
    """A fresh random id (hex), for message ids and process epochs."""
    return os.urandom(ID_BYTES).hex()


def now_ns() -> int:
    """Wall-clock UTC time in integer nanoseconds, the only time unit on the bus."""
    return time.time_ns()
