"""Replay's pure half: journal records → decoded envelopes, in recorded order.

Nothing here knows about strategies or services (``bus`` never imports ``services``); turning the
envelopes into strategy events is ``services.replay``'s job, publishing them again is the CLI's.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bus import topics
from bus.errors import MalformedMessage
from bus.envelope import Envelope
from bus.journal import JournalReader, JournalRecord


@dataclass(frozen=True, slots=True)
class Replayed:
    record: JournalRecord
    envelope: Envelope


def envelopes(
    records: Iterable[JournalRecord], *, skip_undecodable: bool = False
) -> Iterator[Replayed]:
    """Decode each record's envelope; an envelope the current schema cannot read raises
    ``MalformedMessage`` unless ``skip_undecodable``."""
    for record in records:
        try:
            envelope = record.envelope()
        except MalformedMessage:
            if skip_undecodable:
                continue
            raise
        yield Replayed(record, envelope)


def session_records(
    directory: Path | str,
    session: str,
    *,
    since_ns: int | None = None,
    from_seq: int | None = None,
    reader: JournalReader | None = None,
) -> Iterator[Replayed]:
    """What the strategy process of ``session`` could have seen, in journal order: every published
    bar (any symbol: the caller picks the session's contract), the session's order updates, and the
    replies its account and market-data services sent it."""
    reader = reader or JournalReader(directory)
    services = (topics.account_service(session), topics.marketdata_service(session))
    for item in envelopes(reader.records(since_ns=since_ns, from_seq=from_seq)):
        r = item.record
        if r.kind == "pub":
            if item.envelope.type == "md.bar" or r.topic == topics.order(session):
                yield item
        elif r.kind == "rep" and r.topic in services and item.envelope.session in (None, session):
            yield item
