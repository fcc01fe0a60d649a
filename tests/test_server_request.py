"""Requests and replies: reply sizes, failed sends, reply source addresses, send_packet.

The module under test: ``_server_request.py``.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Any

import anyio
import pytest

from anydgram import (
    DatagramProtocol,
    DatagramProtocolParseError,
    DatagramRequest,
    DatagramServer,
    DatagramTooLargeError,
)
from anydgram.serializers import BytesSerializer, JSONSerializer
from endpoint_harness import RawPeer
from server_harness import BytesRequest, echo, peers, request_reply, serving

pytestmark = pytest.mark.anyio


async def test_reply_too_large_raises_in_the_handler() -> None:
    outcome: list[BaseException] = []

    async def handler(request: BytesRequest) -> None:
        try:
            await request.respond(b"x" * 11)
        except DatagramTooLargeError as exc:
            outcome.append(exc)
            await request.respond(b"small")

    server = DatagramServer(
        "127.0.0.1",
        0,
        handler,
        protocol=DatagramProtocol(BytesSerializer(), max_datagram_size=10),
    )
    async with serving(server) as addresses, peers() as (peer,):
        assert await request_reply(peer, b"hi", addresses[0]) == b"small"
    assert len(outcome) == 1
    assert server.statistics().datagrams_sent == 1


async def test_failed_reply_is_counted_and_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(request: BytesRequest) -> None:
        request.address = ("127.0.0.1", 0)  # the kernel refuses port 0 (EINVAL), sends nothing
        await request.respond(b"lost")
        await request.server.send_packet(b"ok", peer.address)

    server = DatagramServer("127.0.0.1", 0, handler)
    with caplog.at_level(logging.WARNING, logger="anydgram.server"):
        async with serving(server) as addresses, peers() as (peer,):
            assert await request_reply(peer, b"hi", addresses[0]) == b"ok"
            stats = server.statistics()
            assert (stats.send_errors, stats.datagrams_sent, stats.handler_errors) == (1, 1, 0)
            # send_packet() is an API call: the same failure is raised (and counted).
            with pytest.raises(OSError, match="Invalid argument") as info:
                await server.send_packet(b"x", ("127.0.0.1", 0))
            assert info.value.errno == errno.EINVAL
            assert server.statistics().send_errors == 2
    assert any("could not send to 127.0.0.1:0" in r.getMessage() for r in caplog.records)


async def test_wildcard_server_replies_from_the_address_it_was_sent_to() -> None:
    server = DatagramServer(None, 0, echo)
    async with serving(server) as addresses:
        assert {a[0] for a in addresses} == {"0.0.0.0", "::"}
        assert len({a[1] for a in addresses}) == 1
        port = addresses[0][1]
        for target, family in (
            ("127.0.0.2", socket.AF_INET),
            ("127.0.0.1", socket.AF_INET),
            ("::1", socket.AF_INET6),
        ):
            # A connected UDP socket only accepts datagrams from its peer address: a reply
            # from any other source would be dropped and this would time out.
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.connect((target, port))
            peer = RawPeer(sock)
            try:
                await peer.send(target.encode(), (target, port))
                with anyio.fail_after(5):
                    data, source = await peer.recv()
            finally:
                peer.close()
            assert data == target.encode()
            assert (source[0], source[1]) == (target, port)


async def test_wildcard_replies_with_a_parsing_protocol_and_its_hook() -> None:
    async def handler(request: DatagramRequest[Any, Any]) -> None:
        await request.respond({"ok": request.packet})

    async def on_parse_error(request: DatagramRequest[Any, DatagramProtocolParseError]) -> None:
        await request.respond({"bad": len(request.packet.data)})

    server = DatagramServer(
        None,
        0,
        handler,
        protocol=DatagramProtocol(JSONSerializer()),
        parse_error_handler=on_parse_error,
    )
    async with serving(server) as addresses:
        port = addresses[0][1]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(("127.0.0.2", port))
        peer = RawPeer(sock)
        try:
            reply = await request_reply(peer, b"[1]", ("127.0.0.2", port))
            assert JSONSerializer().deserialize(reply) == {"ok": [1]}
            reply = await request_reply(peer, b"{x", ("127.0.0.2", port))
            assert JSONSerializer().deserialize(reply) == {"bad": 2}
        finally:
            peer.close()


async def test_send_packet_picks_the_socket_of_the_family() -> None:
    server = DatagramServer(["127.0.0.1", "::1"], 0, echo)
    async with serving(server) as addresses, peers(1, "udp4") as (v4,), peers(1, "udp6") as (v6,):
        await server.send_packet(b"to v4", v4.address)
        await server.send_packet(b"to v6", v6.address)
        with anyio.fail_after(5):
            assert await v4.recv() == (b"to v4", addresses[0])
            assert (await v6.recv())[0] == b"to v6"
        with pytest.raises(TypeError, match="address"):
            await server.send_packet(b"x", "not an address")
    with pytest.raises(anyio.ClosedResourceError):
        await server.send_packet(b"late", ("127.0.0.1", 9))


async def test_send_packet_without_a_socket_of_the_family() -> None:
    server = DatagramServer("127.0.0.1", 0, echo)
    async with serving(server):
        with pytest.raises(ValueError, match="IPv6"):
            await server.send_packet(b"x", ("::1", 9))
