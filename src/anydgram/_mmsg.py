"""Batched datagram system calls on Linux: ``recvmmsg`` through :mod:`ctypes`.

:class:`RecvMmsg` is a receive strategy of the I/O core: one ``recvmmsg`` takes a whole read
batch where the portable path makes one ``recvfrom`` per datagram. What the rest of the library
sees stays the same: each datagram its own ``bytes``, each sender the tuple :mod:`socket` gives,
the same counters. It is used only where it can be (Linux, a libc with ``recvmmsg``, an IP
socket); elsewhere :func:`server_strategy` picks the portable path, never an error. On a
socket that receives metadata each slot has a control area too, whose bytes each datagram
keeps (parsed only on demand, ``_metadata.py``).
"""

from __future__ import annotations

import array
import ctypes
import ctypes.util
import errno
import mmap
import os
import socket
import sys
from collections.abc import Callable
from typing import Any, Final

import anyio

from ._compiled import speedups
from ._io_core import MAX_BATCH, Received, ReceiveStrategy, RecvFrom, SocketCore, Tally
from ._metadata import CONTROL_SIZE, MSG_CTRUNC
from ._pktinfo import RecvPktinfo

__all__ = (
    "SOCKADDR_IN6_SIZE",
    "SOCKADDR_IN_SIZE",
    "IoVec",
    "MMsgHdr",
    "MmsgReceiver",
    "RecvMmsg",
    "available",
    "enabled_by_environment",
    "libc_function",
    "server_strategy",
    "unpack_batch",
)

_IS_LINUX: Final = sys.platform.startswith("linux")

#: Set to ``0`` to keep every socket on the portable path (a switch for comparisons and for
#: ruling the fast path out when chasing a problem).
ENV_SWITCH: Final = "ANYDGRAM_BATCHED_SYSCALLS"

#: Linux's value (the socket module exports it on Linux; this is the same number).
_MSG_DONTWAIT: Final = 0x40

#: sizeof(struct sockaddr_storage): room for any address the kernel may write.
_SOCKADDR_SIZE: Final = 128
SOCKADDR_IN_SIZE: Final = 16
SOCKADDR_IN6_SIZE: Final = 28

#: Decoded sender addresses remembered per receiver. Peers of a server are few or many; a full
#: cache is cleared rather than managed, so a flood of distinct senders costs one decode each
#: and the memory stays bounded.
_ADDRESS_CACHE_SIZE: Final = 1024


class IoVec(ctypes.Structure):
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


class MMsgHdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint))


def libc_function(name: str) -> Any:
    """Look up libc's ``name`` (its ``errno`` kept for :func:`ctypes.get_errno`), or ``None``."""
    if not _IS_LINUX:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    # No argtypes: converting the arguments through them costs as much as the system call
    # itself. Every call passes C-int-sized Python ints and ``c_void_p`` pointers, which
    # ctypes converts exactly as ``int recvmmsg(int, struct mmsghdr *, unsigned int, int,
    # struct timespec *)`` and ``int sendmmsg(int, struct mmsghdr *, unsigned int, int)`` need.
    function.restype = ctypes.c_int
    return function


_RECVMMSG: Final[Any] = libc_function("recvmmsg")


def available() -> bool:
    """Whether the batched path can be used here (Linux, and libc has ``recvmmsg``)."""
    return _RECVMMSG is not None


