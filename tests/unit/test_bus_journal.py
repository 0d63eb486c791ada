"""The journal: round trip, rotation, torn-tail recovery, filters."""
from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from bus.codec import encode
from bus.envelope import Envelope, new_id
from bus.journal import RECORD_HEADER, JournalReader, JournalWriter, segment_paths
from schema import messages as m
from schema.messages import SCHEMA_VERSION


def envelope_bytes(i: int, topic: str = "heartbeat.p") -> bytes:
    body = m.Heartbeat(process="p", pid=i, state="ok")
    return encode(Envelope(SCHEMA_VERSION, body.TYPE, topic, "p", "e", i, new_id(), None, None, None, i, i, body))


def write(directory: Path, n: int, *, start: int = 0, **kw: int) -> None:
    with JournalWriter(directory, **kw) as writer:
        for i in range(start, start + n):
            writer.append(1_000 + i, "pub", f"t.{i % 3}", envelope_bytes(i, f"t.{i % 3}"))


def test_round_trip_in_order(tmp_path: Path) -> None:
    data = [envelope_bytes(i) for i in range(5)]
    with JournalWriter(tmp_path) as writer:
        seqs = [writer.append(100 + i, kind, "heartbeat.p", d)
                for i, (kind, d) in enumerate(zip(["pub", "req", "rep", "pub", "pub"], data))]

    records = list(JournalReader(tmp_path))

    assert seqs == [1, 2, 3, 4, 5]
    assert [r.seq for r in records] == seqs
    assert [r.kind for r in records] == ["pub", "req", "rep", "pub", "pub"]
    assert [r.data for r in records] == data
    assert [r.recv_ns for r in records] == [100, 101, 102, 103, 104]
    assert records[2].envelope().body == m.Heartbeat(process="p", pid=2, state="ok")


def test_files_are_owner_only(tmp_path: Path) -> None:
    write(tmp_path / "j", 1)
    [(_, path)] = segment_paths(tmp_path / "j")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "j").stat().st_mode) == 0o700


def test_rotation_by_size_names_segments_by_first_seq(tmp_path: Path) -> None:
    record_size = RECORD_HEADER.size + 200  # about; exact size does not matter
    write(tmp_path, 30, segment_bytes=record_size * 4)

    segments = segment_paths(tmp_path)

    assert len(segments) > 3
    assert segments[0][0] == 1
    assert all(p.name == f"journal-{first:012d}.seg" for first, p in segments)
    assert all(p.stat().st_size <= record_size * 4 for _, p in segments)
    records = list(JournalReader(tmp_path))
    assert [r.seq for r in records] == list(range(1, 31))
    firsts = {r.seq for r in records} & {first for first, _ in segments}
    assert firsts == {first for first, _ in segments}  # each name is the seq of its first record


def test_reopen_appends_and_continues_numbering(tmp_path: Path) -> None:
    write(tmp_path, 3)
    write(tmp_path, 2, start=3)
    assert [r.seq for r in JournalReader(tmp_path)] == [1, 2, 3, 4, 5]
    assert [r.envelope().body.pid for r in JournalReader(tmp_path)] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("cut", "reason"),
    [
        (3, "torn record header"),  # died writing the header
        (RECORD_HEADER.size + 5, "torn record"),  # died writing the payload
    ],
)
def test_torn_tail_is_truncated_on_open_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                    cut: int, reason: str) -> None:
    # Given a journal whose last record was half written when the process died
    write(tmp_path, 4)
    [(_, path)] = segment_paths(tmp_path)
    good_size = path.stat().st_size
    with open(path, "ab") as f:
        full = RECORD_HEADER.pack(300, 0) + b"\x00" * 300
        f.write(full[:cut])

    # When a reader looks, it stops at the tail and says why
    reader = JournalReader(tmp_path)
    assert len(list(reader)) == 4
    assert [d.reason.split(" (")[0] for d in reader.damage] == [reason]
    assert reader.damage[0].offset == good_size

    # When the writer opens it, the tail is cut off (and logged) and appends continue cleanly
    with caplog.at_level(logging.WARNING):
        with JournalWriter(tmp_path) as writer:
            assert writer.next_seq == 5
            writer.append(9, "pub", "t.x", envelope_bytes(99))
    assert any(getattr(r, "action", "") == "journal_truncated" for r in caplog.records)
    reader = JournalReader(tmp_path)
    records = list(reader)
    assert reader.damage == []
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[-1].envelope().body.pid == 99


def test_checksum_mismatch_is_a_corrupt_tail(tmp_path: Path) -> None:
    write(tmp_path, 3)
    [(_, path)] = segment_paths(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # flip a bit in the last record's payload
    path.write_bytes(bytes(raw))

    reader = JournalReader(tmp_path)
    assert [r.seq for r in reader] == [1, 2]
    assert reader.damage[0].reason == "checksum mismatch"

    with JournalWriter(tmp_path) as writer:
        assert writer.next_seq == 3
    assert [r.seq for r in JournalReader(tmp_path)] == [1, 2]


def test_absurd_length_is_corrupt(tmp_path: Path) -> None:
    write(tmp_path, 1)
    [(_, path)] = segment_paths(tmp_path)
    with open(path, "ab") as f:
        f.write(RECORD_HEADER.pack(0xFFFFFFFF, 0))
    reader = JournalReader(tmp_path)
    assert len(list(reader)) == 1
    assert "over the limit" in reader.damage[0].reason


def test_filters_by_topic_prefix_kind_and_time(tmp_path: Path) -> None:
    with JournalWriter(tmp_path) as writer:
        writer.append(10, "pub", "order.s1", envelope_bytes(1))
        writer.append(20, "pub", "order.s10", envelope_bytes(2))
        writer.append(30, "req", "account.s1", envelope_bytes(3))
        writer.append(40, "pub", "order.s1", envelope_bytes(4))
    reader = JournalReader(tmp_path)

    assert [r.seq for r in reader.records(topic_prefix="order.s1")] == [1, 4]
    assert [r.seq for r in reader.records(since_ns=20)] == [2, 3, 4]
    assert [r.seq for r in reader.records(topic_prefix="order", since_ns=15)] == [2, 4]
    assert [r.seq for r in reader.records(kinds=("req",))] == [3]


def test_empty_or_missing_folder_reads_nothing(tmp_path: Path) -> None:
    assert list(JournalReader(tmp_path / "nope")) == []
