"""An in-memory datagram network: endpoints, clients and servers without sockets or ports.

Every endpoint on a :class:`MemoryNetwork` is a real :class:`~anydgram.DatagramEndpoint` or
:class:`~anydgram.DatagramClient` whose socket side is a :class:`_MemorySocketIO` (the same
interface as :class:`~anydgram._socket_io.SocketIO`), so counters, parse errors, oversize
handling, closing and ``request()`` behave exactly as over a socket. The same class is also the
:class:`~anydgram._server_io.ServerTransport` that ``DatagramServer(network=...)`` serves on.

Each sent datagram is decided on once, by the network's seeded :class:`random.Random`, in the
order the sends happen: lost, or delivered once or twice (duplicated), possibly ahead of the
datagram queued before it (reordered). With a delay, a queued datagram is invisible to the
receiver until its delivery time; receivers sleep until then with anyio, so any backend works
and no background task is needed.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import random
import socket
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast, overload

import anyio
import anyio.lowlevel

from .._endpoint import DatagramClient, DatagramEndpoint
from .._errors import DatagramTooLargeError
from .._protocol import DatagramProtocol, default_protocol
from .._server_io import Received
from .._socket_io import SocketIO

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ("MemoryNetwork", "NetworkStatistics")

_S = TypeVar("_S")
_R = TypeVar("_R")

#: The largest UDP payload over IPv4 and over IPv6 (the memory network's "kernel" limit).
_MAX_PAYLOAD: Final[dict[int, int]] = {socket.AF_INET: 65507, socket.AF_INET6: 65527}
#: Virtual ports handed out for port 0, as Linux's default ephemeral range.
_EPHEMERAL_FIRST: Final = 32768
_EPHEMERAL_LAST: Final = 60999
_WILDCARD: Final[dict[int, str]] = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}
_LOOPBACK: Final[dict[int, str]] = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


@dataclass(frozen=True, slots=True)
class NetworkStatistics:
    """What a :class:`MemoryNetwork` has done with the datagrams sent on it.

    Every sent datagram is either ``lost``, ``unroutable`` or delivered; a duplicated one is
    delivered twice. Every delivery is in exactly one of ``delivered`` and
    ``dropped_full_queue``.

    Attributes:
        sent: Datagrams handed to the network.
        delivered: Datagrams put in a receiver's queue (duplicates included).
        lost: Datagrams the network lost on purpose (``loss``).
        duplicated: Datagrams delivered twice (``duplication``); each adds one delivery.
        reordered: Datagrams queued ahead of one sent before them (``reordering``).
        unroutable: Datagrams sent to an address no endpoint is bound to, or to a connected
            client from a peer it is not connected to; dropped silently, as UDP does.
        dropped_full_queue: Deliveries dropped because the receiver's queue was full (also
            in that receiver's ``kernel_drops``).
    """

    sent: int
    delivered: int
    lost: int
    duplicated: int
    reordered: int
    unroutable: int
    dropped_full_queue: int


def _check_probability(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a float, not {type(value).__name__}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
    return float(value)


def _check_host(host: object) -> tuple[int, str]:
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, not {type(host).__name__}")
    try:
        parsed = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"the memory network knows IP address literals only, not {host!r}"
        ) from None
    family = socket.AF_INET if parsed.version == 4 else socket.AF_INET6
    return family, str(parsed)


def _check_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {port}")
    return port


def _address_key(address: object) -> tuple[str, int] | None:
    """``(normalized host, port)`` for an address tuple, or ``None`` if it is no IP address."""
    if not isinstance(address, tuple):
        return None
    items = cast("tuple[object, ...]", address)
    if len(items) not in (2, 4):
        return None
    host, port = items[0], items[1]
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        return None


class _MemorySocket:
    """The ``sock`` of a memory endpoint: names and family, no file descriptor, no options."""

    __slots__ = ("family", "local", "peer", "proto", "type")

    def __init__(self, family: int, local: tuple[str, int], peer: tuple[str, int] | None) -> None:
        self.family = socket.AddressFamily(family)
        self.type = socket.SOCK_DGRAM
        self.proto = 0
        self.local = local
        self.peer = peer

    def fileno(self) -> int:
        return -1

    def getsockname(self) -> tuple[str, int]:
        return self.local

    def getpeername(self) -> tuple[str, int]:
        if self.peer is None:
            raise OSError(errno.ENOTCONN, "not connected")
        return self.peer

    def getsockopt(self, level: int, option: int, buflen: int | None = None) -> Any:
        raise OSError(errno.ENOPROTOOPT, "a memory endpoint has no socket options")

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        raise OSError(errno.ENOPROTOOPT, "a memory endpoint has no socket options")


class _MemorySocketIO(SocketIO):
    """The socket side of a memory endpoint, client or server socket (see the module docs)."""

    __slots__ = ("_drops", "_network", "_queue", "_queue_size", "_readable", "_sends")

    def __init__(
        self,
        network: MemoryNetwork,
        sock: _MemorySocket,
        *,
        max_datagram_size: int,
        queue_size: int,
    ) -> None:
        # SocketIO.__init__ would touch a real socket: set the same state without one.
        self._init_state(
            cast("socket.socket", sock),
            family=sock.family,
            connected=sock.peer is not None,
            peer=sock.peer,
            max_datagram_size=max_datagram_size,
            unlink_path=None,
        )
        self._network = network
        #: ``(delivery time or 0.0, datagram, sender, destination)`` items, oldest first.
        self._queue: deque[tuple[float, bytes, tuple[str, int], tuple[str, int]]] = deque()
        self._queue_size = queue_size
        self._readable: anyio.Event | None = None
        self._drops = 0
        self._sends = 0

    # -- what the network calls ----------------------------------------------------------------

    def _enqueue(
        self,
        deliver_at: float,
        data: bytes,
        sender: tuple[str, int],
        destination: tuple[str, int],
        index: int,
    ) -> bool:
        """Queue a datagram ``index`` places from the end; ``False`` if the queue is full."""
        queue = self._queue
        if len(queue) >= self._queue_size:
            self._drops += 1
            return False
        item = (deliver_at, data, sender, destination)
        if index:
            queue.insert(len(queue) - index, item)
        else:
            queue.append(item)
        self._wake()
        return True

    def _wake(self) -> None:
        event = self._readable
        if event is not None:
            self._readable = None
            event.set()

    # -- state ---------------------------------------------------------------------------------

    @property
    def family(self) -> int:
        """The address family of the bound address."""
        return self._family

    @property
    def local_address(self) -> Any:
        """The virtual address this is bound to."""
        return cast("_MemorySocket", self.sock).local

    def kernel_drops(self) -> int:
        """Datagrams dropped because the receive queue was full."""
        return self._drops

    def buffer_sizes(self) -> tuple[int, int]:
        """No kernel buffers here: ``(0, 0)``."""
        return 0, 0

    # -- receiving -----------------------------------------------------------------------------

    def recv_nowait(self) -> tuple[bytes, Any] | None:
        """Take the oldest datagram whose delivery time has come, or ``None``."""
        item = self._take()
        return None if item is None else (item[0], item[1])

    def _take(self) -> Received | None:
        self._check_open()
        queue = self._queue
        if not queue:
            return None
        now = anyio.current_time() if queue[0][0] else 0.0
        while queue and queue[0][0] <= now:
            _, data, sender, destination = queue.popleft()
            if len(data) > self._max_datagram_size:
                self.oversize += 1
                continue
            self.datagrams_received += 1
            self.bytes_received += len(data)
            return data, sender, destination
        return None

    def drain_error_queue(self) -> int:
        """There are no ICMP errors on the memory network."""
        return 0

    async def wait_readable(self, *, after_wakeup: bool = False) -> None:
        """Wait until a queued datagram's delivery time has come (or the endpoint closes)."""
        self._ready_ops = 0
        self._check_open()
        queue = self._queue
        if queue:
            remaining = queue[0][0] - anyio.current_time() if queue[0][0] else 0.0
            if remaining <= 0:
                await anyio.lowlevel.checkpoint()
                self._check_open()
                return
        else:
            remaining = math.inf
        event = self._readable
        if event is None:
            event = self._readable = anyio.Event()
        with anyio.move_on_after(remaining):
            await event.wait()
        self._check_open()

    async def recv_datagrams(self, max_count: int) -> list[Received]:
        """The server's receive: ``(datagram, sender, the address it was sent to)`` triples.

        The third item makes a reply leave from the address the request was sent to, as the
        socket server does with ``IP_PKTINFO`` on a wildcard address.
        """
        await self._fairness_checkpoint()
        while True:
            batch: list[Received] = []
            for _ in range(max_count):
                item = self._take()
                if item is None:
                    break
                batch.append(item)
            if batch:
                return batch
            await self.wait_readable()

    # -- sending -------------------------------------------------------------------------------

    def send_nowait(self, data: bytes, address: Any) -> bool:
        """Hand one datagram to the network; it never blocks."""
        self._check_open()
        if len(data) > _MAX_PAYLOAD[self._family]:
            self.send_errors += 1
            raise DatagramTooLargeError(
                len(data),
                _MAX_PAYLOAD[self._family],
                f"a datagram of {len(data)} bytes does not fit in one UDP datagram",
            )
        destination = _address_key(self._peer if self._connected else address)
        if destination is None:
            self.send_errors += 1
            raise TypeError(f"expected a (host, port) address with an IP host, got {address!r}")
        self._network._transmit(self, data, destination, None)
        self.datagrams_sent += 1
        self.bytes_sent += len(data)
        return True

    def send_datagram_nowait(self, data: bytes, address: Any, local: Any) -> bool:
        """The server's send, from ``local`` (an address from :meth:`recv_datagrams`) if given."""
        if local is None:
            return self.send_nowait(data, address)
        self._check_open()
        destination = _address_key(address)
        if destination is None:
            self.send_errors += 1
            raise TypeError(f"expected a (host, port) address with an IP host, got {address!r}")
        self._network._transmit(self, data, destination, local)
        self.datagrams_sent += 1
        self.bytes_sent += len(data)
        return True

    async def send_datagram(self, data: bytes, address: Any, local: Any) -> None:
        """The server's send, with a checkpoint now and then so repliers let others run."""
        self._sends += 1
        if self._sends >= 16:
            self._sends = 0
            await anyio.lowlevel.checkpoint()
        self.send_datagram_nowait(data, address, local)

    async def wait_writable(self) -> None:
        """Sends never wait on the memory network."""
        self._check_open()
        await anyio.lowlevel.checkpoint()

    # -- closing -------------------------------------------------------------------------------

    def close_now(self) -> None:
        """Close and unbind at once."""
        if self._closed:
            return
        self._closed = True
        # Queued and not read (delayed ones too): the memory network's receive buffer.
        self.unread_at_close += len(self._queue)
        self._queue.clear()
        self._network._unbind(self)
        self._wake()

    async def aclose(self) -> None:
        """Close and unbind; waiting receivers get :exc:`anyio.ClosedResourceError`."""
        self.close_now()
        await anyio.lowlevel.cancel_shielded_checkpoint()


