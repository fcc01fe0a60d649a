"""The memory network's socket: a stand-in for a UDP socket, under the same I/O core.

It offers the calls :class:`~anydgram._io_core.SocketCore` makes on a socket (``recvfrom``,
``sendto``, ``recvmsg`` with ``IP_PKTINFO`` and, for metadata, ``SO_TIMESTAMPNS``,
``SO_MEMINFO``, ...), answering them from a queue
the network fills, and the waits an async socket needs (an event instead of a descriptor). So
counters, errors, oversize handling, closing and replies from the right address are the real
code's, and nothing above the core knows which network it runs on.
"""

from __future__ import annotations

import errno
import math
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, overload

import anyio
import anyio.lowlevel

from .._metadata import SO_TIMESTAMPNS
from .._pktinfo import IP_PKTINFO, IPV6_PKTINFO
from .._socket_os import SK_MEMINFO_DROPS, SO_MEMINFO

if TYPE_CHECKING:
    from ._memory_network import MemoryNetwork

__all__ = ("LOOPBACK", "WILDCARD", "MemorySocket")

#: The largest UDP payload over IPv4 and over IPv6 (the memory network's "kernel" limit).
_MAX_PAYLOAD: Final[dict[int, int]] = {socket.AF_INET: 65507, socket.AF_INET6: 65527}
WILDCARD: Final[dict[int, str]] = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}
LOOPBACK: Final[dict[int, str]] = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
_TIMESPEC: Final = struct.Struct("@qq")

#: ``(delivery time or 0.0, datagram, sender, destination, arrival on the time.time() clock)``.
_Queued = tuple[float, bytes, tuple[str, int], tuple[str, int], float]


