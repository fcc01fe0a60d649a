"""The server's socket side: binding, and batches of datagrams in and out of each socket.

The server talks to its sockets only through the small :class:`ServerTransport` interface
(receive a batch, send one datagram), so an in-memory network can stand in for the sockets and
a batched-syscall path can replace the per-datagram ones without touching the dispatch code.

:class:`ServerSocketIO` implements it over a :class:`~anydgram._socket_io.SocketIO`. A socket
bound to a specific address uses the endpoints' plain ``recvfrom``/``sendto`` drain path. A
socket bound to a wildcard address (``0.0.0.0``, ``::``) receives with ``recvmsg`` and the
``IP_PKTINFO``/``IPV6_PKTINFO`` ancillary data, and replies with ``sendmsg`` from the address
the request was sent to: otherwise the kernel picks the source address of a reply by its
routing table, and a client that sent to another of the host's addresses (a second interface,
an alias such as 127.0.0.2) drops the reply as coming from a stranger.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
from collections.abc import Sequence
from typing import Any, Final, Protocol, cast

import anyio

from ._address import format_address
from ._errors import DatagramTooLargeError
from ._open_endpoint import apply_buffer_sizes, check_host, check_port
from ._socket_io import _ICMP_ERRNOS, MAX_BATCH, SocketIO, set_recverr

__all__ = ("Received", "ServerSocketIO", "ServerTransport", "open_server_sockets")

_IS_LINUX: Final = sys.platform.startswith("linux")

# Linux values; Python 3.11's socket module lacks IP_PKTINFO. Elsewhere the pktinfo path is off
# and a wildcard socket replies from whatever address the kernel picks.
IP_PKTINFO: Final[int | None] = getattr(socket, "IP_PKTINFO", 8 if _IS_LINUX else None)
IPV6_RECVPKTINFO: Final[int | None] = getattr(socket, "IPV6_RECVPKTINFO", 49 if _IS_LINUX else None)
IPV6_PKTINFO: Final[int | None] = getattr(socket, "IPV6_PKTINFO", 50 if _IS_LINUX else None)

#: Sends that did not wait between two full checkpoints, so a handler that replies in a loop
#: still lets other tasks run. The server counts them per read batch (its reading task passes
#: checkpoints of its own), so this is larger than a batch (64): one reply per datagram never
#: reaches it, and a checkpoint inside a handler run by the reading task makes the standby take
#: the reading over. On the echo benchmark a checkpoint every 16 replies cost ~1 us of CPU per
#: datagram.
SEND_FAIRNESS_INTERVAL: Final = 128

#: Room for one ``in6_pktinfo`` (the larger of the two) control message.
_ANCILLARY_SIZE: Final = socket.CMSG_SPACE(20)
#: Distinct reply sources remembered per socket (they are the host's own addresses, so few).
_LOCAL_CACHE_SIZE: Final = 256
_ZERO_INDEX: Final = b"\0\0\0\0"
_IPV6_ANY: Final = bytes(16)

#: ``(datagram, sender address, local token)``. The token is opaque: whatever the transport
#: needs to reply from the address the datagram was sent to, or ``None``.
Received = tuple[bytes, Any, Any]


class ServerTransport(Protocol):
    """What the server needs from one of its sockets (or from an in-memory stand-in).

    The server touches sockets only through this: ``anydgram.testing.MemoryNetwork`` plugs in
    through ``DatagramServer(network=...)`` by implementing it, and a ``recvmmsg``/``sendmmsg``
    transport can replace :class:`ServerSocketIO` without a change to the dispatch code.

    Counters are cumulative since the transport was opened; they keep their values after
    :meth:`aclose`.
    """

    @property
    def sock(self) -> socket.socket | None:
        """The underlying socket, or ``None`` for a transport without one."""
        ...

    @property
    def family(self) -> int:
        """The address family of the addresses it sends to and receives from."""
        ...

    @property
    def local_address(self) -> Any:
        """The address it is bound to."""
        ...

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        ...

    @property
    def datagrams_received(self) -> int:
        """Datagrams received, ``oversize`` ones excluded."""
        ...

    @property
    def bytes_received(self) -> int:
        """Payload bytes of ``datagrams_received``."""
        ...

    @property
    def datagrams_sent(self) -> int:
        """Datagrams accepted for sending."""
        ...

    @property
    def bytes_sent(self) -> int:
        """Payload bytes of ``datagrams_sent``."""
        ...

    @property
    def oversize(self) -> int:
        """Datagrams longer than the limit, skipped unparsed."""
        ...

    @property
    def send_errors(self) -> int:
        """Sends refused for a reason other than an ICMP error."""
        ...

    @property
    def icmp_errors(self) -> int:
        """ICMP errors reported for earlier sends."""
        ...

    def kernel_drops(self) -> int:
        """Datagrams dropped before they were received (0 where unknown)."""
        ...

    @property
    def unread_at_close(self) -> int:
        """Datagrams still waiting to be read when the transport closed (0 while open)."""
        ...

    def buffer_sizes(self) -> tuple[int, int]:
        """The receive and send buffer sizes, in bytes (0, 0 where unknown)."""
        ...

    async def recv_datagrams(self, max_count: int) -> list[Received]:
        """Wait until a datagram is ready, then take up to ``max_count`` of them.

        A cancellation loses nothing. Raises :exc:`anyio.ClosedResourceError` once closed,
        :exc:`OSError` for what the kernel reports.
        """
        ...

    def send_nowait(self, data: bytes, address: Any) -> bool:
        """Send one datagram from the default source address; ``False`` if it would block.

        Raises like :meth:`~anydgram._socket_io.SocketIO.send_nowait`.
        """
        ...

    def send_datagram_nowait(self, data: bytes, address: Any, local: Any) -> bool:
        """Send one datagram from ``local`` (a token from :meth:`recv_datagrams`, or ``None``).

        Returns ``False`` when the send would block. Raises like
        :meth:`~anydgram._socket_io.SocketIO.send_nowait`.
        """
        ...

    async def send_datagram(self, data: bytes, address: Any, local: Any) -> None:
        """Send one datagram, waiting while the send buffer is full.

        A cancellation leaves it sent whole or not at all.
        """
        ...

    async def aclose(self) -> None:
        """Close; receivers and senders waiting get :exc:`anyio.ClosedResourceError`."""
        ...


class ServerSocketIO(SocketIO):
    """A server's socket: :class:`SocketIO` plus the reply-from-the-right-address path.

    Args:
        sock: A bound, unconnected UDP socket.
        max_datagram_size: The protocol's limit (see :class:`SocketIO`).
        pktinfo: Receive the destination address of every datagram and reply from it; only for
            sockets bound to a wildcard address (the caller enables the socket option).
    """

    __slots__ = ("_local_cache", "_pktinfo", "_sends")

    def __init__(self, sock: socket.socket, *, max_datagram_size: int, pktinfo: bool) -> None:
        super().__init__(sock, max_datagram_size=max_datagram_size, connected=False)
        self._pktinfo = pktinfo
        self._sends = 0
        self._local_cache: dict[bytes, list[tuple[int, int, bytes]]] = {}

    @property
    def family(self) -> int:
        """The socket's address family."""
        return self.sock.family

    @property
    def local_address(self) -> Any:
        """The address the socket is bound to.

        Raises:
            OSError: The socket is closed.
        """
        return self.sock.getsockname()

    # -- receiving ---------------------------------------------------------------------------

    async def recv_datagrams(self, max_count: int) -> list[Received]:
        """Wait until a datagram is ready, then take up to ``max_count`` of them.

        A cancellation loses nothing: it happens before a datagram is taken, or not at all.

        Returns:
            ``(datagram, sender, local token)`` triples; the token is ``None`` on a socket
            bound to a specific address (replies leave from that one).

        Raises:
            anyio.ClosedResourceError: The socket was closed, before or during the wait.
            OSError: Anything but an ICMP error the kernel reports (those are counted).
        """
        if not self._pktinfo:
            return [(data, address, None) for data, address in await self.recv_batch(max_count)]
        await self._fairness_checkpoint()
        woke = False
        while True:
            batch = self._recv_pktinfo_nowait(max_count)
            if batch:
                return batch
            await self.wait_readable(after_wakeup=woke)
            woke = True

    def _recv_pktinfo_nowait(self, max_count: int) -> list[Received]:
        sock = self.sock
        bufsize = self._max_datagram_size + 1
        batch: list[Received] = []
        # Bounded like SocketIO.recv_nowait: skipped (oversize) datagrams count towards it.
        for _ in range(max(max_count, MAX_BATCH)):
            try:
                data, ancdata, _flags, address = sock.recvmsg(bufsize, _ANCILLARY_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                self._recv_failed(exc)
                continue
            if len(data) > self._max_datagram_size:
                self.oversize += 1
                continue
            self.datagrams_received += 1
            self.bytes_received += len(data)
            local = None
            for level, kind, cdata in ancdata:
                if (level == socket.IPPROTO_IP and kind == IP_PKTINFO) or (
                    level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO
                ):
                    local = self._reply_source(level, cdata)
            batch.append((data, address, local))
            if len(batch) >= max_count:
                break
        return batch

    def _reply_source(self, level: int, cdata: bytes) -> list[tuple[int, int, bytes]] | None:
        """The ancillary data that makes a reply leave from where ``cdata`` says we received."""
        cached = self._local_cache.get(cdata)
        if cached is not None:
            return cached
        if level == socket.IPPROTO_IP:
            if len(cdata) < 12:
                return None
            # struct in_pktinfo {int ifindex; in_addr spec_dst; in_addr addr}. spec_dst is the
            # local address the datagram arrived on (for a broadcast, the interface's own
            # address), the one a reply may leave from; index 0 leaves the route to the kernel.
            value = _ZERO_INDEX + cdata[4:8] + _ZERO_INDEX
            option = IP_PKTINFO
        else:
            if len(cdata) < 20:
                return None
            # struct in6_pktinfo {in6_addr addr; unsigned int ifindex}. A multicast destination
            # is no source: let the kernel pick one on that interface. Link-local and multicast
            # replies need the interface index; other addresses are routed normally.
            address, index = cdata[:16], cdata[16:20]
            if address[0] == 0xFF:
                address = _IPV6_ANY
            elif not (address[0] == 0xFE and address[1] & 0xC0 == 0x80):
                index = _ZERO_INDEX
            value = address + index
            option = IPV6_PKTINFO
        assert option is not None
        ancillary = [(level, option, value)]
        if len(self._local_cache) >= _LOCAL_CACHE_SIZE:
            self._local_cache.clear()
        self._local_cache[cdata] = ancillary
        return ancillary

    def _recv_failed(self, exc: OSError) -> None:
        if self._closed or exc.errno == errno.EBADF:
            raise anyio.ClosedResourceError from None
        if exc.errno in _ICMP_ERRNOS:
            # An ICMP error for an earlier send; IP_RECVERR queued it, counted from there.
            if not self.drain_error_queue():
                self.icmp_errors += 1
            return
        raise exc

    # -- sending -----------------------------------------------------------------------------

    def send_datagram_nowait(self, data: bytes, address: Any, local: Any) -> bool:
        """Send one datagram from ``local`` if the kernel takes it now.

        Returns:
            ``False`` if the send would block.

        Raises:
            DatagramTooLargeError: The kernel refused the size (``EMSGSIZE``).
            anyio.ClosedResourceError: The socket was closed.
            OSError: What the kernel reports, after counting it in ``send_errors`` or
                ``icmp_errors``.
        """
        if local is None:
            return self.send_nowait(data, address)
        sock = self.sock
        for attempt in (0, 1):
            try:
                sock.sendmsg((data,), local, 0, address)
            except BlockingIOError:
                return False
            except OSError as exc:
                if self._closed or exc.errno == errno.EBADF:
                    raise anyio.ClosedResourceError from None
                if exc.errno == errno.EMSGSIZE:
                    self.send_errors += 1
                    raise DatagramTooLargeError(
                        len(data),
                        len(data) - 1,
                        f"the kernel refused a datagram of {len(data)} bytes (EMSGSIZE)",
                    ) from exc
                if exc.errno in _ICMP_ERRNOS:
                    if attempt == 0:
                        # An ICMP error for an earlier send failed this one; it is on the error
                        # queue too, counted from there.
                        if not self.drain_error_queue():
                            self.icmp_errors += 1
                        continue
                    self.icmp_errors += 1
                else:
                    self.send_errors += 1
                raise
            else:
                self.datagrams_sent += 1
                self.bytes_sent += len(data)
                return True
        raise AssertionError("unreachable")  # pragma: no cover

    async def send_datagram(self, data: bytes, address: Any, local: Any) -> None:
        """Send one datagram from ``local``, waiting while the send buffer is full.

        A cancellation leaves the datagram sent whole or not at all.

        Raises:
            DatagramTooLargeError: The kernel refused the size (``EMSGSIZE``).
            anyio.ClosedResourceError: The socket was closed, before or during the wait.
            OSError: What the kernel reports (counted as for :meth:`send_datagram_nowait`).
        """
        # SocketIO.send, inlined (one coroutine less per reply), with its fairness rule: a full
        # checkpoint every few sends that did not wait, before the system call (so a
        # cancellation never leaves a datagram half-sent).
        self._sends += 1
        if self._sends >= SEND_FAIRNESS_INTERVAL:
            self._sends = 0
            await self.primitives.checkpoint()
        if local is None:
            if self.send_nowait(data, address):
                return
        elif self.send_datagram_nowait(data, address, local):
            return
        while True:
            await self.wait_writable()
            if self.send_datagram_nowait(data, address, local):
                return


# -- binding ---------------------------------------------------------------------------------

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
) -> ServerSocketIO:
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
        pktinfo = False
        if _is_wildcard(family, sockaddr):
            if family == socket.AF_INET and IP_PKTINFO is not None:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                pktinfo = True
            elif family == socket.AF_INET6 and IPV6_RECVPKTINFO is not None:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
                pktinfo = True
        # Batched recvmmsg on Linux where it applies, the portable path elsewhere.
        from ._mmsg import server_socket_io  # here, not at the top: _mmsg imports this module

        return server_socket_io(sock, max_datagram_size=max_datagram_size, pktinfo=pktinfo)
    except BaseException:
        sock.close()
        raise


def open_server_sockets(
    addresses: list[tuple[int, tuple[Any, ...]]],
    *,
    max_datagram_size: int,
    reuse_port: bool,
    recv_buffer_size: int | None,
) -> list[ServerSocketIO]:
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
        opened: list[ServerSocketIO] = []
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
