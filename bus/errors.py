"""The bus's own exceptions.

Callers decide what to do from the exception *type* (``services.retry`` reads ``retryable``),
never from message text. ZeroMQ and msgspec errors are translated into these at the edge.
"""
from __future__ import annotations

from typing import ClassVar

# Error-reply codes that busd (or the bus client library) itself produces. Services may send
# other codes of their own (e.g. ``internal``); those arrive as a plain ``RemoteError``.
CODE_NO_WORKER = "no_worker"
CODE_UNKNOWN_SERVICE = "unknown_service"
CODE_DEADLINE = "deadline"
CODE_MALFORMED = "malformed"
CODE_UNAVAILABLE = "unavailable"  # sent by services whose database is down (see ServiceUnavailable)


class BusError(Exception):
    """Base of everything the bus raises."""

    retryable: ClassVar[bool] = False


class EndpointError(BusError, ValueError):
    """An endpoint cannot be used as configured (e.g. an ipc path longer than the OS allows)."""


class MalformedMessage(BusError):
    """Bytes that are not a valid envelope of a known message type.

    ``reason`` says exactly what was wrong. ``source``, ``type``, ``message_id`` and
    ``correlation_id`` are whatever could be salvaged from the header (the *claimed* values, for
    logs and for answering a bad request or reply with an error reply); any may be None.
    """

    def __init__(
        self,
        reason: str,
        *,
        source: str | None = None,
        type: str | None = None,  # noqa: A002 - the envelope's field name
        message_id: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.source = source
        self.type = type
        self.message_id = message_id
        self.correlation_id = correlation_id


class BusUnavailable(BusError):
    """A request could not even be handed to busd before its timeout: it was never sent.

    Unlike ``RequestTimeout`` this is unambiguous, so a retry cannot duplicate anything.
    """

    retryable = True


class RequestTimeout(BusError):
    """No reply within the timeout. The request may or may not have been carried out:
    after this, ask the owner for the state (a snapshot) before acting again; never resend blindly."""

    retryable = True


class RemoteError(BusError):
    """The other side answered with an ``ErrorReply``. ``code`` is machine-readable."""

    CODE: ClassVar[str] = ""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @staticmethod
    def from_reply(code: str, message: str) -> RemoteError:
        """The most specific subclass for ``code`` (plain ``RemoteError`` for service codes)."""
        cls = _BY_CODE.get(code, RemoteError)
        return cls(code, message)


class NoWorker(RemoteError):
    """The service is known but no worker is alive right now (it may be restarting)."""

    CODE = CODE_NO_WORKER
    retryable = True


class UnknownService(RemoteError):
    """No worker has ever registered this service name with this busd: likely a wrong name."""

    CODE = CODE_UNKNOWN_SERVICE


class DeadlineExceeded(RemoteError):
    """The request's deadline passed before a worker could start on it; it was not carried out."""

    CODE = CODE_DEADLINE
    retryable = True


class MalformedRequest(RemoteError):
    """busd or the worker could not decode the request (or the worker's reply)."""

    CODE = CODE_MALFORMED


class ServiceUnavailable(RemoteError):
    """The service is up but one of its own dependencies (its database) is not: nothing was done;
    the same request may be sent again later."""

    CODE = CODE_UNAVAILABLE
    retryable = True


_BY_CODE: dict[str, type[RemoteError]] = {
    cls.CODE: cls for cls in (NoWorker, UnknownService, DeadlineExceeded, MalformedRequest, ServiceUnavailable)
}
