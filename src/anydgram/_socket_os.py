"""What the operating system says about a socket, and does to one, outside its sends and receives.

The socket options set once (ICMP errors queued for counting), the kernel's drop count, the
datagrams left unread at close and the Unix socket file a bind created, for
:mod:`anydgram._io_core` and the modules that open sockets.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import struct
import sys
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ._io_core import SocketLike

__all__ = (
    "ICMP_ERRNOS",
    "IS_LINUX",
    "MAX_DRAIN_AT_CLOSE",
    "SK_MEMINFO_DROPS",
    "SOL_UDP",
    "SO_MEMINFO",
    "UDP_GRO",
    "BoundPath",
    "drain_unread",
    "normalize_address",
    "read_kernel_drops",
    "segment_size",
    "set_recverr",
)

IS_LINUX: Final = sys.platform.startswith("linux")

# Linux values the socket module of Python 3.11 does not export.
SO_MEMINFO: Final = 55
SK_MEMINFO_DROPS: Final = 8
IP_RECVERR: Final = 11
IPV6_RECVERR: Final = 25

#: Errors the kernel reports from an ICMP message (or a local route failure) for an earlier send.
ICMP_ERRNOS: Final = frozenset(
    {
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.EPROTO,
        errno.ECONNRESET,
    }
)

#: At most this many datagrams are drained (and counted in ``unread_at_close``) when a socket
#: closes; a receive buffer holds far fewer, so the bound only matters if a sender keeps up.
MAX_DRAIN_AT_CLOSE: Final = 1 << 16


class BoundPath:
    """A Unix socket file this process bound, removed at close only while it is still ours."""

    __slots__ = ("_identity", "path")

    def __init__(self, path: str, identity: tuple[int, int]) -> None:
        self.path: str = path
        # Device and inode right after bind(): a path removed and bound again by someone else
        # is a different file, which remove() leaves alone.
        self._identity: tuple[int, int] = identity

    @classmethod
    def after_bind(cls, path: str) -> BoundPath | None:
        """The file ``bind(path)`` just created; ``None`` for an abstract name or if unknown."""
        if path.startswith("\0"):
            return None
        try:
            info = os.lstat(path)
        except OSError:
            return None  # a file we cannot identify is never removed
        return cls(path, (info.st_dev, info.st_ino))

    def remove(self) -> None:
        """Remove the file if it is still the socket file that was bound."""
        try:
            info = os.lstat(self.path)
        except OSError:
            return
        if not stat.S_ISSOCK(info.st_mode) or (info.st_dev, info.st_ino) != self._identity:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def normalize_address(family: int, address: Any) -> Any:
    """``address`` in the form the public API promises (Unix names as ``str``)."""
    if family == socket.AF_UNIX and isinstance(address, bytes):
        return os.fsdecode(address)
    return address


def set_recverr(sock: socket.socket) -> None:
    """Queue ICMP errors on an unconnected IP socket, to be counted instead of lost or raised."""
    if not IS_LINUX:
        return
    try:
        if sock.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        elif sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            # A dual-stack socket receives IPv4 errors through the IPv4 option.
            if not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    except OSError:  # not supported here: errors stay uncounted, as DESIGN.md allows
        pass


def drain_unread(sock: SocketLike, limit: int = MAX_DRAIN_AT_CLOSE) -> int:
    """Discard the datagrams waiting in ``sock``'s receive buffer; how many (at most ``limit``).

    On a socket with ``UDP_GRO`` one buffer may hold a train of datagrams: each is counted.
    """
    if isinstance(sock, socket.socket) and _has_gro(sock):
        return _drain_coalesced(sock, limit)
    count = errors = 0
    while count < limit and errors < limit:
        try:
            sock.recv(1, socket.MSG_DONTWAIT)  # truncated to one byte: only the count matters
        except BlockingIOError:
            break
        except OSError as exc:
            if exc.errno in ICMP_ERRNOS:  # queued errors are skipped, not counted
                errors += 1
                continue
            break
        count += 1
    return count


#: Linux's ``SOL_UDP`` and ``UDP_GRO`` (not in the socket module on Python 3.11).
SOL_UDP: Final = 17
UDP_GRO: Final = 104


def segment_size(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The ``UDP_GRO`` segment size among a receive's control messages, 0 if there is none."""
    for level, kind, value in ancillary:
        if level == SOL_UDP and kind == UDP_GRO and len(value) >= 4:
            return int.from_bytes(value[:4], sys.byteorder, signed=True)
    return 0


def _has_gro(sock: socket.socket) -> bool:
    if not IS_LINUX or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        return bool(sock.getsockopt(SOL_UDP, UDP_GRO))
    except OSError:
        return False


def _drain_coalesced(sock: socket.socket, limit: int) -> int:
    """:func:`drain_unread` for a ``UDP_GRO`` socket: buffers counted by their segment size."""
    byte = bytearray(1)
    count = errors = 0
    while count < limit and errors < limit:
        try:
            # MSG_TRUNC: the buffer's whole length comes back, though one byte is copied.
            length, ancillary, _, _ = sock.recvmsg_into(
                [byte], 64, socket.MSG_DONTWAIT | socket.MSG_TRUNC
            )
        except BlockingIOError:
            break
        except OSError as exc:
            if exc.errno in ICMP_ERRNOS:
                errors += 1
                continue
            break
        size = segment_size(ancillary)
        count += -(-length // size) if 0 < size < length else 1
    return min(count, limit)


def read_kernel_drops(sock: SocketLike) -> int:
    """The kernel's count of datagrams it dropped for ``sock`` (``SO_MEMINFO``), 0 if unknown."""
    if not IS_LINUX:
        return 0
    size = 4 * (SK_MEMINFO_DROPS + 1)
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, size)
    except OSError:
        return 0
    if len(raw) < size:
        return 0
    drops: int = struct.unpack_from("I", raw, 4 * SK_MEMINFO_DROPS)[0]
    return drops
