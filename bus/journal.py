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

Index: next to each segment a sidecar ``journal-<first_seq:012d>.idx`` holds one entry
``(seq, recv_ns, offset)`` for every ``INDEX_EVERY``-th record of the segment (always its first), so a
reader asked for ``from_seq`` or ``since_ns`` opens only the segments that can hold such records and
seeks to the nearest indexed record instead of scanning from the start. The writer appends entries as
it goes and rebuilds the last segment's index when it opens it; a reader that finds an index missing,
torn or not matching its segment rebuilds it (and saves it when it can). An index short of its
segment's tail is merely slower: the reader scans on from its last entry. Seeking on time assumes
``recv_ns`` does not go backwards, which holds for busd's single receive loop on a sane clock.

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
from collections.abc import Iterable, Iterator
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
_RECORD_HEADER_SIZE = RECORD_HEADER.size
_pack_record_header = RECORD_HEADER.pack
# A record holds one envelope plus a small frame; anything longer is a corrupt length field.
MAX_RECORD_BYTES = MAX_MESSAGE_BYTES + (64 << 10)
FIRST_SEQ = 1
DIR_MODE = 0o700
FILE_MODE = 0o600
SEGMENT_NAME = "journal-{:012d}.seg"
SEGMENT_RE = re.compile(r"^journal-(\d{12})\.seg$")
INDEX_EVERY = 64
INDEX_MAGIC = b"TBJIDX1\n"
INDEX_ENTRY = struct.Struct("<QQQ")  # seq, recv_ns, offset of the record in its segment

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


@dataclass(frozen=True, slots=True)
class IndexEntry:
    seq: int
    recv_ns: int
    offset: int


def index_path(segment: Path) -> Path:
    return segment.with_suffix(".idx")


def _scan(path: Path, start: int = 0) -> Iterator[tuple[int, _Payload] | JournalDamage]:
    """Yield (end offset, payload) for each good record from byte ``start`` (a record boundary); a
    ``JournalDamage`` last if the segment has a bad record (nothing after it is read)."""
    with open(path, "rb") as f:
        f.seek(start)
        offset = start
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


def _build_index(path: Path, first_seq: int) -> list[IndexEntry]:
    """Scan a segment and index every ``INDEX_EVERY``-th good record."""
    entries = []
    start = 0
    for n, item in enumerate(_scan(path)):
        if isinstance(item, JournalDamage):
            break
        end, payload = item
        if n % INDEX_EVERY == 0:
            entries.append(IndexEntry(first_seq + n, payload.recv_ns, start))
        start = end
    return entries


