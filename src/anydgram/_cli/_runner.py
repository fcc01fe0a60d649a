"""How a command runs: the chosen backend, Ctrl-C and SIGTERM, and the one error type.

Every command's async part runs through :func:`run`, which turns SIGINT and SIGTERM into a
cancellation of the command, so each command reports what it did (a ping summary, server
statistics) the same way on asyncio, uvloop and trio.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import anyio
from anyio.abc import TaskStatus

from .._backend import BACKENDS, anyio_backend

__all__ = ("BACKENDS", "Backend", "CLIError", "Outcome", "resolve_backend", "run")

T = TypeVar("T")


class CLIError(Exception):
    """A problem to report in one line, exiting with status 2 (bad input or set-up)."""


@dataclass(frozen=True)
class Backend:
    """An event loop choice, as :func:`anyio.run` takes it."""

    name: str
    anyio_backend: str
    options: dict[str, Any] = field(default_factory=dict[str, Any])


def resolve_backend(name: str) -> Backend:
    """Map a ``--backend`` choice to anyio's terms, checking that its package is installed.

    Raises:
        CLIError: The backend is unknown or its package cannot be imported.
    """
    if name not in BACKENDS:
        raise CLIError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    try:
        # asyncio says use_uvloop=False outright, so an installed uvloop policy is not used.
        defaults = {"use_uvloop": False} if name == "asyncio" else None
        anyio_name, options = anyio_backend(name, defaults)
    except ImportError as exc:
        raise CLIError(
            f"backend {name!r} is not available ({exc}); "
            f"install it with: pip install 'anydgram[{name}]'"
        ) from None
    return Backend(name, anyio_name, options)


@dataclass
class Outcome:
    """How :func:`run` ended: the command's result, or ``interrupted`` by a signal."""

    interrupted: bool = False


async def _call(func: Callable[[], Awaitable[None]]) -> None:
    await func()


async def _watch_signals(
    scope: anyio.CancelScope,
    outcome: Outcome,
    on_signal: Callable[[], Awaitable[None]] | None,
    *,
    task_status: TaskStatus[None],
) -> None:
    started = False
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            started = True
            async with anyio.create_task_group() as tg:
                async for _ in signals:
                    if outcome.interrupted or on_signal is None:
                        # The first signal of a command without a graceful stop, or a second
                        # signal while the graceful stop runs: stop now.
                        outcome.interrupted = True
                        scope.cancel()
                        return
                    outcome.interrupted = True
                    tg.start_soon(_call, on_signal)
    except (ValueError, RuntimeError, NotImplementedError):
        if started:
            raise
    # Not the main thread (an embedding program, a test): signals keep their default
    # handling, and only the command's own end stops it.
    task_status.started()
    await anyio.sleep_forever()


def _sole_exception(exc: Exception) -> Exception:
    # A task group wraps even a lone error in a group; the command's one error is what the
    # user needs to see.
    if isinstance(exc, ExceptionGroup):
        inner: tuple[Exception, ...] = cast("ExceptionGroup[Exception]", exc).exceptions
        if len(inner) == 1:
            return _sole_exception(inner[0])
        return cast("ExceptionGroup[Exception]", exc)
    return exc


def _is_keyboard_interrupt(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        inner = cast("BaseExceptionGroup[BaseException]", exc).exceptions
        return all(_is_keyboard_interrupt(item) for item in inner)
    return isinstance(exc, KeyboardInterrupt)


def run(
    backend: Backend,
    func: Callable[[], Awaitable[T]],
    *,
    on_signal: Callable[[], Awaitable[None]] | None = None,
) -> tuple[T | None, Outcome]:
    """Run ``func`` on ``backend``; SIGINT or SIGTERM stop it instead of killing the process.

    The first signal calls ``on_signal`` (a graceful stop that makes ``func`` return) when
    given, else cancels ``func``; a second signal cancels ``func`` in any case.

    Returns:
        ``func``'s result (``None`` when it was interrupted) and the :class:`Outcome`.

    Raises:
        Exception: Whatever ``func`` raised, unwrapped (not inside an exception group).
    """
    outcome = Outcome()
    results: list[T] = []
    errors: list[Exception] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            # The signal watcher is in place before the command starts, so a Ctrl-C at any
            # point of the command is seen by it.
            await tg.start(_watch_signals, tg.cancel_scope, outcome, on_signal)
            try:
                results.append(await func())
            except Exception as exc:
                errors.append(_sole_exception(exc))
            finally:
                tg.cancel_scope.cancel()

    try:
        anyio.run(main, backend=backend.anyio_backend, backend_options=backend.options)
    except BaseException as exc:
        # SIGINT arrived while no watcher was installed (start-up or shutdown).
        if not _is_keyboard_interrupt(exc):
            raise
        outcome.interrupted = True
    if errors:
        raise errors[0]
    return (results[0] if results else None), outcome