def decode_sockaddr_untrusted(raw: bytes) -> Any:
    """Decode a ``sockaddr_in`` or ``sockaddr_in6`` the kernel wrote for a received datagram.

    The result is what :meth:`socket.socket.recvfrom` returns for the same sender.

    Raises:
        ValueError: Not an IPv4 or IPv6 address of the expected length (the kernel never
            writes one for a datagram received on an IPv4 or IPv6 UDP socket).
    """
    family = int.from_bytes(raw[0:2], sys.byteorder)
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET and len(raw) >= SOCKADDR_IN_SIZE:
        return (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
    if family == socket.AF_INET6 and len(raw) >= SOCKADDR_IN6_SIZE:
        return (
            socket.inet_ntop(socket.AF_INET6, raw[8:24]),
            port,
            int.from_bytes(raw[4:8], "big"),
            int.from_bytes(raw[24:28], sys.byteorder),
        )
    raise ValueError(f"unexpected socket address (family {family}, {len(raw)} bytes)")


def unpack_batch(
    lengths: list[int],
    names: bytes,
    data: memoryview,
    offsets: list[int],
    name_offsets: list[int],
    namelen: int,
    limit: int,
    addresses: dict[bytes, Any],
    decode: Callable[[bytes], Any],
    cache_size: int,
    controls: memoryview | None = None,
    control_offsets: list[int] | None = None,
    control_lengths: list[int] | None = None,
) -> tuple[list[Received], int, int]:
    """A ``recvmmsg`` batch as :meth:`MmsgReceiver.receive` returns it (the reference).

    Datagram ``i`` is ``lengths[i]`` bytes at ``offsets[i]`` in ``data`` (skipped as oversize
    if over ``limit``), its sender the ``namelen`` bytes at ``name_offsets[i]`` in ``names``,
    decoded by ``decode`` unless ``addresses`` has it (a cache of ``cache_size`` at most,
    cleared when full). With ``controls``, its control messages are the ``control_lengths[i]``
    bytes at ``control_offsets[i]`` there (else ``None``). The compiled
    ``_speedups.unpack_batch`` does the same, object for object.
    """
    if controls is not None:
        assert control_offsets is not None
        assert control_lengths is not None
        return _unpack_with_controls(
            lengths,
            names,
            data,
            offsets,
            name_offsets,
            namelen,
            limit,
            addresses,
            decode,
            cache_size,
            controls,
            control_offsets,
            control_lengths,
        )
    batch: list[Received] = []
    append = batch.append
    oversize = skipped_bytes = 0
    # The offsets lists cover every slot; only the first ``len(lengths)`` are paired.
    for length, offset, name_offset in zip(lengths, offsets, name_offsets, strict=False):
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
            address = _remember(addresses, key, decode, cache_size)
        append((data[offset : offset + length].tobytes(), address, None, None))
    return batch, sum(lengths) - skipped_bytes, oversize


def _remember(
    addresses: dict[bytes, Any], key: bytes, decode: Callable[[bytes], Any], cache_size: int
) -> Any:
    """A sender's ``sockaddr`` not in the cache yet: decoded and cached (a full cache cleared)."""
    address = decode(key)
    if len(addresses) >= cache_size:
        addresses.clear()
    addresses[key] = address
    return address


def _unpack_with_controls(
    lengths: list[int],
    names: bytes,
    data: memoryview,
    offsets: list[int],
    name_offsets: list[int],
    namelen: int,
    limit: int,
    addresses: dict[bytes, Any],
    decode: Callable[[bytes], Any],
    cache_size: int,
    controls: memoryview,
    control_offsets: list[int],
    control_lengths: list[int],
) -> tuple[list[Received], int, int]:
    """:func:`unpack_batch` for slots with control areas: each datagram keeps its own."""
    batch: list[Received] = []
    oversize = skipped_bytes = 0
    for length, offset, name_offset, control_offset, control_length in zip(
        lengths, offsets, name_offsets, control_offsets, control_lengths, strict=False
    ):
        if length > limit:
            oversize += 1
            skipped_bytes += length
            continue
        key = names[name_offset : name_offset + namelen]
        address = addresses.get(key)
        if address is None:
            address = _remember(addresses, key, decode, cache_size)
        control = controls[control_offset : control_offset + control_length].tobytes()
        batch.append((data[offset : offset + length].tobytes(), address, None, control))
    return batch, sum(lengths) - skipped_bytes, oversize


_unpack: Final = unpack_batch if speedups is None else speedups.unpack_batch
_CTRUNC_BIT: Final = MSG_CTRUNC.__and__


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
        control_size: The control area per datagram (0: none); each datagram received then
            keeps its control messages' bytes, and :attr:`truncated` counts those cut short.

    Raises:
        ValueError: Another family, or a capacity or size below 1.
    """

    __slots__ = (
        "_addresses",
        "_buffer",
        "_buffer_map",
        "_bufsize",
        "_capacity",
        "_control_lengths",
        "_control_offsets",
        "_control_reset",
        "_control_size",
        "_controls",
        "_controls_view",
        "_data_view",
        "_flags_view",
        "_iovecs",
        "_lengths_view",
        "_messages",
        "_messages_pointer",
        "_name_offsets",
        "_namelen",
        "_names",
        "_names_view",
        "_offsets",
        "truncated",
    )

    def __init__(self, capacity: int, bufsize: int, family: int, control_size: int = 0) -> None:
        if family == socket.AF_INET:
            self._namelen = SOCKADDR_IN_SIZE
        elif family == socket.AF_INET6:
            self._namelen = SOCKADDR_IN6_SIZE
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
        self._iovecs = (IoVec * capacity)()
        self._messages = (MMsgHdr * capacity)()
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
            header.msg_iov = iovecs + i * ctypes.sizeof(IoVec)
            header.msg_iovlen = 1
        # A strided view of every message's ``msg_len``: a whole batch's lengths are read in
        # one C-level operation.
        words = ctypes.sizeof(MMsgHdr) // 4
        as_words = memoryview(self._messages).cast("B").cast("I")
        self._lengths_view = as_words[MMsgHdr.msg_len.offset // 4 :: words]
        self._data_view = memoryview(self._buffer).cast("B")
        self._names_view = memoryview(self._names).cast("B")
        self._addresses: dict[bytes, Any] = {}
        self._offsets = list(range(0, capacity * bufsize, bufsize))
        self._name_offsets = list(range(0, capacity * _SOCKADDR_SIZE, _SOCKADDR_SIZE))
        #: Datagrams of the last call whose control messages were cut short (``MSG_CTRUNC``).
        self.truncated = 0
        self._control_size = control_size
        self._controls = (ctypes.c_char * (capacity * control_size))()
        self._controls_view = memoryview(self._controls).cast("B")
        self._control_offsets = list(range(0, capacity * control_size, control_size or 1))
        if control_size:
            controls = ctypes.addressof(self._controls)
            for i in range(capacity):
                self._messages[i].msg_hdr.msg_control = controls + i * control_size
        # The kernel writes each slot's msg_controllen (what it used) and msg_flags: strided
        # views, so a call's lengths are reset and read back in one C-level operation each.
        # (size_t is an unsigned long on Linux, whose ABIs are LP64 and ILP32.)
        as_sizes = memoryview(self._messages).cast("B").cast("L")
        size_words = ctypes.sizeof(MMsgHdr) // ctypes.sizeof(ctypes.c_size_t)
        offset = _MsgHdr.msg_controllen.offset // ctypes.sizeof(ctypes.c_size_t)
        self._control_lengths = as_sizes[offset::size_words]
        self._control_reset = memoryview(array.array("L", [control_size] * capacity))
        self._flags_view = as_words[_MsgHdr.msg_flags.offset // 4 :: words]

    @property
    def capacity(self) -> int:
        """The most datagrams one call takes."""
        return self._capacity

    def receive(self, fd: int, max_count: int) -> tuple[list[Received], int, int]:
        """Take up to ``max_count`` waiting datagrams from ``fd`` without blocking.

        Returns:
            ``(datagram, sender, None, control)`` items, as a server transport hands them on
            (the ``None``: no per-datagram reply source; ``control``: the datagram's control
            messages' bytes, ``None`` without a control area), for the datagrams that fit;
            their total payload bytes; and how many datagrams were longer than the room per
            datagram (skipped; their payload is not copied). Empty and zeros when nothing
            waits (``EAGAIN``).

        Raises:
            OSError: What the kernel reports (the subclass for its ``errno``, e.g.
                ``ConnectionRefusedError`` for a pending ICMP error); nothing was received.
        """
        count = max_count if max_count < self._capacity else self._capacity
        if count <= 0:
            return [], 0, 0
        if self._control_size:
            self.truncated = 0
            self._control_lengths[:count] = self._control_reset[:count]
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
        if self._control_size:
            flags: list[int] = self._flags_view[:received].tolist()
            self.truncated = sum(map(_CTRUNC_BIT, flags)) // MSG_CTRUNC
            return _unpack(
                lengths,
                names,
                self._data_view,
                self._offsets,
                self._name_offsets,
                self._namelen,
                self._bufsize - 1,
                self._addresses,
                decode_sockaddr_untrusted,
                _ADDRESS_CACHE_SIZE,
                self._controls_view,
                self._control_offsets,
                self._control_lengths[:received].tolist(),
            )
        return _unpack(
            lengths,
            names,
            self._data_view,
            self._offsets,
            self._name_offsets,
            self._namelen,
            self._bufsize - 1,
            self._addresses,
            decode_sockaddr_untrusted,
            _ADDRESS_CACHE_SIZE,
        )


class RecvMmsg:
    """The Linux batched receive: one ``recvmmsg`` for a whole batch (IPv4 and IPv6 only)."""

    __slots__ = ("_core", "_receiver")

    def __init__(self, core: SocketCore, capacity: int = MAX_BATCH) -> None:
        if core.family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError(f"recvmmsg is used for IP sockets only, not {core.family!r}")
        self._core = core
        control_size = 0 if core.metadata is None else CONTROL_SIZE
        self._receiver = MmsgReceiver(capacity, core.bufsize, core.family, control_size)

    def receive(self, max_count: int, tally: Tally) -> list[Received]:
        """Take up to ``max_count`` waiting datagrams without blocking (possibly none)."""
        core = self._core
        if core.closed:
            raise anyio.ClosedResourceError
        receive = self._receiver.receive
        fd = core.sock.fileno()
        skipped = 0
        while True:
            try:
                batch, nbytes, oversize = receive(fd, max_count)
            except OSError as exc:
                core.receive_failed(exc, tally)  # raises unless it was a (counted) ICMP error
                skipped += 1
                if skipped >= MAX_BATCH:
                    return []
                continue
            if oversize:
                tally.oversize += oversize
                skipped += oversize
            if self._receiver.truncated:
                tally.metadata_truncated += self._receiver.truncated
            if batch:
                tally.datagrams_received += len(batch)
                tally.bytes_received += nbytes
                return batch
            if not oversize or skipped >= MAX_BATCH:
                return []


def enabled_by_environment() -> bool:
    """Whether ``ANYDGRAM_BATCHED_SYSCALLS`` leaves the batched path on (it is by default)."""
    return os.environ.get(ENV_SWITCH, "").strip().lower() not in {"0", "false", "no", "off"}


def server_strategy(
    sock: socket.socket, *, pktinfo: bool, batched: bool | None = None, metadata: bool = False
) -> Callable[[SocketCore], ReceiveStrategy]:
    """The receive strategy for a server socket: batched system calls where they apply.

    Args:
        sock: A bound, unconnected UDP socket.
        pktinfo: Whether it replies from each datagram's destination (wildcard binds); such
            sockets receive with ``recvmsg``.
        batched: ``False`` for the portable path; ``True`` for the batched one wherever it
            applies; ``None`` (automatic) as ``True`` unless ``ANYDGRAM_BATCHED_SYSCALLS=0``.
        metadata: Whether it receives metadata: the portable path is then ``recvmsg``.
    """
    if pktinfo:
        return RecvPktinfo
    if batched is None:
        batched = enabled_by_environment()
    if (
        batched
        and available()
        and sock.family in (socket.AF_INET, socket.AF_INET6)
        and sock.type == socket.SOCK_DGRAM
    ):
        return RecvMmsg
    return RecvPktinfo.without_reply_sources if metadata else RecvFrom
