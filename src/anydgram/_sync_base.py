"""What the blocking endpoints share: name resolution, the socket side, parsing, closing.

:class:`~anydgram.SyncDatagramClient` (``_sync.py``) and :class:`~anydgram.SyncDatagramEndpoint`
(``_sync_endpoint.py``) pair one :class:`~anydgram._sync_socket.ThreadedSocketIO` (the socket
side, no event loop) with the same :class:`~anydgram.DatagramProtocol` objects the async
endpoints use, and raise the same errors they do.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Generic, Self, cast

import anyio

from ._client_request import BUSY_ACTION, Match, ThreadedRequests
from ._endpoint_base import Address, check_max_count, parse_batch
from ._errors import DatagramProtocolParseError
from ._metadata import DatagramMetadata, MetadataParser, no_metadata_error
from ._protocol import DatagramProtocol, RecvT, SendT, default_protocol
from ._retry_schedule import AttemptSchedule
from ._socket_os import normalize_address
from ._socket_proxy import SocketProxy
from ._statistics import EndpointStatistics
from ._sync_socket import ThreadedSocketIO
from ._sync_wait import deadline_after

__all__ = ("SyncBase", "getaddrinfo")


def getaddrinfo(host: str, port: int, family: int, flags: int = 0) -> list[tuple[Any, ...]]:
    """:func:`socket.getaddrinfo` for ``SOCK_DGRAM``, with names encoded as anyio encodes them.

    ASCII names go to the resolver as they are (so a malformed one is a
    :exc:`socket.gaierror`, not the :exc:`UnicodeError` of the stdlib's idna codec); others
    are IDNA-encoded first.

    Raises:
        socket.gaierror: The name does not resolve, or cannot be encoded.
    """
    try:
        encoded = host.encode("ascii")
    except UnicodeEncodeError:
        try:
            encoded = host.encode("idna")
        except UnicodeError as exc:
            raise socket.gaierror(socket.EAI_NONAME, f"invalid host name {host!r}") from exc
    return socket.getaddrinfo(encoded, port, family, socket.SOCK_DGRAM, 0, flags)


class SyncBase(Generic[SendT, RecvT]):
    """What blocking clients and endpoints share: the socket, the protocol, counters, closing."""

    __slots__ = ("_io", "_parse_errors", "_parse_lock", "_protocol", "_requests")

    _io: ThreadedSocketIO
    _protocol: DatagramProtocol[SendT, RecvT]
    _requests: ThreadedRequests[RecvT]

    def _setup(
        self,
        sock: socket.socket,
        protocol: DatagramProtocol[Any, Any] | None,
        *,
        connected: bool,
        metadata: bool = False,
    ) -> None:
        proto: DatagramProtocol[Any, Any] = default_protocol() if protocol is None else protocol
        self._protocol = proto
        self._io = ThreadedSocketIO(
            sock, max_datagram_size=proto.max_datagram_size, connected=connected, metadata=metadata
        )
        self._parse_errors = 0
        self._parse_lock = threading.Lock()
        self._requests = ThreadedRequests(self._io, self._parse, keyed=not connected)

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
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._io.closed

    @property
    def local_address(self) -> Address:
        """The address this endpoint is bound to.

        Raises:
            anyio.ClosedResourceError: The endpoint is closed.
        """
        sock = self._io.sock
        try:
            name = sock.getsockname()
        except OSError:
            if self._io.closed:
                raise anyio.ClosedResourceError from None
            raise
        if self._io.closed:
            raise anyio.ClosedResourceError
        return cast(Address, normalize_address(sock.family, name))

    def statistics(self) -> EndpointStatistics:
        """A snapshot of the counters; ``kernel_drops`` and buffer sizes are read now."""
        io = self._io
        recv_buffer_size, send_buffer_size = io.buffer_sizes()
        return EndpointStatistics(
            **io.counters(),
            parse_errors=self._parse_errors,
            unmatched_replies=self._requests.unmatched,
            kernel_drops=io.kernel_drops(),
            recv_buffer_size=recv_buffer_size,
            send_buffer_size=send_buffer_size,
        )

    def close(self) -> None:
        """Close the endpoint; may be called from any thread.

        Threads blocked in a receive, a send or a :meth:`request` get
        :exc:`anyio.ClosedResourceError` at once (not after a polling interval). When this
        returns those threads have left the socket and it is closed, so its port is free
        again. Closing twice is fine.
        """
        self._io.close()
        self._requests.wake_all()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _parse(self, data: bytes, address: Address) -> RecvT:
        try:
            return self._protocol.build_packet_from_datagram(data)
        except DatagramProtocolParseError as exc:
            self._parse_failed(exc, address)
            raise

    def _parse_failed(self, exc: DatagramProtocolParseError, address: Address) -> None:
        with self._parse_lock:
            self._parse_errors += 1
        exc.address = address

    def _recv_packets(self, max_count: int, timeout: float | None) -> list[tuple[RecvT, Address]]:
        check_max_count(max_count)
        deadline = deadline_after(timeout)
        requests = self._requests
        batch = self._io.receive_many(max_count, deadline, requests)
        if requests.pending:  # a request() started while this call waited
            for data, address, _, _ in batch:
                requests.deliver(data, address)
            raise anyio.BusyResourceError(BUSY_ACTION)
        io = self._io
        return parse_batch(
            self._protocol, batch, io.max_datagram_size, io.push_back, self._parse_failed
        )

    def _recv_datagram(self, deadline: float | None) -> tuple[bytes, Address]:
        requests = self._requests
        data, address = self._io.receive_one(deadline, requests)
        if requests.pending:  # a request() started while this call waited
            requests.deliver(data, address)
            raise anyio.BusyResourceError(BUSY_ACTION)
        return data, address

    def _metadata_parser(self) -> MetadataParser:
        parser = self._io.metadata
        if parser is None:
            raise no_metadata_error(self, self._io.sock.family)
        return parser

    def _recv_with_metadata(self, timeout: float | None) -> tuple[RecvT, Address, DatagramMetadata]:
        parser = self._metadata_parser()
        requests = self._requests
        data, address, _, ancillary = self._io.receive_many(1, deadline_after(timeout), requests)[0]
        if requests.pending:  # a request() started while this call waited
            requests.deliver(data, address)
            raise anyio.BusyResourceError(BUSY_ACTION)
        return self._parse(data, address), address, parser.parse(ancillary)

    def _iter_datagrams(
        self, deadline: float | None, budgeted: bool
    ) -> Iterator[tuple[bytes, Address]]:
        while True:
            try:
                item = self._recv_datagram(deadline)
            except TimeoutError:
                return
            yield item
            # The budget bounds the iteration even when datagrams keep coming; a budget of 0
            # means "what is already waiting", so it ends only when nothing is.
            if budgeted and deadline is not None and time.monotonic() >= deadline:
                return

    def _send(self, packet: SendT, address: Address, timeout: float | None) -> None:
        deadline = deadline_after(timeout)
        self._io.send(self._protocol.make_datagram(packet), address, deadline)

    def _send_datagrams(
        self, datagrams: list[bytes], addresses: list[Any] | None, timeout: float | None
    ) -> None:
        self._io.send_many(datagrams, addresses, deadline_after(timeout))

    def _request(
        self,
        packet: SendT,
        address: Address,
        key: Any,
        timeouts: AttemptSchedule,
        match: Match | None,
    ) -> RecvT:
        datagram = self._protocol.make_datagram(packet)
        return self._requests.request(datagram, address, key, timeouts, match)
