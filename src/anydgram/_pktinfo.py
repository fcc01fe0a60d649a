"""Receiving on a wildcard address, so that replies leave from the address a request was sent to.

A socket bound to ``0.0.0.0`` or ``::`` that replied with plain ``sendto`` would let the kernel
pick the source address by its routing table, and a client that sent to another of the host's
addresses (a second interface, an alias such as 127.0.0.2) would drop the reply as coming from
a stranger. So such sockets receive with ``recvmsg`` and ``IP_PKTINFO``/``IPV6_PKTINFO``, and
each datagram carries the control message that makes its reply leave from its destination.

The same ``recvmsg`` serves sockets that receive metadata (``receive_metadata=True``): each
datagram then keeps its control messages too, parsed only when someone asks
(``_metadata.py``), and a control area the kernel had to cut short (``MSG_CTRUNC``) is counted.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from typing import Final

from ._io_core import Received, ReplySource, SocketCore, Tally, receive_batch
from ._metadata import CONTROL_SIZE, MSG_CTRUNC

__all__ = ("IPV6_PKTINFO", "IPV6_RECVPKTINFO", "IP_PKTINFO", "RecvPktinfo", "enable_pktinfo")

_IS_LINUX: Final = sys.platform.startswith("linux")

# Linux values; Python 3.11's socket module lacks IP_PKTINFO. Elsewhere the pktinfo path is off
# and a wildcard socket replies from whatever address the kernel picks.
IP_PKTINFO: Final[int | None] = getattr(socket, "IP_PKTINFO", 8 if _IS_LINUX else None)
IPV6_RECVPKTINFO: Final[int | None] = getattr(socket, "IPV6_RECVPKTINFO", 49 if _IS_LINUX else None)
IPV6_PKTINFO: Final[int | None] = getattr(socket, "IPV6_PKTINFO", 50 if _IS_LINUX else None)

#: Room for one ``in6_pktinfo`` (the larger of the two) control message.
_ANCILLARY_SIZE: Final = socket.CMSG_SPACE(20)
#: Distinct reply sources remembered per socket (they are the host's own addresses, so few).
_CACHE_SIZE: Final = 256
_ZERO_INDEX: Final = b"\0\0\0\0"
_IPV6_ANY: Final = bytes(16)


def enable_pktinfo(sock: socket.socket) -> bool:
    """Ask the kernel for each datagram's destination address; whether it can give it."""
    if sock.family == socket.AF_INET and IP_PKTINFO is not None:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        return True
    if sock.family == socket.AF_INET6 and IPV6_RECVPKTINFO is not None:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        return True
    return False


class RecvPktinfo:
    """The wildcard receive: ``recvmsg`` with the destination address of every datagram.

    On a socket that receives metadata it keeps each datagram's control messages too; with
    ``reply_sources=False`` (a client, a bound endpoint) it computes no reply source.
    """

    __slots__ = ("_cache", "_control_size", "_core", "_reply_sources")

    def __init__(self, core: SocketCore, *, reply_sources: bool = True) -> None:
        self._core = core
        self._cache: dict[bytes, ReplySource] = {}
        self._reply_sources = reply_sources
        #: The control area per receive: the destination address alone, or all the metadata.
        self._control_size = _ANCILLARY_SIZE if core.metadata is None else CONTROL_SIZE

    @classmethod
    def without_reply_sources(cls, core: SocketCore) -> RecvPktinfo:
        """The metadata receive of a socket that does not reply from the destination."""
        return cls(core, reply_sources=False)

    def receive(self, max_count: int, tally: Tally) -> list[Received]:
        """Take up to ``max_count`` waiting datagrams without blocking (possibly none)."""
        if self._core.metadata is None:
            return receive_batch(self._core, self._take, max_count, tally)
        return receive_batch(self._core, self._counting(tally), max_count, tally)

    def _take(self, bufsize: int) -> Received:
        data, ancdata, _flags, address = self._core.sock.recvmsg(bufsize, _ANCILLARY_SIZE)
        return data, address, self._source(ancdata), None

    def _counting(self, tally: Tally) -> Callable[[int], Received]:
        """A take that keeps the control messages, counting truncated ones in ``tally``."""
        recvmsg = self._core.sock.recvmsg
        size = self._control_size
        sources = self._reply_sources

        def take(bufsize: int) -> Received:
            data, ancdata, flags, address = recvmsg(bufsize, size)
            if flags & MSG_CTRUNC:
                tally.metadata_truncated += 1
            return data, address, self._source(ancdata) if sources else None, ancdata

        return take

    def _source(self, ancdata: list[tuple[int, int, bytes]]) -> ReplySource | None:
        source = None
        for level, kind, cdata in ancdata:
            if (level == socket.IPPROTO_IP and kind == IP_PKTINFO) or (
                level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO
            ):
                source = self._reply_source(level, cdata)
        return source

    def _reply_source(self, level: int, cdata: bytes) -> ReplySource | None:
        """The control message that makes a reply leave from where ``cdata`` says we received."""
        cached = self._cache.get(cdata)
        if cached is not None:
            return cached
        if level == socket.IPPROTO_IP:
            if len(cdata) < 12:
                return None
            # struct in_pktinfo {int ifindex; in_addr spec_dst; in_addr addr}. spec_dst is the
            # local address the datagram arrived on (for a broadcast, the interface's own
            # address), the one a reply may leave from; index 0 leaves the route to the kernel.
            value = _ZERO_INDEX + cdata[4:8] + _ZERO_INDEX
            option = IP_PKTINFO
        else:
            if len(cdata) < 20:
                return None
            # struct in6_pktinfo {in6_addr addr; unsigned int ifindex}. A multicast destination
            # is no source: let the kernel pick one on that interface. Link-local and multicast
            # replies need the interface index; other addresses are routed normally.
            address, index = cdata[:16], cdata[16:20]
            if address[0] == 0xFF:
                address = _IPV6_ANY
            elif not (address[0] == 0xFE and address[1] & 0xC0 == 0x80):
                index = _ZERO_INDEX
            value = address + index
            option = IPV6_PKTINFO
        assert option is not None
        source = [(level, option, value)]
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[cdata] = source
        return source
