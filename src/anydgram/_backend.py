"""The one place that reaches into anyio for speed.

anyio's module-level primitives (``anyio.wait_readable``, ``anyio.lowlevel.checkpoint``, ...)
look up the running backend on every call (through sniffio, which on Python 3.11 costs a
``getpid()`` system call under asyncio). On the per-datagram path that lookup is a measurable
share of the cost, so each socket binds the backend's primitives once, the first time it is
used inside an event loop. If anyio's internals move, the public functions are used instead:
slower, with identical behaviour.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import anyio
import anyio.lowlevel

__all__ = ("BACKENDS", "Primitives", "anyio_backend", "current_primitives", "running_asyncio_loop")

#: The event loops anydgram runs on, as ``DatagramServer.run()`` and the CLI name them.
BACKENDS: Final = ("asyncio", "uvloop", "trio")


def anyio_backend(name: str, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """:func:`anyio.run`'s backend and options for one of :data:`BACKENDS`.

    ``options`` are anyio's backend options, kept (``use_uvloop`` set for ``"uvloop"``).

    Raises:
        ValueError: ``name`` is not one of :data:`BACKENDS`.
        ImportError: The backend's package is missing; the message names the extra to install.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, not {name!r}")
    merged = dict(options or {})
    if name == "uvloop":
        name = "asyncio"
        merged["use_uvloop"] = True
    package = "trio" if name == "trio" else "uvloop" if merged.get("use_uvloop") else None
    if package is not None:
        try:
            importlib.import_module(package)
        except ImportError as exc:
            raise ImportError(
                f"{package} is not installed: pip install 'anydgram[{package}]'", name=package
            ) from exc
    return name, merged


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


def running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running loop when anyio runs on asyncio (uvloop's included); ``None`` otherwise."""
    if _get_async_backend is None:  # pragma: no cover
        return None
    try:
        backend: type[Any] = _get_async_backend()
    except Exception:  # pragma: no cover - defensive
        return None
    if backend.__module__ != "anyio._backends._asyncio":
        return None
    return asyncio.get_running_loop()
