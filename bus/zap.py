"""busd's ZAP handler for tcp: pyzmq's allow-list authenticator, plus a log line and a count for
every client it refuses. Imported only when busd runs on tcp (it pulls in asyncio)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

if TYPE_CHECKING:
    from bus.busd import RefusalLog


class AllowListAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP handler, plus a log line and a count for every client it refuses.

    It extends two pyzmq hooks: ``handle_zap_message`` (to learn the peer's address) and
    ``_authenticate_curve`` (the allow-list decision, left to pyzmq)."""

    def __init__(self, context: zmq.Context, refusals: RefusalLog) -> None:
        super().__init__(context, log=logging.getLogger("busd.zap"))
        self.refusals = refusals
        self._address = ""

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self._address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)

    async def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:
        allowed, reason = await super()._authenticate_curve(domain, client_key)
        if not allowed:
            key = z85.encode(client_key).decode("ascii")
            self.refusals.refused(key, client_key=key, address=self._address,
                                  reason=reason.decode("utf-8", "replace"))
        return allowed, reason
