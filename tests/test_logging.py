"""Tests for the log budget: structured fields, summaries when the interval ends, the flusher."""

from __future__ import annotations

import json
import logging
import math

import anyio
import pytest

from anydgram._logging import (
    EXTRA_FIELDS,
    LogBudget,
    RateLimitedLog,
    flush_periodically,
)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr("anydgram._logging.time.monotonic", lambda: now[0])
    return now


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {name: getattr(record, name) for name in EXTRA_FIELDS}
        return json.dumps({"message": record.getMessage(), **fields})


def test_records_carry_structured_fields(
    caplog: pytest.LogCaptureFixture, clock: list[float]
) -> None:
    log = RateLimitedLog(logging.getLogger("test.fields"), budget=LogBudget(burst=1))
    with caplog.at_level(logging.INFO, logger="test.fields"):
        log.log("parse", logging.WARNING, "bad datagram", peer=("192.0.2.1", 5353))
        log.log("parse", logging.WARNING, "bad datagram", peer=("192.0.2.1", 5353))
        log.log("parse", logging.ERROR, "bad datagram", peer=("192.0.2.2", 5353))
        log.log("send", logging.WARNING, "no peer")
        log.flush()
    formatter = _JSONFormatter()
    lines = [json.loads(formatter.format(record)) for record in caplog.records]
    assert lines == [
        {"message": "bad datagram", "category": "parse", "peer": "192.0.2.1:5353", "suppressed": 0},
        {"message": "no peer", "category": "send", "peer": None, "suppressed": 0},
        {
            "message": "suppressed 2 similar log records (parse) in the last 0 s",
            "category": "parse",
            "peer": None,
            "suppressed": 2,
        },
    ]
    assert caplog.records[-1].levelno == logging.ERROR  # the worst level it stands for


def test_the_summary_comes_when_the_interval_ends(
    caplog: pytest.LogCaptureFixture, clock: list[float]
) -> None:
    log = RateLimitedLog(logging.getLogger("test.expiry"), burst=2, interval=10)
    assert log.flush_expired() == math.inf  # nothing pending
    with caplog.at_level(logging.INFO, logger="test.expiry"):
        for i in range(20):
            log.log("a", logging.WARNING, "record %d", i)
        clock[0] += 4
        log.log("b", logging.WARNING, "b once")
        assert log.flush_expired() == pytest.approx(6)
        clock[0] += 6  # a's interval ends; the flood simply stopped
        assert log.flush_expired() == pytest.approx(4)  # b ends next
        assert caplog.records[-1].getMessage().startswith("suppressed 18 similar log records (a)")
        assert caplog.records[-1].suppressed == 18  # type: ignore[attr-defined]
        count = len(caplog.records)
        clock[0] += 4
        # b had nothing suppressed and a nothing since: both are forgotten, no records.
        assert log.flush_expired() == pytest.approx(6)
        clock[0] += 6
        assert log.flush_expired() == math.inf
        assert len(caplog.records) == count
        log.log("a", logging.WARNING, "afresh")  # a full burst again
        log.log("a", logging.WARNING, "afresh")
        assert [r.getMessage() for r in caplog.records[-2:]] == ["afresh", "afresh"]


def test_log_budget_is_checked() -> None:
    assert LogBudget() == LogBudget(5, 10.0)
    for bad, error in [
        ({"burst": -1}, ValueError),
        ({"burst": 1.5}, TypeError),
        ({"burst": True}, TypeError),
        ({"interval": 0}, ValueError),
        ({"interval": math.inf}, ValueError),
        ({"interval": "10"}, TypeError),
    ]:
        with pytest.raises(error):
            LogBudget(**bad)  # type: ignore[arg-type]
    log = RateLimitedLog(logging.getLogger("test.budget"), budget=LogBudget(burst=0, interval=2))
    assert log.interval == 2


class _SummarySeen(logging.Handler):
    """Sets an event when a summary record arrives (logged from the flusher's task)."""

    def __init__(self) -> None:
        super().__init__()
        self.event = anyio.Event()
        self.suppressed: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.__dict__.get("suppressed"):
            self.suppressed.append(record.__dict__["suppressed"])
            self.event.set()


async def test_flush_periodically_reports_without_new_records() -> None:
    logger = logging.getLogger("test.flusher")
    seen = _SummarySeen()
    logger.addHandler(seen)
    try:
        log = RateLimitedLog(logger, burst=1, interval=0.05)
        async with anyio.create_task_group() as group:
            group.start_soon(flush_periodically, log)
            for _ in range(5):
                log.log("parse", logging.WARNING, "flood")
            with anyio.fail_after(5):
                await seen.event.wait()
            group.cancel_scope.cancel()
        assert seen.suppressed == [4]
    finally:
        logger.removeHandler(seen)


def test_rate_limited_log_summarizes_what_it_suppressed(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr("anydgram._logging.time.monotonic", lambda: now[0])
    log = RateLimitedLog(logging.getLogger("test.ratelimit"), burst=3, interval=10)
    with caplog.at_level(logging.INFO, logger="test.ratelimit"):
        for i in range(50):
            log.log("a", logging.WARNING, "record %d", i)
        log.log("b", logging.INFO, "other category")
        assert [r.getMessage() for r in caplog.records] == [
            "record 0",
            "record 1",
            "record 2",
            "other category",
        ]
        now[0] += 11
        log.log("a", logging.WARNING, "later")
        assert caplog.records[-2].getMessage().startswith("suppressed 47 similar log records (a)")
        assert caplog.records[-1].getMessage() == "later"
        log.flush()
        assert len(caplog.records) == 6  # nothing more was suppressed
