"""Structured logs: one JSON object per line on stdout, which supervisord files per process.

Every record carries ``ts`` (UTC ISO 8601), ``level``, ``process``, ``pid``, ``action`` (a stable,
grep-able verb such as ``ready`` or ``malformed``) and ``msg``, plus the call's own fields.

Never pass message bodies or credentials as fields: bodies can carry tokens (``auth.*``) and
account data. Log type, topic, source and sizes instead.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

RESERVED = ("ts", "level", "process", "pid", "logger", "action", "msg")
DEFAULT_ACTION = "log"  # records logged through plain ``logger.info(...)``
# Libraries that log every request or every setup step at INFO. httpx's request lines also carry
# query strings, which some venues use for credentials: only their warnings get through.
QUIET_LIBRARIES = ("httpx", "httpcore", "alembic", "urllib3")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line; fields that collide with reserved keys get a ``_`` suffix."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "process": self.process,
            "pid": record.process,
            "logger": record.name,
            "action": getattr(record, "action", DEFAULT_ACTION),
            "msg": record.getMessage(),
        }
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields:
            for key, value in fields.items():
                out[f"{key}_" if key in RESERVED else key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class _Handler(logging.StreamHandler):
    """Marks the handler we installed so ``configure_logging`` can be called again safely."""


def configure_logging(process: str, level: str | int = "INFO", *, stream: TextIO | None = None) -> None:
    """Send every log record of this process to ``stream`` (stdout) as JSON lines.

    Idempotent: a second call replaces the handler this module installed, leaving others alone.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    handler = _Handler(stream if stream is not None else sys.stdout)
    handler.setFormatter(JsonFormatter(process))
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)


def log(logger: logging.Logger, action: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event. ``msg`` (default: the action) and ``exc_info`` may be passed as fields."""
    if not logger.isEnabledFor(level):
        return
    msg = fields.pop("msg", action)
    exc_info = fields.pop("exc_info", None)
    logger.log(level, msg, exc_info=exc_info, extra={"action": action, "fields": fields})
