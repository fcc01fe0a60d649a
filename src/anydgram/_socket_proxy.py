"""The read-mostly view of a socket that endpoints and servers hand out."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, overload

from ._socket_os import normalize_address

if TYPE_CHECKING:
    from ._io_core import SocketLike

__all__ = ("SocketProxy",)


class SocketProxy:
    """A read-mostly view of an endpoint's socket.

    It offers what is safe to use while the endpoint owns the socket (options, names, the file
    descriptor) and deliberately no ``close``, ``recv`` or ``send``.
    """

    __slots__ = ("_sock",)

    def __init__(self, sock: SocketLike) -> None:
        self._sock = sock

    def __repr__(self) -> str:
        return f"<SocketProxy fd={self._sock.fileno()} family={self.family!r}>"

    @property
    def family(self) -> socket.AddressFamily:
        """The socket's address family."""
        return self._sock.family

    @property
    def type(self) -> socket.SocketKind:
        """The socket's type (always ``SOCK_DGRAM``)."""
        return self._sock.type

    @property
    def proto(self) -> int:
        """The socket's protocol number."""
        return self._sock.proto

    def fileno(self) -> int:
        """The socket's file descriptor, or -1 once the endpoint is closed."""
        return self._sock.fileno()

    def getsockname(self) -> Any:
        """The socket's own address, as :meth:`socket.socket.getsockname` gives it."""
        return normalize_address(self._sock.family, self._sock.getsockname())

    def getpeername(self) -> Any:
        """The connected peer's address.

        Raises:
            OSError: The socket is not connected.
        """
        return normalize_address(self._sock.family, self._sock.getpeername())

    @overload
    def getsockopt(self, level: int, option: int) -> int: ...
    @overload
    def getsockopt(self, level: int, option: int, buflen: int) -> bytes: ...
    def getsockopt(self, level: int, option: int, buflen: int | None = None) -> int | bytes:
        """Read a socket option, as :meth:`socket.socket.getsockopt`."""
        if buflen is None:
            return self._sock.getsockopt(level, option)
        return self._sock.getsockopt(level, option, buflen)

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        """Set a socket option, as :meth:`socket.socket.setsockopt`."""
        self._sock.setsockopt(level, option, value)
