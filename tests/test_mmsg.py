"""The batched (recvmmsg) receive path, and its parity with the portable one.

Everything runs on real loopback sockets, IPv4 and IPv6. The tests that need the batched path
skip where it does not exist (it is Linux-only); the parity tests run the portable side
everywhere.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest

from anydgram import DatagramRequest, DatagramServer, _mmsg, _server_sockets
from anydgram._io_core import RecvFrom
from anydgram._mmsg import (
    MmsgReceiver,
    RecvMmsg,
    available,
    decode_sockaddr_untrusted,
    server_strategy,
)
from anydgram._pktinfo import RecvPktinfo
from anydgram._socket_io import SocketIO
from anydgram._socket_os import set_recverr
from endpoint_harness import LOOPBACK_FAMILIES

pytestmark = pytest.mark.anyio

_NO_MMSG = "recvmmsg through ctypes is Linux-only (needs libc's recvmmsg); portable path only"
needs_mmsg = pytest.mark.skipif(not available(), reason=_NO_MMSG)

_LIMIT = 100  # max_datagram_size of the sockets under test


_FAMILIES = LOOPBACK_FAMILIES

IOFactory = Callable[[socket.socket, int], SocketIO]


def _portable(sock: socket.socket, max_datagram_size: int) -> SocketIO:
    return SocketIO(sock, max_datagram_size=max_datagram_size, strategy=RecvFrom)


def _batched(sock: socket.socket, max_datagram_size: int) -> SocketIO:
    return SocketIO(sock, max_datagram_size=max_datagram_size, strategy=RecvMmsg)


_PATHS = [
    pytest.param(_portable, id="portable"),
    pytest.param(_batched, id="mmsg", marks=needs_mmsg),
]


@pytest.fixture(params=_FAMILIES)
def family_host(request: pytest.FixtureRequest) -> tuple[int, str]:
    value: tuple[int, str] = request.param
    return value


@pytest.fixture(params=_PATHS)
def make_io(request: pytest.FixtureRequest) -> IOFactory:
    factory: IOFactory = request.param
    return factory


def _bound_socket(family: int, host: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((host, 0))
    return sock


@pytest.fixture
def peers(family_host: tuple[int, str]) -> Iterator[list[socket.socket]]:
    family, host = family_host
    socks = [_bound_socket(family, host) for _ in range(2)]
    yield socks
    for s in socks:
        s.close()


def _open_io(make_io: IOFactory, family_host: tuple[int, str]) -> SocketIO:
    family, host = family_host
    sock = _bound_socket(family, host)
    set_recverr(sock)
    return make_io(sock, _LIMIT)


@pytest.fixture
async def io(make_io: IOFactory, family_host: tuple[int, str]) -> AsyncIterator[SocketIO]:
    """The socket I/O of the path under test on a fresh loopback socket, closed afterwards."""
    opened = _open_io(make_io, family_host)
    yield opened
    await opened.aclose()


async def _drain(io: SocketIO, expected: int) -> list[tuple[bytes, Any]]:
    """Receive until ``expected`` datagrams were taken; check every batch's shape."""
    got: list[tuple[bytes, Any]] = []
    with anyio.fail_after(5):
        while len(got) < expected:
            batch = await io.receive(64)
            assert 0 < len(batch) <= 64
            for data, address, local, _ in batch:
                assert type(data) is bytes
                assert local is None
                got.append((data, address))
    return got


# -- the same batch-level expectations on both paths ------------------------------------------


async def test_batch_of_mixed_sizes(
    anyio_backend: Any,
    io: SocketIO,
    peers: list[socket.socket],
) -> None:
    target = io.local_address
    sizes = [0, 1, 7, _LIMIT - 1, _LIMIT, _LIMIT + 1, _LIMIT + 50, 33]
    sent: list[tuple[bytes, Any]] = []
    oversize = 0
    for i in range(100):
        size = sizes[i % len(sizes)]
        peer = peers[i % 2]
        payload = bytes([i]) * size
        peer.sendto(payload, target)
        if size > _LIMIT:
            oversize += 1
        else:
            sent.append((payload, peer.getsockname()))
    got = await _drain(io, len(sent))
    assert got == sent
    assert io.datagrams_received == len(sent)
    assert io.bytes_received == sum(len(data) for data, _ in sent)
    assert io.oversize == oversize
    # Nothing left: a receive now would wait.
    with anyio.move_on_after(0.05) as scope:
        await io.receive(64)
    assert scope.cancelled_caught


