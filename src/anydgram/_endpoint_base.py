"""What the async endpoints share: the socket side, the protocol, statistics, closing.

:class:`~anydgram.DatagramClient` and :class:`~anydgram.DatagramEndpoint` (in
:mod:`anydgram._endpoint`) each pair one :class:`~anydgram._socket_io.SocketIO` with one
:class:`~anydgram.DatagramProtocol`.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Generic, NoReturn, Self, TypeAlias, TypeVar, cast

import anyio
from anyio import TypedAttributeProvider
from anyio.abc import SocketAttribute

from ._batches import family_limit
from ._client_request import BUSY_ACTION, AsyncRequests, Match
from ._errors import DatagramProtocolParseError, DatagramTooLargeError
from ._io_core import Received
from ._metadata import DatagramMetadata, MetadataParser, no_metadata_error
from ._protocol import DatagramProtocol, RecvT, SendT, default_protocol
from ._retry_schedule import AttemptSchedule
from ._socket_io import SocketIO
from ._socket_os import BoundPath, normalize_address
from ._socket_proxy import SocketProxy
from ._statistics import EndpointStatistics
from .serializers._raw import BytesSerializer

__all__ = (
    "Address",
    "BaseEndpoint",
    "IPAddress",
    "check_datagram_socket",
    "check_max_count",
    "is_connected",
    "make_datagrams",
    "parse_batch",
    "socket_io",
    "split_addressed",
)

#: An IP address as the :mod:`socket` module gives it: ``(host, port)`` or
#: ``(host, port, flowinfo, scope_id)``. Servers only ever see these.
IPAddress: TypeAlias = tuple[str, int] | tuple[str, int, int, int]

#: A peer's address: an :data:`IPAddress`, a ``str`` path for Unix sockets (abstract names
#: start with ``"\0"``), or ``None`` for an unbound Unix peer.
Address: TypeAlias = IPAddress | str | None

_S = TypeVar("_S")
_R = TypeVar("_R")

_IP_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_SUPPORTED_FAMILIES = (*_IP_FAMILIES, socket.AF_UNIX)


def check_datagram_socket(sock: socket.socket) -> None:
    if not isinstance(sock, socket.socket):
        raise TypeError(f"expected a socket.socket, got {type(sock).__name__}")
    if sock.type != socket.SOCK_DGRAM:
        raise ValueError(f"expected a SOCK_DGRAM socket, got {sock.type!r}")
    if sock.family not in _SUPPORTED_FAMILIES:
        raise ValueError(f"unsupported address family {sock.family!r}")
    if sock.fileno() < 0:
        raise ValueError("the socket is closed")


def is_connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def socket_io(
    sock: socket.socket,
    protocol: DatagramProtocol[Any, Any] | None,
    connected: bool,
    unlink_path: BoundPath | None,
    metadata: bool,
) -> tuple[SocketIO, DatagramProtocol[Any, Any]]:
    """An adopted socket's I/O side and its protocol (raw bytes when omitted)."""
    proto = default_protocol() if protocol is None else protocol
    io = SocketIO(
        sock,
        max_datagram_size=proto.max_datagram_size,
        connected=connected,
        unlink_path=unlink_path,
        metadata=metadata,
    )
    return io, proto


def check_max_count(max_count: object) -> int:
    """``recv_packets``' ``max_count``, checked.

    Raises:
        TypeError: Not an int.
        ValueError: Below 1.
    """
    if not isinstance(max_count, int) or isinstance(max_count, bool):
        raise TypeError(f"max_count must be an int, not {type(max_count).__name__}")
    if max_count < 1:
        raise ValueError(f"max_count must be at least 1, got {max_count}")
    return max_count


def make_datagrams(
    protocol: DatagramProtocol[SendT, Any], family: int, packets: Iterable[SendT]
) -> list[bytes]:
    """Serialize every packet of a batch and check its size, before anything is sent.

    Raises:
        DatagramTooLargeError: A datagram is over the protocol's limit or longer than the
            socket's family carries (IPv4: 65,507 bytes; IPv6: 65,527).
    """
    datagrams: list[bytes]
    if type(protocol.serializer) is BytesSerializer and type(protocol) is DatagramProtocol:
        # The raw-bytes protocol: the packets are the datagrams once they are bytes.
        datagrams = list(packets)  # type: ignore[arg-type]
        raw: DatagramProtocol[Any, Any] = protocol
        if {*map(type, datagrams)} - {bytes}:  # a set of the types: checked in C
            datagrams = [raw.make_datagram(packet) for packet in datagrams]
        elif datagrams and max(map(len, datagrams)) > protocol.max_datagram_size:
            raw.make_datagram(max(datagrams, key=len))  # raises DatagramTooLargeError
    else:
        make = protocol.make_datagram
        datagrams = [make(packet) for packet in packets]
    limit = family_limit(family)
    if limit is not None and protocol.max_datagram_size > limit:
        for data in datagrams:
            if len(data) > limit:
                raise DatagramTooLargeError(len(data), limit)
    return datagrams


