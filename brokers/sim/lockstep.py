"""Lockstep pacing for the simulator: a bar round is produced only once it has been released.

With ``--lockstep`` the simulator does not emit a bar every ``--pace`` seconds. A client — the
replay coordinator (``services.backtest.pipeline``) — releases bar rounds by index over
``POST /v1/admin/release``, and releases round t+1 only after every session has decided on bar t
and its orders have reached the venue. The venue therefore always holds exactly the orders a
strategy sent on bar t when bar t+1 arrives, whatever the speed of the machine: a replay's fills,
and so its trades, depend on the data alone.

The feed is finite (a CSV file). ``Lookahead`` reads one bar ahead so the simulator can say the
feed is exhausted as soon as its last bar has been produced (``/v1/health`` → ``"exhausted":
true``), not only when a release asks for a bar that does not exist.

Nothing here does I/O or reads the clock except the gate's bounded waits.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

WAKE_S = 0.1
"""How often a producer waiting for a release looks at the stop flag (only matters at shutdown)."""

_NOTHING: Any = object()


class Lookahead(Generic[T]):
    """An iterator that can tell, before being asked, whether another item will come.

    The first look happens lazily (a bad CSV row raises where the bar is produced, in the producer
    thread, which logs it), never in the constructor.
    """

    def __init__(self, items: Iterable[T]) -> None:
        self._items: Iterator[T] = iter(items)
        self._next: Any = _NOTHING  # not looked yet
        self._done = False

    def __iter__(self) -> Lookahead[T]:
        return self

    def _look(self) -> None:
        if self._next is _NOTHING and not self._done:
            self._next = next(self._items, _NOTHING)
            self._done = self._next is _NOTHING

    @property
    def exhausted(self) -> bool:
        self._look()
        return self._done

    def __next__(self) -> T:
        self._look()
        if self._done:
            raise StopIteration
        item, self._next = self._next, _NOTHING
        return item


class LockstepGate:
    """Which bar rounds may be produced (``released``) and which have been (``produced``).

    Rounds are numbered like bar indices (round i makes bar i of every symbol). ``release`` only
    ever moves forward, so a repeated or late request is harmless. Thread-safe: HTTP handler
    threads release and read, the producer thread waits and records.
    """

    def __init__(self, *, produced: int = -1) -> None:
        self._cond = threading.Condition()
        self.released = produced
        self.produced = produced
        self.exhausted = False

    def release(self, index: int) -> int:
        """Allow rounds up to ``index``; returns the (possibly higher) index now released."""
        with self._cond:
            if index > self.released:
                self.released = index
                self._cond.notify_all()
            return self.released

    def wait_released(self, index: int, stopping: threading.Event) -> bool:
        """Block until round ``index`` is released (True) or the simulator stops (False)."""
        with self._cond:
            while self.released < index:
                if stopping.is_set():
                    return False
                self._cond.wait(WAKE_S)
            return not stopping.is_set()

    def mark_produced(self, index: int) -> None:
        with self._cond:
            self.produced = index

    def mark_exhausted(self) -> None:
        with self._cond:
            self.exhausted = True

    def view(self) -> dict[str, Any]:
        """For ``/v1/health``: what has been released and produced, and whether the feed is done."""
        with self._cond:
            return {"released": self.released, "produced": self.produced, "exhausted": self.exhausted}


def run_lockstep(gate: LockstepGate, *, produce_round: Callable[[], None], exhausted: Callable[[], bool],
                 stopping: threading.Event, log: Callable[..., None]) -> None:
    """The producer loop in lockstep: produce each round once released, until the feed ends (then
    say so and idle until the simulator stops) or the simulator stops. Exceptions propagate to
    the caller, which treats a dead producer as fatal."""
    while not stopping.is_set():
        if exhausted():
            gate.mark_exhausted()
            log("lockstep_exhausted", produced=gate.produced)
            stopping.wait()
            return
        index = gate.produced + 1
        if not gate.wait_released(index, stopping):
            return
        produce_round()
        gate.mark_produced(index)
