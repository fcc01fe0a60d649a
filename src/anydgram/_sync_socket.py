"""The socket side of the blocking endpoints: a non-blocking socket, ``poll()`` and a waker.

Every operation tries the system call first and waits in ``poll()`` only when the kernel says
it would block. The wait also watches a *waker* (an eventfd, or a pipe where there is none)
that :meth:`ThreadedSocketIO.close` makes readable, so a thread blocked in a receive or a send
wakes at once when another thread closes the endpoint, instead of after a polling interval.

Sending and receiving share no lock: each direction has its own, held only to update its
counters, never across a system call or a wait. The number of threads inside a socket call is
counted per direction so that ``close()`` releases the file descriptor only after they have
left: closing it under them could let a new file reuse the number while they still use it.

OS errors are translated here exactly as :class:`~anydgram._socket_io.SocketIO` translates them
for the async endpoints (the same exceptions, the same counters).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import socket
import threading
import time
from typing import Any, Final, Protocol

import anyio

from ._errors import DatagramTooLargeError
from ._socket_io import (
    _ICMP_ERRNOS,  # pyright: ignore[reportPrivateUsage]
    _IS_LINUX,  # pyright: ignore[reportPrivateUsage]
    _UNIX_BACKOFF_FIRST,  # pyright: ignore[reportPrivateUsage]
    _UNIX_BACKOFF_MAX,  # pyright: ignore[reportPrivateUsage]
    MAX_BATCH,
    BoundPath,
    drain_unread,
    normalize_address,
    read_kernel_drops,
)

__all__ = ("ThreadedSocketIO", "deadline_after")

_BUSY_ACTION: Final = "waiting for a request() reply on"

#: The longest single ``poll()`` wait, in milliseconds (a day); longer waits poll again.
_MAX_POLL_MS: Final = 86_400_000


def deadline_after(timeout: float | None) -> float | None:
    """The ``time.monotonic()`` deadline ``timeout`` seconds from now (``None``: no deadline).

    Raises:
        TypeError: ``timeout`` is not a number or ``None``.
        ValueError: ``timeout`` is negative or NaN.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    if not timeout >= 0:
        raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
    return time.monotonic() + timeout


class _Busy(Protocol):
    """Something whose ``pending`` count refuses other receivers while it is non-zero."""

    pending: int


class _Waker:
    """A file descriptor that becomes readable, for good, when :meth:`wake` is called."""

    __slots__ = ("_write_fd", "fd")

    def __init__(self) -> None:
        self.fd = self._write_fd = -1
        if hasattr(os, "eventfd"):
            self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._write_fd = -1
        else:  # pragma: no cover - non-Linux POSIX
            self.fd, self._write_fd = os.pipe()
            os.set_blocking(self.fd, False)
            os.set_blocking(self._write_fd, False)

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # already readable: that is all we need
            if self._write_fd < 0:
                os.eventfd_write(self.fd, 1)
            else:  # pragma: no cover - non-Linux POSIX
                os.write(self._write_fd, b"\0")

    def close(self) -> None:
        fds = (self.fd, self._write_fd)
        self.fd = self._write_fd = -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def __del__(self) -> None:
        # An endpoint dropped without close(): its socket is closed when collected, and so is
        # this descriptor, which would otherwise leak for the life of the process.
        self.close()