def split_addressed(
    protocol: DatagramProtocol[SendT, Any],
    family: int,
    packets: Iterable[tuple[SendT, Address]],
) -> tuple[list[bytes], list[Any]]:
    """:func:`make_datagrams` for ``(packet, address)`` pairs; the addresses checked too.

    Raises:
        TypeError: An item is not a ``(packet, address)`` pair, or an address is not a tuple
            (IP) or a ``str``/``bytes`` path (Unix).
        DatagramTooLargeError: As :func:`make_datagrams`.
    """
    items = list(packets)
    addresses: list[Any] = []
    for index, item in enumerate(items):
        if not isinstance(item, tuple) or len(item) != 2:
            raise TypeError(f"item {index} is not a (packet, address) pair: {type(item).__name__}")
        address = item[1]
        expected = (str, bytes) if family == socket.AF_UNIX else tuple
        if not isinstance(address, expected):
            raise TypeError(
                f"item {index}: the address must be a "
                f"{'str path' if family == socket.AF_UNIX else '(host, port) tuple'}, "
                f"not {type(address).__name__}"
            )
        addresses.append(address)
    return make_datagrams(protocol, family, [item[0] for item in items]), addresses


def parse_batch(
    protocol: DatagramProtocol[Any, _R],
    batch: list[Received],
    received_limit: int,
    push_back: Callable[[list[Received]], None],
    failed: Callable[[DatagramProtocolParseError, Address], None],
) -> list[tuple[_R, Address]]:
    """Parse a received batch, stopping before an undecodable datagram.

    The datagrams from the undecodable one on go back in front of the socket's (``push_back``):
    when it is the first, its error is counted (``failed``) and raised now; else the batch
    before it is returned and the next receive meets it again. Nothing is lost, and each parse
    error is counted once. With the raw-bytes protocol, whose parse is the identity, and
    datagrams no longer than its limit (``received_limit``, what the socket delivers at most),
    nothing is parsed.
    """
    if (
        type(protocol.serializer) is BytesSerializer
        and type(protocol) is DatagramProtocol
        and received_limit <= protocol.max_datagram_size
    ):
        return [(data, address) for data, address, _, _ in batch]  # type: ignore[misc]
    build = protocol.build_packet_from_datagram
    packets: list[tuple[_R, Address]] = []
    for index, (data, address, _, _) in enumerate(batch):
        try:
            packet = build(data)
        except DatagramProtocolParseError as exc:
            if packets:
                push_back(batch[index:])
                return packets
            push_back(batch[index + 1 :])
            failed(exc, address)
            raise
        packets.append((packet, address))
    return packets


