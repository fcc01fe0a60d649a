"""DatagramServer end to end: echo, statistics, binding, robustness (``_server.py``)."""

from __future__ import annotations

import logging
import socket
from typing import Any

import anyio
import pytest

from anydgram import (
    DatagramProtocol,
    DatagramRequest,
    DatagramServer,
    LogBudget,
    ServerStatistics,
)
from anydgram.serializers import JSONSerializer
from anydgram.testing import MemoryNetwork
from endpoint_harness import wait_until
from server_harness import BytesRequest, echo, open_fds, peers, request_reply, serving

pytestmark = pytest.mark.anyio


async def test_echo_and_statistics() -> None:
    server = DatagramServer("127.0.0.1", 0, echo)
    before = server.addresses
    assert before == ()
    async with serving(server) as addresses, peers() as (peer,):
        assert addresses == server.addresses
        assert len(addresses) == 1
        assert addresses[0][0] == "127.0.0.1"
        assert addresses[0][1] > 0
        assert [s.getsockname() for s in server.sockets] == list(addresses)
        assert await request_reply(peer, b"hello", addresses[0]) == b"hello"
        assert await request_reply(peer, b"", addresses[0]) == b""
        stats = server.statistics()
        assert isinstance(stats, ServerStatistics)
        assert (stats.datagrams_received, stats.datagrams_sent) == (2, 2)
        assert (stats.bytes_received, stats.bytes_sent) == (5, 5)
        assert stats.recv_buffer_size >= 1 << 20
        assert stats.send_buffer_size > 0
        assert stats.handlers_peak == 1
        assert stats.unmatched_replies == stats.rate_limited == stats.amplification_dropped == 0
        assert "127.0.0.1" in repr(server)
    assert server.addresses == ()
    assert server.sockets == ()
    assert server.statistics().datagrams_received == 2  # counters survive closing


async def test_json_protocol_round_trip() -> None:
    async def handler(request: DatagramRequest[dict[str, Any], dict[str, Any]]) -> None:
        await request.respond({"echo": request.packet, "server": request.server is server})

    server = DatagramServer("127.0.0.1", 0, handler, protocol=DatagramProtocol(JSONSerializer()))
    async with serving(server) as addresses, peers() as (peer,):
        reply = await request_reply(peer, b'{"n": 1}', addresses[0])
    assert JSONSerializer().deserialize(reply) == {
        "echo": {"n": 1},
        "server": True,
    }


async def test_request_attributes() -> None:
    seen: list[BytesRequest] = []

    async def handler(request: BytesRequest) -> None:
        seen.append(request)
        await request.respond(b"ok")

    server = DatagramServer("127.0.0.1", 0, handler)
    async with serving(server) as addresses, peers() as (peer,):
        assert await request_reply(peer, b"data", addresses[0]) == b"ok"
        sender = peer.address
    (request,) = seen
    assert (request.packet, request.address, request.server) == (b"data", sender, server)
    assert "data" in repr(request)


async def test_host_list_binds_each_address_on_one_port() -> None:
    server = DatagramServer(["127.0.0.1", "::1"], 0, echo)
    async with serving(server) as addresses:
        assert [a[0] for a in addresses] == ["127.0.0.1", "::1"]
        assert addresses[0][1] == addresses[1][1]
        v6 = server.sockets[1]
        assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        for kind, address in (("udp4", addresses[0]), ("udp6", addresses[1])):
            async with peers(1, kind) as (peer,):
                assert await request_reply(peer, kind.encode(), address) == kind.encode()


async def test_a_name_binds_every_address_it_resolves_to() -> None:
    server = DatagramServer("localhost", 0, echo)
    async with serving(server) as addresses, peers() as (peer,):
        hosts = {a[0] for a in addresses}
        assert "127.0.0.1" in hosts
        assert hosts <= {"127.0.0.1", "::1"}
        assert len({a[1] for a in addresses}) == 1
        v4 = next(a for a in addresses if a[0] == "127.0.0.1")
        assert await request_reply(peer, b"by name", v4) == b"by name"


async def test_bind_failure_leaves_nothing_open() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        before = open_fds()
        server = DatagramServer(["::1", "127.0.0.1"], port, echo)
        with pytest.raises(OSError, match=r"127\.0\.0\.1") as info:
            await server.serve_forever()
        assert info.value.errno is not None
        assert open_fds() == before
    with pytest.raises(anyio.ClosedResourceError):
        await server.serve_forever()


async def test_vanished_clients_do_not_hurt_the_server() -> None:
    server = DatagramServer("127.0.0.1", 0, echo)
    async with serving(server) as addresses:
        for i in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
                gone.sendto(i.to_bytes(2, "big"), addresses[0])
        await wait_until(lambda: server.statistics().datagrams_received == 100)
        await wait_until(lambda: server.statistics().icmp_errors >= 1)
        async with peers() as (peer,):
            assert await request_reply(peer, b"alive?", addresses[0]) == b"alive?"
    stats = server.statistics()
    assert stats.handler_errors == 0
    assert stats.datagrams_received == 101
    assert stats.datagrams_sent + stats.send_errors + stats.icmp_errors >= 101


async def test_log_records_carry_the_peer_and_summaries_come_when_the_interval_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fail(request: BytesRequest) -> None:
        raise RuntimeError("boom")

    net = MemoryNetwork()
    logger = logging.getLogger("test.server.budget")
    budget = LogBudget(burst=1, interval=0.2)
    server = DatagramServer("127.0.0.1", 9000, fail, network=net, logger=logger, log_budget=budget)
    with caplog.at_level(logging.INFO, logger="test.server.budget"):
        async with serving(server), await net.connect_udp("127.0.0.1", 9000) as client:
            sender = client.local_address
            for _ in range(4):
                await client.send_packet(b"x")
            await wait_until(lambda: server.statistics().handler_errors == 4)
            # No more datagrams: the summary of the three suppressed records must come by
            # itself once the interval ends, not at the next record or at shutdown.
            await wait_until(lambda: any("suppressed" in r.getMessage() for r in caplog.records))
            assert server.statistics().handler_errors == 4
    failures = [r for r in caplog.records if getattr(r, "category", None) == "handler"]
    assert failures[0].getMessage().startswith("handler raised for a datagram from 127.0.0.1:")
    assert getattr(failures[0], "peer", None) == f"{sender[0]}:{sender[1]}"  # type: ignore[index]
    summary = next(r for r in caplog.records if "suppressed" in r.getMessage())
    assert getattr(summary, "suppressed", None) == 3
