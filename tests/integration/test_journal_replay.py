"""``tradebus journal replay --publish``: what one busd recorded, published again onto another.

Two real busd processes, each in an installation folder of its own (a ``supervisord.conf`` marks
the root). The first records a few messages; the replay runs as the real CLI (a subprocess) and
publishes that journal onto the second, where a subscriber must see the same envelopes in the
recorded order, and the second busd journals the very same bytes.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.client import BusClient
from bus.envelope import Envelope
from bus.journal import JournalReader
from schema import messages as m
from test_busd import REPO, BusdProcess, bar, drain, unique

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPLAY_TIMEOUT_S = 30.0


@pytest.fixture
def make_root() -> Iterator:
    """Installation folders (short, under /tmp: ipc paths are length-limited), busds stopped after."""
    roots: list[Path] = []
    started: list[BusdProcess] = []

    def make() -> tuple[Path, BusdProcess]:
        root = Path(tempfile.mkdtemp(prefix="tb", dir="/tmp"))
        roots.append(root)
        (root / "supervisord.conf").write_text("")  # what marks a folder as an installation root
        (root / "state").mkdir(mode=0o700)
        busd = BusdProcess(root / "state", ())
        started.append(busd)
        return root, busd.start()

    try:
        yield make
    finally:
        for busd in started:
            busd.stop()
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


def test_replay_publish_delivers_the_recorded_bodies_in_order(make_root) -> None:
    # Given: a busd that recorded bars on two topics under one prefix, interleaved, and an alert elsewhere
    prefix = unique("md.R")
    topics = [f"{prefix}.bar.1m", f"{prefix}.bar.5m"]
    recorded_root, recording = make_root()
    with BusClient(recording.endpoints, "recorder") as bus:
        pub = bus.publisher()
        sub = bus.subscriber([prefix])
        sub.wait_connected(pub)
        sent: list[Envelope] = [pub.publish(topics[i % 2], bar(i)) for i in range(1, 7)]
        pub.publish(unique("alerts."), m.Alert(level="info", text="not under the prefix"))
        got = drain(sub)
    assert [e.message_id for e in got] == [e.message_id for e in sent]  # busd has seen them all
    assert recording.stop() == 0  # and has flushed its journal
    journal = recorded_root / "state" / "journal"
    recorded = [r for r in JournalReader(journal).records(topic_prefix=prefix)]
    assert [r.kind for r in recorded] == ["pub"] * len(sent)

    # And: a fresh busd in another installation, with a subscriber on the prefix
    replay_root, fresh = make_root()
    with BusClient(fresh.endpoints, "listener") as bus:
        sub = bus.subscriber([prefix])
        sub.wait_connected(bus.publisher())

        # When: the journal is replayed onto it with the real CLI
        proc = subprocess.run(
            [sys.executable, "-m", "services.cli", "journal", "replay", "--publish", "--journal-dir", str(journal),
             "--topic", prefix, "--root", str(replay_root)],
            cwd=REPO, capture_output=True, text=True, timeout=REPLAY_TIMEOUT_S,
            env={**os.environ, "TRADEBUS_ROOT": str(replay_root)})
        replayed = drain(sub, timeout_ms=1000)
        gaps, malformed = sub.gaps, sub.malformed

    # Then: the same envelopes, in the recorded order, with no gap and nothing malformed
    assert proc.returncode == 0, proc.stderr
    assert f"published {len(sent)} message(s)" in proc.stderr
    assert [e.body for e in replayed] == [e.body for e in sent]
    assert [(e.topic, e.message_id, e.source, e.seq) for e in replayed] == \
        [(e.topic, e.message_id, e.source, e.seq) for e in sent]
    assert gaps == 0 and malformed == 0
    # And: the fresh busd validated and journaled exactly the recorded bytes
    assert fresh.stop() == 0
    again = list(JournalReader(replay_root / "state" / "journal").records(topic_prefix=prefix))
    assert [r.data for r in again] == [r.data for r in recorded]
