"""A server's life cycle: shutdown, grace periods, closing, serving once (``_server_life.py``)."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import anyio
import pytest

from anydgram import (
    DatagramServer,
)
from anydgram.testing import MemoryNetwork
from endpoint_harness import wait_until
from server_harness import BytesRequest, echo, open_fds, peers, request_reply, serving

pytestmark = pytest.mark.anyio


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
