"""The chaos checker on hand-made truths: a clean run passes, and each way of breaking an
invariant is reported by that invariant (and only that one), naming the ids involved."""
from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from services.chaos import (
    DbTruth,
    FillAtVenue,
    FillInDb,
    Invariant,
    OrderAtVenue,
    OrderInDb,
    PositionInDb,
    VenueTruth,
    check_invariants,
)

D = Decimal


def clean_venue() -> VenueTruth:
    """Two sessions on account SIM1: es-sma bought 1 ESZ6 (one fill), 6e-sma bought 2 and sold 2 6EZ6."""
    return VenueTruth(
        submissions={"es-1": 1, "6e-1": 1, "6e-2": 1},
        orders=[
            OrderAtVenue("es-1", "SIM1", "ESZ6", "filled", D(1)),
            OrderAtVenue("6e-1", "SIM1", "6EZ6", "filled", D(2)),
            OrderAtVenue("6e-2", "SIM1", "6EZ6", "filled", D(2)),
        ],
        fills=[
            FillAtVenue("F1", "es-1", "SIM1", "ESZ6", D(1)),
            FillAtVenue("F2", "6e-1", "SIM1", "6EZ6", D(2)),
            FillAtVenue("F3", "6e-2", "SIM1", "6EZ6", D(2)),
        ],
        positions={("SIM1", "ESZ6"): D(1)},  # 6EZ6 is flat: the venue leaves it out
    )


def clean_db() -> DbTruth:
    return DbTruth(
        orders=[
            OrderInDb("es-1", "es-sma", "filled", D(1), "O1"),
            OrderInDb("6e-1", "6e-sma", "filled", D(2), "O2"),
            OrderInDb("6e-2", "6e-sma", "filled", D(2), "O3"),
            # written ahead, then refused before it was ever sent: fine
            OrderInDb("6e-3", "6e-sma", "rejected", D(0), None),
        ],
        fills=[FillInDb("F1", "es-1", "es-sma"), FillInDb("F2", "6e-1", "6e-sma"), FillInDb("F3", "6e-2", "6e-sma")],
        positions=[PositionInDb("es-sma", "SIM1", "ESZ6", D(1)), PositionInDb("6e-sma", "SIM1", "6EZ6", D(0))],
        mismatches=[],
    )


def broken(invariants: list[Invariant]) -> dict[str, Invariant]:
    return {i.name: i for i in invariants if not i.ok}


def test_a_clean_run_keeps_every_invariant() -> None:
    invariants = check_invariants(clean_venue(), clean_db())
    assert len(invariants) == 10
    assert broken(invariants) == {}
    assert all(i.detail == "" for i in invariants)


def test_an_empty_run_keeps_every_invariant() -> None:
    assert broken(check_invariants(VenueTruth({}, [], [], {}), DbTruth([], [], [], []))) == {}


def test_a_client_order_id_sent_twice_is_reported() -> None:
    venue = dataclasses.replace(clean_venue(), submissions={"es-1": 1, "6e-1": 3, "6e-2": 2})
    found = broken(check_invariants(venue, clean_db()))
    assert list(found) == ["max submissions per client order id"]
    inv = found["max submissions per client order id"]
    assert inv.actual == 3 and inv.expected == "≤ 1"
    assert inv.detail == "2 6e-1×3, 6e-2×2"


def test_a_venue_order_missing_from_the_database_is_reported() -> None:
    db = clean_db()
    db = dataclasses.replace(db, orders=[o for o in db.orders if o.client_order_id != "6e-2"])
    found = broken(check_invariants(clean_venue(), db))
    assert "venue orders in the database" in found
    inv = found["venue orders in the database"]
    assert (inv.expected, inv.actual) == (3, 2)
    assert "6e-2" in inv.detail


@pytest.mark.parametrize("status", ["unknown", "pending_submit", "submitted", "filled", "cancelled"])
def test_a_database_order_never_at_the_venue_must_be_rejected(status: str) -> None:
    db = clean_db()
    db = dataclasses.replace(db, orders=[*db.orders, OrderInDb("es-9", "es-sma", status, D(0))])
    found = broken(check_invariants(clean_venue(), db))
    assert found["orders never at the venue and not rejected"].detail == f"1 es-9 ({status})"
    # an order still unresolved is also reported as open; a terminal one is not
    assert set(found) - {"orders never at the venue and not rejected"} == (
        set() if status in ("filled", "cancelled") else {"orders still open after settling"})


def test_a_venue_fill_not_booked_is_reported() -> None:
    db = clean_db()
    db = dataclasses.replace(db, fills=[f for f in db.fills if f.broker_fill_id != "F3"])
    found = broken(check_invariants(clean_venue(), db))
    inv = found["venue fills booked exactly once"]
    assert (inv.expected, inv.actual) == (3, 2)
    assert inv.detail == "1 not booked: F3"


def test_a_fill_booked_twice_is_reported() -> None:
    db = clean_db()
    db = dataclasses.replace(db, fills=[*db.fills, FillInDb("F2", "6e-1", "6e-sma")])
    found = broken(check_invariants(clean_venue(), db))
    assert list(found) == ["venue fills booked exactly once"]
    assert found["venue fills booked exactly once"].detail == "1 booked more than once: F2×2"


