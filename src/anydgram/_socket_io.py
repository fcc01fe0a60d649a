"""The socket side of every endpoint: a non-blocking socket driven by anyio's wait primitives.

Every operation tries the system call first and waits (``anyio.wait_readable`` /
``anyio.wait_writable``) only when the kernel says it would block. Nothing is queued in user
space: datagrams the reader has not taken yet wait in the kernel buffer, where the kernel counts
what it drops. This is also the one place where OS errors are translated into the library's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final, overload

import anyio

from ._backend import Primitives, current_primitives
from ._errors import DatagramTooLargeError

__all__ = ("BoundPath", "SocketIO", "SocketProxy")

# Linux values the socket module of Python 3.11 does not export.
SO_MEMINFO: Final = 55
_SK_MEMINFO_DROPS: Final = 8
IP_RECVERR: Final = 11
IPV6_RECVERR: Final = 25

_IS_LINUX: Final = sys.platform.startswith("linux")

#: Errors the kernel reports from an ICMP message (or a local route failure) for an earlier send.
_ICMP_ERRNOS: Final = frozenset(
    {
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.EPROTO,
        errno.ECONNRESET,
    }
)

#: A task that keeps finding data ready would never let others run; after this many operations
#: that did not wait, the next one passes a full checkpoint (before its system call, so a
#: cancellation there loses nothing).
_FAIRNESS_INTERVAL: Final = 16

#: How many datagrams one wake-up may take before yielding (a server's read batch, the skip
#: bound of a receive), and how many queued ICMP errors one drain reads.
MAX_BATCH: Final = 64

#: Backoff for unconnected Unix sends to a full peer: poll() reports the socket writable (its own
#: buffer has room) while the peer's queue is full, so there is nothing to wait on but time.
_UNIX_BACKOFF_FIRST: Final = 0.0005
_UNIX_BACKOFF_MAX: Final = 0.05


class BoundPath:
    """A Unix socket file this process just bound, removed on close only while it is still ours.

    The file's device and inode are recorded right after ``bind()``. If the path was removed
    and bound again by someone else meanwhile, :meth:`remove` leaves the new file alone.
    """

    __slots__ = ("_identity", "path")

    def __init__(self, path: str, identity: tuple[int, int]) -> None:
        self.path: str = path
        self._identity: tuple[int, int] = identity

    @classmethod
    def after_bind(cls, path: str) -> BoundPath | None:
        """The file ``bind(path)`` has just created; ``None`` for an abstract name.

        ``None`` as well when the path cannot be examined: a file we cannot identify is never
        removed.
        """
        if path.startswith("\0"):
            return None
        try:
            info = os.lstat(path)
        except OSError:
            return None
        return cls(path, (info.st_dev, info.st_ino))

    def remove(self) -> None:
        """Remove the file if it is still the socket file that was bound (else do nothing)."""
        try:
            info = os.lstat(self.path)
        except OSError:
            return
        if not stat.S_ISSOCK(info.st_mode) or (info.st_dev, info.st_ino) != self._identity:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def normalize_address(family: int, address: Any) -> Any:
    """Return ``address`` in the form the public API promises (Unix names as ``str``)."""
    if family == socket.AF_UNIX and isinstance(address, bytes):
        return os.fsdecode(address)
    return address


def set_recverr(sock: socket.socket) -> None:
    """Queue ICMP errors on an unconnected IP socket so they are counted, not lost or raised.

    Without ``IP_RECVERR`` Linux discards ICMP errors for unconnected UDP sockets; with it they
    land on the error queue, which :class:`SocketIO` drains into ``icmp_errors``.
    """
    if not _IS_LINUX:
        return
    try:
        if sock.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        elif sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            # A dual-stack socket receives IPv4 errors through the IPv4 option.
            if not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    except OSError:  # not supported here: errors stay uncounted, as DESIGN.md allows
        pass


#: At most this many datagrams are drained (and counted in ``unread_at_close``) when a socket
#: closes; a receive buffer holds far fewer, so the bound only matters if a sender keeps up.
MAX_DRAIN_AT_CLOSE: Final = 1 << 16


def drain_unread(sock: socket.socket, limit: int = MAX_DRAIN_AT_CLOSE) -> int:
    """Take and discard the datagrams waiting in ``sock``'s receive buffer, without blocking.

    Returns how many there were (at most ``limit``). Each is read truncated to one byte: only
    the count matters. Queued errors (ICMP) are skipped, not counted.
    """
    count = errors = 0
    while count < limit and errors < limit:
        try:
            sock.recv(1, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        except OSError as exc:
            if exc.errno in _ICMP_ERRNOS:
                errors += 1
                continue
            break
        count += 1
    return count


def read_kernel_drops(sock: socket.socket) -> int:
    """The kernel's count of datagrams it dropped for ``sock`` (``SO_MEMINFO``), 0 where unknown."""
    if not _IS_LINUX:
        return 0
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * (_SK_MEMINFO_DROPS + 1))
    except OSError:
        return 0
    if len(raw) < 4 * (_SK_MEMINFO_DROPS + 1):
        return 0
    drops: int = struct.unpack_from("I", raw, 4 * _SK_MEMINFO_DROPS)[0]
    return drops


