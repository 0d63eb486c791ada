"""Structured logs: one JSON object per line with the fixed fields."""
from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from bus.logs import configure_logging, log


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    out = io.StringIO()
    configure_logging("tester", "DEBUG", stream=out)
    try:
        yield out
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_structured_line_has_the_fixed_fields(stream: io.StringIO) -> None:
    log(logging.getLogger("x"), "malformed", logging.WARNING, reason="bad", size=12, process="claimed")
    [rec] = lines(stream)
    assert rec["action"] == "malformed" and rec["msg"] == "malformed" and rec["level"] == "WARNING"
    assert rec["process"] == "tester" and isinstance(rec["pid"], int)
    assert rec["ts"].endswith("+00:00")
    assert rec["reason"] == "bad" and rec["size"] == 12
    assert rec["process_"] == "claimed"  # a field may not overwrite a fixed one


def test_plain_logging_and_exceptions_are_json_too(stream: io.StringIO) -> None:
    logger = logging.getLogger("y")
    logger.info("hello %s", "there")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    first, second = lines(stream)
    assert first["action"] == "log" and first["msg"] == "hello there"
    assert "ValueError: boom" in second["exc"]


def test_configure_twice_keeps_one_handler(stream: io.StringIO) -> None:
    configure_logging("tester", "INFO", stream=stream)
    log(logging.getLogger("z"), "once")
    log(logging.getLogger("z"), "hidden", logging.DEBUG)
    assert [r["action"] for r in lines(stream)] == ["once"]
