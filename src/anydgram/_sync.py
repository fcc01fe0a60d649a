"""The blocking client for threaded programs: :class:`SyncDatagramClient`.

Its base, shared with :class:`~anydgram.SyncDatagramEndpoint` (``_sync_endpoint.py``), is in
``_sync_base.py``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar, cast, overload

from ._endpoint_base import (
    Address,
    check_datagram_socket,
    make_datagrams,
)
from ._metadata import DatagramMetadata, check_tos
from ._open_endpoint import check_host, check_port, connect_first
from ._protocol import DatagramProtocol, RecvT, SendT
from ._retry_schedule import attempt_timeouts, check_match
from ._sync_base import SyncBase, getaddrinfo
from ._sync_wait import deadline_after

__all__ = ("SyncDatagramClient",)

_S = TypeVar("_S")
_R = TypeVar("_R")


class SyncDatagramClient(SyncBase[SendT, RecvT]):
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
        receive_metadata: Ask the kernel for each datagram's metadata, for
            :meth:`recv_packet_with_metadata`.
        tos: The TOS (IPv4) or traffic class (IPv6) byte of every datagram sent
            (``IP_TOS``/``IPV6_TCLASS``); ``None``: the system's.

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
        receive_metadata: bool = False,
        tos: int | None = None,
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
        receive_metadata: bool = False,
        tos: int | None = None,
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
        receive_metadata: bool = False,
        tos: int | None = None,
    ) -> None:
        check_host(host)
        check_port(port)
        check_tos(tos)
        infos = getaddrinfo(host, port, family)
        sock = connect_first(
            infos,
            f"could not connect to {host}:{port}",
            local_address=local_address,
            recv_buffer_size=recv_buffer_size,
            send_buffer_size=send_buffer_size,
            receive_metadata=receive_metadata,
            tos=tos,
        )
        try:
            self._setup(sock, protocol, connected=True, metadata=receive_metadata)
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

    def recv_packet_with_metadata(
        self, *, timeout: float | None = None
    ) -> tuple[RecvT, DatagramMetadata]:
        """:meth:`recv_packet`, with what the kernel reported about the datagram.

        Errors and timeout as for :meth:`recv_packet`; a field the platform did not give is
        ``None``.

        Raises:
            ValueError: The client was not made with ``receive_metadata=True``.
        """
        packet, _, metadata = self._recv_with_metadata(timeout)
        return packet, metadata

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
