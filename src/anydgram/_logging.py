"""Log records a hostile peer cannot multiply: a per-category budget with a summary line.

A peer that sends ten thousand bad datagrams must not produce ten thousand log records (nor make
the server spend its time formatting them). :class:`RateLimitedLog` lets the first few records
of each category through in every interval and counts the rest; the count is reported in one
record when the interval ends (:meth:`RateLimitedLog.flush_expired`, which
:func:`flush_periodically` calls from a task of the server), when the next record of that
category arrives, or when the server stops (:meth:`RateLimitedLog.flush`).

Every record carries structured fields for formatters (``record.category``, ``record.peer``,
``record.suppressed``; see :data:`EXTRA_FIELDS`), so a JSON formatter needs no parsing.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Final

import anyio

from ._address import format_address

__all__ = ("EXTRA_FIELDS", "LogBudget", "RateLimitedLog", "flush_periodically")

#: Records of one category let through per interval.
DEFAULT_BURST: Final = 5
#: The interval, in seconds.
DEFAULT_INTERVAL: Final = 10.0

#: The attributes every record of a :class:`RateLimitedLog` carries (``None`` when unknown):
#: ``category`` (``"parse"``, ``"handler"``, ``"rate"``, ``"send"``, ``"recv"``, ``"icmp"``),
#: ``peer`` (the peer's address as ``host:port`` text, or ``None``) and ``suppressed`` (on a
#: summary record, how many records it stands for; 0 otherwise).
EXTRA_FIELDS: Final = ("category", "peer", "suppressed")


@dataclass(frozen=True, slots=True)
class LogBudget:
    """How many records of one category pass per interval; the rest are summarised.

    Attributes:
        burst: Records of one category logged per interval (0 logs only the summaries).
        interval: The interval, in seconds.
    """

    burst: int = DEFAULT_BURST
    interval: float = DEFAULT_INTERVAL

    def __post_init__(self) -> None:
        if not isinstance(self.burst, int) or isinstance(self.burst, bool):
            raise TypeError(f"burst must be an int, not {type(self.burst).__name__}")
        if self.burst < 0:
            raise ValueError(f"burst must be at least 0, not {self.burst}")
        if not isinstance(self.interval, (int, float)) or isinstance(self.interval, bool):
            raise TypeError(f"interval must be a number, not {type(self.interval).__name__}")
        if not (math.isfinite(self.interval) and self.interval > 0):
            raise ValueError(f"interval must be a positive number of seconds, not {self.interval}")


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
        budget: LogBudget | None = None,
    ) -> None:
        if budget is not None:
            burst, interval = budget.burst, budget.interval
        self.logger: logging.Logger = logger
        self._burst = burst
        self._interval = interval
        self._budgets: dict[str, _Budget] = {}

    @property
    def interval(self) -> float:
        """The length of one budget interval, in seconds."""
        return self._interval

    def log(
        self,
        category: str,
        level: int,
        msg: str,
        *args: Any,
        exc_info: Any = None,
        peer: object = None,
    ) -> None:
        """Log ``msg % args`` at ``level`` unless the category's budget is spent (then count it).

        ``peer`` (an address) goes into the record's ``peer`` field, formatted only when the
        record is logged.
        """
        now = time.monotonic()
        budget = self._budgets.get(category)
        if budget is None:
            budget = self._budgets[category] = _Budget(now, level)
        elif now - budget.started >= self._interval:
            self._report(category, budget, now)
        if budget.used >= self._burst:
            budget.suppressed += 1
            budget.level = max(budget.level, level)
            return
        budget.used += 1
        extra = {
            "category": category,
            "peer": None if peer is None else format_address(peer),
            "suppressed": 0,
        }
        self.logger.log(level, msg, *args, exc_info=exc_info, extra=extra)

    def flush(self) -> None:
        """Report every category's suppressed records now (the server calls this when it stops)."""
        now = time.monotonic()
        for category, budget in self._budgets.items():
            self._report(category, budget, now)

    def flush_expired(self) -> float:
        """Report the categories whose interval has ended; return seconds until the next ends.

        A category with nothing suppressed and nothing logged for a whole interval is
        forgotten, so the next interval ends :attr:`interval` seconds after it is next used
        (``math.inf`` is returned when no category is pending).
        """
        now = time.monotonic()
        wait = math.inf
        for category, budget in list(self._budgets.items()):
            if now - budget.started >= self._interval:
                if not budget.suppressed:
                    del self._budgets[category]  # idle: the next record starts afresh
                    continue
                self._report(category, budget, now)
            wait = min(wait, budget.started + self._interval - now)
        return wait

    def _report(self, category: str, budget: _Budget, now: float) -> None:
        if budget.suppressed:
            self.logger.log(
                budget.level,
                "suppressed %d similar log records (%s) in the last %.0f s",
                budget.suppressed,
                category,
                now - budget.started,
                extra={"category": category, "peer": None, "suppressed": budget.suppressed},
            )
            budget.suppressed = 0
        budget.started = now
        budget.used = 0


async def flush_periodically(log: RateLimitedLog) -> None:
    """Report suppressed records as each interval ends; run it in the server's task group.

    It sleeps until the earliest interval ends (at most one interval at a time, so a
    category that starts meanwhile is seen in time) and returns only when cancelled.
    """
    while True:
        delay = min(log.flush_expired(), log.interval)
        await anyio.sleep(delay)
