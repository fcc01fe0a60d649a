"""Binding a server's sockets: one per address, all on one port.

A socket bound to a wildcard address (``0.0.0.0``, ``::``) receives with the pktinfo strategy
(see :mod:`anydgram._pktinfo`), so replies leave from the address each request was sent to;
others use the batched ``recvmmsg`` strategy where the platform has it.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Sequence
from typing import Any, Final, cast

import anyio

from ._address import format_address
from ._metadata import enable_metadata, set_tos
from ._mmsg import RecvMmsg, server_strategy
from ._mmsg_send import ReplyBatch
from ._mmsg_send import available as batched_replies_available
from ._open_endpoint import apply_buffer_sizes, check_host, check_port
from ._pktinfo import enable_pktinfo
from ._socket_io import SocketIO
from ._socket_os import set_recverr

__all__ = ("check_hosts", "open_server_sockets", "resolve_bind_addresses")

#: How often to retry binding every address on one kernel-chosen port (another program may
#: hold that port in the other address family).
_SAME_PORT_ATTEMPTS: Final = 10

_WILDCARDS: Final = (("0.0.0.0", socket.AF_INET), ("::", socket.AF_INET6))


def check_hosts(host: object) -> list[str] | None:
    """Validate the server's ``host`` argument; ``None`` means every interface."""
    if host is None:
        return None
    if isinstance(host, str):
        return [check_host(host)]
    if isinstance(host, Sequence) and not isinstance(host, bytes | bytearray):
        hosts = [check_host(h) for h in cast("Sequence[object]", host)]
        if not hosts:
            raise ValueError("host must not be an empty sequence (use None for every interface)")
        return hosts
    raise TypeError(f"host must be a str, a sequence of str or None, not {type(host).__name__}")


async def resolve_bind_addresses(
    hosts: list[str] | None, port: int
) -> list[tuple[int, tuple[Any, ...]]]:
    """The distinct ``(family, sockaddr)`` pairs to bind, in order.

    Literal addresses are taken as they are; names are resolved with :func:`anyio.getaddrinfo`
    and every address they resolve to is bound.
    """
    check_port(port)
    if hosts is None:
        targets: list[tuple[int, tuple[Any, ...]]] = [
            (family, (host, port)) for host, family in _WILDCARDS
        ]
        if not socket.has_ipv6:  # pragma: no cover - IPv6-less builds
            targets = targets[:1]
        return targets
    result: list[tuple[int, tuple[Any, ...]]] = []
    for host in hosts:
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None and "%" not in host:
            family = socket.AF_INET if literal.version == 4 else socket.AF_INET6
            found: list[tuple[int, tuple[Any, ...]]] = [(family, (host, port))]
        else:
            infos = await anyio.getaddrinfo(
                host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
            )
            found = [(int(info[0]), tuple(info[4])) for info in infos]
        for item in found:
            if item not in result:
                result.append(item)
    return result


def _is_wildcard(family: int, sockaddr: tuple[Any, ...]) -> bool:
    try:
        return ipaddress.ip_address(str(sockaddr[0]).split("%")[0]).is_unspecified
    except ValueError:
        return False


def _open_one(
    family: int,
    sockaddr: tuple[Any, ...],
    *,
    max_datagram_size: int,
    reuse_port: bool,
    recv_buffer_size: int | None,
    receive_metadata: bool,
    tos: int | None,
) -> SocketIO:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        apply_buffer_sizes(sock, recv_buffer_size, None)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # One socket per family: IPv4 clients belong to the IPv4 socket, whatever the
            # system's dual-stack default is.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        set_recverr(sock)
        if receive_metadata:
            enable_metadata(sock)
        if tos is not None:
            set_tos(sock, tos)
        pktinfo = _is_wildcard(family, sockaddr) and enable_pktinfo(sock)
        strategy = server_strategy(sock, pktinfo=pktinfo, metadata=receive_metadata)
        io = SocketIO(
            sock,
            max_datagram_size=max_datagram_size,
            strategy=strategy,
            metadata=receive_metadata,
        )
        if strategy is RecvMmsg and batched_replies_available():
            # Where a read batch comes in with one call, its replies leave with one too.
            io.reply_batch = ReplyBatch(io.core, io)
    except BaseException:
        sock.close()
        raise
    return io


def open_server_sockets(
    addresses: list[tuple[int, tuple[Any, ...]]],
    *,
    max_datagram_size: int,
    reuse_port: bool,
    recv_buffer_size: int | None,
    receive_metadata: bool = False,
    tos: int | None = None,
) -> list[SocketIO]:
    """Bind one socket per address; on any failure close what was opened and raise.

    When the port is 0 the first socket gets a port from the kernel and the others bind the
    same port, so a server has one port number on every address.

    Raises:
        OSError: An address could not be bound (the message names it).
        ValueError: ``reuse_port=True`` where ``SO_REUSEPORT`` does not exist, or a bad
            ``recv_buffer_size``.
    """
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port=True is not supported on this platform")
    kernel_port = bool(addresses) and addresses[0][1][1] == 0
    for attempt in range(_SAME_PORT_ATTEMPTS):
        opened: list[SocketIO] = []
        port = 0
        try:
            for family, sockaddr in addresses:
                if kernel_port and opened:
                    sockaddr = (sockaddr[0], port, *sockaddr[2:])
                try:
                    io = _open_one(
                        family,
                        sockaddr,
                        max_datagram_size=max_datagram_size,
                        reuse_port=reuse_port,
                        recv_buffer_size=recv_buffer_size,
                        receive_metadata=receive_metadata,
                        tos=tos,
                    )
                except OSError as exc:
                    where = format_address(sockaddr)
                    raise OSError(exc.errno, f"could not bind {where}: {exc.strerror}") from exc
                opened.append(io)
                if kernel_port and len(opened) == 1:
                    port = io.sock.getsockname()[1]
        except OSError as exc:
            for io in opened:
                io.close_now()
            retry = kernel_port and len(opened) > 0 and exc.errno == errno.EADDRINUSE
            if retry and attempt + 1 < _SAME_PORT_ATTEMPTS:
                continue
            raise
        except BaseException:
            for io in opened:
                io.close_now()
            raise
        return opened
    raise AssertionError("unreachable")  # pragma: no cover
