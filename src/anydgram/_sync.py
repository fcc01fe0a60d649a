"""Blocking datagram endpoints for threaded programs: the shared base and the client.

:class:`SyncDatagramClient` (connected, here) and :class:`~anydgram.SyncDatagramEndpoint`
(bound, unconnected, in :mod:`anydgram._sync_endpoint`) pair one
:class:`~anydgram._sync_socket.ThreadedSocketIO` (the socket side, no event loop) with the same
:class:`~anydgram.DatagramProtocol` objects the async endpoints use, and raise the same errors
they do.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, cast, overload

import anyio

from ._client_request import BUSY_ACTION, Match, ThreadedRequests
from ._endpoint_base import (
    Address,
    check_datagram_socket,
    check_max_count,
    make_datagrams,
    parse_batch,
)
from ._errors import DatagramProtocolParseError
from ._open_endpoint import check_host, check_port, connect_first
from ._protocol import DatagramProtocol, RecvT, SendT, default_protocol
from ._retry_schedule import AttemptSchedule, attempt_timeouts, check_match
from ._socket_os import normalize_address
from ._socket_proxy import SocketProxy
from ._statistics import EndpointStatistics
from ._sync_socket import ThreadedSocketIO
from ._sync_wait import deadline_after

__all__ = ("SyncDatagramClient", "getaddrinfo")

_S = TypeVar("_S")
_R = TypeVar("_R")


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


class _SyncBase(Generic[SendT, RecvT]):
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
    ) -> None:
        proto: DatagramProtocol[Any, Any] = default_protocol() if protocol is None else protocol
        self._protocol = proto
        self._io = ThreadedSocketIO(
            sock, max_datagram_size=proto.max_datagram_size, connected=connected
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
            for data, address, _ in batch:
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


class SyncDatagramClient(_SyncBase[SendT, RecvT]):
    """A blocking UDP client connected to one peer, for threaded programs.

    The constructor resolves ``host`` (:func:`socket.getaddrinfo`) and tries each address in
    turn until a socket connects. ``SendT`` is what you send, ``RecvT`` what you receive.

    Every method may be called from several threads at once. Sending and receiving share no
    lock: several threads may send while others receive, and :meth:`close` from any thread
    wakes them all at once. Errors and behaviour are those of :class:`~anydgram.DatagramClient`;
    timeouts are a ``timeout`` keyword (seconds, ``None`` for no limit) whose expiry raises the
    builtin :exc:`TimeoutError`.

    Args:
        host: A host name or a literal IPv4/IPv6 address.
        port: The peer's port.
        protocol: Packets to datagrams and back; raw :class:`bytes` when omitted.
        local_address: ``(host, port)`` to bind before connecting.
        family: ``AF_INET`` or ``AF_INET6`` to restrict the addresses tried.
        recv_buffer_size: ``SO_RCVBUF`` to request, in bytes.
        send_buffer_size: ``SO_SNDBUF`` to request, in bytes.

    Raises:
        TypeError: ``host`` or ``port`` has the wrong type.
        ValueError: ``port`` is out of range.
        OSError: The name does not resolve (:exc:`socket.gaierror`), or no address could be
            connected; the message names each address tried and ``__cause__`` is an
            :exc:`ExceptionGroup` of the individual errors.
    """

    __slots__ = ()

    @overload
    def __init__(
        self: SyncDatagramClient[bytes, bytes],
        host: str,
        port: int,
        *,
        protocol: None = None,
        local_address: tuple[str, int] | None = None,
        family: int = socket.AF_UNSPEC,
        recv_buffer_size: int | None = None,
        send_buffer_size: int | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self,
        host: str,
        port: int,
        *,
        protocol: DatagramProtocol[SendT, RecvT],
        local_address: tuple[str, int] | None = None,
        family: int = socket.AF_UNSPEC,
        recv_buffer_size: int | None = None,
        send_buffer_size: int | None = None,
    ) -> None: ...
    def __init__(
        self,
        host: str,
        port: int,
        *,
        protocol: DatagramProtocol[Any, Any] | None = None,
        local_address: tuple[str, int] | None = None,
        family: int = socket.AF_UNSPEC,
        recv_buffer_size: int | None = None,
        send_buffer_size: int | None = None,
    ) -> None:
        check_host(host)
        check_port(port)
        infos = getaddrinfo(host, port, family)
        sock = connect_first(
            infos,
            f"could not connect to {host}:{port}",
            local_address=local_address,
            recv_buffer_size=recv_buffer_size,
            send_buffer_size=send_buffer_size,
        )
        try:
            self._setup(sock, protocol, connected=True)
        except BaseException:
            sock.close()
            raise

    @overload
    @classmethod
    def from_socket(
        cls, sock: socket.socket, *, protocol: None = None
    ) -> SyncDatagramClient[bytes, bytes]: ...
    @overload
    @classmethod
    def from_socket(
        cls, sock: socket.socket, *, protocol: DatagramProtocol[_S, _R]
    ) -> SyncDatagramClient[_S, _R]: ...
    @classmethod
    def from_socket(
        cls, sock: socket.socket, *, protocol: DatagramProtocol[Any, Any] | None = None
    ) -> SyncDatagramClient[Any, Any]:
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
        check_datagram_socket(sock)
        sock.getpeername()  # raises OSError (ENOTCONN) for an unconnected socket
        client: SyncDatagramClient[Any, Any] = cls.__new__(cls)
        client._setup(sock, protocol, connected=True)
        return client

    @property
    def remote_address(self) -> Address:
        """The peer's address."""
        return cast(Address, self._io.peer)

    def send_packet(self, packet: SendT, *, timeout: float | None = None) -> None:
        """Send ``packet`` to the peer as one datagram.

        Blocks only while the kernel's send buffer is full, for at most ``timeout`` seconds
        (``None``: no limit). On a timeout nothing was sent.

        Raises:
            TimeoutError: The send buffer stayed full for ``timeout`` seconds.
            ValueError: ``timeout`` is negative.
            DatagramTooLargeError: The datagram exceeds the protocol's ``max_datagram_size``
                (or the kernel's limit); nothing was sent.
            ConnectionRefusedError: An earlier datagram was refused by the peer (ICMP port
                unreachable); the client stays usable. Other ICMP errors raise their
                :exc:`OSError` likewise.
            anyio.ClosedResourceError: The client is closed, before or during the call.
        """
        self._send(packet, None, timeout)

    def recv_packet(self, *, timeout: float | None = None) -> RecvT:
        """Wait up to ``timeout`` seconds (``None``: no limit) for the next packet from the peer.

        A timeout loses nothing: it happens before a datagram is taken from the kernel.

        Raises:
            TimeoutError: Nothing arrived within ``timeout`` seconds.
            ValueError: ``timeout`` is negative.
            DatagramProtocolParseError: The datagram could not be parsed (``.data`` holds it,
                ``.address`` the sender); the client stays usable.
            ConnectionRefusedError: The peer refused an earlier datagram (ICMP port
                unreachable); the client stays usable.
            anyio.BusyResourceError: A :meth:`request` call is pending; it reads for itself.
            anyio.ClosedResourceError: The client is closed, before or during the wait.
        """
        data, address = self._recv_datagram(deadline_after(timeout))
        return self._parse(data, address)

    def send_packets(self, packets: Iterable[SendT], *, timeout: float | None = None) -> None:
        """Send every packet of ``packets`` to the peer, one datagram each, in order.

        As :meth:`anydgram.DatagramClient.send_packets`: every packet is serialized and
        checked first, then they leave in as few system calls as the platform allows. Blocks
        while the kernel's send buffer is full, for at most ``timeout`` seconds in all
        (``None``: no limit).

        Raises:
            TimeoutError: The kernel had not taken every datagram after ``timeout`` seconds;
                those it took are counted in ``datagrams_sent``, the rest were not sent.
            ValueError: ``timeout`` is negative.
            DatagramTooLargeError: A datagram exceeds the protocol's ``max_datagram_size`` or
                what the socket's family carries; nothing was sent.
            ConnectionRefusedError: The peer refused every datagram (ICMP port unreachable).
            anyio.ClosedResourceError: The client is closed, before or during the call.
        """
        datagrams = make_datagrams(self._protocol, self._io.sock.family, packets)
        self._send_datagrams(datagrams, None, timeout)

    def recv_packets(self, *, max_count: int = 64, timeout: float | None = None) -> list[RecvT]:
        """Wait up to ``timeout`` seconds for a packet; it and every one waiting, to ``max_count``.

        As :meth:`anydgram.DatagramClient.recv_packets`; a timeout loses nothing.

        Raises:
            TimeoutError: Nothing arrived within ``timeout`` seconds.
            TypeError: ``max_count`` is not an int.
            ValueError: ``max_count`` is below 1, or ``timeout`` is negative.
            DatagramProtocolParseError: The first datagram could not be parsed.
            ConnectionRefusedError: The peer refused an earlier datagram.
            anyio.BusyResourceError: A :meth:`request` call is pending.
            anyio.ClosedResourceError: The client is closed, before or during the wait.
        """
        return [packet for packet, _ in self._recv_packets(max_count, timeout)]

    def iter_received_packets(self, *, timeout: float | None = 0) -> Iterator[RecvT]:
        """Yield received packets until ``timeout`` seconds have passed in all.

        ``timeout`` is the budget for the whole iteration, which ends quietly when it is spent:
        ``0`` yields only what is already waiting, ``None`` never ends by itself. The budget
        runs while the loop body runs too. A parse error is raised from the iteration (ending
        it); the client stays usable.

        Raises:
            ValueError: ``timeout`` is negative (raised by this call, before iterating).
            DatagramProtocolParseError: A datagram could not be parsed.
            anyio.BusyResourceError: A :meth:`request` call is pending.
            anyio.ClosedResourceError: The client is closed.
        """
        deadline = deadline_after(timeout)
        return (
            self._parse(data, address)
            for data, address in self._iter_datagrams(deadline, bool(timeout))
        )

    def request(
        self,
        packet: SendT,
        *,
        timeout: float = 1.0,
        attempts: int = 3,
        backoff: float = 2.0,
        match: Callable[[RecvT], bool] | None = None,
    ) -> RecvT:
        """Send ``packet`` and return the peer's reply, re-sending until one arrives.

        Works as :meth:`DatagramClient.request <anydgram.DatagramClient.request>`: attempt *i*
        (from 0) waits ``timeout * backoff**i * U(1, 1.25)`` seconds; each received datagram
        goes to the oldest pending call (from any thread) whose ``match`` accepts it; datagrams
        no call claims are dropped and counted in ``unmatched_replies``; while a call is
        pending, :meth:`recv_packet` from other threads raises :exc:`anyio.BusyResourceError`.
        When it raises, the call leaves nothing behind: a reply that comes later is dropped
        and counted.

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
        return self._request(packet, None, None, timeouts, match)
