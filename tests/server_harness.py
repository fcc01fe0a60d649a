"""Shared by the server tests: serving a server, raw peers, an echo handler."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from anydgram import (
    DatagramRequest,
    DatagramServer,
)
from endpoint_harness import RawPeer, make_peer

BytesRequest = DatagramRequest[bytes, bytes]


@asynccontextmanager
async def serving(server: DatagramServer[Any, Any]) -> AsyncGenerator[tuple[Any, ...]]:
    """Run ``server`` in a task group; yield its addresses; close it on the way out."""
    async with anyio.create_task_group() as tg:
        addresses = await tg.start(server.serve_forever)
        try:
            yield addresses
        finally:
            await server.aclose()


@asynccontextmanager
async def peers(count: int = 1, kind: str = "udp4") -> AsyncGenerator[list[RawPeer]]:
    made = [make_peer(kind, "") for _ in range(count)]
    try:
        yield made
    finally:
        for peer in made:
            peer.close()


async def echo(request: BytesRequest) -> None:
    await request.respond(request.packet)


async def request_reply(peer: RawPeer, data: bytes, address: Any, timeout: float = 5) -> bytes:
    await peer.send(data, address)
    with anyio.fail_after(timeout):
        reply, _ = await peer.recv()
    return reply


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
