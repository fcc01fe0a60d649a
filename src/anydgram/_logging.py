"""Log records a hostile peer cannot multiply: a per-category budget with a summary line.

A peer that sends ten thousand bad datagrams must not produce ten thousand log records (nor make
the server spend its time formatting them). :class:`RateLimitedLog` lets the first few records
of each category through in every interval and counts the rest; the count is reported in one
record when the next interval begins, or when the server stops (:meth:`RateLimitedLog.flush`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

__all__ = ("RateLimitedLog",)

#: Records of one category let through per interval.
DEFAULT_BURST: Final = 5
#: The interval, in seconds.
DEFAULT_INTERVAL: Final = 10.0


class _Budget:
    __slots__ = ("level", "started", "suppressed", "used")

    def __init__(self, started: float, level: int) -> None:
        self.started = started
        self.used = 0
        self.suppressed = 0
        self.level = level


class RateLimitedLog:
    """At most ``burst`` records per category per ``interval`` seconds, then one summary.

    Categories are short strings chosen by the caller (``"handler"``, ``"parse"``, ...); their
    number is fixed by the code, so the table of budgets stays small.
    """

    __slots__ = ("_budgets", "_burst", "_interval", "logger")

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = DEFAULT_BURST,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.logger: logging.Logger = logger
        self._burst = burst
        self._interval = interval
        self._budgets: dict[str, _Budget] = {}

    def log(self, category: str, level: int, msg: str, *args: Any, exc_info: Any = None) -> None:
        """Log ``msg % args`` at ``level`` unless the category's budget is spent (then count it)."""
        now = time.monotonic()
        budget = self._budgets.get(category)
        if budget is None:
            budget = self._budgets[category] = _Budget(now, level)
        elif now - budget.started >= self._interval:
            self._report(category, budget)
            budget.started = now
            budget.used = 0
        if budget.used >= self._burst:
            budget.suppressed += 1
            budget.level = max(budget.level, level)
            return
        budget.used += 1
        self.logger.log(level, msg, *args, exc_info=exc_info)

    def flush(self) -> None:
        """Report every category's suppressed records now (the server calls this when it stops)."""
        for category, budget in self._budgets.items():
            self._report(category, budget)

    def _report(self, category: str, budget: _Budget) -> None:
        if budget.suppressed:
            self.logger.log(
                budget.level,
                "suppressed %d similar log records (%s) in the last %.0f s",
                budget.suppressed,
                category,
                time.monotonic() - budget.started,
            )
            budget.suppressed = 0
