"""How async sockets wait: one shared wait per direction; on asyncio, readers kept registered.

:class:`FdWaiter` lets a second task wait on a direction another task already waits on (anyio
allows one waiter per direction per descriptor). What follows is about :class:`LoopReadiness`.

``anyio.wait_readable`` on asyncio registers a reader with the loop for each wait and removes
it afterwards: two selector updates (``epoll_ctl`` calls) and a few hundred bytecodes per
datagram. A client in ping-pong, or a server reading batch after batch, waits once per
datagram or batch, so that is a large share of its cost. Here the reader stays registered
while waits keep coming: the loop's callback completes the waiting future, and the next wait
finds the reader still there. If readiness comes while nobody waits (a datagram arrived after
the last wait, say), the callback removes the reader, so an unread datagram cannot make the
loop spin; the next wait adds it again. (asyncio polls once more between waking a task and
running it; that one report is expected and kept.) Nothing is read in the callback:
datagrams stay in the kernel buffer until the task takes them, as on every other path.

The socket's close path calls :meth:`LoopReadiness.notify_closing` before closing the file
descriptor, which removes the reader (a closed descriptor must not stay in the selector, where
the next socket given the same number would find it) and fails a pending wait with
``ClosedResourceError``, as ``anyio.notify_closing`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio

__all__ = ("FdWaiter", "LoopReadiness", "keeps_readers")


class _Checked(Protocol):
    def check_open(self) -> None: ...


class FdWaiter:
    """One direction's wait, shared: anyio allows one waiter per direction per descriptor."""

    __slots__ = ("_followers", "_waiting")

    def __init__(self) -> None:
        self._waiting = False
        self._followers: anyio.Event | None = None

    async def wait(self, io: _Checked, wait: Callable[[], Awaitable[None]]) -> None:
        """Wait, or (rare: concurrent use) wait for the task already waiting to wake."""
        if self._waiting:
            followers = self._followers
            if followers is None:
                followers = self._followers = anyio.Event()
            await followers.wait()
            io.check_open()
            return
        self._waiting = True
        try:
            await wait()
        except anyio.ClosedResourceError:
            raise anyio.ClosedResourceError from None
        finally:
            self._waiting = False
            followers = self._followers
            if followers is not None:
                self._followers = None
                followers.set()
        io.check_open()


def _is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    return type(loop).__module__.startswith("uvloop")


def keeps_readers(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` has selector-style readers (asyncio's selector loops, uvloop)."""
    return isinstance(loop, asyncio.SelectorEventLoop) or _is_uvloop(loop)


class LoopReadiness:
    """The :class:`~anydgram._socket_io.Waits` of one socket on an asyncio loop."""

    __slots__ = (
        "_fd",
        "_future",
        "_loop",
        "_rearm",
        "_registered",
        "_wait_writable",
        "_woken",
        "_writable_of",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: Any,
        wait_writable: Callable[[Any], Awaitable[None]],
    ) -> None:
        self._loop = loop
        self._fd: int = sock.fileno()
        self._future: asyncio.Future[None] | None = None
        self._registered = False
        # uvloop (libuv) ends a poll handle at an error event (EPOLLERR, as a queued ICMP error
        # raises): it runs the reader once and closes the handle, which then never reports
        # again. So on uvloop every wait registers the reader again (no system call while the
        # handle lives) and replaces a closed handle; asyncio's selector keeps it.
        self._rearm = _is_uvloop(loop)
        self._woken = False  # a wait just completed; its task may not have run yet
        self._wait_writable = wait_writable
        self._writable_of = sock

    def _on_readable(self) -> None:
        future = self._future
        if future is None:
            if self._woken:
                # asyncio polls once more before the task it just woke runs and reads: one
                # report with nobody waiting is expected after each wake-up.
                self._woken = False
                return
            # Readable with nobody waiting: stop watching until the next wait.
            self._loop.remove_reader(self._fd)
            self._registered = False
            return
        self._future = None
        self._woken = True
        if not future.done():
            future.set_result(None)

    async def wait_readable(self) -> None:
        """Return once the socket may be readable (``ClosedResourceError`` if it closes)."""
        future = self._loop.create_future()
        self._future = future
        if not self._registered or self._rearm:
            self._add_reader()
        try:
            await future
        finally:
            if self._future is future:  # cancelled, or failed by notify_closing
                self._future = None

    def _add_reader(self) -> None:
        loop = self._loop
        try:
            loop.add_reader(self._fd, self._on_readable)
        except RuntimeError:  # uvloop: the handle was closed by an error event; a new one
            loop.remove_reader(self._fd)
            loop.add_reader(self._fd, self._on_readable)
        self._registered = True

    async def wait_writable(self) -> None:
        """Return once the send buffer may have room (rare: anyio's wait is used)."""
        await self._wait_writable(self._writable_of)

    def notify_closing(self) -> None:
        """Remove the reader and fail a pending wait: the socket is about to close."""
        if self._registered:
            self._registered = False
            # The loop may be closed already when a socket is closed at interpreter exit.
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_exception(anyio.ClosedResourceError())
