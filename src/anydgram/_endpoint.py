"""Async datagram endpoints: :class:`DatagramClient` (connected) and :class:`DatagramEndpoint`.

Both pair one :class:`~anydgram._socket_io.SocketIO` (the socket side) with one
:class:`~anydgram.DatagramProtocol` (packets to bytes and back).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any, TypeVar, cast, overload

import anyio

from ._client_request import BUSY_ACTION, destination_key, key_from_addrinfo
from ._endpoint_base import (
    Address,
    BaseEndpoint,
    IPAddress,
    check_datagram_socket,
    is_connected,
    make_datagrams,
    socket_io,
    split_addressed,
)
from ._metadata import DatagramMetadata
from ._multicast import set_membership
from ._protocol import DatagramProtocol, RecvT, SendT
from ._retry_schedule import attempt_timeouts, check_match
from ._socket_os import BoundPath

__all__ = ("Address", "DatagramClient", "DatagramEndpoint", "IPAddress")

_S = TypeVar("_S")
_R = TypeVar("_R")


class DatagramClient(BaseEndpoint[SendT, RecvT]):
    """A connected datagram socket: sends to, and receives from, one peer.

    Create one with :func:`connect_udp`, :func:`connect_unix_datagram` or
    :meth:`from_socket`. ``SendT`` is what you send, ``RecvT`` what you receive.

    Every method may be called from several tasks at once: sends (and receives) are serialized
    by the kernel, one datagram at a time.
    """

    __slots__ = ()

    @overload
    @classmethod
    def from_socket(
        cls, sock: socket.socket, *, protocol: None = None
    ) -> DatagramClient[bytes, bytes]: ...
    @overload
    @classmethod
    def from_socket(
        cls, sock: socket.socket, *, protocol: DatagramProtocol[_S, _R]
    ) -> DatagramClient[_S, _R]: ...
    @classmethod
    def from_socket(
        cls, sock: socket.socket, *, protocol: DatagramProtocol[Any, Any] | None = None
    ) -> DatagramClient[Any, Any]:
        """Adopt a connected ``SOCK_DGRAM`` socket; the client owns (and closes) it from now on.

        Args:
            sock: A connected UDP (IPv4 or IPv6) or Unix datagram socket. It is made
                non-blocking.
            protocol: Packets to datagrams and back; raw :class:`bytes` when omitted.

        Raises:
            TypeError: ``sock`` is not a socket.
            ValueError: ``sock`` is not a ``SOCK_DGRAM`` socket of a supported family, or is
                closed.
            OSError: ``sock`` is not connected.
        """
        return cls._adopt(sock, protocol)

    @classmethod
    def _adopt(
        cls,
        sock: socket.socket,
        protocol: DatagramProtocol[Any, Any] | None,
        unlink_path: BoundPath | None = None,
        metadata: bool = False,
    ) -> DatagramClient[Any, Any]:
        check_datagram_socket(sock)
        sock.getpeername()  # raises OSError (ENOTCONN) for an unconnected socket
        return DatagramClient(*socket_io(sock, protocol, True, unlink_path, metadata))

    @property
    def remote_address(self) -> Address:
        """The peer's address."""
        return cast(Address, self._io.peer)

    async def send_packet(self, packet: SendT) -> None:
        """Send ``packet`` to the peer as one datagram.

        Waits only while the kernel's send buffer is full. A cancellation leaves the datagram
        either sent whole or not sent.

        Raises:
            DatagramTooLargeError: The datagram exceeds the protocol's ``max_datagram_size``
                (or the kernel's limit); nothing was sent.
            ConnectionRefusedError: An earlier datagram was refused by the peer (ICMP port
                unreachable); the client stays usable. Other ICMP errors raise their
                :exc:`OSError` likewise.
            anyio.ClosedResourceError: The client is closed.
        """
        await self._io.send(self._protocol.make_datagram(packet), None)

    async def recv_packet(self) -> RecvT:
        """Wait for the next datagram from the peer and return it as a packet.

        A cancellation or timeout loses nothing: it happens before a datagram is taken from the
        kernel, or not at all.

        Raises:
            DatagramProtocolParseError: The datagram could not be parsed (``.data`` holds it,
                ``.address`` the sender); the client stays usable.
            ConnectionRefusedError: The peer refused an earlier datagram (ICMP port
                unreachable); the client stays usable.
            anyio.BusyResourceError: A :meth:`request` call is pending; it reads for itself.
            anyio.ClosedResourceError: The client is closed, before or during the wait.
        """
        if self._requests is not None:
            raise anyio.BusyResourceError(BUSY_ACTION)
        data, address = await self._io.receive_one()
        if self._requests is not None:  # a request() started while this call waited
            self._taken_while_busy(data, address)
        return self._parse(data, address)

    async def recv_packet_with_metadata(self) -> tuple[RecvT, DatagramMetadata]:
        """:meth:`recv_packet`, with what the kernel reported about the datagram.

        Errors and cancellation as for :meth:`recv_packet`; a field the platform did not
        give is ``None``.

        Raises:
            ValueError: The client was not opened with ``receive_metadata=True``.
        """
        data, address, metadata = await self._receive_with_metadata()
        return self._parse(data, address), metadata

    async def send_packets(self, packets: Iterable[SendT]) -> None:
        """Send every packet of ``packets`` to the peer, one datagram each, in order.

        Every packet is serialized and its size checked before the first is sent. Then they
        leave in as few system calls as the platform allows: on Linux one ``sendmmsg`` for up
        to 64 datagrams, and one UDP GSO send for a run of equal-size datagrams (the last may
        be shorter). Returns once the kernel has taken every datagram, waiting while its send
        buffer is full.

        A datagram the kernel refuses (an ICMP error about an earlier send, a firewall) is
        counted in the statistics and the others still go; only when it refuses every one
        does the call raise, with the first error. A cancellation leaves each datagram sent
        once or not at all: those handed over are counted in ``datagrams_sent``.

        Raises:
            DatagramTooLargeError: A datagram exceeds the protocol's ``max_datagram_size`` or
                what the socket's family carries; nothing was sent.
            ConnectionRefusedError: The peer refused every datagram (ICMP port unreachable);
                other errors the kernel gave every datagram likewise.
            anyio.ClosedResourceError: The client is closed.
        """
        io = self._io
        await io.send_many(make_datagrams(self._protocol, io.family, packets), None)

    async def recv_packets(self, *, max_count: int = 64) -> list[RecvT]:
        """Wait for a datagram, then return it and every one already waiting, up to ``max_count``.

        On Linux one ``recvmmsg`` takes up to 64 datagrams. The batch stops before an
        undecodable datagram: the packets before it are returned, and the next receive raises
        its :exc:`DatagramProtocolParseError`; nothing is lost. Cancellation as for
        :meth:`recv_packet`.

        Raises:
            TypeError: ``max_count`` is not an int.
            ValueError: ``max_count`` is below 1.
            DatagramProtocolParseError: The first datagram could not be parsed.
            ConnectionRefusedError: The peer refused an earlier datagram.
            anyio.BusyResourceError: A :meth:`request` call is pending.
            anyio.ClosedResourceError: The client is closed, before or during the wait.
        """
        return [packet for packet, _ in await self._recv_packets(max_count)]

    async def iter_received_packets(
        self, *, timeout: float | None = 0
    ) -> AsyncGenerator[RecvT, None]:
        """Yield received packets until ``timeout`` seconds have passed in all.

        ``timeout`` is the budget for the whole iteration, which ends quietly when it is spent:
        ``0`` yields only what is already waiting, ``None`` never ends by itself. A parse error
        is raised from the iteration (ending it); the client stays usable.

        Raises:
            ValueError: ``timeout`` is negative.
            DatagramProtocolParseError: A datagram could not be parsed.
            anyio.BusyResourceError: A :meth:`request` call is pending.
            anyio.ClosedResourceError: The client is closed.
        """
        async for data, address in self._iter_datagrams(timeout):
            yield self._parse(data, address)

    async def request(
        self,
        packet: SendT,
        *,
        timeout: float = 1.0,
        attempts: int = 3,
        backoff: float = 2.0,
        match: Callable[[RecvT], bool] | None = None,
    ) -> RecvT:
        """Send ``packet`` and return the peer's reply, re-sending until one arrives.

        Attempt *i* (from 0) waits ``timeout * backoff**i * U(1, 1.25)`` seconds for a reply
        (``timeout`` is per attempt here, not a budget), then sends ``packet`` again. A reply
        is a received packet for which ``match(reply)`` is true (any packet by default); each
        received datagram goes to the oldest pending call whose ``match`` accepts it, so
        concurrent calls each get their own reply when ``match`` tells them apart (an id in the
        packet, say). Datagrams no pending call claims (late answers, duplicates) are dropped
        and counted in ``unmatched_replies``, as are those already waiting when a call starts
        with no other pending; undecodable ones are counted in ``parse_errors``. While a call
        is pending, :meth:`recv_packet` and :meth:`iter_received_packets` from other tasks
        raise :exc:`anyio.BusyResourceError`.

        A cancellation leaves nothing behind: the call is forgotten, and its reply, should it
        come later, is dropped and counted like any unclaimed datagram.

        Args:
            packet: What to send.
            timeout: The first attempt's wait, in seconds.
            attempts: How many times to send ``packet``.
            backoff: The factor by which each attempt's wait grows, until it reaches an
                hour (a longer ``timeout`` is not grown); each wait is computed when its
                attempt starts.
            match: Decides whether a received packet is this call's reply. If it raises, the
                call raises that error.

        Raises:
            TimeoutError: No reply after the last attempt.
            TypeError: An argument has the wrong type.
            ValueError: ``timeout`` is not positive, ``attempts`` is below 1, ``backoff``
                below 1.
            DatagramTooLargeError: ``packet`` does not fit in one datagram; nothing was sent.
            ConnectionRefusedError: The peer refused a datagram (ICMP port unreachable); the
                client stays usable.
            anyio.ClosedResourceError: The client is closed, before or during the call.
        """
        timeouts = attempt_timeouts(timeout, attempts, backoff)
        check_match(match)
        return await self._request(packet, None, None, timeouts, match)


