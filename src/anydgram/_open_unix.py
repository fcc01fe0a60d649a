"""Opening Unix datagram endpoints: paths, binding, and removing only the file we bound."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, overload

from anyio.lowlevel import checkpoint

from ._endpoint import DatagramClient, DatagramEndpoint
from ._open_endpoint import apply_buffer_sizes
from ._protocol import DatagramProtocol, RecvT, SendT
from ._socket_os import BoundPath

__all__ = ("connect_unix_datagram", "open_unix_datagram_endpoint")

StrPath = str | os.PathLike[str]


def _unix_path(path: object, name: str) -> str:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{name} must be a str or os.PathLike, not {type(path).__name__}")
    result: str | bytes = os.fspath(path)  # pyright: ignore[reportUnknownArgumentType]
    if not isinstance(result, str):
        raise TypeError(f"{name} must be a str path, not {type(result).__name__}")
    if not result:
        raise ValueError(f"{name} must not be empty")
    return result


def _unix_socket() -> socket.socket:
    if not hasattr(socket, "AF_UNIX"):  # pragma: no cover - Windows
        raise OSError("Unix datagram sockets are not supported on this platform")
    return socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)


@overload
async def connect_unix_datagram(
    path: StrPath,
    *,
    protocol: None = None,
    local_path: StrPath | None = None,
    recv_buffer_size: int | None = None,
    send_buffer_size: int | None = None,
) -> DatagramClient[bytes, bytes]: ...
@overload
async def connect_unix_datagram(
    path: StrPath,
    *,
    protocol: DatagramProtocol[SendT, RecvT],
    local_path: StrPath | None = None,
    recv_buffer_size: int | None = None,
    send_buffer_size: int | None = None,
) -> DatagramClient[SendT, RecvT]: ...
async def connect_unix_datagram(
    path: StrPath,
    *,
    protocol: DatagramProtocol[Any, Any] | None = None,
    local_path: StrPath | None = None,
    recv_buffer_size: int | None = None,
    send_buffer_size: int | None = None,
) -> DatagramClient[Any, Any]:
    r"""Open a Unix datagram socket connected to the socket at ``path``.

    A peer can only answer a Unix datagram socket that has an address, so when ``local_path``
    is omitted the socket is bound to a kernel-chosen abstract name (Linux); elsewhere it stays
    unbound and can only send.

    Args:
        path: The peer's path; a Linux abstract name starts with ``"\\0"``.
        protocol: Packets to datagrams and back; raw :class:`bytes` when omitted.
        local_path: The path to bind first. The socket file is removed again when the client
            closes, but only while it is still the file this call bound; a bind that fails
            never removes the path.
        recv_buffer_size: ``SO_RCVBUF`` to request, in bytes.
        send_buffer_size: ``SO_SNDBUF`` to request, in bytes (this bounds the largest
            datagram a Unix socket can send).

    Raises:
        TypeError: A path has the wrong type.
        OSError: The path cannot be bound or connected (no such socket, permission denied...).
    """
    target = _unix_path(path, "path")
    local = None if local_path is None else _unix_path(local_path, "local_path")
    await checkpoint()
    sock = _unix_socket()
    bound: BoundPath | None = None
    try:
        apply_buffer_sizes(sock, recv_buffer_size, send_buffer_size)
        if local is not None:
            sock.bind(local)
            bound = BoundPath.after_bind(local)
        elif sys.platform.startswith("linux"):
            sock.bind("")  # autobind: a unique abstract name the peer can reply to
        sock.connect(target)
        return DatagramClient._adopt(sock, protocol, unlink_path=bound)
    except BaseException:
        sock.close()
        # Only a file this call created is removed: a failed bind leaves the path alone.
        if bound is not None:
            bound.remove()
        raise


@overload
async def open_unix_datagram_endpoint(
    path: StrPath,
    *,
    protocol: None = None,
    recv_buffer_size: int | None = None,
    send_buffer_size: int | None = None,
) -> DatagramEndpoint[bytes, bytes]: ...
@overload
async def open_unix_datagram_endpoint(
    path: StrPath,
    *,
    protocol: DatagramProtocol[SendT, RecvT],
    recv_buffer_size: int | None = None,
    send_buffer_size: int | None = None,
) -> DatagramEndpoint[SendT, RecvT]: ...
async def open_unix_datagram_endpoint(
    path: StrPath,
    *,
    protocol: DatagramProtocol[Any, Any] | None = None,
    recv_buffer_size: int | None = None,
    send_buffer_size: int | None = None,
) -> DatagramEndpoint[Any, Any]:
    r"""Open a Unix datagram socket bound to ``path`` that can talk to any peer.

    The socket file is removed when the endpoint closes, but only while it is still the file
    this call bound (same device and inode): a path removed and bound again by someone else is
    left alone. A bind that fails never removes the path. Abstract names need no removal.

    Args:
        path: The path to bind; a Linux abstract name starts with ``"\\0"``.
        protocol: Packets to datagrams and back; raw :class:`bytes` when omitted.
        recv_buffer_size: ``SO_RCVBUF`` to request, in bytes.
        send_buffer_size: ``SO_SNDBUF`` to request, in bytes.

    Raises:
        TypeError: ``path`` has the wrong type.
        OSError: The path cannot be bound (already in use, permission denied...).
    """
    local = _unix_path(path, "path")
    await checkpoint()
    sock = _unix_socket()
    bound: BoundPath | None = None
    try:
        apply_buffer_sizes(sock, recv_buffer_size, send_buffer_size)
        sock.bind(local)
        bound = BoundPath.after_bind(local)
        return DatagramEndpoint._adopt(sock, protocol, unlink_path=bound)
    except BaseException:
        sock.close()
        # Only a file this call created is removed: a failed bind leaves the path alone.
        if bound is not None:
            bound.remove()
        raise
