"""The checks on a server's arguments: a bad one is a TypeError or ValueError at once."""

from __future__ import annotations

import functools
import inspect
import logging
import math
from typing import Any

from ._logging import LogBudget
from ._network import ServerNetwork
from ._ratelimit import DEFAULT_MAX_SOURCES, AmplificationLimiter, RateLimit, RateLimiter

__all__ = ("check_grace_period", "check_server_arguments", "is_async_callable", "make_limiters")


def is_async_callable(obj: object) -> bool:
    """Whether calling ``obj`` gives a coroutine.

    True for an ``async def`` function or method, an object whose ``__call__`` is one, and a
    :func:`functools.partial` of either.
    """
    while isinstance(obj, functools.partial):
        obj = obj.func  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    if inspect.iscoroutinefunction(obj):
        return True
    if inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isclass(obj):
        return False
    call = getattr(type(obj), "__call__", None)  # noqa: B004 - the method itself, not callable()
    return inspect.iscoroutinefunction(call)


def check_grace_period(grace_period: float) -> None:
    if not isinstance(grace_period, int | float) or isinstance(grace_period, bool):
        raise TypeError(f"grace_period must be a number, not {type(grace_period).__name__}")
    if not grace_period >= 0:
        raise ValueError(f"grace_period must be >= 0, got {grace_period!r}")


def check_server_arguments(
    handler: Any,
    parse_error_handler: Any,
    max_concurrent_handlers: Any,
    recv_buffer_size: Any,
    logger: Any,
    rate_limit: Any,
    amplification_factor: Any,
    network: Any,
    log_budget: Any,
) -> None:
    """Raise TypeError or ValueError for the first argument of ``DatagramServer`` that is bad."""
    if not is_async_callable(handler):
        raise TypeError(
            f"handler must be an async function (async def), got {handler!r}: "
            "a plain def handler's call cannot be awaited"
        )
    if parse_error_handler is not None and not is_async_callable(parse_error_handler):
        raise TypeError(
            "parse_error_handler must be an async function (async def) or None, "
            f"got {parse_error_handler!r}"
        )
    if not isinstance(max_concurrent_handlers, int) or isinstance(max_concurrent_handlers, bool):
        raise TypeError(
            f"max_concurrent_handlers must be an int, not {type(max_concurrent_handlers).__name__}"
        )
    if max_concurrent_handlers < 1:
        raise ValueError(f"max_concurrent_handlers must be >= 1, got {max_concurrent_handlers}")
    if recv_buffer_size is not None and (
        not isinstance(recv_buffer_size, int) or isinstance(recv_buffer_size, bool)
    ):
        raise TypeError(
            f"recv_buffer_size must be an int or None, not {type(recv_buffer_size).__name__}"
        )
    if recv_buffer_size is not None and recv_buffer_size <= 0:
        raise ValueError(f"recv_buffer_size must be positive, got {recv_buffer_size}")
    if logger is not None and not isinstance(logger, logging.Logger):
        raise TypeError(f"logger must be a logging.Logger, not {type(logger).__name__}")
    if rate_limit is not None and not isinstance(rate_limit, RateLimit):
        raise TypeError(f"rate_limit must be a RateLimit or None, not {type(rate_limit).__name__}")
    if amplification_factor is not None:
        if not isinstance(amplification_factor, int | float) or isinstance(
            amplification_factor, bool
        ):
            raise TypeError(
                "amplification_factor must be a number or None, "
                f"not {type(amplification_factor).__name__}"
            )
        if not (amplification_factor > 0 and math.isfinite(amplification_factor)):
            raise ValueError(
                f"amplification_factor must be a finite number > 0, got {amplification_factor!r}"
            )
    if network is not None and not isinstance(network, ServerNetwork):
        raise TypeError(
            f"network must be an anydgram.testing.MemoryNetwork or None, "
            f"not {type(network).__name__}"
        )
    if log_budget is not None and not isinstance(log_budget, LogBudget):
        raise TypeError(f"log_budget must be a LogBudget or None, not {type(log_budget).__name__}")


def make_limiters(
    rate_limit: RateLimit | None, amplification_factor: float | None
) -> tuple[RateLimiter | None, AmplificationLimiter | None]:
    """The per-source rate limiter and anti-amplification cap a server's arguments ask for."""
    limiter = None if rate_limit is None else RateLimiter(rate_limit)
    if amplification_factor is None:
        return limiter, None
    sources = DEFAULT_MAX_SOURCES if rate_limit is None else rate_limit.max_sources
    return limiter, AmplificationLimiter(amplification_factor, sources)