async def test_addresses_match_recvfrom(
    anyio_backend: Any,
    io: SocketIO,
    family_host: tuple[int, str],
    peers: list[socket.socket],
) -> None:
    family, host = family_host
    with _bound_socket(family, host) as reference:
        for peer in peers:
            peer.sendto(b"to io", io.local_address)
            peer.sendto(b"to reference", reference.getsockname())
        got = await _drain(io, len(peers))
        expected = [reference.recvfrom(64)[1] for _ in peers]
        assert [address for _, address in got] == expected
        assert [type(a) for _, a in got] == [type(a) for a in expected]
        assert [type(part) for part in got[0][1]] == [type(part) for part in expected[0]]


async def test_nothing_waiting_loses_nothing(
    anyio_backend: Any,
    io: SocketIO,
    peers: list[socket.socket],
) -> None:
    with anyio.move_on_after(0.05) as scope:
        await io.receive(64)
    assert scope.cancelled_caught
    peers[0].sendto(b"after", io.local_address)
    assert await _drain(io, 1) == [(b"after", peers[0].getsockname())]


async def test_batch_bound_respected(
    anyio_backend: Any,
    io: SocketIO,
    peers: list[socket.socket],
) -> None:
    for i in range(10):
        peers[0].sendto(bytes([i]), io.local_address)
    with anyio.fail_after(5):
        first = await io.receive(3)
        assert [data for data, _, _, _ in first] == [b"\0", b"\1", b"\2"]
        rest = await _drain(io, 7)
    assert [data for data, _ in rest] == [bytes([i]) for i in range(3, 10)]
    assert io.datagrams_received == 10


async def test_only_oversize_waiting_then_valid(
    anyio_backend: Any,
    io: SocketIO,
    peers: list[socket.socket],
) -> None:
    # More junk than one bound: the reader skips it in bounded steps and still gets the rest.
    for _ in range(150):
        peers[0].sendto(b"x" * (_LIMIT + 1), io.local_address)
    peers[0].sendto(b"ok", io.local_address)
    assert await _drain(io, 1) == [(b"ok", peers[0].getsockname())]
    assert io.oversize == 150
    assert io.datagrams_received == 1


async def test_large_datagrams_at_the_default_limit(
    anyio_backend: Any,
    make_io: IOFactory,
    family_host: tuple[int, str],
    peers: list[socket.socket],
) -> None:
    family, host = family_host
    sock = _bound_socket(family, host)
    io = make_io(sock, 65507)
    try:
        payloads = [b"a" * 60000, b"", b"b" * 1200, b"c" * 65000]
        for payload in payloads:
            peers[1].sendto(payload, io.local_address)
        got = await _drain(io, len(payloads))
        assert got == [(payload, peers[1].getsockname()) for payload in payloads]
        assert io.bytes_received == sum(map(len, payloads))
        assert io.oversize == 0
    finally:
        await io.aclose()


async def test_closed_raises_closed_resource_error(anyio_backend: Any, io: SocketIO) -> None:
    await io.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await io.receive(64)


async def test_close_wakes_waiting_receiver(anyio_backend: Any, io: SocketIO) -> None:
    outcome: list[BaseException] = []

    async def receive() -> None:
        try:
            await io.receive(64)
        except anyio.ClosedResourceError as exc:
            outcome.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            await anyio.wait_all_tasks_blocked()
            await io.aclose()
    assert len(outcome) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="IP_RECVERR is Linux-only")
async def test_icmp_error_counted_not_raised(
    anyio_backend: Any,
    io: SocketIO,
    family_host: tuple[int, str],
    peers: list[socket.socket],
) -> None:
    family, host = family_host
    with _bound_socket(family, host) as gone:
        dead = gone.getsockname()
    assert io.send_nowait(b"anyone?", dead)
    await anyio.sleep(0.05)  # the ICMP port unreachable comes back through loopback
    peers[0].sendto(b"live", io.local_address)
    assert await _drain(io, 1) == [(b"live", peers[0].getsockname())]
    with anyio.fail_after(5):
        while io.icmp_errors == 0:
            with anyio.move_on_after(0.02):
                await io.receive(64)
    assert io.icmp_errors == 1
    assert io.datagrams_received == 1


