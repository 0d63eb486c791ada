"""The named errors of the durable-state layer.

Callers decide by exception *type* (retry, skip, escalate), never by message text, so every driver
error the store can meet is translated into one of these, raised ``from`` the original. Messages
never contain a database password.
"""
from __future__ import annotations

from typing import Any


class IllegalTransition(Exception):
    """A state machine was handed an event its table does not allow from the current state.

    Raised by ``order_fsm`` and ``session_fsm`` alike. Nothing is recorded when it is raised: the
    subject is left exactly as it was.
    """

    def __init__(self, state: Any, event: Any, subject: str | None = None) -> None:
        self.state = state
        self.event = event
        self.subject = subject
        where = f" ({subject})" if subject else ""
        super().__init__(f"no transition from {_name(state)} on {_name(event)}{where}")


class Overfill(IllegalTransition):
    """A fill (or a replace) would leave more filled than the order's quantity.

    A subclass of ``IllegalTransition`` because it is one: the event cannot be applied.
    """

    def __init__(self, state: Any, event: Any, subject: str | None, detail: str) -> None:
        super().__init__(state, event, subject)
        self.detail = detail
        self.args = (f"{self.args[0]}: {detail}",)


class StoreError(Exception):
    """Base of every error the store raises on purpose."""


class StoreUnavailable(StoreError):
    """The database could not be reached or was busy past its timeout. Retryable later."""


class ConcurrentUpdate(StoreError):
    """Another writer changed the row first (optimistic lock lost), and retrying did not help.

    Retryable: read fresh state and decide again.
    """


StaleVersion = ConcurrentUpdate
"""The same error under the name the optimistic-locking literature uses."""


class DuplicateClientOrderId(StoreError):
    """A client order id exists already with different terms: a signal number was reused."""


class NotAdmitted(StoreError):
    """``create_order``'s admission check refused a new order: nothing was written."""


class FencedOut(StoreError):
    """The writer's lease epoch is older than the session's: a newer copy of it owns the session."""


class SessionNotFound(StoreError, LookupError):
    pass


class SessionExists(StoreError):
    pass


class SessionBusy(StoreError):
    """A session cannot be removed while it has open orders or a non-flat position."""


class OrderNotFound(StoreError, LookupError):
    pass


class JobNotFound(StoreError, LookupError):
    pass


def _name(value: Any) -> str:
    return str(getattr(value, "value", value))