class MemorySocket:
    """One bound address on a :class:`MemoryNetwork`, with its receive queue."""

    __slots__ = (
        "_closed",
        "_network",
        "_queue",
        "_queue_size",
        "_readable",
        "_route",
        "drops",
        "family",
        "local",
        "peer",
        "proto",
        "timestamps",
        "type",
    )

    def __init__(
        self,
        network: MemoryNetwork,
        route: Callable[[Any], tuple[str, int] | None],
        family: int,
        local: tuple[str, int],
        peer: tuple[str, int] | None,
        queue_size: int,
    ) -> None:
        self._network = network
        self._route = route  # an address as given to sendto() -> (host, port), None if not IP
        self.family = socket.AddressFamily(family)
        self.type = socket.SOCK_DGRAM
        self.proto = 0
        self.local = local
        self.peer = peer
        self._queue: deque[_Queued] = deque()
        self._queue_size = queue_size
        self._readable: anyio.Event | None = None
        self._closed = False
        #: Datagrams dropped because the queue was full (the "kernel" drops).
        self.drops = 0
        #: Whether ``recvmsg`` reports arrival times (``SO_TIMESTAMPNS``), for an endpoint
        #: opened with ``receive_metadata=True``.
        self.timestamps = False

    def __repr__(self) -> str:
        return f"<MemorySocket {self.local!r}>"

    @property
    def closed(self) -> bool:
        """Whether the socket was closed."""
        return self._closed

    # -- what the network calls ----------------------------------------------------------------

    def enqueue(
        self, deliver_at: float, data: bytes, sender: tuple[str, int], destination: Any, index: int
    ) -> bool:
        """Queue a datagram ``index`` places from the end; ``False`` if the queue is full."""
        queue = self._queue
        if len(queue) >= self._queue_size:
            self.drops += 1
            return False
        arrival = time.time()
        if deliver_at:  # a delayed datagram arrives when its delivery time comes
            arrival += deliver_at - anyio.current_time()
        item = (deliver_at, data, sender, destination, arrival)
        if index:
            queue.insert(len(queue) - index, item)
        else:
            queue.append(item)
        self._wake()
        return True

    def queued(self) -> int:
        """How many datagrams wait in the queue, delivery time come or not."""
        return len(self._queue)

    def _wake(self) -> None:
        event = self._readable
        if event is not None:
            self._readable = None
            event.set()

    # -- the socket calls the core makes -------------------------------------------------------

    def fileno(self) -> int:
        return -1

    def setblocking(self, flag: bool, /) -> None:
        pass  # it never blocks

    def getsockname(self) -> tuple[str, int]:
        return self.local

    def getpeername(self) -> tuple[str, int]:
        if self.peer is None:
            raise OSError(errno.ENOTCONN, "not connected")
        return self.peer

    @overload
    def getsockopt(self, level: int, option: int, /) -> int: ...
    @overload
    def getsockopt(self, level: int, option: int, buflen: int, /) -> bytes: ...
    def getsockopt(self, level: int, option: int, buflen: int = 0, /) -> int | bytes:
        if level == socket.SOL_SOCKET and option == SO_MEMINFO and buflen:
            words = [0] * (buflen // 4)
            words[SK_MEMINFO_DROPS] = self.drops
            return struct.pack(f"{len(words)}I", *words)
        if level == socket.SOL_SOCKET and option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            return 0  # no kernel buffers here
        raise OSError(errno.ENOPROTOOPT, "a memory endpoint has no socket options")

    def setsockopt(self, level: int, option: int, value: int | bytes, /) -> None:
        raise OSError(errno.ENOPROTOOPT, "a memory endpoint has no socket options")

    def _take(self, bufsize: int, *, any_time: bool = False) -> _Queued:
        if self._closed:
            raise OSError(errno.EBADF, "closed")
        queue = self._queue
        if queue and (any_time or not queue[0][0] or queue[0][0] <= anyio.current_time()):
            deliver_at, data, sender, destination, arrival = queue.popleft()
            return deliver_at, data[:bufsize], sender, destination, arrival
        raise BlockingIOError(errno.EAGAIN, "nothing to receive")

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        # MSG_DONTWAIT is passed only by the drain at close, where every queued datagram,
        # delivery time come or not, counts as unread.
        return self._take(bufsize, any_time=bool(flags & socket.MSG_DONTWAIT))[1]

    def recvfrom(self, bufsize: int, flags: int = 0, /) -> tuple[bytes, Any]:
        _, data, sender, _, _ = self._take(bufsize)
        return data, sender

    def recvmsg(
        self, bufsize: int, ancbufsize: int = 0, flags: int = 0, /
    ) -> tuple[bytes, list[tuple[int, int, bytes]], int, Any]:
        if flags & socket.MSG_ERRQUEUE:
            raise BlockingIOError(errno.EAGAIN, "no ICMP errors on a memory network")
        _, data, sender, destination, arrival = self._take(bufsize)
        ancillary = _pktinfo(self.family, destination[0])
        if self.timestamps:
            seconds = math.floor(arrival)
            nanoseconds = min(round((arrival - seconds) * 1e9), 999_999_999)
            ancillary.append(
                (socket.SOL_SOCKET, SO_TIMESTAMPNS, _TIMESPEC.pack(seconds, nanoseconds))
            )
        return data, ancillary, 0, sender

    def send(self, data: bytes, flags: int = 0, /) -> int:
        return self.sendto(data, self.peer)

    def sendto(self, data: bytes, address: Any, /) -> int:
        return self._transmit(data, address, None)

    def sendmsg(
        self,
        buffers: Iterable[bytes],
        ancdata: Iterable[tuple[int, int, bytes]] = (),
        flags: int = 0,
        address: Any = None,
        /,
    ) -> int:
        data = b"".join(buffers)
        source = None
        for level, _, value in ancdata:
            family = socket.AF_INET if level == socket.IPPROTO_IP else socket.AF_INET6
            packed = value[4:8] if family == socket.AF_INET else value[:16]
            host = socket.inet_ntop(family, packed)
            if host != WILDCARD[family]:
                source = (host, self.local[1])
        return self._transmit(data, address, source)

    def _transmit(self, data: bytes, address: Any, source: tuple[str, int] | None) -> int:
        if self._closed:
            raise OSError(errno.EBADF, "closed")
        if len(data) > _MAX_PAYLOAD[self.family]:
            raise OSError(errno.EMSGSIZE, "message too long")
        destination = self._route(address)
        if destination is None:
            raise TypeError(f"expected a (host, port) address with an IP host, got {address!r}")
        self._network._transmit(self, data, destination, source)
        return len(data)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._network._unbind(self)
        self._wake()

    # -- the waits of an async socket ----------------------------------------------------------

    async def wait_readable(self) -> None:
        """Wait until a queued datagram's delivery time has come (or the socket closes)."""
        queue = self._queue
        if queue:
            remaining = queue[0][0] - anyio.current_time() if queue[0][0] else 0.0
            if remaining <= 0:
                await anyio.lowlevel.checkpoint()
                return
        else:
            remaining = math.inf
        event = self._readable
        if event is None:
            event = self._readable = anyio.Event()
        with anyio.move_on_after(remaining):
            await event.wait()

    async def wait_writable(self) -> None:
        """Sends never wait on the memory network."""
        await anyio.lowlevel.checkpoint()

    def notify_closing(self) -> None:
        """Wake the waiting receiver: the socket is closing."""
        self._wake()


def _pktinfo(family: int, host: str) -> list[tuple[int, int, bytes]]:
    """The ``IP_PKTINFO``/``IPV6_PKTINFO`` message a kernel would give for destination ``host``."""
    packed = socket.inet_pton(family, host)
    if family == socket.AF_INET and IP_PKTINFO is not None:
        return [(socket.IPPROTO_IP, IP_PKTINFO, bytes(4) + packed + packed)]
    if family == socket.AF_INET6 and IPV6_PKTINFO is not None:
        return [(socket.IPPROTO_IPV6, IPV6_PKTINFO, packed + bytes(4))]
    return []
