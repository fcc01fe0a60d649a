"""An in-memory datagram network: endpoints, clients and servers without sockets or ports.

Every endpoint on a :class:`MemoryNetwork` is a real :class:`~anydgram.DatagramEndpoint` or
:class:`~anydgram.DatagramClient` over a real :class:`~anydgram._socket_io.SocketIO`; only the
socket under it is a :class:`~anydgram.testing._memory_socket.MemorySocket`, so counters, parse
errors, oversize handling, closing and ``request()`` behave exactly as over a socket, and so
does ``DatagramServer(network=...)``.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast, overload

import anyio
import anyio.lowlevel

from .._endpoint import DatagramClient, DatagramEndpoint
from .._pktinfo import RecvPktinfo
from .._protocol import DatagramProtocol, default_protocol
from .._socket_io import SocketIO
from ._memory_socket import LOOPBACK, WILDCARD, MemorySocket

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ("MemoryNetwork", "NetworkStatistics")

_S = TypeVar("_S")
_R = TypeVar("_R")

#: Virtual ports handed out for port 0, as Linux's default ephemeral range.
_EPHEMERAL_FIRST: Final = 32768
_EPHEMERAL_LAST: Final = 60999


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
        self._bound: dict[tuple[str, int], MemorySocket] = {}
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
        self, host: str, port: int = 0, *, protocol: None = None, receive_metadata: bool = False
    ) -> DatagramEndpoint[bytes, bytes]: ...
    @overload
    async def open_udp_endpoint(
        self,
        host: str,
        port: int = 0,
        *,
        protocol: DatagramProtocol[_S, _R],
        receive_metadata: bool = False,
    ) -> DatagramEndpoint[_S, _R]: ...
    async def open_udp_endpoint(
        self,
        host: str,
        port: int = 0,
        *,
        protocol: DatagramProtocol[Any, Any] | None = None,
        receive_metadata: bool = False,
    ) -> DatagramEndpoint[Any, Any]:
        """Bind an unconnected endpoint to ``(host, port)`` on this network.

        With ``receive_metadata`` it reports each datagram's arrival time and destination
        (``timestamp`` and ``local_address``; a memory network has no TTL or TOS: ``None``).

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: ``host`` is not an IP address literal, or ``port`` is out of range.
            OSError: ``EADDRINUSE``: the address is taken.
        """
        proto = default_protocol() if protocol is None else protocol
        io = self._bind(host, port, None, proto.max_datagram_size, receive_metadata)
        await anyio.lowlevel.checkpoint()
        return DatagramEndpoint(io, proto)

    @overload
    async def connect_udp(
        self, host: str, port: int, *, protocol: None = None, receive_metadata: bool = False
    ) -> DatagramClient[bytes, bytes]: ...
    @overload
    async def connect_udp(
        self,
        host: str,
        port: int,
        *,
        protocol: DatagramProtocol[_S, _R],
        receive_metadata: bool = False,
    ) -> DatagramClient[_S, _R]: ...
    async def connect_udp(
        self,
        host: str,
        port: int,
        *,
        protocol: DatagramProtocol[Any, Any] | None = None,
        receive_metadata: bool = False,
    ) -> DatagramClient[Any, Any]:
        """A client connected to ``(host, port)``, bound to a free port on the loopback address.

        Like a connected UDP socket it receives only from its peer. Nothing needs to listen
        at ``(host, port)``: datagrams to a missing peer are lost (``unroutable``), with no
        ``ConnectionRefusedError``. ``receive_metadata`` as for :meth:`open_udp_endpoint`.

        Raises:
            TypeError: An argument has the wrong type.
            ValueError: ``host`` is not an IP address literal, or ``port`` is out of range
                (or 0).
        """
        family, peer_host = _check_host(host)
        if _check_port(port) == 0:
            raise ValueError("cannot connect to port 0")
        proto = default_protocol() if protocol is None else protocol
        io = self._bind(
            LOOPBACK[family], 0, (peer_host, port), proto.max_datagram_size, receive_metadata
        )
        await anyio.lowlevel.checkpoint()
        return DatagramClient(io, proto)

    def open_server_transports(
        self,
        hosts: Sequence[str] | None,
        port: int,
        max_datagram_size: int,
        *,
        receive_metadata: bool = False,
    ) -> list[SocketIO]:
        """The server's sockets: one per host (both wildcards for ``None``), on one port.

        The seam ``DatagramServer(network=...)`` binds through, not for direct use.

        :meta private:
        """
        names = list(WILDCARD.values()) if hosts is None else list(hosts)
        opened: list[SocketIO] = []
        try:
            for name in names:
                io = self._bind(name, port, None, max_datagram_size, receive_metadata)
                opened.append(io)
                port = io.local_address[1]
        except BaseException:
            for io in opened:
                io.close_now()
            raise
        return opened

    def _bind(
        self,
        host: str,
        port: int,
        peer: tuple[str, int] | None,
        max_datagram_size: int,
        receive_metadata: bool = False,
    ) -> SocketIO:
        family, name = _check_host(host)
        port = _check_port(port)
        if port == 0:
            port = self._free_port(name)
        elif (name, port) in self._bound:
            raise OSError(errno.EADDRINUSE, f"address already in use: {(name, port)!r}")
        sock = MemorySocket(self, _address_key, family, (name, port), peer, self._queue_size)
        sock.timestamps = bool(receive_metadata)
        # A wildcard bind learns each datagram's destination and replies from it, as a real
        # server socket does with IP_PKTINFO.
        wildcard = peer is None and name == WILDCARD[family]
        io = SocketIO(
            sock,
            max_datagram_size=max_datagram_size,
            connected=peer is not None,
            strategy=RecvPktinfo if wildcard else None,
            waits=sock,
            metadata=bool(receive_metadata),
        )
        self._bound[name, port] = sock
        return io

    def _free_port(self, host: str) -> int:
        span = _EPHEMERAL_LAST - _EPHEMERAL_FIRST + 1
        for _ in range(span):
            port = self._next_port
            self._next_port = _EPHEMERAL_FIRST + (port + 1 - _EPHEMERAL_FIRST) % span
            if (host, port) not in self._bound:
                return port
        raise OSError(errno.EADDRINUSE, f"no free virtual port on {host}")

    def _unbind(self, sock: MemorySocket) -> None:
        address = sock.local
        if self._bound.get(address) is sock:
            del self._bound[address]

    # -- delivering ----------------------------------------------------------------------------

    def _route(self, destination: tuple[str, int]) -> MemorySocket | None:
        receiver = self._bound.get(destination)
        if receiver is None:
            family, _ = _check_host(destination[0])
            receiver = self._bound.get((WILDCARD[family], destination[1]))
        return receiver

    def _transmit(
        self,
        sender: MemorySocket,
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
            local: tuple[str, int] = sender.local
            if local[0] == WILDCARD[sender.family]:
                local = (LOOPBACK[sender.family], local[1])
            source = local
        receiver = self._route(destination)
        if (
            receiver is None
            or receiver.closed
            or (receiver.peer is not None and receiver.peer != source)
        ):
            self._unroutable += 1
            return
        deliver_at = anyio.current_time() + self._delay if self._delay else 0.0
        copies = 2 if duplicated else 1
        if duplicated:
            self._duplicated += 1
        for copy in range(copies):
            # The first copy may jump ahead of the datagram queued before it.
            index = 1 if reordered and copy == 0 and receiver.queued() else 0
            if receiver.enqueue(deliver_at, data, source, destination, index):
                self._delivered += 1
                if index:
                    self._reordered += 1
            else:
                self._dropped_full_queue += 1
