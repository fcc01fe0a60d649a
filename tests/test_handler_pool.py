"""The handler pool: concurrency bound, standby takeover, blocked and raising handlers.

The module under test: ``_handler_pool.py``.
"""

from __future__ import annotations

import logging

import anyio
import pytest

from anydgram import (
    DatagramServer,
)
from anydgram.testing import MemoryNetwork
from endpoint_harness import wait_until
from server_harness import BytesRequest, echo, peers, request_reply, serving

pytestmark = pytest.mark.anyio


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
