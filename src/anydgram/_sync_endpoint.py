"""The blocking unconnected endpoint: :class:`SyncDatagramEndpoint`.

The unconnected twin of :class:`~anydgram.SyncDatagramClient`, built on the same base
(:mod:`anydgram._sync_base`): one :class:`~anydgram._sync_socket.ThreadedSocketIO` and one
:class:`~anydgram.DatagramProtocol`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar, overload

import anyio

from ._client_request import destination_key, key_from_addrinfo
from ._endpoint_base import Address, check_datagram_socket, is_connected, split_addressed
from ._metadata import DatagramMetadata, check_tos
from ._multicast import set_membership
from ._open_endpoint import bind_first, check_bind_arguments
from ._protocol import DatagramProtocol, RecvT, SendT
from ._retry_schedule import attempt_timeouts, check_match
from ._sync_base import SyncBase, getaddrinfo
from ._sync_wait import deadline_after

__all__ = ("SyncDatagramEndpoint",)

_S = TypeVar("_S")
_R = TypeVar("_R")


class SyncDatagramEndpoint(SyncBase[SendT, RecvT]):
    """A blocking UDP socket bound to a local address that talks to any peer.

    The unconnected twin of :class:`SyncDatagramClient`, with the behaviour of
    :class:`~anydgram.DatagramEndpoint`: ICMP errors about earlier sends are counted in
    ``icmp_errors`` (Linux), never raised. Thread safety and timeouts are as for the client.

    Args:
        host: The local address to bind. ``None`` binds the wildcard address: ``0.0.0.0``,
            or ``::`` when ``family`` is ``AF_INET6``.
        port: The local port; 0 lets the kernel pick a free one (see :attr:`local_address`).
        protocol: Packets to datagrams and back; raw :class:`bytes` when omitted.
        family: ``AF_INET`` or ``AF_INET6`` to restrict the addresses tried.
        reuse_port: Set ``SO_REUSEPORT``, so several sockets can share the port.
        broadcast: Set ``SO_BROADCAST``, allowing sends to broadcast addresses.
        recv_buffer_size: ``SO_RCVBUF`` to request, in bytes.
        send_buffer_size: ``SO_SNDBUF`` to request, in bytes.
        receive_metadata: Ask the kernel for each datagram's metadata, for
            :meth:`recv_packet_with_metadata`.
        tos: The TOS (IPv4) or traffic class (IPv6) byte of every datagram sent
            (``IP_TOS``/``IPV6_TCLASS``); ``None``: the system's.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``port`` is out of range, or ``family`` is not an IP family.
        OSError: The name does not resolve, or no address could be bound (the message names
            each address tried and ``__cause__`` is an :exc:`ExceptionGroup` of the errors).
    """

    __slots__ = ()

    @overload
    def __init__(
        self: SyncDatagramEndpoint[bytes, bytes],
        host: str | None = None,
        port: int = 0,
        *,
        protocol: None = None,
        family: int = socket.AF_UNSPEC,
        reuse_port: bool = False,
        broadcast: bool = False,
        recv_buffer_size: int | None = None,
        send_buffer_size: int | None = None,
        receive_metadata: bool = False,
        tos: int | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self,
        host: str | None = None,
        port: int = 0,
        *,
        protocol: DatagramProtocol[SendT, RecvT],
        family: int = socket.AF_UNSPEC,
        reuse_port: bool = False,
        broadcast: bool = False,
        recv_buffer_size: int | None = None,
        send_buffer_size: int | None = None,
        receive_metadata: bool = False,
        tos: int | None = None,
    ) -> None: ...
    def __init__(
        self,
        host: str | None = None,
        port: int = 0,
        *,
        protocol: DatagramProtocol[Any, Any] | None = None,
        family: int = socket.AF_UNSPEC,
        reuse_port: bool = False,
        broadcast: bool = False,
        recv_buffer_size: int | None = None,
        send_buffer_size: int | None = None,
        receive_metadata: bool = False,
        tos: int | None = None,
    ) -> None:
        host, family = check_bind_arguments(host, port, family, reuse_port=reuse_port)
        check_tos(tos)
        infos = getaddrinfo(host, port, family, socket.AI_PASSIVE)
        sock = bind_first(
            infos,
            f"could not bind {host}:{port}",
            reuse_port=reuse_port,
            broadcast=broadcast,
            recv_buffer_size=recv_buffer_size,
            send_buffer_size=send_buffer_size,
            receive_metadata=receive_metadata,
            tos=tos,
        )
        try:
            self._setup(sock, protocol, connected=False, metadata=receive_metadata)
        except BaseException:
            sock.close()
            raise

    @overload
    @classmethod
    def from_socket(
        cls, sock: socket.socket, *, protocol: None = None
    ) -> SyncDatagramEndpoint[bytes, bytes]: ...
    @overload
    @classmethod
    def from_socket(
        cls, sock: socket.socket, *, protocol: DatagramProtocol[_S, _R]
    ) -> SyncDatagramEndpoint[_S, _R]: ...
    @classmethod
    def from_socket(
        cls, sock: socket.socket, *, protocol: DatagramProtocol[Any, Any] | None = None
    ) -> SyncDatagramEndpoint[Any, Any]:
        """Adopt an unconnected ``SOCK_DGRAM`` socket; the endpoint owns (and closes) it.

        This is also how to get a blocking Unix datagram endpoint: bind the socket yourself
        (and remove its file after :meth:`close`).

        Args:
            sock: An unconnected UDP (IPv4 or IPv6) or Unix datagram socket, usually bound.
                It is made non-blocking.
            protocol: Packets to datagrams and back; raw :class:`bytes` when omitted.

        Raises:
            TypeError: ``sock`` is not a socket.
            ValueError: ``sock`` is not a ``SOCK_DGRAM`` socket of a supported family, is
                closed, or is connected (use :meth:`SyncDatagramClient.from_socket`).
        """
        check_datagram_socket(sock)
        if is_connected(sock):
            raise ValueError("the socket is connected: use SyncDatagramClient.from_socket()")
        endpoint: SyncDatagramEndpoint[Any, Any] = cls.__new__(cls)
        endpoint._setup(sock, protocol, connected=False)
        return endpoint

    def send_packet(self, packet: SendT, address: Address, *, timeout: float | None = None) -> None:
        """Send ``packet`` as one datagram to ``address``.

        Blocks only while the kernel's send buffer is full (for Unix sockets, also while the
        peer's queue is full, retrying with a bounded backoff), for at most ``timeout``
        seconds (``None``: no limit). On a timeout nothing was sent.

        Raises:
            TimeoutError: The datagram could not be sent within ``timeout`` seconds.
            ValueError: ``timeout`` is negative.
            DatagramTooLargeError: The datagram exceeds the protocol's ``max_datagram_size``
                (or the kernel's limit); nothing was sent.
            anyio.ClosedResourceError: The endpoint is closed, before or during the call.
            OSError: The kernel refused the send (for instance no route to the host).
        """
        self._send(packet, address, timeout)

    def recv_packet(self, *, timeout: float | None = None) -> tuple[RecvT, Address]:
        """Wait up to ``timeout`` seconds (``None``: no limit) for ``(packet, sender_address)``.

        A timeout loses nothing: it happens before a datagram is taken from the kernel.

        Raises:
            TimeoutError: Nothing arrived within ``timeout`` seconds.
            ValueError: ``timeout`` is negative.
            DatagramProtocolParseError: The datagram could not be parsed (``.data`` holds it,
                ``.address`` the sender); the endpoint stays usable.
            anyio.BusyResourceError: A :meth:`request` call is pending; it reads for itself.
            anyio.ClosedResourceError: The endpoint is closed, before or during the wait.
        """
        data, address = self._recv_datagram(deadline_after(timeout))
        return self._parse(data, address), address

    def recv_packet_with_metadata(
        self, *, timeout: float | None = None
    ) -> tuple[RecvT, Address, DatagramMetadata]:
        """:meth:`recv_packet`, with what the kernel reported about the datagram.

        ``metadata.local_address`` is the address it was sent to. Errors and timeout as for
        :meth:`recv_packet`; a field the platform did not give is ``None``.

        Raises:
            ValueError: The endpoint was not made with ``receive_metadata=True``.
        """
        return self._recv_with_metadata(timeout)

    def send_packets(
        self, packets: Iterable[tuple[SendT, Address]], *, timeout: float | None = None
    ) -> None:
        """Send each ``(packet, address)`` of ``packets`` as one datagram, in order.

        As :meth:`anydgram.DatagramEndpoint.send_packets`: every packet and address is
        checked first, then they leave in as few system calls as the platform allows. Blocks
        while the kernel's send buffer is full, for at most ``timeout`` seconds in all
        (``None``: no limit).

        Raises:
            TimeoutError: The kernel had not taken every datagram after ``timeout`` seconds;
                those it took are counted in ``datagrams_sent``, the rest were not sent.
            TypeError: An item is not a ``(packet, address)`` pair or an address has the wrong
                type; nothing was sent.
            ValueError: ``timeout`` is negative.
            DatagramTooLargeError: A datagram exceeds the protocol's ``max_datagram_size`` or
                what the socket's family carries; nothing was sent.
            anyio.ClosedResourceError: The endpoint is closed, before or during the call.
            OSError: The kernel refused every datagram (the first refusal).
        """
        datagrams, addresses = split_addressed(self._protocol, self._io.sock.family, packets)
        self._send_datagrams(datagrams, addresses, timeout)

    def recv_packets(
        self, *, max_count: int = 64, timeout: float | None = None
    ) -> list[tuple[RecvT, Address]]:
        """Wait up to ``timeout`` seconds for a packet; it and every one waiting, to ``max_count``.

        As :meth:`anydgram.DatagramEndpoint.recv_packets` (``(packet, sender_address)``
        items); a timeout loses nothing.

        Raises:
            TimeoutError: Nothing arrived within ``timeout`` seconds.
            TypeError: ``max_count`` is not an int.
            ValueError: ``max_count`` is below 1, or ``timeout`` is negative.
            DatagramProtocolParseError: The first datagram could not be parsed.
            anyio.BusyResourceError: A :meth:`request` call is pending.
            anyio.ClosedResourceError: The endpoint is closed, before or during the wait.
        """
        return self._recv_packets(max_count, timeout)

    def iter_received_packets(
        self, *, timeout: float | None = 0
    ) -> Iterator[tuple[RecvT, Address]]:
        """Yield ``(packet, sender_address)`` pairs until ``timeout`` seconds have passed in all.

        ``timeout`` is the budget for the whole iteration, which ends quietly when it is spent:
        ``0`` yields only what is already waiting, ``None`` never ends by itself. A parse error
        is raised from the iteration (ending it); the endpoint stays usable.

        Raises:
            ValueError: ``timeout`` is negative (raised by this call, before iterating).
            DatagramProtocolParseError: A datagram could not be parsed.
            anyio.BusyResourceError: A :meth:`request` call is pending.
            anyio.ClosedResourceError: The endpoint is closed.
        """
        deadline = deadline_after(timeout)
        return (
            (self._parse(data, address), address)
            for data, address in self._iter_datagrams(deadline, bool(timeout))
        )

    def request(
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

        As :meth:`SyncDatagramClient.request`, except that only datagrams from ``address`` are
        considered (a host name is resolved once, before the first send); datagrams from
        other senders are dropped and counted in ``unmatched_replies`` while calls are
        pending. When it raises, the call leaves nothing behind.

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
            infos = getaddrinfo(address[0], address[1], family)
            resolved = key_from_addrinfo(family, infos)
        return self._request(packet, resolved[0], resolved[1], timeouts, match)

    def join_multicast_group(self, group: str, interface: str | int | None = None) -> None:
        """Receive datagrams sent to the multicast ``group``.

        Arguments and errors as for :meth:`anydgram.DatagramEndpoint.join_multicast_group`.

        Raises:
            TypeError: ``group`` or ``interface`` has the wrong type.
            ValueError: ``group`` is not a multicast address of this endpoint's family, or no
                network interface has the given name, index or address (chained from the
                kernel's ``OSError`` where the kernel found that out).
            anyio.ClosedResourceError: The endpoint is closed.
            OSError: The kernel refused.
        """
        self._set_membership(group, interface, join=True)

    def leave_multicast_group(self, group: str, interface: str | int | None = None) -> None:
        """Stop receiving datagrams sent to the multicast ``group`` (arguments as for joining).

        Raises:
            TypeError: ``group`` or ``interface`` has the wrong type.
            ValueError: As for :meth:`join_multicast_group`.
            anyio.ClosedResourceError: The endpoint is closed.
            OSError: The kernel refused (for instance, the group was not joined).
        """
        self._set_membership(group, interface, join=False)

    def _set_membership(self, group: str, interface: str | int | None, *, join: bool) -> None:
        if self._io.closed:
            raise anyio.ClosedResourceError
        set_membership(self._io.sock, group, interface, join=join)