class SocketProxy:
    """A read-mostly view of an endpoint's socket.

    It offers what is safe to use while the endpoint owns the socket (options, names, the file
    descriptor) and deliberately no ``close``, ``recv`` or ``send``.
    """

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def __repr__(self) -> str:
        return f"<SocketProxy fd={self._sock.fileno()} family={self.family!r}>"

    @property
    def family(self) -> socket.AddressFamily:
        """The socket's address family."""
        return self._sock.family

    @property
    def type(self) -> socket.SocketKind:
        """The socket's type (always ``SOCK_DGRAM``)."""
        return self._sock.type

    @property
    def proto(self) -> int:
        """The socket's protocol number."""
        return self._sock.proto

    def fileno(self) -> int:
        """The socket's file descriptor, or -1 once the endpoint is closed."""
        return self._sock.fileno()

    def getsockname(self) -> Any:
        """The socket's own address, as :meth:`socket.socket.getsockname` gives it."""
        return normalize_address(self._sock.family, self._sock.getsockname())

    def getpeername(self) -> Any:
        """The connected peer's address.

        Raises:
            OSError: The socket is not connected.
        """
        return normalize_address(self._sock.family, self._sock.getpeername())

    @overload
    def getsockopt(self, level: int, option: int) -> int: ...
    @overload
    def getsockopt(self, level: int, option: int, buflen: int) -> bytes: ...
    def getsockopt(self, level: int, option: int, buflen: int | None = None) -> int | bytes:
        """Read a socket option, as :meth:`socket.socket.getsockopt`."""
        if buflen is None:
            return self._sock.getsockopt(level, option)
        return self._sock.getsockopt(level, option, buflen)

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        """Set a socket option, as :meth:`socket.socket.setsockopt`."""
        self._sock.setsockopt(level, option, value)


class _FdWaiter:
    """One direction's wait on a file descriptor, shared by every task that needs it.

    anyio allows one waiter per direction per file descriptor: the first task to wait waits on
    the descriptor, any other waits for that one's wake-up (rare: concurrent use).
    """

    __slots__ = ("_followers", "_waiting")

    def __init__(self) -> None:
        self._waiting = False
        self._followers: anyio.Event | None = None

    async def wait(self, io: SocketIO, wait_fd: Callable[[Any], Awaitable[None]]) -> None:
        """Wait for ``wait_fd(io.sock)``, or for the task already waiting on it to wake.

        Raises:
            anyio.ClosedResourceError: ``io`` was closed, before or during the wait.
        """
        if self._waiting:
            followers = self._followers
            if followers is None:
                followers = self._followers = anyio.Event()
            await followers.wait()
            io._check_open()
            return
        self._waiting = True
        try:
            await wait_fd(io.sock)
        except anyio.ClosedResourceError:
            raise anyio.ClosedResourceError from None
        finally:
            self._waiting = False
            followers = self._followers
            if followers is not None:
                self._followers = None
                followers.set()
        io._check_open()