def test_a_database_fill_the_venue_never_made_is_reported() -> None:
    db = clean_db()
    db = dataclasses.replace(db, fills=[*db.fills, FillInDb("F99", None, "es-sma")])
    found = broken(check_invariants(clean_venue(), db))
    assert list(found) == ["database fills the venue never made"]
    assert found["database fills the venue never made"].detail == "1 F99 (es-sma)"


def test_a_position_that_differs_from_the_venue_is_reported() -> None:
    db = clean_db()
    db = dataclasses.replace(db, positions=[PositionInDb("es-sma", "SIM1", "ESZ6", D(2)),
                                            PositionInDb("6e-sma", "SIM1", "6EZ6", D(0))])
    found = broken(check_invariants(clean_venue(), db))
    assert list(found) == ["positions equal to the venue's (account, contract)"]
    inv = found["positions equal to the venue's (account, contract)"]
    assert (inv.expected, inv.actual) == (2, 1)
    assert inv.detail == "1 SIM1 ESZ6: database 2 (es-sma 2) venue 1"


def test_positions_are_summed_over_the_sessions_of_one_account_and_contract() -> None:
    # Given two sessions trading ESZ6 on SIM1, long 3 and short 2, and the venue long 1
    venue = dataclasses.replace(clean_venue(), positions={("SIM1", "ESZ6"): D(1)})
    db = dataclasses.replace(clean_db(), positions=[PositionInDb("es-sma", "SIM1", "ESZ6", D(3)),
                                                    PositionInDb("es-other", "SIM1", "ESZ6", D(-2))])
    assert broken(check_invariants(venue, db)) == {}
    # ... but the same rows on another account do not count towards SIM1
    db = dataclasses.replace(db, positions=[PositionInDb("es-sma", "SIM1", "ESZ6", D(3)),
                                            PositionInDb("es-other", "SIM2", "ESZ6", D(-2))])
    found = broken(check_invariants(venue, db))
    assert list(found) == ["positions equal to the venue's (account, contract)"]
    assert "SIM1 ESZ6: database 3" in found["positions equal to the venue's (account, contract)"].detail
    assert "SIM2 ESZ6: database -2 (es-other -2) venue 0" in found[
        "positions equal to the venue's (account, contract)"].detail


def test_a_venue_position_with_no_database_row_is_reported() -> None:
    venue = dataclasses.replace(clean_venue(), positions={("SIM1", "ESZ6"): D(1), ("SIM1", "6EZ6"): D(-2)})
    found = broken(check_invariants(venue, clean_db()))
    assert "SIM1 6EZ6: database 0 (6e-sma 0) venue -2" in found[
        "positions equal to the venue's (account, contract)"].detail


def test_an_order_row_that_differs_from_its_events_is_reported() -> None:
    db = dataclasses.replace(clean_db(), mismatches=["es-1.status: row 'filled' ≠ fold 'accepted'"])
    found = broken(check_invariants(clean_venue(), db))
    assert list(found) == ["order rows differing from their events"]
    assert found["order rows differing from their events"].actual == 1
    assert "es-1.status" in found["order rows differing from their events"].detail


def test_a_filled_quantity_that_differs_from_the_venue_is_reported() -> None:
    db = clean_db()
    db = dataclasses.replace(db, orders=[dataclasses.replace(o, filled_quantity=D(0), status="cancelled")
                                         if o.client_order_id == "6e-2" else o for o in db.orders])
    found = broken(check_invariants(clean_venue(), db))
    assert list(found) == ["filled quantity equal to the venue's"]
    inv = found["filled quantity equal to the venue's"]
    assert (inv.expected, inv.actual) == (3, 2)
    assert inv.detail == "1 6e-2: database 0 (cancelled) venue 2 (filled)"


@pytest.mark.parametrize("status", ["unknown", "pending_submit", "accepted", "pending_cancel"])
def test_an_order_left_open_after_settling_is_reported(status: str) -> None:
    db = clean_db()
    db = dataclasses.replace(db, orders=[dataclasses.replace(o, status=status) if o.client_order_id == "es-1" else o
                                         for o in db.orders])
    found = broken(check_invariants(clean_venue(), db))
    assert "orders still open after settling" in found
    assert found["orders still open after settling"].detail == f"1 es-1 ({status})"


def test_details_name_a_bounded_number_of_ids_but_count_them_all() -> None:
    venue = dataclasses.replace(clean_venue(), submissions={f"c{i}": 2 for i in range(40)})
    inv = broken(check_invariants(venue, clean_db()))["max submissions per client order id"]
    assert inv.detail.startswith("40 ")
    assert inv.detail.endswith("… and 28 more")


def test_a_position_the_reconciler_had_to_repair_is_reported() -> None:
    # A repair would hide a fill booked twice or lost: the run must not have needed one.
    from services.chaos import DbTruth, VenueTruth, check_invariants

    clean = check_invariants(VenueTruth({}, [], [], {}), DbTruth([], [], [], []))
    assert all(i.ok for i in clean)
    repaired = check_invariants(VenueTruth({}, [], [], {}),
                                DbTruth([], [], [], [], repairs=["es ESZ6: reconciled to broker"]))
    broken = [i for i in repaired if not i.ok]
    assert [i.name for i in broken] == ["positions the reconciler had to repair"]