class MemoryNetwork:
    """An in-memory network of UDP-like endpoints, for tests: no sockets, no ports, no kernel.

    Endpoints are bound to ordinary ``(host, port)`` addresses on a virtual network (``host``
    an IP address literal; port 0 picks a free virtual port). What the network does to each
    datagram is decided by a :class:`random.Random` seeded with ``seed``, so a test that sends
    the same datagrams in the same order sees the same losses, duplicates and reorderings.

    Args:
        loss: The probability that a datagram is lost.
        duplication: The probability that a datagram that was not lost is delivered twice.
        reordering: The probability that a datagram is queued ahead of the datagram before it
            (when the receiver still has that one queued).
        delay: Seconds between a send and the moment the receiver can take the datagram.
        seed: The seed of the random decisions.
        queue_size: How many datagrams each endpoint's receive queue holds; more are dropped
            and counted in the receiver's ``kernel_drops``.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: A probability outside [0, 1], a negative delay, or a ``queue_size`` below 1.
    """

    def __init__(
        self,
        *,
        loss: float = 0.0,
        duplication: float = 0.0,
        reordering: float = 0.0,
        delay: float = 0.0,
        seed: int = 0,
        queue_size: int = 256,
    ) -> None:
        self._loss = _check_probability("loss", loss)
        self._duplication = _check_probability("duplication", duplication)
        self._reordering = _check_probability("reordering", reordering)
        if isinstance(delay, bool) or not isinstance(delay, int | float):
            raise TypeError(f"delay must be a float, not {type(delay).__name__}")
        if not 0.0 <= delay < math.inf:
            raise ValueError(f"delay must be a finite number >= 0, got {delay!r}")
        self._delay = float(delay)
        if isinstance(queue_size, bool) or not isinstance(queue_size, int):
            raise TypeError(f"queue_size must be an int, not {type(queue_size).__name__}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self._queue_size = queue_size
        self._random = random.Random(seed)
        self._bound: dict[tuple[str, int], _MemorySocketIO] = {}
        self._next_port = _EPHEMERAL_FIRST
        self._sent = 0
        self._delivered = 0
        self._lost = 0
        self._duplicated = 0
        self._reordered = 0
        self._unroutable = 0
        self._dropped_full_queue = 0

    def __repr__(self) -> str:
        return (
            f"<MemoryNetwork loss={self._loss} duplication={self._duplication} "
            f"reordering={self._reordering} delay={self._delay} endpoints={len(self._bound)}>"
        )

    def statistics(self) -> NetworkStatistics:
        """A snapshot of what the network has done so far."""
        return NetworkStatistics(
            sent=self._sent,
            delivered=self._delivered,
            lost=self._lost,
            duplicated=self._duplicated,
            reordered=self._reordered,
            unroutable=self._unroutable,
            dropped_full_queue=self._dropped_full_queue,
        )

    # -- opening -------------------------------------------------------------------------------

    @overload
    async def open_udp_endpoint(
        self, host: str, port: int = 0, *, protocol: None = None
    ) -> DatagramEndpoint[bytes, bytes]: ...
    @overload
    async def open_udp_endpoint(
        self, host: str, port: int = 0, *, protocol: DatagramProtocol[_S, _R]
    ) -> DatagramEndpoint[_S, _R]: ...
    async def open_udp_endpoint(
        self, host: str, port: int = 0, *, protocol: DatagramProtocol[Any, Any] | None = None
    ) -> DatagramEndpoint[Any, Any]:
        """Bind an unconnected endpoint to ``(host, port)`` on this network.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: ``host`` is not an IP address literal, or ``port`` is out of range.
            OSError: ``EADDRINUSE``: the address is taken.
        """
        proto = default_protocol() if protocol is None else protocol
        io = self._bind(host, port, None, proto.max_datagram_size)
        await anyio.lowlevel.checkpoint()
        return DatagramEndpoint(io, proto)

    @overload
    async def connect_udp(
        self, host: str, port: int, *, protocol: None = None
    ) -> DatagramClient[bytes, bytes]: ...
    @overload
    async def connect_udp(
        self, host: str, port: int, *, protocol: DatagramProtocol[_S, _R]
    ) -> DatagramClient[_S, _R]: ...
    async def connect_udp(
        self, host: str, port: int, *, protocol: DatagramProtocol[Any, Any] | None = None
    ) -> DatagramClient[Any, Any]:
        """A client connected to ``(host, port)``, bound to a free port on the loopback address.

        Like a connected UDP socket it receives only from its peer. Nothing needs to listen
        at ``(host, port)``: datagrams to a missing peer are lost (``unroutable``), with no
        ``ConnectionRefusedError``.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: ``host`` is not an IP address literal, or ``port`` is out of range
                (or 0).
        """
        family, peer_host = _check_host(host)
        if _check_port(port) == 0:
            raise ValueError("cannot connect to port 0")
        proto = default_protocol() if protocol is None else protocol
        io = self._bind(_LOOPBACK[family], 0, (peer_host, port), proto.max_datagram_size)
        await anyio.lowlevel.checkpoint()
        return DatagramClient(io, proto)

    def open_server_transports(
        self, hosts: Sequence[str] | None, port: int, max_datagram_size: int
    ) -> list[_MemorySocketIO]:
        """The server's sockets: one per host (both wildcards for ``None``), on one port.

        The seam ``DatagramServer(network=...)`` binds through, not for direct use.

        :meta private:
        """
        names = list(_WILDCARD.values()) if hosts is None else list(hosts)
        opened: list[_MemorySocketIO] = []
        try:
            for name in names:
                io = self._bind(name, port, None, max_datagram_size)
                opened.append(io)
                port = io.local_address[1]
        except BaseException:
            for io in opened:
                io.close_now()
            raise
        return opened

    def _bind(
        self, host: str, port: int, peer: tuple[str, int] | None, max_datagram_size: int
    ) -> _MemorySocketIO:
        family, name = _check_host(host)
        port = _check_port(port)
        if port == 0:
            port = self._free_port(name)
        elif (name, port) in self._bound:
            raise OSError(errno.EADDRINUSE, f"address already in use: {(name, port)!r}")
        io = _MemorySocketIO(
            self,
            _MemorySocket(family, (name, port), peer),
            max_datagram_size=max_datagram_size,
            queue_size=self._queue_size,
        )
        self._bound[name, port] = io
        return io

    def _free_port(self, host: str) -> int:
        span = _EPHEMERAL_LAST - _EPHEMERAL_FIRST + 1
        for _ in range(span):
            port = self._next_port
            self._next_port = _EPHEMERAL_FIRST + (port + 1 - _EPHEMERAL_FIRST) % span
            if (host, port) not in self._bound:
                return port
        raise OSError(errno.EADDRINUSE, f"no free virtual port on {host}")

    def _unbind(self, io: _MemorySocketIO) -> None:
        address = io.local_address
        if self._bound.get(address) is io:
            del self._bound[address]

    # -- delivering ----------------------------------------------------------------------------

    def _route(self, destination: tuple[str, int]) -> _MemorySocketIO | None:
        receiver = self._bound.get(destination)
        if receiver is None:
            family, _ = _check_host(destination[0])
            receiver = self._bound.get((_WILDCARD[family], destination[1]))
        return receiver

    def _transmit(
        self,
        sender: _MemorySocketIO,
        data: bytes,
        destination: tuple[str, int],
        source: tuple[str, int] | None,
    ) -> None:
        """Decide on, and deliver, one sent datagram (called by the sender's ``send_nowait``).

        ``source`` is where it is sent from; by default the sender's address, with a wildcard
        host replaced by the loopback address of its family.
        """
        self._sent += 1
        rng = self._random
        # Draw every decision for every datagram, so one datagram's fate does not shift the
        # random sequence of the next ones.
        lost = rng.random() < self._loss
        duplicated = rng.random() < self._duplication
        reordered = rng.random() < self._reordering
        if lost:
            self._lost += 1
            return
        if source is None:
            local: tuple[str, int] = sender.local_address
            if local[0] == _WILDCARD[sender.family]:
                local = (_LOOPBACK[sender.family], local[1])
            source = local
        receiver = self._route(destination)
        if (
            receiver is None
            or receiver.closed
            or (receiver._peer is not None and receiver._peer != source)
        ):
            self._unroutable += 1
            return
        deliver_at = anyio.current_time() + self._delay if self._delay else 0.0
        copies = 2 if duplicated else 1
        if duplicated:
            self._duplicated += 1
        for copy in range(copies):
            # The first copy may jump ahead of the datagram queued before it.
            index = 1 if reordered and copy == 0 and receiver._queue else 0
            if receiver._enqueue(deliver_at, data, source, destination, index):
                self._delivered += 1
                if index:
                    self._reordered += 1
            else:
                self._dropped_full_queue += 1
