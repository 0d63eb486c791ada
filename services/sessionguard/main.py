"""sessionguard: supervisord event listener that restarts a session's whole group together.

supervisord has no one-for-all restart. Session programs run with ``autorestart=false``; when one
exits unexpectedly (or fails to start) this listener stops the rest of its group and starts the
group again over supervisord's XML-RPC API. Past ``restarts`` restarts in ``restart_window_s`` it
leaves the group stopped and marks the session ``needs_operator``.

stdout is the event-listener protocol channel: logs go to stderr only.
"""
from __future__ import annotations

import logging
import os
import sys
import time

from supervisor import childutils

from bus.envelope import now_ns
from bus.logs import log
from services.runtime import ProcessShell
from services.sessionguard.core import RestartLimiter, Verdict, is_trigger, parse_event

LIVE_STATES = {"STARTING", "RUNNING", "BACKOFF"}


class SessionGuard:
    def __init__(self, shell: ProcessShell) -> None:
        self.shell = shell
        self.log = shell.log
        self.limiter = RestartLimiter(shell.config.restarts, shell.config.restart_window_s)
        self.rpc = childutils.getRPCInterface(os.environ)

    def run(self) -> None:
        log(self.log, "listening", restarts=self.limiter.max_restarts, window_s=self.limiter.window_s)
        while not self.shell.stopping:
            headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
            event_name = headers.get("eventname", "")
            body_headers, _data = childutils.eventdata(payload + "\n")
            # Acknowledge first: supervisord then goes on dispatching while we act.
            childutils.listener.ok(sys.stdout)
            try:
                self.handle(event_name, body_headers)
            except Exception:  # noqa: BLE001 - a failed restart must not kill the guard
                self.log.exception("handling %s failed", event_name)

    def handle(self, event_name: str, payload: dict[str, str]) -> None:
        event = parse_event(event_name, payload)
        if not is_trigger(event):
            return
        if self._stale(event):
            log(self.log, "stale_event", group=event.group, process=event.process, pid=event.pid)
            return
        verdict = self.limiter.decide(event.group, time.monotonic())
        log(self.log, "process_died", level=logging.WARNING, group=event.group, process=event.process,
            pid=event.pid, event=event.event, verdict=str(verdict))
        if verdict is Verdict.RESTART:
            self.rpc.supervisor.stopProcessGroup(event.group, True)
            self.rpc.supervisor.startProcessGroup(event.group, False)
            log(self.log, "group_restarted", group=event.group, cause=event.process)
        else:
            self.rpc.supervisor.stopProcessGroup(event.group, True)
            self.limiter.forget(event.group)
            self._escalate(event.session or event.group, f"{event.process} died too often "
                           f"(more than {self.limiter.max_restarts} restarts in {self.limiter.window_s:g} s)")

    def _stale(self, event) -> bool:
        """True when the process named by the event has already been restarted (new pid)."""
        try:
            info = self.rpc.supervisor.getProcessInfo(f"{event.group}:{event.process}")
        except Exception:  # noqa: BLE001 - removed group or similar: nothing to restart
            return True
        return info.get("statename") in LIVE_STATES and info.get("pid") not in (None, 0, event.pid)

    def _escalate(self, session: str, reason: str) -> None:
        log(self.log, "needs_operator", level=logging.CRITICAL, session=session, reason=reason)
        try:
            from services.session_state import escalate

            store = self.shell.store()
            try:
                escalate(store, session, reason, now_ns())
            finally:
                store.close()
        except Exception:  # noqa: BLE001 - the group stays stopped either way; say so loudly
            self.log.exception("could not mark session %s needs_operator", session)


def run(shell: ProcessShell) -> None:
    SessionGuard(shell).run()
