"""Batched replies on Linux: ``sendmmsg`` through :mod:`ctypes`, a send strategy of the core.

A server socket that receives with ``recvmmsg`` answers a whole read batch with one
``sendmmsg``: while its reading task runs the batch's handlers, each reply that can leave
without waiting is copied into a preallocated slot (payload, the peer's ``sockaddr``, its
length), and :meth:`ReplyBatch.flush` hands every slot to the kernel at once. The handler pool
decides when replies may be queued and flushes before its task waits, reads, parks or yields
(see ``_handler_pool.py``); the socket flushes before it closes.

Counters change at the flush, as the kernel takes each datagram: ``datagrams_sent`` and
``bytes_sent`` for those it took, ``send_errors`` or ``icmp_errors`` for those it refused, the
same errors the one-by-one path counts, translated by :meth:`SocketCore.send_failed`.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import anyio

from ._compiled import speedups
from ._io_core import FAMILY_LIMITS, MAX_BATCH, SocketCore, Tally
from ._mmsg import SOCKADDR_IN6_SIZE, SOCKADDR_IN_SIZE, IoVec, MMsgHdr, libc_function

__all__ = ("ReplyBatch", "ReplySlots", "available")

_SENDMMSG: Final[Any] = libc_function("sendmmsg")

#: Encoded peer addresses remembered per socket; a full cache is cleared, as the receiver's.
_NAME_CACHE_SIZE: Final = 1024

#: The room per slot at most: any UDP datagram (IPv6's largest).
MAX_SLOT: Final = 65527


def available() -> bool:
    """Whether libc has ``sendmmsg`` here (Linux)."""
    return _SENDMMSG is not None


def encode_sockaddr(family: int, address: Any) -> bytes | None:
    """The ``sockaddr_in``/``sockaddr_in6`` bytes for ``address``; ``None`` if it is not one."""
    try:
        if family == socket.AF_INET:
            host, port = address
            raw: bytes = (
                socket.AF_INET.to_bytes(2, sys.byteorder)
                + port.to_bytes(2, "big")
                + socket.inet_pton(socket.AF_INET, host)
            )
            return raw + bytes(SOCKADDR_IN_SIZE - len(raw))
        if family == socket.AF_INET6:
            if len(address) < 4:
                # sendto() takes (host, port[, flowinfo]) too; a "%scope" host it resolves itself.
                if len(address) < 2 or "%" in address[0]:
                    return None
                address = (*address, 0, 0)[:4]
            host, port, flowinfo, scope_id = address
            raw6: bytes = (
                socket.AF_INET6.to_bytes(2, sys.byteorder)
                + port.to_bytes(2, "big")
                + flowinfo.to_bytes(4, "big")
                # recvfrom gives a link-local host as "fe80::1%eth0"; the scope is scope_id.
                + socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
                + scope_id.to_bytes(4, sys.byteorder)
            )
            return raw6
    except (TypeError, ValueError, OSError, OverflowError, AttributeError):
        return None
    return None


class ReplySlots:
    """The slot state of a :class:`ReplyBatch` and its :meth:`put` (the pure-Python reference).

    The compiled ``_speedups.ReplySlots`` is the same class in C; :class:`ReplyBatch` derives
    from whichever :mod:`anydgram._compiled` chose. Both keep the same attributes and call
    ``_put_slowly(data, address)`` (the subclass's) for a new peer, a full or blocked batch.
    """

    __slots__ = (
        "_data",
        "_iov_lengths",
        "_name_pointers",
        "_names",
        "_offsets",
        "_peers",
        "_slot_size",
        "blocked",
        "capacity",
        "count",
    )

    def _setup_slots(
        self,
        buffer: ctypes.Array[ctypes.c_char],
        iovecs: ctypes.Array[IoVec],
        messages: ctypes.Array[MMsgHdr],
        slot_size: int,
        capacity: int,
        names: dict[Any, int],
        peers: list[Any],
    ) -> None:
        """Point the slots at their buffers: ``capacity`` slots of ``slot_size`` bytes."""
        self._slot_size: int = slot_size
        self.capacity: int = capacity
        self._names: dict[Any, int] = names
        self._peers: list[Any] = peers
        self.count: int = 0  # slots filled
        self.blocked: bool = False  # the last flush found the kernel's send buffer full
        size = ctypes.sizeof(MMsgHdr)
        # Each iovec is (iov_base, iov_len), two pointer-sized words: every second is a length.
        self._iov_lengths = memoryview(iovecs).cast("B").cast("P")[1::2]
        # Each message's msg_name, its first word: a slot points at its peer's cached sockaddr
        # (one word written per reply, no address copied).
        self._name_pointers = (
            memoryview(messages).cast("B").cast("P")[:: size // ctypes.sizeof(ctypes.c_void_p)]
        )
        self._data = memoryview(buffer).cast("B")
        self._offsets = list(range(0, capacity * slot_size, slot_size))

    def put(self, data: bytes, address: Any) -> bool:
        """Queue ``data`` for ``address``; ``False`` if it must be sent the ordinary way.

        That is while the kernel's buffer is full, for an address that is not an IP peer of
        this socket, or for a datagram longer than a slot.
        """
        i = self.count
        name = self._names.get(address)
        if name is None or i >= self.capacity or self.blocked:
            return self._put_slowly(data, address)
        n = len(data)
        if n > self._slot_size:
            return False
        offset = self._offsets[i]
        self._data[offset : offset + n] = data
        self._name_pointers[i] = name
        self._iov_lengths[i] = n
        self._peers[i] = address
        self.count = i + 1
        return True

    def put_many(
        self, datagrams: list[bytes], addresses: list[Any] | None, start: int, stop: int
    ) -> int:
        """Queue ``datagrams[start:stop]`` while each takes :meth:`put`'s plain path.

        That is: ``bytes`` that fit a slot, to a peer already encoded (``addresses[i]``, or
        the connected peer when ``addresses`` is ``None``), while there is room and the
        kernel's buffer was not found full. It stops at the first one that would need more
        (the caller puts that one with :meth:`put`).

        Returns:
            The index of the first datagram not queued.
        """
        names = self._names
        slot = self.count
        i = start
        capacity = min(self.capacity, len(self._peers))
        try:
            while i < stop and slot < capacity and not self.blocked:
                if i >= len(datagrams) or (addresses is not None and i >= len(addresses)):
                    break
                data = datagrams[i]
                address = None if addresses is None else addresses[i]
                if type(data) is not bytes or len(data) > self._slot_size:
                    break
                name = names.get(address)  # TypeError for an unhashable address, as put()
                if name is None:
                    break
                n = len(data)
                offset = self._offsets[slot]
                self._data[offset : offset + n] = data
                self._name_pointers[slot] = name
                self._iov_lengths[slot] = n
                self._peers[slot] = address
                slot += 1
                i += 1
        finally:
            self.count = slot
        return i

    def _put_slowly(self, data: bytes, address: Any) -> bool:
        raise NotImplementedError


if TYPE_CHECKING:
    _SlotsBase = ReplySlots
else:
    _SlotsBase = ReplySlots if speedups is None else speedups.ReplySlots


class ReplyBatch(_SlotsBase):
    """Up to ``capacity`` replies of one socket, queued in ``sendmmsg`` slots until a flush.

    The same slots carry a user's :meth:`~anydgram.DatagramEndpoint.send_packets` batch
    (``_batches.py``), on an IP socket or on any connected one (whose slots name no peer).

    Args:
        core: The socket: IPv4 or IPv6 UDP, or connected of any family.
        tally: The counters the flush updates (the socket's, or one blocking call's).
        capacity: Slots; a full batch is flushed before the next reply is queued.

    Attributes:
        on_failed: ``(error, peer)``, called for a queued reply the kernel refused (the
            server logs it); the error is counted already.
        tally: The counters the next flush updates.
    """

    __slots__ = (
        "_core",
        "_data_map",
        "_iovecs",
        "_lengths",
        "_messages",
        "_name_buffers",
        "_pointers",
        "_retired",
        "on_failed",
        "start",
        "tally",
    )

    count: int
    blocked: bool

    def __init__(self, core: SocketCore, tally: Tally, capacity: int = MAX_BATCH) -> None:
        if core.family not in (socket.AF_INET, socket.AF_INET6) and not core.connected:
            raise ValueError("sendmmsg slots are for IP sockets and connected ones")
        self._core = core
        self.tally: Tally = tally
        if core.connected:
            namelen = 0  # the kernel sends to the connected peer
        else:
            namelen = SOCKADDR_IN_SIZE if core.family == socket.AF_INET else SOCKADDR_IN6_SIZE
        # A longer datagram is sent the ordinary way: a Unix socket's may be longer, and one
        # longer than an IP family carries is refused there (DatagramTooLargeError).
        room = FAMILY_LIMITS.get(core.family, MAX_SLOT)
        slot = max(min(core.max_datagram_size, room, MAX_SLOT), 1)
        # Anonymous mmap memory: pages are allocated only as replies reach them.
        self._data_map = mmap.mmap(-1, capacity * slot)
        buffer = (ctypes.c_char * (capacity * slot)).from_buffer(self._data_map)
        self._iovecs = (IoVec * capacity)()
        self._messages = (MMsgHdr * capacity)()
        base = ctypes.addressof(buffer)
        for i in range(capacity):
            self._iovecs[i].iov_base = base + i * slot
            header = self._messages[i].msg_hdr
            header.msg_namelen = namelen
            header.msg_iov = ctypes.addressof(self._iovecs) + i * ctypes.sizeof(IoVec)
            header.msg_iovlen = 1
        start = ctypes.addressof(self._messages)
        size = ctypes.sizeof(MMsgHdr)
        self._pointers = [ctypes.c_void_p(start + i * size) for i in range(capacity)]
        # Each iovec is (iov_base, iov_len), two pointer-sized words: every second is a length.
        self._lengths = memoryview(self._iovecs).cast("B").cast("P")[1::2]
        # peer address -> the address of its encoded sockaddr, kept alive in _name_buffers;
        # buffers of a cleared cache are retired until the next flush (slots may point there).
        names: dict[Any, int] = {None: 0} if core.connected else {}
        self._setup_slots(
            buffer, self._iovecs, self._messages, slot, capacity, names, [None] * capacity
        )
        self._name_buffers: list[ctypes.Array[ctypes.c_char]] = []
        self._retired: list[ctypes.Array[ctypes.c_char]] = []
        self.start: int = 0  # slots already sent, after a flush that found the buffer full
        self.on_failed: Callable[[Exception, Any], None] | None = None

    def _put_slowly(self, data: bytes, address: Any) -> bool:
        """:meth:`put` for a new peer or a full batch."""
        if self.blocked or (self.count >= self.capacity and not self.flush()):
            return False
        if address not in self._names:
            raw = encode_sockaddr(self._core.family, address)
            if raw is None:
                return False
            if len(self._names) >= _NAME_CACHE_SIZE:
                self._names.clear()
                self._retired.extend(self._name_buffers)
                self._name_buffers.clear()
            buffer = ctypes.create_string_buffer(raw, len(raw))
            self._name_buffers.append(buffer)
            self._names[address] = ctypes.addressof(buffer)
        return self.put(data, address)

    def flush(self) -> bool:
        """Hand the queued replies to the kernel; ``False`` if its buffer filled first.

        What the kernel took is counted and forgotten; on ``False`` the rest stay queued for
        the next flush. A reply the kernel refuses is counted, reported to ``on_failed`` and
        skipped: the ones after it still go.
        """
        count = self.count
        start = self.start
        if start >= count:
            self.count = self.start = 0
            self.blocked = False
            self._retired.clear()
            return True
        core = self._core
        if core.closed:
            self.discard()
            return True
        tally = self.tally
        lengths = self._lengths
        fd = core.sock.fileno()
        retried = -1
        while start < count:
            sent: int = _SENDMMSG(fd, self._pointers[start], count - start, 0)
            if sent > 0:
                tally.datagrams_sent += sent
                tally.bytes_sent += sum(lengths[start : start + sent])
                start += sent
                continue
            err = ctypes.get_errno() if sent < 0 else errno.EAGAIN
            if err == errno.EINTR:
                continue
            if err in (errno.EAGAIN, errno.EWOULDBLOCK):
                self.start = start
                self.blocked = True
                return False
            # The datagram at ``start`` was refused: the one translation of send errors says
            # whether to try it once more (a stale ICMP error) or to count it and go on.
            try:
                core.send_failed(
                    OSError(err, os.strerror(err)), lengths[start], tally, retried=retried == start
                )
            except anyio.ClosedResourceError:
                self.discard()
                return True
            except (OSError, ValueError) as exc:  # ValueError: DatagramTooLargeError
                callback = self.on_failed
                if callback is not None:
                    callback(exc, self._peers[start])
                start += 1
                continue
            retried = start
        self.count = self.start = 0
        self.blocked = False
        self._retired.clear()
        return True

    def discard(self) -> int:
        """Forget the queued replies (the socket is gone); how many there were."""
        dropped = self.count - self.start
        self.count = self.start = 0
        self.blocked = False
        self._retired.clear()
        return dropped
