"""Receive metadata: what the kernel says about each datagram besides its bytes and sender.

With ``receive_metadata=True`` a socket asks for a receive timestamp, the TTL (hop limit), the
TOS (traffic class) byte and the destination address of every datagram, as control messages.
The receive strategies keep a datagram's control messages as they come (the list ``recvmsg``
returns, or the raw control area of a ``recvmmsg`` slot); :class:`MetadataParser` turns them
into a :class:`DatagramMetadata` only when someone asks, so a server whose handlers never read
``request.metadata`` pays for the system call's extra bytes and nothing else.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any, Final

__all__ = (
    "CONTROL_SIZE",
    "MSG_CTRUNC",
    "Ancillary",
    "DatagramMetadata",
    "MetadataParser",
    "check_tos",
    "enable_metadata",
    "no_metadata_error",
    "set_tos",
)

_IS_LINUX: Final = sys.platform.startswith("linux")

# Linux values: Python 3.11's socket module lacks several of them.
SO_TIMESTAMPNS: Final = 35  # also the control message's type (SCM_TIMESTAMPNS)
IP_TOS: Final = 1
IP_TTL: Final = 2
IP_PKTINFO: Final = 8
IP_RECVTTL: Final = 12
IP_RECVTOS: Final = 13
IPV6_RECVPKTINFO: Final = 49
IPV6_PKTINFO: Final = 50
IPV6_RECVHOPLIMIT: Final = 51
IPV6_HOPLIMIT: Final = 52
IPV6_RECVTCLASS: Final = 66
IPV6_TCLASS: Final = 67
MSG_CTRUNC: Final = 8

#: Room for one datagram's control messages: a timestamp, TTL, TOS and destination (on a
#: dual-stack socket both the IPv4 and the IPv6 kinds), the GRO segment size, with room over.
CONTROL_SIZE: Final = 256

#: One datagram's control messages as a receive strategy keeps them: ``recvmsg``'s list of
#: ``(level, type, data)``, or the raw control area of a ``recvmmsg`` slot.
Ancillary = list[tuple[int, int, bytes]] | bytes

_HEADER: Final = struct.Struct("@Nii")  # struct cmsghdr {size_t len; int level; int type}
_ALIGN: Final = struct.calcsize("@N")
_TIMESPEC: Final = struct.Struct("@qq")
_TIMESPEC_ILP32: Final = struct.Struct("@ii")
_INT: Final = struct.Struct("@i")
_V4_MAPPED: Final = bytes(10) + b"\xff\xff"
_CACHE_SIZE: Final = 256


@dataclass(frozen=True, slots=True)
class DatagramMetadata:
    """What the kernel reported about one received datagram; ``None`` where it said nothing.

    Attributes:
        timestamp: When the kernel received the datagram, in seconds on the
            :func:`time.time` clock (``SO_TIMESTAMPNS``).
        ttl: The IPv4 TTL or IPv6 hop limit it arrived with.
        tos: Its whole IPv4 TOS or IPv6 traffic class byte (DSCP and ECN).
        ecn: The ECN field, the low two bits of ``tos`` (0 not ECN-capable, 1 ECT(1), 2 ECT(0),
            3 CE).
        local_address: The address it was sent to (one of this host's, with the socket's
            port), as the :mod:`socket` module writes addresses of the socket's family: on a
            wildcard or dual-stack socket this tells which address a peer used.
    """

    timestamp: float | None = None
    ttl: int | None = None
    tos: int | None = None
    ecn: int | None = None
    local_address: tuple[str, int] | tuple[str, int, int, int] | None = None


def enable_metadata(sock: socket.socket) -> None:
    """Ask the kernel for every datagram's metadata on an IP socket.

    An IPv6 socket is asked for the IPv4 kinds too, which the kernel gives for the IPv4
    datagrams a dual-stack socket receives. Options a platform does not have are skipped: the
    fields stay ``None``.

    Raises:
        ValueError: ``sock`` is not an IPv4 or IPv6 socket.
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(
            f"receive_metadata=True needs a UDP (IPv4 or IPv6) socket, not {sock.family!r}"
        )
    if not _IS_LINUX:  # pragma: no cover - the values above are Linux's
        return
    options = [
        (socket.SOL_SOCKET, SO_TIMESTAMPNS),
        (socket.IPPROTO_IP, IP_RECVTTL),
        (socket.IPPROTO_IP, IP_RECVTOS),
    ]
    if sock.family == socket.AF_INET:
        options.append((socket.IPPROTO_IP, IP_PKTINFO))
    else:
        options += [
            (socket.IPPROTO_IPV6, IPV6_RECVPKTINFO),
            (socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT),
            (socket.IPPROTO_IPV6, IPV6_RECVTCLASS),
        ]
    for level, option in options:
        # An IPv4 option on an IPv6-only stack, an old kernel: that field stays None.
        with contextlib.suppress(OSError):
            sock.setsockopt(level, option, 1)


def no_metadata_error(owner: object, family: int) -> ValueError:
    """The error for ``recv_packet_with_metadata()`` on ``owner``, which receives none."""
    name = type(owner).__name__
    if family == socket.AF_UNIX:
        return ValueError(f"this {name} is a Unix datagram socket: they carry no receive metadata")
    return ValueError(f"this {name} was opened without receive_metadata=True")


