"""Topic and service names, and the segment-aware matching the subscriber applies."""
from __future__ import annotations

import pytest

from bus import topics


def test_builders() -> None:
    assert topics.bar("ESZ4", "1m") == "md.ESZ4.bar.1m"
    assert topics.quote("BTC-PERP") == "md.BTC-PERP.quote"
    assert topics.order("s1") == "order.s1"
    assert topics.fill("s1") == "fill.s1"
    assert topics.position("s1") == "position.s1"
    assert topics.session("s1") == "session.s1"
    assert topics.reconcile("s1") == "reconcile.s1"
    assert topics.auth("acct-9") == "auth.acct-9"
    assert topics.heartbeat("s1-account") == "heartbeat.s1-account"
    assert topics.ALERT == "alert"
    assert topics.account_service("s1") == "account.s1"
    assert topics.marketdata_service("s1") == "marketdata.s1"


@pytest.mark.parametrize("bad", ["", "a.b", "a b", "tab\t"])
def test_segments_with_dots_spaces_or_nothing_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="topic segment"):
        topics.order(bad)
    with pytest.raises(ValueError):
        topics.bar("ES", bad)


@pytest.mark.parametrize(
    ("prefix", "topic", "expected"),
    [
        ("", "anything.at.all", True),
        ("order.s1", "order.s1", True),
        ("order.s1", "order.s1.extra", True),
        ("order.s1", "order.s10", False),  # a raw ZeroMQ prefix match, but another session
        ("md.ES", "md.ESZ4.bar.1m", False),
        ("md.ESZ4", "md.ESZ4.bar.1m", True),
        ("md.", "md.ESZ4.quote", True),
        ("order.s1.x", "order.s1", False),
    ],
)
def test_matches_at_segment_boundaries(prefix: str, topic: str, expected: bool) -> None:
    assert topics.matches(prefix, topic) is expected
