"""The server's intake: parse errors counted, logged and handed to the hook.

The module under test: ``_server_intake.py``.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest

from anydgram import (
    DatagramProtocol,
    DatagramProtocolParseError,
    DatagramRequest,
    DatagramServer,
)
from anydgram.serializers import BytesSerializer, JSONSerializer
from endpoint_harness import wait_until
from server_harness import echo, peers, request_reply, serving

pytestmark = pytest.mark.anyio


async def test_parse_errors_are_counted_exactly(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(request: DatagramRequest[Any, Any]) -> None:
        await request.respond({"ok": request.packet})

    server = DatagramServer("127.0.0.1", 0, handler, protocol=DatagramProtocol(JSONSerializer()))
    rng = random.Random(4)
    total = 10_000
    with caplog.at_level(logging.WARNING, logger="anydgram.server"):
        async with serving(server) as addresses, peers() as (peer,):
            sent = 0
            while sent < total:
                # Paced: a burst never fills the kernel buffer, so loopback loses nothing.
                for _ in range(500):
                    await peer.send(b"\xff" + rng.randbytes(rng.randrange(64)), addresses[0])
                sent += 500

                def caught_up(expected: int = sent) -> bool:
                    return server.statistics().parse_errors == expected

                await wait_until(caught_up, timeout=10)
            reply = await request_reply(peer, b"[1, 2]", addresses[0])
    assert JSONSerializer().deserialize(reply) == {"ok": [1, 2]}
    stats = server.statistics()
    assert stats.parse_errors == total
    assert stats.datagrams_received == total + 1
    assert stats.kernel_drops == 0
    assert stats.handler_errors == 0
    assert len(caplog.records) <= 7


async def test_parse_error_handler_gets_the_bad_datagram() -> None:
    errors: list[DatagramProtocolParseError] = []

    async def on_parse_error(request: DatagramRequest[Any, DatagramProtocolParseError]) -> None:
        errors.append(request.packet)
        await request.respond({"error": "bad request"})

    async def handler(request: DatagramRequest[Any, Any]) -> None:
        await request.respond(request.packet)

    server = DatagramServer(
        "127.0.0.1",
        0,
        handler,
        protocol=DatagramProtocol(JSONSerializer()),
        parse_error_handler=on_parse_error,
    )
    async with serving(server) as addresses, peers() as (peer,):
        reply = await request_reply(peer, b"{nope", addresses[0])
        assert JSONSerializer().deserialize(reply) == {"error": "bad request"}
        sender = peer.address
    (error,) = errors
    assert (error.data, error.address) == (b"{nope", sender)
    assert server.statistics().parse_errors == 1


async def test_raising_parse_error_handler_counts_as_handler_error() -> None:
    async def on_parse_error(request: DatagramRequest[bytes, DatagramProtocolParseError]) -> None:
        raise RuntimeError("hook failed")

    server = DatagramServer(
        "127.0.0.1",
        0,
        echo,
        protocol=DatagramProtocol(BytesSerializer(), max_datagram_size=10),
        parse_error_handler=on_parse_error,
    )
    async with serving(server) as addresses, peers() as (peer,):
        # Longer than the limit: counted in oversize, never parsed nor given to the hook.
        await peer.send(b"x" * 11, addresses[0])
        assert await request_reply(peer, b"short", addresses[0]) == b"short"
    stats = server.statistics()
    assert (stats.oversize, stats.parse_errors, stats.handler_errors) == (1, 0, 0)
    assert stats.datagrams_received == 1
