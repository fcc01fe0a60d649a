"""What the DTLS tests share: certificates, an echo server, a relay that loses datagrams."""

from __future__ import annotations

import socket
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

pytest.importorskip("OpenSSL", reason="the dtls extra (pyOpenSSL) is not installed")

from anydgram import DatagramRequest, DatagramServer
from anydgram.dtls import DTLSServerConfig, client_context, server_context
from dtls_certs import PKI, make_pki

__all__ = ["PKI", "client_context", "echo_server", "lossy_relay", "make_pki", "server_context"]

BytesRequest = DatagramRequest[bytes, bytes]


async def upper_echo(request: BytesRequest) -> None:
    await request.respond(request.packet.upper())


@asynccontextmanager
async def echo_server(
    dtls: Any, *, host: str = "127.0.0.1", **kwargs: Any
) -> AsyncGenerator[tuple[DatagramServer[bytes, bytes], int]]:
    """A DTLS server answering each packet upper-cased; yields it and its port."""
    server = DatagramServer(host, 0, upper_echo, dtls=dtls, **kwargs)
    async with server.serving(grace_period=1.0) as addresses:
        yield server, addresses[0][1]


def default_config(pki: PKI, **kwargs: Any) -> DTLSServerConfig:
    return DTLSServerConfig(server_context(pki.server.certfile, pki.server.keyfile), **kwargs)


@asynccontextmanager
async def lossy_relay(
    target_port: int,
    drop: Callable[[int, bytes], bool],
    drop_back: Callable[[int, bytes], bool] = lambda index, data: False,
) -> AsyncGenerator[tuple[int, list[bytes]]]:
    """A UDP relay to ``127.0.0.1:target_port`` for one client.

    ``drop(n, data)`` decides whether the n-th datagram from the client (from 0) is lost,
    ``drop_back`` the same for the server's. Yields the relay's port and the list of what the
    client sent.
    """
    outer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    outer.bind(("127.0.0.1", 0))
    inner.connect(("127.0.0.1", target_port))
    outer.setblocking(False)
    inner.setblocking(False)
    seen: list[bytes] = []
    back: list[bytes] = []
    client: list[Any] = []

    async def forward() -> None:
        while True:
            await anyio.wait_readable(outer)
            data, address = outer.recvfrom(65536)
            client[:] = [address]
            index = len(seen)
            seen.append(data)
            if not drop(index, data):
                inner.send(data)

    async def backward() -> None:
        while True:
            await anyio.wait_readable(inner)
            try:
                data = inner.recv(65536)
            except ConnectionRefusedError:
                continue
            index = len(back)
            back.append(data)
            if client and not drop_back(index, data):
                outer.sendto(data, client[0])

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(forward)
            tasks.start_soon(backward)
            yield outer.getsockname()[1], seen
            tasks.cancel_scope.cancel()
    finally:
        outer.close()
        inner.close()