# -- the batched path itself --------------------------------------------------------------------


@needs_mmsg
def test_receiver_empty_on_eagain(family_host: tuple[int, str]) -> None:
    family, host = family_host
    with _bound_socket(family, host) as sock:
        sock.setblocking(False)
        assert MmsgReceiver(8, 16, family).receive(sock.fileno(), 8) == ([], 0, 0)


@needs_mmsg
def test_receiver_reports_kernel_errors() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fd = sock.fileno()
        sock.close()
        with pytest.raises(OSError, match=re.escape(os.strerror(errno.EBADF))) as info:
            MmsgReceiver(4, 16, socket.AF_INET).receive(fd, 4)
        assert info.value.errno == errno.EBADF


@needs_mmsg
def test_receiver_capacity_and_truncation(
    family_host: tuple[int, str], peers: list[socket.socket]
) -> None:
    family, host = family_host
    with _bound_socket(family, host) as sock:
        sock.setblocking(False)
        receiver = MmsgReceiver(4, 11, family)
        assert receiver.capacity == 4
        for size in (0, 10, 11, 12, 500, 3):
            peers[0].sendto(b"y" * size, sock.getsockname())
        # The limit is one less than the room: 11 bytes fit but count as oversize.
        items, nbytes, oversize = receiver.receive(sock.fileno(), 64)  # clamped to capacity
        assert [data for data, _, _, _ in items] == [b"", b"y" * 10]
        assert (nbytes, oversize) == (10, 2)
        # The kernel flagged the one it truncated and reported the slot's size for it: what
        # the length test relies on (the 11-byte one fit its slot, but is over the limit).
        headers = [receiver._messages[i].msg_hdr for i in range(4)]
        assert [bool(h.msg_flags & socket.MSG_TRUNC) for h in headers] == [False] * 3 + [True]
        assert [receiver._messages[i].msg_len for i in range(4)] == [0, 10, 11, 11]
        items, nbytes, oversize = receiver.receive(sock.fileno(), 64)
        assert [data for data, _, _, _ in items] == [b"yyy"]
        assert (nbytes, oversize) == (3, 1)
        assert all(local is None for _, _, local, _ in items)
        assert receiver.receive(sock.fileno(), 0) == ([], 0, 0)


@needs_mmsg
def test_address_cache_is_bounded(
    monkeypatch: pytest.MonkeyPatch, family_host: tuple[int, str], peers: list[socket.socket]
) -> None:
    monkeypatch.setattr(_mmsg, "_ADDRESS_CACHE_SIZE", 1)
    family, host = family_host
    with _bound_socket(family, host) as sock:
        sock.setblocking(False)
        receiver = MmsgReceiver(8, 16, family)
        for _ in range(3):
            for peer in peers:
                peer.sendto(b"z", sock.getsockname())
        items, _, _ = receiver.receive(sock.fileno(), 8)
        assert [address for _, address, _, _ in items] == [p.getsockname() for p in peers] * 3
        assert len(receiver._addresses) == 1


def test_receiver_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="capacity"):
        MmsgReceiver(0, 16, socket.AF_INET)
    with pytest.raises(ValueError, match="bufsize"):
        MmsgReceiver(4, 0, socket.AF_INET6)
    with pytest.raises(ValueError, match="AF_INET and AF_INET6"):
        MmsgReceiver(4, 16, socket.AF_UNSPEC)


