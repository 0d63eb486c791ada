"""Pure comparison of the broker's account with the database's view of one session."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class Discrepancy:
    position_mismatch: bool
    broker_position: Decimal
    db_position: Decimal
    missing_at_broker: tuple[str, ...]   # open in the database, not open at the broker
    unknown_to_db: tuple[str, ...]       # open at the broker under our prefix, unknown to the database

    @property
    def clean(self) -> bool:
        return not (self.position_mismatch or self.missing_at_broker or self.unknown_to_db)

    def describe(self) -> list[str]:
        changes = []
        if self.position_mismatch:
            changes.append(f"position {self.db_position} in database, {self.broker_position} at broker")
        changes += [f"{cid} open in database, not open at broker" for cid in self.missing_at_broker]
        changes += [f"{cid} open at broker, unknown to database" for cid in self.unknown_to_db]
        return changes


def compare(*, broker_position: Decimal, db_position: Decimal, broker_open: Iterable[str],
            db_open: Iterable[str], our_prefix: str) -> Discrepancy:
    broker_ids = {cid for cid in broker_open if cid.startswith(our_prefix)}
    db_ids = set(db_open)
    return Discrepancy(
        position_mismatch=broker_position != db_position,
        broker_position=broker_position,
        db_position=db_position,
        missing_at_broker=tuple(sorted(db_ids - broker_ids)),
        unknown_to_db=tuple(sorted(broker_ids - db_ids)),
    )
