"""How ``request()`` retries: the wait of each attempt, with exponential backoff and jitter."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from typing import Final

__all__ = ("MAX_BACKOFF_WAIT", "AttemptSchedule", "attempt_timeouts", "check_match")

#: Jitter for every endpoint that is not handed its own generator. ``random.Random`` methods
#: are safe to call from several threads.
DEFAULT_RNG: Final = random.Random()

#: The jitter multiplies each attempt's wait by a factor drawn from this range, so clients that
#: lost the same datagram do not all retry in step.
_JITTER: Final = (1.0, 1.25)


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return result


#: Backoff stops growing an attempt's wait once it reaches this many seconds (an hour); a
#: first wait (``timeout``) longer than that is kept as it is and not grown.
MAX_BACKOFF_WAIT: Final = 3600.0


class AttemptSchedule:
    """How long each attempt of a ``request()`` waits for its reply, in seconds.

    Iterating computes each wait when its attempt starts, so a call with many attempts costs
    nothing up front; ``len()`` is the number of attempts.
    """

    __slots__ = ("_attempts", "_backoff", "_timeout", "_uniform")

    def __init__(
        self,
        timeout: float,
        attempts: int,
        backoff: float,
        uniform: Callable[[float, float], float],
    ) -> None:
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff
        self._uniform = uniform

    def __len__(self) -> int:
        return self._attempts

    def __iter__(self) -> Iterator[float]:
        wait = self._timeout
        cap = max(wait, MAX_BACKOFF_WAIT)
        backoff = self._backoff
        uniform = self._uniform
        for _ in range(self._attempts):
            yield wait * uniform(*_JITTER)
            if wait < cap:
                # A float product overflows to inf, never raises; min() brings it back.
                wait = min(wait * backoff, cap)


def attempt_timeouts(
    timeout: float,
    attempts: int,
    backoff: float,
    *,
    rng: random.Random | None = None,
) -> AttemptSchedule:
    """How long each attempt of a ``request()`` waits for its reply, in seconds.

    Attempt *i* (from 0) waits ``min(timeout * backoff**i, cap) * U(1, 1.25)``: exponential
    backoff with jitter, where ``cap`` is :data:`MAX_BACKOFF_WAIT` (an hour) or ``timeout``
    if that is longer. Here ``timeout`` is per attempt, the one stated exception to the rule
    that a ``timeout`` keyword is a total budget. Each wait is computed when its attempt
    starts.

    Args:
        timeout: The first attempt's wait before jitter; positive.
        attempts: How many times the datagram is sent; at least 1.
        backoff: The factor between consecutive waits; at least 1.
        rng: Where the jitter comes from; a shared generator when omitted.

    Raises:
        TypeError: An argument is not a number (``attempts`` not an int).
        ValueError: An argument is out of range.
    """
    timeout = _check_number("timeout", timeout)
    backoff = _check_number("backoff", backoff)
    if isinstance(attempts, bool) or not isinstance(attempts, int):
        raise TypeError(f"attempts must be an int, not {type(attempts).__name__}")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts!r}")
    if backoff < 1:
        raise ValueError(f"backoff must be at least 1, got {backoff!r}")
    return AttemptSchedule(
        timeout, attempts, backoff, (DEFAULT_RNG if rng is None else rng).uniform
    )


def check_match(match: object) -> None:
    """Refuse a ``match`` that is neither ``None`` nor callable (``TypeError``)."""
    if match is not None and not callable(match):
        raise TypeError(f"match must be callable or None, not {type(match).__name__}")
