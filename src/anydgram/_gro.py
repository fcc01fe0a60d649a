"""UDP GRO on Linux: one receive takes a train of datagrams the kernel kept together.

With the ``UDP_GRO`` socket option the kernel may hand a socket several datagrams from one
sender as one buffer (the segments of a GSO send, or datagrams its GRO engine merged), with a
control message giving the segment size. :class:`RecvGro` asks for that, receives with
``recvmmsg`` and a control buffer per slot, and cuts every such buffer back into the datagrams
it was made of, so users and counters see exactly the datagrams that were sent. Segments a call
has no room for are put back in front of the socket's next receive (counted once).

Once a socket has ``UDP_GRO`` every receive on it must split, so the strategy replaces all of
the socket's receives (``recv_packet`` included), not only ``recv_packets``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import sys
from typing import Final

import anyio

from ._batches import SOL_UDP, UDP_GRO
from ._io_core import MAX_BATCH, Received, SocketCore, Tally
from ._mmsg import _RECVMMSG, MMsgHdr, MmsgReceiver, _MsgHdr, decode_sockaddr_untrusted

__all__ = ("RecvGro", "enable_gro")

_MSG_DONTWAIT: Final = 0x40
#: The most one coalesced buffer holds: the IP packet's 64 KiB.
_GRO_SLOT: Final = 1 << 16
#: Room per slot for control messages: a cmsghdr (16 bytes on 64-bit Linux) and an int, twice
#: over for what other options may add.
_CONTROL_SIZE: Final = 64
_WORD: Final = ctypes.sizeof(ctypes.c_size_t)
_CMSG_HEADER: Final = _WORD + 8  # cmsg_len (size_t), cmsg_level (int), cmsg_type (int)
_SOCKADDR_SIZE: Final = 128
_ADDRESS_CACHE_SIZE: Final = 1024


def enable_gro(core: SocketCore) -> bool:
    """Ask the kernel for ``UDP_GRO`` on ``core``'s socket; whether it agreed."""
    if core.family not in (socket.AF_INET, socket.AF_INET6) or _RECVMMSG is None:
        return False
    try:
        core.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def segment_size(control: bytes) -> int:
    """The ``UDP_GRO`` segment size in a received control buffer, 0 if there is none."""
    offset = 0
    end = len(control)
    while offset + _CMSG_HEADER <= end:
        length = int.from_bytes(control[offset : offset + _WORD], sys.byteorder)
        if length < _CMSG_HEADER or offset + length > end:
            break
        level = int.from_bytes(control[offset + _WORD : offset + _WORD + 4], sys.byteorder)
        kind = int.from_bytes(control[offset + _WORD + 4 : offset + _CMSG_HEADER], sys.byteorder)
        if level == SOL_UDP and kind == UDP_GRO and length >= _CMSG_HEADER + 4:
            data = control[offset + _CMSG_HEADER : offset + _CMSG_HEADER + 4]
            return int.from_bytes(data, sys.byteorder, signed=True)
        offset += (length + _WORD - 1) // _WORD * _WORD
    return 0


