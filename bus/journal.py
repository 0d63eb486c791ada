"""The journal: every message busd saw, in the order it saw them, for audit and replay.

Layout: a folder of append-only segment files ``journal-<first_seq:012d>.seg``, where
``first_seq`` is the journal sequence number of the segment's first record (records are numbered
from 1 across segments, so a file name says where it starts). Each record is::

    [u32 length][u32 crc32 of payload][payload]          (little-endian)
    payload = msgpack [recv_ns, kind, topic, envelope_bytes],  kind in pub | req | rep

Envelope bytes are stored exactly as received, so replay sees what subscribers saw.

A crash can leave the last record of the last segment half-written. The writer detects that on
open (short header, short payload, absurd length, bad checksum or bad payload) and truncates the
segment back to its last good record, logging what it dropped. Readers stop at the first bad
record of a segment and report it in ``damage``, because nothing after it can be trusted to be
framed correctly.

Durability: ``flush`` hands data to the OS (survives a process crash); ``sync`` also fsyncs
(survives a machine crash) and is left to the caller because it costs milliseconds.
Files are owner-only: ``auth.*`` messages may carry tokens.
"""
from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import msgspec

from bus import topics
from bus.codec import MAX_MESSAGE_BYTES, decode
from bus.envelope import Envelope
from bus.logs import log

SEGMENT_BYTES = 64 << 20
FLUSH_EVERY_N = 256
WRITE_BUFFER_BYTES = 1 << 20
RECORD_HEADER = struct.Struct("<II")
# A record holds one envelope plus a small frame; anything longer is a corrupt length field.
MAX_RECORD_BYTES = MAX_MESSAGE_BYTES + (64 << 10)
FIRST_SEQ = 1
DIR_MODE = 0o700
FILE_MODE = 0o600
SEGMENT_NAME = "journal-{:012d}.seg"
SEGMENT_RE = re.compile(r"^journal-(\d{12})\.seg$")

Kind = Literal["pub", "req", "rep"]
KINDS: tuple[str, ...] = ("pub", "req", "rep")

logger = logging.getLogger(__name__)


