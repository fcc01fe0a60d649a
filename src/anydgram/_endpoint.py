"""Async datagram endpoints: :class:`DatagramClient` (connected) and :class:`DatagramEndpoint`.

Both pair one :class:`~anydgram._socket_io.SocketIO` (the socket side) with one
:class:`~anydgram.DatagramProtocol` (packets to bytes and back).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncGenerator, Callable, Mapping
from types import TracebackType
from typing import Any, Generic, NoReturn, Self, TypeAlias, TypeVar, cast, overload

import anyio
from anyio import TypedAttributeProvider
from anyio.abc import SocketAttribute

from ._errors import DatagramProtocolParseError
from ._io_core import BoundPath, normalize_address
from ._multicast import set_membership
from ._protocol import DatagramProtocol, RecvT, SendT, default_protocol
from ._request import (
    BUSY_ACTION,
    AsyncRequests,
    AttemptSchedule,
    Match,
    attempt_timeouts,
    check_match,
    destination_key,
    key_from_addrinfo,
)
from ._socket_io import SocketIO, SocketProxy
from ._statistics import EndpointStatistics

__all__ = ("Address", "DatagramClient", "DatagramEndpoint", "IPAddress")

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


def _check_datagram_socket(sock: socket.socket) -> None:
    if not isinstance(sock, socket.socket):
        raise TypeError(f"expected a socket.socket, got {type(sock).__name__}")
    if sock.type != socket.SOCK_DGRAM:
        raise ValueError(f"expected a SOCK_DGRAM socket, got {sock.type!r}")
    if sock.family not in _SUPPORTED_FAMILIES:
        raise ValueError(f"unsupported address family {sock.family!r}")
    if sock.fileno() < 0:
        raise ValueError("the socket is closed")


def _is_connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


class _BaseEndpoint(TypedAttributeProvider, Generic[SendT, RecvT]):
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
        )

    def _parse(self, data: bytes, address: Address) -> RecvT:
        try:
            return self._protocol.build_packet_from_datagram(data)
        except DatagramProtocolParseError as exc:
            self._parse_errors += 1
            exc.address = address
            raise

    def _count_unmatched(self, count: int) -> None:
        self._unmatched_replies += count

    def _taken_while_busy(self, data: bytes, address: Address) -> NoReturn:
        # A receive that was already waiting when a request() started got a datagram: it
        # belongs to the pending calls.
        assert self._requests is not None
        self._requests.deliver_foreign(data, address)
        raise anyio.BusyResourceError(BUSY_ACTION)

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
                data, address, _ = batch[0]
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


class DatagramClient(_BaseEndpoint[SendT, RecvT]):
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
    ) -> DatagramClient[Any, Any]:
        _check_datagram_socket(sock)
        sock.getpeername()  # raises OSError (ENOTCONN) for an unconnected socket
        proto = default_protocol() if protocol is None else protocol
        io = SocketIO(
            sock,
            max_datagram_size=proto.max_datagram_size,
            connected=True,
            unlink_path=unlink_path,
        )
        return DatagramClient(io, proto)

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


class DatagramEndpoint(_BaseEndpoint[SendT, RecvT]):
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
    ) -> DatagramEndpoint[Any, Any]:
        _check_datagram_socket(sock)
        if _is_connected(sock):
            raise ValueError("the socket is connected: use DatagramClient.from_socket()")
        proto = default_protocol() if protocol is None else protocol
        io = SocketIO(
            sock,
            max_datagram_size=proto.max_datagram_size,
            connected=False,
            unlink_path=unlink_path,
        )
        return DatagramEndpoint(io, proto)

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
