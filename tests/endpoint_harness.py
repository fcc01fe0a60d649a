"""Builders for the endpoint under test and a raw peer to talk to it.

The behaviour cases in ``test_endpoint.py`` are written once against these builders, so every
implementation (async endpoints over each address family, and later the blocking client and the
in-memory network) runs the same cases. The peer is a plain non-blocking stdlib socket, so the
cases do not test anydgram against itself.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio

import anydgram
from anydgram import DatagramClient, DatagramEndpoint, DatagramProtocol

KINDS = ["udp4", "udp6", "unix", "unix-abstract"]


class RawPeer:
    """The far side: a non-blocking stdlib socket driven by anyio's wait primitives."""

    def __init__(self, sock: socket.socket, unlink: str | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._unlink = unlink

    @property
    def address(self) -> Any:
        name = self.sock.getsockname()
        return os.fsdecode(name) if isinstance(name, bytes) else name

    async def send(self, data: bytes, address: Any) -> None:
        while True:
            try:
                self.sock.sendto(data, address)
            except BlockingIOError:
                await anyio.wait_writable(self.sock)
                # An unconnected Unix sender is "writable" while its peer's queue is full.
                await anyio.sleep(0.001)
            else:
                return

    async def recv(self, bufsize: int = 70000) -> tuple[bytes, Any]:
        while True:
            try:
                data, address = self.sock.recvfrom(bufsize)
            except BlockingIOError:
                await anyio.wait_readable(self.sock)
            else:
                if isinstance(address, bytes):
                    address = os.fsdecode(address)
                return data, address

    def close(self) -> None:
        self.sock.close()
        if self._unlink is not None and not self._unlink.startswith("\0"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._unlink)


def _unix_name(kind: str, directory: str) -> str:
    if kind == "unix-abstract":
        return f"\0anydgram-test-{uuid.uuid4().hex}"
    return os.path.join(directory, f"{uuid.uuid4().hex[:12]}.sock")


def make_peer(kind: str, directory: str) -> RawPeer:
    """A bound raw socket of the address family ``kind`` names."""
    if kind in ("udp4", "udp6"):
        family, host = (socket.AF_INET, "127.0.0.1") if kind == "udp4" else (socket.AF_INET6, "::1")
        sock = socket.socket(family, socket.SOCK_DGRAM)
        # Room for a test's worth of datagrams, so the peer never drops what it is sent.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((host, 0))
        return RawPeer(sock)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = _unix_name(kind, directory)
    sock.bind(name)
    return RawPeer(sock, unlink=name)


@dataclass
class Harness:
    """Opens endpoints of one kind and the peers they talk to; closes everything at the end."""

    kind: str
    directory: str
    stack: AsyncExitStack

    @property
    def is_udp(self) -> bool:
        return self.kind.startswith("udp")

    def peer(self) -> RawPeer:
        peer = make_peer(self.kind, self.directory)
        self.stack.callback(peer.close)
        return peer

    async def client(
        self,
        peer: RawPeer,
        *,
        protocol: DatagramProtocol[Any, Any] | None = None,
        recv_buffer_size: int | None = None,
        send_buffer_size: int | None = None,
    ) -> DatagramClient[Any, Any]:
        """A client connected to ``peer``."""
        if self.is_udp:
            host, port = peer.address[:2]
            client = await anydgram.connect_udp(
                host,
                port,
                protocol=protocol,
                recv_buffer_size=recv_buffer_size,
                send_buffer_size=send_buffer_size,
            )
        else:
            client = await anydgram.connect_unix_datagram(
                peer.address,
                protocol=protocol,
                local_path=_unix_name(self.kind, self.directory),
                recv_buffer_size=recv_buffer_size,
                send_buffer_size=send_buffer_size,
            )
        self.stack.push_async_callback(client.aclose)
        return client

    async def endpoint(
        self,
        *,
        protocol: DatagramProtocol[Any, Any] | None = None,
        recv_buffer_size: int | None = None,
        send_buffer_size: int | None = None,
    ) -> DatagramEndpoint[Any, Any]:
        """A bound, unconnected endpoint on the loopback interface."""
        if self.is_udp:
            endpoint = await anydgram.open_udp_endpoint(
                "127.0.0.1" if self.kind == "udp4" else "::1",
                0,
                protocol=protocol,
                recv_buffer_size=recv_buffer_size,
                send_buffer_size=send_buffer_size,
            )
        else:
            endpoint = await anydgram.open_unix_datagram_endpoint(
                _unix_name(self.kind, self.directory),
                protocol=protocol,
                recv_buffer_size=recv_buffer_size,
                send_buffer_size=send_buffer_size,
            )
        self.stack.push_async_callback(endpoint.aclose)
        return endpoint


@asynccontextmanager
async def open_harness(kind: str) -> AsyncGenerator[Harness]:
    with tempfile.TemporaryDirectory(prefix="anydgram-") as directory:
        async with AsyncExitStack() as stack:
            yield Harness(kind, directory, stack)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` (cheap, side-effect free) until true; fail after ``timeout``."""
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - kernel counters have no event to wait on
            await anyio.sleep(0.005)


AsyncFn = Callable[[], Awaitable[None]]
