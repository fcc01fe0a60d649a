"""Batched datagram system calls on Linux: ``recvmmsg`` through :mod:`ctypes`.

One ``recvmmsg`` call takes up to a whole read batch from the kernel, where the portable path
makes one ``recvfrom`` call per datagram (and a last one that finds nothing); draining 64
waiting 64-byte datagrams costs about a third less per datagram this way. Everything the rest
of the library sees stays the same: each datagram is its own ``bytes`` object, each sender
the address tuple the :mod:`socket` module gives (``(host, port)`` for IPv4, ``(host, port,
flowinfo, scope_id)`` for IPv6), and the counters count exactly what the portable path counts.

The fast path is used only where it can be: Linux, a libc with ``recvmmsg``, an ``AF_INET`` or
``AF_INET6`` socket, and no per-datagram ancillary data (a server socket bound to a wildcard
address needs ``IP_PKTINFO`` and keeps the portable ``recvmsg`` path). Anywhere else
:func:`server_socket_io` returns the portable :class:`~anydgram._server_io.ServerSocketIO`:
the batched path is an optimisation, never a reason for an error.

Sends are not batched. A version that queued replies and flushed them with one ``sendmmsg`` per
batch was measured and was slower: the kernel's work per reply (about 1.7 us on loopback, most
of it delivering the datagram) is the same either way, queueing a reply in Python cost what the
``sendto`` call does, and the replies left in bursts (see "Where the time goes" in
``docs/benchmarks.md``). ``request.respond()`` therefore hands each reply to the kernel before
it returns.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import socket
import sys
from typing import Any, Final

from ._server_io import Received, ServerSocketIO
from ._socket_io import MAX_BATCH

__all__ = ("MmsgReceiver", "MmsgServerSocketIO", "available", "server_socket_io")

_IS_LINUX: Final = sys.platform.startswith("linux")

#: Set to ``0`` to keep every socket on the portable path (a switch for comparisons and for
#: ruling the fast path out when chasing a problem).
ENV_SWITCH: Final = "ANYDGRAM_BATCHED_SYSCALLS"

#: Linux's value (the socket module exports it on Linux; this is the same number).
_MSG_DONTWAIT: Final = 0x40

#: sizeof(struct sockaddr_storage): room for any address the kernel may write.
_SOCKADDR_SIZE: Final = 128
_SOCKADDR_IN_SIZE: Final = 16
_SOCKADDR_IN6_SIZE: Final = 28

#: Decoded sender addresses remembered per receiver. Peers of a server are few or many; a full
#: cache is cleared rather than managed, so a flood of distinct senders costs one decode each
#: and the memory stays bounded.
_ADDRESS_CACHE_SIZE: Final = 1024

#: After this many datagrams skipped (oversize) or errors drained in one receive, it returns
#: what it has, like the portable path's bound: junk cannot hold the event loop.
_SKIP_BOUND: Final = MAX_BATCH


class _IoVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint))


def _load_recvmmsg() -> Any:
    """Look up libc's ``recvmmsg``; ``None`` where it cannot be had."""
    if not _IS_LINUX:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        recvmmsg = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    # No argtypes: converting five arguments through them costs as much as the system call
    # itself. Every call passes C-int-sized Python ints and a ``c_void_p``, which ctypes
    # converts exactly as the prototype ``int recvmmsg(int, struct mmsghdr *, unsigned int,
    # int, struct timespec *)`` needs.
    recvmmsg.restype = ctypes.c_int
    return recvmmsg


_RECVMMSG: Final[Any] = _load_recvmmsg()


def available() -> bool:
    """Whether the batched path can be used here (Linux, and libc has ``recvmmsg``)."""
    return _RECVMMSG is not None


def _enabled_by_environment() -> bool:
    return os.environ.get(ENV_SWITCH, "").strip().lower() not in {"0", "false", "no", "off"}