def check_tos(tos: object) -> int | None:
    """``tos=``, checked: ``None`` or a byte.

    Raises:
        TypeError: Not an int.
        ValueError: Outside 0-255.
    """
    if tos is None:
        return None
    if not isinstance(tos, int) or isinstance(tos, bool):
        raise TypeError(f"tos must be an int, not {type(tos).__name__}")
    if not 0 <= tos <= 255:
        raise ValueError(f"tos must be between 0 and 255, got {tos}")
    return tos


def set_tos(sock: socket.socket, tos: int) -> None:
    """Send every datagram of ``sock`` with this TOS (IPv4) or traffic class (IPv6) byte.

    Raises:
        ValueError: ``sock`` is not an IP socket.
        OSError: The kernel refused the value.
    """
    if sock.family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, IP_TOS, tos)
    elif sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TCLASS, tos)
        with contextlib.suppress(OSError):  # the IPv4 datagrams of a dual-stack socket
            sock.setsockopt(socket.IPPROTO_IP, IP_TOS, tos)
    else:
        raise ValueError(f"tos= needs a UDP (IPv4 or IPv6) socket, not {sock.family!r}")


def split_control_untrusted(raw: bytes) -> list[tuple[int, int, bytes]]:
    """The control messages of a raw control area, as ``recvmsg`` lists them.

    A message whose length runs past the area (the kernel never writes one, but the area may
    have been cut short) ends the list.
    """
    messages: list[tuple[int, int, bytes]] = []
    header = _HEADER.size
    offset = 0
    end = len(raw)
    while offset + header <= end:
        length, level, kind = _HEADER.unpack_from(raw, offset)
        if length < header or offset + length > end:
            break
        messages.append((level, kind, raw[offset + header : offset + length]))
        offset += (length + _ALIGN - 1) & ~(_ALIGN - 1)
    return messages


class MetadataParser:
    """One socket's control messages into :class:`DatagramMetadata`, on demand.

    Args:
        family: The socket's family (addresses are written as it writes them).
        port: The socket's port, the port of every ``local_address``.
    """

    __slots__ = ("_addresses", "_family", "_port", "_short")

    def __init__(self, family: int, port: int, *, short_ipv6: bool = False) -> None:
        self._family = family
        self._port = port
        #: IPv6 addresses as ``(host, port)``, as the socket writes its own (the memory
        #: network's do); a real IPv6 socket writes four items.
        self._short = short_ipv6
        #: Destination addresses decoded, by their raw bytes (the host's own, so few).
        self._addresses: dict[bytes, Any] = {}

    def parse(self, ancillary: Ancillary | None) -> DatagramMetadata:
        """The metadata in one datagram's control messages (fields it lacks are ``None``)."""
        if ancillary is None:
            return DatagramMetadata()
        messages = split_control_untrusted(ancillary) if isinstance(ancillary, bytes) else ancillary
        timestamp = ttl = tos = None
        local = None
        for level, kind, data in messages:
            if level == socket.SOL_SOCKET:
                if kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC_ILP32.size:
                    # A timespec of two longs: 16 bytes on 64-bit Linux, 8 on 32-bit.
                    layout = _TIMESPEC if len(data) >= _TIMESPEC.size else _TIMESPEC_ILP32
                    seconds, nanoseconds = layout.unpack_from(data)
                    timestamp = seconds + nanoseconds * 1e-9
            elif level == socket.IPPROTO_IP:
                if kind == IP_TTL and len(data) >= _INT.size:
                    ttl = _INT.unpack_from(data)[0]
                elif kind == IP_TOS and data:
                    tos = data[0]
                elif kind == IP_PKTINFO and len(data) >= 12 and local is None:
                    local = self._address(data[8:12])  # in_pktinfo.ipi_addr: the destination
            elif level == socket.IPPROTO_IPV6:
                if kind == IPV6_HOPLIMIT and len(data) >= _INT.size:
                    ttl = _INT.unpack_from(data)[0]
                elif kind == IPV6_TCLASS and len(data) >= _INT.size:
                    tos = _INT.unpack_from(data)[0] & 0xFF
                elif kind == IPV6_PKTINFO and len(data) >= 20:
                    local = self._address(data[:20])
        return DatagramMetadata(timestamp, ttl, tos, None if tos is None else tos & 3, local)

    def _address(self, raw: bytes) -> Any:
        """A destination address (4 bytes: IPv4; 20: an ``in6_pktinfo``) as the socket's own."""
        cached = self._addresses.get(raw)
        if cached is not None:
            return cached
        if len(raw) == 4:
            if self._family == socket.AF_INET:
                address: Any = (socket.inet_ntop(socket.AF_INET, raw), self._port)
            else:  # an IPv4 datagram on a dual-stack socket: an IPv4-mapped address
                address = (socket.inet_ntop(socket.AF_INET6, _V4_MAPPED + raw), self._port, 0, 0)
                if self._short:
                    address = address[:2]
        else:
            packed, index = raw[:16], int.from_bytes(raw[16:20], sys.byteorder)
            link_local = packed[0] == 0xFE and packed[1] & 0xC0 == 0x80
            host = socket.inet_ntop(socket.AF_INET6, packed)
            if self._family == socket.AF_INET and packed[:12] == _V4_MAPPED:
                address = (socket.inet_ntop(socket.AF_INET, packed[12:]), self._port)
            elif self._short:
                address = (host, self._port)
            else:
                address = (host, self._port, 0, index if link_local else 0)
        if len(self._addresses) >= _CACHE_SIZE:
            self._addresses.clear()
        self._addresses[raw] = address
        return address