class _GroReceiver(MmsgReceiver):
    """:class:`MmsgReceiver` with 64 KiB slots and a control buffer per slot."""

    __slots__ = ("_control", "_control_lengths", "_control_view", "_reset_lengths", "buffers")

    def __init__(self, capacity: int, family: int) -> None:
        super().__init__(capacity, _GRO_SLOT, family)
        self._control = (ctypes.c_char * (capacity * _CONTROL_SIZE))()
        base = ctypes.addressof(self._control)
        for i in range(capacity):
            header = self._messages[i].msg_hdr
            header.msg_control = base + i * _CONTROL_SIZE
            header.msg_controllen = _CONTROL_SIZE
        words = ctypes.sizeof(MMsgHdr) // _WORD
        as_words = memoryview(self._messages).cast("B").cast("P")
        # The kernel writes back how much control data each message got: reset before a call.
        first = (MMsgHdr.msg_hdr.offset + _MsgHdr.msg_controllen.offset) // _WORD
        self._control_lengths = as_words[first::words]
        resets = (ctypes.c_size_t * capacity)(*[_CONTROL_SIZE] * capacity)
        self._reset_lengths = memoryview(resets).cast("B").cast("P")
        self._control_view = memoryview(self._control).cast("B")
        #: How many buffers the last call received.
        self.buffers = 0

    def receive_segments(
        self, fd: int, max_count: int, limit: int
    ) -> tuple[list[Received], int, int]:
        """Take waiting buffers, each cut into its datagrams; as :meth:`MmsgReceiver.receive`.

        ``limit`` is the longest datagram delivered; longer ones (whole or segments) are
        counted in the third value and skipped.
        """
        count = max_count if max_count < self._capacity else self._capacity
        self._control_lengths[:count] = self._reset_lengths[:count]
        received: int = _RECVMMSG(fd, self._messages_pointer, count, _MSG_DONTWAIT, None)
        if received <= 0:
            if received == 0:
                return [], 0, 0
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return [], 0, 0
            raise OSError(err, os.strerror(err))
        lengths: list[int] = self._lengths_view[:received].tolist()
        control_lengths: list[int] = self._control_lengths[:received].tolist()
        names = self._names_view[: received * _SOCKADDR_SIZE].tobytes()
        memory = self._buffer_map
        addresses = self._addresses
        namelen = self._namelen
        batch: list[Received] = []
        append = batch.append
        nbytes = oversize = 0
        for i in range(received):
            length = lengths[i]
            offset = self._offsets[i]
            key = names[i * _SOCKADDR_SIZE : i * _SOCKADDR_SIZE + namelen]
            address = addresses.get(key)
            if address is None:
                address = decode_sockaddr_untrusted(key)
                if len(addresses) >= _ADDRESS_CACHE_SIZE:
                    addresses.clear()
                addresses[key] = address
            if length == 0:
                append((b"", address, None))
                continue
            size = 0
            if control_lengths[i]:
                start = i * _CONTROL_SIZE
                size = segment_size(
                    self._control_view[start : start + control_lengths[i]].tobytes()
                )
            if size <= 0 or size >= length:  # one datagram, not coalesced
                if length > limit:
                    oversize += 1
                else:
                    nbytes += length
                    append((memory[offset : offset + length], address, None))
                continue
            # Every segment but the last is ``size`` long; the last may be shorter. Slicing
            # the mmap copies each one straight into its own bytes.
            end = offset + length
            whole = offset + length // size * size
            if size > limit:
                oversize += (length + size - 1) // size
                continue
            nbytes += length
            # One copy of the buffer; slicing bytes is the cheapest copy of each segment.
            data = memory[offset:end]
            batch += [
                (data[start : start + size], address, None)
                for start in range(0, length - size + 1, size)
            ]
            if whole < end:
                append((data[whole - offset :], address, None))
        self.buffers = received
        return batch, nbytes, oversize


class RecvGro:
    """The receive strategy of a socket with ``UDP_GRO``: batches, coalesced buffers split."""

    __slots__ = ("_core", "_per_buffer", "_receiver")

    def __init__(self, core: SocketCore, capacity: int = MAX_BATCH) -> None:
        self._core = core
        self._receiver = _GroReceiver(capacity, core.family)
        #: Datagrams per buffer in the last call: a call asks for as many buffers as should
        #: hold ``max_count`` datagrams, so little is cut out only to wait in the push-back.
        self._per_buffer = 1

    def receive(self, max_count: int, tally: Tally) -> list[Received]:
        """Take up to ``max_count`` waiting datagrams without blocking (possibly none)."""
        core = self._core
        if core.closed:
            raise anyio.ClosedResourceError
        fd = core.sock.fileno()
        skipped = 0
        while True:
            try:
                buffers = -(-max_count // self._per_buffer)
                batch, nbytes, oversize = self._receiver.receive_segments(
                    fd, buffers, core.max_datagram_size
                )
            except OSError as exc:
                core.receive_failed(exc, tally)  # raises unless a (counted) ICMP error
                skipped += 1
                if skipped >= MAX_BATCH:
                    return []
                continue
            tally.oversize += oversize
            skipped += oversize
            if batch:
                self._per_buffer = max(1, len(batch) // self._receiver.buffers)
                tally.datagrams_received += len(batch)
                tally.bytes_received += nbytes
                if len(batch) > max_count:  # a buffer held more than this call takes
                    core.push_back(batch[max_count:])
                    del batch[max_count:]
                return batch
            if not oversize or skipped >= MAX_BATCH:
                return []

    def receive_one(self, tally: Tally) -> Received | None:
        """One waiting datagram, or ``None``."""
        batch = self.receive(1, tally)
        return batch[0] if batch else None
