"""Opening UDP endpoints: name resolution, socket creation and options, then adoption.

``connect_udp`` and ``open_udp_endpoint`` build a stdlib socket, set it up and hand it to
``DatagramClient``/``DatagramEndpoint``; nothing here is on the per-datagram path. The Unix
datagram twins are in ``_open_unix.py``.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, overload

import anyio

from ._address import format_address
from ._endpoint import DatagramClient, DatagramEndpoint
from ._metadata import check_tos, enable_metadata, set_tos
from ._protocol import DatagramProtocol, RecvT, SendT
from ._socket_os import set_recverr

if TYPE_CHECKING:
    from .testing import MemoryNetwork

__all__ = (
    "connect_udp",
    "open_udp_endpoint",
)


def check_port(port: object) -> int:
    """Return ``port`` if it is a valid port number, else raise ``TypeError``/``ValueError``."""
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {port}")
    return port


def check_host(host: object) -> str:
    """Return ``host`` if it is a non-empty string, else raise ``TypeError``/``ValueError``."""
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, not {type(host).__name__}")
    if not host:
        raise ValueError("host must not be empty")
    return host


def apply_buffer_sizes(
    sock: socket.socket, recv_buffer_size: int | None, send_buffer_size: int | None
) -> None:
    """Ask the kernel for the given buffer sizes (it may grant more or, capped, less)."""
    for option, size, name in (
        (socket.SO_RCVBUF, recv_buffer_size, "recv_buffer_size"),
        (socket.SO_SNDBUF, send_buffer_size, "send_buffer_size"),
    ):
        if size is None:
            continue
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"{name} must be an int, not {type(size).__name__}")
        if size <= 0:
            raise ValueError(f"{name} must be positive, got {size}")
        sock.setsockopt(socket.SOL_SOCKET, option, size)


def set_metadata_options(sock: socket.socket, receive_metadata: bool, tos: int | None) -> None:
    """``receive_metadata=`` and ``tos=`` on a new UDP socket (``ValueError`` if not IP)."""
    if receive_metadata:
        enable_metadata(sock)
    if tos is not None:
        set_tos(sock, tos)


def _all_failed(what: str, attempts: list[tuple[Any, OSError]]) -> OSError:
    detail = "; ".join(f"{format_address(addr)}: {exc}" for addr, exc in attempts)
    error = OSError(f"{what} ({detail})")
    error.__cause__ = ExceptionGroup(what, [exc for _, exc in attempts])
    return error


@overload
async def connect_udp(
    host: str,
    port: int,
    *,
    protocol: None = None,
    local_address: tuple[str, int] | None = None,
    family: int = socket.AF_UNSPEC,
    recv_buffer_size: int | None = None,
    send_buffer_size: int | None = None,
    network: MemoryNetwork | None = None,
    receive_metadata: bool = False,
    tos: int | None = None,
) -> DatagramClient[bytes, bytes]: ...
@overload
async def connect_udp(
    host: str,
    port: int,
    *,
    protocol: DatagramProtocol[SendT, RecvT],
    local_address: tuple[str, int] | None = None,
    family: int = socket.AF_UNSPEC,
    recv_buffer_size: int | None = None,
    send_buffer_size: int | None = None,
    network: MemoryNetwork | None = None,
    receive_metadata: bool = False,
    tos: int | None = None,
) -> DatagramClient[SendT, RecvT]: ...
async def connect_udp(
    host: str,
    port: int,
    *,
    protocol: DatagramProtocol[Any, Any] | None = None,
    local_address: tuple[str, int] | None = None,
    family: int = socket.AF_UNSPEC,
    recv_buffer_size: int | None = None,
    send_buffer_size: int | None = None,
    network: MemoryNetwork | None = None,
    receive_metadata: bool = False,
    tos: int | None = None,
) -> DatagramClient[Any, Any]:
    """Open a UDP socket connected to ``host``:``port``.

    The name is resolved with :func:`anyio.getaddrinfo`; each address it returns is tried in
    turn until a socket connects (binding ``local_address`` first, when given).

    Args:
        host: A host name or a literal IPv4/IPv6 address.
        port: The peer's port.
        protocol: Packets to datagrams and back; raw :class:`bytes` when omitted.
        local_address: ``(host, port)`` to bind before connecting.
        family: ``AF_INET`` or ``AF_INET6`` to restrict the addresses tried.
        recv_buffer_size: ``SO_RCVBUF`` to request, in bytes.
        send_buffer_size: ``SO_SNDBUF`` to request, in bytes.
        network: An :class:`anydgram.testing.MemoryNetwork` to open the client on instead
            of a socket (:meth:`~anydgram.testing.MemoryNetwork.connect_udp`): ``host`` must
            then be an IP address literal, ``local_address`` is refused and the buffer sizes
            and ``tos`` do not apply. ``None``: a real socket.
        receive_metadata: Ask the kernel for each datagram's metadata (receive timestamp, TTL,
            TOS/ECN, destination address), for
            :meth:`~DatagramClient.recv_packet_with_metadata`.
        tos: The TOS (IPv4) or traffic class (IPv6) byte of every datagram sent, DSCP and ECN
            bits together (``IP_TOS``/``IPV6_TCLASS``); ``None``: the system's.

    Raises:
        TypeError: ``host``, ``port`` or ``tos`` has the wrong type.
        ValueError: ``port`` or ``tos`` is out of range (or, with ``network``, ``host`` is not
            an IP address literal or ``local_address`` was given).
        OSError: The name does not resolve (:exc:`socket.gaierror`), or no address could be
            connected; the message names each address tried and ``__cause__`` is an
            :exc:`ExceptionGroup` of the individual errors.
    """
    check_host(host)
    check_port(port)
    check_tos(tos)
    if network is not None:
        if local_address is not None:
            raise ValueError("local_address is not supported on a MemoryNetwork")
        return await network.connect_udp(
            host, port, protocol=protocol, receive_metadata=receive_metadata
        )
    infos = await anyio.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
    sock = connect_first(
        infos,
        f"could not connect to {host}:{port}",
        local_address=local_address,
        recv_buffer_size=recv_buffer_size,
        send_buffer_size=send_buffer_size,
        receive_metadata=receive_metadata,
        tos=tos,
    )
    return DatagramClient._adopt(sock, protocol, metadata=receive_metadata)


def connect_first(
    infos: Sequence[tuple[Any, ...]],
    what: str,
    *,
    local_address: tuple[str, int] | None,
    recv_buffer_size: int | None,
    send_buffer_size: int | None,
    receive_metadata: bool = False,
    tos: int | None = None,
) -> socket.socket:
    """A UDP socket connected to the first ``getaddrinfo`` result that takes one.

    Shared by :func:`connect_udp` and the blocking client; nothing here blocks.

    Raises:
        OSError: No address could be connected: the message (``what``) names each address
            tried and ``__cause__`` is an :exc:`ExceptionGroup` of the individual errors.
    """
    failures: list[tuple[Any, OSError]] = []
    for info_family, _, proto, _, sockaddr in infos:
        try:
            sock = socket.socket(info_family, socket.SOCK_DGRAM, proto)
        except OSError as exc:
            failures.append((sockaddr, exc))
            continue
        try:
            apply_buffer_sizes(sock, recv_buffer_size, send_buffer_size)
            set_metadata_options(sock, receive_metadata, tos)
            if local_address is not None:
                sock.bind(local_address)
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            failures.append((sockaddr, exc))
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise _all_failed(what, failures)


def _wildcard(family: int) -> tuple[str, int]:
    if family == socket.AF_INET6:
        return "::", socket.AF_INET6
    if family in (socket.AF_INET, socket.AF_UNSPEC):
        return "0.0.0.0", socket.AF_INET
    raise ValueError(f"family must be AF_INET, AF_INET6 or AF_UNSPEC, got {family!r}")


@overload
async def open_udp_endpoint(
    host: str | None = None,
    port: int = 0,
    *,
    protocol: None = None,
    family: int = socket.AF_UNSPEC,
    reuse_port: bool = False,
    broadcast: bool = False,
    recv_buffer_size: int | None = None,
    send_buffer_size: int | None = None,
    network: MemoryNetwork | None = None,
    receive_metadata: bool = False,
    tos: int | None = None,
) -> DatagramEndpoint[bytes, bytes]: ...
@overload
async def open_udp_endpoint(
    host: str | None = None,
    port: int = 0,
    *,
    protocol: DatagramProtocol[SendT, RecvT],
    family: int = socket.AF_UNSPEC,
    reuse_port: bool = False,
    broadcast: bool = False,
    recv_buffer_size: int | None = None,
    send_buffer_size: int | None = None,
    network: MemoryNetwork | None = None,
    receive_metadata: bool = False,
    tos: int | None = None,
) -> DatagramEndpoint[SendT, RecvT]: ...
async def open_udp_endpoint(
    host: str | None = None,
    port: int = 0,
    *,
    protocol: DatagramProtocol[Any, Any] | None = None,
    family: int = socket.AF_UNSPEC,
    reuse_port: bool = False,
    broadcast: bool = False,
    recv_buffer_size: int | None = None,
    send_buffer_size: int | None = None,
    network: MemoryNetwork | None = None,
    receive_metadata: bool = False,
    tos: int | None = None,
) -> DatagramEndpoint[Any, Any]:
    """Open a UDP socket bound to ``host``:``port`` that can talk to any peer.

    Args:
        host: The local address to bind. ``None`` binds the wildcard address: ``0.0.0.0``,
            or ``::`` when ``family`` is ``AF_INET6``.
        port: The local port; 0 lets the kernel pick a free one (see
            :attr:`~DatagramEndpoint.local_address`).
        protocol: Packets to datagrams and back; raw :class:`bytes` when omitted.
        family: ``AF_INET`` or ``AF_INET6`` to restrict the addresses tried.
        reuse_port: Set ``SO_REUSEPORT``, so several sockets can share the port.
        broadcast: Set ``SO_BROADCAST``, allowing sends to broadcast addresses.
        recv_buffer_size: ``SO_RCVBUF`` to request, in bytes.
        send_buffer_size: ``SO_SNDBUF`` to request, in bytes.
        network: An :class:`anydgram.testing.MemoryNetwork` to bind on instead of a socket
            (:meth:`~anydgram.testing.MemoryNetwork.open_udp_endpoint`): ``host`` must then
            be an IP address literal or ``None``; ``reuse_port``, ``broadcast``, the
            buffer sizes and ``tos`` do not apply. ``None``: a real socket.
        receive_metadata: Ask the kernel for each datagram's metadata (receive timestamp, TTL,
            TOS/ECN, destination address: which of the host's addresses a peer used, on a
            wildcard bind), for :meth:`~DatagramEndpoint.recv_packet_with_metadata`.
        tos: The TOS (IPv4) or traffic class (IPv6) byte of every datagram sent, DSCP and ECN
            bits together (``IP_TOS``/``IPV6_TCLASS``); ``None``: the system's.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``port`` is out of range, or ``family`` is not an IP family (or, with
            ``network``, ``host`` is not an IP address literal).
        OSError: The name does not resolve, or no address could be bound (message and
            ``__cause__`` as for :func:`connect_udp`).
    """
    host, family = check_bind_arguments(host, port, family, reuse_port=reuse_port)
    check_tos(tos)
    if network is not None:
        return await network.open_udp_endpoint(
            host, port, protocol=protocol, receive_metadata=receive_metadata
        )
    infos = await anyio.getaddrinfo(
        host, port, family=family, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
    )
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
    return DatagramEndpoint._adopt(sock, protocol, metadata=receive_metadata)


def check_bind_arguments(
    host: str | None, port: int, family: int, *, reuse_port: bool
) -> tuple[str, int]:
    """Check :func:`open_udp_endpoint`'s arguments; the host and family to resolve.

    ``host=None`` becomes the wildcard address of ``family`` (IPv4 unless ``AF_INET6``).

    Raises:
        TypeError: ``host`` or ``port`` has the wrong type.
        ValueError: ``port`` is out of range, ``family`` is not an IP family (with
            ``host=None``), or ``reuse_port`` is unsupported here.
    """
    check_port(port)
    if host is None:
        host, family = _wildcard(family)
    else:
        check_host(host)
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port=True is not supported on this platform")
    return host, family


def bind_first(
    infos: Sequence[tuple[Any, ...]],
    what: str,
    *,
    reuse_port: bool,
    broadcast: bool,
    recv_buffer_size: int | None,
    send_buffer_size: int | None,
    receive_metadata: bool = False,
    tos: int | None = None,
) -> socket.socket:
    """A UDP socket bound to the first ``getaddrinfo`` result that takes one.

    Shared by :func:`open_udp_endpoint` and the blocking endpoint; ICMP errors for its sends
    are queued for counting (:func:`~anydgram._socket_io.set_recverr`).

    Raises:
        OSError: No address could be bound (message and ``__cause__`` as for
            :func:`connect_first`).
    """
    failures: list[tuple[Any, OSError]] = []
    for info_family, _, proto, _, sockaddr in infos:
        try:
            sock = socket.socket(info_family, socket.SOCK_DGRAM, proto)
        except OSError as exc:
            failures.append((sockaddr, exc))
            continue
        try:
            apply_buffer_sizes(sock, recv_buffer_size, send_buffer_size)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if broadcast:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            set_metadata_options(sock, receive_metadata, tos)
            sock.bind(sockaddr)
            set_recverr(sock)
        except OSError as exc:
            sock.close()
            failures.append((sockaddr, exc))
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise _all_failed(what, failures)