class BaseEndpoint(TypedAttributeProvider, Generic[SendT, RecvT]):
    """What clients and endpoints share: the socket, the protocol, counters and closing."""

    __slots__ = ("_io", "_parse_errors", "_protocol", "_requests", "_unmatched_replies")

    def __init__(self, io: SocketIO, protocol: DatagramProtocol[SendT, RecvT]) -> None:
        self._io = io
        self._protocol = protocol
        self._parse_errors = 0
        self._unmatched_replies = 0
        #: The pending request() calls; ``None`` while there are none (the receive fast path
        #: checks only this).
        self._requests: AsyncRequests[RecvT] | None = None

    def __repr__(self) -> str:
        state = "closed" if self._io.closed else f"local={self.local_address!r}"
        return f"<{type(self).__name__} {state}>"

    @property
    def protocol(self) -> DatagramProtocol[SendT, RecvT]:
        """The protocol that turns packets into datagrams and back."""
        return self._protocol

    @property
    def socket(self) -> SocketProxy:
        """A view of the underlying socket (options, names, file descriptor; no ``close``)."""
        return SocketProxy(self._io.sock)

    @property
    def local_address(self) -> Address:
        """The address this endpoint is bound to.

        Raises:
            anyio.ClosedResourceError: The endpoint is closed.
        """
        if self._io.closed:
            raise anyio.ClosedResourceError
        return cast(Address, normalize_address(self._io.sock.family, self._io.sock.getsockname()))

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """Typed attributes for :meth:`extra`, from :class:`anyio.abc.SocketAttribute`."""
        sock = self._io.sock
        attributes: dict[Any, Callable[[], Any]] = {
            SocketAttribute.family: lambda: sock.family,
            SocketAttribute.local_address: lambda: self.local_address,
            SocketAttribute.raw_socket: lambda: sock,
        }
        if sock.family in _IP_FAMILIES:
            attributes[SocketAttribute.local_port] = lambda: sock.getsockname()[1]
        peer = self._io.peer
        if peer is not None:
            attributes[SocketAttribute.remote_address] = lambda: peer
            if sock.family in _IP_FAMILIES:
                attributes[SocketAttribute.remote_port] = lambda: peer[1]
        return attributes

    def statistics(self) -> EndpointStatistics:
        """A snapshot of the counters; ``kernel_drops`` and buffer sizes are read now."""
        io = self._io
        recv_buffer_size, send_buffer_size = io.buffer_sizes()
        return EndpointStatistics(
            datagrams_received=io.datagrams_received,
            datagrams_sent=io.datagrams_sent,
            bytes_received=io.bytes_received,
            bytes_sent=io.bytes_sent,
            parse_errors=self._parse_errors,
            oversize=io.oversize,
            send_errors=io.send_errors,
            icmp_errors=io.icmp_errors,
            unmatched_replies=self._unmatched_replies,
            kernel_drops=io.kernel_drops(),
            unread_at_close=io.unread_at_close,
            recv_buffer_size=recv_buffer_size,
            send_buffer_size=send_buffer_size,
            metadata_truncated=io.metadata_truncated,
        )

    def _parse(self, data: bytes, address: Address) -> RecvT:
        try:
            return self._protocol.build_packet_from_datagram(data)
        except DatagramProtocolParseError as exc:
            self._parse_failed(exc, address)
            raise

    def _parse_failed(self, exc: DatagramProtocolParseError, address: Address) -> None:
        self._parse_errors += 1
        exc.address = address

    async def _recv_packets(self, max_count: int) -> list[tuple[RecvT, Address]]:
        check_max_count(max_count)
        if self._requests is not None:
            raise anyio.BusyResourceError(BUSY_ACTION)
        io = self._io
        batch = await io.receive_many(max_count)
        if self._requests is not None:  # a request() started while this call waited
            self._batch_taken_while_busy(batch)
        return parse_batch(
            self._protocol, batch, io.max_datagram_size, io.push_back, self._parse_failed
        )

    def _metadata_parser(self) -> MetadataParser:
        parser = self._io.core.metadata
        if parser is None:
            raise no_metadata_error(self, self._io.sock.family)
        return parser

    async def _receive_with_metadata(self) -> tuple[bytes, Address, DatagramMetadata]:
        parser = self._metadata_parser()
        if self._requests is not None:
            raise anyio.BusyResourceError(BUSY_ACTION)
        data, address, _, ancillary = (await self._io.receive(1))[0]
        if self._requests is not None:  # a request() started while this call waited
            self._taken_while_busy(data, address)
        return data, address, parser.parse(ancillary)

    def _count_unmatched(self, count: int) -> None:
        self._unmatched_replies += count

    def _taken_while_busy(self, data: bytes, address: Address) -> NoReturn:
        # A receive that was already waiting when a request() started got a datagram: it
        # belongs to the pending calls.
        assert self._requests is not None
        self._requests.deliver_foreign(data, address)
        raise anyio.BusyResourceError(BUSY_ACTION)

    def _batch_taken_while_busy(self, batch: list[Received]) -> NoReturn:
        assert self._requests is not None
        for data, address, _, _ in batch[1:]:
            self._requests.deliver_foreign(data, address)
        self._taken_while_busy(batch[0][0], batch[0][1])

    async def _request(
        self,
        packet: SendT,
        address: Address,
        key: Any,
        timeouts: AttemptSchedule,
        match: Match | None,
    ) -> RecvT:
        datagram = self._protocol.make_datagram(packet)
        requests = self._requests
        if requests is None:
            if self._io.closed:
                raise anyio.ClosedResourceError
            requests = self._requests = AsyncRequests(
                self._io, self._parse, self._count_unmatched, keyed=key is not None
            )
        try:
            return await requests.request(datagram, address, key, timeouts, match)
        finally:
            if not requests.table and self._requests is requests:
                self._requests = None

    async def _iter_datagrams(
        self, timeout: float | None
    ) -> AsyncGenerator[tuple[bytes, Address], None]:
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
        io = self._io
        deadline = None if timeout is None else anyio.current_time() + timeout
        woke = False
        while True:
            await io.fairness_checkpoint()
            if self._requests is not None:
                raise anyio.BusyResourceError(BUSY_ACTION)
            batch = io.receive_nowait(1)
            if batch:
                woke = False
                data, address, _, _ = batch[0]
                if self._requests is not None:  # a request() started while this one waited
                    self._taken_while_busy(data, address)
                yield data, address
                # The budget bounds the iteration even when datagrams keep coming; a budget of
                # 0 means "what is already waiting", so it ends only when nothing is.
                if timeout and anyio.current_time() >= deadline:  # type: ignore[operator]
                    return
                continue
            if deadline is None:
                await io.wait_readable(after_wakeup=woke)
            else:
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    return
                with anyio.move_on_after(remaining):
                    await io.wait_readable(after_wakeup=woke)
            woke = True

    async def aclose(self) -> None:
        """Close the endpoint.

        Tasks blocked in a receive or send get :exc:`anyio.ClosedResourceError` at once, and the
        socket is closed (its port or path free again) when this returns. Closing twice is fine.
        Pending :meth:`request` calls raise :exc:`anyio.ClosedResourceError` too.
        """
        await self._io.aclose()
        if self._requests is not None:
            self._requests.wake_all()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
