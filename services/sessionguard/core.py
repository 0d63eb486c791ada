"""Pure decisions of sessionguard: which process events mean "restart this session's group",
and whether a group has restarted too often (Erlang-style intensity: N restarts in T seconds).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

GROUP_PREFIX = "session-"
TRIGGER_EVENTS = frozenset({"PROCESS_STATE_EXITED", "PROCESS_STATE_FATAL"})


class Verdict(StrEnum):
    IGNORE = "ignore"
    RESTART = "restart"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class ProcessEvent:
    event: str
    process: str
    group: str
    pid: int | None
    expected: bool

    @property
    def session(self) -> str | None:
        return self.group[len(GROUP_PREFIX):] if self.group.startswith(GROUP_PREFIX) else None


def parse_event(event_name: str, payload: dict[str, str]) -> ProcessEvent:
    pid = payload.get("pid")
    return ProcessEvent(
        event=event_name,
        process=payload.get("processname", ""),
        group=payload.get("groupname", ""),
        pid=int(pid) if pid and pid.isdigit() else None,
        expected=payload.get("expected") == "1",
    )


def is_trigger(event: ProcessEvent) -> bool:
    """An unexpected exit or a failure to start of a session process. An operator's
    ``supervisorctl stop`` gives STOPPED, not EXITED, and so never triggers a restart."""
    if event.session is None or event.event not in TRIGGER_EVENTS:
        return False
    return event.event == "PROCESS_STATE_FATAL" or not event.expected


@dataclass
class RestartLimiter:
    max_restarts: int
    window_s: float
    _history: dict[str, deque[float]] = field(default_factory=dict)

    def decide(self, group: str, now_s: float) -> Verdict:
        """Record a wanted restart at monotonic time ``now_s`` and say whether it may happen."""
        times = self._history.setdefault(group, deque())
        while times and now_s - times[0] > self.window_s:
            times.popleft()
        if len(times) >= self.max_restarts:
            return Verdict.GIVE_UP
        times.append(now_s)
        return Verdict.RESTART

    def forget(self, group: str) -> None:
        self._history.pop(group, None)