class DatagramEndpoint(BaseEndpoint[SendT, RecvT]):
    """A bound, unconnected datagram socket that talks to any peer.

    Create one with :func:`open_udp_endpoint`, :func:`open_unix_datagram_endpoint` or
    :meth:`from_socket`. ICMP errors about earlier sends are counted in ``icmp_errors`` (Linux),
    never raised.
    """

    __slots__ = ()

    @overload
    @classmethod
    def from_socket(
        cls, sock: socket.socket, *, protocol: None = None
    ) -> DatagramEndpoint[bytes, bytes]: ...
    @overload
    @classmethod
    def from_socket(
        cls, sock: socket.socket, *, protocol: DatagramProtocol[_S, _R]
    ) -> DatagramEndpoint[_S, _R]: ...
    @classmethod
    def from_socket(
        cls, sock: socket.socket, *, protocol: DatagramProtocol[Any, Any] | None = None
    ) -> DatagramEndpoint[Any, Any]:
        """Adopt an unconnected ``SOCK_DGRAM`` socket; the endpoint owns (and closes) it.

        Args:
            sock: An unconnected UDP (IPv4 or IPv6) or Unix datagram socket, usually bound.
                It is made non-blocking.
            protocol: Packets to datagrams and back; raw :class:`bytes` when omitted.

        Raises:
            TypeError: ``sock`` is not a socket.
            ValueError: ``sock`` is not a ``SOCK_DGRAM`` socket of a supported family, is
                closed, or is connected (use :meth:`DatagramClient.from_socket`).
        """
        return cls._adopt(sock, protocol)

    @classmethod
    def _adopt(
        cls,
        sock: socket.socket,
        protocol: DatagramProtocol[Any, Any] | None,
        unlink_path: BoundPath | None = None,
        metadata: bool = False,
    ) -> DatagramEndpoint[Any, Any]:
        check_datagram_socket(sock)
        if is_connected(sock):
            raise ValueError("the socket is connected: use DatagramClient.from_socket()")
        return DatagramEndpoint(*socket_io(sock, protocol, False, unlink_path, metadata))

    async def send_packet(self, packet: SendT, address: Address) -> None:
        """Send ``packet`` as one datagram to ``address``.

        Waits only while the kernel's send buffer is full (for Unix sockets, also while the
        peer's queue is full, retrying with a bounded backoff). A cancellation leaves the
        datagram either sent whole or not sent.

        Raises:
            DatagramTooLargeError: The datagram exceeds the protocol's ``max_datagram_size``
                (or the kernel's limit); nothing was sent.
            anyio.ClosedResourceError: The endpoint is closed.
            OSError: The kernel refused the send (for instance no route to the host).
        """
        await self._io.send(self._protocol.make_datagram(packet), address)

    async def recv_packet(self) -> tuple[RecvT, Address]:
        """Wait for the next datagram and return it as ``(packet, sender_address)``.

        A cancellation or timeout loses nothing: it happens before a datagram is taken from the
        kernel, or not at all.

        Raises:
            DatagramProtocolParseError: The datagram could not be parsed (``.data`` holds it,
                ``.address`` the sender); the endpoint stays usable.
            anyio.BusyResourceError: A :meth:`request` call is pending; it reads for itself.
            anyio.ClosedResourceError: The endpoint is closed, before or during the wait.
        """
        if self._requests is not None:
            raise anyio.BusyResourceError(BUSY_ACTION)
        data, address = await self._io.receive_one()
        if self._requests is not None:  # a request() started while this call waited
            self._taken_while_busy(data, address)
        return self._parse(data, address), address

    async def recv_packet_with_metadata(self) -> tuple[RecvT, Address, DatagramMetadata]:
        """:meth:`recv_packet`, with what the kernel reported about the datagram.

        ``metadata.local_address`` is the address the datagram was sent to (on a wildcard
        bind, which of the host's addresses the peer used). Errors and cancellation as for
        :meth:`recv_packet`; a field the platform did not give is ``None``.

        Raises:
            ValueError: The endpoint was not opened with ``receive_metadata=True``.
        """
        data, address, metadata = await self._receive_with_metadata()
        return self._parse(data, address), address, metadata

    async def send_packets(self, packets: Iterable[tuple[SendT, Address]]) -> None:
        """Send each ``(packet, address)`` of ``packets`` as one datagram, in order.

        Every packet is serialized and its size checked (and every address's type) before
        the first is sent. Then they leave in as few system calls as the platform allows: on
        Linux one ``sendmmsg`` for up to 64 datagrams, and one UDP GSO send for a run of
        equal-size datagrams to one address (the last may be shorter). Unix sockets send one
        datagram per call. Returns once the kernel has taken every datagram, waiting while its
        send buffer is full.

        A datagram the kernel refuses (no route, a firewall) is counted in the statistics and
        the others still go; only when it refuses every one does the call raise, with the
        first error. A cancellation leaves each datagram sent once or not at all: those handed
        over are counted in ``datagrams_sent``.

        Raises:
            TypeError: An item is not a ``(packet, address)`` pair or an address has the wrong
                type; nothing was sent.
            DatagramTooLargeError: A datagram exceeds the protocol's ``max_datagram_size`` or
                what the socket's family carries; nothing was sent.
            anyio.ClosedResourceError: The endpoint is closed.
            OSError: The kernel refused every datagram (the first refusal).
        """
        io = self._io
        datagrams, addresses = split_addressed(self._protocol, io.family, packets)
        await io.send_many(datagrams, addresses)

    async def recv_packets(self, *, max_count: int = 64) -> list[tuple[RecvT, Address]]:
        """Wait for a datagram, then return it and every one already waiting, up to ``max_count``.

        Each item is ``(packet, sender_address)``. On Linux one ``recvmmsg`` takes up to 64
        datagrams. The batch stops before an undecodable datagram: the packets before it are
        returned, and the next receive raises its :exc:`DatagramProtocolParseError`; nothing
        is lost. Cancellation as for :meth:`recv_packet`.

        Raises:
            TypeError: ``max_count`` is not an int.
            ValueError: ``max_count`` is below 1.
            DatagramProtocolParseError: The first datagram could not be parsed.
            anyio.BusyResourceError: A :meth:`request` call is pending.
            anyio.ClosedResourceError: The endpoint is closed, before or during the wait.
        """
        return await self._recv_packets(max_count)

    async def iter_received_packets(
        self, *, timeout: float | None = 0
    ) -> AsyncGenerator[tuple[RecvT, Address], None]:
        """Yield ``(packet, sender_address)`` pairs until ``timeout`` seconds have passed in all.

        ``timeout`` is the budget for the whole iteration, which ends quietly when it is spent:
        ``0`` yields only what is already waiting, ``None`` never ends by itself. A parse error
        is raised from the iteration (ending it); the endpoint stays usable.

        Raises:
            ValueError: ``timeout`` is negative.
            DatagramProtocolParseError: A datagram could not be parsed.
            anyio.BusyResourceError: A :meth:`request` call is pending.
            anyio.ClosedResourceError: The endpoint is closed.
        """
        async for data, address in self._iter_datagrams(timeout):
            yield self._parse(data, address), address

    async def request(
        self,
        packet: SendT,
        address: Address,
        *,
        timeout: float = 1.0,
        attempts: int = 3,
        backoff: float = 2.0,
        match: Callable[[RecvT], bool] | None = None,
    ) -> RecvT:
        """Send ``packet`` to ``address`` and return its reply, re-sending until one arrives.

        As :meth:`DatagramClient.request`, except that only datagrams from ``address`` are
        considered (a host name is resolved once, before the first send); datagrams from
        other senders are dropped and counted in ``unmatched_replies`` while calls are
        pending. A cancellation leaves nothing behind; a later reply is counted likewise.

        Args:
            packet: What to send.
            address: Where to send it, and whose reply to wait for.
            timeout: The first attempt's wait, in seconds.
            attempts: How many times to send ``packet``.
            backoff: The factor by which each attempt's wait grows, until it reaches an
                hour (a longer ``timeout`` is not grown); each wait is computed when its
                attempt starts.
            match: Decides whether a packet from ``address`` is this call's reply. If it
                raises, the call raises that error.

        Raises:
            TimeoutError: No reply after the last attempt.
            TypeError: An argument has the wrong type.
            ValueError: ``timeout`` is not positive, ``attempts`` is below 1, ``backoff``
                below 1.
            DatagramTooLargeError: ``packet`` does not fit in one datagram; nothing was sent.
            OSError: ``address`` does not resolve, or the kernel refused the send.
            anyio.ClosedResourceError: The endpoint is closed, before or during the call.
        """
        timeouts = attempt_timeouts(timeout, attempts, backoff)
        check_match(match)
        family = self._io.sock.family
        resolved = destination_key(family, address)
        if resolved is None:
            assert isinstance(address, tuple)  # only an IP (host, port) is ever resolved
            infos = await anyio.getaddrinfo(
                address[0], address[1], family=family, type=socket.SOCK_DGRAM
            )
            resolved = key_from_addrinfo(family, infos)
        return await self._request(packet, resolved[0], resolved[1], timeouts, match)

    def join_multicast_group(self, group: str, interface: str | int | None = None) -> None:
        """Receive datagrams sent to the multicast ``group``.

        Args:
            group: An IPv4 or IPv6 multicast address of this endpoint's family.
            interface: Where to join: ``None`` lets the kernel choose, an ``int`` is an
                interface index, a ``str`` an interface name or (IPv4) one of its addresses.

        Raises:
            TypeError: ``group`` or ``interface`` has the wrong type.
            ValueError: ``group`` is not a multicast address of this endpoint's family, or no
                network interface has the given name, index or address (chained from the
                kernel's ``OSError`` where the kernel found that out).
            anyio.ClosedResourceError: The endpoint is closed.
            OSError: The kernel refused for another reason (for instance, no route for
                multicast when ``interface`` is ``None``).
        """
        self._set_membership(group, interface, join=True)

    def leave_multicast_group(self, group: str, interface: str | int | None = None) -> None:
        """Stop receiving datagrams sent to the multicast ``group`` (arguments as for joining).

        Raises:
            ValueError: As for :meth:`join_multicast_group`.
            OSError: The kernel refused (for instance, the group was not joined).
        """
        self._set_membership(group, interface, join=False)

    def _set_membership(self, group: str, interface: str | int | None, *, join: bool) -> None:
        if self._io.closed:
            raise anyio.ClosedResourceError
        set_membership(self._io.sock, group, interface, join=join)
