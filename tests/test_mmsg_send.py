"""Batched replies: a read batch's replies leave with one ``sendmmsg`` (Linux), byte-exact.

Real loopback sockets, IPv4 and IPv6. The batch is checked on its own (queue, flush, errors,
close) and through a ``DatagramServer`` (echo at every size class, counters, a handler that
blocks after replying, handlers that return their reply, the environment switch).
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from anydgram import DatagramProtocol, DatagramRequest, DatagramServer
from anydgram._mmsg import RecvMmsg, enabled_by_environment
from anydgram._mmsg import available as recvmmsg_available
from anydgram._mmsg_send import ReplyBatch, encode_sockaddr
from anydgram._mmsg_send import available as sendmmsg_available
from anydgram._socket_io import SocketIO
from anydgram._socket_os import set_recverr
from anydgram.serializers import JSONSerializer
from endpoint_harness import LOOPBACK_FAMILIES

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        not (recvmmsg_available() and sendmmsg_available()),
        reason="batched replies need Linux and libc's recvmmsg and sendmmsg",
    ),
]


_FAMILIES = LOOPBACK_FAMILIES

#: A payload of every size is a prefix of this: a reply is checked byte for byte.
_PATTERN = os.urandom(65507)


@pytest.fixture(params=_FAMILIES)
def family_host(request: pytest.FixtureRequest) -> tuple[int, str]:
    value: tuple[int, str] = request.param
    return value


@pytest.fixture
def client(family_host: tuple[int, str]) -> Iterator[socket.socket]:
    family, host = family_host
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((host, 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def _batch_io(family: int, host: str, limit: int = 65507) -> SocketIO:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    set_recverr(sock)
    io = SocketIO(sock, max_datagram_size=limit, strategy=RecvMmsg)
    io.reply_batch = io.queueing = ReplyBatch(io.core, io)
    return io


async def _recv(sock: socket.socket, count: int, timeout: float = 10) -> list[bytes]:
    got: list[bytes] = []
    with anyio.fail_after(timeout):
        while len(got) < count:
            try:
                got.append(sock.recv(65536))
            except BlockingIOError:
                await anyio.wait_readable(sock)
    return got


# -- the batch on its own -----------------------------------------------------------------------


async def test_queued_replies_leave_at_the_flush_and_are_counted_then(
    anyio_backend: Any, family_host: tuple[int, str], client: socket.socket
) -> None:
    io = _batch_io(*family_host)
    try:
        sizes = [0, 1, 2, 1472, 1473, 9000, 65506, 65507]
        for size in sizes:
            assert io.queue_reply(_PATTERN[:size], client.getsockname())
        with pytest.raises(BlockingIOError):
            client.recv(65536)  # nothing has left yet
        assert io.datagrams_sent == 0
        assert io.flush_replies_nowait()
        assert (io.datagrams_sent, io.bytes_sent) == (len(sizes), sum(sizes))
        got = await _recv(client, len(sizes))
        assert got == [_PATTERN[:size] for size in sizes]  # in order, byte for byte
    finally:
        await io.aclose()


async def test_a_full_batch_is_flushed_before_the_next_reply(
    anyio_backend: Any, client: socket.socket
) -> None:
    io = _batch_io(client.family, client.getsockname()[0], limit=100)
    batch = io.reply_batch
    assert batch is not None
    try:
        for i in range(batch.capacity + 3):
            assert io.queue_reply(i.to_bytes(2, "big"), client.getsockname())
        assert io.datagrams_sent == batch.capacity  # the full batch went out by itself
        assert batch.count == 3
        await io.flush_replies()
        got = await _recv(client, batch.capacity + 3)
        assert [int.from_bytes(d, "big") for d in got] == list(range(batch.capacity + 3))
    finally:
        await io.aclose()


async def test_a_refused_reply_is_counted_and_reported_and_the_rest_still_go(
    anyio_backend: Any, client: socket.socket
) -> None:
    io = _batch_io(client.family, client.getsockname()[0], limit=100)
    assert io.reply_batch is not None
    failures: list[tuple[Exception, Any]] = []
    io.reply_batch.on_failed = lambda exc, peer: failures.append((exc, peer))
    try:
        good = client.getsockname()
        port_0 = (good[0], 0, *good[2:])  # the kernel refuses port 0 with EINVAL
        for address in (good, port_0, good):
            assert io.queue_reply(b"r", address)
        assert io.flush_replies_nowait()
        assert await _recv(client, 2) == [b"r", b"r"]
        assert (io.datagrams_sent, io.send_errors) == (2, 1)
        assert [(type(e), getattr(e, "errno", None), p) for e, p in failures] == [
            (OSError, errno.EINVAL, port_0)
        ]
    finally:
        await io.aclose()


async def test_queued_replies_are_sent_when_the_socket_closes(
    anyio_backend: Any, client: socket.socket
) -> None:
    io = _batch_io(client.family, client.getsockname()[0], limit=100)
    assert io.queue_reply(b"last words", client.getsockname())
    await io.aclose()
    assert await _recv(client, 1) == [b"last words"]
    assert io.datagrams_sent == 1


async def test_nothing_is_queued_unless_queueing_is_on(
    anyio_backend: Any, client: socket.socket
) -> None:
    io = _batch_io(client.family, client.getsockname()[0], limit=100)
    io.queueing = None
    try:
        assert not io.queue_reply(b"x", client.getsockname())
        io.queueing = io.reply_batch
        assert not io.queue_reply(b"x" * 101, client.getsockname())  # longer than a slot
        assert not io.queue_reply(b"x", "/not/an/ip/address")
        assert io.reply_batch is not None
        assert io.reply_batch.count == 0
    finally:
        await io.aclose()


def test_encode_sockaddr_matches_what_the_kernel_writes() -> None:
    assert encode_sockaddr(socket.AF_INET, ("127.0.0.1", 0x1234)) == (
        socket.AF_INET.to_bytes(2, sys.byteorder) + b"\x12\x34" + bytes([127, 0, 0, 1]) + bytes(8)
    )
    raw = encode_sockaddr(socket.AF_INET6, ("fe80::1%lo", 53, 0, 1))
    assert raw is not None
    assert len(raw) == 28
    assert raw[8:24] == socket.inet_pton(socket.AF_INET6, "fe80::1")
    assert raw[24:28] == (1).to_bytes(4, sys.byteorder)
    for bad in ("127.0.0.1", ("bad..host", 1), ("127.0.0.1", 70000), None):
        assert encode_sockaddr(socket.AF_INET, bad) is None
    assert encode_sockaddr(socket.AF_UNIX, "/tmp/x") is None


# -- through the server -------------------------------------------------------------------------


async def _echo_sizes(
    server: DatagramServer[Any, Any], client: socket.socket, sizes: list[int]
) -> list[bytes]:
    """Send ``sizes`` in windows of at most 64 datagrams and 512 KiB; return every reply."""
    replies: list[bytes] = []
    async with anyio.create_task_group() as tg:
        addresses = await tg.start(server.serve_forever)
        target = next(
            a for a in addresses if len(a) == (2 if client.family == socket.AF_INET else 4)
        )
        i = 0
        while i < len(sizes):
            window: list[int] = []
            while i < len(sizes) and len(window) < 64 and sum(window) + sizes[i] <= 512 << 10:
                window.append(sizes[i])
                i += 1
            if not window:
                window, i = [sizes[i]], i + 1
            for size in window:
                client.sendto(_PATTERN[:size], target)
            replies.extend(await _recv(client, len(window)))
        await server.aclose()
    return replies


def _server(host: str, **options: Any) -> DatagramServer[bytes, bytes]:
    async def echo(request: DatagramRequest[bytes, bytes]) -> None:
        await request.respond(request.packet)

    return DatagramServer(host, 0, echo, recv_buffer_size=4 << 20, **options)


async def test_server_echo_through_the_batch_is_byte_exact_at_every_size_class(
    anyio_backend: Any, family_host: tuple[int, str], client: socket.socket
) -> None:
    # Every size up to 2,048 (headers, MTU edges), then every 97th, then the top 64.
    sizes = [*range(2049), *range(2049, 65443, 97), *range(65443, 65508)]
    server = _server(family_host[1])
    replies = await _echo_sizes(server, client, sizes)
    assert Counter(map(len, replies)) == Counter(sizes)
    assert all(reply == _PATTERN[: len(reply)] for reply in replies)
    stats = server.statistics()
    assert stats.datagrams_sent == len(sizes)
    assert stats.bytes_sent == sum(sizes)
    assert stats.send_errors == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio"], indirect=True)
async def test_server_echo_through_the_batch_for_every_size_from_0_to_65507(
    anyio_backend: Any, client: socket.socket
) -> None:
    # The whole range on one backend: the system calls are the same on all three.
    sizes = list(range(65508))
    server = _server(client.getsockname()[0])
    replies = await _echo_sizes(server, client, sizes)
    assert sorted(map(len, replies)) == sizes
    assert all(reply == _PATTERN[: len(reply)] for reply in replies)


async def test_the_server_uses_the_batch_and_the_switch_turns_it_off(
    anyio_backend: Any, monkeypatch: pytest.MonkeyPatch, client: socket.socket
) -> None:
    if not enabled_by_environment():
        pytest.skip("ANYDGRAM_BATCHED_SYSCALLS=0: replies are not batched to begin with")
    flushed: list[int] = []
    real_flush = ReplyBatch.flush

    def counting_flush(self: ReplyBatch) -> bool:
        flushed.append(self.count - self.start)
        return real_flush(self)

    monkeypatch.setattr(ReplyBatch, "flush", counting_flush)
    host = client.getsockname()[0]
    replies = await _echo_sizes(_server(host), client, [8] * 64)
    assert len(replies) == 64
    assert sum(flushed) == 64
    assert max(flushed) > 1  # replies left together

    flushed.clear()
    monkeypatch.setenv("ANYDGRAM_BATCHED_SYSCALLS", "0")
    replies = await _echo_sizes(_server(host), client, [8] * 64)
    assert len(replies) == 64
    assert flushed == []


async def test_a_reply_queued_before_a_handler_blocks_leaves_at_once(
    anyio_backend: Any, client: socket.socket
) -> None:
    release = anyio.Event()

    async def reply_then_block(request: DatagramRequest[bytes, bytes]) -> None:
        await request.respond(b"early " + request.packet)
        if request.packet == b"block":
            await release.wait()

    server = DatagramServer(client.getsockname()[0], 0, reply_then_block)
    async with anyio.create_task_group() as tg:
        addresses = await tg.start(server.serve_forever)
        for payload in (b"a", b"b", b"block"):
            client.sendto(payload, addresses[0])
        # All three replies come while the last handler is still blocked: what was queued
        # went out when the handler yielded.
        got = await _recv(client, 3, timeout=5)
        assert sorted(got) == [b"early a", b"early b", b"early block"]
        assert not release.is_set()
        release.set()
        await server.aclose()


async def test_a_handler_may_return_its_reply(anyio_backend: Any, client: socket.socket) -> None:
    async def answer(request: DatagramRequest[Any, Any]) -> Any:
        if request.packet == {"ask": "nothing"}:
            return None
        if request.packet == {"ask": "unserializable"}:
            return {"set": {1, 2}}
        return {"echo": request.packet}

    protocol: DatagramProtocol[Any, Any] = DatagramProtocol(JSONSerializer())
    server: DatagramServer[Any, Any] = DatagramServer(
        client.getsockname()[0], 0, answer, protocol=protocol
    )
    async with anyio.create_task_group() as tg:
        addresses = await tg.start(server.serve_forever)
        for body in (b'{"ask":"nothing"}', b'{"ask":"unserializable"}', b'{"ask":"x"}'):
            client.sendto(body, addresses[0])
        got = await _recv(client, 1)
        assert [protocol.build_packet_from_datagram(d) for d in got] == [{"echo": {"ask": "x"}}]
        # Handlers run in arrival order and these never yield: the last reply's coming means
        # the earlier handlers are done.
        await server.aclose()
    stats = server.statistics()
    assert stats.datagrams_sent == 1
    assert stats.handler_errors == 1  # the unserializable reply, as if respond() raised
    with pytest.raises(BlockingIOError):
        client.recv(65536)  # None sent nothing


def test_a_returned_reply_is_type_checked_against_the_servers_send_type() -> None:
    # CI type-checks this file with mypy --strict, whose warn_unused_ignores makes the ignore
    # below an error the day a handler returning the wrong type stops being one. (pyright
    # reports it too, as reportArgumentType; it honours the same comment.) It also runs.
    async def returns_bytes(request: DatagramRequest[bytes, bytes]) -> bytes:
        return request.packet

    async def returns_text(request: DatagramRequest[bytes, bytes]) -> str:
        return "not bytes"

    DatagramServer("127.0.0.1", 0, returns_bytes)
    DatagramServer("127.0.0.1", 0, returns_text)  # type: ignore[arg-type]
