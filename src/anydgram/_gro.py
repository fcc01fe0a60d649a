"""UDP GRO on Linux: one receive takes a train of datagrams the kernel kept together.

With the ``UDP_GRO`` socket option the kernel may hand a socket several datagrams from one
sender as one buffer (the segments of a GSO send, or datagrams its GRO engine merged), with a
control message giving the segment size. :class:`RecvGro` receives such buffers and cuts each
back into the datagrams it was made of, so users and counters see exactly the datagrams that
were sent. Segments a call has no room for wait in the strategy, in front of the socket's next
receive (counted once).

Once a socket has ``UDP_GRO`` every receive on it must split, so the strategy replaces all of
the socket's receives (``recv_packet`` included), not only ``recv_packets``. On a socket that
receives metadata, every datagram cut out of one buffer shares that buffer's control messages
(the kernel coalesces only datagrams that agree on them).
"""

from __future__ import annotations

import socket
from typing import Any, Final

import anyio

from ._compiled import speedups
from ._io_core import MAX_BATCH, Received, SocketCore, Tally
from ._metadata import MSG_CTRUNC
from ._socket_os import SOL_UDP, UDP_GRO, segment_size

__all__ = ("SOL_UDP", "UDP_GRO", "RecvGro", "enable_gro", "split_segments")

#: Room for the control messages of one receive: the UDP_GRO segment size (a cmsghdr and an
#: int, 24 bytes on 64-bit Linux), the metadata's when asked for (about 120 bytes), and
#: whatever options a user set on the socket besides. One receive takes up to 64 KiB of
#: datagrams, so a generous area costs next to nothing, and without the segment size a
#: coalesced buffer could not be cut back into its datagrams.
GRO_CONTROL_SIZE: Final = 1024
#: The most one coalesced buffer holds: the IP packet's 64 KiB.
_GRO_BUFFER: Final = 1 << 16


def enable_gro(core: SocketCore) -> bool:
    """Ask the kernel for ``UDP_GRO`` on ``core``'s socket; whether it agreed."""
    if core.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        core.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def split_segments(data: bytes, size: int, tail: tuple[Any, ...]) -> list[Received]:
    """``data`` cut into ``size``-byte datagrams (the last may be shorter), each ``tail`` after it.

    The pure-Python reference of the compiled ``_speedups.split_segments``.
    """
    # Concatenation, not (segment, *tail): measured faster.
    return [(data[i : i + size],) + tail for i in range(0, len(data), size)]  # noqa: RUF005


_split: Final = split_segments if speedups is None else speedups.split_segments


class RecvGro:
    """The receive strategy of a socket with ``UDP_GRO``: coalesced buffers split.

    One ``recvmsg`` per buffer: a buffer holds up to 64 KiB of datagrams from one sender, so the
    system calls are few when the kernel coalesces, and a plain ``recvmsg`` per datagram when it
    does not. (Measured at 1,200 bytes: cheaper per datagram than ``recvmmsg`` through
    :mod:`ctypes`, whose slots cost a copy more.)
    """

    __slots__ = ("_core", "_metadata", "_rest")

    def __init__(self, core: SocketCore) -> None:
        self._core = core
        self._metadata = core.metadata is not None
        #: Datagrams cut out of a buffer that the last call had no room for (counted); every
        #: receive takes them first, so they never wait for the socket to be readable.
        self._rest: list[Received] = []

    def receive(self, max_count: int, tally: Tally) -> list[Received]:
        """Take up to ``max_count`` waiting datagrams without blocking (possibly none)."""
        core = self._core
        if core.closed:
            raise anyio.ClosedResourceError
        batch = self._rest
        if len(batch) >= max_count:
            self._rest = batch[max_count:]
            del batch[max_count:]
            return batch
        self._rest = []
        recvmsg = core.sock.recvmsg
        limit = core.max_datagram_size
        control_size = GRO_CONTROL_SIZE
        metadata = self._metadata
        skipped = 0
        while len(batch) < max_count and skipped < MAX_BATCH:
            try:
                data, ancillary, flags, address = recvmsg(_GRO_BUFFER, control_size)
            except BlockingIOError:
                break
            except OSError as exc:
                core.receive_failed(exc, tally)  # raises unless a (counted) ICMP error
                skipped += 1
                continue
            length = len(data)
            size = segment_size(ancillary) if ancillary else 0
            kept = ancillary if metadata else None
            truncated = metadata and flags & MSG_CTRUNC
            if size <= 0 or size >= length:  # one datagram, not coalesced
                if length > limit:
                    tally.oversize += 1
                    skipped += 1
                    continue
                if truncated:
                    tally.metadata_truncated += 1
                batch.append((data, address, None, kept))
                tally.datagrams_received += 1
                tally.bytes_received += length
                continue
            count = (length + size - 1) // size
            if size > limit:
                # Every full segment is oversize; a shorter last one may still be within it.
                last = length - (count - 1) * size
                if last > limit:
                    tally.oversize += count
                    skipped += 1
                    continue
                tally.oversize += count - 1
                if truncated:
                    tally.metadata_truncated += 1
                batch.append((data[length - last :], address, None, kept))
                tally.datagrams_received += 1
                tally.bytes_received += last
                continue
            # Every segment but the last is ``size`` long; the last may be shorter.
            batch += _split(data, size, (address, None, kept))
            if truncated:  # every datagram of the buffer has the truncated metadata
                tally.metadata_truncated += count
            tally.datagrams_received += count
            tally.bytes_received += length
        if len(batch) > max_count:  # a buffer held more than this call takes
            self._rest = batch[max_count:]
            del batch[max_count:]
        return batch
