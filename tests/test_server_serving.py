"""DatagramServer.serving(): binding first, serving in the background, shutting down with grace."""

from __future__ import annotations

import logging
import re
import socket
import threading
from typing import Any

import anyio
import pytest

from anydgram import DatagramRequest, DatagramServer
from endpoint_harness import make_peer, port_is_free

BytesRequest = DatagramRequest[bytes, bytes]


async def echo(request: BytesRequest) -> None:
    await request.respond(request.packet)


async def test_bind_failure_is_a_plain_oserror() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        server = DatagramServer("127.0.0.1", port, echo)
        with pytest.raises(OSError, match=r"127\.0\.0\.1") as info:
            async with server.serving():
                pytest.fail("the block ran although the bind failed")
        # pytest.raises(OSError) does not match an exception group that holds one.
        assert info.value.errno is not None
    assert server.addresses == ()


async def test_requests_are_answered_inside_and_the_port_is_free_after() -> None:
    server = DatagramServer("127.0.0.1", 0, echo)
    peer = make_peer("udp4", "")
    try:
        async with server.serving() as addresses:
            assert addresses == server.addresses
            port = addresses[0][1]
            assert not port_is_free(port)
            for i in range(3):
                await peer.send(b"ping %d" % i, addresses[0])
                with anyio.fail_after(5):
                    reply, _ = await peer.recv()
                assert reply == b"ping %d" % i
    finally:
        peer.close()
    assert server.addresses == ()
    assert port_is_free(port)
    assert server.statistics().datagrams_sent == 3
    with pytest.raises(anyio.ClosedResourceError):
        async with server.serving():
            pass


@pytest.mark.parametrize(("grace_period", "finished"), [(10.0, True), (0.0, False)])
async def test_a_handler_running_at_exit_gets_the_grace_period(
    grace_period: float, finished: bool
) -> None:
    entered = anyio.Event()
    done: list[bool] = []

    async def slow(request: BytesRequest) -> None:
        entered.set()
        await anyio.sleep(0.2)  # the handler's own work, still running when the block ends
        await request.respond(b"late " + request.packet)
        done.append(True)

    server = DatagramServer("127.0.0.1", 0, slow)
    peer = make_peer("udp4", "")
    try:
        async with server.serving(grace_period=grace_period) as addresses:
            await peer.send(b"work", addresses[0])
            with anyio.fail_after(5):
                await entered.wait()
        assert done == ([True] if finished else [])
        stats = server.statistics()
        assert stats.handlers_cancelled == (0 if finished else 1)
        if finished:
            with anyio.fail_after(5):
                reply, _ = await peer.recv()
            assert reply == b"late work"
    finally:
        peer.close()


async def test_an_exception_from_the_block_propagates_as_it_is() -> None:
    server = DatagramServer("127.0.0.1", 0, echo)
    raised: BaseException | None = None
    port = -1
    try:
        async with server.serving() as addresses:
            port = addresses[0][1]
            raise KeyError("app failed")
    except BaseException as exc:  # what arrives here is the point of the test
        raised = exc
    assert type(raised) is KeyError
    assert raised.args == ("app failed",)
    assert port_is_free(port)


async def test_cancelling_the_enclosing_scope_closes_the_server() -> None:
    server = DatagramServer("127.0.0.1", 0, echo)
    port = -1
    with anyio.CancelScope() as scope:
        async with server.serving() as addresses:
            port = addresses[0][1]
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert port_is_free(port)
    assert server.addresses == ()


async def test_cancelled_while_starting_leaves_nothing_open() -> None:
    server = DatagramServer("127.0.0.1", 0, echo)
    entered = False
    with anyio.CancelScope() as scope:
        scope.cancel()  # every await inside is cancelled, the one starting the server too
        async with server.serving():
            entered = True
    assert not entered
    assert server.addresses == ()
    assert server.statistics().datagrams_received == 0
    with pytest.raises(anyio.ClosedResourceError):
        await server.serve_forever()


@pytest.mark.parametrize(("value", "error"), [(-1, ValueError), ("5", TypeError)])
async def test_grace_period_is_checked_before_binding(value: Any, error: type[Exception]) -> None:
    server = DatagramServer("127.0.0.1", 0, echo)
    with pytest.raises(error, match="grace_period"):
        async with server.serving(grace_period=value):
            pass
    assert server.addresses == ()


async def test_serving_logs_where_it_serves_and_a_summary_when_it_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = DatagramServer("127.0.0.1", 0, echo)
    peer = make_peer("udp4", "")
    try:
        with caplog.at_level(logging.INFO, logger="anydgram.server"):
            async with server.serving() as addresses:
                where = f"127.0.0.1:{addresses[0][1]}"
                assert [r.getMessage() for r in caplog.records] == [f"serving on {where}"]
                await peer.send(b"12345", addresses[0])
                with anyio.fail_after(5):
                    await peer.recv()
    finally:
        peer.close()
    records = [r for r in caplog.records if r.name == "anydgram.server"]
    assert all(r.levelno == logging.INFO for r in records)
    assert records[-1].getMessage() == (
        f"stopped serving on {where}: 1 datagrams received (5 bytes), 1 sent (5 bytes), "
        "handlers_peak 1"
    )


def test_run_logs_where_it_serves_and_a_summary_when_it_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def reply_then_stop(request: BytesRequest) -> None:
        await request.respond(request.packet)
        await request.server.shutdown(0)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = DatagramServer("127.0.0.1", port, reply_then_stop)
    replies: list[bytes] = []

    def client() -> None:
        # Until the server is bound, datagrams to the port are lost: send again, a bounded
        # number of times, until one is answered.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.1)
            for _ in range(100):
                sock.sendto(b"hi", ("127.0.0.1", port))
                try:
                    replies.append(sock.recv(100))
                    return
                except (TimeoutError, ConnectionRefusedError):
                    continue

    thread = threading.Thread(target=client)
    with caplog.at_level(logging.INFO, logger="anydgram.server"):
        thread.start()
        server.run()
        thread.join(10)
    assert replies == [b"hi"]
    messages = [r.getMessage() for r in caplog.records if r.name == "anydgram.server"]
    assert messages[0] == f"serving on 127.0.0.1:{port}"
    assert messages[-1].startswith(f"stopped serving on 127.0.0.1:{port}: ")
    assert re.search(r" received \(\d+ bytes\), [1-9]\d* sent \(\d+ bytes\)", messages[-1])