class _Payload(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    recv_ns: int
    kind: Kind
    topic: str
    data: bytes


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(_Payload)


@dataclass(frozen=True, slots=True)
class JournalRecord:
    seq: int
    recv_ns: int
    kind: str
    topic: str
    data: bytes  # the envelope exactly as received

    def envelope(self) -> Envelope:
        """Decode the stored envelope (raises ``MalformedMessage`` if the schema moved on)."""
        return decode(self.data)


@dataclass(frozen=True, slots=True)
class JournalDamage:
    segment: Path
    offset: int  # byte offset of the first bad record
    reason: str


def segment_paths(directory: Path) -> list[tuple[int, Path]]:
    """(first_seq, path) of every segment, in order."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = SEGMENT_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def _scan(path: Path) -> Iterator[tuple[int, _Payload] | JournalDamage]:
    """Yield (end offset, payload) for each good record; a ``JournalDamage`` last if the segment has a
    bad record (nothing after it is read)."""
    with open(path, "rb") as f:
        offset = 0
        while True:
            header = f.read(RECORD_HEADER.size)
            if not header:
                return
            if len(header) < RECORD_HEADER.size:
                yield JournalDamage(path, offset, f"torn record header ({len(header)} of "
                                                  f"{RECORD_HEADER.size} bytes)")
                return
            length, crc = RECORD_HEADER.unpack(header)
            if length > MAX_RECORD_BYTES:
                yield JournalDamage(path, offset, f"record length {length} over the limit {MAX_RECORD_BYTES}")
                return
            payload = f.read(length)
            if len(payload) < length:
                yield JournalDamage(path, offset, f"torn record ({len(payload)} of {length} payload bytes)")
                return
            if zlib.crc32(payload) != crc:
                yield JournalDamage(path, offset, "checksum mismatch")
                return
            try:
                record = _DECODER.decode(payload)
            except msgspec.DecodeError as exc:
                yield JournalDamage(path, offset, f"bad payload: {exc}")
                return
            offset += RECORD_HEADER.size + length
            yield offset, record


class JournalWriter:
    """Appends records to the newest segment, rotating by size. One writer per folder (busd)."""

    def __init__(
        self,
        directory: Path | str,
        *,
        segment_bytes: int = SEGMENT_BYTES,
        flush_every_n: int = FLUSH_EVERY_N,
    ) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.flush_every_n = max(1, flush_every_n)
        self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        self.records_written = 0
        self.bytes_written = 0
        self._unflushed = 0
        self._file: BinaryIO | None = None
        segments = segment_paths(self.directory)
        if segments:
            first_seq, path = segments[-1]
            count, size = self._recover(path)
            self._next_seq = first_seq + count
            self._open(path, size)
        else:
            self._next_seq = FIRST_SEQ
            self._open(self.directory / SEGMENT_NAME.format(FIRST_SEQ), 0)

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def segment(self) -> Path:
        return self._path

    def append(self, recv_ns: int, kind: Kind, topic: str, data: bytes) -> int:
        """Write one record; returns its journal sequence number."""
        payload = _ENCODER.encode((recv_ns, kind, topic, data))
        size = RECORD_HEADER.size + len(payload)
        if self._size and self._size + size > self.segment_bytes:
            self._rotate()
        assert self._file is not None, "journal is closed"
        self._file.write(RECORD_HEADER.pack(len(payload), zlib.crc32(payload)))
        self._file.write(payload)
        self._size += size
        self.bytes_written += size
        self.records_written += 1
        seq = self._next_seq
        self._next_seq += 1
        self._unflushed += 1
        if self._unflushed >= self.flush_every_n:
            self.flush()
        return seq

    def flush(self) -> None:
        """Hand buffered records to the OS (they then survive a crash of this process)."""
        if self._file is not None and self._unflushed:
            self._file.flush()
            self._unflushed = 0

    def sync(self) -> None:
        """Flush and fsync: survive a machine crash too."""
        if self._file is not None:
            self._file.flush()
            self._unflushed = 0
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _recover(self, path: Path) -> tuple[int, int]:
        """Count good records in the last segment and cut off a torn or corrupt tail."""
        count = 0
        good_end = 0
        for item in _scan(path):
            if isinstance(item, JournalDamage):
                total = path.stat().st_size
                os.truncate(path, good_end)
                log(logger, "journal_truncated", logging.WARNING, segment=str(path), offset=good_end,
                    dropped_bytes=total - good_end, reason=item.reason)
                break
            good_end, _record = item
            count += 1
        return count, good_end

    def _open(self, path: Path, size: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        self._file = os.fdopen(fd, "ab", buffering=WRITE_BUFFER_BYTES)
        self._path = path
        self._size = size

    def _rotate(self) -> None:
        self.close()
        self._open(self.directory / SEGMENT_NAME.format(self._next_seq), 0)
        log(logger, "journal_rotated", segment=str(self._path), first_seq=self._next_seq)


class JournalReader:
    """Iterates records oldest first, optionally filtered; bad records end up in ``damage``."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.damage: list[JournalDamage] = []

    def __iter__(self) -> Iterator[JournalRecord]:
        return self.records()

    def records(
        self,
        *,
        topic_prefix: str | None = None,
        since_ns: int | None = None,
        kinds: tuple[str, ...] | None = None,
    ) -> Iterator[JournalRecord]:
        """Records with ``topic`` under ``topic_prefix`` (segment-aware, see ``topics.matches``),
        received at or after ``since_ns``, of the given kinds. A damaged segment is read up to its
        first bad record, which is reported, and reading goes on with the next segment."""
        self.damage = []
        for first_seq, path in segment_paths(self.directory):
            seq = first_seq
            for item in _scan(path):
                if isinstance(item, JournalDamage):
                    self.damage.append(item)
                    log(logger, "journal_damaged", logging.WARNING, segment=str(path),
                        offset=item.offset, reason=item.reason)
                    break
                _end, p = item
                seq_now = seq
                seq += 1
                if since_ns is not None and p.recv_ns < since_ns:
                    continue
                if topic_prefix is not None and not topics.matches(topic_prefix, p.topic):
                    continue
                if kinds is not None and p.kind not in kinds:
                    continue
                yield JournalRecord(seq_now, p.recv_ns, p.kind, p.topic, p.data)