class _Side:
    """One direction's lock, the threads inside it, and its counters."""

    __slots__ = ("datagrams", "errors", "icmp", "left", "lock", "nbytes", "threads", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        #: How many of ``users`` each thread (by ident) is: a signal handler's ``close()`` runs
        #: on a thread that may itself be inside a call, and must not wait for itself.
        self.threads: dict[int, int] = {}
        #: Notified (once the endpoint is closed) whenever a user leaves.
        self.left = threading.Condition(self.lock)
        self.datagrams = 0
        self.nbytes = 0
        #: ``oversize`` for receiving, ``send_errors`` for sending.
        self.errors = 0
        self.icmp = 0


class ThreadedSocketIO:
    """Blocking datagram I/O on one non-blocking socket, safe to share between threads.

    ``max_datagram_size`` is the protocol's limit: receives read one byte more, so a longer
    datagram is detected (and counted in ``oversize``) instead of being silently truncated.
    """

    __slots__ = (
        "_bufsize",
        "_close_lock",
        "_closed",
        "_connected",
        "_drain_on_wake",
        "_fd",
        "_is_unix",
        "_max_datagram_size",
        "_peer",
        "_recv",
        "_release_pending",
        "_released",
        "_send",
        "_unlink_path",
        "_unread_at_close",
        "_waker",
        "sock",
    )

    def __init__(
        self,
        sock: socket.socket,
        *,
        max_datagram_size: int,
        connected: bool,
        unlink_path: BoundPath | None = None,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._fd = sock.fileno()
        self._is_unix = sock.family == socket.AF_UNIX
        self._connected = connected
        self._peer: Any = normalize_address(sock.family, sock.getpeername()) if connected else None
        # With IP_RECVERR, a queued ICMP error keeps poll() reporting an unconnected IP socket
        # readable until the error queue is read.
        self._drain_on_wake = _IS_LINUX and not connected and not self._is_unix
        self._max_datagram_size = max_datagram_size
        self._bufsize = max_datagram_size + 1
        self._unlink_path = unlink_path
        self._waker = _Waker()
        self._closed = False
        self._released = False
        self._release_pending = False
        self._unread_at_close = 0
        self._close_lock = threading.Lock()
        self._recv = _Side()
        self._send = _Side()

    # -- state -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    @property
    def peer(self) -> Any:
        """The connected peer's address, or ``None`` for an unconnected socket."""
        return self._peer

    def counters(self) -> dict[str, int]:
        """The I/O counters, under the names :class:`~anydgram.EndpointStatistics` uses."""
        recv, send = self._recv, self._send
        return {
            "datagrams_received": recv.datagrams,
            "bytes_received": recv.nbytes,
            "oversize": recv.errors,
            "datagrams_sent": send.datagrams,
            "bytes_sent": send.nbytes,
            "send_errors": send.errors,
            "icmp_errors": recv.icmp + send.icmp,
            "unread_at_close": self._unread_at_close,
        }

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped for this socket (0 where the platform cannot say)."""
        if self._closed:
            return 0
        return read_kernel_drops(self.sock)

    def buffer_sizes(self) -> tuple[int, int]:
        """The receive and send buffer sizes the kernel granted, in bytes (0 once closed)."""
        if self._closed:
            return 0, 0
        try:
            return (
                self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
            )
        except OSError:  # closed by another thread meanwhile
            return 0, 0

    def _enter(self, side: _Side) -> None:
        with side.lock:
            if self._closed:
                raise anyio.ClosedResourceError
            side.users += 1
            ident = threading.get_ident()
            side.threads[ident] = side.threads.get(ident, 0) + 1

    def _leave_locked(self, side: _Side) -> bool:
        """Count the current thread out of ``side`` (its lock held); whether to release now.

        ``True`` when a :meth:`close` left the release to the last user and none is left on
        this side (:meth:`_release_deferred` checks the other).
        """
        side.users -= 1
        ident = threading.get_ident()
        count = side.threads[ident] - 1
        if count:
            side.threads[ident] = count
        else:
            del side.threads[ident]
        if not self._closed:
            return False
        side.left.notify_all()
        return self._release_pending and not side.users

    def _wait(self, events: int, deadline: float | None) -> None:
        """Wait until the socket reports ``events``, the endpoint closes or ``deadline`` passes.

        Raises:
            TimeoutError: ``deadline`` has passed (checked before waiting).
            anyio.ClosedResourceError: The endpoint was closed.
        """
        if deadline is None:
            timeout_ms = None
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            # Rounded up: a wait that ends just before the deadline would spin once more.
            # Capped (poll() takes a C int): a wait that ends early just loops once more.
            timeout_ms = min(math.ceil(remaining * 1000), _MAX_POLL_MS)
        poller = select.poll()
        poller.register(self._fd, events)
        poller.register(self._waker.fd, select.POLLIN)
        poller.poll(timeout_ms)
        if self._closed:
            raise anyio.ClosedResourceError

    def _sleep(self, seconds: float) -> None:
        """Sleep ``seconds``; raise :exc:`anyio.ClosedResourceError` at once if closed meanwhile."""
        poller = select.poll()
        poller.register(self._waker.fd, select.POLLIN)
        poller.poll(math.ceil(seconds * 1000))
        if self._closed:
            raise anyio.ClosedResourceError

    # -- receiving ---------------------------------------------------------------------------

    def recv(self, deadline: float | None, busy: _Busy | None = None) -> tuple[bytes, Any]:
        """Wait for one datagram of at most ``max_datagram_size`` bytes; ``(data, sender)``.

        Longer datagrams are counted in ``oversize`` and skipped. ``busy``, when given, is an
        object whose ``pending`` attribute is checked before each read: while it is non-zero
        the receive is refused, because ``request()`` calls are reading for themselves.

        Raises:
            TimeoutError: ``deadline`` passed with nothing received; nothing was taken.
            anyio.BusyResourceError: ``busy.pending`` is non-zero.
            anyio.ClosedResourceError: The endpoint was closed, before or during the wait.
            OSError: ``ConnectionRefusedError`` and the like on a connected socket, after an
                ICMP error for an earlier send; anything else the kernel reports.
        """
        side = self._recv
        self._enter(side)
        received = oversize = icmp = nbytes = 0
        try:
            sock = self.sock
            bufsize = self._bufsize
            woke = False
            while True:
                if busy is not None and busy.pending:
                    raise anyio.BusyResourceError(_BUSY_ACTION)
                for _ in range(MAX_BATCH):
                    try:
                        if self._connected:
                            data = sock.recv(bufsize)
                            address = self._peer
                        else:
                            data, address = sock.recvfrom(bufsize)
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        icmp += self._recv_error(exc)
                        continue
                    if len(data) > self._max_datagram_size:
                        oversize += 1
                        continue
                    received = 1
                    nbytes = len(data)
                    if self._is_unix:
                        address = normalize_address(socket.AF_UNIX, address)
                    return data, address
                if woke and self._drain_on_wake:
                    icmp += self._drain_error_queue()
                self._wait(select.POLLIN, deadline)
                woke = True
        finally:
            with side.lock:
                side.datagrams += received
                side.nbytes += nbytes
                side.errors += oversize
                side.icmp += icmp
                release = self._leave_locked(side)
            if release:
                self._release_deferred()

    def drop_waiting(self, limit: int) -> int:
        """Take and discard up to ``limit`` datagrams already waiting; how many were taken.

        They count as received (they were), so the caller counts them where it drops them.
        Errors are those of :meth:`recv`.
        """
        side = self._recv
        self._enter(side)
        taken = nbytes = oversize = icmp = 0
        try:
            sock = self.sock
            bufsize = self._bufsize
            for _ in range(limit):
                try:
                    data = sock.recv(bufsize)
                except BlockingIOError:
                    break
                except OSError as exc:
                    icmp += self._recv_error(exc)
                    continue
                if len(data) > self._max_datagram_size:
                    oversize += 1
                else:
                    taken += 1
                    nbytes += len(data)
            return taken
        finally:
            with side.lock:
                side.datagrams += taken
                side.nbytes += nbytes
                side.errors += oversize
                side.icmp += icmp
                release = self._leave_locked(side)
            if release:
                self._release_deferred()

    def _recv_error(self, exc: OSError) -> int:
        """Translate a receive error; returns how many ICMP errors it accounted for."""
        if self._closed or exc.errno == errno.EBADF:
            raise anyio.ClosedResourceError from None
        if exc.errno in _ICMP_ERRNOS:
            if self._connected:
                with self._recv.lock:
                    self._recv.icmp += 1
                raise exc
            # Unconnected: the same error is queued on the error queue, counted there.
            return self._drain_error_queue() or 1
        raise exc

    def _drain_error_queue(self) -> int:
        """Read queued ICMP errors (``MSG_ERRQUEUE``); how many were read. Bounded per call."""
        if not _IS_LINUX:
            return 0
        drained = 0
        for _ in range(MAX_BATCH):
            try:
                self.sock.recvmsg(1, 1024, socket.MSG_ERRQUEUE)
            except OSError:  # EAGAIN: the queue is empty
                break
            drained += 1
        return drained

    # -- sending -----------------------------------------------------------------------------

    def send(self, data: bytes, address: Any, deadline: float | None) -> None:
        """Send one datagram, waiting while the kernel's send buffer is full.

        ``address`` is ignored on a connected socket.

        Raises:
            TimeoutError: ``deadline`` passed before the kernel took the datagram; nothing was
                sent.
            DatagramTooLargeError: The kernel refused the size (``EMSGSIZE``).
            anyio.ClosedResourceError: The endpoint was closed, before or during the wait.
            OSError: ``ConnectionRefusedError`` and the like on a connected socket; anything
                else the kernel reports.
        """
        side = self._send
        self._enter(side)
        counts = [0, 0]  # ICMP errors, other send errors
        sent = False
        try:
            # Unconnected Unix: poll() reports the socket writable (its own buffer has room)
            # while the peer's queue is full, so there is nothing to wait on but time.
            delay = _UNIX_BACKOFF_FIRST
            woke_writable = False
            while not self._send_once(data, address, counts):
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise TimeoutError("timed out")
                if self._is_unix and not self._connected and woke_writable:
                    self._sleep(delay if deadline is None else min(delay, deadline - now))
                    delay = min(delay * 2, _UNIX_BACKOFF_MAX)
                else:
                    self._wait(select.POLLOUT, deadline)
                    woke_writable = True
            sent = True
        finally:
            with side.lock:
                if sent:
                    side.datagrams += 1
                    side.nbytes += len(data)
                side.icmp += counts[0]
                side.errors += counts[1]
                release = self._leave_locked(side)
            if release:
                self._release_deferred()

    def _send_once(self, data: bytes, address: Any, counts: list[int]) -> bool:
        """One send attempt; ``False`` if the kernel would block. Errors as for :meth:`send`."""
        sock = self.sock
        for attempt in (0, 1):
            try:
                if self._connected:
                    sock.send(data)
                else:
                    sock.sendto(data, address)
            except BlockingIOError:
                return False
            except OSError as exc:
                if self._closed or exc.errno == errno.EBADF:
                    raise anyio.ClosedResourceError from None
                if exc.errno == errno.EMSGSIZE:
                    counts[1] += 1
                    raise DatagramTooLargeError(
                        len(data),
                        len(data) - 1,
                        f"the kernel refused a datagram of {len(data)} bytes (EMSGSIZE)",
                    ) from exc
                if exc.errno in _ICMP_ERRNOS:
                    if not self._connected and attempt == 0:
                        # A pending ICMP error for an earlier send to another peer fails this
                        # send too; it is on the error queue as well, counted from there.
                        counts[0] += self._drain_error_queue() or 1
                        continue
                    counts[0] += 1
                else:
                    counts[1] += 1
                raise
            else:
                return True
        raise AssertionError("unreachable")  # pragma: no cover

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the socket; threads blocked on it get :exc:`anyio.ClosedResourceError` at once.

        Returns once every other thread has left its socket call and the socket is closed, so
        its port or path can be bound again. Closing twice (or from two threads) is fine.

        Called on a thread that is itself inside a call on this socket (a signal handler that
        interrupted a blocked receive, say), it wakes that call instead of waiting for it:
        the call raises :exc:`anyio.ClosedResourceError` when the handler returns, and the
        socket is closed as that call leaves.
        """
        with self._close_lock:
            if self._released:
                return
            self._closed = True
            self._waker.wake()
            ident = threading.get_ident()
            mine = False
            for side in (self._recv, self._send):
                with side.lock:
                    own = side.threads.get(ident, 0)
                    # Other threads are awake already and leave without waiting again.
                    while side.users > own:
                        side.left.wait()
                    mine = mine or own > 0
            if mine:
                self._release_pending = True  # the last user to leave releases
                return
            self._release()

    def _release_deferred(self) -> None:
        """Release the socket for a :meth:`close` that could not, once no user is left."""
        with self._close_lock:
            if self._released or not self._release_pending:
                return
            for side in (self._recv, self._send):
                with side.lock:
                    if side.users:
                        return  # that user releases when it leaves
            self._release()

    def _release(self) -> None:
        """Close the file descriptors and remove the socket file (``_close_lock`` held)."""
        self._released = True
        try:
            with contextlib.suppress(OSError):
                self._unread_at_close += drain_unread(self.sock)
            self.sock.close()
        finally:
            self._waker.close()
            path = self._unlink_path
            if path is not None:
                path.remove()