def decode_sockaddr_untrusted(raw: bytes) -> Any:
    """Decode a ``sockaddr_in`` or ``sockaddr_in6`` the kernel wrote for a received datagram.

    The result is what :meth:`socket.socket.recvfrom` returns for the same sender.

    Raises:
        ValueError: Not an IPv4 or IPv6 address of the expected length (the kernel never
            writes one for a datagram received on an IPv4 or IPv6 UDP socket).
    """
    family = int.from_bytes(raw[0:2], sys.byteorder)
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET and len(raw) >= _SOCKADDR_IN_SIZE:
        return (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
    if family == socket.AF_INET6 and len(raw) >= _SOCKADDR_IN6_SIZE:
        return (
            socket.inet_ntop(socket.AF_INET6, raw[8:24]),
            port,
            int.from_bytes(raw[4:8], "big"),
            int.from_bytes(raw[24:28], sys.byteorder),
        )
    raise ValueError(f"unexpected socket address (family {family}, {len(raw)} bytes)")


class MmsgReceiver:
    """Preallocated ``recvmmsg`` arrays for up to ``capacity`` datagrams of ``bufsize`` bytes.

    The arrays (one buffer slot, one ``iovec``, one ``mmsghdr`` and one ``sockaddr_storage``
    per datagram) are built once; a receive copies each datagram out into its own ``bytes``, so
    nothing returned aliases them. Only IPv4 and IPv6 senders are decoded.

    Args:
        capacity: The most datagrams one call takes.
        bufsize: The room per datagram; a longer one is truncated by the kernel and reported
            as oversize (pass the protocol's limit plus one, so a datagram one byte too long
            is detected too).
        family: The socket's family, ``AF_INET`` or ``AF_INET6`` (a receiver serves one
            socket).

    Raises:
        ValueError: Another family, or a capacity or size below 1.
    """

    __slots__ = (
        "_addresses",
        "_buffer",
        "_buffer_map",
        "_bufsize",
        "_capacity",
        "_data_view",
        "_iovecs",
        "_lengths_view",
        "_messages",
        "_messages_pointer",
        "_name_offsets",
        "_namelen",
        "_names",
        "_names_view",
        "_offsets",
    )

    def __init__(self, capacity: int, bufsize: int, family: int) -> None:
        if family == socket.AF_INET:
            self._namelen = _SOCKADDR_IN_SIZE
        elif family == socket.AF_INET6:
            self._namelen = _SOCKADDR_IN6_SIZE
        else:
            raise ValueError(f"only AF_INET and AF_INET6 senders are decoded, not {family!r}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        if bufsize < 1:
            raise ValueError(f"bufsize must be at least 1, not {bufsize}")
        self._capacity = capacity
        self._bufsize = bufsize
        # Anonymous mmap memory: a page is only allocated once a datagram reaches it, so 64
        # slots at the default limit (4 MiB) cost little more than the datagrams that arrive.
        self._buffer_map = mmap.mmap(-1, capacity * bufsize)
        self._buffer = (ctypes.c_char * (capacity * bufsize)).from_buffer(self._buffer_map)
        self._iovecs = (_IoVec * capacity)()
        self._messages = (_MMsgHdr * capacity)()
        self._messages_pointer = ctypes.c_void_p(ctypes.addressof(self._messages))
        self._names = (ctypes.c_char * (capacity * _SOCKADDR_SIZE))()
        base = ctypes.addressof(self._buffer)
        names = ctypes.addressof(self._names)
        iovecs = ctypes.addressof(self._iovecs)
        for i in range(capacity):
            iovec = self._iovecs[i]
            iovec.iov_base = base + i * bufsize
            iovec.iov_len = bufsize
            header = self._messages[i].msg_hdr
            header.msg_name = names + i * _SOCKADDR_SIZE
            header.msg_namelen = _SOCKADDR_SIZE
            header.msg_iov = iovecs + i * ctypes.sizeof(_IoVec)
            header.msg_iovlen = 1
        # A strided view of every message's ``msg_len``: a whole batch's lengths are read in
        # one C-level operation.
        words = ctypes.sizeof(_MMsgHdr) // 4
        as_words = memoryview(self._messages).cast("B").cast("I")
        self._lengths_view = as_words[_MMsgHdr.msg_len.offset // 4 :: words]
        self._data_view = memoryview(self._buffer).cast("B")
        self._names_view = memoryview(self._names).cast("B")
        self._addresses: dict[bytes, Any] = {}
        self._offsets = list(range(0, capacity * bufsize, bufsize))
        self._name_offsets = list(range(0, capacity * _SOCKADDR_SIZE, _SOCKADDR_SIZE))

    @property
    def capacity(self) -> int:
        """The most datagrams one call takes."""
        return self._capacity

    def receive(self, fd: int, max_count: int) -> tuple[list[Received], int, int]:
        """Take up to ``max_count`` waiting datagrams from ``fd`` without blocking.

        Returns:
            ``(datagram, sender, None)`` triples, as a server transport hands them on (the
            ``None``: no per-datagram reply source), for the datagrams that fit; their total
            payload bytes; and how many datagrams were longer than the room per datagram
            (skipped; their payload is not copied). Empty and zeros when nothing waits
            (``EAGAIN``).

        Raises:
            OSError: What the kernel reports (the subclass for its ``errno``, e.g.
                ``ConnectionRefusedError`` for a pending ICMP error); nothing was received.
        """
        count = max_count if max_count < self._capacity else self._capacity
        if count <= 0:
            return [], 0, 0
        received: int = _RECVMMSG(fd, self._messages_pointer, count, _MSG_DONTWAIT, None)
        if received <= 0:
            if received == 0:
                return [], 0, 0
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return [], 0, 0
            raise OSError(err, os.strerror(err))
        lengths: list[int] = self._lengths_view[:received].tolist()
        # One copy of the senders' addresses; each key is then a plain bytes slice. Every
        # sender on one IP socket has an address of the same size, which the kernel writes
        # whole (padding zeroed) and reports in ``msg_namelen``; the slots offer it room for
        # any address, and after the first call exactly that size, so the length need not be
        # read back or reset.
        names = self._names_view[: received * _SOCKADDR_SIZE].tobytes()
        namelen = self._namelen
        data_view = self._data_view
        addresses = self._addresses
        limit = self._bufsize - 1
        batch: list[Received] = []
        append = batch.append
        oversize = skipped_bytes = 0
        # The offsets lists cover every slot; only the first ``received`` are paired.
        for length, offset, name_offset in zip(
            lengths, self._offsets, self._name_offsets, strict=False
        ):
            # A datagram longer than its slot is truncated: the kernel sets MSG_TRUNC in its
            # msg_flags and reports the length it copied, the whole slot, which is over the
            # limit. So the length alone tells every oversize datagram, flags unread.
            if length > limit:
                oversize += 1
                skipped_bytes += length
                continue
            key = names[name_offset : name_offset + namelen]
            address = addresses.get(key)
            if address is None:
                address = decode_sockaddr_untrusted(key)
                if len(addresses) >= _ADDRESS_CACHE_SIZE:
                    addresses.clear()
                addresses[key] = address
            append((data_view[offset : offset + length].tobytes(), address, None))
        return batch, sum(lengths) - skipped_bytes, oversize


class MmsgServerSocketIO(ServerSocketIO):
    """A server socket bound to a specific IP address, receiving with ``recvmmsg``.

    Replies and counters are those of :class:`~anydgram._server_io.ServerSocketIO`; only the
    receive differs: one system call per batch instead of one per datagram. Build it through
    :func:`server_socket_io`, which checks that the fast path applies.

    Args:
        sock: A bound, unconnected ``AF_INET`` or ``AF_INET6`` UDP socket.
        max_datagram_size: The protocol's limit (see :class:`~anydgram._socket_io.SocketIO`).
        capacity: The most datagrams one system call takes.
    """

    __slots__ = ("_receiver",)

    # Declared again (annotations only; the slots are SocketIO's) so that the type checkers
    # do not infer them from this class's own updates.
    datagrams_received: int
    bytes_received: int

    def __init__(
        self, sock: socket.socket, *, max_datagram_size: int, capacity: int = MAX_BATCH
    ) -> None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError(f"recvmmsg is used for IP sockets only, not {sock.family!r}")
        super().__init__(sock, max_datagram_size=max_datagram_size, pktinfo=False)
        self._receiver = MmsgReceiver(capacity, max_datagram_size + 1, sock.family)

    async def recv_datagrams(self, max_count: int) -> list[Received]:
        """Wait until a datagram is ready, then take up to ``max_count`` of them.

        A cancellation loses nothing: it happens before a datagram is taken, or not at all.

        Returns:
            ``(datagram, sender, None)`` triples (replies leave from the bound address).

        Raises:
            anyio.ClosedResourceError: The socket was closed, before or during the wait.
            OSError: Anything but an ICMP error the kernel reports (those are counted).
        """
        await self._fairness_checkpoint()
        woke = False
        while True:
            batch = self.recv_datagrams_nowait(max_count)
            if batch:
                return batch
            await self.wait_readable(after_wakeup=woke)
            woke = True

    def recv_datagrams_nowait(self, max_count: int) -> list[Received]:
        """Take up to ``max_count`` waiting datagrams without blocking (possibly none).

        Oversize datagrams are counted and skipped, ICMP errors drained into ``icmp_errors``;
        after ``_SKIP_BOUND`` of those an empty batch may come back while more waits (the
        caller then waits, which returns at once).

        Raises:
            anyio.ClosedResourceError: The socket was closed.
            OSError: Anything but an ICMP error the kernel reports.
        """
        self._check_open()
        receive = self._receiver.receive
        fd = self.sock.fileno()
        skipped = 0
        while True:
            try:
                batch, nbytes, oversize = receive(fd, max_count)
            except OSError as exc:
                self._recv_failed(exc)  # raises unless it was a (counted) ICMP error
                skipped += 1
                if skipped >= _SKIP_BOUND:
                    return []
                continue
            if oversize:
                self.oversize += oversize
                skipped += oversize
            if batch:
                self.datagrams_received += len(batch)
                self.bytes_received += nbytes
                return batch
            if not oversize or skipped >= _SKIP_BOUND:
                return []


def server_socket_io(
    sock: socket.socket, *, max_datagram_size: int, pktinfo: bool, batched: bool | None = None
) -> ServerSocketIO:
    """The server socket I/O for ``sock``: batched system calls where they apply.

    Args:
        sock: A bound, unconnected UDP socket.
        max_datagram_size: The protocol's limit.
        pktinfo: Whether the socket replies from each datagram's destination address (see
            :class:`~anydgram._server_io.ServerSocketIO`); such sockets keep the portable path.
        batched: ``False`` for the portable path; ``True`` for the batched one wherever it
            applies; ``None`` (automatic) as ``True`` unless the environment variable
            ``ANYDGRAM_BATCHED_SYSCALLS`` is ``0``.
    """
    if batched is None:
        batched = _enabled_by_environment()
    if (
        batched
        and not pktinfo
        and available()
        and sock.family in (socket.AF_INET, socket.AF_INET6)
        and sock.type == socket.SOCK_DGRAM
    ):
        return MmsgServerSocketIO(sock, max_datagram_size=max_datagram_size)
    return ServerSocketIO(sock, max_datagram_size=max_datagram_size, pktinfo=pktinfo)
