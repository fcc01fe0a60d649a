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
import struct
import sys
from typing import Any, Final, overload

import anyio
from anyio.lowlevel import checkpoint, checkpoint_if_cancelled

from ._errors import DatagramTooLargeError

__all__ = ("SocketIO", "SocketProxy")

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

#: How many datagrams one wake-up may take before yielding, and how many queued ICMP errors one
#: drain reads.
_MAX_BATCH: Final = 64

#: Backoff for unconnected Unix sends to a full peer: poll() reports the socket writable (its own
#: buffer has room) while the peer's queue is full, so there is nothing to wait on but time.
_UNIX_BACKOFF_FIRST: Final = 0.0005
_UNIX_BACKOFF_MAX: Final = 0.05


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


class SocketIO:
    """Datagram I/O on one non-blocking socket, with the counters the statistics report.

    ``max_datagram_size`` is the protocol's limit: receives read one byte more, so a longer
    datagram is detected (and counted in ``oversize``) instead of being silently truncated.
    """

    __slots__ = (
        "_bufsize",
        "_closed",
        "_connected",
        "_family",
        "_is_unix",
        "_max_datagram_size",
        "_peer",
        "_ready_ops",
        "_recv_lock",
        "_send_lock",
        "_unlink_path",
        "bytes_received",
        "bytes_sent",
        "datagrams_received",
        "datagrams_sent",
        "icmp_errors",
        "oversize",
        "send_errors",
        "sock",
    )

    def __init__(
        self,
        sock: socket.socket,
        *,
        max_datagram_size: int,
        connected: bool,
        unlink_path: str | None = None,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._family = sock.family
        self._is_unix = sock.family == socket.AF_UNIX
        self._connected = connected
        self._peer: Any = normalize_address(sock.family, sock.getpeername()) if connected else None
        self._max_datagram_size = max_datagram_size
        self._bufsize = max_datagram_size + 1
        self._unlink_path = unlink_path
        self._closed = False
        self._ready_ops = 0
        # Only tasks that must wait take a lock: anyio allows one waiter per direction per fd.
        self._recv_lock = anyio.Lock(fast_acquire=True)
        self._send_lock = anyio.Lock(fast_acquire=True)
        self.datagrams_received = 0
        self.bytes_received = 0
        self.datagrams_sent = 0
        self.bytes_sent = 0
        self.oversize = 0
        self.send_errors = 0
        self.icmp_errors = 0

    # -- state -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._closed

    @property
    def peer(self) -> Any:
        """The connected peer's address, or ``None`` for an unconnected socket."""
        return self._peer

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

    async def _fairness_checkpoint(self) -> None:
        # Cheap cancellation check on every call; a full checkpoint (a chance for other tasks
        # to run) only every few calls that found the kernel ready.
        self._ready_ops += 1
        if self._ready_ops >= _FAIRNESS_INTERVAL:
            self._ready_ops = 0
            await checkpoint()
        else:
            await checkpoint_if_cancelled()

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
        sock = self.sock
        bufsize = self._bufsize
        for _ in range(_MAX_BATCH):
            try:
                if self._connected:
                    data = sock.recv(bufsize)
                    address = self._peer
                else:
                    data, address = sock.recvfrom(bufsize)
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
        for _ in range(max_count):
            item = self.recv_nowait()
            if item is None:
                break
            batch.append(item)
        return batch

    async def recv(self) -> tuple[bytes, Any]:
        """Wait for one datagram and return it with its sender's address.

        A cancellation either happens before a datagram is taken from the kernel or not at all,
        so a cancelled receive loses nothing.
        """
        await self._fairness_checkpoint()
        woke = False
        while True:
            item = self.recv_nowait()
            if item is not None:
                return item
            await self.wait_readable(after_wakeup=woke)
            woke = True

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
        """
        self._ready_ops = 0
        if after_wakeup and not self._connected and not self._is_unix:
            self.drain_error_queue()
        async with self._recv_lock:
            self._check_open()
            try:
                await anyio.wait_readable(self.sock)
            except anyio.ClosedResourceError:
                raise anyio.ClosedResourceError from None
        self._check_open()

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
        for _ in range(_MAX_BATCH):
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
                    self.send_errors += 1
                    raise DatagramTooLargeError(
                        len(data),
                        len(data) - 1,
                        f"the kernel refused a datagram of {len(data)} bytes (EMSGSIZE)",
                    ) from exc
                if exc.errno in _ICMP_ERRNOS:
                    if not self._connected and attempt == 0:
                        # A pending ICMP error for an earlier send to another peer fails this
                        # send too; it is on the error queue as well, counted from there.
                        if not self.drain_error_queue():
                            self.icmp_errors += 1
                        continue
                    self.icmp_errors += 1
                else:
                    self.send_errors += 1
                raise
            else:
                self.datagrams_sent += 1
                self.bytes_sent += len(data)
                return True
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(self, data: bytes, address: Any) -> None:
        """Send one datagram, waiting while the kernel's send buffer is full.

        A cancellation leaves the datagram either sent entirely or not at all.
        """
        await self._fairness_checkpoint()
        if self.send_nowait(data, address):
            return
        self._ready_ops = 0
        delay = _UNIX_BACKOFF_FIRST
        woke_writable = False
        while True:
            async with self._send_lock:
                self._check_open()
                if self.send_nowait(data, address):
                    return
                if self._is_unix and not self._connected and woke_writable:
                    await anyio.sleep(delay)
                    delay = min(delay * 2, _UNIX_BACKOFF_MAX)
                else:
                    try:
                        await anyio.wait_writable(self.sock)
                    except anyio.ClosedResourceError:
                        raise anyio.ClosedResourceError from None
                    woke_writable = True

    # -- closing -----------------------------------------------------------------------------

    def close_now(self) -> None:
        """Close the socket without waking waiters (for use outside a running event loop)."""
        if self._closed:
            return
        self._closed = True
        self.sock.close()
        self._unlink()

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
            self.sock.close()
            self._unlink()
        await anyio.lowlevel.cancel_shielded_checkpoint()

    def _unlink(self) -> None:
        path = self._unlink_path
        if path is not None and not path.startswith("\0"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
