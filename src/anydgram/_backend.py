"""The one place that reaches into anyio for speed.

anyio's module-level primitives (``anyio.wait_readable``, ``anyio.lowlevel.checkpoint``, ...)
look up the running backend on every call (through sniffio, which on Python 3.11 costs a
``getpid()`` system call under asyncio). On the per-datagram path that lookup is a measurable
share of the cost, so each socket binds the backend's primitives once, the first time it is
used inside an event loop. If anyio's internals move, the public functions are used instead:
slower, with identical behaviour.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel

__all__ = ("Primitives", "current_primitives")


@dataclass(frozen=True, slots=True)
class Primitives:
    """anyio's low-level operations, bound to one backend."""

    checkpoint: Callable[[], Awaitable[None]]
    checkpoint_if_cancelled: Callable[[], Awaitable[None]]
    wait_readable: Callable[[Any], Awaitable[None]]
    wait_writable: Callable[[Any], Awaitable[None]]


_PUBLIC = Primitives(
    checkpoint=anyio.lowlevel.checkpoint,
    checkpoint_if_cancelled=anyio.lowlevel.checkpoint_if_cancelled,
    wait_readable=anyio.wait_readable,
    wait_writable=anyio.wait_writable,
)

_get_async_backend: Callable[[], type[Any]] | None
try:
    from anyio._core._eventloop import get_async_backend as _get_async_backend
except ImportError:  # pragma: no cover - only if anyio reorganises its internals
    _get_async_backend = None

_bound: dict[type[Any], Primitives] = {}


def current_primitives() -> Primitives:
    """The primitives of the backend running in this thread (call from async code only)."""
    if _get_async_backend is None:  # pragma: no cover
        return _PUBLIC
    try:
        backend: type[Any] = _get_async_backend()
    except Exception:  # pragma: no cover - defensive: fall back to the public functions
        return _PUBLIC
    primitives = _bound.get(backend)
    if primitives is None:
        try:
            primitives = Primitives(
                checkpoint=backend.checkpoint,
                checkpoint_if_cancelled=backend.checkpoint_if_cancelled,
                wait_readable=backend.wait_readable,
                wait_writable=backend.wait_writable,
            )
        except AttributeError:  # pragma: no cover
            primitives = _PUBLIC
        _bound[backend] = primitives
    return primitives