class SocketIO:
    """Datagram I/O on one non-blocking socket, with the counters the statistics report.

    ``max_datagram_size`` is the protocol's limit: receives read one byte more, so a longer
    datagram is detected (and counted in ``oversize``) instead of being silently truncated.

    Fairness and cancellation: an operation that finds the kernel ready completes without
    suspending, except that every ``_FAIRNESS_INTERVAL``-th such operation first passes a full
    checkpoint. A cancellation is therefore raised before a system call, never after it, and a
    task that always finds data ready still lets others run.
    """

    __slots__ = (
        "_bufsize",
        "_closed",
        "_connected",
        "_family",
        "_is_unix",
        "_max_datagram_size",
        "_peer",
        "_primitives",
        "_ready_ops",
        "_recv_waiter",
        "_send_waiter",
        "_unlink_path",
        "bytes_received",
        "bytes_sent",
        "datagrams_received",
        "datagrams_sent",
        "icmp_errors",
        "oversize",
        "send_errors",
        "sock",
        "unread_at_close",
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
        self._init_state(
            sock,
            family=sock.family,
            connected=connected,
            peer=normalize_address(sock.family, sock.getpeername()) if connected else None,
            max_datagram_size=max_datagram_size,
            unlink_path=unlink_path,
        )

    def _init_state(
        self,
        sock: socket.socket,
        *,
        family: int,
        connected: bool,
        peer: Any,
        max_datagram_size: int,
        unlink_path: BoundPath | None,
    ) -> None:
        """Set every field; a subclass with no real socket calls this instead of __init__."""
        self.sock: socket.socket = sock
        self._family = family
        self._is_unix = family == socket.AF_UNIX
        self._connected = connected
        self._peer: Any = peer
        self._max_datagram_size = max_datagram_size
        self._bufsize = max_datagram_size + 1
        self._unlink_path = unlink_path
        self._closed = False
        self._ready_ops = 0
        self._primitives: Primitives | None = None
        self._recv_waiter = _FdWaiter()
        self._send_waiter = _FdWaiter()
        self.datagrams_received: int = 0
        self.bytes_received: int = 0
        self.datagrams_sent: int = 0
        self.bytes_sent: int = 0
        self.oversize: int = 0
        self.send_errors: int = 0
        self.icmp_errors: int = 0
        #: Datagrams still waiting in the receive buffer when the socket closed.
        self.unread_at_close: int = 0

    # -- state -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._closed

    @property
    def peer(self) -> Any:
        """The connected peer's address, or ``None`` for an unconnected socket."""
        return self._peer

    @property
    def max_datagram_size(self) -> int:
        """The longest datagram delivered; longer ones are counted in ``oversize``."""
        return self._max_datagram_size

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped for this socket (0 where the platform cannot say)."""
        if self._closed:
            return 0
        return read_kernel_drops(self.sock)

    def buffer_sizes(self) -> tuple[int, int]:
        """The receive and send buffer sizes the kernel granted, in bytes."""
        if self._closed:
            return 0, 0
        return (
            self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        )

    def _check_open(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError

    @property
    def primitives(self) -> Primitives:
        """The running backend's anyio primitives, looked up once per socket."""
        primitives = self._primitives
        if primitives is None:
            primitives = self._primitives = current_primitives()
        return primitives

    async def _fairness_checkpoint(self) -> None:
        """Pass a full checkpoint every ``_FAIRNESS_INTERVAL`` calls that did not wait."""
        self._ready_ops += 1
        if self._ready_ops >= _FAIRNESS_INTERVAL:
            self._ready_ops = 0
            await self.primitives.checkpoint()

    # -- receiving ---------------------------------------------------------------------------

    def recv_nowait(self) -> tuple[bytes, Any] | None:
        """Take one datagram of at most ``max_datagram_size`` bytes, or ``None`` if none waits.

        Longer datagrams are counted in ``oversize`` and skipped. ``None`` may also mean that a
        run of skipped datagrams reached the batch bound; the caller then waits, which returns
        at once while more data is queued.

        Raises:
            anyio.ClosedResourceError: The endpoint was closed.
            OSError: ``ConnectionRefusedError`` and the like on a connected socket, after an
                ICMP error for an earlier send; anything else the kernel reports.
        """
        try:
            if self._connected:
                data = self.sock.recv(self._bufsize)
                address = self._peer
            else:
                data, address = self.sock.recvfrom(self._bufsize)
        except BlockingIOError:
            return None
        except OSError as exc:
            self._on_recv_error(exc)
            return self._recv_after_skip()
        if len(data) > self._max_datagram_size:
            self.oversize += 1
            return self._recv_after_skip()
        self.datagrams_received += 1
        self.bytes_received += len(data)
        if self._is_unix:
            address = normalize_address(self._family, address)
        return data, address

    def _recv_after_skip(self) -> tuple[bytes, Any] | None:
        # The slow path after an oversize datagram or a drained ICMP error: keep reading, but
        # a bounded number of times, so a flood of junk cannot hold the event loop.
        for _ in range(MAX_BATCH):
            try:
                if self._connected:
                    data = self.sock.recv(self._bufsize)
                    address = self._peer
                else:
                    data, address = self.sock.recvfrom(self._bufsize)
            except BlockingIOError:
                return None
            except OSError as exc:
                self._on_recv_error(exc)
                continue
            if len(data) > self._max_datagram_size:
                self.oversize += 1
                continue
            self.datagrams_received += 1
            self.bytes_received += len(data)
            if self._is_unix:
                address = normalize_address(self._family, address)
            return data, address
        return None

    def recv_batch_nowait(self, max_count: int) -> list[tuple[bytes, Any]]:
        """Take up to ``max_count`` waiting datagrams without blocking (possibly none)."""
        batch: list[tuple[bytes, Any]] = []
        recv_nowait = self.recv_nowait
        for _ in range(max_count):
            item = recv_nowait()
            if item is None:
                break
            batch.append(item)
        return batch

    async def recv(self) -> tuple[bytes, Any]:
        """Wait for one datagram and return it with its sender's address.

        A cancellation either happens before a datagram is taken from the kernel or not at all,
        so a cancelled receive loses nothing.
        """
        self._ready_ops += 1
        if self._ready_ops >= _FAIRNESS_INTERVAL:
            self._ready_ops = 0
            await self.primitives.checkpoint()
        item = self.recv_nowait()
        if item is not None:
            return item
        woke = False
        while True:
            await self.wait_readable(after_wakeup=woke)
            woke = True
            item = self.recv_nowait()
            if item is not None:
                return item

    async def recv_batch(self, max_count: int) -> list[tuple[bytes, Any]]:
        """Wait until at least one datagram is ready, then take up to ``max_count`` of them."""
        await self._fairness_checkpoint()
        woke = False
        while True:
            batch = self.recv_batch_nowait(max_count)
            if batch:
                return batch
            await self.wait_readable(after_wakeup=woke)
            woke = True

    async def wait_readable(self, *, after_wakeup: bool = False) -> None:
        """Wait until the socket is readable (or has an error to report).

        Pass ``after_wakeup=True`` when the previous wait returned but no datagram was there:
        with ``IP_RECVERR`` set, a queued ICMP error keeps poll() reporting the socket readable
        until the error queue is read, so it is drained first and the reader does not spin.

        Raises:
            anyio.ClosedResourceError: The socket was closed, before or during the wait.
        """
        self._ready_ops = 0
        self._check_open()
        if after_wakeup and not self._connected and not self._is_unix:
            self.drain_error_queue()
        await self._recv_waiter.wait(self, self.primitives.wait_readable)

    def _on_recv_error(self, exc: OSError) -> None:
        if self._closed or exc.errno == errno.EBADF:
            raise anyio.ClosedResourceError from None
        if exc.errno in _ICMP_ERRNOS:
            if self._connected:
                self.icmp_errors += 1
                raise exc
            # Unconnected: the same error is queued on the error queue, counted there.
            if not self.drain_error_queue():
                self.icmp_errors += 1
            return
        raise exc

    def drain_error_queue(self) -> int:
        """Read queued ICMP errors (``MSG_ERRQUEUE``) into ``icmp_errors``; bounded per call.

        Returns:
            How many errors were read.
        """
        if not _IS_LINUX or self._closed:
            return 0
        sock = self.sock
        drained = 0
        for _ in range(MAX_BATCH):
            try:
                sock.recvmsg(1, 1024, socket.MSG_ERRQUEUE)
            except OSError:  # EAGAIN: the queue is empty
                break
            drained += 1
        self.icmp_errors += drained
        return drained

    # -- sending -----------------------------------------------------------------------------

    def send_nowait(self, data: bytes, address: Any) -> bool:
        """Send one datagram if the kernel takes it now; ``False`` if it would block.

        ``address`` is ignored on a connected socket.

        Raises:
            DatagramTooLargeError: The kernel refused the size (``EMSGSIZE``).
            anyio.ClosedResourceError: The endpoint was closed.
            OSError: ``ConnectionRefusedError`` and the like on a connected socket; anything
                else the kernel reports.
        """
        try:
            if self._connected:
                self.sock.send(data)
            else:
                self.sock.sendto(data, address)
        except BlockingIOError:
            return False
        except OSError as exc:
            return self._send_failed(exc, data, address)
        self.datagrams_sent += 1
        self.bytes_sent += len(data)
        return True

    def _send_failed(self, exc: OSError, data: bytes, address: Any) -> bool:
        if self._closed or exc.errno == errno.EBADF:
            raise anyio.ClosedResourceError from None
        if exc.errno == errno.EMSGSIZE:
            self.send_errors += 1
            raise DatagramTooLargeError(
                len(data),
                len(data) - 1,
                f"the kernel refused a datagram of {len(data)} bytes (EMSGSIZE)",
            ) from exc
        if exc.errno not in _ICMP_ERRNOS:
            self.send_errors += 1
            raise exc
        if self._connected:
            self.icmp_errors += 1
            raise exc
        # Unconnected: a pending ICMP error about an earlier send (to any peer) failed this
        # one. It is on the error queue too, counted from there; then send once more.
        if not self.drain_error_queue():
            self.icmp_errors += 1
        try:
            self.sock.sendto(data, address)
        except BlockingIOError:
            return False
        except OSError as again:
            if again.errno == errno.EMSGSIZE or again.errno not in _ICMP_ERRNOS:
                self.send_errors += 1
            else:
                self.icmp_errors += 1
            raise
        self.datagrams_sent += 1
        self.bytes_sent += len(data)
        return True

    async def send(self, data: bytes, address: Any) -> None:
        """Send one datagram, waiting while the kernel's send buffer is full.

        A cancellation leaves the datagram either sent entirely or not at all.
        """
        self._ready_ops += 1
        if self._ready_ops >= _FAIRNESS_INTERVAL:
            self._ready_ops = 0
            await self.primitives.checkpoint()
        if self.send_nowait(data, address):
            return
        delay = _UNIX_BACKOFF_FIRST
        woke_writable = False
        while True:
            if self._is_unix and not self._connected and woke_writable:
                # Writable, yet the peer's queue is full: nothing to wait on but time.
                self._check_open()
                await anyio.sleep(delay)
                delay = min(delay * 2, _UNIX_BACKOFF_MAX)
            else:
                await self.wait_writable()
                woke_writable = True
            if self.send_nowait(data, address):
                return

    async def wait_writable(self) -> None:
        """Wait until the socket's send buffer has room.

        Raises:
            anyio.ClosedResourceError: The socket was closed, before or during the wait.
        """
        self._ready_ops = 0
        self._check_open()
        await self._send_waiter.wait(self, self.primitives.wait_writable)

    # -- closing -----------------------------------------------------------------------------

    def close_now(self) -> None:
        """Close the socket without waking waiters (for use outside a running event loop)."""
        if self._closed:
            return
        self._closed = True
        self._release()

    async def aclose(self) -> None:
        """Close the socket; tasks waiting on it get :exc:`anyio.ClosedResourceError` at once.

        When this returns the socket is closed, so its port or path can be bound again.
        """
        if self._closed:
            await anyio.lowlevel.cancel_shielded_checkpoint()
            return
        self._closed = True
        try:
            anyio.notify_closing(self.sock)
        finally:
            self._release()
        await anyio.lowlevel.cancel_shielded_checkpoint()

    def _release(self) -> None:
        """Count what still waits in the receive buffer, close the socket, remove its file."""
        with contextlib.suppress(OSError):  # the socket is unusable already: nothing to count
            self.unread_at_close += drain_unread(self.sock)
        self.sock.close()
        if self._unlink_path is not None:
            self._unlink_path.remove()
