"""Portfolio heat enforced by a real account process (busd, venue-sim and the account started as in
``test_recovery``), measured against the simulator's equity (1 000 000 by default)."""
from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from decimal import Decimal

import pytest
from engine_tree import wait_until
from test_recovery import BIN, SESSION, Parts, parts, wait_status  # noqa: F401 - parts: a fixture

from bus import topics
from schema import messages as m
from schema.store import session_aggregate

pytestmark = pytest.mark.integration

# One ES contract without a stop costs 30 000 = 3 % of the venue's 1 000 000: 2 contracts warn
# (6 % ≥ 5 %), 4 block (12 % ≥ 10 %).
RISK_TOML = "\n[risk]\nwarn_pct = 0.05\nblock_pct = 0.10\n[risk.per_contract]\nES = 30000\n"


@pytest.fixture
def hot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Parts]:
    p = Parts(tmp_path_factory.mktemp("heat"))
    with (p.root / "tradebus.toml").open("a") as toml:
        toml.write(RISK_TOML)
    try:
        p.start_infrastructure()
        yield p
    except BaseException:
        for name in ("busd", "venue-sim", "account"):
            print(f"--- {name}\n" + "\n".join(p.log(name).splitlines()[-20:]))
        raise
    finally:
        p.close()


def heat(parts: Parts) -> str:
    return str(parts.store.get_session(SESSION).heat_state)


def position(parts: Parts) -> Decimal:
    return parts.store.get_position(SESSION, parts.session.contract).quantity


def filled(parts: Parts, signal_no: int, side: str, qty: str) -> None:
    reply = parts.submit(signal_no, side=side, qty=qty)
    assert isinstance(reply, m.OrderReply) and reply.order.status != "rejected", reply
    wait_status(parts, parts.cid(signal_no), "filled")


def test_a_blocked_session_refuses_risk_until_heat_falls_below_warn_but_always_reduces(hot: Parts) -> None:
    alerts = hot.bus.subscriber([topics.ALERT])
    alerts.wait_connected(hot.bus.publisher())
    hot.start_account()

    # Given a session holding 3 contracts: 9 % of equity at risk, warned
    filled(hot, 1, "buy", "3")
    assert heat(hot) == "warned"

    # When it asks for one more (12 % ≥ the 10 % block level)
    adding = hot.submit(2, side="buy", qty="1")
    # Then the order is refused before the broker sees it, naming the figure and the level
    assert isinstance(adding, m.OrderReply) and adding.order.status == "rejected"
    reason = adding.order.reason or ""
    assert "portfolio heat blocked" in reason and "heat 12.00%" in reason and "block level 10%" in reason, reason
    assert hot.submissions(hot.cid(2)) == 0
    assert heat(hot) == "blocked"

    # And a risk-reducing order still goes through; at 6 % the session stays blocked (hysteresis) ...
    filled(hot, 3, "sell", "1")
    assert position(hot) == Decimal(2) and heat(hot) == "blocked"
    # ... so adding back to 9 %, which a warned session could do, is still refused
    again = hot.submit(4, side="buy", qty="1")
    assert again.order.status == "rejected" and hot.submissions(hot.cid(4)) == 0

    # When the session cuts below the warn level (3 %) it is ok again and may add
    filled(hot, 5, "sell", "1")
    assert heat(hot) == "ok"
    filled(hot, 6, "buy", "1")
    assert heat(hot) == "warned" and position(hot) == Decimal(2)

    # Every rung change was recorded as a session event and published as an alert
    moves = [(e.data["from"], e.data["to"]) for e in hot.store.events(session_aggregate(SESSION)) if e.kind == "heat"]
    assert moves == [("ok", "warned"), ("warned", "blocked"), ("blocked", "ok"), ("ok", "warned")]
    seen: list[m.Alert] = []

    def four_alerts() -> bool:
        while (envelope := alerts.recv(timeout_ms=0)) is not None:
            if isinstance(envelope.body, m.Alert) and envelope.body.text.startswith("heat "):
                seen.append(envelope.body)
        return len(seen) >= 4

    wait_until(four_alerts, timeout=10, what="four heat alerts")
    assert [a.level for a in seen] == ["warning", "critical", "info", "warning"]
    assert all(a.session == SESSION for a in seen)

    # And `tradebus status` shows the rung
    status = subprocess.run([str(BIN / "tradebus"), "status", "--json"], env=hot.env, capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    [row] = [s for s in json.loads(status.stdout)["sessions"] if s["name"] == SESSION]
    assert row["heat"] == "warned"


def test_without_risk_settings_the_demo_sizes_stay_ok(parts: Parts) -> None:
    parts.start_account()
    filled(parts, 1, "buy", "2")
    assert heat(parts) == "ok"
    assert '"action":"heat_changed"' not in parts.log("account")
