"""The rate-limited log the server uses (``_logging.py``)."""

from __future__ import annotations

import logging

import pytest

from anydgram._logging import RateLimitedLog

pytestmark = pytest.mark.anyio


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