def test_decode_sockaddr() -> None:
    order = sys.byteorder
    v4 = socket.AF_INET.to_bytes(2, order) + (4242).to_bytes(2, "big")
    v4 += socket.inet_aton("192.0.2.7") + bytes(8)
    assert decode_sockaddr_untrusted(v4) == ("192.0.2.7", 4242)
    v6 = socket.AF_INET6.to_bytes(2, order) + (53).to_bytes(2, "big") + (7).to_bytes(4, "big")
    v6 += socket.inet_pton(socket.AF_INET6, "2001:db8::1") + (3).to_bytes(4, order)
    assert decode_sockaddr_untrusted(v6) == ("2001:db8::1", 53, 7, 3)
    with pytest.raises(ValueError, match="unexpected socket address"):
        decode_sockaddr_untrusted(v4[:8])
    with pytest.raises(ValueError, match="unexpected socket address"):
        decode_sockaddr_untrusted(socket.AF_UNIX.to_bytes(2, order) + b"/tmp/x")


# -- choosing the path --------------------------------------------------------------------------


def test_server_socket_io_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    def kind(sock: socket.socket, **options: Any) -> object:
        with sock:
            return server_strategy(sock, **options)

    def udp() -> socket.socket:
        return _bound_socket(socket.AF_INET, "127.0.0.1")

    fast = RecvMmsg if available() else RecvFrom
    monkeypatch.delenv(_mmsg.ENV_SWITCH, raising=False)
    assert kind(udp(), pktinfo=False) is fast
    assert kind(udp(), pktinfo=False, batched=True) is fast
    assert kind(udp(), pktinfo=False, batched=False) is RecvFrom
    assert kind(udp(), pktinfo=True) is RecvPktinfo
    # With metadata the portable path is recvmsg, which keeps the control messages.
    assert kind(udp(), pktinfo=False, batched=False, metadata=True) == (
        RecvPktinfo.without_reply_sources
    )
    monkeypatch.setenv(_mmsg.ENV_SWITCH, "0")
    assert kind(udp(), pktinfo=False) is RecvFrom
    assert kind(udp(), pktinfo=False, batched=True) is fast
    if hasattr(socket, "AF_UNIX"):
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        assert kind(unix, pktinfo=False, batched=True) is RecvFrom


def test_unavailable_degrades_to_portable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_mmsg, "_RECVMMSG", None)
    assert not available()
    with _bound_socket(socket.AF_INET, "127.0.0.1") as sock:
        assert server_strategy(sock, pktinfo=False) is RecvFrom


@needs_mmsg
def test_batched_io_refuses_non_ip_socket() -> None:
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
        pytest.raises(ValueError, match="IP sockets only"),
    ):
        SocketIO(sock, max_datagram_size=_LIMIT, strategy=RecvMmsg)


# -- end to end: a server on the batched path ---------------------------------------------------


@needs_mmsg
async def test_server_echo_on_batched_path(
    anyio_backend: Any, monkeypatch: pytest.MonkeyPatch, family_host: tuple[int, str]
) -> None:
    if not _mmsg.enabled_by_environment():
        pytest.skip("ANYDGRAM_BATCHED_SYSCALLS=0: the server is on the portable path")
    # The server picks each socket's strategy through server_strategy: record what it chose.
    chosen: list[object] = []

    def pick(sock: socket.socket, *, pktinfo: bool, metadata: bool = False) -> object:
        strategy = server_strategy(sock, pktinfo=pktinfo, metadata=metadata)
        chosen.append(strategy)
        return strategy

    monkeypatch.setattr(_server_sockets, "server_strategy", pick)
    family, host = family_host

    async def echo(request: DatagramRequest[bytes, bytes]) -> None:
        await request.respond(request.packet)

    server = DatagramServer(host, 0, echo, max_concurrent_handlers=16)
    payloads = [bytes([i]) * i for i in range(100)]
    replies: list[bytes] = []
    with _bound_socket(family, host) as client:
        client.setblocking(False)
        async with anyio.create_task_group() as tg:
            addresses = await tg.start(server.serve_forever)
            for payload in payloads:
                client.sendto(payload, addresses[0])
            with anyio.fail_after(10):
                while len(replies) < len(payloads):
                    try:
                        replies.append(client.recv(256))
                    except BlockingIOError:
                        await anyio.sleep(0.01)
            stats = server.statistics()
            await server.aclose()
            assert chosen == [RecvMmsg]
            assert sorted(replies) == sorted(payloads)
            assert stats.datagrams_received == len(payloads)
            assert stats.bytes_received == sum(map(len, payloads))
