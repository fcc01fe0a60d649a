"""DatagramServer: dispatch, its bound, robustness, reply addresses and shutdown, on every backend.

The clients are raw stdlib sockets (``RawPeer``), so the server is not tested against anydgram's
own endpoints.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import random
import socket
import time
from collections.abc import AsyncGenerator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from anydgram import (
    DatagramProtocol,
    DatagramProtocolParseError,
    DatagramRequest,
    DatagramServer,
    DatagramTooLargeError,
    ServerStatistics,
)
from anydgram._logging import RateLimitedLog
from anydgram._workers import resolve_backend
from anydgram.serializers import BytesSerializer, JSONSerializer
from anydgram.testing import MemoryNetwork
from endpoint_harness import RawPeer, make_peer, wait_until

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


# -- basics ----------------------------------------------------------------------------------


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


# -- dispatch and its bound ------------------------------------------------------------------


async def test_concurrency_bound_holds_and_nothing_is_dropped() -> None:
    release = anyio.Event()
    running = 0
    peak = 0
    handled: list[bytes] = []

    async def handler(request: BytesRequest) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await release.wait()
            handled.append(request.packet)
            await request.respond(request.packet)
        finally:
            running -= 1

    server = DatagramServer("127.0.0.1", 0, handler, max_concurrent_handlers=8)
    async with serving(server) as addresses, peers() as (peer,):
        for i in range(100):
            await peer.send(i.to_bytes(2, "big"), addresses[0])
        await wait_until(lambda: running == 8)
        # The rest waits in the kernel: the server stopped reading at the bound.
        await anyio.sleep(0.1)
        assert running == 8
        assert server.statistics().datagrams_received <= 8
        release.set()
        replies: set[bytes] = set()
        with anyio.fail_after(10):
            while len(replies) < 100:
                replies.add((await peer.recv())[0])
    assert peak == 8
    assert sorted(handled) == [i.to_bytes(2, "big") for i in range(100)]
    stats = server.statistics()
    assert stats.handlers_peak == 8
    assert (stats.datagrams_received, stats.datagrams_sent, stats.kernel_drops) == (100, 100, 0)


@pytest.mark.parametrize(("bound", "sockets"), [(1, 2), (2, 3)])
async def test_concurrency_bound_holds_across_sockets(bound: int, sockets: int) -> None:
    # Each socket's reader waits for datagrams with the room it saw before the others took
    # theirs; requests read that way wait for a handler slot instead of running beyond it.
    net = MemoryNetwork()
    release = anyio.Event()

    async def handler(request: BytesRequest) -> None:
        await release.wait()
        await request.respond(request.packet)

    hosts = [f"127.0.0.{i + 1}" for i in range(sockets)]
    server = DatagramServer(hosts, 0, handler, network=net, max_concurrent_handlers=bound)
    sent = [b"%d-%d" % (s, i) for s in range(sockets) for i in range(bound)]
    replies: list[bytes] = []
    with anyio.fail_after(5):
        async with serving(server) as addresses:
            clients = [await net.connect_udp(*address) for address in addresses]
            for number, client in enumerate(clients):
                for i in range(bound):
                    await client.send_packet(b"%d-%d" % (number, i))
                await anyio.wait_all_tasks_blocked()
            assert server.statistics().handlers_active == bound
            release.set()
            for client in clients:
                replies += [await client.recv_packet() for _ in range(bound)]
                await client.aclose()
    assert sorted(replies) == sorted(sent)
    assert server.statistics().handlers_peak == bound


async def test_handlers_run_concurrently() -> None:
    # Every handler waits until all 20 have started: only concurrent dispatch finishes.
    all_started = anyio.Event()
    count = 0

    async def handler(request: BytesRequest) -> None:
        nonlocal count
        count += 1
        if count == 20:
            all_started.set()
        await all_started.wait()
        await request.respond(request.packet)

    server = DatagramServer("127.0.0.1", 0, handler)
    async with serving(server) as addresses, peers() as (peer,):
        for i in range(20):
            await peer.send(str(i).encode(), addresses[0])
        with anyio.fail_after(5):
            got = {(await peer.recv())[0] for _ in range(20)}
    assert got == {str(i).encode() for i in range(20)}
    stats = server.statistics()
    assert (stats.handlers_active, stats.handlers_peak) == (0, 20)


async def test_burst_of_fast_requests_is_answered() -> None:
    server = DatagramServer("127.0.0.1", 0, echo, max_concurrent_handlers=4)
    async with serving(server) as addresses, peers() as (peer,):
        for i in range(500):
            await peer.send(i.to_bytes(2, "big"), addresses[0])
        with anyio.fail_after(10):
            got = {(await peer.recv())[0] for _ in range(500)}
    assert len(got) == 500
    assert server.statistics().handlers_peak <= 4


async def test_a_blocked_handler_holds_up_neither_its_batch_nor_reading() -> None:
    # The memory network hands the reader all eight datagrams in one batch. The reading task
    # runs quick handlers itself; when the first one blocks, another task must take over the
    # rest of the batch, and the reading.
    net = MemoryNetwork()
    release = anyio.Event()

    async def handler(request: BytesRequest) -> None:
        if request.packet == b"block":
            await release.wait()
        await request.respond(request.packet)

    server = DatagramServer("127.0.0.1", 0, handler, network=net)
    with anyio.fail_after(5):
        async with serving(server) as addresses, await net.connect_udp(*addresses[0]) as client:
            await client.send_packet(b"block")
            for i in range(7):
                await client.send_packet(b"%d" % i)
            assert {await client.recv_packet() for _ in range(7)} == {b"%d" % i for i in range(7)}
            await client.send_packet(b"later")
            assert await client.recv_packet() == b"later"
            assert server.statistics().handlers_active == 1
            release.set()
            assert await client.recv_packet() == b"block"
    stats = server.statistics()
    # The quick handlers ran one after another: only the blocked one ran beside them.
    assert (stats.handlers_peak, stats.datagrams_sent, stats.handlers_cancelled) == (2, 9, 0)


async def test_a_handler_sending_many_replies_leaves_room_for_the_others() -> None:
    # One handler replies 300 times without waiting for anything: respond() passes a full
    # checkpoint every so often, and the requests read with it are answered all the same.
    net = MemoryNetwork(queue_size=1024)

    async def handler(request: BytesRequest) -> None:
        for _ in range(300 if request.packet == b"many" else 1):
            await request.respond(request.packet)

    server = DatagramServer("127.0.0.1", 0, handler, network=net)
    replies: list[bytes] = []
    with anyio.fail_after(5):
        async with serving(server) as addresses, await net.connect_udp(*addresses[0]) as client:
            for packet in (b"many", b"a", b"b", b"c"):
                await client.send_packet(packet)
            replies += [await client.recv_packet() for _ in range(303)]
    assert sorted(set(replies)) == [b"a", b"b", b"c", b"many"]
    assert replies.count(b"many") == 300
    # Answered while the first handler was still replying, not after it.
    assert max(replies.index(packet) for packet in (b"a", b"b", b"c")) < 300
    assert server.statistics().datagrams_sent == 303


async def test_a_handler_that_stops_the_server_keeps_its_grace_period() -> None:
    # The first datagram's handler runs in the task that reads: stopping the server from it
    # stops the reading, and must not cancel the handler.
    async def handler(request: BytesRequest) -> None:
        await request.server.shutdown(grace_period=5)
        await anyio.sleep(0.05)
        await request.respond(b"bye")

    server = DatagramServer("127.0.0.1", 0, handler)
    async with anyio.create_task_group() as tg, peers() as (peer,):
        addresses = await tg.start(server.serve_forever)
        with anyio.fail_after(5):
            await peer.send(b"stop", addresses[0])
            assert (await peer.recv())[0] == b"bye"
            await server.shutdown()
    stats = server.statistics()
    assert (stats.datagrams_received, stats.datagrams_sent, stats.handlers_cancelled) == (1, 1, 0)


# -- robustness ------------------------------------------------------------------------------


async def test_raising_handler_is_counted_and_logged_at_a_bounded_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(request: BytesRequest) -> None:
        if request.packet == b"boom":
            raise ValueError("the handler failed")
        await request.respond(b"pong")

    server = DatagramServer("127.0.0.1", 0, handler)
    with caplog.at_level(logging.INFO, logger="anydgram.server"):
        async with serving(server) as addresses, peers() as (peer,):
            for _ in range(100):
                await peer.send(b"boom", addresses[0])
            await wait_until(lambda: server.statistics().handler_errors == 100)
            assert await request_reply(peer, b"ping", addresses[0]) == b"pong"
            sender = peer.address
    stats = server.statistics()
    assert stats.handler_errors == 100
    assert stats.datagrams_received == 101
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(problems) <= 7
    first = problems[0]
    assert first.name == "anydgram.server"
    assert first.exc_info is not None
    assert isinstance(first.exc_info[1], ValueError)
    assert f"127.0.0.1:{sender[1]}" in first.getMessage()
    assert any("suppressed" in r.getMessage() for r in problems)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("serving on 127.0.0.1:") for m in messages)
    assert any(m.startswith("stopped serving") for m in messages)


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


# -- reply addresses ---------------------------------------------------------------------------


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


# -- shutdown ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("where", "sent"), [("sockets", 100), ("memory", 1000)])
async def test_every_datagram_sent_is_counted_when_a_handler_never_returns(
    where: str, sent: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="anydgram.server")
    started = anyio.Event()

    async def stuck(request: BytesRequest) -> None:
        del request
        started.set()
        await anyio.sleep_forever()

    net = MemoryNetwork() if where == "memory" else None
    server = DatagramServer("127.0.0.1", 0, stuck, max_concurrent_handlers=1, network=net)
    async with anyio.create_task_group() as tg, peers() as (peer,):
        addresses = await tg.start(server.serve_forever)
        if net is None:
            for i in range(sent):
                await peer.send(b"%d" % i, addresses[0])
        else:
            async with await net.connect_udp(*addresses[0][:2]) as client:
                for i in range(sent):
                    await client.send_packet(b"%d" % i)
        with anyio.fail_after(5):
            await started.wait()
            await server.shutdown(grace_period=0.2)
    stats = server.statistics()
    assert stats.handlers_cancelled == 1
    assert stats.unread_at_close > 0
    assert (
        stats.datagrams_received + stats.kernel_drops + stats.oversize + (stats.unread_at_close)
        == sent
    )
    if net is not None:
        assert stats.kernel_drops == net.statistics().dropped_full_queue > 0
    # The stop summary in the log names them too.
    (summary,) = [r.getMessage() for r in caplog.records if "stopped serving" in r.getMessage()]
    assert f"unread_at_close {stats.unread_at_close}," in summary


async def test_shutdown_lets_handlers_finish_within_the_grace_period() -> None:
    fds_before = open_fds()
    cancelled = 0

    async def handler(request: BytesRequest) -> None:
        nonlocal cancelled
        try:
            await anyio.sleep(0.3 if request.packet.startswith(b"fast") else 30)
        except anyio.get_cancelled_exc_class():
            cancelled += 1
            raise
        await request.respond(request.packet)

    server = DatagramServer("127.0.0.1", 0, handler)
    elapsed = 0.0
    replies: set[bytes] = set()
    async with anyio.create_task_group() as tg, peers() as (peer,):
        addresses = await tg.start(server.serve_forever)
        for i in range(50):
            await peer.send(b"fast%d" % i if i % 2 else b"slow%d" % i, addresses[0])
        await wait_until(lambda: server.statistics().handlers_active == 50)
        start = time.monotonic()
        with anyio.fail_after(5):
            await server.shutdown(grace_period=1)
        elapsed = time.monotonic() - start
        with anyio.move_on_after(0.5):
            while True:
                replies.add((await peer.recv())[0])
    assert 0.9 <= elapsed <= 1.5
    assert replies == {b"fast%d" % i for i in range(1, 50, 2)}
    assert cancelled == 25
    stats = server.statistics()
    assert (stats.handlers_active, stats.datagrams_sent) == (0, 25)
    assert (stats.handlers_cancelled, stats.requests_abandoned) == (25, 0)
    # The counters keep their values once the sockets are closed.
    assert stats.recv_buffer_size > 0
    assert stats.send_buffer_size > 0
    assert server.addresses == ()
    assert open_fds() == fds_before


async def test_requests_no_handler_started_are_counted_as_abandoned() -> None:
    # The memory network hands the reader all eight datagrams in one batch; the first
    # handler then stops the server with no grace period, so the rest of the batch is
    # cancelled before, or just after, its handlers start.
    net = MemoryNetwork()
    started = 0

    async def handler(request: BytesRequest) -> None:
        nonlocal started
        started += 1
        if request.packet == b"0":
            await request.server.shutdown(grace_period=0)
        await anyio.sleep_forever()

    server = DatagramServer("127.0.0.1", 0, handler, network=net)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            addresses = await tg.start(server.serve_forever)
            async with await net.connect_udp(*addresses[0]) as client:
                for i in range(8):
                    await client.send_packet(b"%d" % i)
    stats = server.statistics()
    assert stats.datagrams_received == 8
    assert stats.handlers_cancelled == started
    assert stats.requests_abandoned == 8 - started
    assert stats.requests_abandoned >= 1


async def test_shutdown_returns_early_when_handlers_finish() -> None:
    server = DatagramServer("127.0.0.1", 0, echo)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve_forever)
        start = time.monotonic()
        await server.shutdown(grace_period=10)
        assert time.monotonic() - start < 1


async def test_serve_forever_returns_after_shutdown_and_port_is_free() -> None:
    server = DatagramServer("127.0.0.1", 0, echo)
    returned = anyio.Event()
    addresses: tuple[Any, ...] = ()

    async def serve(*, task_status: anyio.abc.TaskStatus[tuple[Any, ...]]) -> None:
        await server.serve_forever(task_status=task_status)
        returned.set()

    async with anyio.create_task_group() as tg:
        addresses = await tg.start(serve)
        await server.shutdown()
        assert returned.is_set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(addresses[0])
    await server.shutdown()  # idempotent
    with pytest.raises(anyio.ClosedResourceError):
        await server.serve_forever()


async def test_aclose_cancels_running_handlers_at_once() -> None:
    fds_before = open_fds()
    started = anyio.Event()

    async def handler(request: BytesRequest) -> None:
        started.set()
        await anyio.sleep(30)

    server = DatagramServer("127.0.0.1", 0, handler)
    async with server, anyio.create_task_group() as tg, peers() as (peer,):
        addresses = await tg.start(server.serve_forever)
        await peer.send(b"x", addresses[0])
        with anyio.fail_after(5):
            await started.wait()
        start = time.monotonic()
        await server.aclose()
        assert time.monotonic() - start < 0.5
    assert open_fds() == fds_before


async def test_cancelling_serve_forever_closes_everything() -> None:
    fds_before = open_fds()
    server = DatagramServer(None, 0, echo)
    with anyio.move_on_after(0.2):
        await server.serve_forever()
    assert server.addresses == ()
    assert open_fds() == fds_before
    with pytest.raises(anyio.ClosedResourceError):
        await server.serve_forever()


async def test_shutdown_from_a_handler() -> None:
    async def handler(request: BytesRequest) -> None:
        await request.respond(b"bye")
        await request.server.shutdown()

    server = DatagramServer("127.0.0.1", 0, handler)
    async with anyio.create_task_group() as tg, peers() as (peer,):
        addresses = await tg.start(server.serve_forever)
        assert await request_reply(peer, b"stop", addresses[0]) == b"bye"
        with anyio.fail_after(5):
            await server.shutdown()
    assert server.addresses == ()


async def test_shorter_grace_period_cuts_a_shutdown_short() -> None:
    async def handler(request: BytesRequest) -> None:
        await anyio.sleep(30)

    server = DatagramServer("127.0.0.1", 0, handler)
    async with anyio.create_task_group() as tg, peers() as (peer,):
        addresses = await tg.start(server.serve_forever)
        await peer.send(b"x", addresses[0])
        await wait_until(lambda: server.statistics().handlers_active == 1)
        tg.start_soon(server.shutdown, 30)
        await anyio.sleep(0.05)
        start = time.monotonic()
        with anyio.fail_after(5):
            await server.aclose()
        assert time.monotonic() - start < 0.5


async def test_shutdown_before_serving_closes_the_server() -> None:
    server = DatagramServer("127.0.0.1", 0, echo)
    await server.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await server.serve_forever()


async def test_serving_twice_at_once_is_refused() -> None:
    server = DatagramServer("127.0.0.1", 0, echo)
    async with serving(server):
        with pytest.raises(RuntimeError, match="already serving"):
            await server.serve_forever()


# -- arguments ---------------------------------------------------------------------------------


def test_arguments_are_checked() -> None:
    with pytest.raises(TypeError):
        DatagramServer(1, 0, echo)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="empty"):
        DatagramServer([], 0, echo)
    with pytest.raises(ValueError, match="port"):
        DatagramServer("127.0.0.1", 70000, echo)
    with pytest.raises(TypeError, match="handler"):
        DatagramServer("127.0.0.1", 0, None)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="max_concurrent_handlers"):
        DatagramServer("127.0.0.1", 0, echo, max_concurrent_handlers=0)
    with pytest.raises(TypeError, match="max_concurrent_handlers"):
        DatagramServer("127.0.0.1", 0, echo, max_concurrent_handlers=1.5)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="recv_buffer_size"):
        DatagramServer("127.0.0.1", 0, echo, recv_buffer_size=0)
    with pytest.raises(TypeError, match="logger"):
        DatagramServer("127.0.0.1", 0, echo, logger="x")  # type: ignore[call-overload]


def test_a_handler_that_is_not_async_is_refused() -> None:
    def plain(request: BytesRequest) -> None:
        del request

    def returns_a_coroutine(request: BytesRequest) -> Awaitable[None]:
        return echo(request)

    not_async: list[Any] = [plain, functools.partial(plain), object, returns_a_coroutine]
    for handler in not_async:
        with pytest.raises(TypeError, match="handler must be an async function"):
            DatagramServer("127.0.0.1", 0, handler)
        with pytest.raises(TypeError, match="parse_error_handler must be an async function"):
            DatagramServer("127.0.0.1", 0, echo, parse_error_handler=handler)


class _AsyncCallable:
    async def __call__(self, request: BytesRequest) -> None:
        await request.respond(b"object:" + request.packet)


async def _tagged(tag: bytes, request: BytesRequest) -> None:
    await request.respond(tag + request.packet)


@pytest.mark.parametrize(
    ("handler", "tag"),
    [
        (_AsyncCallable(), b"object:"),
        (functools.partial(_tagged, b"partial:"), b"partial:"),
        (functools.partial(functools.partial(_AsyncCallable())), b"object:"),
    ],
    ids=["async-call", "partial", "partial-of-async-call"],
)
async def test_async_callables_are_accepted_as_handlers(handler: Any, tag: bytes) -> None:
    server = DatagramServer("127.0.0.1", 0, handler)
    async with serving(server) as addresses, peers() as (peer,):
        assert await request_reply(peer, b"x", addresses[0]) == tag + b"x"


async def test_grace_period_is_checked() -> None:
    server = DatagramServer("127.0.0.1", 0, echo)
    with pytest.raises(ValueError, match="grace_period"):
        await server.shutdown(-1)
    with pytest.raises(ValueError, match="grace_period"):
        await server.shutdown(float("nan"))


def test_backend_names() -> None:
    assert resolve_backend("asyncio", None) == ("asyncio", {})
    assert resolve_backend("uvloop", {"debug": True}) == (
        "asyncio",
        {"debug": True, "use_uvloop": True},
    )
    assert resolve_backend("trio", None) == ("trio", {})
    with pytest.raises(ValueError, match="'asyncio', 'uvloop', 'trio'"):
        resolve_backend("curio", None)
    server = DatagramServer("127.0.0.1", 0, echo)
    with pytest.raises(ValueError, match="workers"):
        server.run(workers=0)


def test_missing_backend_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "trio", None)
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(ImportError, match=r"anydgram\[trio\]"):
        resolve_backend("trio", None)
    with pytest.raises(ImportError, match=r"anydgram\[uvloop\]"):
        resolve_backend("uvloop", None)


# -- the log rate limit ------------------------------------------------------------------------


def test_rate_limited_log_summarizes_what_it_suppressed(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr("anydgram._logging.time.monotonic", lambda: now[0])
    log = RateLimitedLog(logging.getLogger("test.ratelimit"), burst=3, interval=10)
    with caplog.at_level(logging.INFO, logger="test.ratelimit"):
        for i in range(50):
            log.log("a", logging.WARNING, "record %d", i)
        log.log("b", logging.INFO, "other category")
        assert [r.getMessage() for r in caplog.records] == [
            "record 0",
            "record 1",
            "record 2",
            "other category",
        ]
        now[0] += 11
        log.log("a", logging.WARNING, "later")
        assert caplog.records[-2].getMessage().startswith("suppressed 47 similar log records (a)")
        assert caplog.records[-1].getMessage() == "later"
        log.flush()
        assert len(caplog.records) == 6  # nothing more was suppressed
