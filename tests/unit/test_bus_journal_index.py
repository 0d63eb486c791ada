"""The journal's per-segment index: readers seek instead of scanning, and rebuild a bad index."""
from __future__ import annotations

from pathlib import Path

from bus.journal import INDEX_EVERY, INDEX_MAGIC, JournalReader, JournalWriter, index_path, segment_paths

T0 = 1_000_000_000_000


def _fill(directory: Path, n: int = 1000, segment_bytes: int = 8192) -> list[tuple[int, int]]:
    with JournalWriter(directory, segment_bytes=segment_bytes) as w:
        return [(w.append(T0 + i * 10, "pub", f"md.T{i % 3}", b"x" * 40), T0 + i * 10) for i in range(n)]


def _all(directory: Path) -> list:
    return list(JournalReader(directory).records())


def test_from_seq_opens_only_the_segment_holding_it_and_starts_at_the_indexed_offset(tmp_path: Path) -> None:
    # Given a journal of several segments
    _fill(tmp_path)
    segments = segment_paths(tmp_path)
    assert len(segments) >= 4
    target_first, target_path = segments[2]
    wanted = target_first + INDEX_EVERY + 5
    # When reading from a sequence number inside the third segment
    reader = JournalReader(tmp_path)
    got = list(reader.records(from_seq=wanted))
    # Then only that segment and the later ones are opened, the first at an indexed offset past 0
    assert [p for p, _ in reader.opened] == [p for _, p in segments[2:]]
    assert reader.opened[0][1] > 0
    # And the records are exactly those of a full scan from that number
    assert got == [r for r in _all(tmp_path) if r.seq >= wanted]


def test_since_ns_seeks_to_the_right_segment_and_offset(tmp_path: Path) -> None:
    _fill(tmp_path)
    segments = segment_paths(tmp_path)
    since = T0 + 700 * 10 + 3
    reader = JournalReader(tmp_path)
    got = list(reader.records(since_ns=since))
    assert got == [r for r in _all(tmp_path) if r.recv_ns >= since]
    opened_first = reader.opened[0][0]
    assert opened_first != segments[0][1]
    # the opened segment holds the first wanted record
    first_seq = dict((p, s) for s, p in segments)[opened_first]
    assert first_seq <= got[0].seq
    assert reader.opened[0][1] > 0 or first_seq == got[0].seq


def test_a_missing_index_is_rebuilt_and_saved(tmp_path: Path) -> None:
    _fill(tmp_path)
    first, path = segment_paths(tmp_path)[1]
    expected = index_path(path).read_bytes()
    index_path(path).unlink()
    got = list(JournalReader(tmp_path).records(from_seq=first + 70))
    assert got == [r for r in _all(tmp_path) if r.seq >= first + 70]
    assert index_path(path).read_bytes() == expected


def test_a_corrupt_or_torn_index_is_rebuilt(tmp_path: Path) -> None:
    _fill(tmp_path)
    first, path = segment_paths(tmp_path)[1]
    expected = index_path(path).read_bytes()
    for bad in (b"garbage", INDEX_MAGIC + b"\x01\x02\x03", expected[:-8],
                expected[: len(INDEX_MAGIC) + 24] + b"\xff" * 24):  # wrong second entry
        index_path(path).write_bytes(bad)
        got = list(JournalReader(tmp_path).records(from_seq=first + 3))
        assert got == [r for r in _all(tmp_path) if r.seq >= first + 3]
        assert index_path(path).read_bytes() == expected


def test_a_stale_index_pointing_past_a_truncated_tail_is_rebuilt_by_the_writer(tmp_path: Path) -> None:
    # Given a single segment whose tail was torn after the index was written
    _fill(tmp_path, n=300, segment_bytes=1 << 20)
    (first, path), = segment_paths(tmp_path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2 + 3)
    # When the writer opens it again, then appends
    with JournalWriter(tmp_path) as w:
        n = w.next_seq
        w.append(T0 + 10**9, "pub", "md.late", b"y")
    # Then the index matches the segment and a seeking read finds the new record
    records = list(JournalReader(tmp_path).records(from_seq=n))
    assert [r.topic for r in records] == ["md.late"]
    assert list(JournalReader(tmp_path).records(since_ns=T0 + 10**9))[0].seq == n


def test_an_old_journal_without_indexes_still_reads(tmp_path: Path) -> None:
    _fill(tmp_path)
    for _, p in segment_paths(tmp_path):
        index_path(p).unlink()
    reader = JournalReader(tmp_path, save_index=False)
    assert len(list(reader.records(from_seq=500))) == 501
    assert not any(index_path(p).exists() for _, p in segment_paths(tmp_path))


def test_runs_appended_at_once_make_the_same_segments_and_indexes_as_one_by_one(tmp_path: Path) -> None:
    """busd journals each forwarded run with ``append_many``: runs that cross segment boundaries
    and index points must leave exactly the files that appending the records singly leaves."""
    messages = [(f"md.T{i % 3}", bytes([i % 251]) * (30 + i % 50)) for i in range(1000)]
    runs = [messages[i:i + 37] for i in range(0, len(messages), 37)]
    batched, single = tmp_path / "batched", tmp_path / "single"
    with JournalWriter(batched, segment_bytes=8192) as w:
        lasts = [w.append_many(T0 + n, "pub", run) for n, run in enumerate(runs)]
    with JournalWriter(single, segment_bytes=8192) as w:
        for n, run in enumerate(runs):
            for topic, data in run:
                w.append(T0 + n, "pub", topic, data)
    assert lasts == [sum(len(r) for r in runs[:n + 1]) for n in range(len(runs))]
    assert len(segment_paths(batched)) >= 4
    files = sorted(p.name for p in batched.iterdir())
    assert files == sorted(p.name for p in single.iterdir())
    assert all((batched / name).read_bytes() == (single / name).read_bytes() for name in files)
    assert [(r.seq, r.topic, r.data) for r in _all(batched)] == [
        (seq, topic, data) for seq, (topic, data) in enumerate(messages, start=1)]