def _write_index(path: Path, entries: list[IndexEntry]) -> None:
    """Replace the index of segment ``path`` atomically."""
    target = index_path(path)
    tmp = target.with_suffix(".idx.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(INDEX_MAGIC)
        for e in entries:
            f.write(INDEX_ENTRY.pack(e.seq, e.recv_ns, e.offset))
    os.replace(tmp, target)


def _read_record_at(path: Path, offset: int) -> _Payload | None:
    for item in _scan(path, offset):
        return None if isinstance(item, JournalDamage) else item[1]
    return None


def _load_index(path: Path, first_seq: int) -> list[IndexEntry] | None:
    """The segment's index if it is present and consistent with the segment, else None."""
    try:
        raw = index_path(path).read_bytes()
        size = path.stat().st_size
    except OSError:
        return None
    body = raw[len(INDEX_MAGIC):]
    if not raw.startswith(INDEX_MAGIC) or len(body) % INDEX_ENTRY.size:
        return None
    entries = [IndexEntry(*t) for t in INDEX_ENTRY.iter_unpack(body)]
    if not entries:
        return entries if size == 0 else None
    if entries[0].seq != first_seq or entries[0].offset != 0:
        return None
    for a, b in zip(entries, entries[1:]):
        if b.seq - a.seq != INDEX_EVERY or b.offset <= a.offset or b.recv_ns < a.recv_ns:
            return None
    last = entries[-1]
    if last.offset >= size:
        return None
    record = _read_record_at(path, last.offset)
    if record is None or record.recv_ns != last.recv_ns:
        return None
    return entries


def segment_index(path: Path, first_seq: int, *, save: bool = True) -> tuple[list[IndexEntry], bool]:
    """The segment's index entries, and whether they had to be rebuilt by scanning (then saved
    next to the segment when ``save`` and the folder is writable)."""
    entries = _load_index(path, first_seq)
    if entries is not None:
        return entries, False
    entries = _build_index(path, first_seq)
    if save:
        try:
            _write_index(path, entries)
        except OSError as exc:
            log(logger, "journal_index_unsaved", logging.WARNING, segment=str(path), error=str(exc))
    log(logger, "journal_index_rebuilt", segment=str(path), entries=len(entries))
    return entries, True


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    path: Path
    first_seq: int
    last_seq: int | None  # None: empty segment
    first_ns: int | None
    last_ns: int | None
    records: int
    size: int
    damage: JournalDamage | None


def segment_info(first_seq: int, path: Path) -> SegmentInfo:
    """First/last record of a segment, reading only from its last index entry on."""
    entries, _ = segment_index(path, first_seq)
    size = path.stat().st_size
    if not entries:
        return SegmentInfo(path, first_seq, None, None, None, 0, size, None)
    seq, last_ns, damage = entries[-1].seq - 1, None, None
    for item in _scan(path, entries[-1].offset):
        if isinstance(item, JournalDamage):
            damage = item
            break
        seq += 1
        last_ns = item[1].recv_ns
    return SegmentInfo(path, first_seq, seq, entries[0].recv_ns, last_ns, seq - first_seq + 1, size, damage)


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
        self._index: BinaryIO | None = None
        segments = segment_paths(self.directory)
        if segments:
            first_seq, path = segments[-1]
            count, size = self._recover(path)
            self._next_seq = first_seq + count
            _write_index(path, _build_index(path, first_seq))
            self._open(path, size, first_seq)
        else:
            self._next_seq = FIRST_SEQ
            self._open(self.directory / SEGMENT_NAME.format(FIRST_SEQ), 0, FIRST_SEQ)

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def segment(self) -> Path:
        return self._path

    def append(self, recv_ns: int, kind: Kind, topic: str, data: bytes) -> int:
        """Write one record into the write buffer; returns its journal sequence number. The buffer
        goes to the OS every ``flush_every_n`` records, on ``flush`` and when it fills up."""
        return self.append_many(recv_ns, kind, ((topic, data),))

    def append_many(self, recv_ns: int, kind: Kind, messages: Iterable[tuple[str, bytes]]) -> int:
        """``append`` for several messages received together (one ``recv_ns``), in one write to
        the buffer: busd journals each run of publications it forwards this way. Returns the
        sequence number of the last record written (``next_seq - 1`` if there were none)."""
        assert self._file is not None and self._index is not None, "journal is closed"
        encode, crc32, header = _ENCODER.encode, zlib.crc32, _pack_record_header
        chunks: list[bytes] = []
        seq, size, first_seq = self._next_seq, self._size, self._first_seq
        written = 0
        for topic, data in messages:
            payload = encode((recv_ns, kind, topic, data))
            record = _RECORD_HEADER_SIZE + len(payload)
            if size + record > self.segment_bytes and size:
                self._file.write(b"".join(chunks))
                chunks.clear()
                self._advance(seq, size, written)
                written = 0
                self._rotate()
                seq, size, first_seq = self._next_seq, self._size, self._first_seq
            if (seq - first_seq) % INDEX_EVERY == 0:
                self._index.write(INDEX_ENTRY.pack(seq, recv_ns, size))
            chunks.append(header(len(payload), crc32(payload)))
            chunks.append(payload)
            seq += 1
            size += record
            written += 1
        self._file.write(b"".join(chunks))
        self._advance(seq, size, written)
        if self._unflushed >= self.flush_every_n:
            self.flush()
        return seq - 1

    def _advance(self, next_seq: int, size: int, records: int) -> None:
        self.bytes_written += size - self._size
        self.records_written += records
        self._unflushed += records
        self._next_seq, self._size = next_seq, size

    def flush(self) -> None:
        """Hand buffered records to the OS (they then survive a crash of this process)."""
        if self._file is not None and self._unflushed:
            self._file.flush()
            if self._index is not None:
                self._index.flush()  # after the records it points at
            self._unflushed = 0

    def sync(self) -> None:
        """Flush and fsync: survive a machine crash too."""
        if self._file is not None:
            self._file.flush()
            self._unflushed = 0
            os.fsync(self._file.fileno())
            if self._index is not None:
                self._index.flush()

    def close(self) -> None:
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None
        if self._index is not None:
            self._index.close()
            self._index = None

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

    def _open(self, path: Path, size: int, first_seq: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        self._file = os.fdopen(fd, "ab", buffering=WRITE_BUFFER_BYTES)
        if size == 0:
            _write_index(path, [])
        ifd = os.open(index_path(path), os.O_WRONLY | os.O_APPEND, FILE_MODE)
        self._index = os.fdopen(ifd, "ab")
        self._path = path
        self._size = size
        self._first_seq = first_seq

    def _rotate(self) -> None:
        self.close()
        self._open(self.directory / SEGMENT_NAME.format(self._next_seq), 0, self._next_seq)
        log(logger, "journal_rotated", segment=str(self._path), first_seq=self._next_seq)


class JournalReader:
    """Iterates records oldest first, optionally filtered; bad records end up in ``damage``."""

    def __init__(self, directory: Path | str, *, save_index: bool = True) -> None:
        self.directory = Path(directory)
        self.save_index = save_index
        self.damage: list[JournalDamage] = []
        # What the last ``records`` call read: (segment, byte offset it started at), for the curious
        # and for tests that check the seek.
        self.opened: list[tuple[Path, int]] = []

    def __iter__(self) -> Iterator[JournalRecord]:
        return self.records()

    def records(
        self,
        *,
        topic_prefix: str | None = None,
        since_ns: int | None = None,
        kinds: tuple[str, ...] | None = None,
        from_seq: int | None = None,
        until_ns: int | None = None,
        to_seq: int | None = None,
    ) -> Iterator[JournalRecord]:
        """Records with ``topic`` under ``topic_prefix`` (segment-aware, see ``topics.matches``),
        received at or after ``since_ns`` (and before ``until_ns``), numbered ``from_seq`` on (up to
        ``to_seq`` included), of the given kinds. Segments before the range are not opened; within the
        first one, reading starts at the nearest indexed record. A damaged segment is read up to its
        first bad record, which is reported, and reading goes on with the next segment."""
        self.damage = []
        self.opened = []
        segments = segment_paths(self.directory)
        indexes: dict[Path, list[IndexEntry]] = {}

        def index(first: int, path: Path) -> list[IndexEntry]:
            if path not in indexes:
                indexes[path] = segment_index(path, first, save=self.save_index)[0]
            return indexes[path]

        start_at = 0
        if from_seq is not None:
            while start_at + 1 < len(segments) and segments[start_at + 1][0] <= from_seq:
                start_at += 1
        if since_ns is not None:
            # skip a segment when the next one already starts before since_ns
            while start_at + 1 < len(segments):
                nxt = index(*segments[start_at + 1])
                if not nxt or nxt[0].recv_ns >= since_ns:
                    break
                start_at += 1
        for first_seq, path in segments[start_at:]:
            if to_seq is not None and first_seq > to_seq:
                return
            entries = index(first_seq, path) if (from_seq is not None or since_ns is not None) else []
            seq, offset = first_seq, 0
            for e in entries:
                if from_seq is not None and e.seq > from_seq:
                    break
                if since_ns is not None and e.recv_ns >= since_ns:
                    break
                seq, offset = e.seq, e.offset
            self.opened.append((path, offset))
            for item in _scan(path, offset):
                if isinstance(item, JournalDamage):
                    self.damage.append(item)
                    log(logger, "journal_damaged", logging.WARNING, segment=str(path),
                        offset=item.offset, reason=item.reason)
                    break
                _end, p = item
                seq_now = seq
                seq += 1
                if to_seq is not None and seq_now > to_seq:
                    return
                if until_ns is not None and p.recv_ns >= until_ns:
                    return
                if from_seq is not None and seq_now < from_seq:
                    continue
                if since_ns is not None and p.recv_ns < since_ns:
                    continue
                if topic_prefix is not None and not topics.matches(topic_prefix, p.topic):
                    continue
                if kinds is not None and p.kind not in kinds:
                    continue
                yield JournalRecord(seq_now, p.recv_ns, p.kind, p.topic, p.data)
